//! Disaster-recovery runbooks and their executions (SPEC §7), data only.
//!
//! A [`RunbookSpec`] is what an operator writes in YAML: parameters, groups
//! of steps, compensating `on_abort` steps. Each step names exactly one
//! kind (`approval:`, `drain:`, `switchover:` …); `${param}` in a string
//! field is replaced by the run's parameter. An [`Execution`] is one run of
//! a runbook: its resolved plan (parameters substituted, groups in order)
//! and the state of every step, every transition a Raft command. The rules
//! are in `crate::runbook`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A runbook as written: `interlockctl runbook apply -f FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct RunbookSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// By parameter name.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// Run one after another (by `after`, else in the order written); the
    /// steps of one group run in parallel.
    pub groups: Vec<GroupSpec>,
    /// Run in order when the execution is aborted or a step fails.
    #[serde(default)]
    pub on_abort: Vec<StepSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamKind,
    /// Used when the run does not give the parameter; none: it is required.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// What a parameter names; a run's value is checked against the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Region,
    /// `service/shard`.
    Shard,
    Service,
    Replica,
    /// Free text (messages).
    String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    /// Groups that must finish first; none: the group written before it.
    #[serde(default)]
    pub after: Option<Vec<String>>,
    pub steps: Vec<StepSpec>,
}

