//! Conversions between core types and wire types: the one place that knows both.

use crate::v1;
use interlock_core::model::{
    Approval, AuditEntry, BackupPolicy, BackupSettings, Controller, Event, FailoverPolicy, Lease, Region, RegionSpec,
    Replica, ReplicaSpec, RoutingPolicy, ServiceSpec, Shard, ShardSpec, Topology,
};
use interlock_core::vocab::{RegionState, ReplicaRole};

pub fn region_state_name(state: RegionState) -> &'static str {
    match state {
        RegionState::Active => "ACTIVE",
        RegionState::Draining => "DRAINING",
        RegionState::Drained => "DRAINED",
        RegionState::Lost => "LOST",
        RegionState::Recovering => "RECOVERING",
    }
}

pub fn role_name(role: ReplicaRole) -> &'static str {
    match role {
        ReplicaRole::Primary => "PRIMARY",
        ReplicaRole::Replica => "REPLICA",
        ReplicaRole::Fenced => "FENCED",
        ReplicaRole::Recovering => "RECOVERING",
    }
}

impl From<&Topology> for v1::Topology {
    fn from(t: &Topology) -> Self {
        v1::Topology {
            regions: t.regions.iter().map(|r| v1::RegionSpec { id: r.id.clone(), capacity: r.capacity }).collect(),
            services: t
                .services
                .iter()
                .map(|s| v1::ServiceSpec {
                    name: s.name.clone(),
                    shards: s
                        .shards
                        .iter()
                        .map(|h| v1::ShardSpec {
                            id: h.id.clone(),
                            max_lag_on_failover: h.max_lag_on_failover,
                            cooldown_seconds: h.cooldown_seconds,
                            replicas: h
                                .replicas
                                .iter()
                                .map(|r| v1::ReplicaSpec {
                                    id: r.id.clone(),
                                    region: r.region.clone(),
                                    priority: r.priority,
                                    address: r.address.clone(),
                                })
                                .collect(),
                            backup: h.backup.as_ref().map(v1::BackupPolicy::from),
                        })
                        .collect(),
                })
                .collect(),
            failover: Some(v1::FailoverPolicy::from(&t.failover)),
            routing: Some(v1::RoutingPolicy::from(&t.routing)),
            backups: Some(v1::BackupSettings {
                max_restores_per_region: t.backups.max_restores_per_region,
                restore_timeout_seconds: t.backups.restore_timeout_seconds,
                policy: Some(v1::BackupPolicy::from(&t.backups.policy)),
            }),
        }
    }
}

/// Both directions between a core struct and its proto message when they
/// have the same plain (`Copy`) fields: each field is named once.
macro_rules! same_fields {
    ($core:ty, $proto:ty, [$($field:ident),+ $(,)?]) => {
        impl From<&$core> for $proto {
            fn from(x: &$core) -> Self {
                Self { $($field: x.$field),+ }
            }
        }
        impl From<$proto> for $core {
            fn from(x: $proto) -> Self {
                Self { $($field: x.$field),+ }
            }
        }
    };
}

same_fields!(
    FailoverPolicy,
    v1::FailoverPolicy,
    [
        heartbeat_interval_ms,
        phi_threshold,
        min_std_dev_ms,
        acceptable_pause_ms,
        witness_quorum,
        max_lost_regions,
        grace_ms,
        promote_ack_timeout_ms,
        primary_lease_ttl_ms,
        region_return_ms,
        switchover_timeout_ms,
    ]
);
same_fields!(RoutingPolicy, v1::RoutingPolicy, [min_serving_regions, capacity_headroom_pct, max_step_bps]);

impl From<&BackupPolicy> for v1::BackupPolicy {
    fn from(p: &BackupPolicy) -> Self {
        v1::BackupPolicy {
            verify_within_seconds: p.verify_within_seconds,
            rpo_target_seconds: p.rpo_target_seconds,
            rto_target_seconds: p.rto_target_seconds,
            retain: p.retain,
            require_verified_backup: p.require_verified_backup,
            check_table: p.check_table.clone(),
            check_column: p.check_column.clone(),
        }
    }
}

impl From<v1::BackupPolicy> for BackupPolicy {
    fn from(p: v1::BackupPolicy) -> Self {
        BackupPolicy {
            verify_within_seconds: p.verify_within_seconds,
            rpo_target_seconds: p.rpo_target_seconds,
            rto_target_seconds: p.rto_target_seconds,
            retain: p.retain,
            require_verified_backup: p.require_verified_backup,
            check_table: p.check_table,
            check_column: p.check_column,
        }
    }
}

