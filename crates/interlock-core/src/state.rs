//! The replicated state: every record of the data model in one value, its
//! event log, and its invariants. The transitions live with their
//! capabilities (`kv`, `topology`, `lease`, `failover`, `routing`) and are
//! dispatched by [`State::apply`](crate::apply).

use crate::model::{
    Approval, AuditCheckpoint, AuditEntry, Controller, Event, Execution, KvEntry, Lease, Region, Replica, RestoreJob,
    Routing, Runbook, Shard, ShardBackups, Topology,
};
use crate::vocab::{RegionState, ReplicaRole, TOTAL_BPS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How many recent events the state keeps (older ones are dropped; watchers
/// that fall further behind get a resync).
pub const EVENTS_KEPT: usize = 10_000;

/// Everything the Raft state machine holds. Deterministic: ordered maps only,
/// so that two replicas that applied the same log encode to the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct State {
    /// The key-value space (etcd-like; used by operators and tests).
    pub kv: BTreeMap<String, KvEntry>,
    /// Log index of the last applied entry (0 before any).
    pub revision: u64,
    /// Wall clock of the last applied command, from its proposer.
    pub last_at_unix_ms: u64,
    /// The topology as last applied by an operator.
    pub topology: Topology,
    pub regions: BTreeMap<String, Region>,
    /// By `service/shard`.
    pub shards: BTreeMap<String, Shard>,
    pub replicas: BTreeMap<String, Replica>,
    pub controllers: BTreeMap<String, Controller>,
    pub leases: BTreeMap<String, Lease>,
    /// The last fencing token handed out, by a grant or a promotion (0
    /// before any); see `lease::next_token`.
    pub last_token: u64,
    /// The most recent [`EVENTS_KEPT`] events, oldest first.
    pub events: VecDeque<Event>,
    /// The version of the newest event dropped from `events` (0: none yet).
    /// A watcher resuming from before it has missed events.
    pub events_evicted_through: u64,
    /// `interlockctl maintenance on` without a region: all automation paused.
    pub paused: bool,
    /// By service.
    pub routing: BTreeMap<String, Routing>,
    /// Two-person approvals by id (the log index of the request), the most
    /// recent [`crate::approval::APPROVALS_KEPT`].
    pub approvals: BTreeMap<u64, Approval>,
    /// The hash-chained audit trail, oldest first, the most recent
    /// [`crate::audit::AUDIT_KEPT`]; `audit_checkpoint` covers what was trimmed.
    pub audit: VecDeque<AuditEntry>,
    pub audit_checkpoint: AuditCheckpoint,
    /// The backup catalogue, by `service/shard` (SPEC §6).
    pub backups: BTreeMap<String, ShardBackups>,
    /// Restore tests running now, by job id (the log index that started it).
    pub restore_jobs: BTreeMap<u64, RestoreJob>,
    /// Runbooks by name (SPEC §7).
    pub runbooks: BTreeMap<String, Runbook>,
    /// Runbook executions by id (the log index that started each), the most
    /// recent [`crate::runbook::EXECUTIONS_KEPT`].
    pub executions: BTreeMap<u64, Execution>,
}

/// What an apply produces besides the response: events to record.
pub(crate) struct Effects {
    pub(crate) index: u64,
    pub(crate) at_unix_ms: u64,
    pub(crate) events: Vec<Event>,
}

impl Effects {
    pub(crate) fn event(&mut self, kind: &str, subject: &str, message: String) {
        let seq = self.events.len() as u32;
        self.events.push(Event {
            version: self.index,
            seq,
            at_unix_ms: self.at_unix_ms,
            kind: kind.to_string(),
            subject: subject.to_string(),
            message,
        });
    }

    /// The effects of the command committed at `index`, proposed at `at_unix_ms`.
    pub(crate) fn new(index: u64, at_unix_ms: u64) -> Self {
        Effects { index, at_unix_ms, events: Vec::new() }
    }
}

impl State {
    /// The database address of shard `shard_key`'s primary; empty if it has
    /// none or its address is not declared.
    pub fn primary_address(&self, shard_key: &str) -> String {
        let primary = self.shards.get(shard_key).and_then(|s| s.primary.as_deref());
        primary.and_then(|p| self.replicas.get(p)).map(|r| r.address.clone()).unwrap_or_default()
    }

    /// Records that a log entry without application payload (a blank entry
    /// or a membership change) was applied at `index`.
    pub fn apply_marker(&mut self, index: u64) {
        self.revision = self.revision.max(index);
    }

    pub(crate) fn record(&mut self, events: Vec<Event>) {
        for event in events {
            if self.events.len() == EVENTS_KEPT {
                if let Some(dropped) = self.events.pop_front() {
                    self.events_evicted_through = dropped.version;
                }
            }
            self.events.push_back(event);
        }
    }

    /// Events with a version after `version`, oldest first.
    pub fn events_after(&self, version: u64) -> impl Iterator<Item = &Event> {
        let start = self.events.partition_point(|e| e.version <= version);
        self.events.range(start..)
    }

    /// The identity of the controller that runs `replica`, if one does.
    pub fn controller_identity(&self, replica: &str) -> Option<&str> {
        let controller = self.replicas.get(replica)?.controller.as_deref()?;
        self.controllers.get(controller).map(|c| c.identity.as_str())
    }

    /// Regions that serve traffic and are not lost.
    pub fn serving_regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values().filter(|r| matches!(r.state, RegionState::Active | RegionState::Draining))
    }

    /// Whether automation may act on `region` (no global pause, no maintenance).
    pub fn automation_allowed(&self, region: &str) -> bool {
        !self.paused && self.regions.get(region).is_some_and(|r| !r.maintenance)
    }

    /// Checks the state's own invariants (run after every transition in
    /// debug builds and by the tests).
    pub fn validate(&self) -> Result<(), String> {
        if let Some((key, entry)) = self.kv.iter().find(|(_, e)| e.mod_revision > self.revision) {
            return Err(format!("key {key} has mod_revision {} beyond revision {}", entry.mod_revision, self.revision));
        }
        if let Some(lease) = self.leases.values().find(|l| l.token > self.last_token) {
            return Err(format!(
                "lease {} has token {} beyond the last handed out, {}",
                lease.key, lease.token, self.last_token
            ));
        }
        for (key, shard) in &self.shards {
            if let Some(primary) = &shard.primary {
                if !shard.replicas.contains(primary) {
                    return Err(format!("shard {key} has primary {primary} that is not one of its replicas"));
                }
            }
            let primaries = shard
                .replicas
                .iter()
                .filter(|r| self.replicas.get(*r).is_some_and(|r| r.role == ReplicaRole::Primary))
                .count();
            if primaries > 1 {
                return Err(format!("shard {key} has {primaries} replicas in role Primary"));
            }
        }
        for (service, routing) in &self.routing {
            let sum: u32 = routing.effective.values().sum();
            if sum != TOTAL_BPS && sum != 0 {
                return Err(format!("routing of {service} sums to {sum} bps"));
            }
            for (region, weight) in &routing.effective {
                let lost = self.regions.get(region).is_none_or(|r| r.state == RegionState::Lost);
                if lost && *weight > 0 {
                    return Err(format!("routing of {service} gives {weight} bps to lost or unknown region {region}"));
                }
            }
        }
        for replica in self.replicas.values() {
            if !self.regions.contains_key(&replica.region) {
                return Err(format!("replica {} is in undeclared region {}", replica.id, replica.region));
            }
        }
        let mut last = (0u64, 0u32);
        for event in &self.events {
            if (event.version, event.seq) <= last && last != (0, 0) {
                return Err(format!("event ({}, {}) is out of order", event.version, event.seq));
            }
            last = (event.version, event.seq);
        }
        Ok(())
    }
}
