//! The coordinator API over gRPC: topology, registration, watches, and bad
//! input that is refused with the right status and changes nothing.

use interlock_client::{AcknowledgeRequest, ClientError, ClientOptions};
use interlock_tests::{sample_topology, ClusterOptions, TestCluster};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_right_status_and_changes_nothing() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    // The region controller of eu-west speaks for itself.
    let controller = cluster.client_as("ctl-eu-west");
    client.apply_topology(&sample_topology(), false).await.expect("apply");
    let events_before = client.events(0, 0).await.expect("events").len();

    let cases: Vec<(&str, Result<(), ClientError>, &str)> = vec![
        ("empty key", client.lease_grant("", "h", 1000).await.map(|_| ()), "key"),
        ("zero ttl", client.lease_grant("k", "h", 0).await.map(|_| ()), "ttl"),
        ("huge ttl", client.lease_grant("k", "h", 10_000_000).await.map(|_| ()), "ttl"),
        ("empty holder", client.lease_grant("k", "", 1000).await.map(|_| ()), "holder"),
        ("shard without service", client.switchover("orders", "o0-us", Duration::ZERO).await.map(|_| ()), "shard"),
        ("bad target", client.failover("orders/0", "O0 US", false, Duration::ZERO).await.map(|_| ()), "to"),
        (
            "endless wait",
            client.switchover("orders/0", "o0-us", Duration::from_secs(100_000)).await.map(|_| ()),
            "timeout_ms",
        ),
        (
            "unknown role",
            controller
                .acknowledge(AcknowledgeRequest {
                    controller_id: "ctl-eu".into(),
                    replica_id: "o0-eu".into(),
                    epoch: 1,
                    role: "BOSS".into(),
                    position: 0,
                })
                .await
                .map(|_| ()),
            "role",
        ),
        ("bad region", client.set_maintenance(Some("EU!"), true, "x").await.map(|_| ()), "region"),
    ];
    for (name, result, field) in cases {
        match result {
            Err(ClientError::InvalidArgument(m)) => assert!(m.contains(field), "{name}: {m}"),
            other => panic!("{name}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    let unknown = controller.register_controller("ctl-eu", "eu-west", "controller:eu-west", &["nope".into()]).await;
    assert!(matches!(&unknown, Err(ClientError::NotFound(m)) if m.contains("nope")), "{unknown:?}");
    let foreign = controller.register_controller("ctl-eu", "eu-west", "controller:eu-west", &["o0-us".into()]).await;
    assert!(matches!(&foreign, Err(ClientError::PermissionDenied(m)) if m.contains("us-east")), "{foreign:?}");
    let mut broken = sample_topology();
    broken.services[0].shards[0].replicas[0].region = "mars".into();
    let refused = client.apply_topology(&broken, false).await;
    assert!(
        matches!(&refused, Err(ClientError::InvalidArgument(m)) if m.contains("replicas[0].region")),
        "{refused:?}"
    );

    // Preconditions: refused with the reason, exit 4 in the CLI.
    let no_primary = client.switchover("orders/0", "o0-us", Duration::ZERO).await;
    assert!(matches!(&no_primary, Err(ClientError::Refused(m)) if m.contains("no primary")), "{no_primary:?}");
    let unknown_shard = client.failover("orders/9", "o0-us", false, Duration::ZERO).await;
    assert!(matches!(&unknown_shard, Err(ClientError::NotFound(m)) if m.contains("orders/9")), "{unknown_shard:?}");

    assert_eq!(client.events(0, 0).await.expect("events").len(), events_before, "nothing was recorded");
    assert!(client.controllers().await.expect("controllers").is_empty());
    assert!(client.leases().await.expect("leases").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_apply_is_idempotent_and_a_controller_sees_its_assignment() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    let dry = client.apply_topology(&sample_topology(), true).await.expect("dry run");
    assert_eq!(dry.revision, 0);
    assert!(dry.changes.iter().any(|c| c == "+ replica o0-eu in eu-west for orders/0 (priority 100)"), "{dry:?}");
    assert!(client.regions().await.expect("regions").is_empty(), "a dry run changes nothing");
    let applied = client.apply_topology(&sample_topology(), false).await.expect("apply");
    assert!(applied.revision > 0);
    let again = client.apply_topology(&sample_topology(), false).await.expect("re-apply");
    assert!(again.changes.is_empty(), "idempotent: {again:?}");

    let mut watcher = client.watch("controller/ctl-eu", 0);
    let first = watcher.next().await.expect("assignment");
    assert!(first.assignment.expect("assignment").replicas.is_empty(), "not registered yet");
    let controller = cluster.client_as("ctl-eu-west");
    controller
        .register_controller("ctl-eu", "eu-west", "controller:eu-west", &["o0-eu".into()])
        .await
        .expect("register");
    let next = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.expect("in time").expect("watch");
    let replicas = next.assignment.expect("assignment").replicas;
    assert_eq!(replicas.len(), 1);
    assert_eq!((replicas[0].replica_id.as_str(), replicas[0].role.as_str()), ("o0-eu", "REPLICA"));
    assert_eq!(replicas[0].primary_lease_key, "shard/orders/0/primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_without_gaps_after_its_node_is_killed() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let writer = cluster.client();
    // The watcher talks to node 1 first; the other nodes are its fallbacks.
    let options =
        ClientOptions { retry_budget: Duration::from_secs(20), ..cluster.options_as(interlock_tests::OPERATOR) };
    let watch_client = interlock_client::Client::with_options(cluster.endpoints(), options).expect("client");
    let mut watcher = watch_client.watch("events", 0);

    for i in 0..20 {
        writer.lease_grant(&format!("before/{i}"), "h", 60_000).await.expect("grant");
    }
    let mut seen: Vec<(u64, u32)> = Vec::new();
    while seen.len() < 20 {
        let message = watcher.next().await.expect("watch");
        seen.extend(message.events.iter().map(|e| (e.version, e.seq)));
    }
    cluster.node(1).kill9();
    for i in 0..20 {
        writer.lease_grant(&format!("after/{i}"), "h", 60_000).await.expect("grant after kill");
    }
    while seen.len() < 40 {
        let message =
            tokio::time::timeout(Duration::from_secs(20), watcher.next()).await.expect("in time").expect("watch");
        seen.extend(message.events.iter().map(|e| (e.version, e.seq)));
    }
    let all: Vec<(u64, u32)> = writer.events(0, 0).await.expect("events").iter().map(|e| (e.version, e.seq)).collect();
    assert_eq!(seen, all, "every event once, in order");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), seen.len(), "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serves_with_a_leader_and_not_without_one() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let tls = cluster.pki.as_ref().expect("TLS").tls(interlock_tests::VIEWER);
    let status_of = |addr: String| {
        let tls = tls.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_with_connector(interlock_tls::stream::tcp_connector(tls))
                .await
                .expect("connect");
            let mut client = HealthClient::new(channel);
            client.check(HealthCheckRequest { service: String::new() }).await.expect("check").into_inner().status
        }
    };
    let survivor = cluster.nodes[0].grpc.clone();
    // Health is re-evaluated every 250 ms; give the new cluster a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status_of(survivor.clone()).await != ServingStatus::Serving as i32 {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING with a leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without a quorum there is no leader: the survivor stops serving.
    cluster.node(2).kill9();
    cluster.node(3).kill9();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if status_of(survivor.clone()).await == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still SERVING without a quorum");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_watch_gets_only_its_kinds_and_keys() {
    let cluster = TestCluster::start(1, ClusterOptions::default()).await;
    let client = cluster.client();
    let filter = |prefix: &str, kinds: &[&str]| interlock_client::WatchFilter {
        key_prefix: prefix.to_string(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
    };
    let mut watcher = client.watch_filtered("events", 0, filter("lock/", &["lease.released", "lease.granted"]));
    for i in 0..30 {
        client.lease_grant(&format!("bench/{i}"), "h", 60_000).await.expect("grant");
        if i % 10 == 0 {
            client.lease_grant(&format!("lock/{i}"), "h", 60_000).await.expect("grant");
        }
    }
    client.lease_grant("lock/last", "h", 60_000).await.expect("grant");
    let mut subjects = Vec::new();
    while subjects.last().map(String::as_str) != Some("lock/last") {
        let message =
            tokio::time::timeout(Duration::from_secs(10), watcher.next()).await.expect("in time").expect("watch");
        subjects.extend(message.events.iter().map(|e| e.subject.clone()));
        assert!(message.events.iter().all(|e| e.kind == "lease.granted"), "{:?}", message.events);
    }
    assert_eq!(subjects, ["lock/0", "lock/10", "lock/20", "lock/last"]);

    // A filter the coordinator cannot honour is refused, naming the field.
    let mut bad = client.watch_filtered("events", 0, filter("", &["Lease Granted"]));
    match tokio::time::timeout(Duration::from_secs(10), bad.next()).await.expect("in time") {
        Err(interlock_client::ClientError::InvalidArgument(m)) => assert!(m.contains("kinds[0]"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let mut bad = client.watch_filtered("controller/c1", 0, filter("x", &[]));
    match tokio::time::timeout(Duration::from_secs(10), bad.next()).await.expect("in time") {
        Err(interlock_client::ClientError::InvalidArgument(m)) => assert!(m.contains("key_prefix"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}
