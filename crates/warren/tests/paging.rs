//! A backlog larger than a queue's memory budget (16 MiB of bodies) lives on disk, is read
//! back in publish order, survives restarts with its redelivered flags, drops its transient
//! messages at a restart, and can be purged while other messages stay unacked. Runs the real
//! `warren` binary with a data directory.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;
use warren_tests::{BrokerProcess, TempDir};

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// 4 KiB bodies: 6,000 of them are half again the memory budget.
const BODY: usize = 4096;

fn body(id: u32) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.resize(BODY, b'x');
    b
}

fn id_of(data: &[u8]) -> u32 {
    u32::from_be_bytes(data[..4].try_into().expect("4-byte id"))
}

async fn open(url: &str, queue: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    warren_tests::declare_durable(&ch, queue).await;
    (conn, ch)
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

/// Publishes ids `range` with confirms; `persistent(id)` picks the delivery mode.
async fn publish_all(
    ch: &Channel,
    queue: &str,
    range: std::ops::Range<u32>,
    persistent: impl Fn(u32) -> bool,
) {
    warren_tests::publish_ids_confirmed(ch, queue, range, body, persistent).await;
}

/// Gets exactly `n` messages with basic.get, acking them if `ack`; returns (id, redelivered).
async fn get_n(ch: &Channel, queue: &str, n: usize, ack: bool) -> Vec<(u32, bool)> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let m = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("queue empty after {} of {n}", got.len()));
        got.push((id_of(&m.delivery.data), m.delivery.redelivered));
        if ack {
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
    }
    got
}

/// Consumes `n` messages (manual acks), then cancels the consumer; returns (id, redelivered).
async fn drain(ch: &Channel, queue: &str, n: usize) -> Vec<(u32, bool)> {
    ch.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
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
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a delivery within 20 s")
            .expect("consumer open")
            .expect("delivery");
        got.push((id_of(&d.data), d.redelivered));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // Cancel before returning: lapin cancels a dropped consumer from a task of its own, after
    // whatever the caller does next, so publishes right after could be delivered to it.
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_backlog_survives_restarts_in_order_with_its_flags() {
    const Q: &str = "paged";
    const N: u32 = 6_000;
    let tmp = TempDir::new("paging");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let (conn, ch) = open(&broker.url(), Q).await;
    // Every 7th message is transient: it pages out with the rest but is gone after a restart.
    publish_all(&ch, Q, 0..N, |id| id % 7 != 0).await;
    assert_eq!(ready(&ch, Q).await, N);
    let _ = conn.close(200, "bye".into()).await;

    // Everything confirmed is on disk: a SIGKILL loses none of it.
    broker.kill9_and_restart(&[]);
    let persistent: Vec<u32> = (0..N).filter(|id| id % 7 != 0).collect();
    let (conn, ch) = open(&broker.url(), Q).await;
    assert_eq!(ready(&ch, Q).await as usize, persistent.len());

    // Ack the first 2,500, then take 200 more without acking and drop the connection: they
    // go back to the head of the queue, marked delivered.
    let acked = get_n(&ch, Q, 2_500, true).await;
    assert_eq!(
        acked.iter().map(|d| d.0).collect::<Vec<_>>(),
        persistent[..2_500]
    );
    assert!(acked.iter().all(|d| !d.1), "nothing was delivered before");
    let held = get_n(&ch, Q, 200, false).await;
    assert_eq!(
        held.iter().map(|d| d.0).collect::<Vec<_>>(),
        persistent[2_500..2_700]
    );
    drop(ch);
    let _ = conn.close(200, "bye".into()).await;

    // A clean stop writes every ack; after it exactly the rest comes back, in order.
    assert_eq!(broker.stop(), Some(0));
    let broker = BrokerProcess::start(WARREN, &dir, &[]);
    let (_conn, ch) = open(&broker.url(), Q).await;
    let rest = &persistent[2_500..];
    assert_eq!(ready(&ch, Q).await as usize, rest.len());
    let got = drain(&ch, Q, rest.len()).await;
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), rest);
    for (n, (id, redelivered)) in got.iter().enumerate() {
        assert_eq!(*redelivered, n < 200, "redelivered flag of message {id}");
    }
    assert_eq!(ready(&ch, Q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_paged_backlog_keeps_the_unacked_messages() {
    const Q: &str = "paged-purge";
    const N: u32 = 5_000;
    let tmp = TempDir::new("paging-purge");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let (conn, ch) = open(&broker.url(), Q).await;
    publish_all(&ch, Q, 0..N, |_| true).await;

    // Ten stay unacked on a second channel while the queue is purged.
    let holder = conn.create_channel().await.expect("channel");
    let held = get_n(&holder, Q, 10, false).await;
    assert_eq!(
        held.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let purged = ch
        .queue_purge(Q.into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, N - 10);
    assert_eq!(ready(&ch, Q).await, 0);

    // New messages after the purge are kept.
    publish_all(&ch, Q, N..N + 5, |_| true).await;
    let _ = conn.close(200, "bye".into()).await;

    // After a restart: the ten unacked ones (redelivered) and the five new ones, nothing of
    // the purged backlog.
    assert_eq!(broker.stop(), Some(0));
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let (conn, ch) = open(&broker.url(), Q).await;
    assert_eq!(ready(&ch, Q).await, 15);
    let got = drain(&ch, Q, 15).await;
    let want: Vec<(u32, bool)> = (0..10)
        .map(|id| (id, true))
        .chain((N..N + 5).map(|id| (id, false)))
        .collect();
    assert_eq!(got, want);

    // With nothing unacked, a purge of a paged backlog drops the store whole.
    publish_all(&ch, Q, 0..N, |_| true).await;
    let purged = ch
        .queue_purge(Q.into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, N);
    let _ = conn.close(200, "bye".into()).await;
    broker.kill9_and_restart(&[]);
    let (_conn, ch) = open(&broker.url(), Q).await;
    assert_eq!(ready(&ch, Q).await, 0);
    // The disk came back: only near-empty segment files remain.
    let bytes: u64 = walk(&dir)
        .iter()
        .filter(|p| p.to_string_lossy().contains("msgs."))
        .map(|p| p.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(bytes < 1 << 20, "{bytes} bytes of message segments left");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
