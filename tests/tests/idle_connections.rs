//! Connections that go quiet give their buffers back (the read buffer, the outbox and the
//! writer's spare buffer, after a second without traffic) and wake only when a timer is due
//! (no per-connection tick). These check that nothing is lost that way: large messages after
//! an idle spell, heartbeats both ways, a silent client still disconnected in time.

use std::time::{Duration, Instant};
use warren_tests::raw::{method_frame, RawClient};
use warren_tests::*;

/// Bodies of many sizes (small, 64 KiB, several frames, 1 MiB) through a consumer and
/// basic.get, with idle spells long enough for every buffer to be released in between; the
/// client negotiates 1 s heartbeats, so the quiet connection must also keep reading them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_after_large_messages_still_carries_them() {
    let broker = TestBroker::start();
    let conn = connect_url(&format!("{}?heartbeat=1", broker.url())).await;
    let ch = channel(&conn).await;
    declare(&ch, "big").await;
    declare(&ch, "got").await;
    let mut consumer = consume_no_ack(&ch, "big", "c").await;
    for round in 0..3usize {
        for size in [10, 64 * 1024, 300 * 1024, 1 << 20, 3000] {
            let body: Vec<u8> = (0..size).map(|i| (i * 7 + round) as u8).collect();
            publish(&ch, "", "big", &body).await;
            let d = next(&mut consumer).await;
            assert_eq!(d.data.len(), size, "round {round}");
            assert!(
                d.data == body,
                "round {round}: a {size}-byte body came back changed"
            );
            publish(&ch, "", "got", &body).await;
            let g = within("basic.get", async {
                loop {
                    if let Some(m) = get(&ch, "got", true).await {
                        return m;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(
                g.delivery.data == body,
                "round {round}: basic.get of {size} bytes"
            );
        }
        // Past the idle release and two heartbeat timeouts.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(conn.status().connected(), "round {round}: still connected");
    }
}

/// A client that carried a message and then goes silent gets the broker's heartbeats and is
/// disconnected after two missed intervals, not much later (the timer is set to the deadline,
/// not polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_after_traffic_gets_heartbeats_and_is_disconnected() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake_with_heartbeat(1).await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    let started = Instant::now();
    let mut heartbeats = 0;
    let mut opened = false;
    while let Some(f) = raw.read_frame().await {
        match f.kind {
            warren_tests::raw::FRAME_HEARTBEAT => heartbeats += 1,
            warren_tests::raw::FRAME_METHOD if f.method_id() == (20, 11) => opened = true,
            // A connection.close is tolerated; anything else is not.
            _ => assert_eq!(f.method_id(), (10, 50), "unexpected frame"),
        }
    }
    let after = started.elapsed();
    assert!(opened, "channel.open-ok");
    assert!(
        heartbeats >= 2,
        "the broker sends heartbeats on an idle connection: {heartbeats}"
    );
    assert!(
        after >= Duration::from_secs(2),
        "closed too early: {after:?}"
    );
    assert!(after < Duration::from_secs(4), "closed too late: {after:?}");
    eventually("connection unregistered", || {
        broker.broker.connections.is_empty()
    })
    .await;
}
