//! Node assembly: binds the listeners, opens the data directory, starts Raft,
//! bootstraps the cluster once, serves gRPC and admin HTTP, and shuts down
//! cleanly.
//!
//! Order matters for "bad input changes nothing": everything that can be
//! refused (config, ports, data directory, identity) is checked before the
//! first byte is written.

pub mod config;
pub mod dev;
pub mod dev_postgres;
mod health;
mod identity;

pub use identity::{StoredIdentity, IDENTITY_FILE};

use crate::api::admin::AdminService;
use crate::api::auth::{Auth, AuthLayer};
use crate::api::cluster::ClusterService;
use crate::api::controller::ControllerService;
use crate::api::kv::KvService;
use crate::control::backups::run_backup_loop;
use crate::control::drains::run_drain_loop;
use crate::control::failover::run_failover_loop;
use crate::control::leases::{run_expiry_loop, KeepaliveBatcher, LeaseMutations, LeaseTable};
use crate::control::liveness::Liveness;
use crate::control::routing_acks::RoutingAcks;
use crate::ctx::{Clock, NodeCtx, SystemClock};
use crate::http;
use crate::http::metrics::Metrics;
use crate::raft::channels::{tcp_channel_maker, Channels};
use crate::raft::network::{Network, RaftRpcServer};
use crate::raft::proposer::WriteBatcher;
use config::{format_peers, NodeConfig, Timing};
use identity::{check_identity, check_stored_address, prepare_data_dir, write_identity};
use interlock_core::{NodeId, NodeInfo};
use interlock_store::{Raft, SledLogStore, SnapshotVault, StateMachineStore, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::SnapshotPolicy;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Why a node could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{field} {addr}: cannot listen: {reason}")]
    Listen { field: &'static str, addr: SocketAddr, reason: String },
    #[error("data_dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("{field}: {reason}")]
    Identity { field: &'static str, reason: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// Concurrent gRPC streams one client connection may open (keepalive and
/// watch streams are long-lived; hyper's default of 200 is too few).
pub const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 4096;

/// Entries kept in the log after a snapshot, for followers that lag a little.
fn logs_to_keep(snapshot_every: u64) -> u64 {
    (snapshot_every / 2).min(1000)
}

/// The openraft configuration for a node.
pub fn raft_config(config: &NodeConfig) -> Result<openraft::Config, StartError> {
    let ms = |d: Duration| d.as_millis() as u64;
    openraft::Config {
        cluster_name: "interlock".to_string(),
        heartbeat_interval: ms(config.timing.heartbeat),
        election_timeout_min: ms(config.timing.election_min),
        election_timeout_max: ms(config.timing.election_max),
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: logs_to_keep(config.snapshot_every),
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Listen { field, addr, reason: e.to_string() })
}

/// The parts of a node that differ between production (sled, TCP, the OS
/// clock) and the simulation (memory, turmoil, skewed clocks).
pub struct Assembly<LS> {
    pub id: NodeId,
    pub raft_config: openraft::Config,
    pub timing: Timing,
    pub log_store: LS,
    pub state_machine: StateMachineStore,
    pub channels: Channels,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub mutations: LeaseMutations,
    /// Roles, approval mode and whether TLS authenticates callers.
    pub auth: Arc<Auth>,
}

/// A started node: Raft and the leader's background loops are running;
/// [`Node::grpc_router`] gives the services to serve on any listener.
pub struct Node {
    pub raft: Raft,
    pub ctx: Arc<NodeCtx>,
    lease_table: Arc<LeaseTable>,
    batcher: KeepaliveBatcher,
    liveness: Arc<Liveness>,
    routing_acks: Arc<RoutingAcks>,
    mutations: LeaseMutations,
}

impl Node {
    /// Starts Raft on the given stores and the node's background tasks.
    pub async fn start<LS: RaftLogStorage<TypeConfig>>(parts: Assembly<LS>) -> Result<Node, StartError> {
        let state = parts.state_machine.reader();
        let network = Network { id: parts.id, channels: parts.channels.clone() };
        let raft = Raft::new(parts.id, Arc::new(parts.raft_config), network, parts.log_store, parts.state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let ctx = Arc::new(NodeCtx {
            id: parts.id,
            raft: raft.clone(),
            state,
            channels: parts.channels,
            metrics: parts.metrics.clone(),
            clock: parts.clock.clone(),
            write_timeout: parts.timing.election_max * 10,
            leader_wait: parts.timing.election_max * 2,
            write_batcher: WriteBatcher::start(raft.clone(), parts.clock.clone(), parts.metrics.clone()),
            auth: parts.auth.clone(),
        });
        let _ = parts.auth.ctx.set(Arc::downgrade(&ctx));
        tokio::spawn(mirror_raft_metrics(raft.clone(), parts.metrics));
        tokio::spawn(crate::raft::prevote::run_election_driver(ctx.clone()));
        let lease_table = Arc::new(LeaseTable::default());
        tokio::spawn(run_expiry_loop(ctx.clone(), lease_table.clone(), parts.mutations));
        let batcher = KeepaliveBatcher::start(ctx.clone(), lease_table.clone(), parts.mutations);
        let liveness = Arc::new(Liveness::default());
        tokio::spawn(run_failover_loop(ctx.clone(), liveness.clone()));
        tokio::spawn(run_backup_loop(ctx.clone(), liveness.clone()));
        tokio::spawn(run_drain_loop(ctx.clone()));
        let routing_acks: Arc<crate::control::routing_acks::RoutingAcks> = Arc::default();
        let loop_ = crate::control::runbooks::run_runbook_loop(
            ctx.clone(),
            liveness.clone(),
            routing_acks.clone(),
            parts.mutations,
        );
        tokio::spawn(loop_);
        Ok(Node { raft, ctx, lease_table, batcher, liveness, routing_acks, mutations: parts.mutations })
    }

    /// Initialises the cluster with `peers` unless the stores already hold a
    /// membership (a restart never re-initialises).
    pub async fn bootstrap_once(&self, peers: &BTreeMap<NodeId, NodeInfo>) -> Result<(), StartError> {
        let initialized = self.raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized && !peers.is_empty() {
            tracing::info!(peers = ?format_peers(peers), "bootstrapping the cluster");
            if let Err(e) = self.raft.initialize(peers.clone()).await {
                // Another member may have bootstrapped and replicated to us first.
                tracing::warn!("initialize: {e}");
            }
        } else if !initialized {
            tracing::info!(
                "no initial_peers and no stored membership: waiting to be added with `interlockctl cluster add`"
            );
        }
        Ok(())
    }

    /// Every gRPC service of the node — Raft, the public API, health,
    /// reflection — behind the auth layer.
    pub fn grpc_router(&self) -> Result<GrpcRouter, StartError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tokio::spawn(health::report_health(self.raft.clone(), health_reporter, self.ctx.leader_wait));
        // Reflection in both versions: grpcurl speaks v1, while grpcio-reflection
        // and many other tools still speak only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(interlock_proto::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(|e| StartError::Raft(format!("reflection v1: {e}")))?;
        let reflection_v1alpha =
            reflection().build_v1alpha().map_err(|e| StartError::Raft(format!("reflection v1alpha: {e}")))?;
        let ctx = &self.ctx;
        let controller = ControllerService {
            routing_acks: self.routing_acks.clone(),
            ctx: ctx.clone(),
            leases: self.lease_table.clone(),
            mutations: self.mutations,
            batcher: self.batcher.clone(),
            liveness: self.liveness.clone(),
        };
        let admin = AdminService {
            ctx: ctx.clone(),
            leases: self.lease_table.clone(),
            liveness: self.liveness.clone(),
            routing_acks: self.routing_acks.clone(),
        };
        Ok(tonic::transport::Server::builder()
            .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION_MAX)
            .layer(AuthLayer(ctx.auth.clone()))
            .add_service(RaftRpcServer { raft: self.raft.clone(), ctx: ctx.clone() }.into_service())
            .add_service(KvService { ctx: ctx.clone() }.into_service())
            .add_service(ClusterService { ctx: ctx.clone() }.into_service())
            .add_service(controller.into_service())
            .add_service(admin.into_service())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha))
    }
}

/// The node's gRPC services with the auth layer in front.
pub type GrpcRouter =
    tonic::transport::server::Router<tower::layer::util::Stack<AuthLayer, tower::layer::util::Identity>>;

/// The node's TLS (None: off, with a warning) and its auth policy.
pub fn security(config: &config::Security) -> Result<(Option<interlock_tls::Tls>, Arc<Auth>), StartError> {
    let roles = crate::api::auth::Roles::parse(&config.roles).map_err(|e| StartError::Tls(format!("roles: {e}")))?;
    let tls = match &config.tls {
        Some(files) => {
            let tls = interlock_tls::Tls::from_files(files).map_err(|e| StartError::Tls(e.to_string()))?;
            tls.watch(files.clone(), config.tls_reload_every);
            Some(tls)
        }
        None => {
            tracing::warn!("TLS is OFF: links are plaintext, callers are not authenticated, everyone may do anything");
            None
        }
    };
    let two_person = config.approvals == config::ApprovalMode::TwoPerson;
    Ok((tls.clone(), Auth::new(roles, tls.is_some(), two_person)))
}

/// Runs a production node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let (tls, auth) = security(&config.security)?;
    let grpc_listener = bind("grpc_listen", config.grpc_listen).await?;
    let admin_listener = bind("admin_listen", config.admin_listen).await?;
    prepare_data_dir(&config.data_dir)?;
    let first_start = check_identity(&config)?;

    let data_err = |e: String| StartError::DataDir { path: config.data_dir.display().to_string(), reason: e };
    let metrics = Arc::new(Metrics::new());
    let log_store =
        SledLogStore::open(&config.data_dir.join("raft"), metrics.clone()).map_err(|e| data_err(e.to_string()))?;
    let state_machine = StateMachineStore::open(SnapshotVault::Dir(config.data_dir.clone()), metrics.clone())
        .map_err(|e| data_err(e.to_string()))?;
    let node = Node::start(Assembly {
        id: config.id,
        raft_config: raft_config(&config)?,
        timing: config.timing,
        log_store: log_store.clone(),
        state_machine,
        channels: Channels::new(tcp_channel_maker(tls.clone())),
        clock: Arc::new(SystemClock::new()),
        metrics,
        mutations: LeaseMutations::default(),
        auth,
    })
    .await?;
    if let Err(e) = check_stored_address(&node.raft, &config) {
        let _ = node.raft.shutdown().await;
        return Err(e);
    }
    if first_start {
        let identity = StoredIdentity { node_id: config.id, initial_peers: config.initial_peers.clone() };
        write_identity(&config, &identity)?;
    }
    node.bootstrap_once(&config.initial_peers).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let router = node.grpc_router()?;
    let grpc_task = match tls {
        Some(tls) => {
            let incoming = interlock_tls::stream::incoming(tls, interlock_tls::stream::tcp_accepted(grpc_listener));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped()))
        }
        None => {
            // Nagle's algorithm would hold small Raft replies back for tens of ms.
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped()))
        }
    };
    let admin = axum::serve(admin_listener, http::router(node.ctx.clone())).with_graceful_shutdown(stopped());
    let admin_task = tokio::spawn(async move { admin.await });
    tracing::info!("{config}: serving");

    shutdown.await;
    tracing::info!("shutting down");
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
    drop(log_store);
    tracing::info!("stopped");
    Ok(())
}

async fn mirror_raft_metrics(raft: Raft, metrics: Arc<Metrics>) {
    let mut rx = raft.metrics();
    loop {
        metrics.observe_raft(&rx.borrow_and_update().clone());
        if rx.changed().await.is_err() {
            return;
        }
    }
}
