//! A Python client generated from `proto/` (grpcio-tools) against a real
//! 3-node cluster: Kv Put/Get, Cluster.Status and v1alpha reflection, as
//! checked by `tests/python/client_check.py`. The Python packages are a test
//! dependency: without them this test fails and says how to install them.

use interlock_tests::{ClusterOptions, TestCluster};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

const INSTALL_HINT: &str = "pip install -r tests/python/requirements.txt";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate is inside the repository").to_path_buf()
}

fn text(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `python3 ARGS` in the repository root; the process is killed if the
/// test ends first.
async fn python3(args: &[String], within: Duration) -> Output {
    let run = Command::new("python3").args(args).current_dir(repo_root()).kill_on_drop(true).output();
    match tokio::time::timeout(within, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("cannot run python3 ({e}): install CPython 3.10+, then `{INSTALL_HINT}`"),
        Err(_) => panic!("python3 {args:?} did not finish within {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_protos_talks_to_a_cluster() {
    // Before starting a cluster: are python3 and the gRPC packages there?
    let imports = "import grpc, grpc_tools.protoc, grpc_reflection.v1alpha.proto_reflection_descriptor_database";
    let probe = python3(&["-c".into(), imports.into()], Duration::from_secs(30)).await;
    assert!(probe.status.success(), "python3 lacks the gRPC packages: `{INSTALL_HINT}`\n{}", text(&probe));

    let cluster = TestCluster::start(3, ClusterOptions::default()).await;
    let mut args = vec!["tests/python/client_check.py".to_string()];
    args.extend(cluster.endpoints());
    // Over mTLS, as the first operator.
    let files = cluster.pki.as_ref().expect("a TLS cluster").files(interlock_tests::OPERATOR);
    for (flag, path) in [("--cacert", &files.ca), ("--cert", &files.cert), ("--key", &files.key)] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    let output = python3(&args, Duration::from_secs(120)).await;
    assert!(output.status.success(), "client_check.py failed\n{}\n{}", text(&output), cluster.logs());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("all checks passed"), "client_check.py exited 0 without finishing\n{}", text(&output));
    eprintln!("{stdout}");
}
