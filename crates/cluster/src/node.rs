//! The node's replicated queues as the broker reaches them: [`LocalNode`] is the broker's
//! [`ReplicaHost`]. It owns the node's write-ahead log and a small tokio runtime of its own
//! for the Raft groups (so the broker's threads may wait for an answer without stalling
//! Raft), opens one group per quorum queue, and gives the broker a [`Replica`] per group.
//!
//! A queue's group id is derived from its vhost and name, so a restart finds the group's log
//! again without storing the id anywhere; a deleted queue's group is forgotten in the WAL
//! before the deletion returns, so a queue declared again by that name starts empty.
//!
//! Commands reach the log in the order they were submitted (see [`crate::replica`]).
//!
//! In a cluster ([`LocalNode::open_cluster`]), a group's members are the nodes its
//! declaration named (`x-quorum-initial-group-size`, see [`crate::members`]); the node
//! listens for the others' Raft RPCs, runs the metadata group ([`crate::meta`]), and sends
//! proposals to whichever node leads their group ([`Forwarder`], one at a time, so they stay
//! in order). Every member applies the same deliveries; each hands out those of its own
//! consumers (owner ids carry the node: [`ReplicaHost::owner_base`]), and those of nodes that
//! are not members are sent to them ([`crate::replica`]).

use crate::group::{Membership, QueueGroup};
use crate::log_store::GroupLog;
use crate::meta::{Applier, MetaStateMachine, Waiters, META_GROUP};
use crate::nodes::{link_addr, number_of};
use crate::replica::GroupReplica;
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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::mpsc;
use warren_broker::metadata::{MetaOp, MetadataLog};
use warren_broker::queue::replica::{ClusterNode, MemberError, OutputSink, Replica, ReplicaHost};
use warren_broker::queue::Applied;
use warren_broker::queue::QueueOptions;
use warren_broker::AmqpError;
use warren_store::Backend;

/// How long opening a group may take (leading it and applying its log again).
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Every configured node of the cluster, this one included, with its name
    /// (`warren@host:port`, see [`crate::nodes`]).
    pub nodes: BTreeMap<NodeId, BasicNode>,
    /// The shared secret nodes prove they know (the Erlang cookie's role).
    pub secret: Arc<[u8]>,
    /// Where this node listens for the others.
    pub listen: SocketAddr,
    /// TLS on the links between nodes (`cluster.ssl_options.*`).
    pub tls: Option<crate::transport::LinkTls>,
    /// Members of a new quorum queue's group when its declaration does not say
    /// (`x-quorum-initial-group-size`): RabbitMQ's `quorum_cluster_size`, 3.
    pub default_group_size: usize,
    /// `cluster.classic_queues_everywhere`: durable classic queues are known to every node,
    /// which reach them on their home node ([`crate::remote`]).
    pub classic_everywhere: bool,
}

