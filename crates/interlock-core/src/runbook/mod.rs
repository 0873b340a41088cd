//! Disaster-recovery runbooks and drills (SPEC §7).
//!
//! - this module: a runbook's validation (every error names its field path,
//!   `groups[1].steps[0].drain.region: …`), its parameters, and the
//!   resolution of a run into a plan;
//! - [`apply`](self::apply): the transitions of an execution, each a Raft
//!   command: started, every step's start, effect, success, failure,
//!   STUCK, and the operators' approve, continue, retry, skip, abort;
//! - [`drive`]: the pure planner the leader runs every tick — what each
//!   running step needs next, and whether its success criterion holds;
//! - [`report`]: the timeline with the measured RTO and RPO.
//!
//! Exactly once: a step's effect is keyed by (execution, step, attempt,
//! target) and refused when already recorded, so a new leader re-proposing
//! what the old one proposed changes nothing; the effect's own command
//! carries the epoch it expects.

mod apply;
pub mod drive;
pub mod report;
#[cfg(test)]
mod tests;

pub use apply::{
    active_steps, drill_regions, effect_allowed, hook_controller, hook_target, EXECUTIONS_KEPT, RUNBOOKS_MAX,
    RUNNING_MAX,
};
pub(crate) use apply::{
    apply_runbook, check_effect, control, drill_effect, record_effect, start_execution, step_transition,
};

use crate::model::{Condition, MoveStep, ParamKind, PlannedStep, RunbookSpec, StepSpec};
use crate::state::State;
use crate::vocab::{validate_id, validate_text, InvalidArgument, RegionState};
use std::collections::{BTreeMap, BTreeSet};

/// Most parameters, groups, steps per group, steps in all, compensation steps.
pub const PARAMS_MAX: usize = 16;
pub const GROUPS_MAX: usize = 32;
pub const STEPS_PER_GROUP_MAX: usize = 32;
pub const STEPS_MAX: usize = 128;
pub const ON_ABORT_MAX: usize = 16;
/// The longest timeout a step may have: a week.
pub const TIMEOUT_MAX_SECONDS: u64 = 7 * 86_400;
/// The roles an approval step may ask for (viewers change nothing).
pub const APPROVAL_ROLES: &[&str] = &["operator"];

/// The kinds of step, as written in YAML.
pub const STEP_KINDS: &[&str] = &[
    "approval",
    "maintenance",
    "drain",
    "undrain",
    "switchover",
    "failover",
    "wait_for",
    "verify_backup",
    "hook",
    "pause",
];

/// The kind of a step: the name of its one kind field (None: none or several).
pub fn kind(step: &StepSpec) -> Result<&'static str, String> {
    let set = [
        step.approval.is_some(),
        step.maintenance.is_some(),
        step.drain.is_some(),
        step.undrain.is_some(),
        step.switchover.is_some(),
        step.failover.is_some(),
        step.wait_for.is_some(),
        step.verify_backup.is_some(),
        step.hook.is_some(),
        step.pause.is_some(),
    ];
    let kinds: Vec<&str> = STEP_KINDS.iter().zip(set).filter(|(_, on)| *on).map(|(k, _)| *k).collect();
    match kinds.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("give one step kind: {}", STEP_KINDS.join(", "))),
        many => Err(format!("give one step kind, not {}", many.join(" and "))),
    }
}

/// A step's timeout when it gives none, by kind.
pub fn default_timeout_seconds(kind: &str) -> u64 {
    match kind {
        "approval" => 3_600,
        "pause" => 86_400,
        "maintenance" => 60,
        "drain" | "undrain" => 3_600,
        "switchover" | "failover" => 300,
        "verify_backup" => 7_200,
        _ => 600,
    }
}

/// What a string field of a step names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Region,
    Shard,
    /// A shard, or `*` for every shard.
    ShardOrAll,
    Service,
    Replica,
    Text,
}

impl FieldKind {
    fn accepts(self, param: ParamKind) -> bool {
        matches!(
            (self, param),
            (FieldKind::Region, ParamKind::Region)
                | (FieldKind::Shard | FieldKind::ShardOrAll, ParamKind::Shard)
                | (FieldKind::Service, ParamKind::Service)
                | (FieldKind::Replica, ParamKind::Replica)
                | (FieldKind::Text, _)
        )
    }
}

