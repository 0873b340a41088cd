//! Proposal batching: writes that reach the leader while earlier ones are
//! still in Raft travel together, as one [`Command::Batch`] entry.
//!
//! Why: openraft 0.9 appends every `client_write` as its own log entry and
//! waits for that append to be flushed (an fsync) before it takes the next
//! one, so without batching the leader's write rate is bounded by one fsync
//! per write. Here at most [`IN_FLIGHT`] proposal is in Raft at a time;
//! writes that arrive meanwhile queue up and leave as one entry when a slot
//! frees. A lone client sees no delay (its write leaves at once); under load
//! one fsync and one replication round serve many writes — a thousand lease
//! expiries, the promotions of a lost region, their acknowledgements.
//!
//! Only the commands of [`Command::is_batchable`] are batched, and an entry
//! carries one caller (`Request::by`, which the state machine checks for
//! everything but key-value writes): the queue is grouped by caller, oldest
//! first, so controllers acknowledging at the same time do not split each
//! other's batches.

use crate::ctx::ProposeError;
use crate::http::metrics::Metrics;
use interlock_core::command::{BATCH_MAX_BYTES, BATCH_MAX_COMMANDS};
use interlock_core::{Command, Request, Response};
use interlock_store::Raft;
use openraft::error::{ClientWriteError, RaftError};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

/// Batches in Raft at once. Measured with `interlock-bench writes` (16 and
/// 256 clients, two runs each, docs/benchmarks.md): 1 gave the most writes/s
/// and the shortest tails; 2 and 4 make batches smaller without making the
/// log faster, because openraft appends one entry at a time anyway.
pub const IN_FLIGHT: usize = 1;

/// Writes waiting for a slot, beyond which callers wait to enqueue.
const QUEUE: usize = 4 * BATCH_MAX_COMMANDS;

type Reply = oneshot::Sender<Result<Response, ProposeError>>;

/// A write waiting to be proposed, on behalf of `by`, and where its answer goes.
struct Pending {
    by: String,
    command: Command,
    reply: Reply,
}

/// The handle through which a node's handlers submit batchable writes.
#[derive(Clone)]
pub struct WriteBatcher {
    queue: mpsc::Sender<Pending>,
}

impl WriteBatcher {
    /// Starts the batching task of a node; it ends when every handle is dropped.
    pub fn start(raft: Raft, clock: Arc<dyn crate::ctx::Clock>, metrics: Arc<Metrics>) -> WriteBatcher {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, clock, metrics, rx));
        WriteBatcher { queue }
    }

    /// Proposes `command` (batchable, validated) on behalf of `by` with
    /// whatever else `by` has waiting, and returns its own answer once the
    /// entry is applied.
    pub async fn propose(&self, by: &str, command: Command) -> Result<Response, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ProposeError::Status(Status::unavailable("the node is shutting down"));
        let pending = Pending { by: by.to_string(), command, reply };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(raft: Raft, clock: Arc<dyn crate::ctx::Clock>, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // Taken from the channel, not proposed yet: oldest first.
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if waiting.is_empty() {
            match rx.recv().await {
                Some(p) => waiting.push_back(p),
                None => return,
            }
        }
        while waiting.len() < QUEUE {
            let Ok(next) = rx.try_recv() else { break };
            waiting.push_back(next);
        }
        let batch = take_batch(&mut waiting);
        metrics.write_batch_writes.observe(batch.len() as f64);
        let (raft, at_unix_ms) = (raft.clone(), clock.unix_ms());
        tokio::spawn(async move {
            propose_batch(&raft, at_unix_ms, batch).await;
            drop(slot);
        });
    }
}

/// Takes the next batch out of `waiting` (not empty): the oldest write and
/// the writes of the same caller after it, in order, within the bounds of a
/// batch. The others keep their places.
fn take_batch(waiting: &mut VecDeque<Pending>) -> Vec<Pending> {
    let Some(first) = waiting.pop_front() else { return Vec::new() };
    let mut bytes = first.command.batch_bytes();
    let mut batch = vec![first];
    let mut others = VecDeque::new();
    while let Some(next) = waiting.pop_front() {
        if batch.len() >= BATCH_MAX_COMMANDS || bytes + next.command.batch_bytes() > BATCH_MAX_BYTES {
            waiting.push_front(next);
            break;
        }
        if next.by == batch[0].by {
            bytes += next.command.batch_bytes();
            batch.push(next);
        } else {
            others.push_back(next);
        }
    }
    others.append(waiting);
    *waiting = others;
    batch
}

