//! `interlockctl`: the operator CLI for Interlock (etcdctl / patronictl style).
//!
//! Exit codes (SPEC §8): 0 ok, 1 failed, 2 usage or invalid argument,
//! 3 unreachable or no leader, 4 refused by a safety rule or precondition.
//!
//! Map: this file (the command tree, global flags, exit codes);
//! `coordinator` (apply, get, leases, events); `failover` (switchover,
//! failover, maintenance, regions); `routing` (weights, drains); `runbooks`
//! (runbooks, drills, executions, reports); `output`
//! (tables, JSON, YAML).

mod backups;
mod coordinator;
mod failover;
mod output;
mod routing;
mod runbooks;
mod security;

use anyhow::Context;
use clap::{Parser, Subcommand};
use interlock_client::{Client, ClientError, ClientOptions, ClusterStatus};
use output::{print_members, print_status, Format, Printer};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// The directory `interlockd dev` writes to: INTERLOCK_DEV_DIR (the variable
/// `interlockd dev --data-dir` reads too), else `.interlock-dev`. Its
/// `endpoints` file is used when no endpoint is given; from its `tls/` the
/// CLI uses `ca.pem` and the first operator's (`alice`) when none is given.
fn dev_dir() -> std::path::PathBuf {
    std::env::var_os("INTERLOCK_DEV_DIR").map_or_else(|| ".interlock-dev".into(), std::path::PathBuf::from)
}

/// Operate an Interlock cluster.
///
/// Endpoints come from --endpoints, else INTERLOCK_ENDPOINTS, else the file
/// .interlock-dev/endpoints that `interlockd dev` writes in the current directory
/// (or in $INTERLOCK_DEV_DIR).
///
/// Exit codes: 0 ok, 1 failed, 2 usage or invalid argument, 3 unreachable or
/// no leader, 4 refused by a safety rule or precondition.
#[derive(Parser)]
#[command(name = "interlockctl", version, about, long_about)]
struct Cli {
    /// gRPC endpoints of the cluster, comma separated (HOST:PORT,...).
    #[arg(long, global = true, env = "INTERLOCK_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Format,

    /// Answer yes to confirmations (needed for dangerous commands without a terminal).
    #[arg(long, global = true)]
    yes: bool,

    /// The CA certificate (PEM) the cluster's certificates are signed by.
    #[arg(long, global = true, env = "INTERLOCK_CACERT")]
    cacert: Option<std::path::PathBuf>,