/// Visits every string field of `step`, with its path below the step and
/// what it names.
pub fn visit_fields(step: &mut StepSpec, f: &mut impl FnMut(&str, FieldKind, &mut String)) {
    use FieldKind::*;
    f("name", Text, &mut step.name);
    if let Some(a) = &mut step.approval {
        f("approval.message", Text, &mut a.message);
    }
    if let Some(m) = &mut step.maintenance {
        f("maintenance.region", Region, &mut m.region);
    }
    if let Some(d) = &mut step.drain {
        f("drain.region", Region, &mut d.region);
    }
    if let Some(d) = &mut step.undrain {
        f("undrain.region", Region, &mut d.region);
    }
    for (name, m) in [("switchover", &mut step.switchover), ("failover", &mut step.failover)] {
        if let Some(m) = m {
            visit_move(name, m, f);
        }
    }
    if let Some(c) = &mut step.wait_for {
        visit_condition("wait_for", c, f);
    }
    if let Some(v) = &mut step.verify_backup {
        f("verify_backup.shard", ShardOrAll, &mut v.shard);
    }
    if let Some(h) = &mut step.hook {
        f("hook.region", Region, &mut h.region);
        f("hook.name", Text, &mut h.name);
        if let Some(c) = &mut h.success {
            visit_condition("hook.success", c, f);
        }
    }
    if let Some(p) = &mut step.pause {
        f("pause.message", Text, &mut p.message);
    }
}

fn visit_move(name: &str, m: &mut MoveStep, f: &mut impl FnMut(&str, FieldKind, &mut String)) {
    if let Some(s) = &mut m.shard {
        f(&format!("{name}.shard"), FieldKind::Shard, s);
    }
    if let Some(t) = &mut m.to {
        f(&format!("{name}.to"), FieldKind::Replica, t);
    }
    if let Some(r) = &mut m.away_from_region {
        f(&format!("{name}.away_from_region"), FieldKind::Region, r);
    }
}

fn visit_condition(at: &str, c: &mut Condition, f: &mut impl FnMut(&str, FieldKind, &mut String)) {
    if let Some(l) = &mut c.lag_at_most {
        if let Some(r) = &mut l.region {
            f(&format!("{at}.lag_at_most.region"), FieldKind::Region, r);
        }
        if let Some(s) = &mut l.shard {
            f(&format!("{at}.lag_at_most.shard"), FieldKind::Shard, s);
        }
    }
    if let Some(h) = &mut c.healthy {
        f(&format!("{at}.healthy.region"), FieldKind::Region, &mut h.region);
    }
    if let Some(s) = c.routing_converged.as_mut().and_then(|r| r.service.as_mut()) {
        f(&format!("{at}.routing_converged.service"), FieldKind::Service, s);
    }
    if let Some(b) = &mut c.backup_verified {
        f(&format!("{at}.backup_verified.shard"), FieldKind::ShardOrAll, &mut b.shard);
    }
    if let Some(r) = &mut c.region_state {
        f(&format!("{at}.region_state.region"), FieldKind::Region, &mut r.region);
    }
    if let Some(r) = &mut c.no_primaries_in {
        f(&format!("{at}.no_primaries_in.region"), FieldKind::Region, &mut r.region);
    }
}

/// The parameter `value` refers to, if it is exactly `${name}`.
fn param_ref(value: &str) -> Option<&str> {
    value.strip_prefix("${")?.strip_suffix('}')
}

/// Every `${name}` inside `text`.
fn param_refs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

/// Parses a region state as written in a runbook.
pub fn parse_region_state(text: &str) -> Option<RegionState> {
    Some(match text {
        "active" => RegionState::Active,
        "draining" => RegionState::Draining,
        "drained" => RegionState::Drained,
        "lost" => RegionState::Lost,
        "recovering" => RegionState::Recovering,
        _ => return None,
    })
}

fn err(field: String, reason: impl Into<String>) -> InvalidArgument {
    InvalidArgument::new(field, reason)
}

/// The steps of `spec` with their paths: `groups[g].steps[s]`, then `on_abort[i]`.
fn steps_with_paths(spec: &RunbookSpec) -> impl Iterator<Item = (String, &StepSpec)> {
    let grouped = spec.groups.iter().enumerate().flat_map(|(g, group)| {
        group.steps.iter().enumerate().map(move |(s, step)| (format!("groups[{g}].steps[{s}]"), step))
    });
    grouped.chain(spec.on_abort.iter().enumerate().map(|(i, step)| (format!("on_abort[{i}]"), step)))
}

