//! Raft election safety: at most one leader per term. (SPEC §3 rests on it:
//! fencing tokens are log indexes, which only one leader per term assigns.)

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    history
        .leaders_by_term
        .iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(term, leaders)| format!("election safety: term {term} had leaders {leaders:?}"))
        .collect()
}
