//! The transitions of the backup catalogue. Each refuses with the field and
//! the reason, and a refused command changes nothing.

use super::policy;
use crate::model::{
    Backup, BackupReport, Controller, RestoreJob, RestoreOutcome, RestoreResult, RestoreTest, Verified,
    BACKUPS_KEPT_MAX, TESTS_KEPT,
};
use crate::state::{Effects, State};
use crate::vocab::{Refusal, Response, SYSTEM};

/// How far in the future a backup's `taken_at` may be (clock skew between
/// a controller and the leader).
pub const TAKEN_AT_SKEW_MS: u64 = 60_000;

fn refuse(code: Refusal, reason: impl Into<String>) -> Response {
    Response::refused(code, reason)
}

fn applied(fx: &Effects) -> Response {
    Response::Applied { revision: fx.index }
}

/// Controller `id`, if `by` speaks for it (its bound identity, or the coordinator).
fn speaks_for<'a>(state: &'a State, id: &str, by: &str) -> Result<&'a Controller, Response> {
    match state.controllers.get(id) {
        None => Err(refuse(Refusal::NotFound, format!("controller: unknown controller {id}; register it first"))),
        Some(c) if c.identity == by || by == SYSTEM => Ok(c),
        Some(c) => Err(refuse(
            Refusal::PermissionDenied,
            format!("controller: {id} is registered as {}; {by} may not act for it", c.identity),
        )),
    }
}

pub(crate) fn report_backup(
    state: &mut State,
    controller_id: &str,
    shard_key: &str,
    report: &BackupReport,
    by: &str,
    fx: &mut Effects,
) -> Response {
    let controller = match speaks_for(state, controller_id, by) {
        Ok(controller) => controller,
        Err(refused) => return refused,
    };
    let Some(shard) = state.shards.get(shard_key) else {
        return refuse(Refusal::NotFound, format!("shard: unknown shard {shard_key}"));
    };
    if report.source_region != controller.region {
        return refuse(
            Refusal::PermissionDenied,
            format!(
                "backup.source_region: controller {controller_id} is in region {}; it may not report a backup taken in {}",
                controller.region, report.source_region
            ),
        );
    }
    if !controller.replicas.iter().any(|r| shard.replicas.contains(r)) {
        return refuse(
            Refusal::FailedPrecondition,
            format!("shard: controller {controller_id} runs no replica of {shard_key}"),
        );
    }
    if report.taken_at_unix_ms > fx.at_unix_ms.saturating_add(TAKEN_AT_SKEW_MS) {
        return refuse(
            Refusal::InvalidArgument,
            format!(
                "backup.taken_at_unix_ms: {} is more than {} s after the coordinator's clock ({})",
                report.taken_at_unix_ms,
                TAKEN_AT_SKEW_MS / 1000,
                fx.at_unix_ms
            ),
        );
    }
    let catalogue = state.backups.entry(shard_key.to_string()).or_default();
    if let Some(known) = catalogue.backups.iter().find(|b| b.id == report.id) {
        let same = known.taken_at_unix_ms == report.taken_at_unix_ms
            && known.checksum == report.checksum
            && known.location == report.location
            && known.size_bytes == report.size_bytes;
        return if same {
            applied(fx) // a retried report
        } else {
            refuse(
                Refusal::FailedPrecondition,
                format!("backup.id: {} of {shard_key} is already reported with other contents", report.id),
            )
        };
    }
    let backup = Backup {
        id: report.id.clone(),
        source_region: report.source_region.clone(),
        controller: controller_id.to_string(),
        taken_at_unix_ms: report.taken_at_unix_ms,
        reported_at_unix_ms: fx.at_unix_ms,
        size_bytes: report.size_bytes,
        checksum: report.checksum.clone(),
        location: report.location.clone(),
        tests: Vec::new(),
    };
    let at = catalogue.backups.partition_point(|b| (b.taken_at_unix_ms, &b.id) < (backup.taken_at_unix_ms, &backup.id));
    catalogue.backups.insert(at, backup);
    fx.event(
        "backup_reported",
        shard_key,
        format!(
            "backup {} taken in {} ({} bytes) at {}",
            report.id, report.source_region, report.size_bytes, report.location
        ),
    );
    retain(state, shard_key, fx.at_unix_ms);
    applied(fx)
}

