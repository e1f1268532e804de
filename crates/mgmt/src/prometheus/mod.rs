//! Prometheus metrics, as RabbitMQ's `rabbitmq_prometheus` plugin serves them: on a listener
//! of their own (15692 by default), `/metrics` gives the node's metrics with object metrics
//! summed over every queue, exchange, channel and connection, `/metrics/per-object` gives one
//! series per object (`{vhost, queue}`, `{vhost, exchange}`, `{channel}`), and
//! `/metrics/detailed?family=…&vhost=…` the families asked for, per object, named
//! `rabbitmq_detailed_…`. Names, types, labels and help texts are the plugin's (RabbitMQ 4.x),
//! so the published Grafana dashboards and existing alert rules work unchanged; the metrics
//! Warren cannot provide are listed in `docs/compatibility.md`.
//!
//! Layout: this module serves the endpoints and writes the node-wide metrics; [`families`]
//! holds the per-object families, one table for the three endpoints.
//!
//! Everything is read when Prometheus scrapes: the queues' own counters (kept by each queue
//! under its lock, as list_queues shows them) and the channels' and connections' (see
//! `warren_broker::stats`) are summed then, and nothing is counted on the message path for
//! the metrics' sake. The deleted queues' counters stay in their vhost's totals, so the
//! summed queue counters only grow (the channels' and connections' sums, as RabbitMQ's, are
//! of the open ones).
//!
//! The text is the Prometheus text format (0.0.4), encoded by the `prometheus-client` crate.

mod families;

use families::{
    ChannelRow, ChurnCounts, ConnectionRow, ExchangeRow, QueueRow, Source, CLUSTER_FAMILIES,
    METRICS,
};
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

/// The endpoint's routes: `/metrics` (aggregated, or per-object if so configured),
/// `/metrics/per-object` and `/metrics/detailed`. Other registries (`memory-breakdown`)
/// answer 404 as an unknown one does in RabbitMQ.
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
                let mode = if e.per_object_by_default {
                    Mode::PerObject
                } else {
                    Mode::Aggregated
                };
                scrape(e, mode).await
            }),
        )
        .route(
            "/metrics/per-object",
            get(|State(e): State<Arc<Endpoint>>| scrape(e, Mode::PerObject)),
        )
        .route(
            "/metrics/detailed",
            get(
                |State(e): State<Arc<Endpoint>>, uri: axum::http::Uri| async move {
                    match Detailed::parse(uri.query().unwrap_or("")) {
                        Ok(d) => scrape(e, Mode::Detailed(d)).await,
                        Err(msg) => (StatusCode::BAD_REQUEST, msg).into_response(),
                    }
                },
            ),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "Unknown Registry") })
        .with_state(state)
}

/// Which endpoint a scrape is for.
#[derive(Debug, Clone)]
enum Mode {
    /// `/metrics`: object metrics summed.
    Aggregated,
    /// `/metrics/per-object`.
    PerObject,
    /// `/metrics/detailed`: the families asked for, per object.
    Detailed(Detailed),
}

/// `/metrics/detailed`'s query: `family` and `vhost` (each repeatable) and `queue` (a regular
/// expression on queue names, as recent RabbitMQ versions take).
#[derive(Debug, Clone, Default)]
struct Detailed {
    families: Vec<String>,
    /// None: every vhost.
    vhosts: Option<Vec<String>>,
    queue: Option<regex::Regex>,
}

/// Longest `queue` expression accepted (RabbitMQ's limit).
const MAX_QUEUE_FILTER: usize = 1024;

