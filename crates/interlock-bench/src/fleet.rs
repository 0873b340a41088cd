//! Fleet-sized workloads (issue 17): a mass failover of thousands of shard
//! primaries with real agents, measured from the kill -9 of a whole region
//! (its node and its agent) to every shard it held promoted elsewhere and
//! acknowledged.

use crate::Row;
use interlock_client::{Client, Shard};
use interlock_tests::{TestAgent, TestCluster};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The regions of the bench cluster's three nodes, in node order.
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
/// The service every bench shard belongs to.
const SERVICE: &str = "fleet";

/// A topology of `shards` shards of [`SERVICE`], one replica in each region;
/// the first `lost` prefer `REGIONS[0]` for primary, the rest alternate
/// between the two others.
pub fn topology(shards: usize, lost: usize) -> anyhow::Result<interlock_client::Topology> {
    let short = ["eu", "us", "ap"];
    let shards: Vec<serde_json::Value> = (0..shards)
        .map(|i| {
            let first = if i < lost { 0 } else { 1 + i % 2 };
            let replicas: Vec<serde_json::Value> = (0..3)
                .map(|r| {
                    let priority = if r == first { 100 } else { 50 + r as u32 };
                    serde_json::json!({"id": format!("f{i}-{}", short[r]), "region": REGIONS[r], "priority": priority})
                })
                .collect();
            serde_json::json!({"id": i.to_string(), "max_lag_on_failover": 1_000_000, "replicas": replicas})
        })
        .collect();
    let regions: Vec<serde_json::Value> =
        REGIONS.iter().map(|r| serde_json::json!({"id": r, "capacity": 100})).collect();
    Ok(serde_json::from_value(serde_json::json!({
        "regions": regions,
        "services": [{"name": SERVICE, "shards": shards}],
    }))?)
}

fn region_of(replica: &str) -> Option<&'static str> {
    let suffix = replica.rsplit('-').next()?;
    ["eu", "us", "ap"].iter().position(|s| *s == suffix).map(|i| REGIONS[i])
}

/// Shards whose primary is acknowledged (none pending) and in `region`.
fn acknowledged_in<'a>(shards: &'a [Shard], region: &'a str) -> impl Iterator<Item = &'a Shard> + 'a {
    shards.iter().filter(move |s| s.pending.is_empty() && region_of(&s.primary) == Some(region))
}

/// `shards` shards, the first `lost` with their primary in `REGIONS[0]`: an
/// agent per region (the demo database), everything acknowledged; then kill
/// -9 that region's node and agent, and time until each of those shards has
/// a primary elsewhere (promoted) and that primary is acknowledged.
pub async fn mass_failover(cluster: &mut TestCluster, shards: usize, lost: usize) -> anyhow::Result<Vec<Row>> {
    anyhow::ensure!(lost <= shards, "--lost: {lost} is more than --shards {shards}");
    let admin = cluster.client();
    let started = Instant::now();
    admin.apply_topology(&topology(shards, lost)?, false).await?;
    // The demo database writes once a second per primary: the coordinator,
    // not the model database, is what is measured.
    let mut agents: Vec<TestAgent> =
        REGIONS.iter().map(|r| TestAgent::start_with(cluster, r, "write_every_ms = 1000\n")).collect();
    let settle = Duration::from_secs(300);
    loop {
        let now = admin.shards().await.unwrap_or_default();
        let placed = acknowledged_in(&now, REGIONS[0]).count();
        let elsewhere = REGIONS[1..].iter().map(|r| acknowledged_in(&now, r).count()).sum::<usize>();
        if placed == lost && placed + elsewhere == shards {
            break;
        }
        if started.elapsed() > settle {
            anyhow::bail!(
                "after {settle:?}, {placed} of {lost} primaries acknowledged in {} and {elsewhere} elsewhere",
                REGIONS[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{shards} shards placed and acknowledged in {:.1} s", started.elapsed().as_secs_f64());
    // Let heartbeats, positions and witness probes settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let survivors: Vec<String> = cluster.nodes.iter().filter(|n| n.id != 1).map(|n| n.grpc.clone()).collect();
    let watcher = Client::with_options(survivors, cluster.options_as(interlock_tests::OPERATOR))?;
    let to_move: BTreeSet<String> = acknowledged_in(&admin.shards().await?, REGIONS[0]).map(|s| s.id.clone()).collect();

    let killed = Instant::now();
    agents[0].kill9();
    cluster.node(1).kill9();
    let (mut promoted, mut acknowledged) = (Vec::new(), Vec::new());
    let (mut seen_promoted, mut seen_acked) = (BTreeSet::new(), BTreeSet::new());
    while seen_acked.len() < to_move.len() && killed.elapsed() < Duration::from_secs(300) {
        let Ok(now) = watcher.shards().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let at = killed.elapsed().as_micros() as u64;
        for s in now.iter().filter(|s| to_move.contains(&s.id)) {
            let moved = !s.primary.is_empty() && region_of(&s.primary) != Some(REGIONS[0]);
            if moved && seen_promoted.insert(s.id.clone()) {
                promoted.push(at);
            }
            if moved && s.pending.is_empty() && seen_acked.insert(s.id.clone()) {
                acknowledged.push(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = (to_move.len() - seen_acked.len()) as u64;
    eprintln!(
        "region {} lost (node 1{} and its agent): {} of {} promoted, {} acknowledged, last at {:.2} s",
        REGIONS[0],
        if leader == 1 { ", the Raft leader," } else { "" },
        seen_promoted.len(),
        to_move.len(),
        seen_acked.len(),
        acknowledged.last().copied().unwrap_or(0) as f64 / 1e6
    );
    drop(agents);
    let name = |what: &str| {
        format!("{what} ({} of {shards}{})", to_move.len(), if leader == 1 { ", leader's region" } else { "" })
    };
    Ok(vec![
        Row::from_latencies(&name("region kill->promoted"), 1, promoted, 0.0, missing),
        Row::from_latencies(&name("region kill->acknowledged"), 1, acknowledged, 0.0, missing),
    ])
}
