//! Queue and exchange features beyond the tutorials, with a real client: message TTL (per
//! queue and per message), queue expiry, dead-lettering and the `x-death` history, length
//! limits and overflow modes, the delivery limit, priority queues, consumer priorities, single
//! active consumer, alternate exchanges and direct reply-to — and the ways they combine that
//! bite users (TTL + DLX retry loops, max-length + DLX, priority + prefetch, SAC failover on a
//! dropped connection, reject-publish nacks to a confirming publisher, dead-letter cycles).
//!
//! The broker's timer runs every 50 ms, so TTLs here are 50–200 ms and every wait is bounded.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::Duration;
use warren_tests::*;

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn declare_args(ch: &Channel, name: &str, args: FieldTable) -> lapin::Queue {
    within(
        "queue_declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue_declare {name}: {e}"))
}

/// Publishes in confirm mode and returns whether the broker acked (true) or nacked (false).
async fn publish_confirm(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> bool {
    let confirm = publish_for_confirm(ch, exchange, key, body, props).await;
    let c = within("publisher confirm", confirm).await.expect("confirm");
    c.is_ack()
}

/// Publishes in confirm mode and asserts the ack: the message is in its queues afterwards.
async fn publish_acked(ch: &Channel, key: &str, body: &[u8], props: BasicProperties) {
    assert!(
        publish_confirm(ch, "", key, body, props).await,
        "publish to {key:?} was nacked"
    );
}

/// Like [`drain`], keeping the whole deliveries (for their headers).
async fn drain_deliveries(ch: &Channel, queue: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(m.delivery);
    }
    out
}

async fn reject(d: &Delivery, requeue: bool) {
    within("reject", d.reject(BasicRejectOptions { requeue }))
        .await
        .expect("reject");
}

async fn nack_requeue(d: &Delivery) {
    within(
        "nack",
        d.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        }),
    )
    .await
    .expect("nack");
}

fn ready(broker: &TestBroker, queue: &str) -> u64 {
    queue_counts(broker, queue).map_or(0, |c| c.0)
}

/// Asserts that `cond` holds at every check for `d` (something that must stay true).
async fn stays(what: &str, d: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        assert!(cond(), "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Message TTL and queue expiry
// ---------------------------------------------------------------------------------------------

/// `x-message-ttl`: messages nobody consumed in time leave the queue on their own (the timer
/// removes them from the head), and an expired message is never handed out, not even by a
/// basic.get that comes before the timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_message_ttl_expires_unconsumed_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "ttl", table(&[("x-message-ttl", int(300))])).await;
    confirm_select(&ch).await;
    for i in 0..3 {
        publish_acked(
            &ch,
            "ttl",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(ready(&broker, "ttl"), 3, "fresh messages are kept");
    wait_counts(&broker, "ttl", 0, 0).await;

    // A consumer arriving later gets nothing.
    let mut c = consume(&ch, "ttl", "late").await;
    assert_no_delivery(&mut c).await;

    // A message that is still young is delivered.
    publish(&ch, "", "ttl", b"fresh").await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "fresh");
    ack(&d).await;
}

/// basic.get never returns a message whose TTL has passed, even if the timer has not removed
/// it yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_never_returns_an_expired_message() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "ttl-get", table(&[("x-message-ttl", int(60))])).await;
    // The TTL counts from when the queue took the message: wait for the confirm, so the sleep
    // starts after that.
    confirm_select(&ch).await;
    for _ in 0..20 {
        publish_acked(&ch, "ttl-get", b"old", BasicProperties::default()).await;
        tokio::time::sleep(Duration::from_millis(61)).await;
        assert!(
            get(&ch, "ttl-get", true).await.is_none(),
            "an expired message was returned by basic.get"
        );
    }
}

/// Per-message `expiration` (a string of milliseconds); the queue keeps messages without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_expiration() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "pm").await;
    confirm_select(&ch).await;
    let short = BasicProperties::default().with_expiration("80".into());
    publish_acked(&ch, "pm", b"short", short).await;
    publish_acked(&ch, "pm", b"forever", BasicProperties::default()).await;
    eventually("the expiring message is removed", || {
        ready(&broker, "pm") == 1
    })
    .await;
    assert_eq!(drain(&ch, "pm").await, ["forever"]);
}

/// The shorter of the queue's TTL and the message's own expiration wins. The longer one is a
/// minute, so a broker that applied it (or ignored the shorter) keeps the message well past
/// the two seconds allowed here; a control queue shows a minute-long TTL keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shorter_of_queue_ttl_and_message_expiration_applies() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    confirm_select(&ch).await;
    declare_args(&ch, "both", table(&[("x-message-ttl", int(60_000))])).await;
    let props = BasicProperties::default().with_expiration("80".into());
    publish_acked(&ch, "both", b"x", props).await;
    declare_args(&ch, "both2", table(&[("x-message-ttl", int(80))])).await;
    let props = BasicProperties::default().with_expiration("60000".into());
    publish_acked(&ch, "both2", b"x", props).await;
    declare_args(&ch, "control", table(&[("x-message-ttl", int(60_000))])).await;
    let props = BasicProperties::default().with_expiration("60000".into());
    publish_acked(&ch, "control", b"x", props).await;
    let start = std::time::Instant::now();
    while ready(&broker, "both") + ready(&broker, "both2") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the shorter TTL did not apply: both={} both2={}",
            ready(&broker, "both"),
            ready(&broker, "both2")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ready(&broker, "control"),
        1,
        "a minute-long TTL kept its message"
    );
}

/// RabbitMQ: a queue TTL of 0 expires a message on arrival *unless it can be delivered to a
/// consumer at once* (a way to say "deliver now or never").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_zero_delivers_to_a_waiting_consumer_and_drops_otherwise() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "now-or-never", table(&[("x-message-ttl", int(0))])).await;
    confirm_select(&ch).await;

    // Nobody waiting: gone.
    assert!(
        publish_confirm(
            &ch,
            "",
            "now-or-never",
            b"nobody",
            BasicProperties::default()
        )
        .await
    );
    wait_counts(&broker, "now-or-never", 0, 0).await;

    // A consumer waiting: delivered.
    let mut c = consume(&ch, "now-or-never", "waiting").await;
    for i in 0..5 {
        publish(&ch, "", "now-or-never", format!("now{i}").as_bytes()).await;
        let d = next(&mut c).await;
        assert_eq!(body(&d), format!("now{i}"));
        ack(&d).await;
    }
}

