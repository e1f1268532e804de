//! One replicated queue: an openraft group whose log lives on the node's WAL and whose state
//! machine is the queue engine. [`QueueGroup::propose`] returns once the command is
//! committed (durable on a majority of the group's members: for a group of one, fsynced by
//! the WAL's group commit) and applied; that is when a publish may be confirmed.

use crate::log_store::GroupLog;
use crate::network::NoPeers;
use crate::state_machine::{Output, QueueStateMachine};
use crate::transport::Registry;
use crate::types::{NodeId, Proposal, QueueRaft};
use crate::wal::{GroupState, NodeWal};
use openraft::network::RaftNetworkFactory;
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

/// The election timeout window of a group's first member (by node id), in ms.
const ELECTION_TIMEOUT_MIN: u64 = 1000;
const ELECTION_WINDOW: u64 = 100;
/// How far apart the windows of a group's members are, and how many different windows there
/// are (members beyond that share one).
const ELECTION_STAGGER: u64 = 150;
const ELECTION_SLOTS: usize = 5;

/// Raft timing for the member in `slot` (its place among the group's members by node id):
/// heartbeats every 200 ms; elections after about a second of silence (the cluster notes
/// advise ≥ 1 s on a loaded 2-core machine), in a window of its own.
///
/// openraft 0.9 draws a member's election timeout once, when the member starts, and a
/// follower of a known leader waits for the leader lease (`election_timeout_max`) plus that
/// timeout. Two members whose timeouts fell close together both stand at once after a
/// leader's death, split the vote, and do so again each round (the same timeouts): the
/// slowest failovers of the fault test (5–8 s). Windows 150 ms apart (1.0–1.1 s, 1.15–1.25 s,
/// 1.3–1.4 s, …) make one member stand first, about 2.1–2.8 s after the last heartbeat.
pub(crate) fn config(slot: usize) -> Result<Arc<Config>, GroupError> {
    let min = ELECTION_TIMEOUT_MIN + ELECTION_STAGGER * (slot % ELECTION_SLOTS) as u64;
    let c = Config {
        cluster_name: "warren".into(),
        heartbeat_interval: 200,
        election_timeout_min: min,
        election_timeout_max: min + ELECTION_WINDOW,
        // The state machine asks for snapshots by what was enqueued since the last one
        // (see state_machine.rs); openraft then purges the log below it (a follower that is
        // behind gets the snapshot).
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        // Sending a snapshot's last chunk includes installing it (the queue restored and
        // saved, fsync included): openraft's 200 ms is too short for a backlog of
        // megabytes, and a member being added would be sent it again and again.
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| GroupError::Config(e.to_string()))
}

/// Resolves once the group has stopped (shut down, or failed for good), with why.
async fn stopped(raft: &Raft<QueueRaft>) -> String {
    let r = raft
        .wait(None)
        .metrics(
            |m| m.running_state.is_err() || m.state == ServerState::Shutdown,
            "stopped",
        )
        .await;
    match r {
        Ok(m) => match &m.running_state {
            Err(e) => e.to_string(),
            Ok(()) => "shut down".into(),
        },
        Err(e) => e.to_string(),
    }
}

/// Who is in a group and who creates it.
pub struct Membership {
    /// The members when the group is created, with their cluster addresses.
    pub members: BTreeMap<NodeId, BasicNode>,
    /// This node creates the group (sets the members) if its log is empty: exactly one
    /// member does.
    pub initialize: bool,
}

impl QueueGroup {
    /// Starts group `id` on node `node` alone, on the node's WAL with what it recovered for
    /// this group. A new group gets this node as its only member; an existing one carries on
    /// from its log. Returns once this node leads the group, with the receiver of its state
    /// machine's outputs (deliveries, dead letters).
    pub async fn start(
        node: NodeId,
        id: u64,
        wal: Arc<NodeWal>,
        recovered: GroupState,
        opts: QueueOptions,
    ) -> Result<(QueueGroup, mpsc::UnboundedReceiver<Output>), GroupError> {
        let alone = Membership {
            members: BTreeMap::from([(node, BasicNode::default())]),
            initialize: true,
        };
        let restarted = !recovered.entries.is_empty() || recovered.vote.is_some();
        let started =
            Self::start_member(node, id, wal, recovered, opts, alone, NoPeers, None).await?;
        if restarted {
            // Alone, it need not wait out an election timeout to lead again.
            started.0.raft.trigger().elect().await.map_err(raft_err)?;
        }
        let wait = Duration::from_secs(10);
        started
            .0
            .raft
            .wait(Some(wait))
            .state(ServerState::Leader, "queue group leader")
            .await
            .map_err(|_| GroupError::NoLeader(wait))?;
        Ok(started)
    }

