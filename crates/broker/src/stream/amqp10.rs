//! Messages in the AMQP 1.0 format, as RabbitMQ's stream protocol carries them, and their
//! conversion to and from AMQP 0-9-1 messages, so one stream serves both protocols.
//!
//! What RabbitMQ does (and Warren does the same way, for the fields both formats have):
//! - 0-9-1 → 1.0 (a 0-9-1 publish read over the stream protocol): `delivery_mode` 2 becomes
//!   the header's `durable`, `priority` its `priority`; the exchange and routing key become
//!   the `x-exchange` and `x-routing-key` message annotations; `message_id`, `user_id`,
//!   `reply_to`, `correlation_id`, `content_type`, `content_encoding`, `timestamp` (seconds →
//!   `creation-time` in ms) and `type` (→ `subject`) go to the properties; the headers with
//!   simple values become application properties; the body is one data section.
//! - 1.0 → 0-9-1 (a stream-protocol publish read over 0-9-1): the reverse; the data sections
//!   make the body (an `amqp-value` holding binary or a string gives its bytes); application
//!   properties and message annotations with simple values become headers. Bytes that are not
//!   an AMQP 1.0 message (clients may publish any bytes) are the body as they are.
//!
//! Only the encoding is here: no frames, no sockets.

use crate::message::Message;
use bytes::Bytes;
use warren_protocol::codec::LongStr;
use warren_protocol::{BasicProperties, FieldTable, FieldValue, ShortStr};

/// Section descriptors (AMQP 1.0, part 3.2).
mod section {
    pub const HEADER: u64 = 0x70;
    pub const DELIVERY_ANNOTATIONS: u64 = 0x71;
    pub const MESSAGE_ANNOTATIONS: u64 = 0x72;
    pub const PROPERTIES: u64 = 0x73;
    pub const APPLICATION_PROPERTIES: u64 = 0x74;
    pub const DATA: u64 = 0x75;
    pub const AMQP_SEQUENCE: u64 = 0x76;
    pub const AMQP_VALUE: u64 = 0x77;
    pub const FOOTER: u64 = 0x78;
}

/// A decoded AMQP 1.0 value (the subset of the type system messages use; decimals and chars
/// are kept as their raw bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Ulong(u64),
    Long(i64),
    Double(f64),
    Timestamp(i64),
    Uuid([u8; 16]),
    Binary(Bytes),
    String(String),
    Symbol(String),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Array(Vec<Value>),
    Described(Box<Value>, Box<Value>),
    /// A value of a type this decoder keeps opaque (decimals, char).
    Other,
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }
}

/// A malformed AMQP 1.0 encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

