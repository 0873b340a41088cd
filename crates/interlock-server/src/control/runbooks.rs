//! The leader's runbook loop (SPEC §7): every tick it asks the pure planner
//! (`interlock_core::runbook::drive::plan`) what each running step needs —
//! its start, its effect, its success, STUCK past its timeout — and
//! proposes that. An execution lives in the replicated state, so a new
//! leader resumes it where the old one was; the state machine refuses an
//! effect already recorded for the step's attempt, so a proposal repeated
//! across a leader change acts once. Why a step waits is noted once in the
//! event log (`runbook.waiting`).

use super::liveness::Liveness;
use super::routing_acks::RoutingAcks;
use super::{propose, Notes};
use crate::ctx::NodeCtx;
use interlock_core::failover::detector::DetectorParams;
use interlock_core::runbook::drive::{plan, World};
use std::sync::Arc;
use std::time::Duration;

/// How often the leader moves runbook steps.
pub const RUNBOOK_TICK: Duration = Duration::from_millis(250);

/// Runs on every node; acts only while this node leads.
pub async fn run_runbook_loop(
    ctx: Arc<NodeCtx>,
    liveness: Arc<Liveness>,
    acks: Arc<RoutingAcks>,
    mutations: super::leases::LeaseMutations,
) {
    let mut tick = tokio::time::interval(RUNBOOK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting = Notes::new("runbook.waiting");
    let mut term = None;
    loop {
        tick.tick().await;
        let current = ctx.leader_term();
        if current != term {
            term = current;
            waiting.clear();
            if term.is_some() && mutations.rerun_runbook_effects {
                rerun_effects(&ctx).await;
            }
        }
        if term.is_none() {
            continue;
        }
        let planned = {
            let applied = ctx.state.read();
            let state = &applied.state;
            if state.executions.values().all(|e| e.state.is_final()) {
                ctx.metrics.runbook_executions_running.set(0);
                continue;
            }
            ctx.metrics
                .runbook_executions_running
                .set(state.executions.values().filter(|e| !e.state.is_final()).count() as i64);
            let obs = liveness.observations(
                ctx.clock.monotonic_ms(),
                ctx.clock.unix_ms(),
                &DetectorParams::from_policy(&state.topology.failover),
            );
            let converged = |service: &str, version: u64| acks.converged(state, service, version);
            plan(state, &World { obs: &obs, converged: &converged })
        };
        waiting.retain(|subject| planned.waiting.iter().any(|(s, _)| s == subject));
        for (subject, why) in &planned.waiting {
            waiting.note(&ctx, subject, why).await;
        }
        for command in planned.commands {
            let label = command.to_string();
            if propose(&ctx, command).await {
                tracing::info!("runbook loop: {label}");
            }
        }
    }
}

/// The mutation `rerun_runbook_effects`: every recorded effect of every
/// running execution proposed again, raw (the simulation must catch it).
async fn rerun_effects(ctx: &NodeCtx) {
    let commands: Vec<interlock_core::Command> = {
        let applied = ctx.state.read();
        let running = applied.state.executions.values().filter(|e| !e.state.is_final());
        running.flat_map(|e| e.steps.iter().flat_map(|s| s.effects.iter().map(|x| (*x.command).clone()))).collect()
    };
    for command in commands {
        propose(ctx, command).await;
    }
}