    /// Your client certificate (PEM): who you are to the cluster.
    #[arg(long, global = true, env = "INTERLOCK_CERT")]
    cert: Option<std::path::PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(long = "key", id = "tls_key", global = true, env = "INTERLOCK_KEY")]
    tls_key: Option<std::path::PathBuf>,

    /// `off`: talk plaintext to a cluster run with `tls = "off"`.
    #[arg(long, global = true, env = "INTERLOCK_TLS", value_parser = ["on", "off"], default_value = "on")]
    tls: String,

    /// How long a command may keep retrying an unreachable cluster, e.g. 5s.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The linearizable key-value space.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Apply a declared topology (YAML): idempotent; --dry-run shows the diff.
    ///
    /// The file lists regions and services with their shards and replicas:
    ///
    ///   regions:
    ///     - id: eu-west
    ///       capacity: 100
    ///   services:
    ///     - name: orders
    ///       shards:
    ///         - id: "0"
    ///           max_lag_on_failover: 1000
    ///           replicas:
    ///             - { id: orders-0-eu, region: eu-west, priority: 100,
    ///                 address: "db-0-eu.internal:5432" }   # optional: its database
    ///
    /// Every problem is reported with its field, and one refuses the whole file.
    #[command(verbatim_doc_comment)]
    Apply(coordinator::ApplyArgs),
    /// Show regions, shards, replicas, controllers, leases, routing, approvals, backups or readiness.
    Get(coordinator::GetArgs),
    /// Leases with fencing tokens.
    #[command(subcommand)]
    Lease(coordinator::LeaseCmd),
    /// The event log: every decision with its reason.
    Events(coordinator::EventsArgs),
    /// Planned switchover of a shard's primary (RPO 0).
    ///
    /// Demotes the primary, waits until the target has caught up, promotes it.
    /// Refused (exit 4, with the reason) if the target cannot take over:
    /// unhealthy, too far behind, region not ACTIVE. With --region R, moves
    /// every primary out of R (before maintenance).
    Switchover(failover::SwitchoverArgs),
    /// Give a shard a new primary now (operator failover).
    ///
    /// For a shard awaiting an operator, e.g. after a region loss when no
    /// replica was within max_lag_on_failover. Refused if the target is
    /// behind the RPO bound unless --accept-data-loss.
    Failover(failover::FailoverArgs),
    /// Pause or resume automatic failover (Patroni's pause).
    #[command(subcommand)]
    Maintenance(failover::MaintenanceCmd),
    /// Region lifecycle: bring a returned region back into service.
    #[command(subcommand)]
    Region(failover::RegionCmd),
    /// Active-active routing weights (show them with `get routing`).
    #[command(subcommand)]
    Routing(routing::RoutingCmd),
    /// Move a region's traffic away gradually.
    ///
    /// Its weight falls by --step of its base weight every --interval until it
    /// is DRAINED (0). Resumes across leader changes (the plan is in Raft).
    /// Refused (exit 4, naming the rule) if a step would break a safety rule;
    /// a later step that would is held back (event region.drain_blocked).
    Drain(routing::DrainArgs),
    /// Bring a DRAINED or RECOVERING region's traffic back, step by step.
    Undrain(routing::DrainArgs),
    /// Approve a dangerous action another operator asked for.
    ///
    /// Failovers that accept data loss, membership changes, routing
    /// overrides and revokes of another identity's lease wait for a second
    /// operator: `interlockctl get approvals` lists them. Approving your own
    /// request is refused; an expired one does nothing. An approved action
    /// runs at once, on the requester's behalf, checked as it would have been.
    Approve {
        /// The approval id (printed when it was asked for).
        id: u64,
    },
    /// The hash-chained audit trail of every admin action and refusal.
    #[command(subcommand)]
    Audit(security::AuditCmd),
    /// Disaster-recovery runbooks: apply, run (live, --drill, --dry-run),
    /// follow, approve, retry, skip, abort, report.
    ///
    /// A runbook is YAML: parameters, groups of steps (run in order; the
    /// steps of a group in parallel), on_abort steps. Every step transition
    /// is a Raft command, so an execution survives the loss of the leader.
    /// See docs/runbooks.md and the runbooks shipped in deploy/runbooks/.
    #[command(subcommand)]
    Runbook(runbooks::RunbookCmd),
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Leader, term, and every member with its role and applied index.
    ///
    /// JSON shape (stable): {"leader": ID, "term": N, "members": [{"id",
    /// "region", "grpc_addr", "role", "last_applied", "reachable"}]}.
    /// "last_applied" is null for a member that did not answer.
    Status,
    /// The members: id, region, address and role.
    Members,
    /// Add a node: first as a learner; once it has caught up, as a voter.
    ///
    /// Start the new node first, with no initial_peers, then run this.
    Add {
        /// The new node's id (as in its config).
        id: u64,
        /// The new node's gRPC address, as other nodes will dial it.
        addr: String,
        /// The region the new node runs in.
        #[arg(long)]
        region: String,
        /// Keep it a learner (it receives the log but does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster (dangerous: asks for confirmation).
    Remove {
        /// The id of the node to remove.
        id: u64,
    },
}

#[derive(Subcommand)]
enum KvCmd {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (linearizable unless --serializable).
    Get {
        key: String,
        /// Read the answering node's local state instead of confirming with a quorum.
        #[arg(long)]
        serializable: bool,
    },
    /// Delete KEY.
    Del { key: String },
    /// List keys starting with PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A usage error (exit 2) with its message.
    pub(crate) fn usage(message: String) -> Failure {
        Failure { code: 2, message }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::InvalidArgument(_) => 2,
            ClientError::PermissionDenied(_) => 4,
            ClientError::Unavailable(_) => 3,
            ClientError::Refused(_) | ClientError::AlreadyExists(_) => 4,
            _ => 1,
        };
        Failure { code, message: e.to_string() }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure { code: 1, message: format!("{e:#}") }
    }
}

/// The TLS material: the flags (or env), else `interlockd dev`'s in the
/// current directory; with `--tls off`, none.
fn tls(cli: &Cli) -> Result<Option<interlock_client::Tls>, Failure> {
    if cli.tls == "off" {
        return Ok(None);
    }
    let dev = dev_dir().join("tls");
    let files = match (&cli.cacert, &cli.cert, &cli.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            interlock_client::TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone(), peer_ca: None }
        }
        (None, None, None) if dev.join("ca.pem").exists() => interlock_client::TlsFiles {
            ca: dev.join("ca.pem"),
            cert: dev.join("alice.pem"),
            key: dev.join("alice.key"),
            peer_ca: None,
        },
        (None, None, None) => {
            return Err(Failure::usage(format!(
                "no TLS material: pass --cacert, --cert and --key (or INTERLOCK_CACERT, INTERLOCK_CERT, \
                 INTERLOCK_KEY), run where `interlockd dev` wrote {}, or --tls off for a plaintext cluster",
                dev.display()
            )))
        }
        _ => return Err(Failure::usage("--cacert, --cert and --key go together".to_string())),
    };
    interlock_client::Tls::from_files(&files).map(Some).map_err(|e| Failure::usage(format!("TLS: {e}")))
}

