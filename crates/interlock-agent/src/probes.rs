//! Agents find each other through the coordinator's key-value space
//! (`agents/<region>/<id>` = probe address) and probe each other over TCP:
//! a probe answer proves the region reachable (the witness report) and, for
//! the demo database, carries positions, which replicate that way.
//!
//! A probe answer is text: a first line `interlock-probe v1 REGION`, then
//! whatever the answering side adds (the demo database: `SHARD POSITION`
//! lines).

use interlock_client::Client;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How often peers are probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A region not answered within this is reported unreachable.
pub const REACHABLE_WINDOW: Duration = Duration::from_millis(1000);
/// Key prefix under which agents announce their probe addresses.
pub const AGENTS_PREFIX: &str = "agents/";
/// First line of a probe answer, before the region.
const PROBE_HEADER: &str = "interlock-probe v1";

/// What answers probes and learns from the answers to its own.
pub trait Probed: Send + Sync + 'static {
    /// The answer to a probe from another agent.
    fn probe_reply(&self) -> String;
    /// Takes in an answer received now; false if it was malformed.
    fn apply_probe(&self, reply: &str) -> bool;
}

/// The first line of a probe answer from `region`.
pub fn probe_header(region: &str) -> String {
    format!("{PROBE_HEADER} {region}\n")
}

/// Splits a probe answer into its region and the lines after the header;
/// None if it is not one.
pub fn parse_probe(reply: &str) -> Option<(&str, std::str::Lines<'_>)> {
    let mut lines = reply.lines();
    let region = lines.next()?.strip_prefix(PROBE_HEADER)?.trim();
    (!region.is_empty()).then_some((region, lines))
}

/// Which other regions answered a probe lately: the witness report.
pub struct Reachability {
    region: String,
    window: Duration,
    seen: Mutex<BTreeMap<String, Instant>>,
}

impl Reachability {
    pub fn new(region: &str, window: Duration) -> Reachability {
        Reachability { region: region.to_string(), window, seen: Mutex::new(BTreeMap::new()) }
    }

    /// `region` answered a probe just now.
    pub fn saw(&self, region: &str) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(region.to_string(), Instant::now());
    }

    /// The other regions that answered within the window.
    pub fn regions(&self) -> Vec<String> {
        let now = Instant::now();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|(region, at)| **region != self.region && now.saturating_duration_since(**at) <= self.window)
            .map(|(region, _)| region.clone())
            .collect()
    }
}

/// Reachability alone answers with the header only (no replication).
impl Probed for Reachability {
    fn probe_reply(&self) -> String {
        probe_header(&self.region)
    }

    fn apply_probe(&self, reply: &str) -> bool {
        parse_probe(reply).map(|(region, _)| self.saw(region)).is_some()
    }
}

/// Answers every probe with the database's probe reply.
pub async fn serve_probes<P: Probed>(listener: TcpListener, db: Arc<P>) {
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
pub async fn probe_peers<P: Probed>(client: Client, region: String, db: Arc<P>) {
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
