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

/// Applies [`topology`] and starts an agent per region (the demo
/// database); returns them once every shard has an acknowledged primary
/// where it prefers one.
async fn place(cluster: &TestCluster, shards: usize, lost: usize, nice: u8) -> anyhow::Result<Vec<TestAgent>> {
    anyhow::ensure!(lost <= shards, "--lost: {lost} is more than --shards {shards}");
    let admin = cluster.client();
    let started = Instant::now();
    // Automation waits until every agent runs: else the first agent up
    // would win the first election of every shard, wherever it prefers.
    admin.set_maintenance(None, true, "bench: the agents are starting").await?;
    admin.apply_topology(&topology(shards, lost)?, false).await?;
    // The demo database writes once a second per primary: the coordinator,
    // not the model database, is what is measured.
    let agents: Vec<TestAgent> =
        REGIONS.iter().map(|r| TestAgent::start_with(cluster, r, "write_every_ms = 1000\n")).collect();
    if nice > 0 {
        for pid in agents.iter().filter_map(TestAgent::pid) {
            let status = std::process::Command::new("renice")
                .args(["-n", &nice.to_string(), "-p", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "--agents-nice: renice of agent {pid} failed ({status})");
        }
    }
    while admin.controllers().await.map_or(0, |c| c.len()) < agents.len() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the agents did not register within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Their first heartbeats, so that every candidate is seen as alive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin.set_maintenance(None, false, "bench: every agent runs").await?;
    let settle = Duration::from_secs(300);
    loop {
        let now = match admin.shards().await {
            Ok(now) => now,
            Err(e) => {
                eprintln!("listing the shards: {e}");
                Vec::new()
            }
        };
        let placed = acknowledged_in(&now, REGIONS[0]).count();
        let elsewhere = REGIONS[1..].iter().map(|r| acknowledged_in(&now, r).count()).sum::<usize>();
        if placed == lost && placed + elsewhere == shards {
            break;
        }
        if started.elapsed() > settle {
            for agent in &agents {
                let log = agent.log();
                eprintln!(
                    "--- {} (last 20 lines)\n{}",
                    agent.id,
                    log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                );
            }
            for node in &cluster.nodes {
                let log = cluster.node_log(node.id);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- node {} (last 15 lines, newest first)\n{}", node.id, tail.join("\n"));
            }
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
    Ok(agents)
}

/// `shards` shards, the first `lost` with their primary in `REGIONS[0]`: an
/// agent per region (the demo database), everything acknowledged; then kill
/// -9 that region's node and agent, and time until each of those shards has
/// a primary elsewhere (promoted) and that primary is acknowledged.
pub async fn mass_failover(
    cluster: &mut TestCluster,
    shards: usize,
    lost: usize,
    nice: u8,
) -> anyhow::Result<Vec<Row>> {
    let mut agents = place(cluster, shards, lost, nice).await?;
    let admin = cluster.client();
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

/// Issue 17, part 4: the fleet at rest. [`place`]s `shards` shards (a
/// third of their primaries in each region), so the agents keep one primary
/// lease per shard alive; registers `controllers - 3` more controllers (without replicas)
/// that heartbeat every 250 ms, each on its own stream; then for
/// `duration` times every heartbeat's answer and the keepalives of a probe
/// lease (one at a time), and reads each node's CPU time and memory.
pub async fn scale(
    cluster: &TestCluster,
    shards: usize,
    controllers: usize,
    duration: Duration,
    nice: u8,
) -> anyhow::Result<Vec<Row>> {
    let _agents = place(cluster, shards, shards / 3, nice).await?;
    let admin = cluster.client();
    let extra = controllers.saturating_sub(REGIONS.len());
    for i in 0..extra {
        admin.register_controller(&format!("idle-{i}"), REGIONS[i % REGIONS.len()], "bench", &[]).await?;
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let leader_addr = cluster.nodes.iter().find(|n| n.id == leader).map(|n| n.grpc.clone()).unwrap_or_default();
    let tls = cluster.options_as(interlock_tests::OPERATOR).tls;
    let warmup = Duration::from_secs(2);
    let measure_from = Instant::now() + warmup;
    let stop_at = measure_from + duration;
    let mut beats = Vec::new();
    // 100 heartbeat streams per connection, as many agents behind one proxy would.
    let mut channel = None;
    for i in 0..extra {
        if i % 100 == 0 {
            channel = Some(crate::workloads::connect(&leader_addr, tls.clone()).await?);
        }
        let channel = channel.clone().ok_or_else(|| anyhow::anyhow!("no channel"))?;
        beats.push(tokio::spawn(heartbeat(channel, format!("idle-{i}"), i, measure_from, stop_at)));
    }
    let (token, _) = admin.lease_grant("bench/probe", "bench", 10_000).await?;
    let probe = tokio::spawn(crate::workloads::keep_share(
        leader_addr.clone(),
        tls.clone(),
        vec![("bench/probe".to_string(), token)],
        measure_from,
        stop_at,
    ));
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before: Vec<Option<u64>> = cluster.nodes.iter().map(|n| n.pid().and_then(cpu_ticks)).collect();
    let window = Instant::now();
    let (mut latencies, mut failures) = (Vec::new(), 0u64);
    for beat in beats {
        let (l, f) = beat.await??;
        latencies.extend(l);
        failures += f;
    }
    let (keepalives, refused) = probe.await??;
    let seconds = window.elapsed().as_secs_f64();
    let mut rows = vec![
        Row::from_latencies("heartbeat-answer", extra, latencies, duration.as_secs_f64(), failures),
        Row::from_latencies("probe-keepalive", 1, keepalives, duration.as_secs_f64(), refused),
    ];
    // Per node: CPU share of one core over the window (as ops/s, in %), and
    // resident memory now and at its peak (as p50 and max, in MiB).
    let ticks_per_second = 100.0; // USER_HZ on Linux
    for (node, before) in cluster.nodes.iter().zip(cpu_before) {
        let pid = node.pid();
        let cpu = match (before, pid.and_then(cpu_ticks)) {
            (Some(a), Some(b)) => (b.saturating_sub(a)) as f64 / ticks_per_second / seconds * 100.0,
            _ => f64::NAN,
        };
        let (rss, peak) = pid.map_or((0, 0), memory_kib);
        let role = if node.id == leader { "leader" } else { "follower" };
        rows.push(Row {
            workload: format!("node {} ({role}): cpu %, rss MiB, peak MiB", node.id),
            clients: controllers,
            ops: 0,
            seconds,
            ops_per_sec: cpu,
            p50_ms: rss as f64 / 1024.0,
            p99_ms: rss as f64 / 1024.0,
            max_ms: peak as f64 / 1024.0,
            errors: 0,
        });
    }
    Ok(rows)
}

/// One controller's heartbeat stream: a beat every 250 ms (without
/// replicas), each answer's latency in µs when sent inside the window.
async fn heartbeat(
    channel: tonic::transport::Channel,
    id: String,
    nth: usize,
    measure_from: Instant,
    stop_at: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    use interlock_proto::v1::controller_client::ControllerClient;
    use interlock_proto::v1::HeartbeatRequest;
    // Spread the controllers over the interval, as independent agents are.
    tokio::time::sleep(Duration::from_micros((nth as u64 * 2_473) % 250_000)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let beat = || HeartbeatRequest { controller_id: id.clone(), replicas: vec![], reachable_regions: vec![] };
    tx.send(beat()).await?;
    let mut inbound =
        ControllerClient::new(channel).heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let (mut latencies, mut failures) = (Vec::new(), 0u64);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.tick().await;
    inbound.message().await?;
    while Instant::now() < stop_at {
        ticker.tick().await;
        let sent = Instant::now();
        tx.send(beat()).await?;
        match inbound.message().await {
            Ok(Some(_)) if sent >= measure_from => latencies.push(sent.elapsed().as_micros() as u64),
            Ok(Some(_)) => {}
            _ => {
                failures += 1;
                break;
            }
        }
    }
    Ok((latencies, failures))
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// (VmRSS, VmHWM) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
