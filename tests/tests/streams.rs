//! Streams (`x-queue-type: stream`) over AMQP 0-9-1 with a real client (lapin) over real
//! sockets: declarations and their 406s (texts checked against RabbitMQ 4.0.5), every
//! `x-stream-offset` kind, the `x-stream-offset` header, several consumers replaying one
//! stream, credit from acks, nacks and rejects, retention by size, by age and by policy,
//! filtering, and a restart. `kill -9` is in `crates/warren/tests/streams_crash.rs`.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use warren_tests::*;

fn broker(dir: &TempDir) -> TestBroker {
    TestBroker::with_backend(dir.path(), FileBackend::shared())
}

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut v = vec![("x-queue-type", long("stream"))];
    v.extend(extra.iter().cloned());
    table(&v)
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) -> lapin::Queue {
    declare_durable_args(ch, name, stream_args(extra)).await
}

async fn try_declare(
    ch: &Channel,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within("queue_declare", ch.queue_declare(name.into(), opts, args)).await
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn offset_arg(v: AMQPValue) -> FieldTable {
    table(&[("x-stream-offset", v)])
}

/// The `x-stream-offset` header of a delivery.
fn offset_of(d: &lapin::message::Delivery) -> i64 {
    let headers = d.properties.headers().as_ref().expect("headers");
    match headers.inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset header: {other:?}"),
    }
}

/// Publishes `bodies` with confirms (persistent or not: a stream keeps both).
async fn publish_all(ch: &Channel, queue: &str, bodies: impl IntoIterator<Item = String>) {
    for b in bodies {
        publish_confirmed(ch, "", queue, b.as_bytes()).await;
    }
}

/// Takes `n` deliveries, acking each; returns (offset header, body).
async fn take(c: &mut Consumer, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(c).await;
        out.push((offset_of(&d), body(&d)));
        ack(&d).await;
    }
    out
}