/// Trims `shard_key`'s catalogue: it keeps the newest `retain` backups and
/// every one taken inside the RPO target, at most [`BACKUPS_KEPT_MAX`] (the
/// oldest go first). A trimmed backup's running test is dropped with it.
fn retain(state: &mut State, shard_key: &str, now_unix_ms: u64) {
    let policy = policy(state, shard_key).clone();
    let Some(catalogue) = state.backups.get_mut(shard_key) else { return };
    let window_start = now_unix_ms.saturating_sub(policy.rpo_target_seconds.saturating_mul(1000));
    let newest_kept = catalogue.backups.len().saturating_sub(policy.retain as usize);
    let mut index = 0;
    let mut dropped = Vec::new();
    catalogue.backups.retain(|b| {
        let keep = index >= newest_kept || b.taken_at_unix_ms >= window_start;
        index += 1;
        if !keep {
            dropped.push(b.id.clone());
        }
        keep
    });
    let excess = catalogue.backups.len().saturating_sub(BACKUPS_KEPT_MAX);
    dropped.extend(catalogue.backups.drain(..excess).map(|b| b.id));
    if !dropped.is_empty() {
        state.restore_jobs.retain(|_, job| !(job.shard == shard_key && dropped.contains(&job.backup)));
    }
}

/// After a topology change: the catalogues (and running tests) of shards
/// that are no longer declared go.
pub(crate) fn trim_to_topology(state: &mut State) {
    let shards = &state.shards;
    state.backups.retain(|key, _| shards.contains_key(key));
    state.restore_jobs.retain(|_, job| shards.contains_key(&job.shard));
}

/// How many restore tests run in `region` now.
pub fn running_in(state: &State, region: &str) -> usize {
    state.restore_jobs.values().filter(|j| j.region == region).count()
}

pub(crate) fn start_restore(
    state: &mut State,
    shard_key: &str,
    backup_id: &str,
    controller_id: &str,
    by: &str,
    fx: &mut Effects,
) -> Response {
    if by != SYSTEM {
        return refuse(Refusal::PermissionDenied, format!("{by} may not schedule restore tests; the coordinator does"));
    }
    let Some(controller) = state.controllers.get(controller_id) else {
        return refuse(Refusal::NotFound, format!("controller: unknown controller {controller_id}"));
    };
    let region = controller.region.clone();
    let limit = state.topology.backups.max_restores_per_region as usize;
    let running = running_in(state, &region);
    let timeout_ms = state.topology.backups.restore_timeout_seconds.saturating_mul(1000);
    let Some(backup) = find_backup(state, shard_key, backup_id) else {
        return refuse(Refusal::NotFound, format!("backup: no backup {backup_id} of {shard_key} in the catalogue"));
    };
    if backup.source_region == region {
        return refuse(
            Refusal::FailedPrecondition,
            format!(
                "controller: {controller_id} is in {region}, the backup's source region; a restore test runs in another"
            ),
        );
    }
    if backup.tests.iter().any(|t| t.outcome == RestoreOutcome::Running) {
        return refuse(Refusal::FailedPrecondition, format!("backup: {backup_id} already has a restore test running"));
    }
    if running >= limit {
        return refuse(
            Refusal::FailedPrecondition,
            format!("controller: {region} already runs {running} restore tests (max_restores_per_region {limit})"),
        );
    }
    let deadline = fx.at_unix_ms.saturating_add(timeout_ms);
    backup.tests.push(RestoreTest {
        job: fx.index,
        region: region.clone(),
        controller: controller_id.to_string(),
        started_at_unix_ms: fx.at_unix_ms,
        deadline_unix_ms: deadline,
        finished_at_unix_ms: 0,
        outcome: RestoreOutcome::Running,
        duration_ms: 0,
        checksum_match: false,
        data_check: None,
    });
    let excess = backup.tests.len().saturating_sub(TESTS_KEPT);
    backup.tests.drain(..excess);
    state.restore_jobs.insert(
        fx.index,
        RestoreJob {
            shard: shard_key.to_string(),
            backup: backup_id.to_string(),
            controller: controller_id.to_string(),
            region: region.clone(),
            deadline_unix_ms: deadline,
        },
    );
    fx.event(
        "restore_started",
        shard_key,
        format!("restore job {} tests backup {backup_id} on {controller_id} in {region}", fx.index),
    );
    applied(fx)
}

