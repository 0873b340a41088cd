//! SPEC §5: effective weights always sum to 10 000 and a LOST region has
//! none (checked on every table the observer read); after healing, every
//! controller applied the current version of every table (convergence).

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    history.routing_violations.iter().map(|v| format!("routing: {v}")).collect()
}

/// Every controller's applied routing against the last versions read.
pub fn converged(history: &History, applied: &[(String, std::collections::BTreeMap<String, u64>)]) -> Vec<String> {
    let mut violations = Vec::new();
    for (service, version) in &history.routing_versions {
        for (controller, versions) in applied {
            let got = versions.get(service).copied();
            if got != Some(*version) {
                violations.push(format!(
                    "routing: {controller} applied {got:?} of {service} at the end, the current version is {version}"
                ));
            }
        }
    }
    violations
}
