//! Leases with fencing tokens against real processes (SPEC §3).

use interlock_client::{Client, ClientError, ClientOptions, LeaseKeeper, LeaseOptions, LeaseState};
use interlock_tests::{ClusterOptions, CutProxy, TestCluster};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_keeps_its_lease_through_a_leader_kill() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    let keeper =
        LeaseKeeper::acquire(&client, "lock/orders", "ctl-eu", Duration::from_secs(3), LeaseOptions::default())
            .await
            .expect("acquire");
    let token = keeper.token();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.node(leader).kill9();
    // Watch the keeper through the election and well past one TTL.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(keeper.is_held(), "the lease must not be lost across a leader change: {:?}", keeper.state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    let lease = client.lease_get("lock/orders").await.expect("get");
    assert_eq!((lease.token, lease.holder.as_str()), (token, "ctl-eu"), "token unchanged");
    assert!(lease.remaining_ms > 0);
    keeper.release().await.expect("release");
    let gone = client.lease_get("lock/orders").await;
    assert!(matches!(gone, Err(ClientError::NotFound(_))), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_stops_before_anyone_else_is_granted_the_key() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let mut proxies = Vec::new();
    for endpoint in cluster.endpoints() {
        proxies.push(CutProxy::start(endpoint).await);
    }
    let options =
        ClientOptions { retry_budget: Duration::from_secs(2), ..cluster.options_as(interlock_tests::OPERATOR) };
    let holder_client = Client::with_options(proxies.iter().map(|p| p.addr.clone()), options).expect("client");
    let ttl = Duration::from_secs(2);
    let mut keeper =
        LeaseKeeper::acquire(&holder_client, "lock", "holder-a", ttl, LeaseOptions::default()).await.expect("acquire");
    let first_token = keeper.token();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(keeper.is_held());

    // Cut the holder off from every node.
    for proxy in &proxies {
        proxy.cut();
    }
    let cut_at = Instant::now();
    let other = cluster.client();
    let contender = tokio::spawn(async move {
        loop {
            let sent = Instant::now();
            match other.lease_grant("lock", "holder-b", 2000).await {
                Ok((token, _)) => return (sent, token),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    let reason = keeper.lost().await;
    let stopped_at = Instant::now();
    let (granted_request_sent_at, second_token) = contender.await.expect("contender");
    assert!(
        stopped_at <= granted_request_sent_at,
        "the holder stopped {:?} after the cut, but B's successful grant was sent {:?} after the cut",
        stopped_at - cut_at,
        granted_request_sent_at - cut_at
    );
    assert!(second_token > first_token, "tokens increase: {first_token} then {second_token}");
    eprintln!(
        "holder stopped {:?} after the cut ({reason}); B's grant was sent {:?} after the cut",
        stopped_at - cut_at,
        granted_request_sent_at - cut_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_strictly_increase_across_grants_leader_changes_and_restarts() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let mut tokens = Vec::new();
    let client = cluster.client();
    tokens.push(client.lease_grant("a", "h1", 1000).await.expect("grant").0);
    tokens.push(client.lease_grant("b", "h1", 1000).await.expect("grant").0);
    client.lease_release("a", 0).await.expect("the holder releases it");
    tokens.push(client.lease_grant("a", "h2", 1000).await.expect("regrant").0);

    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.node(leader).kill9();
    cluster.wait_for_leader(Duration::from_secs(10)).await;
    tokens.push(cluster.client().lease_grant("c", "h1", 1000).await.expect("grant after failover").0);

    for node in &mut cluster.nodes {
        node.kill9();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let client = cluster.client();
    tokens.push(client.lease_grant("d", "h1", 1000).await.expect("grant after restart").0);
    // "a" expires (nobody keeps it) and is granted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let regranted = loop {
        match client.lease_grant("a", "h3", 1000).await {
            Ok((token, _)) => break token,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("a was never freed: {e}"),
        }
    };
    tokens.push(regranted);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens strictly increase: {tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_deadline_is_never_after_the_leaders() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    let keeper = LeaseKeeper::acquire(&client, "k", "h", Duration::from_secs(2), LeaseOptions::default())
        .await
        .expect("acquire");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let LeaseState::Held { deadline } = keeper.state() else { panic!("lost") };
        let asked_at = Instant::now();
        let lease = client.lease_get("k").await.expect("get");
        // The leader's remaining time was read after `asked_at`, so its deadline is
        // at least asked_at + remaining - (time the call took).
        let leader_deadline_at_least = asked_at + Duration::from_millis(lease.remaining_ms);
        let slack = asked_at.elapsed();
        assert!(
            deadline <= leader_deadline_at_least + slack,
            "holder deadline {:?} after the leader's",
            deadline - (leader_deadline_at_least + slack)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_kept_on_one_clients_shared_stream_are_lost_one_at_a_time() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    let ttl = Duration::from_secs(2);
    let mut keepers = Vec::new();
    for key in ["lock/a", "lock/b", "lock/c"] {
        keepers.push(LeaseKeeper::acquire(&client, key, "h", ttl, LeaseOptions::default()).await.expect("acquire"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Freed under the keeper of lock/b: only that keeper's next keepalive is refused.
    client.lease_release("lock/b", keepers[1].token()).await.expect("release lock/b");
    let reason = tokio::time::timeout(ttl, keepers[1].lost()).await.expect("lock/b is lost within a TTL");
    assert!(reason.contains("lock/b"), "the refusal names the lease: {reason}");
    // The others, on the same stream, stay held well past their TTL.
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        assert!(keepers[0].is_held() && keepers[2].is_held(), "{:?} {:?}", keepers[0].state(), keepers[2].state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
