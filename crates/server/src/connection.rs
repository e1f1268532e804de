//! One client connection after its handshake ([`crate::handshake`]): the read loop that
//! parses frames straight out of the read buffer and hands them to channels, connection-level
//! methods, heartbeats, flow control and alarm blocking, forced closes, and cleanup that puts
//! every unacknowledged message back in its queue. The writer task is [`crate::writer`].

use crate::channel::Channel;
use crate::channel_table::ChannelTable;
use crate::handshake::handshake;
use crate::heartbeat_grid::round_up;
use crate::outbox::Outbox;
use crate::writer::write_loop;
use crate::{ConsumerTimeoutAction, ServerConfig};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use warren_broker::connections::{CloseHandle, ConnectionEntry};
use warren_broker::delivery::TimedOut;
use warren_broker::persist::SyncState;
use warren_broker::queue::Followups;
use warren_broker::{AmqpError, Broker, VHost};
use warren_protocol::constants::*;
use warren_protocol::frame::{parse_frame, Frame};
use warren_protocol::methods::*;
use warren_protocol::{Method, ShortStr};

pub const PRODUCT: &str = "Warren";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error that closes the whole connection: an [`AmqpError`] whose code is a connection
/// error's.
pub type ConnectionError = AmqpError;

/// Lets the registry (management API, shutdown) close this connection.
struct Closer {
    wake: Notify,
    reason: Mutex<Option<String>>,
}

impl CloseHandle for Closer {
    fn force_close(&self, reason: &str) {
        *self.reason.lock() = Some(reason.to_string());
        self.wake.notify_one();
    }
}

pub(crate) struct Connection {
    pub id: u64,
    pub config: Arc<ServerConfig>,
    pub vhost: Arc<VHost>,
    pub user: String,
    pub peer: SocketAddr,
    pub outbox: Arc<Outbox>,
    pub frame_max: u32,
    pub channel_max: u16,
    heartbeat: u16,
    /// The open channels by number.
    channels: ChannelTable<Channel>,
    /// Exclusive queues this connection declared; deleted when it goes.
    pub exclusive_queues: Vec<ShortStr>,
    entry: Arc<ConnectionEntry>,
    closer: Arc<Closer>,
    /// Set once connection.close was sent: only close-ok is read after that.
    closing_since: Option<Instant>,
    done: bool,
    last_recv: Instant,
    /// Queues published to whose consumers are behind (flow control).
    backlogged: Vec<Arc<warren_broker::Queue>>,
    /// What queue commands left for the vhost (dead letters, auto-delete), handed over after
    /// each method (see [`Connection::follow_up`]).
    followups: Followups,
    /// Flow control holds this publisher: the socket is not read until these queues have
    /// caught up. Everything else (forced closes, confirms, alarms, ticks) goes on.
    flow_held: Vec<Arc<warren_broker::Queue>>,
    /// Group-commit progress, for publisher confirms of persistent messages.
    synced: Option<tokio::sync::watch::Receiver<SyncState>>,
    /// Woken when a publish to a replicated queue is committed (its confirm may be due).
    commit_wake: Arc<tokio::sync::Notify>,
    /// User, permissions, limits, alarm blocking.
    guard: crate::security::Guard,
    /// Something moved a deadline earlier (a close, an unblocked socket): the read loop
    /// recomputes its timer before it next waits.
    rearm: bool,
    /// A basic.consume or basic.get may have brought a consumer timeout closer: the timer
    /// fires within [`CHECK_SOON`] and recomputes then (at most once a second however many
    /// gets there are, instead of a scan of the unacked deliveries per get).
    check_soon: bool,
}

