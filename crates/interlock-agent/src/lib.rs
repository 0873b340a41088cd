//! The reference region controller, run as `interlockd agent`: the SDK's
//! [`RegionController`] with a database driver behind it (the
//! [`DemoDatabase`], PostgreSQL through [`drivers::postgres`], or hook
//! programs through [`drivers::exec`]).
//!
//! Map of the crate:
//! - this file: the agent's config and [`run`];
//! - [`drivers`]: the databases it can drive ([`drivers::demo`],
//!   [`drivers::postgres`], [`drivers::exec`]);
//! - [`probes`]: agents probing each other across regions, for witness
//!   reports (and, for the demo database, replication).
//!
//! It shows the whole controller contract with real processes: it registers
//! its region's replicas, heartbeats with positions and witness reports,
//! promotes and demotes on its assignment under the primary lease, and
//! acknowledges. Agents find each other through the coordinator's key-value
//! space (`agents/<region>/<id>` = probe address) and probe each other over
//! TCP: a probe answer proves the region reachable and replicates positions.
//! Every start and stop of acting as primary can be logged as JSON lines
//! (`acting_log`), stamped with this process's wall clock.

use anyhow::Context;
use clap::Args;
pub mod drivers;
pub mod probes;

use drivers::demo::{ActingChange, DemoDatabase};
use drivers::exec::{ExecConfig, ExecDriver};
use drivers::postgres::{PostgresConfig, PostgresDriver};
use interlock_client::{Client, ControllerConfig, LeaseOptions, RegionController};
use probes::{probe_peers, serve_probes, Reachability};
use serde::Deserialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

use probes::{AGENTS_PREFIX, REACHABLE_WINDOW};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The agent's TOML config. Example:
    ///
    ///   id = "ctl-eu"
    ///   region = "eu-west"
    ///   endpoints = ["10.0.1.5:7001", "10.1.1.5:7001", "10.2.1.5:7001"]
    ///   probe_listen = "10.0.1.9:7301"
    ///   acting_log = "/var/log/interlock/acting.jsonl"   # optional
    ///   tls_ca = "/etc/interlock/ca.pem"        # its certificate is its identity:
    ///   tls_cert = "/etc/interlock/ctl-eu.pem"  # the nodes give it the role
    ///   tls_key = "/etc/interlock/ctl-eu.key"   # controller:eu-west
    ///   # tls = "off" for a plaintext cluster
    ///
    /// The database driver is the demo database unless the file says
    ///
    ///   driver = "exec"            # your database, through hook programs
    ///   [exec]
    ///   command = ["/etc/interlock/hooks/mydb.sh", "--cluster", "main"]
    ///   timeout_ms = 10000         # a hook still running is killed: failed
    ///   status_every_ms = 1000
    ///
    /// or, for PostgreSQL streaming replication (docs/postgresql.md):
    ///
    ///   driver = "postgres"
    ///   [postgres]
    ///   bin_dir = "/usr/lib/postgresql/15/bin"
    ///   os_user = "postgres"       # pg_ctl, pg_rewind run as this user
    ///   [postgres.instances.orders-0-eu]
    ///   data_dir = "/var/lib/postgresql/15/orders"
    ///   port = 5432
    ///
    /// Backups (docs/backups.md): every N s the agent backs up the replicas it
    /// runs as primary into a directory every region's agents can read, and
    /// runs the restore tests the coordinator assigns it:
    ///
    ///   backup_every_seconds = 3600
    ///   backup_dir = "/mnt/backups/orders"
    ///
    /// The hook gets the action (status, promote, demote, fence, follow, routing,
    /// backup, restore_test) as
    /// its last argument, JSON on stdin and INTERLOCK_* variables; exit 0 is
    /// done. deploy/hooks/files.sh is a complete example.
    #[arg(long, verbatim_doc_comment)]
    pub config: PathBuf,
}

