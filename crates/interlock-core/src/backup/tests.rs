//! The catalogue, the restore scheduler and the tracking, on the failover
//! tests' three-region world (eu holds the primary of orders/0).
#![cfg(test)]

use super::schedule::plan;
use super::track::{track, verified_backup_rule, RULE_VERIFIED_BACKUP};
use crate::failover::testkit::World;
use crate::model::{BackupReport, Command, DataCheck, RestoreOutcome, RestoreResult};
use crate::vocab::{Refusal, Response};

const SHARD: &str = "orders/0";

fn report(id: &str, region: &str, taken_at: u64) -> BackupReport {
    BackupReport {
        id: id.into(),
        source_region: region.into(),
        taken_at_unix_ms: taken_at,
        size_bytes: 4096,
        checksum: format!("sha256:{}", "ab".repeat(32)),
        location: format!("file:///backups/{id}.tar"),
    }
}

fn report_from(w: &mut World, controller: &str, backup: BackupReport) -> Response {
    w.apply(Command::ReportBackup { controller: controller.into(), shard: SHARD.into(), backup })
}

fn passed(ms: u64) -> RestoreResult {
    RestoreResult {
        passed: true,
        reason: String::new(),
        duration_ms: ms,
        checksum_match: true,
        data_check: Some(DataCheck { rows: 10, newest_sequence: 10 }),
    }
}

fn failed(why: &str) -> RestoreResult {
    RestoreResult { passed: false, reason: why.into(), duration_ms: 5, checksum_match: false, data_check: None }
}

