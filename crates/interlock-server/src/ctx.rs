//! What every request handler of a node shares: the Raft handle, the applied
//! state, channels to peers, metrics and the clock; plus the two operations
//! all writers need — propose a command, and find the leader to forward to.

use crate::http::metrics::Metrics;
use crate::raft::channels::Channels;
use interlock_core::vocab::SYSTEM;
use interlock_core::{Command, NodeId, NodeInfo, Request, Response};
use interlock_proto::{FORWARDED_METADATA, LEADER_ADDR_METADATA, LEADER_ID_METADATA, NOT_PROPOSED_METADATA};
use interlock_store::{Raft, StateReader};
use openraft::error::{ForwardToLeader, RaftError};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Status;

/// A source of time. Injected so the simulation can skew and drift clocks.
pub trait Clock: Send + Sync + 'static {
    /// Wall clock: milliseconds since the Unix epoch (for records only).
    fn unix_ms(&self) -> u64;
    /// Monotonic clock: milliseconds since an arbitrary origin (for deadlines).
    fn monotonic_ms(&self) -> u64;
}

/// The operating system's clocks. The monotonic one is tokio's, so that it
/// follows simulated time when run under a simulator.
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock { origin: tokio::time::Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
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
    /// Where key-value writes queue up to be proposed together.
    pub write_batcher: crate::raft::proposer::WriteBatcher,
    /// Who may do what, and the refusals' audit records.
    pub auth: Arc<crate::api::auth::Auth>,
}

/// Why a proposal did not produce a result.
#[derive(Clone)]
pub enum ProposeError {
    /// This node is not the leader; forward to the one named (if known).
    NotLeader(ForwardToLeader<NodeId, NodeInfo>),
    /// Anything else, already a gRPC status.
    Status(Status),
}

impl NodeCtx {
    /// Proposes `command` as the coordinator itself (its control loops).
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        self.propose_by(SYSTEM, command).await
    }

    /// Proposes `command` (already validated) on behalf of the caller `by`,
    /// waits until it is applied, and returns the state machine's answer; a
    /// refusal becomes its status. Batchable commands go through the
    /// leader's batcher; key-value writes (whose caller the state machine
    /// does not need) are batched across callers, as the coordinator's.
    pub async fn propose_by(&self, by: &str, command: Command) -> Result<Response, ProposeError> {
        let proposed = async {
            // A follower answers "ask the leader" at once instead of queueing.
            if command.is_batchable() && self.is_leader() {
                let by = if command.needs_caller() { by } else { SYSTEM };
                self.write_batcher.propose(by, command).await
            } else {
                crate::raft::proposer::write(&self.raft, Request::by(self.clock.unix_ms(), by, command)).await
            }
        };
        match tokio::time::timeout(self.write_timeout, proposed).await {
            Err(_) => Err(ProposeError::Status(Status::deadline_exceeded(format!(
                "the write was not committed within {:?}; its outcome is unknown",
                self.write_timeout
            )))),
            Ok(Ok(Response::Refused { code, reason })) => {
                Err(ProposeError::Status(crate::api::refusal_status(code, reason)))
            }
            Ok(outcome) => outcome,
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
        status.metadata_mut().insert(NOT_PROPOSED_METADATA, MetadataValue::from_static("1"));
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

impl NodeCtx {
    /// Makes this node fit to serve a linearizable read: `Ok(None)` if it is
    /// the leader and has confirmed it with a quorum (and applied up to the
    /// read index); `Ok(Some(hint))` names the leader to ask instead.
    pub async fn read_barrier(&self) -> Result<Option<ForwardToLeader<NodeId, NodeInfo>>, Status> {
        use openraft::error::CheckIsLeaderError;
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(None),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(hint))) => Ok(Some(hint)),
            Err(e) => Err(Status::unavailable(format!("cannot confirm leadership: {e}"))),
        }
    }

    /// The term this node leads, if it currently believes it is the leader.
    /// (Reads openraft's metrics in place: called on hot paths.)
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader == Some(self.id) && m.state == openraft::ServerState::Leader).then_some(m.current_term)
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// The leader hint from this node's current view.
    pub fn leader_hint(&self) -> ForwardToLeader<NodeId, NodeInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let node = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        ForwardToLeader { leader_id: m.current_leader, leader_node: node }
    }
}
