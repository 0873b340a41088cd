//! Node assembly: binds the listeners, opens the data directory, starts Raft,
//! bootstraps the cluster once, serves gRPC and admin HTTP, and shuts down
//! cleanly.
//!
//! Order matters for "bad input changes nothing": everything that can be
//! refused (config, ports, data directory, identity) is checked before the
//! first byte is written.

use crate::admin;
use crate::admin_api::AdminService;
use crate::channels::{tcp_channel_maker, Channels};
use crate::cluster::ClusterService;
use crate::config::{format_peers, NodeConfig, Timing};
use crate::controller::ControllerService;
use crate::ctx::{Clock, NodeCtx, SystemClock};
use crate::failover::{run_failover_loop, Liveness};
use crate::kv::KvService;
use crate::leases::{run_expiry_loop, KeepaliveBatcher, LeaseMutations, LeaseTable};
use crate::metrics::Metrics;
use crate::network::{Network, RaftRpcServer};
use crate::proposer::WriteBatcher;
use interlock_core::{codec, NodeId, NodeInfo};
use interlock_store::{Raft, SledLogStore, SnapshotVault, StateMachineStore, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::SnapshotPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
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
}

/// Who this data directory belongs to, written once on the first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    pub node_id: NodeId,
    /// The initial peer list this node was first started with (empty for a
    /// node that joined an existing cluster).
    pub initial_peers: BTreeMap<NodeId, NodeInfo>,
}

/// How often gRPC health is re-evaluated.
pub const HEALTH_TICK: Duration = Duration::from_millis(250);

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

