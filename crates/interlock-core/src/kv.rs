//! The key-value space (etcd-like; used by operators, agents and tests):
//! its limits, key validation, and its writes.

use crate::model::KvEntry;
use crate::state::State;
use crate::vocab::{InvalidArgument, Response};

/// Longest key accepted in the key-value space, in bytes.
pub const KEY_MAX_BYTES: usize = 1024;
/// Largest value accepted in the key-value space, in bytes. Small on purpose:
/// a Raft append carries up to 300 entries and must stay well under the
/// transport's message limit.
pub const VALUE_MAX_BYTES: usize = 64 * 1024;

/// Checks a key of the key-value space.
pub fn validate_key(key: &str) -> Result<(), InvalidArgument> {
    if key.is_empty() {
        return Err(InvalidArgument::new("key", "must not be empty"));
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(InvalidArgument::new("key", format!("is {} bytes, the limit is {KEY_MAX_BYTES}", key.len())));
    }
    if key.chars().any(char::is_control) {
        return Err(InvalidArgument::new("key", "must not contain control characters"));
    }
    Ok(())
}

/// Sets `key` to `value` at revision `index`.
pub(crate) fn put(state: &mut State, index: u64, key: &str, value: &[u8]) -> Response {
    state.kv.insert(key.to_string(), KvEntry { value: value.to_vec(), mod_revision: index });
    Response::Applied { revision: index }
}

/// Removes `key` (a no-op if absent) at revision `index`.
pub(crate) fn delete(state: &mut State, index: u64, key: &str) -> Response {
    state.kv.remove(key);
    Response::Applied { revision: index }
}