impl From<v1::BackupSettings> for BackupSettings {
    fn from(b: v1::BackupSettings) -> Self {
        BackupSettings {
            max_restores_per_region: b.max_restores_per_region,
            restore_timeout_seconds: b.restore_timeout_seconds,
            policy: b.policy.map(BackupPolicy::from).unwrap_or_default(),
        }
    }
}

impl From<v1::Topology> for Topology {
    fn from(t: v1::Topology) -> Self {
        Topology {
            regions: t.regions.into_iter().map(|r| RegionSpec { id: r.id, capacity: r.capacity }).collect(),
            services: t
                .services
                .into_iter()
                .map(|s| ServiceSpec {
                    name: s.name,
                    shards: s
                        .shards
                        .into_iter()
                        .map(|h| ShardSpec {
                            id: h.id,
                            max_lag_on_failover: h.max_lag_on_failover,
                            cooldown_seconds: h.cooldown_seconds,
                            replicas: h
                                .replicas
                                .into_iter()
                                .map(|r| ReplicaSpec {
                                    id: r.id,
                                    region: r.region,
                                    priority: r.priority,
                                    address: r.address,
                                })
                                .collect(),
                            backup: h.backup.map(BackupPolicy::from),
                        })
                        .collect(),
                })
                .collect(),
            failover: t.failover.map(FailoverPolicy::from).unwrap_or_default(),
            routing: t.routing.map(RoutingPolicy::from).unwrap_or_default(),
            backups: t.backups.map(BackupSettings::from).unwrap_or_default(),
        }
    }
}

impl From<&Region> for v1::Region {
    fn from(r: &Region) -> Self {
        v1::Region {
            id: r.id.clone(),
            capacity: r.capacity,
            state: region_state_name(r.state).to_string(),
            maintenance: r.maintenance,
        }
    }
}

impl From<&Shard> for v1::Shard {
    fn from(s: &Shard) -> Self {
        v1::Shard {
            service: s.service.clone(),
            id: s.id.clone(),
            epoch: s.epoch,
            primary: s.primary.clone().unwrap_or_default(),
            max_lag_on_failover: s.max_lag_on_failover,
            replicas: s.replicas.clone(),
            pending: s.pending.as_ref().map(|p| p.replica.clone()).unwrap_or_default(),
            switchover_to: s.switchover.as_ref().map(|sw| sw.to.clone()).unwrap_or_default(),
            awaiting_operator: s.awaiting_operator.clone().unwrap_or_default(),
            // The leader's verdict needs its observations, the primary's
            // address the replicas: the service fills them in.
            status: String::new(),
            primary_address: String::new(),
        }
    }
}

impl From<&Replica> for v1::Replica {
    fn from(r: &Replica) -> Self {
        v1::Replica {
            id: r.id.clone(),
            service: r.service.clone(),
            shard: r.shard.clone(),
            region: r.region.clone(),
            priority: r.priority,
            address: r.address.clone(),
            role: role_name(r.role).to_string(),
            controller: r.controller.clone().unwrap_or_default(),
            acked_role: r.acked.map(|(role, _)| role_name(role).to_string()).unwrap_or_default(),
            acked_epoch: r.acked.map_or(0, |(_, epoch)| epoch),
            position: None,
            lag: None,
            healthy: None,
        }
    }
}

impl From<&Controller> for v1::ControllerInfo {
    fn from(c: &Controller) -> Self {
        v1::ControllerInfo {
            id: c.id.clone(),
            region: c.region.clone(),
            identity: c.identity.clone(),
            registered_at_unix_ms: c.registered_at_unix_ms,
            replicas: c.replicas.clone(),
            last_heartbeat_ms_ago: None,
        }
    }
}

impl From<&Event> for v1::Event {
    fn from(e: &Event) -> Self {
        v1::Event {
            version: e.version,
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
            kind: e.kind.clone(),
            subject: e.subject.clone(),
            message: e.message.clone(),
        }
    }
}

/// A lease on the wire; `remaining_ms` is the leader's soft state.
pub fn lease_info(l: &Lease, remaining_ms: u64) -> v1::LeaseInfo {
    v1::LeaseInfo {
        key: l.key.clone(),
        holder: l.holder.clone(),
        token: l.token,
        ttl_ms: l.ttl_ms,
        remaining_ms,
        granted_at_unix_ms: l.granted_at_unix_ms,
        owner: l.owner.clone(),
        revoked: l.revoked,
    }
}

/// An audit entry on the wire.
pub fn audit_entry(e: &AuditEntry) -> v1::AuditEntry {
    v1::AuditEntry {
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        by: e.by.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        prev_hash: e.prev_hash.to_vec(),
        hash: e.hash.to_vec(),
    }
}

