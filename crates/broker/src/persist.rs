//! Durability wiring: which queues have a message store, group commit (one fsync per batch of
//! publishes, however many), and the durable definitions (saved in the background, coalesced).
//!
//! Group commit works in epochs. A persistent publish records the current epoch; the flusher
//! thread closes the epoch (bumping the counter and taking the list of queues written to),
//! fsyncs those queues' stores, and then announces the epoch as synced. Publisher confirms for
//! messages of epoch E go out once E is announced. The `gate` makes "read the epoch, append,
//! enlist the queue" atomic with respect to "close the epoch", so no append can slip between
//! an epoch's closing and its fsync.
//!
//! An append can still land in an epoch's sync: a queue enlisted for epoch E stays marked
//! dirty until its turn in E's group commit comes, so an append of epoch E+1 made meanwhile
//! does not enlist it again; E's sync writes it. That is fine when the sync succeeds. When it
//! fails, the queue is synced once more in E+1 (see `retry`), so that E+1 fails too and the
//! append is nacked, rather than acked by an E+1 with nothing to sync for that queue.
//!
//! Persistence does not know the broker: the broker's flusher thread (`Broker::open`) waits
//! here for work and runs each group commit, handing in how to take a snapshot of the
//! definitions when they need saving.

use crate::definitions::Definitions;
use crate::definitions_journal::{DefScope, DefinitionsSource};
use crate::queue::Queue;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren_store::{Backend, Catalog, QueueStore, Recovery, StoreOptions};

/// More definition changes than this between two group commits are saved by one full save.
const MAX_SCOPES_PER_SAVE: usize = 4096;

/// What connections watch to release publisher confirms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Every persistent write of an epoch up to this one is on disk.
    pub synced_epoch: u64,
    /// The last epoch whose fsync failed: its messages are nacked, and so are those of any
    /// earlier epoch a connection sees synced only now (it may have missed the state that
    /// named that epoch, if it failed too).
    pub failed_epoch: u64,
    /// The last epoch whose group commit could not save the definitions: the answers to
    /// definition changes that waited for it are errors (the change is in effect, but a
    /// restart may not keep it).
    pub definitions_failed_epoch: u64,
}

pub struct Persistence {
    dir: PathBuf,
    backend: Arc<dyn Backend>,
    catalog: Catalog,
    pub(crate) gate: RwLock<()>,
    epoch: AtomicU64,
    dirty: Mutex<Vec<Arc<Queue>>>,
    /// Queues whose sync failed in the last group commit, to sync again in the next one.
    retry: Mutex<Vec<Arc<Queue>>>,
    /// Queues whose acks and delivered marks the last group commit left unsynced (see
    /// `QueueStore::begin_group_sync`), synced in a later one.
    lazy: Mutex<Vec<Arc<Queue>>>,
    /// One group commit at a time: a caller's flush returns only after any commit running in
    /// the flusher thread (which may hold the work it needs, e.g. a definitions save) is done.
    commit_lock: Mutex<()>,
    defs_dirty: AtomicBool,
    /// The epoch whose group commit saves the latest definition change (see
    /// [`Persistence::definitions_saved`]).
    defs_epoch: AtomicU64,
    /// What the last save made durable (changes are journaled against it).
    defs_journal: Mutex<crate::definitions_journal::DefinitionsJournal>,
    /// What the changes not saved yet touched.
    defs_touched: Mutex<Vec<DefScope>>,
    wake: Condvar,
    wake_lock: Mutex<bool>,
    synced: tokio::sync::watch::Sender<SyncState>,
    pub store_options: StoreOptions,
    /// Where quorum queues are replicated (the node's Raft groups), when enabled: see
    /// [`crate::queue::replica`]. Without one, a quorum queue is a single-node queue with
    /// quorum semantics, stored as a durable classic queue is.
    replicas: std::sync::OnceLock<Arc<dyn crate::queue::replica::ReplicaHost>>,
    /// The cluster's metadata log, if this node is in a cluster.
    metadata: std::sync::OnceLock<Arc<dyn crate::metadata::MetadataLog>>,
}

