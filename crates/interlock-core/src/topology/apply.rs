//! Applying a declared topology to the state, and controllers registering
//! the replicas they run.

use super::diff;
use crate::model::{Controller, Region, Replica, Shard, Topology};
use crate::state::{Effects, State};
use crate::vocab::{primary_lease_key, shard_key, Refusal, RegionState, ReplicaRole, Response};
use std::collections::BTreeMap;

pub(crate) fn apply(state: &mut State, desired: &Topology, fx: &mut Effects) -> Response {
    let (lines, refusal) = diff(state, desired);
    if let Some((code, reason)) = refusal {
        return Response::refused(code, reason);
    }
    let mut regions = BTreeMap::new();
    for spec in &desired.regions {
        let region = match state.regions.get(&spec.id) {
            Some(r) => Region { capacity: spec.capacity, ..r.clone() },
            None => Region {
                id: spec.id.clone(),
                capacity: spec.capacity,
                state: RegionState::Active,
                maintenance: false,
                state_since_unix_ms: fx.at_unix_ms,
                drain: None,
            },
        };
        regions.insert(spec.id.clone(), region);
    }
    let mut shards = BTreeMap::new();
    let mut replicas = BTreeMap::new();
    for service in &desired.services {
        for spec in &service.shards {
            let key = shard_key(&service.name, &spec.id);
            let previous = state.shards.get(&key);
            let ids: Vec<String> = spec.replicas.iter().map(|r| r.id.clone()).collect();
            let primary = previous.and_then(|p| p.primary.clone()).filter(|p| ids.contains(p));
            let switchover = previous.and_then(|p| p.switchover.clone()).filter(|s| ids.contains(&s.to));
            shards.insert(
                key,
                Shard {
                    service: service.name.clone(),
                    id: spec.id.clone(),
                    max_lag_on_failover: spec.max_lag_on_failover,
                    cooldown_seconds: spec.cooldown_seconds,
                    epoch: previous.map_or(0, |p| p.epoch),
                    primary,
                    replicas: ids,
                    pending: previous.and_then(|p| p.pending.clone()),
                    switchover,
                    last_auto_failover_unix_ms: previous.and_then(|p| p.last_auto_failover_unix_ms),
                    awaiting_operator: previous.and_then(|p| p.awaiting_operator.clone()),
                    backup_policy: spec.backup.clone(),
                },
            );
            for r in &spec.replicas {
                let previous = state.replicas.get(&r.id);
                replicas.insert(
                    r.id.clone(),
                    Replica {
                        id: r.id.clone(),
                        service: service.name.clone(),
                        shard: spec.id.clone(),
                        region: r.region.clone(),
                        priority: r.priority,
                        address: r.address.clone(),
                        role: previous.map_or(ReplicaRole::Replica, |p| p.role),
                        controller: previous.and_then(|p| p.controller.clone()),
                        acked: previous.and_then(|p| p.acked),
                    },
                );
            }
        }
    }
    for controller in state.controllers.values_mut() {
        controller.replicas.retain(|id| replicas.contains_key(id));
    }
    state.regions = regions;
    state.shards = shards;
    state.replicas = replicas;
    state.topology = desired.clone();
    let summary = if lines.is_empty() { "no changes".to_string() } else { lines.join("; ") };
    fx.event("topology.applied", "topology", summary);
    Response::Applied { revision: fx.index }
}

