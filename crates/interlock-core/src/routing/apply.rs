//! Routing transitions on the state: operator weights, drains and undrains
//! step by step, and the rerouting every region change causes.

use super::rules::{reroute, validate_weights, ChangeKind, Tables};
use crate::model::{Drain, Region, Routing};
use crate::state::{Effects, State};
use crate::vocab::{Refusal, RegionState, Response, Rule, TOTAL_BPS};
use std::collections::BTreeMap;

/// Installs the routing tables computed for `regions` (already checked),
/// bumping the version of every table whose effective weights changed.
fn install_routing(state: &mut State, tables: Tables, fx: &mut Effects) {
    state.routing.retain(|service, _| tables.contains_key(service));
    for (service, (base, effective)) in tables {
        let changed = state.routing.get(&service).is_none_or(|r| r.effective != effective || r.base != base);
        if !changed {
            continue;
        }
        let moved = state.routing.get(&service).is_none_or(|r| r.effective != effective);
        let (version, updated) = match state.routing.get(&service) {
            Some(r) if !moved => (r.version, r.updated_at_unix_ms),
            _ => (fx.index, fx.at_unix_ms),
        };
        if moved {
            fx.event("routing.changed", &service, format!("version {version}: {}", weights_text(&effective)));
        }
        state
            .routing
            .insert(service.clone(), Routing { service, version, base, effective, updated_at_unix_ms: updated });
    }
}

/// Reroutes after a change of region states that is not a planned move
/// (a region lost or recovering, a topology applied): never refused;
/// rule violations are reported as events.
pub(crate) fn reroute_forced(state: &mut State, fx: &mut Effects) {
    let regions = state.regions.clone();
    if let Ok((tables, violations)) = reroute(state, &regions, None, ChangeKind::Emergency, &[]) {
        for v in violations {
            fx.event("routing.rule_violated", "routing", format!("applied anyway (emergency): {v}"));
        }
        install_routing(state, tables, fx);
    }
}

/// The routing tables `regions` (and maybe new base weights) would give, as
/// a planned change: refused if a rule not overridden forbids it.
fn planned_tables(
    state: &State,
    regions: &BTreeMap<String, Region>,
    new_base: Option<(&str, &BTreeMap<String, u32>)>,
    overrides: &[Rule],
) -> Result<Tables, Response> {
    let (tables, _) = reroute(state, regions, new_base, ChangeKind::Planned, overrides).map_err(|(service, v)| {
        Response::refused(Refusal::FailedPrecondition, format!("routing of {service} refused by {v}"))
    })?;
    Ok(tables)
}

/// Applies `regions` (and maybe new base weights) as a planned change:
/// refused, changing nothing, if a rule not overridden forbids it.
pub(crate) fn reroute_planned(
    state: &mut State,
    regions: BTreeMap<String, Region>,
    new_base: Option<(&str, &BTreeMap<String, u32>)>,
    overrides: &[Rule],
    fx: &mut Effects,
) -> Result<(), Response> {
    let tables = planned_tables(state, &regions, new_base, overrides)?;
    state.regions = regions;
    install_routing(state, tables, fx);
    Ok(())
}

pub(crate) fn set_routing(
    state: &mut State,
    service: &str,
    weights: &BTreeMap<String, u32>,
    overrides: &[Rule],
    reason: &str,
    fx: &mut Effects,
) -> Response {
    if !state.topology.services.iter().any(|s| s.name == service) {
        return Response::refused(Refusal::NotFound, format!("service: unknown service {service:?}"));
    }
    let full: BTreeMap<String, u32> =
        state.regions.keys().map(|r| (r.clone(), *weights.get(r).unwrap_or(&0))).collect();
    if let Err(e) = validate_weights(weights, &state.regions) {
        return Response::refused(Refusal::InvalidArgument, e.to_string());
    }
    if let Err(r) = reroute_planned(state, state.regions.clone(), Some((service, &full)), overrides, fx) {
        return r;
    }
    if !overrides.is_empty() {
        let names: Vec<&str> = overrides.iter().map(|r| r.name()).collect();
        fx.event("routing.override", service, format!("rules {names:?} overridden: {reason}"));
    }
    fx.event("routing.set", service, format!("base {}: {reason}", weights_text(&full)));
    Response::Applied { revision: fx.index }
}

