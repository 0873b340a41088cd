//! SPEC §3 and §11: "at no instant do two holders both believe, by these
//! rules, that they hold the same lease" — checked against true simulated
//! time while every host's clock drifts.

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let beliefs = &history.beliefs;
    for (i, a) in beliefs.iter().enumerate() {
        for b in &beliefs[i + 1..] {
            if a.key != b.key || a.token == b.token {
                continue;
            }
            let a_end = a.until_ms.unwrap_or(u64::MAX);
            let b_end = b.until_ms.unwrap_or(u64::MAX);
            if a.from_ms < b_end && b.from_ms < a_end {
                violations.push(format!(
                    "lease exclusivity: {} (token {}, {}..{:?} ms) and {} (token {}, {}..{:?} ms) both held {}",
                    a.holder, a.token, a.from_ms, a.until_ms, b.holder, b.token, b.from_ms, b.until_ms, a.key
                ));
            }
        }
    }
    violations
}