struct Dec<'a> {
    buf: &'a [u8],
    at: usize,
    depth: u32,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed)?;
        let s = self.buf.get(self.at..end).ok_or(Malformed)?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn be<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        self.take(N)?.try_into().map_err(|_| Malformed)
    }
    fn size(&mut self, wide: bool) -> Result<usize, Malformed> {
        Ok(if wide {
            u32::from_be_bytes(self.be()?) as usize
        } else {
            self.u8()? as usize
        })
    }

    fn value(&mut self) -> Result<Value, Malformed> {
        let code = self.u8()?;
        self.with_constructor(code)
    }

    fn with_constructor(&mut self, code: u8) -> Result<Value, Malformed> {
        Ok(match code {
            0x00 => {
                self.depth += 1;
                if self.depth > 32 {
                    return Err(Malformed);
                }
                let d = self.value()?;
                let v = self.value()?;
                self.depth -= 1;
                Value::Described(Box::new(d), Box::new(v))
            }
            0x40 => Value::Null,
            0x41 => Value::Bool(true),
            0x42 => Value::Bool(false),
            0x56 => Value::Bool(self.u8()? != 0),
            0x50 => Value::Ulong(self.u8()? as u64),
            0x60 => Value::Ulong(u16::from_be_bytes(self.be()?) as u64),
            0x70 => Value::Ulong(u32::from_be_bytes(self.be()?) as u64),
            0x52 | 0x53 => Value::Ulong(self.u8()? as u64),
            0x43 | 0x44 => Value::Ulong(0),
            0x80 => Value::Ulong(u64::from_be_bytes(self.be()?)),
            0x51 | 0x54 | 0x55 => Value::Long(self.u8()? as i8 as i64),
            0x61 => Value::Long(i16::from_be_bytes(self.be()?) as i64),
            0x71 => Value::Long(i32::from_be_bytes(self.be()?) as i64),
            0x81 => Value::Long(i64::from_be_bytes(self.be()?)),
            0x72 => Value::Double(f32::from_be_bytes(self.be()?) as f64),
            0x82 => Value::Double(f64::from_be_bytes(self.be()?)),
            0x83 => Value::Timestamp(i64::from_be_bytes(self.be()?)),
            0x98 => Value::Uuid(self.be()?),
            0x73 | 0x74 => {
                self.take(4)?;
                Value::Other
            }
            0x84 => {
                self.take(8)?;
                Value::Other
            }
            0x94 => {
                self.take(16)?;
                Value::Other
            }
            0xa0 | 0xb0 => {
                let n = self.size(code == 0xb0)?;
                Value::Binary(Bytes::copy_from_slice(self.take(n)?))
            }
            0xa1 | 0xb1 | 0xa3 | 0xb3 => {
                let n = self.size(code & 0xf0 == 0xb0)?;
                let s = String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Malformed)?;
                if code & 0x0f == 0x01 {
                    Value::String(s)
                } else {
                    Value::Symbol(s)
                }
            }
            0x45 => Value::List(Vec::new()),
            0xc0 | 0xd0 | 0xc1 | 0xd1 => {
                let wide = code & 0xf0 == 0xd0;
                let size = self.size(wide)?;
                let body = self.take(size)?;
                let mut inner = Dec {
                    buf: body,
                    at: 0,
                    depth: self.depth + 1,
                };
                if inner.depth > 32 {
                    return Err(Malformed);
                }
                let count = inner.size(wide)?;
                let mut items = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    items.push(inner.value()?);
                }
                if code & 0x0f == 0x00 {
                    Value::List(items)
                } else {
                    if items.len() % 2 != 0 {
                        return Err(Malformed);
                    }
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                }
            }
            0xe0 | 0xf0 => {
                let wide = code == 0xf0;
                let size = self.size(wide)?;
                let body = self.take(size)?;
                let mut inner = Dec {
                    buf: body,
                    at: 0,
                    depth: self.depth + 1,
                };
                if inner.depth > 32 {
                    return Err(Malformed);
                }
                let count = inner.size(wide)?;
                let ctor = inner.u8()?;
                if ctor == 0x00 {
                    // Described element type: not used by the clients; kept opaque.
                    return Ok(Value::Other);
                }
                let mut items = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    items.push(inner.with_constructor(ctor)?);
                }
                Value::Array(items)
            }
            _ => return Err(Malformed),
        })
    }
}

/// Decodes one value (tests, and callers that hold a single encoded value).
pub fn decode_value(buf: &[u8]) -> Result<Value, Malformed> {
    Dec {
        buf,
        at: 0,
        depth: 0,
    }
    .value()
}