/// An audit entry from the wire; `None` if a hash is not 32 bytes.
pub fn audit_entry_from(e: &v1::AuditEntry) -> Option<AuditEntry> {
    Some(AuditEntry {
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        by: e.by.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        prev_hash: e.prev_hash.as_slice().try_into().ok()?,
        hash: e.hash.as_slice().try_into().ok()?,
    })
}

/// An approval on the wire, its status judged at `now_unix_ms`.
pub fn approval(a: &Approval, now_unix_ms: u64) -> v1::Approval {
    let status = match &a.decision {
        Some(_) => "approved",
        None if now_unix_ms > a.expires_at_unix_ms => "expired",
        None => "pending",
    };
    v1::Approval {
        id: a.id,
        action: a.action.to_string(),
        reason: a.reason.clone(),
        requested_by: a.requested_by.clone(),
        requested_at_unix_ms: a.requested_at_unix_ms,
        expires_at_unix_ms: a.expires_at_unix_ms,
        status: status.to_string(),
        approved_by: a.decision.as_ref().map(|d| d.by.clone()).unwrap_or_default(),
        outcome: a.decision.as_ref().map(|d| d.outcome.clone()).unwrap_or_default(),
    }
}

/// A role from its wire name.
pub fn parse_role(name: &str) -> Option<ReplicaRole> {
    [ReplicaRole::Primary, ReplicaRole::Replica, ReplicaRole::Fenced, ReplicaRole::Recovering]
        .into_iter()
        .find(|r| role_name(*r) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_survive_the_round_trip_through_proto() {
        let mut topology = Topology::default();
        // Every field moved off its default, each to a different value.
        topology.failover = FailoverPolicy {
            heartbeat_interval_ms: 1,
            phi_threshold: 2,
            min_std_dev_ms: 3,
            acceptable_pause_ms: 4,
            witness_quorum: 5,
            max_lost_regions: 6,
            grace_ms: 7,
            promote_ack_timeout_ms: 8,
            primary_lease_ttl_ms: 9,
            region_return_ms: 10,
            switchover_timeout_ms: 11,
        };
        topology.routing = RoutingPolicy { min_serving_regions: 12, capacity_headroom_pct: 13, max_step_bps: 14 };
        assert_eq!(Topology::from(v1::Topology::from(&topology)), topology);
    }
}

/// The restore tests `controller` holds, as its assignment carries them.
pub fn restore_jobs(state: &interlock_core::State, controller: &str) -> Vec<v1::RestoreJob> {
    state
        .restore_jobs
        .iter()
        .filter(|(_, job)| job.controller == controller)
        .filter_map(|(id, job)| {
            let backup = state.backups.get(&job.shard)?.backups.iter().find(|b| b.id == job.backup)?;
            let policy = interlock_core::backup::policy(state, &job.shard);
            let (service, shard) = job.shard.split_once('/').unwrap_or((&job.shard, ""));
            Some(v1::RestoreJob {
                job_id: *id,
                service: service.to_string(),
                shard: shard.to_string(),
                backup_id: backup.id.clone(),
                source_region: backup.source_region.clone(),
                location: backup.location.clone(),
                checksum: backup.checksum.clone(),
                size_bytes: backup.size_bytes,
                deadline_unix_ms: job.deadline_unix_ms,
                check_table: policy.check_table.clone(),
                check_column: policy.check_column.clone(),
            })
        })
        .collect()
}

fn restore_test(t: &interlock_core::model::RestoreTest) -> v1::RestoreTest {
    use interlock_core::model::RestoreOutcome;
    let (state, reason) = match &t.outcome {
        RestoreOutcome::Running => ("RUNNING", String::new()),
        RestoreOutcome::Passed => ("PASSED", String::new()),
        RestoreOutcome::Failed { reason } => ("FAILED", reason.clone()),
        RestoreOutcome::Abandoned { reason } => ("ABANDONED", reason.clone()),
    };
    v1::RestoreTest {
        job_id: t.job,
        region: t.region.clone(),
        controller_id: t.controller.clone(),
        state: state.to_string(),
        reason,
        started_at_unix_ms: t.started_at_unix_ms,
        deadline_unix_ms: t.deadline_unix_ms,
        finished_at_unix_ms: t.finished_at_unix_ms,
        duration_ms: t.duration_ms,
        checksum_match: t.checksum_match,
        data_checked: t.data_check.is_some(),
        row_count: t.data_check.map_or(0, |c| c.rows),
        newest_sequence: t.data_check.map_or(0, |c| c.newest_sequence),
    }
}

/// One shard's catalogue and its standing at `now_unix_ms`.
pub fn shard_backups(state: &interlock_core::State, key: &str, now_unix_ms: u64) -> v1::ShardBackups {
    let tracking = interlock_core::backup::track::track(state, key, now_unix_ms);
    let backups = state.backups.get(key).map(|c| c.backups.as_slice()).unwrap_or_default();
    let (service, shard) = key.split_once('/').unwrap_or((key, ""));
    let verified = tracking.last_verified.clone().unwrap_or_default();
    v1::ShardBackups {
        service: service.to_string(),
        shard: shard.to_string(),
        backups: backups
            .iter()
            .map(|b| v1::Backup {
                id: b.id.clone(),
                source_region: b.source_region.clone(),
                controller_id: b.controller.clone(),
                taken_at_unix_ms: b.taken_at_unix_ms,
                reported_at_unix_ms: b.reported_at_unix_ms,
                size_bytes: b.size_bytes,
                checksum: b.checksum.clone(),
                location: b.location.clone(),
                verified: b.verified(),
                restore_tests: b.tests.iter().map(restore_test).collect(),
            })
            .collect(),
        last_verified_backup: verified.backup,
        last_verified_taken_at_unix_ms: verified.taken_at_unix_ms,
        last_verified_at_unix_ms: verified.verified_at_unix_ms,
        last_verified_region: verified.region,
        last_restore_duration_ms: verified.duration_ms,
        rpo_violated: tracking.rpo_violated,
        rto_violated: tracking.rto_violated,
        verify_overdue: tracking.verify_overdue,
        status: tracking.summary(),
        policy: Some(v1::BackupPolicy::from(&tracking.policy)),
    }
}

/// The parts of a readiness score.
pub fn readiness_parts(r: &interlock_core::failover::readiness::Readiness) -> Vec<v1::ReadinessPart> {
    r.parts
        .iter()
        .map(|p| v1::ReadinessPart {
            name: p.name.to_string(),
            known: p.score.is_some(),
            score: p.score.unwrap_or(0),
            detail: p.detail.clone(),
        })
        .collect()
}

/// Readiness of every shard and every region, with their parts.
pub fn readiness_report(
    s: &interlock_core::State,
    obs: &interlock_core::failover::Observations,
) -> v1::ReadinessReport {
    use interlock_core::failover::readiness;
    let per_shard: Vec<readiness::ShardReadiness> =
        s.shards.keys().filter_map(|k| readiness::of_shard(s, obs, k)).collect();
    let shards = per_shard
        .iter()
        .map(|r| {
            let (service, shard) = r.shard.split_once('/').unwrap_or((&r.shard, ""));
            let (target_replica, target_region) = r.target.clone().unwrap_or_default();
            v1::ShardReadiness {
                service: service.to_string(),
                shard: shard.to_string(),
                score: r.readiness.score,
                parts: readiness_parts(&r.readiness),
                target_replica,
                target_region,
            }
        })
        .collect();
    let regions = s
        .regions
        .keys()
        .map(|region| {
            let held: Vec<&readiness::ShardReadiness> = per_shard
                .iter()
                .filter(|r| {
                    let primary = s.shards.get(&r.shard).and_then(|sh| sh.primary.as_ref());
                    primary.and_then(|p| s.replicas.get(p)).is_some_and(|p| &p.region == region)
                })
                .collect();
            let readiness = readiness::of_region(&held);
            v1::RegionReadiness {
                region: region.clone(),
                score: readiness.score,
                parts: readiness_parts(&readiness),
                shards: held.len() as u32,
            }
        })
        .collect();
    v1::ReadinessReport { shards, regions, revision: s.revision }
}

/// A runbook's summary, with its stored form as `yaml`.
pub fn runbook_info(r: &interlock_core::model::Runbook, yaml: String) -> v1::RunbookInfo {
    let params = r
        .spec
        .params
        .iter()
        .map(|(name, p)| v1::RunbookParam {
            name: name.clone(),
            r#type: format!("{:?}", p.kind).to_lowercase(),
            default: p.default.clone().unwrap_or_default(),
            required: p.default.is_none(),
            description: p.description.clone(),
        })
        .collect();
    v1::RunbookInfo {
        name: r.spec.name.clone(),
        version: r.version,
        description: r.spec.description.clone(),
        yaml,
        applied_by: r.applied_by.clone(),
        applied_at_unix_ms: r.applied_at_unix_ms,
        params,
        steps: r.spec.groups.iter().map(|g| g.steps.len() as u32).sum::<u32>() + r.spec.on_abort.len() as u32,
    }
}

/// A step state as shown to operators: `STUCK`, `RUNNING`, …
pub fn step_state_name(state: interlock_core::model::StepState) -> String {
    format!("{state:?}").to_uppercase()
}

/// An execution with every step and its report.
pub fn execution_info(e: &interlock_core::model::Execution) -> v1::ExecutionInfo {
    use interlock_core::model::RunMode;
    let steps = e
        .plan
        .iter()
        .zip(&e.steps)
        .enumerate()
        .map(|(i, (p, r))| v1::StepStatus {
            index: i as u32,
            group: p.group_name.clone(),
            name: p.spec.name.clone(),
            kind: interlock_core::runbook::kind(&p.spec).unwrap_or("").to_string(),
            state: step_state_name(r.state),
            attempt: r.attempt,
            started_at_unix_ms: r.started_at_unix_ms.unwrap_or(0),
            finished_at_unix_ms: r.finished_at_unix_ms.unwrap_or(0),
            duration_ms: match (r.started_at_unix_ms, r.finished_at_unix_ms) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            },
            actor: r.actor.clone(),
            approver: r.approver.clone(),
            detail: r.detail.clone(),
            effects: r
                .effects
                .iter()
                .map(|x| v1::StepEffectInfo {
                    attempt: x.attempt,
                    target: x.target.clone(),
                    action: x.action.clone(),
                    revision: x.revision,
                    at_unix_ms: x.at_unix_ms,
                    outcome: x.outcome.clone(),
                    replica: x.replica.clone(),
                    region: x.region.clone(),
                    positions_lost: x.positions_lost,
                })
                .collect(),
            compensation: p.compensation,
            timeout_ms: p.timeout_ms,
        })
        .collect();
    let report = e.report.clone().unwrap_or_else(|| interlock_core::runbook::report::measure(e));
    v1::ExecutionInfo {
        id: e.id,
        runbook: e.runbook.clone(),
        version: e.version,
        mode: if e.mode == RunMode::Drill { "drill" } else { "live" }.to_string(),
        params: e.params.clone().into_iter().collect(),
        state: format!("{:?}", e.state).to_uppercase(),
        r#final: e.state.is_final(),
        started_by: e.started_by.clone(),
        started_at_unix_ms: e.started_at_unix_ms,
        finished_at_unix_ms: e.finished_at_unix_ms.unwrap_or(0),
        reason: e.reason.clone(),
        steps,
        rto_measured: report.rto_ms.is_some(),
        rto_ms: report.rto_ms.unwrap_or(0),
        rpo_positions: report.rpo_positions,
        source_regions: report.source_regions,
        target_regions: report.target_regions,
        report_markdown: interlock_core::runbook::report::markdown(e),
    }
}

