//! The transitions of runbooks and executions. Every one checks that the
//! execution and the step are where the proposer saw them (state and
//! attempt), so a stale or repeated proposal is refused and changes nothing.

use super::report;
use crate::model::{
    Command, ControlOp, DrillCopy, Execution, ExecutionState, RunMode, Runbook, RunbookSpec, StepChange, StepEffect,
    StepRun, StepState,
};
use crate::routing::rules::effective_weights;
use crate::state::{Effects, State};
use crate::vocab::{Refusal, RegionState, Response, SYSTEM, TOTAL_BPS};
use std::collections::BTreeMap;

/// Most runbooks stored.
pub const RUNBOOKS_MAX: usize = 64;
/// Executions kept (finished ones are dropped first, oldest first).
pub const EXECUTIONS_KEPT: usize = 100;
/// Executions running at once.
pub const RUNNING_MAX: usize = 8;

fn refused(code: Refusal, reason: impl Into<String>) -> Response {
    Response::refused(code, reason)
}

pub(crate) fn apply_runbook(state: &mut State, spec: &RunbookSpec, by: &str, fx: &mut Effects) -> Response {
    if let Err(e) = super::validate_refs(spec, state) {
        return refused(Refusal::InvalidArgument, e.to_string());
    }
    let version = match state.runbooks.get(&spec.name) {
        Some(old) if old.spec == *spec => {
            return Response::Applied { revision: fx.index };
        }
        Some(old) => old.version + 1,
        None if state.runbooks.len() >= RUNBOOKS_MAX => {
            return refused(Refusal::FailedPrecondition, format!("{RUNBOOKS_MAX} runbooks are stored already"));
        }
        None => 1,
    };
    fx.event("runbook.applied", &spec.name, format!("version {version} by {by}"));
    state.runbooks.insert(
        spec.name.clone(),
        Runbook { spec: spec.clone(), version, applied_by: by.to_string(), applied_at_unix_ms: fx.at_unix_ms },
    );
    Response::Applied { revision: fx.index }
}

/// A copy of what a drill may change, taken from production now.
fn drill_copy(state: &State) -> DrillCopy {
    let mut copy = DrillCopy {
        primaries: state.shards.iter().map(|(k, s)| (k.clone(), s.primary.clone())).collect(),
        fractions: state
            .regions
            .iter()
            .map(|(k, r)| (k.clone(), crate::routing::rules::region_fraction_bps(r)))
            .collect(),
        maintenance: state.regions.iter().map(|(k, r)| (k.clone(), r.maintenance)).collect(),
        routing: BTreeMap::new(),
    };
    reroute_drill(state, &mut copy);
    copy
}

/// The regions as a drill sees them: production's, with the drill's
/// fractions and maintenance.
pub fn drill_regions(state: &State, copy: &DrillCopy) -> BTreeMap<String, crate::model::Region> {
    let mut regions = state.regions.clone();
    for (id, region) in &mut regions {
        if let Some(fraction) = copy.fractions.get(id) {
            if region.state != RegionState::Lost {
                region.state = match *fraction {
                    0 => RegionState::Drained,
                    TOTAL_BPS => RegionState::Active,
                    _ => RegionState::Draining,
                };
                let partial = *fraction != 0 && *fraction != TOTAL_BPS;
                region.drain = partial.then_some(crate::model::Drain {
                    fraction_bps: *fraction,
                    step_bps: TOTAL_BPS,
                    interval_ms: 0,
                    undrain: false,
                    next_step_at_unix_ms: 0,
                });
            }
        }
        if let Some(m) = copy.maintenance.get(id) {
            region.maintenance = *m;
        }
    }
    regions
}

fn reroute_drill(state: &State, copy: &mut DrillCopy) {
    let regions = drill_regions(state, copy);
    copy.routing =
        state.routing.iter().map(|(service, r)| (service.clone(), effective_weights(&r.base, &regions))).collect();
}

