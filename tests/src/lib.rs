//! A harness for tests that run real `interlockd` processes.
//!
//! Nodes listen on ports the OS hands out, keep their data and logs in a
//! temporary directory, and are killed (SIGKILL) when the [`TestCluster`] is
//! dropped, so a failing test leaves nothing running.
//!
//! The binaries must be built first (`cargo build --bins`, which the README's
//! test command does); [`bin`] finds them next to the test executable.

pub mod postgres;
use interlock_client::{Client, ClientOptions, ClusterStatus, KeyValue, Tls, TlsFiles};
use interlock_tls::dev::Authority;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The path of a workspace binary (`interlockd`, `interlockctl`) of the same
/// build profile as the running executable: next to it (a binary such as
/// `interlock-bench`) or one level up (a test in `target/<profile>/deps`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable dir");
    let candidates = [Some(dir.join(name)), dir.parent().map(|p| p.join(name))];
    candidates.into_iter().flatten().find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: run `cargo build --bins` (with --release for benchmarks) first",
            exe.display()
        )
    })
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` different loopback ports that were free a moment ago (the OS picks
/// them; all are held until the last is picked, so none repeats).
pub fn free_ports(n: usize) -> Vec<u16> {
    free_ports_on(&vec!["127.0.0.1"; n])
}

/// A port the OS says is free on each of `hosts` (loopback addresses), all
/// held until the last is picked.
pub fn free_ports_on(hosts: &[&str]) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        hosts.iter().map(|h| std::net::TcpListener::bind((*h, 0)).expect("free port")).collect();
    held.iter().map(|l| l.local_addr().expect("free port").port()).collect()
}

/// One node of a test cluster.
pub struct TestNode {
    pub id: u64,
    pub region: String,
    pub grpc: String,
    pub admin: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Extra `--key value` flags every start of this node gets.
    pub extra_args: Vec<String>,
    /// Peers for the first start (`ID@REGION=ADDR`), empty for a joining node.
    pub initial_peers: Vec<String>,
    /// What [`TestNode::client`] talks with (the first operator's, or plaintext).
    pub client_tls: Option<Tls>,
    child: Option<Child>,
    /// How long the log was when this run of the process started.
    log_start: usize,
}

/// Identities of a test deployment: nodes `node-N`, operators `alice` and
/// `bob`, a `viewer`, and a controller `ctl-<region>` per region.
pub const OPERATOR: &str = "alice";
pub const SECOND_OPERATOR: &str = "bob";
pub const VIEWER: &str = "viewer";

/// A throwaway CA for one test deployment and the certificates it signed,
/// written under the cluster's directory.
pub struct TestPki {
    dir: PathBuf,
    ca: Authority,
    written: Mutex<BTreeMap<String, TlsFiles>>,
}

impl TestPki {
    pub fn new(dir: &std::path::Path) -> TestPki {
        TestPki {
            dir: dir.join("tls"),
            ca: Authority::new("interlock test CA").expect("CA"),
            written: Mutex::default(),
        }
    }

    /// The CA, for tests that sign certificates of their own.
    pub fn authority(&self) -> &Authority {
        &self.ca
    }

    /// The files of `identity`'s certificate (written on first use).
    pub fn files(&self, identity: &str) -> TlsFiles {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written
            .entry(identity.to_string())
            .or_insert_with(|| self.ca.write(&self.dir, identity, identity).expect("write a certificate"))
            .clone()
    }

    pub fn tls(&self, identity: &str) -> Tls {
        Tls::from_files(&self.files(identity)).expect("tls")
    }

    /// The nodes' `--roles`.
    pub fn roles() -> String {
        let mut roles =
            vec!["node-*=node".to_string(), format!("{OPERATOR}=operator"), format!("{SECOND_OPERATOR}=operator")];
        roles.push(format!("{VIEWER}=viewer"));
        roles.extend(REGIONS.iter().map(|r| format!("ctl-{r}=controller:{r}")));
        roles.join(",")
    }

    /// The flags that give a node `node-ID`'s certificate and the roles.
    fn node_args(&self, id: u64) -> Vec<String> {
        let files = self.files(&format!("node-{id}"));
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls-ca".into(),
            path(&files.ca),
            "--tls-cert".into(),
            path(&files.cert),
            "--tls-key".into(),
            path(&files.key),
            "--roles".into(),
            TestPki::roles(),
        ]
    }

    /// The environment that makes `interlockctl` speak as `identity`.
    pub fn ctl_env(&self, identity: &str) -> Vec<(String, String)> {
        let files = self.files(identity);
        vec![
            ("INTERLOCK_CACERT".into(), files.ca.display().to_string()),
            ("INTERLOCK_CERT".into(), files.cert.display().to_string()),
            ("INTERLOCK_KEY".into(), files.key.display().to_string()),
        ]
    }
}

impl TestNode {
    /// The command line that starts this node.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("interlockd"));
        cmd.arg("run")
            .args(["--id", &self.id.to_string()])
            .args(["--region", &self.region])
            .args(["--grpc-listen", &self.grpc])
            .args(["--admin-listen", &self.admin])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--log", "info"])
            .args(&self.extra_args);
        if !self.initial_peers.is_empty() {
            cmd.args(["--initial-peers", &self.initial_peers.join(",")]);
        }
        cmd
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let log_len = log.metadata().map_or(0, |m| m.len() as usize);
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn interlockd");
        self.child = Some(child);
        self.log_start = log_len;
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id of this run of the node, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process was started and has exited since (it is then
    /// no longer running).
    pub fn exited(&mut self) -> bool {
        let gone = self.child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
        if gone {
            self.child = None;
        }
        gone
    }

    /// Waits until this run of the node says it is serving; `Err(its log)`
    /// if it exited or did not get there in time.
    pub async fn wait_serving(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().get(self.log_start..).is_some_and(|run| run.contains("): serving")) {
                return Ok(());
            }
            if self.exited() {
                return Err(self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.log())
    }

    /// A client that talks to this node only.
    pub fn client(&self) -> Client {
        let options = ClientOptions {
            retry_budget: Duration::from_secs(2),
            tls: self.client_tls.clone(),
            ..ClientOptions::default()
        };
        Client::with_options([&self.grpc], options).expect("client")
    }

    /// The node's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The value of a Prometheus gauge or counter from `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(&self.admin, "/metrics").await.ok()?.1;
        body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET, returning the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// Options for [`TestCluster::start`].
