//! The declared topology: its validation ([`validate`]), what applying it
//! would change ([`diff`], also `--dry-run`), applying it, and controllers
//! registering the replicas they run. The topology's data is in
//! [`crate::model`].

mod apply;
mod diff;
mod validate;

pub(crate) use apply::{apply, register_controller};
pub use diff::diff;
pub use validate::validate;

#[cfg(test)]
pub(crate) mod tests {
    use crate::model::{FailoverPolicy, RegionSpec, ReplicaSpec, ServiceSpec, ShardSpec, Topology};

    pub(crate) fn replica(id: &str, region: &str, priority: u32) -> ReplicaSpec {
        ReplicaSpec { id: id.into(), region: region.into(), priority, address: String::new() }
    }

    pub(crate) fn sample() -> Topology {
        Topology {
            regions: vec![
                RegionSpec { id: "eu-west".into(), capacity: 100 },
                RegionSpec { id: "us-east".into(), capacity: 100 },
            ],
            services: vec![ServiceSpec {
                name: "orders".into(),
                shards: vec![ShardSpec {
                    id: "0".into(),
                    max_lag_on_failover: 1000,
                    cooldown_seconds: 300,
                    replicas: vec![replica("orders-0-eu", "eu-west", 100), replica("orders-0-us", "us-east", 50)],
                    backup: None,
                }],
            }],
            failover: FailoverPolicy::default(),
            routing: Default::default(),
            backups: Default::default(),
        }
    }
}
