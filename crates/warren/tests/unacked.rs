//! Unacked messages beyond a queue's memory budget (16 MiB of bodies) keep only where they
//! are in the queue's store: a consumer that never acks holds them without their bodies in
//! the broker's memory. They come back with the right body and the redelivered flag when
//! requeued, persistent ones survive `kill -9` while unacked, and the broker's RSS does not
//! grow by their bodies. Runs the real `warren` binary with a data directory.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;
use warren_tests::{BrokerProcess, TempDir};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// 4 KiB bodies: 6,000 of them are half again the memory budget.
const BODY: usize = 4096;
const N: u32 = 6_000;

/// A body that says its id everywhere, so a wrong or torn body shows.
fn body(id: u32, len: usize) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend((0..len - 4).map(|i| (id as usize * 31 + i) as u8));
    b
}

fn id_of(data: &[u8]) -> u32 {
    let id = u32::from_be_bytes(data[..4].try_into().expect("4-byte id"));
    assert_eq!(data, body(id, data.len()), "body of message {id}");
    id
}

async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

async fn declare(ch: &Channel, queue: &str, durable: bool) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// Waits until `queue` has `n` ready messages.
async fn ready_becomes(ch: &Channel, queue: &str, n: u32) {
    for _ in 0..200 {
        if ready(ch, queue).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{queue}: {} ready, not {n}", ready(ch, queue).await);
}

/// Publishes ids `range` with confirms; `persistent(id)` picks the delivery mode.
async fn publish_all(
    ch: &Channel,
    queue: &str,
    range: std::ops::Range<u32>,
    len: usize,
    persistent: impl Fn(u32) -> bool,
) {
    warren_tests::publish_ids_confirmed(ch, queue, range, |id| body(id, len), persistent).await;
}

/// Consumes `n` messages on `ch`: with `ack`, acking each (prefetch 500); without, holding
/// them all (unlimited prefetch). Returns (id, redelivered) in delivery order.
async fn consume(ch: &Channel, queue: &str, n: usize, ack: bool) -> Vec<(u32, bool)> {
    if ack {
        ch.basic_qos(500, BasicQosOptions::default())
            .await
            .expect("qos");
    }
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("a delivery within 30 s ({} of {n})", got.len()))
            .expect("consumer open")
            .expect("delivery");
        got.push((id_of(&d.data), d.redelivered));
        if ack {
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }
    got
}

