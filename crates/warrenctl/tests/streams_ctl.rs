//! A stream as operators see it: `warrenctl list_queues` shows its type and the messages it
//! retains, and so does the management API (`type: stream`), consumed or not.

use lapin::options::BasicConsumeOptions;
use warren_tests::mgmt::{run_warrenctl, MgmtBroker};
use warren_tests::*;

const WARRENCTL: &str = env!("CARGO_BIN_EXE_warrenctl");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_and_the_api_show_a_stream() {
    let dir = TempDir::new("stream-ctl");
    let m = MgmtBroker::on(TestBroker::with_backend(dir.path(), FileBackend::shared())).await;
    let (_conn, ch) = open(&m.broker).await;
    declare_durable_args(&ch, "events", table(&[("x-queue-type", long("stream"))])).await;
    declare_durable(&ch, "plain").await;
    confirm_select(&ch).await;
    for i in 0..5 {
        publish_confirmed(&ch, "", "events", format!("e{i}").as_bytes()).await;
    }
    // A consumer reads them all and acks: a stream keeps them.
    qos(&ch, 10, false).await;
    let mut c = within(
        "consume",
        ch.basic_consume(
            "events".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", long("first"))]),
        ),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        ack(&next(&mut c).await).await;
    }
    let out = run_warrenctl(
        WARRENCTL,
        vec![
            "--url".into(),
            m.url(),
            "-q".into(),
            "list_queues".into(),
            "name".into(),
            "type".into(),
            "messages".into(),
            "consumers".into(),
        ],
    )
    .await
    .ok();
    assert_eq!(
        out,
        "name\ttype\tmessages\tconsumers\nevents\tstream\t5\t1\nplain\tclassic\t0\t0\n"
    );
    let (status, q) = m.http("GET", "/api/queues/%2F/events", None);
    assert_eq!(status, 200);
    assert_eq!(q["type"], "stream");
    assert_eq!(q["messages"], 5);
    assert_eq!(q["messages_ready"], 5);
    assert_eq!(q["durable"], true);
}

