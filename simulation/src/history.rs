//! What the simulation observed, in true simulated time: the oracle's record
//! that the invariants are checked against.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A holder's belief that it holds a lease, from when its acquire returned
/// until its own deadline passed (or it learned the lease was gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Belief {
    pub holder: String,
    pub key: String,
    pub token: u64,
    pub from_ms: u64,
    /// `None` while the belief is still open (the holder still acts).
    pub until_ms: Option<u64>,
}

/// A storage system that checks fencing tokens: it rejects a write whose
/// token is lower than the highest it has seen.
#[derive(Debug, Default, Clone)]
pub struct FencedStore {
    pub highest_token: u64,
    /// (true ms, token, holder) of accepted writes, in order.
    pub accepted: Vec<(u64, u64, String)>,
    /// Writes rejected although their writer believed it held the lease.
    pub rejected_while_believing: Vec<(u64, u64, String)>,
}

impl FencedStore {
    /// A write by `holder` with `token` at `at_ms`; true if accepted.
    pub fn write(&mut self, at_ms: u64, token: u64, holder: &str) -> bool {
        if token < self.highest_token {
            self.rejected_while_believing.push((at_ms, token, holder.to_string()));
            return false;
        }
        self.highest_token = token;
        self.accepted.push((at_ms, token, holder.to_string()));
        true
    }
}

/// A replica acting as primary, from its promotion until it stopped (its
/// lease deadline passed, it was demoted, or its host crashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acting {
    pub shard: String,
    pub replica: String,
    pub region: usize,
    pub epoch: u64,
    pub token: u64,
    /// Its position when it started acting.
    pub position: u64,
    pub from_ms: u64,
    pub until_ms: Option<u64>,
}

/// A region cut off from the others (crashed, isolated), and what its
/// primaries had written when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub region: usize,
    pub from_ms: u64,
    pub until_ms: u64,
    /// (replica, shard, position) of its acting primaries at `from_ms`.
    pub primaries: Vec<(String, String, u64)>,
    /// Whether the region held the Raft leader (the latest term's) then.
    pub held_leader: bool,
}

/// Everything recorded during one run.
#[derive(Debug, Default)]
pub struct History {
    /// Nodes seen as leader, by term, in the order they were elected.
    pub leaders_by_term: BTreeMap<u64, Vec<u64>>,
    /// Log index -> the leader id (term, node) it was applied under, as the
    /// first node that applied it reported.
    pub applied: BTreeMap<u64, (u64, u64)>,
    /// Indexes a node applied under another leader id than a node before.
    pub applied_conflicts: Vec<String>,
    pub beliefs: Vec<Belief>,
    pub fenced: FencedStore,
    /// Writes the SDK acknowledged: key -> value.
    pub acked_writes: BTreeMap<String, String>,
    /// Acknowledged writes that a final linearizable read did not return.
    pub missing_writes: Vec<String>,
    /// When the faults ended and every link was healed (true ms).
    pub healed_at_ms: Option<u64>,
    /// First time after healing that a write was acknowledged.
    pub write_after_heal_ms: Option<u64>,
    /// The final read-back completed.
    pub verified: bool,
    /// Every observation as a line, in order: the run's trace.
    pub trace: Vec<String>,
    /// Every interval in which a replica acted as primary.
    pub acting: Vec<Acting>,
    /// Regions cut off by a fault.
    pub cuts: Vec<Cut>,
    /// Database servers that died under a primary while their region lived
    /// (`region` is the database's).
    pub db_downs: Vec<Cut>,
    /// (true ms seen, region) of every `region.lost` event.
    pub lost_declared: Vec<(u64, usize)>,
    /// Routing tables as last read by the observer: service -> version.
    pub routing_versions: std::collections::BTreeMap<String, u64>,
    /// Routing tables read that broke a rule of their own (sum, lost region).
    pub routing_violations: Vec<String>,
    /// The backup catalogue as the observer read it near the end, and when
    /// (true ms); None if it could not be read.
    pub backups_final: Option<(u64, Vec<interlock_client::ShardBackups>)>,
    /// Events a runbook step can cause or record, as seen: (true ms, kind,
    /// subject, message) — `runbook.*`, `maintenance`, drains, promotions,
    /// demotions.
    pub runbook_events: Vec<(u64, String, String, String)>,
    /// The runbook executions as the observer read them near the end, and when.
    pub executions_final: Option<(u64, Vec<interlock_client::ExecutionInfo>)>,
}

impl History {
    /// The node elected last in the latest term seen (None before any).
    pub fn latest_leader(&self) -> Option<u64> {
        self.leaders_by_term.values().next_back().and_then(|l| l.last().copied())
    }

    /// Records that node `id` became leader in `term`; a node that leads
    /// again in a term it led (openraft re-establishes a restarted leader's
    /// committed vote) is not a new election.
    pub fn elected(&mut self, term: u64, id: u64) {
        let leaders = self.leaders_by_term.entry(term).or_default();
        if !leaders.contains(&id) {
            leaders.push(id);
        }
    }

    /// Records that node `by` applied log index `index`, written by leader
    /// (term, node) `leader`.
    pub fn applied(&mut self, by: u64, index: u64, leader: (u64, u64)) {
        let first = *self.applied.entry(index).or_insert(leader);
        if first != leader {
            self.applied_conflicts.push(format!(
                "index {index} applied by n{by} as written by leader {leader:?}, by another node as by {first:?}"
            ));
        }
    }

    pub fn note(&mut self, at_ms: u64, line: String) {
        self.trace.push(format!("{at_ms:>8} {line}"));
    }

    /// FNV-1a over the trace: equal for equal runs, byte for byte.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.trace {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

/// The history, shared by every simulated host of one run.
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<History>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, History> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn take(&self) -> History {
        std::mem::take(&mut *self.lock())
    }
}
