//! Prometheus metrics, as RabbitMQ's `rabbitmq_prometheus` plugin serves them: on a listener
//! of their own (15692 by default), `/metrics` gives the node's metrics with queue metrics
//! summed over every queue, and `/metrics/per-object` adds one series per queue, labelled
//! `{vhost, queue}`. Names, types, labels and help texts are the plugin's (RabbitMQ 4.x), so the
//! published Grafana dashboards and existing alert rules work unchanged; the metrics Warren
//! cannot provide are listed in `docs/compatibility.md`.
//!
//! Everything is read when Prometheus scrapes: the queues' own counters (kept by each queue
//! under its lock, as list_queues shows them) are summed then, and nothing is counted on the
//! message path for the metrics' sake. The deleted queues' counters stay in their vhost's
//! totals, so the counters only grow.
//!
//! The text is the Prometheus text format (0.0.4), encoded by the `prometheus-client` crate.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_broker::vhost::QueueCounters;
use warren_broker::Broker;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// RabbitMQ's port for the Prometheus endpoint.
pub const DEFAULT_PORT: u16 = 15692;

/// The `Content-Type` of the answers: the Prometheus text format, as RabbitMQ's.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the endpoint reports beyond what the broker knows.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The node name (`warren@<hostname>` when empty).
    pub node_name: String,
    /// `/metrics` answers as `/metrics/per-object` (RabbitMQ's
    /// `prometheus.return_per_object_metrics = true`).
    pub per_object_by_default: bool,
}

struct Endpoint {
    broker: Arc<Broker>,
    node: String,
    per_object_by_default: bool,
    started: Instant,
    /// Seconds since the epoch when the process started (`process_start_time_seconds`).
    start_time: u64,
}

/// Serves `/metrics` and `/metrics/per-object` on each of `listeners` until `shutdown` turns
/// true.
pub async fn serve(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(broker, options);
    let mut tasks = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr()?;
        tracing::info!("Prometheus metrics on http://{addr}/metrics");
        let mut shutdown = shutdown.clone();
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { crate::stopped(&mut shutdown).await })
                .await
        }));
    }
    let mut result = Ok(());
    for t in tasks {
        if let Err(e) = t.await.map_err(std::io::Error::other).and_then(|r| r) {
            if result.is_ok() {
                result = Err(e);
            } else {
                tracing::warn!(error = %e, "Prometheus listener failed");
            }
        }
    }
    result
}

/// The endpoint's routes: `/metrics` (aggregated, or per-object if so configured) and
/// `/metrics/per-object`. Other registries (`detailed`, `memory-breakdown`) answer 404 as an
/// unknown one does in RabbitMQ.
pub fn router(broker: Arc<Broker>, options: Options) -> Router {
    let node = if options.node_name.is_empty() {
        crate::default_node_name()
    } else {
        options.node_name
    };
    let process_started = process_start_time();
    let state = Arc::new(Endpoint {
        broker,
        node,
        per_object_by_default: options.per_object_by_default,
        started: Instant::now(),
        start_time: process_started,
    });
    Router::new()
        .route(
            "/metrics",
            get(|State(e): State<Arc<Endpoint>>| async move {
                let per_object = e.per_object_by_default;
                scrape(e, per_object).await
            }),
        )
        .route(
            "/metrics/per-object",
            get(|State(e): State<Arc<Endpoint>>| scrape(e, true)),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "Unknown Registry") })
        .with_state(state)
}

async fn scrape(e: Arc<Endpoint>, per_object: bool) -> Response {
    // Reading every queue's stats takes each queue's lock in turn: off the async workers.
    let text = tokio::task::spawn_blocking(move || render(&e, per_object)).await;
    match text {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(_)) | Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode the metrics",
        )
            .into_response(),
    }
}

/// The exposition text for one scrape.
fn render(e: &Endpoint, per_object: bool) -> Result<String, std::fmt::Error> {
    let snapshot = Snapshot::take(e, per_object);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One queue at scrape time.
#[derive(Debug)]
struct QueueRow {
    vhost: String,
    name: String,
    /// RabbitMQ's queue type module name: `rabbit_classic_queue`, `rabbit_quorum_queue`.
    queue_type: &'static str,
    stats: warren_broker::queue::QueueStats,
}

/// Everything a scrape reports, read once.
#[derive(Debug)]
struct Snapshot {
    per_object: bool,
    node: String,
    queues: Vec<QueueRow>,
    /// Counters summed by queue type over the live and the deleted queues.
    counters: BTreeMap<&'static str, QueueCounters>,
    connections: usize,
    channels: usize,
    consumers: u64,
    /// The channels' message counts (open and closed ones).
    messages: warren_broker::stats::MessageCounts,
    resident_bytes: u64,
    memory_limit: u64,
    disk_free: Option<u64>,
    disk_free_limit: u64,
    memory_alarm: bool,
    disk_alarm: bool,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    uptime_seconds: f64,
    start_time: u64,
}

/// `x-queue-type` as RabbitMQ's queue type module, the `queue_type` label's value.
fn queue_type_label(kind: &str) -> &'static str {
    match kind {
        "quorum" => "rabbit_quorum_queue",
        "stream" => "rabbit_stream_queue",
        _ => "rabbit_classic_queue",
    }
}

