//! Lease grants, releases and revokes on the state, and the rules that keep
//! one lease with one holder (SPEC §3):
//! - a lease is bound to the identity that took it (`Lease::owner`): only
//!   that identity renews it or releases it early;
//! - anyone else's revoke only makes it non-renewable; the key is freed when
//!   the leader's deadline passes, as by expiry, so a holder cut off from
//!   the coordinator stops (by its own deadline) before anyone else starts;
//! - a shard's primary lease is taken only by the shard's primary, through
//!   the identity of the controller that runs it, and is renewable only
//!   while its holder is still the primary.

use crate::model::Lease;
use crate::state::{Effects, State};
use crate::vocab::{shard_of_primary_lease, Refusal, Response, RevokeReason, SYSTEM};

pub(crate) fn grant(state: &mut State, key: &str, holder: &str, ttl_ms: u64, by: &str, fx: &mut Effects) -> Response {
    if let Some(refusal) = primary_lease_grant_refusal(state, key, holder, by) {
        return refusal;
    }
    if let Some(lease) = state.leases.get(key) {
        if lease.holder == holder && lease.owner == by && !lease.revoked {
            return Response::Lease { token: lease.token, ttl_ms: lease.ttl_ms };
        }
        let why = if lease.revoked { "; it was revoked and is freed when its deadline passes" } else { "" };
        return Response::refused(
            Refusal::FailedPrecondition,
            format!("lease {key} is held by {} as {} (token {}){why}", lease.holder, lease.owner, lease.token),
        );
    }
    let token = super::next_token(state, fx);
    let lease = Lease {
        key: key.to_string(),
        holder: holder.to_string(),
        ttl_ms,
        token,
        granted_at_unix_ms: fx.at_unix_ms,
        owner: by.to_string(),
        revoked: false,
    };
    state.leases.insert(key.to_string(), lease);
    fx.event("lease.granted", key, format!("to {holder} ({by}) for {ttl_ms} ms, token {token}"));
    Response::Lease { token, ttl_ms }
}

pub(crate) fn revoke(
    state: &mut State,
    key: &str,
    token: Option<u64>,
    reason: RevokeReason,
    by: &str,
    fx: &mut Effects,
) -> Response {
    let Some(lease) = state.leases.get(key) else {
        return Response::refused(Refusal::NotFound, format!("lease {key} is not held"));
    };
    if let Some(token) = token.filter(|t| *t != lease.token) {
        return Response::refused(
            Refusal::FailedPrecondition,
            format!("lease {key} now has token {} (not {token})", lease.token),
        );
    }
    let held = format!("held by {} as {} with token {}", lease.holder, lease.owner, lease.token);
    match reason {
        RevokeReason::Expired if by != SYSTEM => Response::refused(
            Refusal::PermissionDenied,
            format!("lease {key}: only the coordinator expires a lease; {by} may release or revoke it"),
        ),
        RevokeReason::Released if by != lease.owner && by != SYSTEM => Response::refused(
            Refusal::PermissionDenied,
            format!("lease {key} is {held}; only its holder may release it (anyone else revokes it)"),
        ),
        RevokeReason::Revoked => {
            if lease.revoked {
                return Response::Applied { revision: fx.index };
            }
            fx.event(
                "lease.revoked",
                key,
                format!("revoked by {by}; {held}; no longer renewable, freed when its deadline passes"),
            );
            if let Some(lease) = state.leases.get_mut(key) {
                lease.revoked = true;
            }
            Response::Applied { revision: fx.index }
        }
        RevokeReason::Released | RevokeReason::Expired => {
            let (kind, why) = match reason {
                RevokeReason::Expired => {
                    ("lease.expired", "expired: no keepalive confirmed within the TTL".to_string())
                }
                _ => ("lease.released", format!("released by its holder {by}")),
            };
            fx.event(kind, key, format!("{why}; {held}"));
            note_primary_lease_gone(state, key, reason, fx);
            state.leases.remove(key);
            Response::Applied { revision: fx.index }
        }
    }
}

/// Whether a keepalive for (`key`, `token`) from `by` may renew the lease:
/// it exists with that token, `by` is its owner, nobody revoked it, and —
/// for a shard's primary lease — its holder is still that shard's primary
/// (a demoted or fenced primary's lease runs out on its own).
pub fn renewable(state: &State, key: &str, token: u64, by: &str) -> bool {
    let Some(lease) = state.leases.get(key).filter(|l| l.token == token) else { return false };
    if lease.revoked || lease.owner != by {
        return false;
    }
    match shard_of_primary_lease(key) {
        Some(shard) => state.shards.get(shard).and_then(|s| s.primary.as_deref()) == Some(lease.holder.as_str()),
        None => true,
    }
}

/// The refusal for a grant of a primary lease to anyone but the shard's
/// primary, taken through the identity of the controller that runs it (it
/// re-acquires its lease after it ran out; nobody else may).
fn primary_lease_grant_refusal(state: &State, key: &str, holder: &str, by: &str) -> Option<Response> {
    let shard_key = shard_of_primary_lease(key)?;
    let primary = state.shards.get(shard_key).and_then(|s| s.primary.as_deref());
    let refuse = |why: String| Some(Response::refused(Refusal::FailedPrecondition, format!("key: {key} {why}")));
    if primary != Some(holder) {
        return refuse(format!(
            "is the primary lease of shard {shard_key}; only its primary ({}) may acquire it",
            primary.unwrap_or("none")
        ));
    }
    match state.controller_identity(holder) {
        Some(identity) if identity != by && by != SYSTEM => Some(Response::refused(
            Refusal::PermissionDenied,
            format!("key: {key}: {holder} is run by {identity}; {by} may not take its primary lease"),
        )),
        None if by != SYSTEM => refuse(format!("cannot be taken: no controller runs {holder}")),
        _ => None,
    }
}

