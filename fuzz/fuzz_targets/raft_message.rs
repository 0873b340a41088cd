//! Raft RPC payloads from a peer (`interlock.raft.v1`): never a panic.
#![no_main]
use interlock_core::codec;
use interlock_store::TypeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = codec::decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = codec::decode::<openraft::raft::VoteRequest<u64>>(bytes);
    let _ = codec::decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(bytes);
    let _ = codec::decode::<interlock_core::Request>(bytes);
});
