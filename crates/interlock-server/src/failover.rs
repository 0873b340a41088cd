//! The leader's failover loop: heartbeats feed a phi-accrual detector per
//! controller ([`Liveness`], soft state, never written to Raft); every tick
//! the pure planner (`interlock_core::planner`) turns the replicated state and
//! these observations into commands, which the loop proposes. Every command
//! re-checks its preconditions when applied, so a stale tick is harmless.

use crate::ctx::{NodeCtx, ProposeError};
use interlock_core::detector::{DetectorParams, PhiDetector};
use interlock_core::planner::{plan, ControllerView, Observations, ReplicaReport};
use interlock_core::Command;
use interlock_proto::v1::HeartbeatRequest;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the leader re-plans.
pub const FAILOVER_TICK: Duration = Duration::from_millis(100);

/// How long a drain step that a rule refused waits before it is proposed
/// again (each refusal is a log entry; re-trying every tick would write ten
/// a second for as long as the drain stays blocked).
pub const BLOCKED_DRAIN_RETRY: Duration = Duration::from_secs(5);

/// What the leader knows of one controller.
#[derive(Debug, Clone)]
struct ControllerRecord {
    detector: PhiDetector,
    alive_since_ms: u64,
    reachable_regions: Vec<String>,
    replicas: BTreeMap<String, ReplicaReport>,
}

/// Heartbeat records by controller id, for the current term only.
#[derive(Default)]
pub struct Liveness {
    inner: Mutex<BTreeMap<String, ControllerRecord>>,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ControllerRecord>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_seen_ms(&self, controller: &str) -> Option<u64> {
        self.lock().get(controller).map(|r| r.detector.last_heartbeat_ms())
    }

    /// The leader's last report of `replica` from `controller`.
    pub fn report(&self, controller: &str, replica: &str) -> Option<ReplicaReport> {
        self.lock().get(controller).and_then(|r| r.replicas.get(replica).copied())
    }

    /// Records a heartbeat received at `now_ms`.
    pub fn record(&self, beat: HeartbeatRequest, now_ms: u64, params: &DetectorParams) {
        let replicas = beat
            .replicas
            .iter()
            .map(|r| (r.replica_id.clone(), ReplicaReport { position: r.position, lag: r.lag, healthy: r.healthy }))
            .collect();
        let mut records = self.lock();
        match records.get_mut(&beat.controller_id) {
            Some(record) => {
                if record.detector.suspected(now_ms, params) {
                    record.alive_since_ms = now_ms;
                }
                record.detector.heartbeat(now_ms);
                record.reachable_regions = beat.reachable_regions;
                record.replicas = replicas;
            }
            None => {
                let record = ControllerRecord {
                    detector: PhiDetector::new(now_ms, params),
                    alive_since_ms: now_ms,
                    reachable_regions: beat.reachable_regions,
                    replicas,
                };
                records.insert(beat.controller_id, record);
            }
        }
    }

    fn clear(&self) {
        self.lock().clear();
    }

    /// The planner's view at `now_ms`.
    fn views(&self, now_ms: u64, params: &DetectorParams) -> BTreeMap<String, ControllerView> {
        self.lock()
            .iter()
            .map(|(id, r)| {
                let suspected = r.detector.suspected(now_ms, params);
                let view = ControllerView {
                    suspected,
                    alive_since_ms: (!suspected).then_some(r.alive_since_ms),
                    reachable_regions: r.reachable_regions.clone(),
                    replicas: r.replicas.clone(),
                };
                (id.clone(), view)
            })
            .collect()
    }
}

/// Drains whose next step a rule refused: the refusal (noted once in the
/// event log) and when the step may be proposed again.
#[derive(Default)]
struct BlockedDrains(BTreeMap<String, (String, u64)>);

impl BlockedDrains {
    /// Whether the next step of `region`'s drain may be proposed at `now_ms`.
    fn due(&self, region: &str, now_ms: u64) -> bool {
        self.0.get(region).is_none_or(|(_, retry_at_ms)| now_ms >= *retry_at_ms)
    }

    /// Whether `reason` differs from the refusal last noted for `region`.
    fn is_news(&self, region: &str, reason: &str) -> bool {
        self.0.get(region).is_none_or(|(noted, _)| noted != reason)
    }

    /// `region`'s step was refused (and noted) at `now_ms`.
    fn refused(&mut self, region: String, reason: String, now_ms: u64) {
        self.0.insert(region, (reason, now_ms + BLOCKED_DRAIN_RETRY.as_millis() as u64));
    }

    /// `region`'s step went through: the drain is no longer blocked.
    fn stepped(&mut self, region: &str) {
        self.0.remove(region);
    }
}

