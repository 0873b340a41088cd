#![cfg(test)]
//! Runbooks in the small world of the failover tests: validation with
//! field paths, live and drill executions driven by the planner, effects
//! exactly once per attempt, STUCK with retry, skip and abort.

use super::drive::{plan, World as Facts};
use crate::failover::testkit::{ack, observe, World};
use crate::failover::Observations;
use crate::model::{Command, ControlOp, ExecutionState, RunMode, RunbookSpec, StepChange, StepState};
use crate::vocab::{Refusal, ReplicaRole, Response, SYSTEM};

fn spec(yaml: &str) -> RunbookSpec {
    serde_saphyr::from_str(yaml).expect("parses")
}

fn shipped(name: &str) -> RunbookSpec {
    let path = format!("{}/../../deploy/runbooks/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    spec(&std::fs::read_to_string(path).expect("shipped runbook"))
}

fn applied(r: &Response) -> bool {
    matches!(r, Response::Applied { .. })
}

/// Starts `spec` in `w` as alice.
fn start(w: &mut World, spec: RunbookSpec, params: &[(&str, &str)], mode: RunMode) -> u64 {
    let name = spec.name.clone();
    let r = w.apply_by("alice", Command::ApplyRunbook { runbook: Box::new(spec) });
    assert!(applied(&r), "{r:?}");
    let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let r = w.apply_by("alice", Command::StartExecution { runbook: name, params, mode });
    let Response::Applied { revision } = r else { panic!("{r:?}") };
    revision
}

/// Runs the planner `rounds` times at `obs`, applying what it proposes
/// (and acknowledging every promotion, as the controller would).
fn drive(w: &mut World, obs: &Observations, rounds: usize) -> Vec<Command> {
    let mut proposed = Vec::new();
    for _ in 0..rounds {
        let mut obs = obs.clone();
        obs.now_unix_ms = w.now_unix_ms;
        let converged = |_: &str, _: u64| true;
        let commands = plan(&w.state, &Facts { obs: &obs, converged: &converged }).commands;
        for command in commands {
            w.apply(command.clone());
            proposed.push(command);
        }
        for (region, from) in crate::routing::due_drain_steps(&w.state, w.now_unix_ms) {
            w.apply(Command::DrainStep { region, expected_fraction_bps: from });
        }
        let pending: Vec<_> = w.state.shards.values().filter_map(|s| s.pending.clone()).collect();
        for p in pending {
            w.apply(ack(&p.replica, p.epoch, ReplicaRole::Primary));
        }
        w.now_unix_ms += 1_000;
    }
    proposed
}

#[test]
fn the_shipped_runbooks_are_valid() {
    let w = World::new();
    for name in ["evacuate-region", "failback-region", "drill-region-loss", "verify-all-backups"] {
        let spec = shipped(name);
        assert_eq!(spec.name, name);
        assert_eq!(super::validate(&spec), Ok(()), "{name}");
        assert_eq!(super::validate_refs(&spec, &w.state), Ok(()), "{name}");
    }
}

#[test]
fn bad_runbooks_are_refused_naming_the_field_and_nothing_is_stored() {
    let base = "name: r\nparams:\n  region: {type: region}\n  shard: {type: shard}\n";
    let cases = [
        ("groups:\n  - name: g\n    steps:\n      - name: s\n", "groups[0].steps[0]", "give one step kind"),
        (
            "groups:\n  - name: g\n    steps:\n      - name: s\n        drain: {region: eu}\n        undrain: {region: eu}\n",
            "groups[0].steps[0]",
            "not drain and undrain",
        ),
        (
            "groups:\n  - name: g\n    steps:\n      - name: s\n        drain: {region: '${zone}'}\n",
            "groups[0].steps[0].drain.region",
            "${zone} is not a parameter",
        ),
        (
            "groups:\n  - name: g\n    steps:\n      - name: s\n        drain: {region: '${shard}'}\n",
            "groups[0].steps[0].drain.region",
            "is a Shard parameter",
        ),
        (
            "groups:\n  - name: a\n    after: [b]\n    steps: [{name: s, pause: {}}]\n  - name: b\n    after: [a]\n    steps: [{name: t, pause: {}}]\n",
            "groups[0].after",
            "a cycle",
        ),
        (
            "groups:\n  - name: g\n    steps:\n      - name: s\n        wait_for: {region_state: {region: eu, state: gone}}\n",
            "groups[0].steps[0].wait_for.region_state.state",
            "not a region state",
        ),
        (
            "groups:\n  - name: g\n    steps:\n      - name: s\n        switchover: {away_from_region: eu, to: orders-0-us}\n",
            "groups[0].steps[0].switchover.to",
            "goes with `shard`",
        ),
        (
            "groups:\n  - name: g\n    steps:\n      - name: s\n        pause: {}\n        timeout_seconds: 0\n",
            "groups[0].steps[0].timeout_seconds",
            "out of range",
        ),
    ];
    for (groups, field, reason) in cases {
        let e = super::validate(&spec(&format!("{base}{groups}"))).expect_err(groups);
        assert_eq!(e.field, field, "{groups}");
        assert!(e.reason.contains(reason), "{groups}: {}", e.reason);
    }
    // Names are checked against the state when applied: refused, nothing stored.
    let mut w = World::new();
    let unknown = spec("name: r\ngroups:\n  - name: g\n    steps:\n      - name: s\n        drain: {region: mars}\n");
    let r = w.apply_by("alice", Command::ApplyRunbook { runbook: Box::new(unknown) });
    assert!(
        matches!(&r, Response::Refused { code: Refusal::InvalidArgument, reason } if reason.contains("groups[0].steps[0].drain.region") && reason.contains("no region named \"mars\"")),
        "{r:?}"
    );
    assert!(w.state.runbooks.is_empty());
    // A run's parameters: declared, present, naming what exists.
    let id_before = w.state.executions.len();
    w.apply_by("alice", Command::ApplyRunbook { runbook: Box::new(shipped("evacuate-region")) });
    for (params, want) in [
        (vec![], "params.region: required"),
        (vec![("region", "mars")], "params.region: no region named \"mars\""),
        (vec![("region", "eu"), ("zone", "x")], "params.zone: not a parameter"),
    ] {
        let params = params.into_iter().map(|(k, v): (&str, &str)| (k.to_string(), v.to_string())).collect();
        let r = w.apply_by(
            "alice",
            Command::StartExecution { runbook: "evacuate-region".into(), params, mode: RunMode::Live },
        );
        assert!(matches!(&r, Response::Refused { reason, .. } if reason.contains(want)), "{want}: {r:?}");
    }
    assert_eq!(w.state.executions.len(), id_before);
}

fn fail_out_of_eu() -> RunbookSpec {
    spec(
        "name: lose\nparams:\n  region: {type: region}\ngroups:\n  - name: move\n    steps:\n      - name: fail-over\n        failover: {away_from_region: '${region}'}\n      - name: drain\n        drain: {region: '${region}', step_bps: 7000, interval_seconds: 1}\n  - name: check\n    steps:\n      - name: empty\n        wait_for: {no_primaries_in: {region: '${region}'}}\n",
    )
}

#[test]
fn a_drill_moves_primaries_and_traffic_in_its_copy_and_production_is_untouched() {
    let mut w = World::new();
    let production =
        (w.state.shards.clone(), w.state.regions.clone(), w.state.routing.clone(), w.state.replicas.clone());
    let id = start(&mut w, fail_out_of_eu(), &[("region", "eu")], RunMode::Drill);
    drive(&mut w, &observe([100, 95, 90], &[], &[]), 6);
    let e = &w.state.executions[&id];
    assert_eq!(e.state, ExecutionState::Succeeded, "{e:#?}");
    let copy = e.drill.as_ref().expect("drill copy");
    assert_eq!(copy.primaries["orders/0"].as_deref(), Some("orders-0-us"), "the best candidate outside eu");
    assert_eq!(copy.fractions["eu"], 0);
    assert_eq!(copy.routing["orders"]["eu"], 0);
    let report = e.report.as_ref().expect("report");
    assert_eq!(report.rpo_positions, 5, "us was 5 behind the failed primary");
    assert!(report.rto_ms.is_some());
    assert_eq!(report.target_regions, vec!["us".to_string()]);
    assert_eq!(
        production,
        (w.state.shards.clone(), w.state.regions.clone(), w.state.routing.clone(), w.state.replicas.clone()),
        "production unchanged"
    );
    let md = super::report::markdown(e);
    assert!(md.contains("| fail-over |") && md.contains("RPO: 5 positions lost"), "{md}");
    // Runbooks and executions survive the log and snapshots unchanged.
    let bytes = crate::codec::encode(&w.state).expect("encode");
    assert_eq!(crate::codec::decode::<crate::State>(&bytes).expect("decode"), w.state);
    let command = Command::ApplyRunbook { runbook: Box::new(shipped("evacuate-region")) };
    let bytes = crate::codec::encode(&command).expect("encode");
    assert_eq!(crate::codec::decode::<Command>(&bytes).expect("decode"), command);
}

#[test]
fn a_live_run_acts_once_per_attempt_whoever_proposes_it_again() {
    let mut w = World::new();
    let id = start(&mut w, fail_out_of_eu(), &[("region", "eu")], RunMode::Live);
    let obs = observe([100, 100, 90], &[], &[]);
    // While eu's primary holds its lease, the failover waits.
    drive(&mut w, &obs, 2);
    let e = &w.state.executions[&id];
    assert_eq!(e.steps[0].state, StepState::Running);
    assert!(e.steps[0].effects.is_empty(), "{:?}", e.steps[0]);
    assert_eq!(e.steps[1].effects.len(), 1, "the drain went ahead");
    w.expire_primary_lease();
    let proposed = drive(&mut w, &obs, 1);
    let effects: Vec<Command> = proposed
        .into_iter()
        .filter(|c| matches!(c, Command::StepTransition { change: StepChange::Effect { .. }, .. }))
        .collect();
    assert_eq!(effects.len(), 1, "the promotion, once the lease expired: {effects:#?}");
    // A new leader proposing the same effects again changes nothing.
    let epoch = w.state.shards["orders/0"].epoch;
    for effect in &effects {
        let r = w.apply(effect.clone());
        assert!(matches!(&r, Response::Refused { reason, .. } if reason.contains("already acted")), "{r:?}");
    }
    assert_eq!(w.state.shards["orders/0"].epoch, epoch);
    drive(&mut w, &obs, 4);
    let e = &w.state.executions[&id];
    assert_eq!(e.state, ExecutionState::Succeeded, "{e:#?}");
    assert_eq!(w.state.shards["orders/0"].primary.as_deref(), Some("orders-0-us"));
    assert_eq!(w.state.routing["orders"].effective["eu"], 0);
    let effects: usize = e.steps.iter().map(|s| s.effects.len()).sum();
    assert_eq!(effects, 2, "one promotion, one drain");
    // Each live effect is in the audit trail, as its starter's.
    let audited: Vec<_> =
        w.state.audit.iter().filter(|a| a.action.contains(&format!("[runbook execution {id} "))).collect();
    assert_eq!(audited.len(), 2, "{:#?}", w.state.audit);
    assert!(audited.iter().all(|a| a.by == "alice"));
}

#[test]
fn a_step_past_its_timeout_is_stuck_with_an_event_then_retried_skipped_or_aborted() {
    let mut w = World::new();
    let never = spec(
        "name: wait\ngroups:\n  - name: g\n    steps:\n      - name: lagless\n        timeout_seconds: 3\n        wait_for: {lag_at_most: {positions: 0}}\n  - name: then\n    steps:\n      - name: ok\n        wait_for: {no_primaries_in: {region: ap}}\non_abort:\n  - name: undo\n    maintenance: {region: eu, on: false}\n",
    );
    let id = start(&mut w, never, &[], RunMode::Live);
    let lagging = observe([100, 50, 50], &[], &[]);
    drive(&mut w, &lagging, 2);
    // Too early: the state machine refuses to mark it stuck.
    let early = Command::StepTransition {
        execution: id,
        step: 0,
        attempt: 1,
        change: StepChange::Stuck { detail: "x".into() },
    };
    assert!(matches!(w.apply(early), Response::Refused { .. }));
    drive(&mut w, &lagging, 3);
    let e = &w.state.executions[&id];
    assert_eq!(e.steps[0].state, StepState::Stuck, "{e:#?}");
    assert!(e.steps[0].detail.contains("orders-0-us is more than 0 positions behind"), "{}", e.steps[0].detail);
    assert!(w.state.events.iter().any(|ev| ev.kind == "runbook.step_stuck" && ev.subject == format!("{id}/lagless")));
    // Retry: a second attempt, which succeeds once the lag is gone.
    let retry = Command::ControlExecution { execution: id, step: Some(0), op: ControlOp::Retry };
    assert!(applied(&w.apply_by("bob", retry)));
    drive(&mut w, &observe([100, 100, 100], &[], &[]), 4);
    let e = &w.state.executions[&id];
    assert_eq!((e.steps[0].state, e.steps[0].attempt), (StepState::Succeeded, 2));
    assert_eq!(e.state, ExecutionState::Succeeded);

    // Skip (by an operator) and abort (which runs the compensation).
    let mut w = World::new();
    let never = spec(
        "name: wait\ngroups:\n  - name: g\n    steps:\n      - name: lagless\n        timeout_seconds: 1\n        wait_for: {lag_at_most: {positions: 0}}\n  - name: then\n    steps:\n      - name: hold\n        pause: {}\non_abort:\n  - name: undo\n    maintenance: {region: eu, on: true}\n",
    );
    let id = start(&mut w, never, &[], RunMode::Live);
    drive(&mut w, &lagging, 3);
    let skip =
        Command::ControlExecution { execution: id, step: Some(0), op: ControlOp::Skip { reason: "known lag".into() } };
    assert!(!applied(&w.apply(skip.clone())), "the coordinator never skips");
    assert!(applied(&w.apply_by("bob", skip)));
    drive(&mut w, &lagging, 2);
    let e = &w.state.executions[&id];
    assert_eq!((e.steps[0].state, e.steps[0].approver.as_str()), (StepState::Skipped, "bob"));
    assert_eq!(e.steps[1].state, StepState::Running, "the pause waits");
    let abort =
        Command::ControlExecution { execution: id, step: None, op: ControlOp::Abort { reason: "drill over".into() } };
    assert!(applied(&w.apply_by("bob", abort)));
    drive(&mut w, &lagging, 3);
    let e = &w.state.executions[&id];
    assert_eq!(e.state, ExecutionState::Aborted, "{e:#?}");
    assert_eq!(e.steps[2].state, StepState::Succeeded, "the compensation ran");
    assert!(w.state.regions["eu"].maintenance);
}

#[test]
fn a_two_person_approval_needs_another_operator_and_a_pause_an_explicit_continue() {
    let mut w = World::new();
    let gated = spec(
        "name: gated\ngroups:\n  - name: g\n    steps:\n      - name: ok\n        approval: {role: operator, two_person: true}\n  - name: h\n    steps:\n      - name: hold\n        pause: {message: check the dashboards}\n",
    );
    let id = start(&mut w, gated, &[], RunMode::Live);
    drive(&mut w, &observe([1, 1, 1], &[], &[]), 3);
    let approve = Command::ControlExecution { execution: id, step: Some(0), op: ControlOp::Approve };
    let own = w.apply_by("alice", approve.clone());
    assert!(matches!(own, Response::Refused { code: Refusal::PermissionDenied, .. }), "{own:?}");
    assert!(!applied(&w.apply_by(SYSTEM, approve.clone())));
    assert!(applied(&w.apply_by("bob", approve)));
    let wrong = Command::ControlExecution { execution: id, step: Some(0), op: ControlOp::Continue };
    assert!(!applied(&w.apply_by("bob", wrong)), "a finished step cannot be continued");
    drive(&mut w, &observe([1, 1, 1], &[], &[]), 3);
    assert_eq!(w.state.executions[&id].state, ExecutionState::Running);
    let go = Command::ControlExecution { execution: id, step: Some(1), op: ControlOp::Continue };
    assert!(applied(&w.apply_by("alice", go)));
    let e = &w.state.executions[&id];
    assert_eq!(e.state, ExecutionState::Succeeded);
    assert_eq!(e.steps[0].approver, "bob");
}

#[test]
fn a_hook_runs_on_its_regions_controller_once_and_its_success_criterion_is_checked() {
    let mut w = World::new();
    let hooked = spec(
        "name: hooked\nparams:\n  region: {type: region}\ngroups:\n  - name: g\n    steps:\n      - name: smoke\n        hook:\n          region: '${region}'\n          name: smoke-test\n          success: {no_primaries_in: {region: '${region}'}}\n",
    );
    let id = start(&mut w, hooked.clone(), &[("region", "us")], RunMode::Drill);
    drive(&mut w, &observe([1, 1, 1], &[], &[]), 2);
    let jobs = super::drive::hook_jobs(&w.state, "c-us");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].drill && jobs[0].name == "smoke-test" && jobs[0].params["region"] == "us");
    assert!(super::drive::hook_jobs(&w.state, "c-eu").is_empty(), "only the region's controller runs it");
    let report = |controller: &str, passed: bool| Command::StepTransition {
        execution: id,
        step: 0,
        attempt: 1,
        change: StepChange::HookResult { controller: controller.into(), passed, output: "ok".into() },
    };
    let wrong = w.apply(report("c-eu", true));
    assert!(matches!(wrong, Response::Refused { code: Refusal::PermissionDenied, .. }), "{wrong:?}");
    assert!(applied(&w.apply(report("c-us", true))));
    assert!(!applied(&w.apply(report("c-us", true))), "reported once per attempt");
    assert!(super::drive::hook_jobs(&w.state, "c-us").is_empty());
    drive(&mut w, &observe([1, 1, 1], &[], &[]), 2);
    let e = &w.state.executions[&id];
    assert_eq!(e.state, ExecutionState::Succeeded, "{e:#?}");
    assert!(e.steps[0].detail.contains("no primary in us"), "the criterion was checked: {}", e.steps[0].detail);

    // A hook that fails fails its step, and the run.
    let id = {
        let params = [("region".to_string(), "us".to_string())].into();
        let r = w.apply_by("alice", Command::StartExecution { runbook: "hooked".into(), params, mode: RunMode::Live });
        let Response::Applied { revision } = r else { panic!("{r:?}") };
        revision
    };
    drive(&mut w, &observe([1, 1, 1], &[], &[]), 1);
    let failed = Command::StepTransition {
        execution: id,
        step: 0,
        attempt: 1,
        change: StepChange::HookResult { controller: "c-us".into(), passed: false, output: "exit 3".into() },
    };
    assert!(applied(&w.apply(failed)));
    assert_eq!(w.state.executions[&id].state, ExecutionState::Failed);
}
