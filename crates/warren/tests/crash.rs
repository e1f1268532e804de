//! Crash safety: a publisher with confirms and a consumer with manual acks run while the broker
//! is killed with SIGKILL at random moments and restarted. Every confirmed message must be
//! delivered at least once; messages delivered again after their ack are counted and reported.
//! Rounds: `CRASH_ROUNDS` (default 3). The same for a quorum queue replicated with Raft
//! (`quorum_queues.replicated = true`), whose confirms wait for the commit.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_tests::{BrokerProcess, TempDir};

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

const QUEUE: &str = "crash-test";

#[derive(Default)]
struct Ledger {
    confirmed: HashSet<u64>,
    delivered: HashSet<u64>,
    acked: HashSet<u64>,
    redelivered_after_ack: u64,
}

/// Which queue the crash rounds drive: a durable classic queue, or a replicated quorum one.
#[derive(Clone, Copy)]
enum Kind {
    Classic,
    Replicated,
}

impl Kind {
    async fn declare(self, conn: &Connection) -> lapin::Channel {
        match self {
            Kind::Classic => declare_queue(conn, QUEUE).await,
            Kind::Replicated => {
                let ch = conn.create_channel().await.expect("channel");
                let args = warren_tests::table(&[("x-queue-type", warren_tests::long("quorum"))]);
                warren_tests::declare_durable_args(&ch, QUEUE, args).await;
                ch
            }
        }
    }
}

/// A channel on which durable queue `name` is declared.
async fn declare_queue(conn: &Connection, name: &str) -> lapin::Channel {
    let ch = conn.create_channel().await.expect("channel");
    warren_tests::declare_durable(&ch, name).await;
    ch
}

async fn publisher(
    kind: Kind,
    url: String,
    ledger: Arc<Mutex<Ledger>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let ch = kind.declare(&conn).await;
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let props = BasicProperties::default().with_delivery_mode(2);
            match ch
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &id.to_be_bytes(),
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
                    ledger.lock().unwrap().confirmed.insert(id);
                }
                _ => return,
            }
        }
    }
}