/// The same with a per-message expiration of "0".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiration_zero_delivers_to_a_waiting_consumer_and_drops_otherwise() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "expiration-zero").await;
    confirm_select(&ch).await;
    let zero = || BasicProperties::default().with_expiration("0".into());
    assert!(publish_confirm(&ch, "", "expiration-zero", b"nobody", zero()).await);
    wait_counts(&broker, "expiration-zero", 0, 0).await;

    let mut c = consume(&ch, "expiration-zero", "waiting0").await;
    for i in 0..5 {
        let b = format!("now{i}");
        assert!(publish_confirm(&ch, "", "expiration-zero", b.as_bytes(), zero()).await);
        let d = next(&mut c).await;
        assert_eq!(body(&d), b);
        ack(&d).await;
    }
}

/// RabbitMQ refuses an `expiration` that is not a non-negative integer with 406 (channel
/// error), rather than silently keeping the message forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_expiration_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    declare(&ch, "bad-exp").await;
    let mut ev = events(&conn);
    publish_props(
        &ch,
        "",
        "bad-exp",
        b"x",
        BasicProperties::default().with_expiration("soon".into()),
    )
    .await;
    expect_error_code(&next_error(&mut ev).await, 406);
}

/// `x-expires`: a queue nobody uses (no consumers, no basic.get, no redeclare) is deleted;
/// one with a consumer is kept until the consumer goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_expires_when_unused() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "short-lived", table(&[("x-expires", int(1_000))])).await;
    publish(&ch, "", "short-lived", b"x").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(queue_exists(&broker, "short-lived"), "deleted too early");
    eventually("unused queue expires", || {
        !queue_exists(&broker, "short-lived")
    })
    .await;

    // A consumer keeps it alive; once cancelled the clock runs again.
    declare_args(&ch, "watched", table(&[("x-expires", int(200))])).await;
    let c = consume(&ch, "watched", "keeper").await;
    stays(
        "a queue with a consumer is kept",
        Duration::from_millis(600),
        || queue_exists(&broker, "watched"),
    )
    .await;
    within(
        "basic_cancel",
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic_cancel");
    eventually("queue expires after its consumer left", || {
        !queue_exists(&broker, "watched")
    })
    .await;
}

/// Redeclaring a queue counts as using it: it restarts the `x-expires` clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_restarts_the_expiry_clock() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let args = table(&[("x-expires", int(600))]);
    declare_args(&ch, "renewed", args.clone()).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        declare_args(&ch, "renewed", args.clone()).await;
    }
    assert!(queue_exists(&broker, "renewed"));
    eventually("queue expires once no longer redeclared", || {
        !queue_exists(&broker, "renewed")
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Dead-lettering
// ---------------------------------------------------------------------------------------------

/// A rejected message goes to the dead-letter exchange with the dead-letter routing key, and
/// the `x-death` / `x-first-death-*` / `x-last-death-*` headers are as RabbitMQ writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_with_x_death() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "dlx", ExchangeKind::Direct).await;
    declare(&ch, "dead").await;
    bind(&ch, "dead", "dlx", "dead-key").await;
    declare_exchange(&ch, "orders", ExchangeKind::Topic).await;
    declare_args(
        &ch,
        "work",
        table(&[
            ("x-dead-letter-exchange", long("dlx")),
            ("x-dead-letter-routing-key", long("dead-key")),
        ]),
    )
    .await;
    bind(&ch, "work", "orders", "order.#").await;

    let props = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_headers(table(&[("app", long("shop"))]));
    publish_props(&ch, "orders", "order.created", b"poison", props).await;
    let mut c = consume(&ch, "work", "worker").await;
    let d = next(&mut c).await;
    reject(&d, false).await;

    wait_counts(&broker, "dead", 1, 0).await;
    wait_counts(&broker, "work", 0, 0).await;
    let got = drain_deliveries(&ch, "dead").await;
    let d = &got[0];
    assert_eq!(body(d), "poison");
    assert_eq!(d.exchange.as_str(), "dlx", "republished to the DLX");
    assert_eq!(
        d.routing_key.as_str(),
        "dead-key",
        "with the DLX routing key"
    );
    assert_eq!(
        d.properties.message_id(),
        &Some("m-1".into()),
        "properties kept"
    );
    assert_eq!(
        header_str(d, "app").as_deref(),
        Some("shop"),
        "headers kept"
    );

    let deaths = x_death(d);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    let death = &deaths[0];
    assert_eq!(death.queue, "work");
    assert_eq!(death.reason, "rejected");
    assert_eq!(death.count, 1);
    assert_eq!(death.exchange, "orders");
    assert_eq!(death.routing_keys, ["order.created"]);
    let t = death.time.expect("x-death time is a timestamp");
    assert!(t.abs_diff(now_secs()) < 60, "x-death time {t} is not now");
    assert_eq!(death.original_expiration, None);
    for (h, want) in [
        ("x-first-death-reason", "rejected"),
        ("x-first-death-queue", "work"),
        ("x-first-death-exchange", "orders"),
        ("x-last-death-reason", "rejected"),
        ("x-last-death-queue", "work"),
        ("x-last-death-exchange", "orders"),
    ] {
        assert_eq!(header_str(d, h).as_deref(), Some(want), "header {h}");
    }
}

/// basic.nack without requeue dead-letters too (all the messages of a `multiple` nack), and
/// without `x-dead-letter-routing-key` the original routing key is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_multiple_dead_letters_with_the_original_routing_key() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "dlx-fan", ExchangeKind::Fanout).await;
    declare(&ch, "dead").await;
    bind(&ch, "dead", "dlx-fan", "").await;
    declare_args(
        &ch,
        "work",
        table(&[("x-dead-letter-exchange", long("dlx-fan"))]),
    )
    .await;
    for i in 0..3 {
        publish(&ch, "", "work", format!("m{i}").as_bytes()).await;
    }
    let mut c = consume(&ch, "work", "w").await;
    let ds: Vec<Delivery> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(next(&mut c).await);
        }
        v
    };
    within(
        "nack multiple",
        ch.basic_nack(
            ds[2].delivery_tag,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        ),
    )
    .await
    .expect("nack");
    wait_counts(&broker, "dead", 3, 0).await;
    let dead = drain_deliveries(&ch, "dead").await;
    let bodies: Vec<String> = dead.iter().map(body).collect();
    assert_eq!(bodies, ["m0", "m1", "m2"], "dead-lettered in order");
    for d in &dead {
        assert_eq!(d.routing_key.as_str(), "work", "original routing key kept");
        assert_eq!(x_death(d)[0].reason, "rejected");
    }
}

