//! Links between nodes: Raft RPCs over TCP. Each node listens on its cluster port; a peer
//! connects, proves it knows the cluster's shared secret (the Erlang cookie's role), then
//! sends requests and reads answers, one at a time per connection.
//!
//! Wire: every frame is a u32 (big-endian) length and a postcard-encoded value.
//! - Handshake: the listener sends a 32-byte random challenge; the connecting node answers
//!   SHA-256(secret ‖ challenge) and its node id; the listener answers `true` (accepted) or
//!   closes the connection.
//! - Then `Request { group, rpc }` → `Response` (the group's Raft answer, or its error).
//!   Besides Raft's own RPCs, `Forward` carries a proposal from a node that does not lead
//!   the group to the one that does ([`Forwarder`]); it is answered once committed and
//!   applied there. `Status` asks what a node knows of a group (its leader, members, the
//!   queue's counts), `Push` hands a node the deliveries for its consumers of a queue it is
//!   not a member of, `Member` runs a step of a membership change ([`MemberOp`]); these go
//!   to the node's [`Control`].
//!
//! Groups are found in the node's [`Registry`]. A request for a group this node does not run
//! answers `Response::NoGroup`, which the sender sees as the peer being unreachable for it.
//! With [`LinkTls`], every link is TLS first (both sides present a certificate that the other
//! checks against the cluster's CA), then the same handshake and frames inside it.

use crate::types::{NodeId, Proposal, QueueRaft};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use parking_lot::RwLock;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// TLS between nodes: the node's certificate, presented to the nodes it connects to and to
/// those that connect to it, each checking the other's against the cluster's CA.
#[derive(Clone)]
pub struct LinkTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

/// A link's byte stream: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}
type Conn = Box<dyn Io>;
use warren_broker::queue::{Applied, QueueCommand};

/// Largest frame accepted (a batch of log entries); more closes the link.
const MAX_FRAME: u32 = 64 << 20;

/// How long a connection may take to connect and pass the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
enum Rpc {
    AppendEntries(AppendEntriesRequest<QueueRaft>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<QueueRaft>),
    Forward(Proposal),
    /// What this node knows of the group (see [`Control::status`]).
    Status,
    /// Deliveries for this node's consumers of queues it is not a member of.
    Push(Vec<(u64, Pushed)>),
    /// A step of a membership change (see [`Control::member_op`]).
    Member(MemberOp),
    /// Commands for a classic queue whose home is the node asked (see [`Control::home`]).
    Home {
        vhost: String,
        queue: String,
        cmds: Vec<QueueCommand>,
    },
    /// The counts of a classic queue whose home is the node asked.
    HomeStatus {
        vhost: String,
        queue: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Request {
    group: u64,
    rpc: Rpc,
}

#[derive(Serialize, Deserialize)]
enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Forward(Result<Vec<Applied>, String>),
    NoGroup,
    Status(Option<GroupStatus>),
    Done(Result<u64, String>),
    HomeStatus(Option<HomeStatus>),
}

/// A classic queue's counts, from its home node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HomeStatus {
    pub stats: warren_broker::queue::QueueStats,
    pub len: u64,
    pub backlogged: bool,
    /// The home node's run (see `HomeService::incarnation`).
    pub incarnation: u64,
}

/// What a node knows of one queue's group: who leads it and who is in it, and, from a
/// member, the queue's counts (a node that is not a member shows these).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupStatus {
    /// This node holds a copy (it is a voter or a learner of the group).
    pub member: bool,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The last log index this node applied.
    pub applied: u64,
    pub stats: warren_broker::queue::QueueStats,
    pub len: u64,
    pub backlogged: bool,
    /// Owners (consumers, basic.get channels) the queue knows.
    pub owners: Vec<warren_broker::queue::Owner>,
}

/// A delivery decided by a group's leader for a consumer on a node that is not a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushedDelivery {
    pub owner: warren_broker::queue::Owner,
    pub checkout: warren_broker::queue::CheckoutId,
    pub seq: u64,
    pub msg: warren_broker::queue::LoggedMessage,
    pub redelivered: bool,
    pub delivery_count: u32,
}

