//! A cluster that waits writes nothing: a shard that awaits an operator's
//! decision, and a drain that a routing rule blocks, are noted once in the
//! event log — and then the Raft log stays where it is until something
//! changes. (Before, the leader re-proposed the wait ten times a second and
//! a blocked drain step every five seconds.)

use interlock_client::Client;
use interlock_tests::{eventually, sample_topology, ClusterOptions, TestCluster};
use std::time::Duration;

/// How long the log must stay flat. The old behaviour wrote ~10 entries a
/// second while a shard waited, so a quiet second would already show it.
const QUIET_WINDOW: Duration = Duration::from_secs(3);

/// The leader's applied index now.
async fn applied(cluster: &TestCluster) -> u64 {
    let status = cluster.status().await;
    let leader = status.members.iter().find(|m| m.id == status.leader).expect("the leader is a member");
    leader.last_applied.expect("the leader reports its applied index")
}

async fn has_event(client: &Client, kind: &str) -> bool {
    client.events(0, 0).await.is_ok_and(|events| events.iter().any(|e| e.kind == kind))
}

/// Asserts that the leader applies nothing for [`QUIET_WINDOW`].
async fn assert_quiet(cluster: &TestCluster, while_what: &str) {
    let before = applied(cluster).await;
    tokio::time::sleep(QUIET_WINDOW).await;
    let after = applied(cluster).await;
    let events = cluster.client().events(0, 0).await.unwrap_or_default();
    let recent: Vec<String> =
        events.iter().rev().take(5).map(|e| format!("{} {}: {}", e.kind, e.subject, e.message)).collect();
    assert_eq!(after, before, "entries were written while {while_what}; newest events: {recent:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_cluster_writes_nothing() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    client.apply_topology(&sample_topology(), false).await.expect("apply the topology");

    // No controller runs any replica. An operator promotes one anyway; it is
    // never acknowledged, so it is fenced, its lease runs out, and the shard
    // waits for an operator (no candidate is heard).
    let asked = client.failover("orders/0", "o0-eu", true, Duration::ZERO).await.expect("operator failover");
    // Accepting data loss needs a second operator.
    let second = cluster.client_as(interlock_tests::SECOND_OPERATOR);
    second.approve(asked.approval_id).await.expect("approve");
    eventually("the shard awaits an operator", Duration::from_secs(30), || async {
        client.shards().await.is_ok_and(|s| s.iter().any(|s| !s.awaiting_operator.is_empty()))
    })
    .await;
    assert_quiet(&cluster, "the shard awaited an operator").await;

    // Two regions drain in steps of 40% of their weight; the second steps
    // would leave ap-south above its capacity share, so both drains pause.
    for region in ["eu-west", "us-east"] {
        client.drain(region, false, 4_000, Duration::from_millis(100), "test").await.expect("start the drain");
    }
    eventually("a drain is noted as blocked", Duration::from_secs(30), || has_event(&client, "region.drain_blocked"))
        .await;
    // Both drains get their note; then nothing more.
    eventually("both drains are noted", Duration::from_secs(10), || async {
        let events = client.events(0, 0).await.unwrap_or_default();
        events.iter().filter(|e| e.kind == "region.drain_blocked").count() == 2
    })
    .await;
    assert_quiet(&cluster, "two drains were blocked").await;
    let events = client.events(0, 0).await.expect("events");
    let blocked: Vec<&str> =
        events.iter().filter(|e| e.kind == "region.drain_blocked").map(|e| e.message.as_str()).collect();
    assert!(blocked.iter().all(|m| m.contains("capacity-ceiling")), "{blocked:?}");
}
