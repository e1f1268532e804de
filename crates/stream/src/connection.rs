//! One stream-protocol connection: the read loop (frames split in the read buffer, each
//! decoded and handled in turn), the writer task (the outbox to the socket; heartbeats when
//! idle), the handshake's deadline and the heartbeat timeout, and the cleanup (publishers,
//! subscriptions and the connection slot go with the connection).
//!
//! Handlers never wait: what has to (confirms after the group commit, deliveries when there
//! is credit and data) runs in tasks of its own that write into the same outbox.

use crate::command::{key, Request};
use crate::frame::{next_frame, FrameBuf};
use crate::response::{self, StreamError};
use crate::StreamConfig;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use warren_broker::auth::{AccessContext, ConnectionSlot};
use warren_broker::connections::{
    CloseHandle, ConnectionEntry, StreamClients, StreamPublisherInfo,
};
use warren_broker::stats::IoCounters;
use warren_broker::{Broker, VHost};

/// Bytes waiting in the outbox above which deliveries wait for the socket.
pub(crate) const OUTBOX_LIMIT: usize = 4 * 1024 * 1024;

/// Frames waiting to be written, shared by the handlers and the tasks.
#[derive(Default)]
pub(crate) struct Outbox {
    buf: Mutex<Pending>,
    wake: Notify,
    drained: Notify,
    closing: AtomicBool,
    /// The writer is gone (the socket failed): tasks stop.
    dead: AtomicBool,
}

/// What waits in an outbox, in order: `shared` (whole buffers, each written as it is:
/// delivered chunks, which the readers of a stream share), then `small` (frames written
/// into the connection's own buffer since).
#[derive(Default)]
struct Pending {
    shared: VecDeque<Bytes>,
    shared_len: usize,
    small: FrameBuf,
}

impl Pending {
    fn len(&self) -> usize {
        self.shared_len + self.small.len()
    }
}

impl Outbox {
    pub fn send(&self, f: impl FnOnce(&mut FrameBuf)) {
        f(&mut self.buf.lock().small);
        self.wake.notify_one();
    }

    /// A frame whose content is what `head` writes, then `tail` as it is (not copied: the
    /// socket is given it with the frames around it in one vectored write).
    pub fn send_with_tail(
        &self,
        key: u16,
        version: u16,
        head: impl FnOnce(&mut FrameBuf),
        tail: Bytes,
    ) {
        let mut guard = self.buf.lock();
        let p = &mut *guard;
        let start = p.small.len();
        p.small.frame(key, version, head);
        let size = (p.small.len() - start - 4 + tail.len()) as u32;
        p.small.buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
        let before = p.small.buf.split().freeze();
        p.shared_len += before.len() + tail.len();
        p.shared.push_back(before);
        p.shared.push_back(tail);
        drop(guard);
        self.wake.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.buf.lock().len()
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Waits until fewer than `limit` bytes wait (or the writer is gone).
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.pending() < limit || self.is_dead() {
                return;
            }
            drained.await;
        }
    }

    /// A response: `key | 0x8000`, version 1, the correlation id, the code, then `extra`.
    pub fn respond(
        &self,
        k: u16,
        correlation_id: u32,
        code: u16,
        extra: impl FnOnce(&mut FrameBuf),
    ) {
        self.send(|w| {
            w.frame(k | key::RESPONSE, 1, |w| {
                w.u32(correlation_id);
                w.u16(code);
                extra(w);
            })
        });
    }

    /// A response carrying only its code.
    pub fn code(&self, k: u16, correlation_id: u32, code: u16) {
        self.respond(k, correlation_id, code, |_| {});
    }

    /// The response to a request whose answer is its outcome alone: OK, or the error's code.
    pub fn outcome<T>(&self, k: u16, correlation_id: u32, r: &response::Result<T>) {
        self.code(k, correlation_id, response::code_of(r));
    }

    /// The response to a request answered with a number (0 with an error's code).
    pub fn outcome_u64(&self, k: u16, correlation_id: u32, r: &response::Result<u64>) {
        let n = *r.as_ref().unwrap_or(&0);
        self.respond(k, correlation_id, response::code_of(r), |w| w.u64(n));
    }
}

/// A written buffer is kept for the next swap up to this capacity (a deliver chunk and its
/// frame fit), so a busy connection writes from pages already mapped: a new buffer per write
/// grows past the allocator's mmap threshold and faults every page in again.
const SPARE_MAX: usize = 512 * 1024;
/// A connection quiet this long gives its spare buffer back.
const SPARE_IDLE: Duration = Duration::from_secs(1);

