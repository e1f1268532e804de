//! A publisher held by flow control (its queue's consumers are behind) is a connection in a
//! waiting state, not a frozen task: a forced close (SIGTERM's 320, the management API's
//! DELETE) reaches it at once.

use lapin::options::*;
use lapin::BasicProperties;
use std::time::{Duration, Instant};
use warren_tests::*;

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

const BODY: usize = 64 * 1024;

/// A consumer that takes one message and never acks it, and a publish-only connection that
/// keeps publishing 64 KiB messages to the same queue until flow control holds it (8 MiB of
/// ready bodies). Returns the publisher's connection and its event stream once it is held.
async fn held_publisher(
    url: &str,
    queue_ready: impl Fn() -> u64,
) -> (lapin::Connection, Events, lapin::Connection) {
    let cons_conn = connect_url(url).await;
    let cons = channel(&cons_conn).await;
    declare(&cons, "held").await;
    within("qos", cons.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let _consumer = consume(&cons, "held", "stuck").await;
    let pub_conn = connect_url(url).await;
    let ev = events(&pub_conn);
    let ch = channel(&pub_conn).await;
    let body = vec![7u8; BODY];
    tokio::spawn(async move {
        loop {
            if ch
                .basic_publish(
                    "".into(),
                    "held".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Held: the backlog passes the 8 MiB mark and stops growing.
    let deadline = Instant::now() + TIMEOUT;
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ready = queue_ready();
        if ready * BODY as u64 > 8 << 20 && ready == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the publisher was never held ({ready} ready)"
        );
        last = ready;
    }
    (pub_conn, ev, cons_conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_a_publisher_held_by_flow_control_with_320_at_once() {
    let tmp = TempDir::new("flow-sigterm");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    let mgmt = broker.listener("http").unwrap();
    let ready = move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(mgmt) else {
            return 0;
        };
        let _ = s.write_all(
            b"GET /api/queues/%2f/held HTTP/1.0\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n",
        );
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r.split("\"messages_ready\":")
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (_pub_conn, mut ev, _cons) = held_publisher(&broker.url(), ready).await;
    let sent = Instant::now();
    broker.sigterm();
    let e = tokio::time::timeout(Duration::from_secs(1), next_error(&mut ev))
        .await
        .expect("the held publisher heard nothing within a second of SIGTERM");
    // lapin, still writing publishes, may see its socket closed (broken pipe) before it reads
    // the 320 that preceded it; either way the held publisher was closed within a second.
    if reply_code(&e).is_some() {
        let text = expect_error_code(&e, 320);
        assert!(text.starts_with("CONNECTION_FORCED"), "{text}");
    }
    eprintln!("closed after {:?}: {e}", sent.elapsed());
    assert_eq!(broker.wait(), Some(0), "warren did not stop cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_close_reaches_a_publisher_held_by_flow_control() {
    let b = TestBroker::start();
    let broker = b.broker.clone();
    let (pub_conn, mut ev, _cons) = held_publisher(&b.url(), move || {
        broker
            .vhost("/")
            .and_then(|v| v.queue("held"))
            .map_or(0, |q| q.stats().messages_ready)
    })
    .await;
    let _ = pub_conn;
    // The management API's DELETE /api/connections/{name}, for the publisher only (the
    // newest connection): its consumer stays, so nothing else releases it.
    let publisher = b.broker.connections.list().pop().unwrap();
    let sent = Instant::now();
    publisher.closer.force_close("held publisher test");
    let e = tokio::time::timeout(Duration::from_secs(1), next_error(&mut ev))
        .await
        .expect("the held publisher heard nothing within a second of the forced close");
    let text = expect_error_code(&e, 320);
    assert!(text.contains("held publisher test"), "{text}");
    assert!(sent.elapsed() < Duration::from_secs(1));
    eventually("the publisher's connection is gone", || {
        b.broker.connections.list().len() == 1
    })
    .await;
}

/// Confirms of messages already in the queue go out while their publisher is held: the
/// group commit that makes them durable completes while the connection waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_publisher_still_gets_its_confirms() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let tmp = TempDir::new("flow-confirms");
    let dir = tmp.join("data");
    let b = TestBroker::with_backend(&dir, warren_tests::FileBackend::shared());
    let cons_conn = connect(&b).await;
    let cons = channel(&cons_conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "declare",
        cons.queue_declare(
            "held-d".into(),
            durable,
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within("qos", cons.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let _consumer = consume(&cons, "held-d", "stuck").await;
    let pub_conn = connect(&b).await;
    let ch = channel(&pub_conn).await;
    within(
        "confirm_select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let acked2 = acked.clone();
    tokio::spawn(async move {
        let body = vec![1u8; BODY];
        loop {
            let Ok(confirm) = ch
                .basic_publish(
                    "".into(),
                    "held-d".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
            else {
                return;
            };
            let acked = acked2.clone();
            tokio::spawn(async move {
                if let Ok(c) = confirm.await {
                    if c.is_ack() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let in_queue = || {
        b.broker
            .vhost("/")
            .and_then(|v| v.queue("held-d"))
            .map_or(0, |q| {
                let s = q.stats();
                s.messages_ready + s.messages_unacknowledged
            })
    };
    // Held once the queue stops growing past 8 MiB.
    let deadline = Instant::now() + TIMEOUT;
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = in_queue();
        if n * BODY as u64 > 8 << 20 && n == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the publisher was never held ({n} in the queue)"
        );
        last = n;
    }
    // Every message the queue holds was stored and synced: each must be confirmed.
    let n = in_queue();
    eventually("every stored message confirmed while held", || {
        acked.load(Ordering::Relaxed) >= n
    })
    .await;
    assert_eq!(in_queue(), n, "the publisher was released");
    drop(b);
}