impl Detailed {
    fn parse(query: &str) -> Result<Detailed, String> {
        let mut d = Detailed::default();
        let mut queues = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            match k {
                "family" => d.families.push(v),
                "vhost" => d.vhosts.get_or_insert_with(Vec::new).push(v),
                "queue" => queues.push(v),
                _ => {}
            }
        }
        match queues.as_slice() {
            [] => {}
            [q] if q.is_empty() => {}
            [q] if q.len() > MAX_QUEUE_FILTER => return Err("'queue' regex too long".into()),
            [q] => {
                d.queue =
                    Some(regex::Regex::new(q).map_err(|e| format!("Invalid 'queue' regex: {e}"))?)
            }
            _ => return Err("Only one 'queue' query parameter is allowed".into()),
        }
        Ok(d)
    }

    fn wants(&self, family: &str) -> bool {
        self.families.iter().any(|f| f == family)
    }

    fn sees_vhost(&self, vhost: &str) -> bool {
        self.vhosts
            .as_ref()
            .is_none_or(|v| v.iter().any(|x| x == vhost))
    }

    fn sees_queue(&self, vhost: &str, name: &str) -> bool {
        self.sees_vhost(vhost) && self.queue.as_ref().is_none_or(|r| r.is_match(name))
    }
}

async fn scrape(e: Arc<Endpoint>, mode: Mode) -> Response {
    // Reading every queue's stats takes each queue's lock in turn: off the async workers.
    let text = tokio::task::spawn_blocking(move || render(&e, mode)).await;
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
fn render(e: &Endpoint, mode: Mode) -> Result<String, std::fmt::Error> {
    let snapshot = Snapshot::take(e, mode);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Everything a scrape reports, read once.
#[derive(Debug)]
struct Snapshot {
    mode: Mode,
    node: String,
    queues: Vec<QueueRow>,
    /// Counters summed by queue type over the live and the deleted queues.
    counters: BTreeMap<&'static str, QueueCounters>,
    /// The deleted queues' counters, summed (the gauges 0).
    deleted: warren_broker::queue::QueueStats,
    exchanges: Vec<ExchangeRow>,
    channel_rows: Vec<ChannelRow>,
    connection_rows: Vec<ConnectionRow>,
    churn: ChurnCounts,
    /// Open channels that have published (RabbitMQ's publishers).
    publishers: u64,
    vhosts: Vec<String>,
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
    fn take(e: &Endpoint, mode: Mode) -> Snapshot {
        let detailed = match &mode {
            Mode::Detailed(d) => Some(d),
            _ => None,
        };
        let mut queues = Vec::new();
        let mut exchanges = Vec::new();
        let mut deleted_sum = QueueCounters::default();
        // As RabbitMQ, a series for each queue type from the start, at 0.
        let mut counters: BTreeMap<&'static str, QueueCounters> = ["classic", "quorum"]
            .into_iter()
            .map(|t| (queue_type_label(t), QueueCounters::default()))
            .collect();
        let mut churn = ChurnCounts::default();
        let open_exchanges = e.broker.connections.exchange_counts();
        let mut vhosts = e.broker.vhosts();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in &vhosts {
            use warren_broker::stats::Churn as C;
            churn.queues_declared += C::get(&vh.churn.queues_declared);
            churn.queues_created += C::get(&vh.churn.queues_created);
            churn.queues_deleted += C::get(&vh.churn.queues_deleted);
            let (live, deleted) = vh.queue_stats_and_deleted();
            for (kind, c) in deleted {
                counters
                    .entry(queue_type_label(&kind))
                    .or_default()
                    .merge(&c);
                deleted_sum.merge(&c);
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
                .filter(|q| detailed.is_none_or(|d| d.sees_queue(&q.vhost, &q.name)))
                .collect();
            rows.sort_by(|a, b| a.name.cmp(&b.name));
            queues.extend(rows);
            if detailed.is_some_and(|d| !d.sees_vhost(&vh.name)) {
                continue;
            }
            let counts = crate::rates::vhost_exchange_counts(&open_exchanges, vh);
            let with_bindings = detailed.is_some_and(|d| d.wants("exchange_bindings"));
            let mut xs: Vec<ExchangeRow> = vh
                .exchanges()
                .iter()
                .map(|x| ExchangeRow {
                    vhost: vh.name.clone(),
                    name: x.name.to_string(),
                    kind: x.type_name(),
                    internal: x.internal,
                    counts: counts.get(x.name.as_str()).copied().unwrap_or_default(),
                    bindings: if with_bindings {
                        x.bindings().len() as u64
                    } else {
                        0
                    },
                })
                .collect();
            xs.sort_by(|a, b| a.name.cmp(&b.name));
            exchanges.extend(xs);
        }
        let connections = e.broker.connections.list();
        let mut channel_rows = Vec::new();
        let mut connection_rows = Vec::new();
        for c in &connections {
            let mut chans = c.channels.lock().clone();
            chans.sort_by_key(|ch| ch.number);
            connection_rows.push(ConnectionRow {
                name: c.name.clone(),
                recv_oct: c.io.recv_oct.get(),
                send_oct: c.io.send_oct.get(),
                recv_cnt: c.io.recv_cnt.get(),
                send_cnt: c.io.send_cnt.get(),
                channels: chans.len() as u64,
            });
            for ch in chans {
                let st = ch.stats();
                channel_rows.push(ChannelRow {
                    name: crate::channels::channel_name(c, ch.number),
                    counts: warren_broker::stats::MessageCounts::of(&ch.counters),
                    consumers: st.consumers as u64,
                    unacked: st.messages_unacknowledged as u64,
                    prefetch: st.prefetch_count as u64,
                    global_prefetch: st.global_prefetch_count as u64,
                });
            }
        }
        {
            use warren_broker::stats::Churn as C;
            let c = &e.broker.connections.churn;
            churn.connections_opened = C::get(&c.connections_opened);
            churn.connections_closed = C::get(&c.connections_closed);
            churn.channels_opened = C::get(&c.channels_opened);
            churn.channels_closed = C::get(&c.channels_closed);
        }
        let channels = channel_rows.len();
        let publishers = channel_rows.iter().filter(|c| c.counts.publish > 0).count() as u64;
        let consumers = queues.iter().map(|q| q.stats.consumers).sum();
        let alarms = &e.broker.alarms;
        let active = alarms.active();
        let d = deleted_sum;
        Snapshot {
            mode,
            node: e.node.clone(),
            queues,
            counters,
            deleted: warren_broker::queue::QueueStats {
                published: d.published,
                delivered: d.delivered,
                acked: d.acked,
                deliver: d.deliver,
                deliver_no_ack: d.deliver_no_ack,
                get: d.get,
                get_no_ack: d.get_no_ack,
                redeliver: d.redeliver,
                get_empty: d.get_empty,
                disk_reads: d.disk_reads,
                disk_writes: d.disk_writes,
                ..Default::default()
            },
            exchanges,
            channel_rows,
            connection_rows,
            churn,
            publishers,
            vhosts: vhosts.iter().map(|v| v.name.clone()).collect(),
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

    /// One family of [`METRICS`], named with `prefix`: a series per object, or (not
    /// `per_object`) their sum; the summed queue counters count the deleted queues too.
    fn object_family(
        &self,
        enc: &mut DescriptorEncoder,
        m: &families::Metric,
        prefix: &str,
        per_object: bool,
    ) -> std::fmt::Result {
        let name = format!("{prefix}{}", m.name);
        let (name, help, kind) = (name.as_str(), m.help, m.kind);
        if let Source::Churn(f) = &m.source {
            return single(enc, name, help, kind, f(&self.churn));
        }
        if !per_object {
            let v = match &m.source {
                Source::Queue(f) => {
                    let deleted = if kind == MetricType::Counter {
                        f(&self.deleted)
                    } else {
                        0
                    };
                    self.sum(f) + deleted
                }
                Source::Exchange(f) => self.exchanges.iter().map(f).sum(),
                Source::Channel(f) => self.channel_rows.iter().map(f).sum(),
                Source::Connection(f) => self.connection_rows.iter().map(f).sum(),
                Source::Churn(_) => 0,
            };
            return single(enc, name, help, kind, v);
        }
        match &m.source {
            Source::Queue(f) => labelled(
                enc,
                name,
                help,
                kind,
                self.queues.iter().map(|q| (queue_labels(q), f(&q.stats))),
            ),
            Source::Exchange(f) => labelled(
                enc,
                name,
                help,
                kind,
                self.exchanges.iter().map(|x| {
                    let l: Labels = vec![("vhost", &x.vhost), ("exchange", &x.name)];
                    (l, f(x))
                }),
            ),
            Source::Channel(f) => labelled(
                enc,
                name,
                help,
                kind,
                self.channel_rows.iter().map(|c| {
                    let l: Labels = vec![("channel", &c.name)];
                    (l, f(c))
                }),
            ),
            Source::Connection(f) => labelled(
                enc,
                name,
                help,
                kind,
                self.connection_rows.iter().map(|c| {
                    let l: Labels = vec![("channel", &c.name)];
                    (l, f(c))
                }),
            ),
            Source::Churn(_) => Ok(()),
        }
    }

    /// `/metrics/detailed`: the families asked for, per object (queues and exchanges of the
    /// vhosts asked for), then the cluster-wide families, the queues' info if queue families
    /// were asked for, and the node's identity.
    fn encode_detailed(&self, mut enc: DescriptorEncoder, d: &Detailed) -> std::fmt::Result {
        for m in METRICS
            .iter()
            .filter(|m| d.wants(m.family) && !families::skipped(m.family, &d.families))
        {
            self.object_family(&mut enc, m, "rabbitmq_detailed_", true)?;
        }
        let help = |f: &str| {
            match f {
            "vhost_status" => "Whether a given vhost is running",
            "exchange_bindings" => {
                "Number of bindings for an exchange. This value is cluster-wide."
            }
            _ => {
                "Enumerates exchanges without any additional info. This value is cluster-wide. A cheaper alternative to `exchange_bindings`"
            }
        }
        };
        for f in CLUSTER_FAMILIES.iter().filter(|f| d.wants(f)) {
            // The default exchange and internal ones are left out, as in RabbitMQ.
            let listed = self
                .exchanges
                .iter()
                .filter(|x| !x.internal && !x.name.is_empty());
            match *f {
                "vhost_status" => labelled(
                    &mut enc,
                    "rabbitmq_cluster_vhost_status",
                    help(f),
                    MetricType::Gauge,
                    self.vhosts.iter().map(|v| (vec![("vhost", v.as_str())], 1)),
                )?,
                "exchange_bindings" => labelled(
                    &mut enc,
                    "rabbitmq_cluster_exchange_bindings",
                    help(f),
                    MetricType::Gauge,
                    listed.map(|x| (exchange_type_labels(x), x.bindings)),
                )?,
                _ => labelled(
                    &mut enc,
                    "rabbitmq_cluster_exchange_name",
                    help(f),
                    MetricType::Gauge,
                    listed.map(|x| (exchange_type_labels(x), 1)),
                )?,
            }
        }
        if [
            "queue_coarse_metrics",
            "queue_consumer_count",
            "queue_metrics",
        ]
        .iter()
        .any(|f| d.wants(f))
        {
            self.queue_info(&mut enc, "rabbitmq_detailed_queue_info")?;
        }
        self.identity(&mut enc, "detailed")
    }

    /// A constant 1 per queue, labelled with its type and this node's role in it.
    fn queue_info(&self, enc: &mut DescriptorEncoder, name: &str) -> std::fmt::Result {
        labelled(
            enc,
            name,
            "A metric with a constant '1' value and labels that provide some queue details",
            MetricType::Gauge,
            self.queues.iter().map(|q| {
                let mut l = queue_labels(q);
                l.push(("queue_type", q.queue_type));
                l.push(("membership", "leader"));
                (l, 1)
            }),
        )
    }

    /// `rabbitmq_build_info` and `rabbitmq_identity_info`, which dashboards join on.
    fn identity(&self, enc: &mut DescriptorEncoder, endpoint: &str) -> std::fmt::Result {
        {
            let mut m = enc.encode_descriptor(
                "rabbitmq_build_info",
                "RabbitMQ & Erlang/OTP version info",
                None,
                MetricType::Unknown,
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
        let cluster_id = format!("warren-cluster-id-{}", self.node);
        let mut m = enc.encode_descriptor(
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            None,
            MetricType::Unknown,
        )?;
        let labels: Labels = vec![
            ("rabbitmq_node", self.node.as_str()),
            ("rabbitmq_cluster", self.node.as_str()),
            ("rabbitmq_cluster_permanent_id", cluster_id.as_str()),
            ("rabbitmq_endpoint", endpoint),
        ];
        gauge(&mut m.encode_family(&labels)?, 1)
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

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Unknown};
        let per_object = match &self.mode {
            Mode::Detailed(d) => return self.encode_detailed(enc, d),
            Mode::PerObject => true,
            Mode::Aggregated => false,
        };
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
        // The object families: queues, exchanges, channels, connections and their churn
        // (queue_consumer_count is a subset of queue_metrics, left out as RabbitMQ does).
        for m in METRICS
            .iter()
            .filter(|m| m.family != "queue_consumer_count")
        {
            self.object_family(&mut enc, m, "rabbitmq_", per_object)?;
        }
        // channel_queue_exchange_metrics: per channel, queue and exchange in RabbitMQ; Warren
        // counts per queue only, so only the sum is given.
        if !per_object {
            single(
                &mut enc,
                "rabbitmq_queue_messages_published",
                "Total number of messages published into a queue through an exchange on a channel",
                Counter,
                self.total(|c| c.published),
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
        if per_object {
            self.queue_info(&mut enc, "rabbitmq_queue_info")?;
        }
        self.identity(
            &mut enc,
            if per_object {
                "per-object"
            } else {
                "aggregated"
            },
        )?;
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
            (
                "rabbitmq_global_messages_received_confirm",
                "Total number of messages received from publishers expecting confirmations",
                m.received_confirm,
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
        for (name, help, f) in [
            (
                "rabbitmq_global_messages_delivered_consume_manual_ack",
                "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
                (|c| c.deliver) as fn(&QueueCounters) -> u64,
            ),
            (
                "rabbitmq_global_messages_delivered_consume_auto_ack",
                "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
                |c| c.deliver_no_ack,
            ),
            (
                "rabbitmq_global_messages_delivered_get_manual_ack",
                "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
                |c| c.get,
            ),
            (
                "rabbitmq_global_messages_delivered_get_auto_ack",
                "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
                |c| c.get_no_ack,
            ),
            (
                "rabbitmq_global_messages_get_empty",
                "Total number of times basic.get operations fetched no message",
                |c| c.get_empty,
            ),
            (
                "rabbitmq_global_messages_redelivered",
                "Total number of messages redelivered to consumers",
                |c| c.redeliver,
            ),
        ] {
            labelled(&mut enc, name, help, Counter, by_type(f))?;
        }
        // prometheus_rabbitmq_message_size_metrics_collector
        {
            let bounds = warren_broker::stats::SIZE_BUCKETS
                .iter()
                .map(|b| *b as f64)
                .chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(m.published_by_size).collect();
            let mut h = enc.encode_descriptor(
                "rabbitmq_message_size_bytes",
                "Size of messages received from publishers",
                None,
                MetricType::Histogram,
            )?;
            h.encode_family(&vec![("protocol", "amqp091")])?
                .encode_histogram::<NoLabelSet>(
                    m.published_bytes as f64,
                    m.publish,
                    &buckets,
                    None,
                )?;
        }
        labelled(
            &mut enc,
            "rabbitmq_global_publishers",
            "Current number of publishers",
            Gauge,
            [(vec![("protocol", "amqp091")], self.publishers)],
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

fn exchange_type_labels(x: &ExchangeRow) -> Labels<'_> {
    vec![
        ("vhost", x.vhost.as_str()),
        ("exchange", x.name.as_str()),
        ("type", x.kind),
    ]
}

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