impl Pushed {
    /// Hands the push on to the queue (`outputs`) if it is new: `through` is the last index
    /// taken, held meanwhile so that pushes reach the queue once each, in order.
    pub(crate) fn hand_on(
        self,
        through: &parking_lot::Mutex<u64>,
        outputs: &warren_broker::queue::replica::OutputSink,
    ) {
        let mut through = through.lock();
        if self.index <= *through {
            return;
        }
        *through = self.index;
        outputs(warren_broker::queue::replica::ReplicaOutput {
            index: self.index,
            deliveries: self
                .deliveries
                .into_iter()
                .map(PushedDelivery::into_delivery)
                .collect(),
            removed_consumers: self.removed,
            ..Default::default()
        });
    }
}

impl PushedDelivery {
    /// As the broker's queue takes it: (owner, checkout, message).
    fn into_delivery(
        self,
    ) -> (
        warren_broker::queue::Owner,
        warren_broker::queue::CheckoutId,
        warren_broker::queue::QueuedMessage,
    ) {
        (
            self.owner,
            self.checkout,
            warren_broker::queue::QueuedMessage {
                seq: self.seq,
                msg: self.msg.0,
                redelivered: self.redelivered,
                pos: None,
                priority: 0,
                expires_at: None,
                delivery_count: self.delivery_count,
            },
        )
    }
}

/// What applying one log entry left for a node that is not a member of the group: every
/// member sends it; the node takes each entry's once (by `index`, which only grows).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    pub index: u64,
    pub deliveries: Vec<PushedDelivery>,
    pub removed: Vec<warren_broker::queue::Owner>,
}

/// One step of a membership change, run where it must be: `Join` and `Leave` on the node
/// that gains or loses its copy, the others on the group's leader (openraft's membership
/// changes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberOp {
    /// Start this node's (empty) member of the group, for the leader to fill.
    Join,
    /// This node's member was removed: stop it and forget its log.
    Leave,
    /// Leader: add the node as a learner and wait until it has caught up.
    AddLearner(NodeId),
    /// Leader: make the learner a voter.
    Promote(NodeId),
    /// Leader: make the voter a learner (it keeps receiving the log).
    Demote(NodeId),
    /// Leader: remove the learner.
    Remove(NodeId),
    /// The metadata group's leader: remove the node from the cluster (`forget_cluster_node`).
    Forget(NodeId),
    /// The metadata group's leader (another node sends it there): add the node named so to
    /// the cluster (`join_cluster`): a learner of the group until it has caught up, then a
    /// voter.
    AddNode { id: NodeId, name: String },
}

/// A boxed future, as [`Control`] returns.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// What a node does with requests that are not Raft's own (set on its [`Registry`]).
pub trait Control: Send + Sync {
    /// What this node knows of `group` (None: no such queue here).
    fn status(&self, group: u64) -> Option<GroupStatus>;
    /// Deliveries for this node's consumers.
    fn push(&self, pushed: Vec<(u64, Pushed)>);
    /// Runs one step of a membership change; answers the change's log index (or 0).
    fn member_op(&self, group: u64, op: MemberOp) -> BoxFuture<Result<u64, String>>;
    /// Applies commands another node sent for classic queue `queue` of `vhost`, homed here.
    fn home(
        &self,
        vhost: String,
        queue: String,
        cmds: Vec<QueueCommand>,
    ) -> BoxFuture<Result<Vec<Applied>, String>>;
    /// The counts of classic queue `queue` of `vhost`, homed here.
    fn home_status(&self, vhost: &str, queue: &str) -> Option<HomeStatus>;
}

#[derive(Serialize, Deserialize)]
struct Hello {
    node: NodeId,
    proof: [u8; 32],
}

/// The groups this node runs, by id, for the listener to hand requests to.
#[derive(Clone, Default)]
pub struct Registry {
    groups: Arc<RwLock<HashMap<u64, Raft<QueueRaft>>>>,
    control: Arc<RwLock<Option<std::sync::Weak<dyn Control>>>>,
}

