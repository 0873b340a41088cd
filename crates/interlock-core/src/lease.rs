//! Leases with fencing tokens (SPEC §3): the replicated record, the leader's
//! deadline table, and the holder's deadline arithmetic.
//!
//! The three pieces and why they are safe together:
//! - A grant goes through Raft; its token is the grant's log index, so tokens
//!   only increase, across keys, leader changes and restarts.
//! - The leader keeps each lease's deadline in memory ([`LeaseDeadlines`]),
//!   on its monotonic clock. A keepalive received at `r` moves the deadline to
//!   `r + ttl`, but only after a leadership confirmation that *started after*
//!   `r`. A new leader knows no renewal times, so it gives every lease
//!   `election time + ttl`. Only a committed revoke frees a key.
//! - The holder ([`holder_deadline`]) counts from the *send* time of its last
//!   acknowledged keepalive, shortened for clock drift and a margin. Send time
//!   precedes receive time, and any later leader was elected after the
//!   confirmation round, so the holder always stops first — provided the drift
//!   term covers the holder's and the leader's clock errors together
//!   ([`DEFAULT_DRIFT`]).
//!
//! Everything here takes time as an argument (milliseconds on a monotonic
//! clock for deadlines); nothing reads a clock.

use crate::command::InvalidArgument;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Shortest lease TTL accepted, in milliseconds.
pub const TTL_MIN_MS: u64 = 500;
/// Longest lease TTL accepted, in milliseconds.
pub const TTL_MAX_MS: u64 = 300_000;
/// Longest lease key, in bytes.
pub const LEASE_KEY_MAX_BYTES: usize = 256;
/// Longest holder name, in bytes.
pub const HOLDER_MAX_BYTES: usize = 128;
/// The largest rate error of any one clock that Interlock is designed for.
pub const CLOCK_DRIFT_MAX: f64 = 0.01;
/// The drift term the holder uses by default: 2%, because the holder's clock
/// and the leader's may each be off by [`CLOCK_DRIFT_MAX`] in opposite
/// directions (a holder 1% slow against a leader 1% fast disagree by ~2%).
/// The simulation found the overlap that 1% allows in that case.
pub const DEFAULT_DRIFT: f64 = 2.0 * CLOCK_DRIFT_MAX;

/// A lease as replicated in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub key: String,
    pub holder: String,
    pub ttl_ms: u64,
    /// The log index of the grant: the fencing token.
    pub token: u64,
    /// The proposing leader's wall clock at the grant (for display).
    pub granted_at_unix_ms: u64,
}

/// Why a lease was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The holder (or an operator) asked.
    Requested,
    /// The leader's deadline passed without a renewal.
    Expired,
}

/// Checks a lease key.
pub fn validate_lease_key(key: &str) -> Result<(), InvalidArgument> {
    if key.is_empty() {
        return Err(InvalidArgument::new("key", "must not be empty"));
    }
    if key.len() > LEASE_KEY_MAX_BYTES {
        return Err(InvalidArgument::new("key", format!("is {} bytes; the limit is {LEASE_KEY_MAX_BYTES}", key.len())));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidArgument::new("key", "must not contain whitespace or control characters"));
    }
    Ok(())
}

/// Checks a lease grant's holder and TTL.
pub fn validate_grant(key: &str, holder: &str, ttl_ms: u64) -> Result<(), InvalidArgument> {
    validate_lease_key(key)?;
    if holder.is_empty() || holder.len() > HOLDER_MAX_BYTES || holder.chars().any(char::is_control) {
        return Err(InvalidArgument::new("holder", format!("must be 1-{HOLDER_MAX_BYTES} printable bytes")));
    }
    if !(TTL_MIN_MS..=TTL_MAX_MS).contains(&ttl_ms) {
        return Err(InvalidArgument::new("ttl", format!("{ttl_ms} ms is out of range {TTL_MIN_MS}..={TTL_MAX_MS} ms")));
    }
    Ok(())
}

/// The holder's view: until when it may act on a lease, on its own clock.
///
/// `send_ms` is when the holder sent the last acknowledged keepalive (or the
/// grant). Returns `send_ms + ttl × (1 − drift) − margin`, never before `send_ms`.
pub fn holder_deadline(send_ms: u64, ttl_ms: u64, drift: f64, margin_ms: u64) -> u64 {
    let drift = drift.clamp(0.0, 0.5);
    let usable = (ttl_ms as f64 * (1.0 - drift)).floor() as u64;
    send_ms + usable.saturating_sub(margin_ms)
}

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
        Lease { key: key.into(), holder: "h".into(), ttl_ms, token, granted_at_unix_ms: 0 }
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

    #[test]
    fn the_holder_deadline_subtracts_drift_and_margin() {
        let cases = [
            // (send, ttl, drift, margin) -> deadline
            ((1_000, 10_000, 0.01, 0), 10_900),
            ((1_000, 10_000, 0.01, 100), 10_800),
            ((1_000, 10_000, DEFAULT_DRIFT, 0), 10_800),
            ((1_000, 10_000, 0.0, 0), 11_000),
            ((0, 500, 0.01, 1_000), 0), // a margin beyond the TTL leaves nothing
        ];
        for ((send, ttl, drift, margin), want) in cases {
            assert_eq!(holder_deadline(send, ttl, drift, margin), want, "{send} {ttl} {drift} {margin}");
        }
    }

    #[test]
    fn the_holder_stops_before_the_leader_deadline_whatever_both_clock_rates_within_bounds() {
        let (ttl, margin) = (20_000u64, 0u64);
        let (send, received) = (1_000.0_f64, 1_001.0_f64); // true time
                                                           // A clock's rate is local ms per true ms; each is within ±CLOCK_DRIFT_MAX.
        let rates = [1.0 - CLOCK_DRIFT_MAX, 1.0, 1.0 + CLOCK_DRIFT_MAX];
        for holder_rate in rates {
            for leader_rate in rates {
                let holder_end = send + holder_deadline(0, ttl, DEFAULT_DRIFT, margin) as f64 / holder_rate;
                let leader_end = received + ttl as f64 / leader_rate;
                assert!(holder_end <= leader_end, "holder {holder_rate}, leader {leader_rate}");
            }
        }
        // With only one clock's drift allowed for, a slow holder and a fast
        // leader overlap: the case the simulation found.
        let holder_end = send + holder_deadline(0, ttl, CLOCK_DRIFT_MAX, margin) as f64 / (1.0 - CLOCK_DRIFT_MAX);
        let leader_end = received + ttl as f64 / (1.0 + CLOCK_DRIFT_MAX);
        assert!(holder_end > leader_end);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(validate_grant("", "h", 1000).map_err(|e| e.field), Err("key".into()));
        assert_eq!(validate_grant("k", "", 1000).map_err(|e| e.field), Err("holder".into()));
        assert_eq!(validate_grant("k", "h", 0).map_err(|e| e.field), Err("ttl".into()));
        assert_eq!(validate_grant("k", "h", 10_000_000).map_err(|e| e.field), Err("ttl".into()));
        assert!(validate_grant("shard/orders/0/primary", "ctl-eu", 5_000).is_ok());
    }
}
