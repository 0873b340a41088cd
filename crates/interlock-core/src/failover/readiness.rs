//! Readiness (SPEC §6): how ready a shard is to fail over to a region, as
//! one score from 0 to 100 with its parts shown. Each part is 0..=100, or
//! unknown (left out of the score):
//!
//! - `lag`: the candidate's lag against the RPO bound (`max_lag_on_failover`):
//!   100 at no lag, falling linearly to 0 at the bound (a bound of 0: 100 or 0);
//! - `restore`: the age of the shard's last verified restore against
//!   `verify_within_seconds`: 100 up to it, falling linearly to 0 at twice
//!   it; never verified: 0; restore tests off for the shard: unknown;
//! - `capacity`: the spare capacity of the target region for the shard's
//!   service: how far its routed weight is below its capacity ceiling
//!   (the rule `capacity-ceiling`), in percent; no routing table: unknown;
//! - `drill`: the age of the last successful drill that moved a primary
//!   to the candidate's region (100 within 7 days, 0 at 90 days).
//!
//! The score is the mean of the known parts, rounded down. A shard's
//! readiness is that of the replica the planner would promote now (its
//! target); a region's is that of its weakest shard (the shards whose
//! primary it holds), each part the weakest of that part.
//!
//! The planner ranks the candidates that pass the RPO bound by readiness
//! first (see `policy::rank`).

use super::observations::Observations;
use super::policy::{choose_candidate, lag};
use crate::backup;
use crate::model::{ExecutionState, RunMode, Shard};
use crate::routing::rules::capacity_ceiling_bps;
use crate::state::State;
use crate::vocab::shard_key;

/// One part of a readiness score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: &'static str,
    /// 0..=100; None: unknown (not counted).
    pub score: Option<u32>,
    pub detail: String,
}

/// A score with its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub score: u32,
    pub parts: Vec<Part>,
}

impl Readiness {
    fn of(parts: Vec<Part>) -> Readiness {
        let known: Vec<u32> = parts.iter().filter_map(|p| p.score).collect();
        let score = if known.is_empty() { 0 } else { known.iter().sum::<u32>() / known.len() as u32 };
        Readiness { score, parts }
    }
}

/// A linear score: 100 at `value` ≤ `full`, 0 at `value` ≥ `zero`.
fn linear(value: u64, full: u64, zero: u64) -> u32 {
    if value <= full {
        100
    } else if value >= zero {
        0
    } else {
        (100 * (zero - value) / (zero - full).max(1)) as u32
    }
}

fn lag_part(shard: &Shard, lag: Option<u64>) -> Part {
    let bound = shard.max_lag_on_failover;
    match lag {
        None => Part { name: "lag", score: Some(0), detail: "not reported".to_string() },
        Some(lag) => {
            let score = if lag > bound { 0 } else { linear(lag, 0, bound.saturating_add(1)) };
            Part { name: "lag", score: Some(score), detail: format!("{lag} behind (bound {bound})") }
        }
    }
}

fn restore_part(state: &State, key: &str, now_unix_ms: u64) -> Part {
    let within = backup::policy(state, key).verify_within_seconds * 1000;
    if within == 0 {
        return Part { name: "restore", score: None, detail: "restore tests off (verify_within 0)".to_string() };
    }
    match state.backups.get(key).and_then(|c| c.last_verified.as_ref()) {
        None => Part { name: "restore", score: Some(0), detail: "never verified".to_string() },
        Some(v) => {
            let age = now_unix_ms.saturating_sub(v.verified_at_unix_ms);
            Part {
                name: "restore",
                score: Some(linear(age, within, within * 2)),
                detail: format!("verified {} s ago in {} (verify_within {} s)", age / 1000, v.region, within / 1000),
            }
        }
    }
}

fn capacity_part(state: &State, service: &str, region: &str) -> Part {
    let unknown = |why: &str| Part { name: "capacity", score: None, detail: why.to_string() };
    let Some(table) = state.routing.get(service) else { return unknown("no routing table") };
    let Some(ceiling) = capacity_ceiling_bps(&state.regions, &state.topology.routing, region).filter(|c| *c > 0) else {
        return unknown("no capacity declared");
    };
    let weight = u64::from(table.effective.get(region).copied().unwrap_or(0));
    let spare = ceiling.saturating_sub(weight);
    Part {
        name: "capacity",
        score: Some((100 * spare / ceiling) as u32),
        detail: format!("{region} carries {weight} of {ceiling} bps"),
    }
}