pub(crate) fn drain(
    state: &mut State,
    region: &str,
    undrain: bool,
    step_bps: u32,
    interval_ms: u64,
    reason: &str,
    fx: &mut Effects,
) -> Response {
    let Some(r) = state.regions.get(region) else {
        return Response::refused(Refusal::NotFound, format!("region: unknown region {region:?}"));
    };
    let from = match (undrain, r.state, &r.drain) {
        (false, RegionState::Active, _) => TOTAL_BPS,
        (false, RegionState::Draining, Some(d)) if d.undrain => d.fraction_bps,
        (true, RegionState::Drained | RegionState::Recovering, _) => 0,
        (true, RegionState::Draining, Some(d)) if !d.undrain => d.fraction_bps,
        (_, state, _) => {
            let verb = if undrain { "undrained" } else { "drained" };
            return Response::refused(
                Refusal::FailedPrecondition,
                format!("region {region} is {state:?}; it cannot be {verb} now"),
            );
        }
    };
    if !undrain {
        if let Err((code, reason)) = crate::backup::track::drain_rule(state, region) {
            return Response::refused(code, reason);
        }
    }
    let drain = Drain { fraction_bps: from, step_bps, interval_ms, undrain, next_step_at_unix_ms: fx.at_unix_ms };
    // The first step is taken now, checked like every later one.
    match drain_step_to(state, region, drain, fx) {
        Ok(()) => {
            let verb = if undrain { "undrain" } else { "drain" };
            fx.event(
                &format!("region.{verb}"),
                region,
                format!("{verb} by {step_bps} bps every {interval_ms} ms: {reason}"),
            );
            Response::Applied { revision: fx.index }
        }
        Err(r) => r,
    }
}

pub(crate) fn drain_step(state: &mut State, region: &str, expected_fraction_bps: u32, fx: &mut Effects) -> Response {
    let Some(drain) = state.regions.get(region).and_then(|r| r.drain.clone()) else {
        return Response::refused(Refusal::FailedPrecondition, format!("region {region} is not draining"));
    };
    if drain.fraction_bps != expected_fraction_bps {
        return Response::refused(
            Refusal::FailedPrecondition,
            format!("region {region} is at {} bps, not {expected_fraction_bps}", drain.fraction_bps),
        );
    }
    match drain_step_to(state, region, drain, fx) {
        Ok(()) => Response::Applied { revision: fx.index },
        Err(r) => r,
    }
}

/// The regions after one step of `region`'s drain from `drain`, taken at
/// `at_unix_ms`, and the region's (old, new) state if the step changes it.
fn regions_after_step(
    state: &State,
    region: &str,
    drain: &Drain,
    at_unix_ms: u64,
) -> (BTreeMap<String, Region>, Option<(RegionState, RegionState)>) {
    let fraction = if drain.undrain {
        drain.fraction_bps.saturating_add(drain.step_bps).min(TOTAL_BPS)
    } else {
        drain.fraction_bps.saturating_sub(drain.step_bps)
    };
    let mut regions = state.regions.clone();
    let mut change = None;
    if let Some(r) = regions.get_mut(region) {
        let (to, next) = match (drain.undrain, fraction) {
            (false, 0) => (RegionState::Drained, None),
            (true, TOTAL_BPS) => (RegionState::Active, None),
            _ => (
                RegionState::Draining,
                Some(Drain {
                    fraction_bps: fraction,
                    next_step_at_unix_ms: at_unix_ms.saturating_add(drain.interval_ms),
                    ..drain.clone()
                }),
            ),
        };
        if r.state != to {
            r.state_since_unix_ms = at_unix_ms;
            change = Some((r.state, to));
        }
        r.state = to;
        r.drain = next;
    }
    (regions, change)
}

