//! The Raft edge: openraft's transport over the `interlock.raft.v1` gRPC
//! service, the reused channels to peers, and the leader's batching of
//! key-value writes into one log entry.

pub mod channels;
pub mod network;
pub mod proposer;
