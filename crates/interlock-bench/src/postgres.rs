//! PostgreSQL failover, Interlock beside Patroni 3.0.2 + etcd 3.4 (Debian)
//! on the same machine, in one run: the same three PostgreSQL 15 instances'
//! shape (a primary and two standbys, synchronous commit to one of them),
//! the same writer (sequence numbers, one insert at a time), the same kill
//! (the primary's host: its postmaster and its agent — for Patroni its
//! patroni — with kill -9; the coordinators, and Patroni's etcd, live on).
//!
//! RTO = kill -> first insert acknowledged by the new primary; RPO =
//! acknowledged inserts missing from the new primary; switchover = request
//! -> first insert acknowledged by the new primary.

use crate::Row;
use interlock_tests::postgres::{
    all_healthy, connect, follows, missing, promoted_after, topology, writer, Acked, Find, Instances, BIN_DIR, IDS,
};
use interlock_tests::{free_ports, TestAgent, TestCluster};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Measured rounds of one system.
#[derive(Default)]
pub struct Rounds {
    pub rto_us: Vec<u64>,
    pub switchover_us: Vec<u64>,
    pub lost: u64,
    pub acked: u64,
}

impl Rounds {
    pub fn rows(self, system: &str) -> Vec<Row> {
        vec![
            Row::from_latencies(&format!("{system} host-kill->insert"), 1, self.rto_us, 0.0, self.lost),
            Row::from_latencies(&format!("{system} switchover->insert"), 1, self.switchover_us, 0.0, 0),
        ]
    }
}

/// The first insert acknowledged through `address` after `since`.
async fn first_insert(acked: &Acked, address: &str, since: Instant, within: Duration) -> anyhow::Result<Duration> {
    Ok(first_insert_any(acked, &[address.to_string()], since, within).await?.0)
}

