//! The other records of the replicated state: key-value entries, leases,
//! routing tables and events.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value in the key-value space with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The log index of the command that last wrote this key.
    pub mod_revision: u64,
}

/// A lease as replicated in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub key: String,
    pub holder: String,
    pub ttl_ms: u64,
    /// The log index of the grant: the fencing token.
    pub token: u64,
    /// The proposing leader's wall clock at the grant (for display).
    pub granted_at_unix_ms: u64,
}

/// The routing table of one service (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
