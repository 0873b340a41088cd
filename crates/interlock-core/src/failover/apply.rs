//! Region loss and primaries: the state transitions of SPEC §4.
//!
//! The invariant everything here protects: a shard's primary changes only by
//! a committed `Promote`, which increments the epoch and grants the shard's
//! primary lease with a new token — and only once nobody else holds that
//! lease. The old primary's lease is never taken away: it expires (the holder
//! fences itself first, by the holder rule) or its holder gives it back.

use crate::model::{Lease, Pending, Shard, Switchover};
use crate::routing;
use crate::state::{Effects, State};
use crate::vocab::{primary_lease_key, shard_key, PromotionMode, Refusal, RegionState, ReplicaRole, Response, SYSTEM};

fn refuse(code: Refusal, reason: impl Into<String>) -> Response {
    Response::refused(code, reason)
}

fn precondition(reason: impl Into<String>) -> Response {
    refuse(Refusal::FailedPrecondition, reason)
}

pub(crate) fn declare_region_lost(state: &mut State, region: &str, reason: &str, fx: &mut Effects) -> Response {
    let Some(r) = state.regions.get(region) else {
        return refuse(Refusal::NotFound, format!("region: unknown region {region:?}"));
    };
    if r.state == RegionState::Lost {
        return precondition(format!("region {region} is already LOST"));
    }
    if !state.automation_allowed(region) {
        return precondition(format!("region {region}: automation is paused (maintenance)"));
    }
    let lost = state.regions.values().filter(|r| r.state == RegionState::Lost).count();
    if lost >= state.topology.failover.max_lost_regions as usize {
        return precondition(format!(
            "{lost} regions are LOST; failover.max_lost_regions is {}",
            state.topology.failover.max_lost_regions
        ));
    }
    if state.serving_regions().all(|r| r.id == region) {
        return precondition(format!("region {region} is the last serving region; it is never declared lost"));
    }
    set_region_state(state, region, RegionState::Lost, fx.at_unix_ms);
    fx.event("region.lost", region, reason.to_string());
    Response::Applied { revision: fx.index }
}

fn set_region_state(state: &mut State, region: &str, to: RegionState, at_unix_ms: u64) {
    if let Some(r) = state.regions.get_mut(region) {
        r.state = to;
        r.state_since_unix_ms = at_unix_ms;
    }
}

pub(crate) fn change_region_state(
    state: &mut State,
    region: &str,
    to: RegionState,
    reason: &str,
    fx: &mut Effects,
) -> Response {
    let Some(r) = state.regions.get(region) else {
        return refuse(Refusal::NotFound, format!("region: unknown region {region:?}"));
    };
    let from = r.state;
    let allowed = match to {
        RegionState::Recovering => from == RegionState::Lost,
        RegionState::Active => {
            matches!(from, RegionState::Recovering | RegionState::Drained | RegionState::Draining)
        }
        RegionState::Lost | RegionState::Draining | RegionState::Drained => false,
    };
    if !allowed {
        return precondition(format!("region {region} is {from:?}; it cannot become {to:?} this way"));
    }
    if to == RegionState::Active {
        // Traffic comes back with the region: a planned move, under every rule.
        let mut regions = state.regions.clone();
        if let Some(r) = regions.get_mut(region) {
            r.state = to;
            r.state_since_unix_ms = fx.at_unix_ms;
            r.drain = None;
        }
        if let Err(Response::Refused { code, reason }) = routing::reroute_planned(state, regions, None, &[], fx) {
            return refuse(code, format!("{reason}; bring it back gradually with `interlockctl undrain {region}`"));
        }
    }
    set_region_state(state, region, to, fx.at_unix_ms);
    if to == RegionState::Recovering {
        // Its fenced replicas are asked (again) to confirm they stopped;
        // the confirmation lets them rejoin as replicas.
        for r in state.replicas.values_mut().filter(|r| r.region == region && r.role == ReplicaRole::Fenced) {
            r.acked = None;
        }
    }
    fx.event("region.state", region, format!("{from:?} -> {to:?}: {reason}"));
    Response::Applied { revision: fx.index }
}

