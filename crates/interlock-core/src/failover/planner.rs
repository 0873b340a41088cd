//! What the leader's failover loop proposes next: a pure function of the
//! replicated [`State`] and the leader's soft [`Observations`] (heartbeats,
//! witness reports, replica positions), with time as an input.
//!
//! The loop calls [`plan`] every tick and proposes what it returns. Every
//! command re-checks its own preconditions when applied, so a stale plan
//! (leadership moved, the state changed) is refused, never applied wrongly.
//! Which replica to promote is [`super::policy::choose_candidate`].

use super::observations::Observations;
use super::policy::choose_candidate;
use crate::model::Command;
use crate::model::Shard;
use crate::state::State;
use crate::vocab::{primary_lease_key, PromotionMode, RegionState};
use std::collections::BTreeMap;

/// A witness counts only after this many heartbeat intervals heard without
/// suspicion (its own reachability view has had time to settle).
pub const WITNESS_STEADY_HEARTBEATS: u64 = 3;

/// The loop's next steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Commands to propose, in order.
    pub commands: Vec<Command>,
    /// Regions the coordinator cannot hear but witnesses can (or that may
    /// not be declared lost), with the reason: recorded once as an event,
    /// never a failover.
    pub not_declared: BTreeMap<String, String>,
}

/// Decides the next steps of region-loss handling and promotion (drains
/// advance separately: [`crate::routing::due_drain_steps`]).
pub fn plan(state: &State, obs: &Observations) -> Plan {
    let mut out = Plan::default();
    plan_regions(state, obs, &mut out);
    if !state.paused {
        for (key, shard) in &state.shards {
            if let Some(command) = plan_shard(state, obs, key, shard) {
                out.commands.push(command);
            }
        }
    }
    out
}

fn controllers_in<'a>(state: &'a State, region: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    state.controllers.values().filter(move |c| c.region == region).map(|c| c.id.as_str())
}

