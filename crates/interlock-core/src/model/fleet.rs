//! The runtime records of the fleet: regions, shards, replicas and the
//! controllers that run them (SPEC §2). Built from the declared topology,
//! then changed only by commands.

use super::backups::BackupPolicy;
use crate::vocab::{PromotionMode, RegionState, ReplicaRole};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Region {
    pub id: String,
    pub capacity: u32,
    pub state: RegionState,
    /// Automation paused for this region.
    pub maintenance: bool,
    /// When it entered its current state (proposer's wall clock).
    pub state_since_unix_ms: u64,
    /// A drain or undrain in progress (state DRAINING).
    pub drain: Option<Drain>,
}

/// A gradual drain (or undrain) of a region, step by step, resumable by any
/// leader: everything it needs is here, in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Drain {
    /// How much of its base weight the region keeps now (10 000 = all).
    pub fraction_bps: u32,
    /// Change per step, in basis points of its base weight.
    pub step_bps: u32,
    pub interval_ms: u64,
    /// true: ramping back up (undrain).
    pub undrain: bool,
    /// When the next step is due (proposer's wall clock).
    pub next_step_at_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Shard {
    pub service: String,
    pub id: String,
    pub max_lag_on_failover: u64,
    pub cooldown_seconds: u64,
    /// +1 on every primary change.
    pub epoch: u64,
    pub primary: Option<String>,
    /// Replica ids, in declaration order.
    pub replicas: Vec<String>,
    /// A promotion waiting for its controller's acknowledgement.
    pub pending: Option<Pending>,
    /// A planned switchover in progress.
    pub switchover: Option<Switchover>,
    /// When the last automatic failover of this shard was committed.
    pub last_auto_failover_unix_ms: Option<u64>,
    /// Why the shard waits for an operator decision, if it does.
    pub awaiting_operator: Option<String>,
    /// Its own backup policy from the topology (None: `backups.policy`).
    pub backup_policy: Option<BackupPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pending {
    pub replica: String,
    pub epoch: u64,
    pub mode: PromotionMode,
    pub since_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Switchover {
    pub from: String,
    pub to: String,
    pub since_unix_ms: u64,
    /// The demoted primary's final position, once its controller acknowledged.
    pub from_position: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Replica {
    pub id: String,
    pub service: String,
    pub shard: String,
    pub region: String,
    pub priority: u32,
    /// Its database's `HOST:PORT` from the topology (empty: not declared).
    pub address: String,
    pub role: ReplicaRole,
    /// The controller that registered it, if any.
    pub controller: Option<String>,
    /// The last (role, epoch) its controller acknowledged having applied.
    pub acked: Option<(ReplicaRole, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Controller {
    pub id: String,
    pub region: String,
    /// The identity it authenticated with (mTLS subject, when TLS is on).
    pub identity: String,
    pub registered_at_unix_ms: u64,
    /// The replicas it runs.
    pub replicas: Vec<String>,
}