    /// Starts this node's member of group `id`, reaching the others through `network`, and
    /// registers it with the node's cluster listener (`registry`). Does not wait for a leader
    /// (the other members may not be up yet): see [`QueueGroup::wait_for_leader`].
    #[allow(clippy::too_many_arguments)]
    pub async fn start_member<N: RaftNetworkFactory<QueueRaft>>(
        node: NodeId,
        id: u64,
        wal: Arc<NodeWal>,
        recovered: GroupState,
        opts: QueueOptions,
        membership: Membership,
        network: N,
        registry: Option<&Registry>,
    ) -> Result<(QueueGroup, mpsc::UnboundedReceiver<Output>), GroupError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sm, mut snapshot_wanted) =
            QueueStateMachine::new(id, opts, tx, wal.clone()).map_err(raft_err)?;
        let log = GroupLog::new(id, wal.clone(), recovered);
        // A member being added (not among the members it is given) takes the last window.
        let slot = membership
            .members
            .keys()
            .position(|m| *m == node)
            .unwrap_or(ELECTION_SLOTS - 1);
        let raft = Raft::new(node, config(slot)?, network, log.clone(), sm.clone())
            .await
            .map_err(raft_err)?;
        wal.on_snapshot_needed(id, sm.snapshot_asker());
        let trigger = raft.clone();
        tokio::spawn(async move {
            while snapshot_wanted.recv().await.is_some() {
                if trigger.trigger().snapshot().await.is_err() {
                    break;
                }
            }
        });
        if let Some(r) = registry {
            r.insert(id, raft.clone());
        }
        if membership.initialize && !raft.is_initialized().await.map_err(raft_err)? {
            raft.initialize(membership.members)
                .await
                .map_err(raft_err)?;
        }
        Ok((QueueGroup { id, raft, sm, log }, rx))
    }

    /// Waits until the group has a leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, GroupError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|_| GroupError::NoLeader(timeout))?;
        m.current_leader.ok_or(GroupError::NoLeader(timeout))
    }

    /// openraft's view of the group (state, leader, log and applied indexes), for diagnostics.
    pub fn describe(&self) -> String {
        let m = self.raft.metrics().borrow().clone();
        format!(
            "{:?} leader {:?} last log {:?} applied {:?} snapshot {:?} purged {:?} error {:?}",
            m.state,
            m.current_leader,
            m.last_log_index,
            m.last_applied,
            m.snapshot,
            m.purged,
            m.running_state
        )
    }

    /// The group's Raft handle.
    pub fn raft(&self) -> &Raft<QueueRaft> {
        &self.raft
    }

    /// This node's id in the group.
    pub fn raft_id(&self) -> NodeId {
        self.raft.metrics().borrow().id
    }

    /// Whether the group has stopped (shut down, or failed for good).
    pub fn is_stopped(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.running_state.is_err() || m.state == ServerState::Shutdown
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(m.id)
    }

    /// Runs a command through the log: returns its answer once it is committed and applied.
    pub async fn propose(&self, cmd: QueueCommand) -> Result<Applied, GroupError> {
        let answer = self
            .submit(vec![cmd])
            .await?
            .await
            .map_err(GroupError::Raft)?;
        answer
            .into_iter()
            .next()
            .ok_or_else(|| GroupError::Raft("an entry of one command got no answer".into()))
    }

    /// Proposes commands as one entry without waiting: returns once it is queued for the log
    /// (entries submitted one after another reach the log in that order), with a future of
    /// the answers. If the group stops (a storage error stops it for good), the future says
    /// so rather than wait for an answer that cannot come.
    pub async fn submit(
        &self,
        batch: Vec<QueueCommand>,
    ) -> Result<impl std::future::Future<Output = Result<Vec<Applied>, String>> + Send, GroupError>
    {
        let rx = self
            .raft
            .client_write_ff(Proposal::Queue(batch))
            .await
            .map_err(raft_err)?;
        let raft = self.raft.clone();
        Ok(async move {
            tokio::select! {
                r = rx => match r {
                    Ok(Ok(r)) => Ok(r.data),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the queue's Raft group stopped".to_string()),
                },
                why = stopped(&raft) => Err(format!("the queue's Raft group stopped: {why}")),
            }
        })
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

    pub async fn shutdown(&self) -> Result<(), GroupError> {
        self.raft.shutdown().await.map_err(raft_err)
    }
}
