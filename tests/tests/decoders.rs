//! Every decoder of what comes from the network or disk (SPEC §10): log
//! entries, snapshots, Raft messages, proto → core conversion, topology YAML,
//! node and agent config. For each, values built from arbitrary bytes round
//! trip, and arbitrary bytes never panic the decoder (they may be refused).
//! The same decoders have cargo-fuzz targets in `fuzz/` (see `scripts/fuzz.sh`).

use arbitrary::{Arbitrary, Unstructured};
use interlock_core::codec;
use interlock_core::{Request, State, Topology};
use proptest::prelude::*;

/// A value built from `bytes` (None if they run out before it is whole).
fn build<T: for<'a> Arbitrary<'a>>(bytes: &[u8]) -> Option<T> {
    T::arbitrary(&mut Unstructured::new(bytes)).ok()
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn log_entries_round_trip_and_bad_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Some(request) = build::<Request>(&bytes) {
            let encoded = codec::encode(&request).expect("encode");
            prop_assert_eq!(codec::decode::<Request>(&encoded), Ok(request));
        }
        let _ = codec::decode::<Request>(&bytes);
        let mut versioned = vec![codec::FORMAT];
        versioned.extend_from_slice(&bytes);
        let _ = codec::decode::<Request>(&versioned);
    }

    #[test]
    fn snapshots_round_trip_and_bad_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Some(state) = build::<State>(&bytes) {
            let encoded = codec::encode(&state).expect("encode");
            prop_assert_eq!(codec::decode::<State>(&encoded), Ok(state));
        }
        let mut versioned = vec![codec::FORMAT];
        versioned.extend_from_slice(&bytes);
        let _ = codec::decode::<State>(&versioned);
    }

    #[test]
    fn applying_any_request_never_panics_and_keeps_the_invariants(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut state = State::default();
        let mut u = Unstructured::new(&bytes);
        // (arbitrary makes values from empty input too: stop when it is used up.)
        for index in 1..=32 {
            let Ok(request) = Request::arbitrary(&mut u) else { break };
            state.apply(index, &request);
            prop_assert_eq!(state.validate(), Ok(()));
            if u.is_empty() {
                break;
            }
        }
    }

    #[test]
    fn raft_messages_from_the_network_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        use interlock_store::TypeConfig;
        let mut versioned = vec![codec::FORMAT];
        versioned.extend_from_slice(&bytes);
        let _ = codec::decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(&versioned);
        let _ = codec::decode::<openraft::raft::VoteRequest<u64>>(&versioned);
        let _ = codec::decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(&versioned);
    }

    #[test]
    fn a_topology_survives_the_wire_and_any_proto_bytes_are_handled(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        use interlock_proto::v1;
        if let Some(topology) = build::<Topology>(&bytes) {
            let wire = v1::Topology::from(&topology);
            let encoded = prost::Message::encode_to_vec(&wire);
            let decoded: v1::Topology = prost::Message::decode(encoded.as_slice()).expect("decode");
            prop_assert_eq!(Topology::from(decoded), topology);
        }
        if let Ok(request) = <v1::ApplyTopologyRequest as prost::Message>::decode(bytes.as_slice()) {
            let topology: Topology = request.topology.unwrap_or_default().into();
            let _ = interlock_core::topology::validate(&topology);
        }
    }

    #[test]
    fn topology_yaml_round_trips_and_any_text_is_handled(bytes in prop::collection::vec(any::<u8>(), 0..2048), text in ".{0,512}") {
        if let Some(topology) = build::<Topology>(&bytes) {
            let yaml = serde_saphyr::to_string(&topology).expect("to yaml");
            let parsed: Topology = serde_saphyr::from_str(&yaml).expect("from yaml");
            prop_assert_eq!(parsed, topology);
        }
        if let Ok(topology) = serde_saphyr::from_str::<Topology>(&text) {
            let _ = interlock_core::topology::validate(&topology);
        }
    }

    #[test]
    fn any_node_or_agent_config_text_is_refused_or_validated(text in "(?s).{0,512}", keys in "[a-z_]{1,20} = \"[ -~]{0,30}\"") {
        for candidate in [text.as_str(), keys.as_str()] {
            if let Ok(parsed) = toml::from_str::<interlock_server::node::config::ConfigKeys>(candidate) {
                let _ = parsed.validate();
            }
            let _ = interlock_agent::AgentConfig::parse(candidate);
        }
    }
}
