//! The `interlock.v1.Controller` service: registration, heartbeats, leases
//! and watches — the contract region controllers live by.

use super::auth::{caller, deny, Caller};
use super::watch::{parse_topic, run_watch, Filter, WATCH_BUFFER};
use super::{
    ask_approval, awaiting_approval, invalid, linearizable, on_leader, propose, propose_here, revision_of, to_leader,
    BoxStream, Proposed,
};
use crate::control::leases::{Keepalive, KeepaliveBatcher, KeepaliveItem, LeaseMutations, LeaseTable};
use crate::control::liveness::Liveness;
use crate::control::routing_acks::RoutingAcks;
use crate::ctx::NodeCtx;
use interlock_core::command::Action;
use interlock_core::failover::detector::DetectorParams;
use interlock_core::lease::{validate_grant, validate_lease_key};
use interlock_core::vocab::{shard_key, validate_id, ReplicaRole};
use interlock_core::{Command, Response as CoreResponse, RevokeReason};
use interlock_proto::convert::lease_info;
use interlock_proto::convert::parse_role;
use interlock_proto::v1::cluster_client::ClusterClient;
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::controller_server::{Controller, ControllerServer};
use interlock_proto::v1::{AckRoutingRequest, AckRoutingResponse, AcknowledgeRequest, AcknowledgeResponse};
use interlock_proto::v1::{
    HeartbeatRequest, HeartbeatResponse, LeaseGetRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseInfo,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse, ReadIndexRequest,
    RegisterRequest, RegisterResponse, WatchRequest, WatchResponse,
};
use interlock_proto::v1::{
    HookResultRequest, HookResultResponse, ReportBackupRequest, ReportBackupResponse, RestoreResultRequest,
    RestoreResultResponse,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How long an acknowledgement waits for the leader to apply its version.
pub const ACK_APPLY_WAIT: Duration = Duration::from_secs(1);
/// Answers buffered per keepalive stream.
pub const KEEPALIVE_STREAM_BUFFER: usize = 1024;
/// How long a watch may wait for this node to catch up to the read index.
pub const WATCH_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ControllerService {
    pub routing_acks: Arc<RoutingAcks>,
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
        let send = to_leader!(ClusterClient, read_index, ReadIndexRequest {});
        match linearizable(&self.ctx, metadata, send).await? {
            None => Ok(self.ctx.state.read().state.revision),
            Some(reply) => Ok(reply.into_inner().index),
        }
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_id(&message.controller_id, "controller_id").map_err(invalid)?;
        validate_id(&message.region, "region").map_err(invalid)?;
        if !caller.controls(&message.region) {
            let reason = format!("region: {} is not a controller of {}", caller.identity, message.region);
            return Err(deny(&self.ctx.auth, &caller, &format!("register {}", message.controller_id), reason));
        }
        // The controller is bound to the caller's identity, not to the
        // request's `identity` field.
        let command = Command::RegisterController {
            id: message.controller_id.clone(),
            region: message.region.clone(),
            replicas: message.replicas.clone(),
        };
        match propose(&self.ctx, &caller, &metadata, command, to_leader!(ControllerClient, register, message)).await? {
            Proposed::Here(r) => Ok(Response::new(RegisterResponse { revision: revision_of(&r) })),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    type HeartbeatStream = BoxStream<HeartbeatResponse>;

    async fn heartbeat(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        self.require_leader()?;
        let caller = caller(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (ctx, liveness) = (self.ctx.clone(), self.liveness.clone());
        tokio::spawn(async move {
            while let Ok(Some(beat)) = inbound.message().await {
                let (identity, policy) = {
                    let applied = ctx.state.read();
                    let s = &applied.state;
                    (s.controllers.get(&beat.controller_id).map(|c| c.identity.clone()), s.topology.failover.clone())
                };
                let refusal = match identity {
                    None => Some(Status::failed_precondition(format!(
                        "controller_id: {:?} is not registered; call Register first",
                        beat.controller_id
                    ))),
                    Some(identity) if caller.authenticated && identity != caller.identity => {
                        let reason = format!(
                            "controller_id: {} is registered as {identity}; {} may not heartbeat for it",
                            beat.controller_id, caller.identity
                        );
                        Some(deny(&ctx.auth, &caller, &format!("heartbeat for {}", beat.controller_id), reason))
                    }
                    Some(_) => None,
                };
                if let Some(status) = refusal {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                liveness.record(beat, ctx.clock.monotonic_ms(), &DetectorParams::from_policy(&policy));
                let reply = HeartbeatResponse { leader_id: ctx.id, interval_ms: policy.heartbeat_interval_ms as u32 };
                if tx.send(Ok(reply)).await.is_err() || !ctx.is_leader() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let received_ms = self.ctx.clock.monotonic_ms();
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_grant(&message.key, &message.holder, message.ttl_ms).map_err(invalid)?;
        let command =
            Command::LeaseGrant { key: message.key.clone(), holder: message.holder.clone(), ttl_ms: message.ttl_ms };
        let send = to_leader!(ControllerClient, lease_grant, message.clone());
        match propose(&self.ctx, &caller, &metadata, command, send).await? {
            Proposed::Here(CoreResponse::Lease { token, ttl_ms }) => {
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
            Proposed::Here(other) => Err(Status::internal(format!("unexpected answer to a grant: {other:?}"))),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.require_leader()?;
        let by = caller(&request).identity;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_STREAM_BUFFER);
        let (ctx, batcher) = (self.ctx.clone(), self.batcher.clone());
        tokio::spawn(async move {
            while let Ok(Some(keepalive)) = inbound.message().await {
                let received_ms = ctx.clock.monotonic_ms();
                // One message may carry the keepalives of many leases: a bad
                // one is refused on its own, and the stream goes on.
                let one = |k: LeaseKeepAliveRequest| Keepalive {
                    invalid: validate_lease_key(&k.key).err().map(|e| e.to_string()),
                    key: k.key,
                    token: k.token,
                    seq: k.seq,
                };
                let batched = !keepalive.batch.is_empty();
                let keepalives = if batched {
                    keepalive.batch.into_iter().map(one).collect()
                } else {
                    vec![one(LeaseKeepAliveRequest { batch: Vec::new(), ..keepalive })]
                };
                let item = KeepaliveItem { keepalives, batched, received_ms, by: by.clone(), reply: tx.clone() };
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
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_lease_key(&message.key).map_err(invalid)?;
        let send = to_leader!(ControllerClient, lease_revoke, message.clone());
        if let Some(reply) = on_leader(&self.ctx, &metadata, send).await? {
            return Ok(reply);
        }
        let key = message.key.clone();
        let token = (message.token != 0).then_some(message.token);
        let Some(owner) = self.ctx.state.read().state.leases.get(&key).map(|l| l.owner.clone()) else {
            return Err(Status::not_found(format!("lease {key} is not held")));
        };
        if message.release {
            let command = Command::LeaseRevoke { key: key.clone(), token, reason: RevokeReason::Released };
            let revision = revision_of(&propose_here(&self.ctx, &caller, command).await?);
            let message = format!("lease {key} released by its holder {}: the key is free", caller.identity);
            return Ok(Response::new(LeaseRevokeResponse { revision, approval_id: 0, message }));
        }
        let command = Command::LeaseRevoke { key: key.clone(), token, reason: RevokeReason::Revoked };
        if owner != caller.identity {
            if !caller.is_operator() {
                let reason =
                    format!("lease {key} is held by {owner}; only an operator revokes another identity's lease");
                return Err(deny(&self.ctx.auth, &caller, &command.to_string(), reason));
            }
            if self.mutations.revoke_frees_at_once {
                // The deliberate bug the simulation must catch: a revoke
                // that frees the key as if the lease had expired.
                let expire = Command::LeaseRevoke { key: key.clone(), token, reason: RevokeReason::Expired };
                let revision = revision_of(&propose_here(&self.ctx, &Caller::system(), expire).await?);
                return Ok(Response::new(LeaseRevokeResponse { revision, approval_id: 0, message: "freed".into() }));
            }
            let action = Action::Command(Box::new(command.clone()));
            if let Some(id) = ask_approval(&self.ctx, &caller, action, &format!("revoke {key}")).await? {
                let message = awaiting_approval(id, &format!("the revoke of {key} (held by {owner})"));
                return Ok(Response::new(LeaseRevokeResponse { revision: id, approval_id: id, message }));
            }
        }
        let revision = revision_of(&propose_here(&self.ctx, &caller, command).await?);
        let message = format!("lease {key} revoked: no longer renewable; the key is freed when its deadline passes");
        Ok(Response::new(LeaseRevokeResponse { revision, approval_id: 0, message }))
    }

    async fn acknowledge(&self, request: Request<AcknowledgeRequest>) -> Result<Response<AcknowledgeResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_id(&message.controller_id, "controller_id").map_err(invalid)?;
        validate_id(&message.replica_id, "replica_id").map_err(invalid)?;
        let role = parse_role(&message.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role: {:?} is not one of PRIMARY, REPLICA, FENCED, RECOVERING",
                message.role
            ))
        })?;
        let pending_since = {
            let applied = self.ctx.state.read();
            let s = &applied.state;
            let Some(replica) = s.replicas.get(&message.replica_id) else {
                return Err(Status::not_found(format!("replica_id: unknown replica {:?}", message.replica_id)));
            };
            let identity =
                replica.controller.as_deref().and_then(|c| s.controllers.get(c)).map(|c| c.identity.as_str());
            let refusal = if replica.controller.as_deref() != Some(message.controller_id.as_str()) {
                Some(format!(
                    "replica_id: {} is run by {}, not by {}",
                    message.replica_id,
                    replica.controller.as_deref().unwrap_or("no controller"),
                    message.controller_id
                ))
            } else if caller.authenticated && identity != Some(caller.identity.as_str()) {
                Some(format!(
                    "replica_id: {} is run by {} ({}); {} may not acknowledge for it",
                    message.replica_id,
                    message.controller_id,
                    identity.unwrap_or("?"),
                    caller.identity
                ))
            } else {
                None
            };
            if let Some(reason) = refusal {
                let action = format!("acknowledge {} {} at epoch {}", message.replica_id, message.role, message.epoch);
                return Err(deny(&self.ctx.auth, &caller, &action, reason));
            }
            let shard = s.shards.get(&shard_key(&replica.service, &replica.shard));
            shard
                .and_then(|sh| sh.pending.as_ref())
                .filter(|p| p.replica == message.replica_id)
                .map(|p| p.since_unix_ms)
        };
        let command = Command::Acknowledge {
            replica: message.replica_id.clone(),
            epoch: message.epoch,
            role,
            position: message.position,
        };
        match propose(&self.ctx, &caller, &metadata, command, to_leader!(ControllerClient, acknowledge, message))
            .await?
        {
            Proposed::Here(r) => {
                if let Some(since) = pending_since.filter(|_| role == ReplicaRole::Primary) {
                    let waited = self.ctx.clock.unix_ms().saturating_sub(since);
                    self.ctx.metrics.promotion_seconds.observe(waited as f64 / 1000.0);
                }
                Ok(Response::new(AcknowledgeResponse { revision: revision_of(&r) }))
            }
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    async fn ack_routing(&self, request: Request<AckRoutingRequest>) -> Result<Response<AckRoutingResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_id(&message.controller_id, "controller_id").map_err(invalid)?;
        validate_id(&message.service, "service").map_err(invalid)?;
        let send = to_leader!(ControllerClient, ack_routing, message.clone());
        if let Some(reply) = on_leader(&self.ctx, &metadata, send).await? {
            return Ok(reply);
        }
        // The version is a log index; a follower may have applied it before
        // this leader did (openraft applies asynchronously): wait for it.
        let _ = tokio::time::timeout(ACK_APPLY_WAIT, self.ctx.state.wait_applied(message.version)).await;
        let updated_at = {
            let applied = self.ctx.state.read();
            let s = &applied.state;
            let Some(controller) = s.controllers.get(&message.controller_id) else {
                return Err(Status::failed_precondition(format!(
                    "controller_id: {:?} is not registered",
                    message.controller_id
                )));
            };
            if caller.authenticated && controller.identity != caller.identity {
                let reason = format!(
                    "controller_id: {} is registered as {}; {} may not acknowledge for it",
                    controller.id, controller.identity, caller.identity
                );
                return Err(deny(&self.ctx.auth, &caller, "acknowledge routing", reason));
            }
            let Some(table) = s.routing.get(&message.service) else {
                return Err(Status::not_found(format!("service: no routing table for {:?}", message.service)));
            };
            if message.version > table.version {
                return Err(Status::invalid_argument(format!(
                    "version: {} is newer than the current version {}",
                    message.version, table.version
                )));
            }
            (message.version == table.version).then_some(table.updated_at_unix_ms)
        };
        let propagation_ms = updated_at.map_or(0, |at| self.ctx.clock.unix_ms().saturating_sub(at));
        if updated_at.is_some() {
            self.ctx.metrics.routing_propagation_seconds.observe(propagation_ms as f64 / 1000.0);
        }
        self.routing_acks.record(&message.service, &message.controller_id, message.version, propagation_ms);
        Ok(Response::new(AckRoutingResponse {}))
    }

    async fn lease_get(&self, request: Request<LeaseGetRequest>) -> Result<Response<LeaseInfo>, Status> {
        let (metadata, _, message) = request.into_parts();
        validate_lease_key(&message.key).map_err(invalid)?;
        let send = to_leader!(ControllerClient, lease_get, message.clone());
        if let Some(reply) = linearizable(&self.ctx, &metadata, send).await? {
            return Ok(reply);
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
        let filter = Filter::parse(&topic, &message.key_prefix, &message.kinds).map_err(invalid)?;
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
        tokio::spawn(run_watch(self.ctx.state.clone(), topic, filter, message.after_version, tx, move |key, ttl| {
            leases.remaining_ms(key, clock.monotonic_ms()).unwrap_or(ttl)
        }));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_backup(
        &self,
        request: Request<ReportBackupRequest>,
    ) -> Result<Response<ReportBackupResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, m) = request.into_parts();
        validate_id(&m.service, "service").map_err(invalid)?;
        validate_id(&m.shard, "shard").map_err(invalid)?;
        let backup = interlock_core::model::BackupReport {
            id: m.backup_id.clone(),
            source_region: m.source_region.clone(),
            taken_at_unix_ms: m.taken_at_unix_ms,
            size_bytes: m.size_bytes,
            checksum: m.checksum.clone(),
            location: m.location.clone(),
        };
        let command = Command::ReportBackup {
            controller: m.controller_id.clone(),
            shard: shard_key(&m.service, &m.shard),
            backup,
        };
        command.validate().map_err(invalid)?;
        if !caller.controls(&m.source_region) {
            let reason = format!("source_region: {} is not a controller of {}", caller.identity, m.source_region);
            return Err(deny(&self.ctx.auth, &caller, &command.to_string(), reason));
        }
        match propose(&self.ctx, &caller, &metadata, command, to_leader!(ControllerClient, report_backup, m)).await? {
            Proposed::Here(r) => Ok(Response::new(ReportBackupResponse { revision: revision_of(&r) })),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    async fn report_restore_result(
        &self,
        request: Request<RestoreResultRequest>,
    ) -> Result<Response<RestoreResultResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, m) = request.into_parts();
        let data_check = m
            .data_checked
            .then_some(interlock_core::model::DataCheck { rows: m.row_count, newest_sequence: m.newest_sequence });
        let result = interlock_core::model::RestoreResult {
            passed: m.passed,
            reason: m.reason.clone(),
            duration_ms: m.duration_ms,
            checksum_match: m.checksum_match,
            data_check,
        };
        let command = Command::FinishRestoreTest { job: m.job_id, controller: m.controller_id.clone(), result };
        command.validate().map_err(invalid)?;
        let send = to_leader!(ControllerClient, report_restore_result, m);
        match propose(&self.ctx, &caller, &metadata, command, send).await? {
            Proposed::Here(r) => Ok(Response::new(RestoreResultResponse { revision: revision_of(&r) })),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    async fn report_hook_result(
        &self,
        request: Request<HookResultRequest>,
    ) -> Result<Response<HookResultResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, m) = request.into_parts();
        let change = interlock_core::model::StepChange::HookResult {
            controller: m.controller_id.clone(),
            passed: m.passed,
            output: m.output.clone(),
        };
        let command = Command::StepTransition { execution: m.execution_id, step: m.step, attempt: m.attempt, change };
        command.validate().map_err(invalid)?;
        let send = to_leader!(ControllerClient, report_hook_result, m);
        match propose(&self.ctx, &caller, &metadata, command, send).await? {
            Proposed::Here(r) => Ok(Response::new(HookResultResponse { revision: revision_of(&r) })),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }
}