pub(crate) fn start_execution(
    state: &mut State,
    name: &str,
    given: &BTreeMap<String, String>,
    mode: RunMode,
    by: &str,
    fx: &mut Effects,
) -> Response {
    if by == SYSTEM {
        return refused(Refusal::PermissionDenied, "only an operator runs a runbook");
    }
    let Some(runbook) = state.runbooks.get(name) else {
        return refused(Refusal::NotFound, format!("runbook: no runbook named {name:?}"));
    };
    let (params, plan) = match super::resolve_params(&runbook.spec, given, state)
        .and_then(|params| super::plan(&runbook.spec, &params, state).map(|plan| (params, plan)))
    {
        Ok(ok) => ok,
        Err(e) => return refused(Refusal::InvalidArgument, e.to_string()),
    };
    let running: Vec<&Execution> = state.executions.values().filter(|e| !e.state.is_final()).collect();
    if running.len() >= RUNNING_MAX {
        return refused(Refusal::FailedPrecondition, format!("{RUNNING_MAX} executions are running already"));
    }
    if let Some(live) = running.iter().find(|e| e.mode == RunMode::Live).filter(|_| mode == RunMode::Live) {
        return refused(
            Refusal::FailedPrecondition,
            format!("live execution {} of {} is running; wait for it or abort it first", live.id, live.runbook),
        );
    }
    if state.executions.len() >= EXECUTIONS_KEPT {
        match state.executions.values().find(|e| e.state.is_final()).map(|e| e.id) {
            Some(oldest) => {
                state.executions.remove(&oldest);
            }
            None => return refused(Refusal::FailedPrecondition, "every kept execution is running"),
        }
    }
    let version = runbook.version;
    let steps = plan
        .iter()
        .map(|_| StepRun {
            state: StepState::Pending,
            attempt: 0,
            started_at_unix_ms: None,
            finished_at_unix_ms: None,
            actor: String::new(),
            approver: String::new(),
            detail: String::new(),
            effects: Vec::new(),
        })
        .collect();
    let drill = (mode == RunMode::Drill).then(|| drill_copy(state));
    let execution = Execution {
        id: fx.index,
        runbook: name.to_string(),
        version,
        mode,
        params,
        started_by: by.to_string(),
        started_at_unix_ms: fx.at_unix_ms,
        finished_at_unix_ms: None,
        state: ExecutionState::Running,
        reason: String::new(),
        plan,
        steps,
        drill,
        report: None,
    };
    let mode_word = if mode == RunMode::Drill { "drill" } else { "live" };
    fx.event("runbook.started", &fx.index.to_string(), format!("{name} v{version} ({mode_word}) by {by}"));
    state.executions.insert(fx.index, execution);
    Response::Applied { revision: fx.index }
}