/// One consumer holds every message of a backlog larger than the memory budget, then its
/// connection goes: all come back, in order, with their bodies and the redelivered flag.
async fn requeued_after_holding(durable: bool) {
    let q = if durable {
        "held-durable"
    } else {
        "held-transient"
    };
    let tmp = TempDir::new(q);
    let broker = BrokerProcess::start(WARREN, &tmp.join("data"), &[]);
    let (_conn, ch) = connect(&broker.url()).await;
    declare(&ch, q, durable).await;
    // Every third message is transient: those are written to the store when they leave
    // memory; the persistent ones are there already.
    publish_all(&ch, q, 0..N, BODY, |id| id % 3 != 0).await;

    let (holder, hch) = connect(&broker.url()).await;
    let held = consume(&hch, q, N as usize, false).await;
    assert_eq!(
        held.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    assert!(held.iter().all(|d| !d.1), "first deliveries");
    assert_eq!(ready(&ch, q).await, 0);

    // The consumer never acks; its connection goes and everything is requeued.
    let _ = holder.close(200, "bye".into()).await;
    ready_becomes(&ch, q, N).await;

    // Redelivered: every message once, in publish order, with its body and the flag. Acking
    // half and requeueing the other half on the way exercises both for spilled checkouts.
    let (_c2, ch2) = connect(&broker.url()).await;
    let again = consume(&ch2, q, N as usize, true).await;
    assert_eq!(
        again.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>()
    );
    assert!(again.iter().all(|d| d.1), "all marked redelivered");
    assert_eq!(ready(&ch, q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_durable_queue_come_back_with_their_bodies() {
    requeued_after_holding(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_transient_queue_come_back_with_their_bodies() {
    requeued_after_holding(false).await;
}

/// Rejecting with requeue and nacking without it, on messages held beyond the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_beyond_the_budget_can_be_nacked_and_rejected() {
    const Q: &str = "held-nack";
    let tmp = TempDir::new(Q);
    let broker = BrokerProcess::start(WARREN, &tmp.join("data"), &[]);
    let (_conn, ch) = connect(&broker.url()).await;
    declare(&ch, Q, true).await;
    publish_all(&ch, Q, 0..N, BODY, |id| id % 2 == 0).await;

    let (_h, hch) = connect(&broker.url()).await;
    let mut consumer = hch
        .basic_consume(
            Q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut tags = Vec::new();
    while tags.len() < N as usize {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("delivery in time")
            .expect("open")
            .expect("delivery");
        tags.push((id_of(&d.data), d.delivery_tag));
    }
    // The consumer stops (its deliveries stay unacked on the channel), so what is requeued
    // waits in the queue rather than going straight back to it.
    hch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    // The last 1,000 (past the budget) go for good; the 1,000 before them come back.
    for &(_, tag) in &tags[N as usize - 1000..] {
        hch.basic_reject(tag, BasicRejectOptions { requeue: false })
            .await
            .expect("reject");
    }
    for &(_, tag) in &tags[N as usize - 2000..N as usize - 1000] {
        hch.basic_nack(
            tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
        .expect("nack");
    }
    ready_becomes(&ch, Q, 1000).await;
    let (_c2, ch2) = connect(&broker.url()).await;
    let back = consume(&ch2, Q, 1000, true).await;
    assert_eq!(
        back.iter().map(|d| d.0).collect::<Vec<_>>(),
        (N - 2000..N - 1000).collect::<Vec<_>>()
    );
    assert!(back.iter().all(|d| d.1));
}

/// Persistent messages held unacked (so, past the budget, in the store only) survive a
/// `kill -9`: all come back, redelivered, with their bodies; transient ones are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_persistent_messages_survive_sigkill() {
    const Q: &str = "held-crash";
    let tmp = TempDir::new(Q);
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let (conn, ch) = connect(&broker.url()).await;
    declare(&ch, Q, true).await;
    publish_all(&ch, Q, 0..N, BODY, |id| id % 5 != 0).await;
    let (_h, hch) = connect(&broker.url()).await;
    let held = consume(&hch, Q, N as usize, false).await;
    assert_eq!(held.len(), N as usize);
    let _ = conn.close(200, "bye".into()).await;

    broker.kill9_and_restart(&[]);
    let persistent: Vec<u32> = (0..N).filter(|id| id % 5 != 0).collect();
    let (_conn, ch) = connect(&broker.url()).await;
    declare(&ch, Q, true).await;
    assert_eq!(ready(&ch, Q).await as usize, persistent.len());
    let got = consume(&ch, Q, persistent.len(), true).await;
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), persistent);
    assert!(got.iter().all(|d| d.1), "delivered before the crash");
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// 100,000 held 1 KiB messages (100 MiB of bodies) grow the broker's RSS by far less than
/// their bodies: what an unacked delivery keeps is tens of bytes, not its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_do_not_keep_their_bodies_in_memory() {
    const Q: &str = "held-rss";
    const M: u32 = 100_000;
    let tmp = TempDir::new(Q);
    let broker = BrokerProcess::start(WARREN, &tmp.join("data"), &[]);
    let pid = broker.pid().expect("running");
    let (_conn, ch) = connect(&broker.url()).await;
    declare(&ch, Q, true).await;
    publish_all(&ch, Q, 0..M, 1024, |id| id % 2 == 0).await;
    let before = rss_kb(pid);
    let (holder, hch) = connect(&broker.url()).await;
    let held = consume(&hch, Q, M as usize, false).await;
    assert_eq!(held.len(), M as usize);
    let unacked = rss_kb(pid);
    let _ = holder.close(200, "bye".into()).await;
    ready_becomes(&ch, Q, M).await;
    let requeued = rss_kb(pid);
    // Bodies would be 100 MiB; the bookkeeping is under 100 bytes a message. 40 MiB of slack
    // covers the allocator and the write buffers of the consumer's connection.
    let limit = before + 40 * 1024;
    assert!(
        unacked < limit && requeued < limit,
        "RSS {before} kB with the backlog ready, {unacked} kB held unacked, {requeued} kB requeued"
    );
}