fn plan_regions(state: &State, obs: &Observations, out: &mut Plan) {
    let policy = &state.topology.failover;
    // The coordinator must hear a majority of the regions that have
    // controllers: a leader that hears fewer is more likely the one cut off
    // (found by the simulation: an isolated leader and its own region's
    // controller agreed that everyone else was gone).
    let judged: Vec<&str> =
        state.regions.values().filter(|r| r.state != RegionState::Lost).map(|r| r.id.as_str()).collect();
    let with_controllers: Vec<&str> =
        judged.iter().copied().filter(|r| controllers_in(state, r).next().is_some()).collect();
    let heard = with_controllers.iter().filter(|r| controllers_in(state, r).any(|c| !obs.suspected(state, c))).count();
    let majority_heard = heard * 2 > with_controllers.len();
    for region in state.regions.values() {
        let controllers: Vec<&str> = controllers_in(state, &region.id).collect();
        if controllers.is_empty() {
            continue;
        }
        if region.state == RegionState::Lost {
            let back = controllers.iter().all(|c| {
                obs.controllers.get(*c).is_some_and(|v| {
                    !v.suspected
                        && v.alive_since_ms.is_some_and(|s| obs.now_ms.saturating_sub(s) >= policy.region_return_ms)
                })
            });
            if back {
                out.commands.push(Command::SetRegionState {
                    region: region.id.clone(),
                    state: RegionState::Recovering,
                    reason: format!(
                        "all {} controllers heard again for {} ms; its old primaries are fenced",
                        controllers.len(),
                        policy.region_return_ms
                    ),
                });
            }
            continue;
        }
        if obs.in_grace(state) || !controllers.iter().all(|c| obs.suspected(state, c)) {
            continue;
        }
        if !majority_heard {
            out.not_declared.insert(
                region.id.clone(),
                format!(
                    "the coordinator hears the controllers of only {heard} of {} regions; it may be the one cut off, \
                     so it declares nothing",
                    with_controllers.len()
                ),
            );
            continue;
        }
        // Suspected by the coordinator. Do the other regions' controllers agree?
        let mut witnesses = Vec::new();
        let mut dissent = Vec::new();
        for other in state.regions.values().filter(|o| o.id != region.id && o.state != RegionState::Lost) {
            // A witness must have been heard steadily for a while: one that
            // was itself cut off a moment ago still reports what it could not
            // reach then (found by the simulation, flapping regions).
            let steady = |c: &&str| {
                obs.controllers.get(*c).and_then(|v| v.alive_since_ms).is_some_and(|since| {
                    obs.now_ms.saturating_sub(since) >= WITNESS_STEADY_HEARTBEATS * policy.heartbeat_interval_ms
                })
            };
            let live: Vec<&str> =
                controllers_in(state, &other.id).filter(|c| !obs.suspected(state, c)).filter(steady).collect();
            if live.is_empty() {
                continue;
            }
            // A controller that reaches no region at all is more likely cut
            // off itself: its testimony counts only when there is no third
            // region it could have reached.
            let third_region_exists = state.regions.len() > 2;
            let cannot_reach = live.iter().all(|c| {
                obs.controllers.get(*c).is_some_and(|v| {
                    !v.reachable_regions.contains(&region.id)
                        && (!v.reachable_regions.is_empty() || !third_region_exists)
                })
            });
            if cannot_reach {
                witnesses.push(other.id.as_str());
            } else {
                dissent.push(other.id.as_str());
            }
        }
        if witnesses.len() < policy.witness_quorum as usize {
            let reason = format!(
                "the coordinator cannot hear region {}'s controllers, but only {} of the required {} witness regions \
                 confirm it (still reached from: {}); not failing over",
                region.id,
                witnesses.len(),
                policy.witness_quorum,
                if dissent.is_empty() { "none".to_string() } else { dissent.join(", ") }
            );
            out.not_declared.insert(region.id.clone(), reason);
            continue;
        }
        let lost = state.regions.values().filter(|r| r.state == RegionState::Lost).count();
        let blocked = if !state.automation_allowed(&region.id) {
            Some("automation is paused (maintenance)".to_string())
        } else if lost >= policy.max_lost_regions as usize {
            Some(format!("{lost} regions are already LOST (failover.max_lost_regions {})", policy.max_lost_regions))
        } else if state.serving_regions().all(|r| r.id == region.id) {
            Some("it is the last serving region".to_string())
        } else {
            None
        };
        if let Some(why) = blocked {
            out.not_declared.insert(region.id.clone(), format!("region {} looks lost but {why}", region.id));
            continue;
        }
        out.commands.push(Command::DeclareRegionLost {
            region: region.id.clone(),
            reason: format!(
                "all {} controllers suspected by the detector; witnesses {} cannot reach it either",
                controllers.len(),
                if witnesses.is_empty() { "(none required)".to_string() } else { witnesses.join(", ") }
            ),
        });
    }
}

