//! Backups proven restorable, with real processes (SPEC §6): three nodes and
//! three reference agents on the demo driver; eu-west's and us-east's back
//! up the shards they run as primary every second into a shared directory
//! (ap-south's has no backup store, so its restore tests fail and are
//! retried elsewhere). The leader has each newest backup restored by an
//! agent of another region; `interlockctl get backups -o json` shows where
//! each backup was taken and where its restore tests ran; readiness shows
//! its parts; the rule `verified-backup` refuses a switchover to ap-south
//! (exit 4); bad reports are refused naming the field, and change nothing.

use interlock_client::{ClientError, ReportBackupRequest, RestoreResultRequest};
use interlock_tests::{eventually, sample_topology, ClusterOptions, TestAgent, TestCluster, OPERATOR};
use serde_json::Value;
use std::time::Duration;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// `interlockctl ARGS -o json` as the first operator: its exit code and output.
fn ctl_json(cluster: &TestCluster, args: &[&str]) -> (i32, Value, String) {
    cluster.ctl_json(OPERATOR, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_backups_are_restored_in_another_region_and_bad_reports_are_refused() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let mut topology = sample_topology();
    topology.backups.policy.check_table = "orders".into();
    topology.backups.policy.verify_within_seconds = 60;
    topology.backups.policy.retain = 3;
    topology.backups.policy.require_verified_backup = true;
    cluster.client().apply_topology(&topology, false).await.expect("apply");
    let backup_dir = cluster.dir.path().join("backups");
    let extra = format!("backup_every_seconds = 1\nbackup_dir = {:?}\n", backup_dir.display().to_string());
    let _agents: Vec<TestAgent> = REGIONS
        .iter()
        .map(|r| TestAgent::start_with(&cluster, r, if *r == "ap-south" { "" } else { &extra }))
        .collect();

    // A backup taken in the primary's region, verified by a restore elsewhere.
    let mut shard = Value::Null;
    eventually("a backup verified in another region", Duration::from_secs(60), || {
        let (code, value, _) = ctl_json(&cluster, &["get", "backups", "orders/0"]);
        shard = value["shards"][0].clone();
        let verified = code == 0
            && shard["backups"].as_array().is_some_and(|backups| {
                backups.iter().any(|b| {
                    b["verified"] == true
                        && b["restore_tests"].as_array().is_some_and(|tests| {
                            tests.iter().any(|t| t["passed"] == true && t["region"] != b["source_region"])
                        })
                })
            });
        std::future::ready(verified)
    })
    .await;
    let primary = cluster.client().shards().await.expect("shards")[0].primary.clone();
    let backups = shard["backups"].as_array().expect("backups");
    assert!(backups.len() <= 3 + 1, "retention keeps the newest 3 (and those inside the RPO target): {shard}");
    for b in backups {
        assert!(b["id"].as_str().is_some_and(|id| id.starts_with(&primary)), "taken by the primary: {b}");
        assert!(b["location"].as_str().is_some_and(|l| l.starts_with("file:///")), "{b}");
        for t in b["restore_tests"].as_array().expect("tests") {
            assert_ne!(t["region"], b["source_region"], "a restore test never runs in the source region: {b}");
        }
    }
    let passed = backups
        .iter()
        .flat_map(|b| b["restore_tests"].as_array().cloned().unwrap_or_default())
        .find(|t| t["passed"] == true)
        .expect("a passed test");
    assert!(passed["data_check"]["rows"].as_u64().is_some(), "the data check answered: {passed}");
    assert!(shard["last_verified"]["restore_duration_ms"].as_u64().is_some(), "{shard}");
    assert_eq!(shard["status"], "ok", "{shard}");

    // ap-south cannot restore: its tests fail and are retried elsewhere, and
    // a switchover there is refused by the rule (exit 4, named).
    let tests: Vec<Value> =
        backups.iter().flat_map(|b| b["restore_tests"].as_array().cloned().unwrap_or_default()).collect();
    for t in tests.iter().filter(|t| t["region"] == "ap-south") {
        assert_eq!(t["state"], "FAILED", "{t}");
        assert!(t["reason"].as_str().is_some_and(|r| r.contains("no backup store")), "{t}");
    }
    let (code, _, text) = ctl_json(&cluster, &["switchover", "orders/0", "--to", "o0-ap", "--yes"]);
    assert_eq!(code, 4, "{text}");
    assert!(text.contains("verified-backup") && text.contains("ap-south"), "{text}");

    // Readiness: one score per shard and region, its parts shown.
    let (code, readiness, text) = ctl_json(&cluster, &["get", "readiness"]);
    assert_eq!(code, 0, "{text}");
    let orders0 = readiness["shards"].as_array().expect("shards").iter().find(|s| s["shard"] == "0").cloned();
    let orders0 = orders0.expect("orders/0");
    assert!(orders0["parts"]["restore"]["score"].as_u64().is_some_and(|s| s > 0), "{orders0}");
    assert_eq!(orders0["parts"]["drill"]["known"], false, "no drills yet: {orders0}");
    assert!(orders0["target_region"].as_str().is_some_and(|r| !r.is_empty()), "{orders0}");
    assert_eq!(readiness["regions"].as_array().map(Vec::len), Some(3), "{readiness}");

    // Bad reports: refused, naming the field; the catalogue is unchanged.
    let us = cluster.client_as("ctl-us-east");
    let good = ReportBackupRequest {
        controller_id: "ctl-us-east".into(),
        service: "orders".into(),
        shard: "0".into(),
        backup_id: "forged".into(),
        source_region: "us-east".into(),
        taken_at_unix_ms: 1,
        size_bytes: 1,
        checksum: format!("sha256:{}", "0".repeat(64)),
        location: "file:///tmp/forged".into(),
    };
    let cases = [
        (ReportBackupRequest { source_region: "eu-west".into(), ..good.clone() }, "source_region"),
        (ReportBackupRequest { checksum: "md5:1".into(), ..good.clone() }, "backup.checksum"),
        (ReportBackupRequest { location: "not a uri".into(), ..good.clone() }, "backup.location"),
        (ReportBackupRequest { shard: "9".into(), ..good.clone() }, "shard: unknown shard orders/9"),
    ];
    for (request, field) in cases {
        let refused = us.report_backup(request).await.expect_err("refused");
        assert!(refused.to_string().contains(field), "{field}: {refused}");
    }
    let not_held = RestoreResultRequest {
        controller_id: "ctl-us-east".into(),
        job_id: 1,
        passed: true,
        checksum_match: true,
        ..Default::default()
    };
    match us.report_restore_result(not_held).await {
        Err(ClientError::Refused(why)) => assert!(why.contains("job:"), "{why}"),
        other => panic!("a result for a job it does not hold: {other:?}"),
    }
    let after = ctl_json(&cluster, &["get", "backups", "orders/0"]).1["shards"][0]["backups"].clone();
    assert!(after.as_array().is_some_and(|a| a.iter().all(|b| b["id"] != "forged")), "{after}");

    // The leader publishes the backup gauges.
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await;
    let mut cluster = cluster;
    let running = cluster.node(leader).metric("interlock_restore_tests_running").await;
    assert!(running.is_some(), "interlock_restore_tests_running is exported");
}
