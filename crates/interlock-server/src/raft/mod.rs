//! The Raft edge: openraft's transport over the `interlock.raft.v1` gRPC
//! service, the reused channels to peers, the leader's batching of
//! key-value writes into one log entry, and the pre-vote that starts elections.

pub mod channels;
pub mod network;
pub mod prevote;
pub mod proposer;