/// Records that a shard's primary lost its lease (it fenced itself).
fn note_primary_lease_gone(state: &State, key: &str, reason: RevokeReason, fx: &mut Effects) {
    if let (Some(shard), RevokeReason::Expired) = (shard_of_primary_lease(key), reason) {
        if let Some(primary) = state.shards.get(shard).and_then(|s| s.primary.as_deref()) {
            fx.event("shard.primary_lease_expired", shard, format!("{primary} no longer holds the primary lease"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Request};

    fn req(command: Command) -> Request {
        Request::system(5, command)
    }

    #[test]
    fn lease_tokens_are_log_indexes_and_a_held_key_is_refused() {
        let mut state = State::default();
        let grant = |holder: &str| req(Command::LeaseGrant { key: "k".into(), holder: holder.into(), ttl_ms: 1000 });
        assert_eq!(state.apply(10, &grant("a")), Response::Lease { token: 10, ttl_ms: 1000 });
        assert_eq!(
            state.apply(11, &grant("a")),
            Response::Lease { token: 10, ttl_ms: 1000 },
            "idempotent for its holder"
        );
        assert!(matches!(state.apply(12, &grant("b")), Response::Refused { code: Refusal::FailedPrecondition, .. }));
        let stale = req(Command::LeaseRevoke { key: "k".into(), token: Some(9), reason: RevokeReason::Expired });
        assert!(
            matches!(state.apply(13, &stale), Response::Refused { .. }),
            "a stale expiry cannot free a newer grant"
        );
        let expire = req(Command::LeaseRevoke { key: "k".into(), token: Some(10), reason: RevokeReason::Expired });
        assert_eq!(state.apply(14, &expire), Response::Applied { revision: 14 });
        assert_eq!(state.apply(15, &grant("b")), Response::Lease { token: 15, ttl_ms: 1000 });
        let kinds: Vec<&str> = state.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["lease.granted", "lease.expired", "lease.granted"]);
        assert_eq!(state.events_after(10).count(), 2);
        assert_eq!(state.events_evicted_through, 0);
    }

    fn by(who: &str, command: Command) -> Request {
        Request::by(5, who, command)
    }

    fn revoke(reason: RevokeReason) -> Command {
        Command::LeaseRevoke { key: "k".into(), token: None, reason }
    }

    #[test]
    fn only_the_holder_frees_a_lease_early_and_anyone_elses_revoke_waits_for_the_deadline() {
        let mut state = State::default();
        let grant = Command::LeaseGrant { key: "k".into(), holder: "lock-a".into(), ttl_ms: 1000 };
        assert_eq!(state.apply(1, &by("ctl-a", grant.clone())), Response::Lease { token: 1, ttl_ms: 1000 });
        assert!(renewable(&state, "k", 1, "ctl-a"));
        assert!(!renewable(&state, "k", 1, "ctl-b"), "a lease is renewed only by the identity that took it");
        // Another identity cannot take it, nor release it, nor expire it.
        assert!(matches!(state.apply(2, &by("ctl-b", grant.clone())), Response::Refused { .. }));
        let release = state.apply(3, &by("ctl-b", revoke(RevokeReason::Released)));
        assert!(matches!(release, Response::Refused { code: Refusal::PermissionDenied, .. }), "{release:?}");
        let expire = state.apply(4, &by("ctl-b", revoke(RevokeReason::Expired)));
        assert!(matches!(expire, Response::Refused { code: Refusal::PermissionDenied, .. }), "{expire:?}");
        // An operator's revoke: still held, no longer renewable.
        assert_eq!(state.apply(5, &by("alice", revoke(RevokeReason::Revoked))), Response::Applied { revision: 5 });
        assert!(state.leases.contains_key("k"), "a revoke does not free the key");
        assert!(!renewable(&state, "k", 1, "ctl-a"), "a revoked lease is not renewable");
        assert!(matches!(state.apply(6, &by("ctl-a", grant.clone())), Response::Refused { .. }), "nor re-granted");
        // The coordinator's expiry frees it; then anyone may take the key.
        assert_eq!(
            state.apply(7, &Request::system(5, revoke(RevokeReason::Expired))),
            Response::Applied { revision: 7 }
        );
        let regrant = Command::LeaseGrant { key: "k".into(), holder: "lock-b".into(), ttl_ms: 1000 };
        assert_eq!(state.apply(8, &by("ctl-b", regrant)), Response::Lease { token: 8, ttl_ms: 1000 });
        // Its holder releases it: freed at once.
        assert_eq!(state.apply(9, &by("ctl-b", revoke(RevokeReason::Released))), Response::Applied { revision: 9 });
        assert!(state.leases.is_empty());
        let kinds: Vec<&str> = state.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["lease.granted", "lease.revoked", "lease.expired", "lease.granted", "lease.released"]);
    }
}
