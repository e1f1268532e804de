//! A replicated queue's state machine: the queue engine ([`QueueEngine<Owner>`]) applying
//! committed commands. What it decides beyond the answer (deliveries, dead letters, the need
//! for timer ticks) goes out on a channel as [`Output`], for the leader's node to act on;
//! followers drop it.
//!
//! Snapshots: the engine's state ([`EngineSnapshot`], bodies included for now) with the last
//! applied log id and membership, saved in the node's snapshot directory
//! ([`NodeWal::save_snapshot`]); openraft then purges the log below it, so a group's log (in
//! memory and in the WAL) holds only what came after. A snapshot is asked for once the bytes enqueued since the last one reach
//! the backlog's size (at least [`SNAPSHOT_MIN_BYTES`]), or after [`SNAPSHOT_MAX_ENTRIES`]
//! entries: the cost of writing snapshots stays proportional to what is published. On start,
//! the saved snapshot is loaded and only the log after it is applied again.

use crate::types::{LogIdOf, NodeId, Proposal, QueueRaft, StorageErrorOf};
use crate::wal::{NodeWal, WalError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::mpsc;
use warren_broker::queue::{
    Applied, Deliveries, Effect, EngineSnapshot, Owner, QueueCommand, QueueEngine, QueueOptions,
};

/// A snapshot is not asked for before this many bytes were enqueued since the last one.
/// Each group's log holds about this much in memory between snapshots: ten busy queues' logs
/// were most of a node's RSS at 8 MiB (125 MB a node in bench/cluster3.sh's ten-queue run;
/// 75 MB at 3 MiB, for 10 % less throughput; docs/benchmarks.md).
pub const SNAPSHOT_MIN_BYTES: u64 = 3 << 20;
/// ... and is asked for after this many entries whatever their size (acks are small).
pub const SNAPSHOT_MAX_ENTRIES: u64 = 20_000;

/// What a saved snapshot holds.
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    engine: EngineSnapshot,
}

/// What one applied entry asks of the leader (deliveries, dead letters, ticks).
pub use warren_broker::queue::replica::ReplicaOutput as Output;

struct State {
    engine: QueueEngine<Owner>,
    last_applied: Option<LogIdOf>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// The voters of `membership`, as outputs carry them.
    voters: Arc<Vec<NodeId>>,
    /// The last snapshot (built, installed or loaded) and its encoding.
    current: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    /// Enqueued bytes and entries applied since the last snapshot.
    bytes_since: u64,
    entries_since: u64,
    /// A snapshot was asked for and not built yet.
    asked: bool,
    snapshots_built: u64,
    /// [`SNAPSHOT_MIN_BYTES`] and [`SNAPSHOT_MAX_ENTRIES`] unless a test sets others.
    min_bytes: u64,
    max_entries: u64,
}

/// The state machine (cheap to clone; clones share the state).
#[derive(Clone)]
pub struct QueueStateMachine {
    group: u64,
    state: Arc<Mutex<State>>,
    out: mpsc::UnboundedSender<Output>,
    wal: Arc<NodeWal>,
    /// Asks the group for a snapshot (see [`QueueStateMachine::new`]).
    wanted: mpsc::Sender<()>,
    /// Held while a snapshot is built or installed (taken before `state`): a snapshot being
    /// written without `state`'s lock is never overtaken by an installed one.
    snapshot_io: Arc<Mutex<()>>,
}

fn decode_err(e: impl std::fmt::Display) -> WalError {
    WalError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("undecodable snapshot: {e}"),
    ))
}