/// Expired messages are dead-lettered (reason `expired`); a per-message expiration is recorded
/// as `original-expiration` and removed from the republished message, so it does not expire
/// again in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_lettered_without_their_expiration() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "expired").await;
    declare_args(
        &ch,
        "ttl",
        table(&[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("expired")),
        ]),
    )
    .await;
    publish(&ch, "", "ttl", b"queue-ttl").await;
    publish_props(
        &ch,
        "",
        "ttl",
        b"message-ttl",
        BasicProperties::default().with_expiration("50".into()),
    )
    .await;
    wait_counts(&broker, "expired", 2, 0).await;
    // Still there well after the original expiration.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead = drain_deliveries(&ch, "expired").await;
    assert_eq!(dead.len(), 2);
    let by_body = |b: &str| dead.iter().find(|d| body(d) == b).expect(b);

    let q = by_body("queue-ttl");
    let deaths = x_death(q);
    assert_eq!(deaths.len(), 1);
    assert_eq!(deaths[0].reason, "expired");
    assert_eq!(deaths[0].queue, "ttl");
    assert_eq!(deaths[0].exchange, "");
    assert_eq!(deaths[0].routing_keys, ["ttl"]);
    assert_eq!(deaths[0].original_expiration, None);

    let m = by_body("message-ttl");
    assert_eq!(m.properties.expiration(), &None, "expiration removed");
    let deaths = x_death(m);
    assert_eq!(deaths[0].reason, "expired");
    assert_eq!(deaths[0].original_expiration.as_deref(), Some("50"));
    assert_eq!(
        header_str(m, "x-first-death-reason").as_deref(),
        Some("expired")
    );
}

/// A message expires while a consumer exists but has no prefetch credit left: it is
/// dead-lettered, not delivered later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_expire_behind_a_busy_consumer() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "late").await;
    declare_args(
        &ch,
        "busy",
        table(&[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("late")),
        ]),
    )
    .await;
    qos(&ch, 1, false).await;
    let mut c = consume(&ch, "busy", "slow").await;
    publish(&ch, "", "busy", b"first").await;
    let first = next(&mut c).await;
    publish(&ch, "", "busy", b"second").await;
    wait_counts(&broker, "late", 1, 0).await;
    ack(&first).await;
    assert_no_delivery(&mut c).await;
    assert_eq!(drain(&ch, "late").await, ["second"]);
}

/// A requeued message keeps its original expiry: requeued after its TTL has passed, it is
/// dead-lettered instead of being delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_requeued_after_its_ttl_is_dead_lettered() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "late").await;
    declare_args(
        &ch,
        "held",
        table(&[
            ("x-message-ttl", int(300)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("late")),
        ]),
    )
    .await;
    let mut c = consume(&ch, "held", "slow").await;
    publish(&ch, "", "held", b"held too long").await;
    let d = next(&mut c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nack_requeue(&d).await;
    wait_counts(&broker, "late", 1, 0).await;
    assert_no_delivery(&mut c).await;
    let dead = drain_deliveries(&ch, "late").await;
    assert_eq!(x_death(&dead[0])[0].reason, "expired");
}

/// The retry pattern: the work queue's consumer rejects; the DLX sends the message to a retry
/// queue with a TTL whose own DLX sends it back to the work queue. Each round adds to the
/// `x-death` counts (one entry per queue and reason, most recent first) and the loop is not
/// mistaken for a cycle because a rejection is part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_dlx_retry_loop_counts_deaths() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "retry-x", ExchangeKind::Fanout).await;
    declare_args(
        &ch,
        "work",
        table(&[("x-dead-letter-exchange", long("retry-x"))]),
    )
    .await;
    declare_args(
        &ch,
        "work.retry",
        table(&[
            ("x-message-ttl", int(100)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("work")),
        ]),
    )
    .await;
    bind(&ch, "work.retry", "retry-x", "").await;

    publish(&ch, "", "work", b"job").await;
    let mut c = consume(&ch, "work", "worker").await;
    const RETRIES: i64 = 3;
    for round in 0..=RETRIES {
        let d = next(&mut c).await;
        assert_eq!(body(&d), "job");
        let deaths = x_death(&d);
        if round == 0 {
            assert!(
                deaths.is_empty(),
                "first delivery has no x-death: {deaths:?}"
            );
        } else {
            assert_eq!(deaths.len(), 2, "round {round}: {deaths:?}");
            // Most recent first: it just expired out of the retry queue.
            assert_eq!(
                (
                    deaths[0].queue.as_str(),
                    deaths[0].reason.as_str(),
                    deaths[0].count
                ),
                ("work.retry", "expired", round),
                "round {round}: {deaths:?}"
            );
            assert_eq!(deaths[0].exchange, "retry-x");
            assert_eq!(deaths[0].routing_keys, ["work"]);
            assert_eq!(
                (
                    deaths[1].queue.as_str(),
                    deaths[1].reason.as_str(),
                    deaths[1].count
                ),
                ("work", "rejected", round),
                "round {round}: {deaths:?}"
            );
            assert_eq!(deaths[1].exchange, "");
            assert_eq!(deaths[1].routing_keys, ["work"]);
            assert_eq!(
                header_str(&d, "x-first-death-reason").as_deref(),
                Some("rejected")
            );
            assert_eq!(
                header_str(&d, "x-first-death-queue").as_deref(),
                Some("work")
            );
            assert_eq!(
                header_str(&d, "x-first-death-exchange").as_deref(),
                Some("")
            );
            assert_eq!(
                header_str(&d, "x-last-death-reason").as_deref(),
                Some("expired")
            );
            assert_eq!(
                header_str(&d, "x-last-death-queue").as_deref(),
                Some("work.retry")
            );
            assert_eq!(
                header_str(&d, "x-last-death-exchange").as_deref(),
                Some("retry-x")
            );
        }
        if round < RETRIES {
            reject(&d, false).await;
        } else {
            ack(&d).await;
        }
    }
    wait_counts(&broker, "work", 0, 0).await;
    wait_counts(&broker, "work.retry", 0, 0).await;
}

