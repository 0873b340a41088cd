//! The Interlock client SDK.
//!
//! Map of the crate:
//! - this file: [`Client`], the endpoint list, leader following and retries;
//!   `api`: the coordinator calls on it (topology, leases, operator actions);
//! - `lease_keeper`: [`LeaseKeeper`], holding a lease and knowing the instant
//!   to stop acting;
//! - `watch`: [`Watcher`], a watch that resumes after the last version it
//!   delivered;
//! - `controller`: [`RegionController`], the controller side of failover,
//!   over a [`ReplicaDriver`] you write for your database (the reference
//!   agent's drivers are in `interlock-agent`);
//! - `error`: [`ClientError`], one variant per class of gRPC status.
//!
//! A [`Client`] holds an endpoint list and follows the leader: any node
//! accepts any call (followers forward writes to the leader), and the client
//! moves on to the next endpoint when one cannot be reached.
//!
//! Retries: a call that is safe to repeat (reads, status) is retried with
//! backoff on any UNAVAILABLE until [`ClientOptions::retry_budget`] is spent.
//! A write is retried only when the request certainly did not reach a node
//! (the connection could not be made) or a node refused it before proposing
//! it (marked `x-interlock-not-proposed`); anything else is returned, because repeating it
//! could apply it twice.
//!
//! ```no_run
//! # async fn example() -> Result<(), interlock_client::ClientError> {
//! let client = interlock_client::Client::new(["127.0.0.1:7001", "127.0.0.1:7002"])?;
//! let revision = client.put("greeting", b"hello".to_vec()).await?;
//! let value = client.get("greeting", true).await?;
//! assert_eq!(value.map(|v| v.value), Some(b"hello".to_vec()));
//! println!("written at revision {revision}");
//! # Ok(()) }
//! ```

mod api;
mod controller;
mod error;
mod lease_keeper;
mod watch;

pub use controller::{
    BackupTaken, ControllerConfig, ControllerMutations, RegionController, ReplicaDriver, RestoreProof,
};
pub use error::ClientError;
pub use interlock_tls::{Pem, Tls, TlsFiles};
pub use lease_keeper::{LeaseKeeper, LeaseOptions, LeaseState};
pub use watch::{WatchFilter, Watcher};

use interlock_proto::v1::cluster_client::ClusterClient;
use interlock_proto::v1::kv_client::KvClient;
use interlock_proto::v1::{
    AddMemberRequest, DeleteRequest, GetRequest, NodeStatusRequest, PutRequest, RangeRequest, RemoveMemberRequest,
    StatusRequest,
};
use interlock_proto::{LEADER_ADDR_METADATA, NOT_PROPOSED_METADATA};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub use interlock_core::Topology;
pub use interlock_proto::v1::{
    AcknowledgeRequest, ApplyTopologyResponse, Approval, Assignment, AuditEntry, AuditList, ClusterStatus,
    ControllerInfo, Event, KeyValue, LeaseInfo, LeaseRevokeResponse, Member, MembershipResponse, NodeStatusResponse,
    OperationResponse, ReadinessReport, Region, Replica, ReplicaAssignment, ReplicaStatus, ReportBackupRequest,
    RestoreJob, RestoreResultRequest, RoutingAck, RoutingStatus, RoutingTable, Shard, ShardBackups, WatchResponse,
};
pub use interlock_proto::v1::{
    ControlExecutionRequest, ExecutionInfo, ExecutionOp, HookJob, HookResultRequest, RunMode, RunRunbookRequest,
    RunRunbookResponse, RunbookInfo, StepStatus,
};

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one RPC attempt.
    pub request_timeout: Duration,
    /// Total time a call may spend retrying.
    pub retry_budget: Duration,
    /// First backoff between retries; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// mTLS to the nodes (None: plaintext, for a cluster run with `tls = "off"`).
    pub tls: Option<interlock_tls::Tls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// A value read from the key-value space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: Vec<u8>,
    /// Revision (log index) of the write that set it.
    pub mod_revision: u64,
}

/// Whether a call may be sent again after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotence {
    Idempotent,
    NotIdempotent,
}

/// A connection to an Interlock cluster. Cheap to clone: clones share the
/// channels and the leader hint.
#[derive(Clone)]
pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// Index of the endpoint that answered last; tried first.
    preferred: Arc<AtomicUsize>,
    options: ClientOptions,
    /// The queue of the one keepalive stream all lease keepers of this
    /// client (and its clones) share; started by the first keeper.
    keepalives: Arc<OnceLock<mpsc::Sender<lease_keeper::MuxRequest>>>,
    /// Bounds the calls in flight (see [`CALLS_IN_FLIGHT_MAX`]).
    calls: Arc<Semaphore>,
}

