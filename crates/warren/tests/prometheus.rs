//! The `warren` binary's Prometheus endpoint: its listener configured as RabbitMQ's
//! (`prometheus.tcp.port`, `prometheus.tcp.ip`) and named in the listeners file, and a real
//! Prometheus server (Debian's `prometheus` package) scraping it: after lapin publishes N
//! messages, PromQL through Prometheus' HTTP API answers N for that queue, and queries of
//! RabbitMQ's "RabbitMQ-Overview" Grafana dashboard return series.

use std::time::{Duration, Instant};
use warren_tests::prometheus::{scrape, Job, PrometheusServer};
use warren_tests::*;

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_is_configured_as_rabbitmq_and_named_in_the_listeners_file() {
    let dir = TempDir::new("prom-conf");
    let conf = dir.join("warren.conf");
    std::fs::write(
        &conf,
        "prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = 0\nprometheus.return_per_object_metrics = true\n",
    )
    .unwrap();
    let file = dir.join("listeners");
    let child = std::process::Command::new(WARREN)
        .arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--mgmt-listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .arg("--listeners-file")
        .arg(&file)
        .env_remove("WARREN_PROMETHEUS_LISTEN")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn warren");
    let mut child = ChildGuard::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&file) {
            break t;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("warren exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "no listeners file within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let prom: Vec<std::net::SocketAddr> = text
        .lines()
        .filter_map(|l| l.strip_prefix("http/prometheus "))
        .map(|a| a.parse().expect("an address"))
        .collect();
    assert_eq!(
        prom.len(),
        1,
        "one IPv4 listener, as prometheus.tcp.ip says: {text}"
    );
    assert!(prom[0].ip().is_loopback() && prom[0].is_ipv4() && prom[0].port() != 0);
    let e = scrape(prom[0], "/metrics").await.exposition();
    // return_per_object_metrics: /metrics is the per-object endpoint.
    assert_eq!(
        e.value(
            "rabbitmq_identity_info",
            &[("rabbitmq_endpoint", "per-object")]
        ),
        1.0
    );
    // The binary samples memory and disk: the limits and the free space are known.
    assert!(e.value("rabbitmq_disk_space_available_bytes", &[]) > 0.0);
    assert!(e.value("rabbitmq_disk_space_available_limit_bytes", &[]) > 0.0);
    assert!(e.value("rabbitmq_resident_memory_limit_bytes", &[]) > 0.0);
}

/// Publishes `n` messages to `queue` and waits until the broker holds them.
async fn publish_n(url: &str, queue: &str, n: usize) -> lapin::Connection {
    let conn = connect_url(url).await;
    let ch = channel(&conn).await;
    declare(&ch, queue).await;
    confirm_select(&ch).await;
    for i in 0..n {
        publish_confirmed(&ch, "", queue, format!("m{i}").as_bytes()).await;
    }
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_server_scrapes_queue_depths_and_the_dashboard_queries_answer() {
    const N: usize = 37;
    let tmp = TempDir::new("prom-server");
    let broker = BrokerProcess::start(WARREN, &tmp.join("data"), &[]);
    let metrics = broker
        .listener("http/prometheus")
        .expect("an http/prometheus line in the listeners file");
    let prometheus = PrometheusServer::start(&[
        Job {
            name: "warren-per-object",
            path: "/metrics/per-object",
            params: &[],
            target: metrics,
        },
        Job {
            name: "warren",
            path: "/metrics",
            params: &[],
            target: metrics,
        },
        // As the RabbitMQ cluster operator's ServiceMonitor scrapes the detailed endpoint.
        Job {
            name: "warren-detailed",
            path: "/metrics/detailed",
            params: &[
                ("family", "queue_coarse_metrics"),
                ("family", "queue_metrics"),
                ("family", "queue_delivery_metrics"),
                ("family", "exchange_metrics"),
                ("family", "channel_exchange_metrics"),
                ("family", "connection_coarse_metrics"),
                ("family", "connection_churn_metrics"),
                ("vhost", "/"),
            ],
            target: metrics,
        },
    ]);
    let _conn = publish_n(&broker.url(), "prom-queue", N).await;
    // Another queue, so the per-queue query has to pick the right one.
    let _other = publish_n(&broker.url(), "prom-other", 3).await;
    let timeout = Duration::from_secs(30);
    let exactly = |want: f64| {
        move |r: &[(std::collections::BTreeMap<String, String>, f64)]| {
            r.len() == 1 && r[0].1 == want
        }
    };
    let got = prometheus
        .query_until(
            r#"rabbitmq_queue_messages_ready{job="warren-per-object",queue="prom-queue"}"#,
            timeout,
            exactly(N as f64),
        )
        .await;
    assert_eq!(got[0].0["vhost"], "/");
    prometheus
        .query_until(
            r#"rabbitmq_queue_messages_ready{job="warren"}"#,
            timeout,
            exactly((N + 3) as f64),
        )
        .await;
    prometheus
        .query_until(
            r#"sum(rabbitmq_queue_messages{job="warren-per-object"})"#,
            timeout,
            exactly((N + 3) as f64),
        )
        .await;
    // The detailed endpoint: per-object series of the families asked for.
    prometheus
        .query_until(
            r#"rabbitmq_detailed_queue_messages_ready{job="warren-detailed",vhost="/",queue="prom-queue"}"#,
            timeout,
            exactly(N as f64),
        )
        .await;
    prometheus
        .query_until(
            r#"rabbitmq_detailed_queue_info{job="warren-detailed",queue="prom-queue",queue_type="rabbit_classic_queue"}"#,
            timeout,
            exactly(1.0),
        )
        .await;
    for q in [r#"sum(rabbitmq_detailed_exchange_messages_published_total{job="warren-detailed"})"#]
    {
        prometheus
            .query_until(q, timeout, exactly((N + 3) as f64))
            .await;
    }
    prometheus
        .query_until(
            r#"count(rabbitmq_detailed_connection_incoming_bytes_total{job="warren-detailed"} > 0)"#,
            timeout,
            exactly(2.0),
        )
        .await;
    prometheus
        .query_until(
            r#"rabbitmq_detailed_connections_opened_total{job="warren-detailed"}"#,
            timeout,
            exactly(2.0),
        )
        .await;
    prometheus
        .query_until(
            r#"count(rabbitmq_detailed_queue_disk_writes_total{job="warren-detailed"})"#,
            timeout,
            exactly(2.0),
        )
        .await;
    // A basic.get on an empty queue and a redelivery, for the dashboard's panels below.
    {
        let conn = connect_url(&broker.url()).await;
        let ch = channel(&conn).await;
        declare(&ch, "prom-empty").await;
        assert!(get(&ch, "prom-empty", false).await.is_none());
        let m = get(&ch, "prom-other", false).await.expect("a message");
        within(
            "nack",
            m.delivery.nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
        let again = get(&ch, "prom-other", true)
            .await
            .expect("the message again");
        assert!(again.delivery.redelivered);
        prometheus
            .query_until(
                r#"sum(rabbitmq_global_messages_get_empty_total{job="warren"})"#,
                timeout,
                exactly(1.0),
            )
            .await;
        prometheus
            .query_until(
                r#"sum(rabbitmq_global_messages_redelivered_total{job="warren"})"#,
                timeout,
                exactly(1.0),
            )
            .await;
        // This channel is open (publish_n's were closed): its series is there.
        publish(&ch, "", "prom-empty", b"a").await;
        publish(&ch, "", "prom-empty", b"b").await;
        prometheus
            .query_until(
                r#"sum(rabbitmq_detailed_channel_messages_published_total{job="warren-detailed"})"#,
                timeout,
                exactly(2.0),
            )
            .await;
    }
    // Queries of RabbitMQ's "RabbitMQ-Overview" dashboard (its cluster variable matched with
    // a regex): they join on rabbitmq_identity_info, which must therefore match.
    for q in [
        r#"sum(rabbitmq_queue_messages_ready * on(instance, job) group_left(rabbitmq_cluster) rabbitmq_identity_info{rabbitmq_cluster=~".+", namespace=""})"#,
        r#"sum(rabbitmq_queue_messages_unacked * on(instance, job) group_left(rabbitmq_cluster) rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
        r#"rabbitmq_connections * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}"#,
        r#"rabbitmq_channels * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}"#,
        r#"rabbitmq_queues * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}"#,
        r#"(rabbitmq_resident_memory_limit_bytes * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) - (rabbitmq_process_resident_memory_bytes * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
        r#"(rabbitmq_disk_space_available_bytes - rabbitmq_disk_space_available_limit_bytes) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}"#,
        r#"(rabbitmq_process_max_fds - rabbitmq_process_open_fds) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}"#,
        r#"rabbitmq_erlang_uptime_seconds * on(instance, job) group_left(rabbitmq_version, erlang_version) rabbitmq_build_info * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}"#,
        r#"sum(rate(rabbitmq_global_messages_acknowledged_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
        r#"sum(irate(rabbitmq_global_messages_delivered_total[1m]) * on(instance, job) group_left(rabbitmq_cluster) rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
        r#"sum(rabbitmq_global_consumers * on(instance, job) group_left(rabbitmq_cluster) rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
        r#"sum(rabbitmq_global_publishers * on(instance, job) group_left(rabbitmq_cluster) rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
        r#"sum(rate(rabbitmq_global_messages_routed_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_global_messages_received_confirm_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"} - rate(rabbitmq_global_messages_confirmed_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum((rate(rabbitmq_global_messages_delivered_consume_auto_ack_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) + (rate(rabbitmq_global_messages_delivered_consume_manual_ack_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"})) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_global_messages_redelivered_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_global_messages_delivered_get_auto_ack_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_global_messages_delivered_get_manual_ack_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_global_messages_get_empty_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_queues_declared_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_queues_created_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_queues_deleted_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_channels_opened_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_channels_closed_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_connections_opened_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"sum(rate(rabbitmq_connections_closed_total[1m]) * on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info{rabbitmq_cluster=~".+"}) by(rabbitmq_node)"#,
        r#"count(rabbitmq_identity_info{rabbitmq_cluster=~".+"})"#,
    ] {
        prometheus
            .query_until(q, timeout, |r| {
                !r.is_empty() && r.iter().all(|(_, v)| v.is_finite())
            })
            .await;
    }
}
