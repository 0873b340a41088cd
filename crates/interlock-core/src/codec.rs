//! The versioned binary encoding of everything Interlock persists or sends
//! between its own nodes.
//!
//! Every blob starts with one format byte, then bincode 2 (standard config) of
//! the value. Decoding never panics: a short, corrupt or future-versioned blob
//! is a [`DecodeError`]. Bump [`FORMAT`] whenever a persisted type changes
//! shape (and, once Interlock has a release, keep a decoder for the old one).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The only format written and read today. 2: leases bound to their owner,
/// approvals and the audit trail. 3: the backup catalogue, runbooks, and
/// fencing tokens shared by an entry (`State::last_token`). Older versions
/// are not migrated (no release had them); a node given such data refuses
/// it, naming both versions.
pub const FORMAT: u8 = 3;

/// Upper bound on a decoded blob, so a corrupt length prefix cannot make the
/// decoder allocate without limit.
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;

/// Why a blob could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty blob: no format byte")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT})")]
    UnknownVersion(u8),
    #[error("corrupt blob: {0}")]
    Corrupt(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Encodes `value` behind the current format byte.
///
/// Encoding of our own types cannot fail (no maps with non-string keys are
/// rejected by bincode); a failure is reported as an error string anyway so
/// callers never panic.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![FORMAT];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes a blob written by [`encode`]; trailing bytes are corruption.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Corrupt(format!("{} trailing bytes after the value", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_blobs() {
        let blob = encode(&("key", 7u64)).expect("encode");
        assert_eq!(decode::<(String, u64)>(&blob), Ok(("key".to_string(), 7)));
        assert_eq!(decode::<u64>(&[]), Err(DecodeError::Empty));
        assert_eq!(decode::<u64>(&[9, 1]), Err(DecodeError::UnknownVersion(9)));
        assert!(matches!(decode::<String>(&[FORMAT, 200]), Err(DecodeError::Corrupt(_))));
        let mut long = blob.clone();
        long.push(0);
        assert!(matches!(decode::<(String, u64)>(&long), Err(DecodeError::Corrupt(_))));
    }

    #[test]
    fn decoding_random_bytes_never_panics() {
        // A cheap deterministic generator: the point is coverage of odd
        // prefixes, not randomness quality.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..512usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x & 0xff) as u8
                })
                .collect();
            let mut with_version = vec![FORMAT];
            with_version.extend_from_slice(&bytes);
            let _ = decode::<crate::State>(&with_version);
            let _ = decode::<crate::Request>(&with_version);
        }
    }
}
