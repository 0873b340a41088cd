//! SPEC §6, on the catalogue the observer read near the end of the run:
//!
//! - a backup is verified only by a restore test passed in a region other
//!   than its source (every PASSED test ran elsewhere);
//! - a failed or abandoned test (its controller lost, its deadline passed)
//!   is retried elsewhere: never again on the controller that failed it, and
//!   a newest backup left unverified with such a test long enough has a
//!   later one;
//! - after healing, verification keeps up: each shard's newest verified
//!   backup was taken within `KEEP_UP_MS` of the read;
//! - the proof the shard's readiness is computed from (`last_verified`) is
//!   a real success: a PASSED test of that backup, finished when it says
//!   (and so before the read, which saw it).
//!
//! Times recorded by the leader are on its own clock (offset up to ±5 s,
//! drifting 1%); they are compared with true time only with [`SKEW_MS`] of
//! slack. Backups are stamped by the demo databases in true time.

use crate::controllers::BACKUP_CLOCK_BASE_MS;
use crate::history::History;

/// How far behind the read a shard's newest verified backup may be taken,
/// once the faults are over (backups every 5 s, restore tests immediate).
pub const KEEP_UP_MS: u64 = 20_000;

/// How long a newest backup may stay unverified after a failed test before
/// a retry must have started.
const RETRY_WITHIN_MS: u64 = 10_000;

/// The most a leader's wall clock can be off true time in a run (offset
/// ±5 s, 1% drift over ~100 s), with slack.
const SKEW_MS: u64 = 7_000;

pub fn check(history: &History) -> Vec<String> {
    let Some((read_ms, shards)) = &history.backups_final else {
        return vec!["backups: the observer never read the catalogue".to_string()];
    };
    let read_unix = BACKUP_CLOCK_BASE_MS + read_ms;
    let healed = history.healed_at_ms.map(|h| BACKUP_CLOCK_BASE_MS + h);
    let mut violations = Vec::new();
    for shard in shards {
        let key = format!("{}/{}", shard.service, shard.shard);
        for (i, b) in shard.backups.iter().enumerate() {
            let newest = i + 1 == shard.backups.len();
            for (t, test) in b.restore_tests.iter().enumerate() {
                if test.state == "PASSED" && test.region == b.source_region {
                    violations.push(format!(
                        "backups: {key} backup {} was verified in its own source region {}",
                        b.id, b.source_region
                    ));
                }
                if test.state != "FAILED" && test.state != "ABANDONED" {
                    continue;
                }
                let later = &b.restore_tests[t + 1..];
                if let Some(again) = later.iter().find(|l| l.controller_id == test.controller_id) {
                    violations.push(format!(
                        "backups: {key} backup {} was retried on {} (job {}), which had failed it (job {})",
                        b.id, again.controller_id, again.job_id, test.job_id
                    ));
                }
                let after_heal = healed.is_some_and(|h| test.finished_at_unix_ms > h + SKEW_MS);
                let waited = read_unix.saturating_sub(test.finished_at_unix_ms) > RETRY_WITHIN_MS + SKEW_MS;
                if newest && !b.verified && after_heal && waited && later.is_empty() {
                    violations.push(format!(
                        "backups: {key} newest backup {} has not been retried since job {} ({}: {})",
                        b.id, test.job_id, test.state, test.reason
                    ));
                }
            }
            if b.verified != b.restore_tests.iter().any(|t| t.state == "PASSED" && t.region != b.source_region) {
                violations.push(format!("backups: {key} backup {} says verified = {}", b.id, b.verified));
            }
        }
        if !shard.last_verified_backup.is_empty() {
            let proof = shard.backups.iter().find(|b| b.id == shard.last_verified_backup).and_then(|b| {
                b.restore_tests
                    .iter()
                    .find(|t| t.state == "PASSED" && t.finished_at_unix_ms == shard.last_verified_at_unix_ms)
            });
            let kept = shard.backups.iter().any(|b| b.id == shard.last_verified_backup);
            if kept && proof.is_none() {
                violations.push(format!(
                    "backups: {key} claims {} verified at {} with no passed test then",
                    shard.last_verified_backup, shard.last_verified_at_unix_ms
                ));
            }
        }
        let reported_after_heal = healed.is_some_and(|h| shard.backups.iter().any(|b| b.taken_at_unix_ms > h));
        let behind = read_unix.saturating_sub(shard.last_verified_taken_at_unix_ms);
        if reported_after_heal && behind > KEEP_UP_MS {
            violations.push(format!(
                "backups: {key}'s newest verified backup was taken {behind} ms before the read, after healing ({})",
                shard.status
            ));
        }
    }
    violations
}
