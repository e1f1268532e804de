//! Helpers shared by the integration tests: lapin connections with timeouts, reading reply
//! codes out of lapin errors, a TCP proxy that can cut a client's socket abruptly, and a tiny
//! hand-written AMQP client for the cases a well-behaved client cannot produce.
//!
//! Every wait is bounded by [`TIMEOUT`] so that a broker bug fails a test instead of hanging it.

#![allow(dead_code)]

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use warren_tests::TestBroker;

/// Longest a single expected event may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long we watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `f`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TIMEOUT:?}: {what}"),
    }
}

pub async fn connect(broker: &TestBroker) -> Connection {
    connect_url(&broker.url()).await
}

pub async fn connect_url(url: &str) -> Connection {
    within(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    within("create_channel", conn.create_channel())
        .await
        .expect("create_channel")
}

/// A connection and one channel on it.
pub async fn open(broker: &TestBroker) -> (Connection, Channel) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// Asserts that `r` failed with the AMQP reply `code`; returns the reply text.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: lapin::Result<T>, code: u16) -> String {
    match r {
        Ok(v) => panic!("expected reply code {code}, got success: {v:?}"),
        Err(e) => expect_error_code(&e, code),
    }
}

/// Asserts that `e` is an AMQP error with reply `code`; returns the reply text.
#[track_caller]
pub fn expect_error_code(e: &lapin::Error, code: u16) -> String {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => {
            assert_eq!(amqp.get_id(), code, "wrong reply code; error: {e}");
            amqp.get_message().to_string()
        }
        _ => panic!("expected reply code {code}, got non-protocol error: {e:?}"),
    }
}

/// A connection's events (lapin reports a channel closed by the broker there).
pub type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = lapin::Event> + Send>>;

/// Subscribes to a connection's events; do it before the method that should fail.
pub fn events(conn: &Connection) -> Events {
    Box::pin(conn.events_listener())
}

/// Waits for the next error event: for methods without a reply (publish, ack, nack), this
/// is how the channel.close they provoke reaches the client. (A round trip on the closing
/// channel is no substitute: lapin fails it with `InvalidChannelState(Closing)` if the close
/// was already read, losing the reply code.)
pub async fn next_error(events: &mut Events) -> lapin::Error {
    loop {
        match within("error event", events.next()).await {
            Some(lapin::Event::Error(e)) => return e,
            Some(_) => continue,
            None => panic!("event stream ended without an error"),
        }
    }
}

pub fn no_args() -> FieldTable {
    FieldTable::default()
}

/// Declares a plain (non-durable, non-exclusive) queue.
pub async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    within(
        "queue_declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), no_args()),
    )
    .await
    .expect("queue_declare")
}

/// Declares an exclusive server-named queue.
pub async fn declare_exclusive(ch: &Channel) -> lapin::Queue {
    within(
        "queue_declare exclusive",
        ch.queue_declare("".into(), QueueDeclareOptions::exclusive(), no_args()),
    )
    .await
    .expect("queue_declare exclusive")
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: lapin::ExchangeKind) {
    within(
        "exchange_declare",
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange_declare")
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_args(ch, queue, exchange, key, no_args()).await
}

pub async fn bind_args(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue_bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .expect("queue_bind")
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await
}

pub async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    within(
        "basic_publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic_publish");
}

/// Publishes with confirms on (the channel must be in confirm mode) and waits for the ack, so
/// the message is known to be routed before the test goes on.
pub async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = within(
        "basic_publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic_publish");
    let c = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        c.is_ack(),
        "publish to {exchange:?}/{key:?} was not acked: {c:?}"
    );
}

pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_opts(ch, queue, tag, BasicConsumeOptions::default()).await
}

