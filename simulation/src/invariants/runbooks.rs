//! SPEC §7, on the events the observer saw (in log order) and the
//! executions it read near the end:
//!
//! - each step's effect happens at most once: a production event (a drain,
//!   undrain, maintenance change, promotion or demotion) carries the tag of
//!   the step that caused it — (runbook, execution, step, attempt) — and
//!   no tag causes two events about one subject;
//! - a drill changes nothing in production: no production event carries
//!   the tag of a drill;
//! - every STUCK step has its event: a step read STUCK, or run more than
//!   once (only a STUCK step is retried), has a `runbook.step_stuck` event
//!   for each time it was stuck;
//! - no step is skipped: the simulation never skips, so no step is
//!   SKIPPED; every step of a SUCCEEDED execution succeeded; and a step
//!   starts only after every step of the groups before it succeeded (event
//!   order, which is log order: no clock involved).

use crate::history::History;
use std::collections::BTreeMap;

/// The kinds of production events a step's effect causes.
const PRODUCTION: [&str; 5] = ["maintenance", "region.drain", "region.undrain", "shard.promoted", "shard.demoted"];

/// The step tag in an event's message: (runbook, execution, step, attempt).
fn tag(message: &str) -> Option<(String, u64, String, u32)> {
    let at = message.find("runbook ")?;
    let words: Vec<&str> = message[at..].split_whitespace().collect();
    match words.as_slice() {
        ["runbook", runbook, "execution", id, "step", step, "attempt", attempt, ..] => {
            Some((runbook.to_string(), id.parse().ok()?, step.to_string(), attempt.parse().ok()?))
        }
        _ => None,
    }
}

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let executions = history.executions_final.as_ref().map(|(_, e)| e.as_slice()).unwrap_or_default();
    let drills: Vec<u64> = executions.iter().filter(|e| e.mode == "drill").map(|e| e.id).collect();
    let mut caused: BTreeMap<(u64, String, u32, String), usize> = BTreeMap::new();
    for (at, kind, subject, message) in &history.runbook_events {
        if !PRODUCTION.contains(&kind.as_str()) {
            continue;
        }
        let Some((runbook, id, step, attempt)) = tag(message) else { continue };
        if drills.contains(&id) || runbook == "sim-region-loss" {
            violations
                .push(format!("runbooks: drill {id} ({runbook}) changed production at {at} ms: {kind} {subject}"));
        }
        let count = caused.entry((id, step.clone(), attempt, subject.clone())).or_default();
        *count += 1;
        if *count == 2 {
            violations.push(format!(
                "runbooks: step {step} (attempt {attempt}) of execution {id} acted twice on {subject}: {kind} at {at} ms"
            ));
        }
    }
    let stuck_events = |subject: &str| {
        history.runbook_events.iter().filter(|(_, k, s, _)| k == "runbook.step_stuck" && s == subject).count()
    };
    // Position in the event stream of each (subject, kind).
    let position = |subject: &str, kinds: &[&str]| {
        history.runbook_events.iter().position(|(_, k, s, _)| s == subject && kinds.contains(&k.as_str()))
    };
    for e in executions {
        for s in &e.steps {
            let subject = format!("{}/{}", e.id, s.name);
            let times_stuck = s.attempt.saturating_sub(1) as usize + usize::from(s.state == "STUCK");
            if stuck_events(&subject) < times_stuck {
                violations.push(format!(
                    "runbooks: step {subject} was stuck {times_stuck} time(s) (attempt {}, {}) but {} runbook.step_stuck event(s) were seen",
                    s.attempt,
                    s.state,
                    stuck_events(&subject)
                ));
            }
            if s.state == "SKIPPED" {
                violations.push(format!("runbooks: step {subject} was skipped, and nobody skips in the simulation"));
            }
            if e.state == "SUCCEEDED" && !s.compensation && s.state != "SUCCEEDED" {
                violations.push(format!("runbooks: execution {} SUCCEEDED with step {} {}", e.id, s.name, s.state));
            }
        }
        // Group order: a step's first start after every earlier group's success.
        let groups: Vec<&str> = e.steps.iter().filter(|s| !s.compensation).map(|s| s.group.as_str()).collect();
        for (i, s) in e.steps.iter().enumerate().filter(|(_, s)| !s.compensation) {
            let Some(started) = position(&format!("{}/{}", e.id, s.name), &["runbook.step_started"]) else { continue };
            for earlier in e.steps.iter().take(i).filter(|p| !p.compensation && p.group != groups[i]) {
                let done = position(&format!("{}/{}", e.id, earlier.name), &["runbook.step_succeeded"]);
                if done.is_none_or(|d| d > started) {
                    violations.push(format!(
                        "runbooks: step {}/{} started before step {} of an earlier group succeeded",
                        e.id, s.name, earlier.name
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tag_is_read_back_from_an_event_message() {
        let message = "drain by 5000 bps every 1000 ms: runbook sim-drain execution 42 step drain attempt 2";
        assert_eq!(super::tag(message), Some(("sim-drain".into(), 42, "drain".into(), 2)));
        assert_eq!(super::tag("drain by 5000 bps: operator"), None);
    }
}
