//! The `interlock.v1.Controller` service: registration, heartbeats, leases
//! and watches — the contract region controllers live by.

use crate::ctx::{forwarded, NodeCtx, ProposeError};
use crate::kv::invalid;
use crate::leases::{KeepaliveBatcher, KeepaliveItem, LeaseMutations, LeaseTable};
use crate::watch::{parse_topic, run_watch, WATCH_BUFFER};
use interlock_core::lease::{validate_grant, validate_lease_key};
use interlock_core::topology::validate_id;
use interlock_core::{Command, Response as CoreResponse, RevokeReason};
use interlock_proto::convert::lease_info;
use interlock_proto::v1::cluster_client::ClusterClient;
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::controller_server::{Controller, ControllerServer};
use interlock_proto::v1::{
    HeartbeatRequest, HeartbeatResponse, LeaseGetRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseInfo,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse, ReadIndexRequest,
    RegisterRequest, RegisterResponse, ReplicaStatus, WatchRequest, WatchResponse,
};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// How often controllers are asked to heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// Answers buffered per keepalive stream.
pub const KEEPALIVE_STREAM_BUFFER: usize = 1024;
/// How long a watch may wait for this node to catch up to the read index.
pub const WATCH_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the leader last heard from one controller (soft state, never in Raft).
#[derive(Debug, Clone, Default)]
pub struct ControllerLiveness {
    /// On this node's monotonic clock.
    pub last_seen_ms: u64,
    pub replicas: Vec<ReplicaStatus>,
    pub reachable_regions: Vec<String>,
}

/// Heartbeat records by controller id.
#[derive(Default)]
pub struct Liveness {
    pub by_controller: Mutex<BTreeMap<String, ControllerLiveness>>,
}

impl Liveness {
    pub fn last_seen_ms(&self, controller: &str) -> Option<u64> {
        self.by_controller.lock().unwrap_or_else(|p| p.into_inner()).get(controller).map(|l| l.last_seen_ms)
    }
}

pub struct ControllerService {
    pub ctx: Arc<NodeCtx>,
    pub leases: Arc<LeaseTable>,
    pub mutations: LeaseMutations,
    pub batcher: KeepaliveBatcher,
    pub liveness: Arc<Liveness>,
}

