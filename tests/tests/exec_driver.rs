//! The agent's exec driver with real processes: two `interlockd agent`s run
//! their replicas through `deploy/hooks/files.sh` (a database kept in
//! files). A promotion reaches the hook with the epoch and the fencing
//! token; a demote that fails is followed by a fence before anything is
//! acknowledged; a fence that hangs is killed at the hook timeout and counts
//! as failed — the switchover waits, and there is never a second primary.

use interlock_client::Client;
use interlock_tests::{bin, eventually, ClusterOptions, TestAgent, TestCluster, OPERATOR};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn topology() -> interlock_client::Topology {
    serde_json::from_value(serde_json::json!({
        "regions": [{"id": "eu-west"}, {"id": "us-east"}],
        "services": [{"name": "orders", "shards": [{
            "id": "0",
            "max_lag_on_failover": 1000,
            "replicas": [
                {"id": "o0-eu", "region": "eu-west", "priority": 100, "address": "db-eu.test:5432"},
                {"id": "o0-us", "region": "us-east", "priority": 90, "address": "db-us.test:5432"}
            ]
        }]}],
        // Long enough that a demoted primary's lease outlasts the hung fence below.
        "failover": {"primary_lease_ttl_ms": 15000, "switchover_timeout_ms": 30000}
    }))
    .expect("topology")
}

fn hook_dir(cluster: &TestCluster, region: &str) -> PathBuf {
    cluster.dir.path().join(format!("db-{region}"))
}

fn exec_agent(cluster: &TestCluster, region: &str) -> TestAgent {
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hooks/files.sh");
    let extra = format!(
        "driver = \"exec\"\n[exec]\ncommand = [{:?}, {:?}]\ntimeout_ms = 1000\nstatus_every_ms = 200\n",
        hook.display().to_string(),
        hook_dir(cluster, region).display().to_string()
    );
    TestAgent::start_with(cluster, region, &extra)
}

fn is_primary(cluster: &TestCluster, region: &str, replica: &str) -> bool {
    hook_dir(cluster, region).join(format!("{replica}.primary")).exists()
}

fn actions(cluster: &TestCluster, region: &str) -> String {
    std::fs::read_to_string(hook_dir(cluster, region).join("actions.log")).unwrap_or_default()
}

async fn shard(client: &Client) -> interlock_client::Shard {
    client.shards().await.expect("shards").into_iter().next().expect("one shard")
}