impl Registry {
    /// Where requests that are not Raft's own go.
    pub fn set_control(&self, c: std::sync::Weak<dyn Control>) {
        *self.control.write() = Some(c);
    }

    fn control(&self) -> Option<Arc<dyn Control>> {
        self.control.read().as_ref()?.upgrade()
    }

    pub fn insert(&self, group: u64, raft: Raft<QueueRaft>) {
        self.groups.write().insert(group, raft);
    }

    pub fn remove(&self, group: u64) {
        self.groups.write().remove(&group);
    }

    fn get(&self, group: u64) -> Option<Raft<QueueRaft>> {
        self.groups.read().get(&group).cloned()
    }
}

fn proof(secret: &[u8], challenge: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Compares without an early exit (the proof is a secret-derived value).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn write_frame(s: &mut (impl AsyncWrite + Unpin), v: &impl Serialize) -> std::io::Result<()> {
    let body = postcard::to_stdvec(v).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await
}

async fn read_frame<T: DeserializeOwned>(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<T> {
    let len = s.read_u32().await?;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (most {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0; len as usize];
    s.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The node's cluster listener.
pub struct Listener {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Listens on `addr` for peers that know `secret`, handing their requests to `registry`.
    pub async fn start(
        addr: SocketAddr,
        secret: Arc<[u8]>,
        registry: Registry,
        tls: Option<LinkTls>,
    ) -> std::io::Result<Listener> {
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, peer)) = l.accept().await else {
                    continue;
                };
                let (secret, registry, tls) = (secret.clone(), registry.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(s, &secret, &registry, tls).await {
                        tracing::debug!(%peer, error = %e, "cluster link closed");
                    }
                });
            }
        });
        Ok(Listener { addr, task })
    }

    /// Stops accepting (connections already open end when their peer goes).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    tcp: TcpStream,
    secret: &[u8],
    registry: &Registry,
    tls: Option<LinkTls>,
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut s: Conn = match tls {
        None => Box::new(tcp),
        Some(t) => Box::new(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, t.acceptor.accept(tcp))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??,
        ),
    };
    let challenge: [u8; 32] = rand::random();
    let hello: Hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        write_frame(&mut s, &challenge).await?;
        read_frame(&mut s).await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    if !same(&hello.proof, &proof(secret, &challenge)) {
        tracing::warn!(
            node = hello.node,
            "a node with the wrong cluster secret was refused"
        );
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "wrong cluster secret",
        ));
    }
    write_frame(&mut s, &true).await?;
    loop {
        let req: Request = read_frame(&mut s).await?;
        let control = registry.control();
        let resp = match (req.rpc, control) {
            (Rpc::Status, Some(c)) => Response::Status(c.status(req.group)),
            (Rpc::Push(p), Some(c)) => {
                c.push(p);
                Response::Done(Ok(0))
            }
            (Rpc::Member(op), Some(c)) => Response::Done(c.member_op(req.group, op).await),
            (Rpc::Home { vhost, queue, cmds }, Some(c)) => {
                Response::Forward(c.home(vhost, queue, cmds).await)
            }
            (Rpc::HomeStatus { vhost, queue }, Some(c)) => {
                Response::HomeStatus(c.home_status(&vhost, &queue))
            }
            (
                Rpc::Status
                | Rpc::Push(_)
                | Rpc::Member(_)
                | Rpc::Home { .. }
                | Rpc::HomeStatus { .. },
                None,
            ) => Response::NoGroup,
            (rpc, _) => match registry.get(req.group) {
                Some(raft) => serve_raft(&raft, rpc).await,
                None => Response::NoGroup,
            },
        };
        write_frame(&mut s, &resp).await?;
    }
}

