//! The node's replicated queues as the broker reaches them: [`LocalNode`] is the broker's
//! [`ReplicaHost`]. It owns the node's write-ahead log and a small tokio runtime of its own
//! for the Raft groups (so the broker's threads may wait for an answer without stalling
//! Raft), opens one group per quorum queue, and gives the broker a [`Replica`] per group.
//!
//! A queue's group id is derived from its vhost and name, so a restart finds the group's log
//! again without storing the id anywhere; a deleted queue's group is forgotten in the WAL
//! before the deletion returns, so a queue declared again by that name starts empty.
//!
//! Commands reach the log in the order they were submitted: one task per group takes what is
//! waiting in its channel and proposes it as one entry (`client_write_ff`) before taking
//! more; answers are awaited apart, so entries are in flight while the next fills.

use crate::group::QueueGroup;
use crate::types::NodeId;
use crate::wal::{GroupState, NodeWal, WalError};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use warren_broker::queue::replica::{Answer, OutputSink, Replica, ReplicaHost};
use warren_broker::queue::{Owner, QueueCommand, QueueEngine, QueueOptions};
use warren_store::Backend;

/// How long opening a group may take (leading it and applying its log again).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Threads of the Raft runtime are named so; a caller on one must not wait for another task
/// of the same runtime.
const THREAD_NAME: &str = "warren-raft";

/// The group id of queue `name` in `vhost`.
pub fn group_id(vhost: &str, name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(vhost.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// This node's replicated queues (a node alone, for now: every group has one member).
pub struct LocalNode {
    id: NodeId,
    wal: Arc<NodeWal>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// What the WAL held for groups not opened yet since the start.
    recovered: Mutex<HashMap<u64, GroupState>>,
}

impl LocalNode {
    /// Opens the node's WAL in `dir` (replaying it) and starts the Raft runtime.
    pub fn open(backend: Arc<dyn Backend>, dir: &Path) -> Result<Arc<LocalNode>, WalError> {
        let (wal, recovered) = NodeWal::open(backend, dir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        if !recovered.is_empty() {
            tracing::info!(groups = recovered.len(), dir = %dir.display(), "replicated queues' log replayed");
        }
        Ok(Arc::new(LocalNode {
            id: 1,
            wal,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            recovered: Mutex::new(recovered),
        }))
    }

    /// Runs `fut` on the Raft runtime and waits for it from this (non-Raft) thread.
    fn wait_for<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        // Dropping a runtime inside another's async context panics; let it wind down apart.
        if let Some(rt) = self.runtime.lock().take() {
            rt.shutdown_background();
        }
        self.wal.close();
    }
}

fn on_raft_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with(THREAD_NAME))
}

impl ReplicaHost for LocalNode {
    fn open(
        &self,
        vhost: &str,
        name: &str,
        opts: QueueOptions,
        outputs: OutputSink,
    ) -> Result<Arc<dyn Replica>, String> {
        if on_raft_thread() {
            return Err("a replicated queue cannot be opened from a Raft thread".into());
        }
        let id = group_id(vhost, name);
        let recovered = self.recovered.lock().remove(&id).unwrap_or_default();
        let (node, wal) = (self.id, self.wal.clone());
        let started = self.wait_for(async move {
            let (group, out) = QueueGroup::start(node, id, wal, recovered, opts).await?;
            group.caught_up(OPEN_TIMEOUT).await?;
            Ok::<_, crate::GroupError>((group, out))
        });
        let (group, mut out) = started
            .ok_or("the Raft runtime stopped")?
            .map_err(|e| e.to_string())?;
        let group = Arc::new(group);
        let (tx, rx) = mpsc::unbounded_channel::<(QueueCommand, Option<Answer>)>();
        let queued = Arc::new(AtomicUsize::new(0));
        self.handle
            .spawn(propose_in_batches(group.clone(), rx, queued.clone()));
        self.handle.spawn(async move {
            while let Some(o) = out.recv().await {
                outputs(o);
            }
        });
        Ok(Arc::new(GroupReplica {
            id,
            group,
            commands: tx,
            queued,
            wal: self.wal.clone(),
            handle: self.handle.clone(),
        }))
    }

