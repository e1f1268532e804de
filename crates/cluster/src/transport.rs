//! Links between nodes: Raft RPCs over TCP. Each node listens on its cluster port; a peer
//! connects, proves it knows the cluster's shared secret (the Erlang cookie's role), then
//! sends requests and reads answers, one at a time per connection.
//!
//! Wire: every frame is a u32 (big-endian) length and a postcard-encoded value.
//! - Handshake: the listener sends a 32-byte random challenge; the connecting node answers
//!   SHA-256(secret ‖ challenge) and its node id; the listener answers `true` (accepted) or
//!   closes the connection.
//! - Then `Request { group, rpc }` → `Response` (the group's Raft answer, or its error).
//!   Besides Raft's own RPCs, `Forward` carries a proposal from a member that does not lead
//!   the group to the one that does ([`Forwarder`]); it is answered once committed and
//!   applied there.
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
use warren_broker::queue::Applied;

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
}

impl Registry {
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
        let Some(raft) = registry.get(req.group) else {
            write_frame(&mut s, &Response::NoGroup).await?;
            continue;
        };
        let resp = match req.rpc {
            Rpc::AppendEntries(r) => Response::AppendEntries(raft.append_entries(r).await),
            Rpc::Vote(r) => Response::Vote(raft.vote(r).await),
            Rpc::InstallSnapshot(r) => Response::InstallSnapshot(raft.install_snapshot(r).await),
            Rpc::Forward(p) => Response::Forward(
                raft.client_write(p)
                    .await
                    .map(|r| r.data)
                    .map_err(|e| e.to_string()),
            ),
        };
        write_frame(&mut s, &resp).await?;
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

    /// Proposes `p` to group `group` at the node at `addr`: its answers once committed and
    /// applied there, or why not (that node does not lead the group, or is unreachable).
    pub async fn forward(
        &self,
        addr: &str,
        group: u64,
        p: Proposal,
        timeout: Duration,
    ) -> Result<Vec<Applied>, String> {
        let link = self
            .links
            .lock()
            .entry(addr.to_string())
            .or_default()
            .clone();
        let mut conn = link.lock().await;
        let r = tokio::time::timeout(timeout, async {
            if conn.is_none() {
                *conn = Some(connect(addr, self.me, &self.secret, self.tls.as_ref()).await?);
            }
            let s = conn.as_mut().expect("connected");
            write_frame(
                s,
                &Request {
                    group,
                    rpc: Rpc::Forward(p),
                },
            )
            .await?;
            read_frame::<Response>(s).await
        })
        .await;
        match r {
            Ok(Ok(Response::Forward(r))) => r,
            Ok(Ok(Response::NoGroup)) => Err(format!("node at {addr} does not run group {group}")),
            Ok(Ok(_)) => Err("answer of the wrong kind".into()),
            Ok(Err(e)) => {
                *conn = None;
                Err(format!("node at {addr}: {e}"))
            }
            Err(_) => {
                *conn = None;
                Err(format!(
                    "no answer from the node at {addr} within {timeout:?}"
                ))
            }
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
            addr: node.addr.clone(),
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
    async fn call(&mut self, rpc: Rpc, timeout: Duration) -> Result<Response, Unreachable> {
        let r = tokio::time::timeout(timeout, async {
            if self.conn.is_none() {
                self.conn = Some(self.connect().await?);
            }
            let s = self.conn.as_mut().expect("connected");
            write_frame(
                s,
                &Request {
                    group: self.peers.group,
                    rpc,
                },
            )
            .await?;
            read_frame::<Response>(s).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from node {} within {timeout:?}", self.target),
            ))
        });
        match r {
            Ok(Response::NoGroup) => Err(Unreachable::new(&std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "node {} does not run group {}",
                    self.target, self.peers.group
                ),
            ))),
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.conn = None;
                Err(Unreachable::new(&e))
            }
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
