//! A replicated queue's state machine: the queue engine ([`QueueEngine<Owner>`]) applying
//! committed commands. What it decides beyond the answer (deliveries, dead letters, the need
//! for timer ticks) goes out on a channel as [`Output`], for the leader's node to act on;
//! followers drop it.
//!
//! Snapshots carry no message bodies when they can (see `warren_broker::queue::snapshot`):
//! every so often (once the bytes enqueued since the last one reach the backlog's size, at
//! least [`SNAPSHOT_MIN_BYTES`], or after [`SNAPSHOT_MAX_ENTRIES`] entries) the engine's state
//! is taken dry, without bodies, as a candidate for the applied index. A candidate becomes the
//! snapshot once every message it holds is gone: openraft then purges the log below its
//! index, so the log keeps every live message's entry (where its body is) and disk use follows
//! the backlog. When the queue is empty the state itself is the snapshot. When no candidate
//! becomes usable (a message that stays for long), the log would grow without end: after
//! twice the usual amount a full snapshot, bodies included, is taken instead (as before). The
//! snapshot is saved in the node's snapshot directory ([`NodeWal::save_snapshot`]); on start
//! it is loaded and the log after it applied again.
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
/// A full snapshot is taken when this many times the usual amount went by since the last
/// snapshot without a candidate becoming usable.
const FULL_AFTER: u64 = 4;
/// Asked for a snapshot by the WAL (not by itself), with no usable candidate: a full one once
/// the last snapshot is this old (a message that stays holds the log, and the WAL's segments).
const FULL_WHEN_ASKED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// What an enqueued message counts for beyond its body.
const ENTRY_BYTES: u64 = 64;
/// Candidates kept at most: if the oldest is not usable yet, later ones are not either.
const MAX_CANDIDATES: usize = 2;
/// A saved snapshot starts with these bytes (then postcard): older ones (full, and without
/// the dry bodies' lengths) are not read.
const SNAPSHOT_MAGIC: &[u8; 4] = b"\xffWS2";

/// What a saved snapshot holds.
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    engine: EngineSnapshot,
}

/// A dry state taken at an applied index, waiting for the messages it holds to be gone.
struct Candidate {
    meta: SnapshotMeta<NodeId, BasicNode>,
    engine: EngineSnapshot,
    /// [`State::total`] when it was taken.
    at: Totals,
}

/// Enqueued bytes and entries applied since the start (only differences are used).
#[derive(Clone, Copy, Default)]
struct Totals {
    bytes: u64,
    entries: u64,
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
    /// Dry states waiting to become the snapshot, oldest first.
    candidates: std::collections::VecDeque<Candidate>,
    total: Totals,
    /// [`State::total`] when the last candidate was taken, and when the current snapshot's
    /// state was.
    taken_at: Totals,
    snapshot_at: Totals,
    /// A snapshot was asked for (by the state machine itself) and not built yet.
    asked: bool,
    /// When the current snapshot was built, installed or loaded.
    last_snapshot: std::time::Instant,
    snapshots_built: u64,
    /// Of which with bodies (no candidate was usable).
    full_snapshots: u64,
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

/// A saved snapshot's bytes.
fn encode(stored: &Stored) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(stored, SNAPSHOT_MAGIC.to_vec())
}

fn decode(data: &[u8]) -> Result<Stored, String> {
    match data.strip_prefix(SNAPSHOT_MAGIC) {
        Some(rest) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        None => Err(
            "written by an older Warren (before 2026-12-08): remove the node's data \
             directory and add it to the cluster again (it catches up from the others)"
                .into(),
        ),
    }
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
            candidates: Default::default(),
            total: Totals::default(),
            taken_at: Totals::default(),
            snapshot_at: Totals::default(),
            asked: false,
            last_snapshot: std::time::Instant::now(),
            snapshots_built: 0,
            full_snapshots: 0,
            min_bytes: SNAPSHOT_MIN_BYTES,
            max_entries: SNAPSHOT_MAX_ENTRIES,
        };
        if let Some(data) = wal.load_snapshot(group)? {
            let stored = decode(&data).map_err(decode_err)?;
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

    /// Snapshots built with the messages' bodies (no dry state was usable) since the start.
    pub fn full_snapshots_built(&self) -> u64 {
        self.state.lock().full_snapshots
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
        let data = encode(stored).map_err(|e| storage_err(WalError::Encode(e)))?;
        self.wal
            .save_snapshot(self.group, &data)
            .map_err(storage_err)?;
        Ok(data)
    }

    fn keep(&self, s: &mut State, stored: &Stored) -> Result<Vec<u8>, StorageErrorOf> {
        let data = self.save(stored)?;
        s.current = Some((stored.meta.clone(), data.clone()));
        s.candidates.clear();
        (s.taken_at, s.snapshot_at) = (s.total, s.total);
        s.asked = false;
        s.last_snapshot = std::time::Instant::now();
        s.snapshots_built += 1;
        Ok(data)
    }
}

