//! Hostile clients: garbage bytes, truncated frames, huge declared sizes, hundreds of thousands
//! of channel.open/close calls, an unacked flood. The broker answers each as RabbitMQ does,
//! keeps serving a well-behaved client throughout, and its memory stays bounded.

use tokio::io::AsyncReadExt;
use warren_tests::raw::{method_frame, RawClient};
use warren_tests::*;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The well-behaved client still gets a message through, promptly.
async fn still_serving(ch: &lapin::Channel, c: &mut lapin::Consumer, n: usize) {
    let body = format!("steady {n}");
    publish(ch, "", "steady", body.as_bytes()).await;
    assert_eq!(warren_tests::body(&next(c).await), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_disturb_a_well_behaved_one() {
    let b = TestBroker::start();
    let (_good_conn, good) = open(&b).await;
    declare(&good, "steady").await;
    let mut steady = consume_no_ack(&good, "steady", "steady").await;
    still_serving(&good, &mut steady, 0).await;
    let rss_before = rss_kb();

    // Garbage after a valid protocol header: connection.close 501 (unknown frame type).
    let mut g = RawClient::connect(b.addr).await;
    g.handshake().await;
    g.send(&[0x42; 64]).await;
    g.expect_connection_close(501).await;
    still_serving(&good, &mut steady, 1).await;

    // A truncated frame, then the client vanishes: nothing is left behind.
    let mut t = RawClient::connect(b.addr).await;
    t.handshake().await;
    let open_frame = method_frame(1, 20, 10, &[0]);
    t.send(&open_frame[..open_frame.len() - 3]).await;
    drop(t);
    still_serving(&good, &mut steady, 2).await;

    // A frame announcing 2 GiB: refused from its header (501), nothing buffered for it.
    let mut h = RawClient::connect(b.addr).await;
    h.handshake().await;
    h.send(&[1, 0, 1, 0x7f, 0xff, 0xff, 0xf0]).await;
    h.expect_connection_close(501).await;
    still_serving(&good, &mut steady, 3).await;

    // 100,000 channel.open / channel.close pairs (200,000 calls), pipelined on one connection.
    let mut churn = RawClient::connect(b.addr).await;
    churn.handshake().await;
    let mut burst = Vec::new();
    for _ in 0..1000 {
        burst.extend_from_slice(&method_frame(1, 20, 10, &[0]));
        burst.extend_from_slice(&method_frame(1, 20, 40, &[0, 200, 0, 0, 0, 0, 0, 0]));
    }
    let (mut rd, mut wr) = churn.stream.into_split();
    // open-ok is 16 bytes on the wire, close-ok 12.
    let expected = 100_000usize * 28;
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < expected {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    for round in 0..100 {
        within(
            "churn write",
            tokio::io::AsyncWriteExt::write_all(&mut wr, &burst),
        )
        .await
        .expect("write burst");
        if round % 25 == 0 {
            still_serving(&good, &mut steady, 100 + round).await;
        }
    }
    let got = within("churn replies", reader).await.expect("reader task");
    assert_eq!(
        got, expected,
        "every channel.open and channel.close answered"
    );
    still_serving(&good, &mut steady, 4).await;

    // An unacked flood: 20,000 messages to a consumer that never acks; when it goes, they all
    // come back as ready.
    let (_f_conn, f_ch) = open(&b).await;
    declare(&f_ch, "flood").await;
    let mut hog = consume(&f_ch, "flood", "hog").await;
    for i in 0..20_000 {
        publish(&good, "", "flood", format!("f{i}").as_bytes()).await;
    }
    let _first = next(&mut hog).await;
    eventually("all flood messages unacked", || {
        queue_counts(&b, "flood") == Some((0, 20_000))
    })
    .await;
    still_serving(&good, &mut steady, 5).await;
    drop(hog);
    within("close flood connection", _f_conn.close(200, "bye".into()))
        .await
        .expect("close");
    eventually("flood requeued", || {
        queue_counts(&b, "flood") == Some((20_000, 0))
    })
    .await;
    still_serving(&good, &mut steady, 6).await;

    let grown = rss_kb().saturating_sub(rss_before);
    assert!(grown < 200 * 1024, "process RSS grew by {grown} kB");
}