/// Proposes `batch` as one entry (a lone write as itself) and answers each
/// waiter with its own response.
async fn propose_batch(raft: &Raft, at_unix_ms: u64, batch: Vec<Pending>) {
    let by = batch.first().map(|p| p.by.clone()).unwrap_or_default();
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = replies.len();
    let command = match <[Command; 1]>::try_from(commands) {
        Ok([lone]) => lone,
        Err(commands) => Command::Batch { commands },
    };
    match (count, write(raft, Request::by(at_unix_ms, &by, command)).await) {
        (1, outcome) => answer_all(replies, || outcome.clone()),
        (_, Ok(Response::Batch { responses })) if responses.len() == count => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        // The whole entry was refused (nothing changed): each command was.
        (_, Ok(refused @ Response::Refused { .. })) => answer_all(replies, || Ok(refused.clone())),
        (_, Ok(other)) => answer_all(replies, || {
            Err(ProposeError::Status(Status::internal(format!(
                "a batch of {count} commands was answered with {other:?}; their outcome is unknown"
            ))))
        }),
        (_, Err(e)) => answer_all(replies, || Err(e.clone())),
    }
}

fn answer_all(replies: Vec<Reply>, answer: impl Fn() -> Result<Response, ProposeError>) {
    for reply in replies {
        let _ = reply.send(answer());
    }
}

/// One `client_write`, its failure already sorted into "ask the leader" and
/// a gRPC status.
pub async fn write(raft: &Raft, request: Request) -> Result<Response, ProposeError> {
    match raft.client_write(request).await {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader(f)),
        Err(e) => Err(ProposeError::Status(Status::unavailable(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::SystemClock;
    use crate::raft::channels::{tcp_channel_maker, Channels};
    use crate::raft::network::Network;
    use interlock_core::vocab::SYSTEM;
    use interlock_core::NodeInfo;
    use interlock_store::{MemLogStore, NoObserver, SnapshotVault, StateMachineStore};
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    /// A one-node Raft in memory (it needs no network), and its state.
    async fn single_node() -> (Raft, interlock_store::StateReader, MemLogStore) {
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            ..Default::default()
        };
        let state_machine = StateMachineStore::open(SnapshotVault::memory(), Arc::new(NoObserver)).expect("state");
        let reader = state_machine.reader();
        let network = Network { id: 1, channels: Channels::new(tcp_channel_maker(None)) };
        let log = MemLogStore::new();
        let raft = Raft::new(1, Arc::new(config.validate().expect("config")), network, log.clone(), state_machine)
            .await
            .expect("raft");
        let node = NodeInfo { grpc_addr: "127.0.0.1:1".into(), region: "r".into() };
        raft.initialize(BTreeMap::from([(1, node)])).await.expect("initialize");
        raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.expect("leader");
        (raft, reader, log)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
        let (raft, state, mut log) = single_node().await;
        let metrics = Arc::new(Metrics::new());
        let batcher = WriteBatcher::start(raft.clone(), Arc::new(SystemClock::new()), metrics);
        let writes: Vec<_> = (0..300)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    let command = Command::Put { key: format!("k{i}"), value: vec![i as u8; 100] };
                    (i, batcher.propose(SYSTEM, command).await)
                })
            })
            .collect();
        let mut revisions = BTreeSet::new();
        for write in writes {
            let (i, answer) = write.await.expect("task");
            let Ok(Response::Applied { revision }) = answer else { panic!("write {i} was not applied") };
            let applied = state.read();
            let entry = &applied.state.kv[&format!("k{i}")];
            assert_eq!((entry.value.as_slice(), entry.mod_revision), (&[i as u8; 100][..], revision), "write {i}");
            revisions.insert(revision);
        }
        assert!(
            revisions.len() < 300,
            "300 concurrent writes took {} log entries: nothing was batched",
            revisions.len()
        );

        // A lone write afterwards is proposed as itself, not as a batch of one.
        let lone = batcher.propose(SYSTEM, Command::Delete { key: "k0".into() }).await;
        let Ok(Response::Applied { revision }) = lone else { panic!("the delete was not applied") };
        assert!(!state.read().state.kv.contains_key("k0"));
        use openraft::RaftLogReader;
        let entries = log.try_get_log_entries(revision..=revision).await.expect("log");
        let payload = entries.first().map(|e| &e.payload);
        assert!(
            matches!(payload, Some(openraft::EntryPayload::Normal(Request { command: Command::Delete { .. }, .. }))),
            "{payload:?}"
        );
        let _ = raft.shutdown().await;
    }

    #[test]
    fn a_batch_is_one_callers_oldest_first_and_the_others_keep_their_places() {
        let pending = |by: &str, key: &str| Pending {
            by: by.to_string(),
            command: Command::Delete { key: key.to_string() },
            reply: oneshot::channel().0,
        };
        let mut waiting: VecDeque<Pending> =
            [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "5"), ("a", "6")].map(|(b, k)| pending(b, k)).into();
        let keys = |batch: &[Pending]| -> Vec<String> {
            batch.iter().map(|p| format!("{}{}", p.by, p.command.to_string().trim_start_matches("delete "))).collect()
        };
        assert_eq!(keys(&take_batch(&mut waiting)), ["a1", "a3", "a6"]);
        assert_eq!(keys(waiting.make_contiguous()), ["b2", "c4", "b5"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["b2", "b5"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["c4"]);
        assert!(take_batch(&mut waiting).is_empty());
    }
}
