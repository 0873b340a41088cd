//! The public gRPC services (`interlock.v1`), one module each, and what they
//! share: the one way to forward a request to the leader, and the mapping
//! of refusals and invalid arguments to gRPC statuses.
//!
//! A request a node cannot serve itself goes to the leader at most once
//! ([`forward`]): writes that reach a follower ([`propose`]), operator
//! actions that need the leader's soft state ([`on_leader`]), and
//! linearizable reads ([`linearizable`]). The answer carries the leader's
//! address, so the client goes there directly next time.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod controller;
pub mod kv;
pub mod runbooks;
pub mod watch;

use crate::ctx::{NodeCtx, ProposeError};
use auth::Caller;
use interlock_core::command::Action;
use interlock_core::{Command, InvalidArgument, NodeId, NodeInfo, Refusal, Response};
use interlock_proto::{CALLER_METADATA, FORWARDED_METADATA, LEADER_ADDR_METADATA, ON_BEHALF_OF_METADATA};
use openraft::error::ForwardToLeader;
use std::future::Future;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::Status;

/// The server-stream type of every streaming RPC.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// INVALID_ARGUMENT, naming the field and the reason.
pub fn invalid(e: InvalidArgument) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The gRPC status for a state-machine (or policy) refusal.
pub fn refusal_status(code: Refusal, reason: String) -> Status {
    match code {
        Refusal::InvalidArgument => Status::invalid_argument(reason),
        Refusal::FailedPrecondition => Status::failed_precondition(reason),
        Refusal::NotFound => Status::not_found(reason),
        Refusal::PermissionDenied => Status::permission_denied(reason),
    }
}

/// The revision of an applied command.
pub fn revision_of(response: &Response) -> u64 {
    match response {
        Response::Applied { revision } => *revision,
        Response::Lease { token, .. } => *token,
        Response::Refused { .. } | Response::Batch { .. } => 0,
    }
}

/// The metadata of a request a node sends to the leader for the caller of
/// the request that came with `metadata`: marked as forwarded (at most
/// once), and on whose behalf.
fn forwarded(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    out.insert(FORWARDED_METADATA, MetadataValue::from_static("1"));
    if let Some(caller) = metadata.get(CALLER_METADATA) {
        out.insert(ON_BEHALF_OF_METADATA, caller.clone());
    }
    out
}

/// Builds the closure [`forward`] and its callers take: send `$message` with
/// `$client`'s `$method` over the channel to the leader, with the metadata
/// [`forward`] gives it.
macro_rules! to_leader {
    ($client:ident, $method:ident, $message:expr) => {{
        let message = $message;
        move |channel, metadata| async move {
            let mut request = tonic::Request::new(message);
            *request.metadata_mut() = metadata;
            $client::new(channel).$method(request).await
        }
    }};
}
pub(crate) use to_leader;

/// Sends a request to the leader named in `hint` with `send`, once: a request
/// that was already forwarded, or a hint without a leader, gets UNAVAILABLE
/// with whatever is known of the leader. The answer names the leader's
/// address (`x-interlock-leader-addr`) for the client's next call.
pub async fn forward<T, F, Fut>(
    ctx: &NodeCtx,
    metadata: &MetadataMap,
    hint: &ForwardToLeader<NodeId, NodeInfo>,
    send: F,
) -> Result<tonic::Response<T>, Status>
where
    F: FnOnce(Channel, MetadataMap) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut reply = send(ctx.forward_target(metadata, hint)?, forwarded(metadata)).await?;
    if let Some(value) = hint.leader_node.as_ref().and_then(|n| MetadataValue::try_from(n.grpc_addr.as_str()).ok()) {
        reply.metadata_mut().insert(LEADER_ADDR_METADATA, value);
    }
    Ok(reply)
}

/// Where a proposal was answered.
pub enum Proposed<T> {
    /// This node leads: the state machine's answer (a refusal is an error).
    Here(Response),
    /// A follower sent the request to the leader: the leader's reply.
    Forwarded(tonic::Response<T>),
}

