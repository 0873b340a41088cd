//! Runbooks and drills with real processes (SPEC §7): three nodes and three
//! reference agents on the demo driver, backing up every second. The
//! shipped runbooks are applied with `interlockctl runbook apply`; a bad
//! one is refused naming the field. `drill-region-loss` as a drill leaves
//! production exactly as it was and reports its RTO; `evacuate-region` live
//! leaves no primary in the region and its weight at 0, and its report lists
//! every step. A second test kills the leader with -9 in the middle of a
//! drain step: the new leader resumes the execution, and every step's
//! effect happened once.

use interlock_tests::{eventually, sample_topology, ClusterOptions, TestAgent, TestCluster, OPERATOR};
use serde_json::Value;
use std::time::Duration;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn shipped(name: &str) -> String {
    format!("{}/../deploy/runbooks/{name}.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// A cluster with the sample topology, its agents backing up every second,
/// and o0-eu the acknowledged primary.
async fn fleet() -> (TestCluster, Vec<TestAgent>) {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    cluster.client().apply_topology(&sample_topology(), false).await.expect("apply");
    let backup_dir = cluster.dir.path().join("backups");
    let extra = format!("backup_every_seconds = 1\nbackup_dir = {:?}\n", backup_dir.display().to_string());
    let agents = REGIONS.iter().map(|r| TestAgent::start_with(&cluster, r, &extra)).collect();
    let client = cluster.client();
    eventually("o0-eu primary and every replica reporting", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let shards = client.shards().await.unwrap_or_default();
            let replicas = client.replicas().await.unwrap_or_default();
            shards.first().is_some_and(|s| s.primary == "o0-eu" && s.status == "ok")
                && replicas.iter().filter(|r| r.healthy == Some(true)).count() == 3
        }
    })
    .await;
    (cluster, agents)
}

/// What production is: primaries, epochs, roles, region states, drains,
/// maintenance, routing weights and versions. Equal before and after a drill.
async fn production(cluster: &TestCluster) -> String {
    let client = cluster.client();
    let shards: Vec<String> = client
        .shards()
        .await
        .expect("shards")
        .iter()
        .map(|s| format!("{}/{} primary={} epoch={}", s.service, s.id, s.primary, s.epoch))
        .collect();
    let replicas: Vec<String> =
        client.replicas().await.expect("replicas").iter().map(|r| format!("{}={}", r.id, r.role)).collect();
    let regions: Vec<String> = client
        .regions()
        .await
        .expect("regions")
        .iter()
        .map(|r| format!("{} {} maintenance={}", r.id, r.state, r.maintenance))
        .collect();
    let routing: Vec<String> = client
        .routing("")
        .await
        .expect("routing")
        .iter()
        .filter_map(|r| r.table.as_ref())
        .map(|t| {
            format!("{} v{} {:?}", t.service, t.version, t.weights.iter().collect::<std::collections::BTreeMap<_, _>>())
        })
        .collect();
    format!("{shards:?}\n{replicas:?}\n{regions:?}\n{routing:?}")
}

fn step<'a>(execution: &'a Value, name: &str) -> &'a Value {
    execution["steps"].as_array().and_then(|s| s.iter().find(|s| s["name"] == name)).unwrap_or(&Value::Null)
}

