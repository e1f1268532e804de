//! A replicated queue as the broker sees it: a quorum queue whose engine is the state machine
//! of a Raft group (crates/cluster), reached through [`Replica`]. The broker does not know
//! Raft: it submits [`QueueCommand`]s in order and is answered once they are committed and
//! applied; what the engine decides beyond the answer (deliveries, dead letters, the need for
//! ticks) comes back as [`ReplicaOutput`]s, which the queue hands to its consumers' channels
//! and its vhost. A [`ReplicaHost`] (the node's Raft runtime and write-ahead log) opens the
//! groups; the `warren` binary gives one to [`crate::persist::Persistence`].
//!
//! A publish to a replicated queue is confirmed when its `Enqueue` is committed: the
//! channel's confirm waits on a [`Commit`] ticket, not on the group-commit epoch of the
//! classic queues' stores.

use super::command::{Applied, QueueCommand};
use super::engine::{CheckoutId, Owner, QueueEngine};
use super::{QueueOptions, QueuedMessage};
use crate::deadletter::DeadLetter;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What applying one or more committed commands asks of the leader's node.
#[derive(Debug, Default)]
pub struct ReplicaOutput {
    /// Log index of the entry that produced it.
    pub index: u64,
    /// Messages to hand to their owners' channels: (owner, checkout id, message).
    pub deliveries: Vec<(Owner, CheckoutId, QueuedMessage)>,
    pub dead_letters: Vec<DeadLetter>,
    /// Messages with a TTL arrived: the queue needs timer ticks.
    pub needs_ticks: bool,
    /// Consumers removed by the entry (a `RemoveConsumer`): one this node still serves was
    /// removed by another node (its leader took this node for down), and subscribes again.
    pub removed_consumers: Vec<Owner>,
    /// In a cluster: the group's voting members (node ids) as of the entry, for the node to
    /// tell its own deliveries from those it sends to nodes that are not members.
    pub voters: Option<Arc<Vec<u64>>>,
    /// This member's engine was replaced by the leader's snapshot (it was behind, and the
    /// leader no longer had the entries it missed): deliveries those entries made to this
    /// node's consumers were never handed out, and its consumers may have been removed
    /// meanwhile. The queue removes its consumers, returning what they held, and they
    /// subscribe again.
    pub restored: bool,
    /// The stand-in of a classic queue of another node lost its home node (down, or
    /// restarted: the consumers it served from here are gone there): this node's consumers
    /// of the queue are cancelled, as RabbitMQ cancels them when a queue's node goes down.
    pub home_lost: bool,
}

/// A replicated queue's group as operators see it (the management API's `leader`,
/// `members` and `online`), by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMembers {
    pub leader: Option<String>,
    pub members: Vec<String>,
    /// The members that answer now.
    pub online: Vec<String>,
}

/// What a node that holds no copy of a queue (it is not a member of the queue's group)
/// knows of it: what a member reported a moment ago.
#[derive(Debug, Clone, Default)]
pub struct RemoteStats {
    pub stats: super::QueueStats,
    /// Ready messages.
    pub len: u64,
    /// Publishers should wait (the queue's consumers are far behind).
    pub backlogged: bool,
}

/// Why a member could not be added to, or removed from, a queue's group. The texts are
/// those `rabbitmq-queues` prints for RabbitMQ's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// Not a quorum queue replicated with Raft.
    #[error("not_quorum_queue")]
    NotQuorumQueue,
    /// The node is not a node of the cluster, or does not answer.
    #[error("node_not_running")]
    NodeNotRunning,
    /// The group would have no member left.
    #[error("last_node")]
    LastNode,
    /// The change did not complete in time (it may still complete).
    #[error("timeout")]
    Timeout,
    /// This node is not in a cluster.
    #[error("not_clustered")]
    NotClustered,
    /// `forget_cluster_node` of a node that is not one of the cluster's.
    #[error("not_a_cluster_node")]
    NotClusterNode,
    /// `forget_cluster_node` of a node that still runs (RabbitMQ requires it stopped).
    #[error("node_running")]
    NodeRunning,
    #[error("{0}")]
    Failed(String),
}

/// Called with a command's answer once it is committed and applied, or with why it was not.
pub type Answer = Box<dyn FnOnce(Result<Applied, String>) + Send>;

/// Receives a replicated queue's outputs (on the leader).
pub type OutputSink = Arc<dyn Fn(ReplicaOutput) + Send + Sync>;

