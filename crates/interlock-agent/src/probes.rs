//! Agents find each other through the coordinator's key-value space
//! (`agents/<region>/<id>` = probe address) and probe each other over TCP:
//! a probe answer proves the region reachable (the witness report) and
//! carries the demo database's positions, which replicate that way.

use crate::drivers::demo::DemoDatabase;
use interlock_client::Client;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How often peers are probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A region not answered within this is reported unreachable.
pub const REACHABLE_WINDOW: Duration = Duration::from_millis(1000);
/// Key prefix under which agents announce their probe addresses.
pub const AGENTS_PREFIX: &str = "agents/";

/// Answers every probe with the database's probe reply.
pub async fn serve_probes(listener: TcpListener, db: Arc<DemoDatabase>) {
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
pub async fn probe_peers(client: Client, region: String, db: Arc<DemoDatabase>) {
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