    fn retain(&self, live: &[(String, String)]) {
        let live: HashSet<u64> = live.iter().map(|(v, n)| group_id(v, n)).collect();
        let mut recovered = self.recovered.lock();
        let gone: Vec<u64> = recovered
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in gone {
            recovered.remove(&id);
            match self.wal.forget(id) {
                Ok(()) => {
                    tracing::info!(group = id, "forgot the log of a deleted replicated queue")
                }
                Err(e) => {
                    tracing::warn!(group = id, error = %e, "could not forget a deleted replicated queue's log; the next start tries again")
                }
            }
        }
    }
}

/// Most commands in one log entry.
const MAX_BATCH: usize = 1024;

/// Entries of one group proposed and not yet applied. openraft 0.9 applies an entry only
/// after its own flush and runs a leader's commands in order, so entries proposed one right
/// after another are flushed one by one; holding the next batch back until one of these is
/// applied lets it gather whatever arrived meanwhile, and one fsync then carries all of it
/// (measured: ~5,000 confirmed publishes a second with no limit, see docs/benchmarks.md).
const MAX_IN_FLIGHT: usize = 2;

/// Takes the group's commands in order and proposes whatever is waiting as one entry (see
/// [`crate::types::Batch`]), with at most [`MAX_IN_FLIGHT`] entries on their way; answers
/// are handed back as entries are applied.
async fn propose_in_batches(
    group: Arc<QueueGroup>,
    mut rx: mpsc::UnboundedReceiver<(QueueCommand, Option<Answer>)>,
    queued: Arc<AtomicUsize>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let n = rx.recv_many(&mut waiting, MAX_BATCH).await;
        if n == 0 {
            return;
        }
        queued.fetch_sub(n, Ordering::Relaxed);
        let (cmds, answers): (Vec<QueueCommand>, Vec<Option<Answer>>) = waiting.drain(..).unzip();
        match group.submit(cmds).await {
            Ok(pending) => {
                tokio::spawn(async move {
                    let r = pending.await;
                    drop(permit);
                    match r {
                        Ok(applied) => {
                            for (a, r) in answers.into_iter().zip(applied) {
                                if let Some(a) = a {
                                    a(Ok(r));
                                }
                            }
                        }
                        Err(e) => fail_all(answers, &e),
                    }
                });
            }
            Err(e) => fail_all(answers, &e.to_string()),
        }
    }
}

fn fail_all(answers: Vec<Option<Answer>>, why: &str) {
    for a in answers.into_iter().flatten() {
        a(Err(why.to_string()));
    }
}

/// One queue's group, as the broker uses it.
struct GroupReplica {
    id: u64,
    group: Arc<QueueGroup>,
    commands: mpsc::UnboundedSender<(QueueCommand, Option<Answer>)>,
    /// Commands sent and not yet taken by the proposer.
    queued: Arc<AtomicUsize>,
    wal: Arc<NodeWal>,
    handle: tokio::runtime::Handle,
}

impl Replica for GroupReplica {
    fn submit(&self, cmd: QueueCommand, answer: Option<Answer>) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError((_, Some(a)))) = self.commands.send((cmd, answer)) {
            a(Err("the queue's Raft group stopped".into()));
        }
    }

    fn read(&self, f: &mut dyn FnMut(&QueueEngine<Owner>)) {
        self.group.state().with_engine(|e| f(e))
    }

    fn remove(&self) {
        let (group, wal, id) = (self.group.clone(), self.wal.clone(), self.id);
        let stop = async move {
            if let Err(e) = group.shutdown().await {
                tracing::warn!(group = id, error = %e, "stopping a deleted queue's Raft group failed");
            }
            if let Err(e) = wal.forget(id) {
                tracing::warn!(group = id, error = %e, "could not forget a deleted queue's log; the next start does");
            }
        };
        if on_raft_thread() {
            // (x-expires deletes from a Raft thread, which must not wait for its own runtime.)
            self.handle.spawn(stop);
            return;
        }
        // Waited for: a queue declared again by this name gets the same group id.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            stop.await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(OPEN_TIMEOUT);
    }

    fn touch(&self, now: u64) {
        self.group.state().touch(now);
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}
