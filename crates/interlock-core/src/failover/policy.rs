//! The operator-facing rules of failover, written once and used by the
//! planner, the gRPC services and the CLI alike (SPEC §4):
//!
//! - **lag arithmetic** ([`lag`]) and the **RPO rule** ([`within_rpo`]);
//! - **candidate ranking** ([`rank`]): of the candidates within the RPO
//!   bound, the highest readiness (`readiness.rs`), then the best position,
//!   the highest priority, the replica id;
//! - which replica an automatic failover promotes ([`choose_candidate`]);
//! - the preconditions of a planned switchover ([`switchover_check`]) and
//!   the target of one that moves a primary out of a region
//!   ([`switchover_target`]);
//! - the RPO check of an operator failover ([`operator_failover_check`]);
//! - what an operator is told about a shard ([`shard_status`]).
//!
//! A refusal is `(Refusal, reason)`; the gRPC edge maps the class to a status.

use super::observations::{Observations, ReplicaReport};
use super::readiness;
use crate::model::Shard;
use crate::state::State;
use crate::vocab::{primary_lease_key, Refusal, RegionState, ReplicaRole};
use std::cmp::Ordering;

/// A decision refused: its class and the reason, for the operator.
pub type Refused = (Refusal, String);

/// How far a replica that reported `report` is behind `reference`, a
/// position it must have reached: the larger of the lag it reports itself
/// and the gap between the positions.
pub fn lag(report: &ReplicaReport, reference: u64) -> u64 {
    report.lag.max(reference.saturating_sub(report.position))
}

/// The RPO rule: a replica `lag` behind may become `shard`'s primary without
/// an operator accepting data loss.
pub fn within_rpo(shard: &Shard, lag: u64) -> bool {
    lag <= shard.max_lag_on_failover
}

/// A candidate as [`rank`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Ranked<'a> {
    pub id: &'a str,
    pub priority: u32,
    pub report: ReplicaReport,
    /// Its readiness score ([`super::readiness::of_candidate`]).
    pub readiness: u32,
}

/// The order of candidates that pass the RPO bound, best first: the highest
/// readiness score, then the highest position, then the highest priority,
/// then the smallest replica id (a stable tiebreak).
pub fn rank(a: &Ranked<'_>, b: &Ranked<'_>) -> Ordering {
    b.readiness
        .cmp(&a.readiness)
        .then(b.report.position.cmp(&a.report.position))
        .then(b.priority.cmp(&a.priority))
        .then(a.id.cmp(b.id))
}

/// The best of `eligible` (replica id, priority, report, lag) by [`rank`].
fn best<'a>(
    state: &State,
    obs: &Observations,
    shard: &Shard,
    eligible: Vec<(&'a str, u32, ReplicaReport, u64)>,
) -> Option<Ranked<'a>> {
    eligible
        .into_iter()
        .map(|(id, priority, report, lag)| Ranked {
            id,
            priority,
            report,
            readiness: readiness::of_candidate(state, shard, id, Some(lag), obs.now_unix_ms).score,
        })
        .min_by(rank)
}

/// The replica chosen for promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub replica: String,
    pub position: u64,
}