/// A read buffer's size while the connection is quiet: enough for heartbeats and small
/// methods. A read that fills it (or a frame larger than it) switches to [`READ_BIG`] reads.
const READ_SMALL: usize = 2 * 1024;
/// Reads while traffic flows: at least this much room is kept free...
const READ_MIN_FREE: usize = 16 * 1024;
/// ...by reserving this much: under glibc's mmap threshold (64 KiB, fixed by the `warren`
/// binary), so a new read buffer comes from the heap, not from an mmap whose pages fault in
/// one by one (128 KiB took ~1,300 minor faults a second per 1 KiB publisher at 200k msg/s).
const READ_BIG: usize = 56 * 1024;
/// A connection with no input for this long gives its large read buffer back (its writer does
/// the same for output, `writer.rs`), so an idle connection that once carried a burst costs
/// what a fresh one does.
pub(crate) const IDLE_RELEASE: Duration = Duration::from_secs(1);
/// See [`Connection::check_soon`].
const CHECK_SOON: Duration = Duration::from_secs(1);

/// Runs a connection from accept to close.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<ServerConfig>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let (rd, wr) = stream.into_split();
    run_io(rd, wr, peer, local, broker, config).await
}

/// Runs a connection over any byte stream (a TCP socket's halves, or a TLS session's).
pub async fn run_io<R, W>(
    mut rd: R,
    mut wr: W,
    peer: SocketAddr,
    local: SocketAddr,
    broker: Arc<Broker>,
    config: Arc<ServerConfig>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut rbuf = BytesMut::with_capacity(READ_SMALL);
    let handshake = tokio::time::timeout(
        config.handshake_timeout,
        handshake(&mut rd, &mut wr, &mut rbuf, peer, &broker, &config),
    );
    let hs = match handshake.await {
        Ok(Ok(Some(hs))) => hs,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection closed during handshake");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "closing connection: AMQP handshake not completed within {:?}", config.handshake_timeout);
            return;
        }
    };
    let id = broker.next_id();
    let outbox = Arc::new(Outbox::new(hs.frame_max));
    outbox.set_cancel_notify(hs.cancel_notify);
    let heartbeat = Arc::new(AtomicU32::new(hs.heartbeat as u32));
    let io = Arc::new(warren_broker::stats::IoCounters::default());
    let writer = tokio::spawn(write_loop(
        wr,
        outbox.clone(),
        heartbeat.clone(),
        io.clone(),
    ));
    outbox.send(0, ConnectionOpenOk::default());

    let closer = Arc::new(Closer {
        wake: Notify::new(),
        reason: Mutex::new(None),
    });
    let name = format!("{} -> {}", peer, local);
    let entry = Arc::new(ConnectionEntry {
        id,
        name: name.clone(),
        peer,
        local,
        user: hs.user.clone(),
        vhost: hs.vhost.name.clone(),
        client_properties: hs.client_properties,
        connected_at: SystemTime::now(),
        channel_max: hs.channel_max,
        frame_max: hs.frame_max,
        heartbeat: hs.heartbeat,
        channels: Mutex::new(Vec::new()),
        closer: closer.clone(),
        io: io.clone(),
        stream: None,
    });
    broker.connections.register(entry.clone());
    tracing::info!(connection = %name, user = %hs.user, vhost = %hs.vhost.name, "connection accepted and authenticated");

    let mut conn = Connection {
        id,
        config,
        vhost: hs.vhost,
        user: hs.user,
        peer,
        outbox: outbox.clone(),
        frame_max: hs.frame_max,
        channel_max: hs.channel_max,
        heartbeat: hs.heartbeat,
        channels: ChannelTable::default(),
        exclusive_queues: Vec::new(),
        entry,
        closer,
        closing_since: None,
        done: false,
        last_recv: Instant::now(),
        synced: broker.persistence().map(|p| p.subscribe()),
        commit_wake: Arc::new(tokio::sync::Notify::new()),
        guard: crate::security::Guard::new(hs.access, hs.slot, broker.clone(), hs.blocked_notify),
        backlogged: Vec::new(),
        followups: Followups::new(),
        flow_held: Vec::new(),
        rearm: true,
        check_soon: false,
    };
    let (reason, socket_open) = conn.read_loop(&mut rd, rbuf).await;
    conn.cleanup();
    broker.connections.unregister(id);
    tracing::info!(connection = %name, reason = %reason, "connection closed");
    outbox.close();
    let wr = writer.await;
    if socket_open {
        // Let the client read our last frame (close or close-ok) and close the socket itself,
        // as clients expect; don't wait for a client that doesn't.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut sink = [0u8; 4096];
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
    drop(wr);
}

