//! Interlock's core: the domain types and the deterministic state machine.
//!
//! Map of the crate:
//! - [`command`]: what can be proposed to the Raft log ([`Request`], [`Command`])
//!   and what applying it answers ([`Response`]), with input validation.
//! - [`state`]: [`State`], the replicated state, and its pure `apply`.
//! - [`codec`]: the versioned binary encoding used for everything persisted.
//! - [`node`]: the node descriptor stored in the Raft membership.
//! - [`topology`]: the declared topology and its validation.
//! - [`lease`]: leases, the leader's deadline table, the holder's deadline.
//! - [`failover`]: region loss, promotion, switchover, fencing (state transitions).
//! - [`detector`]: the phi-accrual failure detector for controllers.
//! - [`routing`]: routing weights, their shaping by region state, the safety rules.
//! - [`planner`]: what the leader's failover loop should propose next, as a
//!   pure function of the state and its observations.
//!
//! Architecture invariant: nothing in this crate performs IO, reads a clock,
//! spawns a task or draws a random number. Time reaches the state machine as
//! the proposing leader's wall clock inside each [`Request`]. `clippy.toml`
//! forbids `Instant::now`/`SystemTime::now` here.

pub mod codec;
pub mod command;
pub mod detector;
pub mod failover;
pub mod lease;
pub mod node;
pub mod planner;
pub mod routing;
mod routing_state;
pub mod state;
pub mod topology;

pub use command::{Command, InvalidArgument, Refusal, Request, Response};
pub use lease::{Lease, LeaseDeadlines, RevokeReason};
pub use node::NodeInfo;
pub use state::State;
pub use topology::Topology;

/// Identifier of a coordinator node (a Raft member). Never reused.
pub type NodeId = u64;
