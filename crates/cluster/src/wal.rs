//! The node's write-ahead log: one segment log (warren-store's [`SegmentLog`]) that every Raft
//! group on the node appends to, with group commit: a flusher thread fsyncs whatever was
//! appended since its last sync, once, and then tells every group whose appends it covered
//! (openraft's `LogFlushed` callbacks, or a waiting vote). Many groups, one fsync.
//!
//! Records: `kind` (1 byte), `group` (u64 LE), then the kind's payload, postcard-encoded:
//! - `ENTRY`: a Raft log entry (its index and term inside);
//! - `VOTE`: the group's vote (written, then synced before `save_vote` returns);
//! - `TRUNCATE`: entries from this index on are void (a new leader overwrote them);
//! - `PURGE`: entries up to this log id are no longer needed;
//! - `COMMITTED`: the last committed log id (an optimisation; losing it is harmless).
//!
//! - `FORGET`: the group is gone (its queue was deleted); everything before is void.
//!
//! Opening replays every record in order and rebuilds each group's state ([`GroupState`]).
//!
//! Old segments go: when a segment fills, the next one starts with a checkpoint (every
//! group's vote, committed id and purge point again), so an older segment matters only for
//! its entries. Once every entry in the oldest segments is purged (below a snapshot) or
//! belongs to a forgotten group, those segments are deleted after the next sync. A group
//! whose old entries hold a segment back is asked for a snapshot (which purges them).

use crate::types::{LogIdOf, QueueRaft, VoteOf};
use openraft::storage::LogFlushed;
use openraft::{Entry, RaftLogId};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use warren_store::{Backend, SegmentLog, StoreError};

const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const TRUNCATE: u8 = 3;
const PURGE: u8 = 4;
const COMMITTED: u8 = 5;
/// The group is gone: everything before this record is forgotten.
const FORGET: u8 = 6;

/// Segments of 64 MiB, as the queues' message logs.
const SEGMENT_SIZE: u32 = 64 << 20;

/// What the log holds for one group after a restart.
#[derive(Default, Debug)]
pub struct GroupState {
    pub entries: BTreeMap<u64, Entry<QueueRaft>>,
    pub vote: Option<VoteOf>,
    pub purged: Option<LogIdOf>,
    pub committed: Option<LogIdOf>,
}