/// One step: a name, a timeout, and exactly one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// Past this the step is STUCK (default per kind, see `crate::runbook`).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub approval: Option<ApprovalStep>,
    #[serde(default)]
    pub maintenance: Option<MaintenanceStep>,
    #[serde(default)]
    pub drain: Option<DrainStep>,
    #[serde(default)]
    pub undrain: Option<DrainStep>,
    #[serde(default)]
    pub switchover: Option<MoveStep>,
    #[serde(default)]
    pub failover: Option<MoveStep>,
    #[serde(default)]
    pub wait_for: Option<Condition>,
    #[serde(default)]
    pub verify_backup: Option<VerifyBackupStep>,
    #[serde(default)]
    pub hook: Option<HookStep>,
    #[serde(default)]
    pub pause: Option<PauseStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ApprovalStep {
    /// The role the approver needs (`operator`).
    pub role: String,
    /// The approver must not be the operator who started the run.
    #[serde(default)]
    pub two_person: bool,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct MaintenanceStep {
    pub region: String,
    pub on: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct DrainStep {
    pub region: String,
    /// Change per step (default 1000 bps, as `interlockctl drain`).
    #[serde(default)]
    pub step_bps: Option<u32>,
    /// Between steps (default 30 s).
    #[serde(default)]
    pub interval_seconds: Option<u64>,
}

/// A switchover or failover: one shard (to a named replica, or the best
/// one), or every primary out of a region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct MoveStep {
    #[serde(default)]
    pub shard: Option<String>,
    /// The replica to promote (with `shard`); none: the best candidate.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub away_from_region: Option<String>,
}

/// What a `wait_for` step (or a hook's success criterion) waits for:
/// exactly one condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Every replica (of a region, or a shard) at most `positions` behind
    /// its shard's primary.
    #[serde(default)]
    pub lag_at_most: Option<LagCondition>,
    /// Every controller of the region heard, every replica reported healthy.
    #[serde(default)]
    pub healthy: Option<RegionRef>,
    /// Every controller applied the current routing of every service (or of
    /// `service`).
    #[serde(default)]
    pub routing_converged: Option<ServiceRef>,
    /// The shard's newest backup (`*`: every shard's) passed a restore test.
    #[serde(default)]
    pub backup_verified: Option<ShardRef>,
    #[serde(default)]
    pub region_state: Option<RegionStateCondition>,
    /// No primary left in the region.
    #[serde(default)]
    pub no_primaries_in: Option<RegionRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct LagCondition {
    pub positions: u64,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub shard: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct RegionRef {
    pub region: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    #[serde(default)]
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ShardRef {
    pub shard: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct RegionStateCondition {
    pub region: String,
    /// `active`, `draining`, `drained`, `lost` or `recovering`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct VerifyBackupStep {
    /// `service/shard`, or `*` for every shard with a backup.
    pub shard: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct HookStep {
    pub region: String,
    pub name: String,
    /// What the coordinator checks after the hook reports success.
    #[serde(default)]
    pub success: Option<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct PauseStep {
    #[serde(default)]
    pub message: String,
}

/// A runbook as stored: its spec and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Runbook {
    pub spec: RunbookSpec,
    /// 1 for the first apply, +1 for each change.
    pub version: u32,
    pub applied_by: String,
    pub applied_at_unix_ms: u64,
}

/// Whether an execution changes production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RunMode {
    Live,
    /// Routing and roles change in the execution's [`DrillCopy`] only.
    Drill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ExecutionState {
    Running,
    /// Running its `on_abort` steps (after an abort, or a failed step).
    Aborting,
    Succeeded,
    /// A step failed; its compensation ran.
    Failed,
    Aborted,
}

impl ExecutionState {
    pub fn is_final(self) -> bool {
        matches!(self, ExecutionState::Succeeded | ExecutionState::Failed | ExecutionState::Aborted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Past its timeout: an operator retries, skips or aborts.
    Stuck,
    Skipped,
}

impl StepState {
    /// Done, as far as the next group is concerned.
    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }
}

/// A step of an execution, resolved: parameters substituted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PlannedStep {
    /// Position of its group in the run order; compensation steps come
    /// after every group, one group each.
    pub group: u32,
    pub group_name: String,
    /// A step of `on_abort`.
    pub compensation: bool,
    pub spec: StepSpec,
    pub timeout_ms: u64,
}

/// An effect a step had: one command, once per (step, attempt, target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StepEffect {
    pub attempt: u32,
    /// What it acted on: a shard key or a region.
    pub target: String,
    /// The command, described.
    pub action: String,
    /// The command itself (as applied, or refused).
    pub command: Box<super::Command>,
    pub revision: u64,
    pub at_unix_ms: u64,
    /// "applied at revision N", or the refusal.
    pub outcome: String,
    /// The replica a switchover or failover made primary, and its region.
    pub replica: String,
    pub region: String,
    /// Positions the promoted replica was behind the best known one (a
    /// failover's data loss; 0 for a switchover).
    pub positions_lost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct StepRun {
    pub state: StepState,
    /// 1 for the first run, +1 per retry (0: never started).
    pub attempt: u32,
    pub started_at_unix_ms: Option<u64>,
    pub finished_at_unix_ms: Option<u64>,
    /// Who moved it last: the coordinator (empty) or an operator.
    pub actor: String,
    /// Who approved it (approval steps), continued it (pauses) or skipped it.
    pub approver: String,
    /// The last thing said about it: why it succeeded, failed, is stuck.
    pub detail: String,
    pub effects: Vec<StepEffect>,
}

/// Production as a drill sees it: a copy of the parts a runbook changes,
/// taken when the drill starts; the drill's steps change only this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DrillCopy {
    /// Shard key → primary replica.
    pub primaries: BTreeMap<String, Option<String>>,
    /// Region → fraction of its base weight it keeps (10 000: all).
    pub fractions: BTreeMap<String, u32>,
    pub maintenance: BTreeMap<String, bool>,
    /// Service → effective weights, recomputed after each drill change.
    pub routing: BTreeMap<String, BTreeMap<String, u32>>,
}

/// What an execution proved, computed when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ExecutionReport {
    /// Start → the last primary moved and writable in its target region
    /// (None: no step moved a primary).
    pub rto_ms: Option<u64>,
    /// Positions lost over every promotion (0: none lost).
    pub rpo_positions: u64,
    /// Regions that received a primary.
    pub target_regions: Vec<String>,
    /// Regions drained or emptied of primaries.
    pub source_regions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Execution {
    /// The log index of the command that started it.
    pub id: u64,
    pub runbook: String,
    pub version: u32,
    pub mode: RunMode,
    pub params: BTreeMap<String, String>,
    pub started_by: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: Option<u64>,
    pub state: ExecutionState,
    /// Why it is aborting, failed or was aborted.
    pub reason: String,
    pub plan: Vec<PlannedStep>,
    /// One per step of `plan`.
    pub steps: Vec<StepRun>,
    pub drill: Option<DrillCopy>,
    pub report: Option<ExecutionReport>,
}

/// A move of one step, proposed by the leader's runbook loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum StepChange {
    /// Start the step (its next attempt).
    Start,
    /// Apply `command` for `target`, once per attempt: live, to production;
    /// in a drill, to the drill copy.
    Effect { target: String, command: Box<super::Command>, positions_lost: u64 },
    /// Its success criterion holds.
    Succeed { detail: String },
    /// It cannot succeed; the execution runs its compensation.
    Fail { detail: String },
    /// Its timeout passed.
    Stuck { detail: String },
    /// The controller `controller` (bound to `Request::by`) ran the step's
    /// hook: whether the hook program succeeded, and what it said. The
    /// coordinator then checks the step's success criterion itself.
    HookResult { controller: String, passed: bool, output: String },
}

/// What an operator does to an execution or one of its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ControlOp {
    /// Pass an approval step.
    Approve,
    /// Continue a pause step.
    Continue,
    /// Run a STUCK step again (its next attempt).
    Retry,
    /// Pass a STUCK step without running it (two-person approval).
    Skip { reason: String },
    /// Stop: run the compensation (again while aborting: stop it too).
    Abort { reason: String },
}

impl ControlOp {
    pub fn verb(&self) -> &'static str {
        match self {
            ControlOp::Approve => "approve",
            ControlOp::Continue => "continue",
            ControlOp::Retry => "retry",
            ControlOp::Skip { .. } => "skip",
            ControlOp::Abort { .. } => "abort",
        }
    }
}