/// Cycle detection: a queue that dead-letters expired messages to itself drops them instead of
/// looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_cycle_to_the_same_queue_drops_the_message() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(
        &ch,
        "self-loop",
        table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", long("")),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    publish_acked(&ch, "self-loop", b"x", BasicProperties::default()).await;
    wait_counts(&broker, "self-loop", 0, 0).await;
    stays(
        "the message does not come back",
        Duration::from_millis(400),
        || ready(&broker, "self-loop") == 0,
    )
    .await;
}

/// Cycle detection across two queues: A expires into B (via a fanout that also feeds a tap),
/// B expires back into A — A is already in the x-death history with no rejection, so the
/// message is dropped there; the tap sees it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_cycle_across_two_queues_is_broken() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "a-dlx", ExchangeKind::Fanout).await;
    declare_args(
        &ch,
        "a",
        table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", long("a-dlx")),
        ]),
    )
    .await;
    declare_args(
        &ch,
        "b",
        table(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("a")),
        ]),
    )
    .await;
    declare(&ch, "tap").await;
    bind(&ch, "b", "a-dlx", "").await;
    bind(&ch, "tap", "a-dlx", "").await;

    publish(&ch, "", "a", b"x").await;
    wait_counts(&broker, "tap", 1, 0).await;
    stays(
        "the message passes once and is dropped",
        Duration::from_millis(500),
        || ready(&broker, "tap") == 1,
    )
    .await;
    assert_eq!(ready(&broker, "a"), 0);
    assert_eq!(ready(&broker, "b"), 0);
}

/// A cycle with a rejection in it is the client's decision and is allowed: the message
/// returns to the same queue, its `rejected` count growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_cycle_to_the_same_queue_is_allowed() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "again", table(&[("x-dead-letter-exchange", long(""))])).await;
    publish(&ch, "", "again", b"x").await;
    let mut c = consume(&ch, "again", "w").await;
    for round in 0..4i64 {
        let d = next(&mut c).await;
        let deaths = x_death(&d);
        if round == 0 {
            assert!(deaths.is_empty());
        } else {
            assert_eq!(deaths.len(), 1, "{deaths:?}");
            assert_eq!(deaths[0].reason, "rejected");
            assert_eq!(deaths[0].count, round);
        }
        reject(&d, false).await;
    }
}

/// A missing dead-letter exchange drops the message (as RabbitMQ does) and does not disturb
/// the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_exchange_drops_the_message() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(
        &ch,
        "orphan",
        table(&[("x-dead-letter-exchange", long("nowhere"))]),
    )
    .await;
    publish(&ch, "", "orphan", b"x").await;
    let mut c = consume(&ch, "orphan", "w").await;
    let d = next(&mut c).await;
    reject(&d, false).await;
    wait_counts(&broker, "orphan", 0, 0).await;
    publish(&ch, "", "orphan", b"y").await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "y");
    ack(&d).await;
}

// ---------------------------------------------------------------------------------------------
// Length limits
// ---------------------------------------------------------------------------------------------

/// `x-max-length` with the default drop-head: the oldest messages go — to the dead-letter
/// exchange with reason `maxlen` when there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drops_the_head_into_the_dlx() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "overflowed").await;
    declare_args(
        &ch,
        "bounded",
        table(&[
            ("x-max-length", int(2)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("overflowed")),
        ]),
    )
    .await;
    for i in 1..=5 {
        publish(&ch, "", "bounded", format!("m{i}").as_bytes()).await;
    }
    wait_counts(&broker, "overflowed", 3, 0).await;
    assert_eq!(ready(&broker, "bounded"), 2);
    let dead = drain_deliveries(&ch, "overflowed").await;
    assert_eq!(
        dead.iter().map(body).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    for d in &dead {
        let deaths = x_death(d);
        assert_eq!(deaths[0].reason, "maxlen");
        assert_eq!(deaths[0].queue, "bounded");
    }
    assert_eq!(drain(&ch, "bounded").await, ["m4", "m5"]);
}

/// Unacked messages do not count towards `x-max-length` (RabbitMQ counts ready messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_counts_ready_messages_only() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "bounded", table(&[("x-max-length", int(2))])).await;
    qos(&ch, 3, false).await;
    let mut c = consume(&ch, "bounded", "w").await;
    for i in 0..3 {
        publish(&ch, "", "bounded", format!("u{i}").as_bytes()).await;
    }
    let held = next_bodies(&mut c, 3).await;
    assert_eq!(held, ["u0", "u1", "u2"]);
    wait_counts(&broker, "bounded", 0, 3).await;
    for i in 0..2 {
        publish(&ch, "", "bounded", format!("r{i}").as_bytes()).await;
    }
    wait_counts(&broker, "bounded", 2, 3).await;
}

/// `x-max-length-bytes` counts body bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_bytes_drops_the_head() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "bytes", table(&[("x-max-length-bytes", int(10))])).await;
    confirm_select(&ch).await;
    for b in ["aaaa", "bbbb", "cccc"] {
        publish_acked(&ch, "bytes", b.as_bytes(), BasicProperties::default()).await;
    }
    wait_counts(&broker, "bytes", 2, 0).await;
    assert_eq!(drain(&ch, "bytes").await, ["bbbb", "cccc"]);
}

/// `x-overflow: reject-publish`: a full queue refuses new messages, and a confirming
/// publisher gets basic.nack; the queue keeps what it had, and accepts again once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_nacks_confirming_publishers() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "dead").await;
    declare_args(
        &ch,
        "full",
        table(&[
            ("x-max-length", int(2)),
            ("x-overflow", long("reject-publish")),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("dead")),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    let p = BasicProperties::default;
    assert!(publish_confirm(&ch, "", "full", b"m1", p()).await);
    assert!(publish_confirm(&ch, "", "full", b"m2", p()).await);
    assert!(
        !publish_confirm(&ch, "", "full", b"m3", p()).await,
        "publish to a full reject-publish queue must be nacked"
    );
    assert_eq!(ready(&broker, "full"), 2);
    assert_eq!(
        ready(&broker, "dead"),
        0,
        "reject-publish does not dead-letter (reject-publish-dlx does)"
    );
    let m = get(&ch, "full", true).await.expect("m1");
    assert_eq!(m.delivery.data, b"m1");
    assert!(publish_confirm(&ch, "", "full", b"m4", p()).await);
    assert_eq!(drain(&ch, "full").await, ["m2", "m4"]);
}

/// With reject-publish a message routed to a full queue and to a queue with room is nacked
/// (the publisher cannot know it reached only some queues) but the other queue keeps its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_nacks_when_any_routed_queue_refuses() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "fan", ExchangeKind::Fanout).await;
    declare_args(
        &ch,
        "tiny",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", long("reject-publish")),
        ]),
    )
    .await;
    declare(&ch, "roomy").await;
    bind(&ch, "tiny", "fan", "").await;
    bind(&ch, "roomy", "fan", "").await;
    confirm_select(&ch).await;
    assert!(publish_confirm(&ch, "fan", "", b"a", BasicProperties::default()).await);
    assert!(!publish_confirm(&ch, "fan", "", b"b", BasicProperties::default()).await);
    assert_eq!(drain(&ch, "roomy").await, ["a", "b"]);
    assert_eq!(drain(&ch, "tiny").await, ["a"]);
}

