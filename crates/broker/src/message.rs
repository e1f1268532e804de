//! A published message: routed once, shared (behind an `Arc`) by every queue it lands in.

use bytes::Bytes;
use warren_protocol::properties::peek_delivery_mode;
use warren_protocol::{BasicProperties, ShortStr};

#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content-header property flags and values, exactly as published.
    pub properties: Bytes,
    pub body: Bytes,
}

impl Message {
    pub fn new(exchange: ShortStr, routing_key: ShortStr, properties: Bytes, body: Bytes) -> Self {
        Message { exchange, routing_key, properties, body }
    }

    /// delivery_mode 2.
    pub fn is_persistent(&self) -> bool {
        peek_delivery_mode(&self.properties) == Some(2)
    }

    /// Decodes the properties; malformed ones read as empty (they were checked at publish).
    pub fn decode_properties(&self) -> BasicProperties {
        BasicProperties::decode(self.properties.clone()).unwrap_or_default()
    }

    /// Bytes of memory the message holds, for the `memory` and `message_bytes` statistics.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len() + self.routing_key.len() + self.exchange.len()
    }
}
