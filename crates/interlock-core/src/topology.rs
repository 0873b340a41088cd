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

impl Topology {
    /// Every problem in the file, each naming its field. Empty means valid.
    pub fn validate(&self) -> Vec<InvalidArgument> {
        let mut errors = Vec::new();
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