/// The runbook hooks `controller` is to run now.
pub fn hook_jobs(state: &interlock_core::State, controller: &str) -> Vec<v1::HookJob> {
    interlock_core::runbook::drive::hook_jobs(state, controller)
        .into_iter()
        .map(|j| v1::HookJob {
            execution_id: j.execution,
            runbook: j.runbook,
            step: j.step,
            attempt: j.attempt,
            name: j.name,
            drill: j.drill,
            params: j.params.into_iter().collect(),
            restores: verified_restores(state, controller, j.execution),
        })
        .collect()
}

/// The newest verified backup of each shard `controller` runs a replica of,
/// as restore jobs numbered `job_id`.
fn verified_restores(state: &interlock_core::State, controller: &str, job_id: u64) -> Vec<v1::RestoreJob> {
    let Some(c) = state.controllers.get(controller) else { return Vec::new() };
    let mut shards: Vec<String> = c
        .replicas
        .iter()
        .filter_map(|r| state.replicas.get(r))
        .map(|r| interlock_core::vocab::shard_key(&r.service, &r.shard))
        .collect();
    shards.dedup();
    shards
        .iter()
        .filter_map(|key| {
            let catalogue = state.backups.get(key)?;
            let verified = catalogue.last_verified.as_ref()?;
            let backup = catalogue.backups.iter().find(|b| b.id == verified.backup)?;
            let policy = interlock_core::backup::policy(state, key);
            let (service, shard) = key.split_once('/').unwrap_or((key, ""));
            Some(v1::RestoreJob {
                job_id,
                service: service.to_string(),
                shard: shard.to_string(),
                backup_id: backup.id.clone(),
                source_region: backup.source_region.clone(),
                location: backup.location.clone(),
                checksum: backup.checksum.clone(),
                size_bytes: backup.size_bytes,
                deadline_unix_ms: 0,
                check_table: policy.check_table.clone(),
                check_column: policy.check_column.clone(),
            })
        })
        .collect()
}
