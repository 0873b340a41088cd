//! Raft election safety, as openraft 0.9 keeps it. A leader is identified
//! by (term, node id), ordered by term and then by node id (openraft's
//! default leader-id mode, without `single-term-leader`): a voter that has
//! voted for (t, b) refuses (t, a) for every a < b, so within one term a
//! higher node id may win after a lower one (two candidates of one term,
//! the higher asking last), never a lower one after a higher. SPEC §3's
//! fencing tokens are log indexes: each index is committed by one leader
//! id only, which this ordering (with Raft's log matching) guarantees.

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    history
        .leaders_by_term
        .iter()
        .filter(|(_, leaders)| leaders.windows(2).any(|w| w[1] <= w[0]))
        .map(|(term, leaders)| {
            format!("election safety: term {term} elected leaders {leaders:?}, a lower node id after a higher")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(elections: &[(u64, u64)]) -> Vec<String> {
        let mut history = History::default();
        elections.iter().for_each(|(term, id)| history.elected(*term, *id));
        check(&history)
    }

    #[test]
    fn a_higher_node_id_may_win_after_a_lower_one_in_the_same_term() {
        assert!(with(&[(1, 2), (1, 3), (2, 1)]).is_empty());
        // A restarted leader re-establishing its own vote is not an election.
        assert!(with(&[(3, 3), (4, 1), (3, 3)]).is_empty());
    }

    #[test]
    fn a_lower_node_id_winning_after_a_higher_one_is_caught() {
        let violations = with(&[(1, 3), (1, 2)]);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("term 1 elected leaders [3, 2]"), "{violations:?}");
    }
}
