//! Crash durability: kill -9 of every node in the middle of a write burst
//! loses no acknowledged write. Repeated, so that the kill lands at
//! different points of the write path. The writers are concurrent, so the
//! leader batches their writes (several per log entry): each acknowledged
//! revision must be the one the key was written at.

use interlock_tests::{ClusterOptions, TestCluster};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Concurrent writers during a burst.
const WRITERS: usize = 16;
/// Bursts (each ending in kill -9 of the whole cluster).
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_every_node_is_killed_mid_burst() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let acknowledged: Arc<Mutex<BTreeMap<String, (String, u64)>>> = Arc::default();

    for round in 0..ROUNDS {
        let client = Arc::new(cluster.client());
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, acknowledged) = (client.clone(), acknowledged.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("r{round}/w{w}/{i}");
                    let value = format!("{round}-{w}-{i}");
                    match client.put(&key, value.clone().into_bytes()).await {
                        Ok(revision) => {
                            acknowledged.lock().expect("lock").insert(key, (value, revision));
                        }
                        Err(_) => return i,
                    }
                }
                0
            }));
        }
        // Let the burst run, then kill every node at once (no flush, no shutdown).
        tokio::time::sleep(Duration::from_millis(700 + 300 * round as u64)).await;
        for node in &mut cluster.nodes {
            node.kill9();
        }
        for writer in writers {
            let _ = writer.await;
        }
        for node in &mut cluster.nodes {
            node.start();
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await;

        let expected = acknowledged.lock().expect("lock").clone();
        assert!(!expected.is_empty(), "round {round}: the burst acknowledged writes before the kill");
        let client = cluster.client();
        for (key, (value, revision)) in &expected {
            let got = client.get(key, true).await.unwrap_or_else(|e| panic!("read {key}: {e}\n{}", cluster.logs()));
            let got = got.map(|v| (String::from_utf8_lossy(&v.value).to_string(), v.mod_revision));
            assert_eq!(got, Some((value.clone(), *revision)), "round {round}: acknowledged write {key} lost or moved");
        }
        eprintln!("round {round}: {} acknowledged writes all present after kill -9 of every node", expected.len());
    }
}
