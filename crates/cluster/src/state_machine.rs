//! A replicated queue's state machine: the queue engine ([`QueueEngine<Owner>`]) applying
//! committed commands. What it decides beyond the answer (deliveries, dead letters, the need
//! for timer ticks) goes out on a channel as [`Output`], for the leader's node to act on;
//! followers drop it.
//!
//! The state lives in memory and is rebuilt on start by applying the log again (nothing is
//! purged yet). Snapshots are not built yet: with `SnapshotPolicy::Never` openraft asks for
//! none, and a group of one never sends one (step 3b: payload-free snapshots).

use crate::types::{LogIdOf, NodeId, QueueRaft, StorageErrorOf};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::mpsc;
use warren_broker::queue::{Applied, Deliveries, Effect, Owner, QueueEngine, QueueOptions};

/// What one applied entry asks of the leader (deliveries, dead letters, ticks).
pub use warren_broker::queue::replica::ReplicaOutput as Output;

struct State {
    engine: QueueEngine<Owner>,
    last_applied: Option<LogIdOf>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// The state machine (cheap to clone; clones share the state).
#[derive(Clone)]
pub struct QueueStateMachine {
    state: Arc<Mutex<State>>,
    out: mpsc::UnboundedSender<Output>,
}

impl QueueStateMachine {
    pub fn new(opts: QueueOptions, out: mpsc::UnboundedSender<Output>) -> Self {
        QueueStateMachine {
            state: Arc::new(Mutex::new(State {
                engine: QueueEngine::new(opts, 0),
                last_applied: None,
                membership: StoredMembership::default(),
            })),
            out,
        }
    }

    /// Reads the engine (counts, checkouts) under the state's lock.
    pub fn with_engine<T>(&self, f: impl FnOnce(&QueueEngine<Owner>) -> T) -> T {
        f(&self.state.lock().engine)
    }

    /// Replaces the queue's options (a policy changed) on this replica only: not through the
    /// log yet (see [`warren_broker::queue::replica::Replica::set_options`]).
    pub fn set_options(&self, opts: QueueOptions, now: u64) {
        let mut s = self.state.lock();
        let mut out = Deliveries::default();
        s.engine.set_options(opts, now, &mut out);
        self.send_output(&mut s.engine, 0, &mut out);
    }

    /// The queue was used (`x-expires`), on this replica only.
    pub fn touch(&self, now: u64) {
        self.state.lock().engine.touch(now);
    }

    /// Sends what applying left (deliveries, dead letters, the need for ticks) to the leader's
    /// node, if anything.
    fn send_output(&self, engine: &mut QueueEngine<Owner>, index: u64, out: &mut Deliveries) {
        let (mut dead_letters, mut needs_ticks) = (Vec::new(), false);
        for e in engine.drain_effects() {
            match e {
                Effect::DeadLetter(d) => dead_letters.push(d),
                Effect::StartTimer => needs_ticks = true,
                // A replicated queue's messages live in the log, not a queue store.
                _ => {}
            }
        }
        if !out.list.is_empty() || !dead_letters.is_empty() || needs_ticks {
            let _ = self.out.send(Output {
                index,
                deliveries: std::mem::take(&mut out.list),
                dead_letters,
                needs_ticks,
            });
        }
    }
}

fn unsupported(what: &str) -> StorageErrorOf {
    let e = std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("{what}: snapshots of replicated queues are not built yet"),
    );
    StorageIOError::read_snapshot(None, &e).into()
}

impl RaftSnapshotBuilder<QueueRaft> for QueueStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QueueRaft>, StorageErrorOf> {
        Err(unsupported("build_snapshot"))
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
            let answer = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
                EntryPayload::Normal(batch) => batch
                    .0
                    .iter()
                    .map(|c| s.engine.apply(c, &mut out))
                    .collect(),
            };
            self.send_output(&mut s.engine, entry.log_id.index, &mut out);
            answers.push(answer);
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageErrorOf> {
        Err(unsupported("begin_receiving_snapshot"))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageErrorOf> {
        Err(unsupported("install_snapshot"))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<QueueRaft>>, StorageErrorOf> {
        Ok(None)
    }
}
