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
//! | rest | the message, AMQP 1.0 (or whatever bytes the client published) |

use crate::message::Message;
use bytes::Bytes;

/// The first byte of a stream-protocol entry (the message record's flags use 1, 2 and 4).
pub const AMQP10: u8 = 8;

/// One record's message, as it was published.
pub enum Entry {
    Amqp091(Message),
    Amqp10 {
        /// The publisher reference (empty for none) and publishing id.
        writer: (Bytes, u64),
        message: Bytes,
    },
}

/// Writes a stream-protocol entry. A reference longer than 255 bytes is not kept (the
/// protocol limits it to 256 characters; the handler refuses longer ones).
pub fn encode_amqp10(reference: &str, publishing_id: u64, message: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let r = if reference.len() <= 255 {
        reference
    } else {
        ""
    };
    out.reserve(10 + r.len() + message.len());
    out.push(AMQP10);
    out.push(r.len() as u8);
    out.extend_from_slice(r.as_bytes());
    out.extend_from_slice(&publishing_id.to_be_bytes());
    out.extend_from_slice(message);
}

/// The writer (reference, publishing id) of a stream-protocol entry, without copying.
pub fn writer_of(rec: &[u8]) -> Option<(&[u8], u64)> {
    if *rec.first()? != AMQP10 {
        return None;
    }
    let n = *rec.get(1)? as usize;
    let r = rec.get(2..2 + n)?;
    let id = u64::from_be_bytes(rec.get(2 + n..10 + n)?.try_into().ok()?);
    Some((r, id))
}

pub fn decode(rec: Bytes) -> Option<Entry> {
    if rec.first() == Some(&AMQP10) {
        let (r, id) = writer_of(&rec)?;
        let n = r.len();
        return Some(Entry::Amqp10 {
            writer: (rec.slice(2..2 + n), id),
            message: rec.slice(10 + n..),
        });
    }
    Message::decode_record(rec).map(|(m, _)| Entry::Amqp091(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp10_entries_round_trip() {
        let mut out = Vec::new();
        encode_amqp10("producer-1", 42, b"\x00\x53\x75\xa0\x01x", &mut out);
        assert_eq!(writer_of(&out), Some((&b"producer-1"[..], 42)));
        match decode(Bytes::from(out)) {
            Some(Entry::Amqp10 { writer, message }) => {
                assert_eq!((&writer.0[..], writer.1), (&b"producer-1"[..], 42));
                assert_eq!(&message[..], b"\x00\x53\x75\xa0\x01x");
            }
            _ => panic!("not an AMQP 1.0 entry"),
        }
        assert!(writer_of(&[AMQP10, 5, b'a']).is_none(), "truncated");
        assert!(writer_of(&[1, 0, 0]).is_none(), "a 0-9-1 record");
    }
}