/// The steps that may move now: while running, those of the first group
/// with a step not done; while aborting, the first compensation step not
/// finished. Indices into `plan`.
pub fn active_steps(execution: &Execution) -> Vec<usize> {
    if execution.steps.len() != execution.plan.len() {
        // Never built so by `start_execution`; nothing in it may move.
        return Vec::new();
    }
    let finished = |s: StepState| matches!(s, StepState::Succeeded | StepState::Skipped | StepState::Failed);
    match execution.state {
        ExecutionState::Running => {
            let group = execution
                .plan
                .iter()
                .zip(&execution.steps)
                .find(|(p, r)| !p.compensation && !r.state.is_done())
                .map(|(p, _)| p.group);
            match group {
                Some(g) => (0..execution.plan.len()).filter(|&i| execution.plan[i].group == g).collect(),
                None => Vec::new(),
            }
        }
        ExecutionState::Aborting => (0..execution.plan.len())
            .find(|&i| execution.plan[i].compensation && !finished(execution.steps[i].state))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// Finds the execution and its step, checking the step is active.
fn active_step(state: &mut State, id: u64, step: u32) -> Result<(&mut Execution, usize), Response> {
    let Some(execution) = state.executions.get_mut(&id) else {
        return Err(refused(Refusal::NotFound, format!("execution: no execution {id}")));
    };
    if execution.state.is_final() {
        return Err(refused(Refusal::FailedPrecondition, format!("execution {id} is {:?}", execution.state)));
    }
    let index = step as usize;
    if index >= execution.plan.len() {
        return Err(refused(Refusal::NotFound, format!("step: execution {id} has no step {step}")));
    }
    if !active_steps(execution).contains(&index) {
        return Err(refused(
            Refusal::FailedPrecondition,
            format!("step {} of execution {id} is not running now", execution.plan[index].spec.name),
        ));
    }
    Ok((execution, index))
}

/// Checks a proposed effect: the step running at `attempt`, no effect
/// recorded yet for `target` in this attempt, a command a step may have.
pub(crate) fn check_effect(
    state: &mut State,
    id: u64,
    step: u32,
    attempt: u32,
    target: &str,
) -> Result<RunMode, Response> {
    let (execution, index) = active_step(state, id, step)?;
    let run = &execution.steps[index];
    if run.state != StepState::Running || run.attempt != attempt {
        return Err(refused(
            Refusal::FailedPrecondition,
            format!(
                "step {step} of execution {id} is {:?} at attempt {}, not running attempt {attempt}",
                run.state, run.attempt
            ),
        ));
    }
    if run.effects.iter().any(|e| e.attempt == attempt && e.target == target) {
        return Err(refused(
            Refusal::FailedPrecondition,
            format!("step {step} of execution {id} already acted on {target} in attempt {attempt}"),
        ));
    }
    Ok(execution.mode)
}

/// Whether `command` may be a step's effect.
pub fn effect_allowed(command: &Command) -> bool {
    matches!(
        command,
        Command::SetMaintenance { region: Some(_), .. }
            | Command::Drain { .. }
            | Command::Demote { .. }
            | Command::Promote { .. }
    )
}

/// Records the outcome of a step's effect (applied to production, or to
/// the drill copy); a refused effect fails the step.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_effect(
    state: &mut State,
    id: u64,
    step: u32,
    attempt: u32,
    target: &str,
    command: &Command,
    positions_lost: u64,
    response: &Response,
    fx: &mut Effects,
) {
    let index = step as usize;
    let outcome = crate::audit::outcome(response);
    let replica = match command {
        Command::Demote { to, .. } | Command::Promote { replica: to, .. } => to.clone(),
        _ => String::new(),
    };
    let region = state.replicas.get(&replica).map(|r| r.region.clone()).unwrap_or_default();
    let Some(execution) = state.executions.get_mut(&id) else { return };
    execution.steps[index].effects.push(StepEffect {
        attempt,
        target: target.to_string(),
        action: command.to_string(),
        command: Box::new(command.clone()),
        revision: fx.index,
        at_unix_ms: fx.at_unix_ms,
        outcome: outcome.clone(),
        replica,
        region,
        positions_lost,
    });
    let name = execution.plan[index].spec.name.clone();
    fx.event("runbook.step_effect", &format!("{id}/{name}"), format!("{command}: {outcome}"));
    if !matches!(response, Response::Applied { .. }) {
        finish_step(state, id, index, StepState::Failed, format!("{command}: {outcome}"), SYSTEM, fx);
    }
}

/// Applies `command` to the drill copy of execution `id`.
pub(crate) fn drill_effect(state: &mut State, id: u64, command: &Command, fx: &mut Effects) -> Response {
    let Some(mut copy) = state.executions.get(&id).and_then(|e| e.drill.clone()) else {
        return refused(Refusal::FailedPrecondition, format!("execution {id} has no drill copy"));
    };
    match command {
        Command::SetMaintenance { region: Some(region), on, .. } => {
            copy.maintenance.insert(region.clone(), *on);
        }
        Command::Drain { region, undrain, .. } => {
            copy.fractions.insert(region.clone(), if *undrain { TOTAL_BPS } else { 0 });
        }
        Command::Demote { shard, to, .. } | Command::Promote { shard, replica: to, .. } => {
            copy.primaries.insert(shard.clone(), Some(to.clone()));
        }
        other => return refused(Refusal::InvalidArgument, format!("{other} cannot be a runbook step's effect")),
    }
    reroute_drill(state, &mut copy);
    if let Some(e) = state.executions.get_mut(&id) {
        e.drill = Some(copy);
    }
    Response::Applied { revision: fx.index }
}

/// The controller that runs the hooks of `region`: the first registered
/// there (by id), so that every node names the same one.
pub fn hook_controller<'a>(state: &'a State, region: &str) -> Option<&'a str> {
    state.controllers.values().find(|c| c.region == region).map(|c| c.id.as_str())
}