/// Unary calls one client (with its clones) has in flight at once, at most;
/// more wait for a turn. A controller of 10 000 replicas acknowledges them
/// all at once when it starts: past the nodes' limit of concurrent streams
/// per connection (4 096) the streams are refused, and a server that resets
/// that many streams ends the whole connection, watches and keepalives
/// included — the agent then starts over, and again (seen in
/// `interlock-bench mass-failover` at 10 000 shards).
pub const CALLS_IN_FLIGHT_MAX: usize = 1024;

impl Client {
    /// A client for `endpoints` (`host:port`, optionally with `http://`).
    pub fn new<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options<I, S>(endpoints: I, options: ClientOptions) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().trim().trim_start_matches("http://").to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::InvalidArgument("endpoints: the list is empty".to_string()));
        }
        let channels = endpoints
            .iter()
            .map(|e| {
                Endpoint::from_shared(format!("http://{e}"))
                    .map(|ep| {
                        ep.connect_timeout(options.connect_timeout)
                            .tcp_nodelay(true)
                            // Notice a half-open connection instead of hanging on it.
                            .http2_keep_alive_interval(Duration::from_secs(5))
                            .keep_alive_timeout(Duration::from_secs(3))
                            .keep_alive_while_idle(true)
                            // A frame for a stream this client gave up on (a keepalive
                            // stream it replaced, a call past its deadline) counts as a
                            // local error; after hyper's 1 024 in a connection's life it
                            // ends the connection, and every stream on it (seen at
                            // 10 000 shards). The peers are our own nodes.
                            .http2_max_local_error_reset_streams(None)
                    })
                    .map(|ep| match &options.tls {
                        Some(tls) => ep.connect_with_connector_lazy(interlock_tls::stream::tcp_connector(tls.clone())),
                        None => ep.connect_lazy(),
                    })
                    .map_err(|err| ClientError::InvalidArgument(format!("endpoints: {e:?} is not HOST:PORT: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Client::with_channels(endpoints, channels, options)
    }

    /// A client over channels made elsewhere (one per endpoint, same order),
    /// e.g. over a simulated network.
    pub fn with_channels(
        endpoints: Vec<String>,
        channels: Vec<Channel>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() || endpoints.len() != channels.len() {
            return Err(ClientError::InvalidArgument("endpoints: one channel per endpoint, at least one".to_string()));
        }
        Ok(Client {
            endpoints,
            channels,
            preferred: Arc::new(AtomicUsize::new(0)),
            options,
            keepalives: Arc::default(),
            calls: Arc::new(Semaphore::new(CALLS_IN_FLIGHT_MAX)),
        })
    }

    /// The endpoints this client dials.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The index of the endpoint to try first.
    pub(crate) fn preferred_index(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.channels.len()
    }

    pub(crate) fn set_preferred(&self, index: usize) {
        self.preferred.store(index, Ordering::Relaxed);
    }

    pub(crate) fn channel(&self, index: usize) -> Channel {
        self.channels[index % self.channels.len()].clone()
    }

    /// The queue of this client's shared keepalive stream, started on first use.
    pub(crate) fn keepalive_mux(&self) -> mpsc::Sender<lease_keeper::MuxRequest> {
        let start = || {
            let (tx, rx) = mpsc::channel(lease_keeper::MUX_QUEUE_MAX);
            // The mux's own clone shares the channels but not the queue, so
            // the mux ends once every other clone and keeper is gone.
            let own = Client { keepalives: Arc::default(), ..self.clone() };
            tokio::spawn(lease_keeper::run_keepalive_mux(own, rx));
            tx
        };
        self.keepalives.get_or_init(start).clone()
    }

    /// Runs `call` against the endpoints, following leader hints and
    /// retrying as the module documentation describes.
    pub(crate) async fn call<T, F, Fut>(&self, idempotence: Idempotence, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = self.options.backoff_initial;
        let mut index = self.preferred.load(Ordering::Relaxed) % self.channels.len();
        let mut last: Option<Status> = None;
        loop {
            let attempt = {
                // The semaphore is never closed; without a permit the call simply goes on.
                let _turn = self.calls.acquire().await.ok();
                tokio::time::timeout(self.options.request_timeout, call(self.channels[index].clone())).await
            };
            let status = match attempt {
                Ok(Ok(reply)) => {
                    // A follower that forwarded the call names the leader: go
                    // there directly next time.
                    let leader = reply
                        .metadata()
                        .get(LEADER_ADDR_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|addr| self.endpoints.iter().position(|e| e == addr));
                    self.preferred.store(leader.unwrap_or(index), Ordering::Relaxed);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded(format!(
                    "{} did not answer within {:?}",
                    self.endpoints[index], self.options.request_timeout
                )),
            };
            if !retryable(&status, idempotence) || started.elapsed() + backoff > self.options.retry_budget {
                if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown) {
                    // Start the next call elsewhere: this endpoint may be gone.
                    self.preferred.store(self.next_endpoint(index, &status), Ordering::Relaxed);
                }
                return Err(ClientError::from_status(status, last.as_ref()));
            }
            index = self.next_endpoint(index, &status);
            last = Some(status);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }

    /// The endpoint to try after `index` failed with `status`: the leader it
    /// named if we know that address, else the next one in the list.
    pub(crate) fn next_endpoint(&self, index: usize, status: &Status) -> usize {
        let hinted = status.metadata().get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok());
        hinted
            .and_then(|addr| self.endpoints.iter().position(|e| e == addr))
            .unwrap_or((index + 1) % self.channels.len())
    }

    /// Writes `key` = `value`; returns the revision it was committed at.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, ClientError> {
        let request = PutRequest { key: key.to_string(), value };
        let reply = self
            .call(Idempotence::NotIdempotent, |ch| {
                let request = request.clone();
                async move { KvClient::new(ch).put(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// Removes `key`; returns the revision of the delete.
    pub async fn delete(&self, key: &str) -> Result<u64, ClientError> {
        let request = DeleteRequest { key: key.to_string() };
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { KvClient::new(ch).delete(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// Reads `key`. `linearizable` confirms leadership with a quorum first;
    /// otherwise the answering node's applied state is used (may be stale).
    pub async fn get(&self, key: &str, linearizable: bool) -> Result<Option<Value>, ClientError> {
        let request = GetRequest { key: key.to_string(), linearizable };
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { KvClient::new(ch).get(request).await }
            })
            .await?;
        Ok(reply.found.then_some(Value { value: reply.value, mod_revision: reply.mod_revision }))
    }

    /// Keys starting with `prefix`, at most `limit` (0: all of them), read
    /// page by page.
    pub async fn range(&self, prefix: &str, linearizable: bool, limit: u32) -> Result<Vec<KeyValue>, ClientError> {
        let mut all: Vec<KeyValue> = Vec::new();
        loop {
            let request = RangeRequest {
                prefix: prefix.to_string(),
                linearizable,
                limit: if limit == 0 { 0 } else { limit - all.len() as u32 },
                start_after: all.last().map(|kv| kv.key.clone()).unwrap_or_default(),
            };
            let reply = self
                .call(Idempotence::Idempotent, |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).range(request).await }
                })
                .await?;
            all.extend(reply.kvs);
            if !reply.more || (limit != 0 && all.len() >= limit as usize) {
                return Ok(all);
            }
        }
    }

    /// The cluster as the leader sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.call(Idempotence::Idempotent, |ch| async move { ClusterClient::new(ch).status(StatusRequest {}).await })
            .await
    }

    /// What the node at endpoint `index` says about itself (no retries, no failover).
    pub async fn node_status(&self, index: usize) -> Result<NodeStatusResponse, ClientError> {
        let channel = self
            .channels
            .get(index)
            .cloned()
            .ok_or_else(|| ClientError::InvalidArgument(format!("endpoint index {index} out of range")))?;
        let mut client = ClusterClient::new(channel);
        match tokio::time::timeout(self.options.request_timeout, client.node_status(NodeStatusRequest {})).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(ClientError::from_status(status, None)),
            Err(_) => Err(ClientError::Unavailable(format!("{} did not answer", self.endpoints[index]))),
        }
    }

    /// Adds node `id` at `grpc_addr` in `region`: as a learner, then (unless
    /// `learner_only`) as a voter once it has caught up.
    pub async fn add_member(
        &self,
        id: u64,
        grpc_addr: &str,
        region: &str,
        learner_only: bool,
    ) -> Result<MembershipResponse, ClientError> {
        let request =
            AddMemberRequest { id, grpc_addr: grpc_addr.to_string(), region: region.to_string(), learner_only };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { ClusterClient::new(ch).add_member(request).await }
        })
        .await
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<MembershipResponse, ClientError> {
        self.call(Idempotence::NotIdempotent, |ch| async move {
            ClusterClient::new(ch).remove_member(RemoveMemberRequest { id }).await
        })
        .await
    }
}

/// Whether a failed attempt may be repeated (possibly on another endpoint).
fn retryable(status: &Status, idempotence: Idempotence) -> bool {
    match (status.code(), idempotence) {
        // A broken connection, a node that went away mid-call, a timeout:
        // safe to repeat only what is idempotent.
        (
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled | Code::Aborted,
            Idempotence::Idempotent,
        ) => true,
        // Refused before proposing (the node marks such answers), or never
        // sent (the connection could not be made).
        (Code::Unavailable, Idempotence::NotIdempotent) => {
            status.metadata().contains_key(NOT_PROPOSED_METADATA)
                || status.message().contains("tcp connect")
                || status.message().contains("onnection refused")
        }
        _ => false,
    }
}
