//! Backups proven restorable (SPEC §6): the catalogue controllers report
//! into, the restore tests the leader schedules in another region than a
//! backup's source, and what the proofs say against each shard's targets.
//!
//! - `apply`: the transitions — a reported backup (with retention: the
//!   newest `retain`, every one inside the RPO target, at most
//!   [`crate::model::BACKUPS_KEPT_MAX`]), a restore test started, finished, abandoned.
//! - [`schedule`]: [`schedule::plan`], the whole decision of the leader's
//!   backup loop: which running jobs to abandon (past their deadline, or
//!   their controller not heard) and which newest backups to test where
//!   (another region, at most `max_restores_per_region` at once, the
//!   longest-waiting shard first, never a controller that failed it).
//! - [`track`]: per shard, the age of the newest verified backup against the
//!   RPO target, the last restore's duration against the RTO target, and the
//!   rule `verified-backup` planned operations meet.
//!
//! **Invariant:** a backup counts as verified only by a restore test that
//! passed in a region other than its source ([`Backup::verified`]); the
//! state machine refuses a start in the source region, so none is recorded.

mod apply;
pub mod schedule;
pub mod track;

pub(crate) use apply::{abandon_restore, finish_restore, report_backup, start_restore, trim_to_topology};

use crate::model::{Backup, BackupPolicy, BackupReport, RestoreResult};
use crate::state::State;
use crate::vocab::{validate_id, validate_text, InvalidArgument};

/// Longest backup location URI.
pub const LOCATION_MAX_BYTES: usize = 1024;

/// The policy of `shard_key`: its own, else the topology's `backups.policy`.
pub fn policy<'a>(state: &'a State, shard_key: &str) -> &'a BackupPolicy {
    let own = state.shards.get(shard_key).and_then(|s| s.backup_policy.as_ref());
    own.unwrap_or(&state.topology.backups.policy)
}

/// The newest backup of `shard_key` (by when it was taken), if any.
pub fn newest<'a>(state: &'a State, shard_key: &str) -> Option<&'a Backup> {
    state.backups.get(shard_key).and_then(|c| c.backups.last())
}

/// Checks a checksum: `sha256:` and 64 lowercase hex digits.
pub fn validate_checksum(checksum: &str, field: &str) -> Result<(), InvalidArgument> {
    let hex = checksum.strip_prefix("sha256:");
    if hex.is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))) {
        Ok(())
    } else {
        Err(InvalidArgument::new(field, format!("{checksum:?} is not sha256: and 64 lowercase hex digits")))
    }
}

/// Checks a location: `scheme://rest`, a lowercase scheme (RFC 3986), no
/// whitespace or control characters, at most [`LOCATION_MAX_BYTES`].
pub fn validate_location(location: &str, field: &str) -> Result<(), InvalidArgument> {
    let bad = |why: &str| Err(InvalidArgument::new(field, format!("{location:?} {why}")));
    if location.len() > LOCATION_MAX_BYTES {
        return bad(&format!("is longer than {LOCATION_MAX_BYTES} bytes"));
    }
    let Some((scheme, rest)) = location.split_once("://") else {
        return bad("is not a URI (scheme://…)");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return bad("has no valid scheme (lowercase letters, digits, '+', '-', '.')");
    }
    if rest.is_empty() || location.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("has an empty path or whitespace or control characters");
    }
    Ok(())
}

/// Checks every field of a reported backup.
pub fn validate_report(report: &BackupReport) -> Result<(), InvalidArgument> {
    validate_id(&report.id, "backup.id")?;
    validate_id(&report.source_region, "backup.source_region")?;
    if report.taken_at_unix_ms == 0 {
        return Err(InvalidArgument::new("backup.taken_at_unix_ms", "must be set"));
    }
    validate_checksum(&report.checksum, "backup.checksum")?;
    validate_location(&report.location, "backup.location")
}

/// Checks a restore test's result as its controller reports it.
pub fn validate_result(result: &RestoreResult) -> Result<(), InvalidArgument> {
    validate_text(&result.reason, "result.reason")?;
    if result.passed && !result.checksum_match {
        return Err(InvalidArgument::new("result.checksum_match", "a restore that passed must match the checksum"));
    }
    if !result.passed && result.reason.is_empty() {
        return Err(InvalidArgument::new("result.reason", "a failed restore must say why"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
