//! The leader's side of leases: the deadline table, the expiry loop, and the
//! keepalive batcher. The rules themselves are in `interlock_core::lease`.
//!
//! - [`run_expiry_loop`] keeps the table in step with the replicated leases
//!   and leadership (a new term starts from an empty table, so every lease
//!   gets `now + ttl`), and proposes a revoke for each lease whose deadline
//!   passed. Only the committed revoke frees the key.
//! - [`KeepaliveBatcher`] answers keepalives without writing to Raft: it
//!   collects the keepalives that arrived, then confirms leadership with one
//!   quorum round that starts after all of them arrived, then refreshes each
//!   from its receive time. Thousands of keepalives cost one round.

use crate::ctx::{NodeCtx, ProposeError};
use interlock_core::{Command, LeaseDeadlines, RevokeReason};
use interlock_proto::v1::LeaseKeepAliveResponse;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// How often the expiry loop looks at deadlines.
pub const LEASE_TICK: Duration = Duration::from_millis(50);
/// Most keepalives confirmed by one leadership round.
pub const KEEPALIVE_BATCH_MAX: usize = 16_384;
/// Keepalives waiting for a round, across all streams.
pub const KEEPALIVE_QUEUE_MAX: usize = 65_536;
/// Leadership rounds a batch of keepalives may take before its holders are
/// told to try another node. A round has one heartbeat interval to reach a
/// quorum; on a busy machine one can miss it with nothing wrong, and telling
/// every holder to reconnect then made more load (10 000 shards on 2 cores).
/// A leader that is really cut off fails them all, within a few intervals.
const KEEPALIVE_CONFIRM_ATTEMPTS: u32 = 3;

/// Deliberate bugs that the simulation switches on to prove its checkers
/// can fail. Never set in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseMutations {
    /// Answer keepalives without confirming leadership first.
    pub skip_keepalive_confirmation: bool,
    /// A new leader does not give leases `election time + TTL`: it treats
    /// them as already expired (as if it trusted the old leader's timing).
    pub no_reset_on_new_term: bool,
    /// An operator's revoke of another identity's lease frees the key at
    /// once, as if it had expired (the hole of Jepsen's etcd lock finding).
    pub revoke_frees_at_once: bool,
    /// (The runbook loop.) A new leader re-runs every effect of the runbook
    /// executions still running, as an implementation that kept a run's
    /// progress in the leader's memory would: a step re-run after a leader
    /// change.
    pub rerun_runbook_effects: bool,
}

/// The leader's lease table and the term it belongs to.
#[derive(Default)]
pub struct LeaseTable {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    deadlines: LeaseDeadlines,
    /// The term in which this node built the table as leader (None: not leader).
    term: Option<u64>,
}

impl LeaseTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A grant of (`key`, `token`) that arrived at `received_ms` has
    /// committed. Committing proves leadership after the request arrived,
    /// like a keepalive's confirmation round, so the deadline moves to
    /// `received + ttl`. This matters when a holder repeats a grant for a
    /// lease it already holds: it gets the existing token back and counts
    /// its deadline from this request.
    ///
    /// Returns false if the deadline could not be moved — the lease is
    /// already being expired, or this node no longer leads — in which case
    /// the grant must not be reported as held: the holder retries.
    pub fn note_grant(
        &self,
        ctx: &NodeCtx,
        key: &str,
        token: u64,
        received_ms: u64,
        mutations: LeaseMutations,
    ) -> bool {
        let mut inner = self.lock();
        sync_table(ctx, &mut inner, ctx.clock.monotonic_ms(), mutations, Some(&[key]));
        inner.term.is_some() && inner.deadlines.refresh(key, token, received_ms).is_some()
    }

    /// Milliseconds left on `key`, if this node is leader and knows it.
    pub fn remaining_ms(&self, key: &str, now_ms: u64) -> Option<u64> {
        let inner = self.lock();
        inner.term.and_then(|_| inner.deadlines.remaining_ms(key, now_ms))
    }
}

