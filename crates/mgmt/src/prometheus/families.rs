//! rabbitmq_prometheus' per-object metric families (its `METRICS_RAW` tables) that Warren
//! provides, one entry per metric: the family (table) it belongs to, its name without the
//! prefix, type, help text, and where its value comes from (a queue, an exchange, a channel,
//! a connection, or the node). The same table serves the three endpoints: `/metrics` sums each
//! metric over its objects, `/metrics/per-object` writes a series per object, and
//! `/metrics/detailed` writes the families it is asked for, per object, with the
//! `rabbitmq_detailed_` prefix.
//!
//! Names, types and help texts are RabbitMQ 4.x's. A metric that Warren cannot count (Erlang
//! reductions, queue memory split by RAM and disk, unconfirmed messages per channel) is left
//! out rather than given a made-up value; `docs/compatibility.md` lists them.

use prometheus_client::metrics::MetricType;
use warren_broker::queue::QueueStats;
use warren_broker::stats::{ExchangeCounts, MessageCounts};

/// One queue at scrape time.
#[derive(Debug)]
pub(super) struct QueueRow {
    pub vhost: String,
    pub name: String,
    /// RabbitMQ's queue type module name: `rabbit_classic_queue`, `rabbit_quorum_queue`.
    pub queue_type: &'static str,
    pub stats: QueueStats,
}

/// One exchange at scrape time.
#[derive(Debug)]
pub(super) struct ExchangeRow {
    pub vhost: String,
    pub name: String,
    pub kind: &'static str,
    pub internal: bool,
    pub counts: ExchangeCounts,
    pub bindings: u64,
}

/// One channel at scrape time, labelled by its name as the management API gives it
/// (RabbitMQ labels by the channel's Erlang pid).
#[derive(Debug)]
pub(super) struct ChannelRow {
    pub name: String,
    pub counts: MessageCounts,
    pub consumers: u64,
    pub unacked: u64,
    pub prefetch: u64,
    pub global_prefetch: u64,
}

/// One connection at scrape time. RabbitMQ labels a connection's series `channel` (with the
/// connection's pid); Warren does too, with the connection's name.
#[derive(Debug)]
pub(super) struct ConnectionRow {
    pub name: String,
    pub recv_oct: u64,
    pub send_oct: u64,
    pub recv_cnt: u64,
    pub send_cnt: u64,
    pub channels: u64,
}

/// Objects coming and going since the start (`connection_churn_metrics`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ChurnCounts {
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub channels_opened: u64,
    pub channels_closed: u64,
    pub queues_declared: u64,
    pub queues_created: u64,
    pub queues_deleted: u64,
}

/// Where a metric's value comes from.
pub(super) enum Source {
    Queue(fn(&QueueStats) -> u64),
    Exchange(fn(&ExchangeRow) -> u64),
    Channel(fn(&ChannelRow) -> u64),
    Connection(fn(&ConnectionRow) -> u64),
    /// One unlabelled value for the node.
    Churn(fn(&ChurnCounts) -> u64),
}

pub(super) struct Metric {
    /// rabbitmq_prometheus' family (its ETS table), as `/metrics/detailed?family=` names it.
    pub family: &'static str,
    /// Without the `rabbitmq_` prefix; a counter's without its `_total` (the encoder adds it).
    pub name: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
    pub source: Source,
}

const fn m(
    family: &'static str,
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    source: Source,
) -> Metric {
    Metric {
        family,
        name,
        kind,
        help,
        source,
    }
}

use MetricType::{Counter, Gauge};
use Source::{Channel, Churn, Connection, Exchange, Queue};

