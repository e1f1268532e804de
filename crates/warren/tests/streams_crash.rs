//! A stream survives `kill -9` with every confirmed message: publishers with confirms run
//! while the `warren` binary is killed with SIGKILL and restarted; afterwards a consumer
//! replaying the stream from `first` must see every confirmed message, each once, with
//! offsets counting up from 0 without a gap, and appends go on after the last offset.
//! Rounds: `CRASH_ROUNDS` (default 3).

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_tests::{long, table, BrokerProcess, TempDir};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");
const STREAM: &str = "crash-stream";

fn stream_args() -> FieldTable {
    // Small segments, so that the crashes also hit segment roll-overs.
    table(&[
        ("x-queue-type", long("stream")),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(64 * 1024),
        ),
    ])
}

async fn declare(conn: &Connection) -> lapin::Channel {
    let ch = conn.create_channel().await.expect("channel");
    warren_tests::declare_durable_args(&ch, STREAM, stream_args()).await;
    ch
}

async fn publisher(
    url: String,
    confirmed: Arc<Mutex<HashSet<u64>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let ch = declare(&conn).await;
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let pad = vec![7u8; 200];
    loop {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&pad);
            // Transient messages too: a stream keeps every message.
            let props = BasicProperties::default().with_delivery_mode(if id.is_multiple_of(2) {
                2
            } else {
                1
            });
            match ch
                .basic_publish(
                    "".into(),
                    STREAM.into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
            {
                Ok(c) => batch.push((id, c)),
                Err(_) => return,
            }
        }
        for (id, c) in batch {
            match c.await {
                Ok(conf) if conf.is_ack() => {
                    confirmed.lock().unwrap().insert(id);
                }
                _ => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_stream_messages_survive_sigkill() {
    let rounds: u32 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = TempDir::new("stream-crash");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..rounds {
        let p1 = tokio::spawn(publisher(broker.url(), confirmed.clone(), next_id.clone()));
        let p2 = tokio::spawn(publisher(broker.url(), confirmed.clone(), next_id.clone()));
        let wait = rand::thread_rng().gen_range(300..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        broker.kill9_and_restart(&[]);
        let _ = tokio::time::timeout(Duration::from_secs(10), p1).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), p2).await;
        eprintln!(
            "round {round}: killed after {wait} ms; confirmed {}",
            confirmed.lock().unwrap().len()
        );
    }
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = declare(&conn).await;
    // One more message after the restarts: its offset follows the last one recovered.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let last = u64::MAX.to_be_bytes();
    let c = ch
        .basic_publish(
            "".into(),
            STREAM.into(),
            BasicPublishOptions::default(),
            &last,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(c.await.unwrap().is_ack());
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut c = ch
        .basic_consume(
            STREAM.into(),
            "replay".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", long("first"))]),
        )
        .await
        .expect("consume");
    let mut seen = HashSet::new();
    let mut expected_offset = 0i64;
    loop {
        let d = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("a delivery within 20 s")
            .expect("consumer open")
            .expect("delivery");
        let offset = match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(n)) => n,
            other => panic!("x-stream-offset header: {other:?}"),
        };
        assert_eq!(offset, expected_offset, "offsets count up without a gap");
        expected_offset += 1;
        let id = u64::from_be_bytes(d.data[..8].try_into().unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
        if id == u64::MAX {
            break;
        }
        assert!(seen.insert(id), "message {id} is in the stream twice");
    }
    let confirmed = confirmed.lock().unwrap();
    let lost: Vec<u64> = confirmed.difference(&seen).copied().collect();
    eprintln!(
        "stream crash test: {rounds} rounds, {} confirmed, {} in the stream, {} lost",
        confirmed.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        confirmed.len() > 100,
        "the publishers made too little progress to test anything"
    );
    assert!(
        lost.is_empty(),
        "confirmed messages lost after SIGKILL: {:?}",
        &lost[..lost.len().min(20)]
    );
    broker.kill9();
}