/// `x-overflow: reject-publish-dlx`: refused messages are nacked and dead-lettered (reason
/// `maxlen`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_nacks_and_dead_letters() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "dead").await;
    declare_args(
        &ch,
        "full",
        table(&[
            ("x-max-length", int(1)),
            ("x-overflow", long("reject-publish-dlx")),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("dead")),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    let p = BasicProperties::default;
    assert!(publish_confirm(&ch, "", "full", b"kept", p()).await);
    assert!(!publish_confirm(&ch, "", "full", b"refused", p()).await);
    wait_counts(&broker, "dead", 1, 0).await;
    let dead = drain_deliveries(&ch, "dead").await;
    assert_eq!(body(&dead[0]), "refused");
    assert_eq!(x_death(&dead[0])[0].reason, "maxlen");
    assert_eq!(drain(&ch, "full").await, ["kept"]);
}

/// A queue argument RabbitMQ would refuse: an unknown overflow mode is 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_overflow_mode_is_406() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let r = within(
        "queue_declare",
        ch.queue_declare(
            "bad".into(),
            QueueDeclareOptions::default(),
            table(&[("x-overflow", long("drop-tail"))]),
        ),
    )
    .await;
    expect_code(r, 406);
}

// ---------------------------------------------------------------------------------------------
// Delivery limit
// ---------------------------------------------------------------------------------------------

/// `x-delivery-limit: 2`: the message may be delivered 1 + 2 times; requeued once more it is
/// dead-lettered with reason `delivery_limit`. Redeliveries carry `x-delivery-count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_a_poison_message() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "poison").await;
    declare_durable_args(
        &ch,
        "limited",
        table(&[
            ("x-queue-type", long("quorum")),
            ("x-delivery-limit", int(2)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("poison")),
        ]),
    )
    .await;
    publish(&ch, "", "limited", b"bad").await;
    let mut c = consume(&ch, "limited", "w").await;
    for attempt in 0..3i64 {
        let d = next(&mut c).await;
        assert_eq!(d.redelivered, attempt > 0);
        if attempt == 0 {
            assert_eq!(header_int(&d, "x-delivery-count"), None);
        } else {
            assert_eq!(header_int(&d, "x-delivery-count"), Some(attempt));
        }
        nack_requeue(&d).await;
    }
    wait_counts(&broker, "poison", 1, 0).await;
    assert_no_delivery(&mut c).await;
    let dead = drain_deliveries(&ch, "poison").await;
    let deaths = x_death(&dead[0]);
    assert_eq!(deaths[0].reason, "delivery_limit");
    assert_eq!(deaths[0].queue, "limited");
    assert_eq!(
        header_str(&dead[0], "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
}

/// As RabbitMQ 4.0: a quorum queue's delivery limit is 20 unless set (a message is delivered
/// 1 + 20 times, then dropped without a dead-letter exchange); a negative `x-delivery-limit`
/// means no limit; a classic queue takes no `x-delivery-limit` (406, RabbitMQ's text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_delivers_21_times_by_default_and_minus_one_means_no_limit() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_durable_args(&ch, "qq", table(&[("x-queue-type", long("quorum"))])).await;
    declare_durable_args(
        &ch,
        "qq-unlimited",
        table(&[
            ("x-queue-type", long("quorum")),
            ("x-delivery-limit", int(-1)),
        ]),
    )
    .await;
    publish(&ch, "", "qq", b"x").await;
    publish(&ch, "", "qq-unlimited", b"x").await;

    let mut c = consume(&ch, "qq", "w-qq").await;
    for attempt in 0..21i64 {
        let d = next(&mut c).await;
        assert_eq!(
            header_int(&d, "x-delivery-count"),
            (attempt > 0).then_some(attempt)
        );
        nack_requeue(&d).await;
    }
    wait_counts(&broker, "qq", 0, 0).await;
    assert_no_delivery(&mut c).await;

    let mut c = consume(&ch, "qq-unlimited", "w-unlimited").await;
    for _ in 0..25 {
        let d = next(&mut c).await;
        nack_requeue(&d).await;
    }
    let d = next(&mut c).await;
    assert_eq!(header_int(&d, "x-delivery-count"), Some(25));
    ack(&d).await;

    let r = within(
        "queue_declare",
        ch.queue_declare(
            "classic-limited".into(),
            QueueDeclareOptions::default(),
            table(&[("x-delivery-limit", int(5))]),
        ),
    )
    .await;
    assert_eq!(
        expect_code(r, 406),
        "PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue 'classic-limited' \
         in vhost '/' of queue type rabbit_classic_queue"
    );
    // A group size is a quorum queue's (RabbitMQ 4.0.5 answers so, whatever the value).
    let (_conn2, ch) = open(&broker).await;
    let r = within(
        "queue_declare",
        ch.queue_declare(
            "classic-sized".into(),
            QueueDeclareOptions::default(),
            table(&[("x-quorum-initial-group-size", int(0))]),
        ),
    )
    .await;
    assert_eq!(
        expect_code(r, 406),
        "PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue \
         'classic-sized' in vhost '/' of queue type rabbit_classic_queue"
    );
}

// ---------------------------------------------------------------------------------------------
// Priority queues
// ---------------------------------------------------------------------------------------------