fn refused(response: &Response) -> (Refusal, String) {
    match response {
        Response::Refused { code, reason } => (*code, reason.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn applied(response: Response) {
    assert!(matches!(response, Response::Applied { .. }), "{response:?}");
}

/// Runs the scheduler (every controller heard) and applies what it proposes.
fn schedule(w: &mut World) -> Vec<String> {
    let commands = plan(&w.state, w.now_unix_ms, |_| true);
    let texts = commands.iter().map(|c| c.to_string()).collect();
    for c in commands {
        applied(w.apply(c));
    }
    texts
}

fn running_job(w: &World) -> (u64, String) {
    let (job, j) = w.state.restore_jobs.iter().next().expect("a running job");
    (*job, j.controller.clone())
}

#[test]
fn bad_reports_are_refused_naming_the_field_and_change_nothing() {
    let mut w = World::new();
    let before = w.state.clone();
    let now = w.now_unix_ms;
    let mut bad_checksum = report("b1", "eu", now);
    bad_checksum.checksum = "md5:abc".into();
    let mut bad_uri = report("b1", "eu", now);
    bad_uri.location = "/backups/b1.tar".into();
    let cases: Vec<(&str, Command, Refusal, &str)> = vec![
        (
            "unknown shard",
            Command::ReportBackup {
                controller: "c-eu".into(),
                shard: "orders/9".into(),
                backup: report("b1", "eu", now),
            },
            Refusal::NotFound,
            "shard: unknown shard orders/9",
        ),
        (
            "another region's backup",
            Command::ReportBackup { controller: "c-us".into(), shard: SHARD.into(), backup: report("b1", "eu", now) },
            Refusal::PermissionDenied,
            "backup.source_region: controller c-us is in region us",
        ),
        (
            "malformed checksum",
            Command::ReportBackup { controller: "c-eu".into(), shard: SHARD.into(), backup: bad_checksum },
            Refusal::InvalidArgument,
            "backup.checksum",
        ),
        (
            "malformed URI",
            Command::ReportBackup { controller: "c-eu".into(), shard: SHARD.into(), backup: bad_uri },
            Refusal::InvalidArgument,
            "backup.location",
        ),
        (
            "taken in the future",
            Command::ReportBackup {
                controller: "c-eu".into(),
                shard: SHARD.into(),
                backup: report("b1", "eu", now + 3_600_000),
            },
            Refusal::InvalidArgument,
            "backup.taken_at_unix_ms",
        ),
        (
            "a result for a job nobody holds",
            Command::FinishRestoreTest { job: 99, controller: "c-us".into(), result: passed(1) },
            Refusal::FailedPrecondition,
            "job: restore job 99 is not running",
        ),
        (
            "a start in the source region",
            Command::StartRestoreTest { shard: SHARD.into(), backup: "b1".into(), controller: "c-eu".into() },
            Refusal::NotFound,
            "no backup b1",
        ),
    ];
    for (name, command, code, reason) in cases {
        let (got_code, got) = refused(&w.apply(command));
        assert_eq!(got_code, code, "{name}: {got}");
        assert!(got.contains(reason), "{name}: {got}");
    }
    // Another identity may not report for a controller.
    let (code, why) = refused(&w.apply_by(
        "mallory",
        Command::ReportBackup { controller: "c-eu".into(), shard: SHARD.into(), backup: report("b1", "eu", now) },
    ));
    assert_eq!(code, Refusal::PermissionDenied, "{why}");
    let mut after = w.state.clone();
    after.revision = before.revision;
    after.audit = before.audit.clone();
    after.audit_checkpoint = before.audit_checkpoint;
    assert_eq!(after, before, "a refused command changes nothing");
}

#[test]
fn a_backup_is_verified_only_by_a_restore_passed_in_another_region() {
    let mut w = World::new();
    {
        let at = w.now_unix_ms;
        applied(report_from(&mut w, "c-eu", report("b1", "eu", at)));
    }
    // A retried report is accepted once; the same id with other contents is not.
    {
        let at = w.now_unix_ms;
        applied(report_from(&mut w, "c-eu", report("b1", "eu", at)));
    }
    let mut other = report("b1", "eu", w.now_unix_ms);
    other.size_bytes = 1;
    assert!(refused(&report_from(&mut w, "c-eu", other)).1.contains("already reported"));
    assert_eq!(w.state.backups[SHARD].backups.len(), 1);

    // The scheduler never picks the source region; the state machine refuses it too.
    let started = schedule(&mut w);
    assert_eq!(started.len(), 1, "{started:?}");
    let (job, controller) = running_job(&w);
    assert_ne!(controller, "c-eu");
    let start_in_source =
        Command::StartRestoreTest { shard: SHARD.into(), backup: "b1".into(), controller: "c-eu".into() };
    assert!(refused(&w.apply(start_in_source)).1.contains("source region"));
    assert!(schedule(&mut w).is_empty(), "one test per backup at a time");

    // Only the holder reports the result.
    let stranger = if controller == "c-us" { "c-ap" } else { "c-us" };
    let wrong = Command::FinishRestoreTest { job, controller: stranger.into(), result: passed(1) };
    assert!(refused(&w.apply(wrong)).1.contains(&format!("held by {controller}")));
    applied(w.apply(Command::FinishRestoreTest { job, controller: controller.clone(), result: passed(1500) }));
    let catalogue = &w.state.backups[SHARD];
    assert!(catalogue.backups[0].verified());
    let verified = catalogue.last_verified.as_ref().expect("verified");
    assert_eq!((verified.backup.as_str(), verified.duration_ms), ("b1", 1500));
    assert!(w.state.restore_jobs.is_empty());
    assert!(schedule(&mut w).is_empty(), "a verified newest backup is not tested again");
    assert_eq!(track(&w.state, SHARD, w.now_unix_ms).summary(), "ok");
}

#[test]
fn a_failed_or_lost_test_is_retried_elsewhere_and_slots_are_limited() {
    let mut w = World::new();
    w.state.topology.backups.max_restores_per_region = 1;
    {
        let at = w.now_unix_ms;
        applied(report_from(&mut w, "c-eu", report("b1", "eu", at)));
    }
    schedule(&mut w);
    let (job, first) = running_job(&w);
    applied(w.apply(Command::FinishRestoreTest {
        job,
        controller: first.clone(),
        result: failed("pg_ctl start failed"),
    }));
    schedule(&mut w);
    let (job, second) = running_job(&w);
    assert_ne!(second, first, "retried on another controller");

    // Its controller falls silent: abandoned, and nobody is left to try (eu is the source).
    let commands = plan(&w.state, w.now_unix_ms, |c| c != second);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert!(
        matches!(&commands[0], Command::AbandonRestoreTest { job: j, reason } if *j == job && reason.contains("not heard"))
    );
    applied(w.apply(commands[0].clone()));
    assert!(schedule(&mut w).is_empty(), "every other controller failed or lost it");
    let tests = &w.state.backups[SHARD].backups[0].tests;
    assert!(matches!(tests[0].outcome, RestoreOutcome::Failed { .. }));
    assert!(matches!(tests[1].outcome, RestoreOutcome::Abandoned { .. }));

    // A new backup is tested; a deadline passed abandons it too.
    w.now_unix_ms += 1_000;
    {
        let at = w.now_unix_ms;
        applied(report_from(&mut w, "c-eu", report("b2", "eu", at)));
    }
    schedule(&mut w);
    let (job, holder) = running_job(&w);
    let again = Command::StartRestoreTest { shard: SHARD.into(), backup: "b1".into(), controller: holder };
    assert!(refused(&w.apply(again)).1.contains("max_restores_per_region 1"), "one slot per region");
    w.now_unix_ms += w.state.topology.backups.restore_timeout_seconds * 1000 + 1;
    let commands = plan(&w.state, w.now_unix_ms, |_| true);
    assert!(
        matches!(&commands[0], Command::AbandonRestoreTest { job: j, reason } if *j == job && reason.contains("deadline"))
    );
    let tracking = track(&w.state, SHARD, w.now_unix_ms);
    assert!(tracking.rpo_violated && !tracking.verify_overdue, "{tracking:?}");
    w.now_unix_ms += w.state.topology.backups.policy.verify_within_seconds * 1000;
    let tracking = track(&w.state, SHARD, w.now_unix_ms);
    assert!(tracking.verify_overdue, "{tracking:?}");
    assert!(tracking.summary().contains("RPO target missed: no verified backup"), "{}", tracking.summary());
}

#[test]
fn the_catalogue_keeps_the_newest_n_and_those_inside_the_rpo_target() {
    let mut w = World::new();
    w.state.topology.backups.policy.retain = 2;
    w.state.topology.backups.policy.rpo_target_seconds = 10;
    for i in 0..5 {
        {
            let at = w.now_unix_ms - 60_000 + i * 1000;
            applied(report_from(&mut w, "c-eu", report(&format!("b{i}"), "eu", at)));
        }
    }
    let ids: Vec<&str> = w.state.backups[SHARD].backups.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["b3", "b4"], "outside the RPO window only the newest 2 stay");
    w.state.topology.backups.policy.rpo_target_seconds = 3_600;
    for i in 5..(crate::model::BACKUPS_KEPT_MAX as u64 + 10) {
        {
            let at = w.now_unix_ms - 60_000 + i * 100;
            applied(report_from(&mut w, "c-eu", report(&format!("b{i}"), "eu", at)));
        }
    }
    assert_eq!(w.state.backups[SHARD].backups.len(), crate::model::BACKUPS_KEPT_MAX, "bounded whatever the window");
}

#[test]
fn the_verified_backup_rule_names_itself_and_passes_once_proven_in_the_target() {
    let mut w = World::new();
    w.state.topology.backups.policy.require_verified_backup = true;
    let (_, why) = verified_backup_rule(&w.state, SHARD, "us").expect_err("no backup yet");
    assert!(why.contains(RULE_VERIFIED_BACKUP), "{why}");
    {
        let at = w.now_unix_ms;
        applied(report_from(&mut w, "c-eu", report("b1", "eu", at)));
    }
    schedule(&mut w);
    let (job, controller) = running_job(&w);
    applied(w.apply(Command::FinishRestoreTest { job, controller: controller.clone(), result: passed(10) }));
    let region = w.state.controllers[&controller].region.clone();
    assert_eq!(verified_backup_rule(&w.state, SHARD, &region), Ok(()));
    let other = if region == "us" { "ap" } else { "us" };
    assert!(verified_backup_rule(&w.state, SHARD, other).is_err(), "proven in {region}, not in {other}");
    // A drain of eu (the primary's region) needs a proof anywhere else.
    let drain =
        Command::Drain { region: "eu".into(), undrain: false, step_bps: 2500, interval_ms: 1000, reason: "t".into() };
    applied(w.apply(drain));
}

#[test]
fn a_region_that_keeps_failing_goes_last_for_the_next_backups() {
    let mut w = World::new();
    let at = w.now_unix_ms;
    applied(report_from(&mut w, "c-eu", report("b1", "eu", at)));
    schedule(&mut w);
    let (job, first) = running_job(&w);
    applied(w.apply(Command::FinishRestoreTest { job, controller: first.clone(), result: failed("unreadable") }));
    // A newer backup arrives before b1 is retried: it goes elsewhere first.
    w.now_unix_ms += 1_000;
    let at = w.now_unix_ms;
    applied(report_from(&mut w, "c-eu", report("b2", "eu", at)));
    schedule(&mut w);
    let (_, second) = running_job(&w);
    assert_ne!(second, first, "{first} failed this shard's last test; b2 goes to the other region");
}