/// Checks a runbook on its own (no state): names, sizes, one kind per
/// step, its fields, parameters, the order of groups. The first problem,
/// with its field path.
pub fn validate(spec: &RunbookSpec) -> Result<(), InvalidArgument> {
    validate_id(&spec.name, "name")?;
    validate_text(&spec.description, "description")?;
    if spec.params.len() > PARAMS_MAX {
        return Err(err("params".into(), format!("at most {PARAMS_MAX} parameters, not {}", spec.params.len())));
    }
    for (name, param) in &spec.params {
        validate_id(name, &format!("params.{name}"))?;
        validate_text(&param.description, &format!("params.{name}.description"))?;
        if let Some(default) = &param.default {
            validate_text(default, &format!("params.{name}.default"))?;
        }
    }
    if spec.groups.is_empty() || spec.groups.len() > GROUPS_MAX {
        return Err(err("groups".into(), format!("give 1..={GROUPS_MAX} groups, not {}", spec.groups.len())));
    }
    if spec.on_abort.len() > ON_ABORT_MAX {
        return Err(err("on_abort".into(), format!("at most {ON_ABORT_MAX} steps, not {}", spec.on_abort.len())));
    }
    let mut group_names = BTreeSet::new();
    for (g, group) in spec.groups.iter().enumerate() {
        validate_id(&group.name, &format!("groups[{g}].name"))?;
        if !group_names.insert(group.name.as_str()) {
            return Err(err(format!("groups[{g}].name"), format!("{:?} names two groups", group.name)));
        }
        if group.steps.is_empty() || group.steps.len() > STEPS_PER_GROUP_MAX {
            return Err(err(
                format!("groups[{g}].steps"),
                format!("give 1..={STEPS_PER_GROUP_MAX} steps, not {}", group.steps.len()),
            ));
        }
    }
    let total: usize = spec.groups.iter().map(|g| g.steps.len()).sum();
    if total > STEPS_MAX {
        return Err(err("groups".into(), format!("at most {STEPS_MAX} steps in all, not {total}")));
    }
    order_groups(spec)?;
    let mut step_names = BTreeSet::new();
    for (path, step) in steps_with_paths(spec) {
        validate_id(&step.name, &format!("{path}.name"))?;
        if !step_names.insert(step.name.as_str()) {
            return Err(err(format!("{path}.name"), format!("{:?} names two steps", step.name)));
        }
        validate_step(spec, &path, step)?;
    }
    Ok(())
}

fn validate_step(spec: &RunbookSpec, path: &str, step: &StepSpec) -> Result<(), InvalidArgument> {
    let kind = kind(step).map_err(|why| err(path.to_string(), why))?;
    if let Some(t) = step.timeout_seconds {
        if t == 0 || t > TIMEOUT_MAX_SECONDS {
            return Err(err(
                format!("{path}.timeout_seconds"),
                format!("{t} is out of range 1..={TIMEOUT_MAX_SECONDS}"),
            ));
        }
    }
    match kind {
        "approval" => {
            let role = &step.approval.as_ref().map_or("", |a| a.role.as_str());
            if !APPROVAL_ROLES.contains(role) {
                return Err(err(
                    format!("{path}.approval.role"),
                    format!("{role:?} is not a role that may approve (one of: {})", APPROVAL_ROLES.join(", ")),
                ));
            }
        }
        "drain" | "undrain" => {
            let d = step.drain.as_ref().or(step.undrain.as_ref()).expect("kind checked");
            if let Some(bps) = d.step_bps.filter(|b| *b == 0 || *b > crate::vocab::TOTAL_BPS) {
                return Err(err(format!("{path}.{kind}.step_bps"), format!("{bps} is out of range 1..=10000")));
            }
            if let Some(s) = d.interval_seconds.filter(|s| *s == 0 || *s > 86_400) {
                return Err(err(format!("{path}.{kind}.interval_seconds"), format!("{s} is out of range 1..=86400")));
            }
        }
        "switchover" | "failover" => {
            let m = step.switchover.as_ref().or(step.failover.as_ref()).expect("kind checked");
            match (&m.shard, &m.away_from_region, &m.to) {
                (Some(_), None, _) | (None, Some(_), None) => {}
                (None, None, _) => {
                    return Err(err(
                        format!("{path}.{kind}"),
                        "give `shard` (and optionally `to`) or `away_from_region`",
                    ))
                }
                (Some(_), Some(_), _) => {
                    return Err(err(format!("{path}.{kind}.away_from_region"), "give either it or `shard`, not both"))
                }
                (None, Some(_), Some(_)) => {
                    return Err(err(format!("{path}.{kind}.to"), "`to` goes with `shard`, not `away_from_region`"))
                }
            }
        }
        "wait_for" => validate_condition(&format!("{path}.wait_for"), step.wait_for.as_ref().expect("kind checked"))?,
        _ => {}
    }
    let mut problem = None;
    let mut step = step.clone();
    visit_fields(&mut step, &mut |field, field_kind, value| {
        if problem.is_some() {
            return;
        }
        let at = format!("{path}.{field}");
        if let Err(e) = validate_text(value, &at) {
            problem = Some(e);
            return;
        }
        for name in param_refs(value) {
            match spec.params.get(name) {
                None => problem = Some(err(at.clone(), format!("${{{name}}} is not a parameter of this runbook"))),
                Some(p) if !field_kind.accepts(p.kind) => {
                    problem = Some(err(
                        at.clone(),
                        format!("${{{name}}} is a {:?} parameter; this field names a {field_kind:?}", p.kind),
                    ))
                }
                Some(_) if field_kind != FieldKind::Text && param_ref(value).is_none() => {
                    problem = Some(err(at.clone(), format!("{value:?}: a parameter must be the whole value")))
                }
                Some(_) => {}
            }
        }
    });
    problem.map_or(Ok(()), Err)
}

