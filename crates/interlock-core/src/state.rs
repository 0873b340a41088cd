//! The replicated state and its pure transition function.

use crate::command::{Command, Request, Response};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value in the key-value space with the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The log index of the command that last wrote this key.
    pub mod_revision: u64,
}

/// Everything the Raft state machine holds. Deterministic: ordered maps only,
/// so that two replicas that applied the same log encode to the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The key-value space (etcd-like; used by operators and tests).
    pub kv: BTreeMap<String, KvEntry>,
    /// Log index of the last applied command (0 before any).
    pub revision: u64,
    /// Wall clock of the last applied command, from its proposer.
    pub last_at_unix_ms: u64,
}

impl State {
    /// Applies `request`, which was committed at log `index`.
    ///
    /// Total and deterministic: the same state and the same request always
    /// give the same result, on every replica, without panicking.
    pub fn apply(&mut self, index: u64, request: &Request) -> Response {
        self.revision = self.revision.max(index);
        self.last_at_unix_ms = self.last_at_unix_ms.max(request.at_unix_ms);
        if let Err(e) = request.command.validate() {
            // Only a buggy or hostile proposer gets here; refuse deterministically.
            return Response::Refused { reason: e.to_string() };
        }
        match &request.command {
            Command::Put { key, value } => {
                self.kv.insert(key.clone(), KvEntry { value: value.clone(), mod_revision: index });
            }
            Command::Delete { key } => {
                self.kv.remove(key);
            }
        }
        debug_assert!(self.validate().is_ok());
        Response::Applied { revision: index }
    }

    /// Records that a log entry without application payload (a blank entry
    /// or a membership change) was applied at `index`.
    pub fn apply_marker(&mut self, index: u64) {
        self.revision = self.revision.max(index);
    }

    /// Checks the state's own invariants (run after transitions in debug
    /// builds and by the tests).
    pub fn validate(&self) -> Result<(), String> {
        if let Some((key, entry)) = self.kv.iter().find(|(_, e)| e.mod_revision > self.revision) {
            return Err(format!(
                "key {key} has mod_revision {} beyond the state's revision {}",
                entry.mod_revision, self.revision
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8]) -> Request {
        Request { at_unix_ms: 5, command: Command::Put { key: key.into(), value: value.to_vec() } }
    }

    #[test]
    fn put_and_delete_track_revisions() {
        let mut state = State::default();
        assert_eq!(state.apply(3, &put("a", b"1")), Response::Applied { revision: 3 });
        assert_eq!(state.apply(4, &put("a", b"2")), Response::Applied { revision: 4 });
        assert_eq!(state.kv["a"], KvEntry { value: b"2".to_vec(), mod_revision: 4 });
        state.apply(5, &Request { at_unix_ms: 6, command: Command::Delete { key: "a".into() } });
        assert!(state.kv.is_empty());
        assert_eq!((state.revision, state.last_at_unix_ms), (5, 6));
    }

    #[test]
    fn an_invalid_command_is_refused_and_changes_nothing_but_the_revision() {
        let mut state = State::default();
        let response = state.apply(1, &put("", b"x"));
        assert!(matches!(response, Response::Refused { reason } if reason.contains("key")));
        assert!(state.kv.is_empty());
    }

    #[test]
    fn same_log_same_bytes() {
        let log: Vec<Request> = (0..50).map(|i| put(&format!("k{}", i % 7), &[i as u8])).collect();
        let run = || {
            let mut s = State::default();
            for (i, r) in log.iter().enumerate() {
                s.apply(i as u64 + 1, r);
            }
            crate::codec::encode(&s).expect("encode")
        };
        assert_eq!(run(), run());
    }
}
