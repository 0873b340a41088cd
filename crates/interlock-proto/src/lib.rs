//! The gRPC contract of Interlock.
//!
//! Map of the crate: [`v1`] (the public API) and [`raft`] (node to node), the
//! code generated from `proto/`, one module per package; [`convert`], the
//! conversions between core and wire types; the metadata keys of leader
//! hints and forwarding; the descriptor set served by gRPC reflection.
//!
//! API boundary: this crate and the gRPC edges (`interlock-server`'s `api/`
//! and `raft/`, `interlock-client`) are the only code that sees prost/tonic
//! types.

#![allow(clippy::all, unused_qualifications, missing_docs)]

/// `proto/interlock/v1`: the public API.
pub mod v1 {
    tonic::include_proto!("interlock.v1");
}

/// `proto/interlock/raft/v1`: Raft's node-to-node RPCs.
pub mod raft {
    tonic::include_proto!("interlock.raft.v1");
}

/// The gRPC metadata key carrying the id of the leader, on UNAVAILABLE errors
/// and forwarded requests.
pub const LEADER_ID_METADATA: &str = "x-interlock-leader-id";
/// The gRPC metadata key carrying the leader's gRPC address.
pub const LEADER_ADDR_METADATA: &str = "x-interlock-leader-addr";
/// Set on an error whose request the node certainly did not propose (it is
/// not the leader and did not forward): a client may repeat even a
/// non-idempotent call.
pub const NOT_PROPOSED_METADATA: &str = "x-interlock-not-proposed";
/// Set on a request a node forwards to the leader, so it is forwarded at most once.
pub const FORWARDED_METADATA: &str = "x-interlock-forwarded";
/// On a forwarded request: the identity of the caller the node forwards
/// for. Believed only from a `node` identity.
pub const ON_BEHALF_OF_METADATA: &str = "x-interlock-on-behalf-of";
/// Set by a node's auth layer on every request it admits (any value a
/// client sent is replaced): the caller's identity, for forwarding.
pub const CALLER_METADATA: &str = "x-interlock-caller";

/// The encoded descriptor set of every proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/interlock_descriptor.bin"));

pub mod convert;
