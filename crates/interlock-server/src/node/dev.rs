//! `interlockd dev`: a local 3-region cluster, one OS process per node, with
//! nothing to configure.
//!
//! The first run picks free loopback ports and writes `node-N.toml` files; later
//! runs on the same directory reuse them (the ports are in the stored
//! membership, so they must not change).

use super::config::{format_peers, ConfigKeys, TimingPreset};
use anyhow::Context;
use clap::Args;
use interlock_core::NodeInfo;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The regions of the dev cluster, one node each.
pub const DEV_REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// Env variable telling a dev child which process started it; the child
/// stops if that process goes away.
pub const DEV_PARENT_ENV: &str = "INTERLOCK_DEV_PARENT";

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Directory for the node configs, data, logs and the `endpoints` file.
    #[arg(long, default_value = ".interlock-dev", env = "INTERLOCK_DEV_DIR")]
    pub data_dir: PathBuf,
    /// Run real PostgreSQL 15 instances instead of the demo database: one
    /// primary and two synchronous streaming standbys, one per region, in
    /// shard pg/0 (needs Debian's postgresql-15; as root they run as the
    /// postgres user). Use its own --data-dir.
    #[arg(long)]
    pub postgres: bool,
}

/// `n` different loopback ports the OS says are free (all held until the
/// last is picked, so none repeats).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    Ok(held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// The operators (two: dangerous actions need a second one) and the viewer
/// of the dev cluster; `interlockctl` speaks as the first by default.
pub const DEV_OPERATORS: [&str; 2] = ["alice", "bob"];
pub const DEV_VIEWER: &str = "viewer";

/// Where the dev cluster's throwaway CA and certificates live.
pub fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("tls")
}

fn agent_identity(region: &str) -> String {
    format!("ctl-{region}")
}

/// The roles every dev node gives the dev identities.
fn dev_roles() -> Vec<String> {
    let mut roles = vec!["node-*=node".to_string(), format!("{DEV_VIEWER}=viewer")];
    roles.extend(DEV_OPERATORS.map(|o| format!("{o}=operator")));
    roles.extend(DEV_REGIONS.map(|r| format!("{}=controller:{r}", agent_identity(r))));
    roles
}

/// Writes a throwaway CA and a certificate for every node, every agent, two
/// operators and a viewer into `dir/tls`, unless they are there already.
fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let tls = tls_dir(dir);
    if tls.join("ca.pem").exists() {
        return Ok(());
    }
    let ca = interlock_tls::dev::Authority::new("interlock dev CA (throwaway)")?;
    let mut identities: Vec<String> = (1..=DEV_REGIONS.len()).map(|i| format!("node-{i}")).collect();
    identities.extend(DEV_REGIONS.map(agent_identity));
    identities.extend(DEV_OPERATORS.map(String::from));
    identities.push(DEV_VIEWER.to_string());
    for identity in identities {
        ca.write(&tls, &identity, &identity)?;
    }
    Ok(())
}

