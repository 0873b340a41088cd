//! PostgreSQL for the real-process tests and the benchmark: three
//! instances run by agents with the postgres driver (one per region), a
//! writer that inserts sequence numbers through the primary it is pointed
//! at, and a sampler that asks every instance `pg_is_in_recovery()`.

use crate::{eventually, free_ports_on, TestAgent, TestCluster};
use interlock_agent::drivers::postgres::{PostgresConfig, PostgresDriver};
use interlock_agent::probes::Reachability;
use interlock_client::Client;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
pub const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
pub const IDS: [&str; 3] = ["o0-eu", "o0-us", "o0-ap"];
/// Each instance listens on its own loopback address. Outgoing connections
/// all leave from 127.0.0.1, so the port of an instance that is down (a
/// killed postmaster, a rewind) cannot be taken meanwhile as some
/// connection's local port, which would keep it from starting again.
pub const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// The three instances' configuration, as one driver (for initdb and the
/// final stop) and as each agent's `[postgres]` section.
pub struct Instances {
    pub root: PathBuf,
    pub ports: Vec<u16>,
    pub driver: PostgresDriver,
}

impl Instances {
    pub fn new(dir: &Path) -> Instances {
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
        let ports = free_ports_on(&HOSTS);
        let text = Instances::section(&root, &ports, &IDS);
        let config: PostgresConfig = toml::from_str(&text).expect("postgres config");
        let replicas = IDS.iter().map(|id| (id.to_string(), "orders/0".to_string())).collect();
        let reachable = Arc::new(Reachability::new("test", Duration::from_secs(1)));
        let driver = PostgresDriver::new(config, replicas, reachable).expect("driver");
        Instances { root, ports, driver }
    }

    /// A `[postgres]` section (without its header) for `ids`.
    pub fn section(root: &Path, ports: &[u16], ids: &[&str]) -> String {
        let mut text = format!("bin_dir = {BIN_DIR:?}\nstatus_every_ms = 200\ntimeout_ms = 20000\n");
        for id in ids {
            let k = IDS.iter().position(|i| i == id).expect("known id");
            let data = root.join(id).display().to_string();
            let (host, port) = (HOSTS[k], ports[k]);
            text.push_str(&format!("[instances.{id}]\ndata_dir = {data:?}\nhost = {host:?}\nport = {port}\n"));
        }
        text
    }

    pub fn agent(&self, cluster: &TestCluster, k: usize) -> TestAgent {
        self.agent_with(cluster, k, "")
    }

    /// Like [`Instances::agent`], with `keys` (top-level agent config keys,
    /// e.g. `backup_every_seconds = 2`) in its config.
    pub fn agent_with(&self, cluster: &TestCluster, k: usize, keys: &str) -> TestAgent {
        let section =
            Instances::section(&self.root, &self.ports, &[IDS[k]]).replace("[instances.", "[postgres.instances.");
        TestAgent::start_with(cluster, REGIONS[k], &format!("{keys}driver = \"postgres\"\n[postgres]\n{section}"))
    }

    pub fn address(&self, k: usize) -> String {
        format!("{}:{}", HOSTS[k], self.ports[k])
    }

