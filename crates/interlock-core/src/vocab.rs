//! The vocabulary every other module speaks: identifiers and their checks,
//! the errors a request can get, the state machine's answer, and the plain
//! enums of the data model. It imports nothing from the crate, so any module
//! may use it without creating a cycle.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identifier of a coordinator node (a Raft member). Never reused.
pub type NodeId = u64;

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

/// The answer of the state machine to one applied command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Response {
    /// The command was applied; `revision` is the log index it was applied at.
    Applied { revision: u64 },
    /// A lease is held: by this grant (token = its index) or, for a repeated
    /// grant by the same holder, by the earlier one.
    Lease { token: u64, ttl_ms: u64 },
    /// The command was refused by the state machine, and changed nothing.
    Refused { code: Refusal, reason: String },
    /// The answers to a [`Command::Batch`], one per command, in order.
    Batch { responses: Vec<Response> },
}

/// The class of a refusal, which the gRPC edge maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
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

/// Whether a region serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RegionState {
    Active,
    Draining,
    Drained,
    Lost,
    Recovering,
}

/// A replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ReplicaRole {
    Primary,
    Replica,
    Fenced,
    Recovering,
}

/// Why a replica was promoted; decides which rules apply (cooldown applies
/// to automatic promotions only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PromotionMode {
    /// By the leader's failover loop (region loss, no primary).
    Automatic,
    /// The last step of a planned switchover (or its abort).
    Switchover,
    /// `interlockctl failover --to`.
    Operator,
}

/// Why a lease ends, which decides when its key is freed (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RevokeReason {
    /// Its holder, authenticated as the identity that took it, says it has
    /// stopped acting: the key is freed at once.
    Released,
    /// Anyone asked to end it (an operator, with approval): the lease stops
    /// being renewable and the key is freed only when the leader's deadline
    /// for it passes, exactly as by expiry — a holder cut off from the
    /// coordinator may still be acting until then.
    Revoked,
    /// The leader's deadline passed without a renewal (proposed by the
    /// coordinator itself only).
    Expired,
}

/// Who proposed a command (`Request::by`): the authenticated identity of the
/// caller, `ANONYMOUS` when TLS is off, or the coordinator's own control
/// loops ([`SYSTEM`]).
pub type Actor = String;

/// The actor of commands the coordinator proposes itself (lease expiry,
/// the failover loop, drain steps). No caller is ever given this identity.
pub const SYSTEM: &str = "";

/// The identity of every caller when TLS is off: nothing is authenticated.
pub const ANONYMOUS: &str = "anonymous";

/// The total of a routing table's weights.
pub const TOTAL_BPS: u32 = 10_000;

/// A safety rule, by the name operators use to override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Rule {
    MinServingRegions,
    CapacityCeiling,
    NeverAllZero,
    MaxStep,
}

impl Rule {
    pub const ALL: [Rule; 4] = [Rule::MinServingRegions, Rule::CapacityCeiling, Rule::NeverAllZero, Rule::MaxStep];

    pub fn name(self) -> &'static str {
        match self {
            Rule::MinServingRegions => "min-serving-regions",
            Rule::CapacityCeiling => "capacity-ceiling",
            Rule::NeverAllZero => "never-all-zero",
            Rule::MaxStep => "max-step",
        }
    }

    pub fn parse(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest free-text field (reasons, event messages), in bytes.
pub const TEXT_MAX_BYTES: usize = 4096;

/// Checks a free-text field's length.
pub fn validate_text(text: &str, field: &str) -> Result<(), InvalidArgument> {
    if text.len() > TEXT_MAX_BYTES {
        return Err(InvalidArgument::new(field, format!("is {} bytes, the limit is {TEXT_MAX_BYTES}", text.len())));
    }
    Ok(())
}

/// Whether an event of `kind` is one that `kinds` asks for: empty asks for
/// every kind; an entry ending in "." is a family ("shard." is every shard.*
/// kind). The watch filter on the server and `interlockctl events` share it.
pub fn kind_selected(kinds: &[String], kind: &str) -> bool {
    kinds.is_empty() || kinds.iter().any(|k| k == kind || (k.ends_with('.') && kind.starts_with(k.as_str())))
}

/// Checks an identifier: 1-63 characters of a-z, 0-9, '-', '_' and '.'.
pub fn validate_id(value: &str, field: &str) -> Result<(), InvalidArgument> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidArgument::new(field, format!("{value:?} must be 1-63 characters of a-z, 0-9, '-', '_', '.'")))
    }
}

/// Checks a `HOST:PORT` to dial: a host, and a port in 1..65535.
pub fn validate_host_port(addr: &str, field: &str) -> Result<(), InvalidArgument> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(InvalidArgument::new(field, format!("{addr:?} is not HOST:PORT")));
    };
    if host.is_empty() || host.contains(char::is_whitespace) || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(InvalidArgument::new(field, format!("{addr:?} is not HOST:PORT with a port in 1..65535")));
    }
    Ok(())
}

/// Checks a `service/shard` key.
pub fn validate_shard_key(key: &str) -> Result<(), InvalidArgument> {
    match key.split_once('/') {
        Some((service, shard)) => validate_id(service, "shard")
            .and_then(|_| validate_id(shard, "shard"))
            .map_err(|_| InvalidArgument::new("shard", format!("{key:?} must be SERVICE/SHARD, each an identifier"))),
        None => Err(InvalidArgument::new("shard", format!("{key:?} must be SERVICE/SHARD"))),
    }
}

/// `service/shard`, the key of a shard everywhere.
pub fn shard_key(service: &str, shard: &str) -> String {
    format!("{service}/{shard}")
}

/// Prefix of the leases the coordinator manages for shard primaries.
pub const PRIMARY_LEASE_PREFIX: &str = "shard/";
const PRIMARY_LEASE_SUFFIX: &str = "/primary";

/// The lease a shard's primary holds: `shard/<service>/<shard>/primary`.
pub fn primary_lease_key(shard_key: &str) -> String {
    format!("{PRIMARY_LEASE_PREFIX}{shard_key}{PRIMARY_LEASE_SUFFIX}")
}

/// The shard key of a primary lease key, if it is one.
pub fn shard_of_primary_lease(lease_key: &str) -> Option<&str> {
    lease_key.strip_prefix(PRIMARY_LEASE_PREFIX)?.strip_suffix(PRIMARY_LEASE_SUFFIX)
}