/// Loads the node configs from `dir`, or writes new ones with free ports.
fn node_configs(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf, ConfigKeys)>> {
    let paths: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("node-{i}.toml"))).collect();
    if paths.iter().all(|p| p.exists()) {
        return paths
            .into_iter()
            .zip(1u64..)
            .map(|(path, id)| {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let keys: ConfigKeys = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
                Ok((id, path, keys))
            })
            .collect();
    }
    let mut peers = BTreeMap::new();
    let mut ports = free_ports(2 * DEV_REGIONS.len())?;
    let admin_ports = ports.split_off(DEV_REGIONS.len());
    for ((id, region), port) in (1u64..).zip(DEV_REGIONS).zip(ports) {
        peers.insert(id, NodeInfo { grpc_addr: format!("127.0.0.1:{port}"), region: region.to_string() });
    }
    let mut configs = Vec::new();
    for ((id, node), (path, admin_port)) in peers.iter().zip(paths.into_iter().zip(admin_ports)) {
        let keys = ConfigKeys {
            id: Some(*id),
            region: Some(node.region.clone()),
            grpc_listen: Some(node.grpc_addr.clone()),
            admin_listen: Some(format!("127.0.0.1:{admin_port}")),
            data_dir: Some(dir.join(format!("node-{id}"))),
            initial_peers: Some(format_peers(&peers)),
            timing: Some(TimingPreset::Lan),
            tls_ca: Some(tls_dir(dir).join("ca.pem")),
            tls_cert: Some(tls_dir(dir).join(format!("node-{id}.pem"))),
            tls_key: Some(tls_dir(dir).join(format!("node-{id}.key"))),
            roles: Some(dev_roles()),
            ..ConfigKeys::default()
        };
        let text = format!(
            "# Generated by `interlockd dev`. Start this node alone with:\n#   interlockd run --config {}\n{}",
            path.display(),
            toml::to_string(&keys)?
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        configs.push((*id, path, keys));
    }
    Ok(configs)
}