async fn consumer(kind: Kind, url: String, ledger: Arc<Mutex<Ledger>>) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let ch = kind.declare(&conn).await;
    let _ = ch.basic_qos(50, BasicQosOptions::default()).await;
    let Ok(mut c) = ch
        .basic_consume(
            QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(d)) = c.next().await {
        let id = u64::from_be_bytes(d.data[..8].try_into().expect("8-byte id"));
        {
            let mut l = ledger.lock().unwrap();
            if l.acked.contains(&id) {
                l.redelivered_after_ack += 1;
            }
            l.delivered.insert(id);
        }
        if d.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        ledger.lock().unwrap().acked.insert(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill() {
    crash_rounds(Kind::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_of_a_replicated_quorum_queue_survive_sigkill() {
    crash_rounds(Kind::Replicated).await;
}

async fn crash_rounds(kind: Kind) {
    let rounds: u32 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = TempDir::new("crash");
    let dir = tmp.join("data");
    let conf = tmp.join("warren.conf");
    std::fs::write(&conf, "quorum_queues.replicated = true\n").expect("write warren.conf");
    let conf = conf.to_str().expect("utf-8 path").to_string();
    let args: Vec<&str> = match kind {
        Kind::Classic => vec![],
        Kind::Replicated => vec!["--config", &conf],
    };
    let mut broker = BrokerProcess::start(WARREN, &dir, &args);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..rounds {
        let p = tokio::spawn(publisher(
            kind,
            broker.url(),
            ledger.clone(),
            next_id.clone(),
        ));
        let c = tokio::spawn(consumer(kind, broker.url(), ledger.clone()));
        let wait = rand::thread_rng().gen_range(200..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        broker.kill9_and_restart(&args);
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        let l = ledger.lock().unwrap();
        eprintln!(
            "round {round}: killed after {wait} ms; confirmed {}, delivered {}",
            l.confirmed.len(),
            l.delivered.len()
        );
    }
    // Drain what is left after the last restart.
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = kind.declare(&conn).await;
    loop {
        let got = ch
            .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        let Some(m) = got else { break };
        let id = u64::from_be_bytes(m.delivery.data[..8].try_into().expect("8-byte id"));
        let mut l = ledger.lock().unwrap();
        if l.acked.contains(&id) {
            l.redelivered_after_ack += 1;
        }
        l.delivered.insert(id);
    }
    let l = ledger.lock().unwrap();
    let lost: Vec<u64> = l.confirmed.difference(&l.delivered).copied().collect();
    eprintln!(
        "crash test: {rounds} rounds, {} confirmed, {} delivered, {} lost, {} delivered again after their ack",
        l.confirmed.len(),
        l.delivered.len(),
        lost.len(),
        l.redelivered_after_ack
    );
    assert!(
        l.confirmed.len() > 100,
        "the publisher made too little progress to test anything"
    );
    assert!(
        lost.is_empty(),
        "confirmed messages lost after SIGKILL: {:?}",
        &lost[..lost.len().min(20)]
    );
    drop(l);
    broker.kill9();
}

/// Several connections declaring the same new durable queue at once must end up sharing one
/// message store. (A race once opened the queue's store twice; the loser's store, dropped,
/// wrote a second segment header into the winner's segment, and at the next start recovery
/// cut the log there: every message after it was lost. The crash test above found it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_declares_share_one_store() {
    const QUEUES: usize = 20;
    const DECLARERS: usize = 6;
    const MESSAGES: u64 = 200;
    let tmp = TempDir::new("declare-race");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let mut conns = Vec::new();
    for _ in 0..DECLARERS {
        let c = Connection::connect(&broker.url(), ConnectionProperties::default())
            .await
            .expect("connect");
        conns.push(c);
    }
    let mut channels = Vec::new();
    for c in &conns {
        channels.push(c.create_channel().await.expect("channel"));
    }
    for q in 0..QUEUES {
        let name = format!("race-{q}");
        let declares = channels.iter().map(|ch| {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
        });
        for r in futures_util::future::join_all(declares).await {
            r.expect("declare");
        }
    }
    let ch = &channels[0];
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for q in 0..QUEUES {
        let name = format!("race-{q}");
        let mut pending = Vec::new();
        for id in 0..MESSAGES {
            let c = ch
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    &id.to_be_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            pending.push(c);
        }
        for c in pending {
            assert!(c.await.expect("confirm").is_ack(), "publish nacked");
        }
    }
    drop(channels);
    drop(conns);
    broker.kill9_and_restart(&[]);
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect after restart");
    let ch = conn.create_channel().await.expect("channel");
    for q in 0..QUEUES {
        let name = format!("race-{q}");
        let ok = ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare after restart");
        assert_eq!(
            u64::from(ok.message_count()),
            MESSAGES,
            "queue {name}: confirmed messages lost after SIGKILL"
        );
    }
    broker.kill9();
}

/// Transactions across SIGKILL: a publisher commits batches of persistent messages in
/// transactions while the broker is killed at random moments. After the restarts every batch
/// is there whole or not at all, and every batch whose tx.commit-ok arrived is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_all_or_nothing_across_sigkill() {
    const TXQ: &str = "crash-tx";
    const BATCH: u32 = 20;
    let rounds: u32 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = TempDir::new("crash-tx");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let committed = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let next_batch = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for round in 0..rounds {
        let url = broker.url();
        let (committed2, next_batch2) = (committed.clone(), next_batch.clone());
        let p = tokio::spawn(async move {
            let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
                return;
            };
            let ch = declare_queue(&conn, TXQ).await;
            if ch.tx_select().await.is_err() {
                return;
            }
            loop {
                let b = next_batch2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for i in 0..BATCH {
                    let mut body = b.to_be_bytes().to_vec();
                    body.extend_from_slice(&i.to_be_bytes());
                    let props = BasicProperties::default().with_delivery_mode(2);
                    if ch
                        .basic_publish(
                            "".into(),
                            TXQ.into(),
                            BasicPublishOptions::default(),
                            &body,
                            props,
                        )
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if ch.tx_commit().await.is_err() {
                    return;
                }
                committed2.lock().unwrap().insert(b);
            }
        });
        let wait = rand::thread_rng().gen_range(200..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        broker.kill9_and_restart(&[]);
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
        eprintln!(
            "round {round}: killed after {wait} ms; {} batches committed",
            committed.lock().unwrap().len()
        );
    }
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut found: std::collections::HashMap<u64, HashSet<u32>> = Default::default();
    loop {
        let got = ch
            .basic_get(TXQ.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        let Some(m) = got else { break };
        let d = &m.delivery.data;
        let b = u64::from_be_bytes(d[..8].try_into().expect("batch id"));
        let i = u32::from_be_bytes(d[8..12].try_into().expect("index"));
        assert!(
            found.entry(b).or_default().insert(i),
            "batch {b} message {i} twice"
        );
    }
    let committed = committed.lock().unwrap();
    eprintln!(
        "transactions: {rounds} rounds, {} committed, {} found",
        committed.len(),
        found.len()
    );
    assert!(
        committed.len() > 10,
        "too few transactions committed to test anything"
    );
    for (b, msgs) in &found {
        assert_eq!(msgs.len() as u32, BATCH, "batch {b} is there only in part");
    }
    for b in committed.iter() {
        assert!(found.contains_key(b), "committed batch {b} lost");
    }
    broker.kill9();
}
