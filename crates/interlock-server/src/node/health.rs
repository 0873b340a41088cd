//! gRPC health (`grpc.health.v1`), on the same port as the API.

use interlock_store::Raft;
use std::time::Duration;

/// How often gRPC health is re-evaluated.
pub const HEALTH_TICK: Duration = Duration::from_millis(250);

/// gRPC health: SERVING while this node knows a working leader — a leader
/// that is itself, it must have heard from a quorum within `quorum_window`
/// (openraft 0.9 keeps an isolated leader in office, so "leader known" alone
/// would keep a cut-off leader SERVING). NOT_SERVING otherwise.
pub async fn report_health(raft: Raft, reporter: tonic_health::server::HealthReporter, quorum_window: Duration) {
    let mut serving = None;
    let mut tick = tokio::time::interval(HEALTH_TICK);
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        let leading = m.state == openraft::ServerState::Leader;
        let quorum_fresh = m.millis_since_quorum_ack.is_some_and(|ms| ms <= quorum_window.as_millis() as u64);
        let healthy = m.current_leader.is_some() && (!leading || quorum_fresh);
        if serving != Some(healthy) {
            let status =
                if healthy { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            serving = Some(healthy);
        }
        if matches!(m.state, openraft::ServerState::Shutdown) {
            return;
        }
    }
}
