//! A published message: routed once, shared (behind an `Arc`) by every queue it lands in.

use bytes::Bytes;
use std::sync::OnceLock;
use warren_protocol::properties::peek_delivery_mode;
use warren_protocol::{BasicProperties, ShortStr};

#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content-header property flags and values, exactly as published (checked at publish:
    /// see [`BasicProperties::validate`]).
    pub properties: Bytes,
    pub body: Bytes,
    /// The properties decoded, the first time a feature needs a value (priority, expiration,
    /// headers routing, dead-lettering, x-delay): never more than once per message, however
    /// many queues it lands in.
    decoded: OnceLock<Box<BasicProperties>>,
}

impl Message {
    pub fn new(exchange: ShortStr, routing_key: ShortStr, properties: Bytes, body: Bytes) -> Self {
        Message {
            exchange,
            routing_key,
            properties,
            body,
            decoded: OnceLock::new(),
        }
    }

    /// delivery_mode 2.
    pub fn is_persistent(&self) -> bool {
        peek_delivery_mode(&self.properties) == Some(2)
    }

    /// The decoded properties (decoded on first use, then kept). Malformed ones read as
    /// empty: a client's were checked at publish, and stored ones were written by us.
    pub fn props(&self) -> &BasicProperties {
        self.decoded.get_or_init(|| {
            Box::new(BasicProperties::decode(self.properties.clone()).unwrap_or_default())
        })
    }

    /// A copy of the decoded properties, to change and re-encode.
    pub fn decode_properties(&self) -> BasicProperties {
        self.props().clone()
    }

    /// A copy (the bytes are shared; the decoded properties are not copied).
    pub fn copy(&self) -> Message {
        Message::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            self.properties.clone(),
            self.body.clone(),
        )
    }

    /// A copy with one header set (properties re-encoded; the body is shared).
    pub fn with_header(&self, key: &str, value: i64) -> Message {
        let mut p = self.decode_properties();
        p.headers
            .get_or_insert_with(Default::default)
            .insert(key, warren_protocol::FieldValue::I64(value));
        Message::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            p.to_bytes(),
            self.body.clone(),
        )
    }

    /// Bytes of memory the message holds, for the `memory` and `message_bytes` statistics.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len() + self.routing_key.len() + self.exchange.len()
    }
}

/// Record flag: the message was published persistent (recovered after a restart); records
/// without it were paged out of memory and are dropped on recovery, as RabbitMQ drops
/// transient messages.
const RECORD_PERSISTENT: u8 = 1;
/// Record flag: the message was published in a transaction; the transaction's id (u64,
/// big-endian) follows the flags byte. See [`Message::record_tx`].
const RECORD_TX: u8 = 2;
/// Record flag: not a message but the end of a transaction's records in this queue (flags
/// byte and the transaction id only).
const RECORD_TX_END: u8 = 4;

impl Message {
    /// The store record: flags, exchange, routing key, properties, body (see docs/storage.md).
    pub fn encode_record(&self, persistent: bool, tx: Option<u64>, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(
            16 + self.exchange.len()
                + self.routing_key.len()
                + self.properties.len()
                + self.body.len(),
        );
        let mut flags = if persistent { RECORD_PERSISTENT } else { 0 };
        if tx.is_some() {
            flags |= RECORD_TX;
        }
        out.push(flags);
        if let Some(id) = tx {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.push(self.exchange.len() as u8);
        out.extend_from_slice(self.exchange.as_bytes());
        out.push(self.routing_key.len() as u8);
        out.extend_from_slice(self.routing_key.as_bytes());
        out.extend_from_slice(&(self.properties.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.properties);
        out.extend_from_slice(&self.body);
    }

    /// Decodes a store record; returns the message and whether it was persistent.
    /// Whether a store record holds a persistent message (transient ones only page out and
    /// are dropped at a restart).
    pub fn record_is_persistent(rec: &[u8]) -> bool {
        rec.first()
            .is_some_and(|f| f & RECORD_PERSISTENT != 0 && f & RECORD_TX_END == 0)
    }

    /// The record that ends transaction `id`'s records in a queue's store.
    pub fn encode_tx_end(id: u64, out: &mut Vec<u8>) {
        out.clear();
        out.push(RECORD_TX_END);
        out.extend_from_slice(&id.to_be_bytes());
    }

    /// The transaction a store record belongs to, and whether it is the end record.
    pub fn record_tx(rec: &[u8]) -> Option<warren_store::TxTag> {
        let flags = *rec.first()?;
        if flags & (RECORD_TX | RECORD_TX_END) == 0 {
            return None;
        }
        let id = u64::from_be_bytes(rec.get(1..9)?.try_into().ok()?);
        Some(warren_store::TxTag {
            id,
            end: flags & RECORD_TX_END != 0,
        })
    }

    pub fn decode_record(rec: Bytes) -> Option<(Message, bool)> {
        let flags = *rec.first()?;
        if flags & RECORD_TX_END != 0 {
            return None;
        }
        let mut at = if flags & RECORD_TX != 0 { 9 } else { 1 };
        let short = |at: &mut usize| -> Option<ShortStr> {
            let n = *rec.get(*at)? as usize;
            let s = ShortStr::from_bytes(
                rec.get(*at + 1..*at + 1 + n)
                    .map(|_| rec.slice(*at + 1..*at + 1 + n))?,
            )
            .ok()?;
            *at += 1 + n;
            Some(s)
        };
        let exchange = short(&mut at)?;
        let routing_key = short(&mut at)?;
        let plen = u32::from_be_bytes(rec.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let properties = rec.get(at..at + plen).map(|_| rec.slice(at..at + plen))?;
        at += plen;
        let body = rec.slice(at..);
        Some((
            Message::new(exchange, routing_key, properties, body),
            flags & RECORD_PERSISTENT != 0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            Bytes::from_static(&[0x10, 0, 2]),
            Bytes::from_static(b"body"),
        );
        let mut rec = Vec::new();
        m.encode_record(true, None, &mut rec);
        assert_eq!(Message::record_tx(&rec), None);
        let (back, persistent) = Message::decode_record(Bytes::from(rec)).unwrap();
        assert!(persistent);
        assert_eq!(
            (back.exchange.as_str(), back.routing_key.as_str()),
            ("ex", "rk")
        );
        assert_eq!(&back.properties[..], &[0x10, 0, 2]);
        assert_eq!(&back.body[..], b"body");
        assert!(Message::decode_record(Bytes::from_static(&[1, 200])).is_none());
    }

    #[test]
    fn transaction_records() {
        let m = Message::new(
            "".into(),
            "q".into(),
            Bytes::from_static(&[0, 0]),
            Bytes::from_static(b"in a tx"),
        );
        let mut rec = Vec::new();
        m.encode_record(true, Some(0x0102_0304_0506_0708), &mut rec);
        let tag = Message::record_tx(&rec).unwrap();
        assert_eq!((tag.id, tag.end), (0x0102_0304_0506_0708, false));
        assert!(Message::record_is_persistent(&rec));
        let (back, _) = Message::decode_record(Bytes::from(rec.clone())).unwrap();
        assert_eq!(&back.body[..], b"in a tx");
        assert_eq!(back.routing_key.as_str(), "q");

        Message::encode_tx_end(7, &mut rec);
        let tag = Message::record_tx(&rec).unwrap();
        assert_eq!((tag.id, tag.end), (7, true));
        assert!(!Message::record_is_persistent(&rec));
        assert!(Message::decode_record(Bytes::from(rec)).is_none());
    }
}
