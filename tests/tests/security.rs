//! Security with real processes (SPEC §3, §9): strangers are refused at the
//! TLS handshake, roles are enforced, a controller acts only for its own
//! region and identity (and its refusals are audited), an operator's revoke
//! of a primary lease does not free it before its deadline, certificates
//! are reloaded without a restart, and `audit verify` names an entry edited
//! on disk.

use interlock_client::{AcknowledgeRequest, Client, ClientError, ClientOptions, Pem, Tls};
use interlock_tests::{
    eventually, sample_topology, ClusterOptions, TestAgent, TestCluster, OPERATOR, SECOND_OPERATOR, VIEWER,
};
use std::time::{Duration, Instant};

fn client_with(cluster: &TestCluster, tls: Option<Tls>) -> Client {
    let options = ClientOptions { tls, retry_budget: Duration::from_secs(1), ..ClientOptions::default() };
    Client::with_options(cluster.endpoints(), options).expect("client")
}

/// Whether the audit trail holds a refusal of `identity` whose text has `part`.
async fn audited_refusal(client: &Client, identity: &str, part: &str) -> bool {
    client.audit(0, 0).await.is_ok_and(|list| {
        list.entries
            .iter()
            .any(|e| e.by == identity && e.outcome.contains("PermissionDenied") && e.outcome.contains(part))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_at_the_handshake() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let pki = cluster.pki.as_ref().expect("TLS");
    assert!(cluster.client().cluster_status().await.is_ok(), "the CA's operator gets in");

    let other = interlock_tls::dev::Authority::new("another CA").expect("CA");
    let leaf = other.leaf(OPERATOR, &[]).expect("leaf");
    // It trusts the cluster's CA, so only the nodes' check can refuse it.
    let stranger = Tls::from_pem(&Pem { ca: pki.authority().ca_pem.clone(), ..other.pem(&leaf) }).expect("tls");
    let expired = pki.authority().leaf_valid_for(OPERATOR, &[], Some(Duration::from_secs(3600))).expect("leaf");
    let expired = Tls::from_pem(&pki.authority().pem(&expired)).expect("tls");
    for (name, tls) in [("another CA", Some(stranger)), ("expired", Some(expired)), ("no TLS at all", None)] {
        let result = client_with(&cluster, tls).cluster_status().await;
        assert!(result.is_err(), "{name}: {result:?}");
    }
    let logs = cluster.logs();
    for reason in ["UnknownIssuer", "certificate expired"] {
        assert!(logs.contains(reason), "the nodes log why they refused ({reason}):\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_off_a_node_warns_and_serves_plaintext() {
    let cluster = TestCluster::start(3, ClusterOptions { plaintext: true, ..ClusterOptions::default() }).await;
    cluster.client().put("k", b"v".to_vec()).await.expect("a plaintext write");
    assert!(cluster.node_log(1).contains("TLS is OFF"), "the warning is logged:\n{}", cluster.node_log(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_but_cannot_write() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let operator = cluster.client();
    operator.put("k", b"v".to_vec()).await.expect("an operator writes");
    let viewer = cluster.client_as(VIEWER);
    assert!(viewer.get("k", true).await.expect("a viewer reads").is_some());
    let refused = viewer.put("k", b"w".to_vec()).await;
    assert!(matches!(&refused, Err(ClientError::PermissionDenied(m)) if m.contains("viewer")), "{refused:?}");
    let refused = viewer.set_maintenance(None, true, "x").await;
    assert!(matches!(refused, Err(ClientError::PermissionDenied(_))), "{refused:?}");
    assert_eq!(operator.get("k", true).await.expect("read").map(|v| v.value), Some(b"v".to_vec()));
    eventually("the refusals are audited", Duration::from_secs(10), || audited_refusal(&operator, VIEWER, "Kv/Put"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_acts_only_for_its_own_region_and_its_refusals_are_audited() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let operator = cluster.client();
    operator.apply_topology(&sample_topology(), false).await.expect("apply");
    let eu = cluster.client_as("ctl-eu-west");
    let us = cluster.client_as("ctl-us-east");
    us.register_controller("ctl-us", "us-east", "", &["o0-us".into()]).await.expect("us registers its replica");

    // eu-west's controller registering in us-east.
    let refused = eu.register_controller("ctl-x", "us-east", "", &["o0-us".into()]).await;
    assert!(matches!(&refused, Err(ClientError::PermissionDenied(m)) if m.contains("not a controller of us-east")));
    // ... or acknowledging for us-east's replica under us-east's controller id.
    let ack = AcknowledgeRequest {
        controller_id: "ctl-us".into(),
        replica_id: "o0-us".into(),
        epoch: 0,
        role: "REPLICA".into(),
        position: 0,
    };
    let refused = eu.acknowledge(ack).await;
    assert!(
        matches!(&refused, Err(ClientError::PermissionDenied(m)) if m.contains("may not acknowledge")),
        "{refused:?}"
    );
    // ... or writing outside its own agents/<region>/ prefix.
    assert!(eu.put("agents/eu-west/ctl-eu", b"addr".to_vec()).await.is_ok());
    let refused = eu.put("agents/us-east/ctl-us", b"addr".to_vec()).await;
    assert!(matches!(refused, Err(ClientError::PermissionDenied(_))), "{refused:?}");

    let controllers = operator.controllers().await.expect("controllers");
    assert_eq!(controllers.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["ctl-us"], "nothing changed");
    for part in ["not a controller of us-east", "may not acknowledge", "agents/us-east"] {
        eventually(&format!("refusal audited: {part}"), Duration::from_secs(10), || {
            audited_refusal(&operator, "ctl-eu-west", part)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_revoke_of_a_primary_lease_frees_it_only_at_its_deadline() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let operator = cluster.client();
    operator.apply_topology(&sample_topology(), false).await.expect("apply");
    let _agents: Vec<TestAgent> =
        ["eu-west", "us-east", "ap-south"].iter().map(|r| TestAgent::start(&cluster, r)).collect();
    let key = "shard/orders/0/primary";
    eventually("a primary holds its lease", Duration::from_secs(30), || async {
        operator.shards().await.is_ok_and(|s| s.iter().any(|s| s.status == "ok"))
    })
    .await;
    let held = operator.lease_get(key).await.expect("lease");

    // Revoking another identity's lease waits for a second operator.
    let asked = operator.lease_revoke(key, held.token).await.expect("revoke");
    assert!(asked.approval_id > 0, "{asked:?}");
    assert!(!operator.lease_get(key).await.expect("lease").revoked, "nothing happens before the approval");
    let own = operator.approve(asked.approval_id).await;
    assert!(matches!(own, Err(ClientError::PermissionDenied(_))), "an operator cannot approve its own: {own:?}");
    cluster.client_as(SECOND_OPERATOR).approve(asked.approval_id).await.expect("approved");
    let revoked_at = Instant::now();
    let lease = operator.lease_get(key).await.expect("still held after the revoke");
    assert!(lease.revoked && lease.token == held.token, "{lease:?}");

    // Nobody may be promoted while it is held, however it was revoked.
    let shard = operator.shards().await.expect("shards").into_iter().find(|s| s.id == "0").expect("shard");
    let other = shard.replicas.iter().find(|r| **r != shard.primary).expect("another replica").clone();
    let refused = operator.failover("orders/0", &other, false, Duration::ZERO).await;
    assert!(matches!(&refused, Err(ClientError::Refused(m)) if m.contains("still held")), "{refused:?}");

    // The key is freed when the leader's deadline passes, not before.
    eventually("the revoked lease runs out", Duration::from_secs(15), || async {
        operator.lease_get(key).await.map_or(true, |l| l.token != held.token)
    })
    .await;
    let freed_after = revoked_at.elapsed();
    let slack = Duration::from_millis(300);
    assert!(
        freed_after + slack >= Duration::from_millis(lease.remaining_ms),
        "freed after {freed_after:?}, before the {} ms the leader still gave it",
        lease.remaining_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_is_reloaded_without_a_restart() {
    let options =
        ClusterOptions { extra_args: vec!["--tls-reload-every".into(), "200ms".into()], ..Default::default() };
    let cluster = TestCluster::start(3, options).await;
    let pki = cluster.pki.as_ref().expect("TLS");
    // A fresh connection to node 1 alone each time: what certificate it serves now.
    let node_1 = || {
        let options =
            ClientOptions { tls: Some(pki.tls(OPERATOR)), retry_budget: Duration::ZERO, ..ClientOptions::default() };
        Client::with_options([cluster.nodes[0].grpc.clone()], options).expect("client")
    };
    assert!(node_1().node_status(0).await.is_ok());
    let files = pki.files("node-1");
    let install = |leaf: interlock_tls::dev::Leaf| {
        std::fs::write(&files.key, &leaf.key_pem).expect("key");
        std::fs::write(&files.cert, &leaf.cert_pem).expect("cert");
    };
    // Rotated to an expired certificate: new connections fail...
    install(pki.authority().leaf_valid_for("node-1", &[], Some(Duration::from_secs(60))).expect("leaf"));
    eventually("node 1 serves the expired certificate", Duration::from_secs(10), || async {
        node_1().node_status(0).await.is_err()
    })
    .await;
    // ... and rotated again to a valid one, they work: no restart either time.
    install(pki.authority().leaf("node-1", &[]).expect("leaf"));
    eventually("node 1 serves the new certificate", Duration::from_secs(10), || async {
        node_1().node_status(0).await.is_ok()
    })
    .await;
    let log = cluster.node_log(1);
    assert_eq!(log.matches("TLS certificates reloaded").count(), 2, "{log}");
    assert_eq!(log.matches("serving").count(), 1, "the node was not restarted:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_an_entry_edited_on_disk() {
    let options =
        ClusterOptions { extra_args: vec!["--snapshot-every".into(), "20".into()], ..ClusterOptions::default() };
    let mut cluster = TestCluster::start(3, options).await;
    let client = cluster.client();
    client.apply_topology(&sample_topology(), false).await.expect("apply");
    client.set_maintenance(Some("eu-west"), true, "audited").await.expect("maintenance");
    client.set_maintenance(Some("eu-west"), false, "audited").await.expect("maintenance");
    let mut last = 0;
    for i in 0..60 {
        last = client.put(&format!("filler/{i}"), b"x".to_vec()).await.expect("write");
    }
    cluster.wait_applied(last, Duration::from_secs(20)).await;
    let leader = cluster.status().await.leader;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).expect("follower");
    eventually("the follower snapshotted the audited entries", Duration::from_secs(20), || async {
        let index = cluster.nodes.iter().find(|n| n.id == follower).expect("node");
        index.metric("interlock_snapshot_index").await.unwrap_or(0.0) as u64 >= 20
    })
    .await;

    let (endpoints, env) = (cluster.endpoints().join(","), cluster.ctl_env(OPERATOR));
    let ctl = |args: &[&str]| {
        std::process::Command::new(interlock_tests::bin("interlockctl"))
            .arg("--endpoints")
            .arg(&endpoints)
            .args(args)
            .envs(env.clone())
            .output()
            .expect("interlockctl")
    };
    let clean = ctl(&["audit", "verify"]);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));

    // Stop the follower, edit who took the second audited action, restart it.
    assert!(cluster.node(follower).terminate(), "a clean stop");
    let dir = cluster.node(follower).data_dir.clone();
    let mut state = interlock_store::state_machine::offline::read_state(&dir).expect("read").expect("a snapshot");
    let entry = state.audit.get_mut(1).expect("an audited entry in the snapshot");
    let seq = entry.seq;
    entry.by = "mallory".into();
    interlock_store::state_machine::offline::rewrite_state(&dir, &state).expect("rewrite");
    cluster.node(follower).start();
    cluster.wait_applied(last, Duration::from_secs(20)).await;

    let broken = ctl(&["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("node {follower}")) && stderr.contains(&format!("entry {seq} is bad")),
        "{stderr}"
    );
    assert!(stderr.contains("was changed"), "{stderr}");
}
