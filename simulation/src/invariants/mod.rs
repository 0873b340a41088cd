//! The invariants, one per file, each naming the SPEC guarantee it checks.
//! Each takes the run's [`History`] and returns its violations as sentences.

mod acknowledged_writes;
mod backups;
mod election_safety;
mod fencing;
mod lease_exclusivity;
mod liveness;
mod primaries;
mod region_loss;
mod routing;
mod runbooks;

pub use region_loss::{failover_times, FALSE_DECLARATION};
pub use routing::converged as routing_converged;

use crate::history::History;

/// Every invariant's violations for one run.
pub fn check_all(history: &History, liveness_bound_ms: u64) -> Vec<String> {
    let mut violations = Vec::new();
    violations.extend(election_safety::check(history));
    violations.extend(lease_exclusivity::check(history));
    violations.extend(fencing::check(history));
    violations.extend(acknowledged_writes::check(history));
    violations.extend(liveness::check(history, liveness_bound_ms));
    violations.extend(primaries::check(history));
    violations.extend(region_loss::check(history));
    violations.extend(routing::check(history));
    violations.extend(backups::check(history));
    violations.extend(runbooks::check(history));
    violations
}