impl QueueStateMachine {
    /// Group `group`'s state machine, from its saved snapshot if there is one, and the
    /// receiver on which it asks for snapshots (the group calls openraft's trigger; the
    /// receiver ends when the last clone of the state machine is gone).
    pub fn new(
        group: u64,
        opts: QueueOptions,
        out: mpsc::UnboundedSender<Output>,
        wal: Arc<NodeWal>,
    ) -> Result<(Self, mpsc::Receiver<()>), WalError> {
        let (wanted, wanted_rx) = mpsc::channel(1);
        let mut state = State {
            engine: QueueEngine::new(opts.clone(), 0),
            last_applied: None,
            membership: StoredMembership::default(),
            voters: Arc::default(),
            current: None,
            bytes_since: 0,
            entries_since: 0,
            asked: false,
            snapshots_built: 0,
            min_bytes: SNAPSHOT_MIN_BYTES,
            max_entries: SNAPSHOT_MAX_ENTRIES,
        };
        if let Some(data) = wal.load_snapshot(group)? {
            let stored: Stored = postcard::from_bytes(&data).map_err(decode_err)?;
            state.engine = QueueEngine::restore(stored.engine);
            state.last_applied = stored.meta.last_log_id;
            state.membership = stored.meta.last_membership.clone();
            state.voters = voters_of(&state.membership);
            state.current = Some((stored.meta, data));
        }
        let sm = QueueStateMachine {
            group,
            state: Arc::new(Mutex::new(state)),
            out,
            wal,
            wanted,
            snapshot_io: Arc::default(),
        };
        Ok((sm, wanted_rx))
    }

    /// A way to ask this state machine's group for a snapshot (the WAL asks when the group's
    /// old entries hold back the removal of a segment).
    pub fn snapshot_asker(&self) -> mpsc::Sender<()> {
        self.wanted.clone()
    }

    /// Asks for snapshots after fewer bytes or entries than the defaults (tests).
    pub fn set_snapshot_thresholds(&self, min_bytes: u64, max_entries: u64) {
        let mut s = self.state.lock();
        (s.min_bytes, s.max_entries) = (min_bytes, max_entries);
    }

    /// Snapshots built or installed since the start.
    pub fn snapshots_built(&self) -> u64 {
        self.state.lock().snapshots_built
    }

    /// The last log index applied.
    pub fn applied_index(&self) -> u64 {
        self.state.lock().last_applied.map_or(0, |l| l.index)
    }

    /// Reads the engine (counts, checkouts) under the state's lock.
    pub fn with_engine<T>(&self, f: impl FnOnce(&QueueEngine<Owner>) -> T) -> T {
        f(&self.state.lock().engine)
    }

    /// The queue was used (`x-expires`), on this replica only.
    pub fn touch(&self, now: u64) {
        self.state.lock().engine.touch(now);
    }

    /// Sends what applying left (deliveries, dead letters, the need for ticks) to the leader's
    /// node, if anything.
    fn send_output(
        &self,
        engine: &mut QueueEngine<Owner>,
        index: u64,
        out: &mut Deliveries,
        removed_consumers: Vec<Owner>,
        voters: &Arc<Vec<NodeId>>,
    ) {
        let (mut dead_letters, mut needs_ticks) = (Vec::new(), false);
        for e in engine.drain_effects() {
            match e {
                Effect::DeadLetter(d) => dead_letters.push(d),
                Effect::StartTimer => needs_ticks = true,
                // A replicated queue's messages live in the log, not a queue store.
                _ => {}
            }
        }
        if !out.list.is_empty()
            || !dead_letters.is_empty()
            || needs_ticks
            || !removed_consumers.is_empty()
        {
            let _ = self.out.send(Output {
                index,
                deliveries: std::mem::take(&mut out.list),
                dead_letters,
                needs_ticks,
                removed_consumers,
                voters: Some(voters.clone()),
                restored: false,
                home_lost: false,
            });
        }
    }
}

/// The voters of a membership (both configurations' during a joint change).
fn voters_of(m: &StoredMembership<NodeId, BasicNode>) -> Arc<Vec<NodeId>> {
    Arc::new(m.membership().voter_ids().collect())
}

fn storage_err(e: WalError) -> StorageErrorOf {
    StorageIOError::write_snapshot(None, &e).into()
}

impl QueueStateMachine {
    /// Makes `stored` the current snapshot: saved, then kept (encoded) for followers.
    /// Encodes `stored` and writes it to the node's snapshot directory (fsynced).
    fn save(&self, stored: &Stored) -> Result<Vec<u8>, StorageErrorOf> {
        let data = postcard::to_allocvec(stored).map_err(|e| storage_err(WalError::Encode(e)))?;
        self.wal
            .save_snapshot(self.group, &data)
            .map_err(storage_err)?;
        Ok(data)
    }

