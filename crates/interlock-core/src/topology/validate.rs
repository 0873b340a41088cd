//! Validation of a declared topology: every problem in the file, each with
//! the path of its field (`services[0].shards[1].replicas[2].region`); one
//! problem refuses the whole file.

use crate::lease::{TTL_MAX_MS, TTL_MIN_MS};
use crate::model::{
    BackupPolicy, BackupSettings, FailoverPolicy, RoutingPolicy, Topology, BACKUPS_KEPT_MAX, CAPACITY_MAX,
    PRIORITY_MAX, SHARDS_MAX,
};
use crate::vocab::{validate_host_port, validate_id, InvalidArgument, TOTAL_BPS};
use std::collections::BTreeSet;

/// Every problem in the file, each naming its field. Empty means valid.
pub fn validate(topology: &Topology) -> Vec<InvalidArgument> {
    let mut errors = Vec::new();
    errors.extend(failover_policy(&topology.failover));
    errors.extend(routing_policy(&topology.routing));
    errors.extend(backup_settings(&topology.backups));
    let mut push = |r: Result<(), InvalidArgument>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    if topology.regions.is_empty() {
        push(Err(InvalidArgument::new("regions", "at least one region must be declared")));
    }
    let mut regions = BTreeSet::new();
    for (i, region) in topology.regions.iter().enumerate() {
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
    for (s, service) in topology.services.iter().enumerate() {
        let field = format!("services[{s}]");
        push(validate_id(&service.name, &format!("{field}.name")));
        if !services.insert(service.name.as_str()) {
            push(Err(InvalidArgument::new(format!("{field}.name"), format!("duplicate service {:?}", service.name))));
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
            if let Some(policy) = &shard.backup {
                for e in backup_policy(policy, &format!("{field}.backup")) {
                    push(Err(e));
                }
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
                if !replica.address.is_empty() {
                    push(validate_host_port(&replica.address, &format!("{field}.address")));
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

/// Every out-of-range field, each named `failover.<field>`.
fn failover_policy(policy: &FailoverPolicy) -> Vec<InvalidArgument> {
    let checks: [(&str, u64, u64, u64); 11] = [
        ("heartbeat_interval_ms", policy.heartbeat_interval_ms, 50, 60_000),
        ("phi_threshold", policy.phi_threshold as u64, 1, 16),
        ("min_std_dev_ms", policy.min_std_dev_ms, 1, 60_000),
        ("acceptable_pause_ms", policy.acceptable_pause_ms, 0, 600_000),
        ("witness_quorum", policy.witness_quorum as u64, 0, 64),
        ("max_lost_regions", policy.max_lost_regions as u64, 0, 64),
        ("grace_ms", policy.grace_ms, 0, 600_000),
        ("promote_ack_timeout_ms", policy.promote_ack_timeout_ms, 100, 600_000),
        ("primary_lease_ttl_ms", policy.primary_lease_ttl_ms, TTL_MIN_MS, TTL_MAX_MS),
        ("region_return_ms", policy.region_return_ms, 0, 3_600_000),
        ("switchover_timeout_ms", policy.switchover_timeout_ms, 500, 600_000),
    ];
    out_of_range("failover", &checks)
}

fn routing_policy(policy: &RoutingPolicy) -> Vec<InvalidArgument> {
    let mut errors = Vec::new();
    if policy.capacity_headroom_pct < 100 || policy.capacity_headroom_pct > 10_000 {
        errors.push(InvalidArgument::new(
            "routing.capacity_headroom_pct",
            format!("{} is out of range 100..=10000", policy.capacity_headroom_pct),
        ));
    }
    if policy.max_step_bps == 0 || policy.max_step_bps > TOTAL_BPS {
        errors.push(InvalidArgument::new(
            "routing.max_step_bps",
            format!("{} is out of range 1..={TOTAL_BPS}", policy.max_step_bps),
        ));
    }
    errors
}

/// Every out-of-range field of `backups:`, each named `backups.<field>`.
fn backup_settings(settings: &BackupSettings) -> Vec<InvalidArgument> {
    let mut errors = out_of_range(
        "backups",
        &[
            ("max_restores_per_region", u64::from(settings.max_restores_per_region), 1, 1_000),
            ("restore_timeout_seconds", settings.restore_timeout_seconds, 1, 7 * 86_400),
        ],
    );
    errors.extend(backup_policy(&settings.policy, "backups.policy"));
    errors
}

/// Every problem of a backup policy, each named `<at>.<field>`.
fn backup_policy(policy: &BackupPolicy, at: &str) -> Vec<InvalidArgument> {
    let year = 366 * 86_400;
    let mut errors = out_of_range(
        at,
        &[
            ("verify_within_seconds", policy.verify_within_seconds, 0, year),
            ("rpo_target_seconds", policy.rpo_target_seconds, 1, year),
            ("rto_target_seconds", policy.rto_target_seconds, 1, year),
            ("retain", u64::from(policy.retain), 1, BACKUPS_KEPT_MAX as u64),
        ],
    );
    for (name, value) in [("check_table", &policy.check_table), ("check_column", &policy.check_column)] {
        let sql_name = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let parts: Vec<&str> = value.split('.').collect();
        let ok = (value.is_empty() && name == "check_table")
            || (parts.len() <= if name == "check_table" { 2 } else { 1 } && parts.iter().all(|p| sql_name(p)));
        if !ok {
            errors.push(InvalidArgument::new(
                format!("{at}.{name}"),
                format!("{value:?} must be a lowercase SQL name (a-z, 0-9, '_'; a table may be schema.table)"),
            ));
        }
    }
    errors
}

/// `<at>.<name>: V is out of range LO..=HI` for each value outside its range.
fn out_of_range(at: &str, checks: &[(&str, u64, u64, u64)]) -> Vec<InvalidArgument> {
    checks
        .iter()
        .filter(|(_, v, lo, hi)| v < lo || v > hi)
        .map(|(name, v, lo, hi)| {
            InvalidArgument::new(format!("{at}.{name}"), format!("{v} is out of range {lo}..={hi}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RegionSpec, ReplicaSpec};
    use crate::topology::tests::sample;

    #[test]
    fn the_sample_is_valid() {
        assert_eq!(validate(&sample()), vec![]);
    }

    #[test]
    fn every_problem_names_its_field() {
        let mut t = sample();
        t.regions.push(RegionSpec { id: "eu-west".into(), capacity: 0 });
        let shard = &mut t.services[0].shards[0];
        shard.replicas.push(ReplicaSpec {
            id: "orders-0-eu".into(),
            region: "mars".into(),
            priority: 101,
            address: "db-1".into(),
        });
        let fields: Vec<(String, String)> = validate(&t).into_iter().map(|e| (e.field, e.reason)).collect();
        let expect = [
            ("regions[2].id", "duplicate region id"),
            ("regions[2].capacity", "out of range"),
            ("services[0].shards[0].replicas[2].id", "duplicate replica id"),
            ("services[0].shards[0].replicas[2].region", "unknown region \"mars\""),
            ("services[0].shards[0].replicas[2].address", "\"db-1\" is not HOST:PORT"),
            ("services[0].shards[0].replicas[2].priority", "101 is out of range"),
        ];
        assert_eq!(fields.len(), expect.len(), "{fields:?}");
        for ((field, reason), (want_field, want_reason)) in fields.iter().zip(expect) {
            assert_eq!(field, want_field);
            assert!(reason.contains(want_reason), "{field}: {reason}");
        }
    }
}
