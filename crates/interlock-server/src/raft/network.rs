//! The Raft transport: openraft's `RaftNetwork` over the `interlock.raft.v1`
//! gRPC service, and that service's server side.
//!
//! Payloads are openraft messages in [`interlock_core::codec`]. Every RPC has
//! a deadline (openraft's `hard_ttl`): a peer that does not answer becomes a
//! timeout, never a hung replication stream.

use super::channels::{Channels, PEER_MESSAGE_MAX_BYTES};
use interlock_core::{codec, NodeId, NodeInfo};
use interlock_proto::raft::raft_client::RaftClient;
use interlock_proto::raft::raft_server::{Raft as RaftService, RaftServer};
use interlock_proto::raft::RaftMessage;
use interlock_store::{Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Makes a [`PeerClient`] per target, sharing channels.
#[derive(Clone)]
pub struct Network {
    pub id: NodeId,
    pub channels: Channels,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient { id: self.id, target, channel: self.channels.get(&node.grpc_addr) }
    }
}

/// The transport to one peer.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    /// `Err` if the peer's address could not even be turned into a channel.
    channel: Result<tonic::transport::Channel, String>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        request: &Req,
        ttl: Duration,
        send: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<tonic::transport::Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<Response<RaftMessage>, Status>>,
    {
        let channel = self.channel.clone().map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))?;
        let payload = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(e))))?;
        let client = RaftClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_MAX_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_MAX_BYTES);
        let timeout = Timeout { action, id: self.id, target: self.target, timeout: ttl };
        let message = RaftMessage { payload, to: self.target };
        let response = match tokio::time::timeout(ttl, send(client, message)).await {
            Err(_) => return Err(RPCError::Timeout(timeout)),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                return Err(RPCError::Timeout(timeout))
            }
            // Down, refusing us, or not the node we meant: openraft backs off
            // from an unreachable peer instead of retrying at once.
            Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
            Ok(Ok(response)) => response.into_inner(),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = codec::decode(&response.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::error(format!("bad reply: {e}")))))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl(), |mut c, m| async move { c.append_entries(m).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(
            RPCTypes::InstallSnapshot,
            &rpc,
            option.hard_ttl(),
            |mut c, m| async move { c.install_snapshot(m).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl(), |mut c, m| async move { c.vote(m).await }).await
    }
}

/// The server side of the Raft service: decodes, hands to openraft, encodes.
pub struct RaftRpcServer {
    pub raft: Raft,
    pub ctx: std::sync::Arc<crate::ctx::NodeCtx>,
}

impl RaftRpcServer {
    pub fn into_service(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(PEER_MESSAGE_MAX_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_MAX_BYTES)
    }
}

impl RaftRpcServer {
    /// Decodes a Raft message meant for this node; one meant for another id
    /// is refused before openraft sees it (it could not survive a message a
    /// leader sent to itself, thinking it talked to a peer).
    fn accept<T: DeserializeOwned>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        let to = request.get_ref().to;
        if to != self.ctx.id {
            let reason = format!(
                "to: this is node {}, not node {to}: the sender's address for node {to} points here",
                self.ctx.id
            );
            // The sender backs off (it sees the peer as unreachable), so this is a line or two a second.
            tracing::warn!("refused a Raft message: {reason}");
            return Err(Status::failed_precondition(reason));
        }
        codec::decode(&request.into_inner().payload).map_err(|e| Status::invalid_argument(format!("payload: {e}")))
    }
}

fn encode_reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(value).map_err(Status::internal)?;
    Ok(Response::new(RaftMessage { payload, to: 0 }))
}

#[tonic::async_trait]
impl RaftService for RaftRpcServer {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.accept(request)?;
        encode_reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = self.accept(request)?;
        encode_reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.accept(request)?;
        encode_reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let _: super::prevote::PreVoteRequest = self.accept(request)?;
        encode_reply(&super::prevote::answer(&self.raft).await)
    }

    async fn propose(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let request: interlock_core::Request = self.accept(request)?;
        // Only what a follower may not propose itself: audit records.
        if !matches!(request.command, interlock_core::Command::Audit { .. }) {
            return Err(Status::permission_denied(format!(
                "Raft.Propose carries only audit records, not {}",
                request.command
            )));
        }
        request.command.validate().map_err(crate::api::invalid)?;
        match self.ctx.propose_by(&request.by, request.command).await {
            Ok(response) => encode_reply(&response),
            Err(crate::ctx::ProposeError::NotLeader(hint)) => Err(self.ctx.no_leader_status(&hint)),
            Err(crate::ctx::ProposeError::Status(status)) => Err(status),
        }
    }
}

/// Proposes `request` (an audit record) here if this node leads, else hands
/// it to the leader over the Raft service. Best effort: an error is logged.
pub async fn propose_via_leader(ctx: &crate::ctx::NodeCtx, request: interlock_core::Request) {
    let result = match ctx.propose_by(&request.by, request.command.clone()).await {
        Ok(_) => Ok(()),
        Err(crate::ctx::ProposeError::Status(status)) => Err(status.message().to_string()),
        Err(crate::ctx::ProposeError::NotLeader(hint)) => match (hint.leader_id, hint.leader_node.as_ref()) {
            (Some(leader_id), Some(leader)) => {
                async {
                    let channel = ctx.channels.get(&leader.grpc_addr)?;
                    let payload = codec::encode(&request)?;
                    let mut client = RaftClient::new(channel);
                    let call = client.propose(RaftMessage { payload, to: leader_id });
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(status.message().to_string()),
                        Err(_) => Err("the leader did not answer within 5 s".to_string()),
                    }
                }
                .await
            }
            _ => Err("no leader known".to_string()),
        },
    };
    if let Err(e) = result {
        tracing::warn!("could not record an audit entry ({}): {e}", request.command);
    }
}
