//! Compressed sub-entry batches. A publisher may compress a batch of messages as one
//! sub-entry (the entry's type byte carries the codec: 0 none, 1 gzip, 2 snappy, 3 lz4,
//! 4 zstd). RabbitMQ keeps such a batch as it came and leaves the decompression to the
//! consumers; Warren's log holds one record per message, so a batch is decompressed here,
//! once, and its messages are appended one by one: the consumers get them uncompressed, at
//! the same offsets (one per message, as RabbitMQ counts them).
//!
//! gzip is decompressed; the other codecs are refused (the publish error, 0x11 precondition
//! failed, names the codec in the broker's log). The decompressed size is the one the
//! publisher announced, and no more: a batch that inflates past it is refused.

use bytes::Bytes;
use std::io::Read;

/// The codec ids of the protocol (the entry type's bits 4–6).
pub const NONE: u8 = 0;
pub const GZIP: u8 = 1;

/// Largest decompressed batch taken (a frame's own limit is of the same order).
pub const MAX_UNCOMPRESSED: u32 = 64 << 20;

/// Why a batch could not be decompressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompressionError {
    #[error("sub-entry compression {0} ({name}) is not supported: publish with gzip or none", name = codec_name(*.0))]
    Unsupported(u8),
    #[error("a sub-entry batch announced {0} bytes uncompressed (most {MAX_UNCOMPRESSED})")]
    TooLarge(u32),
    #[error("a gzip sub-entry batch is not valid gzip: {0}")]
    Corrupt(String),
    #[error("a sub-entry batch inflated to {got} bytes, not the {announced} announced")]
    WrongSize { announced: u32, got: usize },
}

fn codec_name(c: u8) -> &'static str {
    match c {
        NONE => "none",
        GZIP => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown",
    }
}

/// The batch's `u32 size | bytes` message list, uncompressed.
pub fn decompress(
    compression: u8,
    data: &Bytes,
    uncompressed_len: u32,
) -> Result<Bytes, CompressionError> {
    match compression {
        NONE => Ok(data.clone()),
        GZIP => {
            if uncompressed_len > MAX_UNCOMPRESSED {
                return Err(CompressionError::TooLarge(uncompressed_len));
            }
            let mut out = Vec::with_capacity(uncompressed_len as usize);
            // One byte past what was announced is read, to tell a batch that inflates
            // further (refused) from one of the right size.
            flate2::read::GzDecoder::new(&data[..])
                .take(uncompressed_len as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| CompressionError::Corrupt(e.to_string()))?;
            if out.len() != uncompressed_len as usize {
                return Err(CompressionError::WrongSize {
                    announced: uncompressed_len,
                    got: out.len(),
                });
            }
            Ok(Bytes::from(out))
        }
        other => Err(CompressionError::Unsupported(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    #[test]
    fn gzip_batches_inflate_to_what_they_announce() {
        let plain = b"\x00\x00\x00\x01a\x00\x00\x00\x02bc";
        let z = gzip(plain);
        assert_eq!(
            decompress(GZIP, &z, plain.len() as u32).unwrap(),
            &plain[..]
        );
        assert_eq!(
            decompress(NONE, &Bytes::from_static(plain), 0).unwrap(),
            &plain[..]
        );
        assert_eq!(
            decompress(GZIP, &z, 3),
            Err(CompressionError::WrongSize {
                announced: 3,
                got: 4
            }),
            "inflates past what was announced"
        );
        assert!(matches!(
            decompress(GZIP, &z, 100),
            Err(CompressionError::WrongSize { got: 11, .. })
        ));
        assert!(matches!(
            decompress(GZIP, &Bytes::from_static(b"not gzip"), 8),
            Err(CompressionError::Corrupt(_))
        ));
        assert_eq!(
            decompress(GZIP, &z, u32::MAX),
            Err(CompressionError::TooLarge(u32::MAX))
        );
        let e = decompress(4, &z, 11).unwrap_err();
        assert_eq!(e, CompressionError::Unsupported(4));
        assert!(e.to_string().contains("zstd"), "{e}");
    }
}