/// The first insert acknowledged through any of `addresses` after `since`,
/// and which address it went through.
async fn first_insert_any(
    acked: &Acked,
    addresses: &[String],
    since: Instant,
    within: Duration,
) -> anyhow::Result<(Duration, String)> {
    let deadline = Instant::now() + within;
    loop {
        let first = {
            let acked = acked.lock().unwrap_or_else(|p| p.into_inner());
            acked.iter().filter(|(_, at, a)| *at > since && addresses.contains(a)).min_by_key(|(_, at, _)| *at).cloned()
        };
        if let Some((_, at, a)) = first {
            return Ok((at.duration_since(since), a));
        }
        anyhow::ensure!(Instant::now() < deadline, "no insert acknowledged through {addresses:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Interlock: three instances run by agents with the postgres driver.
pub async fn interlock(cluster: &mut TestCluster, rounds: usize) -> anyhow::Result<Rounds> {
    let instances = Instances::new(cluster.dir.path());
    let names = IDS.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");
    let settings = format!("synchronous_standby_names = 'ANY 1 ({names})'\nwal_keep_size = '1GB'\n");
    instances.driver.initialise(IDS[0], &settings).await.map_err(anyhow::Error::msg)?;
    let c = connect(&instances.address(0), Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
    c.batch_execute("SET synchronous_commit = local; CREATE TABLE seq (n bigint PRIMARY KEY)").await?;
    let client = cluster.client();
    client.apply_topology(&topology(&instances), false).await?;
    let mut agents: Vec<TestAgent> = (0..3).map(|k| instances.agent(cluster, k)).collect();
    let (_, mut epoch) = promoted_after(&client, 0, Duration::from_secs(60)).await;
    for k in 1..3 {
        follows(&instances, k, 0).await;
    }
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(Find::Interlock(client.clone()), acked.clone(), stop.clone()));
    let mut out = Rounds::default();
    for round in 0..rounds {
        all_healthy(&client).await;
        tokio::time::sleep(Duration::from_secs(2)).await; // the detector's rhythm, the replicas caught up
        let p = primary_index(&client).await;
        let killed = Instant::now();
        kill9(postmaster_pid(&instances.root.join(IDS[p])).unwrap_or(0));
        agents[p].kill9();
        let (q, next) = promoted_after(&client, epoch, Duration::from_secs(60)).await;
        out.rto_us.push(
            first_insert(&acked, &instances.address(q), killed, Duration::from_secs(60)).await?.as_micros() as u64,
        );
        epoch = next;
        agents[p] = instances.agent(cluster, p);
        follows(&instances, p, q).await;
        // Its region was declared lost; it returned RECOVERING: make it ACTIVE.
        let region = interlock_tests::postgres::REGIONS[p];
        wait_active(&client, region).await?;
        eprintln!("interlock round {round}: {} -> {}: {} ms", IDS[p], IDS[q], out.rto_us.last().unwrap_or(&0) / 1000);
        // A planned switchover back to the old primary.
        all_healthy(&client).await;
        let asked = Instant::now();
        client.switchover("orders/0", IDS[p], Duration::from_secs(30)).await?;
        let (r, next) = promoted_after(&client, epoch, Duration::from_secs(30)).await;
        epoch = next;
        out.switchover_us
            .push(first_insert(&acked, &instances.address(r), asked, Duration::from_secs(30)).await?.as_micros() as u64);
        follows(&instances, q, r).await;
    }
    stop.store(true, Ordering::SeqCst);
    writing.await?;
    let primary = primary_index(&client).await;
    out.lost = missing(&acked, &instances.address(primary)).await.map_err(anyhow::Error::msg)?.len() as u64;
    out.acked = acked.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    drop(agents);
    Ok(out)
}

async fn primary_index(client: &interlock_client::Client) -> usize {
    let primary = interlock_tests::postgres::shard(client).await.primary;
    IDS.iter().position(|i| *i == primary).unwrap_or(0)
}

/// Activates a RECOVERING region (retrying while it is still LOST).
async fn wait_active(client: &interlock_client::Client, region: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = client.regions().await?.into_iter().find(|r| r.id == region).map(|r| r.state).unwrap_or_default();
        match state.as_str() {
            "ACTIVE" => return Ok(()),
            "RECOVERING" => match client.activate_region(region, "bench: the old primary follows again").await {
                Ok(r) if r.approval_id != 0 => eprintln!("activate {region}: approval {} needed", r.approval_id),
                Ok(_) => {}
                Err(e) => eprintln!("activate {region}: {e}"),
            },
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "region {region} is still {state}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Patroni's loop settings: (ttl, loop_wait, retry_timeout) in seconds.
#[derive(Debug, Clone, Copy)]
pub struct PatroniTiming {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

impl PatroniTiming {
    /// Patroni's defaults.
    pub const DEFAULTS: PatroniTiming = PatroniTiming { ttl: 30, loop_wait: 10, retry_timeout: 10 };
    /// The fastest its documentation allows: the rule
    /// `loop_wait + 2 × retry_timeout <= ttl`, with loop_wait 1 s.
    pub const FAST: PatroniTiming = PatroniTiming { ttl: 10, loop_wait: 1, retry_timeout: 4 };
}

/// A process killed on drop.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Patroni: three members and a one-member etcd, in `dir`.
struct Patroni {
    dir: PathBuf,
    pg_ports: Vec<u16>,
    configs: Vec<PathBuf>,
    members: Vec<Proc>,
    _etcd: Proc,
    uid: (u32, u32),
}

impl Patroni {
    fn start(dir: &Path, timing: PatroniTiming) -> anyhow::Result<Patroni> {
        let user = nix::unistd::User::from_name("postgres")?.ok_or_else(|| anyhow::anyhow!("no postgres user"))?;
        let uid = (user.uid.as_raw(), user.gid.as_raw());
        std::fs::create_dir_all(dir)?;
        for d in [dir.parent().unwrap_or(dir), dir] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        nix::unistd::chown(dir, Some(user.uid), Some(user.gid))?;
        let ports = free_ports(8);
        let (etcd_client, etcd_peer) = (ports[0], ports[1]);
        let etcd = Command::new("etcd")
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!("--initial-cluster=e0=http://127.0.0.1:{etcd_peer}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log"))?)
            .spawn()?;
        let pg_ports = ports[2..5].to_vec();
        let mut configs = Vec::new();
        for k in 0..3 {
            let (pg, api) = (pg_ports[k], ports[5 + k]);
            let data = dir.join(format!("pg{k}"));
            let yaml = format!(
                "scope: bench\nname: pg{k}\n\
                 restapi:\n  listen: 127.0.0.1:{api}\n  connect_address: 127.0.0.1:{api}\n\
                 etcd3:\n  hosts: 127.0.0.1:{etcd_client}\n\
                 bootstrap:\n  dcs:\n    ttl: {}\n    loop_wait: {}\n    retry_timeout: {}\n    synchronous_mode: true\n\
                 \x20   postgresql:\n      use_pg_rewind: true\n      parameters:\n        wal_keep_size: 1GB\n        wal_log_hints: 'on'\n\
                 \x20 initdb:\n  - encoding: UTF8\n  - locale: C\n  - data-checksums\n\
                 postgresql:\n  listen: 127.0.0.1:{pg}\n  connect_address: 127.0.0.1:{pg}\n  data_dir: {}\n\
                 \x20 bin_dir: {BIN_DIR}\n  pgpass: {}\n\
                 \x20 authentication:\n    superuser:\n      username: postgres\n      password: bench\n\
                 \x20   replication:\n      username: postgres\n      password: bench\n\
                 \x20 parameters:\n    unix_socket_directories: '{}'\n\
                 \x20 pg_hba:\n  - local all all trust\n  - host all all 127.0.0.1/32 trust\n  - host replication all 127.0.0.1/32 trust\n",
                timing.ttl,
                timing.loop_wait,
                timing.retry_timeout,
                data.display(),
                dir.join(format!("pgpass{k}")).display(),
                dir.display(),
            );
            let path = dir.join(format!("pg{k}.yml"));
            std::fs::write(&path, yaml)?;
            configs.push(path);
        }
        let mut patroni =
            Patroni { dir: dir.to_path_buf(), pg_ports, configs, members: Vec::new(), _etcd: Proc(Some(etcd)), uid };
        for k in 0..3 {
            let member = patroni.member(k)?;
            patroni.members.push(member);
            if k == 0 {
                std::thread::sleep(Duration::from_secs(3)); // the first bootstraps the cluster
            }
        }
        Ok(patroni)
    }

    fn member(&self, k: usize) -> anyhow::Result<Proc> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("pg{k}.patroni.log")))?;
        let child = std::os::unix::process::CommandExt::gid(
            std::os::unix::process::CommandExt::uid(Command::new("patroni").arg(&self.configs[k]), self.uid.0),
            self.uid.1,
        )
        .current_dir(&self.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
        Ok(Proc(Some(child)))
    }

    fn address(&self, k: usize) -> String {
        format!("127.0.0.1:{}", self.pg_ports[k])
    }

    /// The member that accepts writes, once the other two have streamed
    /// from it for 5 s (right after a switchover the standbys may still be
    /// repointing; a kill then would test something else).
    async fn settled(&self, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        let mut steady: Option<(usize, Instant)> = None;
        loop {
            let mut leader = None;
            for k in 0..3 {
                let Ok(c) = connect(&self.address(k), Duration::from_millis(500)).await else { continue };
                let q = "SELECT NOT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')";
                if let Ok(row) = c.query_one(q, &[]).await {
                    if row.get::<_, bool>(0) && row.get::<_, i64>(1) == 2 {
                        leader = Some(k);
                    }
                }
            }
            steady = match (leader, steady) {
                (Some(k), Some((s, since))) if s == k => Some((k, since)),
                (Some(k), _) => Some((k, Instant::now())),
                (None, _) => None,
            };
            if let Some((k, _)) = steady.filter(|(_, since)| since.elapsed() >= Duration::from_secs(5)) {
                return Ok(k);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "Patroni did not settle within {within:?}; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn stop_postgres(&self) {
        for k in 0..3 {
            if let Some(pid) = postmaster_pid(&self.dir.join(format!("pg{k}"))) {
                kill9(pid);
            }
        }
    }
}

/// Patroni at `timing`: the same rounds as [`interlock`].
pub async fn patroni(dir: &Path, timing: PatroniTiming, rounds: usize) -> anyhow::Result<Rounds> {
    let mut p = Patroni::start(dir, timing)?;
    let result = patroni_rounds(&mut p, timing, rounds).await;
    if result.is_err() {
        for k in 0..3 {
            let log = std::fs::read_to_string(p.dir.join(format!("pg{k}.patroni.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- pg{k} patroni (last 15 lines)\n{}", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
    }
    p.members.clear();
    p.stop_postgres();
    result
}

async fn patroni_rounds(p: &mut Patroni, timing: PatroniTiming, rounds: usize) -> anyhow::Result<Rounds> {
    let leader = p.settled(Duration::from_secs(120)).await?;
    let c = connect(&p.address(leader), Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
    c.batch_execute("CREATE TABLE seq (n bigint PRIMARY KEY)").await?;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addresses: Vec<String> = (0..3).map(|k| p.address(k)).collect();
    let writing = tokio::spawn(writer(Find::ReadWrite(addresses), acked.clone(), stop.clone()));
    let mut out = Rounds::default();
    for round in 0..rounds {
        let leader = p.settled(Duration::from_secs(120)).await?;
        // Two of Patroni's loops, so that its record of the synchronous
        // standby is current: killed sooner after a switchover, neither
        // standby would promote itself ("not the healthiest node", found
        // here) and the cluster waits for an operator.
        tokio::time::sleep(Duration::from_secs(2 + 2 * timing.loop_wait)).await;
        let killed = Instant::now();
        p.members[leader] = Proc(None);
        if let Some(pid) = postmaster_pid(&p.dir.join(format!("pg{leader}"))) {
            kill9(pid);
        }
        let others: Vec<String> = (0..3).filter(|k| *k != leader).map(|k| p.address(k)).collect();
        let rto = first_insert_any(&acked, &others, killed, Duration::from_secs(120)).await?;
        out.rto_us.push(rto.0.as_micros() as u64);
        eprintln!("patroni round {round}: pg{leader} -> {}: {} ms", rto.1, rto.0.as_millis());
        p.members[leader] = p.member(leader)?;
        let now = p.settled(Duration::from_secs(120)).await?;
        // A planned switchover, through patronictl (in synchronous mode
        // Patroni picks the synchronous standby; it refuses — exit 0 —
        // until it has one, so ask again until it takes it).
        let deadline = Instant::now() + Duration::from_secs(60);
        let asked = loop {
            let asked = Instant::now();
            let mut command = Command::new("patronictl");
            command.arg("-c").arg(&p.configs[now]).args(["switchover", "--leader", &format!("pg{now}"), "--force"]);
            std::os::unix::process::CommandExt::uid(&mut command, p.uid.0);
            std::os::unix::process::CommandExt::gid(&mut command, p.uid.1);
            let output = command.current_dir(&p.dir).stdin(Stdio::null()).output()?;
            let said =
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            if output.status.success() && !said.contains("failed") {
                break asked;
            }
            anyhow::ensure!(Instant::now() < deadline, "patronictl switchover: {said}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let others: Vec<String> = (0..3).filter(|k| *k != now).map(|k| p.address(k)).collect();
        out.switchover_us
            .push(first_insert_any(&acked, &others, asked, Duration::from_secs(60)).await?.0.as_micros() as u64);
    }
    stop.store(true, Ordering::SeqCst);
    writing.await?;
    let leader = p.settled(Duration::from_secs(120)).await?;
    out.lost = missing(&acked, &p.address(leader)).await.map_err(anyhow::Error::msg)?.len() as u64;
    out.acked = acked.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    Ok(out)
}
