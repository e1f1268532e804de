//! The cluster's metadata group: one Raft group on every node (group id [`META_GROUP`]) whose
//! entries are definition changes ([`MetaOp`]). Every node applies every change, in log
//! order, to its own broker (the applier the `warren` binary gives: see
//! [`warren_broker::metadata::apply`]); the node that proposed a change answers its caller
//! once it has applied it itself, with the answer applying gave there.
//!
//! Applying runs on a thread of its own, not on Raft's: declaring a quorum queue starts its
//! group and waits for it.
//!
//! State kept: the last applied log id, the membership, and a catalogue of what is declared
//! (the latest declaration of each exchange, quorum queue and binding). It is saved (in the
//! node's snapshot directory) after every applied batch, so a restart applies only what came
//! after; a snapshot is the catalogue, which a node that is far behind installs by declaring
//! everything in it. (Removing what a lagging node has and the catalogue lacks is not done
//! yet: see docs/cluster-plan.md.)

use crate::types::{LogIdOf, NodeId, Proposal, QueueRaft, StorageErrorOf};
use crate::wal::{NodeWal, WalError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use warren_broker::metadata::MetaOp;
use warren_broker::queue::Applied;
use warren_broker::AmqpError;

/// The metadata group's id (queue groups' ids are hashes of vhost and name).
pub const META_GROUP: u64 = 0;

/// Applies one committed change to this node's broker.
pub type Applier = Arc<dyn Fn(&MetaOp) -> Result<(), AmqpError> + Send + Sync>;

/// Callers waiting for the changes this node proposed, by request number.
pub type Waiters = Arc<Mutex<HashMap<u64, std::sync::mpsc::SyncSender<Result<(), AmqpError>>>>>;

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    last_applied: Option<LogIdOf>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// What is declared, by [`MetaOp::key`].
    catalog: BTreeMap<String, MetaOp>,
    snapshots: u64,
}

/// A change to apply, whether this node proposed it, and where the answer goes.
type Job = (
    MetaOp,
    bool,
    tokio::sync::oneshot::Sender<Result<(), AmqpError>>,
);

/// The metadata group's state machine (clones share the state).
#[derive(Clone)]
pub struct MetaStateMachine {
    me: NodeId,
    state: Arc<Mutex<Stored>>,
    wal: Arc<NodeWal>,
    jobs: std::sync::mpsc::Sender<Job>,
    waiters: Waiters,
}

fn decode_err(e: impl std::fmt::Display) -> WalError {
    WalError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("undecodable metadata state: {e}"),
    ))
}

fn storage_err(e: WalError) -> StorageErrorOf {
    StorageIOError::write_state_machine(&e).into()
}

/// Removes from the catalogue the bindings of an exchange or queue that is deleted.
fn forget_bindings(catalog: &mut BTreeMap<String, MetaOp>, vhost: &str, name: &str, queue: bool) {
    catalog.retain(|_, op| match op {
        MetaOp::Bind(b) => {
            b.vhost != vhost
                || if queue {
                    b.to_exchange || b.destination != name
                } else {
                    b.source != name && !(b.to_exchange && b.destination == name)
                }
        }
        _ => true,
    });
}

impl MetaStateMachine {
    /// The state machine of node `me`, from its saved state if any; `applier` runs on a
    /// thread of its own.
    pub fn new(
        me: NodeId,
        wal: Arc<NodeWal>,
        applier: Applier,
        waiters: Waiters,
    ) -> Result<Self, WalError> {
        let state = match wal.load_snapshot(META_GROUP)? {
            Some(data) => postcard::from_bytes(&data).map_err(decode_err)?,
            None => Stored::default(),
        };
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("warren-metadata".into())
            .spawn(move || {
                while let Ok((op, own, done)) = rx.recv() {
                    let _ = done.send(warren_broker::metadata::as_proposer(own, || applier(&op)));
                }
            })?;
        Ok(MetaStateMachine {
            me,
            state: Arc::new(Mutex::new(state)),
            wal,
            jobs,
            waiters,
        })
    }