/// Runs on every node; acts only while this node leads.
pub async fn run_failover_loop(ctx: Arc<NodeCtx>, liveness: Arc<Liveness>) {
    let mut tick = tokio::time::interval(FAILOVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term: Option<u64> = None;
    let mut leader_since_ms = 0;
    // Regions already noted as "not declared", with the note, this term.
    let mut noted: BTreeMap<String, String> = BTreeMap::new();
    let mut blocked = BlockedDrains::default();
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
            leader_since_ms = now_ms;
            liveness.clear();
            noted.clear();
        }
        if term.is_none() || !in_contact {
            continue;
        }
        let (commands, not_declared) = {
            let applied = ctx.state.read();
            let state = &applied.state;
            let params = DetectorParams::from_policy(&state.topology.failover);
            let obs = Observations {
                now_ms,
                now_unix_ms: ctx.clock.unix_ms(),
                leader_since_ms,
                controllers: liveness.views(now_ms, &params),
            };
            let p = plan(state, &obs);
            if p.commands.iter().any(|c| matches!(c, Command::DeclareRegionLost { .. })) {
                tracing::info!(node = ctx.id, at_ms = now_ms, leader_since_ms, views = ?obs.controllers, "declaring a region lost");
            }
            (p.commands, p.not_declared)
        };
        noted.retain(|region, _| not_declared.contains_key(region));
        for (region, reason) in not_declared {
            if noted.get(&region) != Some(&reason) {
                tracing::warn!(region, "{reason}");
                let note = Command::Note {
                    kind: "region.not_declared".into(),
                    subject: region.clone(),
                    message: reason.clone(),
                };
                if propose(&ctx, note).await {
                    noted.insert(region, reason);
                }
            }
        }
        for command in commands {
            if let Command::DrainStep { region, .. } = &command {
                // A step a rule refuses pauses the drain: say so once, and
                // try again only every BLOCKED_DRAIN_RETRY.
                let region = region.clone();
                if !blocked.due(&region, now_ms) {
                    continue;
                }
                match propose_step(&ctx, command).await {
                    Err(reason) => {
                        if blocked.is_news(&region, &reason) {
                            let message = format!("drain paused: {reason}");
                            tracing::warn!(region, "{message}");
                            let note =
                                Command::Note { kind: "region.drain_blocked".into(), subject: region.clone(), message };
                            if !propose(&ctx, note).await {
                                continue; // noted on the next tick
                            }
                        }
                        blocked.refused(region, reason, now_ms);
                    }
                    Ok(()) => blocked.stepped(&region),
                }
                continue;
            }
            let lost_region = match &command {
                Command::DeclareRegionLost { region, .. } => Some(region.clone()),
                _ => None,
            };
            let promotion = matches!(command, Command::Promote { .. });
            let label = command.to_string();
            if !propose(&ctx, command).await {
                continue;
            }
            tracing::info!("failover loop: {label}");
            if promotion {
                ctx.metrics.failovers.inc();
            }
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
    }
}

/// Whether this leader can confirm its leadership with a quorum now, within
/// three Raft heartbeats. (openraft's `millis_since_quorum_ack` metric is not
/// refreshed while nothing changes, so it cannot tell.)
async fn quorum_contact(ctx: &NodeCtx) -> bool {
    let window = Duration::from_millis(ctx.raft.config().heartbeat_interval * 3);
    matches!(tokio::time::timeout(window, ctx.raft.ensure_linearizable()).await, Ok(Ok(_)))
}

/// Proposes a drain step; the refusal's text if a rule (or anything) refused it.
async fn propose_step(ctx: &NodeCtx, command: Command) -> Result<(), String> {
    match ctx.propose(command).await {
        Ok(_) => Ok(()),
        Err(ProposeError::Status(s)) if s.code() == tonic::Code::FailedPrecondition => Err(s.message().to_string()),
        Err(_) => Ok(()), // not leader or unknown outcome: the next tick looks again
    }
}

/// Proposes one planned command; `true` if it was applied.
async fn propose(ctx: &NodeCtx, command: Command) -> bool {
    let label = command.to_string();
    match ctx.propose(command).await {
        Ok(_) => true,
        Err(ProposeError::Status(s)) => {
            tracing::debug!("planned {label}: {}", s.message());
            false
        }
        Err(ProposeError::NotLeader(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_drain_step_is_noted_once_and_retried_every_few_seconds() {
        let retry = BLOCKED_DRAIN_RETRY.as_millis() as u64;
        let mut blocked = BlockedDrains::default();
        assert!(blocked.due("ap", 0) && blocked.is_news("ap", "min-serving-regions"));
        blocked.refused("ap".into(), "min-serving-regions".into(), 1_000);
        assert!(!blocked.due("ap", 1_100), "not re-proposed on the next tick");
        assert!(!blocked.due("ap", 1_000 + retry - 1));
        assert!(blocked.due("ap", 1_000 + retry));
        assert!(blocked.due("eu", 1_100), "other regions' drains are not held up");
        assert!(!blocked.is_news("ap", "min-serving-regions"), "the same refusal is noted once");
        assert!(blocked.is_news("ap", "capacity-ceiling"), "a different one is news");
        blocked.stepped("ap");
        assert!(blocked.due("ap", 1_100) && blocked.is_news("ap", "min-serving-regions"));
    }
}
