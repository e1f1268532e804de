//! Access control, limits, TLS and resource alarms against a real broker, with lapin and raw
//! sockets: every permission kind allowed and refused with RabbitMQ's reply texts, vhost
//! isolation and deletion, loopback-only users, connection and channel limits, queue limits,
//! and the memory alarm blocking and unblocking a publisher with nothing lost.

use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use warren_tests::*;

fn url(b: &TestBroker, user: &str, pass: &str, vhost: &str) -> String {
    let vhost = vhost.replace('/', "%2f");
    format!("amqp://{user}:{pass}@{}/{vhost}", b.addr)
}

async fn try_connect(u: &str) -> lapin::Result<Connection> {
    within(
        "connect",
        Connection::connect(u, ConnectionProperties::default()),
    )
    .await
}

/// A user `u` (password `p`) with the given permissions in `/`.
fn user_with(b: &TestBroker, configure: &str, write: &str, read: &str) {
    let _ = b.broker.add_user("u", "p", vec![]);
    b.broker
        .set_permissions("u", "/", configure, write, read)
        .expect("set_permissions");
}

fn refused(kind: &str, what: &str, name: &str) -> String {
    format!("ACCESS_REFUSED - {kind} access to {what} '{name}' in vhost '/' refused for user 'u'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_permission_guards_declare_and_delete() {
    let b = TestBroker::start();
    user_with(&b, "^mine", ".*", ".*");
    let conn = try_connect(&url(&b, "u", "p", "/")).await.expect("connect");
    let ch = channel(&conn).await;
    declare(&ch, "mine.q").await;
    declare_exchange(&ch, "mine.x", ExchangeKind::Fanout).await;
    let r = ch
        .queue_declare("theirs".into(), QueueDeclareOptions::default(), no_args())
        .await;
    assert_eq!(expect_code(r, 403), refused("configure", "queue", "theirs"));
    let ch = channel(&conn).await;
    let r = ch
        .exchange_declare(
            "theirs.x".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(
        expect_code(r, 403),
        refused("configure", "exchange", "theirs.x")
    );
    // Passive declares need no permission.
    b.broker
        .vhost("/")
        .unwrap()
        .declare_queue(
            warren_broker::vhost::QueueDeclare {
                name: "theirs".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: Default::default(),
            },
            0,
        )
        .expect("declare");
    let ch = channel(&conn).await;
    within(
        "passive",
        ch.queue_declare(
            "theirs".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("passive declare is allowed");
    let r = ch
        .queue_delete("theirs".into(), QueueDeleteOptions::default())
        .await;
    assert_eq!(expect_code(r, 403), refused("configure", "queue", "theirs"));
    let ch = channel(&conn).await;
    let r = ch
        .exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
        .await;
    expect_code(r, 403);
    let ch = channel(&conn).await;
    within(
        "delete",
        ch.queue_delete("mine.q".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete own queue");
    within(
        "delete x",
        ch.exchange_delete("mine.x".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete own exchange");
    // A server-named queue is checked under the amq.gen- name the broker makes.
    let r = ch
        .queue_declare("".into(), QueueDeclareOptions::exclusive(), no_args())
        .await;
    assert!(expect_code(r, 403).contains("queue 'amq.gen-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_permission_guards_publish_and_bind() {
    let b = TestBroker::start();
    user_with(&b, ".*", "^(out|q1)$", ".*");
    let (_c, admin) = open(&b).await;
    declare(&admin, "q1").await;
    declare(&admin, "q2").await;
    declare_exchange(&admin, "out", ExchangeKind::Fanout).await;
    declare_exchange(&admin, "in", ExchangeKind::Fanout).await;

    let conn = try_connect(&url(&b, "u", "p", "/")).await.expect("connect");
    let ch = channel(&conn).await;
    within(
        "publish",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    within(
        "publish",
        ch.basic_publish(
            "out".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap()
    .await
    .expect("publish to a writable exchange");
    // queue.bind: write on the queue and read on the exchange.
    within(
        "bind",
        ch.queue_bind(
            "q1".into(),
            "in".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("bind q1");
    let r = ch
        .queue_bind(
            "q2".into(),
            "in".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(expect_code(r, 403), refused("write", "queue", "q2"));
    // exchange.bind: write on the destination, read on the source.
    let ch = channel(&conn).await;
    within(
        "xbind",
        ch.exchange_bind(
            "out".into(),
            "in".into(),
            "".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("bind out <- in");
    let r = ch
        .exchange_bind(
            "in".into(),
            "out".into(),
            "".into(),
            ExchangeBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(expect_code(r, 403), refused("write", "exchange", "in"));

    // Publishing to an exchange without write access closes the channel with 403; the
    // default exchange is checked as amq.default.
    let mut ev = events(&conn);
    let ch = channel(&conn).await;
    let _ = ch
        .basic_publish(
            "".into(),
            "q1".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let e = next_error(&mut ev).await;
    assert_eq!(
        expect_error_code(&e, 403),
        refused("write", "exchange", "amq.default")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_permission_guards_consume_get_purge_and_binding_source() {
    let b = TestBroker::start();
    user_with(&b, ".*", ".*", "^(ok|src)$");
    let (_c, admin) = open(&b).await;
    for q in ["ok", "secret"] {
        declare(&admin, q).await;
    }
    declare_exchange(&admin, "src", ExchangeKind::Fanout).await;
    declare_exchange(&admin, "hidden", ExchangeKind::Fanout).await;
    let conn = try_connect(&url(&b, "u", "p", "/")).await.expect("connect");
    let ch = channel(&conn).await;
    within("get", ch.basic_get("ok".into(), BasicGetOptions::default()))
        .await
        .expect("get ok");
    within(
        "consume",
        ch.basic_consume(
            "ok".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("consume ok");
    within(
        "purge",
        ch.queue_purge("ok".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge ok");
    within(
        "bind",
        ch.queue_bind(
            "ok".into(),
            "src".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("bind from readable exchange");
    let r = ch
        .basic_get("secret".into(), BasicGetOptions::default())
        .await;
    assert_eq!(expect_code(r, 403), refused("read", "queue", "secret"));
    let ch = channel(&conn).await;
    let r = ch
        .basic_consume(
            "secret".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(expect_code(r, 403), refused("read", "queue", "secret"));
    let ch = channel(&conn).await;
    let r = ch
        .queue_purge("secret".into(), QueuePurgeOptions::default())
        .await;
    assert_eq!(expect_code(r, 403), refused("read", "queue", "secret"));
    let ch = channel(&conn).await;
    let r = ch
        .queue_bind(
            "ok".into(),
            "hidden".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(expect_code(r, 403), refused("read", "exchange", "hidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_vhost_access_and_loopback() {
    let b = TestBroker::with_config(ServerConfig {
        peers_are_remote: true,
        ..Default::default()
    });
    b.broker.add_user("u", "p", vec![]).unwrap();
    b.broker
        .set_permissions("u", "/", ".*", ".*", ".*")
        .unwrap();
    // guest is loopback-only; other users may connect from anywhere.
    let e = try_connect(&b.url()).await.expect_err("guest refused");
    assert!(
        e.to_string().contains("can only connect via localhost"),
        "{e}"
    );
    try_connect(&url(&b, "u", "p", "/"))
        .await
        .expect("u connects");
    // A wrong password and an unknown user look the same.
    let e1 = try_connect(&url(&b, "u", "wrong", "/"))
        .await
        .err()
        .unwrap();
    let e2 = try_connect(&url(&b, "nobody", "p", "/"))
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&e1), Some(403));
    assert_eq!(e1.to_string(), e2.to_string());
    // A vhost without permissions, and one that does not exist: 530 NOT_ALLOWED.
    b.broker.add_vhost("/x");
    let e = try_connect(&url(&b, "u", "p", "/x")).await.err().unwrap();
    assert_eq!(reply_code(&e), Some(530), "{e}");
    assert!(
        e.to_string()
            .contains("access to vhost '/x' refused for user 'u'"),
        "{e}"
    );
    let e = try_connect(&url(&b, "u", "p", "/nope"))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("vhost /nope not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_are_isolated_and_deleting_one_closes_its_connections() {
    let b = TestBroker::start();
    b.broker.add_vhost("a");
    b.broker.add_vhost("b");
    for v in ["a", "b"] {
        b.broker
            .set_permissions("guest", v, ".*", ".*", ".*")
            .unwrap();
    }
    let ca = try_connect(&url(&b, "guest", "guest", "a")).await.unwrap();
    let cb = try_connect(&url(&b, "guest", "guest", "b")).await.unwrap();
    let (cha, chb) = (channel(&ca).await, channel(&cb).await);
    declare(&cha, "q").await;
    within(
        "publish",
        cha.basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"in a",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    // The same name in b is another queue.
    let qb = declare(&chb, "q").await;
    assert_eq!(qb.message_count(), 0);
    let r = chb
        .queue_declare(
            "only-a".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    expect_code(r, 404);
    // Deleting a closes its connections (320) and removes its queues; b is untouched.
    assert!(b.broker.delete_vhost("a"));
    for _ in 0..100 {
        if !ca.status().connected() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !ca.status().connected(),
        "connection to a deleted vhost is closed"
    );
    assert!(b.broker.vhost("a").is_none());
    assert!(cb.status().connected());
    let e = try_connect(&url(&b, "guest", "guest", "a"))
        .await
        .err()
        .unwrap();
    assert_eq!(reply_code(&e), Some(530));
}

async fn closed(conn: &Connection) {
    for _ in 0..250 {
        if !conn.status().connected() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("connection still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_per_node_vhost_and_user() {
    use warren_broker::auth::{UserLimits, VHostLimits};
    let b = TestBroker::with_config(ServerConfig {
        connection_max: Some(3),
        ..Default::default()
    });
    b.broker.add_user("u", "p", vec![]).unwrap();
    b.broker
        .set_permissions("u", "/", ".*", ".*", ".*")
        .unwrap();
    b.broker
        .set_user_limits(
            "u",
            UserLimits {
                max_connections: Some(1),
                max_channels: None,
            },
        )
        .unwrap();
    b.broker.add_vhost("v");
    b.broker
        .set_permissions("guest", "v", ".*", ".*", ".*")
        .unwrap();
    b.broker
        .set_vhost_limits(
            "v",
            VHostLimits {
                max_connections: Some(1),
                max_queues: None,
            },
        )
        .unwrap();

    let u1 = try_connect(&url(&b, "u", "p", "/")).await.expect("u #1");
    let e = try_connect(&url(&b, "u", "p", "/")).await.err().unwrap();
    assert_eq!(reply_code(&e), Some(530));
    assert!(
        e.to_string()
            .contains("Connection refused for user 'u': user connection limit (1) is reached"),
        "{e}"
    );
    let v1 = try_connect(&url(&b, "guest", "guest", "v"))
        .await
        .expect("v #1");
    let e = try_connect(&url(&b, "guest", "guest", "v"))
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains(
            "access to vhost 'v' refused for user 'guest': connection limit (1) is reached"
        ),
        "{e}"
    );
    let g1 = try_connect(&b.url()).await.expect("third connection");
    let e = try_connect(&b.url()).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("connection refused: node connection limit (3) is reached"),
        "{e}"
    );
    // Closing a connection frees its place.
    within("close", u1.close(200, "bye".into())).await.unwrap();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = try_connect(&url(&b, "u", "p", "/")).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "u may connect again once its connection closed"
    );
    drop((v1, g1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_channel_limit_closes_the_connection() {
    use warren_broker::auth::UserLimits;
    let b = TestBroker::start();
    b.broker.add_user("u", "p", vec![]).unwrap();
    b.broker
        .set_permissions("u", "/", ".*", ".*", ".*")
        .unwrap();
    b.broker
        .set_user_limits(
            "u",
            UserLimits {
                max_connections: None,
                max_channels: Some(2),
            },
        )
        .unwrap();
    let c1 = try_connect(&url(&b, "u", "p", "/")).await.unwrap();
    let c2 = try_connect(&url(&b, "u", "p", "/")).await.unwrap();
    let _a = channel(&c1).await;
    let _b = channel(&c2).await;
    let mut ev = events(&c2);
    let r = within("third channel", c2.create_channel()).await;
    assert!(r.is_err(), "a third channel of the user is refused");
    let e = next_error(&mut ev).await;
    let text = expect_error_code(&e, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - number of channels opened for user 'u' has reached the maximum allowed user limit of (2)"
    );
    closed(&c2).await;
    // c2's channel was released: c1 may open another.
    channel(&c1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_per_vhost() {
    use warren_broker::auth::VHostLimits;
    let b = TestBroker::start();
    b.broker
        .set_vhost_limits(
            "/",
            VHostLimits {
                max_connections: None,
                max_queues: Some(2),
            },
        )
        .unwrap();
    let (conn, ch) = open(&b).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    declare(&ch, "q1").await; // redeclaring is not a new queue
    let r = ch
        .queue_declare("q3".into(), QueueDeclareOptions::default(), no_args())
        .await;
    assert_eq!(
        expect_code(r, 406),
        "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is reached"
    );
    let ch = channel(&conn).await;
    within(
        "delete",
        ch.queue_delete("q2".into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    declare(&ch, "q3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_limits_channel_max_frame_max_message_size_handshake_timeout() {
    use warren_tests::raw::{method_frame, RawClient};
    let b = TestBroker::with_config(ServerConfig {
        channel_max: 4,
        max_message_size: 1000,
        handshake_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    });
    // A slow-loris socket that never completes the handshake is dropped.
    let mut idle = RawClient::connect(b.addr).await;
    let start = std::time::Instant::now();
    let _ = idle.read_to_end().await;
    assert!(start.elapsed() < std::time::Duration::from_secs(3));

    // channel_max: one channel more than it is a connection error (any numbers).
    let mut raw = RawClient::connect(b.addr).await;
    raw.handshake().await;
    for n in [1u16, 2, 300, 4000] {
        raw.send(&method_frame(n, 20, 10, &[0])).await;
        let ok = raw.read_method().await.unwrap();
        assert_eq!(ok.method_id(), (20, 11));
    }
    raw.send(&method_frame(5, 20, 10, &[0])).await;
    raw.expect_connection_close(530).await;

    // frame_max: a frame larger than negotiated is a connection error (501).
    let mut raw = RawClient::connect(b.addr).await;
    raw.handshake().await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    let ok = raw.read_method().await.unwrap();
    assert_eq!(ok.method_id(), (20, 11));
    raw.send(&method_frame(1, 60, 40, &vec![0u8; 200_000]))
        .await;
    raw.expect_connection_close(501).await;

    // max_message_size: an oversize body is a 406 on that channel, not a crash.
    let (conn, ch) = open(&b).await;
    declare(&ch, "big").await;
    let mut ev = events(&conn);
    let _ = ch
        .basic_publish(
            "".into(),
            "big".into(),
            BasicPublishOptions::default(),
            &vec![1u8; 2000],
            BasicProperties::default(),
        )
        .await;
    let e = next_error(&mut ev).await;
    expect_error_code(&e, 406);
    let ch = channel(&conn).await;
    publish(&ch, "", "big", &[2u8; 1000]).await;
    wait_counts(&b, "big", 1, 0).await;
}

async fn next_event(ev: &mut Events, want: fn(&lapin::Event) -> bool) -> lapin::Event {
    use futures_util::StreamExt;
    loop {
        match within("connection event", ev.next()).await {
            Some(e) if want(&e) => return e,
            Some(_) => continue,
            None => panic!("event stream ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_blocks_publishers_not_consumers_and_loses_nothing() {
    use warren_server::alarms::{start_monitor, Watermark};
    let b = TestBroker::start();
    start_monitor(&b.broker, Watermark::Absolute(u64::MAX), 0, None);
    let (_cc, cons_ch) = open(&b).await;
    declare(&cons_ch, "work").await;
    // One message at a time: the consumer must keep acking (its connection keeps being
    // read) to drain the queue while the publisher is blocked.
    within("qos", cons_ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&cons_ch, "work", "c").await;
    async fn take(consumer: &mut lapin::Consumer, n: usize) -> Vec<String> {
        let mut v = Vec::new();
        for _ in 0..n {
            let d = next(consumer).await;
            v.push(body(&d));
            ack(&d).await;
        }
        v
    }

    let (pconn, pub_ch) = open(&b).await;
    let mut pev = events(&pconn);
    within(
        "confirm_select",
        pub_ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    for i in 0..10 {
        publish_confirmed(&pub_ch, "", "work", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(take(&mut consumer, 2).await, ["m0", "m1"]);

    // Memory above the watermark: the publishing connection is blocked.
    b.broker.alarms.set_memory_limit(1);
    assert_eq!(b.broker.alarms.current().as_deref(), Some("memory"));
    let ev = next_event(&mut pev, |e| {
        matches!(e, lapin::Event::ConnectionBlocked(_))
    })
    .await;
    assert!(
        matches!(ev, lapin::Event::ConnectionBlocked(ref r) if r == "low on memory"),
        "{ev:?}"
    );
    // lapin holds publishes while its connection is blocked; they go out once unblocked.
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for i in 10..60 {
            let c = pub_ch
                .basic_publish(
                    "".into(),
                    "work".into(),
                    BasicPublishOptions::default(),
                    format!("m{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await?;
            confirms.push(c);
        }
        for c in confirms {
            c.await?;
        }
        Ok::<_, lapin::Error>(())
    });
    // The consumer keeps draining what was there before the alarm...
    let rest = take(&mut consumer, 8).await;
    assert_eq!(rest, ["m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
    // ...and nothing published during the alarm gets in.
    tokio::time::sleep(QUIET).await;
    assert_eq!(queue_counts(&b, "work").map(|(ready, _)| ready), Some(0));
    assert_no_delivery(&mut consumer).await;

    // Below the watermark again: unblocked, and every message arrives.
    b.broker.alarms.set_memory_limit(u64::MAX);
    next_event(&mut pev, |e| matches!(e, lapin::Event::ConnectionUnblocked)).await;
    within("publisher", publisher)
        .await
        .unwrap()
        .expect("published and confirmed after unblock");
    let later = take(&mut consumer, 50).await;
    let want: Vec<String> = (10..60).map(|i| format!("m{i}")).collect();
    assert_eq!(later, want);
}

/// Publishes one message on channel 1 with raw frames.
fn raw_publish(queue: &str, body: &[u8]) -> Vec<u8> {
    use warren_tests::raw::{method_frame, FRAME_END};
    let mut a = vec![0, 0, 0];
    a.push(queue.len() as u8);
    a.extend_from_slice(queue.as_bytes());
    a.push(0);
    let mut f = method_frame(1, 60, 40, &a);
    let mut h = vec![0u8, 60, 0, 0];
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[2, 0, 1]);
    f.extend_from_slice(&(h.len() as u32).to_be_bytes());
    f.extend_from_slice(&h);
    f.push(FRAME_END);
    f.extend_from_slice(&[3, 0, 1]);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(body);
    f.push(FRAME_END);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_publisher_is_not_read_until_the_alarm_clears() {
    use warren_tests::raw::{method_frame, RawClient};
    let b = TestBroker::start();
    let (_c, ch) = open(&b).await;
    declare(&ch, "raw").await;
    let mut raw = RawClient::connect(b.addr).await;
    raw.handshake().await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    assert_eq!(raw.read_method().await.unwrap().method_id(), (20, 11));
    raw.send(&raw_publish("raw", b"before")).await;
    wait_counts(&b, "raw", 1, 0).await;
    // The alarm (set as the resource monitor would) stops reading from this publisher:
    // what it sends meanwhile waits in the socket.
    b.broker.alarms.sample(2, None);
    b.broker.alarms.set_memory_limit(1);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for i in 0..20 {
        raw.send(&raw_publish("raw", format!("during {i}").as_bytes()))
            .await;
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(queue_counts(&b, "raw"), Some((1, 0)));
    // A consumer on another connection still works.
    let d = within(
        "get",
        ch.basic_get("raw".into(), BasicGetOptions::default()),
    )
    .await
    .unwrap()
    .expect("a message");
    assert_eq!(String::from_utf8_lossy(&d.delivery.data), "before");
    b.broker.alarms.set_memory_limit(u64::MAX);
    wait_counts(&b, "raw", 20, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_definitions_import_with_their_password_hashes() {
    let b = TestBroker::start();
    // Users as RabbitMQ exports them: a SHA-256 hash (3.6+) and an MD5 one without
    // hashing_algorithm (older exports, tags as a string); both are guest's password.
    let defs: warren_broker::definitions::Definitions = serde_json::from_value(serde_json::json!({
        "users": [
            {"name": "ops", "password_hash": "5rB5BmXGUjdmWMF1qFQukV/AAVulChVYUmv/nKiQtr6wNiLo",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"], "limits": {}},
            {"name": "old", "password_hash": "AsYO2ESs62RcsxNVyxKaR5DGxVI=", "tags": "management"}
        ],
        "vhosts": [{"name": "/"}, {"name": "apps"}],
        "permissions": [
            {"user": "ops", "vhost": "apps", "configure": "", "write": ".*", "read": ".*"},
            {"user": "old", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
        ]
    }))
    .unwrap();
    assert!(b.broker.import_definitions(&defs).is_empty());
    let ops = try_connect(&url(&b, "ops", "guest", "apps"))
        .await
        .expect("ops");
    let ch = channel(&ops).await;
    let r = ch
        .queue_declare("q".into(), QueueDeclareOptions::default(), no_args())
        .await;
    assert!(expect_code(r, 403).contains("configure access to queue 'q' in vhost 'apps'"));
    try_connect(&url(&b, "old", "guest", "/"))
        .await
        .expect("md5 user");
    assert_eq!(b.broker.user("old").unwrap().tags, ["management"]);
    // What the broker saves carries users, hashes and permissions: a second broker loading
    // it lets the same users in.
    let saved = b.broker.definitions(true);
    assert!(saved.users.iter().any(|u| u.name == "ops"));
    let b2 = TestBroker::start();
    assert!(b2.broker.import_definitions(&saved).is_empty());
    try_connect(&url(&b2, "ops", "guest", "apps"))
        .await
        .expect("ops in the copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_must_name_the_authenticated_user() {
    let b = TestBroker::start();
    let (conn, ch) = open(&b).await;
    declare(&ch, "uid").await;
    let props = BasicProperties::default().with_user_id("guest".into());
    within(
        "publish",
        ch.basic_publish(
            "".into(),
            "uid".into(),
            BasicPublishOptions::default(),
            b"mine",
            props,
        ),
    )
    .await
    .unwrap();
    wait_counts(&b, "uid", 1, 0).await;
    let mut ev = events(&conn);
    let _ = ch
        .basic_publish(
            "".into(),
            "uid".into(),
            BasicPublishOptions::default(),
            b"forged",
            BasicProperties::default().with_user_id("admin".into()),
        )
        .await;
    let e = next_error(&mut ev).await;
    assert_eq!(
        expect_error_code(&e, 406),
        "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated user was 'guest'"
    );
    assert_eq!(queue_counts(&b, "uid"), Some((1, 0)));
}
