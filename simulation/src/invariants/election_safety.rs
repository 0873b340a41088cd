//! Raft safety as openraft 0.9 keeps it. A leader is identified by
//! (term, node id) (openraft's default leader-id mode, without
//! `single-term-leader`), so one term can have two leaders when elections
//! race — seen under the lossy WAN's jitter and stalls, in either order of
//! node ids (a grant given before a higher candidate's request can arrive
//! after that candidate won). What must hold, and what SPEC §3's fencing
//! tokens (log indexes) rest on, is that every log index is committed under
//! one leader id only: every node that applies index i applies the entry
//! that the same leader wrote. The observer samples each node's last
//! applied log id whenever its metrics change.

use crate::history::History;

pub fn check(history: &History) -> Vec<String> {
    history.applied_conflicts.iter().map(|c| format!("state machine safety: {c}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_of_one_term_are_fine_while_each_index_has_one_writer() {
        let mut history = History::default();
        history.elected(1, 3);
        history.elected(1, 2);
        history.applied(1, 5, (1, 3));
        history.applied(2, 5, (1, 3));
        history.applied(3, 6, (1, 3));
        assert!(check(&history).is_empty());
    }

    #[test]
    fn an_index_applied_under_two_leaders_is_caught() {
        let mut history = History::default();
        history.applied(1, 5, (1, 3));
        history.applied(2, 5, (1, 2));
        let violations = check(&history);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("index 5 applied by n2"), "{violations:?}");
    }
}
