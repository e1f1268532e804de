//! Dead-lettering as RabbitMQ does it: the message is republished to the queue's dead-letter
//! exchange with an `x-death` history (one entry per queue and reason, with a count) and the
//! `x-first-death-*` / `x-last-death-*` headers.

use crate::message::Message;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use warren_protocol::{FieldTable, FieldValue, ShortStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub msg: Arc<Message>,
    pub reason: DeathReason,
    /// The queue's dead-letter exchange and routing key at the time.
    pub exchange: ShortStr,
    pub routing_key: Option<ShortStr>,
}

/// The republished message: routed to `dlx` with `dlrk` (or its original routing key), with
/// the death recorded in its headers and any per-message TTL removed.
pub fn dead_lettered(
    msg: &Message,
    queue: &str,
    reason: DeathReason,
    dlx: &ShortStr,
    dlrk: Option<&ShortStr>,
) -> Message {
    let mut props = msg.decode_properties();
    let mut headers = props.headers.take().unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_str) == Some(queue)
            && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
    };
    let existing = deaths
        .iter()
        .position(|d| matches!(d, FieldValue::Table(t) if same(t)));
    let entry = match existing {
        Some(i) => {
            let FieldValue::Table(mut t) = deaths.remove(i) else {
                unreachable!("matched a table")
            };
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0) + 1;
            t.insert("count", FieldValue::I64(count));
            t.insert("time", FieldValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", reason.as_str());
            t.insert("queue", queue);
            t.insert("time", FieldValue::Timestamp(now));
            t.insert("exchange", msg.exchange.as_str());
            t.insert(
                "routing-keys",
                FieldValue::Array(vec![FieldValue::from(msg.routing_key.as_str())]),
            );
            if let Some(exp) = &props.expiration {
                t.insert("original-expiration", exp.as_str());
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    for (suffix, value) in [
        ("reason", reason.as_str()),
        ("queue", queue),
        ("exchange", msg.exchange.as_str()),
    ] {
        let first = format!("x-first-death-{suffix}");
        if headers.get(&first).is_none() {
            headers.insert(first, value);
        }
        headers.insert(format!("x-last-death-{suffix}"), value);
    }
    props.expiration = None;
    props.headers = Some(headers);
    Message::new(
        dlx.clone(),
        dlrk.cloned().unwrap_or_else(|| msg.routing_key.clone()),
        props.to_bytes(),
        msg.body.clone(),
    )
}

/// RabbitMQ's cycle rule: a message that would return to a queue it was already dead-lettered
/// from is dropped, unless a rejection happened along the way (a client decided, so it is not
/// an automatic loop).
pub fn is_cycle(msg: &Message, target_queue: &str) -> bool {
    let props = msg.props();
    let Some(FieldValue::Array(deaths)) = props.headers.as_ref().and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let tables = || {
        deaths.iter().filter_map(|d| {
            if let FieldValue::Table(t) = d {
                Some(t)
            } else {
                None
            }
        })
    };
    let seen = tables().any(|t| t.get("queue").and_then(FieldValue::as_str) == Some(target_queue));
    let rejected =
        tables().any(|t| t.get("reason").and_then(FieldValue::as_str) == Some("rejected"));
    seen && !rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use warren_protocol::BasicProperties;

    #[test]
    fn x_death_counts_per_queue_and_reason() {
        let props = BasicProperties {
            expiration: Some("100".into()),
            ..Default::default()
        };
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            props.to_bytes(),
            Bytes::from_static(b"x"),
        );
        let d1 = dead_lettered(&m, "q", DeathReason::Expired, &"dlx".into(), None);
        let d2 = dead_lettered(
            &d1,
            "q",
            DeathReason::Expired,
            &"dlx".into(),
            Some(&"other".into()),
        );
        assert_eq!(
            (d2.exchange.as_str(), d2.routing_key.as_str()),
            ("dlx", "other")
        );
        let p = d2.decode_properties();
        assert_eq!(p.expiration, None);
        let h = p.headers.unwrap();
        let Some(FieldValue::Array(deaths)) = h.get("x-death") else {
            panic!("no x-death")
        };
        assert_eq!(deaths.len(), 1);
        let FieldValue::Table(t) = &deaths[0] else {
            panic!()
        };
        assert_eq!(t.get("count").and_then(FieldValue::as_i64), Some(2));
        assert_eq!(
            t.get("original-expiration").and_then(FieldValue::as_str),
            Some("100")
        );
        assert_eq!(
            h.get("x-first-death-reason").and_then(FieldValue::as_str),
            Some("expired")
        );
        assert!(is_cycle(&d2, "q"));
        assert!(!is_cycle(&d2, "elsewhere"));
    }
}