/// Owner ids of node number `n` (1-based, in the order of node ids) start at `n <<
/// OWNER_BITS`.
pub(crate) const OWNER_BITS: u32 = 48;

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
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long one attempt to hand a proposal to another node may take (a node cut off does not
/// answer at all: the attempt must end in time to try the node elected after it).
pub(crate) const FORWARD_ATTEMPT: Duration = Duration::from_secs(2);

/// How long a proposal may look for a leader that takes it.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node of a cluster has beyond a node alone.
pub(crate) struct Cluster {
    pub(crate) spec: ClusterSpec,
    /// This node's number (1-based position of its id).
    pub(crate) number: u64,
    pub(crate) registry: Registry,
    _listener: Listener,
    /// Proposals to leaders.
    pub(crate) forwarder: Arc<Forwarder>,
    /// Questions to other nodes and membership changes (apart, so that they never wait
    /// behind a proposal waiting for its commit).
    pub(crate) control: Arc<Forwarder>,
    /// Commands for classic queues homed on other nodes (apart: they wait for a disk).
    pub(crate) homes: Arc<Forwarder>,
    /// Deliveries for nodes that are not members of a queue's group, in order, per node.
    pushes: Arc<Forwarder>,
    pushers: Mutex<HashMap<NodeId, mpsc::UnboundedSender<(u64, crate::transport::Pushed)>>>,
    /// The node's Raft runtime: where the pushers run, whichever thread pushes first (a
    /// classic queue's deliveries are pushed from the broker's threads).
    runtime: tokio::runtime::Handle,
    /// The metadata group's Raft (replaced when the node joins a cluster).
    pub(crate) meta: parking_lot::RwLock<Option<Raft<QueueRaft>>>,
    /// What applies the metadata group's changes to the broker (kept to open the group
    /// again when the node joins a cluster).
    pub(crate) applier: OnceLock<Applier>,
    waiters: Waiters,
    next_request: AtomicU64,
    /// Since when each other node has not answered a probe (absent: it answers).
    down_since: Mutex<HashMap<NodeId, std::time::Instant>>,
    /// The first owner id of this run of the node ([`ReplicaHost::owner_base`]): owner ids
    /// of this node below it are consumers of an earlier run, which are gone.
    incarnation: OnceLock<u64>,
}

impl Cluster {
    /// The metadata group's membership now: None until that group has started and has one.
    fn meta_membership(&self) -> Option<Arc<openraft::StoredMembership<NodeId, BasicNode>>> {
        let m = self.meta()?.metrics().borrow().membership_config.clone();
        let empty = m.membership().nodes().next().is_none();
        (!empty).then_some(m)
    }

    /// The cluster's nodes now, by id, with their names: the metadata group's membership
    /// (the configured nodes, less those forgotten, plus those that joined), or the
    /// configured nodes until that group has started.
    pub(crate) fn nodes(&self) -> BTreeMap<NodeId, BasicNode> {
        match self.meta_membership() {
            Some(m) => m
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect(),
            None => self.spec.nodes.clone(),
        }
    }

    /// Node `id` as [`Cluster::nodes`] has it, or as configured (a node forgotten since).
    pub(crate) fn member(&self, id: NodeId) -> Option<BasicNode> {
        self.meta_membership()
            .and_then(|m| m.membership().get_node(&id).cloned())
            .or_else(|| self.spec.nodes.get(&id).cloned())
    }

    /// Whether `id` is one of [`Cluster::nodes`] (not forgotten).
    pub(crate) fn in_cluster(&self, id: NodeId) -> bool {
        match self.meta_membership() {
            Some(m) => m.membership().get_node(&id).is_some(),
            None => self.spec.nodes.contains_key(&id),
        }
    }

    /// Asks the node at `addr` whether it answers on its cluster port, within `timeout`.
    pub(crate) async fn probe(&self, addr: &str, timeout: Duration) -> bool {
        let (me, secret, tls) = (self.spec.me, &self.spec.secret, self.spec.tls.as_ref());
        crate::transport::probe(addr, me, secret, tls, timeout).await
    }

    /// The metadata group (once started).
    pub(crate) fn meta(&self) -> Option<Raft<QueueRaft>> {
        self.meta.read().clone()
    }

    /// Where node `node` listens for the others.
    pub(crate) fn addr(&self, node: NodeId) -> Option<String> {
        self.member(node).map(|n| link_addr(&n.addr))
    }

    /// Node `id`'s name (`warren@host:port`).
    pub(crate) fn name_of(&self, id: NodeId) -> Option<String> {
        self.member(id).map(|n| n.addr)
    }

    /// Whether `node` has not answered the probes for a while.
    pub(crate) fn is_down(&self, node: NodeId) -> bool {
        self.down_since.lock().contains_key(&node)
    }

    /// The node named `name` (`warren@host:port`).
    pub(crate) fn node_named(&self, name: &str) -> Option<NodeId> {
        let find = |nodes: &BTreeMap<NodeId, BasicNode>| {
            nodes
                .iter()
                .find(|(_, n)| n.addr == name)
                .map(|(id, _)| *id)
        };
        find(&self.nodes()).or_else(|| find(&self.spec.nodes))
    }

    /// Sends what an entry left for `node`'s consumers of `group` (a node that is not a
    /// member), after what was sent to it before. A node that does not take it for a while
    /// is down: what it missed is dropped (its consumers are removed from the queues, and
    /// what they held goes back).
    pub(crate) fn push(&self, node: NodeId, group: u64, p: crate::transport::Pushed) {
        let mut pushers = self.pushers.lock();
        let tx = pushers.entry(node).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let addr = self.addr(node).unwrap_or_default();
            self.runtime.spawn(push_to(self.pushes.clone(), addr, rx));
            tx
        });
        let _ = tx.send((group, p));
    }

    /// The node whose owner ids `owner` is one of (see [`ReplicaHost::owner_base`]).
    pub(crate) fn node_of(&self, owner: warren_broker::queue::Owner) -> Option<NodeId> {
        let number = owner >> OWNER_BITS;
        if number == 0 {
            return None;
        }
        let matches = |id: &NodeId| number_of(*id) == number;
        if let Some(m) = self.meta_membership() {
            if let Some((id, _)) = m.membership().nodes().find(|(id, _)| matches(id)) {
                return Some(*id);
            }
        }
        self.spec.nodes.keys().copied().find(matches)
    }

    /// Whether `owner`'s node has been down for [`DOWN_AFTER`], or was forgotten.
    pub(crate) fn owner_is_gone(&self, owner: warren_broker::queue::Owner) -> bool {
        let Some(node) = self.node_of(owner).filter(|n| *n != self.spec.me) else {
            return false;
        };
        if !self.in_cluster(node) {
            return true;
        }
        self.down_since
            .lock()
            .get(&node)
            .is_some_and(|t| t.elapsed() >= DOWN_AFTER)
    }

    /// Whether `owner` is a consumer of an earlier run of this node (killed, and maybe back
    /// before the others noticed it was down): its channel is gone for sure.
    pub(crate) fn owner_is_stale(&self, owner: warren_broker::queue::Owner) -> bool {
        owner >> OWNER_BITS == self.number && self.incarnation.get().is_some_and(|b| owner < *b)
    }

    /// Probes the other nodes for ever (the task ends with the runtime).
    async fn watch_nodes(self: Arc<Self>) {
        loop {
            let nodes = self.nodes();
            self.down_since
                .lock()
                .retain(|id, _| nodes.contains_key(id));
            for (id, n) in &nodes {
                if *id == self.spec.me {
                    continue;
                }
                let up = self.probe(&link_addr(&n.addr), PROBE_EVERY).await;
                let mut down = self.down_since.lock();
                match (up, down.contains_key(id)) {
                    (true, true) => {
                        down.remove(id);
                        tracing::info!(node = %n.addr, "cluster node answers again");
                    }
                    (false, false) => {
                        down.insert(*id, std::time::Instant::now());
                        tracing::warn!(node = %n.addr, "cluster node does not answer");
                        let addr = link_addr(&n.addr);
                        for links in [&self.forwarder, &self.control, &self.pushes, &self.homes] {
                            links.drop_link(&addr);
                        }
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
pub(crate) async fn reap_gone_owners(
    group: std::sync::Weak<QueueGroup>,
    c: Arc<Cluster>,
    replica: std::sync::Weak<GroupReplica>,
) {
    let mut reaped = HashSet::new();
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let (Some(g), Some(r)) = (group.upgrade(), replica.upgrade()) else {
            return;
        };
        if g.is_stopped() {
            return;
        }
        let owners = g.state().with_engine(|e| e.owner_ids());
        r.remove_stale(&owners);
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
            r.remove_owner(owner, warren_broker::clock::now_ms());
            reaped.insert(owner);
        }
    }
}

/// Sends what [`Cluster::push`] queued for one node, in order; what the node does not take
/// within [`PUSH_GIVE_UP`] is dropped (the node is down: its consumers are removed).
async fn push_to(
    links: Arc<Forwarder>,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<(u64, crate::transport::Pushed)>,
) {
    let mut batch = Vec::new();
    loop {
        if rx.recv_many(&mut batch, 256).await == 0 {
            return;
        }
        let since = std::time::Instant::now();
        loop {
            match links.push(&addr, batch.clone(), FORWARD_ATTEMPT).await {
                Ok(()) => break,
                Err(e) if since.elapsed() >= PUSH_GIVE_UP => {
                    tracing::warn!(node = %addr, error = %e, entries = batch.len(), "deliveries for a node that does not take them were dropped; its consumers are removed from the queues");
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        batch.clear();
    }
}

/// How long deliveries for another node's consumers are offered to it.
const PUSH_GIVE_UP: Duration = Duration::from_secs(10);

/// This node's replicated queues: every group has this node alone as its member, or, in a
/// cluster, every node.
pub struct LocalNode {
    pub(crate) id: NodeId,
    pub(crate) wal: Arc<NodeWal>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// What the WAL held for groups not opened yet since the start.
    recovered: Mutex<HashMap<u64, GroupState>>,
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The quorum queues opened on this node, members of their groups or not.
    pub(crate) replicas: Mutex<HashMap<u64, std::sync::Weak<GroupReplica>>>,
    /// Stand-ins of classic queues homed on other nodes, by their queues' group ids.
    pub(crate) remotes: Mutex<HashMap<u64, std::sync::Weak<crate::remote::RemoteReplica>>>,
    /// Serves the other nodes' commands for classic queues homed here (set by the binary
    /// once the broker is open: [`LocalNode::serve_homed_queues`]).
    pub(crate) home_service: OnceLock<Arc<warren_broker::queue::home::HomeService>>,
    this: OnceLock<std::sync::Weak<LocalNode>>,
}

/// Why a clustered node could not open.
#[derive(Debug, thiserror::Error)]
pub enum ClusterOpenError {
    /// The node's Raft log.
    #[error(transparent)]
    Log(#[from] WalError),
    /// Two configured nodes whose ids give the same owner-id number.
    #[error("nodes {0} and {1} would share owner ids (their names hash alike, about one chance in 65,535 for two names): rename one of them")]
    NumberClash(String, String),
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
            replicas: Mutex::default(),
            remotes: Mutex::default(),
            home_service: OnceLock::new(),
            this: OnceLock::new(),
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
        let mut numbers: HashMap<u64, &BasicNode> = HashMap::new();
        for (id, n) in &spec.nodes {
            if let Some(other) = numbers.insert(number_of(*id), n) {
                return Err(ClusterOpenError::NumberClash(
                    other.addr.clone(),
                    n.addr.clone(),
                ));
            }
        }
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
        let number = number_of(spec.me);
        tracing::info!(node = spec.me, number, listen = %listener.addr, nodes = spec.nodes.len(), "cluster listener started");
        node.id = spec.me;
        node.cluster = Some(Arc::new(Cluster {
            forwarder: Arc::new(Forwarder::new(
                spec.me,
                spec.secret.clone(),
                spec.tls.clone(),
            )),
            control: Arc::new(Forwarder::new(
                spec.me,
                spec.secret.clone(),
                spec.tls.clone(),
            )),
            pushes: Arc::new(Forwarder::new(
                spec.me,
                spec.secret.clone(),
                spec.tls.clone(),
            )),
            homes: Arc::new(Forwarder::new(
                spec.me,
                spec.secret.clone(),
                spec.tls.clone(),
            )),
            pushers: Mutex::default(),
            runtime: node.handle.clone(),
            spec,
            number,
            registry,
            _listener: listener,
            meta: Default::default(),
            applier: OnceLock::new(),
            waiters: Default::default(),
            next_request: AtomicU64::new(1),
            down_since: Default::default(),
            incarnation: OnceLock::new(),
        }));
        if let Some(c) = &node.cluster {
            node.handle.spawn(c.clone().watch_nodes());
        }
        let node = Arc::new(node);
        let _ = node.this.set(Arc::downgrade(&node));
        if let Some(c) = &node.cluster {
            let weak = Arc::downgrade(&node);
            let control: std::sync::Weak<dyn crate::transport::Control> = weak;
            c.registry.set_control(control);
        }
        Ok(node)
    }

    /// Serves the classic queues homed here to the other nodes (with
    /// `cluster.classic_queues_everywhere`), and closes the proxies of nodes that go down.
    pub fn serve_homed_queues(&self, broker: &Arc<warren_broker::Broker>) {
        let Some(c) = &self.cluster else { return };
        if !c.spec.classic_everywhere {
            return;
        }
        let link = Arc::new(crate::remote::HomePusher::new(c));
        let service = warren_broker::queue::home::HomeService::new(broker, link);
        if self.home_service.set(service.clone()).is_ok() {
            let c = Arc::downgrade(c);
            let service = Arc::downgrade(&service);
            self.handle.spawn(async move {
                loop {
                    tokio::time::sleep(PROBE_EVERY).await;
                    let (Some(c), Some(s)) = (c.upgrade(), service.upgrade()) else {
                        return;
                    };
                    s.close_owners(|o| c.owner_is_gone(o) || c.owner_is_stale(o));
                }
            });
        }
    }

    /// Starts this node's member of the cluster's metadata group: definition changes
    /// committed there are applied with `applier` (see [`crate::meta`]).
    pub fn start_metadata(&self, applier: Applier) -> Result<(), String> {
        let Some(c) = self.cluster.clone() else {
            return Err("not in a cluster".into());
        };
        let _ = c.applier.set(applier.clone());
        let recovered = self
            .recovered
            .lock()
            .remove(&META_GROUP)
            .unwrap_or_default();
        let (me, wal) = (self.id, self.wal.clone());
        let c2 = c.clone();
        let members = c.spec.nodes.clone();
        let raft = self
            .wait_for(async move {
                open_metadata(&c2, me, wal, recovered, applier, Some(members)).await
            })
            .ok_or("the Raft runtime stopped")??;
        *c.meta.write() = Some(raft);
        Ok(())
    }

    /// This node, for tasks that outlive a call.
    pub(crate) fn self_ref(&self) -> Option<Arc<LocalNode>> {
        self.this.get()?.upgrade()
    }

    /// Runs `fut` on the Raft runtime and waits for it from this (non-Raft) thread.
    pub(crate) fn wait_for<T: Send + 'static>(
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

/// Opens this node's member of the metadata group from `recovered` (what the WAL held) and
/// registers it for the other nodes' RPCs. A group never initialized is initialized with
/// `initialize`'s members, if given (a node joining a cluster waits for its leader instead).
pub(crate) async fn open_metadata(
    c: &Cluster,
    me: NodeId,
    wal: Arc<NodeWal>,
    recovered: GroupState,
    applier: Applier,
    initialize: Option<BTreeMap<NodeId, BasicNode>>,
) -> Result<Raft<QueueRaft>, String> {
    let sm = MetaStateMachine::new(me, wal.clone(), applier, c.waiters.clone())
        .map_err(|e| e.to_string())?;
    let log = GroupLog::new(META_GROUP, wal.clone(), recovered);
    let peers = TcpPeers {
        me,
        group: META_GROUP,
        secret: c.spec.secret.clone(),
        tls: c.spec.tls.clone(),
    };
    let slot = c.spec.nodes.keys().position(|n| *n == me).unwrap_or(0);
    let config = crate::group::config(slot).map_err(|e| e.to_string())?;
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
    c.registry.insert(META_GROUP, raft.clone());
    if let Some(members) = initialize {
        if !raft.is_initialized().await.map_err(|e| e.to_string())? {
            raft.initialize(members).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(raft)
}

pub(crate) fn on_raft_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with(THREAD_NAME))
}

impl ReplicaHost for LocalNode {
    fn classic_home(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        c.spec
            .classic_everywhere
            .then(|| c.name_of(c.spec.me))
            .flatten()
    }

    fn open_remote(
        &self,
        vhost: &str,
        name: &str,
        home: &str,
        opts: QueueOptions,
        outputs: OutputSink,
    ) -> Result<Arc<dyn Replica>, String> {
        let c = self.cluster.as_ref().ok_or("not in a cluster")?;
        let node = c
            .node_named(home)
            .ok_or_else(|| format!("{home} is not a node of this cluster"))?;
        let r = crate::remote::RemoteReplica::new(
            vhost,
            name,
            node,
            c.clone(),
            self.handle.clone(),
            opts,
            outputs,
        );
        self.remotes
            .lock()
            .insert(group_id(vhost, name), Arc::downgrade(&r));
        Ok(r)
    }

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
        let replica = GroupReplica::new(
            id,
            node,
            cluster.clone(),
            wal.clone(),
            self.handle.clone(),
            opts.clone(),
            outputs,
        );
        self.replicas.lock().insert(id, Arc::downgrade(&replica));
        // Whether this node is a member: it is if its log has the group; a queue being
        // declared names its members; a queue this node knows from before (a restart) with
        // nothing in the log here is not one of its groups.
        let has_entries = !recovered.entries.is_empty() || recovered.purged.is_some();
        let has_log = has_entries || recovered.vote.is_some();
        let members: Option<BTreeMap<NodeId, BasicNode>> = match &cluster {
            None => Some(BTreeMap::from([(node, BasicNode::default())])),
            Some(c) if has_log => Some(c.nodes()),
            Some(c) => match warren_broker::metadata::placement() {
                // Declared before group sizes: every node.
                Some(names) if names.is_empty() => Some(c.nodes()),
                Some(names) => {
                    let ids: BTreeMap<NodeId, BasicNode> = names
                        .iter()
                        .filter_map(|n| c.node_named(n))
                        .filter_map(|id| c.member(id).map(|b| (id, b)))
                        .collect();
                    ids.contains_key(&node).then_some(ids)
                }
                None => None,
            },
        };
        let Some(members) = members else {
            tracing::debug!(
                group = id,
                queue = name,
                vhost,
                "not a member of the quorum queue's group: serving it from the members"
            );
            return Ok(replica);
        };
        let r2 = replica.clone();
        let started = self.wait_for(async move {
            let Some(c) = cluster else {
                let (group, out) = QueueGroup::start(node, id, wal, recovered, opts).await?;
                group.caught_up(OPEN_TIMEOUT).await?;
                r2.set_local(Arc::new(group), out);
                return Ok::<_, crate::GroupError>(());
            };
            // The node the queue was declared through creates the group at once, and
            // `initialize` makes it stand for election straight away, so it leads
            // (RabbitMQ's client-local leader locator). The other members wait: they vote for
            // it and learn the members from its first entries. Should it die before that,
            // each creates the group alike after a hold (safe with the same members), so the
            // queue is not left without a group; no waiting for a leader, others may be down.
            // (A member whose log has a vote and no entry waits for the leader's.)
            let new = !has_log;
            let membership = Membership {
                members,
                initialize: lead_here || has_entries,
            };
            let peers = TcpPeers {
                me: node,
                group: id,
                secret: c.spec.secret.clone(),
                tls: c.spec.tls.clone(),
            };
            let members = membership.members.clone();
            let (group, out) = QueueGroup::start_member(
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
                let raft = group.raft().clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FIRST_ELECTION_HOLD).await;
                    if let Ok(false) = raft.is_initialized().await {
                        // Refused (harmlessly) if the leader's entries arrived meanwhile.
                        let _ = raft.initialize(members).await;
                    }
                });
            }
            r2.set_local(Arc::new(group), out);
            Ok(())
        });
        started
            .ok_or("the Raft runtime stopped")?
            .map_err(|e| e.to_string())?;
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

    fn choose_members(&self, size: Option<u64>) -> Vec<String> {
        crate::members::choose(self, size)
    }

    fn add_member(&self, vhost: &str, name: &str, node: &str) -> Result<usize, MemberError> {
        crate::members::add(self, vhost, name, node)
    }

    fn delete_member(&self, vhost: &str, name: &str, node: &str) -> Result<usize, MemberError> {
        crate::members::delete(self, vhost, name, node)
    }

    fn forget_node(&self, node: &str) -> Result<(), MemberError> {
        crate::node_membership::forget(self, node)
    }

    fn join_cluster(&self, seed: &str) -> Result<(), MemberError> {
        crate::node_membership::join(self, seed)
    }

    fn cluster_nodes(&self) -> Option<Vec<ClusterNode>> {
        let c = self.cluster.clone()?;
        if on_raft_thread() {
            return None;
        }
        let nodes = c.nodes();
        let (c2, probed) = (c.clone(), nodes.clone());
        let running = self
            .wait_for(async move {
                let mut up = Vec::new();
                for (id, n) in &probed {
                    up.push(
                        *id == c2.spec.me
                            || c2.probe(&link_addr(&n.addr), Duration::from_secs(1)).await,
                    );
                }
                up
            })
            .unwrap_or_default();
        Some(
            nodes
                .iter()
                .zip(running)
                .map(|((id, n), running)| ClusterNode {
                    name: n.addr.clone(),
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
        let Some(raft) = c.meta() else {
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

pub(crate) fn no_majority() -> String {
    format!("not committed within {WRITE_TIMEOUT:?}: a majority of the group's nodes must be up")
}

/// One attempt at proposing `p` to group `group` whose leader is `leader`: through `raft`
/// when this node leads it, or forwarded to the leader by the [`Forwarder`], within what is
/// left of `deadline`.
pub(crate) async fn propose_once(
    c: &Cluster,
    raft: Option<&Raft<QueueRaft>>,
    leader: Option<NodeId>,
    group: u64,
    p: &Proposal,
    deadline: tokio::time::Instant,
) -> Result<Vec<Applied>, String> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match (leader, raft) {
        (Some(l), Some(raft)) if l == c.spec.me => {
            // A leader that lost its majority stays leader until it hears of a newer
            // term: its proposals are never committed, so the wait is bounded.
            match tokio::time::timeout(left, raft.client_write(p.clone())).await {
                Ok(r) => r.map(|r| r.data).map_err(|e| e.to_string()),
                Err(_) => Err(no_majority()),
            }
        }
        (Some(l), _) => match c.addr(l) {
            Some(addr) => {
                let attempt = left.min(FORWARD_ATTEMPT);
                c.forwarder.forward(&addr, group, p.clone(), attempt).await
            }
            None => Err(format!("node {l} is not in the cluster's configuration")),
        },
        (None, _) => Err("no leader yet".into()),
    }
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
        let r = propose_once(c, Some(raft), leader, group, &p, deadline).await;
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