/// Brings `table` in line with leadership and the replicated leases at
/// `now_ms`: all of them, or only those of `keys` while the term is
/// unchanged (a grant or a keepalive batch must not cost a pass over every
/// lease; the expiry tick does that).
fn sync_table(ctx: &NodeCtx, table: &mut TableInner, now_ms: u64, mutations: LeaseMutations, keys: Option<&[&str]>) {
    let leader_term = ctx.leader_term();
    let new_term = leader_term != table.term;
    if new_term {
        table.deadlines.clear();
        table.term = leader_term;
    }
    if table.term.is_some() {
        let applied = ctx.state.read();
        match keys {
            Some(keys) if !new_term => {
                for key in keys {
                    table.deadlines.sync_key(key, applied.state.leases.get(*key), now_ms);
                }
            }
            _ => table.deadlines.sync(applied.state.leases.values(), now_ms),
        }
        if new_term && mutations.no_reset_on_new_term {
            table.deadlines.shorten_all_to(now_ms);
        }
    }
}

/// Expires leases on the leader, forever.
pub async fn run_expiry_loop(ctx: Arc<NodeCtx>, table: Arc<LeaseTable>, mutations: LeaseMutations) {
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = ctx.clock.monotonic_ms();
        let expired = {
            let mut inner = table.lock();
            sync_table(&ctx, &mut inner, now, mutations, None);
            if inner.term.is_none() {
                continue;
            }
            inner.deadlines.take_expired(now)
        };
        for (key, token) in expired {
            let (ctx, table) = (ctx.clone(), table.clone());
            tokio::spawn(async move {
                let command =
                    Command::LeaseRevoke { key: key.clone(), token: Some(token), reason: RevokeReason::Expired };
                match ctx.propose(command).await {
                    Ok(_) => tracing::info!(key, token, "lease expired"),
                    Err(ProposeError::Status(s)) if s.code() == tonic::Code::FailedPrecondition => {}
                    Err(ProposeError::Status(s)) if s.code() == tonic::Code::NotFound => {}
                    Err(_) => table.lock().deadlines.revoke_failed(&key, token),
                }
            });
        }
    }
}

/// One keepalive of a [`KeepaliveItem`].
pub struct Keepalive {
    pub key: String,
    pub token: u64,
    pub seq: u64,
    /// Why it is refused before any round (a bad key), if it is.
    pub invalid: Option<String>,
}

/// The keepalives of one request message, waiting for a leadership round.
pub struct KeepaliveItem {
    pub keepalives: Vec<Keepalive>,
    /// Answered as one response's `batch` (else as a single response).
    pub batched: bool,
    /// When this node received it, on its monotonic clock.
    pub received_ms: u64,
    /// The caller's identity: only the lease's owner renews it.
    pub by: String,
    /// Where the answer goes (the keepalive stream of the holder).
    pub reply: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
}

/// Hands keepalives to the batching task.
#[derive(Clone)]
pub struct KeepaliveBatcher {
    tx: mpsc::Sender<KeepaliveItem>,
}

impl KeepaliveBatcher {
    /// Starts the batching task.
    pub fn start(ctx: Arc<NodeCtx>, table: Arc<LeaseTable>, mutations: LeaseMutations) -> Self {
        let (tx, rx) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        tokio::spawn(run_batches(ctx, table, rx, mutations));
        KeepaliveBatcher { tx }
    }

    /// Queues a keepalive; `false` if the queue is full (the caller should
    /// slow down: the holder will simply retry on its next period).
    pub fn submit(&self, item: KeepaliveItem) -> bool {
        self.tx.try_send(item).is_ok()
    }
}