#[rustfmt::skip]
pub(super) const METRICS: &[Metric] = &[
    m("connection_churn_metrics", "connections_opened", Counter, "Total number of connections opened", Churn(|c| c.connections_opened)),
    m("connection_churn_metrics", "connections_closed", Counter, "Total number of connections closed or terminated", Churn(|c| c.connections_closed)),
    m("connection_churn_metrics", "channels_opened", Counter, "Total number of channels opened", Churn(|c| c.channels_opened)),
    m("connection_churn_metrics", "channels_closed", Counter, "Total number of channels closed", Churn(|c| c.channels_closed)),
    m("connection_churn_metrics", "queues_declared", Counter, "Total number of queues declared", Churn(|c| c.queues_declared)),
    m("connection_churn_metrics", "queues_created", Counter, "Total number of queues created", Churn(|c| c.queues_created)),
    m("connection_churn_metrics", "queues_deleted", Counter, "Total number of queues deleted", Churn(|c| c.queues_deleted)),
    m("queue_coarse_metrics", "queue_messages_ready", Gauge, "Messages ready to be delivered to consumers", Queue(|s| s.messages_ready)),
    m("queue_coarse_metrics", "queue_messages_unacked", Gauge, "Messages delivered to consumers but not yet acknowledged", Queue(|s| s.messages_unacknowledged)),
    m("queue_coarse_metrics", "queue_messages", Gauge, "Sum of ready and unacknowledged messages - total queue depth", Queue(|s| s.messages_ready + s.messages_unacknowledged)),
    m("queue_consumer_count", "queue_consumers", Gauge, "Consumers on a queue", Queue(|s| s.consumers)),
    m("queue_metrics", "queue_consumers", Gauge, "Consumers on a queue", Queue(|s| s.consumers)),
    m("queue_metrics", "queue_messages_ready_bytes", Gauge, "Size in bytes of ready messages", Queue(|s| s.message_bytes_ready)),
    m("queue_metrics", "queue_disk_reads", Counter, "Total number of times queue read messages from disk", Queue(|s| s.disk_reads)),
    m("queue_metrics", "queue_disk_writes", Counter, "Total number of times queue wrote messages to disk", Queue(|s| s.disk_writes)),
    m("channel_metrics", "channel_consumers", Gauge, "Consumers on a channel", Channel(|c| c.consumers)),
    m("channel_metrics", "channel_messages_unacked", Gauge, "Delivered but not yet acknowledged messages", Channel(|c| c.unacked)),
    m("channel_metrics", "consumer_prefetch", Gauge, "Limit of unacknowledged messages for each consumer", Channel(|c| c.prefetch)),
    m("channel_metrics", "channel_prefetch", Gauge, "Deprecated and will be removed in a future version", Channel(|c| c.global_prefetch)),
    m("channel_exchange_metrics", "channel_messages_published", Counter, "Total number of messages published into an exchange on a channel", Channel(|c| c.counts.publish)),
    m("channel_exchange_metrics", "channel_messages_confirmed", Counter, "Total number of messages published into an exchange and confirmed on the channel", Channel(|c| c.counts.confirm)),
    m("channel_exchange_metrics", "channel_messages_unroutable_returned", Counter, "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", Channel(|c| c.counts.return_unroutable)),
    m("channel_exchange_metrics", "channel_messages_unroutable_dropped", Counter, "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", Channel(|c| c.counts.drop_unroutable)),
    m("channel_queue_metrics", "channel_get_ack", Counter, "Total number of messages fetched with basic.get in manual acknowledgement mode", Channel(|c| c.counts.get)),
    m("channel_queue_metrics", "channel_get", Counter, "Total number of messages fetched with basic.get in automatic acknowledgement mode", Channel(|c| c.counts.get_no_ack)),
    m("channel_queue_metrics", "channel_messages_delivered_ack", Counter, "Total number of messages delivered to consumers in manual acknowledgement mode", Channel(|c| c.counts.deliver)),
    m("channel_queue_metrics", "channel_messages_delivered", Counter, "Total number of messages delivered to consumers in automatic acknowledgement mode", Channel(|c| c.counts.deliver_no_ack)),
    m("channel_queue_metrics", "channel_messages_redelivered", Counter, "Total number of messages redelivered to consumers", Channel(|c| c.counts.redeliver)),
    m("channel_queue_metrics", "channel_messages_acked", Counter, "Total number of messages acknowledged by consumers", Channel(|c| c.counts.ack)),
    m("connection_coarse_metrics", "connection_incoming_bytes", Counter, "Total number of bytes received on a connection", Connection(|c| c.recv_oct)),
    m("connection_coarse_metrics", "connection_outgoing_bytes", Counter, "Total number of bytes sent on a connection", Connection(|c| c.send_oct)),
    m("connection_metrics", "connection_incoming_packets", Counter, "Total number of packets received on a connection", Connection(|c| c.recv_cnt)),
    m("connection_metrics", "connection_outgoing_packets", Counter, "Total number of packets sent on a connection", Connection(|c| c.send_cnt)),
    m("connection_metrics", "connection_channels", Gauge, "Channels on a connection", Connection(|c| c.channels)),
    m("exchange_metrics", "exchange_messages_published", Counter, "Total number of messages published into an exchange", Exchange(|x| x.counts.publish_in)),
    m("queue_delivery_metrics", "queue_get_ack", Counter, "Total number of messages fetched from a queue with basic.get in manual acknowledgement mode", Queue(|s| s.get)),
    m("queue_delivery_metrics", "queue_get", Counter, "Total number of messages fetched from a queue with basic.get in automatic acknowledgement mode", Queue(|s| s.get_no_ack)),
    m("queue_delivery_metrics", "queue_messages_delivered_ack", Counter, "Total number of messages delivered from a queue to consumers in manual acknowledgement mode", Queue(|s| s.deliver)),
    m("queue_delivery_metrics", "queue_messages_delivered", Counter, "Total number of messages delivered from a queue to consumers in automatic acknowledgement mode", Queue(|s| s.deliver_no_ack)),
    m("queue_delivery_metrics", "queue_messages_redelivered", Counter, "Total number of messages redelivered from a queue to consumers", Queue(|s| s.redeliver)),
    m("queue_delivery_metrics", "queue_messages_acked", Counter, "Total number of messages acknowledged by consumers on a queue", Queue(|s| s.acked)),
    m("queue_delivery_metrics", "queue_get_empty", Counter, "Total number of times basic.get operations fetched no message on a queue", Queue(|s| s.get_empty)),
];

/// The families `/metrics/detailed?family=` knows (the per-object ones above and the
/// cluster-wide ones, which take the `rabbitmq_cluster_` prefix).
pub(super) const CLUSTER_FAMILIES: &[&str] =
    &["vhost_status", "exchange_bindings", "exchange_names"];

/// `queue_consumer_count` is a subset of `queue_metrics`: asked for both, it is left out (as
/// RabbitMQ leaves it out).
pub(super) fn skipped(family: &str, asked: &[String]) -> bool {
    family == "queue_consumer_count" && asked.iter().any(|f| f == "queue_metrics")
}