impl Connection {
    async fn read_loop(
        &mut self,
        rd: &mut (impl AsyncRead + Unpin),
        mut rbuf: BytesMut,
    ) -> (String, bool) {
        // One timer per connection, set to the next thing that is due (a heartbeat deadline, a
        // consumer timeout, the close-ok wait, releasing an idle buffer), not a periodic tick:
        // an idle connection wakes only when something is due.
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        // Reading large chunks (traffic flowing) or small ones (quiet).
        let mut big = false;
        // Frames that arrived along with connection.open.
        if let Some(r) = self.process(&mut rbuf) {
            return (r, true);
        }
        loop {
            if self.rearm {
                self.rearm = false;
                self.check_soon = false;
                let next = self.next_check(Instant::now(), big);
                timer.as_mut().reset(next.into());
            } else if self.check_soon {
                self.check_soon = false;
                let soon = tokio::time::Instant::now() + CHECK_SOON;
                if timer.deadline() > soon {
                    timer.as_mut().reset(soon);
                }
            }
            let free = rbuf.capacity() - rbuf.len();
            if big && free < READ_MIN_FREE {
                rbuf.reserve(READ_BIG);
            } else if !big && free < READ_SMALL / 4 {
                rbuf.reserve(READ_SMALL);
            }
            let free = rbuf.capacity() - rbuf.len();
            let awaiting = self.awaiting_sync();
            tokio::select! {
                biased;
                _ = self.closer.wake.notified() => {
                    let reason = self.closer.reason.lock().take().unwrap_or_else(|| "closed via management plugin".into());
                    let text = format!("CONNECTION_FORCED - broker forced connection closure with reason '{reason}'");
                    self.send_close(CONNECTION_FORCED, text, 0, 0);
                    return (format!("forced: {reason}"), true);
                }
                _ = self.outbox.wake_resume.notified() => {
                    let fu = &mut self.followups;
                    for c in self.channels.iter_mut() {
                        c.delivery.resume(fu);
                    }
                    self.follow_up();
                }
                _ = Self::sync_changed(&mut self.synced), if awaiting => {
                    self.flush_confirms();
                }
                _ = self.commit_wake.notified() => {
                    self.flush_confirms();
                }
                _ = self.guard.alarm_changed() => {
                    self.guard.update_blocked(&self.outbox);
                    self.last_recv = Instant::now();
                    self.rearm = true;
                }
                _ = Self::flow_released(&self.flow_held), if !self.flow_held.is_empty() => {
                    self.flow_held.clear();
                    self.last_recv = Instant::now();
                    self.rearm = true;
                }
                // A publisher blocked by a resource alarm or held by flow control is not read
                // from, until we close it and wait for its close-ok.
                r = rd.read_buf(&mut rbuf), if self.closing_since.is_some() || (!self.guard.blocked && self.flow_held.is_empty()) => {
                    match r {
                        Ok(0) => return ("client closed the TCP connection".into(), false),
                        Err(e) => return (format!("socket error: {e}"), false),
                        Ok(n) => {
                            self.last_recv = Instant::now();
                            self.entry.io.recv_oct.add(n as u64);
                            self.entry.io.recv_cnt.add(1);
                            if let Some(reason) = self.process(&mut rbuf) {
                                return (reason, true);
                            }
                            if !big && (n == free || rbuf.len() > READ_SMALL / 2) {
                                // A burst, or a frame larger than a small read: large reads
                                // until the connection is quiet again (timer below).
                                big = true;
                                self.rearm = true;
                            }
                            self.guard.update_blocked(&self.outbox);
                            // Flow control: a connection that only publishes stops reading
                            // until lagging queues catch up. One that also consumes is never
                            // held: its acks may be what drains the queues (its own, or those
                            // of a peer feeding it), so holding it could deadlock.
                            let backlogged = std::mem::take(&mut self.backlogged);
                            if !self.channels.iter().any(|c| c.delivery.stats().consumers > 0) {
                                self.flow_held = backlogged;
                            }
                        }
                    }
                }
                _ = &mut timer => {
                    if let Some(reason) = self.on_tick() {
                        return (reason, false);
                    }
                    if big && self.last_recv.elapsed() >= IDLE_RELEASE {
                        // Quiet: give the large buffer back (unless it holds part of a
                        // frame). What parsed frames still reference stays theirs.
                        big = false;
                        if rbuf.is_empty() {
                            rbuf = BytesMut::new();
                        }
                    }
                    self.rearm = true;
                }
            }
            if self.outbox.is_closed() && self.closing_since.is_none() {
                return ("socket write failed".into(), false);
            }
        }
    }

