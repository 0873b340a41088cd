//! The leader's deadline table: soft state on its monotonic clock.

use crate::model::Lease;
use std::collections::BTreeMap;

/// The leader's in-memory deadline of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadline {
    token: u64,
    ttl_ms: u64,
    at_ms: u64,
    /// A revoke for this lease was proposed and is in flight.
    revoking: bool,
    /// The [`LeaseDeadlines::sync`] round that last saw the lease replicated.
    seen_in: u64,
}

impl Deadline {
    /// A lease the table did not know: its full TTL from `now_ms`.
    fn fresh(lease: &Lease, now_ms: u64, seen_in: u64) -> Deadline {
        Deadline { token: lease.token, ttl_ms: lease.ttl_ms, at_ms: now_ms + lease.ttl_ms, revoking: false, seen_in }
    }
}

/// The leader's lease deadlines, on its monotonic clock (milliseconds).
///
/// Soft state: it lives only on the leader and is rebuilt, conservatively,
/// by a new leader ([`LeaseDeadlines::sync`] on an empty table).
#[derive(Debug, Default, Clone)]
pub struct LeaseDeadlines {
    deadlines: BTreeMap<String, Deadline>,
    /// Counts [`LeaseDeadlines::sync`] rounds.
    round: u64,
}

impl LeaseDeadlines {
    /// Forgets everything (this node stopped being leader, or just became one).
    pub fn clear(&mut self) {
        self.deadlines.clear();
    }

