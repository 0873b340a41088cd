#![cfg(test)]
//! A small world for the failover tests: three regions, one controller
//! each, shard orders/0 with a replica per region.

use super::observations::{ControllerView, Observations, ReplicaReport};
use super::planner::Plan;
use crate::command::{Command, Request};
use crate::model::{FailoverPolicy, RegionSpec, ReplicaSpec, ServiceSpec, ShardSpec, Topology};
use crate::state::State;
use crate::vocab::{primary_lease_key, PromotionMode, ReplicaRole, Response, RevokeReason};
use std::collections::BTreeMap;

pub(crate) const REGIONS: [&str; 3] = ["eu", "us", "ap"];

pub(crate) struct World {
    pub(crate) state: State,
    index: u64,
    pub(crate) now_unix_ms: u64,
}

impl World {
    /// Three regions, one controller each, shard orders/0 with a replica
    /// per region (priorities 100/50/10), primary orders-0-eu acknowledged.
    pub(crate) fn new() -> World {
        let topology = Topology {
            regions: REGIONS.iter().map(|r| RegionSpec { id: r.to_string(), capacity: 100 }).collect(),
            services: vec![ServiceSpec {
                name: "orders".into(),
                shards: vec![ShardSpec {
                    id: "0".into(),
                    max_lag_on_failover: 100,
                    cooldown_seconds: 60,
                    replicas: REGIONS
                        .iter()
                        .zip([100, 50, 10])
                        .map(|(r, p)| ReplicaSpec {
                            id: format!("orders-0-{r}"),
                            region: r.to_string(),
                            priority: p,
                            address: String::new(),
                        })
                        .collect(),
                    backup: None,
                }],
            }],
            failover: FailoverPolicy::default(),
            routing: Default::default(),
            backups: Default::default(),
        };
        let mut w = World { state: State::default(), index: 0, now_unix_ms: 1_000_000 };
        w.apply(Command::ApplyTopology { topology });
        for r in REGIONS {
            w.apply(Command::RegisterController {
                id: format!("c-{r}"),
                region: r.into(),
                replicas: vec![format!("orders-0-{r}")],
            });
        }
        w.apply(promote("orders-0-eu", 0, PromotionMode::Operator));
        w.apply(ack("orders-0-eu", 1, ReplicaRole::Primary));
        w
    }

    pub(crate) fn apply(&mut self, command: Command) -> Response {
        self.apply_by(crate::vocab::SYSTEM, command)
    }

    /// Applies `command` as proposed on behalf of `by`.
    pub(crate) fn apply_by(&mut self, by: &str, command: Command) -> Response {
        self.index += 1;
        let response = self.state.apply(self.index, &Request::by(self.now_unix_ms, by, command));
        assert_eq!(self.state.validate(), Ok(()));
        response
    }

    pub(crate) fn expire_primary_lease(&mut self) {
        let key = primary_lease_key("orders/0");
        let token = self.state.leases[&key].token;
        let response = self.apply(Command::LeaseRevoke { key, token: Some(token), reason: RevokeReason::Expired });
        assert!(matches!(response, Response::Applied { .. }), "{response:?}");
    }
}

pub(crate) fn promote(replica: &str, epoch: u64, mode: PromotionMode) -> Command {
    Command::Promote {
        shard: "orders/0".into(),
        replica: replica.into(),
        expected_epoch: epoch,
        mode,
        reason: "test".into(),
    }
}

pub(crate) fn ack(replica: &str, epoch: u64, role: ReplicaRole) -> Command {
    Command::Acknowledge { replica: replica.into(), epoch, role, position: 0 }
}

/// Observations: every controller heard and healthy at `positions`,
/// except those in `silent` (suspected); `unreachable` lists
/// (controller, region) witness reports of regions it cannot reach.
pub(crate) fn observe(positions: [u64; 3], silent: &[&str], unreachable: &[(&str, &str)]) -> Observations {
    let mut controllers = BTreeMap::new();
    for (i, r) in REGIONS.iter().enumerate() {
        let id = format!("c-{r}");
        let reachable = REGIONS
            .iter()
            .filter(|o| *o != r && !unreachable.contains(&(id.as_str(), **o)))
            .map(|o| o.to_string())
            .collect();
        let report = ReplicaReport { position: positions[i], lag: 0, healthy: true };
        controllers.insert(
            id.clone(),
            ControllerView {
                suspected: silent.contains(&id.as_str()),
                alive_since_ms: Some(0),
                reachable_regions: reachable,
                replicas: [(format!("orders-0-{r}"), report)].into(),
            },
        );
    }
    Observations { now_ms: 100_000, now_unix_ms: 1_000_000, leader_since_ms: 0, controllers }
}

pub(crate) fn kinds(plan: &Plan) -> Vec<String> {
    plan.commands.iter().map(|c| c.to_string()).collect()
}
