//! The durable Raft log on sled.
//!
//! Layout: tree `log` maps a big-endian `u64` index to an encoded entry; tree
//! `meta` holds the vote, the committed log id and the last purged log id.
//! Every value is written with
//! [`interlock_core::codec`], so it carries a format byte. Every change but
//! the committed log id is followed by a flush before it is acknowledged.

use crate::{read_err, write_err, Entry, LogId, StoreError, StoreObserver, TypeConfig, Vote};
use interlock_core::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Why the log store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: another process holds this data directory (is an interlockd already running on it?)")]
    Locked { path: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

/// The production log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct SledLogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    observer: Arc<dyn StoreObserver>,
}

impl SledLogStore {
    /// Opens (or creates) the log in directory `path`.
    pub fn open(path: &Path, observer: Arc<dyn StoreObserver>) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let db = sled::Config::new().path(path).open().map_err(|e| {
            let reason = e.to_string();
            if reason.contains("lock") || reason.contains("WouldBlock") {
                OpenError::Locked { path: shown.clone() }
            } else {
                OpenError::Io { path: shown.clone(), reason }
            }
        })?;
        let io = |e: sled::Error| OpenError::Io { path: shown.clone(), reason: e.to_string() };
        let log = db.open_tree("log").map_err(io)?;
        let meta = db.open_tree("meta").map_err(io)?;
        Ok(SledLogStore { db, log, meta, observer })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map(|_| ()).map_err(write_err)
    }

    fn get_raw<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.meta.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(read_err),
        }
    }

    async fn put_raw<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.meta.insert(key, codec::encode(value).map_err(write_err)?).map_err(write_err)?;
        self.flush().await
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
        match self.log.last().map_err(read_err)? {
            None => Ok(None),
            Some((_, bytes)) => {
                let entry: Entry = codec::decode(&bytes).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn remove_range(&self, from: u64, to_inclusive: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(from.to_be_bytes()..=to_inclusive.to_be_bytes()) {
            let (key, _) = item.map_err(write_err)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_err)
    }
}

fn bound_start(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn bound_end_inclusive(range: &impl RangeBounds<u64>) -> Option<u64> {
    match range.end_bound() {
        Bound::Included(&i) => Some(i),
        Bound::Excluded(&0) => None,
        Bound::Excluded(&i) => Some(i - 1),
        Bound::Unbounded => Some(u64::MAX),
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = bound_start(&range);
        let Some(end) = bound_end_inclusive(&range) else { return Ok(Vec::new()) };
        if start > end {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for item in self.log.range(start.to_be_bytes()..=end.to_be_bytes()) {
            let (_, bytes) = item.map_err(read_err)?;
            entries.push(codec::decode::<Entry>(&bytes).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId> = self.get_raw(KEY_LAST_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StoreError> {
        self.put_raw(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StoreError> {
        self.get_raw(KEY_VOTE)
    }

    /// Recorded without a flush of its own: it becomes durable with the next
    /// append, vote or sled's periodic flush. openraft treats the committed
    /// log id as an optional hint (a restarted node that finds an older one
    /// re-applies less of its log and learns the rest from the leader), so
    /// an fsync here would only double the leader's fsyncs per write.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StoreError> {
        self.meta.insert(KEY_COMMITTED, codec::encode(&committed).map_err(write_err)?).map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StoreError> {
        Ok(self.get_raw::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&entry.log_id.index.to_be_bytes(), codec::encode(&entry).map_err(write_err)?);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        let flushed = self.db.flush_async().await.map(|_| ());
        self.observer.append_seconds(started.elapsed().as_secs_f64());
        match flushed {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(message.clone())));
                Err(write_err(message))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StoreError> {
        self.remove_range(log_id.index, u64::MAX)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StoreError> {
        // Record the purge point first: a crash between the two steps leaves
        // extra entries below it, which get_log_state and reads tolerate.
        self.put_raw(KEY_LAST_PURGED, &log_id).await?;
        self.remove_range(0, log_id.index)?;
        self.flush().await
    }
}
