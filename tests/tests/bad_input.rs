//! Bad input to `interlockd run`: each is refused with an error that names the
//! problem, a non-zero exit, and nothing written.

use interlock_tests::{bin, eventually, free_port, ClusterOptions, TestCluster};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The flags of a valid single-node configuration in `dir`.
fn valid_flags(dir: &Path) -> Vec<String> {
    let grpc = format!("127.0.0.1:{}", free_port());
    vec![
        "--id".into(),
        "1".into(),
        "--region".into(),
        "eu-west".into(),
        "--grpc-listen".into(),
        grpc.clone(),
        "--admin-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--initial-peers".into(),
        format!("1@eu-west={grpc}"),
        // These tests are about other keys; TLS's own are tested in config.rs.
        "--tls".into(),
        "off".into(),
    ]
}

fn run(args: &[String]) -> Output {
    Command::new(bin("interlockd")).arg("run").args(args).output().expect("run interlockd")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn assert_refused(output: &Output, code: i32, needles: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "exit code; stderr:\n{text}");
    for needle in needles {
        assert!(text.contains(needle), "stderr should mention {needle:?}:\n{text}");
    }
}

#[test]
fn a_malformed_config_file_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "id = 1\nregion = \"eu-west\ngrpc_listen = 3\n").expect("write");
    let output = run(&["--config".into(), file.display().to_string()]);
    assert_refused(&output, 2, &["node.toml", "line 2"]);
    assert!(!dir.path().join("data").exists());
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    let data = dir.path().join("data");
    std::fs::write(&file, format!("id = 1\nregion = \"eu-west\"\ndata_dir = {:?}\nelection_timout = \"1s\"\n", data))
        .expect("write");
    let output = run(&["--config".into(), file.display().to_string()]);
    assert_refused(&output, 2, &["election_timout", "unknown field", "line 4"]);
    assert!(!data.exists(), "nothing written");
}

#[test]
fn a_missing_key_names_its_flag_and_env_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = valid_flags(dir.path());
    args.drain(2..4); // drop --region eu-west
    let output = run(&args);
    assert_refused(&output, 2, &["region", "--region", "INTERLOCK_REGION"]);
}

/// Whether this process runs as root (which ignores permission bits).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

#[test]
fn a_data_dir_without_write_permission_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut args = valid_flags(&locked);
    let data: PathBuf = locked.join("data");
    let data_index = args.iter().position(|a| a == "--data-dir").expect("flag") + 1;
    args[data_index] = data.display().to_string();

    // Root ignores permission bits, so as root run the node as nobody.
    let output = if running_as_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("interlockd"))
            .arg("run")
            .args(&args)
            .output()
            .expect("setpriv")
    } else {
        run(&args)
    };
    assert_refused(&output, 1, &["data_dir", "cannot create", "ermission denied"]);
    assert!(!data.exists());
}

#[test]
fn a_port_in_use_is_refused_by_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut args = valid_flags(dir.path());
    let admin_index = args.iter().position(|a| a == "--admin-listen").expect("flag") + 1;
    args[admin_index] = addr.clone();
    let output = run(&args);
    assert_refused(&output, 1, &["admin_listen", &addr, "in use"]);
    assert!(!dir.path().join("data").exists(), "nothing written");
}

/// Every file under `dir` with its length and a hash of its contents, to
/// prove nothing changed.
fn snapshot_of(dir: &Path) -> Vec<(PathBuf, usize, u64)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut hasher);
                files.push((path.clone(), bytes.len(), std::hash::Hasher::finish(&hasher)));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_list_that_disagrees_with_the_stored_membership_is_refused() {
    let mut cluster = TestCluster::start(3, ClusterOptions::default()).await;
    cluster.client().put("k", b"v".to_vec()).await.expect("write");
    let node = cluster.node(3);
    assert!(node.terminate(), "clean stop");
    let before = snapshot_of(&node.data_dir);

    // A different peer list: node 2 moved to another port.
    let original = node.initial_peers.clone();
    node.initial_peers[1] = format!("2@us-east=127.0.0.1:{}", free_port());
    let output = node.command().output().expect("run");
    assert_refused(&output, 1, &["initial_peers", "disagrees with the membership", "2@us-east="]);
    assert_eq!(snapshot_of(&node.data_dir), before, "the data directory is unchanged");

    // The data directory of node 3, started as node 1 (joining, no peers).
    node.initial_peers = Vec::new();
    node.id = 1;
    let output = node.command().output().expect("run");
    assert_refused(&output, 1, &["id", "belongs to node 3"]);
    assert_eq!(snapshot_of(&node.data_dir), before, "the data directory is unchanged");
    (node.id, node.initial_peers) = (3, original);
}

/// Node 2's address in the peer list is that of another node, started as
/// node 5 (a copy-paste slip, or a port another process took). Raft
/// messages meant for node 2 reach node 5, which refuses them by id instead
/// of joining the cluster as somebody else (and openraft's core panicked on
/// a message a leader sent to itself this way); nodes 1 and 3 form a working
/// majority, and the nodes say what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_meant_for_another_node_are_refused_not_obeyed() {
    let mut cluster = TestCluster::prepare(3, &ClusterOptions::default());
    let mut stranger = cluster.new_joiner(5, "us-east");
    for node in &mut cluster.nodes {
        node.initial_peers[1] = format!("2@us-east={}", stranger.grpc);
    }
    stranger.start();
    stranger.wait_serving(Duration::from_secs(30)).await.expect("node 5 serving");
    for id in [1, 3] {
        let node = cluster.node(id);
        node.start();
        node.wait_serving(Duration::from_secs(30)).await.expect("serving");
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    for i in 0..20 {
        cluster.client().put(&format!("k{i}"), b"v".to_vec()).await.expect("a majority of two writes");
    }
    let refusal = "this is node 5, not node 2";
    eventually("the refusal is logged", Duration::from_secs(10), || async {
        cluster.logs().contains(refusal) && stranger.log().contains(refusal)
    })
    .await;
    assert!(!stranger.exited(), "node 5 is still running:\n{}", stranger.log());
    let status = stranger.client().node_status(0).await.expect("node 5 answers");
    assert_eq!(status.leader, 0, "node 5 did not join as node 2: {status:?}");
    assert!(!cluster.logs().contains("panicked"), "{}", cluster.logs());
}
