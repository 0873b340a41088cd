//! What can be proposed to the Raft log: a [`Request`] wraps a [`Command`]
//! with the proposing leader's wall clock and the actor, so that the state
//! machine never reads a clock and knows who asked. Data only; validation is
//! in `crate::command`.

use super::backups::{BackupReport, RestoreResult};
use super::runbooks::{ControlOp, RunMode, RunbookSpec, StepChange};
use super::spec::Topology;
use crate::vocab::{Actor, NodeId, PromotionMode, RegionState, ReplicaRole, RevokeReason, Rule, SYSTEM};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most commands in one [`Command::Batch`].
pub const BATCH_MAX_COMMANDS: usize = 1024;
/// Most payload bytes ([`Command::batch_bytes`]) in one [`Command::Batch`]: with openraft's 300
/// entries per append, an append of full batches stays well under the
/// transport's message limit.
pub const BATCH_MAX_BYTES: usize = 128 * 1024;

/// One entry of the Raft log's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Request {
    /// The proposing leader's wall clock, in milliseconds since the Unix
    /// epoch. The only notion of "now" the state machine has.
    pub at_unix_ms: u64,
    /// Who asked for it: the caller's authenticated identity, or
    /// [`crate::vocab::SYSTEM`] for the coordinator's own loops.
    pub by: Actor,
    pub command: Command,
}

impl Request {
    /// A command the coordinator proposes itself.
    pub fn system(at_unix_ms: u64, command: Command) -> Self {
        Request { at_unix_ms, by: SYSTEM.to_string(), command }
    }

