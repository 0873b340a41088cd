//! `interlock-bench`: starts a real 3-node `interlockd` cluster on loopback
//! (processes, sled on disk) and measures it through the Rust SDK.
//!
//! ```text
//! cargo build --release --bins
//! target/release/interlock-bench writes --clients 1,64 --duration 10s
//! ```

use clap::{Parser, Subcommand};
use interlock_tests::{ClusterOptions, TestCluster};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "interlock-bench", about = "Benchmarks a real 3-node loopback Interlock cluster")]
struct Cli {
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// mTLS on every link, for Interlock and (in `compare`) etcd alike.
    #[arg(long, global = true, value_parser = ["on", "off"], default_value = "on")]
    tls: String,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Committed writes (KV puts of 100-byte values), closed loop per client.
    Writes {
        /// Concurrent clients, comma separated; each level is one run.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        clients: Vec<usize>,
        /// How long each level runs (after a 1 s warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Lease grants (closed loop), then keepalives of all the granted leases
    /// over keepalive streams, each stream pipelining its share.
    Leases {
        /// Leases to grant and keep.
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// Keepalive streams (one HTTP/2 connection each).
        #[arg(long, default_value_t = 64)]
        streams: usize,
        /// Concurrent granting clients.
        #[arg(long, default_value_t = 64)]
        grant_clients: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Leader kill -9 -> first acknowledged write, then the node restarts;
    /// repeated, reports the distribution.
    Failover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Interlock and etcd side by side on the same machine: committed writes
    /// at each concurrency, lease grants and keepalives of --leases leases,
    /// one change -> --watchers watchers, and leader kill -9 -> first
    /// acknowledged write (median of --failovers). Needs `--features etcd`
    /// and an `etcd` binary (scripts/bench-setup.sh).
    #[cfg(feature = "etcd")]
    Compare {
        /// Concurrent writing clients, comma separated; each level runs on both systems.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        clients: Vec<usize>,
        /// How long each write level and the keepalive phase run (after 1 s of warm-up).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Leader kills per system (each followed by a restart of the killed node).
        #[arg(long, default_value_t = 5)]
        failovers: usize,
        /// Leases granted and kept alive (over 64 streams) on each system.
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// Watchers for the watch comparison (0: skip it).
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Shorter everything (3 s per level, 3 failovers, 10 watch changes):
        /// under two minutes on a 2-core machine.
        #[arg(long)]
        quick: bool,
    },
    /// PostgreSQL failover beside Patroni 3.0.2 + etcd 3.4 on the same
    /// machine: three PostgreSQL 15 instances (synchronous commit to one
    /// standby), a writer inserting sequence numbers, kill -9 of the
    /// primary's postmaster and its agent (or patroni); --rounds rounds per
    /// system, each followed by a planned switchover back. Patroni runs at
    /// its defaults (ttl 30, loop_wait 10, retry_timeout 10) and at the
    /// fastest its documentation allows (ttl 10, loop_wait 1, retry_timeout
    /// 4: loop_wait + 2 × retry_timeout <= ttl). Needs postgresql-15,
    /// patroni and etcd-server from Debian, and root (PostgreSQL runs as
    /// the postgres user).
    PgFailover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Which systems, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "interlock,patroni-defaults,patroni-fast")]
        systems: Vec<String>,
    },
    /// --leases leases expiring at one moment (TTL 5 s, renewed together)
    /// while --controllers controllers watch routing: --changes routing
    /// changes timed before (quiet) and from just before the expiry, then
    /// how long after the deadline the last lease was gone.
    ExpiryBurst {
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        #[arg(long, default_value_t = 1000)]
        controllers: usize,
        #[arg(long, default_value_t = 20)]
        changes: usize,
    },
    /// The fleet at rest: --shards shards with an agent per region (one
    /// primary lease per shard kept alive), --controllers controllers in
    /// all, the others heartbeating every 250 ms; for --duration, every
    /// heartbeat's answer and a probe lease's keepalives are timed, and each
    /// node's CPU share and memory read.
    Fleet {
        #[arg(long, default_value_t = 10_000)]
        shards: usize,
        #[arg(long, default_value_t = 1000)]
        controllers: usize,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Run the agents at this nice value (0-19): on a small machine the
        /// nodes' work then comes first, as if the agents ran elsewhere.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
        agents_nice: u8,
    },
    /// A mass failover with real agents (the demo database, one per region):
    /// --shards shards, the first --lost with their primary in eu-west; kill
    /// -9 eu-west's node and agent, then time each of those shards until it
    /// has a primary elsewhere (promoted) and that primary is acknowledged.
    /// The max of each row is the whole region's failover.
    MassFailover {
        #[arg(long, default_value_t = 10_000)]
        shards: usize,
        #[arg(long, default_value_t = 5_000)]
        lost: usize,
        /// Run the agents at this nice value (0-19), as for `fleet`.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
        agents_nice: u8,
    },
    /// One change (a lease grant) -> every watcher of "events" notified;
    /// latency from sending the change to each watcher receiving it.
    Watch {
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Changes to time (one at a time).
        #[arg(long, default_value_t = 20)]
        changes: usize,
    },
    /// One routing change -> every watching controller notified and its
    /// acknowledgement accepted by the leader (SPEC §11: 1000 watchers, p99
    /// <= 50 ms). Registers the controllers first.
    Routing {
        #[arg(long, default_value_t = 1000)]
        controllers: usize,
        #[arg(long, default_value_t = 20)]
        changes: usize,
    },
}

