//! The backup catalogue of SPEC §6, data only: the policy operators declare
//! (in the topology), the backups controllers report, and the restore tests
//! the leader schedules to prove them. The rules are in `crate::backup`.

use serde::{Deserialize, Serialize};

/// Most backups the catalogue keeps per shard, whatever the policy says.
pub const BACKUPS_KEPT_MAX: usize = 64;
/// Restore tests kept per backup (the newest).
pub const TESTS_KEPT: usize = 8;

fn default_verify_within() -> u64 {
    86_400
}
fn default_rpo_target() -> u64 {
    90_000
}
fn default_rto_target() -> u64 {
    3_600
}
fn default_retain() -> u32 {
    7
}
fn default_check_column() -> String {
    "id".to_string()
}
fn default_max_restores() -> u32 {
    2
}
fn default_restore_timeout() -> u64 {
    3_600
}

/// What a shard's backups must prove (topology `backups.policy` for every
/// shard, or a shard's own `backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// The shard's newest backup must pass a restore test within this long
    /// of being reported; 0: no restore tests for this shard.
    #[serde(default = "default_verify_within")]
    pub verify_within_seconds: u64,
    /// RPO target: the newest verified backup was taken at most this long ago.
    #[serde(default = "default_rpo_target")]
    pub rpo_target_seconds: u64,
    /// RTO target: the last passed restore test took at most this long.
    #[serde(default = "default_rto_target")]
    pub rto_target_seconds: u64,
    /// The catalogue keeps at least the newest this many backups (and every
    /// one inside the RPO target, up to [`BACKUPS_KEPT_MAX`]).
    #[serde(default = "default_retain")]
    pub retain: u32,
    /// The rule `verified-backup`: refuse a switchover or drain that would
    /// leave the shard without a backup proven restorable in its target region.
    #[serde(default)]
    pub require_verified_backup: bool,
    /// The table a restore test checks (row count, newest `check_column`);
    /// empty: the restore is checked by its checksum and start alone.
    #[serde(default)]
    pub check_table: String,
    /// The table's sequence column whose newest value the check reports.
    #[serde(default = "default_check_column")]
    pub check_column: String,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        BackupPolicy {
            verify_within_seconds: default_verify_within(),
            rpo_target_seconds: default_rpo_target(),
            rto_target_seconds: default_rto_target(),
            retain: default_retain(),
            require_verified_backup: false,
            check_table: String::new(),
            check_column: default_check_column(),
        }
    }
}

/// The cluster-wide backup settings (topology `backups:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// At most this many restore tests run at once in one region.
    #[serde(default = "default_max_restores")]
    pub max_restores_per_region: u32,
    /// A restore test not finished within this is abandoned and retried elsewhere.
    #[serde(default = "default_restore_timeout")]
    pub restore_timeout_seconds: u64,
    /// The policy of every shard that declares none of its own.
    #[serde(default)]
    pub policy: BackupPolicy,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            max_restores_per_region: default_max_restores(),
            restore_timeout_seconds: default_restore_timeout(),
            policy: BackupPolicy::default(),
        }
    }
}

/// A backup as its controller reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct BackupReport {
    pub id: String,
    /// The region it was taken in: the reporting controller's.
    pub source_region: String,
    pub taken_at_unix_ms: u64,
    pub size_bytes: u64,
    /// `sha256:` and 64 lowercase hex digits.
    pub checksum: String,
    /// Where it is, as a URI (`file:///backups/…`, `s3://…`).
    pub location: String,
}

/// What a restore test's data check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DataCheck {
    pub rows: u64,
    pub newest_sequence: u64,
}

/// A finished restore test as the controller that ran it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RestoreResult {
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reason: String,
    pub duration_ms: u64,
    /// The restored bytes had the reported checksum.
    pub checksum_match: bool,
    /// The data check's answer, when the policy names a table.
    pub data_check: Option<DataCheck>,
}

/// Where a restore test stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RestoreOutcome {
    Running,
    Passed,
    Failed {
        reason: String,
    },
    /// Abandoned by the coordinator: timed out, or its controller was lost.
    Abandoned {
        reason: String,
    },
}

/// One restore test of one backup, in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RestoreTest {
    /// The job id: the log index of the command that started it.
    pub job: u64,
    pub region: String,
    pub controller: String,
    pub started_at_unix_ms: u64,
    pub deadline_unix_ms: u64,
    /// 0 while running.
    pub finished_at_unix_ms: u64,
    pub outcome: RestoreOutcome,
    pub duration_ms: u64,
    pub checksum_match: bool,
    pub data_check: Option<DataCheck>,
}

/// A backup in the catalogue, with its restore tests (the newest
/// [`TESTS_KEPT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Backup {
    pub id: String,
    pub source_region: String,
    /// The controller that reported it.
    pub controller: String,
    pub taken_at_unix_ms: u64,
    pub reported_at_unix_ms: u64,
    pub size_bytes: u64,
    pub checksum: String,
    pub location: String,
    pub tests: Vec<RestoreTest>,
}

impl Backup {
    /// Whether a restore test passed in a region other than its source.
    pub fn verified(&self) -> bool {
        self.tests.iter().any(|t| t.outcome == RestoreOutcome::Passed && t.region != self.source_region)
    }
}

/// The proof of the newest verified backup of a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Verified {
    pub backup: String,
    pub taken_at_unix_ms: u64,
    /// When the restore test that proved it finished.
    pub verified_at_unix_ms: u64,
    pub region: String,
    pub duration_ms: u64,
}

/// One shard's catalogue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ShardBackups {
    /// Oldest first (by `taken_at_unix_ms`, then id).
    pub backups: Vec<Backup>,
    /// The newest verified backup, with the duration of the restore test
    /// that proved it (the RTO target's measure); kept even when its record
    /// is trimmed.
    pub last_verified: Option<Verified>,
}

/// A running restore test: which backup it is for (details in its record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RestoreJob {
    pub shard: String,
    pub backup: String,
    pub controller: String,
    pub region: String,
    pub deadline_unix_ms: u64,
}