    /// A command proposed on behalf of the caller `by`.
    pub fn by(at_unix_ms: u64, by: &str, command: Command) -> Self {
        Request { at_unix_ms, by: by.to_string(), command }
    }
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Command {
    /// Set `key` to `value` in the key-value space.
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key` from the key-value space (a no-op if absent).
    Delete { key: String },
    /// Replace the declared topology (validated as a whole first).
    ApplyTopology { topology: Topology },
    /// A region controller announces itself and the replicas it runs; it is
    /// bound to the identity that registers it (`Request::by`).
    RegisterController { id: String, region: String, replicas: Vec<String> },
    /// Grant `key` to `holder` for `ttl_ms`; the token is this entry's index.
    /// Granting a key the same holder already holds returns its lease.
    LeaseGrant { key: String, holder: String, ttl_ms: u64 },
    /// End the lease on `key` (with a token, only if it still has that
    /// token): released by its holder, revoked by anyone else, or expired by
    /// the coordinator — see [`RevokeReason`] for when the key is freed.
    LeaseRevoke { key: String, token: Option<u64>, reason: RevokeReason },
    /// The leader's failover loop declares `region` lost.
    DeclareRegionLost { region: String, reason: String },
    /// Move `region` to `state` (RECOVERING when a lost region returns;
    /// ACTIVE by an operator).
    SetRegionState { region: String, state: RegionState, reason: String },
    /// Pause (`on`) or resume automation for one region, or for all (None).
    SetMaintenance { region: Option<String>, on: bool, reason: String },
    /// Make `replica` the primary of `shard` (epoch + 1, new lease token),
    /// if the shard is still at `expected_epoch`.
    Promote { shard: String, replica: String, expected_epoch: u64, mode: PromotionMode, reason: String },
    /// First step of a planned switchover: the primary of `shard` becomes a
    /// (read-only) replica; `to` is promoted once it has caught up.
    Demote { shard: String, expected_epoch: u64, to: String, reason: String },
    /// A controller has applied `role` at `epoch` to `replica` (and reports
    /// its position at that moment).
    Acknowledge { replica: String, epoch: u64, role: ReplicaRole, position: u64 },
    /// Take `replica` out of play (a promotion that was never acknowledged).
    Fence { shard: String, replica: String, expected_epoch: u64, reason: String },
    /// Record that `shard` waits for an operator decision, and why.
    AwaitOperator { shard: String, reason: String },
    /// Record an observation that changes nothing (e.g. a coordinator-only
    /// loss of contact), so that it appears in the event log.
    Note { kind: String, subject: String, message: String },
    /// Set the base routing weights of `service` (basis points summing to
    /// 10 000). `overrides` names rules the operator chose to bypass for this
    /// change (audited with `reason`).
    SetRouting { service: String, weights: BTreeMap<String, u32>, overrides: Vec<Rule>, reason: String },
    /// Start draining `region` (or undraining it, with `undrain`), by
    /// `step_bps` of its base weight every `interval_ms`.
    Drain { region: String, undrain: bool, step_bps: u32, interval_ms: u64, reason: String },
    /// One step of the drain of `region`, if its fraction is still `expected_fraction_bps`.
    DrainStep { region: String, expected_fraction_bps: u32 },
    /// Commands of one caller (`Request::by`) that reached the leader
    /// together, applied in order in one log entry, each as if alone (see
    /// `interlock-server`'s `proposer`). Only the commands of
    /// [`Command::is_batchable`]: they take no id from the entry's index but
    /// their revision, and fencing tokens stay unique because a grant or a
    /// promotion after the first in an entry takes the token after the last
    /// one handed out (`lease::next_token`).
    Batch { commands: Vec<Command> },
    /// Ask a second operator to approve a dangerous `action` (SPEC §9); the
    /// request's id is this entry's index. It does nothing once
    /// `ttl_ms` has passed.
    RequestApproval { action: Action, reason: String, ttl_ms: u64 },
    /// Approve request `id`: an operator other than the requester. An
    /// approved command is applied at once, on the requester's behalf.
    Approve { id: u64 },
    /// Controller `controller` (bound to `Request::by`) reports a backup of
    /// `shard` (`service/shard`) taken in its region.
    ReportBackup { controller: String, shard: String, backup: BackupReport },
    /// The leader's backup loop starts a restore test of `backup` on
    /// `controller`, in a region other than the backup's source; the job id
    /// is this entry's index.
    StartRestoreTest { shard: String, backup: String, controller: String },
    /// The controller that holds restore job `job` reports its result.
    FinishRestoreTest { job: u64, controller: String, result: RestoreResult },
    /// The leader's backup loop gives restore job `job` up (timed out, or
    /// its controller is not heard); it is retried elsewhere.
    AbandonRestoreTest { job: u64, reason: String },
    /// Store runbook `runbook` (a new version when one of its name exists).
    ApplyRunbook { runbook: Box<RunbookSpec> },
    /// Start runbook `runbook` with `params`; the execution's id is this
    /// entry's index.
    StartExecution { runbook: String, params: BTreeMap<String, String>, mode: RunMode },
    /// The leader's runbook loop moves step `step` of `execution`; refused
    /// unless the step is at `attempt` (so a step's effect happens once per
    /// attempt, whichever leader proposes it, however often).
    StepTransition { execution: u64, step: u32, attempt: u32, change: StepChange },
    /// An operator acts on `execution` (on its step `step`).
    ControlExecution { execution: u64, step: Option<u32>, op: ControlOp },
    /// Record in the audit trail an action the state machine does not apply
    /// itself: a request refused at the gRPC edge, a membership change the
    /// leader carried out.
    Audit { action: String, outcome: String },
}

/// What a two-person approval is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Action {
    /// A command applied once approved: a failover that accepts data loss,
    /// a routing change that overrides a safety rule, a revoke of another
    /// identity's lease.
    Command(Box<Command>),
    /// Add node `id` (as a learner, then a voter unless `learner_only`).
    AddMember { id: NodeId, grpc_addr: String, region: String, learner_only: bool },
    /// Remove node `id` from the cluster.
    RemoveMember { id: NodeId },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Command(command) => write!(f, "{command}"),
            Action::AddMember { id, grpc_addr, region, learner_only } => {
                let what = if *learner_only { "learner" } else { "member" };
                write!(f, "add node {id} at {grpc_addr} in {region} as a {what}")
            }
            Action::RemoveMember { id } => write!(f, "remove node {id}"),
        }
    }
}

impl Command {
    /// Whether the command may travel in a [`Command::Batch`]: key-value
    /// writes, lease grants and revokes, and the commands a mass failover
    /// is made of (promotions, acknowledgements, fences). Not the commands
    /// whose id is the entry's index (approvals, restore jobs, executions),
    /// nor those that change regions or the topology.
    pub fn is_batchable(&self) -> bool {
        matches!(
            self,
            Command::Put { .. }
                | Command::Delete { .. }
                | Command::LeaseGrant { .. }
                | Command::LeaseRevoke { .. }
                | Command::Promote { .. }
                | Command::Acknowledge { .. }
                | Command::Fence { .. }
        )
    }

    /// Whether the state machine needs to know who proposed the command; a
    /// key-value write's caller is checked at the API and not recorded, so
    /// writes of different callers may share an entry.
    pub fn needs_caller(&self) -> bool {
        !matches!(self, Command::Put { .. } | Command::Delete { .. })
    }

    /// The variable-length bytes a batchable command carries (keys, values,
    /// ids, reasons), for bounding a batch.
    pub fn batch_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::LeaseGrant { key, holder, .. } => key.len() + holder.len(),
            Command::LeaseRevoke { key, .. } => key.len(),
            Command::Promote { shard, replica, reason, .. } | Command::Fence { shard, replica, reason, .. } => {
                shard.len() + replica.len() + reason.len()
            }
            Command::Acknowledge { replica, .. } => replica.len(),
            _ => 0,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, value } => write!(f, "put {key} ({} bytes)", value.len()),
            Command::Delete { key } => write!(f, "delete {key}"),
            Command::ApplyTopology { topology } => {
                write!(f, "apply topology ({} regions, {} services)", topology.regions.len(), topology.services.len())
            }
            Command::RegisterController { id, region, replicas, .. } => {
                write!(f, "register controller {id} in {region} ({} replicas)", replicas.len())
            }
            Command::LeaseGrant { key, holder, ttl_ms } => write!(f, "grant {key} to {holder} for {ttl_ms} ms"),
            Command::LeaseRevoke { key, token, reason } => write!(f, "revoke {key} (token {token:?}, {reason:?})"),
            Command::DeclareRegionLost { region, .. } => write!(f, "declare region {region} lost"),
            Command::SetRegionState { region, state, .. } => write!(f, "region {region} -> {state:?}"),
            Command::SetMaintenance { region, on, .. } => {
                write!(f, "maintenance {} for {}", if *on { "on" } else { "off" }, region.as_deref().unwrap_or("all"))
            }
            Command::Promote { shard, replica, expected_epoch, mode, .. } => {
                write!(f, "promote {replica} in {shard} after epoch {expected_epoch} ({mode:?})")
            }
            Command::Demote { shard, to, .. } => write!(f, "demote the primary of {shard} for {to}"),
            Command::Acknowledge { replica, epoch, role, .. } => {
                write!(f, "{replica} acknowledges {role:?} at epoch {epoch}")
            }
            Command::Fence { shard, replica, .. } => write!(f, "fence {replica} in {shard}"),
            Command::AwaitOperator { shard, .. } => write!(f, "{shard} awaits an operator"),
            Command::Note { kind, subject, .. } => write!(f, "note {kind} about {subject}"),
            Command::SetRouting { service, weights, .. } => write!(f, "set routing of {service} to {weights:?}"),
            Command::Drain { region, undrain, .. } => {
                write!(f, "{} region {region}", if *undrain { "undrain" } else { "drain" })
            }
            Command::DrainStep { region, expected_fraction_bps } => {
                write!(f, "drain step of {region} from {expected_fraction_bps} bps")
            }
            Command::Batch { commands } => write!(f, "batch of {} commands", commands.len()),
            Command::RequestApproval { action, .. } => write!(f, "ask for approval of: {action}"),
            Command::Approve { id } => write!(f, "approve request {id}"),
            Command::Audit { action, .. } => write!(f, "audit {action}"),
            Command::ReportBackup { shard, backup, .. } => write!(f, "report backup {} of {shard}", backup.id),
            Command::StartRestoreTest { shard, backup, controller } => {
                write!(f, "test a restore of backup {backup} of {shard} on {controller}")
            }
            Command::FinishRestoreTest { job, result, .. } => {
                write!(f, "restore job {job} {}", if result.passed { "passed" } else { "failed" })
            }
            Command::AbandonRestoreTest { job, .. } => write!(f, "abandon restore job {job}"),
            Command::ApplyRunbook { runbook } => write!(f, "apply runbook {}", runbook.name),
            Command::StartExecution { runbook, mode, .. } => write!(f, "run runbook {runbook} ({mode:?})"),
            Command::StepTransition { execution, step, attempt, change } => {
                let what = match change {
                    StepChange::Start => "start".to_string(),
                    StepChange::Effect { command, .. } => format!("effect [{command}]"),
                    StepChange::Succeed { .. } => "succeed".to_string(),
                    StepChange::Fail { .. } => "fail".to_string(),
                    StepChange::Stuck { .. } => "stuck".to_string(),
                    StepChange::HookResult { controller, passed, .. } => {
                        format!("hook on {controller} {}", if *passed { "passed" } else { "failed" })
                    }
                };
                write!(f, "execution {execution} step {step} attempt {attempt}: {what}")
            }
            Command::ControlExecution { execution, step, op } => match step {
                Some(step) => write!(f, "{} step {step} of execution {execution}", op.verb()),
                None => write!(f, "{} execution {execution}", op.verb()),
            },
        }
    }
}
