//! Validation of commands: an invalid command must never be proposed, and
//! `apply` refuses one anyway, deterministically. The data is
//! [`crate::model::Command`].

use crate::kv::{validate_key, VALUE_MAX_BYTES};
use crate::lease::{validate_grant, validate_lease_key};
pub use crate::model::{Action, Command, Request, BATCH_MAX_BYTES, BATCH_MAX_COMMANDS};
use crate::model::{ControlOp, StepChange};

/// Shortest life of an approval request, in milliseconds.
pub const APPROVAL_TTL_MIN_MS: u64 = 10_000;
/// Longest life of an approval request: a day.
pub const APPROVAL_TTL_MAX_MS: u64 = 86_400_000;
use crate::vocab::{validate_id, validate_shard_key, validate_text, InvalidArgument, TOTAL_BPS};

impl Command {
    /// Checks every field; an invalid command must never be proposed.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        match self {
            Command::Put { key, value } => {
                validate_key(key)?;
                if value.len() > VALUE_MAX_BYTES {
                    return Err(InvalidArgument::new(
                        "value",
                        format!("is {} bytes, the limit is {VALUE_MAX_BYTES}", value.len()),
                    ));
                }
                Ok(())
            }
            Command::Delete { key } => validate_key(key),
            Command::ApplyTopology { topology } => match crate::topology::validate(topology).into_iter().next() {
                Some(first) => Err(first),
                None => Ok(()),
            },
            Command::RegisterController { id, region, .. } => {
                validate_id(id, "controller_id")?;
                validate_id(region, "region")
            }
            Command::LeaseGrant { key, holder, ttl_ms } => validate_grant(key, holder, *ttl_ms),
            Command::LeaseRevoke { key, .. } => validate_lease_key(key),
            Command::DeclareRegionLost { region, reason } | Command::SetRegionState { region, reason, .. } => {
                validate_id(region, "region")?;
                validate_text(reason, "reason")
            }
            Command::SetMaintenance { region, reason, .. } => {
                if let Some(region) = region {
                    validate_id(region, "region")?;
                }
                validate_text(reason, "reason")
            }
            Command::Promote { shard, replica, reason, .. } | Command::Fence { shard, replica, reason, .. } => {
                validate_shard_key(shard)?;
                validate_id(replica, "replica")?;
                validate_text(reason, "reason")
            }
            Command::Demote { shard, to, reason, .. } => {
                validate_shard_key(shard)?;
                validate_id(to, "to")?;
                validate_text(reason, "reason")
            }
            Command::Acknowledge { replica, .. } => validate_id(replica, "replica"),
            Command::AwaitOperator { shard, reason } => {
                validate_shard_key(shard)?;
                validate_text(reason, "reason")
            }
            Command::Note { kind, subject, message } => {
                validate_text(kind, "kind")?;
                validate_text(subject, "subject")?;
                validate_text(message, "message")
            }
            Command::SetRouting { service, weights, reason, .. } => {
                validate_id(service, "service")?;
                for region in weights.keys() {
                    validate_id(region, "weights")?;
                }
                validate_text(reason, "reason")
            }
            Command::Drain { region, step_bps, interval_ms, reason, .. } => {
                validate_id(region, "region")?;
                if *step_bps == 0 || *step_bps > TOTAL_BPS {
                    return Err(InvalidArgument::new("step", format!("{step_bps} bps is out of range 1..=10000")));
                }
                if *interval_ms < 100 || *interval_ms > 86_400_000 {
                    return Err(InvalidArgument::new(
                        "interval",
                        format!("{interval_ms} ms is out of range 100 ms..=1 day"),
                    ));
                }
                validate_text(reason, "reason")
            }
            Command::DrainStep { region, .. } => validate_id(region, "region"),
            Command::Batch { commands } => {
                if commands.is_empty() || commands.len() > BATCH_MAX_COMMANDS {
                    return Err(InvalidArgument::new(
                        "commands",
                        format!("a batch holds 1..={BATCH_MAX_COMMANDS} commands, not {}", commands.len()),
                    ));
                }
                if let Some(other) = commands.iter().find(|c| !c.is_batchable()) {
                    return Err(InvalidArgument::new("commands", format!("{other} cannot be batched")));
                }
                let bytes: usize = commands.iter().map(Command::batch_bytes).sum();
                if bytes > BATCH_MAX_BYTES {
                    return Err(InvalidArgument::new(
                        "commands",
                        format!("a batch carries {bytes} bytes, the limit is {BATCH_MAX_BYTES}"),
                    ));
                }
                commands.iter().try_for_each(Command::validate)
            }
            Command::RequestApproval { action, reason, ttl_ms } => {
                validate_text(reason, "reason")?;
                if !(APPROVAL_TTL_MIN_MS..=APPROVAL_TTL_MAX_MS).contains(ttl_ms) {
                    return Err(InvalidArgument::new(
                        "ttl",
                        format!("{ttl_ms} ms is out of range {APPROVAL_TTL_MIN_MS}..={APPROVAL_TTL_MAX_MS} ms"),
                    ));
                }
                match action {
                    Action::Command(command) if !command.needs_no_approval_itself() => {
                        Err(InvalidArgument::new("action", format!("{command} cannot be the action of an approval")))
                    }
                    Action::Command(command) => command.validate(),
                    Action::AddMember { id, grpc_addr, region, .. } => {
                        if *id == 0 {
                            return Err(InvalidArgument::new("id", "must be a positive integer"));
                        }
                        validate_text(grpc_addr, "grpc_addr")?;
                        validate_id(region, "region")
                    }
                    Action::RemoveMember { id } if *id == 0 => {
                        Err(InvalidArgument::new("id", "must be a positive integer"))
                    }
                    Action::RemoveMember { .. } => Ok(()),
                }
            }
            Command::Approve { .. } => Ok(()),
            Command::ReportBackup { controller, shard, backup } => {
                validate_id(controller, "controller_id")?;
                validate_shard_key(shard)?;
                crate::backup::validate_report(backup)
            }
            Command::StartRestoreTest { shard, backup, controller } => {
                validate_shard_key(shard)?;
                validate_id(backup, "backup")?;
                validate_id(controller, "controller_id")
            }
            Command::FinishRestoreTest { controller, result, .. } => {
                validate_id(controller, "controller_id")?;
                crate::backup::validate_result(result)
            }
            Command::AbandonRestoreTest { reason, .. } => validate_text(reason, "reason"),
            Command::ApplyRunbook { runbook } => crate::runbook::validate(runbook),
            Command::StartExecution { runbook, params, .. } => {
                validate_id(runbook, "runbook")?;
                for (name, value) in params {
                    validate_id(name, "params")?;
                    validate_text(value, &format!("params.{name}"))?;
                }
                Ok(())
            }
            Command::StepTransition { change, .. } => match change {
                StepChange::Start => Ok(()),
                StepChange::Effect { target, command, .. } => {
                    validate_text(target, "target")?;
                    if !crate::runbook::effect_allowed(command) {
                        return Err(InvalidArgument::new("command", format!("{command} cannot be a step's effect")));
                    }
                    command.validate()
                }
                StepChange::Succeed { detail } | StepChange::Fail { detail } | StepChange::Stuck { detail } => {
                    validate_text(detail, "detail")
                }
                StepChange::HookResult { controller, output, .. } => {
                    validate_id(controller, "controller_id")?;
                    validate_text(output, "output")
                }
            },
            Command::ControlExecution { op, .. } => match op {
                ControlOp::Skip { reason } | ControlOp::Abort { reason } => validate_text(reason, "reason"),
                _ => Ok(()),
            },
            Command::Audit { action, outcome } => {
                validate_text(action, "action")?;
                validate_text(outcome, "outcome")
            }
        }
    }

    /// Whether the command may be the action of an approval: not an approval
    /// itself, an audit record or a batch.
    fn needs_no_approval_itself(&self) -> bool {
        !matches!(
            self,
            Command::RequestApproval { .. } | Command::Approve { .. } | Command::Audit { .. } | Command::Batch { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KEY_MAX_BYTES;

    #[test]
    fn validation_names_the_field_and_the_reason() {
        let cases: &[(Command, Option<(&str, &str)>)] = &[
            (Command::Put { key: "a".into(), value: vec![1] }, None),
            (Command::Put { key: String::new(), value: vec![] }, Some(("key", "must not be empty"))),
            (Command::Delete { key: "x\ny".into() }, Some(("key", "control characters"))),
            (Command::Put { key: "k".repeat(KEY_MAX_BYTES + 1), value: vec![] }, Some(("key", "the limit is 1024"))),
            (
                Command::Put { key: "k".into(), value: vec![0; VALUE_MAX_BYTES + 1] },
                Some(("value", "the limit is 65536")),
            ),
            (Command::Batch { commands: vec![] }, Some(("commands", "1..=1024 commands, not 0"))),
            (
                Command::Batch {
                    commands: vec![Command::Delete { key: "a".into() }, Command::Delete { key: "".into() }],
                },
                Some(("key", "must not be empty")),
            ),
            (
                Command::Batch {
                    commands: vec![Command::Note { kind: "k".into(), subject: "s".into(), message: "m".into() }],
                },
                Some(("commands", "note k about s cannot be batched")),
            ),
            (
                Command::Batch {
                    commands: vec![Command::Batch { commands: vec![Command::Delete { key: "a".into() }] }],
                },
                Some(("commands", "cannot be batched")),
            ),
            (
                Command::Batch { commands: vec![Command::Put { key: "k".into(), value: vec![0; VALUE_MAX_BYTES] }; 2] },
                Some(("commands", "the limit is 131072")),
            ),
        ];
        for (command, expected) in cases {
            match (command.validate(), expected) {
                (Ok(()), None) => {}
                (Err(e), Some((field, reason))) => {
                    assert_eq!(e.field, *field, "{command}");
                    assert!(e.reason.contains(reason), "{command}: {}", e.reason);
                }
                (got, want) => panic!("{command}: got {got:?}, want {want:?}"),
            }
        }
    }
}
