//! The other records of the replicated state: key-value entries, leases,
//! routing tables, events, approvals and the audit trail.

use super::command::Action;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value in the key-value space with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The log index of the command that last wrote this key.
    pub mod_revision: u64,
}

/// A lease as replicated in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Lease {
    pub key: String,
    pub holder: String,
    pub ttl_ms: u64,
    /// The fencing token: the grant's log index, or above it when the grant
    /// shared its entry (strictly increasing in log order, never reused).
    pub token: u64,
    /// The proposing leader's wall clock at the grant (for display).
    pub granted_at_unix_ms: u64,
    /// The identity the lease is bound to: the caller that took it, or for
    /// a shard's primary lease the identity of the replica's controller.
    /// Only it may renew or release the lease.
    pub owner: String,
    /// Revoked by someone other than its holder: no longer renewable, freed
    /// when the leader's deadline for it passes.
    pub revoked: bool,
}

/// The routing table of one service (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Routing {
    pub service: String,
    /// The log index of the last change of `effective`.
    pub version: u64,
    /// Operators' weights, in basis points summing to 10 000.
    pub base: BTreeMap<String, u32>,
    /// What controllers apply: `base` shaped by region states.
    pub effective: BTreeMap<String, u32>,
    /// Proposer's wall clock when `version` was committed.
    pub updated_at_unix_ms: u64,
}

/// One decision, with its reason. Events are versioned by the log index of
/// the command that produced them (`version`) and their order within it (`seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Event {
    pub version: u64,
    pub seq: u32,
    pub at_unix_ms: u64,
    /// Dotted kind, e.g. `lease.expired`, `topology.applied`.
    pub kind: String,
    /// What it is about, e.g. a lease key or a region id.
    pub subject: String,
    pub message: String,
}

/// A dangerous action waiting for (or decided by) a second operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Approval {
    /// The log index of the request.
    pub id: u64,
    pub action: Action,
    pub reason: String,
    pub requested_by: String,
    pub requested_at_unix_ms: u64,
    /// After this (proposer's wall clock) an approval does nothing.
    pub expires_at_unix_ms: u64,
    /// Set once approved.
    pub decision: Option<Decision>,
}

/// Who approved a request, when, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Decision {
    pub by: String,
    pub at_unix_ms: u64,
    /// "applied at revision N", "refused: …", or for a membership change
    /// "approved; the leader carries it out".
    pub outcome: String,
}

/// One entry of the hash-chained audit trail (SPEC §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AuditEntry {
    /// Consecutive from 1, never reused.
    pub seq: u64,
    pub at_unix_ms: u64,
    /// The identity that asked.
    pub by: String,
    /// The command with its arguments.
    pub action: String,
    /// "applied at revision N" or "refused (class): reason".
    pub outcome: String,
    /// The hash of the entry before (of the checkpoint for the oldest kept).
    pub prev_hash: [u8; 32],
    /// SHA-256 over the canonical encoding of every field above.
    pub hash: [u8; 32],
}

/// Where the kept trail starts: the sequence number and hash of the newest
/// entry trimmed from it (0 and zeros: nothing trimmed yet), so the chain
/// stays verifiable after old entries are dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AuditCheckpoint {
    pub seq: u64,
    pub hash: [u8; 32],
}
