//! Reading message headers out of lapin deliveries: field values as integers and strings,
//! and the `x-death` history dead-lettering writes.

use lapin::message::Delivery;
use lapin::types::AMQPValue;

/// Any AMQP integer as i64 (brokers differ in the integer type they pick for counts).
pub fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

pub fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

pub fn header<'a>(d: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}

pub fn header_str(d: &Delivery, key: &str) -> Option<String> {
    header(d, key).and_then(as_string)
}

pub fn header_int(d: &Delivery, key: &str) -> Option<i64> {
    header(d, key).and_then(as_int)
}

/// One `x-death` entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Death {
    pub queue: String,
    pub reason: String,
    pub count: i64,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    pub time: Option<u64>,
    pub original_expiration: Option<String>,
}

/// The `x-death` history of a delivery, most recent first (as RabbitMQ orders it).
pub fn x_death(d: &Delivery) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(a)) = header(d, "x-death") else {
        return Vec::new();
    };
    a.as_slice()
        .iter()
        .map(|v| {
            let t = v
                .as_field_table()
                .expect("x-death entries are tables")
                .inner();
            let s = |k: &str| t.get(k).and_then(as_string).unwrap_or_default();
            Death {
                queue: s("queue"),
                reason: s("reason"),
                count: t.get("count").and_then(as_int).unwrap_or(-1),
                exchange: s("exchange"),
                routing_keys: match t.get("routing-keys") {
                    Some(AMQPValue::FieldArray(k)) => {
                        k.as_slice().iter().filter_map(as_string).collect()
                    }
                    _ => Vec::new(),
                },
                time: t.get("time").and_then(|v| v.as_timestamp()),
                original_expiration: t.get("original-expiration").and_then(as_string),
            }
        })
        .collect()
}
