//! The Prometheus endpoint over a real socket: rabbitmq_prometheus' metric names, types and
//! help texts, aggregated on `/metrics` and per queue on `/metrics/per-object`, and values
//! that follow what lapin clients publish, consume and acknowledge.

use warren_tests::prometheus::{Exposition, MetricsBroker};
use warren_tests::*;

/// (name as sampled, TYPE, HELP) of every family `/metrics` always has, as RabbitMQ 4.x's
/// rabbitmq_prometheus writes them (the TYPE and HELP lines of a counter name the `_total`
/// sample, as its text format does).
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "rabbitmq_process_open_fds",
        "gauge",
        "Open file descriptors",
    ),
    (
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
    ),
    (
        "rabbitmq_process_max_fds",
        "gauge",
        "Open file descriptors limit",
    ),
    (
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
    ),
    (
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
    ),
    ("rabbitmq_erlang_uptime_seconds", "gauge", "Node uptime"),
    (
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
    ),
    (
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
    ),
    ("rabbitmq_queue_consumers", "gauge", "Consumers on a queue"),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of ready messages",
    ),
    (
        "rabbitmq_queue_messages_published_total",
        "counter",
        "Total number of messages published into a queue through an exchange on a channel",
    ),
    (
        "rabbitmq_queue_messages_acked_total",
        "counter",
        "Total number of messages acknowledged by consumers on a queue",
    ),
    (
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
    ),
    ("rabbitmq_channels", "gauge", "Channels currently open"),
    (
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
    ),
    ("rabbitmq_queues", "gauge", "Queues available"),
    (
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    ),
    (
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    ),
    (
        "rabbitmq_global_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers",
    ),
    (
        "rabbitmq_global_messages_received_total",
        "counter",
        "Total number of messages received from publishers",
    ),
    (
        "rabbitmq_global_messages_routed_total",
        "counter",
        "Total number of messages routed to queues or streams",
    ),
    (
        "rabbitmq_global_messages_unroutable_dropped_total",
        "counter",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
    ),
    (
        "rabbitmq_global_messages_unroutable_returned_total",
        "counter",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
    ),
    (
        "rabbitmq_global_messages_confirmed_total",
        "counter",
        "Total number of messages confirmed to publishers",
    ),
    (
        "rabbitmq_global_messages_acknowledged_total",
        "counter",
        "Total number of messages acknowledged by consumers",
    ),
    (
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    ),
    (
        "rabbitmq_alarms_file_descriptor_limit",
        "untyped",
        "is 1 if file descriptor limit alarm is in effect",
    ),
    (
        "rabbitmq_alarms_free_disk_space_watermark",
        "untyped",
        "is 1 if free disk space watermark alarm is in effect",
    ),
    (
        "rabbitmq_alarms_memory_used_watermark",
        "untyped",
        "is 1 if VM memory watermark alarm is in effect",
    ),
    (
        "rabbitmq_connections_opened_total",
        "counter",
        "Total number of connections opened",
    ),
    (
        "rabbitmq_queues_created_total",
        "counter",
        "Total number of queues created",
    ),
    (
        "rabbitmq_global_messages_received_confirm_total",
        "counter",
        "Total number of messages received from publishers expecting confirmations",
    ),
    (
        "rabbitmq_global_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered to consumers",
    ),
    (
        "rabbitmq_global_messages_get_empty_total",
        "counter",
        "Total number of times basic.get operations fetched no message",
    ),
    (
        "rabbitmq_global_messages_delivered_consume_manual_ack_total",
        "counter",
        "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
    ),
    (
        "rabbitmq_global_publishers",
        "gauge",
        "Current number of publishers",
    ),
    (
        "rabbitmq_queue_disk_writes_total",
        "counter",
        "Total number of times queue wrote messages to disk",
    ),
    (
        "rabbitmq_queue_messages_delivered_ack_total",
        "counter",
        "Total number of messages delivered from a queue to consumers in manual acknowledgement mode",
    ),
    (
        "rabbitmq_exchange_messages_published_total",
        "counter",
        "Total number of messages published into an exchange",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    ),
];

