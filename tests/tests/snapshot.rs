//! Snapshots and log purging: a node that was down while the log it missed
//! was purged rejoins through a snapshot; a 100 MB state machine reaches a
//! new member.

use interlock_tests::{ClusterOptions, TestCluster};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn options(snapshot_every: u64) -> ClusterOptions {
    ClusterOptions {
        extra_args: vec!["--snapshot-every".into(), snapshot_every.to_string()],
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_purged_log_rejoins_through_a_snapshot() {
    let mut cluster = TestCluster::start(3, options(50)).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let down = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("follower");
    let revision_when_down = cluster.client().put("first", b"1".to_vec()).await.expect("write");
    cluster.node(down).kill9();

    let client = cluster.client();
    let mut last = 0;
    for i in 0..400 {
        last = client.put(&format!("k{i:04}"), format!("{i}").into_bytes()).await.expect("write");
    }
    // The leader purged beyond what the stopped node has: only a snapshot can bring it back.
    let leader_node = cluster.nodes.iter().find(|n| n.id == leader).expect("leader");
    let deadline = Instant::now() + Duration::from_secs(20);
    let purged = loop {
        let purged = leader_node.metric("interlock_purged_index").await.unwrap_or(0.0) as u64;
        if purged > revision_when_down || Instant::now() > deadline {
            break purged;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(purged > revision_when_down, "leader purged up to {purged}, the down node had up to {revision_when_down}");

    cluster.node(down).start();
    cluster.wait_applied(last, Duration::from_secs(30)).await;
    let snapshot = cluster.node(down).metric("interlock_snapshot_index").await.unwrap_or(0.0) as u64;
    assert!(snapshot > revision_when_down, "the rejoined node holds a snapshot at {snapshot}");
    let views = cluster.local_views().await;
    let reference = &views[&leader];
    assert_eq!(reference.len(), 401);
    assert_eq!(&views[&down], reference, "the rejoined node has the leader's state");
}

/// Values of the largest accepted size.
const VALUE_BYTES: usize = 64 * 1024;
/// 1600 × 64 KiB = 100 MiB of state.
const VALUES: usize = 1600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_state_machine_reaches_a_new_member_through_a_snapshot() {
    let mut cluster = TestCluster::start(3, options(400)).await;
    let client = Arc::new(cluster.client());
    let mut writers = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for i in (w..VALUES).step_by(16) {
                let value = vec![(i % 251) as u8; VALUE_BYTES];
                // A put of the same key and value is idempotent: one whose
                // outcome is unknown (a slow disk under 16 writers) is retried.
                last = loop {
                    match client.put(&format!("big/{i:05}"), value.clone()).await {
                        Ok(revision) => break revision,
                        Err(interlock_client::ClientError::OutcomeUnknown(_)) => continue,
                        Err(e) => panic!("write: {e:?}"),
                    }
                };
            }
            last
        }));
    }
    let mut last = 0;
    for w in writers {
        last = last.max(w.await.expect("writer"));
    }

    let mut joiner = cluster.new_joiner(4, "eu-west");
    joiner.start();
    let started = Instant::now();
    let asked = client.add_member(4, &joiner.grpc.clone(), "eu-west", false).await.expect("ask to add a member");
    // A membership change needs a second operator.
    let second = cluster.client_as(interlock_tests::SECOND_OPERATOR);
    let reply = second.approve(asked.approval_id).await;
    reply.unwrap_or_else(|e| panic!("add member: {e}\n{}\n{}", cluster.logs(), joiner.log()));
    let members = cluster.status().await.members;
    assert!(members.iter().any(|m| m.id == 4 && m.role == "follower"), "{members:?}");
    cluster.nodes.push(joiner);
    cluster.wait_applied(last, Duration::from_secs(60)).await;
    let took = started.elapsed();
    let snapshot = cluster.node(4).metric("interlock_snapshot_index").await.unwrap_or(0.0) as u64;
    assert!(snapshot > 0, "the new member was brought up by a snapshot");
    let view = cluster.node(4).client().range("big/", false, 0).await.expect("range");
    assert_eq!(view.len(), VALUES);
    let bytes: usize = view.iter().map(|kv| kv.value.len()).sum();
    assert_eq!(bytes, VALUES * VALUE_BYTES);
    eprintln!("100 MiB state: new member added and caught up (snapshot at {snapshot}) in {took:?}");
}
