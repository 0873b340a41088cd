//! SPEC §3: fencing tokens only increase, and a store that checks them never
//! accepts an older token after a newer one — so no holder that still
//! believes it holds the lease is ever refused by the store. And a token is
//! handed out once: no two grants or promotions (of any keys) share one, so
//! a store that fences several keys by one highest token stays correct when
//! many promotions share a log entry.

use crate::history::History;
use interlock_core::vocab::primary_lease_key;
use std::collections::BTreeMap;

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
    // token -> the (key, holder) it was handed to.
    let mut handed: BTreeMap<u64, (String, &str)> = BTreeMap::new();
    let granted = history.beliefs.iter().map(|b| (b.token, b.key.clone(), b.holder.as_str()));
    let promoted = history.acting.iter().map(|a| (a.token, primary_lease_key(&a.shard), a.replica.as_str()));
    for (token, key, holder) in granted.chain(promoted) {
        match handed.get(&token) {
            Some((k, h)) if (k, *h) != (&key, holder) => violations
                .push(format!("fencing: token {token} was handed both to {h} for {k} and to {holder} for {key}")),
            Some(_) => {}
            None => {
                handed.insert(token, (key, holder));
            }
        }
    }
    for (at, token, holder) in &history.fenced.rejected_while_believing {
        violations.push(format!(
            "fencing: {holder} believed it held the lease with token {token} at {at} ms, but a newer token had written"
        ));
    }
    violations
}