/// The agent's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub id: String,
    pub region: String,
    /// Coordinator gRPC endpoints.
    pub endpoints: Vec<String>,
    /// The replicas it runs (default: every declared replica of its region).
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Where other agents probe this one (port 0: any free port).
    pub probe_listen: SocketAddr,
    /// The address other agents should dial (default: the bound address).
    #[serde(default)]
    pub probe_advertise: Option<String>,
    /// Append a JSON line per start/stop of acting as primary (demo driver).
    #[serde(default)]
    pub acting_log: Option<PathBuf>,
    /// One demo write per this many ms on each replica acting as primary
    /// (demo driver).
    #[serde(default = "default_write_every_ms")]
    pub write_every_ms: u64,
    /// Take a backup of each replica this agent runs as primary this often
    /// (demo and postgres drivers; needs `backup_dir`). Absent: no backups.
    #[serde(default)]
    pub backup_every_seconds: Option<u64>,
    /// Where backups go, and where restore tests read them (`file://` URIs):
    /// a directory every region's agents can read. With it, the agent also
    /// runs the restore tests the coordinator assigns it.
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// The database driver: "demo" (default), "postgres" or "exec" (hook programs,
    /// configured in `[exec]`).
    #[serde(default)]
    pub driver: Option<String>,
    /// The hooks of the exec driver.
    #[serde(default)]
    pub exec: Option<ExecConfig>,
    /// The instances of the postgres driver.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    /// "on" (default: tls_ca, tls_cert and tls_key are required) or "off".
    #[serde(default)]
    pub tls: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

fn default_write_every_ms() -> u64 {
    10
}

impl AgentConfig {
    pub fn load(path: &PathBuf) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        AgentConfig::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and validates the text of a config file.
    pub fn parse(text: &str) -> anyhow::Result<AgentConfig> {
        let config: AgentConfig = toml::from_str(text).context("parsing")?;
        interlock_core::vocab::validate_id(&config.id, "id")?;
        interlock_core::vocab::validate_id(&config.region, "region")?;
        if config.endpoints.is_empty() {
            anyhow::bail!("endpoints: at least one coordinator endpoint is needed");
        }
        if config.write_every_ms == 0 {
            anyhow::bail!("write_every_ms: must be at least 1");
        }
        if config.backup_every_seconds == Some(0) {
            anyhow::bail!("backup_every_seconds: must be at least 1 (leave it out for no backups)");
        }
        if config.backup_every_seconds.is_some() && config.backup_dir.is_none() {
            anyhow::bail!("backup_dir: needed with backup_every_seconds (where the backups go)");
        }
        if config.backup_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            anyhow::bail!("backup_dir: must be an absolute path (it becomes a file:// URI)");
        }
        config.tls_files()?;
        config.driver()?;
        Ok(config)
    }

    /// Which driver runs the replicas, or what is wrong with its settings.
    pub fn driver(&self) -> anyhow::Result<Driver> {
        let driver = self.driver.as_deref().unwrap_or("demo");
        if self.exec.is_some() && driver != "exec" {
            anyhow::bail!("exec: only with driver = \"exec\"");
        }
        if self.postgres.is_some() && driver != "postgres" {
            anyhow::bail!("postgres: only with driver = \"postgres\"");
        }
        match (driver, &self.exec, &self.postgres) {
            ("demo", _, _) => Ok(Driver::Demo),
            ("exec", Some(exec), _) => {
                exec.validate().map_err(anyhow::Error::msg)?;
                Ok(Driver::Exec(exec.clone()))
            }
            ("exec", None, _) => anyhow::bail!("exec: driver = \"exec\" needs an [exec] section with command"),
            ("postgres", _, Some(pg)) => {
                pg.validate().map_err(anyhow::Error::msg)?;
                Ok(Driver::Postgres(pg.clone()))
            }
            ("postgres", _, None) => {
                anyhow::bail!("postgres: driver = \"postgres\" needs a [postgres] section with instances")
            }
            (other, _, _) => anyhow::bail!("driver: {other:?} is not \"demo\", \"exec\" or \"postgres\""),
        }
    }

    /// The TLS files (None: `tls = "off"`), or which key is missing.
    pub fn tls_files(&self) -> anyhow::Result<Option<interlock_client::TlsFiles>> {
        match self.tls.as_deref().unwrap_or("on") {
            "off" => Ok(None),
            "on" => {
                let need = |value: &Option<PathBuf>, key: &str| {
                    value.clone().with_context(|| format!("{key}: missing (required unless tls = \"off\")"))
                };
                Ok(Some(interlock_client::TlsFiles {
                    ca: need(&self.tls_ca, "tls_ca")?,
                    cert: need(&self.tls_cert, "tls_cert")?,
                    key: need(&self.tls_key, "tls_key")?,
                    peer_ca: None,
                }))
            }
            other => anyhow::bail!("tls: {other:?} is not \"on\" or \"off\""),
        }
    }
}

