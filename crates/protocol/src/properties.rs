//! The 14 basic content-header properties and the content header frame payload.
//!
//! Brokers mostly pass properties through untouched, so the server keeps them as the raw
//! encoded bytes (flags + values) and decodes them only when a feature needs a value.

use crate::codec::{Field, Reader, Result, ShortStr, Writer};
use crate::table::FieldTable;
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

/// The property flags' bits, as named in the content header (bit 15 is the first property).
pub mod flag {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const CONTENT_ENCODING: u16 = 1 << 14;
    pub const HEADERS: u16 = 1 << 13;
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const PRIORITY: u16 = 1 << 11;
    pub const CORRELATION_ID: u16 = 1 << 10;
    pub const REPLY_TO: u16 = 1 << 9;
    pub const EXPIRATION: u16 = 1 << 8;
    pub const MESSAGE_ID: u16 = 1 << 7;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const TYPE: u16 = 1 << 5;
    pub const USER_ID: u16 = 1 << 4;
    pub const APP_ID: u16 = 1 << 3;
    pub const CLUSTER_ID: u16 = 1 << 2;
}

/// The property flags of encoded properties (0 if there are none): lets a feature skip the
/// decode when the property it needs is absent.
pub fn flags(raw: &[u8]) -> u16 {
    match raw {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// Whether encoded properties carry the property of `bit` (one of [`flag`]).
pub fn has(raw: &[u8], bit: u16) -> bool {
    flags(raw) & bit != 0
}

macro_rules! props {
    ($($field:ident : $ty:ty = $bit:literal),*) => {
        impl BasicProperties {
            /// Decodes property flags and values (the header payload after the body size).
            pub fn decode(raw: Bytes) -> Result<Self> {
                let mut r = Reader::new(raw);
                let flags = r.u16()?;
                let mut extra = flags;
                // Bit 0 announces another flags word; none of its bits name a property.
                while extra & 1 != 0 {
                    extra = r.u16()?;
                }
                let mut p = BasicProperties::default();
                $( if flags & (1 << $bit) != 0 { p.$field = Some(<$ty as Field>::read(&mut r)?); } )*
                match r.remaining() {
                    0 => Ok(p),
                    n => Err(crate::DecodeError::TrailingBytes(n)),
                }
            }
            /// Checks property flags and values as [`BasicProperties::decode`] would read
            /// them, without building anything: what a broker does once per published
            /// message (RabbitMQ refuses a malformed content header).
            pub fn validate(raw: &[u8]) -> Result<()> {
                use crate::validate::{Cursor, Skip};
                let mut c = Cursor::new(raw);
                let flags = c.u16()?;
                let mut extra = flags;
                while extra & 1 != 0 {
                    extra = c.u16()?;
                }
                $( if flags & (1 << $bit) != 0 { <$ty as Skip>::skip(&mut c)?; } )*
                match c.remaining() {
                    0 => Ok(()),
                    n => Err(crate::DecodeError::TrailingBytes(n)),
                }
            }
            /// Encodes property flags and values.
            pub fn encode(&self, buf: &mut BytesMut) {
                let mut flags = 0u16;
                $( if self.$field.is_some() { flags |= 1 << $bit; } )*
                let mut w = Writer::new(buf);
                w.u16(flags);
                $( if let Some(v) = &self.$field { <$ty as Field>::write(v, &mut w); } )*
            }
        }
    };
}

props! {
    content_type: ShortStr = 15,
    content_encoding: ShortStr = 14,
    headers: FieldTable = 13,
    delivery_mode: u8 = 12,
    priority: u8 = 11,
    correlation_id: ShortStr = 10,
    reply_to: ShortStr = 9,
    expiration: ShortStr = 8,
    message_id: ShortStr = 7,
    timestamp: u64 = 6,
    kind: ShortStr = 5,
    user_id: ShortStr = 4,
    app_id: ShortStr = 3,
    cluster_id: ShortStr = 2
}

impl BasicProperties {
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        self.encode(&mut b);
        b.freeze()
    }
}

/// A decoded content header frame payload, with the properties left encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// Property flags and values exactly as received.
    pub properties: Bytes,
}

