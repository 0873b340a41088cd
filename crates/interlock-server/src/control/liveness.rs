//! What the leader hears from controllers: a phi-accrual detector per
//! controller, its last witness report and replica positions. Soft state,
//! for the current term only, never written to Raft; the failover loop and
//! the operator services read it as [`Observations`].

use interlock_core::failover::detector::{DetectorParams, PhiDetector};
use interlock_core::failover::{ControllerView, Observations, ReplicaReport};
use interlock_proto::v1::HeartbeatRequest;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// What the leader knows of one controller.
#[derive(Debug, Clone)]
struct ControllerRecord {
    detector: PhiDetector,
    alive_since_ms: u64,
    reachable_regions: Vec<String>,
    replicas: BTreeMap<String, ReplicaReport>,
}

/// Heartbeat records by controller id, for the current term only.
#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    controllers: BTreeMap<String, ControllerRecord>,
    /// When this node started the current term's records (monotonic ms):
    /// its election, or the moment it regained contact with its quorum.
    since_ms: u64,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn last_seen_ms(&self, controller: &str) -> Option<u64> {
        self.lock().controllers.get(controller).map(|r| r.detector.last_heartbeat_ms())
    }

    /// The leader's last report of `replica` from `controller`.
    pub fn report(&self, controller: &str, replica: &str) -> Option<ReplicaReport> {
        self.lock().controllers.get(controller).and_then(|r| r.replicas.get(replica).copied())
    }

    /// Records a heartbeat received at `now_ms`.
    pub fn record(&self, beat: HeartbeatRequest, now_ms: u64, params: &DetectorParams) {
        let replicas = beat
            .replicas
            .iter()
            .map(|r| (r.replica_id.clone(), ReplicaReport { position: r.position, lag: r.lag, healthy: r.healthy }))
            .collect();
        let mut records = self.lock();
        match records.controllers.get_mut(&beat.controller_id) {
            Some(record) => {
                if record.detector.suspected(now_ms, params) {
                    record.alive_since_ms = now_ms;
                }
                record.detector.heartbeat(now_ms);
                record.reachable_regions = beat.reachable_regions;
                record.replicas = replicas;
            }
            None => {
                let record = ControllerRecord {
                    detector: PhiDetector::new(now_ms, params),
                    alive_since_ms: now_ms,
                    reachable_regions: beat.reachable_regions,
                    replicas,
                };
                records.controllers.insert(beat.controller_id, record);
            }
        }
    }

    /// Forgets every record: a new term (or regained contact) starts at `now_ms`.
    pub fn clear(&self, now_ms: u64) {
        let mut records = self.lock();
        records.controllers.clear();
        records.since_ms = now_ms;
    }

    /// What the planner and the operator policies see at `now_ms`.
    pub fn observations(&self, now_ms: u64, now_unix_ms: u64, params: &DetectorParams) -> Observations {
        let records = self.lock();
        let controllers = records
            .controllers
            .iter()
            .map(|(id, r)| {
                let suspected = r.detector.suspected(now_ms, params);
                let view = ControllerView {
                    suspected,
                    alive_since_ms: (!suspected).then_some(r.alive_since_ms),
                    reachable_regions: r.reachable_regions.clone(),
                    replicas: r.replicas.clone(),
                };
                (id.clone(), view)
            })
            .collect();
        Observations { now_ms, now_unix_ms, leader_since_ms: records.since_ms, controllers }
    }
}
