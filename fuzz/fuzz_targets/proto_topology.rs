//! An ApplyTopology request off the wire, converted to the core topology and validated: never a panic.
#![no_main]
use interlock_proto::v1;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = <v1::ApplyTopologyRequest as prost::Message>::decode(bytes) {
        let topology: interlock_core::Topology = request.topology.unwrap_or_default().into();
        let _ = interlock_core::topology::validate(&topology);
    }
});