impl Snapshot {
    fn take(e: &Endpoint, per_object: bool) -> Snapshot {
        let mut queues = Vec::new();
        // As RabbitMQ, a series for each queue type from the start, at 0.
        let mut counters: BTreeMap<&'static str, QueueCounters> = ["classic", "quorum"]
            .into_iter()
            .map(|t| (queue_type_label(t), QueueCounters::default()))
            .collect();
        let mut vhosts = e.broker.vhosts();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in &vhosts {
            let (live, deleted) = vh.queue_stats_and_deleted();
            for (kind, c) in deleted {
                let sum = counters.entry(queue_type_label(&kind)).or_default();
                sum.published += c.published;
                sum.delivered += c.delivered;
                sum.acked += c.acked;
            }
            let mut rows: Vec<QueueRow> = live
                .into_iter()
                .map(|(q, stats)| {
                    let queue_type = queue_type_label(q.queue_type());
                    counters.entry(queue_type).or_default().add(&stats);
                    QueueRow {
                        vhost: vh.name.clone(),
                        name: q.name.as_str().to_string(),
                        queue_type,
                        stats,
                    }
                })
                .collect();
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            queues.extend(rows);
        }
        let connections = e.broker.connections.list();
        let channels = connections.iter().map(|c| c.channels.lock().len()).sum();
        let consumers = queues.iter().map(|q| q.stats.consumers).sum();
        let alarms = &e.broker.alarms;
        let active = alarms.active();
        Snapshot {
            per_object,
            node: e.node.clone(),
            queues,
            counters,
            connections: connections.len(),
            channels,
            consumers,
            messages: e.broker.connections.message_counts(None),
            resident_bytes: crate::overview::resident_bytes(),
            memory_limit: alarms.memory_limit(),
            disk_free: alarms.disk_free(),
            disk_free_limit: alarms.disk_free_limit(),
            memory_alarm: active.contains(&"memory"),
            disk_alarm: active.contains(&"disk"),
            open_fds: open_fds(),
            max_fds: max_fds(),
            uptime_seconds: e.started.elapsed().as_secs_f64(),
            start_time: e.start_time,
        }
    }

    /// The sum of one field over every queue.
    fn sum(&self, f: impl Fn(&warren_broker::queue::QueueStats) -> u64) -> u64 {
        self.queues.iter().map(|q| f(&q.stats)).sum()
    }

    fn total(&self, f: impl Fn(&QueueCounters) -> u64) -> u64 {
        self.counters.values().map(f).sum()
    }
}

/// A sample's labels (the encoder escapes their values: a queue name may hold any character).
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A value as the text format takes it: an integer, or a float for one too large for i64
/// (an unlimited memory watermark).
fn gauge(m: &mut MetricEncoder, v: u64) -> std::fmt::Result {
    match i64::try_from(v) {
        Ok(v) => m.encode_gauge(&v),
        Err(_) => m.encode_gauge(&(v as f64)),
    }
}

fn counter(m: &mut MetricEncoder, v: u64) -> std::fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One family with one unlabelled sample.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: u64,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => counter(&mut m, v),
        _ => gauge(&mut m, v),
    }
}

/// One family with one sample per label set.
fn labelled<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        let mut s = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => counter(&mut s, v)?,
            _ => gauge(&mut s, v)?,
        }
    }
    Ok(())
}

/// The queue families: summed (no labels), or one series per queue.
struct QueueFamily {
    /// Without the `rabbitmq_` prefix; a counter's without its `_total` (added by the encoder).
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&warren_broker::queue::QueueStats) -> u64,
}