impl Persistence {
    pub fn new(dir: impl Into<PathBuf>, backend: Arc<dyn Backend>) -> Arc<Self> {
        let dir = dir.into();
        // Paged-out transient messages do not outlive the process.
        let transient = dir.join("transient");
        match backend.remove_dir_all(&transient) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Not fatal (paged-out transient messages are never recovered), but the files
            // keep their disk space.
            Err(e) => tracing::warn!(dir = %transient.display(), error = %e,
                "cannot remove the paged-out transient messages of the last run; remove the directory by hand"),
        }
        let (synced, _) = tokio::sync::watch::channel(SyncState::default());
        Arc::new(Persistence {
            catalog: Catalog::new(backend.clone(), dir.clone()),
            dir,
            backend,
            gate: RwLock::new(()),
            epoch: AtomicU64::new(1),
            dirty: Mutex::new(Vec::new()),
            retry: Mutex::new(Vec::new()),
            lazy: Mutex::new(Vec::new()),
            commit_lock: Mutex::new(()),
            defs_dirty: AtomicBool::new(false),
            defs_epoch: AtomicU64::new(0),
            defs_journal: Mutex::new(Default::default()),
            defs_touched: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            synced,
            store_options: StoreOptions::default(),
            replicas: std::sync::OnceLock::new(),
            metadata: std::sync::OnceLock::new(),
        })
    }

    /// Replicates quorum queues with `host` (set before [`crate::Broker::open`]).
    pub fn set_replica_host(&self, host: Arc<dyn crate::queue::replica::ReplicaHost>) {
        let _ = self.replicas.set(host);
    }

    pub fn replica_host(&self) -> Option<&Arc<dyn crate::queue::replica::ReplicaHost>> {
        self.replicas.get()
    }

    /// Replicates definitions through the cluster's metadata log (set once the broker is
    /// open: what it restores from its own definitions file is not replicated again).
    pub fn set_metadata_log(&self, log: Arc<dyn crate::metadata::MetadataLog>) {
        let _ = self.metadata.set(log);
    }

    pub fn metadata_log(&self) -> Option<&Arc<dyn crate::metadata::MetadataLog>> {
        self.metadata.get()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backend every store's files go through.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The last group commit announced.
    pub fn sync_state(&self) -> SyncState {
        *self.synced.borrow()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<SyncState> {
        self.synced.subscribe()
    }

    pub(crate) fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Where transient queues page their backlogs out (emptied at every start).
    pub fn transient_dir(&self) -> PathBuf {
        self.dir.join("transient")
    }

    /// The directory of a durable queue's message store.
    pub fn queue_dir(&self, vhost: &str, queue: &str) -> PathBuf {
        self.dir
            .join("queues")
            .join(encode_name(vhost))
            .join(encode_name(queue))
    }

    /// Opens (or creates) a message store in a directory of its own under the data directory.
    pub(crate) fn open_store(&self, dir: PathBuf) -> warren_store::Result<(QueueStore, Recovery)> {
        QueueStore::open(self.backend.clone(), dir, self.store_options)
    }

    pub(crate) fn open_queue_store(
        &self,
        vhost: &str,
        queue: &str,
    ) -> warren_store::Result<(QueueStore, Recovery)> {
        // Records of transient messages (paged out) are dropped as the store opens, and so
        // are those of a transaction whose commit did not finish.
        QueueStore::open_transactional(
            self.backend.clone(),
            self.queue_dir(vhost, queue),
            self.store_options,
            crate::message::Message::record_is_persistent,
            crate::message::Message::record_tx,
        )
    }

    /// Called with the gate held (read) after a queue appended: the flusher will fsync it.
    pub(crate) fn enlist(&self, q: &Arc<Queue>) {
        self.dirty.lock().push(q.clone());
        self.kick();
    }

    /// Definitions changed within `scope` (the change is made): save them soon.
    pub fn definitions_changed(&self, scope: DefScope) {
        {
            let mut touched = self.defs_touched.lock();
            // Thousands of changes before one commit (an import): one full save instead.
            if touched.len() >= MAX_SCOPES_PER_SAVE {
                touched.clear();
                touched.push(DefScope::All);
            } else if touched.first() != Some(&DefScope::All) {
                touched.push(scope);
            }
        }
        // After the scope is listed: the commit that sees the flag takes the list after it.
        self.defs_dirty.store(true, Ordering::SeqCst);
        // Read after the flag is set: the commit that closes this epoch swaps the flag after
        // closing it, so it (or an earlier one) saves this change.
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.defs_epoch.fetch_max(epoch, Ordering::SeqCst);
        self.kick();
    }

    /// The definitions saved from a file: the last full save with the changes journaled
    /// since applied; `None` if none were ever saved.
    pub fn load_definitions(&self) -> warren_store::Result<Option<Definitions>> {
        let Some((defs, changes)) = self.catalog.load_journaled::<Definitions>()? else {
            return Ok(None);
        };
        crate::definitions_journal::replay(defs, changes)
            .map(Some)
            .map_err(|reason| warren_store::StoreError::CatalogCorrupt {
                path: self.catalog.path(),
                reason,
            })
    }

    /// Waits until every definition change made so far is on disk; `false` if the save
    /// failed (the change is in effect but would not survive a restart). The answer to a
    /// declaration or deletion waits for this, as RabbitMQ's waits for its metadata store.
    pub async fn definitions_saved(&self) -> bool {
        let epoch = self.defs_epoch.load(Ordering::SeqCst);
        let mut rx = self.synced.subscribe();
        let Ok(s) = rx.wait_for(|s| s.synced_epoch >= epoch).await else {
            return false;
        };
        s.definitions_failed_epoch < epoch
    }

    /// The epoch to wait for before answering a definition change just made (0: none is
    /// waiting to be saved), for callers that cannot await ([`Persistence::definitions_saved`]).
    pub fn definitions_epoch(&self) -> u64 {
        let epoch = self.defs_epoch.load(Ordering::SeqCst);
        let s = *self.synced.borrow();
        // A save that failed already is reported by whoever waits for its epoch.
        if s.synced_epoch >= epoch && s.definitions_failed_epoch < epoch {
            0
        } else {
            epoch
        }
    }

    fn kick(&self) {
        let mut w = self.wake_lock.lock();
        if !*w {
            *w = true;
            self.wake.notify_one();
        }
    }

    /// The flusher's wait: until a publish or a definitions change asks for a group commit,
    /// or 200 ms (acks and delivered marks are synced at that pace).
    pub(crate) fn wait_for_work(&self) {
        let mut w = self.wake_lock.lock();
        if !*w {
            self.wake.wait_for(&mut w, Duration::from_millis(200));
        }
        *w = false;
    }

    /// The broker is gone: forget the queues left to sync again (their references would keep
    /// their stores open).
    pub(crate) fn release_queues(&self) {
        self.retry.lock().clear();
        self.lazy.lock().clear();
    }

    /// One group commit: close the epoch, fsync what it wrote, save the definitions if they
    /// changed (read from `definitions`), announce the epoch.
    pub fn flush_once(&self, definitions: &dyn DefinitionsSource) {
        self.commit(false, definitions)
    }

    /// A group commit that leaves nothing unsynced, marks included (shutdown).
    pub fn flush_all(&self, definitions: &dyn DefinitionsSource) {
        self.commit(true, definitions)
    }

    fn commit(&self, full: bool, definitions: &dyn DefinitionsSource) {
        let _one_at_a_time = self.commit_lock.lock();
        let (epoch, queues, mut retry) = {
            let _g = self.gate.write();
            let e = self.epoch.fetch_add(1, Ordering::SeqCst);
            let mut retry = std::mem::take(&mut *self.retry.lock());
            retry.append(&mut self.lazy.lock());
            (e, std::mem::take(&mut *self.dirty.lock()), retry)
        };
        if !retry.is_empty() {
            let mut seen = HashSet::new();
            retry.retain(|r| seen.insert(Arc::as_ptr(r)));
            // A queue enlisted again needs no second sync (and, enlisted, is retried if it fails).
            let enlisted: HashSet<*const Queue> = queues.iter().map(Arc::as_ptr).collect();
            retry.retain(|r| !enlisted.contains(&Arc::as_ptr(r)));
        }
        let mut failed = false;
        let mut failed_enlisted = Vec::new();
        for (q, enlisted) in queues
            .iter()
            .map(|q| (q, true))
            .chain(retry.iter().map(|q| (q, false)))
        {
            let synced = q.sync_store(full);
            if let Ok(true) = synced {
                self.lazy.lock().push(q.clone());
            }
            if let Err(e) = synced {
                failed = true;
                tracing::error!(queue = %q.name, vhost = %q.vhost_name, error = %e,
                    "fsync of the message store failed; publishes are nacked. Check the disk, then restart the broker");
                // Only once: nothing marks a queue dirty for its retry, so no later append
                // skips enlisting on the retry's account.
                if enlisted {
                    failed_enlisted.push(q.clone());
                }
            }
        }
        if !failed_enlisted.is_empty() {
            // Not kicked: the next group commit comes soon enough (at most 200 ms).
            self.retry.lock().extend(failed_enlisted);
        }
        // Before the epoch is announced: a message confirmed in a queue declared just before
        // it must not be lost because the queue itself was not saved yet (at the next start,
        // the store of a queue missing from the definitions is removed as an orphan). Every
        // declaration that happened before a publish of this epoch set `defs_dirty` before
        // the epoch closed above.
        let mut defs_failed = false;
        if self.defs_dirty.swap(false, Ordering::SeqCst) {
            let scopes = std::mem::take(&mut *self.defs_touched.lock());
            let saved = self
                .defs_journal
                .lock()
                .save(&self.catalog, definitions, &scopes);
            if let Err(e) = saved {
                self.defs_dirty.store(true, Ordering::SeqCst);
                defs_failed = true;
                failed = true;
                tracing::error!(error = %e, "saving definitions failed; publishes are nacked and the save is retried. Check free disk space");
            }
        }
        self.synced.send_modify(|s| {
            s.synced_epoch = epoch;
            if failed {
                s.failed_epoch = epoch;
            }
            if defs_failed {
                s.definitions_failed_epoch = epoch;
            }
        });
    }

    /// Removes store directories of queues that no longer exist (a crash can leave one behind
    /// after a queue deletion). Linear in the queues: a start with 100,000 durable queues looks
    /// each directory up in a set of their encoded names.
    pub fn remove_orphans(&self, keep: &[(String, String)]) {
        let root = self.dir.join("queues");
        let cannot_list = |dir: &Path, e: &std::io::Error| {
            tracing::warn!(dir = %dir.display(), error = %e,
                "cannot list the message stores to remove those of deleted queues");
        };
        // Through the backend, as every other file operation of the store.
        let vhosts = match self.backend.list(&root) {
            Ok(v) => v,
            // No durable queue was ever created.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => return cannot_list(&root, &e),
        };
        let keep: std::collections::HashSet<(String, String)> = keep
            .iter()
            .map(|(v, q)| (encode_name(v), encode_name(q)))
            .collect();
        for vn in vhosts {
            let vhost_dir = root.join(&vn);
            let queues = match self.backend.list(&vhost_dir) {
                Ok(q) => q,
                Err(e) => {
                    cannot_list(&vhost_dir, &e);
                    continue;
                }
            };
            for qn in queues {
                if !keep.contains(&(vn.clone(), qn.clone())) {
                    let dir = vhost_dir.join(&qn);
                    tracing::info!(dir = %dir.display(), "removing message store of a deleted queue");
                    // A store left behind would hand its messages to a queue declared later
                    // under the same name.
                    if let Err(e) = self.backend.remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e,
                            "cannot remove the message store of a deleted queue; remove it by hand before declaring a queue of that name");
                    }
                }
            }
        }
    }
}

