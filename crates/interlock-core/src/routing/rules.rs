//! Active-active routing (SPEC §5): per service, a weight per region in
//! basis points summing to 10 000, shaped by region state, and the safety
//! rules every change is checked against. All pure arithmetic.
//!
//! - Operators set **base** weights. The **effective** weights are what
//!   controllers apply: a DRAINING region keeps `base × drain fraction`,
//!   DRAINED and LOST regions get 0, and the share they free is spread over
//!   the serving regions in proportion to their capacity. Rounding uses the
//!   largest remainder, so the sum is always exactly 10 000 (or 0 when no
//!   region can serve at all — which the rules refuse for planned changes).
//! - [`check_rules`] is the one function every change passes; each rule has
//!   a name an operator can override (with a reason and an expiry).

use crate::model::{Region, RoutingPolicy};
use crate::state::State;
use crate::vocab::{RegionState, Rule, TOTAL_BPS};
use std::collections::BTreeMap;
use std::fmt;

/// A change refused by a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}: {}", self.rule, self.reason)
    }
}

/// What kind of change is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Operator weights, drain and undrain steps: every rule applies.
    Planned,
    /// A region was lost: exempt from the step limit.
    Emergency,
}

/// Spreads `total` over `shares` in proportion, rounding by the largest
/// remainder (ties to the first key), so that the parts sum to `total`
/// exactly. All shares zero: everything zero.
pub fn apportion(shares: &BTreeMap<String, u64>, total: u32) -> BTreeMap<String, u32> {
    let sum: u64 = shares.values().sum();
    if sum == 0 {
        return shares.keys().map(|k| (k.clone(), 0)).collect();
    }
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    let mut remainders: Vec<(u64, &String)> = Vec::new();
    let mut given = 0u32;
    for (k, share) in shares {
        let exact = u128::from(*share) * u128::from(total);
        let floor = (exact / u128::from(sum)) as u32;
        let remainder = (exact % u128::from(sum)) as u64;
        out.insert(k.clone(), floor);
        given += floor;
        remainders.push((remainder, k));
    }
    // Largest remainder first; ties by key order (stable sort keeps it).
    remainders.sort_by_key(|(remainder, _)| std::cmp::Reverse(*remainder));
    for (_, k) in remainders.into_iter().take((total - given) as usize) {
        if let Some(v) = out.get_mut(k) {
            *v += 1;
        }
    }
    out
}

/// How much of its base weight a region keeps, in basis points of itself:
/// ACTIVE and RECOVERING... see [`effective_weights`].
pub fn region_fraction_bps(region: &Region) -> u32 {
    match region.state {
        RegionState::Active => TOTAL_BPS,
        RegionState::Draining => region.drain.as_ref().map_or(TOTAL_BPS, |d| d.fraction_bps),
        RegionState::Drained | RegionState::Lost | RegionState::Recovering => 0,
    }
}

/// The weights controllers apply, from the operators' `base` weights and the
/// regions' states: each region keeps `base × its fraction`; the share freed
/// is spread over the regions still serving fully (ACTIVE) in proportion to
/// their capacity. Sums to exactly 10 000 unless no region can serve.
pub fn effective_weights(base: &BTreeMap<String, u32>, regions: &BTreeMap<String, Region>) -> BTreeMap<String, u32> {
    // Work in base × fraction units (up to 10^8) to keep precision.
    let mut kept: BTreeMap<String, u64> = BTreeMap::new();
    let mut freed: u64 = 0;
    for (id, region) in regions {
        let b = u64::from(*base.get(id).unwrap_or(&0));
        let k = b * u64::from(region_fraction_bps(region));
        kept.insert(id.clone(), k);
        freed += b * u64::from(TOTAL_BPS) - k;
    }
    let receivers: Vec<&Region> = regions.values().filter(|r| r.state == RegionState::Active).collect();
    let capacity: u64 = receivers.iter().map(|r| u64::from(r.capacity)).sum();
    if freed > 0 && capacity > 0 {
        for r in &receivers {
            let extra = freed * u64::from(r.capacity) / capacity;
            if let Some(k) = kept.get_mut(&r.id) {
                *k += extra;
            }
        }
    }
    apportion(&kept, TOTAL_BPS)
}