/// Runs the dev cluster until Ctrl-C or SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Absolute: the agents' backup directory becomes file:// URIs, and
    // PostgreSQL runs as another user from elsewhere (the default is relative).
    let dir =
        &std::path::absolute(&args.data_dir).with_context(|| format!("--data-dir: {}", args.data_dir.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_certificates(dir)?;
    let configs = node_configs(dir)?;
    let endpoints: Vec<String> = configs.iter().filter_map(|(_, _, k)| k.grpc_listen.clone()).collect();
    std::fs::write(dir.join("endpoints"), endpoints.join(",")).context("writing the endpoints file")?;

    let pg = match args.postgres {
        true => Some(super::dev_postgres::DevPostgres::prepare(dir).await?),
        false => None,
    };
    let mut children: Vec<Proc> = Vec::new();
    for (id, path, _) in &configs {
        children.push(spawn(dir, &format!("node-{id}"), "run", path)?);
    }

    println!("Interlock dev cluster: 3 nodes in 3 regions, each its own process.");
    for ((id, path, keys), proc) in configs.iter().zip(&children) {
        let pid = proc.child.as_ref().and_then(Child::id).unwrap_or(0);
        println!(
            "  node {id}  {:<9} pid {pid:<7} grpc {}  admin http://{}  log {}",
            keys.region.clone().unwrap_or_default(),
            keys.grpc_listen.clone().unwrap_or_default(),
            keys.admin_listen.clone().unwrap_or_default(),
            path.with_extension("log").display()
        );
    }
    let client = operator_client(dir, &endpoints)?;
    match wait_for_leader(&client, Duration::from_secs(20)).await {
        Some(leader) => println!("Leader elected: node {leader}."),
        None => println!("No leader yet after 20 s; see the node logs in {}.", dir.display()),
    }
    let topology = match &pg {
        Some(pg) => pg.topology()?,
        None => serde_saphyr::from_str(DEMO_TOPOLOGY).context("the demo topology")?,
    };
    match apply_topology_once(&client, &topology).await {
        Ok(true) if pg.is_some() => {
            println!("Applied the PostgreSQL topology: service pg, shard 0, an instance per region.")
        }
        Ok(true) => println!("Applied the demo topology (deploy/examples/topology.yaml): service orders, 2 shards."),
        Ok(false) => println!("A topology is already applied; keeping it."),
        Err(e) => println!("Could not apply the topology: {e:#}"),
    }
    // The shipped runbooks (deploy/runbooks/): idempotent, so a restart keeps their versions.
    let mut applied = Vec::new();
    for (name, yaml) in SHIPPED_RUNBOOKS {
        match client.apply_runbook(yaml).await {
            Ok(_) => applied.push(name),
            Err(e) => println!("Could not apply runbook {name}: {e}"),
        }
    }
    println!("Runbooks: {} (`interlockctl runbook list`).", applied.join(", "));
    for region in DEV_REGIONS {
        // The demo agents back up their primaries every 30 s into a directory
        // they share, and test each other's restores.
        let extra = match &pg {
            Some(pg) => pg.agent_section(region),
            None => {
                format!("backup_every_seconds = 30\nbackup_dir = {:?}\n", dir.join("backups").display().to_string())
            }
        };
        let path = agent_config(dir, region, &endpoints, &extra)?;
        let proc = spawn(dir, &format!("agent-{region}"), "agent", &path)?;
        println!(
            "  agent {region:<9} pid {:<7} ({} region controller)  log {}",
            proc.child.as_ref().and_then(Child::id).unwrap_or(0),
            if pg.is_some() { "postgres" } else { "demo" },
            dir.join(format!("agent-{region}.log")).display()
        );
        children.push(proc);
    }
    if let Some(pg) = &pg {
        println!(
            "\nPostgreSQL instances (user postgres, no password, logs next to their data in {}/pg):",
            dir.display()
        );
        for (replica, address) in pg.addresses() {
            let (host, port) = address.rsplit_once(':').unwrap_or_default();
            println!("  {replica}  {address}   psql -h {host} -p {port} -U postgres");
        }
        println!(
            "The first is the primary; the others are cloned from it and stream from it. Try:\n  \
             interlockctl get shards -o json    # primary_address: where to write\n  \
             kill -9 $(head -1 {0}/pg/pg-0-eu/postmaster.pid)   # the primary's postmaster dies: a standby is\n  \
             interlockctl get shards            # promoted within seconds; the old one is rewound and follows\n  \
             interlockctl switchover pg/0 --to pg-0-ap",
            dir.display()
        );
    }
    let endpoints_file = dir.join("endpoints");
    println!(
        "\nEndpoints are in {0}. Try, in another terminal:\n  \
         export INTERLOCK_ENDPOINTS=$(cat {0})\n  \
         interlockctl cluster status\n  \
         interlockctl kv put greeting hello && interlockctl kv get greeting\n  \
         kill -9 <pid of the leader>; interlockctl cluster status   # a new leader within a second\n  \
         interlockctl get shards; interlockctl get replicas          # primaries chosen by the agents' reports\n  \
         interlockctl switchover orders/0 --to orders-0-us            # planned, RPO 0\n  \
         interlockctl get backups; interlockctl get readiness       # backups restored in another region\n  \
         kill -9 <pid of agent-eu-west>; interlockctl events --follow # eu-west LOST, its primaries move\n\
         TLS is on: certificates for every node and agent, operators alice and bob and a viewer are in {1}\n\
         (interlockctl uses alice's; with `--cacert {1}/ca.pem --cert {1}/bob.pem --key {1}/bob.key` it speaks\n\
         as bob, who approves alice's dangerous requests: `interlockctl approve ID`).\n\
         Ctrl-C stops every node.",
        endpoints_file.display(),
        tls_dir(dir).display()
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = poll.tick() => report_exits(&mut children),
        }
    }
    println!("Stopping the dev cluster...");
    stop_children(&mut children).await;
    if let Some(pg) = &pg {
        pg.stop();
    }
    Ok(())
}

/// A child process of the dev cluster: a node or an agent.
struct Proc {
    name: String,
    subcommand: &'static str,
    config: PathBuf,
    child: Option<Child>,
}

fn spawn(dir: &Path, name: &str, subcommand: &'static str, config: &Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("locating the interlockd binary")?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(&exe)
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .env(DEV_PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { name: name.to_string(), subcommand, config: config.to_path_buf(), child: Some(child) })
}

/// The demo topology, shipped with the binary.
const DEMO_TOPOLOGY: &str = include_str!("../../../../deploy/examples/topology.yaml");

