//! A real PostgreSQL 15 failover, end to end: three instances (one primary,
//! two streaming standbys with `synchronous_standby_names = 'ANY 1 (…)'`),
//! one per region, run by `interlockd agent`s with the postgres driver. A
//! writer inserts sequence numbers through the primary address it learns
//! from Interlock; a sampler asks every instance `pg_is_in_recovery()`
//! every 50 ms. In turn: a planned switchover, the primary's postmaster
//! killed (its agent and region live), and the primary's whole region
//! killed (postmaster, agent and coordinator node). Each time a standby is
//! promoted at epoch + 1, writes resume, no acknowledged insert is lost,
//! no two instances ever accept writes, the fencing table records the
//! epoch, and the old primary comes back rewound and following.
//!
//! Needs PostgreSQL 15 in /usr/lib/postgresql/15/bin (`.ci/run` installs
//! it); without it the test says so and passes only outside CI.

use interlock_agent::drivers::postgres::{PostgresConfig, PostgresDriver};
use interlock_agent::probes::Reachability;
use interlock_client::Client;
use interlock_tests::{eventually, free_ports, ClusterOptions, TestAgent, TestCluster};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
const IDS: [&str; 3] = ["o0-eu", "o0-us", "o0-ap"];

/// The three instances' configuration, as one driver (for initdb and the
/// final stop) and as each agent's `[postgres]` section.
struct Instances {
    root: PathBuf,
    ports: Vec<u16>,
    driver: PostgresDriver,
}

impl Instances {
    fn new(dir: &Path) -> Instances {
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).expect("pg dir");
        // The postgres user must reach its directories inside the test's.
        for d in [dir, root.as_path()] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        }
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres").expect("getpwnam").expect("a postgres user");
            nix::unistd::chown(&root, Some(user.uid), Some(user.gid)).expect("chown");
        }
        let ports = free_ports(3);
        let text = Instances::section(&root, &ports, &IDS);
        let config: PostgresConfig = toml::from_str(&text).expect("postgres config");
        let replicas = IDS.iter().map(|id| (id.to_string(), "orders/0".to_string())).collect();
        let reachable = Arc::new(Reachability::new("test", Duration::from_secs(1)));
        let driver = PostgresDriver::new(config, replicas, reachable).expect("driver");
        Instances { root, ports, driver }
    }

    /// A `[postgres]` section (without its header) for `ids`.
    fn section(root: &Path, ports: &[u16], ids: &[&str]) -> String {
        let mut text = format!("bin_dir = {BIN_DIR:?}\nstatus_every_ms = 200\ntimeout_ms = 20000\n");
        for id in ids {
            let k = IDS.iter().position(|i| i == id).expect("known id");
            let data = root.join(id).display().to_string();
            text.push_str(&format!("[instances.{id}]\ndata_dir = {data:?}\nport = {}\n", ports[k]));
        }
        text
    }

    fn agent(&self, cluster: &TestCluster, k: usize) -> TestAgent {
        let section =
            Instances::section(&self.root, &self.ports, &[IDS[k]]).replace("[instances.", "[postgres.instances.");
        TestAgent::start_with(cluster, REGIONS[k], &format!("driver = \"postgres\"\n[postgres]\n{section}"))
    }

    fn address(&self, k: usize) -> String {
        format!("127.0.0.1:{}", self.ports[k])
    }

    fn kill_postmaster(&self, k: usize) {
        let pid = std::fs::read_to_string(self.root.join(IDS[k]).join("postmaster.pid")).expect("postmaster.pid");
        let pid: i32 = pid.lines().next().and_then(|l| l.trim().parse().ok()).expect("pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        self.driver.stop_all_blocking();
        if std::thread::panicking() {
            // What the agents and the servers said, for the failure report.
            let dir = self.root.parent().map(Path::to_path_buf).unwrap_or_default();
            let logs = (0..3)
                .flat_map(|k| [dir.join(format!("ctl-{}.log", REGIONS[k])), self.root.join(format!("{}.log", IDS[k]))]);
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().filter(|l| !l.contains("openraft")).collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- {} (last 40 lines)\n{tail}", log.display());
            }
        }
    }
}

