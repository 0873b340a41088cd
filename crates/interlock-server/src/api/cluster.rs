//! The `interlock.v1.Cluster` service: status and membership changes.

use super::auth::{caller, Caller};
use super::{ask_approval, awaiting_approval, forward, invalid, linearizable, on_leader, to_leader};
use crate::ctx::NodeCtx;
use crate::node::config::{validate_dial_addr, validate_region};
use futures::future::join_all;
use interlock_core::command::Action;
use interlock_core::Command;
use interlock_core::{InvalidArgument, NodeId, NodeInfo};
use interlock_proto::v1::cluster_client::ClusterClient;
use interlock_proto::v1::cluster_server::{Cluster, ClusterServer};
use interlock_proto::v1::{
    AddMemberRequest, ClusterStatus, Member, MembershipResponse, NodeStatusRequest, NodeStatusResponse,
    ReadIndexRequest, ReadIndexResponse, RemoveMemberRequest, StatusRequest,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long the leader waits for each member's own status.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long adding a member may take (the learner must catch up first).
pub const ADD_MEMBER_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ClusterService {
    pub ctx: Arc<NodeCtx>,
}

impl ClusterService {
    pub fn into_service(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    fn local_status(&self) -> NodeStatusResponse {
        let m = self.ctx.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Learner => "learner",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
        };
        NodeStatusResponse {
            id: self.ctx.id,
            term: m.current_term,
            leader: m.current_leader.unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            state: state.to_string(),
        }
    }

    /// Every member with its role, probing each for its own applied index.
    async fn members(&self, leader: NodeId) -> Vec<Member> {
        let m = self.ctx.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let probes = membership.nodes().map(|(id, node)| {
            let (id, node) = (*id, node.clone());
            let role = if id == leader {
                "leader"
            } else if voters.contains(&id) {
                "follower"
            } else {
                "learner"
            };
            async move {
                let applied = self.probe(id, &node).await;
                Member {
                    id,
                    region: node.region.clone(),
                    grpc_addr: node.grpc_addr.clone(),
                    role: role.to_string(),
                    last_applied: applied,
                    reachable: applied.is_some(),
                }
            }
        });
        join_all(probes).await
    }

    async fn probe(&self, id: NodeId, node: &NodeInfo) -> Option<u64> {
        if id == self.ctx.id {
            return Some(self.local_status().last_applied);
        }
        let channel = self.ctx.channels.get(&node.grpc_addr).ok()?;
        let mut client = ClusterClient::new(channel);
        match tokio::time::timeout(STATUS_PROBE_TIMEOUT, client.node_status(NodeStatusRequest {})).await {
            Ok(Ok(reply)) => Some(reply.into_inner().last_applied),
            _ => None,
        }
    }

    async fn membership_response(&self, revision: u64, message: String) -> MembershipResponse {
        let leader = self.ctx.raft.current_leader().await.unwrap_or(0);
        MembershipResponse { revision, members: self.members(leader).await, approval_id: 0, message }
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Status::unavailable(format!("leadership moved to {:?} during the change; ask again", f.leader_id))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Status::failed_precondition(c.to_string()),
        RaftError::Fatal(f) => Status::unavailable(f.to_string()),
    }
}

fn validate_add(request: &AddMemberRequest) -> Result<NodeInfo, InvalidArgument> {
    if request.id == 0 {
        return Err(InvalidArgument::new("id", "must be a positive integer"));
    }
    validate_dial_addr(&request.grpc_addr, "grpc_addr").map_err(|e| InvalidArgument::new(e.field, e.reason))?;
    validate_region(&request.region, "region").map_err(|e| InvalidArgument::new(e.field, e.reason))?;
    Ok(NodeInfo { grpc_addr: request.grpc_addr.clone(), region: request.region.clone() })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        let (metadata, _, message) = request.into_parts();
        if self.local_status().leader == 0 {
            // An election may be in progress: give it a moment to finish.
            let _ = self
                .ctx
                .raft
                .wait(Some(self.ctx.leader_wait))
                .metrics(|m| m.current_leader.is_some(), "a leader is known")
                .await;
        }
        let local = self.local_status();
        if local.state != "leader" {
            let hint = self.ctx.leader_hint();
            let call = forward(&self.ctx, &metadata, &hint, to_leader!(ClusterClient, status, message));
            if let Ok(Ok(reply)) = tokio::time::timeout(STATUS_PROBE_TIMEOUT * 2, call).await {
                return Ok(reply);
            }
        }
        // The leader, or a node that cannot reach one: answer from here.
        Ok(Response::new(ClusterStatus {
            leader: local.leader,
            term: local.term,
            members: self.members(local.leader).await,
            answered_by: self.ctx.id,
        }))
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(self.local_status()))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        match linearizable(&self.ctx, &metadata, to_leader!(ClusterClient, read_index, message)).await? {
            Some(reply) => Ok(reply),
            None => Ok(Response::new(ReadIndexResponse { index: self.ctx.state.read().state.revision })),
        }
    }

    async fn add_member(&self, request: Request<AddMemberRequest>) -> Result<Response<MembershipResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_add(&message).map_err(invalid)?;
        if let Some(reply) =
            on_leader(&self.ctx, &metadata, to_leader!(ClusterClient, add_member, message.clone())).await?
        {
            return Ok(reply);
        }
        let action = Action::AddMember {
            id: message.id,
            grpc_addr: message.grpc_addr.clone(),
            region: message.region.clone(),
            learner_only: message.learner_only,
        };
        self.membership(&caller, action).await
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let send = to_leader!(ClusterClient, remove_member, message);
        if let Some(reply) = on_leader(&self.ctx, &metadata, send).await? {
            return Ok(reply);
        }
        self.membership(&caller, Action::RemoveMember { id: message.id }).await
    }
}

