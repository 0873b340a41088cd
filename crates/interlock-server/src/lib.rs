//! interlockd: the coordinator node. The folders are its roles:
//!
//! - [`raft`]: the Raft edge — the transport over gRPC ([`raft::network`]),
//!   reused channels to peers ([`raft::channels`]), and proposal batching
//!   ([`raft::proposer`]).
//! - [`api`]: the public gRPC services, one module each ([`api::kv`],
//!   [`api::cluster`], [`api::controller`], [`api::admin`]) and the
//!   resumable watch streams ([`api::watch`]); [`api`] itself holds the one
//!   way to forward a request to the leader and to map refusals to statuses.
//! - [`control`]: the leader's control loops, one module each — lease
//!   expiry and keepalive batching ([`control::leases`]), the failure
//!   detector's records ([`control::liveness`]) and the failover loop
//!   ([`control::failover`]), drain stepping ([`control::drains`]), routing
//!   acknowledgements ([`control::routing_acks`]). Backup scheduling and
//!   runbook execution will be loops here too.
//! - [`http`]: the admin HTTP port — `/livez`, `/readyz`, `/metrics`
//!   ([`http::metrics`]); the dashboard will be served here.
//! - [`node`]: assembly and lifecycle of a running node ([`node::Node`]),
//!   its configuration ([`node::config`]), the data directory's identity
//!   record, gRPC health, and `interlockd dev` ([`node::dev`]).
//! - [`ctx`]: what every role shares: the Raft handle, the applied state,
//!   the clock, proposing a command and finding the leader.
//!
//! The decisions themselves (which region is lost, whom to promote, whether
//! a switchover may start) are in `interlock-core`; this crate observes,
//! proposes and serves.

pub mod api;
pub mod control;
pub mod ctx;
pub mod http;
pub mod node;
pub mod raft;