async fn writer(
    mut wr: impl AsyncWrite + Unpin,
    out: Arc<Outbox>,
    heartbeat: Arc<AtomicU32>,
    io: Arc<IoCounters>,
) {
    let mut spare = BytesMut::new();
    loop {
        let hb = heartbeat.load(Ordering::Relaxed);
        let woken = out.wake.notified();
        let waited = Instant::now();
        if hb > 0 {
            if tokio::time::timeout(Duration::from_secs(hb as u64), woken)
                .await
                .is_err()
            {
                out.buf.lock().small.frame(key::HEARTBEAT, 1, |_| {});
            }
        } else {
            woken.await;
        }
        if waited.elapsed() >= SPARE_IDLE {
            spare = BytesMut::new();
        }
        let (mut shared, mut bytes) = {
            let mut p = out.buf.lock();
            p.shared_len = 0;
            (
                std::mem::take(&mut p.shared),
                std::mem::replace(&mut p.small.buf, std::mem::take(&mut spare)),
            )
        };
        let wrote = !shared.is_empty() || !bytes.is_empty();
        if wrote {
            io.send_oct
                .add((shared.iter().map(|b| b.len()).sum::<usize>() + bytes.len()) as u64);
            io.send_cnt.add(1);
        }
        if write_shared(&mut wr, &mut shared).await.is_err()
            || (!bytes.is_empty() && wr.write_all(&bytes).await.is_err())
            // The flush sends what TLS may still hold (a no-op on plain TCP).
            || (wrote && wr.flush().await.is_err())
        {
            break;
        }
        if bytes.capacity() <= SPARE_MAX {
            bytes.clear();
            spare = bytes;
        }
        out.drained.notify_waiters();
        if out.closing.load(Ordering::Acquire) && out.pending() == 0 {
            let _ = wr.shutdown().await;
            break;
        }
    }
    out.dead.store(true, Ordering::Release);
    out.drained.notify_waiters();
}