/// One leadership round that reaches a quorum, of at most
/// [`KEEPALIVE_CONFIRM_ATTEMPTS`] (a node that learnt it is not the leader
/// stops at once).
async fn confirm_leadership(ctx: &NodeCtx) -> Result<(), String> {
    use openraft::error::{CheckIsLeaderError, RaftError};
    let mut attempt = 1;
    loop {
        let e = match ctx.raft.ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => e,
            Err(e) => return Err(e.to_string()),
        };
        ctx.metrics.keepalive_rounds_failed.inc();
        if attempt == KEEPALIVE_CONFIRM_ATTEMPTS || !ctx.is_leader() {
            return Err(e.to_string());
        }
        tracing::debug!(attempt, "keepalive round: {e}; trying again");
        attempt += 1;
    }
}

async fn run_batches(
    ctx: Arc<NodeCtx>,
    table: Arc<LeaseTable>,
    mut rx: mpsc::Receiver<KeepaliveItem>,
    mutations: LeaseMutations,
) {
    while let Some(first) = rx.recv().await {
        let mut count = first.keepalives.len();
        let mut batch = vec![first];
        while count < KEEPALIVE_BATCH_MAX {
            match rx.try_recv() {
                Ok(item) => {
                    count += item.keepalives.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        // The round starts now, after every keepalive in the batch arrived.
        let confirmed = if mutations.skip_keepalive_confirmation { Ok(()) } else { confirm_leadership(&ctx).await };
        if let Err(reason) = confirmed {
            // No leader hint: this node may believe it leads and still be cut
            // off from its quorum; the holder should try another node.
            let status = Status::unavailable(format!("node {} could not confirm its leadership: {reason}", ctx.id));
            for item in batch {
                let _ = item.reply.try_send(Err(status.clone()));
            }
            continue;
        }
        let now = ctx.clock.monotonic_ms();
        let first_received = batch.iter().map(|item| item.received_ms).min().unwrap_or(now);
        ctx.metrics.keepalive_wait_seconds.observe(now.saturating_sub(first_received) as f64 / 1000.0);
        let mut inner = table.lock();
        let keys: Vec<&str> = batch.iter().flat_map(|item| item.keepalives.iter().map(|k| k.key.as_str())).collect();
        sync_table(&ctx, &mut inner, now, mutations, Some(&keys));
        let applied = ctx.state.read();
        'items: for item in batch {
            let mut answers = Vec::with_capacity(item.keepalives.len());
            for k in item.keepalives {
                // The confirmation waited for this node to apply everything
                // committed, so the replicated state says whether the lease exists.
                // (A shard's primary lease is renewable only while its holder is still the primary.)
                let held =
                    k.invalid.is_none() && interlock_core::lease::renewable(&applied.state, &k.key, k.token, &item.by);
                let renewed = match (held, inner.term) {
                    (true, None) => {
                        // Leadership confirmed, but this node's view of it has not
                        // settled yet: the holder retries rather than losing it.
                        let status = Status::unavailable(format!("node {} is still taking over leadership", ctx.id));
                        let _ = item.reply.try_send(Err(status));
                        continue 'items;
                    }
                    (true, Some(_)) => inner.deadlines.refresh(&k.key, k.token, item.received_ms),
                    (false, _) => None,
                };
                let error = match (&renewed, k.invalid) {
                    (Some(_), _) => String::new(),
                    (None, Some(invalid)) => invalid,
                    (None, None) => format!(
                        "lease {} with token {} is not held by {} (expired, revoked, re-granted, or another identity's)",
                        k.key, k.token, item.by
                    ),
                };
                answers.push(LeaseKeepAliveResponse {
                    key: k.key,
                    token: k.token,
                    seq: k.seq,
                    ok: renewed.is_some(),
                    ttl_ms: renewed.unwrap_or(0),
                    error,
                    batch: Vec::new(),
                });
            }
            let answer = if item.batched {
                LeaseKeepAliveResponse { batch: answers, ..LeaseKeepAliveResponse::default() }
            } else {
                // A message that is not a batch carries exactly one keepalive.
                answers.pop().unwrap_or_default()
            };
            // A full reply buffer means the holder is not reading; it will
            // see no answer and fall back on its own deadline.
            let _ = item.reply.try_send(Ok(answer));
        }
    }
}