/// Moves `region` one step from `drain`'s fraction (a planned change).
fn drain_step_to(state: &mut State, region: &str, drain: Drain, fx: &mut Effects) -> Result<(), Response> {
    let (regions, change) = regions_after_step(state, region, &drain, fx.at_unix_ms);
    let tables = planned_tables(state, &regions, None, &[])?;
    if let Some((from, to)) = change {
        let fraction = regions.get(region).map_or(0, super::rules::region_fraction_bps);
        fx.event("region.state", region, format!("{from:?} -> {to:?} (drain at {fraction} bps)"));
    }
    state.regions = regions;
    install_routing(state, tables, fx);
    Ok(())
}

/// The drain steps due at `now_unix_ms` (leader's wall clock): (region, the
/// fraction the step starts from). Drains advance on the leader's clock from
/// state any leader can resume.
pub fn due_drain_steps(state: &State, now_unix_ms: u64) -> Vec<(String, u32)> {
    let due = state.regions.values().filter_map(|r| r.drain.as_ref().map(|d| (r, d)));
    due.filter(|(_, d)| now_unix_ms >= d.next_step_at_unix_ms).map(|(r, d)| (r.id.clone(), d.fraction_bps)).collect()
}

/// Why the next step of `region`'s drain would be refused now, if it would:
/// the same check the step meets when applied, so that a drain a rule
/// blocks is not proposed (and refused, a log entry each time) again and
/// again while it waits.
pub fn drain_step_refusal(state: &State, region: &str, now_unix_ms: u64) -> Option<String> {
    let drain = state.regions.get(region)?.drain.as_ref()?;
    let (regions, _) = regions_after_step(state, region, drain, now_unix_ms);
    match planned_tables(state, &regions, None, &[]) {
        Err(Response::Refused { reason, .. }) => Some(reason),
        _ => None,
    }
}