fn expected(range: std::ops::Range<i64>) -> Vec<(i64, String)> {
    range.map(|i| (i, format!("m{i}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_are_checked_as_rabbitmq_does() {
    let dir = TempDir::new("stream-declare");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let refused = |text: &str| format!("PRECONDITION_FAILED - {text}");
    let cases: Vec<(&str, QueueDeclareOptions, FieldTable, String)> = vec![
        (
            "s",
            QueueDeclareOptions::default(),
            stream_args(&[]),
            refused("invalid property 'non-durable' for queue 's' in vhost '/'"),
        ),
        (
            "s",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            stream_args(&[]),
            refused("invalid property 'exclusive-owner' for queue 's' in vhost '/'"),
        ),
        (
            "s",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            stream_args(&[]),
            refused("invalid property 'auto-delete' for queue 's' in vhost '/'"),
        ),
        (
            "",
            durable(),
            stream_args(&[]),
            refused("Cannot declare a server-named queue for type rabbit_stream_queue"),
        ),
        (
            "s",
            durable(),
            stream_args(&[("x-max-age", long("10x"))]),
            refused("invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age"),
        ),
        (
            "s",
            durable(),
            stream_args(&[("x-max-age", AMQPValue::LongInt(5))]),
            refused("invalid arg 'x-max-age' for queue 's' in vhost '/': {unacceptable_type,signedint}"),
        ),
        (
            "s",
            durable(),
            stream_args(&[("x-max-length-bytes", int(-1))]),
            refused("invalid arg 'x-max-length-bytes' for queue 's' in vhost '/': {value_negative,-1}"),
        ),
        (
            "s",
            durable(),
            stream_args(&[("x-queue-leader-locator", long("nope"))]),
            refused("invalid arg 'x-queue-leader-locator' for queue 's' in vhost '/': invalid_queue_locator_arg"),
        ),
    ];
    for (name, opts, args, text) in cases {
        let ch = channel(&conn).await;
        let got = expect_code(try_declare(&ch, name, opts, args).await, 406);
        assert_eq!(got, text);
    }
    for (arg, v) in [
        ("x-dead-letter-exchange", long("dlx")),
        ("x-dead-letter-routing-key", long("k")),
        ("x-message-ttl", int(1000)),
        ("x-expires", int(1000)),
        ("x-max-priority", int(5)),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ("x-delivery-limit", int(3)),
        ("x-overflow", long("reject-publish")),
        ("x-max-length", int(10)),
    ] {
        let ch = channel(&conn).await;
        let got = expect_code(
            try_declare(&ch, "s", durable(), stream_args(&[(arg, v)])).await,
            406,
        );
        assert_eq!(
            got,
            refused(&format!(
                "invalid arg '{arg}' for queue 's' in vhost '/' of queue type rabbit_stream_queue"
            ))
        );
    }
    // What a stream accepts.
    let ch = channel(&conn).await;
    let args = [
        ("x-max-length-bytes", int(1_000_000)),
        ("x-max-age", long("7D")),
        ("x-stream-max-segment-size-bytes", int(100_000)),
        ("x-initial-cluster-size", int(3)),
        ("x-queue-leader-locator", long("balanced")),
    ];
    declare_stream(&ch, "s", &args).await;
    declare_stream(&ch, "s", &args).await;
    let got = expect_code(
        try_declare(
            &ch,
            "s",
            durable(),
            stream_args(&[("x-max-age", long("1D"))]),
        )
        .await,
        406,
    );
    assert_eq!(
        got,
        refused("inequivalent arg 'x-max-length-bytes' for queue 's' in vhost '/': received none but current is the value '1000000' of type 'long'")
    );
    let ch = channel(&conn).await;
    let mut other = args.to_vec();
    other[1] = ("x-max-age", long("1D"));
    let got = expect_code(
        try_declare(&ch, "s", durable(), stream_args(&other)).await,
        406,
    );
    assert_eq!(
        got,
        refused("inequivalent arg 'x-max-age' for queue 's' in vhost '/': received '1D' but current is '7D'")
    );
    let ch = channel(&conn).await;
    declare_stream(&ch, "plain", &[]).await;
    let got = expect_code(try_declare(&ch, "plain", durable(), no_args()).await, 406);
    assert_eq!(
        got,
        refused("inequivalent arg 'x-queue-type' for queue 'plain' in vhost '/': received 'classic' but current is 'stream'")
    );
    let q = b.broker.vhost("/").unwrap().queue("s").unwrap();
    assert_eq!(q.queue_type(), "stream");
    assert!(q.stream().is_some());
    drop(q);
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_need_prefetch_and_manual_acks_and_get_and_purge_are_refused() {
    let dir = TempDir::new("stream-consume-rules");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "s", &[]).await;
    confirm_select(&ch).await;
    publish_all(&ch, "s", (0..3).map(|i| format!("m{i}"))).await;
    let r = within(
        "consume",
        ch.basic_consume(
            "s".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    assert_eq!(
        expect_code(r, 406),
        "PRECONDITION_FAILED - consumer prefetch count is not set for stream queue 's' in vhost '/'"
    );
    // A channel-wide (global) prefetch is not a consumer prefetch.
    let ch = channel(&conn).await;
    qos(&ch, 10, true).await;
    let r = within(
        "consume",
        ch.basic_consume(
            "s".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 406);
    // basic.get and queue.purge close the connection with 540, as RabbitMQ does.
    let ch = channel(&conn).await;
    let r = within("get", ch.basic_get("s".into(), Default::default())).await;
    assert_eq!(
        expect_code(r, 540),
        "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'"
    );
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let r = within("purge", ch.queue_purge("s".into(), Default::default())).await;
    assert_eq!(
        expect_code(r, 540),
        "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue 's' in vhost '/'"
    );
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    qos(&ch, 10, false).await;
    let r = within(
        "consume",
        ch.basic_consume(
            "s".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await;
    assert_eq!(
        expect_code(r, 540),
        "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queue 's' in vhost '/'"
    );
    // Nothing was consumed away.
    assert_eq!(queue_counts(&b, "s"), Some((3, 0)));
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offset_kind_starts_where_it_says() {
    let dir = TempDir::new("stream-offsets");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    // Small segments, so that seeks cross several of them.
    declare_stream(&ch, "s", &[("x-stream-max-segment-size-bytes", int(1024))]).await;
    confirm_select(&ch).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    publish_all(&ch, "s", (0..40).map(|i| format!("m{i}"))).await;
    let extent = b
        .broker
        .vhost("/")
        .unwrap()
        .queue("s")
        .unwrap()
        .stream()
        .unwrap()
        .extent();
    assert!(extent.2 >= 2, "several segments: {extent:?}");
    assert_eq!(queue_counts(&b, "s"), Some((40, 0)));

    let c_ch = channel(&conn).await;
    qos(&c_ch, 100, false).await;
    let mut first = consume_args(&c_ch, "s", "first", offset_arg(long("first"))).await;
    assert_eq!(take(&mut first, 40).await, expected(0..40));
    let mut numeric = consume_args(&c_ch, "s", "num", offset_arg(int(25))).await;
    assert_eq!(take(&mut numeric, 15).await, expected(25..40));
    let mut last = consume_args(&c_ch, "s", "last", offset_arg(long("last"))).await;
    assert_eq!(take(&mut last, 1).await, expected(39..40));
    let mut next_ = consume_args(&c_ch, "s", "next", offset_arg(long("next"))).await;
    let mut default = consume_args(&c_ch, "s", "default", no_args()).await;
    // A timestamp (AMQP timestamp, seconds) before the first publish: everything.
    let mut ts = consume_args(
        &c_ch,
        "s",
        "ts",
        offset_arg(AMQPValue::Timestamp(before.saturating_sub(1))),
    )
    .await;
    assert_eq!(take(&mut ts, 40).await, expected(0..40));
    // An interval: everything appended in the last 30 minutes.
    let mut interval = consume_args(&c_ch, "s", "interval", offset_arg(long("30m"))).await;
    assert_eq!(take(&mut interval, 40).await, expected(0..40));
    // A timestamp in the future reads from the end (as osiris: it attaches at the next offset),
    // and an offset not written yet waits for it.
    let mut future = consume_args(
        &c_ch,
        "s",
        "future",
        offset_arg(AMQPValue::Timestamp(before + 3600)),
    )
    .await;
    let mut ahead = consume_args(&c_ch, "s", "ahead", offset_arg(int(41))).await;
    // A negative offset reads from the first (as osiris does).
    let mut negative = consume_args(&c_ch, "s", "neg", offset_arg(int(-5))).await;
    assert_eq!(take(&mut negative, 40).await, expected(0..40));
    for c in [
        &mut first,
        &mut numeric,
        &mut last,
        &mut next_,
        &mut default,
        &mut future,
        &mut ahead,
        &mut ts,
    ] {
        assert_no_delivery(c).await;
    }
    // New messages reach the consumers at the tail.
    publish_all(&ch, "s", (40..43).map(|i| format!("m{i}"))).await;
    for c in [
        &mut first,
        &mut numeric,
        &mut last,
        &mut next_,
        &mut default,
        &mut ts,
        &mut interval,
        &mut negative,
    ] {
        assert_eq!(take(c, 3).await, expected(40..43));
    }
    assert_eq!(take(&mut ahead, 2).await, expected(41..43));
    assert_eq!(take(&mut future, 3).await, expected(40..43));
    // Consuming took nothing away.
    assert_eq!(queue_counts(&b, "s"), Some((43, 0)));
    // A bad offset string is refused.
    let bad_ch = channel(&conn).await;
    qos(&bad_ch, 1, false).await;
    let r = within(
        "consume",
        bad_ch.basic_consume(
            "s".into(),
            "bad".into(),
            BasicConsumeOptions::default(),
            offset_arg(long("bogus")),
        ),
    )
    .await;
    expect_code(r, 406);
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_consumers_replay_at_their_own_pace_and_acks_give_credit() {
    let dir = TempDir::new("stream-replay");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "s", &[("x-stream-max-segment-size-bytes", int(4096))]).await;
    confirm_select(&ch).await;
    const N: i64 = 300;
    publish_all(&ch, "s", (0..N).map(|i| format!("m{i}"))).await;

    // A consumer with prefetch 5 that does not ack gets exactly 5.
    let slow_ch = channel(&conn).await;
    qos(&slow_ch, 5, false).await;
    let mut slow = consume_args(&slow_ch, "s", "slow", offset_arg(long("first"))).await;
    let held: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next(&mut slow).await);
        }
        v
    };
    assert_no_delivery(&mut slow).await;

    // Three more read the whole stream concurrently, each on its own channel.
    let mut tasks = Vec::new();
    for k in 0..3 {
        let c_ch = channel(&conn).await;
        tasks.push(tokio::spawn(async move {
            qos(&c_ch, 7 + k, false).await;
            let mut c = consume_args(&c_ch, "s", &format!("r{k}"), offset_arg(long("first"))).await;
            take(&mut c, N as usize).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), expected(0..N));
    }
    // The slow one goes on from where it was once it acks: acks give credit back, and a
    // nack or reject too (never a redelivery: a stream does not requeue).
    assert_eq!(offset_of(&held[4]), 4);
    ack(&held[0]).await;
    let d = next(&mut slow).await;
    assert_eq!((offset_of(&d), d.redelivered), (5, false));
    within(
        "nack",
        held[1].nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(offset_of(&next(&mut slow).await), 6);
    within(
        "reject",
        held[2].reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    assert_eq!(offset_of(&next(&mut slow).await), 7);
    assert_no_delivery(&mut slow).await;
    assert_eq!(queue_counts(&b, "s"), Some((N as u64, 0)));
    // The replaying consumers' channels went with their tasks.
    assert_eq!(consumer_count(&b, "s"), 1);
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_removes_whole_old_segments() {
    let dir = TempDir::new("stream-retention-size");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_stream(
        &ch,
        "s",
        &[
            ("x-stream-max-segment-size-bytes", int(2000)),
            ("x-max-length-bytes", int(6000)),
        ],
    )
    .await;
    confirm_select(&ch).await;
    let pad = "x".repeat(150);
    publish_all(&ch, "s", (0..200).map(|i| format!("m{i}{pad}"))).await;
    let s = b.broker.vhost("/").unwrap().queue("s").unwrap();
    let (first, next_offset, segments, bytes) = s.stream().unwrap().extent();
    assert_eq!(next_offset, 200);
    assert!(first > 100, "old segments removed: first offset {first}");
    // The limit holds, up to the segment being written (never removed).
    assert!(bytes <= 6000 + 2000, "{bytes} bytes in {segments} segments");
    assert_eq!(queue_counts(&b, "s"), Some((200 - first, 0)));
    // `first` is the oldest message still there.
    let c_ch = channel(&conn).await;
    qos(&c_ch, 500, false).await;
    let mut c = consume_args(&c_ch, "s", "c", offset_arg(long("first"))).await;
    let got = take(&mut c, (200 - first) as usize).await;
    assert_eq!(got[0].0, first as i64);
    assert_eq!(got.last().unwrap().0, 199);
    // A numeric offset that is gone starts at the first retained.
    let mut c2 = consume_args(&c_ch, "s", "c2", offset_arg(int(3))).await;
    assert_eq!(offset_of(&next(&mut c2).await), first as i64);
    drop(s);
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_and_by_policy() {
    let dir = TempDir::new("stream-retention-age");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_stream(
        &ch,
        "aged",
        &[
            ("x-stream-max-segment-size-bytes", int(1000)),
            ("x-max-age", long("1s")),
        ],
    )
    .await;
    confirm_select(&ch).await;
    let pad = "y".repeat(100);
    publish_all(&ch, "aged", (0..30).map(|i| format!("m{i}{pad}"))).await;
    let aged = b.broker.vhost("/").unwrap().queue("aged").unwrap();
    assert_eq!(aged.stream().unwrap().extent().0, 0, "nothing is old yet");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    // Retention runs when a segment fills (as osiris): the old segments go, the new stay.
    publish_all(&ch, "aged", (30..45).map(|i| format!("m{i}{pad}"))).await;
    let first = aged.stream().unwrap().extent().0;
    assert!((28..=30).contains(&first), "first offset {first}");

    // A policy: max-length-bytes wins over the argument (as RabbitMQ's streams).
    declare_stream(
        &ch,
        "pol",
        &[
            ("x-stream-max-segment-size-bytes", int(1000)),
            ("x-max-length-bytes", int(1_000_000)),
        ],
    )
    .await;
    publish_all(&ch, "pol", (0..60).map(|i| format!("m{i}{pad}"))).await;
    let pol = b.broker.vhost("/").unwrap().queue("pol").unwrap();
    assert_eq!(pol.stream().unwrap().extent().0, 0);
    let mut def = warren_protocol::FieldTable::new();
    def.insert("max-length-bytes", warren_protocol::FieldValue::I64(2500));
    let policy = warren_broker::policy::Policy::new("cap", "^pol$", "queues", 0, def).unwrap();
    b.broker.vhost("/").unwrap().set_policy(policy, false);
    let (first, _, _, bytes) = pol.stream().unwrap().extent();
    assert!(first > 30, "first offset {first}");
    assert!(bytes <= 3500, "{bytes}");
    assert_eq!(queue_counts(&b, "pol"), Some((60 - first, 0)));
    drop((aged, pol));
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtering_by_x_stream_filter_value() {
    let dir = TempDir::new("stream-filter");
    let b = broker(&dir);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_stream(&ch, "s", &[]).await;
    confirm_select(&ch).await;
    for (i, v) in ["red", "blue", "", "red", "green", ""].iter().enumerate() {
        let props = if v.is_empty() {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_headers(table(&[("x-stream-filter-value", long(v))]))
        };
        let c = publish_for_confirm(&ch, "", "s", format!("m{i}").as_bytes(), props).await;
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
    let c_ch = channel(&conn).await;
    qos(&c_ch, 10, false).await;
    let mut red = consume_args(
        &c_ch,
        "s",
        "red",
        table(&[
            ("x-stream-offset", long("first")),
            ("x-stream-filter", long("red")),
        ]),
    )
    .await;
    assert_eq!(
        take(&mut red, 2).await,
        vec![(0, "m0".into()), (3, "m3".into())]
    );
    assert_no_delivery(&mut red).await;
    let mut blue_or_none = consume_args(
        &c_ch,
        "s",
        "blue",
        table(&[
            ("x-stream-offset", long("first")),
            (
                "x-stream-filter",
                AMQPValue::FieldArray(vec![long("blue"), long("green")].into()),
            ),
            ("x-stream-match-unfiltered", AMQPValue::Boolean(true)),
        ]),
    )
    .await;
    let got: Vec<i64> = take(&mut blue_or_none, 4)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(got, vec![1, 2, 4, 5]);
    drop(conn);
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_comes_back_after_a_restart_and_offsets_go_on() {
    let dir = TempDir::new("stream-restart");
    let b = broker(&dir);
    {
        let (_conn, ch) = open(&b).await;
        declare_stream(&ch, "s", &[("x-stream-max-segment-size-bytes", int(1500))]).await;
        confirm_select(&ch).await;
        publish_all(&ch, "s", (0..50).map(|i| format!("m{i}"))).await;
    }
    b.stop();
    let b = broker(&dir);
    assert_eq!(queue_counts(&b, "s"), Some((50, 0)));
    let q = b.broker.vhost("/").unwrap().queue("s").unwrap();
    assert_eq!(q.queue_type(), "stream");
    let (_conn, ch) = open(&b).await;
    confirm_select(&ch).await;
    publish_all(&ch, "s", (50..55).map(|i| format!("m{i}"))).await;
    qos(&ch, 100, false).await;
    let mut c = consume_args(&ch, "s", "c", offset_arg(long("first"))).await;
    assert_eq!(take(&mut c, 55).await, expected(0..55));
    // Deleting the stream removes its log and cancels its consumers.
    let log_dir = dir.path().join("queues").join("q%2F").join("qs");
    assert!(log_dir.exists(), "{}", log_dir.display());
    within("delete", ch.queue_delete("s".into(), Default::default()))
        .await
        .unwrap();
    assert!(!queue_exists(&b, "s"));
    assert!(!log_dir.exists());
    assert!(
        within("cancelled", c.next()).await.is_none(),
        "the consumer is cancelled"
    );
    drop(q);
    b.stop();
}

/// By hand: `WARREN_STREAM_BENCH_URL=amqp://… WARREN_STREAM_BENCH_QUEUE=name cargo test -p
/// warren-tests --test streams replay_throughput -- --ignored --nocapture` replays an existing
/// stream from `first` with ten consumers at once (prefetch 1000, acks every 100 with
/// `multiple`) against any broker, and prints the messages per second.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn replay_throughput() {
    use lapin::options::BasicAckOptions;
    let url = std::env::var("WARREN_STREAM_BENCH_URL").expect("WARREN_STREAM_BENCH_URL");
    let queue = std::env::var("WARREN_STREAM_BENCH_QUEUE").expect("WARREN_STREAM_BENCH_QUEUE");
    let count: u64 = std::env::var("WARREN_STREAM_BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("WARREN_STREAM_BENCH_COUNT: messages to read per consumer");
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for k in 0..10 {
        let (url, queue) = (url.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let conn = connect_url(&url).await;
            let ch = channel(&conn).await;
            qos(&ch, 1000, false).await;
            let mut c = consume_args(
                &ch,
                &queue,
                &format!("bench-{k}"),
                offset_arg(long("first")),
            )
            .await;
            let mut n = 0u64;
            while n < count {
                let d = match tokio::time::timeout(std::time::Duration::from_secs(30), c.next())
                    .await
                {
                    Ok(Some(Ok(d))) => d,
                    other => panic!("consumer {k} after {n}: {other:?}"),
                };
                n += 1;
                if n.is_multiple_of(100) || n == count {
                    d.ack(BasicAckOptions { multiple: true }).await.unwrap();
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replay: 10 consumers, {total} messages in {secs:.2} s: {:.0} msg/s in total",
        total as f64 / secs
    );
}
