//! `get backups` and `get readiness`: the backup catalogue with its restore
//! tests, and readiness per shard and region (SPEC §6).

use crate::output::{table, Printer};
use crate::Failure;
use interlock_client::{Client, ReadinessReport, ShardBackups};
use interlock_proto::v1::ReadinessPart;
use serde_json::{json, Value};

fn shard_json(s: &ShardBackups) -> Value {
    let policy = s.policy.clone().unwrap_or_default();
    json!({
        "service": s.service, "shard": s.shard, "status": s.status,
        "rpo_violated": s.rpo_violated, "rto_violated": s.rto_violated, "verify_overdue": s.verify_overdue,
        "last_verified": if s.last_verified_backup.is_empty() { Value::Null } else { json!({
            "backup": s.last_verified_backup, "taken_at_unix_ms": s.last_verified_taken_at_unix_ms,
            "verified_at_unix_ms": s.last_verified_at_unix_ms, "region": s.last_verified_region,
            "restore_duration_ms": s.last_restore_duration_ms,
        })},
        "policy": {
            "verify_within_seconds": policy.verify_within_seconds, "rpo_target_seconds": policy.rpo_target_seconds,
            "rto_target_seconds": policy.rto_target_seconds, "retain": policy.retain,
            "require_verified_backup": policy.require_verified_backup, "check_table": policy.check_table,
        },
        "backups": s.backups.iter().map(|b| json!({
            "id": b.id, "source_region": b.source_region, "controller": b.controller_id,
            "taken_at_unix_ms": b.taken_at_unix_ms, "size_bytes": b.size_bytes, "checksum": b.checksum,
            "location": b.location, "verified": b.verified,
            "restore_tests": b.restore_tests.iter().map(|t| json!({
                "job": t.job_id, "region": t.region, "controller": t.controller_id, "state": t.state,
                "passed": t.state == "PASSED", "reason": t.reason, "duration_ms": t.duration_ms,
                "checksum_match": t.checksum_match, "started_at_unix_ms": t.started_at_unix_ms,
                "data_check": if t.data_checked {
                    json!({"rows": t.row_count, "newest_sequence": t.newest_sequence})
                } else { Value::Null },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub async fn backups(client: &Client, out: &Printer, name: Option<&str>) -> Result<(), Failure> {
    let (service, shard) = match name {
        None => ("", ""),
        Some(name) => name.split_once('/').unwrap_or((name, "")),
    };
    let shards = client.backups(service, shard).await?;
    let value = json!({"shards": shards.iter().map(shard_json).collect::<Vec<_>>()});
    out.record(&value, || {
        let mut t = table(&["SERVICE/SHARD", "BACKUPS", "NEWEST", "TESTS OF NEWEST", "LAST VERIFIED", "STATUS"]);
        for s in &shards {
            let newest = s.backups.last();
            let tests = newest.map_or("-".to_string(), |b| {
                let each: Vec<String> = b.restore_tests.iter().map(|t| format!("{}:{}", t.region, t.state)).collect();
                if each.is_empty() {
                    "none yet".to_string()
                } else {
                    each.join(",")
                }
            });
            let verified = if s.last_verified_backup.is_empty() {
                "never".to_string()
            } else {
                format!("{} in {} ({} ms)", s.last_verified_backup, s.last_verified_region, s.last_restore_duration_ms)
            };
            t.add_row(vec![
                format!("{}/{}", s.service, s.shard),
                s.backups.len().to_string(),
                newest.map_or("-".to_string(), |b| format!("{} ({})", b.id, b.source_region)),
                tests,
                verified,
                s.status.clone(),
            ]);
        }
        t.to_string()
    })
}

fn parts_json(parts: &[ReadinessPart]) -> Value {
    let map: serde_json::Map<String, Value> = parts
        .iter()
        .map(|p| {
            let score = if p.known { json!(p.score) } else { Value::Null };
            (p.name.clone(), json!({"score": score, "known": p.known, "detail": p.detail}))
        })
        .collect();
    Value::Object(map)
}

fn parts_text(parts: &[ReadinessPart]) -> String {
    let each: Vec<String> = parts
        .iter()
        .map(|p| if p.known { format!("{} {}", p.name, p.score) } else { format!("{} unknown", p.name) })
        .collect();
    each.join(", ")
}

pub async fn readiness(client: &Client, out: &Printer) -> Result<(), Failure> {
    let report: ReadinessReport = client.readiness().await?;
    let value = json!({
        "regions": report.regions.iter().map(|r| json!({
            "region": r.region, "score": r.score, "shards": r.shards, "parts": parts_json(&r.parts),
        })).collect::<Vec<_>>(),
        "shards": report.shards.iter().map(|s| json!({
            "service": s.service, "shard": s.shard, "score": s.score, "parts": parts_json(&s.parts),
            "target_replica": s.target_replica, "target_region": s.target_region,
        })).collect::<Vec<_>>(),
    });
    out.record(&value, || {
        let mut t = table(&["REGION", "SCORE", "PRIMARIES", "PARTS (weakest shard)"]);
        for r in &report.regions {
            t.add_row(vec![r.region.clone(), r.score.to_string(), r.shards.to_string(), parts_text(&r.parts)]);
        }
        let mut s = table(&["SERVICE/SHARD", "SCORE", "FAILS OVER TO", "PARTS"]);
        for shard in &report.shards {
            let target = if shard.target_replica.is_empty() {
                "nobody".to_string()
            } else {
                format!("{} ({})", shard.target_replica, shard.target_region)
            };
            s.add_row(vec![
                format!("{}/{}", shard.service, shard.shard),
                shard.score.to_string(),
                target,
                parts_text(&shard.parts),
            ]);
        }
        format!("{t}\n\n{s}")
    })
}
