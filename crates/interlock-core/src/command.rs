//! What can be proposed to the Raft log and what applying it answers.
//!
//! A [`Request`] wraps a [`Command`] with the proposing leader's wall clock,
//! so that the state machine never has to read one. Validation happens before
//! a command is proposed ([`Command::validate`]); `apply` re-checks nothing
//! that validation guarantees but never panics on any input either.

use crate::kv::{validate_key, VALUE_MAX_BYTES};
use crate::lease::{validate_grant, validate_lease_key};
use crate::model::Topology;
use crate::vocab::{
    validate_id, validate_shard_key, validate_text, InvalidArgument, PromotionMode, RegionState, ReplicaRole,
    RevokeReason, Rule, TOTAL_BPS,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most commands in one [`Command::Batch`].
pub const BATCH_MAX_COMMANDS: usize = 1024;
/// Most key and value bytes in one [`Command::Batch`]: with openraft's 300
/// entries per append, an append of full batches stays well under the
/// transport's message limit.
pub const BATCH_MAX_BYTES: usize = 128 * 1024;

/// One entry of the Raft log's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The proposing leader's wall clock, in milliseconds since the Unix
    /// epoch. The only notion of "now" the state machine has.
    pub at_unix_ms: u64,
    pub command: Command,
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A region controller announces itself and the replicas it runs.
    RegisterController { id: String, region: String, identity: String, replicas: Vec<String> },
    /// Grant `key` to `holder` for `ttl_ms`; the token is this entry's index.
    /// Granting a key the same holder already holds returns its lease.
    LeaseGrant { key: String, holder: String, ttl_ms: u64 },
    /// Free `key`. With a token, only if the lease still has that token.
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
    /// Key-value writes of several clients that reached the leader together,
    /// applied in order in one log entry (see `interlock-server`'s
    /// `proposer`). Only `Put` and `Delete` may be batched: they share the
    /// entry's index as their revision, which a fencing token must not.
    Batch { commands: Vec<Command> },
}

impl Command {
    /// Whether the command may travel in a [`Command::Batch`].
    pub fn is_batchable(&self) -> bool {
        matches!(self, Command::Put { .. } | Command::Delete { .. })
    }

    /// Key and value bytes the command carries, for bounding a batch.
    pub fn kv_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            _ => 0,
        }
    }
}

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
                let bytes: usize = commands.iter().map(Command::kv_bytes).sum();
                if bytes > BATCH_MAX_BYTES {
                    return Err(InvalidArgument::new(
                        "commands",
                        format!("a batch carries {bytes} bytes, the limit is {BATCH_MAX_BYTES}"),
                    ));
                }
                commands.iter().try_for_each(Command::validate)
            }
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
            Command::Batch { commands } => write!(f, "batch of {} key-value writes", commands.len()),
        }
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
