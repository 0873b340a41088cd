//! The replicated state and its pure transition function.
//!
//! `State::apply(index, request)` is the whole state machine: deterministic,
//! total (never panics), and the only writer of the state. Everything a
//! command decides is recorded as an [`Event`] with its reason.

use crate::command::{Command, Refusal, Request, Response};
use crate::lease::{Lease, RevokeReason};
use crate::topology::{shard_key, Topology};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// How many recent events the state keeps (older ones are dropped; watchers
/// that fall further behind get a resync).
pub const EVENTS_KEPT: usize = 10_000;

/// A value in the key-value space with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The log index of the command that last wrote this key.
    pub mod_revision: u64,
}

/// Whether a region serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RegionState {
    Active,
    Draining,
    Drained,
    Lost,
    Recovering,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub id: String,
    pub capacity: u32,
    pub state: RegionState,
    /// Automation paused for this region.
    pub maintenance: bool,
    /// When it entered its current state (proposer's wall clock).
    pub state_since_unix_ms: u64,
    /// A drain or undrain in progress (state DRAINING).
    pub drain: Option<Drain>,
}

/// A gradual drain (or undrain) of a region, step by step, resumable by any
/// leader: everything it needs is here, in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// How much of its base weight the region keeps now (10 000 = all).
    pub fraction_bps: u32,
    /// Change per step, in basis points of its base weight.
    pub step_bps: u32,
    pub interval_ms: u64,
    /// true: ramping back up (undrain).
    pub undrain: bool,
    /// When the next step is due (proposer's wall clock).
    pub next_step_at_unix_ms: u64,
}

/// The routing table of one service (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    pub service: String,
    /// The log index of the last change of `effective`.
    pub version: u64,
    /// Operators' weights, in basis points summing to 10 000.
    pub base: BTreeMap<String, u32>,
    /// What controllers apply: `base` shaped by region states.
    pub effective: BTreeMap<String, u32>,
    /// Proposer's wall clock when `version` was committed.
    pub updated_at_unix_ms: u64,
}

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReplicaRole {
    Primary,
    Replica,
    Fenced,
    Recovering,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub service: String,
    pub id: String,
    pub max_lag_on_failover: u64,
    pub cooldown_seconds: u64,
    /// +1 on every primary change.
    pub epoch: u64,
    pub primary: Option<String>,
    /// Replica ids, in declaration order.
    pub replicas: Vec<String>,
    /// A promotion waiting for its controller's acknowledgement.
    pub pending: Option<Pending>,
    /// A planned switchover in progress.
    pub switchover: Option<Switchover>,
    /// When the last automatic failover of this shard was committed.
    pub last_auto_failover_unix_ms: Option<u64>,
    /// Why the shard waits for an operator decision, if it does.
    pub awaiting_operator: Option<String>,
}

/// Why a replica was promoted; decides which rules apply (cooldown applies
/// to automatic promotions only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromotionMode {
    /// By the leader's failover loop (region loss, no primary).
    Automatic,
    /// The last step of a planned switchover (or its abort).
    Switchover,
    /// `interlockctl failover --to`.
    Operator,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub replica: String,
    pub epoch: u64,
    pub mode: PromotionMode,
    pub since_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub from: String,
    pub to: String,
    pub since_unix_ms: u64,
    /// The demoted primary's final position, once its controller acknowledged.
    pub from_position: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    pub service: String,
    pub shard: String,
    pub region: String,
    pub priority: u32,
    pub role: ReplicaRole,
    /// The controller that registered it, if any.
    pub controller: Option<String>,
    /// The last (role, epoch) its controller acknowledged having applied.
    pub acked: Option<(ReplicaRole, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Controller {
    pub id: String,
    pub region: String,
    /// The identity it authenticated with (mTLS subject, when TLS is on).
    pub identity: String,
    pub registered_at_unix_ms: u64,
    /// The replicas it runs.
    pub replicas: Vec<String>,
}

/// One decision, with its reason. Events are versioned by the log index of
/// the command that produced them (`version`) and their order within it (`seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub version: u64,
    pub seq: u32,
    pub at_unix_ms: u64,
    /// Dotted kind, e.g. `lease.expired`, `topology.applied`.
    pub kind: String,
    /// What it is about, e.g. a lease key or a region id.
    pub subject: String,
    pub message: String,
}

