//! RabbitMQ's six tutorials (https://www.rabbitmq.com/tutorials), re-enacted with lapin against
//! Warren: what a newcomer would try first must work exactly as it does on RabbitMQ.

use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, ExchangeKind};
use std::collections::HashMap;
use warren_tests::*;

/// Tutorial 1: a producer sends "Hello World!" to the queue `hello` through the default
/// exchange and a consumer prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world() {
    let broker = TestBroker::start();
    let (_pconn, producer) = open(&broker).await;
    let (_cconn, consumer_ch) = open(&broker).await;

    let q = declare(&producer, "hello").await;
    assert_eq!(q.name().as_str(), "hello");
    assert_eq!(q.message_count(), 0);
    publish(&producer, "", "hello", b"Hello World!").await;
    // Publishing has no reply: wait until the broker has routed it before looking from
    // another connection.
    wait_counts(&broker, "hello", 1, 0).await;

    // The consumer declares the queue too (idempotent) and sees the message waiting.
    let q = declare(&consumer_ch, "hello").await;
    assert_eq!(q.message_count(), 1, "declare-ok message_count");
    let mut c = consume_no_ack(&consumer_ch, "hello", "").await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "Hello World!");
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), "hello");
    assert!(!d.redelivered);
    assert_no_delivery(&mut c).await;
    wait_counts(&broker, "hello", 0, 0).await;
}

/// Tutorial 2: a work queue with prefetch 1 and manual acks. A worker that dies mid-task
/// (its connection closes without an ack) has its task redelivered, marked redelivered, to
/// another worker, ahead of tasks published later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queues_redeliver_a_dead_workers_task() {
    let broker = TestBroker::start();
    let (_pconn, producer) = open(&broker).await;
    within(
        "declare task_queue",
        producer.queue_declare(
            "task_queue".into(),
            QueueDeclareOptions::durable(),
            no_args(),
        ),
    )
    .await
    .expect("declare task_queue");

    let conn_a = connect(&broker).await;
    let ch_a = channel(&conn_a).await;
    within("qos", ch_a.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut worker_a = consume(&ch_a, "task_queue", "worker-a").await;

    let conn_b = connect(&broker).await;
    let ch_b = channel(&conn_b).await;
    within("qos", ch_b.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut worker_b = consume(&ch_b, "task_queue", "worker-b").await;

    let persistent = BasicProperties::default().with_delivery_mode(2);
    for task in ["task-1", "task-2", "task-3"] {
        publish_props(
            &producer,
            "",
            "task_queue",
            task.as_bytes(),
            persistent.clone(),
        )
        .await;
    }

    // Each worker holds one task; prefetch 1 keeps the third one in the queue.
    let task_a = next(&mut worker_a).await;
    let task_b = next(&mut worker_b).await;
    let mut held = vec![body(&task_a), body(&task_b)];
    held.sort();
    assert_eq!(held, ["task-1", "task-2"]);
    assert!(!task_a.redelivered && !task_b.redelivered);
    wait_counts(&broker, "task_queue", 1, 2).await;
    assert_no_delivery(&mut worker_b).await;

    // Worker A dies without acking.
    within("close worker a", conn_a.close(200, "worker crashed".into()))
        .await
        .expect("close a");
    wait_counts(&broker, "task_queue", 2, 1).await;

    // Worker B finishes its task; the next one it gets is A's, redelivered, then task-3.
    ack(&task_b).await;
    let again = next(&mut worker_b).await;
    assert_eq!(
        body(&again),
        body(&task_a),
        "the dead worker's task comes first"
    );
    assert!(
        again.redelivered,
        "a task given back by a dead worker is marked redelivered"
    );
    ack(&again).await;
    let last = next(&mut worker_b).await;
    assert_eq!(body(&last), "task-3");
    assert!(!last.redelivered);
    assert!(
        last.properties.delivery_mode() == &Some(2),
        "delivery_mode survives"
    );
    ack(&last).await;
    wait_counts(&broker, "task_queue", 0, 0).await;
}

/// Tutorial 3: a fanout exchange `logs`; each subscriber binds its own exclusive,
/// server-named queue and gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe() {
    let broker = TestBroker::start();
    let (_pconn, producer) = open(&broker).await;
    declare_exchange(&producer, "logs", ExchangeKind::Fanout).await;

    let mut subscribers = Vec::new();
    let mut names = Vec::new();
    for _ in 0..2 {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        declare_exchange(&ch, "logs", ExchangeKind::Fanout).await;
        let q = declare_exclusive(&ch).await;
        let name = q.name().to_string();
        assert!(name.starts_with("amq.gen-"), "server-named queue: {name}");
        assert_eq!(
            name.len(),
            "amq.gen-".len() + 22,
            "RabbitMQ's name length: {name}"
        );
        bind(&ch, &name, "logs", "").await;
        let c = consume_no_ack(&ch, &name, "").await;
        names.push(name);
        subscribers.push((conn, ch, c));
    }
    assert_ne!(names[0], names[1], "server-generated names are unique");

    for line in ["info: one", "warning: two", "error: three"] {
        publish(&producer, "logs", "ignored-key", line.as_bytes()).await;
    }
    for (_, _, c) in subscribers.iter_mut() {
        assert_eq!(
            next_bodies(c, 3).await,
            ["info: one", "warning: two", "error: three"]
        );
        assert_no_delivery(c).await;
    }

    // An exclusive queue lives only as long as its connection.
    let (conn, _ch, _c) = subscribers.remove(0);
    assert!(queue_exists(&broker, &names[0]));
    within("close subscriber", conn.close(200, "bye".into()))
        .await
        .expect("close");
    eventually("exclusive queue deleted with its connection", || {
        !queue_exists(&broker, &names[0])
    })
    .await;
    assert!(queue_exists(&broker, &names[1]));
}

