//! The corners where clients saw Warren answer differently from RabbitMQ (3.10.8 and 4.0.5
//! give the answers asserted here; checked side by side): immediate publishes, channel_max,
//! exclusive redeclaration, the default exchange, and unbinding what is already gone.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use warren_tests::{ServerConfig, TestBroker};

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
    use common::raw::{method_frame, RawClient};
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
