//! SPEC §11: "two primaries in one epoch: 0, ever" — and, stronger, never two
//! replicas of one shard acting as primary at the same instant of true time.

use crate::history::History;
use std::collections::BTreeMap;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_epoch: BTreeMap<(&str, u64), &str> = BTreeMap::new();
    for a in &history.acting {
        if let Some(other) = by_epoch.insert((&a.shard, a.epoch), &a.replica).filter(|o| *o != a.replica) {
            violations.push(format!(
                "primaries: {} and {} both acted as primary of {} in epoch {}",
                other, a.replica, a.shard, a.epoch
            ));
        }
    }
    for (i, a) in history.acting.iter().enumerate() {
        for b in &history.acting[i + 1..] {
            if a.shard != b.shard || (a.replica == b.replica && a.token == b.token) {
                continue;
            }
            let (a_end, b_end) = (a.until_ms.unwrap_or(u64::MAX), b.until_ms.unwrap_or(u64::MAX));
            if a.from_ms < b_end && b.from_ms < a_end {
                violations.push(format!(
                    "primaries: {} (epoch {}, {}..{:?} ms) and {} (epoch {}, {}..{:?} ms) acted as primary of {} at once",
                    a.replica, a.epoch, a.from_ms, a.until_ms, b.replica, b.epoch, b.from_ms, b.until_ms, a.shard
                ));
            }
        }
    }
    violations
}