/// Where a replicated queue's follow-ups go (they arise on Raft's threads, after the command
/// that caused them has returned): its vhost's `follow_up`.
pub type FollowupSink = Arc<dyn Fn(super::Followups) + Send + Sync>;

/// One replicated queue's group on this node.
pub trait Replica: Send + Sync {
    /// Proposes `cmd`; commands submitted from one thread reach the log in submission order.
    /// `answer`, if any, is called (on another thread) once the command is applied.
    fn submit(&self, cmd: QueueCommand, answer: Option<Answer>);
    /// Reads the engine (counts, consumers, checkouts) as applied so far.
    fn read(&self, f: &mut dyn FnMut(&QueueEngine<Owner>));
    /// The queue is deleted: stop the group and forget its log.
    fn remove(&self);
    /// The queue was used (`x-expires`): on this node's copy only (the clock of `x-expires`
    /// restarts with the node).
    fn touch(&self, now: u64);
    /// Commands submitted and not yet proposed (publishers wait when there are many).
    fn queued(&self) -> usize;
    /// Whether this node leads the group now: only the leader's node acts on what the
    /// engine leaves for the vhost (dead letters, timer ticks).
    fn is_leader(&self) -> bool {
        true
    }
    /// Whether `owner` (a consumer, a channel's basic.get) is on this node: every member
    /// applies the same deliveries, and each hands out those of its own owners.
    fn owns(&self, _owner: Owner) -> bool {
        true
    }
    /// `owner`'s channel is gone: its consumer is removed, and what it holds comes back.
    fn remove_owner(&self, owner: Owner, now: u64) {
        self.submit(QueueCommand::RemoveConsumer { owner, now }, None);
        self.submit(QueueCommand::ReturnAll { owner, now }, None);
    }
    /// Whether `owner` is one of this node's and of an earlier run of it (the node was killed,
    /// and its log still names the consumers of that run): its channel is gone for sure.
    fn is_stale(&self, _owner: Owner) -> bool {
        false
    }
    /// Removes those of `owners` that are stale (see [`Replica::is_stale`]) with
    /// [`Replica::remove_owner`], each at most once in a while: a restarted node's log names
    /// its earlier run's consumers in entry after entry.
    fn remove_stale(&self, _owners: &[Owner]) {}
    /// In a cluster: the node that leads the group (if any), its members and those that
    /// answer, by node name.
    fn members(&self) -> Option<GroupMembers> {
        None
    }
    /// The stand-in of a classic queue of another node whose home node is down: that node's
    /// name (the queue cannot be reached now).
    fn home_down(&self) -> Option<String> {
        None
    }
    /// When this node is not a member of the group (it holds no copy of the queue): the
    /// queue's counts as a member reported them (a second old at most); `None` when the
    /// engine read by [`Replica::read`] is the queue's.
    fn remote_stats(&self) -> Option<RemoteStats> {
        None
    }
}

/// Flow control of a replicated queue: publishers wait while more commands than this wait to
/// be proposed (the group is behind), as they wait for a classic queue's consumers.
pub const QUEUED_HIGH: usize = 20_000;

