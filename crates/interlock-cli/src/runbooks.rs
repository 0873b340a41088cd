//! `interlockctl runbook …`: disaster-recovery runbooks and drills (SPEC §7).

use crate::output::{table, Printer};
use crate::Failure;
use clap::{Args, Subcommand};
use interlock_client::{
    Client, ClientError, ControlExecutionRequest, ExecutionInfo, ExecutionOp, RunMode, RunRunbookRequest,
};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Subcommand)]
pub enum RunbookCmd {
    /// Store a runbook from a YAML file (a new version when its name exists).
    ///
    /// Refused, naming the field (`groups[1].steps[0].drain.region: no region
    /// named "mars"`), when a step kind is unknown, a parameter is missing or
    /// of the wrong type, a region or shard does not exist, or groups wait
    /// for each other; nothing is stored then. Shipped runbooks are in
    /// deploy/runbooks/.
    Apply {
        /// The runbook file (YAML).
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
    },
    /// The stored runbooks: name, version, parameters, steps.
    List,
    /// One runbook as stored (YAML).
    Show { name: String },
    /// Run a runbook: live, as a drill (--drill), or only show its plan (--dry-run).
    ///
    /// --dry-run resolves the plan and evaluates every step against the
    /// current state (each effect checked by the same safety rules a live
    /// run meets); nothing changes. --drill changes routing and roles only in
    /// a drill copy inside the state machine: production is untouched. A
    /// live run asks for confirmation (or --yes). With -o json, answers
    /// {"execution_id": N, ...}; --wait waits for its final state.
    Run(RunArgs),
    /// An execution's state and every step's (no ID: every kept execution).
    ///
    /// JSON: {"id", "runbook", "mode", "state", "final", "steps": [{"name",
    /// "state", "attempt", "detail", ...}], "rto_ms", "rpo_positions"}.
    /// Final states: SUCCEEDED, FAILED, ABORTED. --wait waits for one (exit 1
    /// unless SUCCEEDED).
    Status {
        id: Option<u64>,
        /// Wait until the execution is in a final state.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 10m.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
    },
    /// Pass the approval step an execution waits at (role operator; a
    /// two-person step needs an operator other than the one who started it).
    Approve(StepArgs),
    /// Continue an execution paused at a pause step.
    Continue(StepArgs),
    /// Run a STUCK step again (its next attempt).
    Retry(StepArgs),
    /// Pass a STUCK step without running it (audited; needs a second
    /// operator's approval when two-person approval is on).
    Skip {
        #[command(flatten)]
        step: StepArgs,
        /// Why (recorded in the step and the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Abort an execution: its on_abort steps run, then it is ABORTED.
    /// Aborting again while they run stops them too.
    Abort {
        id: u64,
        #[arg(long, default_value = "operator abort")]
        reason: String,
    },
    /// The execution's report: per-step timeline, measured RTO and RPO.
    ///
    /// `-o md` for Markdown, `-o json` for JSON; the table shows the steps.
    Report { id: u64 },
}

#[derive(Args)]
pub struct RunArgs {
    /// The runbook's name (`interlockctl runbook list`).
    name: String,
    /// A parameter, KEY=VALUE (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Show the resolved plan and each step's safety-rule check; change nothing.
    #[arg(long, conflicts_with = "drill")]
    dry_run: bool,
    /// Run as a drill: production is untouched.
    #[arg(long)]
    drill: bool,
    /// Wait for the execution's final state (exit 1 unless SUCCEEDED).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. 10m.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    wait_timeout: Duration,
}

#[derive(Args)]
pub struct StepArgs {
    /// The execution id.
    id: u64,
    /// The step's name (default: the one step the command applies to now).
    #[arg(long)]
    step: Option<String>,
}

fn parse_params(params: &[String]) -> Result<std::collections::HashMap<String, String>, Failure> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Failure::usage(format!("--param {p:?}: give KEY=VALUE"))),
        })
        .collect()
}