/// The runbooks shipped in deploy/runbooks/, applied by `interlockd dev`.
const SHIPPED_RUNBOOKS: [(&str, &str); 4] = [
    ("evacuate-region", include_str!("../../../../deploy/runbooks/evacuate-region.yaml")),
    ("failback-region", include_str!("../../../../deploy/runbooks/failback-region.yaml")),
    ("drill-region-loss", include_str!("../../../../deploy/runbooks/drill-region-loss.yaml")),
    ("verify-all-backups", include_str!("../../../../deploy/runbooks/verify-all-backups.yaml")),
];

/// Applies `topology` unless one is applied already.
async fn apply_topology_once(
    client: &interlock_client::Client,
    topology: &interlock_core::Topology,
) -> anyhow::Result<bool> {
    if !client.regions().await?.is_empty() {
        return Ok(false);
    }
    client.apply_topology(topology, false).await?;
    Ok(true)
}

/// Writes the agent config for `region` (probe port chosen by the OS).
/// `extra`: the driver's keys and tables, appended (none: the demo database).
fn agent_config(dir: &Path, region: &str, endpoints: &[String], extra: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("agent-{region}.toml"));
    let text = format!(
        "# Generated by `interlockd dev`: the region controller of {region}.\n\
         id = \"ctl-{region}\"\nregion = \"{region}\"\nendpoints = {:?}\nprobe_listen = \"127.0.0.1:0\"\n\
         acting_log = {:?}\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n{extra}",
        endpoints,
        dir.join(format!("agent-{region}.acting.jsonl")).display().to_string(),
        tls_dir(dir).join("ca.pem").display().to_string(),
        tls_dir(dir).join(format!("{}.pem", agent_identity(region))).display().to_string(),
        tls_dir(dir).join(format!("{}.key", agent_identity(region))).display().to_string(),
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn report_exits(children: &mut [Proc]) {
    for proc in children.iter_mut() {
        let Some(child) = &mut proc.child else { continue };
        if let Ok(Some(status)) = child.try_wait() {
            println!(
                "{} exited ({status}). Restart it with: {} {} --config {}",
                proc.name,
                std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "interlockd".into()),
                proc.subcommand,
                proc.config.display()
            );
            proc.child = None;
        }
    }
}

async fn stop_children(children: &mut [Proc]) {
    for proc in children.iter() {
        if let Some(pid) = proc.child.as_ref().and_then(Child::id) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for proc in children.iter_mut() {
        let Some(child) = &mut proc.child else { continue };
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            eprintln!("{} did not stop within 10 s; killing it", proc.name);
            let _ = child.kill().await;
        }
    }
}

/// A client of the dev cluster speaking as its first operator.
fn operator_client(dir: &Path, endpoints: &[String]) -> anyhow::Result<interlock_client::Client> {
    let files = interlock_client::TlsFiles {
        ca: tls_dir(dir).join("ca.pem"),
        cert: tls_dir(dir).join(format!("{}.pem", DEV_OPERATORS[0])),
        key: tls_dir(dir).join(format!("{}.key", DEV_OPERATORS[0])),
        peer_ca: None,
    };
    let tls = interlock_client::Tls::from_files(&files)?;
    let options = interlock_client::ClientOptions { tls: Some(tls), ..interlock_client::ClientOptions::default() };
    Ok(interlock_client::Client::with_options(endpoints.to_vec(), options)?)
}

/// Polls the cluster until it reports a leader.
async fn wait_for_leader(client: &interlock_client::Client, within: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), client.cluster_status()).await {
            if status.leader != 0 {
                return Some(status.leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_topology_is_valid() {
        let topology: interlock_core::Topology = serde_saphyr::from_str(super::DEMO_TOPOLOGY).expect("parses");
        assert_eq!(interlock_core::topology::validate(&topology), vec![]);
        assert_eq!(topology.failover, interlock_core::model::FailoverPolicy::default(), "documents the defaults");
        assert_eq!(topology.routing, interlock_core::model::RoutingPolicy::default(), "documents the defaults");
    }
}
