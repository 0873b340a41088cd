//! Conversions between core types and wire types: the one place that knows both.

use crate::v1;
use interlock_core::lease::Lease;
use interlock_core::routing::RoutingPolicy;
use interlock_core::state::{Controller, Event, Region, RegionState, Replica, ReplicaRole, Shard};
use interlock_core::topology::{FailoverPolicy, RegionSpec, ReplicaSpec, ServiceSpec, ShardSpec, Topology};

pub fn region_state_name(state: RegionState) -> &'static str {
    match state {
        RegionState::Active => "ACTIVE",
        RegionState::Draining => "DRAINING",
        RegionState::Drained => "DRAINED",
        RegionState::Lost => "LOST",
        RegionState::Recovering => "RECOVERING",
    }
}

pub fn role_name(role: ReplicaRole) -> &'static str {
    match role {
        ReplicaRole::Primary => "PRIMARY",
        ReplicaRole::Replica => "REPLICA",
        ReplicaRole::Fenced => "FENCED",
        ReplicaRole::Recovering => "RECOVERING",
    }
}

impl From<&Topology> for v1::Topology {
    fn from(t: &Topology) -> Self {
        v1::Topology {
            regions: t.regions.iter().map(|r| v1::RegionSpec { id: r.id.clone(), capacity: r.capacity }).collect(),
            services: t
                .services
                .iter()
                .map(|s| v1::ServiceSpec {
                    name: s.name.clone(),
                    shards: s
                        .shards
                        .iter()
                        .map(|h| v1::ShardSpec {
                            id: h.id.clone(),
                            max_lag_on_failover: h.max_lag_on_failover,
                            cooldown_seconds: h.cooldown_seconds,
                            replicas: h
                                .replicas
                                .iter()
                                .map(|r| v1::ReplicaSpec {
                                    id: r.id.clone(),
                                    region: r.region.clone(),
                                    priority: r.priority,
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            failover: Some(v1::FailoverPolicy::from(&t.failover)),
            routing: Some(v1::RoutingPolicy {
                min_serving_regions: t.routing.min_serving_regions,
                capacity_headroom_pct: t.routing.capacity_headroom_pct,
                max_step_bps: t.routing.max_step_bps,
            }),
        }
    }
}

impl From<&FailoverPolicy> for v1::FailoverPolicy {
    fn from(p: &FailoverPolicy) -> Self {
        v1::FailoverPolicy {
            heartbeat_interval_ms: p.heartbeat_interval_ms,
            phi_threshold: p.phi_threshold,
            min_std_dev_ms: p.min_std_dev_ms,
            acceptable_pause_ms: p.acceptable_pause_ms,
            witness_quorum: p.witness_quorum,
            max_lost_regions: p.max_lost_regions,
            grace_ms: p.grace_ms,
            promote_ack_timeout_ms: p.promote_ack_timeout_ms,
            primary_lease_ttl_ms: p.primary_lease_ttl_ms,
            region_return_ms: p.region_return_ms,
            switchover_timeout_ms: p.switchover_timeout_ms,
        }
    }
}

impl From<v1::FailoverPolicy> for FailoverPolicy {
    fn from(p: v1::FailoverPolicy) -> Self {
        FailoverPolicy {
            heartbeat_interval_ms: p.heartbeat_interval_ms,
            phi_threshold: p.phi_threshold,
            min_std_dev_ms: p.min_std_dev_ms,
            acceptable_pause_ms: p.acceptable_pause_ms,
            witness_quorum: p.witness_quorum,
            max_lost_regions: p.max_lost_regions,
            grace_ms: p.grace_ms,
            promote_ack_timeout_ms: p.promote_ack_timeout_ms,
            primary_lease_ttl_ms: p.primary_lease_ttl_ms,
            region_return_ms: p.region_return_ms,
            switchover_timeout_ms: p.switchover_timeout_ms,
        }
    }
}

impl From<v1::Topology> for Topology {
    fn from(t: v1::Topology) -> Self {
        Topology {
            regions: t.regions.into_iter().map(|r| RegionSpec { id: r.id, capacity: r.capacity }).collect(),
            services: t
                .services
                .into_iter()
                .map(|s| ServiceSpec {
                    name: s.name,
                    shards: s
                        .shards
                        .into_iter()
                        .map(|h| ShardSpec {
                            id: h.id,
                            max_lag_on_failover: h.max_lag_on_failover,
                            cooldown_seconds: h.cooldown_seconds,
                            replicas: h
                                .replicas
                                .into_iter()
                                .map(|r| ReplicaSpec { id: r.id, region: r.region, priority: r.priority })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            failover: t.failover.map(FailoverPolicy::from).unwrap_or_default(),
            routing: t
                .routing
                .map(|r| RoutingPolicy {
                    min_serving_regions: r.min_serving_regions,
                    capacity_headroom_pct: r.capacity_headroom_pct,
                    max_step_bps: r.max_step_bps,
                })
                .unwrap_or_default(),
        }
    }
}

impl From<&Region> for v1::Region {
    fn from(r: &Region) -> Self {
        v1::Region {
            id: r.id.clone(),
            capacity: r.capacity,
            state: region_state_name(r.state).to_string(),
            maintenance: r.maintenance,
        }
    }
}

impl From<&Shard> for v1::Shard {
    fn from(s: &Shard) -> Self {
        v1::Shard {
            service: s.service.clone(),
            id: s.id.clone(),
            epoch: s.epoch,
            primary: s.primary.clone().unwrap_or_default(),
            max_lag_on_failover: s.max_lag_on_failover,
            replicas: s.replicas.clone(),
            pending: s.pending.as_ref().map(|p| p.replica.clone()).unwrap_or_default(),
            switchover_to: s.switchover.as_ref().map(|sw| sw.to.clone()).unwrap_or_default(),
            awaiting_operator: s.awaiting_operator.clone().unwrap_or_default(),
        }
    }
}

impl From<&Replica> for v1::Replica {
    fn from(r: &Replica) -> Self {
        v1::Replica {
            id: r.id.clone(),
            service: r.service.clone(),
            shard: r.shard.clone(),
            region: r.region.clone(),
            priority: r.priority,
            role: role_name(r.role).to_string(),
            controller: r.controller.clone().unwrap_or_default(),
            acked_role: r.acked.map(|(role, _)| role_name(role).to_string()).unwrap_or_default(),
            acked_epoch: r.acked.map_or(0, |(_, epoch)| epoch),
            position: None,
            lag: None,
            healthy: None,
        }
    }
}

impl From<&Controller> for v1::ControllerInfo {
    fn from(c: &Controller) -> Self {
        v1::ControllerInfo {
            id: c.id.clone(),
            region: c.region.clone(),
            identity: c.identity.clone(),
            registered_at_unix_ms: c.registered_at_unix_ms,
            replicas: c.replicas.clone(),
            last_heartbeat_ms_ago: None,
        }
    }
}

impl From<&Event> for v1::Event {
    fn from(e: &Event) -> Self {
        v1::Event {
            version: e.version,
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
            kind: e.kind.clone(),
            subject: e.subject.clone(),
            message: e.message.clone(),
        }
    }
}

/// A lease on the wire; `remaining_ms` is the leader's soft state.
pub fn lease_info(l: &Lease, remaining_ms: u64) -> v1::LeaseInfo {
    v1::LeaseInfo {
        key: l.key.clone(),
        holder: l.holder.clone(),
        token: l.token,
        ttl_ms: l.ttl_ms,
        remaining_ms,
        granted_at_unix_ms: l.granted_at_unix_ms,
    }
}

/// A role from its wire name.
pub fn parse_role(name: &str) -> Option<ReplicaRole> {
    [ReplicaRole::Primary, ReplicaRole::Replica, ReplicaRole::Fenced, ReplicaRole::Recovering]
        .into_iter()
        .find(|r| role_name(*r) == name)
}
