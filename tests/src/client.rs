//! lapin helpers: connections and channels with timeouts, declaring, publishing, consuming
//! and getting, field tables, reading reply codes out of lapin errors, and waiting on the
//! in-process broker's queue counts.
//!
//! Every wait is bounded by [`TIMEOUT`] so that a broker bug fails a test instead of hanging it.

use crate::TestBroker;
use futures_util::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind,
    PublisherConfirm,
};
use std::future::Future;
use std::time::Duration;

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

/// A field table of `(key, value)` pairs, e.g. `table(&[("x-max-length", int(2))])`.
pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

/// A field table whose values are all long strings.
pub fn string_table(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
    }
    t
}

/// A long-string field value.
pub fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A long-long-int field value.
pub fn int(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
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

/// Declares a durable queue.
pub async fn declare_durable(ch: &Channel, name: &str) -> lapin::Queue {
    declare_durable_args(ch, name, no_args()).await
}

/// Declares a durable queue with arguments.
pub async fn declare_durable_args(ch: &Channel, name: &str, args: FieldTable) -> lapin::Queue {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "queue_declare durable",
        ch.queue_declare(name.into(), opts, args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue_declare {name}: {e}"))
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
    publish_for_confirm(ch, exchange, key, body, props).await;
}

/// Puts the channel in confirm mode.
pub async fn confirm_select(ch: &Channel) {
    within(
        "confirm_select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm_select");
}

/// Publishes; the publisher confirm is left to the caller (outside confirm mode it is
/// `NotRequested`).
pub async fn publish_for_confirm(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> PublisherConfirm {
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
    .expect("basic_publish")
}

/// Publishes with confirms on (the channel must be in confirm mode) and waits for the ack, so
/// the message is known to be routed before the test goes on.
pub async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = publish_for_confirm(ch, exchange, key, body, BasicProperties::default()).await;
    let c = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        c.is_ack(),
        "publish to {exchange:?}/{key:?} was not acked: {c:?}"
    );
}

/// Puts `ch` in confirm mode and publishes one message per id of `ids` to `queue` (default
/// exchange), with `body(id)` and persistent if `persistent(id)`; waits for the confirms a
/// thousand at a time, and for all of them before it returns (every one must be an ack).
pub async fn publish_ids_confirmed(
    ch: &Channel,
    queue: &str,
    ids: std::ops::Range<u32>,
    body: impl Fn(u32) -> Vec<u8>,
    persistent: impl Fn(u32) -> bool,
) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut pending = Vec::new();
    for id in ids {
        let mode = if persistent(id) { 2 } else { 1 };
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body(id),
                BasicProperties::default().with_delivery_mode(mode),
            )
            .await
            .expect("publish");
        pending.push(c);
        if pending.len() == 1000 {
            for c in pending.drain(..) {
                assert!(c.await.expect("confirm").is_ack());
            }
        }
    }
    for c in pending {
        assert!(c.await.expect("confirm").is_ack());
    }
}

pub async fn qos(ch: &Channel, prefetch: u16, global: bool) {
    within(
        "basic_qos",
        ch.basic_qos(prefetch, BasicQosOptions { global }),
    )
    .await
    .expect("basic_qos");
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

/// basic.consume with consumer arguments (`x-priority`, `x-stream-offset`, ...).
pub async fn consume_args(ch: &Channel, queue: &str, tag: &str, args: FieldTable) -> Consumer {
    within(
        "basic_consume",
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic_consume {queue}: {e}"))
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

/// basic.get: the next ready message of `queue`, if any.
pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within(
        "basic_get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("basic_get")
}

/// Takes every ready message of `queue` with basic.get (no ack) and returns the bodies.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
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

/// Consumers of a queue in vhost `/` (0 if there is no such queue).
pub fn consumer_count(broker: &TestBroker, queue: &str) -> u64 {
    broker
        .broker
        .vhost("/")
        .and_then(|v| v.queue(queue))
        .map_or(0, |q| q.stats().consumers)
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
