//! The consumer delivery-acknowledgement timeout at each level (broker, queue argument,
//! consumer argument, policy), the requeue that follows, the cancel-consumer option, and a
//! consumer that acks in time never being closed.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use warren_server::{ConsumerTimeoutAction, ServerConfig};
use warren_tests::*;

fn broker(timeout_ms: Option<u64>, action: ConsumerTimeoutAction) -> TestBroker {
    TestBroker::with_config(ServerConfig {
        consumer_timeout: timeout_ms.map(Duration::from_millis),
        consumer_timeout_action: action,
        ..Default::default()
    })
}

fn timeout_arg(ms: i64) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(ms));
    t
}

/// A consumer that never acks has its channel closed with 406 and RabbitMQ's text; the message
/// goes back to the queue and another consumer gets it, redelivered.
async fn expect_timeout_then_redelivery(
    b: &TestBroker,
    queue: &str,
    consume_args: FieldTable,
    expect_ms: u64,
) {
    let (conn, ch) = open(b).await;
    let mut events = events(&conn);
    publish(&ch, "", queue, b"slow").await;
    let mut stuck = within(
        "basic_consume",
        ch.basic_consume(
            queue.into(),
            "stuck".into(),
            BasicConsumeOptions::default(),
            consume_args,
        ),
    )
    .await
    .expect("basic_consume");
    let d = next(&mut stuck).await;
    assert!(!d.redelivered);
    let started = std::time::Instant::now();
    let err = next_error(&mut events).await;
    let text = expect_error_code(&err, 406);
    assert!(
        text.contains("delivery acknowledgement on channel")
            && text.contains(&format!("Timeout value used: {expect_ms} ms")),
        "{text}"
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(expect_ms + 1500),
        "closed after {waited:?}"
    );

    let (_c2, ch2) = open(b).await;
    let mut other = consume(&ch2, queue, "other").await;
    let again = next(&mut other).await;
    assert_eq!(body(&again), "slow");
    assert!(
        again.redelivered,
        "the timed-out delivery comes back redelivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_wide_timeout_closes_the_channel_and_requeues() {
    let b = broker(Some(1000), ConsumerTimeoutAction::CloseChannel);
    let (_c, ch) = open(&b).await;
    declare(&ch, "work").await;
    expect_timeout_then_redelivery(&b, "work", no_args(), 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_argument_overrides_the_broker_default() {
    let b = broker(None, ConsumerTimeoutAction::CloseChannel);
    let (_c, ch) = open(&b).await;
    within(
        "declare",
        ch.queue_declare(
            "q-timeout".into(),
            QueueDeclareOptions::default(),
            timeout_arg(1200),
        ),
    )
    .await
    .expect("declare");
    expect_timeout_then_redelivery(&b, "q-timeout", no_args(), 1200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_argument_overrides_queue_and_broker() {
    let b = broker(Some(600_000), ConsumerTimeoutAction::CloseChannel);
    let (_c, ch) = open(&b).await;
    within(
        "declare",
        ch.queue_declare(
            "c-timeout".into(),
            QueueDeclareOptions::default(),
            timeout_arg(600_000),
        ),
    )
    .await
    .expect("declare");
    expect_timeout_then_redelivery(&b, "c-timeout", timeout_arg(1000), 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_sets_the_queue_timeout() {
    let b = broker(None, ConsumerTimeoutAction::CloseChannel);
    let mut def = warren_protocol_table();
    def.insert("consumer-timeout", warren_protocol::FieldValue::I64(1000));
    let policy =
        warren_broker::policy::Policy::new("ct", "^pol", "queues", 0, def).expect("policy");
    b.broker
        .vhost("/")
        .expect("vhost")
        .set_policy(policy, false);
    let (_c, ch) = open(&b).await;
    declare(&ch, "pol-q").await;
    expect_timeout_then_redelivery(&b, "pol-q", no_args(), 1000).await;
}

fn warren_protocol_table() -> warren_protocol::FieldTable {
    warren_protocol::FieldTable::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_deliveries_time_out_too() {
    let b = broker(Some(1000), ConsumerTimeoutAction::CloseChannel);
    let (conn, ch) = open(&b).await;
    let mut events = events(&conn);
    declare(&ch, "got").await;
    publish(&ch, "", "got", b"polled").await;
    let got = within(
        "get",
        ch.basic_get("got".into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get");
    assert!(got.is_some());
    let err = next_error(&mut events).await;
    expect_error_code(&err, 406);
    eventually("message back in the queue", || {
        queue_counts(&b, "got") == Some((1, 0))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_acks_in_time_is_never_closed() {
    let b = broker(Some(1000), ConsumerTimeoutAction::CloseChannel);
    let (_c, ch) = open(&b).await;
    declare(&ch, "prompt").await;
    let mut c = consume(&ch, "prompt", "prompt").await;
    // Four seconds of steady work, each delivery acked after 300 ms.
    for i in 0..12 {
        publish(&ch, "", "prompt", format!("m{i}").as_bytes()).await;
        let d = next(&mut c).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        ack(&d).await;
    }
    assert!(ch.status().connected(), "channel still open");
    publish(&ch, "", "prompt", b"last").await;
    assert_eq!(body(&next(&mut c).await), "last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_consumer_mode_cancels_only_the_late_consumer() {
    let b = broker(Some(1000), ConsumerTimeoutAction::Cancel);
    let (_c, ch) = open(&b).await;
    declare(&ch, "celery").await;
    declare(&ch, "other-q").await;
    publish(&ch, "", "celery", b"long task").await;
    let mut late = consume(&ch, "celery", "late").await;
    let _d = next(&mut late).await;
    // The server cancels the consumer: lapin ends its stream.
    let end = within(
        "server-sent basic.cancel",
        futures_util::StreamExt::next(&mut late),
    )
    .await;
    assert!(end.is_none(), "consumer stream should end, got {end:?}");
    eventually("message requeued", || {
        queue_counts(&b, "celery") == Some((1, 0))
    })
    .await;
    // The channel itself stays usable.
    assert!(ch.status().connected());
    publish(&ch, "", "other-q", b"still works").await;
    let mut c2 = consume(&ch, "other-q", "c2").await;
    assert_eq!(body(&next(&mut c2).await), "still works");
}