fn weights_text(weights: &BTreeMap<String, u32>) -> String {
    let parts: Vec<String> = weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Request};
    use crate::model::{RegionSpec, ReplicaSpec, ServiceSpec, ShardSpec, Topology};
    use crate::state::State;
    use crate::vocab::{RegionState, Response, Rule};
    use std::collections::BTreeMap;

    struct W {
        state: State,
        index: u64,
        at: u64,
    }

    impl W {
        fn new() -> W {
            let topology = Topology {
                regions: ["eu", "us", "ap"].iter().map(|r| RegionSpec { id: r.to_string(), capacity: 100 }).collect(),
                services: vec![ServiceSpec {
                    name: "web".into(),
                    shards: vec![ShardSpec {
                        id: "0".into(),
                        max_lag_on_failover: 0,
                        cooldown_seconds: 0,
                        replicas: vec![ReplicaSpec {
                            id: "w-eu".into(),
                            region: "eu".into(),
                            priority: 1,
                            address: String::new(),
                        }],
                        backup: None,
                    }],
                }],
                ..Topology::default()
            };
            let mut w = W { state: State::default(), index: 0, at: 1_000 };
            assert!(matches!(w.apply(Command::ApplyTopology { topology }), Response::Applied { .. }));
            w
        }

        fn apply(&mut self, command: Command) -> Response {
            self.index += 1;
            let r = self.state.apply(self.index, &Request::system(self.at, command));
            assert_eq!(self.state.validate(), Ok(()));
            r
        }

        fn weights(&self) -> Vec<u32> {
            let e = &self.state.routing["web"].effective;
            ["eu", "us", "ap"].iter().map(|r| e[*r]).collect()
        }
    }

    fn set(weights: &[(&str, u32)], overrides: Vec<Rule>) -> Command {
        Command::SetRouting {
            service: "web".into(),
            weights: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            overrides,
            reason: "test".into(),
        }
    }

    #[test]
    fn a_topology_gets_capacity_weights_and_a_lost_region_is_rerouted_at_once() {
        let mut w = W::new();
        assert_eq!(w.weights(), vec![3333, 3333, 3334], "largest remainder, ties to the first region id (ap)");
        let v1 = w.state.routing["web"].version;
        w.apply(Command::DeclareRegionLost { region: "us".into(), reason: "test".into() });
        assert_eq!(w.weights(), vec![4999, 0, 5001], "an emergency move is exempt from the step limit");
        assert!(w.state.routing["web"].version > v1);
    }

    #[test]
    fn a_refused_change_names_its_rule_and_changes_nothing_unless_overridden() {
        let mut w = W::new();
        let before = w.state.routing.clone();
        let refused = w.apply(set(&[("eu", 6000), ("us", 2000), ("ap", 2000)], vec![]));
        assert!(matches!(&refused, Response::Refused { reason, .. } if reason.contains("max-step")), "{refused:?}");
        assert_eq!(w.state.routing, before);
        // Capacity still holds when the step limit is overridden.
        let refused = w.apply(set(&[("eu", 8000), ("us", 1000), ("ap", 1000)], vec![Rule::MaxStep]));
        assert!(
            matches!(&refused, Response::Refused { reason, .. } if reason.contains("capacity-ceiling")),
            "{refused:?}"
        );
        let ok = w.apply(set(&[("eu", 6000), ("us", 2000), ("ap", 2000)], vec![Rule::MaxStep]));
        assert!(matches!(ok, Response::Applied { .. }), "{ok:?}");
        assert_eq!(w.weights(), vec![6000, 2000, 2000]);
        assert!(w.state.events.iter().any(|e| e.kind == "routing.override"), "overrides are audited");
    }

    #[test]
    fn a_drain_steps_down_to_drained_and_an_undrain_back_up() {
        let mut w = W::new();
        let drain = |undrain| Command::Drain {
            region: "eu".into(),
            undrain,
            step_bps: 2500,
            interval_ms: 1000,
            reason: "test".into(),
        };
        assert!(matches!(w.apply(drain(false)), Response::Applied { .. }));
        assert_eq!(w.state.regions["eu"].state, RegionState::Draining);
        let mut seen = vec![w.weights()[0]];
        while let Some(d) = w.state.regions["eu"].drain.clone() {
            w.at = d.next_step_at_unix_ms;
            let step = w.apply(Command::DrainStep { region: "eu".into(), expected_fraction_bps: d.fraction_bps });
            assert!(matches!(step, Response::Applied { .. }), "{step:?}");
            seen.push(w.weights()[0]);
        }
        assert_eq!(seen, vec![2500, 1667, 833, 0]);
        assert_eq!(w.state.regions["eu"].state, RegionState::Drained);
        let stale = w.apply(Command::DrainStep { region: "eu".into(), expected_fraction_bps: 2500 });
        assert!(matches!(stale, Response::Refused { .. }), "a stale step is refused");
        assert!(matches!(w.apply(drain(true)), Response::Applied { .. }));
        while let Some(d) = w.state.regions["eu"].drain.clone() {
            w.apply(Command::DrainStep { region: "eu".into(), expected_fraction_bps: d.fraction_bps });
        }
        assert_eq!(w.state.regions["eu"].state, RegionState::Active);
        assert_eq!(w.weights(), vec![3333, 3333, 3334]);
    }

    #[test]
    fn draining_below_the_minimum_of_serving_regions_is_refused() {
        let mut w = W::new();
        w.apply(Command::DeclareRegionLost { region: "us".into(), reason: "test".into() });
        let refused = w.apply(Command::Drain {
            region: "eu".into(),
            undrain: false,
            step_bps: 10_000,
            interval_ms: 1000,
            reason: "test".into(),
        });
        assert!(
            matches!(&refused, Response::Refused { reason, .. } if reason.contains("min-serving-regions")),
            "{refused:?}"
        );
        assert_eq!(w.state.regions["eu"].state, RegionState::Active, "nothing changed");
    }
}