/// Appends AMQP 1.0 encodings.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn null(&mut self) {
        self.0.push(0x40);
    }
    pub fn bool(&mut self, b: bool) {
        self.0.push(if b { 0x41 } else { 0x42 });
    }
    pub fn ubyte(&mut self, v: u8) {
        self.0.extend_from_slice(&[0x50, v]);
    }
    pub fn uint(&mut self, v: u32) {
        self.0.push(0x70);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn ulong(&mut self, v: u64) {
        self.0.push(0x80);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn long(&mut self, v: i64) {
        self.0.push(0x81);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn int(&mut self, v: i32) {
        self.0.push(0x71);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn double(&mut self, v: f64) {
        self.0.push(0x82);
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn timestamp(&mut self, ms: i64) {
        self.0.push(0x83);
        self.0.extend_from_slice(&ms.to_be_bytes());
    }
    fn var(&mut self, short: u8, long: u8, b: &[u8]) {
        if b.len() <= 255 {
            self.0.extend_from_slice(&[short, b.len() as u8]);
        } else {
            self.0.push(long);
            self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        }
        self.0.extend_from_slice(b);
    }
    pub fn binary(&mut self, b: &[u8]) {
        self.var(0xa0, 0xb0, b);
    }
    pub fn string(&mut self, s: &str) {
        self.var(0xa1, 0xb1, s.as_bytes());
    }
    pub fn symbol(&mut self, s: &str) {
        self.var(0xa3, 0xb3, s.as_bytes());
    }
    /// A described section: `descriptor` as a small ulong, then the value `body` writes.
    pub fn described(&mut self, descriptor: u64, body: impl FnOnce(&mut Enc)) {
        self.0.extend_from_slice(&[0x00, 0x53, descriptor as u8]);
        body(self);
    }
    /// A list32 or map32 of `count` items (a map counts keys and values) that `items` writes.
    fn compound(&mut self, code: u8, count: usize, items: impl FnOnce(&mut Enc)) {
        self.0.push(code);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        self.0.extend_from_slice(&(count as u32).to_be_bytes());
        items(self);
        let size = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }
    pub fn list(&mut self, count: usize, items: impl FnOnce(&mut Enc)) {
        self.compound(0xd0, count, items);
    }
    pub fn map(&mut self, pairs: usize, items: impl FnOnce(&mut Enc)) {
        self.compound(0xd1, pairs * 2, items);
    }
}

/// A field value as an application property or annotation value; `None` for those AMQP 1.0
/// properties cannot hold (tables, arrays, decimals, void), which are left out as RabbitMQ
/// leaves them out.
fn write_field(e: &mut Enc, v: &FieldValue) -> bool {
    match v {
        FieldValue::Bool(b) => e.bool(*b),
        FieldValue::I8(n) => e.long(*n as i64),
        FieldValue::U8(n) => e.ubyte(*n),
        FieldValue::I16(n) => e.int(*n as i32),
        FieldValue::U16(n) => e.uint(*n as u32),
        FieldValue::I32(n) => e.int(*n),
        FieldValue::U32(n) => e.uint(*n),
        FieldValue::I64(n) => e.long(*n),
        FieldValue::F32(f) => e.double(*f as f64),
        FieldValue::F64(f) => e.double(*f),
        FieldValue::LongStr(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(s) => e.string(s),
            Err(_) => e.binary(s.as_bytes()),
        },
        FieldValue::Bytes(b) => e.binary(b.as_bytes()),
        FieldValue::Timestamp(t) => e.timestamp((*t as i64).saturating_mul(1000)),
        FieldValue::Decimal(..)
        | FieldValue::Array(_)
        | FieldValue::Table(_)
        | FieldValue::Void => return false,
    }
    true
}

fn simple_fields(t: &FieldTable) -> Vec<(&ShortStr, &FieldValue)> {
    t.iter()
        .filter(|(_, v)| {
            !matches!(
                v,
                FieldValue::Decimal(..)
                    | FieldValue::Array(_)
                    | FieldValue::Table(_)
                    | FieldValue::Void
            )
        })
        .collect()
}

/// Encodes a 0-9-1 message as an AMQP 1.0 message (RabbitMQ's mapping, module doc).
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) {
    let p = msg.props();
    let mut e = Enc(out);
    let durable = p.delivery_mode == Some(2);
    if durable || p.priority.is_some() {
        e.described(section::HEADER, |e| {
            let n = if p.priority.is_some() { 2 } else { 1 };
            e.list(n, |e| {
                e.bool(durable);
                if let Some(pr) = p.priority {
                    e.ubyte(pr);
                }
            })
        });
    }
    e.described(section::MESSAGE_ANNOTATIONS, |e| {
        e.map(2, |e| {
            e.symbol("x-exchange");
            e.string(&msg.exchange);
            e.symbol("x-routing-key");
            e.string(&msg.routing_key);
        })
    });
    let has_props = p.message_id.is_some()
        || p.user_id.is_some()
        || p.reply_to.is_some()
        || p.correlation_id.is_some()
        || p.content_type.is_some()
        || p.content_encoding.is_some()
        || p.timestamp.is_some()
        || p.kind.is_some();
    if has_props {
        e.described(section::PROPERTIES, |e| {
            e.list(10, |e| {
                let opt_str = |e: &mut Enc, v: &Option<ShortStr>| match v {
                    Some(s) => e.string(s),
                    None => e.null(),
                };
                opt_str(e, &p.message_id);
                match &p.user_id {
                    Some(u) => e.binary(u.as_bytes()),
                    None => e.null(),
                }
                e.null(); // to
                opt_str(e, &p.kind); // subject
                opt_str(e, &p.reply_to);
                opt_str(e, &p.correlation_id);
                match &p.content_type {
                    Some(s) => e.symbol(s),
                    None => e.null(),
                }
                match &p.content_encoding {
                    Some(s) => e.symbol(s),
                    None => e.null(),
                }
                e.null(); // absolute-expiry-time
                match p.timestamp {
                    Some(t) => e.timestamp((t as i64).saturating_mul(1000)),
                    None => e.null(),
                }
            })
        });
    }
    if let Some(h) = &p.headers {
        let fields = simple_fields(h);
        if !fields.is_empty() {
            e.described(section::APPLICATION_PROPERTIES, |e| {
                e.map(fields.len(), |e| {
                    for (k, v) in fields {
                        e.string(k);
                        write_field(e, v);
                    }
                })
            });
        }
    }
    e.described(section::DATA, |e| e.binary(&msg.body));
}

fn field_of(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Ulong(n) => match i64::try_from(*n) {
            Ok(n) => FieldValue::I64(n),
            Err(_) => FieldValue::LongStr(n.to_string().into()),
        },
        Value::Long(n) => FieldValue::I64(*n),
        Value::Double(f) => FieldValue::F64(*f),
        Value::Timestamp(ms) => FieldValue::Timestamp((*ms / 1000).max(0) as u64),
        Value::String(s) | Value::Symbol(s) => FieldValue::LongStr(s.as_str().into()),
        Value::Binary(b) => FieldValue::Bytes(LongStr(b.clone())),
        Value::Uuid(u) => FieldValue::LongStr(uuid_string(u).into()),
        _ => return None,
    })
}

fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A message or correlation id as a 0-9-1 short string.
fn id_string(v: &Value) -> Option<ShortStr> {
    Some(match v {
        Value::String(s) | Value::Symbol(s) => s.as_str().into(),
        Value::Ulong(n) => n.to_string().into(),
        Value::Uuid(u) => uuid_string(u).into(),
        Value::Binary(b) => String::from_utf8_lossy(b).into_owned().into(),
        _ => return None,
    })
}

/// Decodes an AMQP 1.0 message into a 0-9-1 message for `exchange`/`routing_key` (module
/// doc). Bytes that are not an AMQP 1.0 message become the body as they are.
pub fn decode_message(bytes: Bytes, exchange: &str, routing_key: &str) -> Message {
    match decode_sections(&bytes) {
        Ok((props, body, annotations)) => {
            let x = annotations.0.unwrap_or_else(|| exchange.into());
            let rk = annotations.1.unwrap_or_else(|| routing_key.into());
            Message::new(x, rk, props.to_bytes(), body)
        }
        Err(Malformed) => {
            let props = BasicProperties {
                delivery_mode: Some(2),
                ..Default::default()
            };
            Message::new(exchange.into(), routing_key.into(), props.to_bytes(), bytes)
        }
    }
}

type Annotations = (Option<ShortStr>, Option<ShortStr>);

fn decode_sections(bytes: &[u8]) -> Result<(BasicProperties, Bytes, Annotations), Malformed> {
    let mut d = Dec {
        buf: bytes,
        at: 0,
        depth: 0,
    };
    let mut p = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let mut headers = FieldTable::new();
    let mut body: Vec<u8> = Vec::new();
    let mut body_value: Option<Bytes> = None;
    let mut annotations: Annotations = (None, None);
    let mut sections = 0;
    while d.at < bytes.len() {
        let start = d.at;
        let Value::Described(desc, v) = d.value()? else {
            return Err(Malformed);
        };
        let code = match *desc {
            Value::Ulong(c) => c,
            Value::Symbol(ref s) => match s.as_str() {
                "amqp:header:list" => section::HEADER,
                "amqp:delivery-annotations:map" => section::DELIVERY_ANNOTATIONS,
                "amqp:message-annotations:map" => section::MESSAGE_ANNOTATIONS,
                "amqp:properties:list" => section::PROPERTIES,
                "amqp:application-properties:map" => section::APPLICATION_PROPERTIES,
                "amqp:data:binary" => section::DATA,
                "amqp:amqp-sequence:list" => section::AMQP_SEQUENCE,
                "amqp:amqp-value:*" => section::AMQP_VALUE,
                "amqp:footer:map" => section::FOOTER,
                _ => return Err(Malformed),
            },
            _ => return Err(Malformed),
        };
        sections += 1;
        match (code, *v) {
            (section::HEADER, Value::List(f)) => {
                if let Some(Value::Bool(false)) = f.first() {
                    p.delivery_mode = Some(1);
                }
                if let Some(Value::Ulong(pr)) = f.get(1) {
                    p.priority = Some((*pr).min(255) as u8);
                }
            }
            (section::MESSAGE_ANNOTATIONS, Value::Map(m)) => {
                for (k, v) in m {
                    let Some(k) = k.as_str() else { continue };
                    match (k, &v) {
                        ("x-exchange", Value::String(s)) => annotations.0 = Some(s.as_str().into()),
                        ("x-routing-key", Value::String(s)) => {
                            annotations.1 = Some(s.as_str().into())
                        }
                        _ => {
                            if let Some(f) = field_of(&v) {
                                headers.insert(k, f);
                            }
                        }
                    }
                }
            }
            (section::PROPERTIES, Value::List(f)) => {
                let s = |i: usize| f.get(i).and_then(|v| v.as_str()).map(ShortStr::from);
                p.message_id = f.first().and_then(id_string);
                p.user_id = match f.get(1) {
                    Some(Value::Binary(b)) => std::str::from_utf8(b).ok().map(ShortStr::from),
                    _ => None,
                };
                p.kind = s(3);
                p.reply_to = s(4);
                p.correlation_id = f.get(5).and_then(id_string);
                p.content_type = s(6);
                p.content_encoding = s(7);
                if let Some(Value::Timestamp(ms)) = f.get(9) {
                    p.timestamp = Some((*ms / 1000).max(0) as u64);
                }
            }
            (section::APPLICATION_PROPERTIES, Value::Map(m)) => {
                for (k, v) in m {
                    if let (Some(k), Some(f)) = (k.as_str(), field_of(&v)) {
                        headers.insert(k, f);
                    }
                }
            }
            (section::DATA, Value::Binary(b)) => body.extend_from_slice(&b),
            (section::AMQP_VALUE, Value::Binary(b)) => body_value = Some(b),
            (section::AMQP_VALUE, Value::String(s)) => body_value = Some(Bytes::from(s)),
            (section::AMQP_VALUE | section::AMQP_SEQUENCE, _) => {
                body_value = Some(Bytes::copy_from_slice(&bytes[start..d.at]))
            }
            (section::DELIVERY_ANNOTATIONS | section::FOOTER, _) => {}
            _ => return Err(Malformed),
        }
    }
    if sections == 0 {
        return Err(Malformed);
    }
    if !headers.is_empty() {
        p.headers = Some(headers);
    }
    let body = body_value.unwrap_or_else(|| Bytes::from(body));
    Ok((p, body, annotations))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(props: BasicProperties, body: &'static [u8]) -> Message {
        Message::new(
            "amq.direct".into(),
            "rk".into(),
            props.to_bytes(),
            Bytes::from_static(body),
        )
    }

    #[test]
    fn round_trip_keeps_what_both_formats_have() {
        let mut headers = FieldTable::new();
        headers.insert("s", FieldValue::LongStr("v".into()));
        headers.insert("n", FieldValue::I32(-7));
        headers.insert("b", FieldValue::Bool(true));
        headers.insert("nested", FieldValue::Table(FieldTable::new()));
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("utf-8".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(3),
            correlation_id: Some("c-1".into()),
            reply_to: Some("replies".into()),
            message_id: Some("m-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("event".into()),
            user_id: Some("guest".into()),
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_message(&msg(props, b"hello"), &mut out);
        let back = decode_message(Bytes::from(out), "", "");
        assert_eq!(&back.body[..], b"hello");
        assert_eq!(
            (back.exchange.as_str(), back.routing_key.as_str()),
            ("amq.direct", "rk")
        );
        let p = back.props();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(3));
        assert_eq!(p.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(p.reply_to.as_deref(), Some("replies"));
        assert_eq!(p.message_id.as_deref(), Some("m-1"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(p.kind.as_deref(), Some("event"));
        assert_eq!(p.user_id.as_deref(), Some("guest"));
        let h = p.headers.as_ref().unwrap();
        assert_eq!(h.get("s").and_then(|v| v.as_str()), Some("v"));
        assert_eq!(h.get("n").and_then(|v| v.as_i64()), Some(-7));
        assert_eq!(h.get("b").and_then(|v| v.as_bool()), Some(true));
        assert!(
            h.get("nested").is_none(),
            "tables have no AMQP 1.0 property form"
        );
    }

    #[test]
    fn not_an_amqp_message_is_the_body() {
        let m = decode_message(Bytes::from_static(b"plain bytes"), "", "s");
        assert_eq!(&m.body[..], b"plain bytes");
        assert_eq!(m.routing_key.as_str(), "s");
        let m = decode_message(Bytes::new(), "", "s");
        assert!(m.body.is_empty());
    }

    #[test]
    fn data_sections_and_amqp_values() {
        let mut out = Vec::new();
        let mut e = Enc(&mut out);
        e.described(section::DATA, |e| e.binary(b"ab"));
        e.described(section::DATA, |e| e.binary(b"cd"));
        assert_eq!(&decode_message(Bytes::from(out), "", "").body[..], b"abcd");
        let mut out = Vec::new();
        Enc(&mut out).described(section::AMQP_VALUE, |e| e.string("text"));
        assert_eq!(&decode_message(Bytes::from(out), "", "").body[..], b"text");
    }

    #[test]
    fn hostile_nesting_is_refused_not_a_stack_overflow() {
        let mut deep = vec![0x00; 10_000];
        deep.push(0x40);
        assert_eq!(decode_value(&deep), Err(Malformed));
        // A list claiming more items than it holds.
        assert_eq!(decode_value(&[0xc0, 1, 200]), Err(Malformed));
    }
}
