//! A snapshot's state as read from disk or a peer: refused or decoded, never a panic.
#![no_main]
use interlock_core::{codec, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(state) = codec::decode::<State>(bytes) {
        let encoded = codec::encode(&state).expect("a decoded state encodes");
        assert_eq!(codec::decode::<State>(&encoded).as_ref(), Ok(&state), "round trip");
    }
});