fn endpoints(cli: &Cli) -> Result<Vec<String>, Failure> {
    if !cli.endpoints.is_empty() {
        return Ok(cli.endpoints.clone());
    }
    let file = dev_dir().join("endpoints");
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
        Err(_) => Err(Failure {
            code: 2,
            message: format!(
                "no endpoints: pass --endpoints HOST:PORT,... or set INTERLOCK_ENDPOINTS \
                 (or run `interlockd dev` here, which writes {})",
                file.display()
            ),
        }),
    }
}

/// Asks for confirmation on a terminal; without one, requires --yes.
fn confirm(cli: &Cli, what: &str) -> Result<(), Failure> {
    confirm_dangerous(cli.yes, what)
}

/// Asks for confirmation on a terminal; without one, `yes` must be given.
pub(crate) fn confirm_dangerous(yes: bool, what: &str) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure {
            code: 2,
            message: format!("{what}: refusing without a terminal; pass --yes to confirm"),
        });
    }
    eprint!("{what}. Type 'yes' to continue: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("reading the confirmation")?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(Failure { code: 1, message: "not confirmed; nothing changed".to_string() })
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut options = ClientOptions { retry_budget: cli.timeout, ..ClientOptions::default() };
    if matches!(cli.command, Cmd::Switchover(_) | Cmd::Failover(_)) {
        // These wait on the server for the new primary's acknowledgement.
        options.request_timeout = options.request_timeout.max(crate::failover::LONGEST_WAIT + cli.timeout);
    }
    options.tls = tls(&cli)?;
    let client = Client::with_options(endpoints(&cli)?, options)?;
    let out = Printer::new(cli.output);
    match &cli.command {
        Cmd::Cluster(ClusterCmd::Status) => print_status(&out, &client.cluster_status().await?),
        Cmd::Cluster(ClusterCmd::Members) => print_members(&out, &client.cluster_status().await?.members),
        Cmd::Cluster(ClusterCmd::Add { id, addr, region, learner }) => {
            let reply = client.add_member(*id, addr, region, *learner).await?;
            output::print_membership(&out, &reply)
        }
        Cmd::Cluster(ClusterCmd::Remove { id }) => {
            let status: ClusterStatus = client.cluster_status().await?;
            if !status.members.iter().any(|m| m.id == *id) {
                return Err(ClientError::NotFound(format!("node {id} is not a member")).into());
            }
            confirm(&cli, &format!("Remove node {id} from the cluster ({} members now)", status.members.len()))?;
            let reply = client.remove_member(*id).await?;
            output::print_membership(&out, &reply)
        }
        Cmd::Kv(KvCmd::Put { key, value }) => {
            let revision = client.put(key, value.clone().into_bytes()).await?;
            out.record(&serde_json::json!({"key": key, "revision": revision}), || format!("OK (revision {revision})"))
        }
        Cmd::Kv(KvCmd::Get { key, serializable }) => match client.get(key, !serializable).await? {
            Some(v) => {
                let text = String::from_utf8_lossy(&v.value).to_string();
                out.record(&serde_json::json!({"key": key, "value": text, "mod_revision": v.mod_revision}), || {
                    text.clone()
                })
            }
            None => Err(ClientError::NotFound(format!("key {key:?}")).into()),
        },
        Cmd::Kv(KvCmd::Del { key }) => {
            let revision = client.delete(key).await?;
            out.record(&serde_json::json!({"key": key, "revision": revision}), || format!("OK (revision {revision})"))
        }
        Cmd::Apply(args) => coordinator::apply(&client, &out, args).await,
        Cmd::Get(args) => coordinator::get(&client, &out, args).await,
        Cmd::Lease(cmd) => coordinator::lease(&client, &out, cmd).await,
        Cmd::Events(args) => coordinator::events(&client, &out, args).await,
        Cmd::Switchover(args) => failover::switchover(&client, &out, args).await,
        Cmd::Failover(args) => failover::failover(&client, &out, args, cli.yes).await,
        Cmd::Maintenance(cmd) => failover::maintenance(&client, &out, cmd).await,
        Cmd::Region(cmd) => failover::region(&client, &out, cmd).await,
        Cmd::Routing(cmd) => routing::routing(&client, &out, cmd).await,
        Cmd::Drain(args) => routing::drain(&client, &out, args, false).await,
        Cmd::Undrain(args) => routing::drain(&client, &out, args, true).await,
        Cmd::Approve { id } => security::approve(&client, &out, *id).await,
        Cmd::Audit(cmd) => security::audit(&client, &out, cmd).await,
        Cmd::Runbook(cmd) => runbooks::runbook(&client, &out, cmd, cli.yes).await,
        Cmd::Kv(KvCmd::List { prefix, limit }) => {
            let kvs = client.range(prefix, true, *limit).await?;
            output::print_kvs(&out, &kvs)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("interlockctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("interlockctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
