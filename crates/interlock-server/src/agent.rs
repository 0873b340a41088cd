//! `interlockd agent`: the reference region controller, built on the SDK's
//! [`RegionController`] with the [`DemoDatabase`] behind it.
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
use interlock_client::demo::{ActingChange, DemoDatabase};
use interlock_client::{Client, ControllerConfig, LeaseOptions, RegionController};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How often peers are probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A region not answered within this is reported unreachable.
pub const REACHABLE_WINDOW: Duration = Duration::from_millis(1000);
/// Key prefix under which agents announce their probe addresses.
pub const AGENTS_PREFIX: &str = "agents/";

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The agent's TOML config. Example:
    ///
    ///   id = "ctl-eu"
    ///   region = "eu-west"
    ///   endpoints = ["10.0.1.5:7001", "10.1.1.5:7001", "10.2.1.5:7001"]
    ///   probe_listen = "10.0.1.9:7301"
    ///   acting_log = "/var/log/interlock/acting.jsonl"   # optional
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
    /// Append a JSON line per start/stop of acting as primary.
    #[serde(default)]
    pub acting_log: Option<PathBuf>,
    /// One demo write per this many ms on each replica acting as primary.
    #[serde(default = "default_write_every_ms")]
    pub write_every_ms: u64,
}

fn default_write_every_ms() -> u64 {
    10
}

impl AgentConfig {
    pub fn load(path: &PathBuf) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: AgentConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        interlock_core::topology::validate_id(&config.id, "id")?;
        interlock_core::topology::validate_id(&config.region, "region")?;
        if config.endpoints.is_empty() {
            anyhow::bail!("endpoints: at least one coordinator endpoint is needed");
        }
        if config.write_every_ms == 0 {
            anyhow::bail!("write_every_ms: must be at least 1");
        }
        Ok(config)
    }
}

/// One JSON line of the acting log.
fn acting_line(change: &ActingChange) -> String {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    serde_json::json!({
        "at_unix_ms": at as u64, "acting": change.acting, "replica": change.replica, "shard": change.shard,
        "epoch": change.epoch, "token": change.token, "position": change.position, "reason": change.reason,
    })
    .to_string()
}

/// Runs the agent until the process is stopped.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let client = Client::new(config.endpoints.clone())?;
    let listener = TcpListener::bind(config.probe_listen)
        .await
        .with_context(|| format!("probe_listen {}: cannot listen", config.probe_listen))?;
    let advertise = match &config.probe_advertise {
        Some(a) => a.clone(),
        None => listener.local_addr()?.to_string(),
    };
    let replicas = replicas_of(&client, &config).await?;
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
    let db = Arc::new(DemoDatabase::new(&config.region, replicas.clone(), REACHABLE_WINDOW, move |change| {
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
    }));
    tokio::spawn(serve_probes(listener, db.clone()));
    tokio::spawn(probe_peers(client.clone(), config.region.clone(), db.clone()));
    tokio::spawn(write_ticks(db.clone(), Duration::from_millis(config.write_every_ms)));
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
        replicas: replicas.into_iter().map(|(r, _)| r).collect(),
        lease: LeaseOptions::default(),
    };
    RegionController::run(client, controller, db).await?;
    Ok(())
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

async fn serve_probes(listener: TcpListener, db: Arc<DemoDatabase>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let reply = db.probe_reply();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
        });
    }
}

async fn probe_once(addr: &str) -> Option<String> {
    let read = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let mut text = String::new();
        stream.take(64 * 1024).read_to_string(&mut text).await.ok()?;
        Some(text)
    };
    tokio::time::timeout(PROBE_EVERY * 2, read).await.ok().flatten()
}

/// Probes every other region's agents (found in the key-value space).
async fn probe_peers(client: Client, region: String, db: Arc<DemoDatabase>) {
    let mut peers: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut refreshed = 0u32;
    loop {
        tick.tick().await;
        if refreshed.is_multiple_of(10) {
            if let Ok(kvs) = client.range(AGENTS_PREFIX, false, 1000).await {
                peers = kvs
                    .into_iter()
                    .filter(|kv| !kv.key.starts_with(&format!("{AGENTS_PREFIX}{region}/")))
                    .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).to_string()))
                    .collect();
            }
        }
        refreshed = refreshed.wrapping_add(1);
        let probes = peers.values().map(|addr| probe_once(addr));
        for reply in futures::future::join_all(probes).await.into_iter().flatten() {
            db.apply_probe(&reply);
        }
    }
}

async fn write_ticks(db: Arc<DemoDatabase>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        db.write_tick();
    }
}