/// Answers one of Raft's own requests (or a forwarded proposal) for `raft`'s group.
async fn serve_raft(raft: &Raft<QueueRaft>, rpc: Rpc) -> Response {
    match rpc {
        Rpc::AppendEntries(r) => Response::AppendEntries(raft.append_entries(r).await),
        Rpc::Vote(r) => Response::Vote(raft.vote(r).await),
        Rpc::InstallSnapshot(r) => Response::InstallSnapshot(raft.install_snapshot(r).await),
        Rpc::Forward(p) => Response::Forward(
            raft.client_write(p)
                .await
                .map(|r| r.data)
                .map_err(|e| e.to_string()),
        ),
        Rpc::Status | Rpc::Push(_) | Rpc::Member(_) | Rpc::Home { .. } | Rpc::HomeStatus { .. } => {
            Response::NoGroup
        }
    }
}

/// Connects to the node at `addr` (over TLS with `tls`) and passes the handshake as node `me`.
async fn connect(
    addr: &str,
    me: NodeId,
    secret: &[u8],
    tls: Option<&LinkTls>,
) -> std::io::Result<Conn> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut s: Conn = match tls {
            None => Box::new(tcp),
            Some(t) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls_pki_name(host)?;
                Box::new(t.connector.connect(name, tcp).await?)
            }
        };
        let challenge: [u8; 32] = read_frame(&mut s).await?;
        let hello = Hello {
            node: me,
            proof: proof(secret, &challenge),
        };
        write_frame(&mut s, &hello).await?;
        let _accepted: bool = read_frame(&mut s).await?;
        Ok(s)
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// The name a node's certificate must carry: its host, a DNS name or an IP address.
fn rustls_pki_name(
    host: &str,
) -> std::io::Result<tokio_rustls::rustls::pki_types::ServerName<'static>> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{host}' is not a name a certificate can carry: {e}"),
        )
    })
}

