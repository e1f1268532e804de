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

/// Publishes `n` persistent messages through `exchange` with `key`, each confirmed.
async fn publish_persistent(ch: &lapin::Channel, exchange: &str, key: &str, n: usize) {
    for i in 0..n {
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        let c = publish_for_confirm(ch, exchange, key, format!("m{i}").as_bytes(), props).await;
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
}

/// `message_stats.{name}_details.samples`, newest first, as (value, timestamp).
fn samples(v: &Value, name: &str) -> Vec<(u64, u64)> {
    let details = if v["message_stats"].is_object() {
        &v["message_stats"][format!("{name}_details")]
    } else {
        &v[format!("{name}_details")]
    };
    details["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no {name}_details.samples in {v}"))
        .iter()
        .map(|s| {
            (
                s["sample"].as_u64().unwrap(),
                s["timestamp"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until `path`'s JSON satisfies `ok`; returns it.
async fn poll(mgmt: std::net::SocketAddr, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get(mgmt, path);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never settled: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_count_publishes_in_and_out_queues_count_disk_reads_and_writes_and_every_object_has_a_history(
) {
    let dir = TempDir::new("rates-objects");
    let conf = dir.join("warren.conf");
    std::fs::write(&conf, "collect_statistics_interval = 200\n").unwrap();
    let conf_arg = ["--config", conf.to_str().unwrap()];
    let mut broker = BrokerProcess::start(WARREN, &dir.join("data"), &conf_arg);
    let mgmt = broker.listener("http").expect("management listener");
    let conn = connect_url(&broker.url()).await;
    let ch = channel(&conn).await;
    declare_durable(&ch, "disk-q").await;
    declare(&ch, "mem-q").await;
    declare_exchange(&ch, "fan", lapin::ExchangeKind::Fanout).await;
    bind(&ch, "disk-q", "fan", "").await;
    bind(&ch, "mem-q", "fan", "").await;
    confirm_select(&ch).await;

    // Through the fanout for a while (a rate shows), then the default exchange, then a
    // publish no queue takes.
    let started = Instant::now();
    let mut fanned = 0u64;
    let mut seen_rate = 0.0f64;
    while started.elapsed() < Duration::from_millis(1200) {
        publish_persistent(&ch, "fan", "", 5).await;
        fanned += 5;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > Duration::from_millis(600) && seen_rate == 0.0 {
            let x = get(mgmt, "/api/exchanges/%2F/fan");
            seen_rate = x["message_stats"]["publish_in_details"]["rate"]
                .as_f64()
                .unwrap_or_else(|| panic!("no publish_in rate: {x}"));
        }
    }
    assert!(seen_rate > 0.0, "a publish_in rate while publishing");
    for _ in 0..4 {
        publish_confirmed(&ch, "", "mem-q", b"direct").await;
    }
    publish_confirmed(&ch, "amq.direct", "nowhere", b"lost").await;

    // A second channel publishes into the fanout too; the counts of both add up, and stay
    // once it is closed.
    let ch2 = channel(&conn).await;
    confirm_select(&ch2).await;
    publish_persistent(&ch2, "fan", "", 3).await;
    fanned += 3;
    ch2.close(200, "bye".into()).await.unwrap();

    let fan = poll(mgmt, "/api/exchanges/%2F/fan", |x| {
        x["message_stats"]["publish_in"] == fanned
            && x["message_stats"]["publish_in_details"]["rate"] == 0.0
    })
    .await;
    assert_eq!(stat(&fan, "publish_out"), 2 * fanned, "two queues each");
    let default = get(mgmt, "/api/exchanges/%2F/amq.default");
    assert_eq!(stat(&default, "publish_in"), 4);
    assert_eq!(stat(&default, "publish_out"), 4);
    let direct = get(mgmt, "/api/exchanges/%2F/amq.direct");
    assert_eq!(stat(&direct, "publish_in"), 1);
    assert_eq!(stat(&direct, "publish_out"), 0, "routed nowhere");
    // The list shows the same, and an exchange nothing was published to counts 0.
    let list = get(mgmt, "/api/exchanges/%2F");
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {list}"))
            .clone()
    };
    assert_eq!(stat(&by_name("fan"), "publish_in"), fanned);
    assert_eq!(stat(&by_name("amq.topic"), "publish_in"), 0);

    // Persistent messages in the durable queue were written to its store; the transient
    // queue wrote nothing.
    let disk_q = get(mgmt, "/api/queues/%2F/disk-q");
    assert_eq!(stat(&disk_q, "disk_writes"), fanned);
    assert_eq!(stat(&disk_q, "disk_reads"), 0);
    assert_eq!(stat(&get(mgmt, "/api/queues/%2F/mem-q"), "disk_writes"), 0);
    let overview = get(mgmt, "/api/overview");
    assert_eq!(stat(&overview, "disk_writes"), fanned);
    assert!(overview["message_stats"]["disk_writes_details"]["rate"].is_number());
    assert_eq!(stat(&get(mgmt, "/api/vhosts/%2F"), "disk_writes"), fanned);

    // Every object has its history, newest first, the newest sample counting everything.
    let h = "msg_rates_age=60&msg_rates_incr=1";
    let fan = poll(mgmt, &format!("/api/exchanges/%2F/fan?{h}"), |x| {
        samples(x, "publish_in").first().map(|s| s.0) == Some(fanned)
    })
    .await;
    let fan_samples = samples(&fan, "publish_in");
    assert!(fan_samples.len() >= 2, "{fan_samples:?}");
    assert!(
        fan_samples.windows(2).all(|w| w[0].1 >= w[1].1 + 1000),
        "newest first, at least a second apart: {fan_samples:?}"
    );
    assert!(
        fan_samples.windows(2).all(|w| w[0].0 >= w[1].0),
        "a counter's samples never go down: {fan_samples:?}"
    );
    assert!(fan["message_stats"]["publish_in_details"]["avg_rate"].is_number());
    let q = poll(mgmt, &format!("/api/queues/%2F/disk-q?{h}"), |q| {
        samples(q, "publish").first().map(|s| s.0) == Some(fanned)
    })
    .await;
    assert!(samples(&q, "disk_writes").len() >= 2);
    // In lists too.
    let qs = get(mgmt, &format!("/api/queues/%2F?{h}"));
    assert!(!samples(&qs[0], "publish").is_empty(), "{qs}");
    let chans = get(mgmt, &format!("/api/channels?{h}"));
    let first = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 1)
        .expect("channel 1");
    assert_eq!(
        samples(first, "publish").first().map(|s| s.0),
        Some(stat(first, "publish"))
    );
    let conns = get(mgmt, &format!("/api/connections?{h}"));
    assert!(!samples(&conns[0], "recv_oct").is_empty(), "{conns}");
    let conn_name = conns[0]["name"].as_str().unwrap().to_string();
    let one = get(
        mgmt,
        &format!(
            "/api/connections/{}?{h}",
            conn_name
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        ),
    );
    assert!(!samples(&one, "send_oct").is_empty(), "{one}");
    let vhost = get(mgmt, &format!("/api/vhosts/%2F?{h}"));
    assert!(!samples(&vhost, "disk_writes").is_empty(), "{vhost}");
    // A deleted exchange's counts go with it: declared again, it starts from 0.
    within(
        "exchange_delete",
        ch.exchange_delete("fan".into(), Default::default()),
    )
    .await
    .unwrap();
    declare_exchange(&ch, "fan", lapin::ExchangeKind::Fanout).await;
    let fan = get(mgmt, "/api/exchanges/%2F/fan");
    assert_eq!(stat(&fan, "publish_in"), 0, "{fan}");
    assert_eq!(stat(&fan, "publish_out"), 0, "{fan}");
    drop(conn);

    // After a restart the durable queue reads its messages back from its store.
    broker.sigterm_and_restart(&conf_arg);
    let mgmt = broker.listener("http").expect("management listener");
    let disk_q = poll(mgmt, "/api/queues/%2F/disk-q", |q| {
        q["messages"].as_u64() == Some(fanned)
    })
    .await;
    assert_eq!(stat(&disk_q, "disk_reads"), fanned);
    assert_eq!(stat(&get(mgmt, "/api/overview"), "disk_reads"), fanned);
}
