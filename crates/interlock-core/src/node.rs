//! The descriptor of a coordinator node, as stored in the Raft membership.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What the cluster knows about a member: where to reach it and where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NodeInfo {
    /// The gRPC address other nodes and clients dial (`host:port`).
    pub grpc_addr: String,
    /// The region the node runs in (for placement and display).
    pub region: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.grpc_addr, self.region)
    }
}
