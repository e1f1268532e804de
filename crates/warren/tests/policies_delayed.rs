//! Policies applied to live queues, and delayed delivery through x-delayed-message exchanges
//! (including across a broker restart).

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use warren_tests::*;

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

fn policy(name: &str, pattern: &str, key: &str, value: i64) -> warren_broker::policy::Policy {
    let mut def = warren_protocol::FieldTable::new();
    def.insert(key, warren_protocol::FieldValue::I64(value));
    warren_broker::policy::Policy::new(name, pattern, "queues", 0, def).expect("valid policy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_applies_to_a_live_queue() {
    let b = TestBroker::start();
    let (_c, ch) = open(&b).await;
    declare(&ch, "live").await;
    for i in 0..5 {
        publish(&ch, "", "live", format!("m{i}").as_bytes()).await;
    }
    wait_counts(&b, "live", 5, 0).await;
    let vh = b.broker.vhost("/").expect("vhost");
    vh.set_policy(policy("cap", "^live$", "max-length", 2), false);
    wait_counts(&b, "live", 2, 0).await;
    // The oldest went (drop-head); the newest two remain.
    let mut c = consume(&ch, "live", "c").await;
    assert_eq!(next_bodies(&mut c, 2).await, vec!["m3", "m4"]);
    // Arguments take precedence over a policy.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(4));
    within(
        "declare",
        ch.queue_declare("argued".into(), QueueDeclareOptions::default(), args),
    )
    .await
    .expect("declare");
    vh.set_policy(policy("cap2", "^argued$", "max-length", 1), false);
    for i in 0..6 {
        publish(&ch, "", "argued", format!("a{i}").as_bytes()).await;
    }
    wait_counts(&b, "argued", 4, 0).await;
    // Clearing the policy lifts its limit.
    assert!(vh.clear_policy("cap", false));
    for i in 5..9 {
        publish(&ch, "", "live", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(next_bodies(&mut c, 4).await, vec!["m5", "m6", "m7", "m8"]);
}

fn delayed_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    args
}

fn delay(ms: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    BasicProperties::default()
        .with_headers(h)
        .with_delivery_mode(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_exchange_holds_messages_until_due() {
    let b = TestBroker::start();
    let (_c, ch) = open(&b).await;
    within(
        "exchange_declare",
        ch.exchange_declare(
            "later".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            delayed_args(),
        ),
    )
    .await
    .expect("declare x-delayed-message");
    declare(&ch, "due").await;
    within(
        "bind",
        ch.queue_bind(
            "due".into(),
            "later".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("bind");
    let sent = Instant::now();
    publish_props(&ch, "later", "k", b"in 600 ms", delay(600)).await;
    publish_props(&ch, "later", "k", b"now", BasicProperties::default()).await;
    let mut c = consume(&ch, "due", "c").await;
    assert_eq!(body(&next(&mut c).await), "now");
    let d = next(&mut c).await;
    assert_eq!(body(&d), "in 600 ms");
    assert!(
        sent.elapsed() >= Duration::from_millis(550),
        "delivered after {:?}",
        sent.elapsed()
    );
    // Without x-delayed-type the declaration is refused.
    let (_c2, ch2) = open(&b).await;
    let r = ch2
        .exchange_declare(
            "bad".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    expect_code(r, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_survive_a_sigkill() {
    let tmp = TempDir::new("delayed");
    let dir = tmp.join("data");
    let mut broker = BrokerProcess::start(WARREN, &dir, &[]);
    {
        let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            "durable-later".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            delayed_args(),
        )
        .await
        .expect("declare");
        ch.queue_declare(
            "delayed-q".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("declare queue");
        ch.queue_bind(
            "delayed-q".into(),
            "durable-later".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .expect("bind");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm");
        let confirm = ch
            .basic_publish(
                "durable-later".into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"survivor",
                delay(1500),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirmed").is_ack());
    }
    // Give the definitions saver a moment, then crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill9_and_restart(&[]);
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("reconnect");
    let ch = conn.create_channel().await.expect("channel");
    let mut c = ch
        .basic_consume(
            "delayed-q".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .expect("consume after restart");
    let d = within(
        "delayed delivery after restart",
        futures_util::StreamExt::next(&mut c),
    )
    .await;
    let d = d.expect("a delivery").expect("no error");
    assert_eq!(&d.data[..], b"survivor");
    broker.kill9();
}
