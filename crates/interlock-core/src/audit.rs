//! The hash-chained audit trail (SPEC §9): every admin action and every
//! refused one, with the identity that asked, the command with its
//! arguments, the time and the outcome. Each entry's hash is SHA-256 over the
//! canonical encoding of its fields and the previous entry's hash, so an
//! entry changed after the fact breaks the chain from there on; [`verify`]
//! finds the first one. The trail keeps the newest [`AUDIT_KEPT`] entries;
//! what is trimmed leaves a checkpoint (its last sequence number and hash)
//! that the kept part chains from — nothing is dropped silently.

use crate::codec;
use crate::model::{AuditCheckpoint, AuditEntry, Command};
use crate::state::State;
use crate::vocab::{Response, SYSTEM};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;

/// Entries kept in the state (older ones leave a checkpoint).
pub const AUDIT_KEPT: usize = 10_000;

/// The hash of an entry with these fields: SHA-256 over their codec
/// encoding (a format byte, then bincode 2 — deterministic).
pub fn entry_hash(seq: u64, at_unix_ms: u64, by: &str, action: &str, outcome: &str, prev: &[u8; 32]) -> [u8; 32] {
    let encoded = codec::encode(&(seq, at_unix_ms, by, action, outcome, prev)).unwrap_or_default();
    Sha256::digest(&encoded).into()
}

/// Appends an entry, trimming the oldest beyond [`AUDIT_KEPT`] into the
/// checkpoint.
pub(crate) fn record(state: &mut State, at_unix_ms: u64, by: &str, action: String, outcome: String) {
    let (seq, prev_hash) = match state.audit.back() {
        Some(last) => (last.seq + 1, last.hash),
        None => (state.audit_checkpoint.seq + 1, state.audit_checkpoint.hash),
    };
    let hash = entry_hash(seq, at_unix_ms, by, &action, &outcome, &prev_hash);
    state.audit.push_back(AuditEntry { seq, at_unix_ms, by: by.to_string(), action, outcome, prev_hash, hash });
    while state.audit.len() > AUDIT_KEPT {
        if let Some(trimmed) = state.audit.pop_front() {
            state.audit_checkpoint = AuditCheckpoint { seq: trimmed.seq, hash: trimmed.hash };
        }
    }
}

/// Where a chain breaks, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: u64,
    pub reason: String,
}

/// Checks that `entries` chain from `checkpoint`: consecutive sequence
/// numbers, each `prev_hash` the hash before it, each `hash` recomputed from
/// the entry's own fields. Returns how many entries were checked, or the
/// first entry that fails.
pub fn verify<'a>(
    checkpoint: AuditCheckpoint,
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<usize, Break> {
    let (mut seq, mut prev) = (checkpoint.seq, checkpoint.hash);
    let mut checked = 0;
    for e in entries {
        let fail = |reason: String| Err(Break { seq: e.seq, reason });
        if e.seq != seq + 1 {
            return fail(format!("sequence {} follows {seq}", e.seq));
        }
        if e.prev_hash != prev {
            return fail("its previous hash is not the hash of the entry before it".to_string());
        }
        if entry_hash(e.seq, e.at_unix_ms, &e.by, &e.action, &e.outcome, &e.prev_hash) != e.hash {
            return fail("its hash does not match its contents: the entry was changed".to_string());
        }
        (seq, prev) = (e.seq, e.hash);
        checked += 1;
    }
    Ok(checked)
}