/// Every family of [`FAMILIES`] with its TYPE, HELP and a sample; `per_object`: but the queue
/// families, which have a sample per queue there (and so none without queues).
#[track_caller]
fn assert_families(e: &Exposition, per_object: bool) {
    for (name, kind, help) in FAMILIES {
        if per_object && name.starts_with("rabbitmq_queue_") {
            continue;
        }
        assert_eq!(
            e.types.get(*name).map(String::as_str),
            Some(*kind),
            "TYPE of {name}"
        );
        assert_eq!(
            e.help.get(*name).map(String::as_str),
            Some(*help),
            "HELP of {name}"
        );
        assert!(!e.all(name).is_empty(), "no sample of {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_rabbitmq_names_types_and_help_texts() {
    let m = MetricsBroker::start().await;
    let e = m.scrape("/metrics").await.exposition();
    assert_families(&e, false);
    // Aggregated: the queue families are one sample with no labels, 0 with no queues.
    assert_eq!(e.value("rabbitmq_queue_messages_ready", &[]), 0.0);
    assert!(e.all("rabbitmq_queue_messages_ready")[0].labels.is_empty());
    assert_eq!(e.value("rabbitmq_queues", &[]), 0.0);
    assert!(e.all("rabbitmq_queue_info").is_empty(), "per-object only");
    assert_eq!(
        e.value(
            "rabbitmq_identity_info",
            &[("rabbitmq_endpoint", "aggregated")]
        ),
        1.0
    );
    let id = &e.all("rabbitmq_identity_info")[0].labels;
    for label in [
        "rabbitmq_node",
        "rabbitmq_cluster",
        "rabbitmq_cluster_permanent_id",
    ] {
        assert!(
            id.get(label).is_some_and(|v| !v.is_empty()),
            "{label}: {id:?}"
        );
    }
    let build = &e.all("rabbitmq_build_info")[0].labels;
    assert_eq!(build["product_name"], "Warren");
    assert!(build.contains_key("rabbitmq_version"), "{build:?}");
    assert_eq!(e.value("rabbitmq_alarms_memory_used_watermark", &[]), 0.0);
    assert!(e.value("rabbitmq_process_resident_memory_bytes", &[]) > 0.0);
    assert!(e.value("rabbitmq_process_open_fds", &[]) > 0.0);
    assert!(e.value("rabbitmq_process_max_fds", &[]) >= e.value("rabbitmq_process_open_fds", &[]));
    // The per-object endpoint has every family too, and says which endpoint it is.
    let p = m.scrape("/metrics/per-object").await.exposition();
    assert_families(&p, true);
    assert_eq!(
        p.value(
            "rabbitmq_identity_info",
            &[("rabbitmq_endpoint", "per-object")]
        ),
        1.0
    );
    // Registries Warren does not have answer 404, as an unknown one does in RabbitMQ.
    assert_eq!(m.scrape("/metrics/memory-breakdown").await.status, 404);
    assert_eq!(m.scrape("/nothing").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_metrics_follow_publishes_deliveries_and_acks() {
    let m = MetricsBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare(&ch, "metrics-q").await;
    declare(&ch, "metrics-other").await;
    for i in 0..5 {
        publish(&ch, "", "metrics-q", format!("m{i}").as_bytes()).await;
    }
    publish(&ch, "", "metrics-other", b"x").await;
    wait_counts(&m.broker, "metrics-q", 5, 0).await;
    wait_counts(&m.broker, "metrics-other", 1, 0).await;

    let e = m.scrape("/metrics").await.exposition();
    assert_eq!(e.value("rabbitmq_queue_messages_ready", &[]), 6.0);
    assert_eq!(e.value("rabbitmq_queue_messages", &[]), 6.0);
    assert_eq!(e.value("rabbitmq_queue_messages_ready_bytes", &[]), 11.0);
    assert_eq!(e.value("rabbitmq_queue_messages_published_total", &[]), 6.0);
    assert_eq!(e.value("rabbitmq_queues", &[]), 2.0);
    assert_eq!(e.value("rabbitmq_connections", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_channels", &[]), 1.0);

    // A consumer with prefetch 1 takes one, acknowledges it and takes the next.
    let cch = channel(&_conn).await;
    qos(&cch, 1, false).await;
    let mut c = consume(&cch, "metrics-q", "metrics-consumer").await;
    let first = next(&mut c).await;
    ack(&first).await;
    let _second = next(&mut c).await;
    wait_counts(&m.broker, "metrics-q", 3, 1).await;

    let p = m.scrape("/metrics/per-object").await.exposition();
    let q = [("vhost", "/"), ("queue", "metrics-q")];
    assert_eq!(p.value("rabbitmq_queue_messages_ready", &q), 3.0);
    assert_eq!(p.value("rabbitmq_queue_messages_unacked", &q), 1.0);
    assert_eq!(p.value("rabbitmq_queue_messages", &q), 4.0);
    assert_eq!(p.value("rabbitmq_queue_consumers", &q), 1.0);
    assert_eq!(p.value("rabbitmq_queue_messages_acked_total", &q), 1.0);
    let other = [("vhost", "/"), ("queue", "metrics-other")];
    assert_eq!(p.value("rabbitmq_queue_messages_ready", &other), 1.0);
    assert_eq!(p.value("rabbitmq_queue_consumers", &other), 0.0);
    assert_eq!(
        p.value(
            "rabbitmq_queue_info",
            &[
                ("queue", "metrics-q"),
                ("queue_type", "rabbit_classic_queue"),
                ("membership", "leader")
            ]
        ),
        1.0
    );
    assert_eq!(p.all("rabbitmq_queue_messages_ready").len(), 2);

    let e = m.scrape("/metrics").await.exposition();
    let classic = [
        ("protocol", "amqp091"),
        ("queue_type", "rabbit_classic_queue"),
    ];
    assert_eq!(
        e.value("rabbitmq_global_messages_delivered_total", &classic),
        2.0
    );
    assert_eq!(
        e.value("rabbitmq_global_messages_acknowledged_total", &classic),
        1.0
    );
    assert_eq!(
        e.value("rabbitmq_global_consumers", &[("protocol", "amqp091")]),
        1.0
    );
    assert_eq!(e.value("rabbitmq_consumers", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_channels", &[]), 2.0);
    assert_eq!(e.value("rabbitmq_queue_messages_unacked", &[]), 1.0);
    let amqp = [("protocol", "amqp091")];
    assert_eq!(
        e.value("rabbitmq_global_messages_received_total", &amqp),
        6.0
    );
    assert_eq!(e.value("rabbitmq_global_messages_routed_total", &amqp), 6.0);
    // One unroutable publish, and two confirmed ones on a channel in confirm mode.
    publish(&ch, "", "no-such-queue", b"lost").await;
    let conf = channel(&_conn).await;
    confirm_select(&conf).await;
    publish_confirmed(&conf, "", "metrics-other", b"c1").await;
    publish_confirmed(&conf, "", "metrics-other", b"c2").await;
    let e = m.scrape("/metrics").await.exposition();
    assert_eq!(
        e.value("rabbitmq_global_messages_received_total", &amqp),
        9.0
    );
    assert_eq!(e.value("rabbitmq_global_messages_routed_total", &amqp), 8.0);
    assert_eq!(
        e.value("rabbitmq_global_messages_unroutable_dropped_total", &amqp),
        1.0
    );
    assert_eq!(
        e.value("rabbitmq_global_messages_confirmed_total", &amqp),
        2.0
    );

    // Deleting a queue does not take its counts out of the counters (they never go down).
    drop(c);
    within(
        "queue_delete",
        ch.queue_delete(
            "metrics-q".into(),
            lapin::options::QueueDeleteOptions::default(),
        ),
    )
    .await
    .expect("queue_delete");
    eventually("metrics-q deleted", || {
        !queue_exists(&m.broker, "metrics-q")
    })
    .await;
    let e = m.scrape("/metrics").await.exposition();
    assert_eq!(e.value("rabbitmq_queues", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_queue_messages_ready", &[]), 3.0);
    assert_eq!(e.value("rabbitmq_queue_messages_published_total", &[]), 8.0);
    assert_eq!(
        e.value("rabbitmq_global_messages_delivered_total", &classic),
        2.0
    );
    assert_eq!(
        e.value("rabbitmq_global_messages_acknowledged_total", &classic),
        1.0
    );
}

/// A queue name may hold any character: the text stays parseable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_are_escaped_in_labels() {
    let m = MetricsBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    let name = "we\"ird\\name\nwith a line feed";
    declare(&ch, name).await;
    publish(&ch, "", name, b"x").await;
    wait_counts(&m.broker, name, 1, 0).await;
    let p = m.scrape("/metrics/per-object").await.exposition();
    assert_eq!(
        p.value("rabbitmq_queue_messages_ready", &[("queue", name)]),
        1.0
    );
}

/// `prometheus.return_per_object_metrics = true`: `/metrics` is the per-object endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_metrics_can_be_the_default() {
    let m = MetricsBroker::start_with(warren_mgmt::prometheus::Options {
        per_object_by_default: true,
        ..Default::default()
    })
    .await;
    let (_conn, ch) = open(&m.broker).await;
    declare(&ch, "po").await;
    publish(&ch, "", "po", b"x").await;
    wait_counts(&m.broker, "po", 1, 0).await;
    let e = m.scrape("/metrics").await.exposition();
    assert_eq!(
        e.value(
            "rabbitmq_queue_messages_ready",
            &[("vhost", "/"), ("queue", "po")]
        ),
        1.0
    );
    assert_eq!(
        e.value(
            "rabbitmq_identity_info",
            &[("rabbitmq_endpoint", "per-object")]
        ),
        1.0
    );
}

/// Channels, connections, exchanges and their churn, summed on `/metrics` as RabbitMQ sums
/// them (the open channels' and connections'), and the global counters the "RabbitMQ-Overview"
/// dashboard plots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_connection_exchange_and_churn_metrics_follow_what_clients_do() {
    let m = MetricsBroker::start().await;
    let (conn, ch) = open(&m.broker).await;
    declare(&ch, "sum-q").await;
    declare(&ch, "sum-empty").await;
    declare(&ch, "sum-q").await;
    confirm_select(&ch).await;
    for i in 0..4 {
        publish_confirmed(&ch, "", "sum-q", format!("m{i}").as_bytes()).await;
    }
    assert!(get(&ch, "sum-empty", true).await.is_none());
    wait_counts(&m.broker, "sum-q", 4, 0).await;

    let e = m.scrape("/metrics").await.exposition();
    let amqp = [("protocol", "amqp091")];
    let classic = [
        ("protocol", "amqp091"),
        ("queue_type", "rabbit_classic_queue"),
    ];
    assert_eq!(
        e.value("rabbitmq_channel_messages_published_total", &[]),
        4.0
    );
    assert_eq!(
        e.value("rabbitmq_channel_messages_confirmed_total", &[]),
        4.0
    );
    assert_eq!(
        e.value("rabbitmq_exchange_messages_published_total", &[]),
        4.0
    );
    assert_eq!(
        e.value("rabbitmq_global_messages_received_confirm_total", &amqp),
        4.0
    );
    assert_eq!(e.value("rabbitmq_global_publishers", &amqp), 1.0);
    assert_eq!(e.value("rabbitmq_queue_get_empty_total", &[]), 1.0);
    assert_eq!(
        e.value("rabbitmq_global_messages_get_empty_total", &classic),
        1.0
    );
    assert_eq!(e.value("rabbitmq_connections_opened_total", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_channels_opened_total", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_queues_declared_total", &[]), 3.0);
    assert_eq!(e.value("rabbitmq_queues_created_total", &[]), 2.0);
    assert_eq!(e.value("rabbitmq_connection_channels", &[]), 1.0);
    assert!(e.value("rabbitmq_connection_incoming_bytes_total", &[]) > 0.0);
    assert!(e.value("rabbitmq_connection_outgoing_packets_total", &[]) > 0.0);
    // "m0".."m3": four bodies of 2 bytes, in the first bucket (100 bytes) and every one after.
    assert_eq!(e.value("rabbitmq_message_size_bytes_count", &amqp), 4.0);
    assert_eq!(e.value("rabbitmq_message_size_bytes_sum", &amqp), 8.0);
    assert_eq!(
        e.value(
            "rabbitmq_message_size_bytes_bucket",
            &[("protocol", "amqp091"), ("le", "+Inf")]
        ),
        4.0
    );
    let buckets = e.all("rabbitmq_message_size_bytes_bucket");
    assert_eq!(buckets.len(), 9, "{buckets:?}");
    assert!(buckets.iter().all(|b| b.value == 4.0), "{buckets:?}");

    // A consumer with manual acks takes two; one comes back redelivered.
    let cch = channel(&conn).await;
    qos(&cch, 2, false).await;
    let mut c = consume(&cch, "sum-q", "sum-consumer").await;
    let first = next(&mut c).await;
    let _second = next(&mut c).await;
    within(
        "nack",
        first.nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let again = next(&mut c).await;
    assert!(again.redelivered);
    let e = m.scrape("/metrics").await.exposition();
    assert_eq!(e.value("rabbitmq_channel_consumers", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_channel_messages_unacked", &[]), 2.0);
    assert_eq!(e.value("rabbitmq_consumer_prefetch", &[]), 2.0);
    assert_eq!(
        e.value("rabbitmq_queue_messages_delivered_ack_total", &[]),
        3.0
    );
    assert_eq!(
        e.value("rabbitmq_queue_messages_redelivered_total", &[]),
        1.0
    );
    assert_eq!(
        e.value("rabbitmq_channel_messages_redelivered_total", &[]),
        1.0
    );
    assert_eq!(
        e.value(
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            &classic
        ),
        3.0
    );
    assert_eq!(
        e.value("rabbitmq_global_messages_redelivered_total", &classic),
        1.0
    );
    let p = m.scrape("/metrics/per-object").await.exposition();
    assert_eq!(
        p.value(
            "rabbitmq_exchange_messages_published_total",
            &[("vhost", "/"), ("exchange", "")]
        ),
        4.0
    );
    assert_eq!(p.all("rabbitmq_channel_messages_published_total").len(), 2);
    assert_eq!(p.all("rabbitmq_connection_incoming_bytes_total").len(), 1);

    // The publishing channel closes: the channel sums lose it (as RabbitMQ's), the exchange
    // and global counters keep its publishes, and the churn counts it.
    within("close", ch.close(200, "bye".into())).await.unwrap();
    eventually("channel closed", || {
        m.broker
            .broker
            .connections
            .list()
            .iter()
            .all(|c| c.channels.lock().len() == 1)
    })
    .await;
    let e = m.scrape("/metrics").await.exposition();
    assert_eq!(
        e.value("rabbitmq_channel_messages_published_total", &[]),
        0.0
    );
    assert_eq!(
        e.value("rabbitmq_exchange_messages_published_total", &[]),
        4.0
    );
    assert_eq!(
        e.value("rabbitmq_global_messages_received_total", &amqp),
        4.0
    );
    assert_eq!(e.value("rabbitmq_channels_opened_total", &[]), 2.0);
    assert_eq!(e.value("rabbitmq_channels_closed_total", &[]), 1.0);
    assert_eq!(e.value("rabbitmq_global_publishers", &amqp), 0.0);
    drop(c);
    within("close", cch.close(200, "bye".into())).await.unwrap();
    within("close", conn.close(200, "bye".into()))
        .await
        .unwrap();
    eventually("connection closed", || {
        m.broker.broker.connections.is_empty()
    })
    .await;
    // The connection's channels are counted closed just after it leaves the registry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let e = m.scrape("/metrics").await.exposition();
        assert_eq!(e.value("rabbitmq_connections_closed_total", &[]), 1.0);
        if e.value("rabbitmq_channels_closed_total", &[]) == 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "channels never counted closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `/metrics/detailed`: nothing but the node's identity unless families are asked for; then
/// those families, per object, named `rabbitmq_detailed_…` (the cluster-wide ones
/// `rabbitmq_cluster_…`), for the vhosts and queues asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detailed_endpoint_gives_the_families_asked_for_per_object() {
    let m = MetricsBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare(&ch, "d-q").await;
    declare(&ch, "other-q").await;
    declare_exchange(&ch, "d-x", lapin::ExchangeKind::Fanout).await;
    bind(&ch, "d-q", "d-x", "").await;
    for _ in 0..3 {
        publish(&ch, "d-x", "", b"x").await;
    }
    wait_counts(&m.broker, "d-q", 3, 0).await;

    let d = m.scrape("/metrics/detailed").await;
    assert_eq!(d.status, 200);
    let e = d.exposition();
    assert_eq!(
        e.value(
            "rabbitmq_identity_info",
            &[("rabbitmq_endpoint", "detailed")]
        ),
        1.0
    );
    assert!(
        e.samples
            .iter()
            .all(|s| s.name == "rabbitmq_identity_info" || s.name == "rabbitmq_build_info"),
        "no family asked for, none given: {:?}",
        e.samples
    );

    let e = m
        .scrape(
            "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count\
             &family=exchange_metrics&family=channel_exchange_metrics\
             &family=connection_coarse_metrics&family=vhost_status&family=exchange_names\
             &family=exchange_bindings",
        )
        .await
        .exposition();
    let q = [("vhost", "/"), ("queue", "d-q")];
    assert_eq!(e.value("rabbitmq_detailed_queue_messages_ready", &q), 3.0);
    assert_eq!(e.value("rabbitmq_detailed_queue_messages", &q), 3.0);
    assert_eq!(e.value("rabbitmq_detailed_queue_consumers", &q), 0.0);
    assert_eq!(e.all("rabbitmq_detailed_queue_messages_ready").len(), 2);
    assert_eq!(
        e.types
            .get("rabbitmq_detailed_queue_messages_ready")
            .map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        e.help
            .get("rabbitmq_detailed_exchange_messages_published_total")
            .map(String::as_str),
        Some("Total number of messages published into an exchange")
    );
    assert_eq!(
        e.value(
            "rabbitmq_detailed_exchange_messages_published_total",
            &[("vhost", "/"), ("exchange", "d-x")]
        ),
        3.0
    );
    let published: f64 = e
        .all("rabbitmq_detailed_channel_messages_published_total")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(published, 3.0);
    assert!(
        e.all("rabbitmq_detailed_channel_messages_published_total")[0]
            .labels
            .contains_key("channel")
    );
    assert_eq!(
        e.all("rabbitmq_detailed_connection_incoming_bytes_total")
            .len(),
        1
    );
    assert_eq!(
        e.value("rabbitmq_cluster_vhost_status", &[("vhost", "/")]),
        1.0
    );
    assert_eq!(
        e.value(
            "rabbitmq_cluster_exchange_name",
            &[("vhost", "/"), ("exchange", "d-x"), ("type", "fanout")]
        ),
        1.0
    );
    assert_eq!(
        e.value(
            "rabbitmq_cluster_exchange_bindings",
            &[("vhost", "/"), ("exchange", "d-x")]
        ),
        1.0
    );
    assert!(e
        .all("rabbitmq_cluster_exchange_name")
        .iter()
        .all(|s| !s.labels["exchange"].is_empty()));
    assert_eq!(
        e.value(
            "rabbitmq_detailed_queue_info",
            &[("queue", "d-q"), ("queue_type", "rabbit_classic_queue")]
        ),
        1.0
    );
    // Families not asked for are not there, nor the aggregated names.
    assert!(e
        .all("rabbitmq_detailed_queue_messages_ready_bytes")
        .is_empty());
    assert!(e.all("rabbitmq_queue_messages_ready").is_empty());
    assert!(e.all("rabbitmq_global_messages_received_total").is_empty());

    // queue_metrics includes the consumer count: asked with queue_consumer_count, one series.
    let e = m
        .scrape("/metrics/detailed?family=queue_metrics&family=queue_consumer_count")
        .await
        .exposition();
    assert_eq!(e.value("rabbitmq_detailed_queue_consumers", &q), 0.0);
    assert_eq!(
        e.value("rabbitmq_detailed_queue_messages_ready_bytes", &q),
        3.0
    );

    // Filters: by vhost (several may be given) and by a regular expression on queue names.
    let e = m
        .scrape(
            "/metrics/detailed?family=queue_coarse_metrics&family=exchange_metrics&vhost=nosuch",
        )
        .await
        .exposition();
    assert!(e.all("rabbitmq_detailed_queue_messages_ready").is_empty());
    assert!(e
        .all("rabbitmq_detailed_exchange_messages_published_total")
        .is_empty());
    let e = m
        .scrape("/metrics/detailed?family=queue_coarse_metrics&vhost=nosuch&vhost=%2F&queue=%5Ed-")
        .await
        .exposition();
    assert_eq!(e.all("rabbitmq_detailed_queue_messages_ready").len(), 1);
    assert_eq!(e.value("rabbitmq_detailed_queue_messages_ready", &q), 3.0);
    let bad = m
        .scrape("/metrics/detailed?family=queue_coarse_metrics&queue=%28")
        .await;
    assert_eq!(bad.status, 400);
}
