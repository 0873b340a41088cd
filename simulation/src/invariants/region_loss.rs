//! SPEC §4 and §11: a region is declared LOST only when it really is cut off
//! (crashed or isolated from the other regions) — never for a partial
//! partition, a coordinator-only loss of contact, a slow link or a leader
//! change; and no promotion goes beyond the RPO bound.

use crate::controllers::MAX_LAG;
use crate::history::{Acting, Cut, History};
use crate::world::REGIONS;

/// How a false declaration's violation begins.
pub const FALSE_DECLARATION: &str = "false region loss";

/// A declaration may be seen this long after its cut healed (detection,
/// commit and the observer's watch all take time).
pub const DECLARATION_SLACK_MS: u64 = 10_000;

/// A dead primary's replacement acts within this of the database's death:
/// the controller's give-up bound (3 s), the lease release, the planner and
/// the promotion, and a shard cooldown (5 s) that may still run.
pub const DEAD_PRIMARY_BOUND_MS: u64 = 12_000;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    for (at, r) in &history.lost_declared {
        let explained =
            history.cuts.iter().any(|c| c.region == *r && c.from_ms <= *at && *at <= c.until_ms + DECLARATION_SLACK_MS);
        if !explained {
            violations.push(format!(
                "{FALSE_DECLARATION}: {} declared LOST at {at} ms while it was not cut off",
                REGIONS[*r]
            ));
        }
    }
    // A primary whose database died while its region lived is replaced
    // within the bound, when the database stays down that long and every
    // other region is ACTIVE (none was declared lost: in the simulation a
    // region that returns stays RECOVERING, whose replicas are no candidates).
    for (down, took) in history.db_downs.iter().zip(failover_times(&history.db_downs, &history.acting)) {
        let candidates = !history.lost_declared.iter().any(|(at, r)| *r != down.region && *at <= down.until_ms);
        let long = down.until_ms - down.from_ms >= DEAD_PRIMARY_BOUND_MS;
        if candidates && long && !down.primaries.is_empty() && took.is_none_or(|t| t > DEAD_PRIMARY_BOUND_MS) {
            violations.push(format!(
                "dead primary: the database of {} died at {} ms and stayed down until {} ms, but its shards {:?} had no \
                 primary elsewhere within {DEAD_PRIMARY_BOUND_MS} ms",
                REGIONS[down.region],
                down.from_ms,
                down.until_ms,
                down.primaries.iter().map(|p| &p.1).collect::<Vec<_>>()
            ));
        }
    }
    // RPO: a primary that takes over a shard from a cut-off region (or a
    // dead database) starts at most MAX_LAG behind what the old primary had
    // written when the cut began.
    for cut in history.cuts.iter().chain(&history.db_downs) {
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

/// For each cut (of a region, or of a database) that held primaries: how
/// long until every one of those shards had a primary acting in another
/// region (None: the cut ended first).
pub fn failover_times(cuts: &[Cut], acting: &[Acting]) -> Vec<Option<u64>> {
    cuts.iter()
        .filter(|c| !c.primaries.is_empty())
        .map(|cut| {
            let mut latest = 0;
            for (_, shard, _) in &cut.primaries {
                let next = acting
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