/// `x-max-priority`: higher priorities are delivered first, FIFO within a priority; priorities
/// above the maximum count as the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_orders_by_priority() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "prio", table(&[("x-max-priority", int(5))])).await;
    let msgs: &[(&str, Option<u8>)] = &[
        ("none-1", None),
        ("p1", Some(1)),
        ("p5-a", Some(5)),
        ("p3", Some(3)),
        ("p200", Some(200)),
        ("none-2", None),
        ("p5-b", Some(5)),
        ("p0", Some(0)),
    ];
    for (b, p) in msgs {
        let mut props = BasicProperties::default();
        if let Some(p) = p {
            props = props.with_priority(*p);
        }
        publish_props(&ch, "", "prio", b.as_bytes(), props).await;
    }
    assert_eq!(
        drain(&ch, "prio").await,
        ["p5-a", "p200", "p5-b", "p3", "p1", "none-1", "none-2", "p0"]
    );
}

/// Priority with prefetch 1: while the consumer holds one message, the next one is picked by
/// priority, not arrival — the case users hit when priorities "don't work" with a large
/// prefetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_with_prefetch_one_serves_the_highest_next() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "prio", table(&[("x-max-priority", int(10))])).await;
    qos(&ch, 1, false).await;
    let mut c = consume(&ch, "prio", "w").await;
    publish(&ch, "", "prio", b"blocker").await;
    let first = next(&mut c).await;
    assert_eq!(body(&first), "blocker");
    for (b, p) in [("low", 1u8), ("mid", 5), ("high", 9), ("zero", 0)] {
        publish_props(
            &ch,
            "",
            "prio",
            b.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    wait_counts(&broker, "prio", 4, 1).await;
    ack(&first).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = next(&mut c).await;
        order.push(body(&d));
        // Another high-priority message arriving mid-way overtakes the rest.
        if order.len() == 1 {
            publish_props(
                &ch,
                "",
                "prio",
                b"urgent",
                BasicProperties::default().with_priority(10),
            )
            .await;
            wait_counts(&broker, "prio", 4, 1).await;
        }
        ack(&d).await;
    }
    order.push(body(&next(&mut c).await));
    assert_eq!(order, ["high", "urgent", "mid", "low", "zero"]);
}

/// A requeued message returns to its place within its priority level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_requeue_keeps_the_order() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_args(&ch, "prio", table(&[("x-max-priority", int(3))])).await;
    for (b, p) in [("a2", 2u8), ("b1", 1), ("c2", 2)] {
        publish_props(
            &ch,
            "",
            "prio",
            b.as_bytes(),
            BasicProperties::default().with_priority(p),
        )
        .await;
    }
    let m = within(
        "get",
        ch.basic_get("prio".into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(m.delivery.data, b"a2");
    within(
        "reject",
        m.delivery.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    wait_counts(&broker, "prio", 3, 0).await;
    assert_eq!(drain(&ch, "prio").await, ["a2", "c2", "b1"]);
}

/// `x-max-priority` outside 0..=255 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_priority_above_255_is_406() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let r = within(
        "queue_declare",
        ch.queue_declare(
            "p".into(),
            QueueDeclareOptions::default(),
            table(&[("x-max-priority", int(256))]),
        ),
    )
    .await;
    expect_code(r, 406);
}

// ---------------------------------------------------------------------------------------------
// Consumer priorities and single active consumer
// ---------------------------------------------------------------------------------------------

/// `x-priority` on basic.consume: the high-priority consumer gets messages while it has
/// prefetch credit; the low-priority one only gets what it cannot take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priority_prefers_the_higher_consumer_while_it_has_credit() {
    let broker = TestBroker::start();
    let (_c1, low_ch) = open(&broker).await;
    let (_c2, high_ch) = open(&broker).await;
    declare(&low_ch, "cp").await;
    qos(&low_ch, 10, false).await;
    qos(&high_ch, 2, false).await;
    let mut low = consume_args(&low_ch, "cp", "low", table(&[("x-priority", int(1))])).await;
    let mut high = consume_args(&high_ch, "cp", "high", table(&[("x-priority", int(10))])).await;
    eventually("both consumers", || consumer_count(&broker, "cp") == 2).await;

    for i in 0..5 {
        publish(&low_ch, "", "cp", format!("m{i}").as_bytes()).await;
    }
    let h = next_bodies(&mut high, 2).await;
    assert_eq!(
        h,
        ["m0", "m1"],
        "the high-priority consumer is served first"
    );
    let l = next_bodies(&mut low, 3).await;
    assert_eq!(
        l,
        ["m2", "m3", "m4"],
        "the rest overflow to the low-priority one"
    );
}

/// Once the high-priority consumer has credit again it is preferred again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priority_returns_to_the_higher_consumer_after_ack() {
    let broker = TestBroker::start();
    let (_c1, low_ch) = open(&broker).await;
    let (_c2, high_ch) = open(&broker).await;
    declare(&low_ch, "cp").await;
    qos(&high_ch, 1, false).await;
    let mut high = consume_args(&high_ch, "cp", "high", table(&[("x-priority", int(5))])).await;
    let mut low = consume_args(&low_ch, "cp", "low", no_args()).await;
    eventually("both consumers", || consumer_count(&broker, "cp") == 2).await;
    publish(&low_ch, "", "cp", b"1").await;
    let d = next(&mut high).await;
    publish(&low_ch, "", "cp", b"2").await;
    assert_eq!(body(&next(&mut low).await), "2");
    ack(&d).await;
    // The ack travels on another connection than the next publish: wait until it is counted.
    wait_counts(&broker, "cp", 0, 1).await;
    publish(&low_ch, "", "cp", b"3").await;
    assert_eq!(body(&next(&mut high).await), "3");
    assert_no_delivery(&mut low).await;
}

/// Single active consumer: only the first consumer gets messages, even when its prefetch is
/// full; when its connection is cut, its unacked message and everything after go to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over_when_the_connection_drops() {
    sac_failover(false).await;
}

/// The point of single active consumer is order: after failover the successor must see the
/// dropped consumer's unacked message before the ones behind it (RabbitMQ requeues the channel's
/// unacked messages before it serves the new active consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_failover_keeps_the_order() {
    sac_failover(true).await;
}

