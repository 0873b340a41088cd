//! The leader's control loops, one module each. Every loop runs on every
//! node and acts only while its node leads; it observes, asks the core what
//! to do, and proposes that. Soft state (heartbeats, lease deadlines,
//! routing acknowledgements) lives here and is rebuilt by each new leader.
//!
//! - [`leases`]: lease expiry and the keepalive batcher.
//! - [`liveness`]: the failure detector's records, read as observations.
//! - [`failover`]: region loss and promotion (`interlock_core::failover::plan`).
//! - [`drains`]: stepping drains and undrains on the leader's clock.
//! - [`backups`]: restore-test scheduling, backup targets, readiness gauges.
//! - [`routing_acks`]: which controller applied which routing version.
//! - [`runbooks`]: moving the steps of runbook executions.

pub mod backups;
pub mod drains;
pub mod failover;
pub mod leases;
pub mod liveness;
pub mod routing_acks;
pub mod runbooks;

use crate::ctx::{NodeCtx, ProposeError};
use interlock_core::Command;
use std::collections::BTreeMap;

/// Proposes one command a loop decided on; `true` if it was applied. A
/// refusal is normal (the state moved on since the loop looked) and only
/// logged at debug level.
pub async fn propose(ctx: &NodeCtx, command: Command) -> bool {
    let label = command.to_string();
    match ctx.propose(command).await {
        Ok(_) => true,
        Err(ProposeError::Status(s)) => {
            tracing::debug!("planned {label}: {}", s.message());
            false
        }
        Err(ProposeError::NotLeader(_)) => false,
    }
}

/// Observations a loop records in the event log (`Command::Note`, which
/// changes nothing) once each: a subject's note is proposed again only when
/// its text changes, so a situation that lasts writes nothing more.
pub struct Notes {
    kind: &'static str,
    /// The last note proposed per subject.
    noted: BTreeMap<String, String>,
}

impl Notes {
    pub fn new(kind: &'static str) -> Self {
        Notes { kind, noted: BTreeMap::new() }
    }

    /// Whether `message` is news for `subject`.
    pub fn is_news(&self, subject: &str, message: &str) -> bool {
        self.noted.get(subject).is_none_or(|m| m != message)
    }

    /// Notes `message` about `subject` unless it was the last note about it.
    pub async fn note(&mut self, ctx: &NodeCtx, subject: &str, message: &str) {
        if !self.is_news(subject, message) {
            return;
        }
        tracing::warn!(subject, "{message}");
        let note =
            Command::Note { kind: self.kind.to_string(), subject: subject.to_string(), message: message.to_string() };
        if propose(ctx, note).await {
            self.noted.insert(subject.to_string(), message.to_string());
        }
    }

    /// Forgets the subjects for which `keep` is false (the situation ended).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.noted.retain(|subject, _| keep(subject));
    }

    /// Forgets everything (a new term notes afresh).
    pub fn clear(&mut self) {
        self.noted.clear();
    }
}