fn validate_condition(at: &str, c: &Condition) -> Result<(), InvalidArgument> {
    let set = [
        c.lag_at_most.is_some(),
        c.healthy.is_some(),
        c.routing_converged.is_some(),
        c.backup_verified.is_some(),
        c.region_state.is_some(),
        c.no_primaries_in.is_some(),
    ];
    let count = set.iter().filter(|s| **s).count();
    if count != 1 {
        return Err(err(
            at.to_string(),
            format!(
                "give one condition (lag_at_most, healthy, routing_converged, backup_verified, region_state, \
                 no_primaries_in), not {count}"
            ),
        ));
    }
    if let Some(l) = &c.lag_at_most {
        if l.region.is_some() && l.shard.is_some() {
            return Err(err(format!("{at}.lag_at_most.shard"), "give `region` or `shard`, not both"));
        }
    }
    if let Some(r) = &c.region_state {
        if parse_region_state(&r.state).is_none() {
            return Err(err(
                format!("{at}.region_state.state"),
                format!("{:?} is not a region state (active, draining, drained, lost, recovering)", r.state),
            ));
        }
    }
    Ok(())
}

/// The groups in run order (indices into `spec.groups`): each after the
/// groups it names in `after` (none: the group written before it); among
/// ready groups, the one written first. Refuses unknown names and cycles.
pub fn order_groups(spec: &RunbookSpec) -> Result<Vec<usize>, InvalidArgument> {
    let index: BTreeMap<&str, usize> = spec.groups.iter().enumerate().map(|(i, g)| (g.name.as_str(), i)).collect();
    let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(spec.groups.len());
    for (g, group) in spec.groups.iter().enumerate() {
        let mut set = BTreeSet::new();
        match &group.after {
            None if g > 0 => {
                set.insert(g - 1);
            }
            None => {}
            Some(names) => {
                for (a, name) in names.iter().enumerate() {
                    let Some(&i) = index.get(name.as_str()) else {
                        return Err(err(format!("groups[{g}].after[{a}]"), format!("no group named {name:?}")));
                    };
                    set.insert(i);
                }
            }
        }
        deps.push(set);
    }
    let mut order = Vec::with_capacity(deps.len());
    let mut done = vec![false; deps.len()];
    while order.len() < deps.len() {
        let ready = (0..deps.len()).find(|&g| !done[g] && deps[g].iter().all(|d| done[*d]));
        match ready {
            Some(g) => {
                done[g] = true;
                order.push(g);
            }
            None => {
                let g = (0..deps.len()).find(|&g| !done[g]).expect("some group is left");
                return Err(err(
                    format!("groups[{g}].after"),
                    format!("the groups {:?} wait for each other (a cycle)", cycle_names(spec, &done)),
                ));
            }
        }
    }
    Ok(order)
}

fn cycle_names(spec: &RunbookSpec, done: &[bool]) -> Vec<String> {
    spec.groups.iter().zip(done).filter(|(_, d)| !**d).map(|(g, _)| g.name.clone()).collect()
}

/// Checks that what `value` names exists in `state`.
fn check_ref(state: &State, kind: FieldKind, value: &str) -> Result<(), String> {
    let missing = match kind {
        FieldKind::Region => !state.regions.contains_key(value),
        FieldKind::Shard => !state.shards.contains_key(value),
        FieldKind::ShardOrAll => value != "*" && !state.shards.contains_key(value),
        FieldKind::Service => !state.topology.services.iter().any(|s| s.name == value),
        FieldKind::Replica => !state.replicas.contains_key(value),
        FieldKind::Text => false,
    };
    if missing {
        let what = match kind {
            FieldKind::Region => "region",
            FieldKind::Shard | FieldKind::ShardOrAll => "shard",
            FieldKind::Service => "service",
            _ => "replica",
        };
        return Err(format!("no {what} named {value:?}"));
    }
    Ok(())
}

