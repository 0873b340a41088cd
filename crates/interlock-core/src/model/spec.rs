//! The declared topology as operators write it in YAML
//! (`interlockctl apply -f topology.yaml`): regions, services, shards,
//! replicas, and the failover and routing policies. Plain data with its
//! defaults; `crate::topology` validates it and applies it to the state.

use super::backups::{BackupPolicy, BackupSettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Highest promotion priority; 0 means "never promote".
pub const PRIORITY_MAX: u32 = 100;
/// Largest region capacity weight.
pub const CAPACITY_MAX: u32 = 1_000_000;
/// Most shards in one topology.
pub const SHARDS_MAX: usize = 100_000;

fn default_capacity() -> u32 {
    100
}
fn default_priority() -> u32 {
    PRIORITY_MAX
}
fn default_cooldown_seconds() -> u64 {
    300
}

/// The whole declared topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub regions: Vec<RegionSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// How region loss is detected and acted on (every field has a default).
    #[serde(default)]
    pub failover: FailoverPolicy,
    /// The safety rules of routing changes (every field has a default).
    #[serde(default)]
    pub routing: RoutingPolicy,
    /// Restore tests and the backup policy of every shard (SPEC §6).
    #[serde(default)]
    pub backups: BackupSettings,
}

/// The cluster-wide failover policy (SPEC §4). In the replicated state, so
/// that every leader acts on the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields, default)]
pub struct FailoverPolicy {
    /// How often controllers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// The detector suspects a controller when phi exceeds this.
    pub phi_threshold: u32,
    /// Floor of the heartbeat-interval standard deviation the detector
    /// assumes (absorbs jitter on quiet links).
    pub min_std_dev_ms: u64,
    /// Pauses the detector tolerates on top of the observed distribution.
    pub acceptable_pause_ms: u64,
    /// Other regions that must also report a suspected region unreachable
    /// before it is declared lost.
    pub witness_quorum: u32,
    /// Most regions that may be LOST at the same time by automatic declaration.
    pub max_lost_regions: u32,
    /// After a leader change, nothing is declared lost for this long.
    pub grace_ms: u64,
    /// A promoted replica's controller must acknowledge within this, or it
    /// is fenced and the next candidate is tried.
    pub promote_ack_timeout_ms: u64,
    /// TTL of the `shard/<service>/<shard>/primary` leases.
    pub primary_lease_ttl_ms: u64,
    /// A lost region whose controllers have all been heard again for this
    /// long becomes RECOVERING.
    pub region_return_ms: u64,
    /// A planned switchover that has not completed within this is aborted.
    pub switchover_timeout_ms: u64,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            heartbeat_interval_ms: 250,
            phi_threshold: 8,
            min_std_dev_ms: 100,
            acceptable_pause_ms: 0,
            witness_quorum: 1,
            max_lost_regions: 1,
            grace_ms: 1_500,
            promote_ack_timeout_ms: 3_000,
            primary_lease_ttl_ms: 2_000,
            region_return_ms: 3_000,
            switchover_timeout_ms: 10_000,
        }
    }
}

/// The routing policy (in the topology file, `routing:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields, default)]
pub struct RoutingPolicy {
    /// At least this many regions must keep a weight above 0 (bounded by the
    /// number of regions that can serve).
    pub min_serving_regions: u32,
    /// No region may carry more than this percentage of its capacity share
    /// (its capacity over the sum of all declared regions' capacities).
    pub capacity_headroom_pct: u32,
    /// A planned change moves no region's weight by more than this per step.
    pub max_step_bps: u32,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy { min_serving_regions: 2, capacity_headroom_pct: 200, max_step_bps: 2_500 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub id: String,
    /// Relative capacity, used to spread traffic freed by a lost region.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub shards: Vec<ShardSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    pub id: String,
    /// The RPO bound: a candidate further behind than this (in position
    /// units, e.g. LSN bytes) is never promoted automatically.
    #[serde(default)]
    pub max_lag_on_failover: u64,
    /// Minimum time between two automatic failovers of this shard.
    #[serde(default = "default_cooldown_seconds")]
    pub cooldown_seconds: u64,
    pub replicas: Vec<ReplicaSpec>,
    /// This shard's backup policy, in place of `backups.policy`.
    #[serde(default)]
    pub backup: Option<BackupPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    pub id: String,
    pub region: String,
    /// Promotion priority, 0 (never) to 100.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Where its database answers (`HOST:PORT`), for clients looking for the
    /// primary and standbys told whom to follow; empty: not declared.
    #[serde(default)]
    pub address: String,
}

impl Topology {
    /// Every declared replica by id, with its service and shard.
    pub fn replicas(&self) -> BTreeMap<&str, (&ServiceSpec, &ShardSpec, &ReplicaSpec)> {
        let mut out = BTreeMap::new();
        for service in &self.services {
            for shard in &service.shards {
                for replica in &shard.replicas {
                    out.insert(replica.id.as_str(), (service, shard, replica));
                }
            }
        }
        out
    }
}