/// Proposes `command` (already validated) for `caller` here if this node
/// leads, else forwards the whole request to the leader with `send`. A
/// PERMISSION_DENIED from the state machine for a command the audit trail
/// does not record by itself is recorded as a refusal.
pub async fn propose<T, F, Fut>(
    ctx: &NodeCtx,
    caller: &Caller,
    metadata: &MetadataMap,
    command: Command,
    send: F,
) -> Result<Proposed<T>, Status>
where
    F: FnOnce(Channel, MetadataMap) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let audited = interlock_core::audit::is_audited(&caller.identity, &command);
    let action = if audited { String::new() } else { command.to_string() };
    match ctx.propose_by(&caller.identity, command).await {
        Ok(response) => Ok(Proposed::Here(response)),
        Err(ProposeError::NotLeader(hint)) => Ok(Proposed::Forwarded(forward(ctx, metadata, &hint, send).await?)),
        Err(ProposeError::Status(status)) => {
            if status.code() == tonic::Code::PermissionDenied && !audited {
                ctx.auth.record_refusal(&caller.identity, &action, status.message());
            }
            Err(status)
        }
    }
}

/// Proposes `command` for `caller` on this node, which must lead (the
/// request was routed here by [`on_leader`] or [`linearizable`]).
pub async fn propose_here(ctx: &NodeCtx, caller: &Caller, command: Command) -> Result<Response, Status> {
    match ctx.propose_by(&caller.identity, command).await {
        Ok(response) => Ok(response),
        Err(ProposeError::NotLeader(hint)) => Err(ctx.no_leader_status(&hint)),
        Err(ProposeError::Status(status)) => Err(status),
    }
}

/// How long a request for approval stays open by default.
pub const APPROVAL_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A dangerous action (SPEC §9) asked for by `caller`, on the leader: in
/// two-person mode it is stored for a second operator and the answer is
/// its approval id (`Some`); in single-operator mode `None` — carry it out.
pub async fn ask_approval(ctx: &NodeCtx, caller: &Caller, action: Action, reason: &str) -> Result<Option<u64>, Status> {
    if !ctx.auth.two_person {
        return Ok(None);
    }
    if !caller.is_operator() {
        return Err(auth::deny(
            &ctx.auth,
            caller,
            &action.to_string(),
            format!("{} is not an operator", caller.identity),
        ));
    }
    let request = Command::RequestApproval {
        action,
        reason: if reason.is_empty() { "operator".to_string() } else { reason.to_string() },
        ttl_ms: APPROVAL_TTL.as_millis() as u64,
    };
    request.validate().map_err(invalid)?;
    Ok(Some(revision_of(&propose_here(ctx, caller, request).await?)))
}

/// The message of an action waiting for approval `id`.
pub fn awaiting_approval(id: u64, what: &str) -> String {
    format!(
        "{what} waits for a second operator: approval {id} (`interlockctl approve {id}`, `interlockctl get approvals`)"
    )
}

/// For requests that must run on the leader (they read its soft state):
/// `Some(reply)` from the leader if this node does not lead, `None` to serve
/// here.
pub async fn on_leader<T, F, Fut>(
    ctx: &NodeCtx,
    metadata: &MetadataMap,
    send: F,
) -> Result<Option<tonic::Response<T>>, Status>
where
    F: FnOnce(Channel, MetadataMap) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    if ctx.is_leader() {
        return Ok(None);
    }
    Ok(Some(forward(ctx, metadata, &ctx.leader_hint(), send).await?))
}

/// For linearizable reads: `None` once this node has confirmed its
/// leadership with a quorum (and applied up to the read index), so the read
/// is served here; `Some(reply)` from the leader otherwise.
pub async fn linearizable<T, F, Fut>(
    ctx: &NodeCtx,
    metadata: &MetadataMap,
    send: F,
) -> Result<Option<tonic::Response<T>>, Status>
where
    F: FnOnce(Channel, MetadataMap) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    match ctx.read_barrier().await? {
        None => Ok(None),
        Some(hint) => Ok(Some(forward(ctx, metadata, &hint, send).await?)),
    }
}