/// Whether the node at `addr` accepts a connection and the handshake within `timeout`.
pub async fn probe(
    addr: &str,
    me: NodeId,
    secret: &[u8],
    tls: Option<&LinkTls>,
    timeout: Duration,
) -> bool {
    tokio::time::timeout(timeout, connect(addr, me, secret, tls))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Sends proposals to the node that leads their group: one connection per node, one
/// proposal at a time on it (so proposals sent one after another are committed in order).
pub struct Forwarder {
    me: NodeId,
    secret: Arc<[u8]>,
    tls: Option<LinkTls>,
    links: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Conn>>>>>,
}

impl Forwarder {
    pub fn new(me: NodeId, secret: Arc<[u8]>, tls: Option<LinkTls>) -> Self {
        Forwarder {
            me,
            secret,
            tls,
            links: Default::default(),
        }
    }

    /// Closes the idle connection to the node at `addr`, if any: that node went down, and a
    /// connection to its earlier run would fail the next request (the node may be back by
    /// then, on a new connection).
    pub fn drop_link(&self, addr: &str) {
        let link = self.links.lock().get(addr).cloned();
        if let Some(link) = link {
            if let Ok(mut slot) = link.try_lock() {
                *slot = None;
            }
        }
    }

    /// Sends one request to the node at `addr` on this forwarder's link to it (one request
    /// at a time per node) and reads the answer.
    async fn request(
        &self,
        addr: &str,
        group: u64,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<Response, String> {
        let link = self
            .links
            .lock()
            .entry(addr.to_string())
            .or_default()
            .clone();
        // The wait for the link counts too: another request may hold it for long (a
        // membership change waits for a learner to catch up). The connection is taken out
        // while in use and put back once answered: a request cut short drops it (its answer
        // would otherwise be read as the next request's).
        let r = tokio::time::timeout(timeout, async {
            let mut slot = link.lock().await;
            let mut conn = match slot.take() {
                Some(c) => c,
                None => connect(addr, self.me, &self.secret, self.tls.as_ref()).await?,
            };
            write_frame(&mut conn, &Request { group, rpc }).await?;
            let answer = read_frame::<Response>(&mut conn).await?;
            *slot = Some(conn);
            Ok::<_, std::io::Error>(answer)
        })
        .await;
        match r {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("node at {addr}: {e}")),
            Err(_) => Err(format!(
                "no answer from the node at {addr} within {timeout:?}"
            )),
        }
    }

    /// Proposes `p` to group `group` at the node at `addr`: its answers once committed and
    /// applied there, or why not (that node does not lead the group, or is unreachable).
    pub async fn forward(
        &self,
        addr: &str,
        group: u64,
        p: Proposal,
        timeout: Duration,
    ) -> Result<Vec<Applied>, String> {
        match self.request(addr, group, Rpc::Forward(p), timeout).await? {
            Response::Forward(r) => r,
            Response::NoGroup => Err(format!("node at {addr} does not run group {group}")),
            _ => Err("answer of the wrong kind".into()),
        }
    }

    /// What the node at `addr` knows of group `group` (None: it has no such queue).
    pub async fn status(
        &self,
        addr: &str,
        group: u64,
        timeout: Duration,
    ) -> Result<Option<GroupStatus>, String> {
        match self.request(addr, group, Rpc::Status, timeout).await? {
            Response::Status(s) => Ok(s),
            Response::NoGroup => Ok(None),
            _ => Err("answer of the wrong kind".into()),
        }
    }

    /// Hands deliveries to the node at `addr` for its consumers.
    pub async fn push(
        &self,
        addr: &str,
        pushed: Vec<(u64, Pushed)>,
        timeout: Duration,
    ) -> Result<(), String> {
        match self.request(addr, 0, Rpc::Push(pushed), timeout).await? {
            Response::Done(_) => Ok(()),
            Response::NoGroup => Err(format!("node at {addr} is shutting down")),
            _ => Err("answer of the wrong kind".into()),
        }
    }

    /// Sends commands for classic queue `queue` of `vhost` to its home node at `addr`: the
    /// answers once applied there (a publish once on disk).
    pub async fn home(
        &self,
        addr: &str,
        vhost: &str,
        queue: &str,
        cmds: Vec<QueueCommand>,
        timeout: Duration,
    ) -> Result<Vec<Applied>, String> {
        let rpc = Rpc::Home {
            vhost: vhost.to_string(),
            queue: queue.to_string(),
            cmds,
        };
        match self.request(addr, 0, rpc, timeout).await? {
            Response::Forward(r) => r,
            Response::NoGroup => Err(format!("node at {addr} is shutting down")),
            _ => Err("answer of the wrong kind".into()),
        }
    }

    /// The counts of classic queue `queue` of `vhost` at its home node at `addr`.
    pub async fn home_status(
        &self,
        addr: &str,
        vhost: &str,
        queue: &str,
        timeout: Duration,
    ) -> Result<Option<HomeStatus>, String> {
        let rpc = Rpc::HomeStatus {
            vhost: vhost.to_string(),
            queue: queue.to_string(),
        };
        match self.request(addr, 0, rpc, timeout).await? {
            Response::HomeStatus(s) => Ok(s),
            Response::NoGroup => Ok(None),
            _ => Err("answer of the wrong kind".into()),
        }
    }

    /// Runs one step of a membership change of group `group` at the node at `addr`.
    pub async fn member_op(
        &self,
        addr: &str,
        group: u64,
        op: MemberOp,
        timeout: Duration,
    ) -> Result<u64, String> {
        match self.request(addr, group, Rpc::Member(op), timeout).await? {
            Response::Done(r) => r,
            Response::NoGroup => Err(format!("node at {addr} is shutting down")),
            _ => Err("answer of the wrong kind".into()),
        }
    }
}

/// Connects to the other members: what openraft uses to reach them.
#[derive(Clone)]
pub struct TcpPeers {
    pub me: NodeId,
    pub group: u64,
    pub secret: Arc<[u8]>,
    pub tls: Option<LinkTls>,
}

/// A link to one member, for one group (connected on first use, again after an error).
pub struct TcpLink {
    peers: TcpPeers,
    target: NodeId,
    addr: String,
    conn: Option<Conn>,
}

impl RaftNetworkFactory<QueueRaft> for TcpPeers {
    type Network = TcpLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> TcpLink {
        TcpLink {
            peers: self.clone(),
            target,
            addr: crate::nodes::link_addr(&node.addr),
            conn: None,
        }
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl TcpLink {
    async fn connect(&self) -> std::io::Result<Conn> {
        connect(
            &self.addr,
            self.peers.me,
            &self.peers.secret,
            self.peers.tls.as_ref(),
        )
        .await
    }

    /// Sends one request and reads its answer; a broken link is dropped (the next call
    /// reconnects) and reported as unreachable.
    ///
    /// Cancel-safe: openraft wraps each RPC in a timeout of its own, and a call dropped
    /// between sending a request and reading its answer must not leave that answer on the
    /// connection for the next request to read as its own (a stale "conflict" read as a
    /// heartbeat's made a leader take a follower's log for reverted; a stale success could
    /// count entries as replicated that never were). So the connection is taken out while
    /// the call runs and put back only once the answer is read: a call cut short drops it.
    async fn call(&mut self, rpc: Rpc, timeout: Duration) -> Result<Response, Unreachable> {
        let request = Request {
            group: self.peers.group,
            rpc,
        };
        let taken = self.conn.take();
        let r = tokio::time::timeout(timeout, async {
            let mut conn = match taken {
                Some(c) => c,
                None => self.connect().await?,
            };
            write_frame(&mut conn, &request).await?;
            let answer = read_frame::<Response>(&mut conn).await?;
            Ok::<_, std::io::Error>((conn, answer))
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from node {} within {timeout:?}", self.target),
            ))
        });
        match r {
            Ok((conn, Response::NoGroup)) => {
                self.conn = Some(conn);
                Err(Unreachable::new(&std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "node {} does not run group {}",
                        self.target, self.peers.group
                    ),
                )))
            }
            Ok((conn, resp)) => {
                self.conn = Some(conn);
                Ok(resp)
            }
            Err(e) => Err(Unreachable::new(&e)),
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "answer of the wrong kind");
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<QueueRaft> for TcpLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<QueueRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .call(Rpc::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            Response::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<QueueRaft>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .call(Rpc::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await? {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{raft::AppendEntriesResponse, Vote};

    /// A peer that passes the handshake and answers its first request late (a conflict),
    /// every later one at once (a success), on whichever connection they come.
    async fn slow_first_answer(secret: Arc<[u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (secret, served) = (secret.clone(), served.clone());
                tokio::spawn(async move {
                    let challenge = [7u8; 32];
                    write_frame(&mut s, &challenge).await.unwrap();
                    let hello: Hello = read_frame(&mut s).await.unwrap();
                    assert!(same(&hello.proof, &proof(&secret, &challenge)));
                    write_frame(&mut s, &true).await.unwrap();
                    while let Ok(_req) = read_frame::<Request>(&mut s).await {
                        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = if n == 0 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            AppendEntriesResponse::Conflict
                        } else {
                            AppendEntriesResponse::Success
                        };
                        let r = write_frame(&mut s, &Response::AppendEntries(Ok(answer))).await;
                        if r.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn heartbeat() -> AppendEntriesRequest<QueueRaft> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        }
    }

    /// openraft drops an RPC's future at its own timeout: the answer that comes later must
    /// not be taken for the next request's.
    #[tokio::test]
    async fn an_answer_to_a_call_cut_short_is_not_read_as_the_next_ones() {
        let secret: Arc<[u8]> = Arc::from(&b"cookie"[..]);
        let addr = slow_first_answer(secret.clone()).await;
        let mut peers = TcpPeers {
            me: 2,
            group: 9,
            secret,
            tls: None,
        };
        let node = BasicNode {
            addr: format!("warren@{addr}"),
        };
        let mut link = peers.new_client(1, &node).await;
        let cut_short = tokio::time::timeout(
            Duration::from_millis(100),
            link.append_entries(heartbeat(), RPCOption::new(Duration::from_secs(5))),
        )
        .await;
        assert!(cut_short.is_err(), "the first call is cut short");
        // Past the moment the first answer is sent.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let next = link
            .append_entries(heartbeat(), RPCOption::new(Duration::from_secs(5)))
            .await
            .expect("answered");
        assert!(
            matches!(next, AppendEntriesResponse::Success),
            "the second call read {next:?}, the first call's answer"
        );
    }
}
