//! The lease and watch workloads.

use crate::Row;
use interlock_client::Client;
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::LeaseKeepAliveRequest;
use interlock_tests::TestCluster;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A channel of its own to the node at `addr` (one HTTP/2 connection).
pub async fn connect(addr: &str, tls: Option<interlock_client::Tls>) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    Ok(match tls {
        Some(tls) => endpoint.connect_with_connector(interlock_tls::stream::tcp_connector(tls)).await?,
        None => endpoint.connect().await?,
    })
}

/// Drives one keepalive stream directly (the SDK's LeaseKeeper sends one
/// keepalive per TTL/4, which is not a load test): each round sends a
/// keepalive for every lease in `share`, then reads all the answers.
/// Returns the latencies (µs) of answers sent after `measure_from`, and how
/// many of those were refusals.
pub async fn keep_share(
    addr: String,
    tls: Option<interlock_client::Tls>,
    share: Vec<(String, u64)>,
    measure_from: Instant,
    stop_at: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let channel = connect(&addr, tls).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(share.len() * 2 + 1);
    let mut inbound = ControllerClient::new(channel)
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut latencies, mut failures, mut seq) = (Vec::new(), 0u64, 0u64);
    while Instant::now() < stop_at {
        let mut sent = BTreeMap::new();
        for (key, token) in &share {
            seq += 1;
            sent.insert(seq, Instant::now());
            tx.send(LeaseKeepAliveRequest { key: key.clone(), token: *token, seq, batch: Vec::new() }).await?;
        }
        for _ in 0..share.len() {
            let answer = inbound.message().await?.ok_or_else(|| anyhow::anyhow!("keepalive stream closed"))?;
            let Some(at) = sent.get(&answer.seq) else { continue };
            if *at >= measure_from && *at < stop_at {
                if answer.ok {
                    latencies.push(at.elapsed().as_micros() as u64);
                } else {
                    failures += 1;
                }
            }
        }
    }
    Ok((latencies, failures))
}

/// Grants `leases` leases `bench/lease/N` of `ttl_ms` from `clients`
/// concurrent closed loops: the (key, token) granted, each grant's latency
/// in µs, and the seconds it all took.
async fn grant_all(
    cluster: &TestCluster,
    leases: usize,
    clients: usize,
    ttl_ms: u64,
) -> anyhow::Result<(Vec<(String, u64)>, Vec<u64>, f64)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = cluster.client();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            let mut latencies = Vec::new();
            for i in (c..leases).step_by(clients) {
                let key = format!("bench/lease/{i}");
                let sent = Instant::now();
                if let Ok((token, _)) = client.lease_grant(&key, "bench", ttl_ms).await {
                    latencies.push(sent.elapsed().as_micros() as u64);
                    granted.push((key, token));
                }
            }
            (granted, latencies)
        }));
    }
    let (mut granted, mut latencies) = (Vec::new(), Vec::new());
    for task in tasks {
        let (g, l) = task.await?;
        granted.extend(g);
        latencies.extend(l);
    }
    Ok((granted, latencies, started.elapsed().as_secs_f64()))
}