    /// Handles every complete frame in the buffer. Returns a reason when the connection ends.
    fn process(&mut self, rbuf: &mut BytesMut) -> Option<String> {
        loop {
            match parse_frame(rbuf, self.frame_max) {
                Ok(Some(frame)) => {
                    if let Err(e) = self.handle_frame(frame) {
                        let reason = e.text.clone();
                        self.connection_error(e);
                        return Some(reason);
                    }
                    if self.done {
                        return Some("client closed the connection".into());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let text = format!("FRAME_ERROR - {e}");
                    tracing::warn!(peer = %self.peer, "closing connection: {text}");
                    self.send_close(FRAME_ERROR, text.clone(), 0, 0);
                    return Some(text);
                }
            }
        }
        let fu = &mut self.followups;
        for c in self.channels.iter_mut() {
            c.end_of_read(fu);
        }
        self.follow_up();
        self.flush_confirms();
        None
    }

    /// Resolves once every queue that holds this publisher has caught up (or is gone).
    async fn flow_released(held: &[Arc<warren_broker::Queue>]) {
        for q in held {
            q.wait_for_flow().await;
        }
    }

    fn sync_state(&self) -> SyncState {
        self.synced
            .as_ref()
            .map(|s| *s.borrow())
            .unwrap_or_default()
    }

    fn flush_confirms(&mut self) {
        let st = self.sync_state();
        let mut failed = Vec::new();
        self.for_each_channel(|c| {
            if let Some(e) = c.flush_confirms(st) {
                failed.push((c.number, e));
            }
        });
        for (n, (e, class_id, method_id)) in failed {
            // A tx.commit or a definition change failed after the fact: its fsync did not
            // succeed.
            self.channel_error(n, e, class_id, method_id);
        }
    }

    fn awaiting_sync(&self) -> bool {
        self.synced.is_some() && self.channels.iter().any(|c| c.has_pending_confirms())
    }

    /// Resolves when the group commit advances (never, without persistence).
    async fn sync_changed(synced: &mut Option<tokio::sync::watch::Receiver<SyncState>>) {
        match synced {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// The next instant [`Self::on_tick`] has something to look at.
    fn next_check(&self, now: Instant, big_read_buffer: bool) -> Instant {
        // Nothing due: look again in an hour anyway (cheap, and a safety net).
        let mut next = now + Duration::from_secs(3600);
        let mut at = |t: Instant| next = next.min(t);
        // on_tick's comparisons are strict: wake just after each deadline.
        let after = Duration::from_millis(1);
        if let Some(since) = self.closing_since {
            at(since + Duration::from_secs(3) + after);
        }
        if self.heartbeat > 0 && !self.guard.blocked && self.flow_held.is_empty() {
            let timeout = Duration::from_secs(2 * self.heartbeat as u64);
            at(round_up(self.last_recv + timeout + after, timeout));
        }
        if big_read_buffer {
            at(self.last_recv + IDLE_RELEASE);
        }
        for c in self.channels.iter().filter(|c| !c.closing) {
            if let Some(t) = c.delivery.next_timeout_check(now) {
                at(t + after);
            }
        }
        next
    }

    fn on_tick(&mut self) -> Option<String> {
        let now = Instant::now();
        if let Some(since) = self.closing_since {
            if now - since > Duration::from_secs(3) {
                return Some("no connection.close_ok from client".into());
            }
        }
        // A connection we do not read from (alarm, flow control) cannot be late with heartbeats.
        if self.heartbeat > 0
            && !self.guard.blocked
            && self.flow_held.is_empty()
            && now - self.last_recv > Duration::from_secs(2 * self.heartbeat as u64)
        {
            tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {}s", self.heartbeat);
            return Some(format!(
                "missed heartbeats from client, timeout: {}s",
                self.heartbeat
            ));
        }
        let expired: Vec<(u16, TimedOut)> = self
            .channels
            .iter()
            .filter(|c| !c.closing)
            .filter_map(|c| c.delivery.timed_out(now).map(|t| (c.number, t)))
            .collect();
        for (n, t) in expired {
            let ms = t.timeout.as_millis();
            match (&t.consumer_tag, self.config.consumer_timeout_action) {
                (Some(tag), ConsumerTimeoutAction::Cancel) => {
                    tracing::warn!(peer = %self.peer, channel = n, consumer = %tag,
                        "consumer did not acknowledge a delivery within {ms} ms: cancelling it and requeueing its messages");
                    if let Some(ch) = self.channels.get(n) {
                        ch.delivery.cancel_and_requeue(tag, &mut self.followups);
                    }
                    self.follow_up();
                }
                _ => {
                    let e = AmqpError::precondition(format!(
                        "delivery acknowledgement on channel {n} timed out. Timeout value used: {ms} ms. \
                         This timeout value can be configured, see consumers doc guide to learn more"
                    ));
                    tracing::warn!(peer = %self.peer, "{}", e.text);
                    self.channel_error(n, e, 0, 0);
                }
            }
        }
        None
    }

    fn for_each_channel(&mut self, mut f: impl FnMut(&mut Channel)) {
        for c in self.channels.iter_mut() {
            f(c);
        }
    }

    /// Hands what queue commands left (dead letters, auto-delete) to the vhost, with no queue
    /// locked.
    fn follow_up(&mut self) {
        if !self.followups.is_empty() {
            self.vhost.follow_up(std::mem::take(&mut self.followups));
        }
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        if frame.kind == FRAME_HEARTBEAT {
            return Ok(());
        }
        if let Some(_since) = self.closing_since {
            // After connection.close only close-ok (or the client's own close) matters.
            if frame.kind == FRAME_METHOD && frame.channel == 0 {
                if let Ok(Method::ConnectionCloseOk(_) | Method::ConnectionClose(_)) =
                    Method::decode(frame.payload)
                {
                    self.done = true;
                }
            }
            return Ok(());
        }
        if frame.channel == 0 {
            if frame.kind != FRAME_METHOD {
                return Err(ConnectionError::new(
                    UNEXPECTED_FRAME,
                    format!("frame of type {} on channel 0", frame.kind),
                ));
            }
            let m =
                Method::decode(frame.payload).map_err(|e| ConnectionError::new(SYNTAX_ERROR, e))?;
            return self.handle_connection_method(m);
        }
        let n = frame.channel;
        if !self.channels.contains(n) {
            if frame.kind != FRAME_METHOD {
                return Err(ConnectionError::new(
                    CHANNEL_ERROR,
                    "expected 'channel.open'",
                ));
            }
            let m =
                Method::decode(frame.payload).map_err(|e| ConnectionError::new(SYNTAX_ERROR, e))?;
            return match m {
                Method::ChannelOpen(_) => {
                    // As RabbitMQ, channel_max limits how many channels are open, not their
                    // numbers (0: no limit).
                    let open = self.channels.len();
                    if self.channel_max != 0 && open >= self.channel_max as usize {
                        return Err(AmqpError::new(
                            NOT_ALLOWED,
                            format!(
                                "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                                self.channel_max
                            ),
                        )
                        .on(ChannelOpen::CLASS_ID, ChannelOpen::METHOD_ID));
                    }
                    // The user's channel limit (530 NOT_ALLOWED closes the connection).
                    self.guard
                        .slot
                        .open_channel()
                        .map_err(|e| e.on(ChannelOpen::CLASS_ID, ChannelOpen::METHOD_ID))?;
                    self.open_channel(n);
                    Ok(())
                }
                // A late close-ok for a channel already gone is harmless.
                Method::ChannelCloseOk(_) => Ok(()),
                // RabbitMQ names the method that came instead.
                other => Err(
                    ConnectionError::new(CHANNEL_ERROR, "expected 'channel.open'")
                        .on(other.class_id(), other.method_id()),
                ),
            };
        }
        let max_body = self.config.max_message_size;
        let ch = self.channels.get_mut(n).expect("checked open");
        if ch.closing {
            // A channel we closed ignores everything until the client's close-ok; a
            // channel.close crossing ours on the wire is answered but does not end the wait.
            if frame.kind == FRAME_METHOD {
                match Method::decode(frame.payload) {
                    Ok(Method::ChannelCloseOk(_)) => self.remove_channel(n),
                    Ok(Method::ChannelClose(_)) => self.outbox.send(n, ChannelCloseOk {}),
                    _ => {}
                }
            }
            return Ok(());
        }
        // The command is used where it lies in the result (moving it out copied it).
        let mut pushed = ch.assembler.push(frame, max_body);
        let cmd = match pushed {
            Ok(Some(ref mut cmd)) => cmd,
            Ok(None) => return Ok(()),
            Err(e) if e.code == PRECONDITION_FAILED => {
                let (class_id, method_id) = (e.class_id, e.method_id);
                self.channel_error(n, e, class_id, method_id);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let (class_id, method_id) = (cmd.method.class_id(), cmd.method.method_id());
        // Looked at in place: the command goes to the channel without another move (a
        // method is a large value, and this runs for every publish).
        match &cmd.method {
            Method::ChannelOpen(_) => {
                return Err(
                    ConnectionError::new(CHANNEL_ERROR, "second 'channel.open' seen")
                        .on(ChannelOpen::CLASS_ID, ChannelOpen::METHOD_ID),
                )
            }
            Method::ChannelClose(_) => {
                self.outbox.send(n, ChannelCloseOk {});
                self.remove_channel(n);
                return Ok(());
            }
            Method::ChannelCloseOk(_) => return Ok(()),
            // A new consumer or a basic.get's unacked delivery may time out before anything
            // the timer waits for.
            Method::BasicConsume(_) | Method::BasicGet(_) => self.check_soon = true,
            _ => {}
        }
        let mut ctx = crate::channel::Ctx {
            vhost: &self.vhost,
            outbox: &self.outbox,
            conn_id: self.id,
            frame_max: self.frame_max,
            exclusive_queues: &mut self.exclusive_queues,
            backlogged: &mut self.backlogged,
            guard: &mut self.guard,
            followups: &mut self.followups,
            commit_wake: &self.commit_wake,
        };
        let ch = self.channels.get_mut(n).expect("checked open");
        let r = ch.handle(&mut ctx, cmd);
        self.follow_up();
        match r {
            Ok(()) => Ok(()),
            // RabbitMQ names no method for an internal error.
            Err(e) if e.code == INTERNAL_ERROR => Err(e.on(0, 0)),
            Err(e) if e.is_connection_error() => Err(e.on(class_id, method_id)),
            Err(e) => {
                self.channel_error(n, e, class_id, method_id);
                Ok(())
            }
        }
    }

    fn handle_connection_method(&mut self, m: Method) -> Result<(), ConnectionError> {
        match m {
            Method::ConnectionClose(c) => {
                tracing::debug!(peer = %self.peer, code = c.reply_code, text = %c.reply_text, "client closed connection");
                self.close_all_channels();
                self.outbox.send(0, ConnectionCloseOk {});
                self.done = true;
                Ok(())
            }
            Method::ConnectionCloseOk(_) => {
                self.done = true;
                Ok(())
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(()),
            Method::ConnectionUpdateSecret(_) => {
                self.outbox.send(0, ConnectionUpdateSecretOk {});
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "unexpected method {} on channel 0",
                other.name()
            ))
            .on(other.class_id(), other.method_id())),
        }
    }

    fn open_channel(&mut self, n: u16) {
        let ch = Channel::new(
            n,
            self.id,
            self.outbox.clone(),
            self.config.consumer_timeout,
        );
        self.entry.channels.lock().push(ch.delivery.clone());
        warren_broker::stats::Churn::count(&self.guard.broker.connections.churn.channels_opened);
        self.channels.insert(n, Box::new(ch));
        self.outbox.send(n, ChannelOpenOk::default());
    }

    fn remove_channel(&mut self, n: u16) {
        if let Some(ch) = self.channels.remove(n) {
            self.guard.slot.close_channel();
            ch.delivery.close(&mut self.followups);
            self.follow_up();
            self.entry
                .channels
                .lock()
                .retain(|c| !Arc::ptr_eq(c, &ch.delivery));
            self.guard
                .broker
                .connections
                .retire(&self.entry.vhost, &ch.delivery);
        }
    }

    /// Closes a channel with an error: channel.close to the client, and its unacked messages
    /// go back to their queues now (not when close-ok arrives).
    pub(crate) fn channel_error(&mut self, n: u16, e: AmqpError, class_id: u16, method_id: u16) {
        let Some(ch) = self.channels.get_mut(n) else {
            return;
        };
        tracing::debug!(peer = %self.peer, channel = n, "channel error: {}", e.text);
        ch.closing = true;
        ch.delivery.close(&mut self.followups);
        self.follow_up();
        self.outbox.send(
            n,
            ChannelClose {
                reply_code: e.code,
                reply_text: truncate(e.text),
                class_id,
                method_id,
            },
        );
    }

    fn connection_error(&mut self, e: ConnectionError) {
        tracing::warn!(peer = %self.peer, user = %self.user, "closing connection: {}", e.text);
        self.send_close(e.code, e.text, e.class_id, e.method_id);
    }

    fn send_close(&mut self, code: u16, text: String, class_id: u16, method_id: u16) {
        // Read again, whatever held the publisher: close-ok is what we wait for now.
        self.flow_held.clear();
        self.close_all_channels();
        self.outbox.send(
            0,
            ConnectionClose {
                reply_code: code,
                reply_text: truncate(text),
                class_id,
                method_id,
            },
        );
        self.closing_since = Some(Instant::now());
        self.rearm = true;
    }

    fn close_all_channels(&mut self) {
        for n in self.channels.numbers() {
            self.remove_channel(n);
        }
    }

    /// Runs when the connection ends for any reason: nothing it held is lost.
    fn cleanup(&mut self) {
        self.close_all_channels();
        for q in std::mem::take(&mut self.exclusive_queues) {
            if let Some(queue) = self.vhost.queue(&q) {
                if queue.exclusive_owner == Some(self.id) {
                    self.vhost.delete_queue_unchecked(&q);
                }
            }
        }
    }
}

/// Reply texts are short strings: at most 255 bytes.
fn truncate(mut s: String) -> ShortStr {
    if s.len() > 255 {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    ShortStr::from(s)
}