impl ContentHeader {
    pub fn decode(payload: Bytes) -> Result<Self> {
        let mut r = Reader::new(payload);
        let class_id = r.u16()?;
        let _weight = r.u16()?;
        let body_size = r.u64()?;
        let properties = r.rest();
        if properties.len() < 2 {
            return Err(crate::DecodeError::Truncated("property flags"));
        }
        Ok(ContentHeader {
            class_id,
            body_size,
            properties,
        })
    }

    pub fn encode(class_id: u16, body_size: u64, properties: &[u8], buf: &mut BytesMut) {
        buf.put_u16(class_id);
        buf.put_u16(0);
        buf.put_u64(body_size);
        buf.extend_from_slice(properties);
    }
}

/// Reads `delivery_mode` without decoding the rest: it decides whether a message is
/// persistent on every publish.
pub fn peek_delivery_mode(raw: &[u8]) -> Option<u8> {
    let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    if flags & flag::DELIVERY_MODE == 0 {
        return None;
    }
    let mut pos = 2usize;
    let mut extra = flags;
    while extra & 1 != 0 {
        extra = u16::from_be_bytes([*raw.get(pos)?, *raw.get(pos + 1)?]);
        pos += 2;
    }
    for bit in [flag::CONTENT_TYPE, flag::CONTENT_ENCODING] {
        if flags & bit != 0 {
            pos += 1 + *raw.get(pos)? as usize;
        }
    }
    if flags & flag::HEADERS != 0 {
        let len = u32::from_be_bytes(raw.get(pos..pos + 4)?.try_into().ok()?) as usize;
        pos += 4 + len;
    }
    raw.get(pos).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::FieldValue;

    #[test]
    fn all_properties_round_trip() {
        let mut h = FieldTable::new();
        h.insert("a", FieldValue::I32(1));
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(h),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(99),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("cl".into()),
        };
        let raw = p.to_bytes();
        assert_eq!(BasicProperties::decode(raw.clone()).unwrap(), p);
        assert_eq!(peek_delivery_mode(&raw), Some(2));
        assert_eq!(
            peek_delivery_mode(&BasicProperties::default().to_bytes()),
            None
        );
    }

    #[test]
    fn validate_accepts_what_decode_reads_and_refuses_the_rest() {
        let mut h = FieldTable::new();
        let mut inner = FieldTable::new();
        inner.insert("n", FieldValue::I64(-1));
        h.insert("t", FieldValue::Table(inner));
        h.insert(
            "a",
            FieldValue::Array(vec![FieldValue::from("x"), FieldValue::Void]),
        );
        h.insert("d", FieldValue::Decimal(2, 314));
        let good = BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(h),
            delivery_mode: Some(2),
            expiration: Some("60000".into()),
            ..Default::default()
        }
        .to_bytes();
        BasicProperties::validate(&good).unwrap();
        BasicProperties::validate(&BasicProperties::default().to_bytes()).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // headers with an unknown field type
            (
                "bad type",
                [&[0x20, 0][..], &[0, 0, 0, 5, 1, b'k', b'Z', b'x', b'x']].concat(),
            ),
            // a table longer than the header
            ("short table", vec![0x20, 0, 0, 0, 0, 100, b'a', b'b', b'c']),
            // bytes after the last property
            (
                "trailing",
                [&[0x10, 0, 2, b'h', b'i'][..], &[1, 2, 3]].concat(),
            ),
            // a shortstr running past the end
            ("truncated", vec![0x80, 0, 9, b'a']),
            // not UTF-8
            ("utf8", vec![0x80, 0, 2, 0xff, 0xfe]),
        ];
        // headers with a table nested a thousand deep
        let mut deep = vec![0u8; 0];
        for _ in 0..1000 {
            let mut t = vec![1, b'k', b'F'];
            t.extend_from_slice(&(deep.len() as u32).to_be_bytes());
            t.extend_from_slice(&deep);
            deep = t;
        }
        let mut nested = vec![0x20, 0];
        nested.extend_from_slice(&(deep.len() as u32).to_be_bytes());
        nested.extend_from_slice(&deep);
        assert_eq!(
            BasicProperties::validate(&nested),
            Err(crate::DecodeError::TooDeep)
        );
        for (what, raw) in cases {
            let raw = Bytes::from(raw);
            assert!(BasicProperties::validate(&raw).is_err(), "{what}");
            assert!(BasicProperties::decode(raw).is_err(), "{what}");
        }
    }
}