async fn sac_failover(strict_order: bool) {
    let broker = TestBroker::start();
    let proxy = Proxy::start(broker.addr).await;
    let (_pconn, producer) = open(&broker).await;
    declare_args(
        &producer,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;

    let active_conn = connect_url(&proxy.url()).await;
    let active_ch = channel(&active_conn).await;
    qos(&active_ch, 1, false).await;
    let mut active = consume(&active_ch, "sac", "active").await;
    eventually("first consumer", || consumer_count(&broker, "sac") == 1).await;
    let (_sconn, standby_ch) = open(&broker).await;
    let mut standby = consume(&standby_ch, "sac", "standby").await;
    eventually("both consumers", || consumer_count(&broker, "sac") == 2).await;

    for i in 0..3 {
        publish(&producer, "", "sac", format!("m{i}").as_bytes()).await;
    }
    let d0 = next(&mut active).await;
    assert_eq!(body(&d0), "m0");
    // The active consumer is at its prefetch limit; the standby still gets nothing.
    assert_no_delivery(&mut standby).await;
    wait_counts(&broker, "sac", 2, 1).await;

    proxy.cut();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut standby).await;
        got.push((body(&d), d.redelivered));
        ack(&d).await;
    }
    if strict_order {
        assert_eq!(
            got,
            [
                ("m0".into(), true),
                ("m1".into(), false),
                ("m2".into(), false)
            ],
            "the dropped consumer's unacked message comes first"
        );
    } else {
        got.sort();
        assert_eq!(
            got,
            [
                ("m0".into(), true),
                ("m1".into(), false),
                ("m2".into(), false)
            ],
            "every message reaches the successor, the unacked one marked redelivered"
        );
    }
    assert_no_delivery(&mut standby).await;
    eventually("the dropped consumer is gone", || {
        consumer_count(&broker, "sac") == 1
    })
    .await;
}

/// Single active consumer: cancelling the active consumer hands over to the next in line; the
/// messages never go round-robin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_hands_over_on_cancel() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let (_conn2, ch2) = open(&broker).await;
    let (_conn3, ch3) = open(&broker).await;
    declare_args(
        &ch,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let mut first = consume(&ch2, "sac", "first").await;
    eventually("first", || consumer_count(&broker, "sac") == 1).await;
    let mut second = consume(&ch3, "sac", "second").await;
    eventually("second", || consumer_count(&broker, "sac") == 2).await;
    for i in 0..4 {
        publish(&ch, "", "sac", format!("a{i}").as_bytes()).await;
    }
    let got = next_bodies(&mut first, 4).await;
    assert_eq!(got, ["a0", "a1", "a2", "a3"]);
    assert_no_delivery(&mut second).await;
    within(
        "basic_cancel",
        ch2.basic_cancel("first".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    // a0..a3 were not acked: they are kept on the channel (cancel does not requeue); new
    // messages go to the second consumer.
    publish(&ch, "", "sac", b"b0").await;
    assert_eq!(body(&next(&mut second).await), "b0");
}

// ---------------------------------------------------------------------------------------------
// Alternate exchange
// ---------------------------------------------------------------------------------------------

/// `alternate-exchange`: messages the exchange cannot route go to the alternate exchange; a
/// mandatory publish routed that way is not returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_takes_unroutable_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout).await;
    declare(&ch, "unrouted").await;
    bind(&ch, "unrouted", "ae", "").await;
    within(
        "exchange_declare",
        ch.exchange_declare(
            "main".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            table(&[("alternate-exchange", long("ae"))]),
        ),
    )
    .await
    .expect("exchange_declare");
    declare(&ch, "routed").await;
    bind(&ch, "routed", "main", "known").await;

    confirm_select(&ch).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    for (key, b) in [("known", "k"), ("unknown", "u")] {
        let confirm = within(
            "publish",
            ch.basic_publish(
                "main".into(),
                key.into(),
                mandatory,
                b.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        let c = within("confirm", confirm).await.expect("confirm");
        assert!(c.is_ack());
        assert!(
            c.take_message().is_none(),
            "a message taken by the alternate exchange is not returned"
        );
    }
    assert_eq!(drain(&ch, "routed").await, ["k"]);
    let d = drain_deliveries(&ch, "unrouted").await;
    assert_eq!(d.len(), 1);
    assert_eq!(body(&d[0]), "u");
    assert_eq!(
        d[0].exchange.as_str(),
        "main",
        "delivered with the original exchange"
    );
    assert_eq!(d[0].routing_key.as_str(), "unknown", "and routing key");
}

/// Alternate exchanges chain; a cycle of alternates ends (the message is unroutable and, if
/// mandatory, returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchanges_chain_and_cycles_end() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let declare_ae = |name: &'static str, ae: &'static str| {
        let ch = ch.clone();
        async move {
            within(
                "exchange_declare",
                ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions::default(),
                    table(&[("alternate-exchange", long(ae))]),
                ),
            )
            .await
            .expect("exchange_declare")
        }
    };
    declare_ae("x1", "x2").await;
    declare_ae("x2", "x3").await;
    declare_exchange(&ch, "x3", ExchangeKind::Fanout).await;
    declare(&ch, "end").await;
    bind(&ch, "end", "x3", "").await;
    publish(&ch, "x1", "anything", b"chained").await;
    wait_counts(&broker, "end", 1, 0).await;

    declare_ae("c1", "c2").await;
    declare_ae("c2", "c1").await;
    confirm_select(&ch).await;
    let confirm = within(
        "publish",
        ch.basic_publish(
            "c1".into(),
            "k".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"looped",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let c = within("confirm", confirm).await.expect("confirm");
    let ret = c
        .take_message()
        .expect("unroutable through the AE cycle: returned");
    assert_eq!(ret.reply_code, 312);
}

// ---------------------------------------------------------------------------------------------
// Direct reply-to
// ---------------------------------------------------------------------------------------------

/// RPC with `amq.rabbitmq.reply-to`: the client consumes the pseudo-queue (no-ack), publishes
/// its request with `reply_to = amq.rabbitmq.reply-to`; the server sees a generated
/// `amq.rabbitmq.reply-to.…` name and publishes the reply to it through the default exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_rpc_round_trip() {
    let broker = TestBroker::start();
    let (_sconn, server_ch) = open(&broker).await;
    declare(&server_ch, "rpc").await;
    let mut requests = consume(&server_ch, "rpc", "server").await;
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let Some(Ok(req)) = requests.next().await else {
                break;
            };
            let reply_to = req
                .properties
                .reply_to()
                .clone()
                .expect("reply_to")
                .to_string();
            let corr = req
                .properties
                .correlation_id()
                .clone()
                .expect("correlation id");
            let answer = format!("{}!", String::from_utf8_lossy(&req.data));
            server_ch
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    answer.as_bytes(),
                    BasicProperties::default().with_correlation_id(corr),
                )
                .await
                .expect("reply");
            req.ack(BasicAckOptions::default()).await.expect("ack");
            seen.push(reply_to);
        }
        seen
    });

    let (_cconn, client) = open(&broker).await;
    let mut replies = consume_no_ack(&client, "amq.rabbitmq.reply-to", "replies").await;
    for i in 0..3 {
        let props = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(format!("c{i}").into());
        publish_props(&client, "", "rpc", format!("q{i}").as_bytes(), props).await;
        let r = next(&mut replies).await;
        assert_eq!(body(&r), format!("q{i}!"));
        assert_eq!(r.properties.correlation_id(), &Some(format!("c{i}").into()));
        assert!(
            r.routing_key.as_str().starts_with("amq.rabbitmq.reply-to."),
            "reply routing key {:?}",
            r.routing_key
        );
    }
    let seen = within("server task", server).await.expect("server task");
    assert!(seen
        .iter()
        .all(|r| r.starts_with("amq.rabbitmq.reply-to.") && r.len() > 22));
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "one reply address per channel"
    );
}

