//! Leases with fencing tokens (SPEC §3): grants and revokes, the leader's
//! deadline table, and the holder's deadline arithmetic. The replicated
//! record is [`crate::model::Lease`].
//!
//! The three pieces and why they are safe together:
//! - A grant goes through Raft; its token is the grant's log index — or,
//!   when an earlier grant or promotion of the same entry took that index,
//!   one more than the last token handed out ([`next_token`]). So tokens
//!   strictly increase in log order and no two grants share one, across
//!   keys, leader changes, restarts and commands that share an entry.
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

mod apply;
mod deadlines;

pub use apply::renewable;
pub(crate) use apply::{grant, revoke};
pub use deadlines::LeaseDeadlines;

use crate::state::{Effects, State};
use crate::vocab::InvalidArgument;
use std::cell::Cell;

/// The fencing token of a grant or promotion applied at `fx.index`: the
/// index itself, unless a command earlier in the same entry (a
/// [`crate::Command::Batch`]) already took it, or the one after the last
/// token handed out. Strictly greater than every earlier token, and equal
/// to the index whenever no entry shared its tokens before.
pub(crate) fn next_token(state: &mut State, fx: &Effects) -> u64 {
    let token =
        if SHARED_ENTRY_TOKEN_IS_THE_INDEX.get() { fx.index } else { fx.index.max(state.last_token.saturating_add(1)) };
    state.last_token = state.last_token.max(token);
    token
}

thread_local! {
    static SHARED_ENTRY_TOKEN_IS_THE_INDEX: Cell<bool> = const { Cell::new(false) };
}

/// A deliberate bug for the simulation (never set in production): every
/// grant and promotion in an entry takes the entry's index as its token, as
/// tokens were before entries were shared — so two promotions applied
/// together hold the same token. Per thread: the simulation runs a whole
/// cluster on its one thread.
#[doc(hidden)]
pub fn mutate_shared_entry_token(on: bool) {
    SHARED_ENTRY_TOKEN_IS_THE_INDEX.set(on);
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