fn effects(execution: &Value, name: &str) -> usize {
    step(execution, name)["effects"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_leaves_production_alone_and_a_live_evacuation_empties_the_region() {
    let (cluster, _agents) = fleet().await;
    for name in ["evacuate-region", "failback-region", "drill-region-loss", "verify-all-backups"] {
        let (code, value, out) = cluster.ctl_json(OPERATOR, &["runbook", "apply", "-f", &shipped(name)]);
        assert_eq!(code, 0, "{name}: {out}");
        assert!(value["message"].as_str().is_some_and(|m| m.contains("version 1")), "{out}");
    }
    // Bad input: refused naming the field, nothing stored.
    let bad = cluster.dir.path().join("bad.yaml");
    let bad_runbooks = [
        ("name: bad\ngroups:\n  - name: g\n    steps:\n      - name: s\n        reboot: {region: eu-west}\n", "groups[0].steps[0]"),
        ("name: bad\ngroups:\n  - name: g\n    steps:\n      - name: s\n        drain: {region: mars}\n", "groups[0].steps[0].drain.region: no region named \"mars\""),
        ("name: bad\ngroups:\n  - name: g\n    steps:\n      - name: s\n        wait_for: {lag_at_most: {positions: many}}\n", "groups[0].steps[0].wait_for.lag_at_most.positions"),
    ];
    for (yaml, field) in bad_runbooks {
        std::fs::write(&bad, yaml).expect("write");
        let (code, _, out) = cluster.ctl_json(OPERATOR, &["runbook", "apply", "-f", &bad.display().to_string()]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(field), "{field}: {out}");
    }
    let (_, list, _) = cluster.ctl_json(OPERATOR, &["runbook", "list"]);
    assert_eq!(list["runbooks"].as_array().map(Vec::len), Some(4), "{list}");
    let (code, _, out) =
        cluster.ctl_json(OPERATOR, &["runbook", "run", "evacuate-region", "--param", "region=mars", "--dry-run"]);
    assert_eq!(code, 2, "a parameter naming no region: {out}");
    assert!(out.contains("params.region"), "{out}");

    // A dry run evaluates each step now and changes nothing.
    let before = production(&cluster).await;
    let (code, dry, out) =
        cluster.ctl_json(OPERATOR, &["runbook", "run", "evacuate-region", "--param", "region=eu-west", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    let plan = dry["plan"].as_array().expect("plan");
    assert_eq!(plan.len(), 7, "{dry}");
    let switch = plan.iter().find(|p| p["step"] == "switch-primaries-away").expect("step");
    let check = switch["check"].as_str().unwrap_or_default();
    assert!(switch["ok"] == true && check.contains("demote the primary of orders/0 for o0-"), "{switch}");
    assert!(check.contains("would be applied") && !check.contains("o0-eu"), "{switch}");

    // The drill: primaries and traffic move in its copy only.
    let (code, drill, out) = cluster.ctl_json(
        OPERATOR,
        &[
            "runbook",
            "run",
            "drill-region-loss",
            "--param",
            "region=eu-west",
            "--param",
            "restore_in=us-east",
            "--drill",
            "--wait",
            "--wait-timeout",
            "120s",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(drill["state"], "SUCCEEDED", "{drill}");
    assert_eq!(drill["mode"], "drill");
    assert!(drill["rto_ms"].as_u64().is_some(), "the drill measured its RTO: {drill}");
    let restored = step(&drill, "restore-and-start")["effects"][0]["outcome"].as_str().unwrap_or_default().to_string();
    assert!(restored.contains("orders/0: backup") && restored.contains("restored and checked"), "{drill}");
    let targets: Vec<String> = drill["target_regions"]
        .as_array()
        .map_or(vec![], |r| r.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
    assert!(!targets.is_empty() && !targets.contains(&"eu-west".to_string()), "{drill}");
    assert_eq!(production(&cluster).await, before, "a drill changes nothing in production");
    // The drill feeds readiness: promoting to a region a drill moved primaries to.
    let (_, readiness, _) = cluster.ctl_json(OPERATOR, &["get", "readiness"]);
    let shard = &readiness["shards"][0];
    let target = shard["target_region"].as_str().unwrap_or_default().to_string();
    if targets.contains(&target) {
        assert_eq!(shard["parts"]["drill"]["score"], 100, "{readiness}");
    } else {
        assert_eq!(shard["parts"]["drill"]["known"], false, "{readiness}");
    }

    // Live: an operator approves, primaries move, traffic drains.
    let (code, run, out) =
        cluster.ctl_json(OPERATOR, &["runbook", "run", "evacuate-region", "--param", "region=eu-west", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let id = run["execution_id"].as_u64().expect("execution id").to_string();
    eventually("the approval step waits", Duration::from_secs(10), || {
        let (_, status, _) = cluster.ctl_json(OPERATOR, &["runbook", "status", &id]);
        std::future::ready(step(&status, "approve-evacuation")["state"] == "RUNNING")
    })
    .await;
    let (code, _, out) = cluster.ctl_json(OPERATOR, &["runbook", "approve", &id]);
    assert_eq!(code, 0, "{out}");
    let (code, done, out) = cluster.ctl_json(OPERATOR, &["runbook", "status", &id, "--wait", "--wait-timeout", "120s"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(effects(&done, "switch-primaries-away"), 1, "{done}");
    assert_eq!(effects(&done, "drain-traffic"), 1, "{done}");
    assert_eq!(step(&done, "approve-evacuation")["approver"], OPERATOR);
    let shards = cluster.client().shards().await.expect("shards");
    assert!(shards[0].primary == "o0-us" || shards[0].primary == "o0-ap", "no primary left in eu-west: {shards:?}");
    let routing = cluster.client().routing("orders").await.expect("routing");
    let weights = &routing[0].table.as_ref().expect("table").weights;
    assert_eq!(weights.get("eu-west"), Some(&0), "{weights:?}");
    let report = std::process::Command::new(interlock_tests::bin("interlockctl"))
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .args(["runbook", "report", &id, "-o", "md"])
        .envs(cluster.ctl_env(OPERATOR))
        .output()
        .expect("report");
    let md = String::from_utf8_lossy(&report.stdout).to_string();
    for name in ["approve-evacuation", "switch-primaries-away", "drain-traffic", "no-primary-left", "routing-converged"]
    {
        assert!(md.contains(&format!("| {name} |")), "the report lists {name}: {md}");
    }
    assert!(md.contains("RTO: ") && md.contains("RPO: 0 positions lost"), "{md}");

    // A hook step runs on the region's agent; the coordinator checks its
    // success criterion itself. An unknown hook fails the run.
    let hooks = "name: smoke\nparams:\n  hook: {type: string}\ngroups:\n  - name: g\n    steps:\n      - name: smoke\n        hook: {region: us-east, name: '${hook}', success: {healthy: {region: us-east}}}\n";
    let file = cluster.dir.path().join("smoke.yaml");
    std::fs::write(&file, hooks).expect("write");
    let (code, _, out) = cluster.ctl_json(OPERATOR, &["runbook", "apply", "-f", &file.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, ok, out) = cluster.ctl_json(
        OPERATOR,
        &["runbook", "run", "smoke", "--param", "hook=smoke-test", "--drill", "--wait", "--wait-timeout", "60s"],
    );
    assert_eq!(code, 0, "{out}");
    let smoke = step(&ok, "smoke");
    let said = smoke["effects"][0]["outcome"].as_str().unwrap_or_default();
    assert!(said.contains("smoke-test: 1 database(s) up"), "the hook's output is recorded: {ok}");
    assert!(smoke["detail"].as_str().is_some_and(|d| d.contains("heard")), "the criterion was checked: {ok}");
    let (code, failed, out) =
        cluster.ctl_json(OPERATOR, &["runbook", "run", "smoke", "--param", "hook=nope", "--drill", "--wait"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert!(failed["reason"].as_str().is_some_and(|r| r.contains("no hook \"nope\"")), "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_resumes_after_the_leader_is_killed_and_acts_once() {
    let (mut cluster, _agents) = fleet().await;
    let runbook = "name: move-out\nparams:\n  region: {type: region}\ngroups:\n  - name: hold\n    steps:\n      - name: hold\n        pause: {message: go}\n  - name: move\n    steps:\n      - name: switch\n        switchover: {away_from_region: '${region}'}\n      - name: drain\n        drain: {region: '${region}', step_bps: 1000, interval_seconds: 1}\n  - name: check\n    steps:\n      - name: empty\n        wait_for: {no_primaries_in: {region: '${region}'}}\n      - name: drained\n        wait_for: {region_state: {region: '${region}', state: drained}}\n";
    let file = cluster.dir.path().join("move-out.yaml");
    std::fs::write(&file, runbook).expect("write");
    let (code, _, out) = cluster.ctl_json(OPERATOR, &["runbook", "apply", "-f", &file.display().to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, run, out) =
        cluster.ctl_json(OPERATOR, &["runbook", "run", "move-out", "--param", "region=eu-west", "--yes"]);
    assert_eq!(code, 0, "{out}");
    let id = run["execution_id"].as_u64().expect("id").to_string();
    eventually("the pause waits", Duration::from_secs(10), || {
        let (_, status, _) = cluster.ctl_json(OPERATOR, &["runbook", "status", &id]);
        std::future::ready(step(&status, "hold")["state"] == "RUNNING")
    })
    .await;
    let (code, _, out) = cluster.ctl_json(OPERATOR, &["runbook", "continue", &id]);
    assert_eq!(code, 0, "{out}");
    // Mid-drain (ten steps, one a second): kill the leader.
    eventually("the drain under way", Duration::from_secs(20), || {
        let (_, status, _) = cluster.ctl_json(OPERATOR, &["runbook", "status", &id]);
        std::future::ready(effects(&status, "drain") == 1 && step(&status, "drain")["state"] == "RUNNING")
    })
    .await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.node(leader).kill9();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    assert_ne!(new_leader, leader);
    let (code, done, out) = cluster.ctl_json(OPERATOR, &["runbook", "status", &id, "--wait", "--wait-timeout", "120s"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    for name in ["switch", "drain"] {
        assert_eq!(effects(&done, name), 1, "{name} acted once across the leader change: {done}");
        assert_eq!(step(&done, name)["attempt"], 1, "{done}");
    }
    let primary = cluster.client().shards().await.expect("shards")[0].primary.clone();
    assert!(primary == "o0-us" || primary == "o0-ap", "moved out of eu-west: {primary}");
}