/// Opens replicated queues' groups on this node.
pub trait ReplicaHost: Send + Sync {
    /// Starts (or restarts, from what the node's log holds) the group of queue `name` in
    /// `vhost`; returns once it can take commands and has applied what its log held.
    fn open(
        &self,
        vhost: &str,
        name: &str,
        opts: QueueOptions,
        outputs: OutputSink,
    ) -> Result<Arc<dyn Replica>, String>;
    /// Forgets the logs of groups not in `live` (queues deleted while the node was down, or
    /// whose deletion was cut short).
    fn retain(&self, live: &[(String, String)]);
    /// In a cluster with `cluster.classic_queues_everywhere`: this node's name, the home of
    /// the durable classic queues declared here, which every node reaches
    /// ([`super::home`]). `None`: classic queues stay on the node that declared them.
    fn classic_home(&self) -> Option<String> {
        None
    }
    /// Opens the stand-in of queue `name` in `vhost`, a classic queue whose home is node
    /// `home`: its commands go there, and its consumers' deliveries come from there.
    fn open_remote(
        &self,
        _vhost: &str,
        _name: &str,
        _home: &str,
        _opts: QueueOptions,
        _outputs: OutputSink,
    ) -> Result<Arc<dyn Replica>, String> {
        Err("not in a cluster".into())
    }
    /// Where this node's owner ids start (each node of a cluster has its own range, so an
    /// owner id names its node).
    fn owner_base(&self) -> u64 {
        0
    }
    /// In a cluster: every node, whether it answers now, which one this is.
    fn cluster_nodes(&self) -> Option<Vec<ClusterNode>> {
        None
    }
    /// In a cluster: the members (node names, this node first) of a new quorum queue's
    /// group, `size` of them (`x-quorum-initial-group-size`; `None`: the node's default),
    /// spread over the nodes as RabbitMQ places replicas. Empty alone.
    fn choose_members(&self, _size: Option<u64>) -> Vec<String> {
        Vec::new()
    }
    /// Adds a member on `node` to queue `name`'s group (`rabbitmq-queues add_member`): it
    /// joins as a learner, catches up, then votes. Returns the group's new size; a node that
    /// is a member already changes nothing.
    fn add_member(&self, _vhost: &str, _name: &str, _node: &str) -> Result<usize, MemberError> {
        Err(MemberError::NotClustered)
    }
    /// Removes the member on `node` from queue `name`'s group (`rabbitmq-queues
    /// delete_member`); the leader may be removed (another is elected). Returns the group's
    /// new size; a node that is not a member changes nothing.
    fn delete_member(&self, _vhost: &str, _name: &str, _node: &str) -> Result<usize, MemberError> {
        Err(MemberError::NotClustered)
    }
    /// Removes `node`, which must not be running, from the cluster (`rabbitmqctl
    /// forget_cluster_node`): no node lists it, probes it or places members on it any more.
    /// Its quorum queue members are removed first, by the caller (as `shrink`).
    fn forget_node(&self, _node: &str) -> Result<(), MemberError> {
        Err(MemberError::NotClustered)
    }
    /// This node, alone in its cluster and without quorum queues, joins the cluster of the
    /// node named `seed` (`rabbitmqctl join_cluster`): from then on it has that cluster's
    /// definitions and nodes. A node of that cluster already changes nothing.
    fn join_cluster(&self, _seed: &str) -> Result<(), MemberError> {
        Err(MemberError::NotClustered)
    }
}

/// A node of the cluster, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// `warren@host:port`.
    pub name: String,
    /// It answered a connection on its cluster port just now (this node always does).
    pub running: bool,
    /// It is this node.
    pub me: bool,
}

/// How long a caller that needs an answer (declare, basic.get, purge) waits for one.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Submits `cmd` and waits for its answer: for the rare commands whose reply needs it.
pub fn call(replica: &dyn Replica, cmd: QueueCommand) -> Result<Applied, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    replica.submit(
        cmd,
        Some(Box::new(move |a| {
            let _ = tx.send(a);
        })),
    );
    rx.recv_timeout(CALL_TIMEOUT).unwrap_or_else(|_| {
        Err(format!(
            "no answer from the queue's Raft group within {CALL_TIMEOUT:?}"
        ))
    })
}

const PENDING: u8 = 0;
const COMMITTED: u8 = 1;
const FAILED: u8 = 2;

/// A publish to a replicated queue, waiting to be committed: the publisher's confirm waits
/// for it. The connection that waits registers a wake-up with [`Commit::wake`].
#[derive(Default)]
pub struct Commit {
    state: AtomicU8,
    waker: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl std::fmt::Debug for Commit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Commit({:?})", self.outcome())
    }
}

impl Commit {
    pub fn new() -> Arc<Self> {
        Arc::new(Commit::default())
    }

    /// None while pending; then whether the command was committed (and accepted).
    pub fn outcome(&self) -> Option<bool> {
        match self.state.load(Ordering::Acquire) {
            PENDING => None,
            s => Some(s == COMMITTED),
        }
    }

    pub fn complete(&self, ok: bool) {
        self.state
            .store(if ok { COMMITTED } else { FAILED }, Ordering::Release);
        if let Some(n) = self.waker.lock().take() {
            n.notify_one();
        }
    }

    /// Wakes `n` once the outcome is known (at once if it is).
    pub fn wake(&self, n: &Arc<tokio::sync::Notify>) {
        let mut w = self.waker.lock();
        if self.outcome().is_some() {
            n.notify_one();
        } else {
            *w = Some(n.clone());
        }
    }
}
