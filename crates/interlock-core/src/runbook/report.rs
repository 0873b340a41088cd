//! What an execution proved: the measured RTO and RPO, and its timeline as
//! Markdown. The report is computed from the execution's own record (every
//! step's start, end, actor, approver and effects), so it is the same on
//! every node and stored with the execution when it ends.

use crate::model::{Execution, ExecutionReport, RunMode, StepState};
use std::fmt::Write;

/// Measures a finished execution. RTO: from its start to the end of the
/// last switchover or failover step that moved a primary (the primary
/// acknowledged, so writable, in its target region; in a drill, moved in
/// the drill copy) — in a drill, or of its last `hook` step (the database
/// side of the drill). RPO: the positions the promoted replicas were behind
/// the best known position when promoted, summed.
pub fn measure(execution: &Execution) -> ExecutionReport {
    let mut report = ExecutionReport::default();
    for (planned, run) in execution.plan.iter().zip(&execution.steps) {
        let spec = &planned.spec;
        let mover = spec.switchover.as_ref().or(spec.failover.as_ref());
        if let Some(region) = mover.and_then(|m| m.away_from_region.clone()) {
            push_unique(&mut report.source_regions, region);
        }
        if let Some(d) = &spec.drain {
            push_unique(&mut report.source_regions, d.region.clone());
        }
        // In a drill, a hook is the database side (a restored instance took
        // a write in the target region): the service is back when it ends.
        let drill_hook = execution.mode == RunMode::Drill && spec.hook.is_some();
        if run.state == StepState::Succeeded && drill_hook {
            if let Some(end) = run.finished_at_unix_ms {
                let rto = end.saturating_sub(execution.started_at_unix_ms);
                report.rto_ms = Some(report.rto_ms.map_or(rto, |r| r.max(rto)));
            }
        }
        if mover.is_none() || run.state != StepState::Succeeded {
            continue;
        }
        let moved: Vec<_> =
            run.effects.iter().filter(|e| e.attempt == run.attempt && e.outcome.starts_with("applied")).collect();
        if moved.is_empty() {
            continue;
        }
        for effect in moved {
            report.rpo_positions += effect.positions_lost;
            if !effect.region.is_empty() {
                push_unique(&mut report.target_regions, effect.region.clone());
            }
        }
        if let Some(end) = run.finished_at_unix_ms {
            let rto = end.saturating_sub(execution.started_at_unix_ms);
            report.rto_ms = Some(report.rto_ms.map_or(rto, |r| r.max(rto)));
        }
    }
    report
}

fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn who(actor: &str) -> &str {
    if actor.is_empty() {
        "coordinator"
    } else {
        actor
    }
}

/// The execution's report as Markdown: summary, measured RTO/RPO, and one
/// row per step (group, state, start and end relative to the execution's
/// start, duration, attempts, approver, what happened).
pub fn markdown(execution: &Execution) -> String {
    let mut out = String::new();
    let mode = if execution.mode == RunMode::Drill { "drill" } else { "live" };
    let _ =
        writeln!(out, "# Runbook {} v{} — execution {} ({mode})\n", execution.runbook, execution.version, execution.id);
    let params: Vec<String> = execution.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "- State: **{:?}**{}",
        execution.state,
        if execution.reason.is_empty() { String::new() } else { format!(" — {}", execution.reason) }
    );
    let _ = writeln!(out, "- Started by {} at {} ms (Unix)", who(&execution.started_by), execution.started_at_unix_ms);
    if let Some(end) = execution.finished_at_unix_ms {
        let _ = writeln!(out, "- Duration: {}", seconds(end.saturating_sub(execution.started_at_unix_ms)));
    }
    let _ = writeln!(out, "- Parameters: {}", if params.is_empty() { "none".to_string() } else { params.join(", ") });
    let report = execution.report.clone().unwrap_or_else(|| measure(execution));
    let rto = report.rto_ms.map_or("not measured (no primary moved)".to_string(), seconds);
    let _ = writeln!(out, "- RTO: {rto}");
    let _ = writeln!(out, "- RPO: {} positions lost", report.rpo_positions);
    if !report.source_regions.is_empty() || !report.target_regions.is_empty() {
        let _ = writeln!(out, "- Regions: from {:?} to {:?}", report.source_regions, report.target_regions);
    }
    let _ = writeln!(out, "\n| # | group | step | state | start | end | duration | attempts | approver | detail |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (i, (planned, run)) in execution.plan.iter().zip(&execution.steps).enumerate() {
        let rel =
            |t: Option<u64>| t.map_or("—".to_string(), |t| seconds(t.saturating_sub(execution.started_at_unix_ms)));
        let duration = match (run.started_at_unix_ms, run.finished_at_unix_ms) {
            (Some(a), Some(b)) => seconds(b.saturating_sub(a)),
            _ => "—".to_string(),
        };
        let detail = run.detail.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| {i} | {} | {} | {:?} | {} | {} | {duration} | {} | {} | {detail} |",
            planned.group_name,
            planned.spec.name,
            run.state,
            rel(run.started_at_unix_ms),
            rel(run.finished_at_unix_ms),
            run.attempt,
            if run.approver.is_empty() { "—" } else { &run.approver },
        );
    }
    let effects: Vec<_> =
        execution.plan.iter().zip(&execution.steps).flat_map(|(p, r)| r.effects.iter().map(move |e| (p, e))).collect();
    if !effects.is_empty() {
        let _ = writeln!(out, "\n## Effects\n");
        for (planned, e) in effects {
            let _ = writeln!(
                out,
                "- {} (attempt {}) at {}: {} — {}",
                planned.spec.name,
                e.attempt,
                seconds(e.at_unix_ms.saturating_sub(execution.started_at_unix_ms)),
                e.action,
                e.outcome
            );
        }
    }
    out
}
