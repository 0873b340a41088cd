//! The data model of SPEC §2: the records the replicated state is made of,
//! and the declared topology. Plain data: no transitions, no rules (those
//! live in the capability modules), so every layer above may use it.

mod backups;
mod command;
mod fleet;
mod records;
mod runbooks;
mod spec;

pub use backups::{
    Backup, BackupPolicy, BackupReport, BackupSettings, DataCheck, RestoreJob, RestoreOutcome, RestoreResult,
    RestoreTest, ShardBackups, Verified, BACKUPS_KEPT_MAX, TESTS_KEPT,
};
pub use command::{Action, Command, Request, BATCH_MAX_BYTES, BATCH_MAX_COMMANDS};
pub use fleet::{Controller, Drain, Pending, Region, Replica, Shard, Switchover};
pub use records::{Approval, AuditCheckpoint, AuditEntry, Decision, Event, KvEntry, Lease, Routing};
pub use runbooks::{
    ApprovalStep, Condition, ControlOp, DrainStep, DrillCopy, Execution, ExecutionReport, ExecutionState, GroupSpec,
    HookStep, LagCondition, MaintenanceStep, MoveStep, ParamKind, ParamSpec, PauseStep, PlannedStep, RegionRef,
    RegionStateCondition, RunMode, Runbook, RunbookSpec, ServiceRef, ShardRef, StepChange, StepEffect, StepRun,
    StepSpec, StepState, VerifyBackupStep,
};
pub use spec::{
    FailoverPolicy, RegionSpec, ReplicaSpec, RoutingPolicy, ServiceSpec, ShardSpec, Topology, CAPACITY_MAX,
    PRIORITY_MAX, SHARDS_MAX,
};