impl GroupState {
    fn replay(&mut self, kind: u8, payload: &[u8]) -> Result<(), postcard::Error> {
        match kind {
            ENTRY => {
                let e: Entry<QueueRaft> = postcard::from_bytes(payload)?;
                self.entries.insert(e.get_log_id().index, e);
            }
            VOTE => self.vote = Some(postcard::from_bytes(payload)?),
            TRUNCATE => {
                let from: u64 = postcard::from_bytes(payload)?;
                self.entries.split_off(&from);
            }
            PURGE => {
                let upto: LogIdOf = postcard::from_bytes(payload)?;
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
            COMMITTED => self.committed = postcard::from_bytes(payload)?,
            FORGET => *self = GroupState::default(),
            _ => {}
        }
        Ok(())
    }
}

/// Someone waiting for appends to be durable.
enum Waiter {
    Raft(LogFlushed<QueueRaft>),
    Vote(std::sync::mpsc::Sender<std::io::Result<()>>),
}

impl Waiter {
    fn done(self, r: &Result<(), String>) {
        let io = || match r {
            Ok(()) => Ok(()),
            Err(e) => Err(std::io::Error::other(e.clone())),
        };
        match self {
            Waiter::Raft(cb) => cb.log_io_completed(io()),
            Waiter::Vote(tx) => {
                let _ = tx.send(io());
            }
        }
    }
}

/// A group's latest records that every segment after a roll-over repeats.
#[derive(Default)]
struct Latest {
    vote: Option<VoteOf>,
    committed: Option<LogIdOf>,
    purged: Option<LogIdOf>,
}

struct Inner {
    log: SegmentLog,
    /// Waiting for the next sync, in append order.
    waiting: Vec<Waiter>,
    scratch: Vec<u8>,
    closed: bool,
    /// The segment the last record went to (a change is a roll-over).
    segment: u32,
    latest: HashMap<u64, Latest>,
    /// For each segment, the highest entry index of each group in it.
    entries_in: BTreeMap<u32, HashMap<u64, u64>>,
    /// Segments whose records are no longer needed, deleted after the next sync.
    removable: Vec<u32>,
    /// How to ask a group for a snapshot (its state machine's request channel).
    askers: HashMap<u64, tokio::sync::mpsc::Sender<()>>,
}

impl Inner {
    /// The oldest segments whose entries are all purged or forgotten become removable; the
    /// groups that hold the next one back are asked for a snapshot.
    fn collect_garbage(&mut self) {
        let current = self.log.current_segment();
        let mut blocking = Vec::new();
        while let Some((&seg, groups)) = self.entries_in.first_key_value() {
            if seg == current {
                break;
            }
            blocking.extend(groups.iter().filter_map(|(group, &max)| {
                let purged = self
                    .latest
                    .get(group)
                    .and_then(|l| l.purged)
                    .map(|p| p.index);
                (purged < Some(max)).then_some(*group)
            }));
            if !blocking.is_empty() {
                break;
            }
            self.entries_in.pop_first();
            self.removable.push(seg);
        }
        for group in blocking {
            if let Some(a) = self.askers.get(&group) {
                let _ = a.try_send(());
            }
        }
    }
}

/// The reaper thread: deletes the files of segments the log has forgotten, once the
/// directory entries of the segments that replace them (with the purge points that make the
/// old ones unneeded) are durable; then makes the deletions durable. A file is first renamed
/// out of the log's names (`….doomed`), then cut down 1 MiB at a time, 10 ms apart (0.7 s
/// for a 64 MiB segment; a busy node fills one every 2–3 s), and removed: deleting 64 MiB at
/// once took 40–160 ms of the kernel's time here, during which the group commit's
/// fdatasyncs waited (50 ms instead of a few), and 4 MiB steps 2 ms apart still showed in
/// the confirm latency's p99 (bench/cluster3.sh one queue: 91–147 ms against 66–77 ms). A `.doomed` file left by a stop is
/// deleted at the next start.
fn reap(
    backend: &dyn Backend,
    dir: &std::path::Path,
    doomed: std::sync::mpsc::Receiver<Vec<std::path::PathBuf>>,
) {
    for name in backend.list(dir).unwrap_or_default() {
        if name.ends_with(DOOMED) {
            let _ = backend.remove(&dir.join(name));
        }
    }
    while let Ok(paths) = doomed.recv() {
        if let Err(e) = backend.sync_dir(dir) {
            tracing::warn!(error = %e, "could not sync the write-ahead log's directory; old segments are kept until the next start");
            continue;
        }
        for path in &paths {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(DOOMED);
            let aside = path.with_file_name(name);
            let removed = backend
                .rename(path, &aside)
                .and_then(|()| shrink(backend, &aside))
                .and_then(|()| backend.remove(&aside));
            if let Err(e) = removed {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a write-ahead log segment no longer needed");
                }
            }
        }
        if let Err(e) = backend.sync_dir(dir) {
            tracing::warn!(error = %e, "could not sync the write-ahead log's directory after deleting segments");
        }
    }
}

/// The suffix of a segment file being deleted.
const DOOMED: &str = ".doomed";