/// Runs warrenctl against `m` quietly; its stdout.
async fn ctl_quiet(m: &MgmtBroker, args: &[&str]) -> String {
    let mut full = vec!["--url".to_string(), m.url(), "-q".to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    run_warrenctl(WARRENCTL, full).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_protocol_connections_publishers_and_consumers_are_listed() {
    use futures_util::StreamExt;
    use rabbitmq_stream_client::types::{Message, OffsetSpecification};
    use rabbitmq_stream_client::Environment;
    use serde_json::json;

    let dir = TempDir::new("stream-clients");
    let m = MgmtBroker::on(TestBroker::with_backend(dir.path(), FileBackend::shared())).await;
    let env = within(
        "stream environment",
        Environment::builder()
            .host("127.0.0.1")
            .port(m.broker.stream_addr.port())
            .build(),
    )
    .await
    .unwrap();
    within("create", env.stream_creator().create("ticks"))
        .await
        .unwrap();
    let mut producer = within("producer", env.producer().name("ticker").build("ticks"))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..10)
        .map(|i| Message::builder().body(format!("t{i}")).build())
        .collect();
    let confirmed = within("confirms", producer.batch_send_with_confirm(batch))
        .await
        .unwrap();
    assert!(confirmed.iter().all(|s| s.confirmed()));
    let mut consumer = within(
        "consumer",
        env.consumer()
            .offset(OffsetSpecification::First)
            .build("ticks"),
    )
    .await
    .unwrap();
    for _ in 0..10 {
        within("delivery", consumer.next()).await.unwrap().unwrap();
    }

    // The publisher, with what it published and what was confirmed.
    eventually("the publisher's confirms counted", || {
        m.http("GET", "/api/stream/publishers", None).1[0]["confirmed"] == 10
    })
    .await;
    let (s, p) = m.http("GET", "/api/stream/publishers/%2F/ticks", None);
    assert_eq!(s, 200);
    let p = &p[0];
    assert_eq!(
        (&p["reference"], &p["published"], &p["errored"], &p["queue"]),
        (
            &json!("ticker"),
            &json!(10),
            &json!(0),
            &json!({"name": "ticks", "vhost": "/"})
        ),
        "{p}"
    );
    assert_eq!(p["connection_details"]["user"], "guest");
    let publisher_conn = p["connection_details"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // The consumer, where it is.
    eventually("the consumer's deliveries counted", || {
        m.http("GET", "/api/stream/consumers/%2F", None).1[0]["consumed"] == 10
    })
    .await;
    let (_, c) = m.http("GET", "/api/stream/consumers", None);
    let c = &c[0];
    assert_eq!(
        (
            &c["offset"],
            &c["offset_lag"],
            &c["queue"]["name"],
            &c["active"]
        ),
        (&json!(9), &json!(0), &json!("ticks"), &json!(true)),
        "{c}"
    );
    let consumer_conn = c["connection_details"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // The connections: stream ones, in /api/connections too, one with the subscription.
    let (_, conns) = m.http("GET", "/api/stream/connections", None);
    let conns = conns.as_array().unwrap().clone();
    assert!(conns.len() >= 2, "{conns:?}");
    for c in &conns {
        assert_eq!(
            (&c["protocol"], &c["user"], &c["vhost"]),
            (&json!("stream"), &json!("guest"), &json!("/"))
        );
    }
    let subscribed: Vec<&serde_json::Value> =
        conns.iter().filter(|c| c["subscriptions"] == 1).collect();
    assert_eq!(subscribed.len(), 1, "{conns:?}");
    assert_eq!(subscribed[0]["name"], consumer_conn);
    let (_, all) = m.http("GET", "/api/connections", None);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == publisher_conn && c["protocol"] == "stream"));
    let path = |name: &str, tail: &str| {
        format!(
            "/api/stream/connections/%2F/{}{tail}",
            name.replace(' ', "%20").replace('>', "%3E")
        )
    };
    let (s, of) = m.http("GET", &path(&publisher_conn, "/publishers"), None);
    assert_eq!((s, of[0]["reference"].clone()), (200, json!("ticker")));
    let (s, _) = m.http("GET", "/api/stream/publishers/%2F/nothing-here", None);
    assert_eq!(s, 404);

    // warrenctl, with rabbitmq-streams' command names and default columns.
    assert_eq!(
        ctl_quiet(&m, &["list_stream_publishers"]).await,
        format!(
            "publisher_id\tstream\treference\tmessages_published\tmessages_confirmed\tmessages_errored\n{}\tticks\tticker\t10\t10\t0\n",
            p["publisher_id"]
        )
    );
    let consumers = ctl_quiet(
        &m,
        &[
            "list_stream_consumers",
            "subscription_id",
            "stream",
            "messages_consumed",
            "offset",
            "offset_lag",
        ],
    )
    .await;
    assert_eq!(
        consumers,
        format!(
            "subscription_id\tstream\tmessages_consumed\toffset\toffset_lag\n{}\tticks\t10\t9\t0\n",
            c["subscription_id"]
        )
    );
    let listed = ctl_quiet(
        &m,
        &[
            "list_stream_connections",
            "conn_name",
            "user",
            "subscriptions",
        ],
    )
    .await;
    assert!(
        listed.contains(&format!("{consumer_conn}\tguest\t1\n")),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), conns.len() + 1, "{listed}");

    // Closed through the API, the consumer's connection and its subscription are gone.
    let (s, _) = m.http("DELETE", &path(&consumer_conn, ""), None);
    assert_eq!(s, 204);
    eventually("the closed connection's consumer gone", || {
        m.http("GET", "/api/stream/consumers", None).1 == json!([])
    })
    .await;
    let (s, _) = m.http("GET", &path(&consumer_conn, ""), None);
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_are_added_and_deleted_as_rabbitmq_streams_does() {
    use serde_json::json;

    let dir = TempDir::new("super-stream-ctl");
    let m = MgmtBroker::on(TestBroker::with_backend(dir.path(), FileBackend::shared())).await;
    let ctl = |args: &'static [&'static str]| {
        let mut full = vec!["--url".to_string(), m.url()];
        full.extend(args.iter().map(|a| a.to_string()));
        run_warrenctl(WARRENCTL, full)
    };
    assert_eq!(
        ctl(&[
            "add_super_stream",
            "events",
            "--binding-keys",
            "eu,us",
            "--max-age",
            "7D"
        ])
        .await
        .ok(),
        "Adding a super stream...\nSuper stream events has been created\n"
    );
    // A direct exchange marked as a super stream, and a stream per key, bound in order.
    let (s, x) = m.http("GET", "/api/exchanges/%2F/events", None);
    assert_eq!(s, 200);
    assert_eq!(
        (&x["type"], &x["durable"], &x["arguments"]),
        (
            &json!("direct"),
            &json!(true),
            &json!({"x-super-stream": true})
        )
    );
    for (i, key) in ["eu", "us"].iter().enumerate() {
        let (s, q) = m.http("GET", &format!("/api/queues/%2F/events-{key}"), None);
        assert_eq!(s, 200, "events-{key}");
        assert_eq!(
            (&q["type"], &q["arguments"]["x-max-age"]),
            (&json!("stream"), &json!("7D"))
        );
        let (_, b) = m.http(
            "GET",
            &format!("/api/bindings/%2F/e/events/q/events-{key}"),
            None,
        );
        assert_eq!(
            (&b[0]["routing_key"], &b[0]["arguments"]),
            (&json!(key), &json!({"x-stream-partition-order": i}))
        );
    }
    // It is an ordinary exchange: an AMQP 0-9-1 publish with a key reaches its partition.
    let (_conn, ch) = open(&m.broker).await;
    confirm_select(&ch).await;
    publish_confirmed(&ch, "events", "us", b"from 0-9-1").await;
    eventually("the message in events-us", || {
        queue_counts(&m.broker, "events-us").is_some_and(|(ready, _)| ready == 1)
    })
    .await;

    // Both ways of naming partitions at once: a usage error, as rabbitmq-streams.
    let out = ctl(&[
        "add_super_stream",
        "x",
        "--partitions",
        "2",
        "--binding-keys",
        "a",
    ])
    .await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    // The API refuses a body that names neither, and a second creation.
    let (s, v) = m.http("PUT", "/api/stream/super-streams/%2F/x", Some(json!({})));
    assert_eq!(
        (s, &v["reason"]),
        (400, &json!("Must specify partitions or binding keys"))
    );
    let (s, _) = m.http(
        "PUT",
        "/api/stream/super-streams/%2F/events",
        Some(json!({"partitions": 2})),
    );
    assert_eq!(s, 400);

    assert_eq!(
        ctl(&["delete_super_stream", "events"]).await.ok(),
        "Deleting a super stream...\nSuper stream events has been deleted\n"
    );
    for path in [
        "/api/exchanges/%2F/events",
        "/api/queues/%2F/events-eu",
        "/api/queues/%2F/events-us",
    ] {
        assert_eq!(m.http("GET", path, None).0, 404, "{path}");
    }
    let out = ctl(&["delete_super_stream", "events"]).await;
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("super stream 'events' in vhost '/' was not found"),
        "{}",
        out.stderr
    );
}