#[derive(Clone, Default)]
pub struct ClusterOptions {
    /// Extra flags for every node, e.g. `["--snapshot-every", "50"]`.
    pub extra_args: Vec<String>,
    /// Run with `--tls off` (plaintext, nothing authenticated).
    pub plaintext: bool,
}

/// A cluster of real `interlockd` processes in a temporary directory, on
/// mTLS with a throwaway CA unless asked for plaintext.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    /// None: the cluster is plaintext.
    pub pki: Option<Arc<TestPki>>,
}

const REGIONS: [&str; 5] = ["eu-west", "us-east", "ap-south", "sa-east", "af-south"];

impl TestCluster {
    /// Starts `n` nodes that bootstrap together and waits for a leader.
    pub async fn start(n: usize, options: ClusterOptions) -> TestCluster {
        // A port the OS gave us can be taken by someone else before the node
        // binds it; then the whole cluster starts again on new ports.
        for attempt in 1.. {
            let mut cluster = TestCluster::prepare(n, &options);
            for node in &mut cluster.nodes {
                node.start();
            }
            let mut serving = true;
            for node in &mut cluster.nodes {
                if let Err(log) = node.wait_serving(Duration::from_secs(30)).await {
                    assert!(attempt < 3 && log.contains("cannot listen"), "node {} did not start:\n{log}", node.id);
                    serving = false;
                }
            }
            if serving {
                cluster.wait_for_leader(Duration::from_secs(30)).await;
                return cluster;
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `n` nodes that will bootstrap together, not started yet.
    pub fn prepare(n: usize, options: &ClusterOptions) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = (!options.plaintext).then(|| Arc::new(TestPki::new(dir.path())));
        let client_tls = pki.as_ref().map(|p| p.tls(OPERATOR));
        let ports = free_ports(2 * n);
        let address = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let region = |id: u64| REGIONS[(id as usize - 1) % REGIONS.len()].to_string();
        let peers: Vec<String> =
            (1..=n as u64).map(|id| format!("{id}@{}={}", region(id), address(id as usize - 1))).collect();
        let nodes = (1..=n as u64)
            .map(|id| TestNode {
                id,
                region: region(id),
                grpc: address(id as usize - 1),
                admin: address(n + id as usize - 1),
                data_dir: dir.path().join(format!("node-{id}")),
                log_path: dir.path().join(format!("node-{id}.log")),
                extra_args: security_args(pki.as_deref(), id).into_iter().chain(options.extra_args.clone()).collect(),
                initial_peers: peers.clone(),
                client_tls: client_tls.clone(),
                child: None,
                log_start: 0,
            })
            .collect();
        TestCluster { dir, nodes, pki }
    }

    /// A node that is not started yet and will join through `cluster add`.
    pub fn new_joiner(&self, id: u64, region: &str) -> TestNode {
        let ports = free_ports(2);
        TestNode {
            id,
            region: region.to_string(),
            grpc: format!("127.0.0.1:{}", ports[0]),
            admin: format!("127.0.0.1:{}", ports[1]),
            data_dir: self.dir.path().join(format!("node-{id}")),
            log_path: self.dir.path().join(format!("node-{id}.log")),
            extra_args: security_args(self.pki.as_deref(), id),
            initial_peers: Vec::new(),
            client_tls: self.pki.as_ref().map(|p| p.tls(OPERATOR)),
            child: None,
            log_start: 0,
        }
    }

    /// The client options of `identity` (plaintext for a plaintext cluster).
    pub fn options_as(&self, identity: &str) -> ClientOptions {
        ClientOptions { tls: self.pki.as_ref().map(|p| p.tls(identity)), ..ClientOptions::default() }
    }

    /// A client over every node's endpoint, speaking as `identity`.
    pub fn client_as(&self, identity: &str) -> Client {
        Client::with_options(self.endpoints(), self.options_as(identity)).expect("client")
    }

    /// The environment for an `interlockctl` speaking as `identity`.
    pub fn ctl_env(&self, identity: &str) -> Vec<(String, String)> {
        match &self.pki {
            Some(pki) => pki.ctl_env(identity),
            None => vec![("INTERLOCK_TLS".into(), "off".into())],
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc.clone()).collect()
    }

    /// A client over every node's endpoint, as the first operator.
    pub fn client(&self) -> Client {
        self.client_as(OPERATOR)
    }

    pub fn node(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// Waits until every running node names the same running leader; returns its id.
    pub async fn wait_for_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let mut named = Vec::new();
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                named.push(node.client().node_status(0).await.map(|s| s.leader).unwrap_or(0));
            }
            let leader = named.first().copied().unwrap_or(0);
            let leader_running = self.nodes.iter().any(|n| n.id == leader && n.is_running());
            if leader != 0 && leader_running && named.iter().all(|l| *l == leader) {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no agreed leader within {within:?}\n{}", self.logs());
    }

    /// The log of node `id` so far.
    pub fn node_log(&self, id: u64) -> String {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.log()).unwrap_or_default()
    }

    /// The cluster status, retried until it succeeds.
    pub async fn status(&self) -> ClusterStatus {
        self.client().cluster_status().await.unwrap_or_else(|e| panic!("status: {e}\n{}", self.logs()))
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        'outer: while Instant::now() < deadline {
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                match node.client().node_status(0).await {
                    Ok(s) if s.last_applied >= index => {}
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'outer;
                    }
                }
            }
            return;
        }
        panic!("not every node applied {index} within {within:?}\n{}", self.logs());
    }

    /// Each running node's local (non-linearizable) view of the key-value space.
    pub async fn local_views(&self) -> BTreeMap<u64, Vec<KeyValue>> {
        let mut views = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let kvs = node.client().range("", false, 0).await.expect("local range");
            views.insert(node.id, kvs);
        }
        views
    }

    /// Every node's log, for failure messages: its warnings, errors and
    /// panics (first 20), then its last 40 lines.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let lines: Vec<&str> = log.lines().collect();
                let alarms: Vec<&str> = lines
                    .iter()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
                    .take(20)
                    .copied()
                    .collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                format!(
                    "--- node {} (first warnings) ---\n{}\n--- node {} (last 40 lines) ---\n{}",
                    n.id,
                    alarms.join("\n"),
                    n.id,
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A TCP proxy in front of one address, that a test can cut: every open
/// connection is dropped and new ones are refused, like a network partition
/// between the proxy's users and the target.
pub struct CutProxy {
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: String) -> CutProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let (target, flag) = (target.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch_cut = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch_cut => {}
                    }
                });
            }
        });
        CutProxy { addr, cut, task }
    }

    /// Cuts the link: open connections stop carrying bytes, new ones are dropped.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A three-region topology with one shard and a replica in each region.
