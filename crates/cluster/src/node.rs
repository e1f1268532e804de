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
//!
//! In a cluster ([`LocalNode::open_cluster`]), every group has every node as a member; the
//! node listens for the others' Raft RPCs, runs the metadata group ([`crate::meta`]), and
//! sends proposals to whichever node leads their group ([`Forwarder`], one at a time, so
//! they stay in order). Every member applies the same deliveries; each hands out those of
//! its own consumers (owner ids carry the node: [`ReplicaHost::owner_base`]).

use crate::group::{Membership, QueueGroup};
use crate::log_store::GroupLog;
use crate::meta::{Applier, MetaStateMachine, Waiters, META_GROUP};
use crate::transport::{Forwarder, Listener, Registry, TcpPeers};
use crate::types::{NodeId, Proposal, QueueRaft};
use crate::wal::{GroupState, NodeWal, WalError};
use openraft::{BasicNode, Raft};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::mpsc;
use warren_broker::metadata::{MetaOp, MetadataLog};
use warren_broker::queue::replica::{Answer, ClusterNode, OutputSink, Replica, ReplicaHost};
use warren_broker::queue::Applied;
use warren_broker::queue::{Owner, QueueCommand, QueueEngine, QueueOptions};
use warren_broker::AmqpError;
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

/// What a node of a cluster is told about it.
#[derive(Clone)]
pub struct ClusterSpec {
    /// This node's id (a key of `nodes`).
    pub me: NodeId,
    /// Every node of the cluster, this one included, with its cluster address.
    pub nodes: BTreeMap<NodeId, BasicNode>,
    /// The shared secret nodes prove they know (the Erlang cookie's role).
    pub secret: Arc<[u8]>,
    /// Where this node listens for the others.
    pub listen: SocketAddr,
    /// Each node's name (`warren@host:port`), for operators.
    pub names: BTreeMap<NodeId, String>,
    /// TLS on the links between nodes (`cluster.ssl_options.*`).
    pub tls: Option<crate::transport::LinkTls>,
}

/// Owner ids of node number `n` (1-based, in the order of node ids) start at `n <<
/// OWNER_BITS`.
const OWNER_BITS: u32 = 48;

/// Within a node's range, owner ids start at the milliseconds since 2024 times this: ids stay
/// unique across restarts (an owner of before a restart is still in the queues until it is
/// removed) unless a node used more than this many a millisecond (a million a second). The
/// unit is the millisecond, not the second: a node killed and started again within the same
/// second took its earlier run's ids for its own and never removed that run's consumers (the
/// cluster test of a node killed and back at once found it).
const OWNER_IDS_PER_MS: u64 = 1 << 10;

/// A node that has not answered for this long is down: its consumers are removed from the
/// queues this node leads and what they held is returned (as RabbitMQ does when a node goes).
/// Longer than an election, so a node that only paused keeps its consumers.
const DOWN_AFTER: Duration = Duration::from_secs(3);

/// How long a node that did not declare a new queue waits for the declaring node's entries
/// before it creates the queue's group itself (about two of the declaring node's elections).
const FIRST_ELECTION_HOLD: Duration = Duration::from_secs(3);

/// How often the other nodes are probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long one attempt to hand a proposal to another node may take (a node cut off does not
/// answer at all: the attempt must end in time to try the node elected after it).
const FORWARD_ATTEMPT: Duration = Duration::from_secs(2);

/// How long a proposal may look for a leader that takes it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node of a cluster has beyond a node alone.
struct Cluster {
    spec: ClusterSpec,
    /// This node's number (1-based position of its id).
    number: u64,
    registry: Registry,
    _listener: Listener,
    forwarder: Arc<Forwarder>,
    meta: OnceLock<Raft<QueueRaft>>,
    waiters: Waiters,
    next_request: AtomicU64,
    /// Since when each other node has not answered a probe (absent: it answers).
    down_since: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// The first owner id of this run of the node ([`ReplicaHost::owner_base`]): owner ids
    /// of this node below it are consumers of an earlier run, which are gone.
    incarnation: OnceLock<u64>,
}

impl Cluster {
    fn addr(&self, node: NodeId) -> Option<String> {
        self.spec.nodes.get(&node).map(|n| n.addr.clone())
    }