/// Cuts a file down to nothing, [`SHRINK_STEP`] at a time with a pause between steps.
fn shrink(backend: &dyn Backend, path: &std::path::Path) -> std::io::Result<()> {
    const SHRINK_STEP: u64 = 1 << 20;
    let mut f = backend.open_append(path)?;
    let mut len = f.len();
    while len > 0 {
        len = len.saturating_sub(SHRINK_STEP);
        f.truncate(len)?;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// The node's write-ahead log (shared by its groups).
pub struct NodeWal {
    inner: Mutex<Inner>,
    work: Condvar,
    backend: Arc<dyn Backend>,
    /// Where each group's latest snapshot is kept (`<group>.snap`).
    snapshots: std::path::PathBuf,
    /// Deletes the files of segments no longer needed (see [`NodeWal::remove_segments`]).
    reaper: std::sync::mpsc::Sender<Vec<std::path::PathBuf>>,
}

/// Why the WAL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("write-ahead log record {at} of group {group} is undecodable: {source}")]
    Decode {
        at: String,
        group: u64,
        source: postcard::Error,
    },
    #[error("write-ahead log record cannot be encoded: {0}")]
    Encode(postcard::Error),
    #[error("the write-ahead log is closed")]
    Closed,
    #[error("write-ahead log: {0}")]
    Io(#[from] std::io::Error),
}

impl NodeWal {
    /// Opens (creating) the WAL in `dir`, replays it, and starts its flusher thread. Returns
    /// the WAL and what it holds for each group.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: &Path,
    ) -> Result<(Arc<NodeWal>, HashMap<u64, GroupState>), WalError> {
        Self::open_with_segment_size(backend, dir, SEGMENT_SIZE)
    }

    /// [`NodeWal::open`] with segments of `segment_size` bytes (tests use small ones).
    pub fn open_with_segment_size(
        backend: Arc<dyn Backend>,
        dir: &Path,
        segment_size: u32,
    ) -> Result<(Arc<NodeWal>, HashMap<u64, GroupState>), WalError> {
        let mut groups: HashMap<u64, GroupState> = HashMap::new();
        let mut entries_in: BTreeMap<u32, HashMap<u64, u64>> = BTreeMap::new();
        let mut bad: Option<WalError> = None;
        let backend_for_snapshots = backend.clone();
        let log = SegmentLog::open(backend, dir, "wal", segment_size, |pos, rec| {
            if bad.is_some() || rec.len() < 9 {
                return;
            }
            let group = u64::from_le_bytes(rec[1..9].try_into().expect("8 bytes"));
            let state = groups.entry(group).or_default();
            let segment = entries_in.entry(pos.segment).or_default();
            match state.replay(rec[0], &rec[9..]) {
                Err(source) => {
                    bad = Some(WalError::Decode {
                        at: pos.to_string(),
                        group,
                        source,
                    })
                }
                Ok(()) if rec[0] == ENTRY => {
                    let last = state.entries.last_key_value().map_or(0, |(i, _)| *i);
                    let max = segment.entry(group).or_default();
                    *max = (*max).max(last);
                }
                Ok(()) if rec[0] == FORGET => {
                    for (_, groups) in entries_in.range_mut(..pos.segment) {
                        groups.remove(&group);
                    }
                }
                Ok(()) => {}
            }
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        let latest = groups
            .iter()
            .map(|(&id, g)| {
                let l = Latest {
                    vote: g.vote,
                    committed: g.committed,
                    purged: g.purged,
                };
                (id, l)
            })
            .collect();
        // The snapshot directory's entry must be durable before a snapshot in it counts.
        let snapshots = dir.join("snapshots");
        backend_for_snapshots.create_dir_all(&snapshots)?;
        backend_for_snapshots.sync_dir(dir)?;
        let segment = log.current_segment();
        entries_in.entry(segment).or_default();
        let inner = Inner {
            log,
            waiting: Vec::new(),
            scratch: Vec::new(),
            closed: false,
            segment,
            latest,
            entries_in,
            removable: Vec::new(),
            askers: HashMap::new(),
        };
        let (reaper, doomed) = std::sync::mpsc::channel();
        let (backend, wal_dir) = (backend_for_snapshots.clone(), dir.to_path_buf());
        std::thread::Builder::new()
            .name("warren-raft-wal-reaper".into())
            .spawn(move || reap(&*backend, &wal_dir, doomed))?;
        let wal = Arc::new(NodeWal {
            inner: Mutex::new(inner),
            work: Condvar::new(),
            backend: backend_for_snapshots,
            snapshots,
            reaper,
        });
        {
            // The segment log may have started a fresh segment (after a damaged tail): give
            // it the checkpoint a roll-over would have, before any older segment may go (they
            // could hold a group's only purge point or vote).
            let mut g = wal.inner.lock();
            wal.checkpoint(&mut g)?;
            g.collect_garbage();
        }
        let flusher = wal.clone();
        std::thread::Builder::new()
            .name("warren-raft-wal".into())
            .spawn(move || flusher.flush_loop())?;
        Ok((wal, groups))
    }

    /// Appends records (buffered; durable at the next sync).
    fn append(
        &self,
        g: &mut Inner,
        group: u64,
        kind: u8,
        value: &impl serde::Serialize,
    ) -> Result<warren_store::Position, WalError> {
        if g.closed {
            return Err(WalError::Closed);
        }
        let mut buf = std::mem::take(&mut g.scratch);
        buf.clear();
        buf.push(kind);
        buf.extend_from_slice(&group.to_le_bytes());
        let r = postcard::to_extend(value, buf).map_err(WalError::Encode);
        let buf = r?;
        let res = g.log.append(&buf).map_err(WalError::from);
        g.scratch = buf;
        let pos = res?;
        if pos.segment != g.segment {
            g.segment = pos.segment;
            g.entries_in.entry(pos.segment).or_default();
            self.checkpoint(g)?;
            g.collect_garbage();
        }
        Ok(pos)
    }

    /// Repeats every group's latest vote, committed id and purge point at the start of a new
    /// segment, so that older segments matter only for their entries.
    fn checkpoint(&self, g: &mut Inner) -> Result<(), WalError> {
        // (group, vote, committed, purged)
        type Latest = (u64, Option<VoteOf>, Option<LogIdOf>, Option<LogIdOf>);
        let latest: Vec<Latest> = g
            .latest
            .iter()
            .map(|(&id, l)| (id, l.vote, l.committed, l.purged))
            .collect();
        for (group, vote, committed, purged) in latest {
            if let Some(v) = vote {
                self.append(g, group, VOTE, &v)?;
            }
            if committed.is_some() {
                self.append(g, group, COMMITTED, &committed)?;
            }
            if let Some(p) = purged {
                self.append(g, group, PURGE, &p)?;
            }
        }
        Ok(())
    }

    /// Lets the WAL ask group `group` for a snapshot when its old entries hold back the
    /// removal of a segment.
    pub fn on_snapshot_needed(&self, group: u64, ask: tokio::sync::mpsc::Sender<()>) {
        self.inner.lock().askers.insert(group, ask);
    }

    /// Segment files of the WAL now.
    pub fn segments(&self) -> Vec<u32> {
        self.inner.lock().log.segment_ids()
    }

    /// Appends log entries; `flushed` is told once they are durable.
    pub fn append_entries<'a>(
        &self,
        group: u64,
        entries: impl IntoIterator<Item = &'a Entry<QueueRaft>>,
        flushed: LogFlushed<QueueRaft>,
    ) -> Result<(), WalError> {
        let mut g = self.inner.lock();
        for e in entries {
            let pos = self.append(&mut g, group, ENTRY, e)?;
            let max = g
                .entries_in
                .entry(pos.segment)
                .or_default()
                .entry(group)
                .or_default();
            *max = (*max).max(e.get_log_id().index);
        }
        g.waiting.push(Waiter::Raft(flushed));
        self.work.notify_one();
        Ok(())
    }

    /// Writes the group's vote and returns once it is durable.
    pub fn save_vote(&self, group: u64, vote: &VoteOf) -> Result<(), WalError> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut g = self.inner.lock();
            g.latest.entry(group).or_default().vote = Some(*vote);
            self.append(&mut g, group, VOTE, vote)?;
            g.waiting.push(Waiter::Vote(tx));
            self.work.notify_one();
        }
        match rx.recv() {
            Ok(r) => r.map_err(WalError::Io),
            Err(_) => Err(WalError::Closed),
        }
    }

    /// Entries from `from` on are void.
    pub fn truncate(&self, group: u64, from: u64) -> Result<(), WalError> {
        let mut g = self.inner.lock();
        self.append(&mut g, group, TRUNCATE, &from).map(drop)
    }

    /// Entries up to `upto` are no longer needed.
    pub fn purge(&self, group: u64, upto: &LogIdOf) -> Result<(), WalError> {
        let mut g = self.inner.lock();
        g.latest.entry(group).or_default().purged = Some(*upto);
        self.append(&mut g, group, PURGE, upto)?;
        g.collect_garbage();
        Ok(())
    }

    /// The last committed log id (made durable by whichever sync comes next).
    pub fn save_committed(&self, group: u64, committed: &Option<LogIdOf>) -> Result<(), WalError> {
        let mut g = self.inner.lock();
        g.latest.entry(group).or_default().committed = *committed;
        self.append(&mut g, group, COMMITTED, committed).map(drop)
    }

    /// Forgets group `group` (its queue was deleted): a restart finds nothing of it. Not
    /// waited for: if the record is lost, the next start forgets the group again (its queue
    /// is not in the definitions).
    pub fn forget(&self, group: u64) -> Result<(), WalError> {
        // Synced before the snapshot goes: a restart must not find the group's log purged
        // below a snapshot that is gone.
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut g = self.inner.lock();
            self.append(&mut g, group, FORGET, &())?;
            g.latest.remove(&group);
            g.askers.remove(&group);
            let current = g.log.current_segment();
            for (_, groups) in g.entries_in.range_mut(..current) {
                groups.remove(&group);
            }
            g.collect_garbage();
            g.waiting.push(Waiter::Vote(tx));
            self.work.notify_one();
        }
        match rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(WalError::Closed),
        }
        match self.backend.remove(&self.snapshot_path(group)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn snapshot_path(&self, group: u64) -> std::path::PathBuf {
        self.snapshots.join(format!("{group:016x}.snap"))
    }

    /// Replaces group `group`'s snapshot with `data`, durably (written aside, synced, renamed
    /// over the old one, directory synced): a cut leaves the old snapshot or the new one.
    pub fn save_snapshot(&self, group: u64, data: &[u8]) -> Result<(), WalError> {
        let (path, tmp) = (
            self.snapshot_path(group),
            self.snapshots.join(format!("{group:016x}.tmp")),
        );
        match self.backend.remove(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut f = self.backend.open_append(&tmp)?;
        f.append(&(data.len() as u64).to_le_bytes())?;
        f.append(data)?;
        f.sync()?;
        drop(f);
        self.backend.rename(&tmp, &path)?;
        self.backend.sync_dir(&self.snapshots)?;
        Ok(())
    }

    /// Group `group`'s last saved snapshot, if any.
    pub fn load_snapshot(&self, group: u64) -> Result<Option<Vec<u8>>, WalError> {
        let f = match self.backend.open_read(&self.snapshot_path(group)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut len = [0u8; 8];
        f.read_at(0, &mut len)?;
        let len = u64::from_le_bytes(len);
        if f.len() < 8 + len {
            return Err(WalError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "snapshot of group {group} is shorter than it says ({} of {} bytes)",
                    f.len(),
                    8 + len
                ),
            )));
        }
        let mut data = vec![0u8; len as usize];
        f.read_at(8, &mut data)?;
        Ok(Some(data))
    }

    /// Stops the flusher after its last sync (tests restart a node on the same directory).
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.work.notify_one();
    }

    /// Segments no longer needed (after a successful sync): forgotten by the log under the
    /// lock, their files deleted by the reaper thread, outside it and off the group commit's
    /// path (deleting a 64 MiB segment took 50–120 ms here, and every confirm waited for it:
    /// the tail of a busy quorum queue's confirm latency).
    fn remove_segments(&self, removable: &mut Vec<u32>) {
        let paths: Vec<std::path::PathBuf> = {
            let mut g = self.inner.lock();
            removable
                .drain(..)
                .filter_map(|seg| match g.log.forget_segment(seg) {
                    Ok(path) => path,
                    Err(e) => {
                        tracing::warn!(segment = seg, error = %e, "could not remove a write-ahead log segment no longer needed");
                        None
                    }
                })
                .collect()
        };
        if !paths.is_empty() {
            let _ = self.reaper.send(paths);
        }
    }

    /// The group commit: wait for appends, fsync them once (outside the lock, so appends go
    /// on), tell everyone the sync covered.
    fn flush_loop(&self) {
        let mut removable;
        loop {
            let (waiting, handles) = {
                let mut g = self.inner.lock();
                while g.waiting.is_empty() && !g.closed {
                    self.work.wait(&mut g);
                }
                if g.waiting.is_empty() && g.closed {
                    return;
                }
                let waiting = std::mem::take(&mut g.waiting);
                // Removable before this sync: what made them so is in it.
                removable = std::mem::take(&mut g.removable);
                (waiting, g.log.begin_sync())
            };
            let result: Result<(), String> = match handles {
                Err(e) => Err(e.to_string()),
                Ok(handles) => {
                    let fsynced = handles.into_iter().try_for_each(|h| h());
                    self.inner
                        .lock()
                        .log
                        .end_sync(fsynced)
                        .map_err(|e| e.to_string())
                }
            };
            let synced = result.is_ok();
            if let Err(e) = &result {
                tracing::error!(error = %e, "write-ahead log sync failed; the log is poisoned until restart");
            }
            for w in waiting {
                w.done(&result);
            }
            if synced && !removable.is_empty() {
                self.remove_segments(&mut removable);
            }
        }
    }
}