/// A file-name-safe form of a vhost or queue name: letters, digits, `-`, `_` and `.` stay,
/// every other byte becomes `%XX`.
pub fn encode_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('q');
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Start-up removes the store directories of deleted queues by looking each directory up
    /// in a set: 100,000 queues take well under seconds, not 10^10 name comparisons.
    #[test]
    fn removing_orphans_is_linear_in_the_queues() {
        const N: usize = 100_000;
        let dir = crate::testutil::TestDir::new("orphans");
        let vhost_dir = dir.path().join("queues").join(encode_name("/"));
        for i in 0..N {
            std::fs::create_dir_all(vhost_dir.join(encode_name(&format!("q-{i}")))).unwrap();
        }
        let p = Persistence::new(dir.path(), warren_store::FileBackend::shared());
        // Every queue but the last ten still exists.
        let keep: Vec<(String, String)> = (0..N - 10)
            .map(|i| ("/".to_string(), format!("q-{i}")))
            .collect();
        let t = std::time::Instant::now();
        p.remove_orphans(&keep);
        let took = t.elapsed();
        let left = std::fs::read_dir(&vhost_dir).unwrap().count();
        assert_eq!(left, N - 10);
        assert!(!vhost_dir
            .join(encode_name(&format!("q-{}", N - 1)))
            .exists());
        assert!(vhost_dir.join(encode_name("q-0")).exists());
        assert!(
            took < std::time::Duration::from_secs(10),
            "{N} queues took {took:?}"
        );
        drop(p);
    }
}
