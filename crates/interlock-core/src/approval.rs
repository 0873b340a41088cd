//! Two-person approval of dangerous actions (SPEC §9): a failover that
//! accepts data loss, a membership change, a routing change that overrides a
//! safety rule, a revoke of another identity's lease. The request is stored
//! with an expiry; an operator other than the requester approves it; an
//! approved command is applied at once (by the dispatcher, on the
//! requester's behalf), a membership change by the leader afterwards.

use crate::model::{Action, Approval, Decision};
use crate::state::{Effects, State};
use crate::vocab::{Refusal, Response, SYSTEM};

/// Approval records kept (decided and expired ones are dropped first).
pub const APPROVALS_KEPT: usize = 1_000;

pub(crate) fn request(
    state: &mut State,
    action: &Action,
    reason: &str,
    ttl_ms: u64,
    by: &str,
    fx: &mut Effects,
) -> Response {
    if by == SYSTEM {
        return Response::refused(Refusal::PermissionDenied, "only an operator asks for an approval");
    }
    if state.approvals.len() >= APPROVALS_KEPT {
        // Drop the oldest decided or expired record; refuse if all are pending.
        let done = state
            .approvals
            .values()
            .find(|a| a.decision.is_some() || a.expires_at_unix_ms < fx.at_unix_ms)
            .map(|a| a.id);
        match done {
            Some(id) => {
                state.approvals.remove(&id);
            }
            None => {
                return Response::refused(
                    Refusal::FailedPrecondition,
                    format!("{APPROVALS_KEPT} approvals are pending; approve or let some expire first"),
                )
            }
        }
    }
    let approval = Approval {
        id: fx.index,
        action: action.clone(),
        reason: reason.to_string(),
        requested_by: by.to_string(),
        requested_at_unix_ms: fx.at_unix_ms,
        expires_at_unix_ms: fx.at_unix_ms.saturating_add(ttl_ms),
        decision: None,
    };
    fx.event(
        "approval.requested",
        &fx.index.to_string(),
        format!("{by} asks for approval of: {action} ({reason}); expires in {} s", ttl_ms / 1000),
    );
    state.approvals.insert(fx.index, approval);
    Response::Applied { revision: fx.index }
}

/// Checks that `by` may approve request `id` now, and marks it approved;
/// returns the action and its requester for the dispatcher to carry out.
pub(crate) fn approve(state: &mut State, id: u64, by: &str, fx: &mut Effects) -> Result<(Action, String), Response> {
    let Some(approval) = state.approvals.get_mut(&id) else {
        return Err(Response::refused(Refusal::NotFound, format!("id: no approval request {id}")));
    };
    if let Some(d) = &approval.decision {
        return Err(Response::refused(
            Refusal::FailedPrecondition,
            format!("approval {id} was already approved by {} ({})", d.by, d.outcome),
        ));
    }
    if fx.at_unix_ms > approval.expires_at_unix_ms {
        return Err(Response::refused(
            Refusal::FailedPrecondition,
            format!("approval {id} expired {} s ago; ask again", (fx.at_unix_ms - approval.expires_at_unix_ms) / 1000),
        ));
    }
    if by == approval.requested_by || by == SYSTEM {
        return Err(Response::refused(
            Refusal::PermissionDenied,
            format!("approval {id} was asked for by {by}; a different operator must approve it"),
        ));
    }
    approval.decision = Some(Decision { by: by.to_string(), at_unix_ms: fx.at_unix_ms, outcome: String::new() });
    Ok((approval.action.clone(), approval.requested_by.clone()))
}

/// Records what came of approved request `id`.
pub(crate) fn decided(state: &mut State, id: u64, outcome: String, fx: &mut Effects) {
    if let Some(d) = state.approvals.get_mut(&id).and_then(|a| a.decision.as_mut()) {
        fx.event("approval.approved", &id.to_string(), format!("by {}: {outcome}", d.by));
        d.outcome = outcome;
    }
}

/// Whether request `id` may still be approved at `now_unix_ms`.
pub fn pending(approval: &Approval, now_unix_ms: u64) -> bool {
    approval.decision.is_none() && now_unix_ms <= approval.expires_at_unix_ms
}
