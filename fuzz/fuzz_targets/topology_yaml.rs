//! A topology file (`interlockctl apply -f`): refused or validated, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Ok(topology) = serde_saphyr::from_str::<interlock_core::Topology>(text) {
        let _ = interlock_core::topology::validate(&topology);
    }
});
