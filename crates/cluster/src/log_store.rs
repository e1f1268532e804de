//! One group's Raft log on the node's WAL ([`crate::wal::NodeWal`]): openraft's
//! `RaftLogStorage`. Entries not yet purged are also kept in memory, so reads never touch the
//! disk (step 3b moves bodies out: payload-free snapshots and a purged log).

use crate::types::{LogIdOf, QueueRaft, StorageErrorOf, VoteOf};
use crate::wal::{GroupState, NodeWal, WalError};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogState, RaftLogId, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

struct Log {
    entries: BTreeMap<u64, Entry<QueueRaft>>,
    vote: Option<VoteOf>,
    purged: Option<LogIdOf>,
    committed: Option<LogIdOf>,
}

/// A group's log (cheap to clone: the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct GroupLog {
    group: u64,
    wal: Arc<NodeWal>,
    log: Arc<Mutex<Log>>,
}

fn write_err(e: WalError) -> StorageErrorOf {
    StorageIOError::write_logs(&e).into()
}

impl GroupLog {
    /// The log of `group`, with what the WAL held for it.
    pub fn new(group: u64, wal: Arc<NodeWal>, recovered: GroupState) -> Self {
        GroupLog {
            group,
            wal,
            log: Arc::new(Mutex::new(Log {
                entries: recovered.entries,
                vote: recovered.vote,
                purged: recovered.purged,
                committed: recovered.committed,
            })),
        }
    }

    /// Entries held (not purged).
    pub fn len(&self) -> usize {
        self.log.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RaftLogReader<QueueRaft> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<QueueRaft>>, StorageErrorOf> {
        Ok(self
            .log
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<QueueRaft> for GroupLog {
    type LogReader = GroupLog;

    async fn get_log_state(&mut self) -> Result<LogState<QueueRaft>, StorageErrorOf> {
        let l = self.log.lock();
        let last = l
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(l.purged);
        Ok(LogState {
            last_purged_log_id: l.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf) -> Result<(), StorageErrorOf> {
        // Durable before it counts (the WAL syncs it, with whatever else is pending).
        let wal = self.wal.clone();
        let (group, v) = (self.group, *vote);
        tokio::task::spawn_blocking(move || wal.save_vote(group, &v))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.log.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf>, StorageErrorOf> {
        Ok(self.log.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf>) -> Result<(), StorageErrorOf> {
        self.wal
            .save_committed(self.group, &committed)
            .map_err(write_err)?;
        self.log.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf>, StorageErrorOf> {
        Ok(self.log.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<QueueRaft>,
    ) -> Result<(), StorageErrorOf>
    where
        I: IntoIterator<Item = Entry<QueueRaft>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<QueueRaft>> = entries.into_iter().collect();
        // Readable at once (openraft's rule), durable when the callback fires.
        let mut l = self.log.lock();
        self.wal
            .append_entries(self.group, entries.iter(), callback)
            .map_err(write_err)?;
        for e in entries {
            l.entries.insert(e.get_log_id().index, e);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogIdOf) -> Result<(), StorageErrorOf> {
        let mut l = self.log.lock();
        self.wal
            .truncate(self.group, log_id.index)
            .map_err(write_err)?;
        l.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf) -> Result<(), StorageErrorOf> {
        let mut l = self.log.lock();
        self.wal.purge(self.group, &log_id).map_err(write_err)?;
        l.entries = l.entries.split_off(&(log_id.index + 1));
        l.purged = Some(log_id);
        Ok(())
    }
}