fn find_backup<'a>(state: &'a mut State, shard_key: &str, backup_id: &str) -> Option<&'a mut Backup> {
    state.backups.get_mut(shard_key)?.backups.iter_mut().find(|b| b.id == backup_id)
}

/// The running job `job`, or the refusal that names it.
fn running_job(state: &State, job: u64) -> Result<RestoreJob, Response> {
    state.restore_jobs.get(&job).cloned().ok_or_else(|| {
        refuse(
            Refusal::FailedPrecondition,
            format!("job: restore job {job} is not running (finished, abandoned or unknown)"),
        )
    })
}

/// Ends job `job` with `outcome`; returns its backup's taken-at and its region.
fn end_job(
    state: &mut State,
    job_id: u64,
    job: &RestoreJob,
    outcome: RestoreOutcome,
    result: Option<&RestoreResult>,
    at: u64,
) -> Option<(u64, String)> {
    state.restore_jobs.remove(&job_id);
    let backup = find_backup(state, &job.shard, &job.backup)?;
    let taken_at = backup.taken_at_unix_ms;
    let test = backup.tests.iter_mut().find(|t| t.job == job_id)?;
    test.finished_at_unix_ms = at;
    test.outcome = outcome;
    if let Some(r) = result {
        test.duration_ms = r.duration_ms;
        test.checksum_match = r.checksum_match;
        test.data_check = r.data_check;
    }
    Some((taken_at, test.region.clone()))
}

pub(crate) fn finish_restore(
    state: &mut State,
    job_id: u64,
    controller_id: &str,
    result: &RestoreResult,
    by: &str,
    fx: &mut Effects,
) -> Response {
    let job = match running_job(state, job_id) {
        Ok(job) => job,
        Err(refused) => return refused,
    };
    if job.controller != controller_id {
        return refuse(
            Refusal::PermissionDenied,
            format!("job: restore job {job_id} is held by {}, not by {controller_id}", job.controller),
        );
    }
    if let Err(refused) = speaks_for(state, controller_id, by) {
        return refused;
    }
    let outcome =
        if result.passed { RestoreOutcome::Passed } else { RestoreOutcome::Failed { reason: result.reason.clone() } };
    let Some((taken_at, region)) = end_job(state, job_id, &job, outcome, Some(result), fx.at_unix_ms) else {
        return applied(fx); // its record was trimmed meanwhile
    };
    let (shard, backup) = (&job.shard, &job.backup);
    if result.passed {
        let catalogue = state.backups.entry(shard.clone()).or_default();
        if catalogue.last_verified.as_ref().is_none_or(|v| v.taken_at_unix_ms <= taken_at) {
            catalogue.last_verified = Some(Verified {
                backup: backup.clone(),
                taken_at_unix_ms: taken_at,
                verified_at_unix_ms: fx.at_unix_ms,
                region: region.clone(),
                duration_ms: result.duration_ms,
            });
        }
        let check = result
            .data_check
            .map_or(String::new(), |c| format!("; data check: {} rows, newest sequence {}", c.rows, c.newest_sequence));
        fx.event(
            "backup_verified",
            shard,
            format!("backup {backup} restored in {region} in {} ms (job {job_id}){check}", result.duration_ms),
        );
    } else {
        fx.event(
            "restore_failed",
            shard,
            format!("restore job {job_id} of backup {backup} failed in {region}: {}", result.reason),
        );
    }
    applied(fx)
}

pub(crate) fn abandon_restore(state: &mut State, job_id: u64, reason: &str, by: &str, fx: &mut Effects) -> Response {
    if by != SYSTEM {
        return refuse(Refusal::PermissionDenied, format!("{by} may not abandon restore tests; the coordinator does"));
    }
    let job = match running_job(state, job_id) {
        Ok(job) => job,
        Err(refused) => return refused,
    };
    let outcome = RestoreOutcome::Abandoned { reason: reason.to_string() };
    end_job(state, job_id, &job, outcome, None, fx.at_unix_ms);
    fx.event(
        "restore_abandoned",
        &job.shard,
        format!("restore job {job_id} of backup {} on {} abandoned: {reason}", job.backup, job.controller),
    );
    applied(fx)
}