impl State {
    /// The snapshot metadata of the state as applied now.
    fn meta_now(&self) -> SnapshotMeta<NodeId, BasicNode> {
        let n = self.snapshots_built + 1;
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{}-{n}", self.last_applied.map_or(0, |l| l.index)),
        }
    }

    /// How many messages the engine holds, ready and unacknowledged (with none, its state
    /// needs no log before it).
    fn held(&self) -> u64 {
        let st = self.engine.stats();
        st.messages_ready + st.messages_unacknowledged
    }

    /// Takes the engine's state now, dry, as the newest candidate.
    fn take_candidate(&mut self) {
        self.candidates.push_back(Candidate {
            meta: self.meta_now(),
            engine: self.engine.dry_snapshot(),
            at: self.total,
        });
        self.taken_at = self.total;
    }

    /// The current snapshot, as openraft takes it.
    fn current_snapshot(&self) -> Option<Snapshot<QueueRaft>> {
        self.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        })
    }

    /// Whether candidate `c` may stand for the state at its index (all its messages gone).
    fn usable(&self, c: &Candidate) -> bool {
        !self.engine.holds_seq_below(c.engine.next_seq())
    }

    /// After entries were applied: takes a candidate when enough went by since the last one,
    /// and says whether a snapshot should be built now.
    fn after_apply(&mut self) -> bool {
        // The backlog as the totals count it (an entry's 64 bytes included).
        let held = self.held();
        let backlog = self.engine.message_bytes() as u64 + ENTRY_BYTES * held;
        let every = backlog.max(self.min_bytes);
        let (bytes, entries) = (
            self.total.bytes - self.taken_at.bytes,
            self.total.entries - self.taken_at.entries,
        );
        if (bytes >= every || entries >= self.max_entries)
            && self.candidates.len() < MAX_CANDIDATES
            && held > 0
        {
            self.take_candidate();
        }
        if self.asked {
            return false;
        }
        let (bytes, entries) = (
            self.total.bytes - self.snapshot_at.bytes,
            self.total.entries - self.snapshot_at.entries,
        );
        let due = bytes >= self.min_bytes || entries >= self.max_entries;
        if due && held == 0 {
            // An empty state needs no log before it: the newest candidate there can be, and
            // one that stays usable (the snapshot is built a little later, when the queue
            // may hold messages again).
            self.candidates.clear();
            self.take_candidate();
            return true;
        }
        self.candidates.front().is_some_and(|c| self.usable(c))
            // No candidate came good (a message stays): a full snapshot bounds the log. A
            // candidate is taken every `every` bytes and, with a queue consumed in order,
            // becomes usable about as many bytes later.
            || bytes >= FULL_AFTER * every
            || entries >= FULL_AFTER * self.max_entries
    }

    /// What the next snapshot is: the state now when the queue is empty, else the newest
    /// usable candidate, else the state now with its bodies. Returns it with the totals as of
    /// its state, and whether it is full; None to keep the current one (asked by the WAL,
    /// which asks a group whenever its log holds a segment back, while a candidate is on its
    /// way: the log is only as long as the backlog).
    fn next_snapshot(&mut self) -> Option<(Stored, Totals, bool)> {
        if self.held() == 0 {
            self.candidates.clear();
            let stored = Stored {
                meta: self.meta_now(),
                engine: self.engine.dry_snapshot(),
            };
            return Some((stored, self.total, false));
        }
        let mut chosen = None;
        while self.candidates.front().is_some_and(|c| self.usable(c)) {
            chosen = self.candidates.pop_front();
        }
        if let Some(c) = chosen {
            let stored = Stored {
                meta: c.meta,
                engine: c.engine,
            };
            return Some((stored, c.at, false));
        }
        let waited = self.last_snapshot.elapsed() >= FULL_WHEN_ASKED_AFTER;
        if !self.asked && self.current.is_some() && !waited {
            return None;
        }
        self.candidates.clear();
        self.taken_at = self.total;
        let stored = Stored {
            meta: self.meta_now(),
            engine: self.engine.snapshot(),
        };
        Some((stored, self.total, true))
    }
}

impl RaftSnapshotBuilder<QueueRaft> for QueueStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QueueRaft>, StorageErrorOf> {
        // The engine's state is taken under the lock; it is encoded and written (with its
        // fsyncs) without it, so that applying goes on meanwhile: with the lock held, every
        // commit waited for the snapshot's disk (the tail of a busy queue's confirm latency).
        let _io = self.snapshot_io.lock();
        let next = self.state.lock().next_snapshot();
        let Some((stored, at, full)) = next else {
            // Keep the current one (openraft takes a snapshot no newer than its own as done).
            let current = self.state.lock().current_snapshot();
            return Ok(current.expect("kept only when there is a current snapshot"));
        };
        let data = self.save(&stored)?;
        let mut s = self.state.lock();
        s.current = Some((stored.meta.clone(), data.clone()));
        // What was applied after its state counts towards the next one.
        s.snapshot_at = at;
        s.asked = false;
        s.last_snapshot = std::time::Instant::now();
        s.snapshots_built += 1;
        s.full_snapshots += u64::from(full);
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
                            s.total.bytes += msg.0.body.len() as u64 + ENTRY_BYTES;
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
            s.total.entries += 1;
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
        if s.after_apply() {
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
        let stored = decode(snapshot.get_ref())
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
        Ok(self.state.lock().current_snapshot())
    }
}