fn plan_shard(state: &State, obs: &Observations, key: &str, shard: &Shard) -> Option<Command> {
    let policy = &state.topology.failover;
    let elapsed = |since: u64| obs.now_unix_ms.saturating_sub(since);
    if let Some(p) = &shard.pending {
        return (elapsed(p.since_unix_ms) > policy.promote_ack_timeout_ms).then(|| Command::Fence {
            shard: key.to_string(),
            replica: p.replica.clone(),
            expected_epoch: shard.epoch,
            reason: format!("no acknowledgement of the promotion within {} ms", policy.promote_ack_timeout_ms),
        });
    }
    let lease_held = state.leases.contains_key(&primary_lease_key(key));
    if let Some(sw) = &shard.switchover {
        if elapsed(sw.since_unix_ms) > policy.switchover_timeout_ms {
            return Some(Command::Fence {
                shard: key.to_string(),
                replica: sw.to.clone(),
                expected_epoch: shard.epoch,
                reason: format!(
                    "switchover from {} did not complete within {} ms; the shard fails over normally",
                    sw.from, policy.switchover_timeout_ms
                ),
            });
        }
        if lease_held {
            return None; // the demoted primary has not given its lease back yet
        }
        let target = sw.from_position.or_else(|| obs.report(state, &sw.from).map(|r| r.position))?;
        let report = obs.report(state, &sw.to)?;
        return (report.healthy && report.position >= target).then(|| Command::Promote {
            shard: key.to_string(),
            replica: sw.to.clone(),
            expected_epoch: shard.epoch,
            mode: PromotionMode::Switchover,
            reason: format!("planned switchover from {}: caught up at position {}", sw.from, report.position),
        });
    }
    let failed_primary = match &shard.primary {
        None => None,
        Some(p) => {
            let region = state.replicas.get(p).map(|r| r.region.as_str()).unwrap_or_default();
            if state.regions.get(region).is_some_and(|r| r.state == RegionState::Lost) {
                Some((p.as_str(), format!("primary {p} is in a lost region")))
            } else if !lease_held && reported_down(state, obs, p) {
                Some((p.as_str(), format!("primary {p} is down: its controller reports it unhealthy, lease given up")))
            } else {
                return None; // it has a primary in a region that is not lost
            }
        }
    };
    if lease_held {
        return None; // fencing: the old primary's lease must expire first
    }
    if obs.in_grace(state) {
        return None; // no heartbeat history yet: every controller looks unheard
    }
    if let Some(last) = shard.last_auto_failover_unix_ms.filter(|_| failed_primary.is_some()) {
        if elapsed(last) < shard.cooldown_seconds.saturating_mul(1000) {
            let reason = format!(
                "in its cooldown of {} s after an automatic failover; `interlockctl failover` decides",
                shard.cooldown_seconds
            );
            return await_operator(key, shard, reason);
        }
    }
    let (failed_primary, why) = match failed_primary {
        Some((p, why)) => (Some(p), why),
        None => (None, "the shard has no primary".to_string()),
    };
    match choose_candidate(state, obs, shard, failed_primary) {
        Ok(candidate) => Some(Command::Promote {
            shard: key.to_string(),
            replica: candidate.replica,
            expected_epoch: shard.epoch,
            mode: PromotionMode::Automatic,
            reason: format!("{why}; best candidate at position {}", candidate.position),
        }),
        // A shard that never had a primary waits for its controllers quietly.
        Err(_) if shard.epoch == 0 => None,
        Err(reasons) => await_operator(key, shard, format!("{why}; no candidate within the rules: {reasons}")),
    }
}

/// Whether `primary`'s own controller, heard now, reports its database
/// unhealthy: a primary that died while its region lives. (Its controller
/// fences it before it gives the lease back; the planner acts only once the
/// lease is gone.)
fn reported_down(state: &State, obs: &Observations, primary: &str) -> bool {
    let heard =
        state.replicas.get(primary).and_then(|r| r.controller.as_deref()).is_some_and(|c| !obs.suspected(state, c));
    heard && obs.report(state, primary).is_some_and(|r| !r.healthy)
}