/// The record of a hook's run, as a step effect: its target.
pub fn hook_target(controller: &str) -> String {
    format!("hook:{controller}")
}

#[allow(clippy::too_many_arguments)]
fn hook_result(
    state: &mut State,
    id: u64,
    index: usize,
    attempt: u32,
    controller: &str,
    passed: bool,
    output: &str,
    by: &str,
    fx: &mut Effects,
) -> Response {
    let Some(execution) = state.executions.get(&id) else {
        return refused(Refusal::NotFound, format!("execution: no execution {id}"));
    };
    let (planned, run) = (&execution.plan[index], &execution.steps[index]);
    let Some(hook) = &planned.spec.hook else {
        return refused(Refusal::FailedPrecondition, format!("step {} is not a hook step", planned.spec.name));
    };
    if run.state != StepState::Running || run.attempt != attempt {
        return refused(
            Refusal::FailedPrecondition,
            format!(
                "step {} is {:?} at attempt {}, not running attempt {attempt}",
                planned.spec.name, run.state, run.attempt
            ),
        );
    }
    if hook_controller(state, &hook.region) != Some(controller) {
        return refused(
            Refusal::PermissionDenied,
            format!("controller_id: {controller} does not run the hooks of {}", hook.region),
        );
    }
    if state.controllers.get(controller).is_none_or(|c| c.identity != by) {
        return refused(Refusal::PermissionDenied, format!("controller_id: {controller} is not bound to {by}"));
    }
    let target = hook_target(controller);
    if run.effects.iter().any(|e| e.attempt == attempt && e.target == target) {
        return refused(Refusal::FailedPrecondition, format!("the hook of attempt {attempt} was reported already"));
    }
    let word = if passed { "passed" } else { "failed" };
    let name = planned.spec.name.clone();
    let note =
        Command::Note { kind: "runbook.hook".into(), subject: format!("{id}/{name}"), message: output.to_string() };
    let effect = StepEffect {
        attempt,
        target,
        action: format!("hook {} on {controller} {word}", hook.name),
        command: Box::new(note),
        revision: fx.index,
        at_unix_ms: fx.at_unix_ms,
        outcome: output.to_string(),
        replica: String::new(),
        region: hook.region.clone(),
        positions_lost: 0,
    };
    let detail = format!("hook {} on {controller} {word}: {output}", hook.name);
    fx.event("runbook.hook", &format!("{id}/{name}"), detail.clone());
    if let Some(e) = state.executions.get_mut(&id) {
        e.steps[index].effects.push(effect);
    }
    if !passed {
        finish_step(state, id, index, StepState::Failed, detail, SYSTEM, fx);
    }
    Response::Applied { revision: fx.index }
}

