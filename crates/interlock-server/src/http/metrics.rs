//! Prometheus metrics of a node (`/metrics`, all prefixed `interlock_`).

use interlock_core::NodeId;
use interlock_store::StoreObserver;
use openraft::{RaftMetrics, ServerState};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    pub is_leader: Gauge,
    pub term: Gauge,
    pub last_log_index: Gauge,
    pub last_applied_index: Gauge,
    pub snapshot_index: Gauge,
    pub purged_index: Gauge,
    pub leader_changes: Counter,
    pub append_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub forwarded_requests: Counter,
    /// Refused requests left out of the audit trail by its per-identity rate limit.
    pub audit_refusals_suppressed: Counter,
    pub write_batch_writes: Histogram,
    pub failovers: Counter,
    pub detection_seconds: Histogram,
    pub promotion_seconds: Histogram,
    pub routing_propagation_seconds: Histogram,
    pub keepalive_wait_seconds: Histogram,
    pub keepalive_rounds_failed: Counter,
    /// Backups and restore tests (SPEC §6), set by the leader's backup loop.
    pub backup: BackupMetrics,
    /// Runbook executions not yet final (set by the leader's runbook loop).
    pub runbook_executions_running: Gauge,
    /// Last leader seen, to count changes (0: none).
    last_leader: AtomicU64,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("interlock");
        let metrics = Metrics {
            is_leader: Gauge::default(),
            term: Gauge::default(),
            last_log_index: Gauge::default(),
            last_applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            leader_changes: Counter::default(),
            // 50 µs .. ~3 s
            append_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            apply_seconds: Histogram::new(exponential_buckets(0.000_001, 2.0, 20)),
            forwarded_requests: Counter::default(),
            audit_refusals_suppressed: Counter::default(),
            // 1 .. 1024
            write_batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            failovers: Counter::default(),
            // 50 ms .. ~200 s
            detection_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 13)),
            promotion_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            routing_propagation_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 1 ms .. ~16 s
            keepalive_wait_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            keepalive_rounds_failed: Counter::default(),
            backup: BackupMetrics::default(),
            runbook_executions_running: Gauge::default(),
            last_leader: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "runbook_executions_running",
            "Runbook executions not yet in a final state (on the leader)",
            metrics.runbook_executions_running.clone(),
        );
        registry.register("is_leader", "1 if this node is the Raft leader", metrics.is_leader.clone());
        registry.register("term", "Current Raft term", metrics.term.clone());
        registry.register("last_log_index", "Index of the last entry in the local log", metrics.last_log_index.clone());
        registry.register("last_applied_index", "Index of the last applied entry", metrics.last_applied_index.clone());
        registry.register(
            "snapshot_index",
            "Last log index covered by the latest snapshot",
            metrics.snapshot_index.clone(),
        );
        registry.register("purged_index", "Last log index purged from the local log", metrics.purged_index.clone());
        registry.register(
            "leader_changes",
            "Times this node saw the leader change (including to none)",
            metrics.leader_changes.clone(),
        );
        registry.register(
            "append_latency_seconds",
            "Time to make a batch of log entries durable (write and flush)",
            metrics.append_seconds.clone(),
        );
        registry.register(
            "write_batch_writes",
            "Commands this node proposed together in one log entry (as leader): key-value writes, lease grants and revokes, promotions, acknowledgements",
            metrics.write_batch_writes.clone(),
        );
        registry.register(
            "apply_latency_seconds",
            "Time to apply a batch of committed entries to the state machine",
            metrics.apply_seconds.clone(),
        );
        registry.register(
            "audit_refusals_suppressed",
            "Refused requests not recorded in the audit trail (more than 10 per identity per second)",
            metrics.audit_refusals_suppressed.clone(),
        );
        registry.register(
            "forwarded_requests",
            "Requests this node forwarded to the leader",
            metrics.forwarded_requests.clone(),
        );
        registry.register("failovers", "Automatic promotions this node committed as leader", metrics.failovers.clone());
        registry.register(
            "region_loss_detection_seconds",
            "From the last heartbeat of a region's controllers to its LOST declaration",
            metrics.detection_seconds.clone(),
        );
        registry.register(
            "promotion_seconds",
            "From a committed promotion to its controller's acknowledgement",
            metrics.promotion_seconds.clone(),
        );
        registry.register(
            "routing_propagation_seconds",
            "From a routing version's commit to a controller's acknowledgement of it",
            metrics.routing_propagation_seconds.clone(),
        );
        registry.register(
            "keepalive_wait_seconds",
            "On the leader, from the arrival of a batch's first keepalive message to its answer (the leadership round and the wait for it)",
            metrics.keepalive_wait_seconds.clone(),
        );
        registry.register(
            "keepalive_rounds_failed",
            "Leadership rounds for keepalives that missed their quorum within the heartbeat interval (each is tried again, up to 3 rounds)",
            metrics.keepalive_rounds_failed.clone(),
        );
        metrics.backup.register(&mut registry);
        Metrics { registry, ..metrics }
    }

    /// Mirrors openraft's metrics into the gauges.
    pub fn observe_raft(&self, m: &RaftMetrics<NodeId, interlock_core::NodeInfo>) {
        self.is_leader.set(i64::from(m.state == ServerState::Leader));
        self.term.set(m.current_term as i64);
        self.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
        self.last_applied_index.set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.snapshot_index.set(m.snapshot.map_or(0, |l| l.index) as i64);
        self.purged_index.set(m.purged.map_or(0, |l| l.index) as i64);
        let leader = m.current_leader.unwrap_or(0);
        let previous = self.last_leader.swap(leader, std::sync::atomic::Ordering::Relaxed);
        if previous != leader {
            self.leader_changes.inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.push_str("# error encoding metrics\n");
        }
        out
    }
}

/// A label set of one label.
pub type Labels = Vec<(&'static str, String)>;

/// The backup loop's gauges (0 on a node that does not lead).
#[derive(Default)]
pub struct BackupMetrics {
    pub restore_tests_running: Gauge,
    pub shards_rpo_violated: Gauge,
    pub shards_rto_violated: Gauge,
    pub shards_verify_overdue: Gauge,
    /// The oldest newest-verified backup over the tracked shards.
    pub oldest_verified_age_seconds: Gauge,
    pub region_readiness: Family<Labels, Gauge>,
}

impl BackupMetrics {
    fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &Gauge); 5] = [
            ("restore_tests_running", "Restore tests running now (on the leader)", &self.restore_tests_running),
            (
                "backup_shards_rpo_violated",
                "Shards whose newest verified backup is older than their RPO target (or that have none)",
                &self.shards_rpo_violated,
            ),
            (
                "backup_shards_rto_violated",
                "Shards whose last passed restore test took longer than their RTO target",
                &self.shards_rto_violated,
            ),
            (
                "backup_shards_verify_overdue",
                "Shards whose newest backup is still unverified past verify_within_seconds",
                &self.shards_verify_overdue,
            ),
            (
                "backup_oldest_verified_age_seconds",
                "Age of the oldest newest-verified backup among shards that report backups",
                &self.oldest_verified_age_seconds,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "region_readiness_score",
            "Readiness (0-100) of each region to be lost: its weakest shard's score",
            self.region_readiness.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreObserver for Metrics {
    fn append_seconds(&self, seconds: f64) {
        self.append_seconds.observe(seconds);
    }
    fn apply_seconds(&self, seconds: f64) {
        self.apply_seconds.observe(seconds);
    }
}