/// Grants `leases` leases with `grant_clients` concurrent clients (a grants/s
/// row), then keeps them alive over `streams` streams for `duration`.
pub async fn leases(
    cluster: &TestCluster,
    leases: usize,
    streams: usize,
    grant_clients: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Row>> {
    let (granted, grant_latencies, grant_seconds) = grant_all(cluster, leases, grant_clients, 60_000).await?;
    let errors = (leases - granted.len()) as u64;
    let grants = Row::from_latencies("lease-grants", grant_clients, grant_latencies, grant_seconds, errors);

    // Keepalives: each stream pipelines its share of the leases, round after round.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let leader_addr = cluster.nodes.iter().find(|n| n.id == leader).map(|n| n.grpc.clone()).unwrap_or_default();
    let mut shares: BTreeMap<usize, Vec<(String, u64)>> = BTreeMap::new();
    for (i, lease) in granted.into_iter().enumerate() {
        shares.entry(i % streams).or_default().push(lease);
    }
    let warmup = Duration::from_secs(1);
    let measure_from = Instant::now() + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::new();
    // The leases are the first operator's: only it renews them.
    let operator_tls = cluster.options_as(interlock_tests::OPERATOR).tls;
    for (_, share) in shares {
        let (addr, tls) = (leader_addr.clone(), operator_tls.clone());
        tasks.push(tokio::spawn(async move { keep_share(addr, tls, share, measure_from, stop_at).await }));
    }
    let (mut latencies, mut failures) = (Vec::new(), 0u64);
    for task in tasks {
        let (l, f) = task.await??;
        latencies.extend(l);
        failures += f;
    }
    let keepalives = Row::from_latencies("keepalives", streams, latencies, duration.as_secs_f64(), failures);
    Ok(vec![grants, keepalives])
}

/// Watch streams per client connection in the watch workloads.
const WATCHERS_PER_CONNECTION: usize = 100;

/// One client per `WATCHERS_PER_CONNECTION` watchers, spread over the nodes.
fn watcher_clients(cluster: &TestCluster, watchers: usize) -> anyhow::Result<Vec<Client>> {
    (0..watchers.div_ceil(WATCHERS_PER_CONNECTION))
        .map(|i| {
            let options = cluster.options_as(interlock_tests::OPERATOR);
            Ok(Client::with_options([cluster.nodes[i % cluster.nodes.len()].grpc.clone()], options)?)
        })
        .collect()
}

/// `watchers` watch the `lease.granted` events of `bench/watch/` (spread over
/// the nodes, 100 streams per connection); each of `changes` lease grants is
/// timed to every watcher.
pub async fn watch(cluster: &TestCluster, watchers: usize, changes: usize) -> anyhow::Result<Row> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let clients = watcher_clients(cluster, watchers)?;
    let mut ready = Vec::new();
    for w in 0..watchers {
        let client = clients[w / WATCHERS_PER_CONNECTION].clone();
        let tx = tx.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tokio::spawn(async move {
            let start_after = client.events(0, 0).await.ok().and_then(|e| e.last().map(|e| e.version)).unwrap_or(0);
            // What it needs, as etcd's side watches its key prefix: the
            // grants of the timed keys, not every lease that expires.
            let filter = interlock_client::WatchFilter {
                key_prefix: "bench/watch/".to_string(),
                kinds: vec!["lease.granted".to_string()],
            };
            let mut watcher = client.watch_filtered("events", start_after, filter);
            let _ = ready_tx.send(());
            while let Ok(message) = watcher.next().await {
                let now = Instant::now();
                for event in message.events {
                    let _ = tx.send((event.subject, now));
                }
            }
        });
    }
    for r in ready {
        let _ = r.await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // let every stream open
    let writer = cluster.client();
    let mut latencies = Vec::new();
    let mut missing = 0u64;
    let started = Instant::now();
    for c in 0..changes {
        let key = format!("bench/watch/{c}");
        let sent = Instant::now();
        writer.lease_grant(&key, "bench", 60_000).await?;
        let (l, m) = crate::await_notifications(&mut rx, &key, sent, watchers).await;
        latencies.extend(l);
        missing += m;
    }
    Ok(Row::from_latencies("watch-notify", watchers, latencies, started.elapsed().as_secs_f64(), missing))
}

/// Registers `controllers` controllers, each watching "routing" and
/// acknowledging every version; then times `changes` routing changes: from
/// sending the change to each controller receiving it (routing-notify) and to
/// the leader accepting its acknowledgement (routing-ack).
pub async fn routing(cluster: &TestCluster, controllers: usize, changes: usize) -> anyhow::Result<Vec<Row>> {
    let mut watchers = RoutingWatchers::start(cluster, controllers).await?;
    watchers.time(changes, "").await
}

/// Controllers watching "routing" and acknowledging every version, and the
/// operator that changes it.
struct RoutingWatchers {
    admin: Client,
    controllers: usize,
    rx: tokio::sync::mpsc::UnboundedReceiver<(u64, bool, Instant)>,
    changed: usize,
}

impl RoutingWatchers {
    /// Registers `controllers` controllers and opens their watches.
    async fn start(cluster: &TestCluster, controllers: usize) -> anyhow::Result<RoutingWatchers> {
        let admin = cluster.client();
        admin.apply_topology(&interlock_tests::sample_topology(), false).await?;
        let regions = ["eu-west", "us-east", "ap-south"];
        let mut registrations = Vec::new();
        for chunk in (0..controllers).collect::<Vec<_>>().chunks(controllers.div_ceil(16).max(1)) {
            let (client, chunk) = (cluster.client(), chunk.to_vec());
            registrations.push(tokio::spawn(async move {
                for i in chunk {
                    let region = regions[i % regions.len()];
                    client.register_controller(&format!("bench-c{i}"), region, "bench", &[]).await?;
                }
                Ok::<_, interlock_client::ClientError>(())
            }));
        }
        for r in registrations {
            r.await??;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool, Instant)>();
        let clients = watcher_clients(cluster, controllers)?;
        let mut ready = Vec::new();
        for c in 0..controllers {
            let client = clients[c / WATCHERS_PER_CONNECTION].clone();
            let tx = tx.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.push(ready_rx);
            tokio::spawn(async move {
                let mut watcher = client.watch("routing", 0);
                let mut ready_tx = Some(ready_tx);
                let mut seen = 0;
                while let Ok(message) = watcher.next().await {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                    for table in message.routing {
                        if table.version <= seen {
                            continue;
                        }
                        seen = table.version;
                        let _ = tx.send((table.version, false, Instant::now()));
                        match client.ack_routing(&format!("bench-c{c}"), &table.service, table.version).await {
                            Ok(()) => {
                                let _ = tx.send((table.version, true, Instant::now()));
                            }
                            Err(e) => eprintln!("bench-c{c}: acknowledging version {}: {e}", table.version),
                        }
                    }
                }
            });
        }
        for r in ready {
            let _ = r.await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(RoutingWatchers { admin, controllers, rx, changed: 0 })
    }

    /// Times `changes` routing changes, one after the other: the rows
    /// routing-notify and routing-ack, their names followed by `suffix`.
    async fn time(&mut self, changes: usize, suffix: &str) -> anyhow::Result<Vec<Row>> {
        let controllers = self.controllers;
        let (mut notified, mut acked, mut missing) = (Vec::new(), Vec::new(), 0u64);
        let started = Instant::now();
        for _ in 0..changes {
            // Alternate between two tables one safe step apart.
            let eu = if self.changed.is_multiple_of(2) { 4_000 } else { 3_334 };
            self.changed += 1;
            let weights: BTreeMap<String, u32> =
                [("eu-west", eu), ("us-east", 3_333), ("ap-south", 10_000 - eu - 3_333)]
                    .map(|(r, w)| (r.to_string(), w))
                    .into();
            let sent = Instant::now();
            let version = self.admin.set_routing("orders", &weights, &[], "benchmark").await?.revision;
            let (mut n, mut a) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while a < controllers {
                match tokio::time::timeout_at(deadline.into(), self.rx.recv()).await {
                    Ok(Some((v, is_ack, at))) if v == version => {
                        let us = at.duration_since(sent).as_micros() as u64;
                        if is_ack {
                            acked.push(us);
                            a += 1;
                        } else {
                            notified.push(us);
                            n += 1;
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            missing += (controllers - a.min(n)) as u64;
        }
        let elapsed = started.elapsed().as_secs_f64();
        Ok(vec![
            Row::from_latencies(&format!("routing-notify{suffix}"), controllers, notified, elapsed, missing),
            Row::from_latencies(&format!("routing-ack{suffix}"), controllers, acked, elapsed, missing),
        ])
    }
}

/// The TTL of the leases of [`expiry_burst`].
const BURST_TTL: Duration = Duration::from_secs(5);

/// Issue 17, part 5: `leases` leases expiring at the same moment must not
/// delay routing notifications. Opens `controllers` routing watchers,
/// grants the leases (TTL 5 s), renews them all in one keepalive round so
/// that their deadlines line up, and from just before that deadline times
/// `changes` routing changes back to back; then how long the leader took to
/// expire them all.
pub async fn expiry_burst(
    cluster: &TestCluster,
    leases: usize,
    controllers: usize,
    changes: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut watchers = RoutingWatchers::start(cluster, controllers).await?;
    let mut rows = watchers.time(changes, " (quiet)").await?;
    let (granted, _, seconds) = grant_all(cluster, leases, 64, BURST_TTL.as_millis() as u64).await?;
    eprintln!("{} leases granted in {seconds:.1} s", granted.len());
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let leader_addr = cluster.nodes.iter().find(|n| n.id == leader).map(|n| n.grpc.clone()).unwrap_or_default();
    let operator_tls = cluster.options_as(interlock_tests::OPERATOR).tls;
    // Keepalive rounds for a second: the last round renews every lease
    // within a few milliseconds of the others.
    let now = Instant::now();
    let mut renewals = Vec::new();
    for share in granted.chunks(granted.len().div_ceil(64).max(1)) {
        let (addr, tls, share) = (leader_addr.clone(), operator_tls.clone(), share.to_vec());
        renewals.push(tokio::spawn(keep_share(addr, tls, share, now, now + Duration::from_secs(1))));
    }
    let mut refused = 0;
    for renewal in renewals {
        refused += renewal.await??.1;
    }
    let renewed_at = Instant::now();
    anyhow::ensure!(refused == 0, "{refused} keepalives refused");
    eprintln!("renewed together; timing routing changes from just before they expire");
    tokio::time::sleep_until((renewed_at + BURST_TTL - Duration::from_millis(200)).into()).await;
    rows.extend(watchers.time(changes, &format!(" ({leases} leases expiring)")).await?);
    let (mut left, drained) = (usize::MAX, Instant::now() + Duration::from_secs(60));
    while left > 0 && Instant::now() < drained {
        left = watchers.admin.leases().await.map(|l| l.len()).unwrap_or(usize::MAX);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = renewed_at.elapsed().saturating_sub(BURST_TTL).as_micros() as u64;
    rows.push(Row::from_latencies("expiry-burst-drained", leases, vec![took], 0.0, (left > 0) as u64));
    Ok(rows)
}

/// Kills the Interlock leader with SIGKILL; returns the time from the kill to
/// the first acknowledged write, then restarts the killed node.
pub async fn leader_kill_to_write(cluster: &mut TestCluster) -> anyhow::Result<Duration> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let survivors: Vec<String> = cluster.nodes.iter().filter(|n| n.id != leader).map(|n| n.grpc.clone()).collect();
    // Retry every 20 ms, like the etcd side's tight loop (etcd holds a write
    // until it has a leader): the SDK's default doubling backoff would add up
    // to its last gap (200-400 ms) to what is measured here.
    let options = interlock_client::ClientOptions {
        request_timeout: Duration::from_millis(500),
        retry_budget: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(20),
        ..cluster.options_as(interlock_tests::OPERATOR)
    };
    let client = Client::with_options(survivors, options)?;
    let killed_at = Instant::now();
    cluster.node(leader).kill9();
    let took = loop {
        if client.put("bench/failover", b"x".to_vec()).await.is_ok() {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("interlock: no write within 60 s of the leader kill");
        }
    };
    cluster.node(leader).start();
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(took)
}