impl ClusterService {
    /// A membership change asked for by `caller`, on the leader: it waits
    /// for a second operator, or (single-operator mode) is carried out now.
    async fn membership(&self, caller: &Caller, action: Action) -> Result<Response<MembershipResponse>, Status> {
        check_membership(&self.ctx, &action)?;
        if let Some(id) = ask_approval(&self.ctx, caller, action.clone(), &action.to_string()).await? {
            let leader = self.ctx.id;
            return Ok(Response::new(MembershipResponse {
                revision: id,
                members: self.members(leader).await,
                approval_id: id,
                message: awaiting_approval(id, &action.to_string()),
            }));
        }
        let revision = carry_out(&self.ctx, caller, &action, None).await?;
        Ok(Response::new(self.membership_response(revision, format!("{action}: done")).await))
    }
}

/// Refuses a membership change that cannot be made as asked (before anyone
/// approves it).
fn check_membership(ctx: &NodeCtx, action: &Action) -> Result<(), Status> {
    let membership = ctx.raft.metrics().borrow().membership_config.membership().clone();
    match action {
        Action::AddMember { id, grpc_addr, region, .. } => {
            let node = NodeInfo { grpc_addr: grpc_addr.clone(), region: region.clone() };
            if let Some((other, _)) = membership.nodes().find(|(other, n)| *other != id && n.grpc_addr == *grpc_addr) {
                return Err(Status::already_exists(format!(
                    "grpc_addr: {grpc_addr} is already node {other}'s address"
                )));
            }
            match membership.get_node(id) {
                Some(existing) if *existing != node => {
                    Err(Status::already_exists(format!("node {id} is already a member as {existing}; remove it first")))
                }
                _ => Ok(()),
            }
        }
        Action::RemoveMember { id } => {
            if membership.get_node(id).is_none() {
                return Err(Status::not_found(format!("node {id} is not a member")));
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            if voters.contains(id) && voters.len() == 1 {
                return Err(Status::failed_precondition(format!("node {id} is the last voter")));
            }
            Ok(())
        }
        Action::Command(_) => Err(Status::internal("not a membership change")),
    }
}

/// Carries out a membership change on the leader (asked for by `caller`,
/// approved as `approval` when it was), and records it in the audit trail.
/// Returns the log index of the new membership.
pub async fn carry_out(ctx: &NodeCtx, caller: &Caller, action: &Action, approval: Option<u64>) -> Result<u64, Status> {
    check_membership(ctx, action)?;
    let raft = &ctx.raft;
    let change = async {
        match action {
            Action::AddMember { id, grpc_addr, region, learner_only } => {
                let node = NodeInfo { grpc_addr: grpc_addr.clone(), region: region.clone() };
                let learner = raft.add_learner(*id, node, true).await.map_err(membership_error)?;
                if *learner_only {
                    return Ok(learner.log_id.index);
                }
                let ids = BTreeSet::from([*id]);
                raft.change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                    .map(|r| r.log_id.index)
                    .map_err(membership_error)
            }
            Action::RemoveMember { id } => {
                let membership = ctx.raft.metrics().borrow().membership_config.membership().clone();
                let ids = BTreeSet::from([*id]);
                let change = if membership.voter_ids().any(|v| v == *id) {
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                raft.change_membership(change, false).await.map(|r| r.log_id.index).map_err(membership_error)
            }
            Action::Command(_) => Err(Status::internal("not a membership change")),
        }
    };
    let outcome = match tokio::time::timeout(ADD_MEMBER_TIMEOUT, change).await {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{action}: not done within {ADD_MEMBER_TIMEOUT:?}; is the node running and reachable?"
        ))),
        Ok(result) => result,
    };
    let what = match approval {
        Some(id) => format!("{action} (approval {id})"),
        None => action.to_string(),
    };
    let text = match &outcome {
        Ok(index) => format!("applied at revision {index}"),
        Err(status) => format!("failed ({:?}): {}", status.code(), status.message()),
    };
    let audit = Command::Audit { action: what, outcome: text };
    crate::raft::network::propose_via_leader(
        ctx,
        interlock_core::Request::by(ctx.clock.unix_ms(), &caller.identity, audit),
    )
    .await;
    outcome
}
