//! Routing transitions on [`State`]: operator weights, drains and undrains
//! step by step, and the rerouting every region change causes.

use crate::command::{Refusal, Response};
use crate::routing::{reroute, validate_weights, ChangeKind, Rule, TOTAL_BPS};
use crate::state::{Drain, Effects, Region, RegionState, Routing, State};
use std::collections::BTreeMap;

impl State {
    /// Installs the routing tables computed for `regions` (already checked),
    /// bumping the version of every table whose effective weights changed.
    fn install_routing(&mut self, tables: crate::routing::Tables, fx: &mut Effects) {
        self.routing.retain(|service, _| tables.contains_key(service));
        for (service, (base, effective)) in tables {
            let changed = self.routing.get(&service).is_none_or(|r| r.effective != effective || r.base != base);
            if !changed {
                continue;
            }
            let moved = self.routing.get(&service).is_none_or(|r| r.effective != effective);
            let (version, updated) = match self.routing.get(&service) {
                Some(r) if !moved => (r.version, r.updated_at_unix_ms),
                _ => (fx.index, fx.at_unix_ms),
            };
            if moved {
                fx.event("routing.changed", &service, format!("version {version}: {}", weights_text(&effective)));
            }
            self.routing
                .insert(service.clone(), Routing { service, version, base, effective, updated_at_unix_ms: updated });
        }
    }

    /// Reroutes after a change of region states that is not a planned move
    /// (a region lost or recovering, a topology applied): never refused;
    /// rule violations are reported as events.
    pub(crate) fn reroute_forced(&mut self, fx: &mut Effects) {
        let regions = self.regions.clone();
        if let Ok((tables, violations)) = reroute(self, &regions, None, ChangeKind::Emergency, &[]) {
            for v in violations {
                fx.event("routing.rule_violated", "routing", format!("applied anyway (emergency): {v}"));
            }
            self.install_routing(tables, fx);
        }
    }

    /// Applies `regions` (and maybe new base weights) as a planned change:
    /// refused, changing nothing, if a rule not overridden forbids it.
    pub(crate) fn reroute_planned(
        &mut self,
        regions: BTreeMap<String, Region>,
        new_base: Option<(&str, &BTreeMap<String, u32>)>,
        overrides: &[Rule],
        fx: &mut Effects,
    ) -> Result<(), Response> {
        let (tables, _) =
            reroute(self, &regions, new_base, ChangeKind::Planned, overrides).map_err(|(service, v)| {
                Response::refused(Refusal::FailedPrecondition, format!("routing of {service} refused by {v}"))
            })?;
        self.regions = regions;
        self.install_routing(tables, fx);
        Ok(())
    }

    pub(crate) fn set_routing(
        &mut self,
        service: &str,
        weights: &BTreeMap<String, u32>,
        overrides: &[Rule],
        reason: &str,
        fx: &mut Effects,
    ) -> Response {
        if !self.topology.services.iter().any(|s| s.name == service) {
            return Response::refused(Refusal::NotFound, format!("service: unknown service {service:?}"));
        }
        let full: BTreeMap<String, u32> =
            self.regions.keys().map(|r| (r.clone(), *weights.get(r).unwrap_or(&0))).collect();
        if let Err(e) = validate_weights(weights, &self.regions) {
            return Response::refused(Refusal::InvalidArgument, e.to_string());
        }
        if let Err(r) = self.reroute_planned(self.regions.clone(), Some((service, &full)), overrides, fx) {
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
        &mut self,
        region: &str,
        undrain: bool,
        step_bps: u32,
        interval_ms: u64,
        reason: &str,
        fx: &mut Effects,
    ) -> Response {
        let Some(r) = self.regions.get(region) else {
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
        let drain = Drain { fraction_bps: from, step_bps, interval_ms, undrain, next_step_at_unix_ms: fx.at_unix_ms };
        // The first step is taken now, checked like every later one.
        match self.drain_step_to(region, drain, fx) {
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

    pub(crate) fn drain_step(&mut self, region: &str, expected_fraction_bps: u32, fx: &mut Effects) -> Response {
        let Some(drain) = self.regions.get(region).and_then(|r| r.drain.clone()) else {
            return Response::refused(Refusal::FailedPrecondition, format!("region {region} is not draining"));
        };
        if drain.fraction_bps != expected_fraction_bps {
            return Response::refused(
                Refusal::FailedPrecondition,
                format!("region {region} is at {} bps, not {expected_fraction_bps}", drain.fraction_bps),
            );
        }
        match self.drain_step_to(region, drain, fx) {
            Ok(()) => Response::Applied { revision: fx.index },
            Err(r) => r,
        }
    }

    /// Moves `region` one step from `drain`'s fraction (a planned change).
    fn drain_step_to(&mut self, region: &str, drain: Drain, fx: &mut Effects) -> Result<(), Response> {
        let fraction = if drain.undrain {
            drain.fraction_bps.saturating_add(drain.step_bps).min(TOTAL_BPS)
        } else {
            drain.fraction_bps.saturating_sub(drain.step_bps)
        };
        let mut regions = self.regions.clone();
        if let Some(r) = regions.get_mut(region) {
            let (state, next) = match (drain.undrain, fraction) {
                (false, 0) => (RegionState::Drained, None),
                (true, TOTAL_BPS) => (RegionState::Active, None),
                _ => (
                    RegionState::Draining,
                    Some(Drain {
                        fraction_bps: fraction,
                        next_step_at_unix_ms: fx.at_unix_ms.saturating_add(drain.interval_ms),
                        ..drain.clone()
                    }),
                ),
            };
            if r.state != state {
                r.state_since_unix_ms = fx.at_unix_ms;
                fx.event("region.state", region, format!("{:?} -> {state:?} (drain at {fraction} bps)", r.state));
            }
            r.state = state;
            r.drain = next;
        }
        self.reroute_planned(regions, None, &[], fx)
    }
}

fn weights_text(weights: &BTreeMap<String, u32>) -> String {
    let parts: Vec<String> = weights.iter().map(|(r, w)| format!("{r}={w}")).collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Request, Response};
    use crate::routing::Rule;
    use crate::state::{RegionState, State};
    use crate::topology::{RegionSpec, ServiceSpec, ShardSpec, Topology};
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
                        replicas: vec![crate::topology::ReplicaSpec {
                            id: "w-eu".into(),
                            region: "eu".into(),
                            priority: 1,
                        }],
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
            let r = self.state.apply(self.index, &Request { at_unix_ms: self.at, command });
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
