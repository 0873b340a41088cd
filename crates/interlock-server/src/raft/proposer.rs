//! Proposal batching: key-value writes that reach the leader while earlier
//! ones are still in Raft travel together, as one [`Command::Batch`] entry.
//!
//! Why: openraft 0.9 appends every `client_write` as its own log entry and
//! waits for that append to be flushed (an fsync) before it takes the next
//! one, so without batching the leader's write rate is bounded by one fsync
//! per write. Here at most [`IN_FLIGHT`] proposal is in Raft at a time;
//! writes that arrive meanwhile queue up and leave as one entry when a slot
//! frees. A lone client sees no delay (its write leaves at once); under load
//! one fsync and one replication round serve many writes.
//!
//! Only `Put` and `Delete` are batched ([`Command::is_batchable`]): they
//! share the entry's index as their revision, which fencing tokens (the log
//! index of a lease grant) must not.

use crate::ctx::ProposeError;
use crate::http::metrics::Metrics;
use interlock_core::command::{BATCH_MAX_BYTES, BATCH_MAX_COMMANDS};
use interlock_core::{Command, Request, Response};
use interlock_store::Raft;
use openraft::error::{ClientWriteError, RaftError};
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

/// A write waiting to be proposed, and where its answer goes.
struct Pending {
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

    /// Proposes `command` (batchable, validated) with whatever else is
    /// waiting, and returns its own answer once the entry is applied.
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || ProposeError::Status(Status::unavailable("the node is shutting down"));
        self.queue.send(Pending { command, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(raft: Raft, clock: Arc<dyn crate::ctx::Clock>, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.command.kv_bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX_COMMANDS {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.command.kv_bytes();
            if bytes > BATCH_MAX_BYTES {
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        metrics.write_batch_writes.observe(batch.len() as f64);
        let (raft, at_unix_ms) = (raft.clone(), clock.unix_ms());
        tokio::spawn(async move {
            propose_batch(&raft, at_unix_ms, batch).await;
            drop(slot);
        });
    }
}

/// Proposes `batch` as one entry (a lone write as itself) and answers each
/// waiter with its own response.
async fn propose_batch(raft: &Raft, at_unix_ms: u64, batch: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let count = replies.len();
    let command = match <[Command; 1]>::try_from(commands) {
        Ok([lone]) => lone,
        Err(commands) => Command::Batch { commands },
    };
    match (count, write(raft, Request::system(at_unix_ms, command)).await) {
        (1, outcome) => answer_all(replies, || outcome.clone()),
        (_, Ok(Response::Batch { responses })) if responses.len() == count => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        // The whole entry was refused (nothing changed): each write was.
        (_, Ok(refused @ Response::Refused { .. })) => answer_all(replies, || Ok(refused.clone())),
        (_, Ok(other)) => answer_all(replies, || {
            Err(ProposeError::Status(Status::internal(format!(
                "a batch of {count} writes was answered with {other:?}; their outcome is unknown"
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
                    (i, batcher.propose(command).await)
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
        let Ok(Response::Applied { revision }) = batcher.propose(Command::Delete { key: "k0".into() }).await else {
            panic!("the delete was not applied")
        };
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
}
