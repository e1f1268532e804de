//! A delivered chunk in RabbitMQ's osiris format (PROTOCOL.adoc, "Deliver"): a 48-byte
//! header and the records as simple entries. Warren's log is not made of chunks: a chunk is
//! made at read time from consecutive records, so its first offset is the first record's
//! and every record is one entry.
//!
//! Header (big-endian): magic and version (`0x50`: magic 5, version 0), chunk type (0,
//! user), entries (u16), records (u32), timestamp (i64, ms), epoch (u64), first offset
//! (u64), CRC32 of the data (i32), data length (u32), trailer length (u32), Bloom filter
//! size (u8), reserved (u24). Each simple entry: `0 | u31 size | bytes`.

use crate::frame::FrameBuf;

pub const HEADER_LEN: usize = 48;
const MAGIC_VERSION: u8 = 0x50;

/// Appends one chunk of `entries` (at least one) starting at `first_offset`.
pub fn write(out: &mut FrameBuf, first_offset: u64, timestamp: i64, entries: &[&[u8]]) {
    let data_len: usize = entries.iter().map(|e| 4 + e.len()).sum();
    out.u8(MAGIC_VERSION);
    out.u8(0);
    out.u16(entries.len() as u16);
    out.u32(entries.len() as u32);
    out.i64(timestamp);
    out.u64(0); // epoch: one node, never a new leader
    out.u64(first_offset);
    let crc_at = out.len();
    out.u32(0);
    out.u32(data_len as u32);
    out.u32(0); // trailer
    out.u32(0); // Bloom filter size and reserved
    let data_at = out.len();
    for e in entries {
        out.u32(e.len() as u32 & 0x7fff_ffff);
        out.raw(e);
    }
    let crc = crc32fast::hash(&out.buf[data_at..]);
    out.buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_crc() {
        let mut w = FrameBuf::default();
        write(&mut w, 42, 1_700_000_000_000, &[b"ab", b"cde"]);
        let b = &w.buf[..];
        assert_eq!(b.len(), HEADER_LEN + 4 + 2 + 4 + 3);
        assert_eq!(b[0], 0x50);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]), 2);
        assert_eq!(u32::from_be_bytes(b[4..8].try_into().unwrap()), 2);
        assert_eq!(u64::from_be_bytes(b[24..32].try_into().unwrap()), 42);
        let crc = u32::from_be_bytes(b[32..36].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&b[HEADER_LEN..]));
        assert_eq!(u32::from_be_bytes(b[36..40].try_into().unwrap()), 13);
        assert_eq!(&b[HEADER_LEN..HEADER_LEN + 6], &[0, 0, 0, 2, b'a', b'b']);
    }
}
