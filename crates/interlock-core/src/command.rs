//! What can be proposed to the Raft log and what applying it answers.
//!
//! A [`Request`] wraps a [`Command`] with the proposing leader's wall clock,
//! so that the state machine never has to read one. Validation happens before
//! a command is proposed ([`Command::validate`]); `apply` re-checks nothing
//! that validation guarantees but never panics on any input either.

use crate::lease::RevokeReason;
use crate::topology::Topology;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest key accepted in the key-value space, in bytes.
pub const KEY_MAX_BYTES: usize = 1024;
/// Largest value accepted in the key-value space, in bytes. Small on purpose:
/// a Raft append carries up to 300 entries and must stay well under the
/// transport's message limit.
pub const VALUE_MAX_BYTES: usize = 64 * 1024;

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
}

/// The answer of the state machine to one applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command was applied; `revision` is the log index it was applied at.
    Applied { revision: u64 },
    /// A lease is held: by this grant (token = its index) or, for a repeated
    /// grant by the same holder, by the earlier one.
    Lease { token: u64, ttl_ms: u64 },
    /// The command was refused by the state machine, and changed nothing.
    Refused { code: Refusal, reason: String },
}

/// The class of a refusal, which the gRPC edge maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    InvalidArgument,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
}

impl Response {
    pub fn refused(code: Refusal, reason: impl Into<String>) -> Response {
        Response::Refused { code, reason: reason.into() }
    }
}

/// A request field that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidArgument {
    /// The name of the offending field, as the caller spelled it.
    pub field: String,
    /// Why the value was refused.
    pub reason: String,
}

impl InvalidArgument {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

/// Checks a key of the key-value space.
pub fn validate_key(key: &str) -> Result<(), InvalidArgument> {
    if key.is_empty() {
        return Err(InvalidArgument::new("key", "must not be empty"));
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(InvalidArgument::new("key", format!("is {} bytes, the limit is {KEY_MAX_BYTES}", key.len())));
    }
    if key.chars().any(char::is_control) {
        return Err(InvalidArgument::new("key", "must not contain control characters"));
    }
    Ok(())
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
            Command::ApplyTopology { topology } => match topology.validate().into_iter().next() {
                Some(first) => Err(first),
                None => Ok(()),
            },
            Command::RegisterController { id, region, .. } => {
                crate::topology::validate_id(id, "controller_id")?;
                crate::topology::validate_id(region, "region")
            }
            Command::LeaseGrant { key, holder, ttl_ms } => crate::lease::validate_grant(key, holder, *ttl_ms),
            Command::LeaseRevoke { key, .. } => crate::lease::validate_lease_key(key),
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