/// Chooses the replica to promote (SPEC §4): healthy, in an ACTIVE region
/// without maintenance, priority > 0, not fenced, its controller not
/// suspected, and within `max_lag_on_failover` of the best known position
/// (including the failed primary's last report); then the best position,
/// the highest priority, and the replica id as a stable tiebreak. On failure,
/// says why each replica was passed over (stable text: no numbers that move).
pub fn choose_candidate(
    state: &State,
    obs: &Observations,
    shard: &Shard,
    failed_primary: Option<&str>,
) -> Result<Candidate, String> {
    let mut passed = Vec::new();
    let mut eligible = Vec::new();
    for id in &shard.replicas {
        let Some(replica) = state.replicas.get(id) else { continue };
        let region = state.regions.get(&replica.region);
        let report = obs.report(state, id);
        let why = if Some(id.as_str()) == failed_primary {
            Some("the failed primary")
        } else if replica.role == ReplicaRole::Fenced {
            Some("fenced")
        } else if region.is_none_or(|r| r.state != RegionState::Active) {
            Some("its region is not ACTIVE")
        } else if !state.automation_allowed(&replica.region) {
            Some("its region is in maintenance")
        } else if replica.priority == 0 {
            Some("priority 0")
        } else if replica.controller.as_deref().is_none_or(|c| obs.suspected(state, c)) {
            Some("its controller is not heard")
        } else if !report.is_some_and(|r| r.healthy) {
            Some("not reported healthy")
        } else {
            None
        };
        match (why, report) {
            (None, Some(report)) => eligible.push((id.as_str(), replica.priority, report)),
            (Some(why), _) => passed.push(format!("{id}: {why}")),
            (None, None) => passed.push(format!("{id}: not reported healthy")),
        }
    }
    let best_known = eligible
        .iter()
        .map(|(_, _, r)| r.position)
        .chain(failed_primary.and_then(|p| obs.report(state, p)).map(|r| r.position))
        .max()
        .unwrap_or(0);
    let mut within = Vec::new();
    for (id, priority, report) in eligible {
        let behind = lag(&report, best_known);
        if within_rpo(shard, behind) {
            within.push((id, priority, report, behind));
        } else {
            passed.push(format!("{id}: lag beyond max_lag_on_failover"));
        }
    }
    match best(state, obs, shard, within) {
        Some(best) => Ok(Candidate { replica: best.id.to_string(), position: best.report.position }),
        None => Err(if passed.is_empty() { "no replicas".to_string() } else { passed.join("; ") }),
    }
}

/// The best position any replica of `shard` has reported.
fn best_position(state: &State, obs: &Observations, shard: &Shard) -> Option<u64> {
    shard.replicas.iter().filter_map(|id| obs.report(state, id)).map(|r| r.position).max()
}

fn not_found(reason: String) -> Refused {
    (Refusal::NotFound, reason)
}

/// Whether `to` may become the primary of `shard_key` by a planned
/// switchover now: the shard has a primary and nothing in progress, `to` is
/// another of its replicas, in an ACTIVE region, run by a controller the
/// leader hears, reported healthy, and within the RPO bound of the
/// primary's position (it must catch up to it before it is promoted).
/// Returns the current primary and the shard's epoch.
pub fn switchover_check(
    state: &State,
    obs: &Observations,
    shard_key: &str,
    to: &str,
) -> Result<(String, u64), Refused> {
    let refuse = |why: String| Err((Refusal::FailedPrecondition, format!("switchover {shard_key} to {to}: {why}")));
    let Some(shard) = state.shards.get(shard_key) else {
        return Err(not_found(format!("shard: unknown shard {shard_key}")));
    };
    let Some(replica) = state.replicas.get(to).filter(|r| shard.replicas.contains(&r.id)) else {
        return Err(not_found(format!("to: {to} is not a replica of {shard_key}")));
    };
    let Some(primary) = shard.primary.clone() else {
        return refuse("the shard has no primary; use `interlockctl failover`".to_string());
    };
    if primary == to {
        return refuse("it is already the primary".to_string());
    }
    if shard.pending.is_some() || shard.switchover.is_some() {
        return refuse("a promotion or switchover is already in progress".to_string());
    }
    if state.regions.get(&replica.region).is_none_or(|r| r.state != RegionState::Active) {
        return refuse(format!("its region {} is not ACTIVE", replica.region));
    }
    let Some(controller) = replica.controller.as_deref() else {
        return refuse("no controller runs it".to_string());
    };
    if obs.suspected(state, controller) {
        return refuse(format!("its controller {controller} is not heard (suspected by the failure detector)"));
    }
    let Some(report) = obs.report(state, to).filter(|r| r.healthy) else {
        return refuse("its controller does not report it healthy".to_string());
    };
    let primary_position = obs.report(state, &primary).map_or(report.position, |r| r.position);
    let behind = lag(&report, primary_position);
    if !within_rpo(shard, behind) {
        return refuse(format!(
            "it is {behind} behind the primary (max_lag_on_failover {}); it could not catch up in time",
            shard.max_lag_on_failover
        ));
    }
    crate::backup::track::verified_backup_rule(state, shard_key, &replica.region)?;
    Ok((primary, shard.epoch))
}

