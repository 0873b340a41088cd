//! A Raft log entry's payload as read from disk or a peer: refused or decoded, never a panic.
#![no_main]
use interlock_core::{codec, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = codec::decode::<Request>(bytes) {
        let encoded = codec::encode(&request).expect("a decoded request encodes");
        assert_eq!(codec::decode::<Request>(&encoded).as_ref(), Ok(&request), "round trip");
    }
});
