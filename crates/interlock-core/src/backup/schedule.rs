//! The decision of the leader's backup loop, as a pure function of the state,
//! the leader's wall clock and which controllers it hears.
//!
//! 1. A running restore test past its deadline, or whose controller is not
//!    heard (or no longer registered), is abandoned.
//! 2. Each shard whose newest backup is neither verified nor being tested
//!    gets a test, the longest-waiting shard first (by when its newest
//!    backup was reported), while its region has a free slot
//!    (`max_restores_per_region`). The controller is chosen, in order:
//!    a region other than the backup's source (always), that is not LOST
//!    or in maintenance, whose controller is heard and has not already
//!    failed or lost a test of this backup; then, preferring a region where
//!    no test of this backup failed, a region whose last finished test of
//!    this shard did not fail (else a region that keeps failing would get
//!    every new backup first, and frequent backups would never be verified —
//!    found by `tests/backups.rs`), a region where the shard has a replica
//!    (a failover could land there), the region that proved this shard's
//!    backups least often (so the proofs rotate over the target regions),
//!    the region with the fewest running tests, and the controller id.
//!
//! Fair by construction: a slot that frees goes to the shard that has
//! waited longest, so with `R` regions of `K` slots and tests of `d` seconds
//! each shard waits at most about `shards × d / (R × K)` (the scale
//! benchmark measures it).

use super::apply::running_in;
use super::policy;
use crate::model::{Backup, Command, RestoreOutcome};
use crate::state::State;
use crate::vocab::RegionState;
use std::collections::BTreeMap;

/// Most commands one plan proposes (the rest wait for the next round).
pub const PLAN_MAX_COMMANDS: usize = 256;

/// The commands the backup loop proposes now.
pub fn plan(state: &State, now_unix_ms: u64, heard: impl Fn(&str) -> bool) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut freed: BTreeMap<&str, usize> = BTreeMap::new();
    for (job, running) in &state.restore_jobs {
        let reason = if now_unix_ms > running.deadline_unix_ms {
            Some(format!(
                "not finished by its deadline ({} s after it started)",
                state.topology.backups.restore_timeout_seconds
            ))
        } else if !state.controllers.contains_key(&running.controller) || !heard(&running.controller) {
            Some(format!("its controller {} is not heard", running.controller))
        } else {
            None
        };
        if let Some(reason) = reason {
            *freed.entry(running.region.as_str()).or_default() += 1;
            commands.push(Command::AbandonRestoreTest { job: *job, reason });
        }
    }
    let limit = state.topology.backups.max_restores_per_region as usize;
    let mut free: BTreeMap<&str, usize> = state
        .regions
        .keys()
        .map(|r| {
            (r.as_str(), (limit + freed.get(r.as_str()).copied().unwrap_or(0)).saturating_sub(running_in(state, r)))
        })
        .collect();
    let mut waiting: Vec<(u64, &str, &Backup)> = state
        .backups
        .iter()
        .filter_map(|(key, c)| c.backups.last().map(|b| (b.reported_at_unix_ms, key.as_str(), b)))
        .filter(|(_, key, b)| {
            policy(state, key).verify_within_seconds > 0
                && !b.verified()
                && !b.tests.iter().any(|t| t.outcome == RestoreOutcome::Running)
        })
        .collect();
    waiting.sort_by_key(|(reported_at, key, _)| (*reported_at, *key));
    for (_, shard_key, backup) in waiting {
        if commands.len() >= PLAN_MAX_COMMANDS || free.values().all(|n| *n == 0) {
            break;
        }
        if let Some(controller) = choose_controller(state, shard_key, backup, &free, &heard) {
            let region = state.controllers[&controller].region.as_str();
            if let Some(n) = free.get_mut(region) {
                *n -= 1;
            }
            commands.push(Command::StartRestoreTest {
                shard: shard_key.to_string(),
                backup: backup.id.clone(),
                controller,
            });
        }
    }
    commands
}

/// The controller to test `backup` of `shard_key` on (see the module
/// comment for the order), if any may.
fn choose_controller(
    state: &State,
    shard_key: &str,
    backup: &Backup,
    free: &BTreeMap<&str, usize>,
    heard: &impl Fn(&str) -> bool,
) -> Option<String> {
    let shard = state.shards.get(shard_key)?;
    let replica_regions: Vec<&str> =
        shard.replicas.iter().filter_map(|r| state.replicas.get(r)).map(|r| r.region.as_str()).collect();
    let proofs = |region: &str| {
        state.backups.get(shard_key).map_or(0, |c| {
            c.backups
                .iter()
                .flat_map(|b| &b.tests)
                .filter(|t| t.region == region && t.outcome == RestoreOutcome::Passed)
                .count()
        })
    };
    let not_ok = |t: &&crate::model::RestoreTest| {
        matches!(t.outcome, RestoreOutcome::Failed { .. } | RestoreOutcome::Abandoned { .. })
    };
    // Whether the last finished test of this shard in `region` (of any of
    // its backups) did not pass: a region that keeps failing goes last, or
    // a stream of new backups would each be tried there first, for ever.
    let failing = |region: &str| {
        let tests = state.backups.get(shard_key).into_iter().flat_map(|c| &c.backups).flat_map(|b| &b.tests);
        tests
            .filter(|t| t.region == region && t.finished_at_unix_ms > 0)
            .max_by_key(|t| (t.finished_at_unix_ms, t.job))
            .is_some_and(|t| t.outcome != RestoreOutcome::Passed)
    };
    state
        .controllers
        .values()
        .filter(|c| c.region != backup.source_region)
        .filter(|c| free.get(c.region.as_str()).is_some_and(|n| *n > 0))
        .filter(|c| {
            state
                .regions
                .get(&c.region)
                .is_some_and(|r| !matches!(r.state, RegionState::Lost) && state.automation_allowed(&r.id))
        })
        .filter(|c| heard(&c.id))
        .filter(|c| !backup.tests.iter().filter(not_ok).any(|t| t.controller == c.id))
        .min_by_key(|c| {
            let failed_here = backup.tests.iter().filter(not_ok).any(|t| t.region == c.region);
            let no_replica = !replica_regions.contains(&c.region.as_str());
            (failed_here, failing(&c.region), no_replica, proofs(&c.region), running_in(state, &c.region), c.id.clone())
        })
        .map(|c| c.id.clone())
}