/// Tutorial 4: a direct exchange routes by exact routing key; one queue may have several
/// bindings, and two queues may share a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_with_a_direct_exchange() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "direct_logs", ExchangeKind::Direct).await;

    let errors_only = declare_exclusive(&ch).await.name().to_string();
    bind(&ch, &errors_only, "direct_logs", "error").await;
    let everything = declare_exclusive(&ch).await.name().to_string();
    for severity in ["info", "warning", "error"] {
        bind(&ch, &everything, "direct_logs", severity).await;
    }
    let mut c_err = consume_no_ack(&ch, &errors_only, "errors").await;
    let mut c_all = consume_no_ack(&ch, &everything, "all").await;

    for (severity, text) in [
        ("info", "i1"),
        ("debug", "d1"),
        ("warning", "w1"),
        ("error", "e1"),
    ] {
        publish(&ch, "direct_logs", severity, text.as_bytes()).await;
    }
    let d = next(&mut c_err).await;
    assert_eq!((body(&d).as_str(), d.routing_key.as_str()), ("e1", "error"));
    assert_eq!(d.exchange.as_str(), "direct_logs");
    assert_no_delivery(&mut c_err).await;
    assert_eq!(next_bodies(&mut c_all, 3).await, ["i1", "w1", "e1"]);
    assert_no_delivery(&mut c_all).await;
}

/// Tutorial 5: a topic exchange with the tutorial's bindings and messages, `*` matching
/// exactly one word and `#` zero or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare_exchange(&ch, "topic_logs", ExchangeKind::Topic).await;

    let q1 = declare_exclusive(&ch).await.name().to_string();
    bind(&ch, &q1, "topic_logs", "*.orange.*").await;
    let q2 = declare_exclusive(&ch).await.name().to_string();
    bind(&ch, &q2, "topic_logs", "*.*.rabbit").await;
    bind(&ch, &q2, "topic_logs", "lazy.#").await;
    let mut c1 = consume_no_ack(&ch, &q1, "q1").await;
    let mut c2 = consume_no_ack(&ch, &q2, "q2").await;

    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit", // matches both of q2's bindings, delivered once
        "quick.brown.fox",
        "orange",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "lazy", // `#` matches zero words
        "quick.orange.male.rabbit",
    ];
    for k in keys {
        publish(&ch, "topic_logs", k, k.as_bytes()).await;
    }
    assert_eq!(
        next_bodies(&mut c1, 3).await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    assert_no_delivery(&mut c1).await;
    assert_eq!(
        next_bodies(&mut c2, 6).await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.new.rabbit",
            "lazy"
        ]
    );
    assert_no_delivery(&mut c2).await;
}

fn fib(n: u64) -> u64 {
    match n {
        0 => 0,
        1 => 1,
        n => fib(n - 1) + fib(n - 2),
    }
}

/// Tutorial 6: RPC. The client sends requests with `reply_to` naming its exclusive
/// server-named callback queue and a `correlation_id`; the server answers each through the
/// default exchange, and the client matches answers to requests by correlation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc() {
    let broker = TestBroker::start();

    // The RPC server.
    let server_conn = connect(&broker).await;
    let server_ch = channel(&server_conn).await;
    declare(&server_ch, "rpc_queue").await;
    within("qos", server_ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .expect("qos");
    let mut requests = consume(&server_ch, "rpc_queue", "rpc-server").await;
    let server = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(req)) = requests.next().await {
            let n: u64 = String::from_utf8_lossy(&req.data)
                .parse()
                .expect("numeric request");
            let reply_to = req.properties.reply_to().clone().expect("reply_to set");
            let corr = req
                .properties
                .correlation_id()
                .clone()
                .expect("correlation_id set");
            let props = BasicProperties::default().with_correlation_id(corr);
            server_ch
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    fib(n).to_string().as_bytes(),
                    props,
                )
                .await
                .expect("publish reply");
            req.ack(BasicAckOptions::default())
                .await
                .expect("ack request");
        }
    });

    // The client.
    let (_cconn, ch) = open(&broker).await;
    let callback = declare_exclusive(&ch).await.name().clone();
    assert!(callback.as_str().starts_with("amq.gen-"));
    let mut replies = consume_no_ack(&ch, callback.as_str(), "").await;
    let mut expected: HashMap<String, u64> = HashMap::new();
    for (i, n) in [10u64, 20, 1, 15].into_iter().enumerate() {
        let corr = format!("req-{i}");
        let props = BasicProperties::default()
            .with_reply_to(callback.clone())
            .with_correlation_id(ShortString::from(corr.clone()));
        publish_props(&ch, "", "rpc_queue", n.to_string().as_bytes(), props).await;
        expected.insert(corr, fib(n));
    }
    for _ in 0..4 {
        let d = next(&mut replies).await;
        let corr = d
            .properties
            .correlation_id()
            .clone()
            .expect("reply carries correlation_id");
        let want = expected
            .remove(corr.as_str())
            .unwrap_or_else(|| panic!("unknown correlation id {corr}"));
        assert_eq!(body(&d), want.to_string(), "reply to {corr}");
        assert_eq!(d.routing_key.as_str(), callback.as_str());
    }
    assert!(expected.is_empty());
    assert_no_delivery(&mut replies).await;
    wait_counts(&broker, "rpc_queue", 0, 0).await;
    server.abort();
}
