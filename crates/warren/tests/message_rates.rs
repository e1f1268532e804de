//! `message_stats` in the management API, as RabbitMQ's: counts and their `_details.rate`
//! on the overview, vhosts, queues, channels and connections (bytes), sampled every
//! `collect_statistics_interval` (200 ms here), with the history `msg_rates_age` /
//! `msg_rates_incr` ask for. Traffic from a real client (lapin) against the real binary.

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use serde_json::Value;
use std::time::{Duration, Instant};
use warren_tests::*;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

fn get(mgmt: std::net::SocketAddr, path: &str) -> Value {
    let (status, v) = warren_tests::mgmt::http(
        &format!("http://{mgmt}"),
        "GET",
        path,
        None,
        Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
    );
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn stat(v: &Value, name: &str) -> u64 {
    v["message_stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no message_stats.{name} in {v}"))
}

fn rate(v: &Value, name: &str) -> f64 {
    v["message_stats"][format!("{name}_details")]["rate"]
        .as_f64()
        .unwrap_or_else(|| panic!("no message_stats.{name}_details.rate in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_stats_count_and_rate_what_clients_do() {
    let dir = TempDir::new("rates");
    let conf = dir.join("warren.conf");
    std::fs::write(&conf, "collect_statistics_interval = 200\n").unwrap();
    let broker = BrokerProcess::start(
        WARREN,
        &dir.join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mgmt = broker.listener("http").expect("management listener");
    let conn = connect_url(&broker.url()).await;
    let ch = channel(&conn).await;
    declare(&ch, "rated").await;
    confirm_select(&ch).await;

    // Publish steadily for a while: the rates show it while it lasts.
    let started = Instant::now();
    let mut sent = 0u64;
    let mut seen_rate = 0.0f64;
    while started.elapsed() < Duration::from_millis(1500) {
        for _ in 0..20 {
            publish_confirmed(&ch, "", "rated", b"payload").await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if started.elapsed() > Duration::from_millis(700) && seen_rate == 0.0 {
            seen_rate = rate(&get(mgmt, "/api/overview"), "publish");
        }
    }
    assert!(seen_rate > 0.0, "a publish rate while publishing");

    // Consume half with acks, a few with basic.get no-ack; unroutable publishes are dropped.
    let half = sent / 2;
    qos(&ch, 50, false).await;
    let mut c = consume(&ch, "rated", "rater").await;
    for _ in 0..half {
        let d = within("delivery", c.next()).await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    within(
        "cancel",
        ch.basic_cancel("rater".into(), Default::default()),
    )
    .await
    .unwrap();
    let ch2 = channel(&conn).await;
    for _ in 0..3 {
        let m = within(
            "get",
            ch2.basic_get(
                "rated".into(),
                lapin::options::BasicGetOptions { no_ack: true },
            ),
        )
        .await
        .unwrap();
        assert!(m.is_some());
    }
    publish(&ch2, "", "no-such-queue", b"x").await;

    // Once two samples have passed with no traffic: exact counts, rates back to 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    let overview = loop {
        let o = get(mgmt, "/api/overview");
        if stat(&o, "ack") == half && stat(&o, "get_no_ack") == 3 && rate(&o, "publish") == 0.0 {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "counts never settled: {}",
            o["message_stats"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stat(&overview, "publish"), sent + 1);
    assert_eq!(stat(&overview, "confirm"), sent);
    assert_eq!(stat(&overview, "drop_unroutable"), 1);
    // The consumer held up to its prefetch (50) beyond what it acked when it was cancelled.
    let delivered = stat(&overview, "deliver");
    assert!(
        (half..=half + 50).contains(&delivered),
        "{delivered} delivered, {half} acked"
    );
    assert_eq!(stat(&overview, "deliver_get"), delivered + 3);
    assert_eq!(overview["rates_mode"], "basic");

    let vhost = get(mgmt, "/api/vhosts/%2F");
    assert_eq!(stat(&vhost, "publish"), sent + 1);

    let q = get(mgmt, "/api/queues/%2F/rated");
    assert_eq!(stat(&q, "publish"), sent);
    assert_eq!(stat(&q, "deliver"), delivered);
    assert_eq!(stat(&q, "get_no_ack"), 3);
    assert_eq!(stat(&q, "deliver_get"), delivered + 3);
    assert_eq!(
        q["messages_unacknowledged"].as_u64(),
        Some(delivered - half)
    );
    assert_eq!(stat(&q, "ack"), half);
    assert_eq!(rate(&q, "publish"), 0.0);

    let chans = get(mgmt, "/api/channels");
    let first = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 1)
        .expect("channel 1");
    assert_eq!(stat(first, "publish"), sent);
    assert_eq!(stat(first, "ack"), half);

    let conns = get(mgmt, "/api/connections");
    let c0 = &conns[0];
    assert!(c0["recv_oct"].as_u64().unwrap() > sent * 7, "{c0}");
    assert!(c0["send_oct"].as_u64().unwrap() > 0, "{c0}");
    assert!(c0["recv_oct_details"]["rate"].is_number());

    // History: samples of the last minute, newest first, one per second at most.
    // (The newest sample may predate the last publish by one sampling interval: wait for it.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let (o, samples) = loop {
        let o = get(mgmt, "/api/overview?msg_rates_age=60&msg_rates_incr=1");
        let samples = o["message_stats"]["publish_details"]["samples"]
            .as_array()
            .expect("samples")
            .clone();
        if samples.first().and_then(|s| s["sample"].as_u64()) == Some(sent + 1) {
            break (o, samples);
        }
        assert!(
            Instant::now() < deadline,
            "the newest sample never counted every publish: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(samples.len() >= 2, "{samples:?}");
    let ts: Vec<u64> = samples
        .iter()
        .map(|s| s["timestamp"].as_u64().unwrap())
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] >= w[1] + 1000),
        "newest first, 1 s apart: {ts:?}"
    );
    assert_eq!(samples[0]["sample"].as_u64(), Some(sent + 1));
    assert!(o["message_stats"]["publish_details"]["avg_rate"].is_number());

    // A closed channel's counts stay in the totals.
    ch.close(200, "bye".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stat(&get(mgmt, "/api/overview"), "publish"), sent + 1);
}
