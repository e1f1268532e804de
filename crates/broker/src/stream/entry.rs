//! What one record of a stream's log holds: a message published over AMQP 0-9-1 (the
//! broker's message record, `Message::encode_record`) or one published over the stream
//! protocol, kept as its AMQP 1.0 bytes exactly as the client sent them, with the publisher
//! reference and publishing id it came with (deduplication is rebuilt from them at start).
//!
//! Stream-protocol entry (integers big-endian):
//!
//! | size | field |
//! |---:|---|
//! | 1 | [`AMQP10`] (a flag no 0-9-1 message record has) |
//! | 1 | publisher reference length, 0 for none |
//! | n | publisher reference, UTF-8 |
//! | 8 | publishing id |
//! | 1 | filter value length (only with [`AMQP10_FILTERED`]) |
//! | n | filter value, UTF-8 (publish version 2's; only with [`AMQP10_FILTERED`]) |
//! | rest | the message, AMQP 1.0 (or whatever bytes the client published) |
//!
//! A message published over 0-9-1 carries its filter value in its `x-stream-filter-value`
//! header ([`Entry::filter_value`] reads either).

use crate::message::Message;
use bytes::Bytes;

/// The first byte of a stream-protocol entry (the message record's flags use 1, 2 and 4).
pub const AMQP10: u8 = 8;
/// ... of one with a filter value (publish version 2).
pub const AMQP10_FILTERED: u8 = 16;

/// One record's message, as it was published.
pub enum Entry {
    Amqp091(Message),
    Amqp10 {
        /// The publisher reference (empty for none) and publishing id.
        writer: (Bytes, u64),
        /// Its filter value (publish version 2), if it came with one.
        filter: Option<Bytes>,
        message: Bytes,
    },
}

/// Writes a stream-protocol entry. A reference longer than 255 bytes is not kept (the
/// protocol limits it to 256 characters; the handler refuses longer ones), nor is a filter
/// value longer than 255 bytes (RabbitMQ's filter values are short strings).
pub fn encode_amqp10(
    reference: &str,
    publishing_id: u64,
    filter_value: Option<&str>,
    message: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    let r = if reference.len() <= 255 {
        reference
    } else {
        ""
    };
    let f = filter_value.filter(|f| f.len() <= 255);
    out.reserve(11 + r.len() + f.map_or(0, str::len) + message.len());
    out.push(if f.is_some() { AMQP10_FILTERED } else { AMQP10 });
    out.push(r.len() as u8);
    out.extend_from_slice(r.as_bytes());
    out.extend_from_slice(&publishing_id.to_be_bytes());
    if let Some(f) = f {
        out.push(f.len() as u8);
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(message);
}

/// The writer (reference, publishing id) of a stream-protocol entry, without copying.
pub fn writer_of(rec: &[u8]) -> Option<(&[u8], u64)> {
    if !matches!(*rec.first()?, AMQP10 | AMQP10_FILTERED) {
        return None;
    }
    let n = *rec.get(1)? as usize;
    let r = rec.get(2..2 + n)?;
    let id = u64::from_be_bytes(rec.get(2 + n..10 + n)?.try_into().ok()?);
    Some((r, id))
}

pub fn decode(rec: Bytes) -> Option<Entry> {
    if !matches!(rec.first(), Some(&AMQP10 | &AMQP10_FILTERED)) {
        return Message::decode_record(rec).map(|(m, _)| Entry::Amqp091(m));
    }
    let (r, id) = writer_of(&rec)?;
    let n = r.len();
    let at = 10 + n;
    let (filter, message) = if rec[0] == AMQP10_FILTERED {
        let f = *rec.get(at)? as usize;
        rec.get(at + 1..at + 1 + f)?;
        (Some(rec.slice(at + 1..at + 1 + f)), at + 1 + f)
    } else {
        (None, at)
    };
    Some(Entry::Amqp10 {
        writer: (rec.slice(2..2 + n), id),
        filter,
        message: rec.slice(message..),
    })
}

impl Entry {
    /// The value a consumer's filter is matched against, read in place: a stream-protocol
    /// entry's own (publish version 2's; none if it came without one, or one not UTF-8), or a
    /// 0-9-1 message's `x-stream-filter-value` header (a string). Both the stream protocol's
    /// reads and 0-9-1 consumers match with this one.
    pub fn filter_value(&self) -> Option<&str> {
        match self {
            Entry::Amqp10 { filter, .. } => {
                filter.as_deref().and_then(|f| std::str::from_utf8(f).ok())
            }
            Entry::Amqp091(m) => filter_header(m),
        }
    }
}

/// A 0-9-1 message's `x-stream-filter-value` header, if a string.
pub fn filter_header(m: &Message) -> Option<&str> {
    m.props()
        .headers
        .as_ref()
        .and_then(|h| h.get("x-stream-filter-value"))
        .and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp10_entries_round_trip() {
        let mut out = Vec::new();
        encode_amqp10("producer-1", 42, None, b"\x00\x53\x75\xa0\x01x", &mut out);
        assert_eq!(writer_of(&out), Some((&b"producer-1"[..], 42)));
        match decode(Bytes::from(out.clone())) {
            Some(Entry::Amqp10 {
                writer,
                filter: None,
                message,
            }) => {
                assert_eq!((&writer.0[..], writer.1), (&b"producer-1"[..], 42));
                assert_eq!(&message[..], b"\x00\x53\x75\xa0\x01x");
            }
            _ => panic!("not an AMQP 1.0 entry"),
        }
        let value = |out: &[u8]| {
            decode(Bytes::copy_from_slice(out)).and_then(|e| e.filter_value().map(str::to_string))
        };
        assert_eq!(value(&out), None);
        encode_amqp10("p", 7, Some("california"), b"msg", &mut out);
        assert_eq!(writer_of(&out), Some((&b"p"[..], 7)));
        assert_eq!(value(&out).as_deref(), Some("california"));
        match decode(Bytes::from(out.clone())) {
            Some(Entry::Amqp10 {
                filter: Some(f),
                message,
                ..
            }) => assert_eq!((&f[..], &message[..]), (&b"california"[..], &b"msg"[..])),
            _ => panic!("not a filtered AMQP 1.0 entry"),
        }
        assert!(
            decode(Bytes::from(out[..out.len() - 13].to_vec())).is_none(),
            "truncated filter"
        );
        assert!(writer_of(&[AMQP10, 5, b'a']).is_none(), "truncated");
        assert!(writer_of(&[1, 0, 0]).is_none(), "a 0-9-1 record");
    }
}
