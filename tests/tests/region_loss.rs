//! Region loss with real processes: three coordinator nodes and three
//! reference agents (`interlockd agent`, built on the SDK), one per region.
//! Everything in eu-west is killed with SIGKILL; every shard whose primary
//! was there gets a new, acknowledged primary elsewhere, and no two agents
//! ever act as primary of one shard at the same instant (by their own logs).

use interlock_client::Client;
use interlock_tests::{bin, overlapping_primaries, ClusterOptions, TestAgent, TestCluster};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
const SHARDS: usize = 3;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Three shards, a replica of each in every region; eu-west has the highest
/// priority.
fn topology() -> interlock_client::Topology {
    let shards: Vec<serde_json::Value> = (0..SHARDS)
        .map(|s| {
            serde_json::json!({
                "id": s.to_string(),
                "max_lag_on_failover": 100_000,
                "replicas": REGIONS.iter().zip([100, 90, 50]).map(|(r, p)| serde_json::json!({
                    "id": format!("o{s}-{}", &r[..2]), "region": r, "priority": p
                })).collect::<Vec<_>>()
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "regions": REGIONS.iter().map(|r| serde_json::json!({"id": r})).collect::<Vec<_>>(),
        "services": [{"name": "orders", "shards": shards}],
    }))
    .expect("topology")
}

/// Waits until every shard has an acknowledged primary for which `accept`
/// holds; returns the primaries.
async fn wait_for_primaries(client: &Client, within: Duration, accept: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Ok(shards) = client.shards().await {
            last = shards
                .iter()
                .map(|s| format!("{}/{}: {:?} pending {:?}", s.service, s.id, s.primary, s.pending))
                .collect();
            if shards.len() == SHARDS
                && shards.iter().all(|s| !s.primary.is_empty() && s.pending.is_empty() && accept(&s.primary))
            {
                return shards.into_iter().map(|s| s.primary).collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("shards did not get the expected primaries within {within:?}: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_region_moves_its_primaries_and_never_doubles_one() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    client.apply_topology(&topology(), false).await.expect("apply topology");
    // eu-west's agent starts alone, so that the first elections put every
    // primary there (a shard without a primary takes the best replica that is
    // reporting, and the other agents might report first).
    let mut agents = vec![TestAgent::start(&cluster, REGIONS[0])];
    let primaries = wait_for_primaries(&client, Duration::from_secs(30), |p| p.ends_with("-eu")).await;
    assert_eq!(primaries.len(), SHARDS);
    agents.extend(REGIONS[1..].iter().map(|r| TestAgent::start(&cluster, r)));
    interlock_tests::eventually("every replica reports a healthy position", Duration::from_secs(30), || async {
        let replicas = client.replicas().await.unwrap_or_default();
        replicas.len() == SHARDS * REGIONS.len() && replicas.iter().all(|r| r.healthy == Some(true))
    })
    .await;
    // Let the detector learn the heartbeat rhythm and the agents replicate.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The whole of eu-west dies: its coordinator node and its agent.
    let eu_node = cluster.nodes.iter().find(|n| n.region == "eu-west").map(|n| n.id).expect("eu node");
    let killed_at = unix_ms();
    let started = Instant::now();
    cluster.node(eu_node).kill9();
    agents[0].kill9();

    let survivors = Client::with_options(
        cluster.nodes.iter().filter(|n| n.is_running()).map(|n| n.grpc.clone()),
        cluster.options_as(interlock_tests::OPERATOR),
    )
    .expect("client");
    let moved = wait_for_primaries(&survivors, Duration::from_secs(30), |p| !p.ends_with("-eu")).await;
    let took = started.elapsed();
    println!("region loss -> {SHARDS} shards promoted and acknowledged elsewhere: {} ms ({moved:?})", took.as_millis());

    let events = survivors.events(0, 0).await.expect("events");
    assert!(events.iter().any(|e| e.kind == "region.lost" && e.subject == "eu-west"), "eu-west declared lost");
    let regions = survivors.regions().await.expect("regions");
    assert!(regions.iter().any(|r| r.id == "eu-west" && r.state == "LOST"));

    // No two agents acted as primary of one shard at once, by their own clocks.
    let logs: Vec<_> =
        agents.iter().enumerate().map(|(i, a)| (a.acting_changes(), (i == 0).then_some(killed_at))).collect();
    assert!(logs[1].0.iter().chain(&logs[2].0).filter(|l| l.acting).count() >= SHARDS, "survivors took over: {logs:?}");
    let overlaps = overlapping_primaries(&logs, unix_ms());
    assert!(overlaps.is_empty(), "two primaries at once: {overlaps:?}");

    // A planned switchover between the survivors, through the CLI: RPO 0.
    let shard0 = survivors.shards().await.expect("shards").into_iter().find(|s| s.id == "0").expect("shard 0");
    let target = if shard0.primary == "o0-us" { "o0-ap" } else { "o0-us" };
    let endpoints = survivors.endpoints().join(",");
    let out = std::process::Command::new(bin("interlockctl"))
        .args(["--endpoints", &endpoints, "switchover", "orders/0", "--to", target])
        .envs(cluster.ctl_env(interlock_tests::OPERATOR))
        .output()
        .expect("interlockctl");
    assert!(out.status.success(), "switchover: {}", String::from_utf8_lossy(&out.stderr));
    let shard0 = survivors.shards().await.expect("shards").into_iter().find(|s| s.id == "0").expect("shard 0");
    assert_eq!(shard0.primary, target);

    // Switching over to a replica in the lost region is refused with exit 4 and the reason.
    let out = std::process::Command::new(bin("interlockctl"))
        .args(["--endpoints", &endpoints, "switchover", "orders/0", "--to", "o0-eu"])
        .envs(cluster.ctl_env(interlock_tests::OPERATOR))
        .output()
        .expect("interlockctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not ACTIVE"), "{stderr}");

    let logs: Vec<_> =
        agents.iter().enumerate().map(|(i, a)| (a.acting_changes(), (i == 0).then_some(killed_at))).collect();
    let overlaps = overlapping_primaries(&logs, unix_ms());
    assert!(overlaps.is_empty(), "two primaries at once after the switchover: {overlaps:?}");
}