    fn keep(&self, s: &mut State, stored: &Stored) -> Result<Vec<u8>, StorageErrorOf> {
        let data = self.save(stored)?;
        s.current = Some((stored.meta.clone(), data.clone()));
        s.bytes_since = 0;
        s.entries_since = 0;
        s.asked = false;
        s.snapshots_built += 1;
        Ok(data)
    }
}

impl RaftSnapshotBuilder<QueueRaft> for QueueStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QueueRaft>, StorageErrorOf> {
        // The engine's state is taken under the lock; it is encoded and written (with its
        // fsyncs) without it, so that applying goes on meanwhile: with the lock held, every
        // commit waited for the snapshot's disk (the tail of a busy queue's confirm latency).
        let _io = self.snapshot_io.lock();
        let (stored, bytes_at, entries_at) = {
            let s = self.state.lock();
            let n = s.snapshots_built + 1;
            let stored = Stored {
                meta: SnapshotMeta {
                    last_log_id: s.last_applied,
                    last_membership: s.membership.clone(),
                    snapshot_id: format!("{}-{n}", s.last_applied.map_or(0, |l| l.index)),
                },
                engine: s.engine.snapshot(),
            };
            (stored, s.bytes_since, s.entries_since)
        };
        let data = self.save(&stored)?;
        let mut s = self.state.lock();
        s.current = Some((stored.meta.clone(), data.clone()));
        // What was applied while it was written counts towards the next one.
        s.bytes_since = s.bytes_since.saturating_sub(bytes_at);
        s.entries_since = s.entries_since.saturating_sub(entries_at);
        s.asked = false;
        s.snapshots_built += 1;
        drop(s);
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<QueueRaft> for QueueStateMachine {
    type SnapshotBuilder = QueueStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf>, StoredMembership<NodeId, BasicNode>), StorageErrorOf> {
        let s = self.state.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageErrorOf>
    where
        I: IntoIterator<Item = Entry<QueueRaft>> + Send,
        I::IntoIter: Send,
    {
        let mut answers = Vec::new();
        let mut s = self.state.lock();
        let mut out = Deliveries::default();
        for entry in entries {
            s.last_applied = Some(entry.log_id);
            let mut removed = Vec::new();
            let answer = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    s.voters = voters_of(&s.membership);
                    Vec::new()
                }
                EntryPayload::Normal(Proposal::Queue(batch)) => {
                    for c in batch {
                        if let QueueCommand::Enqueue { msg, .. } = c {
                            s.bytes_since += msg.0.body.len() as u64 + 64;
                        }
                    }
                    for c in batch {
                        if let QueueCommand::RemoveConsumer { owner, .. } = c {
                            removed.push(*owner);
                        }
                    }
                    batch.iter().map(|c| s.engine.apply(c, &mut out)).collect()
                }
                // (Definition changes go to the metadata group's state machine.)
                EntryPayload::Normal(Proposal::Meta { .. }) => Vec::new(),
            };
            s.entries_since += 1;
            let voters = s.voters.clone();
            self.send_output(
                &mut s.engine,
                entry.log_id.index,
                &mut out,
                removed,
                &voters,
            );
            answers.push(answer);
        }
        let backlog = s.engine.stats().message_bytes_ready;
        if !s.asked
            && (s.bytes_since >= backlog.max(s.min_bytes) || s.entries_since >= s.max_entries)
        {
            s.asked = true;
            let _ = self.wanted.try_send(());
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageErrorOf> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageErrorOf> {
        let stored: Stored = postcard::from_bytes(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &decode_err(e)))?;
        let _io = self.snapshot_io.lock();
        let mut s = self.state.lock();
        s.engine = QueueEngine::restore(stored.engine.clone());
        s.last_applied = meta.last_log_id;
        s.membership = meta.last_membership.clone();
        s.voters = voters_of(&s.membership);
        let stored = Stored {
            meta: meta.clone(),
            engine: stored.engine,
        };
        self.keep(&mut s, &stored)?;
        let _ = self.out.send(Output {
            index: meta.last_log_id.map_or(0, |l| l.index),
            voters: Some(s.voters.clone()),
            restored: true,
            ..Default::default()
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<QueueRaft>>, StorageErrorOf> {
        Ok(self
            .state
            .lock()
            .current
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(data.clone())),
            }))
    }
}