async fn connect(address: &str, within: Duration) -> Result<tokio_postgres::Client, String> {
    let (host, port) = address.rsplit_once(':').ok_or("address")?;
    let mut config = tokio_postgres::Config::new();
    config.host(host).port(port.parse().map_err(|_| "port")?).user("postgres").dbname("postgres");
    config.connect_timeout(within);
    let (client, connection) = tokio::time::timeout(within, config.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

fn topology(instances: &Instances) -> interlock_client::Topology {
    let replicas: Vec<_> = (0..3)
        .map(|k| {
            serde_json::json!({"id": IDS[k], "region": REGIONS[k], "priority": 100 - 10 * k, "address": instances.address(k)})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "regions": REGIONS.iter().map(|r| serde_json::json!({"id": r})).collect::<Vec<_>>(),
        "services": [{"name": "orders", "shards": [{
            "id": "0", "max_lag_on_failover": 64 << 20, "cooldown_seconds": 1, "replicas": replicas
        }]}]
    }))
    .expect("topology")
}

/// Every acknowledged insert: (sequence number, when, through which address).
type Acked = Arc<Mutex<Vec<(i64, Instant, String)>>>;

/// Inserts increasing numbers through the primary Interlock names, one at a
/// time; a failed insert (outcome unknown) is never retried with its number.
async fn writer(client: Client, acked: Acked, stop: Arc<AtomicBool>) {
    let mut n: i64 = 0;
    let mut db: Option<(tokio_postgres::Client, String)> = None;
    while !stop.load(Ordering::SeqCst) {
        if db.is_none() {
            let address = match client.shards().await {
                Ok(s) => s.first().map(|s| s.primary_address.clone()).unwrap_or_default(),
                Err(_) => String::new(),
            };
            if !address.is_empty() {
                db = connect(&address, Duration::from_millis(500)).await.ok().map(|c| (c, address));
            }
            if db.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        let Some((c, address)) = &db else { continue };
        n += 1;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&n];
        match tokio::time::timeout(Duration::from_secs(2), c.execute("INSERT INTO seq (n) VALUES ($1)", &params)).await
        {
            Ok(Ok(_)) => acked.lock().expect("acked").push((n, Instant::now(), address.clone())),
            _ => db = None,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asks every instance whether it is in recovery, every 50 ms; records each
/// round in which more than one accepted writes. Returns the number of
/// rounds in which exactly one did (the sampler really sampled).
async fn sampler(addresses: Vec<String>, doubles: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) -> usize {
    let mut single = 0;
    let mut sessions: Vec<Option<tokio_postgres::Client>> = addresses.iter().map(|_| None).collect();
    while !stop.load(Ordering::SeqCst) {
        let mut writable = Vec::new();
        for (a, session) in addresses.iter().zip(sessions.iter_mut()) {
            if session.as_ref().is_none_or(|c| c.is_closed()) {
                *session = connect(a, Duration::from_millis(200)).await.ok();
            }
            let Some(c) = session.as_ref() else { continue };
            let answer =
                tokio::time::timeout(Duration::from_millis(300), c.query_one("SELECT pg_is_in_recovery()", &[]));
            match answer.await {
                Ok(Ok(row)) if !row.get::<_, bool>(0) => writable.push(a.clone()),
                Ok(Ok(_)) => {}
                _ => *session = None,
            }
        }
        if writable.len() > 1 {
            doubles.lock().expect("doubles").push(format!("{:?}: {writable:?} accept writes", Instant::now()));
        }
        single += usize::from(writable.len() == 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    single
}

async fn shard(client: &Client) -> interlock_client::Shard {
    client.shards().await.expect("shards").into_iter().next().expect("one shard")
}

/// Waits until the shard's primary is acknowledged at an epoch above
/// `after`; returns (primary index, epoch).
async fn promoted_after(client: &Client, after: u64, within: Duration) -> (usize, u64) {
    eventually(&format!("a primary acknowledged after epoch {after}"), within, || async {
        client
            .shards()
            .await
            .is_ok_and(|s| s.iter().any(|s| s.epoch > after && s.pending.is_empty() && !s.primary.is_empty()))
    })
    .await;
    let s = shard(client).await;
    (IDS.iter().position(|i| *i == s.primary).expect("known primary"), s.epoch)
}

fn acked_count(acked: &Acked) -> usize {
    acked.lock().expect("acked").len()
}

/// Waits for writes to go through `address` again after `since`; returns
/// how long after `since` the first one was acknowledged.
async fn writes_resume(acked: &Acked, address: &str, since: Instant) -> Duration {
    eventually(&format!("writes acknowledged through {address}"), Duration::from_secs(60), || async {
        acked.lock().expect("acked").iter().any(|(_, at, a)| *at > since && a == address)
    })
    .await;
    let acked = acked.lock().expect("acked");
    let first = acked.iter().filter(|(_, at, a)| *at > since && a == address).map(|(_, at, _)| *at).min();
    first.expect("a write").duration_since(since)
}

/// Every acknowledged number is in the table on `address`.
async fn nothing_lost(acked: &Acked, address: &str) {
    let c = connect(address, Duration::from_secs(2)).await.expect("connect to the primary");
    let rows = c.query("SELECT n FROM seq", &[]).await.expect("read back");
    let present: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let acked = acked.lock().expect("acked");
    let lost: Vec<i64> = acked.iter().map(|(n, _, _)| *n).filter(|n| !present.contains(n)).collect();
    assert!(lost.is_empty(), "{} acknowledged inserts lost: {:?}", lost.len(), &lost[..lost.len().min(20)]);
}

/// The old primary `k` is a standby again, streaming from `primary`.
async fn follows(instances: &Instances, k: usize, primary: usize) {
    let name = IDS[k];
    eventually(&format!("{name} streams from {}", IDS[primary]), Duration::from_secs(90), || async {
        let Ok(c) = connect(&instances.address(primary), Duration::from_secs(1)).await else { return false };
        let q = "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'";
        c.query_one(q, &[&name]).await.is_ok_and(|r| r.get::<_, i64>(0) == 1)
    })
    .await;
    let c = connect(&instances.address(k), Duration::from_secs(1)).await.expect("connect to the old primary");
    let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("query");
    assert!(row.get::<_, bool>(0), "{name} must be a standby");
}

/// Every replica is reported healthy to the coordinator.
async fn all_healthy(client: &Client) {
    eventually("every replica reported healthy", Duration::from_secs(30), || async {
        client.replicas().await.is_ok_and(|r| r.len() == 3 && r.iter().all(|r| r.healthy == Some(true)))
    })
    .await;
}

/// The fencing table on the primary ends with (epoch, its replica).
async fn fencing_records(instances: &Instances, primary: usize, epoch: u64) {
    let c = connect(&instances.address(primary), Duration::from_secs(2)).await.expect("connect");
    let rows =
        c.query("SELECT epoch, token, replica FROM interlock.fencing ORDER BY epoch", &[]).await.expect("fencing");
    let last = rows.last().expect("a fencing record");
    assert_eq!((last.get::<_, i64>(0) as u64, last.get::<_, String>(2)), (epoch, IDS[primary].to_string()));
    let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens grow with epochs: {tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fails_over_with_no_acknowledged_insert_lost_and_never_two_primaries() {
    if !Path::new(BIN_DIR).join("initdb").exists() {
        assert!(std::env::var_os("CI").is_none(), "PostgreSQL 15 is not installed in {BIN_DIR}: .ci/run installs it");
        eprintln!("SKIPPED: PostgreSQL 15 is not installed in {BIN_DIR}");
        return;
    }
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let instances = Instances::new(cluster.dir.path());
    let names = IDS.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    let settings = format!("synchronous_standby_names = 'ANY 1 ({names})'\nwal_keep_size = '1GB'\n");
    instances.driver.initialise(IDS[0], &settings).await.expect("initdb and start the first instance");
    let c = connect(&instances.address(0), Duration::from_secs(5)).await.expect("connect");
    c.batch_execute("SET synchronous_commit = local; CREATE TABLE seq (n bigint PRIMARY KEY)").await.expect("table");

    let client = cluster.client();
    client.apply_topology(&topology(&instances), false).await.expect("apply topology");
    let mut agents: Vec<TestAgent> = (0..3).map(|k| instances.agent(&cluster, k)).collect();
    // The running instance is adopted as the first primary; the others are
    // cloned from it (pg_basebackup) and stream from it.
    let (p, epoch) = promoted_after(&client, 0, Duration::from_secs(60)).await;
    assert_eq!(p, 0, "the only running instance is elected");
    for k in 1..3 {
        follows(&instances, k, 0).await;
    }
    fencing_records(&instances, 0, epoch).await;

    let acked: Acked = Arc::default();
    let doubles: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addresses: Vec<String> = (0..3).map(|k| instances.address(k)).collect();
    let writing = tokio::spawn(writer(client.clone(), acked.clone(), stop.clone()));
    let sampling = tokio::spawn(sampler(addresses, doubles.clone(), stop.clone()));
    writes_resume(&acked, &instances.address(0), Instant::now()).await;

    // 1. A planned switchover to us-east: no write lost, ≤ 2 s of writes.
    all_healthy(&client).await;
    let started = Instant::now();
    client.switchover("orders/0", IDS[1], Duration::from_secs(30)).await.expect("switchover");
    let (p, epoch) = promoted_after(&client, epoch, Duration::from_secs(30)).await;
    assert_eq!(p, 1);
    let took = writes_resume(&acked, &instances.address(1), started).await;
    println!("planned switchover: request -> first insert acknowledged on the new primary: {} ms", took.as_millis());
    assert!(took <= Duration::from_secs(2), "switchover took {took:?}");
    follows(&instances, 0, 1).await;
    nothing_lost(&acked, &instances.address(1)).await;

    // 2. Only the primary's postmaster dies; its agent and region live.
    all_healthy(&client).await;
    let before = acked_count(&acked);
    let killed = Instant::now();
    instances.kill_postmaster(1);
    let (p, next) = promoted_after(&client, epoch, Duration::from_secs(60)).await;
    assert_eq!(next, epoch + 1, "promoted at epoch + 1");
    assert_ne!(p, 1);
    let rto = writes_resume(&acked, &instances.address(p), killed).await;
    println!("postmaster killed -> first insert acknowledged on {}: {} ms", IDS[p], rto.as_millis());
    assert!(acked_count(&acked) > before);
    fencing_records(&instances, p, next).await;
    follows(&instances, 1, p).await;
    nothing_lost(&acked, &instances.address(p)).await;
    let epoch = next;

    // 3. The primary's whole region dies: postmaster, agent, coordinator node.
    all_healthy(&client).await;
    let region = REGIONS[p];
    let node = cluster.nodes.iter().find(|n| n.region == region).map(|n| n.id).expect("node of the region");
    let killed = Instant::now();
    instances.kill_postmaster(p);
    agents[p].kill9();
    cluster.node(node).kill9();
    let survivors = Client::with_options(
        cluster.nodes.iter().filter(|n| n.is_running()).map(|n| n.grpc.clone()),
        cluster.options_as(interlock_tests::OPERATOR),
    )
    .expect("client");
    let (q, next) = promoted_after(&survivors, epoch, Duration::from_secs(60)).await;
    assert_eq!(next, epoch + 1, "promoted at epoch + 1");
    assert_ne!(q, p);
    let rto = writes_resume(&acked, &instances.address(q), killed).await;
    println!("region {region} killed -> first insert acknowledged on {}: {} ms", IDS[q], rto.as_millis());
    fencing_records(&instances, q, next).await;
    nothing_lost(&acked, &instances.address(q)).await;
    // The region returns: its old primary is fenced, rewound and follows.
    cluster.node(node).start();
    agents[p] = instances.agent(&cluster, p);
    follows(&instances, p, q).await;

    stop.store(true, Ordering::SeqCst);
    writing.await.expect("writer");
    let rounds = sampling.await.expect("sampler");
    assert!(rounds > 20, "the sampler saw exactly one primary in only {rounds} rounds");
    nothing_lost(&acked, &instances.address(q)).await;
    let doubles = doubles.lock().expect("doubles").clone();
    assert!(doubles.is_empty(), "two instances accepted writes at once: {doubles:?}");
    println!("{} inserts acknowledged, none lost; {rounds} sampling rounds with one primary", acked_count(&acked));
    drop(agents);
}