    pub fn kill_postmaster(&self, k: usize) {
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

pub async fn connect(address: &str, within: Duration) -> Result<tokio_postgres::Client, String> {
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

pub fn topology(instances: &Instances) -> interlock_client::Topology {
    let replicas: Vec<_> = (0..3)
        .map(|k| {
            serde_json::json!({"id": IDS[k], "region": REGIONS[k], "priority": 100 - 10 * k, "address": instances.address(k)})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "regions": REGIONS.iter().map(|r| serde_json::json!({"id": r})).collect::<Vec<_>>(),
        "services": [{"name": "orders", "shards": [{
            "id": "0", "max_lag_on_failover": 64 << 20, "cooldown_seconds": 1, "replicas": replicas
        }]}],
        // A returning region may be made ACTIVE in one step (the benchmark
        // does, round after round); routing weights play no part here.
        "routing": {"min_serving_regions": 2, "capacity_headroom_pct": 200, "max_step_bps": 10000}
    }))
    .expect("topology")
}

/// Every acknowledged insert: (sequence number, when, through which address).
pub type Acked = Arc<Mutex<Vec<(i64, Instant, String)>>>;

/// How a writer finds the primary.
#[derive(Clone)]
pub enum Find {
    /// The shard's `primary_address`, from Interlock.
    Interlock(Client),
    /// Whichever of these accepts writes (libpq's
    /// `target_session_attrs=read-write`, as Patroni's clients do).
    ReadWrite(Vec<String>),
}

impl Find {
    /// A session on the primary, and its address.
    async fn primary(&self) -> Option<(tokio_postgres::Client, String)> {
        match self {
            Find::Interlock(client) => {
                let shards = client.shards().await.ok()?;
                let address = shards.first().map(|s| s.primary_address.clone()).filter(|a| !a.is_empty())?;
                let c = connect(&address, Duration::from_millis(500)).await.ok()?;
                Some((c, address))
            }
            Find::ReadWrite(addresses) => {
                let mut config = tokio_postgres::Config::new();
                for a in addresses {
                    let (host, port) = a.rsplit_once(':')?;
                    config.host(host).port(port.parse().ok()?);
                }
                config.user("postgres").dbname("postgres").connect_timeout(Duration::from_millis(500));
                config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
                let (c, connection) =
                    tokio::time::timeout(Duration::from_secs(2), config.connect(tokio_postgres::NoTls))
                        .await
                        .ok()?
                        .ok()?;
                tokio::spawn(connection);
                let port: i32 = c.query_one("SELECT inet_server_port()", &[]).await.ok()?.get(0);
                let address = addresses.iter().find(|a| a.ends_with(&format!(":{port}")))?.clone();
                Some((c, address))
            }
        }
    }
}

/// Inserts increasing numbers through the primary `find` finds, one at a
/// time; a failed insert (outcome unknown) is never retried with its number.
pub async fn writer(find: Find, acked: Acked, stop: Arc<AtomicBool>) {
    let mut n: i64 = 0;
    let mut db: Option<(tokio_postgres::Client, String)> = None;
    while !stop.load(Ordering::SeqCst) {
        if db.is_none() {
            db = find.primary().await;
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
pub async fn sampler(addresses: Vec<String>, doubles: Arc<Mutex<Vec<String>>>, stop: Arc<AtomicBool>) -> usize {
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

pub async fn shard(client: &Client) -> interlock_client::Shard {
    client.shards().await.expect("shards").into_iter().next().expect("one shard")
}

/// Waits until the shard's primary is acknowledged at an epoch above
/// `after`; returns (primary index, epoch).
pub async fn promoted_after(client: &Client, after: u64, within: Duration) -> (usize, u64) {
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

pub fn acked_count(acked: &Acked) -> usize {
    acked.lock().expect("acked").len()
}

/// Waits for writes to go through `address` again after `since`; returns
/// how long after `since` the first one was acknowledged.
pub async fn writes_resume(acked: &Acked, address: &str, since: Instant) -> Duration {
    eventually(&format!("writes acknowledged through {address}"), Duration::from_secs(60), || async {
        acked.lock().expect("acked").iter().any(|(_, at, a)| *at > since && a == address)
    })
    .await;
    let acked = acked.lock().expect("acked");
    let first = acked.iter().filter(|(_, at, a)| *at > since && a == address).map(|(_, at, _)| *at).min();
    first.expect("a write").duration_since(since)
}

/// The acknowledged numbers missing from the table on `address`. The
/// writer may still be writing: the acknowledgements are taken before the
/// table is read, so one that arrives in between is not counted as lost.
pub async fn missing(acked: &Acked, address: &str) -> Result<Vec<i64>, String> {
    let c = connect(address, Duration::from_secs(5)).await?;
    let acked: Vec<i64> = acked.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, _, _)| *n).collect();
    let rows = c.query("SELECT n FROM seq", &[]).await.map_err(|e| format!("read back: {e}"))?;
    let present: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acked.into_iter().filter(|n| !present.contains(n)).collect())
}

/// Every number acknowledged before the check is in the table on `address`.
pub async fn nothing_lost(acked: &Acked, address: &str) {
    let lost = missing(acked, address).await.expect("read the table back from the primary");
    assert!(lost.is_empty(), "{} acknowledged inserts lost: {:?}", lost.len(), &lost[..lost.len().min(20)]);
}

/// The old primary `k` is a standby again, streaming from `primary` and
/// answering queries in recovery.
pub async fn follows(instances: &Instances, k: usize, primary: usize) {
    let name = IDS[k];
    let what = format!("{name} streams from {} and answers as a standby", IDS[primary]);
    eventually(&what, Duration::from_secs(90), || async {
        let Ok(c) = connect(&instances.address(primary), Duration::from_secs(1)).await else { return false };
        let q = "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'";
        if !c.query_one(q, &[&name]).await.is_ok_and(|r| r.get::<_, i64>(0) == 1) {
            return false;
        }
        // It may stream before it accepts connections (hot standby starts
        // once it is consistent).
        let Ok(c) = connect(&instances.address(k), Duration::from_secs(1)).await else { return false };
        c.query_one("SELECT pg_is_in_recovery()", &[]).await.is_ok_and(|r| r.get::<_, bool>(0))
    })
    .await;
}

/// Every replica is reported healthy to the coordinator.
pub async fn all_healthy(client: &Client) {
    eventually("every replica reported healthy", Duration::from_secs(30), || async {
        client.replicas().await.is_ok_and(|r| r.len() == 3 && r.iter().all(|r| r.healthy == Some(true)))
    })
    .await;
}

/// The fencing table on the primary ends with (epoch, its replica).
pub async fn fencing_records(instances: &Instances, primary: usize, epoch: u64) {
    let c = connect(&instances.address(primary), Duration::from_secs(2)).await.expect("connect");
    let rows =
        c.query("SELECT epoch, token, replica FROM interlock.fencing ORDER BY epoch", &[]).await.expect("fencing");
    let last = rows.last().expect("a fencing record");
    assert_eq!((last.get::<_, i64>(0) as u64, last.get::<_, String>(2)), (epoch, IDS[primary].to_string()));
    let tokens: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens grow with epochs: {tokens:?}");
}
