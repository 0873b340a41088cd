//! Region loss and primaries (SPEC §4): the failure detector, the leader's
//! observations, the planner that turns them into commands, the operator
//! policies (lag, RPO, ranking, switchover preconditions), and the state
//! transitions (declare lost, promote, demote, acknowledge, fence).
//!
//! - [`detector`]: phi-accrual, one per controller, time as an input.
//! - [`observations`]: what the leader knows of each controller this term.
//! - [`planner`]: [`plan`], the whole decision of the failover loop.
//! - [`policy`]: the rules operators meet, written once for every caller.
//! - [`readiness`]: how ready a shard is to fail over to a candidate, the
//!   score the planner ranks candidates by.
//! - `apply`: the transitions, dispatched by [`crate::State::apply`].

mod apply;
pub mod detector;
pub mod observations;
pub mod planner;
pub mod policy;
pub mod readiness;
#[cfg(test)]
pub(crate) mod testkit;

pub(crate) use apply::{
    acknowledge, await_operator, change_region_state, declare_region_lost, demote, fence, promote, set_maintenance,
};
pub use observations::{ControllerView, Observations, ReplicaReport};
pub use planner::{plan, Plan};