/// Creates the data directory if needed and proves it is writable.
fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let err = |reason: String| StartError::DataDir { path: dir.display().to_string(), reason };
    if dir.exists() && !dir.is_dir() {
        return Err(err("exists and is not a directory".to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(|e| err(format!("not writable: {e}")))?;
    std::fs::remove_file(&probe).map_err(|e| err(format!("not writable: {e}")))?;
    Ok(())
}

/// File in the data directory that records whose it is.
pub const IDENTITY_FILE: &str = "identity";

fn read_identity(config: &NodeConfig) -> Result<Option<StoredIdentity>, StartError> {
    let path = config.data_dir.join(IDENTITY_FILE);
    let err = |reason: String| StartError::DataDir { path: path.display().to_string(), reason };
    match std::fs::read(&path) {
        Ok(bytes) => codec::decode(&bytes).map(Some).map_err(|e| err(format!("unreadable identity record: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_identity(config: &NodeConfig, identity: &StoredIdentity) -> Result<(), StartError> {
    let err = |reason: String| StartError::DataDir { path: config.data_dir.display().to_string(), reason };
    let bytes = codec::encode(identity).map_err(err)?;
    let tmp = config.data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, config.data_dir.join(IDENTITY_FILE))?;
        std::fs::File::open(&config.data_dir)?.sync_all()
    };
    write().map_err(|e| err(format!("writing the identity record: {e}")))
}

/// Checks the data directory's identity record against the config, before
/// anything in the directory is opened for writing. `Ok(true)` on first start.
fn check_identity(config: &NodeConfig) -> Result<bool, StartError> {
    let Some(stored) = read_identity(config)? else { return Ok(true) };
    if stored.node_id != config.id {
        return Err(StartError::Identity {
            field: "id",
            reason: format!(
                "is {}, but data_dir {} belongs to node {}",
                config.id,
                config.data_dir.display(),
                stored.node_id
            ),
        });
    }
    if !config.initial_peers.is_empty() && config.initial_peers != stored.initial_peers {
        return Err(StartError::Identity {
            field: "initial_peers",
            reason: format!(
                "[{}] disagrees with the membership this data directory was bootstrapped with: [{}]. \
                 initial_peers is only read on the first start; restore the original list, leave it empty, \
                 or change membership with `interlockctl cluster add/remove`",
                format_peers(&config.initial_peers).join(","),
                format_peers(&stored.initial_peers).join(",")
            ),
        });
    }
    Ok(false)
}

/// Checks that the membership on disk lists this node where the config says it is.
fn check_stored_address(raft: &Raft, config: &NodeConfig) -> Result<(), StartError> {
    let metrics = raft.metrics().borrow().clone();
    match metrics.membership_config.membership().get_node(&config.id) {
        Some(stored) if stored.grpc_addr != config.grpc_advertise => Err(StartError::Identity {
            field: "grpc_advertise",
            reason: format!(
                "is {}, but the stored membership lists node {} at {}; other members would not find it. \
                 Use the old address, or remove and re-add the node",
                config.grpc_advertise, config.id, stored.grpc_addr
            ),
        }),
        _ => Ok(()),
    }
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
}

/// A started node: Raft and the leader's background loops are running;
/// [`Node::grpc_router`] gives the services to serve on any listener.
pub struct Node {
    pub raft: Raft,
    pub ctx: Arc<NodeCtx>,
    lease_table: Arc<LeaseTable>,
    batcher: KeepaliveBatcher,
    liveness: Arc<Liveness>,
    routing_acks: Arc<crate::routing::RoutingAcks>,
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
        });
        tokio::spawn(mirror_raft_metrics(raft.clone(), parts.metrics));
        let lease_table = Arc::new(LeaseTable::default());
        tokio::spawn(run_expiry_loop(ctx.clone(), lease_table.clone(), parts.mutations));
        let batcher = KeepaliveBatcher::start(ctx.clone(), lease_table.clone(), parts.mutations);
        let liveness = Arc::new(Liveness::default());
        tokio::spawn(run_failover_loop(ctx.clone(), liveness.clone()));
        Ok(Node { raft, ctx, lease_table, batcher, liveness, routing_acks: Arc::default(), mutations: parts.mutations })
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

    /// Every gRPC service of the node: Raft, the public API, health, reflection.
    pub fn grpc_router(&self) -> Result<tonic::transport::server::Router, StartError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tokio::spawn(report_health(self.raft.clone(), health_reporter, self.ctx.leader_wait));
        // Reflection in both versions: grpcurl speaks v1, while grpcio-reflection
        // and many other tools still speak only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(interlock_proto::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 =
            reflection().build_v1().map_err(|e| StartError::Raft(format!("reflection v1: {e}")))?;
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
            .add_service(RaftRpcServer { raft: self.raft.clone() }.into_service())
            .add_service(KvService { ctx: ctx.clone() }.into_service())
            .add_service(ClusterService { ctx: ctx.clone() }.into_service())
            .add_service(controller.into_service())
            .add_service(admin.into_service())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha))
    }
}

/// Runs a production node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
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
        channels: Channels::new(tcp_channel_maker()),
        clock: Arc::new(SystemClock::new()),
        metrics,
        mutations: LeaseMutations::default(),
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
    // Nagle's algorithm would hold small Raft replies back for tens of ms.
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc = node.grpc_router()?.serve_with_incoming_shutdown(incoming, stopped());
    let admin = axum::serve(admin_listener, admin::router(node.ctx.clone())).with_graceful_shutdown(stopped());
    let grpc_task = tokio::spawn(grpc);
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

/// gRPC health: SERVING while this node knows a working leader — a leader
/// that is itself, it must have heard from a quorum within `quorum_window`
/// (openraft 0.9 keeps an isolated leader in office, so "leader known" alone
/// would keep a cut-off leader SERVING). NOT_SERVING otherwise.
async fn report_health(raft: Raft, reporter: tonic_health::server::HealthReporter, quorum_window: Duration) {
    let mut serving = None;
    let mut tick = tokio::time::interval(HEALTH_TICK);
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        let leading = m.state == openraft::ServerState::Leader;
        let quorum_fresh = m.millis_since_quorum_ack.is_some_and(|ms| ms <= quorum_window.as_millis() as u64);
        let healthy = m.current_leader.is_some() && (!leading || quorum_fresh);
        if serving != Some(healthy) {
            let status =
                if healthy { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            serving = Some(healthy);
        }
        if matches!(m.state, openraft::ServerState::Shutdown) {
            return;
        }
    }
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
