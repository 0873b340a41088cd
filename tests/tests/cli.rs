//! interlockctl against real processes: output shapes, membership changes
//! and exit codes (SPEC §8: 0 ok, 1 failed, 2 usage, 3 unreachable, 4 refused).

use interlock_tests::{bin, free_port, ClusterOptions, TestCluster, OPERATOR, SECOND_OPERATOR};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `interlockctl ARGS` against `cluster` as its first operator.
fn ctl(cluster: &TestCluster, args: &[&str]) -> Output {
    ctl_as(cluster, OPERATOR, args)
}

/// `interlockctl ARGS` against `cluster` as `identity`.
fn ctl_as(cluster: &TestCluster, identity: &str, args: &[&str]) -> Output {
    Command::new(bin("interlockctl"))
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .args(args)
        .envs(cluster.ctl_env(identity))
        .stdin(Stdio::null())
        .output()
        .expect("run interlockctl")
}

fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", text(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_json_has_the_stable_shape() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let status = json(&ctl(&cluster, &["cluster", "status", "-o", "json"]));
    let leader = status["leader"].as_u64().expect("leader");
    assert!((1..=3).contains(&leader));
    assert!(status["term"].as_u64().expect("term") >= 1);
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for member in members {
        for key in ["id", "region", "grpc_addr", "role", "last_applied"] {
            assert!(member.get(key).is_some(), "member lacks {key}: {member}");
        }
        let role = member["role"].as_str().expect("role");
        assert_eq!(role == "leader", member["id"].as_u64() == Some(leader), "{member}");
        assert!(["leader", "follower"].contains(&role), "{member}");
    }
    // YAML and table render too.
    let yaml = ctl(&cluster, &["cluster", "status", "-o", "yaml"]);
    assert!(String::from_utf8_lossy(&yaml.stdout).contains("grpc_addr:"), "{}", text(&yaml));
    let table = ctl(&cluster, &["cluster", "members"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("us-east"), "{}", text(&table));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_as_learner_then_voter_and_removed() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    cluster.client().put("before-join", b"1".to_vec()).await.expect("write");
    let mut joiner = cluster.new_joiner(4, "sa-east");
    joiner.start();

    // A membership change waits for a second operator.
    let asked = json(&ctl(&cluster, &["cluster", "add", "4", &joiner.grpc, "--region", "sa-east", "-o", "json"]));
    let id = asked["approval_id"].as_u64().filter(|id| *id > 0).unwrap_or_else(|| panic!("{asked}"));
    assert_eq!(cluster.status().await.members.len(), 3, "nothing changed before the approval");
    let own = ctl(&cluster, &["approve", &id.to_string()]);
    assert_eq!(own.status.code(), Some(4), "approving your own request is refused: {}", text(&own));
    assert!(String::from_utf8_lossy(&own.stderr).contains("a different operator"), "{}", text(&own));
    let added = ctl_as(&cluster, SECOND_OPERATOR, &["approve", &id.to_string(), "-o", "json"]);
    assert!(added.status.success(), "{}", text(&added));
    let members =
        json(&ctl(&cluster, &["cluster", "members", "-o", "json"]))["members"].as_array().expect("members").clone();
    let four = members.iter().find(|m| m["id"] == 4).unwrap_or_else(|| panic!("{}", text(&added)));
    assert_eq!(four["role"], "follower", "a voter after catching up");
    assert_eq!(four["region"], "sa-east");
    cluster.nodes.push(joiner);
    let revision = cluster.client().put("after-join", b"2".to_vec()).await.expect("write");
    cluster.wait_applied(revision, Duration::from_secs(20)).await;
    let on_four = cluster.node(4).client().get("before-join", false).await.expect("read");
    assert_eq!(on_four.map(|v| v.value), Some(b"1".to_vec()), "the new member has the earlier state");

    // Dangerous without a terminal: needs --yes, and changes nothing otherwise.
    let refused = ctl(&cluster, &["cluster", "remove", "4"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"), "{}", text(&refused));
    assert_eq!(cluster.status().await.members.len(), 4);

    let asked = json(&ctl(&cluster, &["cluster", "remove", "4", "--yes", "-o", "json"]));
    let id = asked["approval_id"].as_u64().unwrap_or_else(|| panic!("{asked}"));
    let removed = ctl_as(&cluster, SECOND_OPERATOR, &["approve", &id.to_string()]);
    assert!(removed.status.success(), "{}", text(&removed));
    let members =
        json(&ctl(&cluster, &["cluster", "members", "-o", "json"]))["members"].as_array().expect("members").clone();
    assert!(members.iter().all(|m| m["id"] != 4), "{}", text(&removed));
    assert_eq!(cluster.status().await.members.len(), 3);

    let unknown = ctl(&cluster, &["cluster", "remove", "9", "--yes"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not a member"), "{}", text(&unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_follow_the_spec() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;

    let put = ctl(&cluster, &["kv", "put", "greeting", "hello"]);
    assert_eq!(put.status.code(), Some(0), "{}", text(&put));
    let got = json(&ctl(&cluster, &["kv", "get", "greeting", "-o", "json"]));
    assert_eq!(got["value"], "hello");

    let invalid = ctl(&cluster, &["kv", "put", "", "x"]);
    assert_eq!(invalid.status.code(), Some(2), "{}", text(&invalid));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("key: must not be empty"), "{}", text(&invalid));

    let missing = ctl(&cluster, &["kv", "get", "nothing-here"]);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));

    let usage = ctl(&cluster, &["cluster", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));

    let nobody = format!("127.0.0.1:{}", free_port());
    let unreachable = Command::new(bin("interlockctl"))
        .args(["--endpoints", &nobody, "cluster", "status"])
        .envs(cluster.ctl_env(OPERATOR))
        .env("INTERLOCK_ENDPOINTS", "")
        .output()
        .expect("run");
    assert_eq!(unreachable.status.code(), Some(3), "{}", text(&unreachable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_changes_are_checked_by_named_rules_and_drains_step_down() {
    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    cluster.client().apply_topology(&interlock_tests::sample_topology(), false).await.expect("apply");
    let routing = |c: &TestCluster| json(&ctl(c, &["get", "routing", "orders", "-o", "json"]))["routing"][0].clone();
    let start = routing(&cluster);
    assert_eq!(
        start["weights"]["eu-west"].as_u64().unwrap_or(0)
            + start["weights"]["us-east"].as_u64().unwrap_or(0)
            + start["weights"]["ap-south"].as_u64().unwrap_or(0),
        10_000,
        "{start}"
    );

    // Too big a step: refused with the rule's name, exit 4, nothing changed.
    let big = ctl(&cluster, &["routing", "set", "orders", "eu-west=60%", "us-east=20%", "ap-south=20%"]);
    assert_eq!(big.status.code(), Some(4), "{}", text(&big));
    assert!(String::from_utf8_lossy(&big.stderr).contains("max-step"), "{}", text(&big));
    assert_eq!(routing(&cluster)["version"], start["version"]);
    // Bad input: exit 2, naming the field.
    let bad = ctl(&cluster, &["routing", "set", "orders", "eu-west=50%", "us-east=20%"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("weights"), "{}", text(&bad));
    // An override needs a reason, and is audited.
    let ok = ctl(
        &cluster,
        &[
            "routing",
            "set",
            "orders",
            "eu-west=60%",
            "us-east=20%",
            "ap-south=20%",
            "--override",
            "max-step",
            "--reason",
            "test",
            "-o",
            "json",
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    // Overriding a safety rule waits for a second operator.
    assert_eq!(routing(&cluster)["version"], start["version"], "nothing changed before the approval");
    let id = json(&ok)["approval_id"].as_u64().filter(|id| *id > 0).unwrap_or_else(|| panic!("{}", text(&ok)));
    let approved = ctl_as(&cluster, SECOND_OPERATOR, &["approve", &id.to_string()]);
    assert!(approved.status.success(), "{}", text(&approved));
    assert_eq!(routing(&cluster)["weights"]["eu-west"], 6000);
    let events = json(&ctl(&cluster, &["events", "-o", "json"]));
    assert!(events.to_string().contains("routing.override"), "{events}");

    // A drain steps the region down to DRAINED (from weights that leave
    // the others room under their capacity ceiling).
    let back = ctl(&cluster, &["routing", "set", "orders", "eu-west=40%", "us-east=40%", "ap-south=20%"]);
    assert_eq!(back.status.code(), Some(0), "{}", text(&back));
    let drain = ctl(&cluster, &["drain", "ap-south", "--step", "50%", "--interval", "200ms"]);
    assert_eq!(drain.status.code(), Some(0), "{}", text(&drain));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = routing(&cluster);
        if now["region_states"]["ap-south"] == "DRAINED" {
            assert_eq!(now["weights"]["ap-south"], 0, "{now}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ap-south never drained: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Draining a second region would leave one serving: refused by min-serving-regions.
    let second = ctl(&cluster, &["drain", "us-east", "--step", "100%"]);
    assert_eq!(second.status.code(), Some(4), "{}", text(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("min-serving-regions"), "{}", text(&second));
}
