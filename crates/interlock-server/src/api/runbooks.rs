//! The runbook RPCs of `interlock.v1.Admin` (SPEC §7): apply, list, run
//! (live, drill, dry run), executions, and the operators' approve,
//! continue, retry, skip, abort. The rules are `interlock_core::runbook`'s;
//! this module parses YAML, resolves step names and maps answers to
//! statuses. The trait methods in `admin.rs` forward here on the leader.

use super::admin::AdminService;
use super::auth::Caller;
use super::{ask_approval, awaiting_approval, invalid, propose_here, refusal_status, revision_of};
use interlock_core::command::Action;
use interlock_core::model::{ControlOp, Execution, RunMode, RunbookSpec, StepState};
use interlock_core::runbook::{self, drive};
use interlock_core::vocab::{validate_id, InvalidArgument};
use interlock_core::Command;
use interlock_proto::v1::{
    ApplyRunbookRequest, ControlExecutionRequest, ExecutionList, ExecutionOp, GetExecutionsRequest, GetRunbooksRequest,
    OperationResponse, PlannedStepCheck, RunRunbookRequest, RunRunbookResponse, RunbookList,
};
use tonic::Status;

/// Most bytes of runbook YAML.
pub const RUNBOOK_YAML_MAX_BYTES: usize = 256 * 1024;

/// Parses a runbook; an error names the field path and the reason.
pub fn parse_runbook(yaml: &str) -> Result<RunbookSpec, InvalidArgument> {
    if yaml.len() > RUNBOOK_YAML_MAX_BYTES {
        return Err(InvalidArgument::new(
            "yaml",
            format!("is {} bytes, the limit is {RUNBOOK_YAML_MAX_BYTES}", yaml.len()),
        ));
    }
    let value: serde_json::Value =
        serde_saphyr::from_str(yaml).map_err(|e| InvalidArgument::new("yaml", format!("not valid YAML: {e}")))?;
    let spec: RunbookSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "yaml".to_string() } else { path };
        InvalidArgument::new(field, e.into_inner().to_string())
    })?;
    runbook::validate(&spec)?;
    Ok(spec)
}

