//! `interlockd`: the Interlock coordinator node.

use clap::{Parser, Subcommand};
use interlock_server::node::config::RunArgs;
use interlock_server::node::dev::{DevArgs, DEV_PARENT_ENV};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Interlock's coordinator node: a Raft member that holds the fleet's
/// topology, leases and routing, and serves the gRPC API and admin HTTP.
#[derive(Parser)]
#[command(name = "interlockd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node.
    ///
    /// Every setting is a key of the TOML file given with --config, a flag,
    /// and an INTERLOCK_* environment variable (flags win over env, env over
    /// the file). Example file:
    ///
    ///   id = 1
    ///   region = "eu-west"
    ///   grpc_listen = "10.0.1.5:7001"
    ///   admin_listen = "10.0.1.5:7101"
    ///   data_dir = "/var/lib/interlock"
    ///   timing = "wan"
    ///   initial_peers = ["1@eu-west=10.0.1.5:7001", "2@us-east=10.1.1.5:7001", "3@ap-south=10.2.1.5:7001"]
    ///
    /// The first start with initial_peers bootstraps the cluster; later starts
    /// never re-initialise. SIGTERM or Ctrl-C shuts down cleanly.
    #[command(verbatim_doc_comment)]
    Run(Box<RunArgs>),
    /// Start a local 3-node, 3-region cluster on loopback, one process per node.
    ///
    /// Writes the node configs, data and logs under --data-dir, and the gRPC
    /// endpoints (comma separated) to DIR/endpoints. Ctrl-C stops every node.
    Dev(DevArgs),
    /// Run the reference region controller (demo database) for one region.
    ///
    /// It registers its region's declared replicas, heartbeats the leader with
    /// positions and witness reports, promotes and demotes them as the
    /// coordinator assigns (holding the shard's primary lease while it acts),
    /// and acknowledges. See docs/operations.md.
    Agent(interlock_agent::AgentArgs),
}

fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves when the process should stop: SIGTERM, Ctrl-C, or (for a node
/// started by `interlockd dev`) when its parent went away.
async fn shutdown_signal() {
    let parent: Option<u32> = std::env::var(DEV_PARENT_ENV).ok().and_then(|p| p.parse().ok());
    let parent_gone = async move {
        let Some(parent) = parent else { return std::future::pending::<()>().await };
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::os::unix::process::parent_id() != parent {
                tracing::warn!("the dev parent process {parent} is gone");
                return;
            }
        }
    };
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
        _ = parent_gone => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("interlockd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Run(args) => {
            let config = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("interlockd: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log);
            match runtime.block_on(interlock_server::node::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("interlockd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Agent(args) => {
            let config = match interlock_agent::AgentConfig::load(&args.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("interlockd agent: {e:#}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()));
            let run = async {
                tokio::select! {
                    r = interlock_agent::run(config) => r,
                    _ = shutdown_signal() => Ok(()),
                }
            };
            match runtime.block_on(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("interlockd agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Dev(args) => match runtime.block_on(interlock_server::node::dev::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("interlockd dev: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
