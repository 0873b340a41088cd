//! The leader's backup loop (SPEC §6): every tick it asks the pure scheduler
//! (`interlock_core::backup::schedule::plan`) which restore tests to abandon
//! and which to start, and proposes that; it notes each shard that misses
//! a backup target once in the event log, and sets the backup and
//! readiness gauges. A cluster with no backups reported writes nothing.

use super::liveness::Liveness;
use super::{propose, Notes};
use crate::ctx::NodeCtx;
use interlock_core::backup::{schedule, track};
use interlock_core::failover::detector::DetectorParams;
use interlock_core::Command;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader schedules restore tests and checks the targets.
pub const BACKUP_TICK: Duration = Duration::from_secs(1);
/// The readiness gauges are set every this many ticks.
pub const READINESS_EVERY_TICKS: u64 = 10;

/// Runs on every node; acts only while this node leads.
pub async fn run_backup_loop(ctx: Arc<NodeCtx>, liveness: Arc<Liveness>) {
    let mut tick = tokio::time::interval(BACKUP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed = Notes::new("backup.target_missed");
    let mut term = None;
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        ticks += 1;
        let current = ctx.leader_term();
        if current != term {
            term = current;
            missed.clear();
        }
        if term.is_none() {
            ctx.metrics.backup.restore_tests_running.set(0);
            continue;
        }
        let now_unix_ms = ctx.clock.unix_ms();
        let (commands, violations) = {
            let applied = ctx.state.read();
            let state = &applied.state;
            let obs = liveness.observations(
                ctx.clock.monotonic_ms(),
                now_unix_ms,
                &DetectorParams::from_policy(&state.topology.failover),
            );
            let commands = schedule::plan(state, now_unix_ms, |c| !obs.suspected(state, c));
            // Readiness runs the candidate choice for every shard: every 10 s.
            let readiness = ticks.is_multiple_of(READINESS_EVERY_TICKS);
            let violations = observe(&ctx, state, &obs, now_unix_ms, readiness);
            (commands, violations)
        };
        missed.retain(|shard| violations.iter().any(|(s, _)| s == shard));
        for (shard, summary) in &violations {
            missed.note(&ctx, shard, summary).await;
        }
        for command in commands {
            let label = command.to_string();
            let abandon = matches!(command, Command::AbandonRestoreTest { .. });
            if propose(&ctx, command).await {
                if abandon {
                    tracing::warn!("backup loop: {label}");
                } else {
                    tracing::info!("backup loop: {label}");
                }
            }
        }
    }
}

/// Sets the gauges; returns the tracked shards that miss a target, with why.
fn observe(
    ctx: &NodeCtx,
    state: &interlock_core::State,
    obs: &interlock_core::failover::Observations,
    now_unix_ms: u64,
    readiness: bool,
) -> Vec<(String, String)> {
    let m = &ctx.metrics.backup;
    let (mut rpo, mut rto, mut overdue, mut oldest) = (0, 0, 0, 0u64);
    let mut violations = Vec::new();
    for key in state.backups.keys() {
        let t = track::track(state, key, now_unix_ms);
        rpo += i64::from(t.rpo_violated);
        rto += i64::from(t.rto_violated);
        overdue += i64::from(t.verify_overdue);
        oldest = oldest.max(t.verified_age_ms.unwrap_or(0));
        if t.violated() {
            violations.push((key.clone(), t.summary()));
        }
    }
    m.restore_tests_running.set(state.restore_jobs.len() as i64);
    m.shards_rpo_violated.set(rpo);
    m.shards_rto_violated.set(rto);
    m.shards_verify_overdue.set(overdue);
    m.oldest_verified_age_seconds.set((oldest / 1000) as i64);
    if readiness {
        let report = interlock_proto::convert::readiness_report(state, obs);
        for region in report.regions {
            m.region_readiness.get_or_create(&vec![("region", region.region)]).set(i64::from(region.score));
        }
    }
    violations
}
