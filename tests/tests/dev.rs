//! `interlockd dev`, the README's first command, as a newcomer runs it:
//! three nodes and three agents come up with nothing to configure, every
//! shard gets a primary, and SIGTERM stops every process it started —
//! with `--postgres`, three real PostgreSQL instances too.

use interlock_client::{Client, ClientOptions, Tls, TlsFiles};
use interlock_tests::{bin, eventually};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Dev {
    child: Child,
}

impl Dev {
    /// Runs `interlockd dev` in `dir` as the README has it: no `--data-dir`,
    /// so everything goes to the relative default, [`data_dir`]`(dir)`.
    fn start(dir: &Path, extra: &[&str]) -> Dev {
        let log = std::fs::File::create(dir.join("dev.out")).expect("log");
        let child = Command::new(bin("interlockd"))
            .arg("dev")
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn interlockd dev");
        Dev { child }
    }

    /// SIGTERM, and wait for it to stop everything.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Where `interlockd dev`, started in `dir`, keeps its files.
fn data_dir(dir: &Path) -> std::path::PathBuf {
    dir.join(".interlock-dev")
}

/// A client speaking as the dev cluster's operator alice, once it wrote
/// its endpoints file.
async fn client(dir: &Path) -> Client {
    eventually("the endpoints file", Duration::from_secs(30), || async { dir.join("endpoints").exists() }).await;
    let endpoints: Vec<String> =
        std::fs::read_to_string(dir.join("endpoints")).expect("endpoints").split(',').map(String::from).collect();
    let tls = dir.join("tls");
    let files =
        TlsFiles { ca: tls.join("ca.pem"), cert: tls.join("alice.pem"), key: tls.join("alice.key"), peer_ca: None };
    let options = ClientOptions { tls: Some(Tls::from_files(&files).expect("tls")), ..ClientOptions::default() };
    Client::with_options(endpoints, options).expect("client")
}

async fn every_shard_has_a_primary(client: &Client, shards: usize) {
    eventually(&format!("{shards} shards with an acknowledged primary"), Duration::from_secs(90), || async {
        client
            .shards()
            .await
            .is_ok_and(|s| s.len() == shards && s.iter().all(|s| !s.primary.is_empty() && s.pending.is_empty()))
    })
    .await;
}

/// Processes whose command line mentions `dir` or that run in it (what dev
/// started there: its relative paths name no absolute directory).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let runs_in = std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if cmdline.contains(&needle) || runs_in {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// The shipped `evacuate-region`, live on the dev cluster: alice starts and
/// approves it; it ends with no primary in eu-west, eu-west's weight 0, and
/// a report listing every step.
async fn evacuate_eu_west(client: &Client) {
    use interlock_client::{ControlExecutionRequest, ExecutionOp, RunMode, RunRunbookRequest};
    let runbooks = client.runbooks("").await.expect("runbooks");
    assert_eq!(runbooks.len(), 4, "interlockd dev applies the shipped runbooks");
    let params = [("region".to_string(), "eu-west".to_string())].into();
    let request = RunRunbookRequest { name: "evacuate-region".into(), params, mode: RunMode::Live as i32 };
    let id = client.run_runbook(request).await.expect("run").execution_id;
    eventually("the approval step waits", Duration::from_secs(10), || async {
        client.executions(id).await.is_ok_and(|e| e[0].steps[0].state == "RUNNING")
    })
    .await;
    let approve =
        ControlExecutionRequest { id, step: String::new(), op: ExecutionOp::Approve as i32, reason: String::new() };
    client.control_execution(approve).await.expect("approve");
    eventually("evacuate-region final", Duration::from_secs(120), || async {
        client.executions(id).await.is_ok_and(|e| e[0].r#final)
    })
    .await;
    let execution = client.executions(id).await.expect("execution").remove(0);
    assert_eq!(execution.state, "SUCCEEDED", "{execution:#?}");
    let replicas = client.replicas().await.expect("replicas");
    let primaries_in_eu = replicas.iter().filter(|r| r.role == "PRIMARY" && r.region == "eu-west").count();
    assert_eq!(primaries_in_eu, 0, "{replicas:#?}");
    for table in client.routing("").await.expect("routing").iter().filter_map(|r| r.table.as_ref()) {
        assert_eq!(table.weights.get("eu-west"), Some(&0), "{table:?}");
    }
    for step in &execution.steps {
        assert!(execution.report_markdown.contains(&format!("| {} |", step.name)), "{}", execution.report_markdown);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlockd_dev_comes_up_with_primaries_and_stops_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start(dir.path(), &[]);
    let client = client(&data_dir(dir.path())).await;
    every_shard_has_a_primary(&client, 2).await;
    evacuate_eu_west(&client).await;
    assert!(dev.stop().success(), "{}", std::fs::read_to_string(dir.path().join("dev.out")).unwrap_or_default());
    let left = processes_under(dir.path());
    assert!(left.is_empty(), "left running: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interlockd_dev_postgres_runs_a_primary_and_two_streaming_standbys() {
    if !Path::new("/usr/lib/postgresql/15/bin/initdb").exists() {
        assert!(std::env::var_os("CI").is_none(), "PostgreSQL 15 is not installed: .ci/run installs it");
        eprintln!("SKIPPED: PostgreSQL 15 is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The postgres user must reach the data directory.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut dev = Dev::start(dir.path(), &["--postgres"]);
    let client = client(&data_dir(dir.path())).await;
    every_shard_has_a_primary(&client, 1).await;
    eventually("every instance reported healthy", Duration::from_secs(90), || async {
        client.replicas().await.is_ok_and(|r| r.len() == 3 && r.iter().all(|r| r.healthy == Some(true)))
    })
    .await;
    let shard = client.shards().await.expect("shards").remove(0);
    assert!(shard.primary_address.starts_with("127.0.0.1:"), "{shard:?}");
    let postmasters = processes_under(dir.path()).into_iter().filter(|p| p.contains("bin/postgres")).count();
    assert_eq!(postmasters, 3, "three PostgreSQL instances");
    assert!(dev.stop().success(), "{}", std::fs::read_to_string(dir.path().join("dev.out")).unwrap_or_default());
    let left = processes_under(dir.path());
    assert!(left.is_empty(), "left running: {left:?}");
}
