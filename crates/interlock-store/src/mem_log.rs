//! The in-memory Raft log, for the simulation and tests.
//!
//! The data sits behind an `Arc`, so a simulated host that is restarted can
//! reopen "its disk" by cloning the handle it was built with.

use crate::{Entry, LogId, StoreError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct MemLogData {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
}

/// An in-memory log store; clones share the same log.
#[derive(Clone, Default)]
pub struct MemLogStore {
    data: Arc<Mutex<MemLogData>>,
}

impl MemLogStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemLogData> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the data itself is still consistent enough to read.
        self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let data = self.lock();
        let last = data.log.last_key_value().map(|(_, e)| e.log_id).or(data.last_purged);
        Ok(LogState { last_purged_log_id: data.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StoreError> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StoreError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StoreError> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StoreError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut data = self.lock();
            for entry in entries {
                data.log.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StoreError> {
        self.lock().log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StoreError> {
        let mut data = self.lock();
        data.last_purged = Some(log_id);
        let keep = data.log.split_off(&(log_id.index + 1));
        data.log = keep;
        Ok(())
    }
}
