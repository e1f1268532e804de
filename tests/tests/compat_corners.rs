//! The corners where clients saw Warren answer differently from RabbitMQ (3.10.8 and 4.0.5
//! give the answers asserted here; checked side by side): immediate publishes, channel_max,
//! exclusive redeclaration, the default exchange, and unbinding what is already gone.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use warren_tests::*;

const LOCKED_TEXT: &str = "It could be originally declared on another connection or the exclusive \
                           property value does not match that of the original declaration.";

async fn publish_immediate(mandatory: bool, confirms: bool) {
    let b = TestBroker::start();
    let (conn, ch) = open(&b).await;
    declare(&ch, "imm").await;
    if confirms {
        within(
            "confirm_select",
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .unwrap();
    }
    let mut ev = events(&conn);
    let _ = ch
        .basic_publish(
            "".into(),
            "imm".into(),
            BasicPublishOptions {
                immediate: true,
                mandatory,
            },
            b"x",
            BasicProperties::default(),
        )
        .await;
    let e = next_error(&mut ev).await;
    let text = expect_error_code(&e, 540);
    assert_eq!(text, "NOT_IMPLEMENTED - immediate=true");
    // Nothing was enqueued.
    assert_eq!(queue_counts(&b, "imm"), Some((0, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_publish_closes_the_connection_with_540() {
    publish_immediate(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_publish_with_confirms_and_mandatory_closes_the_connection_with_540() {
    publish_immediate(false, true).await;
    publish_immediate(true, false).await;
    publish_immediate(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_max_counts_open_channels_not_channel_numbers() {
    use warren_tests::raw::{method_frame, RawClient};
    let b = TestBroker::with_config(ServerConfig {
        channel_max: 3,
        ..Default::default()
    });
    let mut raw = RawClient::connect(b.addr).await;
    raw.handshake().await;
    // Any number can be opened, high ones included.
    for n in [100u16, 65535, 7] {
        raw.send(&method_frame(n, 20, 10, &[0])).await;
        let ok = raw.read_method().await.expect("channel.open-ok");
        assert_eq!((ok.channel, ok.method_id()), (n, (20, 11)));
    }
    // A closed channel's number is free again at once, and frees a slot.
    raw.send(&method_frame(65535, 20, 40, &[0, 0, 0, 0, 0, 0, 0]))
        .await;
    let ok = raw.read_method().await.expect("channel.close-ok");
    assert_eq!((ok.channel, ok.method_id()), (65535, (20, 41)));
    raw.send(&method_frame(65535, 20, 10, &[0])).await;
    let ok = raw.read_method().await.expect("channel.open-ok");
    assert_eq!((ok.channel, ok.method_id()), (65535, (20, 11)));
    // The fourth open channel is one too many: 530 on the connection, naming the counts.
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    let close = raw.read_method().await.expect("connection.close");
    assert_eq!((close.channel, close.method_id()), (0, (10, 50)));
    assert_eq!(close.close_code(), 530);
    let text = String::from_utf8_lossy(&close.payload[7..]).to_string();
    assert!(
        text.contains(
            "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)"
        ),
        "{text}"
    );
    // class and method of channel.open
    let n = close.payload.len();
    assert_eq!(&close.payload[n - 4..], &[0, 20, 0, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_an_exclusive_queue_with_another_exclusive_flag_is_resource_locked() {
    let b = TestBroker::start();
    let (conn, ch) = open(&b).await;
    let excl = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("ex1".into(), excl, FieldTable::default()),
    )
    .await
    .unwrap();
    // Same connection, exclusive=false: 405, not 406.
    let text = expect_code(
        ch.queue_declare(
            "ex1".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        405,
    );
    assert_eq!(
        text,
        format!("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'ex1' in vhost '/'. {LOCKED_TEXT}")
    );
    // A non-exclusive queue redeclared exclusive: 405 as well.
    let ch = channel(&conn).await;
    declare(&ch, "plain1").await;
    let text = expect_code(
        ch.queue_declare("plain1".into(), excl, FieldTable::default())
            .await,
        405,
    );
    assert!(
        text.starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'plain1'"
        ),
        "{text}"
    );
    // An exclusive queue is never durable (as RabbitMQ): redeclaring it durable or not is fine,
    // and a passive declare ignores the exclusive flag.
    let ch = channel(&conn).await;
    let durable_excl = QueueDeclareOptions {
        exclusive: true,
        durable: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("ex2".into(), durable_excl, FieldTable::default()),
    )
    .await
    .unwrap();
    within(
        "redeclare",
        ch.queue_declare("ex2".into(), excl, FieldTable::default()),
    )
    .await
    .unwrap();
    within(
        "redeclare",
        ch.queue_declare("ex1".into(), durable_excl, FieldTable::default()),
    )
    .await
    .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(
        "passive",
        ch.queue_declare("ex2".into(), passive, FieldTable::default()),
    )
    .await
    .unwrap();
    assert!(!b.broker.vhost("/").unwrap().queue("ex2").unwrap().durable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_exchange_is_refused_as_rabbitmq_refuses_it() {
    const REFUSED: &str = "ACCESS_REFUSED - operation not permitted on the default exchange";
    let b = TestBroker::start();
    let (conn, _) = open(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "dq").await;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let text = expect_code(
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(text, REFUSED);
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(text, REFUSED);
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default())
            .await,
        403,
    );
    assert_eq!(text, REFUSED);
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_bind(
            "dq".into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(text, REFUSED);
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_unbind("dq".into(), "".into(), "dq".into(), FieldTable::default())
            .await,
        403,
    );
    assert_eq!(text, REFUSED);
    for (dst, src) in [("", "amq.direct"), ("amq.direct", "")] {
        let ch = channel(&conn).await;
        let text = expect_code(
            ch.exchange_bind(
                dst.into(),
                src.into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await,
            403,
        );
        assert_eq!(text, REFUSED);
        let ch = channel(&conn).await;
        let text = expect_code(
            ch.exchange_unbind(
                dst.into(),
                src.into(),
                "k".into(),
                ExchangeUnbindOptions::default(),
                FieldTable::default(),
            )
            .await,
            403,
        );
        assert_eq!(text, REFUSED);
    }
    // System exchanges cannot be deleted, existing or not.
    for name in ["amq.direct", "amq.nosuch"] {
        let ch = channel(&conn).await;
        let text = expect_code(
            ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await,
            403,
        );
        assert_eq!(
            text,
            format!(
                "ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed"
            )
        );
    }
    // The default exchange still routes.
    let ch = channel(&conn).await;
    publish(&ch, "", "dq", b"m").await;
    wait_counts(&b, "dq", 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_what_is_gone_answers_unbind_ok() {
    let b = TestBroker::start();
    let (conn, ch) = open(&b).await;
    declare(&ch, "uq").await;
    declare_exchange(&ch, "ux", ExchangeKind::Direct).await;
    let unbind_q = |q: &'static str, x: &'static str, k: &'static str| {
        let ch = ch.clone();
        async move {
            within(
                "queue.unbind",
                ch.queue_unbind(q.into(), x.into(), k.into(), FieldTable::default()),
            )
            .await
            .unwrap_or_else(|e| panic!("queue.unbind {q} {x} {k}: {e}"))
        }
    };
    unbind_q("nosuchq", "ux", "k").await;
    unbind_q("uq", "nosuchx", "k").await;
    unbind_q("uq", "ux", "nokey").await;
    unbind_q("uq", "amq.default", "uq").await;
    let unbind_x = |d: &'static str, s: &'static str, k: &'static str| {
        let ch = ch.clone();
        async move {
            within(
                "exchange.unbind",
                ch.exchange_unbind(
                    d.into(),
                    s.into(),
                    k.into(),
                    ExchangeUnbindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("exchange.unbind {d} {s} {k}: {e}"))
        }
    };
    unbind_x("nosuchx", "ux", "k").await;
    unbind_x("ux", "nosuchx", "k").await;
    unbind_x("amq.fanout", "ux", "k").await;

    // An RPC helper's clean-up: cancel the consumer of an auto-delete reply queue (which
    // deletes it), then unbind it, then delete it; no step fails.
    let auto = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("reply".into(), auto, FieldTable::default()),
    )
    .await
    .unwrap();
    bind(&ch, "reply", "ux", "r").await;
    let _consumer = consume(&ch, "reply", "c1").await;
    within(
        "cancel",
        ch.basic_cancel("c1".into(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    eventually("auto-delete queue gone", || !queue_exists(&b, "reply")).await;
    unbind_q("reply", "ux", "r").await;
    within(
        "delete",
        ch.queue_delete("reply".into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();

    // A binding to another connection's exclusive queue is still protected (405), but a
    // binding that does not exist unbinds fine even there.
    let (_owner_conn, owner) = open(&b).await;
    let excl = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "declare",
        owner.queue_declare("theirs".into(), excl, FieldTable::default()),
    )
    .await
    .unwrap();
    bind(&owner, "theirs", "ux", "t").await;
    unbind_q("theirs", "ux", "other-key").await;
    let ch2 = channel(&conn).await;
    expect_code(
        ch2.queue_unbind(
            "theirs".into(),
            "ux".into(),
            "t".into(),
            FieldTable::default(),
        )
        .await,
        405,
    );
    // The channel that did all of this is still open.
    declare(&ch, "still-open").await;
}

/// Auto-delete exchanges go when the last binding *from* them goes, through e2e bindings too,
/// and the cascade follows (checked against RabbitMQ 3.10.8 and 4.0.5, same answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchanges_cascade_as_in_rabbitmq() {
    let b = TestBroker::start();
    let (_conn, ch) = open(&b).await;
    let vh = b.broker.vhost("/").unwrap();
    let exists = |n: &str| vh.exchange(n).is_some();
    let ad = |name: &'static str, auto_delete: bool| {
        let ch = ch.clone();
        async move {
            within(
                "exchange.declare",
                ch.exchange_declare(
                    name.into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        auto_delete,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap()
        }
    };
    let xbind = |d: &'static str, s: &'static str| {
        let ch = ch.clone();
        async move {
            within(
                "exchange.bind",
                ch.exchange_bind(
                    d.into(),
                    s.into(),
                    "".into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap()
        }
    };
    let xunbind = |d: &'static str, s: &'static str| {
        let ch = ch.clone();
        async move {
            within(
                "exchange.unbind",
                ch.exchange_unbind(
                    d.into(),
                    s.into(),
                    "".into(),
                    ExchangeUnbindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap()
        }
    };
    // e2e unbind: the auto-delete source goes, the destination stays.
    ad("b2", true).await;
    ad("b3", false).await;
    xbind("b3", "b2").await;
    xunbind("b3", "b2").await;
    assert!(!exists("b2") && exists("b3"));
    // An auto-delete destination is not deleted by losing a binding *to* it.
    ad("b4", false).await;
    ad("b5", true).await;
    xbind("b5", "b4").await;
    xunbind("b5", "b4").await;
    assert!(exists("b5"));
    ad("c2", false).await;
    ad("c3", true).await;
    xbind("c3", "c2").await;
    within(
        "delete",
        ch.exchange_delete("c2".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert!(exists("c3"));
    // Deleting the destination empties the auto-delete source.
    ad("d4", true).await;
    ad("d5", false).await;
    xbind("d5", "d4").await;
    within(
        "delete",
        ch.exchange_delete("d5".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert!(!exists("d4"));
    // A cascade: f6 -> f7 -> queue; the queue goes, then f7, then f6.
    ad("f6", true).await;
    ad("f7", true).await;
    declare(&ch, "fq").await;
    bind(&ch, "fq", "f7", "").await;
    xbind("f7", "f6").await;
    within(
        "delete",
        ch.queue_delete("fq".into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert!(!exists("f7") && !exists("f6"));
    // The same cascade through an unbind.
    ad("g6", true).await;
    ad("g7", true).await;
    declare(&ch, "gq").await;
    bind(&ch, "gq", "g7", "").await;
    xbind("g7", "g6").await;
    within(
        "unbind",
        ch.queue_unbind("gq".into(), "g7".into(), "".into(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert!(!exists("g7") && !exists("g6"));
    // Unbinding a binding that never existed leaves an unbound auto-delete exchange alone.
    ad("i1", true).await;
    declare(&ch, "iq").await;
    within(
        "unbind",
        ch.queue_unbind("iq".into(), "i1".into(), "zz".into(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert!(exists("i1"));
    // A self-binding.
    ad("k1", true).await;
    xbind("k1", "k1").await;
    xunbind("k1", "k1").await;
    assert!(!exists("k1"));
}

/// A frame of `kind` (2: content header, 3: body) on `channel`.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// A basic.publish to the default exchange whose content header carries `properties` (flags
/// and values as they go on the wire).
fn publish_frames(queue: &str, properties: &[u8], body: &[u8]) -> Vec<u8> {
    use warren_tests::raw::method_frame;
    let mut a = vec![0, 0, 0, queue.len() as u8];
    a.extend_from_slice(queue.as_bytes());
    a.push(0);
    let mut out = method_frame(1, 60, 40, &a);
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    h.extend_from_slice(properties);
    out.extend(raw_frame(2, 1, &h));
    out.extend(raw_frame(3, 1, body));
    out
}

/// RabbitMQ (3.10.8 and 4.0.5) decodes a published message's content header at once and
/// closes the connection with a bare `541 INTERNAL_ERROR` if it is malformed; Warren used to
/// accept it and silently drop every property later (a persistent message became transient
/// when dead-lettered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_content_header_closes_the_connection_with_541() {
    use warren_tests::raw::{method_frame, RawClient};
    let b = TestBroker::start();
    let (_c, ch) = open(&b).await;
    declare(&ch, "props").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // delivery_mode 2 and a headers table holding an unknown field type
        (
            "unknown field type",
            vec![0x30, 0, 0, 0, 0, 5, 1, b'k', b'Z', b'x', b'x', 2],
        ),
        // a headers table announcing more bytes than there are
        ("short table", vec![0x20, 0, 0, 0, 0, 100, b'a', b'b', b'c']),
        // bytes after the last property
        ("trailing bytes", vec![0x10, 0, 2, b'h', b'i', 1, 2, 3]),
    ];
    for (what, props) in cases {
        let mut raw = RawClient::connect(b.addr).await;
        raw.handshake().await;
        raw.send(&method_frame(1, 20, 10, &[0])).await;
        assert_eq!(raw.read_method().await.unwrap().method_id(), (20, 11));
        raw.send(&publish_frames("props", &props, b"body")).await;
        let close = raw.read_method().await.expect("connection.close");
        assert_eq!((close.channel, close.method_id()), (0, (10, 50)), "{what}");
        assert_eq!(close.close_code(), 541, "{what}");
        let n = close.payload[6] as usize;
        assert_eq!(&close.payload[7..7 + n], b"INTERNAL_ERROR", "{what}");
        assert_eq!(
            &close.payload[7 + n..],
            &[0, 0, 0, 0],
            "{what}: no class or method"
        );
        // Nothing reached the queue.
        assert_eq!(queue_counts(&b, "props"), Some((0, 0)), "{what}");
    }
    // A well-formed header with a table still goes through, properties intact.
    let mut raw = RawClient::connect(b.addr).await;
    raw.handshake().await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    assert_eq!(raw.read_method().await.unwrap().method_id(), (20, 11));
    let good = vec![0x30, 0, 0, 0, 0, 7, 1, b'k', b'S', 0, 0, 0, 0, 2];
    raw.send(&publish_frames("props", &good, b"body")).await;
    wait_counts(&b, "props", 1, 0).await;
    let got = within(
        "basic_get",
        ch.basic_get("props".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the good message");
    assert_eq!(got.properties.delivery_mode(), &Some(2));
    assert!(got
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .contains_key("k"));
}

/// Divergences the differential tester found (tools/amqp-diff/repros), each answered as
/// RabbitMQ 4.0.5 answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_orders_and_texts_found_by_the_differential_tester() {
    use lapin::types::AMQPValue;
    let b = TestBroker::start();
    let (conn, _) = open(&b).await;
    // queue.bind: the exchange is checked before the queue (w01a).
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_bind(
            "nq".into(),
            "nx".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no exchange 'nx' in vhost '/'");
    // An existing queue is compared before arguments are checked (w02b).
    let ch = channel(&conn).await;
    let auto = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.queue_declare("ad".into(), auto, FieldTable::default()),
    )
    .await
    .unwrap();
    let text = expect_code(
        ch.queue_declare(
            "ad".into(),
            QueueDeclareOptions::default(),
            table(&[("x-max-priority", AMQPValue::LongString("0".into()))]),
        )
        .await,
        406,
    );
    assert!(text.contains("inequivalent arg 'auto_delete'"), "{text}");
    // Argument texts are RabbitMQ's Erlang terms (w03).
    for (arg, value, why) in [
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-max-priority",
            AMQPValue::LongInt(300),
            "{max_value_exceeded,300}",
        ),
        (
            "x-expires",
            AMQPValue::LongString("x".into()),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-overflow",
            AMQPValue::LongString("sideways".into()),
            "invalid_overflow",
        ),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString("k".into()),
            "routing_key_but_no_dlx_defined",
        ),
    ] {
        let ch = channel(&conn).await;
        let text = expect_code(
            ch.queue_declare(
                "argq".into(),
                QueueDeclareOptions::default(),
                table(&[(arg, value)]),
            )
            .await,
            406,
        );
        assert_eq!(
            text,
            format!(
                "PRECONDITION_FAILED - invalid arg '{arg}' for queue 'argq' in vhost '/': {why}"
            )
        );
    }
    // A transaction checks an ack's tag when it arrives (w05a).
    let (tx_conn, ch) = open(&b).await;
    within("tx_select", ch.tx_select()).await.unwrap();
    let mut ev = events(&tx_conn);
    let _ = ch.basic_ack(4, BasicAckOptions::default()).await;
    let e = next_error(&mut ev).await;
    let text = expect_error_code(&e, 406);
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 4");
    // x-max-priority 0 serves two levels, as RabbitMQ 4.0 (v01).
    let ch = channel(&conn).await;
    within(
        "declare",
        ch.queue_declare(
            "p0".into(),
            QueueDeclareOptions::default(),
            table(&[("x-max-priority", AMQPValue::LongInt(0))]),
        ),
    )
    .await
    .unwrap();
    for (body, prio) in [("a", None), ("b", Some(1u8)), ("c", Some(5u8))] {
        let props = match prio {
            Some(p) => BasicProperties::default().with_priority(p),
            None => BasicProperties::default(),
        };
        within(
            "publish",
            ch.basic_publish(
                "".into(),
                "p0".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            ),
        )
        .await
        .unwrap();
    }
    wait_counts(&b, "p0", 3, 0).await;
    let mut order = Vec::new();
    while let Some(m) = within(
        "get",
        ch.basic_get("p0".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    {
        order.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    assert_eq!(
        order,
        ["b", "c", "a"],
        "1 and 5 share the top level, in publish order"
    );
    // A reused consumer tag is 530 before the queue is looked up (w09).
    let (conn, ch) = open(&b).await;
    declare(&ch, "tagq").await;
    let _c = consume(&ch, "tagq", "t0").await;
    let mut ev = events(&conn);
    let _ = ch
        .basic_consume(
            "missing".into(),
            "t0".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let e = next_error(&mut ev).await;
    let text = expect_error_code(&e, 530);
    assert_eq!(text, "NOT_ALLOWED - attempt to reuse consumer tag 't0'");
}
