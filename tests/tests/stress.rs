//! Stress: slow auto-ack consumers against fast publishers, so that consumers' connections keep
//! filling (queues hold back) and draining (queues resume) while several queues deliver into
//! one connection at once. Nothing may stall: every published message reaches its consumer.
//! `WARREN_STRESS_SECS` sets how long publishers run (default 8 s; the check is 60).

use lapin::options::*;
use lapin::BasicProperties;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_tests::raw::{method_frame, RawClient};
use warren_tests::*;

const QUEUES: usize = 4;
const BODY: usize = 32 * 1024;

/// basic.consume on channel 1 with no_ack=true, then reads slowly, counting deliveries per
/// queue (the consumer tag is the queue's index).
async fn slow_consumer(addr: std::net::SocketAddr, counts: Arc<Vec<AtomicU64>>) {
    let mut raw = RawClient::connect(addr).await;
    raw.handshake().await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    assert_eq!(raw.read_method().await.unwrap().method_id(), (20, 11));
    for q in 0..QUEUES {
        let name = format!("stress-{q}");
        let tag = format!("{q}");
        let mut a = vec![0, 0, name.len() as u8];
        a.extend_from_slice(name.as_bytes());
        a.push(tag.len() as u8);
        a.extend_from_slice(tag.as_bytes());
        a.push(0b0000_0010); // no-ack
        a.extend_from_slice(&[0, 0, 0, 0]); // no arguments
        raw.send(&method_frame(1, 60, 20, &a)).await;
    }
    let mut frames = 0u64;
    loop {
        let Some(f) = raw.read_frame().await else {
            return;
        };
        if f.kind == 1 && f.method_id() == (60, 60) {
            // consumer tag: the first short string after the class and method ids
            let len = f.payload[4] as usize;
            let q: usize = std::str::from_utf8(&f.payload[5..5 + len])
                .unwrap()
                .parse()
                .unwrap();
            counts[q].fetch_add(1, Ordering::Relaxed);
        }
        frames += 1;
        // A slow reader: the broker's buffer for this connection keeps hitting its limit.
        if frames.is_multiple_of(24) {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_auto_ack_consumers_never_stall_behind_fast_publishers() {
    let secs: u64 = std::env::var("WARREN_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let b = TestBroker::start();
    let (_c, ch) = open(&b).await;
    for q in 0..QUEUES {
        declare(&ch, &format!("stress-{q}")).await;
    }
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..QUEUES).map(|_| AtomicU64::new(0)).collect());
    let published: Arc<Vec<AtomicU64>> = Arc::new((0..QUEUES).map(|_| AtomicU64::new(0)).collect());
    // Two slow consumer connections, each consuming every queue.
    let consumers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(slow_consumer(b.addr, received.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut publishers = Vec::new();
    for q in 0..QUEUES {
        let (url, published) = (b.url(), published.clone());
        publishers.push(tokio::spawn(async move {
            let conn = connect_url(&url).await;
            let ch = channel(&conn).await;
            // Confirms bound what is in flight, so "published" means "in the queue".
            within(
                "confirm_select",
                ch.confirm_select(ConfirmSelectOptions::default()),
            )
            .await
            .unwrap();
            let body = vec![q as u8; BODY];
            while Instant::now() < deadline {
                let mut batch = Vec::new();
                for _ in 0..64 {
                    batch.push(
                        ch.basic_publish(
                            "".into(),
                            format!("stress-{q}").as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await
                        .expect("publish"),
                    );
                }
                for c in batch {
                    within("confirm", c).await.expect("confirm");
                }
                published[q].fetch_add(64, Ordering::Relaxed);
            }
            let _ = conn.close(200, "done".into()).await;
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    // Every message reaches a consumer; a lost wake-up leaves the count stuck below.
    let total: u64 = published.iter().map(|p| p.load(Ordering::Relaxed)).sum();
    assert!(total > 0);
    let mut last = (0, Instant::now());
    loop {
        let got: u64 = received.iter().map(|r| r.load(Ordering::Relaxed)).sum();
        if got >= total {
            assert_eq!(got, total, "more deliveries than publishes");
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        }
        let ready: u64 = (0..QUEUES)
            .filter_map(|q| queue_counts(&b, &format!("stress-{q}")))
            .map(|(r, _)| r)
            .sum();
        assert!(
            last.1.elapsed() < Duration::from_secs(10),
            "consumers stalled: {got} of {total} delivered, {ready} ready in the queues"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{total} messages of {BODY} bytes through {QUEUES} queues in {secs} s");
    for c in consumers {
        c.abort();
    }
}