    /// The node whose owner ids `owner` is one of (see [`ReplicaHost::owner_base`]).
    fn node_of(&self, owner: warren_broker::queue::Owner) -> Option<NodeId> {
        let number = owner >> OWNER_BITS;
        (number > 0)
            .then(|| self.spec.nodes.keys().nth(number as usize - 1).copied())
            .flatten()
    }

    /// Whether `owner`'s node has been down for [`DOWN_AFTER`].
    fn owner_is_gone(&self, owner: warren_broker::queue::Owner) -> bool {
        let Some(node) = self.node_of(owner).filter(|n| *n != self.spec.me) else {
            return false;
        };
        self.down_since
            .lock()
            .get(&node)
            .is_some_and(|t| t.elapsed() >= DOWN_AFTER)
    }

    /// Whether `owner` is a consumer of an earlier run of this node (killed, and maybe back
    /// before the others noticed it was down): its channel is gone for sure.
    fn owner_is_stale(&self, owner: warren_broker::queue::Owner) -> bool {
        owner >> OWNER_BITS == self.number && self.incarnation.get().is_some_and(|b| owner < *b)
    }

    /// Probes the other nodes for ever (the task ends with the runtime).
    async fn watch_nodes(self: Arc<Self>) {
        loop {
            for (id, n) in &self.spec.nodes {
                if *id == self.spec.me {
                    continue;
                }
                let up = crate::transport::probe(
                    &n.addr,
                    self.spec.me,
                    &self.spec.secret,
                    self.spec.tls.as_ref(),
                    PROBE_EVERY,
                )
                .await;
                let mut down = self.down_since.lock();
                match (up, down.contains_key(id)) {
                    (true, true) => {
                        down.remove(id);
                        tracing::info!(node = %n.addr, "cluster node answers again");
                    }
                    (false, false) => {
                        down.insert(*id, std::time::Instant::now());
                        tracing::warn!(node = %n.addr, "cluster node does not answer");
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// While this node leads `group`, removes the consumers of nodes that are down and returns
/// what they held (through the queue's replica, in order with its other commands). On every
/// member, removes this node's own consumers of an earlier run: a node killed and started
/// again within [`DOWN_AFTER`] is never seen down, and the entries that gave its old
/// consumers messages may reach its log only after it has started (what the broker removes
/// when it opens the queue is only what its log held then). Ends when the queue's group does.
async fn reap_gone_owners(
    group: std::sync::Weak<QueueGroup>,
    c: Arc<Cluster>,
    replica: std::sync::Weak<GroupReplica>,
) {
    let mut reaped = HashSet::new();
    // This node's stale owners, when their removal was last proposed (again after a while
    // if they are still there: the proposal may have found no leader).
    let mut stale_asked: HashMap<warren_broker::queue::Owner, std::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let (Some(g), Some(r)) = (group.upgrade(), replica.upgrade()) else {
            return;
        };
        if g.is_stopped() {
            return;
        }
        let owners = g.state().with_engine(|e| e.owner_ids());
        let remove = |owner| r.remove_owner(owner, warren_broker::clock::now_ms());
        stale_asked.retain(|o, at| owners.contains(o) && at.elapsed() < STALE_RETRY);
        for &owner in &owners {
            if c.owner_is_stale(owner) && !stale_asked.contains_key(&owner) {
                tracing::info!(
                    group = g.id,
                    owner,
                    "a consumer of this node's earlier run: its unacknowledged messages go back to the queue"
                );
                remove(owner);
                stale_asked.insert(owner, std::time::Instant::now());
            }
        }
        // An owner reaped before whose node answers again may be reaped again later.
        reaped.retain(|o| c.owner_is_gone(*o));
        if !g.is_leader() {
            continue;
        }
        for owner in owners {
            if reaped.contains(&owner) || !c.owner_is_gone(owner) {
                continue;
            }
            tracing::info!(
                group = g.id,
                owner,
                "a consumer's node is down: its unacknowledged messages go back to the queue"
            );
            remove(owner);
            reaped.insert(owner);
        }
    }
}

/// How long before a stale owner's removal is proposed again if it is still there.
const STALE_RETRY: Duration = Duration::from_secs(5);

/// This node's replicated queues: every group has this node alone as its member, or, in a
/// cluster, every node.
pub struct LocalNode {
    id: NodeId,
    wal: Arc<NodeWal>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// What the WAL held for groups not opened yet since the start.
    recovered: Mutex<HashMap<u64, GroupState>>,
    cluster: Option<Arc<Cluster>>,
}

/// Why a clustered node could not open.
#[derive(Debug, thiserror::Error)]
pub enum ClusterOpenError {
    /// The node's Raft log.
    #[error(transparent)]
    Log(#[from] WalError),
    /// The cluster port: another process (or another node's config) holds it.
    #[error("cannot listen for the other nodes on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
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
            cluster: None,
        }))
    }

    /// Opens the node's WAL as [`LocalNode::open`] does and joins the cluster `spec` names:
    /// listens for the other nodes. The metadata group starts with
    /// [`LocalNode::start_metadata`], once the broker is open.
    pub fn open_cluster(
        backend: Arc<dyn Backend>,
        dir: &Path,
        spec: ClusterSpec,
    ) -> Result<Arc<LocalNode>, ClusterOpenError> {
        let alone = Self::open(backend, dir)?;
        let mut node = Arc::try_unwrap(alone).map_err(|_| WalError::Closed)?;
        let registry = Registry::default();
        let (listen, secret, r) = (spec.listen, spec.secret.clone(), registry.clone());
        let tls = spec.tls.clone();
        let listener = node
            .wait_for(async move { Listener::start(listen, secret, r, tls).await })
            .ok_or(WalError::Closed)?
            .map_err(|source| ClusterOpenError::Listen {
                addr: listen,
                source,
            })?;
        let number = spec
            .nodes
            .keys()
            .position(|id| *id == spec.me)
            .map_or(0, |p| p as u64 + 1);
        tracing::info!(node = spec.me, number, listen = %listener.addr, nodes = spec.nodes.len(), "cluster listener started");
        node.id = spec.me;
        node.cluster = Some(Arc::new(Cluster {
            forwarder: Arc::new(Forwarder::new(
                spec.me,
                spec.secret.clone(),
                spec.tls.clone(),
            )),
            spec,
            number,
            registry,
            _listener: listener,
            meta: OnceLock::new(),
            waiters: Default::default(),
            next_request: AtomicU64::new(1),
            down_since: Default::default(),
            incarnation: OnceLock::new(),
        }));
        if let Some(c) = &node.cluster {
            node.handle.spawn(c.clone().watch_nodes());
        }
        Ok(Arc::new(node))
    }

    /// Starts this node's member of the cluster's metadata group: definition changes
    /// committed there are applied with `applier` (see [`crate::meta`]).
    pub fn start_metadata(&self, applier: Applier) -> Result<(), String> {
        let Some(c) = self.cluster.clone() else {
            return Err("not in a cluster".into());
        };
        let recovered = self
            .recovered
            .lock()
            .remove(&META_GROUP)
            .unwrap_or_default();
        let (me, wal) = (self.id, self.wal.clone());
        let c2 = c.clone();
        let raft = self
            .wait_for(async move {
                let sm = MetaStateMachine::new(me, wal.clone(), applier, c2.waiters.clone())
                    .map_err(|e| e.to_string())?;
                let log = GroupLog::new(META_GROUP, wal.clone(), recovered);
                let peers = TcpPeers {
                    me,
                    group: META_GROUP,
                    secret: c2.spec.secret.clone(),
                    tls: c2.spec.tls.clone(),
                };
                let config = crate::group::config().map_err(|e| e.to_string())?;
                let raft = Raft::new(me, config, peers, log, sm.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let asker = raft.clone();
                let (ask, mut asked) = mpsc::channel(1);
                wal.on_snapshot_needed(META_GROUP, ask);
                tokio::spawn(async move {
                    while asked.recv().await.is_some() {
                        if asker.trigger().snapshot().await.is_err() {
                            break;
                        }
                    }
                });
                c2.registry.insert(META_GROUP, raft.clone());
                if !raft.is_initialized().await.map_err(|e| e.to_string())? {
                    raft.initialize(c2.spec.nodes.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(raft)
            })
            .ok_or("the Raft runtime stopped")??;
        let _ = c.meta.set(raft);
        Ok(())
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
        let cluster = self.cluster.clone();
        let lead_here = warren_broker::metadata::proposed_here();
        let started = self.wait_for(async move {
            let Some(c) = cluster else {
                let (group, out) = QueueGroup::start(node, id, wal, recovered, opts).await?;
                group.caught_up(OPEN_TIMEOUT).await?;
                return Ok::<_, crate::GroupError>((group, out));
            };
            // Every node is a member. The node the queue was declared through creates the
            // group at once, and `initialize` makes it stand for election straight away, so
            // it leads (RabbitMQ's client-local leader locator). The others wait: they vote
            // for it and learn the members from its first entries. Should it die before that,
            // each creates the group alike after a hold (safe with the same members), so the
            // queue is not left without a group; no waiting for a leader, others may be down.
            let new = recovered.entries.is_empty() && recovered.vote.is_none();
            let membership = Membership {
                members: c.spec.nodes.clone(),
                initialize: lead_here || !new,
            };
            let peers = TcpPeers {
                me: node,
                group: id,
                secret: c.spec.secret.clone(),
                tls: c.spec.tls.clone(),
            };
            let members = membership.members.clone();
            let started = QueueGroup::start_member(
                node,
                id,
                wal,
                recovered,
                opts,
                membership,
                peers,
                Some(&c.registry),
            )
            .await?;
            if new && !lead_here {
                let raft = started.0.raft().clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FIRST_ELECTION_HOLD).await;
                    if let Ok(false) = raft.is_initialized().await {
                        // Refused (harmlessly) if the leader's entries arrived meanwhile.
                        let _ = raft.initialize(members).await;
                    }
                });
            }
            Ok(started)
        });
        let (group, mut out) = started
            .ok_or("the Raft runtime stopped")?
            .map_err(|e| e.to_string())?;
        let group = Arc::new(group);
        let (tx, rx) = mpsc::unbounded_channel::<(QueueCommand, Option<Answer>)>();
        let queued = Arc::new(AtomicUsize::new(0));
        self.handle.spawn(propose_in_batches(
            group.clone(),
            self.cluster.clone(),
            rx,
            queued.clone(),
        ));
        self.handle.spawn(async move {
            while let Some(o) = out.recv().await {
                outputs(o);
            }
        });
        let replica = Arc::new(GroupReplica {
            id,
            number: self.cluster.as_ref().map(|c| c.number),
            cluster: self.cluster.clone(),
            group: group.clone(),
            commands: tx,
            queued,
            wal: self.wal.clone(),
            handle: self.handle.clone(),
        });
        if let Some(c) = &self.cluster {
            self.handle.spawn(reap_gone_owners(
                Arc::downgrade(&group),
                c.clone(),
                Arc::downgrade(&replica),
            ));
        }
        Ok(replica)
    }

    fn retain(&self, live: &[(String, String)]) {
        let live: HashSet<u64> = live.iter().map(|(v, n)| group_id(v, n)).collect();
        let mut recovered = self.recovered.lock();
        let gone: Vec<u64> = recovered
            .keys()
            .filter(|id| !live.contains(id) && **id != META_GROUP)
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

    fn owner_base(&self) -> u64 {
        let Some(c) = &self.cluster else { return 0 };
        let since_2024 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(1_704_067_200_000);
        let within = (since_2024 * OWNER_IDS_PER_MS) & ((1 << OWNER_BITS) - 1);
        *c.incarnation
            .get_or_init(|| (c.number << OWNER_BITS) | within)
    }

    fn cluster_nodes(&self) -> Option<Vec<ClusterNode>> {
        let c = self.cluster.clone()?;
        if on_raft_thread() {
            return None;
        }
        let c2 = c.clone();
        let running = self
            .wait_for(async move {
                let mut up = Vec::new();
                for (id, n) in &c2.spec.nodes {
                    up.push(
                        *id == c2.spec.me
                            || crate::transport::probe(
                                &n.addr,
                                c2.spec.me,
                                &c2.spec.secret,
                                c2.spec.tls.as_ref(),
                                Duration::from_secs(1),
                            )
                            .await,
                    );
                }
                up
            })
            .unwrap_or_default();
        Some(
            c.spec
                .nodes
                .keys()
                .zip(running)
                .map(|(id, running)| ClusterNode {
                    name: c
                        .spec
                        .names
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| id.to_string()),
                    running,
                    me: *id == c.spec.me,
                })
                .collect(),
        )
    }
}

fn internal(text: String) -> AmqpError {
    AmqpError::new(warren_protocol::constants::INTERNAL_ERROR, text)
}

impl MetadataLog for LocalNode {
    fn run(&self, op: MetaOp) -> Result<(), AmqpError> {
        let Some(c) = self.cluster.clone() else {
            return Err(internal("this node is not in a cluster".into()));
        };
        let Some(raft) = c.meta.get().cloned() else {
            return Err(internal(
                "the cluster's metadata group has not started on this node yet".into(),
            ));
        };
        if on_raft_thread() {
            return Err(internal(
                "a definition change cannot wait on a Raft thread".into(),
            ));
        }
        let request = c.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        c.waiters.lock().insert(request, tx);
        let proposal = Proposal::Meta {
            origin: self.id,
            request,
            op,
        };
        let c2 = c.clone();
        let written = self
            .wait_for(async move { write_to_leader(&raft, &c2, META_GROUP, proposal).await })
            .unwrap_or_else(|| Err("the Raft runtime stopped".into()));
        if let Err(e) = written {
            c.waiters.lock().remove(&request);
            return Err(internal(format!(
                "the cluster did not take the definition change: {e}; a majority of its nodes must be up"
            )));
        }
        rx.recv_timeout(replica_call_timeout()).unwrap_or_else(|_| {
            c.waiters.lock().remove(&request);
            Err(internal(
                "the definition change was committed but not applied on this node in time".into(),
            ))
        })
    }
}

fn replica_call_timeout() -> Duration {
    warren_broker::queue::replica::CALL_TIMEOUT
}

fn no_majority() -> String {
    format!("not committed within {WRITE_TIMEOUT:?}: a majority of the group's nodes must be up")
}

/// Proposes `p` to group `group` through whichever node leads it (this one, or another by
/// its [`Forwarder`]), looking for a leader for up to [`WRITE_TIMEOUT`]. Returns the answers
/// once committed and applied on the leader.
async fn write_to_leader(
    raft: &Raft<QueueRaft>,
    c: &Cluster,
    group: u64,
    p: Proposal,
) -> Result<Vec<Applied>, String> {
    let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
    loop {
        let leader = raft.metrics().borrow().current_leader;
        let r = match leader {
            Some(l) if l == c.spec.me => {
                // A leader that lost its majority stays leader until it hears of a newer
                // term: its proposals are never committed, so the wait is bounded.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, raft.client_write(p.clone())).await {
                    Ok(r) => r.map(|r| r.data).map_err(|e| e.to_string()),
                    Err(_) => Err(no_majority()),
                }
            }
            Some(l) => match c.addr(l) {
                Some(addr) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let attempt = left.min(FORWARD_ATTEMPT);
                    c.forwarder.forward(&addr, group, p.clone(), attempt).await
                }
                None => Err(format!("node {l} is not in the cluster's configuration")),
            },
            None => Err("no leader yet".into()),
        };
        let why = match r {
            Ok(a) => return Ok(a),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    cluster: Option<Arc<Cluster>>,
    mut rx: mpsc::UnboundedReceiver<(QueueCommand, Option<Answer>)>,
    queued: Arc<AtomicUsize>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    // Every publish this proposer sends is numbered, under an id of its own: a batch sent
    // again (its leader went away before answering, and may have committed it) enqueues
    // nothing twice (the engine answers Duplicate).
    let (me, mut numbered) = (rand::random::<u64>(), 0u64);
    // Resolves once every batch proposed so far has its final outcome (sent again if it had
    // to be). A batch is sent again, or sent elsewhere, only after that: the engine takes a
    // publish whose number is below one it has as a resend, so a later batch committed
    // before an earlier one's resend would make the earlier publishes look like resends.
    let mut earlier_final: Option<tokio::sync::oneshot::Receiver<()>> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let n = rx.recv_many(&mut waiting, MAX_BATCH).await;
        if n == 0 {
            return;
        }
        queued.fetch_sub(n, Ordering::Relaxed);
        let (mut cmds, answers): (Vec<QueueCommand>, Vec<Option<Answer>>) =
            waiting.drain(..).unzip();
        for c in &mut cmds {
            if let QueueCommand::Enqueue {
                from: from @ None, ..
            } = c
            {
                numbered += 1;
                *from = Some(warren_broker::queue::Publisher {
                    id: me,
                    seq: numbered,
                });
            }
        }
        if let Some(c) = cluster.as_deref().filter(|_| !group.is_leader()) {
            // Another node leads (or none yet): the batch goes there, and the next one waits
            // for its answer, so they are committed in order.
            tracing::debug!(
                group = group.id,
                commands = cmds.len(),
                "forwarding to the leader"
            );
            if let Some(earlier) = earlier_final.take() {
                let _ = earlier.await;
            }
            let r = write_to_leader(group.raft(), c, group.id, Proposal::Queue(cmds)).await;
            tracing::debug!(
                group = group.id,
                ok = r.is_ok(),
                "forwarded proposal answered"
            );
            drop(permit);
            match r {
                Ok(applied) => answer_all(answers, applied),
                Err(e) => fail_all(answers, &e),
            }
            continue;
        }
        // In a cluster, a batch this node proposed as leader and lost with its leadership is
        // sent again to the new leader: acks must not be lost, and publishes are numbered.
        let again = cluster.as_ref().map(|c| (c.clone(), cmds.clone()));
        tracing::debug!(
            group = group.id,
            commands = cmds.len(),
            "proposing as leader"
        );
        let (this_final, this_final_rx) = tokio::sync::oneshot::channel::<()>();
        let mut earlier = earlier_final.replace(this_final_rx);
        match group.submit(cmds).await {
            Ok(pending) => {
                let group = group.clone();
                tokio::spawn(async move {
                    // Bounded: a leader that lost its majority commits nothing (the
                    // publishers are nacked; what was proposed may still be committed once
                    // the majority is back, as with any unconfirmed publish).
                    let mut r = match tokio::time::timeout(WRITE_TIMEOUT, pending).await {
                        Ok(r) => r,
                        Err(_) => Err(no_majority()),
                    };
                    let timed_out = r.as_ref().is_err_and(|e| *e == no_majority());
                    tracing::debug!(group = group.id, ok = r.is_ok(), "proposal answered");
                    if let (Err(_), Some((c, cmds)), false) = (&r, again, timed_out) {
                        if let Some(e) = earlier.take() {
                            let _ = e.await;
                        }
                        r = write_to_leader(group.raft(), &c, group.id, Proposal::Queue(cmds))
                            .await;
                    }
                    drop(permit);
                    match r {
                        Ok(applied) => answer_all(answers, applied),
                        Err(e) => fail_all(answers, &e),
                    }
                    if let Some(e) = earlier {
                        let _ = e.await;
                    }
                    let _ = this_final.send(());
                });
            }
            Err(e) => {
                fail_all(answers, &e.to_string());
                tokio::spawn(async move {
                    if let Some(e) = earlier {
                        let _ = e.await;
                    }
                    let _ = this_final.send(());
                });
            }
        }
    }
}

fn answer_all(answers: Vec<Option<Answer>>, applied: Vec<Applied>) {
    for (a, r) in answers.into_iter().zip(applied) {
        if let Some(a) = a {
            a(Ok(r));
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
    /// This node's number in its cluster (None alone): owners it hands deliveries to.
    number: Option<u64>,
    cluster: Option<Arc<Cluster>>,
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
        if let Some(c) = &self.cluster {
            // Its peers' requests for this group are answered "no such group" from now on.
            c.registry.remove(self.id);
        }
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

    fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    fn owns(&self, owner: warren_broker::queue::Owner) -> bool {
        self.number.is_none_or(|n| owner >> OWNER_BITS == n)
    }

    fn is_stale(&self, owner: warren_broker::queue::Owner) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.owner_is_stale(owner))
    }

    fn members(&self) -> Option<(Option<String>, Vec<String>)> {
        let c = self.cluster.as_ref()?;
        let m = self.group.raft().metrics().borrow().clone();
        let name = |id: &NodeId| {
            c.spec
                .names
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.to_string())
        };
        let members = m
            .membership_config
            .membership()
            .voter_ids()
            .map(|id| name(&id))
            .collect();
        Some((m.current_leader.as_ref().map(name), members))
    }
}
