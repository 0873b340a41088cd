//! What every request handler of a node shares: the Raft handle, the applied
//! state, channels to peers, metrics and the clock; plus the two operations
//! all writers need — propose a command, and find the leader to forward to.

use crate::channels::Channels;
use crate::metrics::Metrics;
use interlock_core::{Command, NodeId, NodeInfo, Request, Response};
use interlock_proto::{FORWARDED_METADATA, LEADER_ADDR_METADATA, LEADER_ID_METADATA};
use interlock_store::{Raft, StateReader};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Status;

/// A source of wall-clock time. Injected so the simulation can skew clocks.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn unix_ms(&self) -> u64;
}

/// The operating system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// Shared by every handler of one node.
pub struct NodeCtx {
    pub id: NodeId,
    pub raft: Raft,
    pub state: StateReader,
    pub channels: Channels,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// How long a write may wait to be committed before the caller is told
    /// the outcome is unknown.
    pub write_timeout: Duration,
    /// How long a request that needs a leader waits for an election to end.
    pub leader_wait: Duration,
}

/// Why a proposal did not produce a result.
pub enum ProposeError {
    /// This node is not the leader; forward to the one named (if known).
    NotLeader(ForwardToLeader<NodeId, NodeInfo>),
    /// Anything else, already a gRPC status.
    Status(Status),
}

impl NodeCtx {
    /// Proposes `command` (already validated) and waits until it is applied.
    pub async fn propose(&self, command: Command) -> Result<u64, ProposeError> {
        let request = Request { at_unix_ms: self.clock.unix_ms(), command };
        let written = tokio::time::timeout(self.write_timeout, self.raft.client_write(request)).await;
        match written {
            Err(_) => Err(ProposeError::Status(Status::deadline_exceeded(format!(
                "the write was not committed within {:?}; its outcome is unknown",
                self.write_timeout
            )))),
            Ok(Ok(reply)) => match reply.data {
                Response::Applied { revision } => Ok(revision),
                Response::Refused { reason } => Err(ProposeError::Status(Status::failed_precondition(reason))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(ProposeError::NotLeader(f)),
            Ok(Err(e)) => Err(ProposeError::Status(Status::unavailable(e.to_string()))),
        }
    }

    /// The channel to the leader named in `hint`, for forwarding a request
    /// that arrived with `metadata`. A request is forwarded at most once:
    /// if it was already forwarded, or no leader is known, the caller gets
    /// UNAVAILABLE with the leader hint.
    pub fn forward_target(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        hint: &ForwardToLeader<NodeId, NodeInfo>,
    ) -> Result<Channel, Status> {
        let leader = match (&hint.leader_id, &hint.leader_node) {
            (Some(id), Some(node)) if *id != self.id && !metadata.contains_key(FORWARDED_METADATA) => node,
            _ => return Err(self.no_leader_status(hint)),
        };
        self.metrics.forwarded_requests.inc();
        self.channels.get(&leader.grpc_addr).map_err(Status::unavailable)
    }

    /// UNAVAILABLE, with whatever is known about the leader in the metadata.
    pub fn no_leader_status(&self, hint: &ForwardToLeader<NodeId, NodeInfo>) -> Status {
        let mut status = match &hint.leader_id {
            Some(id) => Status::unavailable(format!("node {} is not the leader; the leader is node {id}", self.id)),
            None => Status::unavailable(format!("node {} knows no leader (election in progress?)", self.id)),
        };
        if let (Some(id), Some(node)) = (&hint.leader_id, &hint.leader_node) {
            let metadata = status.metadata_mut();
            if let Ok(v) = MetadataValue::try_from(id.to_string()) {
                metadata.insert(LEADER_ID_METADATA, v);
            }
            if let Ok(v) = MetadataValue::try_from(node.grpc_addr.as_str()) {
                metadata.insert(LEADER_ADDR_METADATA, v);
            }
        }
        status
    }
}

/// Builds the request a node sends to the leader on a client's behalf.
pub fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_METADATA, MetadataValue::from_static("1"));
    request
}