pub(crate) fn set_maintenance(
    state: &mut State,
    region: Option<&str>,
    on: bool,
    reason: &str,
    fx: &mut Effects,
) -> Response {
    let word = if on { "on" } else { "off" };
    match region {
        None => {
            state.paused = on;
            fx.event("maintenance", "cluster", format!("{word} for all regions: {reason}"));
        }
        Some(id) => {
            let Some(r) = state.regions.get_mut(id) else {
                return refuse(Refusal::NotFound, format!("region: unknown region {id:?}"));
            };
            r.maintenance = on;
            fx.event("maintenance", id, format!("{word}: {reason}"));
        }
    }
    Response::Applied { revision: fx.index }
}

fn shard_at<'a>(state: &'a State, shard: &str, expected_epoch: u64) -> Result<&'a Shard, Response> {
    let s = state.shards.get(shard).ok_or_else(|| refuse(Refusal::NotFound, format!("shard: unknown {shard}")))?;
    if s.epoch != expected_epoch {
        return Err(precondition(format!(
            "shard {shard} is at epoch {}, not {expected_epoch}: something changed it meanwhile",
            s.epoch
        )));
    }
    Ok(s)
}

/// The shard, if it is still at `expected_epoch` and `replica_id` is one of its replicas.
fn shard_with<'a>(
    state: &'a State,
    shard_key: &str,
    replica_id: &str,
    expected_epoch: u64,
) -> Result<&'a Shard, Response> {
    let shard = shard_at(state, shard_key, expected_epoch)?;
    if !shard.replicas.iter().any(|r| r == replica_id) {
        return Err(refuse(Refusal::NotFound, format!("replica: {replica_id} is not a replica of {shard_key}")));
    }
    Ok(shard)
}

pub(crate) fn promote(
    state: &mut State,
    shard_key: &str,
    replica_id: &str,
    expected_epoch: u64,
    mode: PromotionMode,
    reason: &str,
    fx: &mut Effects,
) -> Response {
    let shard = match shard_with(state, shard_key, replica_id, expected_epoch) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let lease_key = primary_lease_key(shard_key);
    if let Some(lease) = state.leases.get(&lease_key).filter(|l| l.holder != replica_id) {
        return precondition(format!(
            "the primary lease of {shard_key} is still held by {} (token {}); it must expire or be released first",
            lease.holder, lease.token
        ));
    }
    let Some(region) = state.replicas.get(replica_id).map(|r| r.region.clone()) else {
        return refuse(Refusal::NotFound, format!("replica: unknown {replica_id}"));
    };
    if mode == PromotionMode::Automatic {
        if !state.automation_allowed(&region) {
            return precondition(format!("region {region}: automation is paused (maintenance)"));
        }
        // The cooldown spaces out automatic replacements of a primary; it
        // does not hold back a first election or the next candidate after
        // an unacknowledged one (the shard has no primary then).
        let cooldown_ms = shard.cooldown_seconds.saturating_mul(1000);
        if let Some(last) = shard.last_auto_failover_unix_ms.filter(|_| shard.primary.is_some()) {
            if fx.at_unix_ms < last.saturating_add(cooldown_ms) {
                return precondition(format!(
                    "shard {shard_key} failed over automatically {} ms ago; its cooldown is {} s",
                    fx.at_unix_ms.saturating_sub(last),
                    shard.cooldown_seconds
                ));
            }
        }
    }
    let previous = shard.primary.clone();
    let owner = state.controller_identity(replica_id).map(str::to_string);
    let epoch = expected_epoch + 1;
    let ttl_ms = state.topology.failover.primary_lease_ttl_ms;
    if let Some(old) = previous.as_deref().filter(|p| *p != replica_id) {
        if let Some(r) = state.replicas.get_mut(old) {
            r.role = ReplicaRole::Fenced;
        }
    }
    if let Some(r) = state.replicas.get_mut(replica_id) {
        r.role = ReplicaRole::Primary;
    }
    let token = crate::lease::next_token(state, fx);
    state.leases.insert(
        lease_key.clone(),
        Lease {
            key: lease_key,
            holder: replica_id.to_string(),
            ttl_ms,
            token,
            granted_at_unix_ms: fx.at_unix_ms,
            // Bound to whoever runs the replica now: only it may renew it.
            owner: owner.unwrap_or_default(),
            revoked: false,
        },
    );
    if let Some(s) = state.shards.get_mut(shard_key) {
        s.epoch = epoch;
        s.primary = Some(replica_id.to_string());
        s.pending = Some(Pending { replica: replica_id.to_string(), epoch, mode, since_unix_ms: fx.at_unix_ms });
        s.switchover = None;
        s.awaiting_operator = None;
        // A first election (no previous primary) starts no cooldown.
        if mode == PromotionMode::Automatic && previous.is_some() {
            s.last_auto_failover_unix_ms = Some(fx.at_unix_ms);
        }
    }
    let from = previous.map_or("no primary".to_string(), |p| format!("from {p}"));
    fx.event(
        "shard.promoted",
        shard_key,
        format!("{replica_id} in {region} promoted {from} ({mode:?}), epoch {epoch}, token {token}: {reason}"),
    );
    Response::Applied { revision: fx.index }
}

