//! The `interlock.v1.Cluster` service: status and membership changes.

use super::{forward, invalid, linearizable, to_leader};
use crate::ctx::NodeCtx;
use crate::node::config::{validate_dial_addr, validate_region};
use futures::future::join_all;
use interlock_core::{InvalidArgument, NodeId, NodeInfo};
use interlock_proto::v1::cluster_client::ClusterClient;
use interlock_proto::v1::cluster_server::{Cluster, ClusterServer};
use interlock_proto::v1::{
    AddMemberRequest, ClusterStatus, Member, MembershipResponse, NodeStatusRequest, NodeStatusResponse,
    ReadIndexRequest, ReadIndexResponse, RemoveMemberRequest, StatusRequest,
};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
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

    async fn membership_response(&self, revision: u64) -> MembershipResponse {
        let leader = self.ctx.raft.current_leader().await.unwrap_or(0);
        MembershipResponse { revision, members: self.members(leader).await }
    }
}

fn membership_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
) -> Result<ForwardToLeader<NodeId, NodeInfo>, Status> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Ok(f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Err(Status::failed_precondition(c.to_string()))
        }
        RaftError::Fatal(f) => Err(Status::unavailable(f.to_string())),
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
        let (metadata, _, message) = request.into_parts();
        let node = validate_add(&message).map_err(invalid)?;
        let membership = self.ctx.raft.metrics().borrow().membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&message.id) {
            if *existing != node {
                return Err(Status::already_exists(format!(
                    "node {} is already a member as {existing}; remove it first",
                    message.id
                )));
            }
        }
        let raft = &self.ctx.raft;
        let change = async {
            let learner = raft.add_learner(message.id, node, true).await;
            let learner = match learner {
                Ok(r) => r,
                Err(e) => return Err(membership_error(e)),
            };
            if message.learner_only {
                return Ok(learner.log_id.index);
            }
            let ids = BTreeSet::from([message.id]);
            raft.change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map(|r| r.log_id.index)
                .map_err(membership_error)
        };
        match tokio::time::timeout(ADD_MEMBER_TIMEOUT, change).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "node {} did not catch up within {ADD_MEMBER_TIMEOUT:?}; is it running at {}?",
                message.id, message.grpc_addr
            ))),
            Ok(Ok(revision)) => Ok(Response::new(self.membership_response(revision).await)),
            Ok(Err(Ok(hint))) => {
                forward(&self.ctx, &metadata, &hint, to_leader!(ClusterClient, add_member, message)).await
            }
            Ok(Err(Err(status))) => Err(status),
        }
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let membership = self.ctx.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&message.id).is_none() {
            return Err(Status::not_found(format!("node {} is not a member", message.id)));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let ids = BTreeSet::from([message.id]);
        let change = if voters.contains(&message.id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!("node {} is the last voter", message.id)));
            }
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        match self.ctx.raft.change_membership(change, false).await.map_err(membership_error) {
            Ok(reply) => Ok(Response::new(self.membership_response(reply.log_id.index).await)),
            Err(Ok(hint)) => {
                forward(&self.ctx, &metadata, &hint, to_leader!(ClusterClient, remove_member, message)).await
            }
            Err(Err(status)) => Err(status),
        }
    }
}