/// Checks that every literal (not `${param}`) region, shard, service and
/// replica the runbook names exists, and so does every parameter default.
pub fn validate_refs(spec: &RunbookSpec, state: &State) -> Result<(), InvalidArgument> {
    for (name, param) in &spec.params {
        if let Some(default) = &param.default {
            check_param(state, param.kind, default).map_err(|why| err(format!("params.{name}.default"), why))?;
        }
    }
    for (path, step) in steps_with_paths(spec) {
        let mut problem = None;
        let mut step = step.clone();
        visit_fields(&mut step, &mut |field, kind, value| {
            if problem.is_none() && param_refs(value).is_empty() {
                problem = check_ref(state, kind, value).err().map(|why| err(format!("{path}.{field}"), why));
            }
        });
        if let Some(p) = problem {
            return Err(p);
        }
    }
    Ok(())
}

fn check_param(state: &State, kind: ParamKind, value: &str) -> Result<(), String> {
    let field = match kind {
        ParamKind::Region => FieldKind::Region,
        ParamKind::Shard => FieldKind::Shard,
        ParamKind::Service => FieldKind::Service,
        ParamKind::Replica => FieldKind::Replica,
        ParamKind::String => return validate_text(value, "value").map_err(|e| e.reason),
    };
    validate_id_like(value)?;
    check_ref(state, field, value)
}

fn validate_id_like(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.len() > 256 || value.chars().any(|c| c.is_control()) {
        return Err("is not a valid name".to_string());
    }
    Ok(())
}

/// The parameters of a run: the given ones checked (declared, of their
/// type, naming what exists), defaults added, the required ones present.
pub fn resolve_params(
    spec: &RunbookSpec,
    given: &BTreeMap<String, String>,
    state: &State,
) -> Result<BTreeMap<String, String>, InvalidArgument> {
    let mut out = BTreeMap::new();
    for (name, value) in given {
        let Some(param) = spec.params.get(name) else {
            let known: Vec<&str> = spec.params.keys().map(String::as_str).collect();
            return Err(err(
                format!("params.{name}"),
                format!("not a parameter of runbook {} (it has: {})", spec.name, known.join(", ")),
            ));
        };
        check_param(state, param.kind, value).map_err(|why| err(format!("params.{name}"), why))?;
        out.insert(name.clone(), value.clone());
    }
    for (name, param) in &spec.params {
        if out.contains_key(name) {
            continue;
        }
        match &param.default {
            Some(default) => {
                check_param(state, param.kind, default).map_err(|why| err(format!("params.{name}"), why))?;
                out.insert(name.clone(), default.clone());
            }
            None => return Err(err(format!("params.{name}"), format!("required ({:?})", param.kind))),
        }
    }
    Ok(out)
}

/// Replaces every `${name}` in `text`.
fn substitute(text: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in params {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

/// The plan of a run of `spec` with `params` (already resolved): the steps
/// of each group in run order, then the compensation steps, parameters
/// substituted and every name checked against `state`.
pub fn plan(
    spec: &RunbookSpec,
    params: &BTreeMap<String, String>,
    state: &State,
) -> Result<Vec<PlannedStep>, InvalidArgument> {
    let order = order_groups(spec)?;
    let mut planned = Vec::new();
    let grouped = order.iter().enumerate().flat_map(|(position, &g)| {
        let group = &spec.groups[g];
        group
            .steps
            .iter()
            .enumerate()
            .map(move |(s, step)| (position, group.name.clone(), false, format!("groups[{g}].steps[{s}]"), step))
    });
    let n = order.len();
    let compensation = spec
        .on_abort
        .iter()
        .enumerate()
        .map(|(i, step)| (n + i, "on_abort".to_string(), true, format!("on_abort[{i}]"), step));
    for (position, group_name, compensation, path, step) in grouped.chain(compensation) {
        let mut resolved = step.clone();
        let mut problem = None;
        visit_fields(&mut resolved, &mut |field, kind, value| {
            *value = substitute(value, params);
            if problem.is_none() {
                problem = check_ref(state, kind, value).err().map(|why| err(format!("{path}.{field}"), why));
            }
        });
        if let Some(p) = problem {
            return Err(p);
        }
        let kind = kind(&resolved).map_err(|why| err(path.clone(), why))?;
        let timeout_s = resolved.timeout_seconds.unwrap_or_else(|| default_timeout_seconds(kind));
        planned.push(PlannedStep {
            group: position as u32,
            group_name,
            compensation,
            spec: resolved,
            timeout_ms: timeout_s * 1000,
        });
    }
    Ok(planned)
}
