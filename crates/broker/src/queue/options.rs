//! The behaviour a queue's arguments (and, later, policies) select: TTLs, length limits,
//! dead-lettering, priorities, single active consumer, delivery limit.

use warren_protocol::{FieldTable, FieldValue, ShortStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// Serialized (a replicated queue's `SetOptions` entry, its snapshots) through
/// [`OptionsRecord`], which holds the names as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "OptionsRecord", into = "OptionsRecord")]
pub struct QueueOptions {
    /// `x-message-ttl`, ms.
    pub message_ttl: Option<u64>,
    /// `x-expires`, ms: the queue is deleted after being unused this long.
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortStr>,
    pub dead_letter_routing_key: Option<ShortStr>,
    /// `x-max-priority`: 0 means no priorities.
    pub max_priority: u8,
    pub single_active_consumer: bool,
    /// `x-delivery-limit` of a quorum queue: dead-letter (or drop) after this many
    /// redeliveries. None: unlimited. As RabbitMQ 4: 20 unless set; a negative (or
    /// non-integer) value means unlimited; classic queues have none.
    pub delivery_limit: Option<u64>,
    pub quorum: bool,
    /// `x-consumer-timeout` (ms, 0 disables) from the argument or a `consumer-timeout` policy.
    pub consumer_timeout: Option<u64>,
}

fn int(args: &FieldTable, key: &str) -> Option<u64> {
    args.get(key)
        .and_then(FieldValue::as_i64)
        .filter(|v| *v >= 0)
        .map(|v| v as u64)
}

fn string(args: &FieldTable, key: &str) -> Option<ShortStr> {
    args.get(key)
        .and_then(FieldValue::as_str)
        .map(ShortStr::from)
}

/// RabbitMQ 4's default delivery limit of a quorum queue.
pub const DEFAULT_DELIVERY_LIMIT: u64 = 20;

/// A quorum queue's delivery limit from its argument or policy value, as RabbitMQ 4.0 reads
/// it: unset is 20, a non-negative integer is the limit, anything else is no limit.
fn delivery_limit(v: Option<&FieldValue>) -> Option<u64> {
    match v {
        None => Some(DEFAULT_DELIVERY_LIMIT),
        Some(v) => v.as_i64().filter(|n| *n >= 0).map(|n| n as u64),
    }
}

impl QueueOptions {
    /// Options from declared arguments; `policy` (a policy's definition, with RabbitMQ's key
    /// names without the `x-` prefix) fills what the arguments leave unset.
    pub fn from_arguments(args: &FieldTable, policy: Option<&FieldTable>) -> Self {
        let empty = FieldTable::new();
        let p = policy.unwrap_or(&empty);
        let pick_int = |arg: &str, pol: &str| int(args, arg).or_else(|| int(p, pol));
        let pick_str = |arg: &str, pol: &str| string(args, arg).or_else(|| string(p, pol));
        let quorum = args.get("x-queue-type").and_then(FieldValue::as_str) == Some("quorum");
        let overflow = match pick_str("x-overflow", "overflow").as_deref() {
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            _ => Overflow::DropHead,
        };
        QueueOptions {
            message_ttl: pick_int("x-message-ttl", "message-ttl"),
            expires: pick_int("x-expires", "expires"),
            max_length: pick_int("x-max-length", "max-length"),
            max_length_bytes: pick_int("x-max-length-bytes", "max-length-bytes"),
            overflow,
            dead_letter_exchange: pick_str("x-dead-letter-exchange", "dead-letter-exchange"),
            dead_letter_routing_key: pick_str(
                "x-dead-letter-routing-key",
                "dead-letter-routing-key",
            ),
            // RabbitMQ 4 serves `x-max-priority: 0` as two levels (priority 0, and 1 and
            // above), as 1 (3.x kept it FIFO).
            max_priority: int(args, "x-max-priority")
                .map(|p| p.clamp(1, 255) as u8)
                .unwrap_or(0),
            single_active_consumer: args
                .get("x-single-active-consumer")
                .and_then(FieldValue::as_bool)
                .unwrap_or(false),
            delivery_limit: quorum
                .then(|| delivery_limit(args.get("x-delivery-limit").or(p.get("delivery-limit"))))
                .flatten(),
            quorum,
            consumer_timeout: pick_int("x-consumer-timeout", "consumer-timeout"),
        }
    }
}

/// [`QueueOptions`] as a replicated queue's log and snapshots carry them.
#[derive(serde::Serialize, serde::Deserialize)]
struct OptionsRecord {
    message_ttl: Option<u64>,
    expires: Option<u64>,
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    overflow: Overflow,
    dead_letter_exchange: Option<String>,
    dead_letter_routing_key: Option<String>,
    max_priority: u8,
    single_active_consumer: bool,
    delivery_limit: Option<u64>,
    quorum: bool,
    consumer_timeout: Option<u64>,
}

impl From<QueueOptions> for OptionsRecord {
    fn from(o: QueueOptions) -> Self {
        OptionsRecord {
            message_ttl: o.message_ttl,
            expires: o.expires,
            max_length: o.max_length,
            max_length_bytes: o.max_length_bytes,
            overflow: o.overflow,
            dead_letter_exchange: o.dead_letter_exchange.map(|s| s.to_string()),
            dead_letter_routing_key: o.dead_letter_routing_key.map(|s| s.to_string()),
            max_priority: o.max_priority,
            single_active_consumer: o.single_active_consumer,
            delivery_limit: o.delivery_limit,
            quorum: o.quorum,
            consumer_timeout: o.consumer_timeout,
        }
    }
}

impl From<OptionsRecord> for QueueOptions {
    fn from(r: OptionsRecord) -> Self {
        QueueOptions {
            message_ttl: r.message_ttl,
            expires: r.expires,
            max_length: r.max_length,
            max_length_bytes: r.max_length_bytes,
            overflow: r.overflow,
            dead_letter_exchange: r.dead_letter_exchange.map(|s| s.as_str().into()),
            dead_letter_routing_key: r.dead_letter_routing_key.map(|s| s.as_str().into()),
            max_priority: r.max_priority,
            single_active_consumer: r.single_active_consumer,
            delivery_limit: r.delivery_limit,
            quorum: r.quorum,
            consumer_timeout: r.consumer_timeout,
        }
    }
}