/// The replica a planned switchover moves `shard_key`'s primary to when it
/// must leave `region` (a region being emptied of primaries): of the
/// replicas outside `region` with priority > 0 that pass
/// [`switchover_check`], the best by [`rank`].
pub fn switchover_target(state: &State, obs: &Observations, shard_key: &str, region: &str) -> Result<String, Refused> {
    let Some(shard) = state.shards.get(shard_key) else {
        return Err(not_found(format!("shard: unknown shard {shard_key}")));
    };
    let mut passed = Vec::new();
    let mut eligible = Vec::new();
    for id in &shard.replicas {
        let Some(replica) = state.replicas.get(id) else { continue };
        if replica.region == region || replica.priority == 0 {
            continue;
        }
        match (switchover_check(state, obs, shard_key, id), obs.report(state, id)) {
            (Ok((primary, _)), Some(report)) => {
                let primary_position = obs.report(state, &primary).map_or(report.position, |r| r.position);
                eligible.push((id.as_str(), replica.priority, report, lag(&report, primary_position)))
            }
            (Err((_, why)), _) => passed.push(why),
            (Ok(_), None) => {}
        }
    }
    match best(state, obs, shard, eligible) {
        Some(best) => Ok(best.id.to_string()),
        None => Err((
            Refusal::FailedPrecondition,
            format!(
                "{shard_key}: no replica outside {region} can take over{}",
                if passed.is_empty() { String::new() } else { format!(": {}", passed.join("; ")) }
            ),
        )),
    }
}

/// Whether an operator may promote `to` in `shard_key` now. Unless
/// `accept_data_loss`, `to` must have reported a position within the RPO
/// bound of the best position any replica of the shard reported. Returns
/// the shard's epoch (the promotion expects it).
pub fn operator_failover_check(
    state: &State,
    obs: &Observations,
    shard_key: &str,
    to: &str,
    accept_data_loss: bool,
) -> Result<u64, Refused> {
    let Some(shard) = state.shards.get(shard_key) else {
        return Err(not_found(format!("shard: unknown shard {shard_key}")));
    };
    if !shard.replicas.iter().any(|r| r == to) || !state.replicas.contains_key(to) {
        return Err(not_found(format!("to: {to} is not a replica of {shard_key}")));
    }
    if accept_data_loss {
        return Ok(shard.epoch);
    }
    let Some(report) = obs.report(state, to) else {
        return Err((
            Refusal::FailedPrecondition,
            format!(
                "to: no position reported for {to}; its data cannot be checked — pass --accept-data-loss to promote \
                 it anyway"
            ),
        ));
    };
    let behind = lag(&report, best_position(state, obs, shard).unwrap_or(0));
    if !within_rpo(shard, behind) {
        return Err((
            Refusal::FailedPrecondition,
            format!(
                "to: {to} is {behind} behind the best known position (max_lag_on_failover {}); promoting it loses \
                 data — pass --accept-data-loss to do it anyway",
                shard.max_lag_on_failover
            ),
        ));
    }
    Ok(shard.epoch)
}

