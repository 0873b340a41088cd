//! The leader's failover loop: every tick the pure planner
//! (`interlock_core::failover::plan`) turns the replicated state and the
//! leader's [`Liveness`] observations into commands, which the loop
//! proposes. Every command re-checks its preconditions when applied, so a
//! stale tick is harmless.

use super::liveness::Liveness;
use super::{propose, Notes};
use crate::ctx::NodeCtx;
use interlock_core::failover::detector::DetectorParams;
use interlock_core::failover::plan;
use interlock_core::Command;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader re-plans.
pub const FAILOVER_TICK: Duration = Duration::from_millis(100);

/// Runs on every node; acts only while this node leads.
pub async fn run_failover_loop(ctx: Arc<NodeCtx>, liveness: Arc<Liveness>) {
    let mut tick = tokio::time::interval(FAILOVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term: Option<u64> = None;
    // Regions the coordinator cannot hear but does not declare lost, noted once.
    let mut not_declared = Notes::new("region.not_declared");
    loop {
        tick.tick().await;
        let now_ms = ctx.clock.monotonic_ms();
        let current = ctx.leader_term();
        // A leader that lost contact with its quorum for a while (cut off but
        // still in office) starts over like a new leader when it regains it:
        // what it observed meanwhile is the view from inside a partition.
        let in_contact = current.is_some() && quorum_contact(&ctx).await;
        if current != term || (term.is_some() && !in_contact) {
            term = current;
            liveness.clear(now_ms);
            not_declared.clear();
        }
        if term.is_none() || !in_contact {
            continue;
        }
        let (plan, leader_since_ms) = {
            let applied = ctx.state.read();
            let state = &applied.state;
            let params = DetectorParams::from_policy(&state.topology.failover);
            let obs = liveness.observations(now_ms, ctx.clock.unix_ms(), &params);
            let plan = plan(state, &obs);
            if plan.commands.iter().any(|c| matches!(c, Command::DeclareRegionLost { .. })) {
                tracing::info!(node = ctx.id, at_ms = now_ms, leader_since_ms = obs.leader_since_ms, views = ?obs.controllers, "declaring a region lost");
            }
            (plan, obs.leader_since_ms)
        };
        not_declared.retain(|region| plan.not_declared.contains_key(region));
        for (region, reason) in &plan.not_declared {
            not_declared.note(&ctx, region, reason).await;
        }
        // Region commands first, in order: they change what the shard
        // commands meet. The shard commands (one per shard) are proposed all
        // at once, so that the promotions of a lost region share entries.
        let (regions, shards): (Vec<Command>, Vec<Command>) = plan
            .commands
            .into_iter()
            .partition(|c| matches!(c, Command::DeclareRegionLost { .. } | Command::SetRegionState { .. }));
        for command in regions {
            let lost_region = match &command {
                Command::DeclareRegionLost { region, .. } => Some(region.clone()),
                _ => None,
            };
            let label = command.to_string();
            if !propose(&ctx, command).await {
                continue;
            }
            tracing::info!("failover loop: {label}");
            if let Some(region) = lost_region {
                // Detection time: from the last heartbeat heard from the region.
                let last_heard = {
                    let applied = ctx.state.read();
                    let controllers = applied.state.controllers.values().filter(|c| c.region == region);
                    controllers.filter_map(|c| liveness.last_seen_ms(&c.id)).max()
                };
                let since = last_heard.unwrap_or(leader_since_ms);
                ctx.metrics.detection_seconds.observe(now_ms.saturating_sub(since) as f64 / 1000.0);
            }
        }
        let proposals = shards.into_iter().map(|command| {
            let ctx = &ctx;
            async move {
                let promotion = matches!(command, Command::Promote { .. });
                let label = match &command {
                    Command::Promote { reason, .. } => format!("{command}: {reason}"),
                    _ => command.to_string(),
                };
                if propose(ctx, command).await {
                    tracing::info!("failover loop: {label}");
                    if promotion {
                        ctx.metrics.failovers.inc();
                    }
                }
            }
        });
        futures::future::join_all(proposals).await;
    }
}

/// Whether this leader can confirm its leadership with a quorum now, within
/// three Raft heartbeats. (openraft's `millis_since_quorum_ack` metric is not
/// refreshed while nothing changes, so it cannot tell.)
async fn quorum_contact(ctx: &NodeCtx) -> bool {
    let window = Duration::from_millis(ctx.raft.config().heartbeat_interval * 3);
    matches!(tokio::time::timeout(window, ctx.raft.ensure_linearizable()).await, Ok(Ok(_)))
}