pub async fn consume_no_ack(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_opts(
        ch,
        queue,
        tag,
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await
}

pub async fn consume_opts(
    ch: &Channel,
    queue: &str,
    tag: &str,
    opts: BasicConsumeOptions,
) -> Consumer {
    within(
        "basic_consume",
        ch.basic_consume(queue.into(), tag.into(), opts, no_args()),
    )
    .await
    .expect("basic_consume")
}

/// The next delivery of a consumer; fails on timeout, error or cancellation.
pub async fn next(consumer: &mut Consumer) -> Delivery {
    match within("next delivery", consumer.next()).await {
        Some(Ok(d)) => d,
        Some(Err(e)) => panic!("consumer error: {e}"),
        None => panic!("consumer was cancelled while a delivery was expected"),
    }
}

/// Collects `n` deliveries' bodies as strings.
pub async fn next_bodies(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(body(&next(consumer).await));
    }
    v
}

/// Asserts that nothing is delivered to `consumer` within [`QUIET`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, consumer.next()).await {
        match item {
            Ok(d) => panic!("unexpected delivery: {:?}", body(&d)),
            Err(e) => panic!("unexpected consumer error: {e}"),
        }
    }
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

pub async fn ack(d: &Delivery) {
    let acked = within("ack", d.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    assert!(acked, "acker was already used or poisoned");
}

/// Polls `cond` until it holds; fails after [`TIMEOUT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("condition not reached within {TIMEOUT:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ready and unacknowledged counts of a queue in vhost `/`, read from the broker itself.
pub fn queue_counts(broker: &TestBroker, queue: &str) -> Option<(u64, u64)> {
    let q = broker.broker.vhost("/")?.queue(queue)?;
    let s = q.stats();
    Some((s.messages_ready, s.messages_unacknowledged))
}

pub fn queue_exists(broker: &TestBroker, queue: &str) -> bool {
    broker
        .broker
        .vhost("/")
        .and_then(|v| v.queue(queue))
        .is_some()
}

/// Waits until a queue holds exactly `ready` ready and `unacked` unacknowledged messages.
pub async fn wait_counts(broker: &TestBroker, queue: &str, ready: u64, unacked: u64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = queue_counts(broker, queue);
        if got == Some((ready, unacked)) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "queue {queue:?}: expected (ready, unacked) = ({ready}, {unacked}), got {got:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy in front of the broker, so a test can cut a client's socket without the client
/// saying goodbye (as a crashed process or a pulled cable would).
pub struct Proxy {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    pipes: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let pipes: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Default::default();
        let p = pipes.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let pipe = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                p.lock().unwrap().push(pipe);
            }
        });
        Proxy {
            addr,
            accept,
            pipes,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every proxied socket at once: the broker sees the TCP connection end with no
    /// connection.close.
    pub fn cut(&self) {
        for p in self.pipes.lock().unwrap().drain(..) {
            p.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A minimal hand-driven AMQP client: raw frames over a socket.
pub mod raw {
    use super::*;

    pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
    pub const FRAME_METHOD: u8 = 1;
    pub const FRAME_HEARTBEAT: u8 = 8;
    pub const FRAME_END: u8 = 0xCE;

    pub struct Frame {
        pub kind: u8,
        pub channel: u16,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// (class id, method id) of a method frame.
        pub fn method_id(&self) -> (u16, u16) {
            assert_eq!(self.kind, FRAME_METHOD, "not a method frame");
            let p = &self.payload;
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }

        /// The reply code of a connection.close or channel.close.
        pub fn close_code(&self) -> u16 {
            let p = &self.payload;
            u16::from_be_bytes([p[4], p[5]])
        }
    }

    pub fn heartbeat_frame() -> Vec<u8> {
        vec![FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]
    }

    pub fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
        let mut f = vec![FRAME_METHOD];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&((args.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(&class.to_be_bytes());
        f.extend_from_slice(&method.to_be_bytes());
        f.extend_from_slice(args);
        f.push(FRAME_END);
        f
    }

    fn shortstr(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    fn longstr(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    pub struct RawClient {
        pub stream: TcpStream,
        buf: Vec<u8>,
    }

    impl RawClient {
        pub async fn connect(addr: SocketAddr) -> RawClient {
            let stream = within("raw connect", TcpStream::connect(addr))
                .await
                .expect("raw connect");
            RawClient {
                stream,
                buf: Vec::new(),
            }
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            within("raw send", self.stream.write_all(bytes))
                .await
                .expect("raw send");
        }

        /// Reads one frame; `None` when the server closed the socket.
        pub async fn read_frame(&mut self) -> Option<Frame> {
            loop {
                if self.buf.len() >= 7 {
                    let size =
                        u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                            as usize;
                    if self.buf.len() >= 8 + size {
                        let f = Frame {
                            kind: self.buf[0],
                            channel: u16::from_be_bytes([self.buf[1], self.buf[2]]),
                            payload: self.buf[7..7 + size].to_vec(),
                        };
                        assert_eq!(self.buf[7 + size], FRAME_END, "frame end octet");
                        self.buf.drain(..8 + size);
                        return Some(f);
                    }
                }
                let mut chunk = [0u8; 4096];
                match within("raw read", self.stream.read(&mut chunk)).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// Reads frames until a method frame on channel 0 (skipping heartbeats).
        pub async fn read_method(&mut self) -> Option<Frame> {
            loop {
                let f = self.read_frame().await?;
                if f.kind == FRAME_METHOD {
                    return Some(f);
                }
            }
        }

        /// Reads all the bytes the server sends until it closes the socket.
        pub async fn read_to_end(&mut self) -> Vec<u8> {
            let mut all = std::mem::take(&mut self.buf);
            let _ = within("raw read_to_end", self.stream.read_to_end(&mut all)).await;
            all
        }

        /// Header, start-ok (PLAIN guest/guest), tune-ok, open on vhost `/`.
        pub async fn handshake(&mut self) {
            self.handshake_with_heartbeat(0).await
        }

        /// The handshake, accepting `heartbeat` seconds in tune-ok.
        pub async fn handshake_with_heartbeat(&mut self, heartbeat: u16) {
            self.send(PROTOCOL_HEADER).await;
            let start = self.read_method().await.expect("connection.start");
            assert_eq!(start.method_id(), (10, 10), "expected connection.start");
            let mut a = Vec::new();
            a.extend_from_slice(&0u32.to_be_bytes()); // empty client properties
            shortstr(&mut a, "PLAIN");
            longstr(&mut a, b"\0guest\0guest");
            shortstr(&mut a, "en_US");
            self.send(&method_frame(0, 10, 11, &a)).await;
            let tune = self.read_method().await.expect("connection.tune");
            assert_eq!(tune.method_id(), (10, 30), "expected connection.tune");
            let mut a = Vec::new();
            a.extend_from_slice(&2047u16.to_be_bytes());
            a.extend_from_slice(&131072u32.to_be_bytes());
            a.extend_from_slice(&heartbeat.to_be_bytes());
            self.send(&method_frame(0, 10, 31, &a)).await;
            let mut a = Vec::new();
            shortstr(&mut a, "/");
            shortstr(&mut a, "");
            a.push(0);
            self.send(&method_frame(0, 10, 40, &a)).await;
            let open_ok = self.read_method().await.expect("connection.open-ok");
            assert_eq!(open_ok.method_id(), (10, 41), "expected connection.open-ok");
        }

        /// Expects connection.close with `code`, answers close-ok, then expects the socket to
        /// be closed by the server.
        pub async fn expect_connection_close(&mut self, code: u16) {
            let f = self
                .read_method()
                .await
                .expect("connection.close from the server");
            assert_eq!(f.channel, 0);
            assert_eq!(f.method_id(), (10, 50), "expected connection.close");
            assert_eq!(f.close_code(), code, "connection.close reply code");
            self.send(&method_frame(0, 10, 51, &[])).await;
            let rest = self.read_to_end().await;
            let _ = rest;
        }
    }
}
