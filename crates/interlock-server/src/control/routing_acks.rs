//! The leader's view of routing convergence: which controller has applied
//! which version of each service's table (soft state, like heartbeats —
//! acknowledgements are never Raft writes), and how long each took.

use interlock_proto::v1::RoutingAck;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Acknowledged versions by (service, controller).
#[derive(Default)]
pub struct RoutingAcks {
    inner: Mutex<BTreeMap<(String, String), RoutingAck>>,
}

impl RoutingAcks {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), RoutingAck>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `controller` applied `version` of `service`; a late
    /// acknowledgement of an older version is ignored.
    pub fn record(&self, service: &str, controller: &str, version: u64, propagation_ms: u64) {
        let mut acks = self.lock();
        let entry = acks.entry((service.to_string(), controller.to_string())).or_default();
        if version >= entry.version {
            *entry = RoutingAck { controller_id: controller.to_string(), version, propagation_ms };
        }
    }

    /// Every acknowledgement for `service`.
    pub fn for_service(&self, service: &str) -> Vec<RoutingAck> {
        self.lock().iter().filter(|((s, _), _)| s == service).map(|(_, ack)| ack.clone()).collect()
    }

    /// Whether every registered controller applied `version` (or later) of
    /// `service`'s routing.
    pub fn converged(&self, state: &interlock_core::State, service: &str, version: u64) -> bool {
        let acks = self.for_service(service);
        state.controllers.keys().all(|c| acks.iter().any(|a| a.controller_id == *c && a.version >= version))
    }
}
