//! The declared topology: regions, services, shards and replicas, as
//! operators write it in YAML (`interlockctl apply -f topology.yaml`).
//!
//! [`Topology::validate`] checks a whole file and reports every problem with
//! the path of the field (`services[0].shards[1].replicas[2].region`); one
//! problem refuses the whole file.

use crate::command::InvalidArgument;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

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
    pub routing: crate::routing::RoutingPolicy,
}

/// The cluster-wide failover policy (SPEC §4). In the replicated state, so
/// that every leader acts on the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl FailoverPolicy {
    /// Every out-of-range field, each named `failover.<field>`.
    pub fn validate(&self) -> Vec<InvalidArgument> {
        let checks: [(&str, u64, u64, u64); 11] = [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms, 50, 60_000),
            ("phi_threshold", self.phi_threshold as u64, 1, 16),
            ("min_std_dev_ms", self.min_std_dev_ms, 1, 60_000),
            ("acceptable_pause_ms", self.acceptable_pause_ms, 0, 600_000),
            ("witness_quorum", self.witness_quorum as u64, 0, 64),
            ("max_lost_regions", self.max_lost_regions as u64, 0, 64),
            ("grace_ms", self.grace_ms, 0, 600_000),
            ("promote_ack_timeout_ms", self.promote_ack_timeout_ms, 100, 600_000),
            ("primary_lease_ttl_ms", self.primary_lease_ttl_ms, crate::lease::TTL_MIN_MS, crate::lease::TTL_MAX_MS),
            ("region_return_ms", self.region_return_ms, 0, 3_600_000),
            ("switchover_timeout_ms", self.switchover_timeout_ms, 500, 600_000),
        ];
        checks
            .into_iter()
            .filter(|(_, v, lo, hi)| v < lo || v > hi)
            .map(|(name, v, lo, hi)| {
                InvalidArgument::new(format!("failover.{name}"), format!("{v} is out of range {lo}..={hi}"))
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub id: String,
    /// Relative capacity, used to spread traffic freed by a lost region.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub shards: Vec<ShardSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    pub id: String,
    pub region: String,
    /// Promotion priority, 0 (never) to 100.
    #[serde(default = "default_priority")]
    pub priority: u32,
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

impl Topology {
    /// Every problem in the file, each naming its field. Empty means valid.
    pub fn validate(&self) -> Vec<InvalidArgument> {
        let mut errors = Vec::new();
        errors.extend(self.failover.validate());
        errors.extend(self.routing.validate());
        let mut push = |r: Result<(), InvalidArgument>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        if self.regions.is_empty() {
            push(Err(InvalidArgument::new("regions", "at least one region must be declared")));
        }
        let mut regions = BTreeSet::new();
        for (i, region) in self.regions.iter().enumerate() {
            let field = format!("regions[{i}]");
            push(validate_id(&region.id, &format!("{field}.id")));
            if !regions.insert(region.id.as_str()) {
                push(Err(InvalidArgument::new(format!("{field}.id"), format!("duplicate region id {:?}", region.id))));
            }
            if region.capacity == 0 || region.capacity > CAPACITY_MAX {
                push(Err(InvalidArgument::new(
                    format!("{field}.capacity"),
                    format!("{} is out of range 1..={CAPACITY_MAX}", region.capacity),
                )));
            }
        }
        let mut services = BTreeSet::new();
        let mut replica_ids = BTreeSet::new();
        let mut shard_count = 0usize;
        for (s, service) in self.services.iter().enumerate() {
            let field = format!("services[{s}]");
            push(validate_id(&service.name, &format!("{field}.name")));
            if !services.insert(service.name.as_str()) {
                push(Err(InvalidArgument::new(
                    format!("{field}.name"),
                    format!("duplicate service {:?}", service.name),
                )));
            }
            let mut shards = BTreeSet::new();
            for (h, shard) in service.shards.iter().enumerate() {
                shard_count += 1;
                let field = format!("{field}.shards[{h}]");
                push(validate_id(&shard.id, &format!("{field}.id")));
                if !shards.insert(shard.id.as_str()) {
                    push(Err(InvalidArgument::new(
                        format!("{field}.id"),
                        format!("duplicate shard {:?} in service {:?}", shard.id, service.name),
                    )));
                }
                if shard.replicas.is_empty() {
                    push(Err(InvalidArgument::new(format!("{field}.replicas"), "a shard needs at least one replica")));
                }
                for (r, replica) in shard.replicas.iter().enumerate() {
                    let field = format!("{field}.replicas[{r}]");
                    push(validate_id(&replica.id, &format!("{field}.id")));
                    if !replica_ids.insert(replica.id.as_str()) {
                        push(Err(InvalidArgument::new(
                            format!("{field}.id"),
                            format!("duplicate replica id {:?} (replica ids are global)", replica.id),
                        )));
                    }
                    if !regions.contains(replica.region.as_str()) {
                        push(Err(InvalidArgument::new(
                            format!("{field}.region"),
                            format!("unknown region {:?}: declare it under regions", replica.region),
                        )));
                    }
                    if replica.priority > PRIORITY_MAX {
                        push(Err(InvalidArgument::new(
                            format!("{field}.priority"),
                            format!("{} is out of range 0..={PRIORITY_MAX}", replica.priority),
                        )));
                    }
                }
            }
        }
        if shard_count > SHARDS_MAX {
            push(Err(InvalidArgument::new("services", format!("{shard_count} shards; the limit is {SHARDS_MAX}"))));
        }
        errors
    }

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn replica(id: &str, region: &str, priority: u32) -> ReplicaSpec {
        ReplicaSpec { id: id.into(), region: region.into(), priority }
    }

    pub(crate) fn sample() -> Topology {
        Topology {
            regions: vec![
                RegionSpec { id: "eu-west".into(), capacity: 100 },
                RegionSpec { id: "us-east".into(), capacity: 100 },
            ],
            services: vec![ServiceSpec {
                name: "orders".into(),
                shards: vec![ShardSpec {
                    id: "0".into(),
                    max_lag_on_failover: 1000,
                    cooldown_seconds: 300,
                    replicas: vec![replica("orders-0-eu", "eu-west", 100), replica("orders-0-us", "us-east", 50)],
                }],
            }],
            failover: FailoverPolicy::default(),
            routing: Default::default(),
        }
    }

    #[test]
    fn the_sample_is_valid() {
        assert_eq!(sample().validate(), vec![]);
    }

    #[test]
    fn every_problem_names_its_field() {
        let mut t = sample();
        t.regions.push(RegionSpec { id: "eu-west".into(), capacity: 0 });
        let shard = &mut t.services[0].shards[0];
        shard.replicas.push(replica("orders-0-eu", "mars", 101));
        let fields: Vec<(String, String)> = t.validate().into_iter().map(|e| (e.field, e.reason)).collect();
        let expect = [
            ("regions[2].id", "duplicate region id"),
            ("regions[2].capacity", "out of range"),
            ("services[0].shards[0].replicas[2].id", "duplicate replica id"),
            ("services[0].shards[0].replicas[2].region", "unknown region \"mars\""),
            ("services[0].shards[0].replicas[2].priority", "101 is out of range"),
        ];
        assert_eq!(fields.len(), expect.len(), "{fields:?}");
        for ((field, reason), (want_field, want_reason)) in fields.iter().zip(expect) {
            assert_eq!(field, want_field);
            assert!(reason.contains(want_reason), "{field}: {reason}");
        }
    }
}
