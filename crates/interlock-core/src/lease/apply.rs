//! Lease grants and revokes on the state, and the rules for a shard's
//! primary lease: only the shard's primary may take it, and it is renewable
//! only while its holder is still the primary.

use crate::model::Lease;
use crate::state::{Effects, State};
use crate::vocab::{shard_of_primary_lease, Refusal, Response, RevokeReason};

pub(crate) fn grant(state: &mut State, key: &str, holder: &str, ttl_ms: u64, fx: &mut Effects) -> Response {
    if let Some(refusal) = primary_lease_grant_refusal(state, key, holder) {
        return refusal;
    }
    if let Some(lease) = state.leases.get(key) {
        if lease.holder == holder {
            return Response::Lease { token: lease.token, ttl_ms: lease.ttl_ms };
        }
        return Response::refused(
            Refusal::FailedPrecondition,
            format!("lease {key} is held by {} (token {})", lease.holder, lease.token),
        );
    }
    let lease = Lease {
        key: key.to_string(),
        holder: holder.to_string(),
        ttl_ms,
        token: fx.index,
        granted_at_unix_ms: fx.at_unix_ms,
    };
    state.leases.insert(key.to_string(), lease);
    fx.event("lease.granted", key, format!("to {holder} for {ttl_ms} ms, token {}", fx.index));
    Response::Lease { token: fx.index, ttl_ms }
}

pub(crate) fn revoke(
    state: &mut State,
    key: &str,
    token: Option<u64>,
    reason: RevokeReason,
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
    let (kind, why) = match reason {
        RevokeReason::Requested => ("lease.revoked", "revoked on request"),
        RevokeReason::Expired => ("lease.expired", "expired: no keepalive confirmed within the TTL"),
    };
    fx.event(kind, key, format!("{why}; held by {} with token {}", lease.holder, lease.token));
    note_primary_lease_gone(state, key, reason, fx);
    state.leases.remove(key);
    Response::Applied { revision: fx.index }
}

/// Whether a keepalive for (`key`, `token`) may renew it. A shard's primary
/// lease is renewable only while its holder is still that shard's primary:
/// a demoted or fenced primary's lease runs out on its own.
pub fn renewable(state: &State, key: &str, token: u64) -> bool {
    let Some(lease) = state.leases.get(key).filter(|l| l.token == token) else { return false };
    match shard_of_primary_lease(key) {
        Some(shard) => state.shards.get(shard).and_then(|s| s.primary.as_deref()) == Some(lease.holder.as_str()),
        None => true,
    }
}

/// The refusal for a grant of a primary lease to anyone but the shard's
/// primary (it re-acquires its lease after it ran out; nobody else may).
fn primary_lease_grant_refusal(state: &State, key: &str, holder: &str) -> Option<Response> {
    let shard_key = shard_of_primary_lease(key)?;
    let primary = state.shards.get(shard_key).and_then(|s| s.primary.as_deref());
    (primary != Some(holder)).then(|| {
        Response::refused(
            Refusal::FailedPrecondition,
            format!(
                "key: {key} is the primary lease of shard {shard_key}; only its primary ({}) may acquire it",
                primary.unwrap_or("none")
            ),
        )
    })
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
        Request { at_unix_ms: 5, command }
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
}