    /// Brings the table in line with the replicated leases at `now_ms`:
    /// a lease the table does not know (new grant, or a new leader) gets
    /// `now + ttl`; entries for leases that are gone are dropped. In place:
    /// with thousands of leases this runs every expiry tick, so it allocates
    /// only for new leases.
    pub fn sync<'a>(&mut self, leases: impl IntoIterator<Item = &'a Lease>, now_ms: u64) {
        self.round += 1;
        let round = self.round;
        for lease in leases {
            match self.deadlines.get_mut(&lease.key) {
                Some(d) if d.token == lease.token => d.seen_in = round,
                Some(d) => *d = Deadline::fresh(lease, now_ms, round),
                None => {
                    self.deadlines.insert(lease.key.clone(), Deadline::fresh(lease, now_ms, round));
                }
            }
        }
        self.deadlines.retain(|_, d| d.seen_in == round);
    }

    /// [`LeaseDeadlines::sync`] for one key only, whose replicated lease is
    /// `lease` (`None`: there is none): what a grant needs, at O(log n).
    pub fn sync_key(&mut self, key: &str, lease: Option<&Lease>, now_ms: u64) {
        let round = self.round;
        match (lease, self.deadlines.get_mut(key)) {
            (None, Some(_)) => {
                self.deadlines.remove(key);
            }
            (None, None) => {}
            (Some(lease), Some(d)) if d.token == lease.token => {}
            (Some(lease), Some(d)) => *d = Deadline::fresh(lease, now_ms, round),
            (Some(lease), None) => {
                self.deadlines.insert(key.to_string(), Deadline::fresh(lease, now_ms, round));
            }
        }
    }

    /// A keepalive for (`key`, `token`) received at `received_ms`, after a
    /// leadership confirmation that started later. Returns the TTL on
    /// success, `None` if the lease is unknown, has another token, or is
    /// already being revoked.
    pub fn refresh(&mut self, key: &str, token: u64, received_ms: u64) -> Option<u64> {
        let d = self.deadlines.get_mut(key)?;
        if d.token != token || d.revoking {
            return None;
        }
        d.at_ms = d.at_ms.max(received_ms + d.ttl_ms);
        Some(d.ttl_ms)
    }

    /// Leases whose deadline passed at `now_ms` and that are not already
    /// being revoked; they are marked as revoking.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (key, d) in self.deadlines.iter_mut() {
            if !d.revoking && d.at_ms <= now_ms {
                d.revoking = true;
                out.push((key.clone(), d.token));
            }
        }
        out
    }

    /// A revoke proposal failed (e.g. leadership lost): allow a retry.
    pub fn revoke_failed(&mut self, key: &str, token: u64) {
        if let Some(d) = self.deadlines.get_mut(key) {
            if d.token == token {
                d.revoking = false;
            }
        }
    }

    /// Moves every deadline to `at_ms` at the latest. Only the simulation's
    /// deliberate-bug mode uses this (a new leader that does not reset).
    pub fn shorten_all_to(&mut self, at_ms: u64) {
        for d in self.deadlines.values_mut() {
            d.at_ms = d.at_ms.min(at_ms);
        }
    }

    /// Milliseconds left on `key` at `now_ms`, if the table knows it.
    pub fn remaining_ms(&self, key: &str, now_ms: u64) -> Option<u64> {
        self.deadlines.get(key).map(|d| d.at_ms.saturating_sub(now_ms))
    }

    /// The deadline of `key`, if known.
    pub fn deadline_ms(&self, key: &str) -> Option<u64> {
        self.deadlines.get(key).map(|d| d.at_ms)
    }

    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, token: u64, ttl_ms: u64) -> Lease {
        Lease {
            key: key.into(),
            holder: "h".into(),
            ttl_ms,
            token,
            granted_at_unix_ms: 0,
            owner: "h".into(),
            revoked: false,
        }
    }

    #[test]
    fn a_lease_expires_ttl_after_it_is_first_seen() {
        let mut t = LeaseDeadlines::default();
        t.sync([&lease("a", 7, 1000)], 5_000);
        assert_eq!(t.take_expired(5_999), vec![]);
        assert_eq!(t.take_expired(6_000), vec![("a".to_string(), 7)]);
        assert_eq!(t.take_expired(9_000), vec![], "not proposed twice");
        t.revoke_failed("a", 7);
        assert_eq!(t.take_expired(9_000), vec![("a".to_string(), 7)], "retried after a failed revoke");
    }

    #[test]
    fn a_keepalive_extends_from_its_receive_time_and_never_shortens() {
        let mut t = LeaseDeadlines::default();
        t.sync([&lease("a", 7, 1000)], 0);
        assert_eq!(t.refresh("a", 7, 800), Some(1000));
        assert_eq!(t.deadline_ms("a"), Some(1800));
        t.refresh("a", 7, 100); // a late-arriving older keepalive
        assert_eq!(t.deadline_ms("a"), Some(1800));
        assert_eq!(t.refresh("a", 8, 900), None, "a stale token is refused");
        assert_eq!(t.refresh("b", 1, 900), None, "an unknown lease is refused");
    }

    #[test]
    fn a_new_leader_resets_every_deadline_to_its_election_time_plus_ttl() {
        let leases = [lease("a", 3, 2000), lease("b", 4, 500)];
        let mut old = LeaseDeadlines::default();
        old.sync(&leases, 0);
        old.refresh("a", 3, 900);
        // The new leader has no renewal history: an empty table, synced at election.
        let mut new = LeaseDeadlines::default();
        new.sync(&leases, 10_000);
        assert_eq!(new.deadline_ms("a"), Some(12_000));
        assert_eq!(new.deadline_ms("b"), Some(10_500));
    }

    #[test]
    fn sync_keeps_known_deadlines_and_drops_revoked_leases() {
        let mut t = LeaseDeadlines::default();
        t.sync([&lease("a", 3, 1000), &lease("b", 4, 1000)], 0);
        t.refresh("a", 3, 500);
        t.sync([&lease("a", 3, 1000)], 700);
        assert_eq!(t.deadline_ms("a"), Some(1500));
        assert_eq!(t.deadline_ms("b"), None);
        // The key re-granted with a new token: a fresh deadline.
        t.sync([&lease("a", 9, 1000)], 800);
        assert_eq!(t.deadline_ms("a"), Some(1800));
    }

    #[test]
    fn sync_key_does_for_one_key_what_sync_does_for_all() {
        let mut t = LeaseDeadlines::default();
        t.sync([&lease("a", 3, 1000), &lease("b", 4, 1000)], 0);
        t.refresh("a", 3, 500);
        t.sync_key("a", Some(&lease("a", 3, 1000)), 700);
        assert_eq!(t.deadline_ms("a"), Some(1500), "a known lease keeps its deadline");
        t.sync_key("c", Some(&lease("c", 5, 1000)), 700);
        assert_eq!(t.deadline_ms("c"), Some(1700), "a new grant gets its full TTL");
        t.sync_key("a", Some(&lease("a", 9, 1000)), 800);
        assert_eq!(t.deadline_ms("a"), Some(1800), "a re-grant gets a fresh deadline");
        t.sync_key("b", None, 800);
        assert_eq!((t.deadline_ms("b"), t.len()), (None, 2), "a revoked lease is dropped");
        // A key added by sync_key survives the next full sync, if still replicated.
        t.sync([&lease("a", 9, 1000), &lease("c", 5, 1000)], 900);
        assert_eq!((t.deadline_ms("a"), t.deadline_ms("c")), (Some(1800), Some(1700)));
    }
}
