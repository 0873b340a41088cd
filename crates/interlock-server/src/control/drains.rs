//! Drain stepping: a drain (or undrain) lives in the replicated state, so
//! any leader resumes it. Every tick the leader proposes each step that is
//! due — unless a routing rule would refuse it: then the drain pauses, the
//! reason is noted once in the event log, and nothing is written until the
//! rules allow the step (`interlock_core::routing::drain_step_refusal` is
//! the same check the step meets when applied).

use super::{propose, Notes};
use crate::ctx::NodeCtx;
use interlock_core::routing::{drain_step_refusal, due_drain_steps};
use interlock_core::Command;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks for due drain steps.
pub const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Runs on every node; acts only while this node leads.
pub async fn run_drain_loop(ctx: Arc<NodeCtx>) {
    let mut tick = tokio::time::interval(DRAIN_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut blocked = Notes::new("region.drain_blocked");
    let mut term = None;
    loop {
        tick.tick().await;
        let current = ctx.leader_term();
        if current != term {
            term = current;
            blocked.clear();
        }
        if term.is_none() {
            continue;
        }
        let now_unix_ms = ctx.clock.unix_ms();
        let steps: Vec<(String, u32, Option<String>)> = {
            let applied = ctx.state.read();
            let state = &applied.state;
            due_drain_steps(state, now_unix_ms)
                .into_iter()
                .map(|(region, from)| {
                    let refusal = drain_step_refusal(state, &region, now_unix_ms);
                    (region, from, refusal)
                })
                .collect()
        };
        blocked.retain(|region| steps.iter().any(|(r, _, refusal)| r == region && refusal.is_some()));
        for (region, expected_fraction_bps, refusal) in steps {
            match refusal {
                Some(reason) => blocked.note(&ctx, &region, &format!("drain paused: {reason}")).await,
                None => {
                    propose(&ctx, Command::DrainStep { region, expected_fraction_bps }).await;
                }
            }
        }
    }
}
