//! A three-node cluster of real processes survives kill -9 of its leader.

use interlock_tests::{ClusterOptions, TestCluster};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_leader_kill_and_the_killed_node_catches_up() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();

    // Write through every node: followers forward to the leader.
    for i in 0..30 {
        let node = &cluster.nodes[i % 3];
        let (key, value) = (format!("before/{i}"), format!("v{i}"));
        node.client().put(&key, value.clone().into_bytes()).await.expect("write through any node");
        acknowledged.insert(key, value);
    }

    let old_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let old_term = cluster.status().await.term;
    cluster.node(old_leader).kill9();

    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, old_leader, "a killed node cannot stay leader");
    let status = cluster.status().await;
    assert!(status.term > old_term, "a new election raised the term: {} -> {}", old_term, status.term);

    // Writes continue, through both survivors.
    let survivors: Vec<u64> = cluster.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect();
    for i in 0..30 {
        let id = survivors[i % survivors.len()];
        let (key, value) = (format!("after/{i}"), format!("w{i}"));
        cluster.node(id).client().put(&key, value.clone().into_bytes()).await.expect("write after failover");
        acknowledged.insert(key, value);
    }

    // The killed node comes back and catches up.
    cluster.node(old_leader).start();
    let target = cluster.client().put("final", b"x".to_vec()).await.expect("final write");
    acknowledged.insert("final".into(), "x".into());
    cluster.wait_applied(target, Duration::from_secs(30)).await;

    let views = cluster.local_views().await;
    assert_eq!(views.len(), 3);
    let reference = &views[&new_leader];
    for (id, view) in &views {
        assert_eq!(view, reference, "node {id} differs from the leader {new_leader}");
    }
    let held: BTreeMap<String, String> =
        reference.iter().map(|kv| (kv.key.clone(), String::from_utf8_lossy(&kv.value).to_string())).collect();
    assert_eq!(held, acknowledged, "every acknowledged write, and nothing else");
    let status = cluster.status().await;
    assert!(status.members.iter().all(|m| m.reachable), "all members answer: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_a_node_down_cleanly_and_it_restarts_without_reinitialising() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let revision = cluster.client().put("k", b"1".to_vec()).await.expect("write");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("a follower");
    assert!(cluster.node(follower).terminate(), "SIGTERM exits 0\n{}", cluster.node(follower).log());
    cluster.node(follower).start();
    cluster.wait_applied(revision, Duration::from_secs(20)).await;
    let log = cluster.node(follower).log();
    assert_eq!(log.matches("bootstrapping the cluster").count(), 1, "bootstrapped once only:\n{log}");
    assert!(log.contains("stopped"), "clean shutdown logged:\n{log}");
}