/// What an operator is told about a shard, in one line: "ok" only when it
/// has a primary that holds its lease, whose controller the leader hears,
/// and nothing is in progress.
pub fn shard_status(state: &State, obs: &Observations, shard_key: &str, shard: &Shard) -> String {
    if let Some(p) = &shard.pending {
        return format!("promoting {} (awaiting acknowledgement)", p.replica);
    }
    if let Some(sw) = &shard.switchover {
        return format!("switching over from {} to {}", sw.from, sw.to);
    }
    if let Some(reason) = &shard.awaiting_operator {
        return format!("awaiting operator: {reason}");
    }
    let Some(primary) = &shard.primary else {
        return "no primary".to_string();
    };
    let controller = state.replicas.get(primary).and_then(|r| r.controller.as_deref());
    let lease_held = state.leases.contains_key(&primary_lease_key(shard_key));
    match (lease_held, controller) {
        (true, Some(c)) if !obs.suspected(state, c) => "ok".to_string(),
        (true, Some(c)) => format!("primary {primary}'s controller {c} is not heard"),
        (false, Some(c)) if obs.suspected(state, c) => {
            format!("primary {primary} lost its lease and is not acting; its controller {c} is not heard")
        }
        (false, Some(_)) => format!("primary {primary} lost its lease and is not acting"),
        (_, None) => format!("primary {primary} has no controller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::testkit::*;

    #[test]
    fn candidate_choice_table() {
        // (name, positions eu/us/ap, silent controllers, mutate, expected)
        type Mutate = fn(&mut State);
        type Case<'a> = (&'a str, [u64; 3], &'a [&'a str], Mutate, Result<&'a str, &'a str>);
        let cases: &[Case<'_>] = &[
            ("best position wins", [100, 90, 95], &[], |_| {}, Ok("orders-0-ap")),
            ("equal positions: higher priority", [100, 95, 95], &[], |_| {}, Ok("orders-0-us")),
            ("lag beyond the RPO bound", [1000, 10, 20], &[], |_| {}, Err("lag beyond max_lag_on_failover")),
            ("suspected controller", [100, 100, 90], &["c-us"], |_| {}, Ok("orders-0-ap")),
            (
                "priority 0 never",
                [100, 100, 90],
                &[],
                |s| s.replicas.get_mut("orders-0-us").iter_mut().for_each(|r| r.priority = 0),
                Ok("orders-0-ap"),
            ),
            (
                "fenced is out",
                [100, 100, 90],
                &[],
                |s| s.replicas.get_mut("orders-0-us").iter_mut().for_each(|r| r.role = ReplicaRole::Fenced),
                Ok("orders-0-ap"),
            ),
            (
                "region not active",
                [100, 100, 100],
                &[],
                |s| {
                    s.regions.get_mut("us").iter_mut().for_each(|r| r.state = RegionState::Draining);
                    s.regions.get_mut("ap").iter_mut().for_each(|r| r.state = RegionState::Recovering);
                },
                Err("its region is not ACTIVE"),
            ),
            (
                // Readiness before position: ap is closer (lag 5 against 10)
                // but its region has no spare capacity left for the service.
                "readiness first: no spare capacity in ap",
                [100, 90, 95],
                &[],
                |s| s.regions.get_mut("ap").iter_mut().for_each(|r| r.capacity = 10),
                Ok("orders-0-us"),
            ),
        ];
        for (name, positions, silent, mutate, want) in cases {
            let mut w = World::new();
            mutate(&mut w.state);
            let obs = observe(*positions, silent, &[]);
            let shard = &w.state.shards["orders/0"];
            let got = choose_candidate(&w.state, &obs, shard, Some("orders-0-eu"));
            match (got, want) {
                (Ok(c), Ok(id)) => assert_eq!(c.replica, *id, "{name}"),
                (Err(why), Err(part)) => assert!(why.contains(part), "{name}: {why}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lag_is_the_larger_of_the_reported_lag_and_the_position_gap() {
        let at = |position, lag| ReplicaReport { position, lag, healthy: true };
        assert_eq!(lag(&at(90, 3), 100), 10);
        assert_eq!(lag(&at(90, 20), 100), 20);
        assert_eq!(lag(&at(120, 0), 100), 0, "ahead of the reference is not behind");
    }

    #[test]
    fn switchover_preconditions_table() {
        // (name, positions eu/us/ap, silent controllers, mutate, target, expected error part)
        type Mutate = fn(&mut State);
        type Case<'a> = (&'a str, [u64; 3], &'a [&'a str], Mutate, &'a str, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            ("a caught-up replica", [100, 100, 90], &[], |_| {}, "orders-0-us", None),
            ("within the RPO bound", [100, 10, 90], &[], |_| {}, "orders-0-us", None),
            ("beyond the RPO bound", [1000, 10, 90], &[], |_| {}, "orders-0-us", Some("is 990 behind the primary")),
            ("the primary itself", [100, 100, 90], &[], |_| {}, "orders-0-eu", Some("already the primary")),
            ("not a replica of the shard", [100, 100, 90], &[], |_| {}, "nope", Some("is not a replica of")),
            ("its controller is silent", [100, 100, 90], &["c-us"], |_| {}, "orders-0-us", Some("is not heard")),
            (
                "its region drains",
                [100, 100, 90],
                &[],
                |s| s.regions.get_mut("us").iter_mut().for_each(|r| r.state = RegionState::Draining),
                "orders-0-us",
                Some("is not ACTIVE"),
            ),
        ];
        for (name, positions, silent, mutate, to, want) in cases {
            let mut w = World::new();
            mutate(&mut w.state);
            let got = switchover_check(&w.state, &observe(*positions, silent, &[]), "orders/0", to);
            match (got, want) {
                (Ok((from, epoch)), None) => assert_eq!((from.as_str(), epoch), ("orders-0-eu", 1), "{name}"),
                (Err((_, why)), Some(part)) => assert!(why.contains(part), "{name}: {why}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_primary_leaving_a_region_goes_to_the_best_ranked_replica_elsewhere() {
        let w = World::new();
        let target = |positions, silent: &[&str]| {
            switchover_target(&w.state, &observe(positions, silent, &[]), "orders/0", "eu")
        };
        assert_eq!(target([100, 90, 95], &[]), Ok("orders-0-ap".to_string()), "best position");
        assert_eq!(target([100, 95, 95], &[]), Ok("orders-0-us".to_string()), "then the higher priority");
        assert_eq!(target([100, 100, 100], &["c-us"]), Ok("orders-0-ap".to_string()), "only heard controllers");
        let none = target([100, 100, 100], &["c-us", "c-ap"]);
        assert!(
            matches!(&none, Err((Refusal::FailedPrecondition, why)) if why.contains("no replica outside eu")),
            "{none:?}"
        );
    }

    #[test]
    fn an_operator_failover_keeps_the_rpo_unless_data_loss_is_accepted() {
        let w = World::new();
        let check = |positions, to: &str, accept| {
            operator_failover_check(&w.state, &observe(positions, &[], &[]), "orders/0", to, accept)
        };
        assert_eq!(check([100, 50, 10], "orders-0-us", false), Ok(1));
        let far = check([1000, 50, 10], "orders-0-us", false);
        assert!(matches!(&far, Err((Refusal::FailedPrecondition, why)) if why.contains("950 behind")), "{far:?}");
        // Found by a review: these messages once carried long runs of spaces.
        assert!(matches!(&far, Err((_, why)) if !why.contains("  ")), "{far:?}");
        assert_eq!(check([1000, 50, 10], "orders-0-us", true), Ok(1));
        assert!(matches!(check([1, 1, 1], "nope", true), Err((Refusal::NotFound, _))));
        let mut silent = observe([100, 100, 100], &[], &[]);
        silent.controllers.remove("c-us");
        let unknown = operator_failover_check(&w.state, &silent, "orders/0", "orders-0-us", false);
        assert!(matches!(&unknown, Err((_, why)) if why.contains("no position reported") && !why.contains("  ")));
    }

    #[test]
    fn a_shard_is_ok_only_while_its_primary_holds_its_lease_and_is_heard() {
        let mut w = World::new();
        let status = |w: &World, silent: &[&str]| {
            let shard = &w.state.shards["orders/0"];
            shard_status(&w.state, &observe([1, 1, 1], silent, &[]), "orders/0", shard)
        };
        assert_eq!(status(&w, &[]), "ok");
        assert_eq!(status(&w, &["c-eu"]), "primary orders-0-eu's controller c-eu is not heard");
        w.expire_primary_lease();
        assert_eq!(
            status(&w, &["c-eu"]),
            "primary orders-0-eu lost its lease and is not acting; its controller c-eu is not heard"
        );
        assert_eq!(status(&w, &[]), "primary orders-0-eu lost its lease and is not acting");
    }
}