/// The database driver of an agent.
#[derive(Debug, Clone)]
pub enum Driver {
    Demo,
    Exec(ExecConfig),
    Postgres(PostgresConfig),
}

/// One JSON line of the acting log.
fn acting_line(change: &ActingChange) -> String {
    serde_json::json!({
        "at_unix_ms": unix_ms(), "acting": change.acting, "replica": change.replica, "shard": change.shard,
        "epoch": change.epoch, "token": change.token, "position": change.position, "reason": change.reason,
    })
    .to_string()
}

/// Runs the agent until the process is stopped.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let tls = match config.tls_files()? {
        Some(files) => {
            let tls = interlock_client::Tls::from_files(&files)?;
            tls.watch(files, Duration::from_secs(5));
            Some(tls)
        }
        None => None,
    };
    let options = interlock_client::ClientOptions { tls, ..interlock_client::ClientOptions::default() };
    let client = Client::with_options(config.endpoints.clone(), options)?;
    let listener = TcpListener::bind(config.probe_listen)
        .await
        .with_context(|| format!("probe_listen {}: cannot listen", config.probe_listen))?;
    let advertise = match &config.probe_advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    let replicas = replicas_of(&client, &config).await?;
    announce(&client, &config, &advertise).await;
    tracing::info!(
        agent = config.id,
        region = config.region,
        probe = advertise,
        "agent running {} replicas",
        replicas.len()
    );
    let controller = ControllerConfig {
        id: config.id.clone(),
        region: config.region.clone(),
        identity: format!("controller:{}", config.region),
        replicas: replicas.iter().map(|(r, _)| r.clone()).collect(),
        lease: LeaseOptions::default(),
        give_up_after: ControllerConfig::GIVE_UP_AFTER,
        backup_every: config.backup_every_seconds.map(Duration::from_secs),
        mutations: Default::default(),
    };
    match config.driver()? {
        Driver::Demo => {
            let db = Arc::new(demo_database(&config, replicas)?);
            tokio::spawn(serve_probes(listener, db.clone()));
            tokio::spawn(probe_peers(client.clone(), config.region.clone(), db.clone()));
            tokio::spawn(write_ticks(db.clone(), Duration::from_millis(config.write_every_ms)));
            RegionController::run(client, controller, db).await?;
        }
        Driver::Exec(exec) => {
            let reachable = witness_probes(&client, &config, listener);
            let driver = Arc::new(ExecDriver::new(exec, replicas, reachable).map_err(anyhow::Error::msg)?);
            tokio::spawn(driver.clone().poll_status());
            RegionController::run(client, controller, driver).await?;
        }
        Driver::Postgres(pg) => {
            let reachable = witness_probes(&client, &config, listener);
            let driver = PostgresDriver::new(pg, replicas, reachable).map_err(anyhow::Error::msg)?;
            let driver = Arc::new(match &config.backup_dir {
                Some(dir) => driver.with_backups(dir.clone()),
                None => driver,
            });
            tokio::spawn(driver.clone().run());
            RegionController::run(client, controller, driver).await?;
        }
    }
    Ok(())
}

/// For a real database: probes to and from the other regions' agents, for
/// the witness report only (the database replicates itself).
fn witness_probes(client: &Client, config: &AgentConfig, listener: TcpListener) -> Arc<Reachability> {
    let reachable = Arc::new(Reachability::new(&config.region, REACHABLE_WINDOW));
    tokio::spawn(serve_probes(listener, reachable.clone()));
    tokio::spawn(probe_peers(client.clone(), config.region.clone(), reachable.clone()));
    reachable
}