/// The stored form of a runbook as YAML, without the fields it leaves out
/// (the stored form keeps every field: bincode is not self-describing).
fn to_yaml(spec: &RunbookSpec) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    strip(&mut value);
    serde_saphyr::to_string(&value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

impl AdminService {
    fn world_now<T>(&self, state: &interlock_core::State, f: impl FnOnce(&drive::World<'_>) -> T) -> T {
        let obs = self.observations(state);
        let converged = |service: &str, version: u64| self.routing_acks.converged(state, service, version);
        f(&drive::World { obs: &obs, converged: &converged })
    }
}

pub async fn apply(
    admin: &AdminService,
    caller: &Caller,
    message: ApplyRunbookRequest,
) -> Result<OperationResponse, Status> {
    let spec = parse_runbook(&message.yaml).map_err(invalid)?;
    {
        let applied = admin.ctx.state.read();
        runbook::validate_refs(&spec, &applied.state).map_err(invalid)?;
    }
    let name = spec.name.clone();
    let before = admin.ctx.state.read().state.runbooks.get(&name).map(|r| r.version);
    let response = propose_here(&admin.ctx, caller, Command::ApplyRunbook { runbook: Box::new(spec) }).await?;
    let version = admin.ctx.state.read().state.runbooks.get(&name).map_or(0, |r| r.version);
    let text = match before {
        Some(v) if v == version => format!("runbook {name} unchanged (version {version})"),
        Some(_) => format!("runbook {name} updated to version {version}"),
        None => format!("runbook {name} created (version {version})"),
    };
    Ok(OperationResponse { revision: revision_of(&response), message: text, epoch: 0, approval_id: 0 })
}

pub fn list(admin: &AdminService, message: &GetRunbooksRequest) -> Result<RunbookList, Status> {
    let applied = admin.ctx.state.read();
    let s = &applied.state;
    if !message.name.is_empty() && !s.runbooks.contains_key(&message.name) {
        return Err(Status::not_found(format!("name: no runbook named {:?}", message.name)));
    }
    let runbooks = s
        .runbooks
        .values()
        .filter(|r| message.name.is_empty() || r.spec.name == message.name)
        .map(|r| interlock_proto::convert::runbook_info(r, to_yaml(&r.spec)))
        .collect();
    Ok(RunbookList { runbooks, revision: s.revision })
}

pub async fn run(
    admin: &AdminService,
    caller: &Caller,
    message: RunRunbookRequest,
) -> Result<RunRunbookResponse, Status> {
    validate_id(&message.name, "name").map_err(invalid)?;
    let params: std::collections::BTreeMap<String, String> = message.params.clone().into_iter().collect();
    let mode = match interlock_proto::v1::RunMode::try_from(message.mode) {
        Ok(interlock_proto::v1::RunMode::Live) | Ok(interlock_proto::v1::RunMode::Unspecified) => RunMode::Live,
        Ok(interlock_proto::v1::RunMode::Drill) => RunMode::Drill,
        Ok(interlock_proto::v1::RunMode::DryRun) => return dry_run(admin, caller, &message.name, &params),
        Err(_) => return Err(Status::invalid_argument(format!("mode: {} is not a run mode", message.mode))),
    };
    let command = Command::StartExecution { runbook: message.name.clone(), params, mode };
    command.validate().map_err(invalid)?;
    let response = propose_here(&admin.ctx, caller, command).await?;
    let id = revision_of(&response);
    let word = if mode == RunMode::Drill { "drill" } else { "live run" };
    Ok(RunRunbookResponse {
        execution_id: id,
        plan: Vec::new(),
        revision: id,
        message: format!("execution {id} of {} started ({word}); `interlockctl runbook status {id}`", message.name),
    })
}

fn dry_run(
    admin: &AdminService,
    caller: &Caller,
    name: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<RunRunbookResponse, Status> {
    let applied = admin.ctx.state.read();
    let s = &applied.state;
    let Some(book) = s.runbooks.get(name) else {
        return Err(Status::not_found(format!("name: no runbook named {name:?}")));
    };
    let params = runbook::resolve_params(&book.spec, params, s).map_err(invalid)?;
    let plan = runbook::plan(&book.spec, &params, s).map_err(invalid)?;
    let checks = admin.world_now(s, |world| drive::dry_run(s, world, &plan, &caller.identity));
    let rows: Vec<PlannedStepCheck> = plan
        .iter()
        .zip(checks)
        .enumerate()
        .map(|(i, (p, c))| PlannedStepCheck {
            index: i as u32,
            group: p.group_name.clone(),
            step: p.spec.name.clone(),
            kind: runbook::kind(&p.spec).unwrap_or("").to_string(),
            ok: c.ok,
            check: c.check,
            compensation: p.compensation,
        })
        .collect();
    let blocked = rows.iter().filter(|r| !r.ok && !r.compensation).count();
    let message = match blocked {
        0 => format!("dry run of {name}: every step could go ahead now; nothing was changed"),
        n => format!("dry run of {name}: {n} step(s) would not go ahead now; nothing was changed"),
    };
    Ok(RunRunbookResponse { execution_id: 0, plan: rows, revision: s.revision, message })
}

pub fn executions(admin: &AdminService, message: &GetExecutionsRequest) -> Result<ExecutionList, Status> {
    let applied = admin.ctx.state.read();
    let s = &applied.state;
    let executions: Vec<_> = match message.id {
        0 => s.executions.values().rev().map(interlock_proto::convert::execution_info).collect(),
        id => match s.executions.get(&id) {
            Some(e) => vec![interlock_proto::convert::execution_info(e)],
            None => return Err(Status::not_found(format!("id: no execution {id}"))),
        },
    };
    Ok(ExecutionList { executions, revision: s.revision })
}

/// The step `op` acts on: the one named, else the single step it can act
/// on now (the waiting approval, the pause, the STUCK step).
fn step_for(execution: &Execution, name: &str, op: &ControlOp) -> Result<Option<u32>, Status> {
    if matches!(op, ControlOp::Abort { .. }) {
        return Ok(None);
    }
    if !name.is_empty() {
        return match execution.plan.iter().position(|p| p.spec.name == name) {
            Some(i) => Ok(Some(i as u32)),
            None => Err(Status::not_found(format!("step: execution {} has no step {name:?}", execution.id))),
        };
    }
    let fits = |i: usize| {
        let (p, r) = (&execution.plan[i], &execution.steps[i]);
        match op {
            ControlOp::Approve => p.spec.approval.is_some() && r.state == StepState::Running,
            ControlOp::Continue => p.spec.pause.is_some() && r.state == StepState::Running,
            _ => r.state == StepState::Stuck,
        }
    };
    let candidates: Vec<usize> = runbook::active_steps(execution).into_iter().filter(|i| fits(*i)).collect();
    match candidates.as_slice() {
        [one] => Ok(Some(*one as u32)),
        [] => Err(Status::failed_precondition(format!(
            "execution {}: no step to {} now (`interlockctl runbook status {}`)",
            execution.id,
            op.verb(),
            execution.id
        ))),
        _ => Err(Status::invalid_argument(format!(
            "step: several steps of execution {} could be meant; name one with --step",
            execution.id
        ))),
    }
}

pub async fn control(
    admin: &AdminService,
    caller: &Caller,
    message: ControlExecutionRequest,
) -> Result<OperationResponse, Status> {
    let reason = if message.reason.is_empty() { "operator".to_string() } else { message.reason.clone() };
    let op = match ExecutionOp::try_from(message.op) {
        Ok(ExecutionOp::Approve) => ControlOp::Approve,
        Ok(ExecutionOp::Continue) => ControlOp::Continue,
        Ok(ExecutionOp::Retry) => ControlOp::Retry,
        Ok(ExecutionOp::Skip) => ControlOp::Skip { reason },
        Ok(ExecutionOp::Abort) => ControlOp::Abort { reason },
        _ => return Err(Status::invalid_argument(format!("op: {} is not an operation", message.op))),
    };
    let step = {
        let applied = admin.ctx.state.read();
        let Some(execution) = applied.state.executions.get(&message.id) else {
            return Err(Status::not_found(format!("id: no execution {}", message.id)));
        };
        step_for(execution, &message.step, &op)?
    };
    let command = Command::ControlExecution { execution: message.id, step, op: op.clone() };
    command.validate().map_err(invalid)?;
    if matches!(op, ControlOp::Skip { .. }) {
        let what = format!("skip of a step of execution {}", message.id);
        if let Some(id) = ask_approval(&admin.ctx, caller, Action::Command(Box::new(command.clone())), &what).await? {
            return Ok(OperationResponse {
                revision: id,
                message: awaiting_approval(id, &what),
                epoch: 0,
                approval_id: id,
            });
        }
    }
    let response = propose_here(&admin.ctx, caller, command).await?;
    if let interlock_core::Response::Refused { code, reason } = response {
        return Err(refusal_status(code, reason));
    }
    let text = {
        let applied = admin.ctx.state.read();
        let e = applied.state.executions.get(&message.id);
        let state = e.map_or("gone".to_string(), |e| format!("{:?}", e.state).to_uppercase());
        match step.and_then(|i| e.map(|e| e.plan[i as usize].spec.name.clone())) {
            Some(name) => format!("{} of step {name} done; execution {} is {state}", op.verb(), message.id),
            None => format!("execution {} is {state}", message.id),
        }
    };
    Ok(OperationResponse { revision: revision_of(&response), message: text, epoch: 0, approval_id: 0 })
}