/// The most weight `region` may carry under the rule `capacity-ceiling`:
/// `capacity / total capacity × headroom`, in basis points (None: no
/// capacity declared anywhere). Weight / 10 000 ≤ capacity / total × headroom / 100.
pub fn capacity_ceiling_bps(regions: &BTreeMap<String, Region>, policy: &RoutingPolicy, region: &str) -> Option<u64> {
    let total_capacity: u64 = regions.values().map(|r| u64::from(r.capacity)).sum();
    if total_capacity == 0 {
        return None;
    }
    let capacity = regions.get(region).map_or(0, |r| u64::from(r.capacity));
    Some(capacity * u64::from(TOTAL_BPS) * u64::from(policy.capacity_headroom_pct) / 100 / total_capacity)
}

/// Checks `new` weights (for a change of `kind` from `old`) against every
/// rule not in `overridden`; the first violation, in the order of
/// [`Rule::ALL`], refuses the change.
///
/// The capacity ceiling of each region is [`capacity_ceiling_bps`].
pub fn check_rules(
    old: &BTreeMap<String, u32>,
    new: &BTreeMap<String, u32>,
    regions: &BTreeMap<String, Region>,
    policy: &RoutingPolicy,
    kind: ChangeKind,
    overridden: &[Rule],
) -> Result<(), Violation> {
    let active = |rule: Rule| !overridden.contains(&rule);
    let serving: Vec<&String> = new.iter().filter(|(_, w)| **w > 0).map(|(k, _)| k).collect();
    // Regions that could serve if operators wanted: a drain does not lower
    // the bar (it is the change being judged); a lost region does.
    let can_serve =
        regions.values().filter(|r| !matches!(r.state, RegionState::Lost | RegionState::Recovering)).count();
    let min = (policy.min_serving_regions as usize).min(can_serve.max(1));
    if active(Rule::MinServingRegions) && serving.len() < min {
        return Err(Violation {
            rule: Rule::MinServingRegions,
            reason: format!("{} regions would serve ({:?}); at least {min} must", serving.len(), serving),
        });
    }
    if active(Rule::CapacityCeiling) {
        for (id, weight) in new {
            let Some(ceiling) = capacity_ceiling_bps(regions, policy, id) else { continue };
            if u64::from(*weight) > ceiling {
                return Err(Violation {
                    rule: Rule::CapacityCeiling,
                    reason: format!(
                        "{id} would carry {weight} bps; its capacity allows {ceiling} bps ({}% of its share)",
                        policy.capacity_headroom_pct
                    ),
                });
            }
        }
    }
    if active(Rule::NeverAllZero) && new.values().all(|w| *w == 0) {
        return Err(Violation { rule: Rule::NeverAllZero, reason: "every weight would be 0".to_string() });
    }
    if active(Rule::MaxStep) && kind == ChangeKind::Planned {
        for (id, weight) in new {
            let before = *old.get(id).unwrap_or(&0);
            let moved = weight.abs_diff(before);
            if moved > policy.max_step_bps {
                return Err(Violation {
                    rule: Rule::MaxStep,
                    reason: format!(
                        "{id} would move {moved} bps ({before} -> {weight}) in one step; the limit is {}",
                        policy.max_step_bps
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Checks operator weights: every declared region named once, each at most
/// 10 000, summing to 10 000.
pub fn validate_weights(
    weights: &BTreeMap<String, u32>,
    regions: &BTreeMap<String, Region>,
) -> Result<(), crate::vocab::InvalidArgument> {
    for (id, w) in weights {
        if !regions.contains_key(id) {
            return Err(crate::vocab::InvalidArgument::new("weights", format!("unknown region {id:?}")));
        }
        if *w > TOTAL_BPS {
            return Err(crate::vocab::InvalidArgument::new("weights", format!("{id}={w} is above {TOTAL_BPS} bps")));
        }
    }
    let sum: u32 = weights.values().sum();
    if sum != TOTAL_BPS {
        return Err(crate::vocab::InvalidArgument::new(
            "weights",
            format!("sum to {sum} bps; they must sum to {TOTAL_BPS}"),
        ));
    }
    Ok(())
}

/// Weights by region.
pub type Weights = BTreeMap<String, u32>;
/// (base, effective) weights by service.
pub type Tables = BTreeMap<String, (Weights, Weights)>;

/// The routing tables every service would have with `regions` (and, for one
/// service, new base weights), checked against the rules for a change of
/// `kind`. A planned change is refused by the first violation; an emergency
/// one returns its violations for the event log.
pub fn reroute(
    state: &State,
    regions: &BTreeMap<String, Region>,
    new_base: Option<(&str, &BTreeMap<String, u32>)>,
    kind: ChangeKind,
    overrides: &[Rule],
) -> Result<(Tables, Vec<String>), (String, Violation)> {
    let mut tables = BTreeMap::new();
    let mut reported = Vec::new();
    for service in &state.topology.services {
        let name = service.name.as_str();
        let current = state.routing.get(name);
        let base = match new_base {
            Some((s, weights)) if s == name => weights.clone(),
            _ => current.map(|r| r.base.clone()).unwrap_or_else(|| capacity_base(regions)),
        };
        // Regions removed from the topology drop out; new ones start at 0.
        let base: BTreeMap<String, u32> = regions.keys().map(|r| (r.clone(), *base.get(r).unwrap_or(&0))).collect();
        let base = if base.values().sum::<u32>() == TOTAL_BPS { base } else { capacity_base(regions) };
        let effective = effective_weights(&base, regions);
        let old = current.map(|r| r.effective.clone()).unwrap_or_default();
        if old != effective || current.is_none() {
            if let Err(v) = check_rules(&old, &effective, regions, &state.topology.routing, kind, overrides) {
                match kind {
                    ChangeKind::Planned => return Err((name.to_string(), v)),
                    ChangeKind::Emergency => reported.push(format!("{name}: {v}")),
                }
            }
        }
        tables.insert(name.to_string(), (base, effective));
    }
    Ok((tables, reported))
}

/// Base weights in proportion to the regions' capacities.
pub fn capacity_base(regions: &BTreeMap<String, Region>) -> BTreeMap<String, u32> {
    apportion(&regions.iter().map(|(id, r)| (id.clone(), u64::from(r.capacity))).collect(), TOTAL_BPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str, capacity: u32, state: RegionState, fraction: Option<u32>) -> (String, Region) {
        let drain = fraction.map(|f| crate::model::Drain {
            fraction_bps: f,
            step_bps: 1000,
            interval_ms: 1000,
            undrain: false,
            next_step_at_unix_ms: 0,
        });
        (id.to_string(), Region { id: id.into(), capacity, state, maintenance: false, state_since_unix_ms: 0, drain })
    }

    fn weights(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn effective_weights_table() {
        use RegionState::*;
        let base = weights(&[("a", 5000), ("b", 3000), ("c", 2000)]);
        // (name, regions (capacity, state, drain fraction), expected)
        type Case<'a> = (&'a str, [(u32, RegionState, Option<u32>); 3], [u32; 3]);
        let cases: &[Case<'_>] = &[
            ("all active", [(100, Active, None), (100, Active, None), (100, Active, None)], [5000, 3000, 2000]),
            (
                "a lost: its share by capacity",
                [(100, Lost, None), (100, Active, None), (300, Active, None)],
                [0, 4250, 5750],
            ),
            (
                "a half drained",
                [(100, Draining, Some(5000)), (100, Active, None), (100, Active, None)],
                [2500, 4250, 3250],
            ),
            ("a drained", [(100, Drained, None), (100, Active, None), (100, Active, None)], [0, 5500, 4500]),
            (
                "rounding: thirds, largest remainder",
                [(100, Lost, None), (1, Active, None), (2, Active, None)],
                [0, 4667, 5333],
            ),
            ("nobody can serve", [(100, Lost, None), (100, Lost, None), (100, Recovering, None)], [0, 0, 0]),
        ];
        for (name, spec, want) in cases {
            let regions: BTreeMap<String, Region> =
                ["a", "b", "c"].iter().zip(spec.iter()).map(|(id, (c, s, f))| region(id, *c, *s, *f)).collect();
            let got = effective_weights(&base, &regions);
            let got: Vec<u32> = ["a", "b", "c"].iter().map(|r| got[*r]).collect();
            assert_eq!(got, want.to_vec(), "{name}");
        }
    }

    #[test]
    fn rules_table() {
        use RegionState::*;
        let regions: BTreeMap<String, Region> =
            [region("a", 100, Active, None), region("b", 100, Active, None), region("c", 100, Active, None)]
                .into_iter()
                .collect();
        let policy = RoutingPolicy::default();
        let even = weights(&[("a", 3334), ("b", 3333), ("c", 3333)]);
        type Case<'a> = (&'a str, Weights, ChangeKind, &'a [Rule], Option<Rule>);
        let cases: &[Case<'_>] = &[
            ("a small planned move", weights(&[("a", 4000), ("b", 3000), ("c", 3000)]), ChangeKind::Planned, &[], None),
            (
                "one region only",
                weights(&[("a", 6000), ("b", 4000), ("c", 0)]),
                ChangeKind::Planned,
                &[],
                Some(Rule::MaxStep),
            ),
            (
                "too big a step",
                weights(&[("a", 6334), ("b", 1833), ("c", 1833)]),
                ChangeKind::Planned,
                &[],
                Some(Rule::MaxStep),
            ),
            (
                "big step in an emergency",
                weights(&[("a", 5000), ("b", 5000), ("c", 0)]),
                ChangeKind::Emergency,
                &[],
                None,
            ),
            (
                "over capacity",
                weights(&[("a", 7000), ("b", 2000), ("c", 1000)]),
                ChangeKind::Emergency,
                &[],
                Some(Rule::CapacityCeiling),
            ),
            ("single server", weights(&[("a", 6600), ("b", 3400), ("c", 0)]), ChangeKind::Emergency, &[], None),
            (
                "all zero",
                weights(&[("a", 0), ("b", 0), ("c", 0)]),
                ChangeKind::Emergency,
                &[Rule::MinServingRegions],
                Some(Rule::NeverAllZero),
            ),
            (
                "min serving",
                weights(&[("a", 6600), ("b", 0), ("c", 0)]),
                ChangeKind::Emergency,
                &[],
                Some(Rule::MinServingRegions),
            ),
            (
                "min serving overridden",
                weights(&[("a", 6600), ("b", 3400), ("c", 0)]),
                ChangeKind::Planned,
                &[Rule::MaxStep],
                None,
            ),
        ];
        for (name, new, kind, overrides, want) in cases {
            let got = check_rules(&even, new, &regions, &policy, *kind, overrides).err().map(|v| v.rule);
            assert_eq!(got, *want, "{name}");
        }
    }

    /// A small deterministic generator (no extra dependency for property tests).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound.max(1)
        }
    }

    #[test]
    fn rounding_never_breaks_the_sum_and_lost_regions_get_nothing() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let states = [
            RegionState::Active,
            RegionState::Draining,
            RegionState::Drained,
            RegionState::Lost,
            RegionState::Recovering,
        ];
        for case in 0..5_000 {
            let n = 1 + rng.next(7) as usize;
            let regions: BTreeMap<String, Region> = (0..n)
                .map(|i| {
                    let state = states[rng.next(5) as usize];
                    let fraction = (state == RegionState::Draining).then(|| rng.next(10_001) as u32);
                    region(&format!("r{i}"), 1 + rng.next(1_000_000) as u32, state, fraction)
                })
                .collect();
            let shares: BTreeMap<String, u64> = regions.keys().map(|k| (k.clone(), rng.next(10_000))).collect();
            let base = apportion(&shares, TOTAL_BPS);
            let sum: u32 = base.values().sum();
            assert!(sum == TOTAL_BPS || shares.values().all(|s| *s == 0), "case {case}: base sums to {sum}");
            if sum != TOTAL_BPS {
                continue;
            }
            let eff = effective_weights(&base, &regions);
            let total: u32 = eff.values().sum();
            let anyone_serves = eff.values().any(|w| *w > 0);
            assert!(total == TOTAL_BPS || !anyone_serves, "case {case}: effective sums to {total}: {eff:?}");
            for (id, r) in &regions {
                if matches!(r.state, RegionState::Lost | RegionState::Drained | RegionState::Recovering) {
                    assert_eq!(eff[id], 0, "case {case}: {id} is {:?} and keeps weight", r.state);
                }
            }
        }
    }
}