/// For a comparison: each Interlock row beside the etcd row of the same
/// workload and concurrency, with the ratios (ops/s: higher is better for
/// Interlock above 1; p99: lower is better for Interlock below 1).
fn print_ratios(rows: &[Row]) {
    let pairs: Vec<(&Row, &Row)> = rows
        .iter()
        .filter_map(|ours| {
            let theirs = rows.iter().find(|t| {
                t.clients == ours.clients
                    && t.workload.strip_prefix("etcd ").is_some_and(|w| ours.workload.ends_with(w))
            })?;
            (!ours.workload.starts_with("etcd")).then_some((ours, theirs))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!("\n{:<20} {:>7} {:>14} {:>14} {:>16}", "vs etcd", "clients", "ops/s ratio", "p50 ratio", "p99 ratio");
    for (ours, theirs) in pairs {
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".to_string() };
        println!(
            "{:<20} {:>7} {:>14} {:>14} {:>16}",
            ours.workload,
            ours.clients,
            ratio(ours.ops_per_sec, theirs.ops_per_sec),
            ratio(ours.p50_ms, theirs.p50_ms),
            ratio(ours.p99_ms, theirs.p99_ms)
        );
    }
}

#[cfg(feature = "etcd")]
mod etcd;
mod fleet;
mod postgres;
mod workloads;

/// One measured level.
#[derive(Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub clients: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
}

pub fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[rank.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// Runs `clients` closed loops for `duration` after a 1 s warm-up. Loop `c`
/// is `make(c)`: called with 0, 1, 2, ... back to back, it returns whether
/// that operation succeeded. Latencies of successes are recorded in µs.
pub async fn closed_loop<Op, Fut>(
    name: &str,
    clients: usize,
    duration: Duration,
    mut make: impl FnMut(usize) -> Op,
) -> Row
where
    Op: FnMut(u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let (measure_from, stop_at) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut op = make(c);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
            loop {
                let sent = Instant::now();
                if sent >= stop_at {
                    break;
                }
                let ok = op(i).await;
                i += 1;
                if sent >= measure_from {
                    if ok {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let (mut all, mut errors): (Vec<u64>, u64) = (Vec::new(), 0);
    for task in tasks {
        if let Ok((l, e)) = task.await {
            all.extend(l);
            errors += e;
        }
    }
    Row::from_latencies(name, clients, all, duration.as_secs_f64(), errors)
}

/// Receives from `rx` until `expected` watchers reported `key` (or 10 s
/// passed): the latencies from `sent` in µs, and how many never reported.
/// Both systems' watch workloads time their notifications with it.
pub async fn await_notifications<K: PartialEq>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(K, Instant)>,
    key: &K,
    sent: Instant,
    expected: usize,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(10);
    while latencies.len() < expected {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((k, at))) if k == *key => latencies.push(at.duration_since(sent).as_micros() as u64),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let missing = (expected - latencies.len()) as u64;
    (latencies, missing)
}

/// Committed writes (KV puts of 100 bytes) from `clients` closed loops.
async fn writes(cluster: &TestCluster, clients: usize, duration: Duration) -> Row {
    closed_loop("writes", clients, duration, |c| {
        // One SDK client (one HTTP/2 connection per node) per simulated client.
        let client = Arc::new(cluster.client());
        move |i| {
            let client = client.clone();
            async move { client.put(&format!("bench/{c}/{i}"), vec![b'x'; 100]).await.is_ok() }
        }
    })
    .await
}

impl Row {
    /// A row from unsorted latencies in µs measured over `seconds`.
    pub fn from_latencies(workload: &str, clients: usize, mut us: Vec<u64>, seconds: f64, errors: u64) -> Row {
        us.sort_unstable();
        Row {
            workload: workload.into(),
            clients,
            ops: us.len() as u64,
            seconds,
            ops_per_sec: if seconds > 0.0 { us.len() as f64 / seconds } else { 0.0 },
            p50_ms: percentile(&us, 50.0),
            p99_ms: percentile(&us, 99.0),
            max_ms: us.last().map_or(0.0, |m| *m as f64 / 1000.0),
            errors,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = cli.tls == "on";
    let mut cluster = TestCluster::start(3, ClusterOptions { plaintext: !tls, ..ClusterOptions::default() }).await;
    let rows = match cli.workload {
        Workload::Writes { clients, duration } => {
            let mut rows = Vec::new();
            for level in clients {
                rows.push(writes(&cluster, level, duration).await);
            }
            rows
        }
        Workload::Leases { leases, streams, grant_clients, duration } => {
            workloads::leases(&cluster, leases, streams, grant_clients, duration).await?
        }
        Workload::ExpiryBurst { leases, controllers, changes } => {
            workloads::expiry_burst(&cluster, leases, controllers, changes).await?
        }
        Workload::Fleet { shards, controllers, duration, agents_nice } => {
            fleet::scale(&cluster, shards, controllers, duration, agents_nice).await?
        }
        Workload::MassFailover { shards, lost, agents_nice } => {
            fleet::mass_failover(&mut cluster, shards, lost, agents_nice).await?
        }
        Workload::Watch { watchers, changes } => vec![workloads::watch(&cluster, watchers, changes).await?],
        Workload::Routing { controllers, changes } => workloads::routing(&cluster, controllers, changes).await?,
        Workload::PgFailover { rounds, systems } => {
            let mut rows = Vec::new();
            for system in systems {
                let measured = match system.as_str() {
                    "interlock" => postgres::interlock(&mut cluster, rounds).await?,
                    "patroni-defaults" | "patroni-fast" => {
                        let timing = if system == "patroni-fast" {
                            postgres::PatroniTiming::FAST
                        } else {
                            postgres::PatroniTiming::DEFAULTS
                        };
                        let dir = tempfile::tempdir()?;
                        let measured = postgres::patroni(&dir.path().join("patroni"), timing, rounds).await;
                        if measured.is_err() {
                            eprintln!("kept for a look: {}", dir.keep().display());
                        }
                        measured?
                    }
                    other => anyhow::bail!("--systems: unknown {other:?} (interlock, patroni-defaults, patroni-fast)"),
                };
                eprintln!("{system}: {} inserts acknowledged, {} lost", measured.acked, measured.lost);
                rows.extend(measured.rows(&system));
            }
            rows
        }
        Workload::Failover { rounds } => {
            let mut took = Vec::new();
            for _ in 0..rounds {
                took.push(workloads::leader_kill_to_write(&mut cluster).await?.as_micros() as u64);
            }
            vec![Row::from_latencies("leader-kill->write", 1, took, 0.0, 0)]
        }
        #[cfg(feature = "etcd")]
        Workload::Compare { clients, duration, failovers, leases, watchers, quick } => {
            let (duration, failovers, changes) =
                if quick { (Duration::from_secs(3), failovers.min(3), 10) } else { (duration, failovers, 20) };
            let mut peer = etcd::EtcdCluster::start(tls).await?;
            let mut rows = Vec::new();
            for level in clients {
                rows.push(writes(&cluster, level, duration).await);
                rows.push(etcd::writes(&peer, level, duration).await?);
            }
            // Leases: grants, then all of them kept alive over pipelined streams.
            rows.extend(workloads::leases(&cluster, leases, 64, 64, duration).await?);
            rows.extend(etcd::leases(&peer, leases, 64, 64, duration).await?);
            if watchers > 0 {
                rows.push(workloads::watch(&cluster, watchers, changes).await?);
                rows.push(etcd::watch(&peer, watchers, changes).await?);
            }
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..failovers {
                ours.push(workloads::leader_kill_to_write(&mut cluster).await?.as_micros() as u64);
                theirs.push(peer.leader_kill_to_write().await?.as_micros() as u64);
            }
            rows.push(Row::from_latencies("leader-kill->write", 1, ours, 0.0, 0));
            rows.push(Row::from_latencies("etcd leader-kill->write", 1, theirs, 0.0, 0));
            rows
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<8} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>6}",
            "workload", "clients", "ops", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        for r in &rows {
            println!(
                "{:<14} {:>7} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>6}",
                r.workload, r.clients, r.ops, r.ops_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors
            );
        }
        print_ratios(&rows);
    }
    Ok(())
}
