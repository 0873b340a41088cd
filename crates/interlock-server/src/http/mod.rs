//! The admin HTTP port: `/livez`, `/readyz`, `/metrics` (the dashboard will
//! be served here too).

pub mod metrics;

use crate::ctx::NodeCtx;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use openraft::RaftMetrics;
use std::sync::Arc;

/// A node is not ready while its applied index trails its log by more than this.
pub const READY_APPLY_LAG_MAX: u64 = 1000;

pub fn router(ctx: Arc<NodeCtx>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

/// Why a node with these Raft metrics is not ready, or `None` if it is:
/// it must be a member, know a leader, and have applied what it has logged.
pub fn not_ready_reason(m: &RaftMetrics<interlock_core::NodeId, interlock_core::NodeInfo>) -> Option<String> {
    if m.membership_config.membership().get_node(&m.id).is_none() {
        return Some(format!("node {} is not a member of the cluster (yet)", m.id));
    }
    if m.current_leader.is_none() {
        return Some("no leader known".to_string());
    }
    let logged = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    if logged.saturating_sub(applied) > READY_APPLY_LAG_MAX {
        return Some(format!("catching up: applied {applied} of {logged}"));
    }
    None
}

async fn readyz(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    let metrics = ctx.raft.metrics().borrow().clone();
    match not_ready_reason(&metrics) {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctx.metrics.render())
}