impl ControllerService {
    pub fn into_service(self) -> ControllerServer<Self> {
        ControllerServer::new(self)
    }

    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.is_leader() {
            Ok(())
        } else {
            Err(self.ctx.no_leader_status(&self.ctx.leader_hint()))
        }
    }

    /// An index that this node must apply before serving a linearizable view.
    async fn read_index(&self, metadata: &tonic::metadata::MetadataMap) -> Result<u64, Status> {
        match self.ctx.read_barrier(metadata).await? {
            None => Ok(self.ctx.state.read().state.revision),
            Some(leader) => {
                Ok(ClusterClient::new(leader).read_index(forwarded(ReadIndexRequest {})).await?.into_inner().index)
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        validate_id(&message.controller_id, "controller_id").map_err(invalid)?;
        validate_id(&message.region, "region").map_err(invalid)?;
        let command = Command::RegisterController {
            id: message.controller_id.clone(),
            region: message.region.clone(),
            identity: message.identity.clone(),
            replicas: message.replicas.clone(),
        };
        match self.ctx.propose(command).await {
            Ok(r) => Ok(Response::new(RegisterResponse { revision: crate::ctx::revision_of(&r) })),
            Err(ProposeError::NotLeader(f)) => {
                ControllerClient::new(self.ctx.forward_target(&metadata, &f)?).register(forwarded(message)).await
            }
            Err(ProposeError::Status(s)) => Err(s),
        }
    }

    type HeartbeatStream = BoxStream<HeartbeatResponse>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        self.require_leader()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (ctx, liveness) = (self.ctx.clone(), self.liveness.clone());
        tokio::spawn(async move {
            while let Ok(Some(beat)) = inbound.message().await {
                let known = ctx.state.read().state.controllers.contains_key(&beat.controller_id);
                if !known {
                    let status = Status::failed_precondition(format!(
                        "controller_id: {:?} is not registered; call Register first",
                        beat.controller_id
                    ));
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let record = ControllerLiveness {
                    last_seen_ms: ctx.clock.monotonic_ms(),
                    replicas: beat.replicas,
                    reachable_regions: beat.reachable_regions,
                };
                liveness.by_controller.lock().unwrap_or_else(|p| p.into_inner()).insert(beat.controller_id, record);
                let reply = HeartbeatResponse { leader_id: ctx.id, interval_ms: HEARTBEAT_INTERVAL.as_millis() as u32 };
                if tx.send(Ok(reply)).await.is_err() || !ctx.is_leader() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let received_ms = self.ctx.clock.monotonic_ms();
        let (metadata, _, message) = request.into_parts();
        validate_grant(&message.key, &message.holder, message.ttl_ms).map_err(invalid)?;
        let command =
            Command::LeaseGrant { key: message.key.clone(), holder: message.holder.clone(), ttl_ms: message.ttl_ms };
        match self.ctx.propose(command).await {
            Ok(CoreResponse::Lease { token, ttl_ms }) => {
                if !self.leases.note_grant(&self.ctx, &message.key, token, received_ms, self.mutations) {
                    // The holder asked again for a lease it held, just as the
                    // leader expired it (found by the simulation, seed 278).
                    return Err(Status::unavailable(format!(
                        "lease {} (token {token}) is being expired or leadership moved; retry the grant",
                        message.key
                    )));
                }
                Ok(Response::new(LeaseGrantResponse { token, ttl_ms }))
            }
            Ok(other) => Err(Status::internal(format!("unexpected answer to a grant: {other:?}"))),
            Err(ProposeError::NotLeader(f)) => {
                ControllerClient::new(self.ctx.forward_target(&metadata, &f)?).lease_grant(forwarded(message)).await
            }
            Err(ProposeError::Status(s)) => Err(s),
        }
    }

    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.require_leader()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_STREAM_BUFFER);
        let (ctx, batcher) = (self.ctx.clone(), self.batcher.clone());
        tokio::spawn(async move {
            while let Ok(Some(keepalive)) = inbound.message().await {
                let received_ms = ctx.clock.monotonic_ms();
                if let Err(e) = validate_lease_key(&keepalive.key) {
                    let _ = tx.send(Err(invalid(e))).await;
                    return;
                }
                let item = KeepaliveItem {
                    key: keepalive.key,
                    token: keepalive.token,
                    seq: keepalive.seq,
                    received_ms,
                    reply: tx.clone(),
                };
                if !batcher.submit(item) {
                    tracing::warn!("keepalive queue full; dropping one (the holder retries)");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        validate_lease_key(&message.key).map_err(invalid)?;
        let token = (message.token != 0).then_some(message.token);
        let command = Command::LeaseRevoke { key: message.key.clone(), token, reason: RevokeReason::Requested };
        match self.ctx.propose(command).await {
            Ok(r) => Ok(Response::new(LeaseRevokeResponse { revision: crate::ctx::revision_of(&r) })),
            Err(ProposeError::NotLeader(f)) => {
                ControllerClient::new(self.ctx.forward_target(&metadata, &f)?).lease_revoke(forwarded(message)).await
            }
            Err(ProposeError::Status(s)) => Err(s),
        }
    }

    async fn lease_get(&self, request: Request<LeaseGetRequest>) -> Result<Response<LeaseInfo>, Status> {
        let (metadata, _, message) = request.into_parts();
        validate_lease_key(&message.key).map_err(invalid)?;
        if let Some(leader) = self.ctx.read_barrier(&metadata).await? {
            return ControllerClient::new(leader).lease_get(forwarded(message)).await;
        }
        let now = self.ctx.clock.monotonic_ms();
        let applied = self.ctx.state.read();
        let lease = applied
            .state
            .leases
            .get(&message.key)
            .ok_or_else(|| Status::not_found(format!("lease {} is not held", message.key)))?;
        let remaining = self.leases.remaining_ms(&lease.key, now).unwrap_or(lease.ttl_ms);
        Ok(Response::new(lease_info(lease, remaining)))
    }

    type WatchStream = BoxStream<WatchResponse>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (metadata, _, message) = request.into_parts();
        let topic = parse_topic(&message.topic).map_err(invalid)?;
        let index = self.read_index(&metadata).await?;
        let caught_up = tokio::time::timeout(WATCH_CATCH_UP_TIMEOUT, self.ctx.state.wait_applied(index)).await;
        if !matches!(caught_up, Ok(true)) {
            return Err(Status::unavailable(format!(
                "node {} did not catch up to the read index {index} within {WATCH_CATCH_UP_TIMEOUT:?}",
                self.ctx.id
            )));
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let leases = self.leases.clone();
        let clock = self.ctx.clock.clone();
        tokio::spawn(run_watch(self.ctx.state.clone(), topic, message.after_version, tx, move |key, ttl| {
            leases.remaining_ms(key, clock.monotonic_ms()).unwrap_or(ttl)
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