/// A drill younger than this scores 100; the score falls to 0 at [`DRILL_STALE_MS`].
pub const DRILL_FRESH_MS: u64 = 7 * 86_400_000;
pub const DRILL_STALE_MS: u64 = 90 * 86_400_000;

/// The age of the last successful drill that moved a primary into `region`.
fn drill_part(state: &State, region: &str, now_unix_ms: u64) -> Part {
    let last = state
        .executions
        .values()
        .filter(|e| e.mode == RunMode::Drill && e.state == ExecutionState::Succeeded)
        .filter(|e| e.report.as_ref().is_some_and(|r| r.target_regions.iter().any(|t| t == region)))
        .filter_map(|e| e.finished_at_unix_ms.map(|at| (at, e.id, e.runbook.as_str())))
        .max();
    let Some((at, id, runbook)) = last else {
        return Part {
            name: "drill",
            score: None,
            detail: format!("unknown: no successful drill moved a primary to {region}"),
        };
    };
    let age = now_unix_ms.saturating_sub(at);
    let score = if age <= DRILL_FRESH_MS {
        100
    } else {
        (100 * DRILL_STALE_MS.saturating_sub(age) / (DRILL_STALE_MS - DRILL_FRESH_MS)) as u32
    };
    Part { name: "drill", score: Some(score), detail: format!("drill {id} ({runbook}) {} h ago", age / 3_600_000) }
}

/// The readiness of promoting `replica` of `shard`, `lag` behind the best
/// known position.
pub fn of_candidate(state: &State, shard: &Shard, replica: &str, lag: Option<u64>, now_unix_ms: u64) -> Readiness {
    let key = shard_key(&shard.service, &shard.id);
    let region = state.replicas.get(replica).map_or("", |r| r.region.as_str());
    Readiness::of(vec![
        lag_part(shard, lag),
        restore_part(state, &key, now_unix_ms),
        capacity_part(state, &shard.service, region),
        drill_part(state, region, now_unix_ms),
    ])
}

/// A shard's readiness: the replica a failover would promote now, its
/// region, and the readiness of promoting it (no candidate: score 0, and
/// why in the `lag` part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardReadiness {
    pub shard: String,
    pub target: Option<(String, String)>,
    pub readiness: Readiness,
}

/// The readiness of failing `shard_key` over now.
pub fn of_shard(state: &State, obs: &Observations, shard_key: &str) -> Option<ShardReadiness> {
    let shard = state.shards.get(shard_key)?;
    let primary = shard.primary.as_deref();
    let best_known =
        shard.replicas.iter().filter_map(|id| obs.report(state, id)).map(|r| r.position).max().unwrap_or(0);
    Some(match choose_candidate(state, obs, shard, primary) {
        Ok(candidate) => {
            let report = obs.report(state, &candidate.replica);
            let region = state.replicas.get(&candidate.replica).map_or(String::new(), |r| r.region.clone());
            let readiness =
                of_candidate(state, shard, &candidate.replica, report.map(|r| lag(&r, best_known)), obs.now_unix_ms);
            ShardReadiness { shard: shard_key.to_string(), target: Some((candidate.replica, region)), readiness }
        }
        Err(why) => {
            let mut readiness = of_candidate(state, shard, "", None, obs.now_unix_ms);
            readiness.parts[0] = Part { name: "lag", score: Some(0), detail: format!("no candidate: {why}") };
            readiness.parts[2] = Part { name: "capacity", score: None, detail: "no target region".to_string() };
            readiness.score = 0;
            ShardReadiness { shard: shard_key.to_string(), target: None, readiness }
        }
    })
}

/// A region's readiness to be lost: over the shards whose primary it holds,
/// the weakest score and the weakest of each part.
pub fn of_region(shards: &[&ShardReadiness]) -> Readiness {
    let Some(first) = shards.first() else {
        return Readiness { score: 100, parts: Vec::new() };
    };
    let mut parts = first.readiness.parts.clone();
    for (i, part) in parts.iter_mut().enumerate() {
        let weakest = shards
            .iter()
            .filter_map(|s| s.readiness.parts.get(i).map(|p| (p.score, s)))
            .filter_map(|(score, s)| score.map(|v| (v, s)))
            .min_by_key(|(v, _)| *v);
        if let Some((score, s)) = weakest {
            let detail = &s.readiness.parts[i].detail;
            *part = Part { name: part.name, score: Some(score), detail: format!("weakest: {} ({detail})", s.shard) };
        }
    }
    let score = shards.iter().map(|s| s.readiness.score).min().unwrap_or(100);
    Readiness { score, parts }
}