    async fn apply_op(&self, op: &MetaOp, own: bool) -> Result<(), AmqpError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || {
            AmqpError::new(
                warren_protocol::constants::INTERNAL_ERROR,
                "the node's metadata applier stopped",
            )
        };
        self.jobs.send((op.clone(), own, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn save(&self, s: &Stored) -> Result<(), StorageErrorOf> {
        let data = postcard::to_allocvec(s).map_err(|e| storage_err(WalError::Encode(e)))?;
        self.wal
            .save_snapshot(META_GROUP, &data)
            .map_err(storage_err)
    }

    #[allow(clippy::result_large_err)] // openraft's error type
    fn snapshot_of(s: &Stored) -> Result<Snapshot<QueueRaft>, StorageErrorOf> {
        let data = postcard::to_allocvec(s).map_err(|e| storage_err(WalError::Encode(e)))?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: s.last_applied,
                last_membership: s.membership.clone(),
                snapshot_id: format!(
                    "meta-{}-{}",
                    s.last_applied.map_or(0, |l| l.index),
                    s.snapshots
                ),
            },
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// What is declared (for diagnostics and tests).
    pub fn catalog_len(&self) -> usize {
        self.state.lock().catalog.len()
    }
}

impl RaftSnapshotBuilder<QueueRaft> for MetaStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<QueueRaft>, StorageErrorOf> {
        let mut s = self.state.lock();
        s.snapshots += 1;
        Self::snapshot_of(&s)
    }
}

impl RaftStateMachine<QueueRaft> for MetaStateMachine {
    type SnapshotBuilder = MetaStateMachine;

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
        for entry in entries {
            if let EntryPayload::Normal(Proposal::Meta {
                origin,
                request,
                op,
            }) = &entry.payload
            {
                let r = self.apply_op(op, *origin == self.me).await;
                if let Err(e) = &r {
                    tracing::debug!(?op, error = %e, "definition change refused");
                }
                let mut s = self.state.lock();
                if r.is_ok() && *op != MetaOp::Barrier {
                    if op.declares() {
                        s.catalog.insert(op.key(), op.clone());
                    } else {
                        s.catalog.remove(&op.key());
                        match op {
                            MetaOp::DeleteQueue { vhost, name, .. } => {
                                forget_bindings(&mut s.catalog, vhost, name, true)
                            }
                            MetaOp::DeleteExchange { vhost, name, .. } => {
                                forget_bindings(&mut s.catalog, vhost, name, false)
                            }
                            _ => {}
                        }
                    }
                }
                drop(s);
                if *origin == self.me {
                    if let Some(w) = self.waiters.lock().remove(request) {
                        let _ = w.send(r);
                    }
                }
            }
            let mut s = self.state.lock();
            s.last_applied = Some(entry.log_id);
            if let EntryPayload::Membership(m) = &entry.payload {
                s.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            answers.push(Vec::new());
        }
        let s = self.state.lock();
        self.save(&s)?;
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
        let mut stored: Stored = postcard::from_bytes(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &decode_err(e)))?;
        // Exchanges and queues before the bindings between them.
        let mut ops: Vec<&MetaOp> = stored.catalog.values().collect();
        ops.sort_by_key(|op| op.rank());
        for op in ops {
            if let Err(e) = self.apply_op(op, false).await {
                tracing::warn!(?op, error = %e, "a definition of the cluster's snapshot could not be applied here");
            }
        }
        stored.last_applied = meta.last_log_id;
        stored.membership = meta.last_membership.clone();
        self.save(&stored)?;
        *self.state.lock() = stored;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<QueueRaft>>, StorageErrorOf> {
        let s = self.state.lock();
        s.last_applied
            .is_some()
            .then(|| Self::snapshot_of(&s))
            .transpose()
    }
}