pub(crate) fn demote(
    state: &mut State,
    shard_key: &str,
    expected_epoch: u64,
    to: &str,
    reason: &str,
    fx: &mut Effects,
) -> Response {
    let shard = match shard_at(state, shard_key, expected_epoch) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(from) = shard.primary.clone() else {
        return precondition(format!("shard {shard_key} has no primary to switch over from"));
    };
    if from == to {
        return precondition(format!("{to} is already the primary of {shard_key}"));
    }
    if !shard.replicas.iter().any(|r| r == to) {
        return refuse(Refusal::NotFound, format!("to: {to} is not a replica of {shard_key}"));
    }
    if shard.pending.is_some() || shard.switchover.is_some() {
        return precondition(format!("shard {shard_key} has a promotion or switchover in progress"));
    }
    if let Some(r) = state.replicas.get_mut(&from) {
        r.role = ReplicaRole::Replica;
    }
    if let Some(s) = state.shards.get_mut(shard_key) {
        s.primary = None;
        s.switchover = Some(Switchover {
            from: from.clone(),
            to: to.to_string(),
            since_unix_ms: fx.at_unix_ms,
            from_position: None,
        });
    }
    fx.event("shard.demoted", shard_key, format!("{from} demoted for a switchover to {to}: {reason}"));
    Response::Applied { revision: fx.index }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn acknowledge(
    state: &mut State,
    replica_id: &str,
    epoch: u64,
    role: ReplicaRole,
    position: u64,
    by: &str,
    fx: &mut Effects,
) -> Response {
    let Some(replica) = state.replicas.get(replica_id) else {
        return refuse(Refusal::NotFound, format!("replica: unknown {replica_id}"));
    };
    // Only the controller that runs a replica speaks for it.
    match state.controller_identity(replica_id) {
        Some(identity) if identity == by || by == SYSTEM => {}
        other => {
            return refuse(
                Refusal::PermissionDenied,
                format!(
                    "replica: {replica_id} is run by {}; {by} may not acknowledge for it",
                    other.unwrap_or("nobody")
                ),
            )
        }
    }
    let shard_key = shard_key(&replica.service, &replica.shard);
    let Some(shard) = state.shards.get(&shard_key) else {
        return refuse(Refusal::NotFound, format!("shard: unknown {shard_key}"));
    };
    if shard.epoch != epoch || replica.role != role {
        return precondition(format!(
            "{replica_id} is {:?} at epoch {}; the acknowledgement of {role:?} at epoch {epoch} is stale",
            replica.role, shard.epoch
        ));
    }
    let region_lost = state.regions.get(&replica.region).is_some_and(|r| r.state == RegionState::Lost);
    let mut pending_done = None;
    let mut release = false;
    match role {
        ReplicaRole::Primary => {
            if shard.pending.as_ref().is_some_and(|p| p.replica == replica_id && p.epoch == epoch) {
                pending_done = shard.pending.as_ref().map(|p| fx.at_unix_ms.saturating_sub(p.since_unix_ms));
            }
        }
        ReplicaRole::Replica => {
            // A demoted primary has stopped writing: it gives its lease back.
            release = shard.switchover.as_ref().is_some_and(|s| s.from == replica_id);
        }
        ReplicaRole::Fenced | ReplicaRole::Recovering => {}
    }
    let lease_key = primary_lease_key(&shard_key);
    if release
        && state.leases.get(&lease_key).is_some_and(|l| l.holder == replica_id && (l.owner == by || by == SYSTEM))
    {
        state.leases.remove(&lease_key);
        fx.event("lease.revoked", &lease_key, format!("released by the demoted primary {replica_id}"));
    }
    if let Some(shard) = state.shards.get_mut(&shard_key) {
        if let Some(waited) = pending_done {
            shard.pending = None;
            fx.event(
                "shard.acknowledged",
                &shard_key,
                format!("{replica_id} acts as primary at epoch {epoch} ({waited} ms after promotion)"),
            );
        }
        if release {
            if let Some(s) = shard.switchover.as_mut() {
                s.from_position = Some(position);
            }
            fx.event("shard.demote_acknowledged", &shard_key, format!("{replica_id} stopped at position {position}"));
        }
    }
    if let Some(replica) = state.replicas.get_mut(replica_id) {
        // A fenced replica that confirms it stopped rejoins as a replica
        // (unless its region is still lost).
        if role == ReplicaRole::Fenced && !region_lost {
            replica.role = ReplicaRole::Replica;
            replica.acked = Some((ReplicaRole::Replica, epoch));
            fx.event(
                "replica.rejoined",
                replica_id,
                format!("confirmed fenced at epoch {epoch}; rejoins as a replica"),
            );
        } else {
            replica.acked = Some((role, epoch));
        }
    }
    Response::Applied { revision: fx.index }
}

pub(crate) fn fence(
    state: &mut State,
    shard_key: &str,
    replica_id: &str,
    expected_epoch: u64,
    reason: &str,
    fx: &mut Effects,
) -> Response {
    let shard = match shard_with(state, shard_key, replica_id, expected_epoch) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let was_primary = shard.primary.as_deref() == Some(replica_id);
    if let Some(r) = state.replicas.get_mut(replica_id) {
        r.role = ReplicaRole::Fenced;
    }
    if let Some(s) = state.shards.get_mut(shard_key) {
        if was_primary {
            s.primary = None;
        }
        if s.pending.as_ref().is_some_and(|p| p.replica == replica_id) {
            s.pending = None;
        }
        if s.switchover.as_ref().is_some_and(|sw| sw.to == replica_id || sw.from == replica_id) {
            s.switchover = None;
        }
    }
    // Its lease (if any) is not revoked: it stops being renewable and
    // expires, so a holder still acting stops before anyone else starts.
    fx.event("replica.fenced", replica_id, format!("in {shard_key} at epoch {expected_epoch}: {reason}"));
    Response::Applied { revision: fx.index }
}

pub(crate) fn await_operator(state: &mut State, shard_key: &str, reason: &str, fx: &mut Effects) -> Response {
    let Some(shard) = state.shards.get_mut(shard_key) else {
        return refuse(Refusal::NotFound, format!("shard: unknown {shard_key}"));
    };
    if shard.awaiting_operator.as_deref() != Some(reason) {
        shard.awaiting_operator = Some(reason.to_string());
        fx.event("shard.awaiting_operator", shard_key, reason.to_string());
    }
    Response::Applied { revision: fx.index }
}