/// Where `interlockctl get shards -o json` says shard 0's primary answers.
fn primary_address(cluster: &TestCluster) -> String {
    let out = std::process::Command::new(bin("interlockctl"))
        .args(["--endpoints", &cluster.endpoints().join(","), "get", "shards", "-o", "json"])
        .envs(cluster.ctl_env(OPERATOR))
        .output()
        .expect("interlockctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    value["shards"][0]["primary_address"].as_str().unwrap_or_default().to_string()
}

/// Whether shard 0's primary is `replica`, acknowledged.
async fn settled_on(client: &Client, replica: &str) -> bool {
    client.shards().await.is_ok_and(|s| s.iter().any(|s| s.primary == replica && s.pending.is_empty()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_promote_with_the_token_and_a_role_change_is_acknowledged_only_once_it_happened() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    client.apply_topology(&topology(), false).await.expect("apply topology");

    // eu-west alone first: its replica is promoted through the hook.
    let eu = exec_agent(&cluster, "eu-west");
    eventually("o0-eu promoted and acknowledged", Duration::from_secs(30), || settled_on(&client, "o0-eu")).await;
    let s = shard(&client).await;
    let lease = client.lease_get("shard/orders/0/primary").await.expect("primary lease");
    let recorded = std::fs::read_to_string(hook_dir(&cluster, "eu-west").join("o0-eu.primary")).expect("primary file");
    assert_eq!(recorded.trim(), format!("{} {}", s.epoch, lease.token), "the hook got the epoch and the token");
    assert_eq!(primary_address(&cluster), "db-eu.test:5432", "clients find the primary");

    let us = exec_agent(&cluster, "us-east");
    eventually("both replicas report healthy", Duration::from_secs(30), || async {
        client.replicas().await.is_ok_and(|r| r.len() == 2 && r.iter().all(|r| r.healthy == Some(true)))
    })
    .await;

    // eu-west's database refuses a graceful demote: the agent fences it, then acknowledges.
    std::fs::write(hook_dir(&cluster, "eu-west").join("refuse-demote"), "").expect("refuse-demote");
    client.switchover("orders/0", "o0-us", Duration::ZERO).await.expect("switchover to o0-us");
    assert!(settled_on(&client, "o0-us").await);
    assert!(!is_primary(&cluster, "eu-west", "o0-eu"), "the old primary stopped");
    assert!(is_primary(&cluster, "us-east", "o0-us"));
    assert_eq!(primary_address(&cluster), "db-us.test:5432");
    let follows = hook_dir(&cluster, "eu-west").join("o0-eu.follows");
    eventually("the old primary follows the new one", Duration::from_secs(10), || async {
        std::fs::read_to_string(&follows).is_ok_and(|f| f.trim() == "o0-us db-us.test:5432")
    })
    .await;
    let log = actions(&cluster, "eu-west");
    let demote = log.find(" demote o0-eu").expect("a demote was tried");
    assert!(log[demote..].contains(" fence o0-eu"), "then a fence:\n{log}");

    // us-east's database refuses demotes and its fence hangs: killed at the
    // 1 s timeout, again and again; nothing is acknowledged meanwhile.
    let us_dir = hook_dir(&cluster, "us-east");
    std::fs::write(us_dir.join("refuse-demote"), "").expect("refuse-demote");
    std::fs::write(us_dir.join("hang-fence"), "").expect("hang-fence");
    let switching = {
        let client = cluster.client();
        tokio::spawn(async move { client.switchover("orders/0", "o0-eu", Duration::from_secs(60)).await })
    };
    eventually("a hung fence is killed at its timeout", Duration::from_secs(15), || async {
        us.log().contains("killed after the 1000 ms timeout")
    })
    .await;
    for _ in 0..20 {
        assert!(is_primary(&cluster, "us-east", "o0-us"), "it could not be stopped");
        assert!(!is_primary(&cluster, "eu-west", "o0-eu"), "so nobody else was promoted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!shard(&client).await.primary.eq("o0-eu"), "the switchover has not completed");

    // The fence works again: the switchover completes.
    std::fs::remove_file(us_dir.join("hang-fence")).expect("clear hang-fence");
    let done = switching.await.expect("task");
    assert!(done.is_ok(), "{done:?}\n{}", us.log());
    assert!(settled_on(&client, "o0-eu").await);
    assert!(!is_primary(&cluster, "us-east", "o0-us"));
    assert!(is_primary(&cluster, "eu-west", "o0-eu"));
    drop(eu);
}

/// A controller that restarts finds its database acting as primary while
/// the coordinator says another replica is: it stops it (here the demote is
/// refused, so it fences) before it acknowledges anything for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_stops_a_database_that_is_primary_without_its_lease() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let client = cluster.client();
    client.apply_topology(&topology(), false).await.expect("apply topology");
    let _eu = exec_agent(&cluster, "eu-west");
    eventually("o0-eu promoted and acknowledged", Duration::from_secs(30), || settled_on(&client, "o0-eu")).await;

    // us-east's database was left acting as primary (by a controller that died).
    let us_dir = hook_dir(&cluster, "us-east");
    std::fs::create_dir_all(&us_dir).expect("dir");
    std::fs::write(us_dir.join("o0-us.primary"), "1 1\n").expect("stray primary");
    std::fs::write(us_dir.join("refuse-demote"), "").expect("refuse-demote");
    let us = exec_agent(&cluster, "us-east");
    eventually("the stray primary is fenced", Duration::from_secs(30), || async {
        !is_primary(&cluster, "us-east", "o0-us")
    })
    .await;
    assert!(actions(&cluster, "us-east").contains(" fence o0-us"), "{}", us.log());
    eventually("o0-us acknowledged as a replica", Duration::from_secs(30), || async {
        client.replicas().await.is_ok_and(|r| r.iter().any(|r| r.id == "o0-us" && r.acked_role == "REPLICA"))
    })
    .await;
    assert!(is_primary(&cluster, "eu-west", "o0-eu"), "the real primary is untouched");
}
