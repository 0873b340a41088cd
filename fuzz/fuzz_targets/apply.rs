//! Any sequence of committed requests: the state machine never panics and
//! keeps its invariants.
#![no_main]
use arbitrary::{Arbitrary, Unstructured};
use interlock_core::{Request, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let mut state = State::default();
    for index in 1..=32 {
        let Ok(request) = Request::arbitrary(&mut u) else { break };
        state.apply(index, &request);
        assert_eq!(state.validate(), Ok(()));
        if u.is_empty() {
            break;
        }
    }
});
