//! SPEC §3: fencing tokens only increase, and a store that checks them never
//! accepts an older token after a newer one — so no holder that still
//! believes it holds the lease is ever refused by the store.

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let mut grants: Vec<(u64, u64)> = history.beliefs.iter().map(|b| (b.from_ms, b.token)).collect();
    grants.sort();
    for pair in grants.windows(2) {
        if pair[1].1 < pair[0].1 {
            violations.push(format!(
                "fencing: token {} granted at {} ms after token {} at {} ms",
                pair[1].1, pair[1].0, pair[0].1, pair[0].0
            ));
        }
    }
    for (at, token, holder) in &history.fenced.rejected_while_believing {
        violations.push(format!(
            "fencing: {holder} believed it held the lease with token {token} at {at} ms, but a newer token had written"
        ));
    }
    violations
}