/// Direct reply-to misuse, as RabbitMQ answers it: consuming with acks is 406, and so is
/// publishing with `reply_to = amq.rabbitmq.reply-to` on a channel without the reply consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_misuse_is_406() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let r = within(
        "consume",
        ch.basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "acking".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 406);

    let (conn, ch) = open(&broker).await;
    declare(&ch, "rpc").await;
    let mut ev = events(&conn);
    publish_props(
        &ch,
        "",
        "rpc",
        b"q",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    expect_error_code(&next_error(&mut ev).await, 406);
}

/// A reply to a client that has gone is dropped quietly; the replying channel is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_departed_client_is_dropped() {
    let broker = TestBroker::start();
    let (_sconn, server_ch) = open(&broker).await;
    declare(&server_ch, "rpc").await;
    let reply_to = {
        let (cconn, client) = open(&broker).await;
        let _replies = consume_no_ack(&client, "amq.rabbitmq.reply-to", "r").await;
        publish_props(
            &client,
            "",
            "rpc",
            b"q",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await;
        let m = loop {
            if let Some(m) = get(&server_ch, "rpc", true).await {
                break m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        within("close", cconn.close(200, "bye".into()))
            .await
            .expect("close");
        m.delivery.properties.reply_to().clone().expect("reply_to")
    };
    publish(&server_ch, "", reply_to.as_str(), b"too late").await;
    // The channel still works.
    declare(&server_ch, "still-fine").await;
    eventually("the reply queue went with its connection", || {
        !queue_exists(&broker, reply_to.as_str())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Durability of queue arguments
// ---------------------------------------------------------------------------------------------

/// A durable queue's TTL, dead-letter and priority arguments survive a restart: a persistent
/// message published before the restart still expires into the dead-letter queue after it,
/// and priority order is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_arguments_survive_a_restart() {
    let tmp = TempDir::new("qf-restart");
    let dir = tmp.join("data");
    let mut broker = warren_tests::BrokerProcess::start(WARREN, &dir, &[]);
    let persistent = || BasicProperties::default().with_delivery_mode(2);
    {
        let conn = connect_url(&broker.url()).await;
        let ch = channel(&conn).await;
        declare_durable_args(&ch, "dur-dead", no_args()).await;
        declare_durable_args(
            &ch,
            "dur-ttl",
            table(&[
                ("x-message-ttl", int(1_500)),
                ("x-dead-letter-exchange", long("")),
                ("x-dead-letter-routing-key", long("dur-dead")),
            ]),
        )
        .await;
        declare_durable_args(&ch, "dur-prio", table(&[("x-max-priority", int(5))])).await;
        confirm_select(&ch).await;
        assert!(publish_confirm(&ch, "", "dur-ttl", b"expires-later", persistent()).await);
        for (b, p) in [("low", 1u8), ("high", 5), ("mid", 3)] {
            assert!(
                publish_confirm(
                    &ch,
                    "",
                    "dur-prio",
                    b.as_bytes(),
                    persistent().with_priority(p)
                )
                .await
            );
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    assert_eq!(broker.stop(), Some(0), "clean shutdown");
    let broker = warren_tests::BrokerProcess::start(WARREN, &dir, &[]);
    let conn = connect_url(&broker.url()).await;
    let ch = channel(&conn).await;
    assert_eq!(drain(&ch, "dur-prio").await, ["high", "mid", "low"]);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let dead = loop {
        if let Some(m) = get(&ch, "dur-dead", true).await {
            break m.delivery;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message never expired into dur-dead after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body(&dead), "expires-later");
    assert_eq!(x_death(&dead)[0].reason, "expired");
    drop(conn);
    drop(broker);
}

/// `default_queue_type` in warren.conf (RabbitMQ's node-wide default) types the queues that
/// clients declare without `x-queue-type` in vhosts that set no default of their own; a
/// type that does not exist stops the start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_default_queue_type_types_queues_declared_without_one() {
    let dir = TempDir::new("node-dqt");
    let (code, err) = start_refused(WARREN, &dir, "default_queue_type = lazy\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("default_queue_type") && err.contains("lazy"),
        "{err}"
    );

    let conf = dir.join("warren.conf");
    std::fs::write(&conf, "default_queue_type = quorum\n").unwrap();
    let broker = BrokerProcess::start(
        WARREN,
        &dir.join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let conn = connect_url(&broker.url()).await;
    let ch = channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("typed-by-node".into(), durable, no_args()),
    )
    .await
    .expect("declare without a type");
    // An exclusive queue cannot be a quorum queue: it is a classic one.
    declare_exclusive(&ch).await;
    let classic = table(&[("x-queue-type", long("classic"))]);
    let e = ch
        .queue_declare("typed-by-node".into(), durable, classic)
        .await
        .expect_err("a classic redeclaration of a quorum queue is refused");
    assert_eq!(
        expect_error_code(&e, 406),
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'typed-by-node' in \
         vhost '/': received 'classic' but current is 'quorum'"
    );
    let _ = conn.close(200, "bye".into()).await;
}