const QUEUE_FAMILIES: &[QueueFamily] = &[
    // queue_coarse_metrics
    QueueFamily {
        name: "rabbitmq_queue_messages_ready",
        help: "Messages ready to be delivered to consumers",
        kind: MetricType::Gauge,
        value: |s| s.messages_ready,
    },
    QueueFamily {
        name: "rabbitmq_queue_messages_unacked",
        help: "Messages delivered to consumers but not yet acknowledged",
        kind: MetricType::Gauge,
        value: |s| s.messages_unacknowledged,
    },
    QueueFamily {
        name: "rabbitmq_queue_messages",
        help: "Sum of ready and unacknowledged messages - total queue depth",
        kind: MetricType::Gauge,
        value: |s| s.messages_ready + s.messages_unacknowledged,
    },
    // queue_metrics
    QueueFamily {
        name: "rabbitmq_queue_consumers",
        help: "Consumers on a queue",
        kind: MetricType::Gauge,
        value: |s| s.consumers,
    },
    QueueFamily {
        name: "rabbitmq_queue_messages_ready_bytes",
        help: "Size in bytes of ready messages",
        kind: MetricType::Gauge,
        value: |s| s.message_bytes_ready,
    },
];

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Unknown};
        // node_coarse_metrics, node_metrics
        if let Some(fds) = self.open_fds {
            single(
                &mut enc,
                "rabbitmq_process_open_fds",
                "Open file descriptors",
                Gauge,
                fds,
            )?;
        }
        single(
            &mut enc,
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            Gauge,
            self.resident_bytes,
        )?;
        if let Some(free) = self.disk_free {
            single(
                &mut enc,
                "rabbitmq_disk_space_available_bytes",
                "Disk space available in bytes",
                Gauge,
                free,
            )?;
        }
        if let Some(max) = self.max_fds {
            single(
                &mut enc,
                "rabbitmq_process_max_fds",
                "Open file descriptors limit",
                Gauge,
                max,
            )?;
        }
        single(
            &mut enc,
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            Gauge,
            self.memory_limit,
        )?;
        single(
            &mut enc,
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            Gauge,
            self.disk_free_limit,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "rabbitmq_erlang_uptime_seconds",
                "Node uptime",
                None,
                Gauge,
            )?;
            m.encode_gauge(&self.uptime_seconds)?;
        }
        // queue_coarse_metrics, queue_metrics
        for f in QUEUE_FAMILIES {
            if self.per_object {
                labelled(
                    &mut enc,
                    f.name,
                    f.help,
                    f.kind,
                    self.queues
                        .iter()
                        .map(|q| (queue_labels(q), (f.value)(&q.stats))),
                )?;
            } else {
                single(&mut enc, f.name, f.help, f.kind, self.sum(f.value))?;
            }
        }
        // channel_queue_exchange_metrics: per channel, queue and exchange in RabbitMQ; Warren
        // counts per queue only, so only the sum is given.
        if !self.per_object {
            single(
                &mut enc,
                "rabbitmq_queue_messages_published",
                "Total number of messages published into a queue through an exchange on a channel",
                Counter,
                self.total(|c| c.published),
            )?;
        }
        // queue_delivery_metrics
        let acked_help = "Total number of messages acknowledged by consumers on a queue";
        if self.per_object {
            labelled(
                &mut enc,
                "rabbitmq_queue_messages_acked",
                acked_help,
                Counter,
                self.queues.iter().map(|q| (queue_labels(q), q.stats.acked)),
            )?;
        } else {
            single(
                &mut enc,
                "rabbitmq_queue_messages_acked",
                acked_help,
                Counter,
                self.total(|c| c.acked),
            )?;
        }
        // totals
        single(
            &mut enc,
            "rabbitmq_connections",
            "Connections currently open",
            Gauge,
            self.connections as u64,
        )?;
        single(
            &mut enc,
            "rabbitmq_channels",
            "Channels currently open",
            Gauge,
            self.channels as u64,
        )?;
        single(
            &mut enc,
            "rabbitmq_consumers",
            "Consumers currently connected",
            Gauge,
            self.consumers,
        )?;
        single(
            &mut enc,
            "rabbitmq_queues",
            "Queues available",
            Gauge,
            self.queues.len() as u64,
        )?;
        if self.per_object {
            labelled(
                &mut enc,
                "rabbitmq_queue_info",
                "A metric with a constant '1' value and labels that provide some queue details",
                Gauge,
                self.queues.iter().map(|q| {
                    let mut l = queue_labels(q);
                    l.push(("queue_type", q.queue_type));
                    l.push(("membership", "leader"));
                    (l, 1)
                }),
            )?;
        }
        // build and identity info
        {
            let mut m = enc.encode_descriptor(
                "rabbitmq_build_info",
                "RabbitMQ & Erlang/OTP version info",
                None,
                Unknown,
            )?;
            let labels: Labels = vec![
                ("product_name", "Warren"),
                ("product_version", env!("CARGO_PKG_VERSION")),
                ("rabbitmq_version", crate::RABBITMQ_COMPAT_VERSION),
                ("prometheus_plugin_version", env!("CARGO_PKG_VERSION")),
                ("prometheus_client_version", PROMETHEUS_CLIENT_VERSION),
            ];
            gauge(&mut m.encode_family(&labels)?, 1)?;
        }
        {
            let endpoint = if self.per_object {
                "per-object"
            } else {
                "aggregated"
            };
            let cluster_id = format!("warren-cluster-id-{}", self.node);
            let mut m = enc.encode_descriptor(
                "rabbitmq_identity_info",
                "RabbitMQ node & cluster identity info",
                None,
                Unknown,
            )?;
            let labels: Labels = vec![
                ("rabbitmq_node", self.node.as_str()),
                ("rabbitmq_cluster", self.node.as_str()),
                ("rabbitmq_cluster_permanent_id", cluster_id.as_str()),
                ("rabbitmq_endpoint", endpoint),
            ];
            gauge(&mut m.encode_family(&labels)?, 1)?;
        }
        // rabbit_global_counters: those the channels' counters give.
        let m = &self.messages;
        for (name, help, v) in [
            (
                "rabbitmq_global_messages_received",
                "Total number of messages received from publishers",
                m.publish,
            ),
            (
                "rabbitmq_global_messages_routed",
                "Total number of messages routed to queues or streams",
                m.publish
                    .saturating_sub(m.drop_unroutable + m.return_unroutable),
            ),
            (
                "rabbitmq_global_messages_unroutable_dropped",
                "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
                m.drop_unroutable,
            ),
            (
                "rabbitmq_global_messages_unroutable_returned",
                "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
                m.return_unroutable,
            ),
            (
                "rabbitmq_global_messages_confirmed",
                "Total number of messages confirmed to publishers",
                m.confirm,
            ),
        ] {
            labelled(
                &mut enc,
                name,
                help,
                Counter,
                [(vec![("protocol", "amqp091")], v)],
            )?;
        }
        // rabbit_global_counters: those the queues' counters give.
        let counters = &self.counters;
        let by_type = move |f: fn(&QueueCounters) -> u64| {
            counters.iter().map(move |(t, c)| {
                let l: Labels = vec![("protocol", "amqp091"), ("queue_type", *t)];
                (l, f(c))
            })
        };
        labelled(
            &mut enc,
            "rabbitmq_global_messages_delivered",
            "Total number of messages delivered to consumers",
            Counter,
            by_type(|c| c.delivered),
        )?;
        labelled(
            &mut enc,
            "rabbitmq_global_messages_acknowledged",
            "Total number of messages acknowledged by consumers",
            Counter,
            by_type(|c| c.acked),
        )?;
        labelled(
            &mut enc,
            "rabbitmq_global_consumers",
            "Current number of consumers",
            Gauge,
            [(vec![("protocol", "amqp091")], self.consumers)],
        )?;
        // prometheus_rabbitmq_alarm_metrics_collector (4.0 to 4.2 also have the file
        // descriptor alarm, which Warren, as RabbitMQ since the file handle cache went, never
        // raises).
        single(
            &mut enc,
            "rabbitmq_alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            Unknown,
            0,
        )?;
        single(
            &mut enc,
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            Unknown,
            self.disk_alarm as u64,
        )?;
        single(
            &mut enc,
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            Unknown,
            self.memory_alarm as u64,
        )?;
        // prometheus_process_collector
        single(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Gauge,
            self.start_time,
        )?;
        Ok(())
    }
}

/// The version of the crate that encodes the text (`prometheus_client_version`).
const PROMETHEUS_CLIENT_VERSION: &str = "0.26";

fn queue_labels(q: &QueueRow) -> Labels<'_> {
    vec![("vhost", q.vhost.as_str()), ("queue", q.name.as_str())]
}

/// Open file descriptors of this process (Linux: the entries of /proc/self/fd).
pub(crate) fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

/// The soft limit on open files (Linux: /proc/self/limits), RabbitMQ's `fd_total`.
pub(crate) fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// When this process started, in seconds since the epoch (from /proc where there is one,
/// else now).
fn process_start_time() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // /proc/self/stat's 22nd field: start time in clock ticks after boot; /proc/stat's btime:
    // boot time. Clock ticks are 100 a second on Linux's usual configurations.
    let started = (|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after_comm = &stat[stat.rfind(')')? + 2..];
        let ticks: u64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
        let btime: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime + ticks / 100)
    })();
    started.unwrap_or(now)
}
