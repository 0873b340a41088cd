//! What applying a topology would change, for `apply` and `--dry-run`.

use crate::model::Topology;
use crate::state::State;
use crate::vocab::{shard_key, Refusal, ReplicaRole};
use std::collections::BTreeMap;

/// The changes `desired` would make to the declared topology, one line
/// each (`+` added, `-` removed, `~` changed), and the first reason it
/// would be refused, if any. Used by apply and by `--dry-run`.
pub fn diff(state: &State, desired: &Topology) -> (Vec<String>, Option<(Refusal, String)>) {
    let mut lines = Vec::new();
    let mut refusal = None;
    let current = &state.topology;
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
            state.controllers.values().filter(|c| c.region == *id).map(|c| c.id.as_str()).collect();
        if !registered.is_empty() && refusal.is_none() {
            refusal = Some((
                Refusal::FailedPrecondition,
                format!("region {id} has registered controllers {registered:?}; retire them before removing it"),
            ));
        }
    }
    let old_replicas = current.replicas();
    let new_replicas = desired.replicas();
    let old_shards: BTreeMap<String, _> =
        current.services.iter().flat_map(|s| s.shards.iter().map(move |h| (shard_key(&s.name, &h.id), h))).collect();
    let new_shards: BTreeMap<String, _> =
        desired.services.iter().flat_map(|s| s.shards.iter().map(move |h| (shard_key(&s.name, &h.id), h))).collect();
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
                if old.backup != shard.backup {
                    lines.push(format!("~ shard {key}: backup policy {:?} -> {:?}", old.backup, shard.backup));
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
                if old.address != replica.address {
                    lines.push(format!("~ replica {id}: address {:?} -> {:?}", old.address, replica.address));
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
    if current.backups != desired.backups {
        lines.push(format!("~ backup settings: {:?} -> {:?}", current.backups, desired.backups));
    }
    for id in old_replicas.keys().filter(|id| !new_replicas.contains_key(*id)) {
        lines.push(format!("- replica {id}"));
        let is_primary = state.replicas.get(*id).is_some_and(|r| r.role == ReplicaRole::Primary);
        if is_primary && refusal.is_none() {
            refusal = Some((
                Refusal::FailedPrecondition,
                format!("replica {id} is a primary; switch its shard over before removing it"),
            ));
        }
    }
    (lines, refusal)
}