/// Writes `bufs` in order, as few writes as the socket takes (vectored).
async fn write_shared(
    wr: &mut (impl AsyncWrite + Unpin),
    bufs: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    while !bufs.is_empty() {
        let slices: Vec<std::io::IoSlice<'_>> = bufs
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let front = bufs.front_mut().expect("written bytes were queued");
            if n >= front.len() {
                n -= front.len();
                bufs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for peer properties, then SASL.
    Sasl,
    /// Authenticated; our tune sent, waiting for the client's tune and open.
    Tune,
    Open,
}

/// What the read loop does after a frame.
pub(crate) enum Flow {
    Continue,
    /// Close the connection once the outbox is written.
    Close,
}

pub(crate) struct Publisher {
    pub queue: Arc<warren_broker::Queue>,
    pub reference: String,
    /// Its counts, as the management API shows them.
    pub info: Arc<StreamPublisherInfo>,
}

pub(crate) struct Subscription {
    /// The task delivering its chunks (None: a single active consumer not active yet).
    pub task: Option<tokio::task::JoinHandle<()>>,
    pub queue: Arc<warren_broker::Queue>,
    /// Where it starts, unless a consumer update's answer says otherwise.
    pub spec: warren_broker::stream::OffsetSpec,
    /// Its stream's name and counts (the management API's view of it).
    pub info: Arc<warren_broker::connections::StreamConsumerInfo>,
    /// Its single-active-consumer group's name.
    pub sac: Option<String>,
    /// Which messages it takes by their filter value (the `filter.N` and
    /// `match-unfiltered` properties, RabbitMQ 3.13).
    pub filter: Option<warren_broker::stream::args::Filter>,
}

/// What other tasks ask of a connection.
pub(crate) enum ConnEvent {
    /// A single-active-consumer subscription became its group's active one, or must step
    /// down (see `warren_broker::stream::sac`).
    Sac(u8, warren_broker::stream::sac::SacEvent),
}

/// Closes a stream connection at an operator's request (the management API's DELETE).
#[derive(Default)]
pub(crate) struct Closer {
    reason: Mutex<Option<String>>,
    wake: Notify,
}

impl CloseHandle for Closer {
    fn force_close(&self, reason: &str) {
        *self.reason.lock() = Some(reason.to_string());
        self.wake.notify_one();
    }
}

pub(crate) struct Conn {
    pub broker: Arc<Broker>,
    pub config: Arc<StreamConfig>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub out: Arc<Outbox>,
    pub phase: Phase,
    pub user: Option<String>,
    pub vhost: Option<Arc<VHost>>,
    pub access: Option<AccessContext>,
    pub slot: Option<ConnectionSlot>,
    /// Negotiated: the largest frame the client may send.
    pub frame_max: u32,
    pub heartbeat: Arc<AtomicU32>,
    /// The id declare_queue's ownership checks know this connection by.
    pub id: u64,
    pub publishers: HashMap<u8, Publisher>,
    pub subscriptions: HashMap<u8, Subscription>,
    pub confirms: Arc<crate::publish::Confirms>,
    /// The client takes deliver version 2 (with the committed chunk id).
    pub deliver_v2: bool,
    /// What the client said of itself (peer properties).
    pub client_properties: Vec<(String, String)>,
    /// Publishers and subscriptions as the management API shows them.
    pub clients: Arc<StreamClients>,
    /// Bytes and frames in and out.
    pub io: Arc<IoCounters>,
    pub closer: Arc<Closer>,
    /// In the broker's connection registry (from open to the end).
    pub registered: bool,
    /// Where other tasks send this connection [`ConnEvent`]s.
    pub events: tokio::sync::mpsc::UnboundedSender<ConnEvent>,
    /// The correlation id of the next request this side sends.
    pub next_request: u32,
    /// Consumer updates sent and not answered yet: the subscription of each, and whether it
    /// was activated (or told to step down).
    pub consumer_updates: HashMap<u32, (u8, bool)>,
}

impl Conn {
    /// Closes the connection from the server's side with `code` (RabbitMQ's `close`).
    pub fn close_with(&self, code: u16, reason: &str) -> Flow {
        self.out.send(|w| {
            w.frame(key::CLOSE, 1, |w| {
                w.u32(0);
                w.u16(code);
                w.string(reason);
            })
        });
        Flow::Close
    }

    pub fn vhost(&self) -> &Arc<VHost> {
        self.vhost.as_ref().expect("open")
    }

    pub fn access(&self) -> &AccessContext {
        self.access.as_ref().expect("open")
    }

    /// The stream `name` in the connection's vhost.
    pub fn stream(&self, name: &str) -> response::Result<Arc<warren_broker::Queue>> {
        match self.vhost().queue(name) {
            Some(q) if q.stream().is_some() && !q.is_deleted() => Ok(q),
            _ => Err(StreamError::StreamDoesNotExist(name.to_string())),
        }
    }

    fn handle(&mut self, frame: Bytes) -> Flow {
        let req = match Request::decode(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "stream connection: malformed frame; closing");
                return self.close_with(response::UNKNOWN_FRAME, "unknown frame");
            }
        };
        match (self.phase, req) {
            (_, Request::Heartbeat) => Flow::Continue,
            (
                _,
                Request::Close {
                    correlation_id,
                    code,
                    reason,
                },
            ) => {
                tracing::debug!(peer = %self.peer, code, reason, "stream connection closed by the client");
                self.out.code(key::CLOSE, correlation_id, response::OK);
                Flow::Close
            }
            (_, Request::CloseResponse { .. }) => Flow::Close,
            (Phase::Sasl | Phase::Tune, r) => self.handshake(r),
            (Phase::Open, r) => self.command(r),
        }
    }

    fn command(&mut self, r: Request) -> Flow {
        match r {
            Request::PeerProperties { .. }
            | Request::SaslHandshake { .. }
            | Request::SaslAuthenticate { .. }
            | Request::Open { .. } => {
                return self.close_with(response::UNKNOWN_FRAME, "handshake command after open")
            }
            Request::Tune { .. } => {}
            Request::Heartbeat | Request::Close { .. } | Request::CloseResponse { .. } => {}
            Request::DeclarePublisher {
                correlation_id,
                publisher_id,
                reference,
                stream,
            } => {
                let r = self.declare_publisher(publisher_id, reference, &stream);
                self.out.outcome(key::DECLARE_PUBLISHER, correlation_id, &r);
            }
            Request::Publish {
                publisher_id,
                messages,
            } => self.publish(publisher_id, messages),
            Request::QueryPublisherSequence {
                correlation_id,
                reference,
                stream,
            } => {
                let r = self.query_publisher_sequence(&reference, &stream);
                self.out
                    .outcome_u64(key::QUERY_PUBLISHER_SEQUENCE, correlation_id, &r);
            }
            Request::DeletePublisher {
                correlation_id,
                publisher_id,
            } => {
                let r = self.delete_publisher(publisher_id);
                self.out.outcome(key::DELETE_PUBLISHER, correlation_id, &r);
            }
            Request::Subscribe {
                correlation_id,
                subscription_id,
                stream,
                offset,
                credit,
                properties,
            } => {
                self.subscribe(
                    correlation_id,
                    subscription_id,
                    stream,
                    offset,
                    credit,
                    properties,
                );
            }
            Request::Credit {
                subscription_id,
                credit,
            } => self.credit(subscription_id, credit),
            Request::StoreOffset {
                reference,
                stream,
                offset,
            } => self.store_offset(&reference, &stream, offset),
            Request::QueryOffset {
                correlation_id,
                reference,
                stream,
            } => {
                let r = self.query_offset(&reference, &stream);
                self.out.outcome_u64(key::QUERY_OFFSET, correlation_id, &r);
            }
            Request::Unsubscribe {
                correlation_id,
                subscription_id,
            } => {
                let r = self.unsubscribe(subscription_id);
                self.out.outcome(key::UNSUBSCRIBE, correlation_id, &r);
            }
            Request::Create {
                correlation_id,
                stream,
                arguments,
            } => {
                let r = self.create(&stream, &arguments);
                self.out.outcome(key::CREATE, correlation_id, &r);
            }
            Request::Delete {
                correlation_id,
                stream,
            } => {
                let r = self.delete(&stream);
                self.out.outcome(key::DELETE, correlation_id, &r);
            }
            Request::Metadata {
                correlation_id,
                streams,
            } => self.metadata(correlation_id, &streams),
            Request::Route {
                correlation_id,
                routing_key,
                super_stream,
            } => self.route(correlation_id, &routing_key, &super_stream),
            Request::Partitions {
                correlation_id,
                super_stream,
            } => self.partitions(correlation_id, &super_stream),
            Request::CreateSuperStream {
                correlation_id,
                name,
                partitions,
                binding_keys,
                arguments,
            } => {
                let r = self.create_super_stream(&name, &partitions, &binding_keys, &arguments);
                self.out
                    .outcome(key::CREATE_SUPER_STREAM, correlation_id, &r);
            }
            Request::DeleteSuperStream {
                correlation_id,
                name,
            } => {
                let r = self.delete_super_stream(&name);
                self.out
                    .outcome(key::DELETE_SUPER_STREAM, correlation_id, &r);
            }
            Request::ConsumerUpdateResponse {
                correlation_id,
                code,
                offset,
            } => self.consumer_update_response(correlation_id, code, offset),
            Request::ExchangeCommandVersions {
                correlation_id,
                versions,
            } => self.exchange_command_versions(correlation_id, &versions),
            Request::StreamStats {
                correlation_id,
                stream,
            } => self.stream_stats(correlation_id, &stream),
            Request::Unknown {
                key: k,
                version,
                correlation_id,
            } => {
                tracing::warn!(peer = %self.peer, key = k, version, "stream connection: unknown command");
                if let Some(c) = correlation_id {
                    self.out.code(k, c, response::UNKNOWN_FRAME);
                }
                return self.close_with(response::UNKNOWN_FRAME, "unknown frame");
            }
        }
        Flow::Continue
    }

    fn cleanup(&mut self) {
        let subscriptions: Vec<(u8, Subscription)> = self.subscriptions.drain().collect();
        for (sid, s) in subscriptions {
            self.end_subscription(sid, s);
        }
        self.publishers.clear();
        self.clients.publishers.lock().clear();
        self.clients.consumers.lock().clear();
        self.confirms.stop();
        if self.registered {
            self.broker.connections.unregister(self.id);
        }
    }

    /// The connection's name (RabbitMQ's: `peer -> local`).
    pub fn name(&self) -> String {
        format!("{} -> {}", self.peer, self.local)
    }

    /// Enters the broker's connection registry, once open (the management API lists it).
    pub fn register(&mut self) {
        let entry = ConnectionEntry {
            id: self.id,
            name: self.name(),
            peer: self.peer,
            local: self.local,
            user: self.user.clone().unwrap_or_default(),
            vhost: self.vhost().name.clone(),
            client_properties: self.client_properties.clone(),
            connected_at: std::time::SystemTime::now(),
            channel_max: 0,
            frame_max: self.frame_max,
            heartbeat: self.heartbeat.load(Ordering::Relaxed) as u16,
            channels: Mutex::new(Vec::new()),
            closer: self.closer.clone(),
            io: self.io.clone(),
            stream: Some(self.clients.clone()),
        };
        self.broker.connections.register(Arc::new(entry));
        self.registered = true;
    }
}