/// The demo database, logging (and, with `acting_log`, recording) every
/// start and stop of acting as primary.
fn demo_database(config: &AgentConfig, replicas: Vec<(String, String)>) -> anyhow::Result<DemoDatabase> {
    let log = match &config.acting_log {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("acting_log {}", path.display()))?,
        )),
        None => None,
    };
    let id = config.id.clone();
    let db = DemoDatabase::new(&config.region, replicas, REACHABLE_WINDOW, move |change| {
        tracing::info!(
            agent = id,
            "{} {} epoch {} token {}: {}",
            if change.acting { "ACT" } else { "STOP" },
            change.replica,
            change.epoch,
            change.token,
            change.reason
        );
        if let Some(file) = &log {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(file, "{}", acting_line(change));
            let _ = file.flush();
        }
    });
    Ok(match &config.backup_dir {
        Some(dir) => db.with_backups(drivers::backups::BackupStore::Dir(dir.clone()), Arc::new(unix_ms)),
        None => db,
    })
}

/// This process's wall clock, in ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// (replica, SERVICE/SHARD) of every replica this agent runs.
async fn replicas_of(client: &Client, config: &AgentConfig) -> anyhow::Result<Vec<(String, String)>> {
    let declared = loop {
        match client.replicas().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::info!("waiting for the coordinator: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut out = Vec::new();
    for r in declared.iter().filter(|r| r.region == config.region) {
        if config.replicas.is_empty() || config.replicas.contains(&r.id) {
            out.push((r.id.clone(), format!("{}/{}", r.service, r.shard)));
        }
    }
    for wanted in &config.replicas {
        if !out.iter().any(|(id, _)| id == wanted) {
            anyhow::bail!("replicas: {wanted:?} is not a declared replica of region {}", config.region);
        }
    }
    Ok(out)
}

async fn announce(client: &Client, config: &AgentConfig, advertise: &str) {
    let key = format!("{AGENTS_PREFIX}{}/{}", config.region, config.id);
    while let Err(e) = client.put(&key, advertise.as_bytes().to_vec()).await {
        tracing::info!("announcing the probe address: {e}; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn write_ticks(db: Arc<DemoDatabase>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        db.write_tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "id = \"ctl-eu\"\nregion = \"eu-west\"\nendpoints = [\"127.0.0.1:7001\"]\nprobe_listen = \"127.0.0.1:0\"\ntls = \"off\"\n";

    #[test]
    fn the_driver_and_its_hooks_are_checked_by_key() {
        assert!(matches!(AgentConfig::parse(BASE).expect("demo").driver(), Ok(Driver::Demo)));
        let exec = format!("{BASE}driver = \"exec\"\n[exec]\ncommand = [\"/bin/true\"]\n");
        let config = AgentConfig::parse(&exec).expect("exec");
        assert!(matches!(config.driver(), Ok(Driver::Exec(e)) if e.timeout_ms == 10_000 && e.status_every_ms == 1_000));
        let cases = [
            (format!("{BASE}driver = \"mysql\"\n"), "driver: \"mysql\""),
            (format!("{BASE}driver = \"postgres\"\n"), "postgres: driver = \"postgres\" needs"),
            (format!("{BASE}[postgres]\ninstances = {{}}\n"), "postgres: only with driver"),
            (format!("{BASE}driver = \"postgres\"\n[postgres]\ninstances = {{}}\n"), "postgres.instances"),
            (format!("{BASE}driver = \"exec\"\n"), "exec: driver = \"exec\" needs"),
            (format!("{BASE}[exec]\ncommand = [\"/bin/true\"]\n"), "exec: only with driver"),
            (format!("{BASE}driver = \"exec\"\n[exec]\ncommand = []\n"), "exec.command"),
            (format!("{BASE}driver = \"exec\"\n[exec]\ncommand = [\"x\"]\ntimeout_ms = 5\n"), "exec.timeout_ms"),
            (format!("{BASE}driver = \"exec\"\n[exec]\ncommand = [\"x\"]\nretries = 5\n"), "retries"),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", AgentConfig::parse(&text).expect_err(expected));
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
