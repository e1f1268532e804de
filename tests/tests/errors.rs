//! Error replies as a real client sees them: which reply code, and whether the channel or the
//! whole connection is closed. Channel errors must leave the connection (and its other
//! channels) working; connection errors must leave other connections working. The last tests
//! speak raw bytes to check what a well-behaved client cannot send.

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren_tests::raw::{method_frame, RawClient, PROTOCOL_HEADER};
use warren_tests::*;

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

/// A round trip on `ch`: proves that the methods sent before it were accepted.
async fn round_trip(ch: &Channel) -> lapin::Result<()> {
    within(
        "basic_qos round trip",
        ch.basic_qos(0, BasicQosOptions::default()),
    )
    .await
}

/// Asserts the connection still works: opens a fresh channel and declares a queue on it.
async fn assert_connection_usable(conn: &Connection) {
    let ch = channel(conn).await;
    let q = within(
        "declare on a fresh channel",
        ch.queue_declare("".into(), QueueDeclareOptions::exclusive(), no_args()),
    )
    .await
    .expect("the connection survives a channel error");
    assert!(q.name().as_str().starts_with("amq.gen-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_a_missing_queue_is_404_and_closes_only_the_channel() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let other = channel(&conn).await;
    let r = within(
        "passive declare",
        ch.queue_declare("missing".into(), passive(), no_args()),
    )
    .await;
    let text = expect_code(r, 404);
    assert!(
        text.contains("missing"),
        "reply text names the queue: {text}"
    );
    assert!(!ch.status().connected(), "the channel is closed");
    // Its sibling channel and the connection carry on.
    declare(&other, "still-fine").await;
    assert!(conn.status().connected());
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_an_existing_queue_reports_counts() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "there").await;
    publish(&ch, "", "there", b"x").await;
    let q = within(
        "passive declare",
        ch.queue_declare("there".into(), passive(), no_args()),
    )
    .await
    .expect("passive declare of an existing queue");
    assert_eq!((q.message_count(), q.consumer_count()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_a_queue_with_another_durable_flag_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    declare(&ch, "q").await;
    let r = within(
        "redeclare durable",
        ch.queue_declare("q".into(), QueueDeclareOptions::durable(), no_args()),
    )
    .await;
    let text = expect_code(r, 406);
    assert!(
        text.contains("durable"),
        "reply text names the argument: {text}"
    );
    assert_connection_usable(&conn).await;
    // The original queue is unchanged and the equivalent redeclare still works.
    let ch2 = channel(&conn).await;
    declare(&ch2, "q").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_a_queue_with_other_arguments_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    within(
        "declare",
        ch.queue_declare("capped".into(), QueueDeclareOptions::default(), args),
    )
    .await
    .expect("declare with x-max-length");
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::LongInt(20));
    let r = within(
        "redeclare",
        ch.queue_declare("capped".into(), QueueDeclareOptions::default(), other),
    )
    .await;
    expect_code(r, 406);
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_an_exchange_with_another_type_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    declare_exchange(&ch, "x", ExchangeKind::Direct).await;
    let r = within(
        "redeclare as fanout",
        ch.exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
    )
    .await;
    let text = expect_code(r, 406);
    assert!(text.contains("type"), "reply text: {text}");
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_name_is_403() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let r = within(
        "declare amq.foo",
        ch.exchange_declare(
            "amq.foo".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
    )
    .await;
    let text = expect_code(r, 403);
    assert!(text.contains("amq."), "reply text: {text}");

    let ch = channel(&conn).await;
    let r = within(
        "declare queue amq.foo",
        ch.queue_declare("amq.foo".into(), QueueDeclareOptions::default(), no_args()),
    )
    .await;
    expect_code(r, 403);

    // Redeclaring a predeclared amq.* exchange as it is, or passively, is allowed.
    let ch = channel(&conn).await;
    within(
        "declare amq.direct",
        ch.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("redeclare amq.direct equivalently");
    within(
        "passive amq.topic",
        ch.exchange_declare(
            "amq.topic".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("passive declare of amq.topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_connections_exclusive_queue_is_405() {
    let broker = TestBroker::start();
    let (_owner, owner_ch) = open(&broker).await;
    within(
        "declare exclusive",
        owner_ch.queue_declare("mine".into(), QueueDeclareOptions::exclusive(), no_args()),
    )
    .await
    .expect("declare exclusive");

    let intruder = connect(&broker).await;
    let ch = channel(&intruder).await;
    let r = within(
        "passive declare",
        ch.queue_declare("mine".into(), passive(), no_args()),
    )
    .await;
    expect_code(r, 405);
    let ch = channel(&intruder).await;
    let r = within(
        "redeclare",
        ch.queue_declare("mine".into(), QueueDeclareOptions::exclusive(), no_args()),
    )
    .await;
    expect_code(r, 405);
    let ch = channel(&intruder).await;
    let r = within(
        "consume",
        ch.basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 405);
    let ch = channel(&intruder).await;
    let r = within(
        "get",
        ch.basic_get("mine".into(), BasicGetOptions::default()),
    )
    .await;
    expect_code(r, 405);
    let ch = channel(&intruder).await;
    let r = within(
        "delete",
        ch.queue_delete("mine".into(), QueueDeleteOptions::default()),
    )
    .await;
    expect_code(r, 405);
    assert!(queue_exists(&broker, "mine"));

    // The owner can still use it.
    publish(&owner_ch, "", "mine", b"hi").await;
    let m = within(
        "owner get",
        owner_ch.basic_get("mine".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("owner get");
    assert_eq!(m.expect("message").delivery.data, b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_an_unknown_delivery_tag_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let mut ev = events(&conn);
    within("ack 42", ch.basic_ack(42, BasicAckOptions::default()))
        .await
        .expect("ack is sent");
    let text = expect_error_code(&next_error(&mut ev).await, 406);
    assert!(
        text.contains("unknown delivery tag 42"),
        "reply text: {text}"
    );
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_twice_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let mut ev = events(&conn);
    declare(&ch, "q").await;
    publish(&ch, "", "q", b"once").await;
    let m = within("get", ch.basic_get("q".into(), BasicGetOptions::default()))
        .await
        .expect("get")
        .expect("a message");
    let tag = m.delivery.delivery_tag;
    within("first ack", ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .expect("ack");
    round_trip(&ch).await.expect("the first ack is fine");
    wait_counts(&broker, "q", 0, 0).await;
    within("second ack", ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .expect("ack sent");
    expect_error_code(&next_error(&mut ev).await, 406);
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacking_or_rejecting_an_unknown_tag_is_406() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let mut ev = events(&conn);
    let ch = channel(&conn).await;
    within("nack", ch.basic_nack(7, BasicNackOptions::default()))
        .await
        .expect("nack sent");
    expect_error_code(&next_error(&mut ev).await, 406);
    let ch = channel(&conn).await;
    within("reject", ch.basic_reject(7, BasicRejectOptions::default()))
        .await
        .expect("reject sent");
    expect_error_code(&next_error(&mut ev).await, 406);
    // Ack-multiple of a tag never handed out is also unknown.
    let ch = channel(&conn).await;
    within(
        "ack multiple",
        ch.basic_ack(3, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack sent");
    expect_error_code(&next_error(&mut ev).await, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_from_a_missing_queue_is_404() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let r = within(
        "consume",
        ch.basic_consume(
            "nowhere".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 404);
    let ch = channel(&conn).await;
    let r = within(
        "get",
        ch.basic_get("nowhere".into(), BasicGetOptions::default()),
    )
    .await;
    expect_code(r, 404);
    let ch = channel(&conn).await;
    let r = within(
        "bind",
        ch.queue_bind(
            "nowhere".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 404);
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_exchange_is_404() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let mut ev = events(&conn);
    within(
        "publish",
        ch.basic_publish(
            "no-such-exchange".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish is sent");
    let text = expect_error_code(&next_error(&mut ev).await, 404);
    assert!(text.contains("no-such-exchange"), "reply text: {text}");
    assert_connection_usable(&conn).await;

    // Binding to a missing exchange too.
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let r = within(
        "bind",
        ch.queue_bind(
            "q".into(),
            "no-such-exchange".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_exchange_in_confirm_mode_is_404() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    within(
        "confirm_select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm_select");
    let confirm = within(
        "publish",
        ch.basic_publish(
            "nope".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish sent");
    // The pending confirm fails with the channel's error instead of hanging.
    let r = within("confirm", confirm).await;
    expect_code(r, 404);
}

/// RabbitMQ 4 answers an unknown exchange type with a channel error (406); 3.x closed the
/// whole connection with 503. Warren follows 4.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_exchange_type_closes_the_channel_with_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let r = within(
        "declare x-nonsense exchange",
        ch.exchange_declare(
            "weird".into(),
            ExchangeKind::Custom("x-nonsense".into()),
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
    )
    .await;
    let text = expect_code(r, 406);
    assert!(text.contains("x-nonsense"), "reply text: {text}");
    // The connection stays up.
    assert_connection_usable(&conn).await;
    assert!(broker
        .broker
        .vhost("/")
        .unwrap()
        .exchange("weird")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_durable_quorum_queue_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let r = within(
        "declare non-durable quorum queue",
        ch.queue_declare("qq".into(), QueueDeclareOptions::default(), args.clone()),
    )
    .await;
    let text = expect_code(r, 406);
    assert!(text.contains("non-durable"), "reply text: {text}");
    assert!(!queue_exists(&broker, "qq"));
    let ch = channel(&conn).await;
    let r = within(
        "declare exclusive quorum queue",
        ch.queue_declare(
            "qq".into(),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await;
    expect_code(r, 406);
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_consumer_conflict_is_403() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let ch1 = channel(&conn).await;
    declare(&ch1, "q").await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _c1 = consume_opts(&ch1, "q", "first", exclusive).await;

    // Nobody else may consume while an exclusive consumer holds the queue.
    let ch2 = channel(&conn).await;
    let r = within(
        "second consumer",
        ch2.basic_consume(
            "q".into(),
            "second".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    let text = expect_code(r, 403);
    assert!(text.contains("exclusive"), "reply text: {text}");

    // And an exclusive consumer cannot join a queue that has consumers.
    let ch3 = channel(&conn).await;
    declare(&ch3, "shared").await;
    let _c3 = consume(&ch3, "shared", "plain").await;
    let ch4 = channel(&conn).await;
    let r = within(
        "exclusive consumer on a busy queue",
        ch4.basic_consume("shared".into(), "excl".into(), exclusive, no_args()),
    )
    .await;
    expect_code(r, 403);

    // The exclusive consumer still gets the queue's messages.
    publish(&ch1, "", "q", b"only-for-first").await;
    let mut c1 = _c1;
    assert_eq!(body(&next(&mut c1).await), "only-for-first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_consumer_tag_on_a_channel_is_530() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    declare(&ch, "q").await;
    let _c = consume(&ch, "q", "same-tag").await;
    let r = within(
        "second consume with the same tag",
        ch.basic_consume(
            "q".into(),
            "same-tag".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 530);
    eventually("connection closed", || !conn.status().connected()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_and_if_empty_are_406() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "busy").await;
    let _c = consume(&ch, "busy", "c").await;
    let ch2 = channel(&conn).await;
    let r = within(
        "delete if-unused",
        ch2.queue_delete(
            "busy".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let text = expect_code(r, 406);
    assert!(text.contains("in use"), "reply text: {text}");
    assert!(queue_exists(&broker, "busy"));

    let ch3 = channel(&conn).await;
    declare(&ch3, "full").await;
    publish(&ch3, "", "full", b"x").await;
    let r = within(
        "delete if-empty",
        ch3.queue_delete(
            "full".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await;
    let text = expect_code(r, 406);
    assert!(text.contains("not empty"), "reply text: {text}");
    assert!(queue_exists(&broker, "full"));

    // Without the conditions both go, and delete-ok counts the messages.
    let ch4 = channel(&conn).await;
    let n = within(
        "delete",
        ch4.queue_delete("full".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    assert_eq!(n, 1);
    assert!(!queue_exists(&broker, "full"));
    // if-empty on an empty queue, if-unused on an unused one: allowed.
    declare(&ch4, "idle").await;
    within(
        "delete idle",
        ch4.queue_delete(
            "idle".into(),
            QueueDeleteOptions {
                if_unused: true,
                if_empty: true,
                nowait: false,
            },
        ),
    )
    .await
    .expect("conditional delete of an idle queue");
    assert!(!queue_exists(&broker, "idle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_delete_if_unused_is_406() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    declare_exchange(&ch, "bound", ExchangeKind::Direct).await;
    declare(&ch, "q").await;
    bind(&ch, "q", "bound", "k").await;
    let r = within(
        "delete if-unused",
        ch.exchange_delete(
            "bound".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    expect_code(r, 406);
    let ch = channel(&conn).await;
    let r = within(
        "delete amq.direct",
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    expect_code(r, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_403() {
    let broker = TestBroker::start();
    let url = format!("amqp://guest:wrong@{}/%2f", broker.addr);
    let r = within(
        "connect",
        lapin::Connection::connect(&url, ConnectionProperties::default()),
    )
    .await;
    expect_code(r.map(|_| ()), 403);
    let url = format!("amqp://nobody:guest@{}/%2f", broker.addr);
    let r = within(
        "connect",
        lapin::Connection::connect(&url, ConnectionProperties::default()),
    )
    .await;
    expect_code(r.map(|_| ()), 403);
    // The broker still accepts good clients.
    let conn = connect(&broker).await;
    assert_connection_usable(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_vhost_is_refused() {
    let broker = TestBroker::start();
    let url = format!("amqp://guest:guest@{}/nope", broker.addr);
    let r = within(
        "connect",
        lapin::Connection::connect(&url, ConnectionProperties::default()),
    )
    .await;
    // RabbitMQ answers connection.open for a missing vhost with 530 NOT_ALLOWED.
    expect_code(r.map(|_| ()), 530);
}

/// A method on a channel that was never opened closes the connection with 504
/// CHANNEL_ERROR; the broker keeps serving other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_on_an_unopened_channel_closes_the_connection_with_504() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake().await;
    // basic.qos(prefetch_size 0, prefetch_count 1, global false) on channel 5.
    let mut args = Vec::new();
    args.extend_from_slice(&0u32.to_be_bytes());
    args.extend_from_slice(&1u16.to_be_bytes());
    args.push(0);
    raw.send(&method_frame(5, 60, 10, &args)).await;
    raw.expect_connection_close(504).await;

    let conn = connect(&broker).await;
    assert_connection_usable(&conn).await;
}

/// A channel.open on an already open channel is a connection error too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_channel_twice_closes_the_connection() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake().await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    let ok = raw.read_method().await.expect("channel.open-ok");
    assert_eq!((ok.channel, ok.method_id()), (1, (20, 11)));
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    raw.expect_connection_close(504).await;
}

/// Garbage after a complete handshake: the broker answers with connection.close
/// (501 FRAME_ERROR) and closes the socket, and keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_the_connection() {
    let broker = TestBroker::start();
    let bystander = connect(&broker).await;
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake().await;
    raw.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    let f = raw
        .read_method()
        .await
        .expect("connection.close before the socket closes");
    assert_eq!(
        (f.channel, f.method_id()),
        (0, (10, 50)),
        "connection.close"
    );
    assert_eq!(f.close_code(), 501, "FRAME_ERROR");
    // The broker closes the socket (at the latest once close-ok would be overdue).
    raw.read_to_end().await;
    assert_connection_usable(&bystander).await;
    let conn = connect(&broker).await;
    assert_connection_usable(&conn).await;
}

/// Garbage right after the protocol header, in place of connection.start-ok: the broker
/// gives up on the connection; nothing else is affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_during_the_handshake_closes_the_socket() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send(PROTOCOL_HEADER).await;
    let start = raw.read_method().await.expect("connection.start");
    assert_eq!(start.method_id(), (10, 10));
    raw.send(&[0xFF; 64]).await;
    // Either a connection.close with a frame error, or just the socket closing.
    if let Some(f) = raw.read_frame().await {
        assert_eq!(
            f.method_id(),
            (10, 50),
            "only connection.close may follow garbage"
        );
        assert_eq!(f.close_code(), 501, "FRAME_ERROR");
    }
    raw.read_to_end().await;
    let conn = connect(&broker).await;
    assert_connection_usable(&conn).await;
}

/// A frame whose end octet is not 0xCE is a frame error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_end_is_a_frame_error() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake().await;
    let mut f = method_frame(1, 20, 10, &[0]);
    *f.last_mut().unwrap() = 0x00;
    raw.send(&f).await;
    raw.expect_connection_close(501).await;
}

/// A client speaking another protocol version gets the header of the one the broker speaks,
/// then the socket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_protocol_header_gets_amqp_0_9_1_back() {
    let broker = TestBroker::start();
    for header in [
        &b"AMQP\x01\x01\x00\x0a"[..], // AMQP 0-10
        &b"AMQP\x00\x00\x09\x00"[..], // 0-9
        &b"AMQP\x00\x01\x00\x00"[..], // AMQP 1.0
        &b"GET / HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut raw = RawClient::connect(broker.addr).await;
        raw.send(header).await;
        let reply = raw.read_to_end().await;
        assert_eq!(reply, PROTOCOL_HEADER, "reply to header {header:?}");
    }
    let conn = connect(&broker).await;
    assert_connection_usable(&conn).await;
}

/// A client that negotiated heartbeats and then goes silent is disconnected after two missed
/// intervals (RabbitMQ closes the socket without connection.close); meanwhile the broker
/// sends its own heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_disconnected_after_missed_heartbeats() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake_with_heartbeat(1).await;
    let started = std::time::Instant::now();
    let mut heartbeats = 0;
    while let Some(f) = raw.read_frame().await {
        match f.kind {
            warren_tests::raw::FRAME_HEARTBEAT => heartbeats += 1,
            // A connection.close is tolerated; anything else is not.
            _ => assert_eq!(f.method_id(), (10, 50), "unexpected frame"),
        }
    }
    let after = started.elapsed();
    assert!(
        heartbeats >= 1,
        "the broker sends heartbeats on an idle connection"
    );
    assert!(
        after >= std::time::Duration::from_secs(2),
        "closed too early: {after:?}"
    );
    eventually("connection unregistered", || {
        broker.broker.connections.is_empty()
    })
    .await;
}

/// A client that sends heartbeats stays connected though it sends nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_heartbeats_stays_connected() {
    let broker = TestBroker::start();
    let mut raw = RawClient::connect(broker.addr).await;
    raw.handshake_with_heartbeat(1).await;
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        raw.send(&warren_tests::raw::heartbeat_frame()).await;
    }
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    loop {
        let f = raw
            .read_frame()
            .await
            .expect("still connected after 4 s of heartbeats only");
        if f.kind == warren_tests::raw::FRAME_METHOD {
            assert_eq!((f.channel, f.method_id()), (1, (20, 11)), "channel.open-ok");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let r = within(
        "passive exchange declare",
        ch.exchange_declare(
            "ghost".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await;
    let text = expect_code(r, 404);
    assert!(text.contains("ghost"), "reply text: {text}");
    assert_connection_usable(&conn).await;
}

/// RabbitMQ does not implement basic.recover with requeue=false (redelivery to the original
/// consumer): 540 NOT_IMPLEMENTED, a connection error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_recover_without_requeue_is_540() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let r = within(
        "recover requeue=false",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    expect_code(r, 540);
    eventually("connection closed", || !conn.status().connected()).await;
}