/// One plain TCP connection.
pub(crate) async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<StreamConfig>,
    stop: watch::Receiver<bool>,
) {
    let local = socket.local_addr().unwrap_or(peer);
    let (rd, wr) = socket.into_split();
    run_io(rd, wr, peer, local, broker, config, stop).await
}

/// One connection over any byte stream (plain TCP's halves, or TLS's).
pub(crate) async fn run_io(
    mut rd: impl AsyncRead + Unpin,
    wr: impl AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<StreamConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let out = Arc::new(Outbox::default());
    let heartbeat = Arc::new(AtomicU32::new(0));
    let io = Arc::new(IoCounters::default());
    let writer = tokio::spawn(writer(wr, out.clone(), heartbeat.clone(), io.clone()));
    let id = broker.next_id();
    let clients = Arc::new(StreamClients::default());
    let closer = Arc::new(Closer::default());
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut conn = Conn {
        events,
        next_request: 1,
        consumer_updates: HashMap::new(),
        confirms: crate::publish::Confirms::start(&broker, out.clone(), clients.clone()),
        clients,
        io: io.clone(),
        closer: closer.clone(),
        registered: false,
        client_properties: Vec::new(),
        broker,
        config: config.clone(),
        peer,
        local,
        out: out.clone(),
        phase: Phase::Sasl,
        user: None,
        vhost: None,
        access: None,
        slot: None,
        frame_max: config.frame_max,
        heartbeat: heartbeat.clone(),
        id,
        publishers: HashMap::new(),
        subscriptions: HashMap::new(),
        deliver_v2: false,
    };
    tracing::debug!(%peer, "stream connection accepted");
    let deadline = Instant::now() + config.handshake_timeout;
    // Below the allocator's mmap threshold (64 KiB), as the stores' reads.
    let mut rbuf = BytesMut::with_capacity(60 * 1024);
    let mut last_read = Instant::now();
    'conn: loop {
        let limit = if conn.phase == Phase::Open {
            conn.frame_max
        } else {
            config.initial_frame_max
        };
        loop {
            match next_frame(&mut rbuf, limit) {
                Ok(Some(f)) => {
                    if let Flow::Close = conn.handle(f) {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(size) => {
                    tracing::warn!(%peer, size, limit, "stream connection: frame too large; closing");
                    conn.close_with(response::FRAME_TOO_LARGE, "frame too large");
                    break 'conn;
                }
            }
        }
        let hb = heartbeat.load(Ordering::Relaxed);
        let wait_until = if conn.phase != Phase::Open {
            deadline
        } else if hb > 0 {
            last_read + Duration::from_secs(hb as u64 * 2 + 1)
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) | Err(_) => break 'conn,
                Ok(n) => {
                    last_read = Instant::now();
                    io.recv_oct.add(n as u64);
                    io.recv_cnt.add(1);
                }
            },
            Some(ev) = events_rx.recv() => conn.on_event(ev),
            _ = closer.wake.notified() => {
                let reason = closer.reason.lock().clone().unwrap_or_default();
                tracing::info!(%peer, reason, "stream connection closed at an operator's request");
                conn.close_with(response::OK, &reason);
                break 'conn;
            }
            _ = tokio::time::sleep_until(wait_until.into()) => {
                if Instant::now() >= wait_until {
                    if conn.phase != Phase::Open {
                        tracing::warn!(%peer, "stream connection: handshake timed out");
                    } else {
                        tracing::warn!(%peer, "stream connection: missed heartbeats; closing");
                    }
                    break 'conn;
                }
            }
            _ = stop.changed() => {
                conn.close_with(response::OK, "broker shutting down");
                break 'conn;
            }
        }
        if out.is_dead() {
            break;
        }
    }
    conn.cleanup();
    out.closing.store(true, Ordering::Release);
    out.wake.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    tracing::debug!(%peer, "stream connection closed");
}
