//! Durability: no write the SDK acknowledged is lost, across crashes,
//! restarts, partitions and leader changes.

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    let mut violations: Vec<String> =
        history.missing_writes.iter().map(|k| format!("acknowledged write {k} is missing after healing")).collect();
    if !history.verified && !history.acked_writes.is_empty() {
        violations.push("acknowledged writes could not be read back after healing".to_string());
    }
    violations
}
