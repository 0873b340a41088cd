//! The `interlock.v1.Admin` service: apply the declared topology, and
//! linearizable views of the state for operators.

use crate::controller::Liveness;
use crate::ctx::{forwarded, refusal_status, revision_of, NodeCtx, ProposeError};
use crate::leases::LeaseTable;
use interlock_core::{Command, Topology};
use interlock_proto::convert::lease_info;
use interlock_proto::v1::admin_client::AdminClient;
use interlock_proto::v1::admin_server::{Admin, AdminServer};
use interlock_proto::v1::{
    ApplyTopologyRequest, ApplyTopologyResponse, ControllerInfo, ControllerList, EventList, GetEventsRequest,
    LeaseList, ListRequest, RegionList, ReplicaList, ShardList,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Most events one GetEvents answers.
pub const EVENTS_PAGE_MAX: u32 = 10_000;

pub struct AdminService {
    pub ctx: Arc<NodeCtx>,
    pub leases: Arc<LeaseTable>,
    pub liveness: Arc<Liveness>,
}

impl AdminService {
    pub fn into_service(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

/// Forwards a read to the leader, or falls through to serve it here once this
/// node has confirmed its leadership.
macro_rules! leader_read {
    ($self:ident, $metadata:expr, $message:expr, $method:ident) => {
        if let Some(leader) = $self.ctx.read_barrier(&$metadata).await? {
            return AdminClient::new(leader).$method(forwarded($message)).await;
        }
    };
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_topology(
        &self,
        request: Request<ApplyTopologyRequest>,
    ) -> Result<Response<ApplyTopologyResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let topology: Topology = message.topology.clone().unwrap_or_default().into();
        let problems = topology.validate();
        if !problems.is_empty() {
            let listed: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.reason)).collect();
            return Err(Status::invalid_argument(format!(
                "the topology is refused, nothing was changed: {}",
                listed.join("; ")
            )));
        }
        leader_read!(self, metadata, message, apply_topology);
        let (changes, refusal) = self.ctx.state.read().state.topology_diff(&topology);
        if let Some((code, reason)) = refusal {
            return Err(refusal_status(code, reason));
        }
        if message.dry_run || changes.is_empty() {
            // Nothing to change: an unchanged topology is not written again.
            return Ok(Response::new(ApplyTopologyResponse { changes, revision: 0 }));
        }
        match self.ctx.propose(Command::ApplyTopology { topology }).await {
            Ok(r) => Ok(Response::new(ApplyTopologyResponse { changes, revision: revision_of(&r) })),
            Err(ProposeError::NotLeader(f)) => {
                AdminClient::new(self.ctx.forward_target(&metadata, &f)?).apply_topology(forwarded(message)).await
            }
            Err(ProposeError::Status(s)) => Err(s),
        }
    }

    async fn get_regions(&self, request: Request<ListRequest>) -> Result<Response<RegionList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_regions);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        Ok(Response::new(RegionList { regions: s.regions.values().map(Into::into).collect(), revision: s.revision }))
    }

    async fn get_shards(&self, request: Request<ListRequest>) -> Result<Response<ShardList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_shards);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        Ok(Response::new(ShardList { shards: s.shards.values().map(Into::into).collect(), revision: s.revision }))
    }

    async fn get_replicas(&self, request: Request<ListRequest>) -> Result<Response<ReplicaList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_replicas);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        Ok(Response::new(ReplicaList { replicas: s.replicas.values().map(Into::into).collect(), revision: s.revision }))
    }

    async fn get_controllers(&self, request: Request<ListRequest>) -> Result<Response<ControllerList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_controllers);
        let now = self.ctx.clock.monotonic_ms();
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let controllers = s
            .controllers
            .values()
            .map(|c| ControllerInfo {
                last_heartbeat_ms_ago: self.liveness.last_seen_ms(&c.id).map(|seen| now.saturating_sub(seen)),
                ..c.into()
            })
            .collect();
        Ok(Response::new(ControllerList { controllers, revision: s.revision }))
    }

    async fn get_leases(&self, request: Request<ListRequest>) -> Result<Response<LeaseList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_leases);
        let now = self.ctx.clock.monotonic_ms();
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let leases = s
            .leases
            .values()
            .map(|l| lease_info(l, self.leases.remaining_ms(&l.key, now).unwrap_or(l.ttl_ms)))
            .collect();
        Ok(Response::new(LeaseList { leases, revision: s.revision }))
    }

    async fn get_events(&self, request: Request<GetEventsRequest>) -> Result<Response<EventList>, Status> {
        let (metadata, _, message) = request.into_parts();
        if message.limit > EVENTS_PAGE_MAX {
            return Err(Status::invalid_argument(format!("limit: must be at most {EVENTS_PAGE_MAX}")));
        }
        leader_read!(self, metadata, message, get_events);
        let limit = if message.limit == 0 { EVENTS_PAGE_MAX } else { message.limit } as usize;
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let events = s.events_after(message.after_version).take(limit).map(Into::into).collect();
        Ok(Response::new(EventList { events, revision: s.revision }))
    }
}
