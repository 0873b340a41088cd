//! What the leader observes about controllers (soft state, this term only):
//! the failure detector's verdict, witness reports and replica positions.
//! The planner and the operator policies read the same [`Observations`].

use crate::state::State;
use std::collections::BTreeMap;

/// What a controller last said about one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaReport {
    pub position: u64,
    pub lag: u64,
    pub healthy: bool,
}

/// What the leader knows about one controller (soft state, this term only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerView {
    /// The detector's verdict now.
    pub suspected: bool,
    /// Since when (monotonic ms) it has been heard without being suspected.
    pub alive_since_ms: Option<u64>,
    /// Its last witness report: the other regions it can reach.
    pub reachable_regions: Vec<String>,
    /// Its last report per replica (kept while it is suspected).
    pub replicas: BTreeMap<String, ReplicaReport>,
}

/// The leader's observations at one instant.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Monotonic clock of the leader.
    pub now_ms: u64,
    /// Wall clock of the leader (compared with times recorded in the state).
    pub now_unix_ms: u64,
    /// When this node became leader (monotonic).
    pub leader_since_ms: u64,
    /// By controller id; a controller not heard this term is absent.
    pub controllers: BTreeMap<String, ControllerView>,
}

impl Observations {
    /// Whether the leader is still in its grace period after election.
    pub fn in_grace(&self, state: &State) -> bool {
        self.now_ms.saturating_sub(self.leader_since_ms) < state.topology.failover.grace_ms
    }

    /// Whether `controller` is suspected; one never heard this term is, once
    /// the grace period is over.
    pub fn suspected(&self, state: &State, controller: &str) -> bool {
        match self.controllers.get(controller) {
            Some(view) => view.suspected,
            None => !self.in_grace(state),
        }
    }

    /// The last report of `replica` from the controller that runs it.
    pub fn report(&self, state: &State, replica: &str) -> Option<ReplicaReport> {
        let controller = state.replicas.get(replica)?.controller.as_deref()?;
        self.controllers.get(controller)?.replicas.get(replica).copied()
    }
}
