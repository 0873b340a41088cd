//! What a shard's backup proofs say against its targets (SPEC §6), and the
//! rule `verified-backup` that planned operations meet.
//!
//! A shard is tracked once it has reported a backup (a shard whose
//! controllers take no backups has nothing to prove); then:
//! - **RPO**: the newest verified backup was taken at most
//!   `rpo_target_seconds` ago (none verified: violated);
//! - **RTO**: the restore test that verified it took at most
//!   `rto_target_seconds`;
//! - **verification**: the newest backup passed a restore test within
//!   `verify_within_seconds` of being reported.

use super::{newest, policy};
use crate::model::{BackupPolicy, RestoreOutcome, Verified};
use crate::state::State;
use crate::vocab::Refusal;

/// The name of the rule that refuses planned operations.
pub const RULE_VERIFIED_BACKUP: &str = "verified-backup";

/// One shard's standing against its backup targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracking {
    pub policy: BackupPolicy,
    /// Backups in the catalogue.
    pub backups: usize,
    pub newest_backup: Option<String>,
    pub last_verified: Option<Verified>,
    /// Now minus the newest verified backup's taken-at.
    pub verified_age_ms: Option<u64>,
    pub rpo_violated: bool,
    pub rto_violated: bool,
    /// The newest backup is still unverified past `verify_within_seconds`.
    pub verify_overdue: bool,
}

impl Tracking {
    /// One line for an operator, naming each violated target.
    pub fn summary(&self) -> String {
        if self.backups == 0 {
            return "no backups reported".to_string();
        }
        let mut problems = Vec::new();
        if self.rpo_violated {
            problems.push(match self.verified_age_ms {
                None => "RPO target missed: no verified backup".to_string(),
                Some(age) => format!(
                    "RPO target missed: the newest verified backup is {} s old (target {} s)",
                    age / 1000,
                    self.policy.rpo_target_seconds
                ),
            });
        }
        if self.rto_violated {
            let took = self.last_verified.as_ref().map_or(0, |v| v.duration_ms);
            problems.push(format!(
                "RTO target missed: the last restore took {} s (target {} s)",
                took / 1000,
                self.policy.rto_target_seconds
            ));
        }
        if self.verify_overdue {
            problems.push(format!(
                "the newest backup is unverified past verify_within ({} s)",
                self.policy.verify_within_seconds
            ));
        }
        if problems.is_empty() {
            "ok".to_string()
        } else {
            problems.join("; ")
        }
    }

    /// Whether a target is missed (only for tracked shards).
    pub fn violated(&self) -> bool {
        self.rpo_violated || self.rto_violated || self.verify_overdue
    }
}

/// `shard_key`'s standing at `now_unix_ms`.
pub fn track(state: &State, shard_key: &str, now_unix_ms: u64) -> Tracking {
    let policy = policy(state, shard_key).clone();
    let catalogue = state.backups.get(shard_key);
    let backups = catalogue.map_or(0, |c| c.backups.len());
    let last_verified = catalogue.and_then(|c| c.last_verified.clone());
    let verified_age_ms = last_verified.as_ref().map(|v| now_unix_ms.saturating_sub(v.taken_at_unix_ms));
    let tracked = backups > 0 && policy.verify_within_seconds > 0;
    let newest = newest(state, shard_key);
    let rpo_violated = tracked && verified_age_ms.is_none_or(|age| age > policy.rpo_target_seconds * 1000);
    let rto_violated =
        tracked && last_verified.as_ref().is_some_and(|v| v.duration_ms > policy.rto_target_seconds * 1000);
    let verify_overdue = tracked
        && newest.is_some_and(|b| {
            !b.verified() && now_unix_ms.saturating_sub(b.reported_at_unix_ms) > policy.verify_within_seconds * 1000
        });
    Tracking {
        newest_backup: newest.map(|b| b.id.clone()),
        policy,
        backups,
        last_verified,
        verified_age_ms,
        rpo_violated,
        rto_violated,
        verify_overdue,
    }
}

/// Whether `shard_key` has a backup in the catalogue proven restorable in
/// `region` (a restore test passed there).
pub fn verified_in(state: &State, shard_key: &str, region: &str) -> bool {
    state.backups.get(shard_key).is_some_and(|c| {
        c.backups.iter().any(|b| {
            b.source_region != region
                && b.tests.iter().any(|t| t.region == region && t.outcome == RestoreOutcome::Passed)
        })
    }) || state.backups.get(shard_key).and_then(|c| c.last_verified.as_ref()).is_some_and(|v| v.region == region)
}

/// The rule `verified-backup` for an operation that moves `shard_key`'s
/// primary (or its traffic) to `target_region`: refused when the shard's
/// policy requires it and no backup of the shard is proven restorable there.
pub fn verified_backup_rule(state: &State, shard_key: &str, target_region: &str) -> Result<(), (Refusal, String)> {
    if !policy(state, shard_key).require_verified_backup || verified_in(state, shard_key, target_region) {
        return Ok(());
    }
    Err((
        Refusal::FailedPrecondition,
        format!(
            "refused by rule {RULE_VERIFIED_BACKUP}: {shard_key} has no backup proven restorable in {target_region} \
             (its policy sets require_verified_backup)"
        ),
    ))
}

/// The rule `verified-backup` for draining `region`: every shard whose
/// primary is there and whose policy requires it must have a backup proven
/// restorable in another region that is not LOST (where its traffic goes).
pub fn drain_rule(state: &State, region: &str) -> Result<(), (Refusal, String)> {
    for (key, shard) in &state.shards {
        let primary_here =
            shard.primary.as_ref().and_then(|p| state.replicas.get(p)).is_some_and(|r| r.region == region);
        if !primary_here || !policy(state, key).require_verified_backup {
            continue;
        }
        let elsewhere = state
            .regions
            .values()
            .filter(|r| r.id != region && r.state != crate::vocab::RegionState::Lost)
            .any(|r| verified_in(state, key, &r.id));
        if !elsewhere {
            return Err((
                Refusal::FailedPrecondition,
                format!(
                    "refused by rule {RULE_VERIFIED_BACKUP}: {key} has its primary in {region} and no backup proven \
                     restorable in another region (its policy sets require_verified_backup)"
                ),
            ));
        }
    }
    Ok(())
}