/// Asks for an operator decision, unless the shard already waits for one for
/// this very reason: a waiting cluster writes nothing. (The reasons are
/// stable text, without numbers that move, for this.)
fn await_operator(key: &str, shard: &Shard, reason: String) -> Option<Command> {
    (shard.awaiting_operator.as_deref() != Some(reason.as_str()))
        .then(|| Command::AwaitOperator { shard: key.to_string(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::failover::testkit::*;
    use crate::vocab::{primary_lease_key, PromotionMode, RegionState, ReplicaRole, Response};

    #[test]
    fn a_region_is_declared_lost_only_when_suspected_and_corroborated() {
        let both_witness = [("c-us", "eu"), ("c-ap", "eu")];
        // (name, observations, regions declared lost, regions noted as not declared)
        let cases: &[(&str, Observations, &[&str], &[&str])] = &[
            ("all well", observe([10, 10, 10], &[], &[]), &[], &[]),
            ("suspected, both witnesses agree", observe([10, 10, 10], &["c-eu"], &both_witness), &["eu"], &[]),
            ("coordinator-only loss of contact", observe([10, 10, 10], &["c-eu"], &[]), &[], &["eu"]),
            ("one witness meets quorum 1", observe([10, 10, 10], &["c-eu"], &[("c-us", "eu")]), &["eu"], &[]),
            (
                "a witness that reaches nobody is not believed",
                observe([10, 10, 10], &["c-eu"], &[("c-us", "eu"), ("c-us", "ap"), ("c-ap", "ap")]),
                &[],
                &["eu"],
            ),
        ];
        for (name, obs, want_lost, want_noted) in cases {
            let w = World::new();
            let plan = plan(&w.state, obs);
            let lost: Vec<&str> = plan
                .commands
                .iter()
                .filter_map(|c| match c {
                    Command::DeclareRegionLost { region, .. } => Some(region.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(lost, *want_lost, "{name}");
            let noted: Vec<&str> = plan.not_declared.keys().map(String::as_str).collect();
            assert_eq!(noted, *want_noted, "{name}");
        }
    }

    #[test]
    fn nothing_is_declared_in_grace_in_maintenance_or_for_the_last_serving_region() {
        let witnessed = [("c-us", "eu"), ("c-ap", "eu")];
        // In the grace period after a leader change.
        let w = World::new();
        let mut obs = observe([10, 10, 10], &["c-eu"], &witnessed);
        obs.leader_since_ms = obs.now_ms - 100;
        assert!(plan(&w.state, &obs).commands.is_empty());
        // A leader that hears only its own region's controllers declares nothing.
        let w = World::new();
        let p = plan(&w.state, &observe([10, 10, 10], &["c-eu", "c-ap"], &[("c-us", "eu"), ("c-us", "ap")]));
        assert!(p.commands.is_empty() && p.not_declared["eu"].contains("only 1 of 3"), "{p:?}");
        // Witnesses that were themselves cut off a moment ago are not believed yet.
        let w = World::new();
        let mut obs = observe([10, 10, 10], &["c-eu"], &witnessed);
        for c in ["c-us", "c-ap"] {
            obs.controllers.get_mut(c).iter_mut().for_each(|v| v.alive_since_ms = Some(obs.now_ms - 100));
        }
        let p = plan(&w.state, &obs);
        assert!(p.commands.is_empty() && p.not_declared.contains_key("eu"), "{p:?}");
        // Maintenance on the region.
        let mut w = World::new();
        w.apply(Command::SetMaintenance { region: Some("eu".into()), on: true, reason: "upgrade".into() });
        let p = plan(&w.state, &observe([10, 10, 10], &["c-eu"], &witnessed));
        assert!(p.commands.is_empty() && p.not_declared["eu"].contains("maintenance"), "{p:?}");
        // Only one region serves: never declared.
        let mut w = World::new();
        for r in ["us", "ap"] {
            if let Some(region) = w.state.regions.get_mut(r) {
                region.state = RegionState::Drained;
            }
        }
        let p = plan(&w.state, &observe([10, 10, 10], &["c-eu"], &witnessed));
        assert!(p.not_declared["eu"].contains("last serving region"), "{p:?}");
        // And the state machine refuses it too.
        let refused = w.apply(Command::DeclareRegionLost { region: "eu".into(), reason: "test".into() });
        assert!(matches!(refused, Response::Refused { .. }), "{refused:?}");
    }

    #[test]
    fn promotion_waits_for_the_old_lease_then_picks_the_best_candidate() {
        let mut w = World::new();
        w.apply(Command::DeclareRegionLost { region: "eu".into(), reason: "test".into() });
        let obs = observe([50, 40, 45], &["c-eu"], &[]);
        assert!(kinds(&plan(&w.state, &obs)).iter().all(|k| !k.starts_with("promote")), "the lease is still held");
        w.expire_primary_lease();
        let plan = plan(&w.state, &obs);
        // eu (50) is the failed primary; ap has the best position among the rest.
        assert_eq!(kinds(&plan), vec!["promote orders-0-ap in orders/0 after epoch 1 (Automatic)"]);
        for command in plan.commands {
            assert!(matches!(w.apply(command), Response::Applied { .. }));
        }
        assert_eq!(w.state.shards["orders/0"].epoch, 2);
        assert_eq!(w.state.replicas["orders-0-eu"].role, ReplicaRole::Fenced);
        assert_eq!(w.state.leases[&primary_lease_key("orders/0")].holder, "orders-0-ap");
    }

    #[test]
    fn a_dead_primary_in_a_live_region_is_replaced_once_its_controller_gave_the_lease_up() {
        let dead = |obs: &mut Observations| {
            if let Some(r) = obs.controllers.get_mut("c-eu").and_then(|v| v.replicas.get_mut("orders-0-eu")) {
                r.healthy = false;
            }
        };
        let promotes = |w: &World, obs: &Observations| {
            kinds(&plan(&w.state, obs)).into_iter().filter(|k| k.starts_with("promote")).collect::<Vec<_>>()
        };
        let mut w = World::new();
        let mut obs = observe([50, 40, 45], &[], &[]);
        dead(&mut obs);
        assert!(promotes(&w, &obs).is_empty(), "the controller still holds the lease: it may restart it");
        w.expire_primary_lease();
        let healthy = observe([50, 40, 45], &[], &[]);
        assert!(promotes(&w, &healthy).is_empty(), "lease gone but reported healthy: its controller takes it back");
        let mut unheard = observe([50, 40, 45], &["c-eu"], &[]);
        dead(&mut unheard);
        assert!(promotes(&w, &unheard).is_empty(), "its controller unheard: only a region loss decides");
        assert_eq!(promotes(&w, &obs), vec!["promote orders-0-ap in orders/0 after epoch 1 (Automatic)"]);
        let plan = plan(&w.state, &obs);
        for command in plan.commands {
            assert!(matches!(w.apply(command), Response::Applied { .. }));
        }
        assert_eq!(w.state.replicas["orders-0-eu"].role, ReplicaRole::Fenced);
        // It confirms it is fenced and rejoins as a replica: its region lives.
        w.apply(ack("orders-0-eu", 2, ReplicaRole::Fenced));
        assert_eq!(w.state.replicas["orders-0-eu"].role, ReplicaRole::Replica);
    }

    #[test]
    fn an_unacknowledged_promotion_is_fenced_and_the_next_candidate_tried() {
        let mut w = World::new();
        w.apply(Command::DeclareRegionLost { region: "eu".into(), reason: "test".into() });
        w.expire_primary_lease();
        let obs = observe([50, 40, 45], &["c-eu"], &[]);
        for c in plan(&w.state, &obs).commands {
            w.apply(c);
        }
        assert_eq!(w.state.shards["orders/0"].pending.as_ref().map(|p| p.replica.as_str()), Some("orders-0-ap"));
        let mut later = obs.clone();
        later.now_unix_ms += w.state.topology.failover.promote_ack_timeout_ms + 1;
        let fence = plan(&w.state, &later).commands;
        assert_eq!(kinds(&Plan { commands: fence.clone(), ..Plan::default() }), vec!["fence orders-0-ap in orders/0"]);
        for c in fence {
            w.apply(c);
        }
        // Its lease must run out (it is no longer renewable) before anyone else.
        let key = primary_lease_key("orders/0");
        assert!(!crate::lease::renewable(&w.state, &key, w.state.leases[&key].token, ""));
        assert!(plan(&w.state, &later).commands.is_empty(), "waits for the fenced candidate's lease");
        w.expire_primary_lease();
        // The next candidate is tried at once: the cooldown spaces out
        // failovers, not the attempts within one.
        let next = kinds(&plan(&w.state, &later));
        assert_eq!(next, vec!["promote orders-0-us in orders/0 after epoch 2 (Automatic)"]);
    }

    #[test]
    fn a_shard_that_awaits_an_operator_is_not_asked_about_again() {
        let mut w = World::new();
        w.apply(Command::DeclareRegionLost { region: "eu".into(), reason: "test".into() });
        w.expire_primary_lease();
        // Every other replica is too far behind the failed primary.
        let obs = observe([1_000, 10, 20], &["c-eu"], &[]);
        let first = plan(&w.state, &obs).commands;
        assert!(matches!(&first[..], [Command::AwaitOperator { .. }]), "{first:?}");
        for c in first {
            w.apply(c);
        }
        assert!(plan(&w.state, &obs).commands.is_empty(), "the same wait is not proposed again");
        // A different reason is news.
        let closer = observe([1_000, 10, 980], &["c-eu", "c-ap"], &[]);
        assert!(matches!(&plan(&w.state, &closer).commands[..], [Command::AwaitOperator { .. }]));
    }

    #[test]
    fn a_second_automatic_failover_within_the_cooldown_waits_for_an_operator() {
        let mut w = World::new();
        w.apply(Command::DeclareRegionLost { region: "eu".into(), reason: "test".into() });
        w.expire_primary_lease();
        for c in plan(&w.state, &observe([50, 40, 45], &["c-eu"], &[])).commands {
            w.apply(c);
        }
        w.apply(ack("orders-0-ap", 2, ReplicaRole::Primary));
        // ap is lost too, 10 s later; us would be a fine candidate, but the shard is cooling down.
        w.state.topology.failover.max_lost_regions = 2;
        w.now_unix_ms += 10_000;
        w.apply(Command::DeclareRegionLost { region: "ap".into(), reason: "test".into() });
        w.expire_primary_lease();
        let mut obs = observe([50, 60, 70], &["c-eu", "c-ap"], &[]);
        obs.now_unix_ms = w.now_unix_ms;
        let next = plan(&w.state, &obs).commands;
        assert!(
            matches!(&next[..], [Command::AwaitOperator { reason, .. }] if reason.contains("cooldown")),
            "{next:?}"
        );
        let refused = w.apply(promote("orders-0-us", 2, PromotionMode::Automatic));
        assert!(matches!(refused, Response::Refused { ref reason, .. } if reason.contains("cooldown")), "{refused:?}");
        assert!(matches!(w.apply(promote("orders-0-us", 2, PromotionMode::Operator)), Response::Applied { .. }));
    }

    #[test]
    fn a_switchover_demotes_waits_for_the_lease_and_for_the_candidate_to_catch_up() {
        let mut w = World::new();
        let demote = Command::Demote {
            shard: "orders/0".into(),
            expected_epoch: 1,
            to: "orders-0-us".into(),
            reason: "t".into(),
        };
        assert!(matches!(w.apply(demote), Response::Applied { .. }));
        let key = primary_lease_key("orders/0");
        assert!(
            !crate::lease::renewable(&w.state, &key, w.state.leases[&key].token, ""),
            "the demoted primary's lease runs out"
        );
        let obs = observe([500, 480, 400], &[], &[]);
        assert!(plan(&w.state, &obs).commands.is_empty(), "the old primary still holds its lease");
        // The old primary stops at 500 and gives its lease back.
        w.apply(Command::Acknowledge {
            replica: "orders-0-eu".into(),
            epoch: 1,
            role: ReplicaRole::Replica,
            position: 500,
        });
        assert!(!w.state.leases.contains_key(&key));
        assert!(plan(&w.state, &obs).commands.is_empty(), "us is at 480 < 500");
        let caught_up = observe([500, 500, 400], &[], &[]);
        let commands = plan(&w.state, &caught_up).commands;
        assert_eq!(
            kinds(&Plan { commands: commands.clone(), ..Plan::default() }),
            vec!["promote orders-0-us in orders/0 after epoch 1 (Switchover)"]
        );
        for c in commands {
            w.apply(c);
        }
        assert_eq!(w.state.shards["orders/0"].primary.as_deref(), Some("orders-0-us"));
        assert_eq!(w.state.replicas["orders-0-eu"].role, ReplicaRole::Replica, "a demoted primary is not fenced");
        assert_eq!(w.state.shards["orders/0"].last_auto_failover_unix_ms, None, "no cooldown for planned moves");
    }

    #[test]
    fn a_returning_region_recovers_and_its_fenced_replicas_rejoin() {
        let mut w = World::new();
        w.apply(Command::DeclareRegionLost { region: "eu".into(), reason: "test".into() });
        w.expire_primary_lease();
        for c in plan(&w.state, &observe([50, 40, 45], &["c-eu"], &[])).commands {
            w.apply(c);
        }
        let back = plan(&w.state, &observe([50, 40, 45], &[], &[])).commands;
        assert!(matches!(&back[0], Command::SetRegionState { state: RegionState::Recovering, .. }), "{back:?}");
        w.apply(back[0].clone());
        // The old primary's controller confirms it stopped: it rejoins as a replica.
        w.apply(ack("orders-0-eu", 2, ReplicaRole::Fenced));
        assert_eq!(w.state.replicas["orders-0-eu"].role, ReplicaRole::Replica);
        // Nobody else may take the primary lease.
        let grab = w.apply(Command::LeaseGrant {
            key: primary_lease_key("orders/0"),
            holder: "orders-0-eu".into(),
            ttl_ms: 1000,
        });
        assert!(matches!(grab, Response::Refused { .. }), "{grab:?}");
    }
}