/// Everything the Raft state machine holds. Deterministic: ordered maps only,
/// so that two replicas that applied the same log encode to the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The most recent [`EVENTS_KEPT`] events, oldest first.
    pub events: VecDeque<Event>,
    /// The version of the newest event dropped from `events` (0: none yet).
    /// A watcher resuming from before it has missed events.
    pub events_evicted_through: u64,
    /// `interlockctl maintenance on` without a region: all automation paused.
    pub paused: bool,
    /// By service.
    pub routing: BTreeMap<String, Routing>,
}

/// What an apply produces besides the response: events to record.
pub(crate) struct Effects {
    pub(crate) index: u64,
    pub(crate) at_unix_ms: u64,
    events: Vec<Event>,
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
}

impl State {
    /// Applies `request`, which was committed at log `index`.
    ///
    /// Total and deterministic: the same state and the same request always
    /// give the same result, on every replica, without panicking. A refused
    /// command changes nothing but the revision.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        self.revision = self.revision.max(index);
        self.last_at_unix_ms = self.last_at_unix_ms.max(request.at_unix_ms);
        if let Err(e) = request.command.validate() {
            // Only a buggy or hostile proposer gets here; refuse deterministically.
            return Response::refused(Refusal::InvalidArgument, e.to_string());
        }
        let mut fx = Effects { index, at_unix_ms: request.at_unix_ms, events: Vec::new() };
        let response = match &request.command {
            Command::Put { .. } | Command::Delete { .. } => self.apply_kv(index, &request.command),
            Command::Batch { commands } => {
                Response::Batch { responses: commands.iter().map(|c| self.apply_kv(index, c)).collect() }
            }
            Command::ApplyTopology { topology } => self.apply_topology(topology, &mut fx),
            Command::RegisterController { id, region, identity, replicas } => {
                self.register_controller(id, region, identity, replicas, &mut fx)
            }
            Command::LeaseGrant { key, holder, ttl_ms } => self.grant(key, holder, *ttl_ms, &mut fx),
            Command::LeaseRevoke { key, token, reason } => self.revoke(key, *token, *reason, &mut fx),
            Command::DeclareRegionLost { region, reason } => self.declare_region_lost(region, reason, &mut fx),
            Command::SetRegionState { region, state, reason } => {
                self.change_region_state(region, *state, reason, &mut fx)
            }
            Command::SetMaintenance { region, on, reason } => {
                self.set_maintenance(region.as_deref(), *on, reason, &mut fx)
            }
            Command::Promote { shard, replica, expected_epoch, mode, reason } => {
                self.promote(shard, replica, *expected_epoch, *mode, reason, &mut fx)
            }
            Command::Demote { shard, expected_epoch, to, reason } => {
                self.demote(shard, *expected_epoch, to, reason, &mut fx)
            }
            Command::Acknowledge { replica, epoch, role, position } => {
                self.acknowledge(replica, *epoch, *role, *position, &mut fx)
            }
            Command::Fence { shard, replica, expected_epoch, reason } => {
                self.fence(shard, replica, *expected_epoch, reason, &mut fx)
            }
            Command::AwaitOperator { shard, reason } => self.await_operator(shard, reason, &mut fx),
            Command::Note { kind, subject, message } => {
                fx.event(kind, subject, message.clone());
                Response::Applied { revision: index }
            }
            Command::SetRouting { service, weights, overrides, reason } => {
                self.set_routing(service, weights, overrides, reason, &mut fx)
            }
            Command::Drain { region, undrain, step_bps, interval_ms, reason } => {
                self.drain(region, *undrain, *step_bps, *interval_ms, reason, &mut fx)
            }
            Command::DrainStep { region, expected_fraction_bps } => {
                self.drain_step(region, *expected_fraction_bps, &mut fx)
            }
        };
        // Region states shape routing: a lost, recovering or re-declared
        // region reroutes every service (never refused; see routing_state.rs).
        if matches!(response, Response::Applied { .. })
            && matches!(
                request.command,
                Command::ApplyTopology { .. } | Command::DeclareRegionLost { .. } | Command::SetRegionState { .. }
            )
        {
            self.reroute_forced(&mut fx);
        }
        self.record(fx.events);
        debug_assert_eq!(self.validate(), Ok(()));
        response
    }

    /// A key-value write at `index` (on its own or as part of a batch).
    fn apply_kv(&mut self, index: u64, command: &Command) -> Response {
        match command {
            Command::Put { key, value } => {
                self.kv.insert(key.clone(), KvEntry { value: value.clone(), mod_revision: index });
                Response::Applied { revision: index }
            }
            Command::Delete { key } => {
                self.kv.remove(key);
                Response::Applied { revision: index }
            }
            // Batch validation admits nothing else; never panic on a log entry.
            other => Response::refused(Refusal::InvalidArgument, format!("{other} cannot be batched")),
        }
    }

    /// Records that a log entry without application payload (a blank entry
    /// or a membership change) was applied at `index`.
    pub fn apply_marker(&mut self, index: u64) {
        self.revision = self.revision.max(index);
    }

    fn record(&mut self, events: Vec<Event>) {
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

    /// The changes `desired` would make to the declared topology, one line
    /// each (`+` added, `-` removed, `~` changed), and the first reason it
    /// would be refused, if any. Used by apply and by `--dry-run`.
    pub fn topology_diff(&self, desired: &Topology) -> (Vec<String>, Option<(Refusal, String)>) {
        let mut lines = Vec::new();
        let mut refusal = None;
        let current = &self.topology;
        let old_regions: BTreeMap<&str, u32> = current.regions.iter().map(|r| (r.id.as_str(), r.capacity)).collect();
        let new_regions: BTreeMap<&str, u32> = desired.regions.iter().map(|r| (r.id.as_str(), r.capacity)).collect();
        for (id, capacity) in &new_regions {
            match old_regions.get(id) {
                None => lines.push(format!("+ region {id} (capacity {capacity})")),
                Some(old) if old != capacity => lines.push(format!("~ region {id}: capacity {old} -> {capacity}")),
                Some(_) => {}
            }
        }
        for id in old_regions.keys().filter(|id| !new_regions.contains_key(*id)) {
            lines.push(format!("- region {id}"));
            let registered: Vec<&str> =
                self.controllers.values().filter(|c| c.region == *id).map(|c| c.id.as_str()).collect();
            if !registered.is_empty() && refusal.is_none() {
                refusal = Some((
                    Refusal::FailedPrecondition,
                    format!("region {id} has registered controllers {registered:?}; retire them before removing it"),
                ));
            }
        }
        let old_replicas = current.replicas();
        let new_replicas = desired.replicas();
        let old_shards: BTreeMap<String, _> = current
            .services
            .iter()
            .flat_map(|s| s.shards.iter().map(move |h| (shard_key(&s.name, &h.id), h)))
            .collect();
        let new_shards: BTreeMap<String, _> = desired
            .services
            .iter()
            .flat_map(|s| s.shards.iter().map(move |h| (shard_key(&s.name, &h.id), h)))
            .collect();
        for (key, shard) in &new_shards {
            match old_shards.get(key) {
                None => lines.push(format!("+ shard {key} ({} replicas)", shard.replicas.len())),
                Some(old) => {
                    if old.max_lag_on_failover != shard.max_lag_on_failover {
                        lines.push(format!(
                            "~ shard {key}: max_lag_on_failover {} -> {}",
                            old.max_lag_on_failover, shard.max_lag_on_failover
                        ));
                    }
                    if old.cooldown_seconds != shard.cooldown_seconds {
                        lines.push(format!(
                            "~ shard {key}: cooldown_seconds {} -> {}",
                            old.cooldown_seconds, shard.cooldown_seconds
                        ));
                    }
                }
            }
        }
        for key in old_shards.keys().filter(|k| !new_shards.contains_key(*k)) {
            lines.push(format!("- shard {key}"));
        }
        for (id, (service, shard, replica)) in &new_replicas {
            let at = shard_key(&service.name, &shard.id);
            match old_replicas.get(id) {
                None => {
                    lines.push(format!("+ replica {id} in {} for {at} (priority {})", replica.region, replica.priority))
                }
                Some((old_service, old_shard, old)) => {
                    let old_at = shard_key(&old_service.name, &old_shard.id);
                    if old_at != at || old.region != replica.region {
                        lines.push(format!("~ replica {id}: {old_at} in {} -> {at} in {}", old.region, replica.region));
                        if refusal.is_none() {
                            refusal = Some((
                                Refusal::FailedPrecondition,
                                format!("replica {id} cannot move between shards or regions; declare a new replica"),
                            ));
                        }
                    }
                    if old.priority != replica.priority {
                        lines.push(format!("~ replica {id}: priority {} -> {}", old.priority, replica.priority));
                    }
                }
            }
        }
        if current.failover != desired.failover {
            lines.push(format!("~ failover policy: {:?} -> {:?}", current.failover, desired.failover));
        }
        if current.routing != desired.routing {
            lines.push(format!("~ routing policy: {:?} -> {:?}", current.routing, desired.routing));
        }
        for id in old_replicas.keys().filter(|id| !new_replicas.contains_key(*id)) {
            lines.push(format!("- replica {id}"));
            let is_primary = self.replicas.get(*id).is_some_and(|r| r.role == ReplicaRole::Primary);
            if is_primary && refusal.is_none() {
                refusal = Some((
                    Refusal::FailedPrecondition,
                    format!("replica {id} is a primary; switch its shard over before removing it"),
                ));
            }
        }
        (lines, refusal)
    }

    fn apply_topology(&mut self, desired: &Topology, fx: &mut Effects) -> Response {
        let (lines, refusal) = self.topology_diff(desired);
        if let Some((code, reason)) = refusal {
            return Response::refused(code, reason);
        }
        let mut regions = BTreeMap::new();
        for spec in &desired.regions {
            let region = match self.regions.get(&spec.id) {
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
                let previous = self.shards.get(&key);
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
                    },
                );
                for r in &spec.replicas {
                    let previous = self.replicas.get(&r.id);
                    replicas.insert(
                        r.id.clone(),
                        Replica {
                            id: r.id.clone(),
                            service: service.name.clone(),
                            shard: spec.id.clone(),
                            region: r.region.clone(),
                            priority: r.priority,
                            role: previous.map_or(ReplicaRole::Replica, |p| p.role),
                            controller: previous.and_then(|p| p.controller.clone()),
                            acked: previous.and_then(|p| p.acked),
                        },
                    );
                }
            }
        }
        for controller in self.controllers.values_mut() {
            controller.replicas.retain(|id| replicas.contains_key(id));
        }
        self.regions = regions;
        self.shards = shards;
        self.replicas = replicas;
        self.topology = desired.clone();
        let summary = if lines.is_empty() { "no changes".to_string() } else { lines.join("; ") };
        fx.event("topology.applied", "topology", summary);
        Response::Applied { revision: fx.index }
    }

    fn register_controller(
        &mut self,
        id: &str,
        region: &str,
        identity: &str,
        replicas: &[String],
        fx: &mut Effects,
    ) -> Response {
        if !self.regions.contains_key(region) {
            return Response::refused(Refusal::NotFound, format!("region: unknown region {region:?}"));
        }
        for replica_id in replicas {
            let Some(replica) = self.replicas.get(replica_id) else {
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
        }
        for replica_id in replicas {
            if let Some(replica) = self.replicas.get_mut(replica_id) {
                if let Some(previous) = replica.controller.replace(id.to_string()).filter(|p| p != id) {
                    if let Some(old) = self.controllers.get_mut(&previous) {
                        old.replicas.retain(|r| r != replica_id);
                    }
                    fx.event("replica.controller_changed", replica_id, format!("from {previous} to {id}"));
                }
            }
        }
        let registered_at = self.controllers.get(id).map_or(fx.at_unix_ms, |c| c.registered_at_unix_ms);
        let controller = Controller {
            id: id.to_string(),
            region: region.to_string(),
            identity: identity.to_string(),
            registered_at_unix_ms: registered_at,
            replicas: replicas.to_vec(),
        };
        fx.event("controller.registered", id, format!("in {region} running {} replicas", replicas.len()));
        self.controllers.insert(id.to_string(), controller);
        Response::Applied { revision: fx.index }
    }

    fn grant(&mut self, key: &str, holder: &str, ttl_ms: u64, fx: &mut Effects) -> Response {
        if let Some(refusal) = self.primary_lease_grant_refusal(key, holder) {
            return refusal;
        }
        if let Some(lease) = self.leases.get(key) {
            if lease.holder == holder {
                return Response::Lease { token: lease.token, ttl_ms: lease.ttl_ms };
            }
            return Response::refused(
                Refusal::FailedPrecondition,
                format!("lease {key} is held by {} (token {})", lease.holder, lease.token),
            );
        }
        let lease = Lease {
            key: key.to_string(),
            holder: holder.to_string(),
            ttl_ms,
            token: fx.index,
            granted_at_unix_ms: fx.at_unix_ms,
        };
        self.leases.insert(key.to_string(), lease);
        fx.event("lease.granted", key, format!("to {holder} for {ttl_ms} ms, token {}", fx.index));
        Response::Lease { token: fx.index, ttl_ms }
    }

    fn revoke(&mut self, key: &str, token: Option<u64>, reason: RevokeReason, fx: &mut Effects) -> Response {
        let Some(lease) = self.leases.get(key) else {
            return Response::refused(Refusal::NotFound, format!("lease {key} is not held"));
        };
        if let Some(token) = token.filter(|t| *t != lease.token) {
            return Response::refused(
                Refusal::FailedPrecondition,
                format!("lease {key} now has token {} (not {token})", lease.token),
            );
        }
        let (kind, why) = match reason {
            RevokeReason::Requested => ("lease.revoked", "revoked on request"),
            RevokeReason::Expired => ("lease.expired", "expired: no keepalive confirmed within the TTL"),
        };
        fx.event(kind, key, format!("{why}; held by {} with token {}", lease.holder, lease.token));
        self.note_primary_lease_gone(key, reason, fx);
        self.leases.remove(key);
        Response::Applied { revision: fx.index }
    }

    /// Checks the state's own invariants (run after every transition in
    /// debug builds and by the tests).
    pub fn validate(&self) -> Result<(), String> {
        if let Some((key, entry)) = self.kv.iter().find(|(_, e)| e.mod_revision > self.revision) {
            return Err(format!("key {key} has mod_revision {} beyond revision {}", entry.mod_revision, self.revision));
        }
        if let Some(lease) = self.leases.values().find(|l| l.token > self.revision) {
            return Err(format!("lease {} has token {} beyond revision {}", lease.key, lease.token, self.revision));
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
            if sum != crate::routing::TOTAL_BPS && sum != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::RegionSpec;

    fn req(command: Command) -> Request {
        Request { at_unix_ms: 5, command }
    }

    fn put(key: &str, value: &[u8]) -> Request {
        req(Command::Put { key: key.into(), value: value.to_vec() })
    }

    fn topology() -> Topology {
        crate::topology::tests::sample()
    }

    #[test]
    fn put_and_delete_track_revisions() {
        let mut state = State::default();
        assert_eq!(state.apply(3, &put("a", b"1")), Response::Applied { revision: 3 });
        assert_eq!(state.apply(4, &put("a", b"2")), Response::Applied { revision: 4 });
        assert_eq!(state.kv["a"], KvEntry { value: b"2".to_vec(), mod_revision: 4 });
        state.apply(5, &Request { at_unix_ms: 6, command: Command::Delete { key: "a".into() } });
        assert!(state.kv.is_empty());
        assert_eq!((state.revision, state.last_at_unix_ms), (5, 6));
    }

    #[test]
    fn a_batch_applies_its_writes_in_order_at_one_revision() {
        let mut state = State::default();
        let commands = vec![
            Command::Put { key: "a".into(), value: b"1".to_vec() },
            Command::Put { key: "b".into(), value: b"2".to_vec() },
            Command::Delete { key: "a".into() },
            Command::Put { key: "b".into(), value: b"3".to_vec() },
        ];
        let response = state.apply(7, &Request { at_unix_ms: 9, command: Command::Batch { commands } });
        assert_eq!(response, Response::Batch { responses: vec![Response::Applied { revision: 7 }; 4] });
        assert_eq!(state.kv.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(state.kv["b"], KvEntry { value: b"3".to_vec(), mod_revision: 7 });
        assert_eq!((state.revision, state.last_at_unix_ms), (7, 9));

        // A batch that validation refuses changes nothing but the revision.
        let grant = Command::LeaseGrant { key: "l".into(), holder: "h".into(), ttl_ms: 1000 };
        let refused = state.apply(8, &Request { at_unix_ms: 10, command: Command::Batch { commands: vec![grant] } });
        assert!(matches!(refused, Response::Refused { code: Refusal::InvalidArgument, .. }), "{refused:?}");
        assert!(state.leases.is_empty());
    }

    #[test]
    fn an_invalid_command_is_refused_and_changes_nothing_but_the_revision() {
        let mut state = State::default();
        let response = state.apply(1, &put("", b"x"));
        assert!(
            matches!(response, Response::Refused { code: Refusal::InvalidArgument, reason } if reason.contains("key"))
        );
        assert!(state.kv.is_empty());
    }

    #[test]
    fn applying_a_topology_is_idempotent_and_keeps_runtime_state() {
        let mut state = State::default();
        let apply = |t: &Topology| req(Command::ApplyTopology { topology: t.clone() });
        assert_eq!(state.apply(1, &apply(&topology())), Response::Applied { revision: 1 });
        assert_eq!(state.replicas.len(), 2);
        state.shards.get_mut("orders/0").expect("shard").epoch = 7;
        assert_eq!(state.topology_diff(&topology()).0, Vec::<String>::new(), "a second apply changes nothing");
        state.apply(2, &apply(&topology()));
        assert_eq!(state.shards["orders/0"].epoch, 7, "runtime state survives a re-apply");
        let mut bigger = topology();
        bigger.services[0].shards[0].replicas[1].priority = 10;
        bigger.regions.push(RegionSpec { id: "ap-south".into(), capacity: 50 });
        let (lines, refusal) = state.topology_diff(&bigger);
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
                identity: "controller:eu-west".into(),
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

    #[test]
    fn lease_tokens_are_log_indexes_and_a_held_key_is_refused() {
        let mut state = State::default();
        let grant = |holder: &str| req(Command::LeaseGrant { key: "k".into(), holder: holder.into(), ttl_ms: 1000 });
        assert_eq!(state.apply(10, &grant("a")), Response::Lease { token: 10, ttl_ms: 1000 });
        assert_eq!(
            state.apply(11, &grant("a")),
            Response::Lease { token: 10, ttl_ms: 1000 },
            "idempotent for its holder"
        );
        assert!(matches!(state.apply(12, &grant("b")), Response::Refused { code: Refusal::FailedPrecondition, .. }));
        let stale = req(Command::LeaseRevoke { key: "k".into(), token: Some(9), reason: RevokeReason::Expired });
        assert!(
            matches!(state.apply(13, &stale), Response::Refused { .. }),
            "a stale expiry cannot free a newer grant"
        );
        let expire = req(Command::LeaseRevoke { key: "k".into(), token: Some(10), reason: RevokeReason::Expired });
        assert_eq!(state.apply(14, &expire), Response::Applied { revision: 14 });
        assert_eq!(state.apply(15, &grant("b")), Response::Lease { token: 15, ttl_ms: 1000 });
        let kinds: Vec<&str> = state.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["lease.granted", "lease.expired", "lease.granted"]);
        assert_eq!(state.events_after(10).count(), 2);
        assert_eq!(state.events_evicted_through, 0);
    }

    #[test]
    fn same_log_same_bytes() {
        let log: Vec<Request> = (0..50).map(|i| put(&format!("k{}", i % 7), &[i as u8])).collect();
        let run = || {
            let mut s = State::default();
            for (i, r) in log.iter().enumerate() {
                s.apply(i as u64 + 1, r);
            }
            crate::codec::encode(&s).expect("encode")
        };
        assert_eq!(run(), run());
    }
}
