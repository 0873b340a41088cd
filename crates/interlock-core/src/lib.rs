//! Interlock's core: the data model, the deterministic state machine and
//! every decision the coordinator makes, as pure code.
//!
//! Map of the crate, in layers (a module uses only modules above it):
//! - [`vocab`]: identifiers and their checks, errors ([`InvalidArgument`],
//!   [`Refusal`]), the state machine's [`Response`], plain enums. Imports
//!   nothing from the crate.
//! - [`codec`]: the versioned binary encoding of everything persisted.
//! - [`node`]: the node descriptor stored in the Raft membership.
//! - [`model`]: the records of SPEC §2 and the declared topology (data only).
//! - [`state`]: [`State`], every record in one value, with its invariants.
//! - capabilities, each with its rules and its transitions on the state:
//!   - [`kv`]: the key-value space;
//!   - [`topology`]: validation, diff and apply of the declared topology,
//!     controller registration;
//!   - [`lease`]: grants, revokes, the primary-lease rules, the leader's
//!     deadline table and the holder's deadline;
//!   - [`routing`]: routing arithmetic, the named safety rules, drains;
//!   - [`failover`]: the failure detector, the planner of the leader's
//!     failover loop, the operator policies (lag, RPO, candidate ranking,
//!     switchover preconditions) and the promotion transitions;
//!   - [`approval`]: two-person approval of dangerous actions;
//!   - [`audit`]: the hash-chained audit trail and its verification;
//!   - [`backup`]: the backup catalogue, the restore tests the leader
//!     schedules in another region, tracking against RPO/RTO targets;
//!   - [`runbook`]: disaster-recovery runbooks, their durable executions
//!     (live or drill), the planner of the leader's runbook loop, reports.
//! - [`command`]: what can be proposed to the Raft log ([`Request`],
//!   [`Command`]), with input validation.
//! - [`changes`]: which shards an applied command touched, and a short
//!   history of it, for watchers that resend only what changed.
//! - `apply`: [`State::apply`], the thin dispatcher from command to capability.
//!
//! Architecture invariant: nothing in this crate performs IO, reads a clock,
//! spawns a task or draws a random number. Time reaches the state machine as
//! the proposing leader's wall clock inside each [`Request`]. `clippy.toml`
//! forbids `Instant::now`/`SystemTime::now` here. `tests/layers.rs` checks
//! that the modules import each other without a cycle.

mod apply;
pub mod approval;
pub mod audit;
pub mod backup;
pub mod changes;
pub mod codec;
pub mod command;
pub mod failover;
pub mod kv;
pub mod lease;
pub mod model;
pub mod node;
pub mod routing;
pub mod runbook;
pub mod state;
pub mod topology;
pub mod vocab;

pub use command::{Command, Request};
pub use lease::LeaseDeadlines;
pub use model::{Lease, Topology};
pub use node::NodeInfo;
pub use state::State;
pub use vocab::{InvalidArgument, NodeId, Refusal, Response, RevokeReason};