pub(crate) fn step_transition(
    state: &mut State,
    id: u64,
    step: u32,
    attempt: u32,
    change: &StepChange,
    by: &str,
    fx: &mut Effects,
) -> Response {
    let now = fx.at_unix_ms;
    let (execution, index) = match active_step(state, id, step) {
        Ok(found) => found,
        Err(r) => return r,
    };
    if let StepChange::HookResult { controller, passed, output } = change {
        return hook_result(state, id, index, attempt, controller, *passed, output, by, fx);
    }
    if by != SYSTEM {
        return refused(
            Refusal::PermissionDenied,
            "only the coordinator moves a step (operators use ControlExecution)",
        );
    }
    let run = &mut execution.steps[index];
    let name = execution.plan[index].spec.name.clone();
    match change {
        StepChange::Start => {
            if run.state != StepState::Pending || attempt != run.attempt + 1 {
                return refused(
                    Refusal::FailedPrecondition,
                    format!(
                        "step {name} is {:?} at attempt {}; it cannot start attempt {attempt}",
                        run.state, run.attempt
                    ),
                );
            }
            run.state = StepState::Running;
            run.attempt = attempt;
            run.started_at_unix_ms = Some(now);
            run.finished_at_unix_ms = None;
            run.actor = SYSTEM.to_string();
            run.detail.clear();
            fx.event("runbook.step_started", &format!("{id}/{name}"), format!("attempt {attempt}"));
            Response::Applied { revision: fx.index }
        }
        StepChange::Effect { .. } | StepChange::HookResult { .. } => {
            refused(Refusal::InvalidArgument, "an effect or hook result is applied elsewhere")
        }
        StepChange::Succeed { detail } | StepChange::Fail { detail } | StepChange::Stuck { detail } => {
            if run.state != StepState::Running || run.attempt != attempt {
                return refused(
                    Refusal::FailedPrecondition,
                    format!("step {name} is {:?} at attempt {}, not running attempt {attempt}", run.state, run.attempt),
                );
            }
            match change {
                StepChange::Succeed { .. } => {
                    finish_step(state, id, index, StepState::Succeeded, detail.clone(), SYSTEM, fx)
                }
                StepChange::Fail { .. } => finish_step(state, id, index, StepState::Failed, detail.clone(), SYSTEM, fx),
                _ => {
                    let deadline =
                        run.started_at_unix_ms.unwrap_or(now).saturating_add(execution.plan[index].timeout_ms);
                    if now < deadline {
                        return refused(
                            Refusal::FailedPrecondition,
                            format!("step {name} has {} ms left before its timeout", deadline - now),
                        );
                    }
                    run.state = StepState::Stuck;
                    run.detail = detail.clone();
                    fx.event(
                        "runbook.step_stuck",
                        &format!("{id}/{name}"),
                        format!(
                            "past its timeout of {} s: {detail}; retry, skip or abort",
                            execution.plan[index].timeout_ms / 1000
                        ),
                    );
                }
            }
            Response::Applied { revision: fx.index }
        }
    }
}

/// Ends step `index` of execution `id` in `to`, then moves the execution on.
fn finish_step(state: &mut State, id: u64, index: usize, to: StepState, detail: String, by: &str, fx: &mut Effects) {
    let Some(execution) = state.executions.get_mut(&id) else { return };
    let run = &mut execution.steps[index];
    run.state = to;
    run.finished_at_unix_ms = Some(fx.at_unix_ms);
    run.detail = detail.clone();
    if by != SYSTEM {
        run.approver = by.to_string();
    }
    let name = execution.plan[index].spec.name.clone();
    let word = match to {
        StepState::Succeeded => "succeeded",
        StepState::Skipped => "skipped",
        _ => "failed",
    };
    fx.event(&format!("runbook.step_{word}"), &format!("{id}/{name}"), detail.clone());
    if to == StepState::Failed && execution.state == ExecutionState::Running {
        execution.state = ExecutionState::Aborting;
        execution.reason = format!("step {name} failed: {detail}");
    }
    advance(execution, fx);
}

/// Ends the execution once nothing is left to run.
fn advance(execution: &mut Execution, fx: &mut Effects) {
    if !active_steps(execution).is_empty() {
        return;
    }
    let to = match execution.state {
        ExecutionState::Running => ExecutionState::Succeeded,
        ExecutionState::Aborting if execution.reason.starts_with("aborted") => ExecutionState::Aborted,
        ExecutionState::Aborting => ExecutionState::Failed,
        _ => return,
    };
    end(execution, to, fx);
}