pub fn sample_topology() -> interlock_client::Topology {
    serde_json::from_value(serde_json::json!({
        "regions": [
            {"id": "eu-west", "capacity": 100},
            {"id": "us-east", "capacity": 100},
            {"id": "ap-south", "capacity": 100}
        ],
        "services": [{
            "name": "orders",
            "shards": [{
                "id": "0",
                "max_lag_on_failover": 1000,
                "replicas": [
                    {"id": "o0-eu", "region": "eu-west", "priority": 100},
                    {"id": "o0-us", "region": "us-east", "priority": 90},
                    {"id": "o0-ap", "region": "ap-south", "priority": 50}
                ]
            }]
        }]
    }))
    .expect("sample topology")
}

impl TestCluster {
    /// `interlockctl ARGS -o json` as `identity`, without a terminal: its
    /// exit code, its JSON answer (Null if none) and everything it printed.
    /// It retries an unreachable cluster for 30 s (an election on a loaded
    /// machine is not what these tests are about).
    pub fn ctl_json(&self, identity: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
        let out = Command::new(bin("interlockctl"))
            .arg("--endpoints")
            .arg(self.endpoints().join(","))
            .args(["--timeout", "30s"])
            .args(args)
            .args(["-o", "json"])
            .envs(self.ctl_env(identity))
            .stdin(Stdio::null())
            .output()
            .expect("run interlockctl");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let value = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), value, format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for TestCluster {
    /// A failing test shows what the nodes said (their last lines).
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A node's security flags: its certificate and the roles, or `--tls off`.
fn security_args(pki: Option<&TestPki>, id: u64) -> Vec<String> {
    match pki {
        Some(pki) => pki.node_args(id),
        None => vec!["--tls".into(), "off".into()],
    }
}

/// A reference region controller (`interlockd agent`) run as a process.
pub struct TestAgent {
    pub id: String,
    pub region: String,
    pub config_path: PathBuf,
    pub acting_log: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl TestAgent {
    /// Writes the agent's config (with `ctl-<region>`'s certificate) in
    /// the cluster's directory and starts it.
    pub fn start(cluster: &TestCluster, region: &str) -> TestAgent {
        TestAgent::start_with(cluster, region, "")
    }

    /// Like [`TestAgent::start`], with `extra` appended to the config (keys,
    /// then tables: e.g. `driver = "exec"` and an `[exec]` section).
    pub fn start_with(cluster: &TestCluster, region: &str, extra: &str) -> TestAgent {
        let (dir, endpoints) = (cluster.dir.path(), cluster.endpoints());
        let id = format!("ctl-{region}");
        let config_path = dir.join(format!("{id}.toml"));
        let acting_log = dir.join(format!("{id}.acting.jsonl"));
        let tls = match &cluster.pki {
            Some(pki) => {
                let files = pki.files(&id);
                format!("tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n", files.ca, files.cert, files.key)
            }
            None => "tls = \"off\"\n".to_string(),
        };
        let text = format!(
            "id = {id:?}\nregion = {region:?}\nendpoints = {endpoints:?}\nprobe_listen = \"127.0.0.1:0\"\nacting_log = {:?}\n{tls}{extra}",
            acting_log.display().to_string()
        );
        std::fs::write(&config_path, text).expect("agent config");
        let log_path = dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path).expect("agent log");
        let child = Command::new(bin("interlockd"))
            .arg("agent")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn interlockd agent");
        TestAgent { id, region: region.to_string(), config_path, acting_log, log_path, child: Some(child) }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its acting intervals as logged: (replica, shard, epoch, token, acting?, at_unix_ms).
    /// The agent's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn acting_changes(&self) -> Vec<ActingLine> {
        let text = std::fs::read_to_string(&self.acting_log).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One line of an agent's acting log.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ActingLine {
    pub at_unix_ms: u64,
    pub acting: bool,
    pub replica: String,
    pub shard: String,
    pub epoch: u64,
    pub token: u64,
}

/// Acting intervals per shard from several agents' logs; an interval still
/// open in an agent that was killed at `killed_at[agent index]` ends there,
/// one still open in a live agent ends at `now`. Returns every pair of
/// intervals of one shard that overlap, described.
pub fn overlapping_primaries(logs: &[(Vec<ActingLine>, Option<u64>)], now: u64) -> Vec<String> {
    let mut intervals: BTreeMap<String, Vec<(u64, u64, String, u64)>> = BTreeMap::new();
    for (lines, killed_at) in logs {
        let mut open: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for l in lines {
            if l.acting {
                open.insert((l.replica.clone(), l.token), l.at_unix_ms);
            } else if let Some(from) = open.remove(&(l.replica.clone(), l.token)) {
                intervals.entry(l.shard.clone()).or_default().push((from, l.at_unix_ms, l.replica.clone(), l.epoch));
            }
        }
        for ((replica, _), from) in open {
            let shard = lines.iter().find(|l| l.replica == replica).map(|l| l.shard.clone()).unwrap_or_default();
            let epoch = lines.iter().rev().find(|l| l.replica == replica).map_or(0, |l| l.epoch);
            intervals.entry(shard).or_default().push((from, killed_at.unwrap_or(now), replica, epoch));
        }
    }
    let mut problems = Vec::new();
    for (shard, mut list) in intervals {
        list.sort();
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.0 < a.1 {
                problems.push(format!(
                    "{shard}: {} (epoch {}) acted {}..{} and {} (epoch {}) from {}",
                    a.2, a.3, a.0, a.1, b.2, b.3, b.0
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: u64, acting: bool, replica: &str, token: u64) -> ActingLine {
        ActingLine { at_unix_ms: at, acting, replica: replica.into(), shard: "s/0".into(), epoch: token, token }
    }

    #[test]
    fn the_overlap_checker_finds_two_primaries_at_once() {
        let a = vec![line(10, true, "a", 1), line(20, false, "a", 1)];
        let b_after = vec![line(20, true, "b", 2)];
        let b_during = vec![line(15, true, "b", 2)];
        assert!(overlapping_primaries(&[(a.clone(), None), (b_after, None)], 30).is_empty());
        assert_eq!(overlapping_primaries(&[(a.clone(), None), (b_during, None)], 30).len(), 1);
        // An interval left open by a killed agent ends at its kill time.
        let open = vec![line(10, true, "a", 1)];
        assert!(overlapping_primaries(&[(open.clone(), Some(12)), (vec![line(12, true, "b", 2)], None)], 30).is_empty());
        assert_eq!(overlapping_primaries(&[(open, None), (vec![line(12, true, "b", 2)], None)], 30).len(), 1);
    }
}
