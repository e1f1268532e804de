//! One replicated queue: an openraft group whose log lives on the node's WAL and whose state
//! machine is the queue engine. [`QueueGroup::propose`] returns once the command is
//! committed (durable on a majority of the group's members: for a group of one, fsynced by
//! the WAL's group commit) and applied; that is when a publish may be confirmed.

use crate::log_store::GroupLog;
use crate::network::NoPeers;
use crate::state_machine::{Output, QueueStateMachine};
use crate::types::{NodeId, QueueRaft};
use crate::wal::{GroupState, NodeWal};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use warren_broker::queue::{Applied, QueueCommand, QueueOptions};

/// Why a group could not start or take a command.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("the queue's Raft group failed: {0}")]
    Raft(String),
    #[error("the queue's Raft group has no leader after {0:?}")]
    NoLeader(Duration),
}

fn raft_err(e: impl std::fmt::Display) -> GroupError {
    GroupError::Raft(e.to_string())
}

/// A replicated queue on this node.
pub struct QueueGroup {
    pub id: u64,
    raft: Raft<QueueRaft>,
    sm: QueueStateMachine,
    log: GroupLog,
}

/// Raft timing: heartbeats every 250 ms, elections after 1–2 s of silence (the cluster notes
/// advise ≥ 1 s on a loaded 2-core machine).
fn config() -> Result<Arc<Config>, GroupError> {
    let c = Config {
        cluster_name: "warren".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Snapshots come with step 3b; until then the log is kept whole.
        snapshot_policy: SnapshotPolicy::Never,
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| GroupError::Config(e.to_string()))
}

impl QueueGroup {
    /// Starts group `id` on node `node`, on the node's WAL with what it recovered for this
    /// group. A new group gets this node as its only member; an existing one carries on from
    /// its log. Returns once the group has a leader, with the receiver of its state machine's
    /// outputs (deliveries, dead letters).
    pub async fn start(
        node: NodeId,
        id: u64,
        wal: Arc<NodeWal>,
        recovered: GroupState,
        opts: QueueOptions,
    ) -> Result<(QueueGroup, mpsc::UnboundedReceiver<Output>), GroupError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sm = QueueStateMachine::new(opts, tx);
        let log = GroupLog::new(id, wal, recovered);
        let raft = Raft::new(node, config()?, NoPeers, log.clone(), sm.clone())
            .await
            .map_err(raft_err)?;
        if !raft.is_initialized().await.map_err(raft_err)? {
            let members = BTreeMap::from([(node, BasicNode::default())]);
            raft.initialize(members).await.map_err(raft_err)?;
        }
        let wait = Duration::from_secs(10);
        raft.wait(Some(wait))
            .state(ServerState::Leader, "queue group leader")
            .await
            .map_err(|_| GroupError::NoLeader(wait))?;
        Ok((QueueGroup { id, raft, sm, log }, rx))
    }

    /// Runs a command through the log: returns its answer once it is committed and applied.
    pub async fn propose(&self, cmd: QueueCommand) -> Result<Applied, GroupError> {
        let r = self.raft.client_write(cmd).await.map_err(raft_err)?;
        Ok(r.data)
    }

    /// Waits until every entry in the log has been applied (after a restart, the state is
    /// rebuilt by applying the log again).
    pub async fn caught_up(&self, timeout: Duration) -> Result<(), GroupError> {
        let last = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(last, "log applied")
            .await
            .map(drop)
            .map_err(raft_err)
    }

    /// The state machine, to read the queue's state.
    pub fn state(&self) -> &QueueStateMachine {
        &self.sm
    }

    /// Entries in the group's log.
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    pub async fn shutdown(self) -> Result<(), GroupError> {
        self.raft.shutdown().await.map_err(raft_err)
    }
}
