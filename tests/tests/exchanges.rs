//! Routing through every exchange type, as a client sees it: direct, fanout, topic, headers,
//! the default exchange, exchange-to-exchange bindings, internal exchanges, and mandatory
//! publishes that come back with basic.return.

use lapin::options::*;
use lapin::{BasicProperties, ExchangeKind};
use std::collections::BTreeMap;
use warren_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_on_the_exact_key() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "dx", ExchangeKind::Direct).await;
    for q in ["q1", "q2", "q3"] {
        declare(&ch, q).await;
    }
    bind(&ch, "q1", "dx", "a").await;
    bind(&ch, "q2", "dx", "b").await;
    bind(&ch, "q3", "dx", "a").await;
    bind(&ch, "q3", "dx", "a").await; // binding twice is one binding
    bind(&ch, "q2", "amq.direct", "b").await;

    publish(&ch, "dx", "a", b"to-a").await;
    publish(&ch, "dx", "b", b"to-b").await;
    publish(&ch, "dx", "c", b"to-nobody").await;
    publish(&ch, "dx", "A", b"case-sensitive").await;
    publish(&ch, "amq.direct", "b", b"predeclared").await;

    assert_eq!(drain(&ch, "q1").await, ["to-a"]);
    assert_eq!(drain(&ch, "q2").await, ["to-b", "predeclared"]);
    assert_eq!(drain(&ch, "q3").await, ["to-a"]);

    // After unbinding, the key leads nowhere for that queue.
    within(
        "unbind",
        ch.queue_unbind("q1".into(), "dx".into(), "a".into(), no_args()),
    )
    .await
    .expect("unbind");
    publish(&ch, "dx", "a", b"after-unbind").await;
    assert_eq!(drain(&ch, "q1").await, Vec::<String>::new());
    assert_eq!(drain(&ch, "q3").await, ["after-unbind"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_ignores_the_routing_key() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "fx", ExchangeKind::Fanout).await;
    for q in ["f1", "f2", "f3"] {
        declare(&ch, q).await;
        bind(&ch, q, "fx", "whatever").await;
    }
    declare(&ch, "f4").await;
    bind(&ch, "f4", "amq.fanout", "").await;
    publish(&ch, "fx", "", b"m1").await;
    publish(&ch, "fx", "some.key", b"m2").await;
    publish(&ch, "amq.fanout", "k", b"m3").await;
    for q in ["f1", "f2", "f3"] {
        assert_eq!(drain(&ch, q).await, ["m1", "m2"], "queue {q}");
    }
    assert_eq!(drain(&ch, "f4").await, ["m3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_patterns() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "tx", ExchangeKind::Topic).await;
    let bindings = [
        ("all", "#"),
        ("a_star", "a.*"),
        ("a_hash", "a.#"),
        ("star_b", "*.b"),
        ("hash_c", "#.c"),
        ("a_hash_c", "a.#.c"),
        ("star", "*"),
        ("literal", "a.b.c"),
        ("star_star", "*.*"),
        ("empty_word", "a.*.b"),
    ];
    for (q, pattern) in bindings {
        declare(&ch, q).await;
        bind(&ch, q, "tx", pattern).await;
    }
    // Both patterns match "a.b": still one copy.
    bind(&ch, "star_b", "tx", "a.*").await;

    let keys = [
        "", "a", "a.b", "a.c", "a.b.c", "x.a.b.c", "a.x.y.c", "b", "c", "x.b", "a.b.c.d", "a..b",
    ];
    for k in keys {
        publish(&ch, "tx", k, k.as_bytes()).await;
    }
    let want: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("all", keys.to_vec()),
        ("a_star", vec!["a.b", "a.c"]),
        (
            "a_hash",
            vec!["a", "a.b", "a.c", "a.b.c", "a.x.y.c", "a.b.c.d", "a..b"],
        ),
        ("star_b", vec!["a.b", "a.c", "x.b"]),
        ("hash_c", vec!["a.c", "a.b.c", "x.a.b.c", "a.x.y.c", "c"]),
        ("a_hash_c", vec!["a.c", "a.b.c", "a.x.y.c"]),
        ("star", vec!["a", "b", "c"]),
        ("literal", vec!["a.b.c"]),
        ("star_star", vec!["a.b", "a.c", "x.b"]),
        ("empty_word", vec!["a..b"]),
    ]);
    for (q, expected) in want {
        assert_eq!(
            drain(&ch, q).await,
            expected,
            "queue {q} (pattern {:?})",
            bindings.iter().find(|b| b.0 == q).unwrap().1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_x_match_modes() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "hx", ExchangeKind::Headers).await;
    let bindings: [(&str, &[(&str, &str)]); 7] = [
        (
            "h_all",
            &[("x-match", "all"), ("format", "pdf"), ("type", "report")],
        ),
        ("h_default", &[("format", "pdf"), ("type", "report")]),
        (
            "h_any",
            &[("x-match", "any"), ("format", "pdf"), ("type", "report")],
        ),
        (
            "h_all_x",
            &[
                ("x-match", "all-with-x"),
                ("x-trace", "on"),
                ("format", "pdf"),
            ],
        ),
        ("h_any_x", &[("x-match", "any-with-x"), ("x-trace", "on")]),
        // Plain any ignores x- arguments: with nothing else to match, nothing matches.
        ("h_any_only_x", &[("x-match", "any"), ("x-trace", "on")]),
        // Plain all ignores x- arguments: with nothing else to match, everything matches.
        ("h_all_only_x", &[("x-match", "all"), ("x-trace", "on")]),
    ];
    for (q, args) in bindings {
        declare(&ch, q).await;
        bind_args(&ch, q, "hx", "", string_table(args)).await;
    }
    // (a name for the message, its headers)
    type Headers<'a> = Option<&'a [(&'a str, &'a str)]>;
    let messages: [(&str, Headers); 8] = [
        ("pdf-report", Some(&[("format", "pdf"), ("type", "report")])),
        ("pdf-log", Some(&[("format", "pdf"), ("type", "log")])),
        (
            "pdf-report-traced",
            Some(&[("format", "pdf"), ("type", "report"), ("x-trace", "on")]),
        ),
        ("traced-only", Some(&[("x-trace", "on")])),
        ("no-headers", None),
        ("zip", Some(&[("format", "zip")])),
        ("pdf", Some(&[("format", "pdf")])),
        ("pdf-traced", Some(&[("format", "pdf"), ("x-trace", "on")])),
    ];
    for (name, headers) in messages {
        let mut props = BasicProperties::default();
        if let Some(h) = headers {
            props = props.with_headers(string_table(h));
        }
        // The routing key plays no part in a headers exchange.
        publish_props(&ch, "hx", "ignored", name.as_bytes(), props).await;
    }
    let all: Vec<&str> = messages.iter().map(|m| m.0).collect();
    let want: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("h_all", vec!["pdf-report", "pdf-report-traced"]),
        ("h_default", vec!["pdf-report", "pdf-report-traced"]),
        (
            "h_any",
            vec![
                "pdf-report",
                "pdf-log",
                "pdf-report-traced",
                "pdf",
                "pdf-traced",
            ],
        ),
        ("h_all_x", vec!["pdf-report-traced", "pdf-traced"]),
        (
            "h_any_x",
            vec!["pdf-report-traced", "traced-only", "pdf-traced"],
        ),
        ("h_any_only_x", vec![]),
        ("h_all_only_x", all),
    ]);
    for (q, expected) in want {
        assert_eq!(drain(&ch, q).await, expected, "queue {q}");
    }

    // amq.match and amq.headers are predeclared headers exchanges.
    declare(&ch, "h_match").await;
    bind_args(
        &ch,
        "h_match",
        "amq.match",
        "",
        string_table(&[("x-match", "any"), ("k", "v")]),
    )
    .await;
    let props = BasicProperties::default().with_headers(string_table(&[("k", "v")]));
    publish_props(&ch, "amq.match", "", b"via-amq.match", props.clone()).await;
    publish_props(&ch, "amq.headers", "", b"via-amq.headers", props).await;
    assert_eq!(drain(&ch, "h_match").await, ["via-amq.match"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_binding_with_an_invalid_x_match_is_refused() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "hx", ExchangeKind::Headers).await;
    declare(&ch, "hq").await;
    let r = within(
        "bind with bad x-match",
        ch.queue_bind(
            "hq".into(),
            "hx".into(),
            "".into(),
            QueueBindOptions::default(),
            string_table(&[("x-match", "some")]),
        ),
    )
    .await;
    expect_code(r, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_to_the_queue_named_by_the_key() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "dq1").await;
    declare(&ch, "dq2").await;
    publish(&ch, "", "dq1", b"one").await;
    publish(&ch, "", "dq2", b"two").await;
    publish(&ch, "", "no-such-queue", b"lost").await;
    assert_eq!(drain(&ch, "dq1").await, ["one"]);
    assert_eq!(drain(&ch, "dq2").await, ["two"]);

    // Messages published there carry the empty exchange name.
    publish(&ch, "", "dq1", b"again").await;
    let m = within(
        "get",
        ch.basic_get("dq1".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("a message");
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), "dq1");

    // The default exchange cannot be bound to.
    let r = within(
        "bind to default exchange",
        ch.queue_bind(
            "dq1".into(),
            "".into(),
            "other".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
    )
    .await;
    expect_code(r, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "src", ExchangeKind::Topic).await;
    declare_exchange(&ch, "mid", ExchangeKind::Fanout).await;
    declare_exchange(&ch, "dst", ExchangeKind::Direct).await;
    declare(&ch, "at_mid").await;
    declare(&ch, "at_dst").await;
    declare(&ch, "at_src").await;
    bind(&ch, "at_mid", "mid", "").await;
    bind(&ch, "at_dst", "dst", "k.x").await;
    bind(&ch, "at_src", "src", "#").await;
    within(
        "exchange_bind mid <- src",
        ch.exchange_bind(
            "mid".into(),
            "src".into(),
            "k.*".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange_bind");
    within(
        "exchange_bind dst <- src",
        ch.exchange_bind(
            "dst".into(),
            "src".into(),
            "#".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange_bind");

    publish(&ch, "src", "k.x", b"m1").await; // src -> mid (k.*) -> at_mid; src -> dst (k.x) -> at_dst
    publish(&ch, "src", "k.y", b"m2").await; // at_mid only (dst has no k.y binding)
    publish(&ch, "src", "other", b"m3").await; // neither
    assert_eq!(drain(&ch, "at_mid").await, ["m1", "m2"]);
    assert_eq!(drain(&ch, "at_dst").await, ["m1"]);
    assert_eq!(drain(&ch, "at_src").await, ["m1", "m2", "m3"]);

    // A delivered message names the exchange it was published to.
    publish(&ch, "src", "k.x", b"m4").await;
    let m = within(
        "get",
        ch.basic_get("at_dst".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("message");
    assert_eq!(m.delivery.exchange.as_str(), "src");

    // Unbinding cuts the path.
    within(
        "exchange_unbind",
        ch.exchange_unbind(
            "mid".into(),
            "src".into(),
            "k.*".into(),
            ExchangeUnbindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange_unbind");
    drain(&ch, "at_mid").await;
    publish(&ch, "src", "k.y", b"m5").await;
    assert_eq!(drain(&ch, "at_mid").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_binding_cycles_deliver_once() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "x1", ExchangeKind::Fanout).await;
    declare_exchange(&ch, "x2", ExchangeKind::Fanout).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    bind(&ch, "q1", "x1", "").await;
    bind(&ch, "q2", "x2", "").await;
    bind(&ch, "q1", "x2", "").await; // q1 reachable two ways
    for (dst, src) in [("x2", "x1"), ("x1", "x2")] {
        within(
            "exchange_bind",
            ch.exchange_bind(
                dst.into(),
                src.into(),
                "".into(),
                ExchangeBindOptions::default(),
                no_args(),
            ),
        )
        .await
        .expect("exchange_bind");
    }
    publish(&ch, "x1", "", b"loop").await;
    publish(&ch, "x2", "", b"pool").await;
    assert_eq!(drain(&ch, "q1").await, ["loop", "pool"]);
    assert_eq!(drain(&ch, "q2").await, ["loop", "pool"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_exchange_refuses_publishes_but_routes_from_other_exchanges() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    within(
        "declare internal",
        ch.exchange_declare(
            "inner".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("declare internal exchange");
    declare_exchange(&ch, "outer", ExchangeKind::Direct).await;
    declare(&ch, "iq").await;
    bind(&ch, "iq", "inner", "").await;
    within(
        "exchange_bind",
        ch.exchange_bind(
            "inner".into(),
            "outer".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange_bind");
    publish(&ch, "outer", "k", b"through").await;
    assert_eq!(drain(&ch, "iq").await, ["through"]);

    // A direct publish to the internal exchange closes the channel with 403.
    let mut ev = events(&_conn);
    publish(&ch, "inner", "", b"direct").await;
    let text = expect_error_code(&next_error(&mut ev).await, 403);
    assert!(text.contains("internal"), "reply text: {text}");
    assert!(!ch.status().connected(), "channel closed");

    // Nothing arrived, and the connection still works.
    let ch2 = channel(&_conn).await;
    assert_eq!(drain(&ch2, "iq").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publish_without_route_is_returned_with_312() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "mx", ExchangeKind::Direct).await;
    declare(&ch, "mq").await;
    bind(&ch, "mq", "mx", "routed").await;
    within(
        "confirm_select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm_select");

    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("m-1".into());
    let confirm = within(
        "publish unroutable",
        ch.basic_publish(
            "mx".into(),
            "unrouted".into(),
            mandatory,
            b"bounce",
            props.clone(),
        ),
    )
    .await
    .expect("publish");
    let c = within("confirm", confirm).await.expect("confirm");
    assert!(
        c.is_ack(),
        "an unroutable message is still confirmed (acked)"
    );
    let ret = c
        .take_message()
        .expect("the message comes back with basic.return");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.delivery.exchange.as_str(), "mx");
    assert_eq!(ret.delivery.routing_key.as_str(), "unrouted");
    assert_eq!(ret.delivery.data, b"bounce");
    assert_eq!(ret.delivery.properties.message_id(), &Some("m-1".into()));

    // Routed mandatory messages are not returned.
    let confirm = within(
        "publish routable",
        ch.basic_publish(
            "mx".into(),
            "routed".into(),
            mandatory,
            b"ok",
            props.clone(),
        ),
    )
    .await
    .expect("publish");
    let c = within("confirm", confirm).await.expect("confirm");
    assert!(c.is_ack());
    assert!(c.take_message().is_none());

    // Through the default exchange to a missing queue, likewise.
    let confirm = within(
        "publish to missing queue",
        ch.basic_publish("".into(), "no-such-queue".into(), mandatory, b"lost", props),
    )
    .await
    .expect("publish");
    let ret = within("confirm", confirm)
        .await
        .expect("confirm")
        .take_message()
        .expect("returned");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.delivery.routing_key.as_str(), "no-such-queue");

    // Without mandatory, an unroutable message is dropped silently.
    let confirm = within(
        "publish non-mandatory",
        ch.basic_publish(
            "mx".into(),
            "unrouted".into(),
            BasicPublishOptions::default(),
            b"drop",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    let c = within("confirm", confirm).await.expect("confirm");
    assert!(c.is_ack());
    assert!(c.take_message().is_none());
    assert_eq!(drain(&ch, "mq").await, ["ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_return_without_confirms() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "mx", ExchangeKind::Fanout).await;
    within(
        "publish",
        ch.basic_publish(
            "mx".into(),
            "k".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"nobody home",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    // lapin hands returns outside confirm mode out through wait_for_confirms.
    let mut returned = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while returned.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no basic.return within {TIMEOUT:?}"
        );
        // A round trip makes sure the return (sent before the reply) has been read.
        declare(&ch, "probe").await;
        returned = within("wait_for_confirms", ch.wait_for_confirms())
            .await
            .expect("returns");
    }
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0].reply_code, 312);
    assert_eq!(returned[0].delivery.data, b"nobody home");
}

/// An auto-delete exchange goes away once its last binding is removed (by unbind or by
/// deleting the bound queue); one that never had a binding stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let ad = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let exists = |name: &str| broker.broker.vhost("/").unwrap().exchange(name).is_some();
    within(
        "declare",
        ch.exchange_declare("adx".into(), ExchangeKind::Direct, ad, no_args()),
    )
    .await
    .expect("declare");
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    bind(&ch, "q1", "adx", "a").await;
    bind(&ch, "q2", "adx", "b").await;
    within(
        "unbind",
        ch.queue_unbind("q1".into(), "adx".into(), "a".into(), no_args()),
    )
    .await
    .expect("unbind");
    assert!(exists("adx"), "one binding left");
    within(
        "delete q2",
        ch.queue_delete("q2".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    eventually("auto-delete exchange removed", || !exists("adx")).await;

    within(
        "declare",
        ch.exchange_declare("adx2".into(), ExchangeKind::Fanout, ad, no_args()),
    )
    .await
    .expect("declare");
    tokio::time::sleep(QUIET).await;
    assert!(exists("adx2"), "never bound: stays");
}

/// Unbinding something that is not bound is not an error (RabbitMQ answers unbind-ok).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_a_missing_binding_is_ok() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "q").await;
    within(
        "unbind",
        ch.queue_unbind(
            "q".into(),
            "amq.topic".into(),
            "never.bound".into(),
            no_args(),
        ),
    )
    .await
    .expect("unbind of a missing binding");
    within(
        "exchange_unbind",
        ch.exchange_unbind(
            "amq.fanout".into(),
            "amq.topic".into(),
            "x".into(),
            ExchangeUnbindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange unbind of a missing binding");
    // Deleting a missing exchange or queue is fine too.
    within(
        "exchange_delete",
        ch.exchange_delete("never-declared".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete missing exchange");
    let n = within(
        "queue_delete",
        ch.queue_delete("never-declared".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete missing queue");
    assert_eq!(n, 0);
}

/// A queue bound to a topic exchange by two patterns stays routed by the other after one is
/// unbound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_unbind_removes_only_that_pattern() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "tx", ExchangeKind::Topic).await;
    declare(&ch, "q").await;
    bind(&ch, "q", "tx", "a.*").await;
    bind(&ch, "q", "tx", "*.b").await;
    bind(&ch, "q", "tx", "a.#").await;
    within(
        "unbind",
        ch.queue_unbind("q".into(), "tx".into(), "a.*".into(), no_args()),
    )
    .await
    .expect("unbind");
    publish(&ch, "tx", "a.b", b"both-left").await;
    publish(&ch, "tx", "x.b", b"star-b").await;
    publish(&ch, "tx", "a.c", b"a-hash").await;
    publish(&ch, "tx", "x.c", b"none").await;
    within(
        "unbind",
        ch.queue_unbind("q".into(), "tx".into(), "a.#".into(), no_args()),
    )
    .await
    .expect("unbind");
    publish(&ch, "tx", "a.c", b"gone").await;
    assert_eq!(drain(&ch, "q").await, ["both-left", "star-b", "a-hash"]);
}
