//! SPEC §4 and §11: a region is declared LOST only when it really is cut off
//! (crashed or isolated from the other regions) — never for a partial
//! partition, a coordinator-only loss of contact, a slow link or a leader
//! change; and no promotion goes beyond the RPO bound.

use crate::controllers::MAX_LAG;
use crate::history::History;
use crate::world::REGIONS;

/// A declaration may be seen this long after its cut healed (detection,
/// commit and the observer's watch all take time).
pub const DECLARATION_SLACK_MS: u64 = 10_000;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    for (at, r) in &history.lost_declared {
        let explained =
            history.cuts.iter().any(|c| c.region == *r && c.from_ms <= *at && *at <= c.until_ms + DECLARATION_SLACK_MS);
        if !explained {
            violations
                .push(format!("false region loss: {} declared LOST at {at} ms while it was not cut off", REGIONS[*r]));
        }
    }
    // RPO: a primary that takes over a shard from a cut-off region starts at
    // most MAX_LAG behind what the old primary had written when the cut began.
    for cut in &history.cuts {
        for (old, shard, written) in &cut.primaries {
            let next = history
                .acting
                .iter()
                .filter(|a| a.shard == *shard && a.replica != *old && a.from_ms >= cut.from_ms)
                .min_by_key(|a| a.from_ms);
            if let Some(next) = next {
                if next.position + MAX_LAG < *written {
                    violations.push(format!(
                        "RPO: {} took over {shard} at position {} at {} ms; {old} had written {written} when {} was cut off at {} ms (bound {MAX_LAG})",
                        next.replica, next.position, next.from_ms, REGIONS[cut.region], cut.from_ms
                    ));
                }
            }
        }
    }
    violations
}

/// For each cut of a region that held primaries: how long until every one
/// of those shards had a primary acting in another region (None: the cut
/// ended first).
pub fn failover_times(history: &History) -> Vec<Option<u64>> {
    history
        .cuts
        .iter()
        .filter(|c| !c.primaries.is_empty())
        .map(|cut| {
            let mut latest = 0;
            for (_, shard, _) in &cut.primaries {
                let next = history
                    .acting
                    .iter()
                    .filter(|a| a.shard == *shard && a.region != cut.region && a.from_ms >= cut.from_ms)
                    .map(|a| a.from_ms)
                    .min()
                    .filter(|at| *at <= cut.until_ms)?;
                latest = latest.max(next - cut.from_ms);
            }
            Some(latest)
        })
        .collect()
}
