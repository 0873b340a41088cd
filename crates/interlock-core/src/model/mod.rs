//! The data model of SPEC §2: the records the replicated state is made of,
//! and the declared topology. Plain data: no transitions, no rules (those
//! live in the capability modules), so every layer above may use it.

mod fleet;
mod records;
mod spec;

pub use fleet::{Controller, Drain, Pending, Region, Replica, Shard, Switchover};
pub use records::{Event, KvEntry, Lease, Routing};
pub use spec::{
    FailoverPolicy, RegionSpec, ReplicaSpec, RoutingPolicy, ServiceSpec, ShardSpec, Topology, CAPACITY_MAX,
    PRIORITY_MAX, SHARDS_MAX,
};