/// The action as the trail records it: the command with its arguments. A
/// topology is summarised with its digest (it can hold 100 000 shards).
pub fn describe(command: &Command) -> String {
    match command {
        Command::ApplyTopology { topology } => {
            let shards: usize = topology.services.iter().map(|s| s.shards.len()).sum();
            let digest: [u8; 32] = Sha256::digest(codec::encode(topology).unwrap_or_default()).into();
            format!(
                "ApplyTopology {{ regions: {}, services: {}, shards: {shards}, sha256: {} }}",
                topology.regions.len(),
                topology.services.len(),
                hex(&digest)
            )
        }
        other => format!("{other:?}"),
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outcome as the trail records it.
pub fn outcome(response: &Response) -> String {
    match response {
        Response::Applied { revision } => format!("applied at revision {revision}"),
        Response::Lease { token, .. } => format!("applied, token {token}"),
        Response::Refused { code, reason } => format!("refused ({code:?}): {reason}"),
        Response::Batch { .. } => "applied".to_string(),
    }
}

/// Whether the trail records `command` proposed by `by`: administrative
/// actions of a caller (not the coordinator's own loops, not the data plane
/// of key-value writes, heartbeats, keepalives and acknowledgements).
pub fn is_audited(by: &str, command: &Command) -> bool {
    by != SYSTEM
        && matches!(
            command,
            Command::ApplyTopology { .. }
                | Command::RegisterController { .. }
                | Command::DeclareRegionLost { .. }
                | Command::SetRegionState { .. }
                | Command::SetMaintenance { .. }
                | Command::Promote { .. }
                | Command::Demote { .. }
                | Command::Fence { .. }
                | Command::SetRouting { .. }
                | Command::Drain { .. }
                | Command::LeaseRevoke { reason: crate::vocab::RevokeReason::Revoked, .. }
                | Command::RequestApproval { .. }
                | Command::Approve { .. }
                | Command::ApplyRunbook { .. }
                | Command::StartExecution { .. }
                | Command::ControlExecution { .. }
                | Command::Audit { .. }
        )
}

/// The newest `limit` entries with a sequence number after `after`.
pub fn after(trail: &VecDeque<AuditEntry>, after: u64) -> impl Iterator<Item = &AuditEntry> {
    let start = trail.partition_point(|e| e.seq <= after);
    trail.range(start..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: usize) -> State {
        let mut state = State::default();
        for i in 0..n {
            record(&mut state, i as u64, "alice", format!("action {i}"), "applied".into());
        }
        state
    }

    #[test]
    fn an_untouched_chain_verifies_and_any_edit_is_named() {
        let state = trail(5);
        assert_eq!(verify(state.audit_checkpoint, &state.audit), Ok(5));
        type Edit = (fn(&mut AuditEntry), &'static str);
        let edits: [Edit; 4] = [
            (|e| e.by = "mallory".into(), "was changed"),
            (|e| e.outcome = "refused".into(), "was changed"),
            (|e| e.seq += 10, "follows"),
            (|e| e.prev_hash[0] ^= 1, "previous hash"),
        ];
        for (edit, why) in edits {
            let mut edited = state.clone();
            edit(&mut edited.audit[2]);
            let broken = verify(edited.audit_checkpoint, &edited.audit).expect_err(why);
            assert_eq!(broken.seq, edited.audit[2].seq, "{broken:?}");
            assert!(broken.reason.contains(why), "{broken:?}");
        }
        // Rewriting an entry with a fresh hash breaks the next one instead.
        let mut rewritten = state.clone();
        let e = &mut rewritten.audit[2];
        e.by = "mallory".into();
        e.hash = entry_hash(e.seq, e.at_unix_ms, &e.by, &e.action, &e.outcome, &e.prev_hash);
        assert_eq!(verify(rewritten.audit_checkpoint, &rewritten.audit).map_err(|b| b.seq), Err(4));
    }

    #[test]
    fn a_trimmed_trail_still_verifies_from_its_checkpoint() {
        let state = trail(AUDIT_KEPT + 7);
        assert_eq!(state.audit.len(), AUDIT_KEPT);
        assert_eq!(state.audit_checkpoint.seq, 7);
        assert_eq!(state.audit.front().map(|e| e.seq), Some(8));
        assert_eq!(verify(state.audit_checkpoint, &state.audit), Ok(AUDIT_KEPT));
        // Dropping an entry from the middle is caught.
        let mut gap = state.clone();
        gap.audit.remove(5);
        assert!(verify(gap.audit_checkpoint, &gap.audit).is_err());
    }
}
