//! Liveness after healing: once every fault is repaired the cluster elects a
//! leader, accepts writes and grants the lease again within a bound.

use crate::history::History;

pub fn check(history: &History, bound_ms: u64) -> Vec<String> {
    let Some(healed) = history.healed_at_ms else { return vec!["liveness: the run never healed".to_string()] };
    let mut violations = Vec::new();
    match history.write_after_heal_ms {
        Some(at) if at - healed <= bound_ms => {}
        other => {
            violations.push(format!("liveness: no write acknowledged within {bound_ms} ms of healing ({other:?})"))
        }
    }
    // The lease is held by someone at some instant within the bound.
    let held_at = history
        .beliefs
        .iter()
        .filter(|b| b.until_ms.is_none_or(|until| until > healed))
        .map(|b| b.from_ms.max(healed))
        .min();
    match held_at {
        Some(at) if at - healed <= bound_ms => {}
        other => {
            violations.push(format!("liveness: nobody held the lease within {bound_ms} ms of healing ({other:?})"))
        }
    }
    // Every shard has a primary acting at some instant within the bound.
    for k in 0..crate::controllers::SHARDS {
        let shard = crate::controllers::shard_name(k);
        let acting_at = history
            .acting
            .iter()
            .filter(|a| a.shard == shard && a.until_ms.is_none_or(|until| until > healed))
            .map(|a| a.from_ms.max(healed))
            .min();
        match acting_at {
            Some(at) if at - healed <= bound_ms => {}
            other => violations
                .push(format!("liveness: no primary of {shard} acted within {bound_ms} ms of healing ({other:?})")),
        }
    }
    violations
}