fn execution_json(e: &ExecutionInfo) -> Value {
    json!({
        "id": e.id, "runbook": e.runbook, "version": e.version, "mode": e.mode, "params": e.params,
        "state": e.state, "final": e.r#final, "reason": e.reason, "started_by": e.started_by,
        "started_at_unix_ms": e.started_at_unix_ms,
        "finished_at_unix_ms": if e.finished_at_unix_ms == 0 { Value::Null } else { json!(e.finished_at_unix_ms) },
        "rto_ms": if e.rto_measured { json!(e.rto_ms) } else { Value::Null },
        "rpo_positions": e.rpo_positions,
        "source_regions": e.source_regions, "target_regions": e.target_regions,
        "steps": e.steps.iter().map(|s| json!({
            "index": s.index, "group": s.group, "name": s.name, "kind": s.kind, "state": s.state,
            "attempt": s.attempt, "compensation": s.compensation,
            "started_at_unix_ms": if s.started_at_unix_ms == 0 { Value::Null } else { json!(s.started_at_unix_ms) },
            "finished_at_unix_ms": if s.finished_at_unix_ms == 0 { Value::Null } else { json!(s.finished_at_unix_ms) },
            "duration_ms": s.duration_ms, "actor": s.actor, "approver": s.approver, "detail": s.detail,
            "timeout_ms": s.timeout_ms,
            "effects": s.effects.iter().map(|x| json!({
                "attempt": x.attempt, "target": x.target, "action": x.action, "revision": x.revision,
                "outcome": x.outcome, "replica": x.replica, "region": x.region, "positions_lost": x.positions_lost,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn steps_table(e: &ExecutionInfo) -> String {
    let mut t = table(&["#", "GROUP", "STEP", "KIND", "STATE", "ATTEMPT", "DURATION", "APPROVER", "DETAIL"]);
    for s in &e.steps {
        t.add_row(vec![
            s.index.to_string(),
            s.group.clone(),
            s.name.clone(),
            s.kind.clone(),
            s.state.clone(),
            s.attempt.to_string(),
            if s.duration_ms == 0 { "-".to_string() } else { format!("{:.1} s", s.duration_ms as f64 / 1000.0) },
            if s.approver.is_empty() { "-".to_string() } else { s.approver.clone() },
            s.detail.clone(),
        ]);
    }
    let head = format!("execution {} of {} v{} ({}): {}", e.id, e.runbook, e.version, e.mode, e.state);
    let reason = if e.reason.is_empty() { String::new() } else { format!("\n{}", e.reason) };
    format!("{head}{reason}\n{t}")
}

async fn one(client: &Client, id: u64) -> Result<ExecutionInfo, Failure> {
    client
        .executions(id)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::NotFound(format!("execution {id}")).into())
}

/// Polls until execution `id` is final; exit 1 unless it SUCCEEDED.
async fn wait_final(client: &Client, out: &Printer, id: u64, timeout: Duration) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let e = one(client, id).await?;
        if e.r#final {
            out.record(&execution_json(&e), || steps_table(&e))?;
            if e.state == "SUCCEEDED" {
                return Ok(());
            }
            return Err(Failure { code: 1, message: format!("execution {id} ended {}: {}", e.state, e.reason) });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure {
                code: 1,
                message: format!("execution {id} is still {} after {}", e.state, humantime::format_duration(timeout)),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn runbook(client: &Client, out: &Printer, cmd: &RunbookCmd, yes: bool) -> Result<(), Failure> {
    match cmd {
        RunbookCmd::Apply { file } => {
            let yaml =
                std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("-f {}: {e}", file.display())))?;
            let reply = client.apply_runbook(&yaml).await?;
            out.record(&json!({"revision": reply.revision, "message": reply.message}), || reply.message.clone())
        }
        RunbookCmd::List => {
            let books = client.runbooks("").await?;
            let value = json!({"runbooks": books.iter().map(|b| json!({
                "name": b.name, "version": b.version, "description": b.description, "steps": b.steps,
                "applied_by": b.applied_by, "applied_at_unix_ms": b.applied_at_unix_ms,
                "params": b.params.iter().map(|p| json!({"name": p.name, "type": p.r#type, "required": p.required,
                    "default": p.default, "description": p.description})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["NAME", "VERSION", "STEPS", "PARAMETERS", "DESCRIPTION"]);
                for b in &books {
                    let params: Vec<String> = b
                        .params
                        .iter()
                        .map(
                            |p| if p.required { format!("{} ({})", p.name, p.r#type) } else { format!("[{}]", p.name) },
                        )
                        .collect();
                    t.add_row(vec![
                        b.name.clone(),
                        b.version.to_string(),
                        b.steps.to_string(),
                        params.join(", "),
                        b.description.clone(),
                    ]);
                }
                t.to_string()
            })
        }
        RunbookCmd::Show { name } => {
            let book = client.runbooks(name).await?.into_iter().next();
            let Some(book) = book else { return Err(ClientError::NotFound(format!("runbook {name}")).into()) };
            let value = json!({"name": book.name, "version": book.version, "yaml": book.yaml});
            out.record(&value, || format!("# {} version {}\n{}", book.name, book.version, book.yaml))
        }
        RunbookCmd::Run(args) => {
            let params = parse_params(&args.params)?;
            let mode = match (args.dry_run, args.drill) {
                (true, _) => RunMode::DryRun,
                (_, true) => RunMode::Drill,
                _ => {
                    crate::confirm_dangerous(yes, &format!("Run runbook {} live, changing production", args.name))?;
                    RunMode::Live
                }
            };
            let request = RunRunbookRequest { name: args.name.clone(), params, mode: mode as i32 };
            let reply = client.run_runbook(request).await?;
            if mode == RunMode::DryRun {
                let value = json!({"message": reply.message, "plan": reply.plan.iter().map(|p| json!({
                    "index": p.index, "group": p.group, "step": p.step, "kind": p.kind, "ok": p.ok,
                    "check": p.check, "compensation": p.compensation,
                })).collect::<Vec<_>>()});
                return out.record(&value, || {
                    let mut t = table(&["#", "GROUP", "STEP", "KIND", "NOW", "CHECK"]);
                    for p in &reply.plan {
                        let group = if p.compensation { "on_abort".to_string() } else { p.group.clone() };
                        let now = if p.ok { "ok" } else { "BLOCKED" };
                        t.add_row(vec![
                            p.index.to_string(),
                            group,
                            p.step.clone(),
                            p.kind.clone(),
                            now.into(),
                            p.check.clone(),
                        ]);
                    }
                    format!("{}\n{t}", reply.message)
                });
            }
            if args.wait {
                eprintln!("{}", reply.message);
                return wait_final(client, out, reply.execution_id, args.wait_timeout).await;
            }
            let value =
                json!({"execution_id": reply.execution_id, "revision": reply.revision, "message": reply.message});
            out.record(&value, || reply.message.clone())
        }
        RunbookCmd::Status { id: Some(id), wait: true, wait_timeout } => {
            wait_final(client, out, *id, *wait_timeout).await
        }
        RunbookCmd::Status { id: Some(id), .. } => {
            let e = one(client, *id).await?;
            out.record(&execution_json(&e), || steps_table(&e))
        }
        RunbookCmd::Status { id: None, .. } => {
            let all = client.executions(0).await?;
            let value = json!({"executions": all.iter().map(execution_json).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["ID", "RUNBOOK", "MODE", "STATE", "STEPS DONE", "STARTED BY", "REASON"]);
                for e in &all {
                    let done = e.steps.iter().filter(|s| s.state == "SUCCEEDED" || s.state == "SKIPPED").count();
                    t.add_row(vec![
                        e.id.to_string(),
                        format!("{} v{}", e.runbook, e.version),
                        e.mode.clone(),
                        e.state.clone(),
                        format!("{done}/{}", e.steps.len()),
                        e.started_by.clone(),
                        e.reason.clone(),
                    ]);
                }
                t.to_string()
            })
        }
        RunbookCmd::Approve(s) => control(client, out, s.id, s.step.as_deref(), ExecutionOp::Approve, "").await,
        RunbookCmd::Continue(s) => control(client, out, s.id, s.step.as_deref(), ExecutionOp::Continue, "").await,
        RunbookCmd::Retry(s) => control(client, out, s.id, s.step.as_deref(), ExecutionOp::Retry, "").await,
        RunbookCmd::Skip { step, reason } => {
            control(client, out, step.id, step.step.as_deref(), ExecutionOp::Skip, reason).await
        }
        RunbookCmd::Abort { id, reason } => {
            crate::confirm_dangerous(yes, &format!("Abort execution {id} (its on_abort steps run)"))?;
            control(client, out, *id, None, ExecutionOp::Abort, reason).await
        }
        RunbookCmd::Report { id } => {
            let e = one(client, *id).await?;
            if out.is_markdown() {
                println!("{}", e.report_markdown.trim_end());
                return Ok(());
            }
            out.record(&execution_json(&e), || {
                let rto =
                    if e.rto_measured { format!("{:.3} s", e.rto_ms as f64 / 1000.0) } else { "not measured".into() };
                format!("{}\nRTO: {rto}   RPO: {} positions lost", steps_table(&e), e.rpo_positions)
            })
        }
    }
}

async fn control(
    client: &Client,
    out: &Printer,
    id: u64,
    step: Option<&str>,
    op: ExecutionOp,
    reason: &str,
) -> Result<(), Failure> {
    let request = ControlExecutionRequest {
        id,
        step: step.unwrap_or_default().to_string(),
        op: op as i32,
        reason: reason.into(),
    };
    let reply = client.control_execution(request).await?;
    let value = json!({"revision": reply.revision, "message": reply.message, "approval_id": reply.approval_id});
    out.record(&value, || reply.message.clone())
}
