//! Getting and publishing messages through the management API (`POST …/get`, `POST
//! …/publish`), against lapin on the same broker: what lapin published is got with RabbitMQ's
//! JSON shape, each ackmode leaves the queue as RabbitMQ leaves it, what the API publishes
//! reaches a lapin consumer, and permissions are checked as for an AMQP client. The shapes
//! and error texts are those RabbitMQ 4.0.5 answered for the same requests.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use warren_tests::mgmt::{http, MgmtBroker};
use warren_tests::*;

fn basic(user: &str, pass: &str) -> String {
    use std::io::Write;
    let mut raw = Vec::new();
    write!(raw, "{user}:{pass}").unwrap();
    format!("Basic {}", base64_encode(&raw))
}

/// Standard base64, enough for credentials in a test.
fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn get_body(count: i64, ackmode: &str) -> Value {
    json!({"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50000})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_takes_messages_with_each_ackmode() {
    let m = MgmtBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare(&ch, "dead").await;
    let dlx = table(&[
        ("x-dead-letter-exchange", long("")),
        ("x-dead-letter-routing-key", long("dead")),
    ]);
    ch.queue_declare("work".into(), Default::default(), dlx)
        .await
        .expect("declare work");
    let mut headers = FieldTable::default();
    headers.insert("h".into(), AMQPValue::LongLongInt(1));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_headers(headers);
    ch.basic_publish(
        "".into(),
        "work".into(),
        BasicPublishOptions::default(),
        b"hello",
        props,
    )
    .await
    .expect("publish")
    .await
    .expect("published");
    publish(&ch, "", "work", &[0, 1, 2, 0xff]).await;
    for i in 0..3 {
        publish(&ch, "", "work", format!("m{i}").as_bytes()).await;
    }
    eventually("5 ready", || {
        queue_counts(&m.broker, "work") == Some((5, 0))
    })
    .await;

    // ack_requeue_true: two messages shown, both back in the queue, now redelivered.
    let (status, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(get_body(2, "ack_requeue_true")),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v[0],
        json!({"payload_bytes": 5, "redelivered": false, "exchange": "", "routing_key": "work",
               "message_count": 4, "payload": "hello", "payload_encoding": "string",
               "properties": {"content_type": "text/plain", "delivery_mode": 2, "priority": 3,
                              "headers": {"h": 1}}})
    );
    // Not UTF-8: base64 (auto); no properties: [] as RabbitMQ writes it.
    assert_eq!(
        (
            &v[1]["payload"],
            &v[1]["payload_encoding"],
            &v[1]["properties"],
            &v[1]["message_count"]
        ),
        (&json!("AAEC/w=="), &json!("base64"), &json!([]), &json!(3))
    );
    assert_eq!(queue_counts(&m.broker, "work"), Some((5, 0)));
    let (_, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(json!({"count": 1, "ackmode": "reject_requeue_true", "encoding": "base64", "truncate": 3})),
    );
    assert_eq!(
        (
            &v[0]["redelivered"],
            &v[0]["payload"],
            &v[0]["payload_bytes"],
            &v[0]["payload_encoding"]
        ),
        (&json!(true), &json!("aGVs"), &json!(5), &json!("base64"))
    );

    // ack_requeue_false: gone; reject_requeue_false: dead-lettered.
    let (_, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(get_body(2, "ack_requeue_false")),
    );
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(queue_counts(&m.broker, "work"), Some((3, 0)));
    let (_, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(get_body(1, "reject_requeue_false")),
    );
    assert_eq!(v[0]["payload"], json!("m0"));
    eventually("dead-lettered", || {
        queue_counts(&m.broker, "dead") == Some((1, 0))
    })
    .await;
    assert_eq!(queue_counts(&m.broker, "work"), Some((2, 0)));
    // A count beyond what is there gets what is there; an empty queue gets [].
    let (_, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(get_body(10, "ack_requeue_false")),
    );
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    let (status, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(get_body(1, "ack_requeue_false")),
    );
    assert_eq!((status, v), (200, json!([])));
    // lapin sees what the API left: the dead letter.
    assert_eq!(drain(&ch, "dead").await, ["m0"]);

    // Bad requests, with RabbitMQ's answers.
    let cases = [
        (
            "/api/queues/%2F/nosuch/get",
            get_body(1, "ack_requeue_true"),
            404,
            json!({"error": "not_found", "reason": "queue_not_found"}),
        ),
        (
            "/api/queues/nosuch/work/get",
            get_body(1, "ack_requeue_true"),
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"}),
        ),
        (
            "/api/queues/%2F/work/get",
            json!({"count": 1, "encoding": "auto"}),
            400,
            json!({"error": "bad_request", "reason": "[{key_missing,ackmode}]"}),
        ),
        (
            "/api/queues/%2F/work/get",
            json!({"count": "x", "ackmode": "ack_requeue_true", "encoding": "auto"}),
            400,
            json!({"error": "bad_request", "reason": ["not_integer", "x"]}),
        ),
        (
            "/api/queues/%2F/work/get",
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "bogus"}),
            400,
            json!({"error": "bad_request", "reason": "Unsupported encoding. Please use auto or base64."}),
        ),
    ];
    for (path, body, status, answer) in cases {
        assert_eq!(
            m.http("POST", path, Some(body.clone())),
            (status, answer),
            "{path} {body}"
        );
    }
    let (status, v) = m.http(
        "POST",
        "/api/queues/%2F/work/get",
        Some(get_body(1, "bogus")),
    );
    assert_eq!((status, &v["error"]), (400, &json!("bad_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_routes_to_a_lapin_consumer_and_says_if_it_was_routed() {
    let m = MgmtBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare_durable(&ch, "inbox").await;
    bind(&ch, "inbox", "amq.direct", "k").await;
    let mut consumer = consume(&ch, "inbox", "c1").await;

    let body = json!({"routing_key": "k", "payload": "aGk=", "payload_encoding": "base64",
                      "properties": {"delivery_mode": 2, "message_id": "m-1", "headers": {"x": "y"}}});
    let (status, v) = m.http("POST", "/api/exchanges/%2F/amq.direct/publish", Some(body));
    assert_eq!((status, v), (200, json!({"routed": true})));
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"hi");
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m-1")
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(
        (d.exchange.as_str(), d.routing_key.as_str()),
        ("amq.direct", "k")
    );
    ack(&d).await;

    // The default exchange is amq.default in the path.
    let body = json!({"routing_key": "inbox", "payload": "plain", "payload_encoding": "string", "properties": {}});
    let (_, v) = m.http("POST", "/api/exchanges/%2F/amq.default/publish", Some(body));
    assert_eq!(v, json!({"routed": true}));
    assert_eq!(body_of(&next(&mut consumer).await), "plain");
    let body = json!({"routing_key": "nowhere", "payload": "x", "payload_encoding": "string", "properties": {}});
    let (_, v) = m.http("POST", "/api/exchanges/%2F/amq.direct/publish", Some(body));
    assert_eq!(v, json!({"routed": false}));

    let ok =
        json!({"routing_key": "k", "payload": "x", "payload_encoding": "string", "properties": {}});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (
            "/api/exchanges/%2F/nosuch/publish",
            ok.clone(),
            404,
            json!({"error": "not_found", "reason": "exchange_not_found"}),
        ),
        (
            "/api/exchanges/%2F/amq.direct/publish",
            with("payload_encoding", json!("bogus")),
            400,
            json!({"error": "bad_request", "reason": ["unsupported_encoding", "bogus"]}),
        ),
        (
            "/api/exchanges/%2F/amq.direct/publish",
            json!({"routing_key": "k", "payload": "!!", "payload_encoding": "base64", "properties": {}}),
            400,
            json!({"error": "bad_request", "reason": ["not_base64", "!!"]}),
        ),
        (
            "/api/exchanges/%2F/amq.direct/publish",
            with("properties", json!({"delivery_mode": "x"})),
            400,
            json!({"error": "bad_request", "reason": ["not_int", "delivery_mode"]}),
        ),
        (
            "/api/exchanges/%2F/amq.direct/publish",
            json!({"payload": "x", "payload_encoding": "string", "properties": {}}),
            400,
            json!({"error": "bad_request", "reason": "[{key_missing,routing_key}]"}),
        ),
    ];
    for (path, body, status, answer) in cases {
        assert_eq!(
            m.http("POST", path, Some(body.clone())),
            (status, answer),
            "{path} {body}"
        );
    }
    // The consumer got exactly the two routed messages.
    assert_no_delivery(&mut consumer).await;
}

fn body_of(d: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_publish_need_the_users_permissions() {
    let m = MgmtBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare(&ch, "qa").await;
    declare(&ch, "qb").await;
    publish(&ch, "", "qa", b"secret").await;
    for (user, perms) in [
        (
            "lim",
            Some(json!({"configure": ".*", "write": "^amq\\.direct$", "read": "^qb$"})),
        ),
        ("nov", None),
    ] {
        let (s, _) = m.http(
            "PUT",
            &format!("/api/users/{user}"),
            Some(json!({"password": user, "tags": "management"})),
        );
        assert_eq!(s, 201);
        if let Some(p) = perms {
            let (s, _) = m.http("PUT", &format!("/api/permissions/%2F/{user}"), Some(p));
            assert_eq!(s, 201);
        }
    }
    let as_user = |user: &str, path: &str, body: Value| {
        http(&m.url(), "POST", path, Some(body), Some(&basic(user, user)))
    };
    let pub_body = json!({"routing_key": "qa", "payload": "x", "payload_encoding": "string", "properties": {}});
    assert_eq!(
        as_user(
            "lim",
            "/api/queues/%2F/qa/get",
            get_body(1, "ack_requeue_false")
        ),
        (
            401,
            json!({"error": "not_authorised", "reason": "ACCESS_REFUSED - read access to queue 'qa' in vhost '/' refused for user 'lim'"})
        )
    );
    assert_eq!(
        as_user(
            "lim",
            "/api/queues/%2F/qb/get",
            get_body(1, "ack_requeue_false")
        ),
        (200, json!([]))
    );
    assert_eq!(
        as_user(
            "lim",
            "/api/exchanges/%2F/amq.default/publish",
            pub_body.clone()
        ),
        (
            400,
            json!({"error": "bad_request", "reason": "403 ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'lim'"})
        )
    );
    assert_eq!(
        as_user(
            "lim",
            "/api/exchanges/%2F/amq.direct/publish",
            pub_body.clone()
        ),
        (200, json!({"routed": false}))
    );
    let no_vhost = (
        401,
        json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"}),
    );
    assert_eq!(
        as_user(
            "nov",
            "/api/queues/%2F/qb/get",
            get_body(1, "ack_requeue_false")
        ),
        no_vhost
    );
    assert_eq!(
        as_user("nov", "/api/exchanges/%2F/amq.direct/publish", pub_body),
        no_vhost
    );
    // Nothing was taken from qa.
    assert_eq!(queue_counts(&m.broker, "qa"), Some((1, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_consumers_show_what_each_holds_unacknowledged() {
    let m = MgmtBroker::start().await;
    let (conn, ch) = open(&m.broker).await;
    declare(&ch, "jobs").await;
    for i in 0..5 {
        publish(&ch, "", "jobs", format!("j{i}").as_bytes()).await;
    }
    let slow = channel(&conn).await;
    qos(&slow, 3, false).await;
    let mut forgetful = consume(&slow, "jobs", "forgetful").await;
    assert_eq!(next_bodies(&mut forgetful, 3).await, ["j0", "j1", "j2"]);
    eventually("3 unacked", || {
        queue_counts(&m.broker, "jobs") == Some((2, 3))
    })
    .await;
    // Delivery times are kept in tenths of a second, rounded up: after 200 ms the age
    // shown is at least 100 ms.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, q) = m.http("GET", "/api/queues/%2F/jobs", None);
    let c = &q["consumer_details"][0];
    assert_eq!(c["consumer_tag"], json!("forgetful"));
    assert_eq!(c["messages_unacknowledged"], json!(3));
    assert!(
        c["oldest_unacked_age_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= 100),
        "{c}"
    );
    assert_eq!(
        (&q["messages_ready"], &q["messages_unacknowledged"]),
        (&json!(2), &json!(3))
    );
}