pub(crate) fn register_controller(
    state: &mut State,
    id: &str,
    region: &str,
    identity: &str,
    replicas: &[String],
    fx: &mut Effects,
) -> Response {
    if !state.regions.contains_key(region) {
        return Response::refused(Refusal::NotFound, format!("region: unknown region {region:?}"));
    }
    for replica_id in replicas {
        let Some(replica) = state.replicas.get(replica_id) else {
            return Response::refused(
                Refusal::NotFound,
                format!("replicas: {replica_id:?} is not in the declared topology"),
            );
        };
        if replica.region != region {
            return Response::refused(
                Refusal::PermissionDenied,
                format!(
                    "replicas: {replica_id:?} is in region {}; controller {id} in {region} may act only for its region's replicas",
                    replica.region
                ),
            );
        }
        // One primary, one holder: a replica whose primary lease another
        // identity holds moves only once that lease is released or expired.
        let lease_key = primary_lease_key(&shard_key(&replica.service, &replica.shard));
        if let Some(lease) = state.leases.get(&lease_key).filter(|l| l.holder == *replica_id && l.owner != identity) {
            return Response::refused(
                Refusal::FailedPrecondition,
                format!(
                    "replicas: {replica_id:?} is primary under {} (token {}); it can move to {identity} once that \
                     lease is released or has expired",
                    lease.owner, lease.token
                ),
            );
        }
    }
    for replica_id in replicas {
        if let Some(replica) = state.replicas.get_mut(replica_id) {
            if let Some(previous) = replica.controller.replace(id.to_string()).filter(|p| p != id) {
                if let Some(old) = state.controllers.get_mut(&previous) {
                    old.replicas.retain(|r| r != replica_id);
                }
                fx.event("replica.controller_changed", replica_id, format!("from {previous} to {id}"));
            }
        }
    }
    let registered_at = state.controllers.get(id).map_or(fx.at_unix_ms, |c| c.registered_at_unix_ms);
    let controller = Controller {
        id: id.to_string(),
        region: region.to_string(),
        identity: identity.to_string(),
        registered_at_unix_ms: registered_at,
        replicas: replicas.to_vec(),
    };
    fx.event("controller.registered", id, format!("in {region} running {} replicas", replicas.len()));
    state.controllers.insert(id.to_string(), controller);
    Response::Applied { revision: fx.index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Request};
    use crate::model::RegionSpec;

    fn req(command: Command) -> Request {
        Request::system(5, command)
    }

    fn topology() -> Topology {
        crate::topology::tests::sample()
    }

    #[test]
    fn applying_a_topology_is_idempotent_and_keeps_runtime_state() {
        let mut state = State::default();
        let apply = |t: &Topology| req(Command::ApplyTopology { topology: t.clone() });
        assert_eq!(state.apply(1, &apply(&topology())), Response::Applied { revision: 1 });
        assert_eq!(state.replicas.len(), 2);
        state.shards.get_mut("orders/0").expect("shard").epoch = 7;
        assert_eq!(diff(&state, &topology()).0, Vec::<String>::new(), "a second apply changes nothing");
        state.apply(2, &apply(&topology()));
        assert_eq!(state.shards["orders/0"].epoch, 7, "runtime state survives a re-apply");
        let mut bigger = topology();
        bigger.services[0].shards[0].replicas[1].priority = 10;
        bigger.regions.push(RegionSpec { id: "ap-south".into(), capacity: 50 });
        let (lines, refusal) = diff(&state, &bigger);
        assert_eq!(refusal, None);
        assert_eq!(lines, vec!["+ region ap-south (capacity 50)", "~ replica orders-0-us: priority 50 -> 10"]);
    }

    #[test]
    fn removing_a_primary_replica_is_refused_and_changes_nothing() {
        let mut state = State::default();
        state.apply(1, &req(Command::ApplyTopology { topology: topology() }));
        state.replicas.get_mut("orders-0-us").expect("replica").role = ReplicaRole::Primary;
        state.shards.get_mut("orders/0").expect("shard").primary = Some("orders-0-us".into());
        let before = state.clone();
        let mut smaller = topology();
        smaller.services[0].shards[0].replicas.pop();
        let response = state.apply(2, &req(Command::ApplyTopology { topology: smaller }));
        assert!(
            matches!(response, Response::Refused { code: Refusal::FailedPrecondition, ref reason } if reason.contains("orders-0-us is a primary")),
            "{response:?}"
        );
        assert_eq!(State { revision: 1, last_at_unix_ms: 5, ..state }, before);
    }

    #[test]
    fn a_controller_may_register_only_its_own_regions_declared_replicas() {
        let mut state = State::default();
        state.apply(1, &req(Command::ApplyTopology { topology: topology() }));
        let register = |replicas: &[&str]| {
            req(Command::RegisterController {
                id: "ctl-eu".into(),
                region: "eu-west".into(),
                replicas: replicas.iter().map(|r| r.to_string()).collect(),
            })
        };
        let other_region = state.apply(2, &register(&["orders-0-eu", "orders-0-us"]));
        assert!(matches!(other_region, Response::Refused { code: Refusal::PermissionDenied, .. }), "{other_region:?}");
        let undeclared = state.apply(3, &register(&["nope"]));
        assert!(matches!(undeclared, Response::Refused { code: Refusal::NotFound, .. }), "{undeclared:?}");
        assert!(state.controllers.is_empty(), "refusals change nothing");
        assert_eq!(state.apply(4, &register(&["orders-0-eu"])), Response::Applied { revision: 4 });
        assert_eq!(state.replicas["orders-0-eu"].controller.as_deref(), Some("ctl-eu"));
    }
}