fn end(execution: &mut Execution, to: ExecutionState, fx: &mut Effects) {
    execution.state = to;
    execution.finished_at_unix_ms = Some(fx.at_unix_ms);
    execution.report = Some(report::measure(execution));
    let detail = if execution.reason.is_empty() { String::new() } else { format!(": {}", execution.reason) };
    fx.event("runbook.finished", &execution.id.to_string(), format!("{} {to:?}{detail}", execution.runbook));
}

pub(crate) fn control(
    state: &mut State,
    id: u64,
    step: Option<u32>,
    op: &ControlOp,
    by: &str,
    fx: &mut Effects,
) -> Response {
    if by == SYSTEM {
        return refused(Refusal::PermissionDenied, "only an operator controls an execution");
    }
    if let ControlOp::Abort { reason } = op {
        let Some(execution) = state.executions.get_mut(&id) else {
            return refused(Refusal::NotFound, format!("execution: no execution {id}"));
        };
        match execution.state {
            ExecutionState::Running => {
                for (plan, run) in execution.plan.iter().zip(execution.steps.iter_mut()) {
                    if !plan.compensation && matches!(run.state, StepState::Running | StepState::Stuck) {
                        run.state = StepState::Failed;
                        run.finished_at_unix_ms = Some(fx.at_unix_ms);
                        run.detail = format!("aborted by {by}");
                    }
                }
                execution.state = ExecutionState::Aborting;
                execution.reason = format!("aborted by {by}: {reason}");
                fx.event("runbook.aborting", &id.to_string(), execution.reason.clone());
                advance(execution, fx);
            }
            ExecutionState::Aborting => {
                execution.reason = format!("aborted by {by} during its compensation: {reason}");
                end(execution, ExecutionState::Aborted, fx);
            }
            done => return refused(Refusal::FailedPrecondition, format!("execution {id} is {done:?} already")),
        }
        return Response::Applied { revision: fx.index };
    }
    let Some(step) = step else {
        return refused(Refusal::InvalidArgument, format!("step: {} needs a step", op.verb()));
    };
    let (execution, index) = match active_step(state, id, step) {
        Ok(found) => found,
        Err(r) => return r,
    };
    let planned = &execution.plan[index];
    let run = &mut execution.steps[index];
    let name = planned.spec.name.clone();
    match op {
        ControlOp::Approve | ControlOp::Continue => {
            let (is_kind, word) = match op {
                ControlOp::Approve => (planned.spec.approval.is_some(), "an approval"),
                _ => (planned.spec.pause.is_some(), "a pause"),
            };
            if !is_kind {
                return refused(Refusal::FailedPrecondition, format!("step {name} is not {word} step"));
            }
            if run.state != StepState::Running {
                return refused(Refusal::FailedPrecondition, format!("step {name} is {:?}, not waiting", run.state));
            }
            let two_person = planned.spec.approval.as_ref().is_some_and(|a| a.two_person);
            if two_person && by == execution.started_by {
                return refused(
                    Refusal::PermissionDenied,
                    format!("step {name} needs a second operator: {by} started this execution"),
                );
            }
            let detail = format!("{}d by {by}", op.verb());
            finish_step(state, id, index, StepState::Succeeded, detail, by, fx);
        }
        ControlOp::Retry => {
            if run.state != StepState::Stuck {
                return refused(
                    Refusal::FailedPrecondition,
                    format!("step {name} is {:?}; only a STUCK step is retried", run.state),
                );
            }
            run.state = StepState::Pending;
            run.detail = format!("retry asked by {by}");
            fx.event(
                "runbook.step_retry",
                &format!("{id}/{name}"),
                format!("by {by}; attempt {} next", run.attempt + 1),
            );
        }
        ControlOp::Skip { reason } => {
            if run.state != StepState::Stuck {
                return refused(
                    Refusal::FailedPrecondition,
                    format!("step {name} is {:?}; only a STUCK step is skipped", run.state),
                );
            }
            finish_step(state, id, index, StepState::Skipped, format!("skipped by {by}: {reason}"), by, fx);
        }
        ControlOp::Abort { .. } => return refused(Refusal::InvalidArgument, "abort is handled above"),
    }
    Response::Applied { revision: fx.index }
}
