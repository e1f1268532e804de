//! Frames: parsing them in place from a read buffer, and encoding them into a write buffer.

use crate::codec::{DecodeError, Result};
use crate::constants::*;
use crate::methods::Method;
use crate::properties::ContentHeader;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// One frame. `payload` is a slice of the read buffer: parsing copies nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// The most [`parse_frame`] reserves ahead for a frame still arriving. The announced size is
/// only the peer's word until its bytes come: with `frame_max` 0 (no limit) a 7-byte header
/// could otherwise make the broker allocate 4 GiB. Larger frames grow the buffer as they arrive.
const MAX_RESERVE_AHEAD: usize = 1 << 20;

/// Takes one complete frame off the front of `buf`, or returns `None` when more bytes are
/// needed. `frame_max` bounds the whole frame, header and end octet included, so a peer
/// announcing a huge size is refused before anything is buffered for it; 0 means no limit.
#[inline]
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(DecodeError::UnknownFrameType(kind));
    }
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if frame_max != 0 && size as u64 + FRAME_OVERHEAD as u64 > frame_max as u64 {
        return Err(DecodeError::FrameTooLarge {
            size,
            max: frame_max,
        });
    }
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(MAX_RESERVE_AHEAD));
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }
    let mut frame = buf.split_to(total);
    frame.advance(7);
    frame.truncate(size as usize);
    Ok(Some(Frame {
        kind,
        channel,
        payload: frame.freeze(),
    }))
}

fn begin(buf: &mut BytesMut, kind: u8, channel: u16) -> usize {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn finish(buf: &mut BytesMut, at: usize) {
    let size = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

pub fn write_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin(buf, FRAME_METHOD, channel);
    method.encode(buf);
    finish(buf, at);
}

pub fn write_heartbeat(buf: &mut BytesMut) {
    buf.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Writes a content header frame and the body split into frames of at most `frame_max`.
pub fn write_content(
    buf: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let at = begin(buf, FRAME_HEADER, channel);
    ContentHeader::encode(60, body.len() as u64, properties, buf);
    finish(buf, at);
    let chunk = (frame_max.max(FRAME_MIN_SIZE) as usize) - FRAME_OVERHEAD;
    buf.reserve(body.len() + (body.len() / chunk + 1) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(part.len() as u32);
        buf.extend_from_slice(part);
        buf.put_u8(FRAME_END);
    }
}

/// Writes `basic.deliver` and its content without building a [`Method`]: the hot path of
/// every consumer.
#[allow(clippy::too_many_arguments)]
pub fn write_deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    buf.reserve(
        64 + consumer_tag.len()
            + exchange.len()
            + routing_key.len()
            + properties.len()
            + body.len(),
    );
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(60);
    put_shortstr(buf, consumer_tag);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    put_shortstr(buf, exchange);
    put_shortstr(buf, routing_key);
    finish(buf, at);
    write_content(buf, channel, properties, body, frame_max);
}

fn put_shortstr(buf: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(255)];
    buf.put_u8(b.len() as u8);
    buf.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{BasicDeliver, ChannelOpen};

    #[test]
    fn parse_waits_for_whole_frame_then_splits() {
        let mut out = BytesMut::new();
        write_method(&mut out, 3, &ChannelOpen::default().into());
        write_heartbeat(&mut out);
        let mut rb = BytesMut::new();
        rb.extend_from_slice(&out[..5]);
        assert_eq!(parse_frame(&mut rb, 4096).unwrap(), None);
        rb.extend_from_slice(&out[5..]);
        let f = parse_frame(&mut rb, 4096).unwrap().unwrap();
        assert_eq!((f.kind, f.channel), (FRAME_METHOD, 3));
        assert_eq!(
            Method::decode(f.payload).unwrap(),
            ChannelOpen::default().into()
        );
        let hb = parse_frame(&mut rb, 4096).unwrap().unwrap();
        assert_eq!(hb.kind, FRAME_HEARTBEAT);
        assert!(rb.is_empty());
    }

    #[test]
    fn oversize_and_bad_end_are_errors() {
        let mut rb = BytesMut::from(&[1u8, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            parse_frame(&mut rb, 131072),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        let mut rb = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        assert_eq!(
            parse_frame(&mut rb, 131072),
            Err(DecodeError::BadFrameEnd(0xAB))
        );
        let mut rb = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(
            parse_frame(&mut rb, 131072),
            Err(DecodeError::UnknownFrameType(9))
        );
    }

    #[test]
    fn unlimited_frame_max_does_not_reserve_the_announced_size() {
        // Found by fuzz/frame_decode: a 7-byte header announcing ~4 GiB, with frame_max 0,
        // made parse_frame reserve all of it before a single payload byte arrived.
        let mut rb = BytesMut::from(&[1u8, 0, 1, 0xfb, 0x03, 0x6b, 0x31][..]);
        assert_eq!(parse_frame(&mut rb, 0), Ok(None));
        assert_eq!(rb.len(), 7);
        assert!(
            rb.capacity() <= 7 + MAX_RESERVE_AHEAD,
            "reserved {}",
            rb.capacity()
        );
        // The frame still parses once its bytes arrive, past the reserve-ahead.
        let size = MAX_RESERVE_AHEAD + 10;
        let mut rb = BytesMut::new();
        rb.extend_from_slice(&[FRAME_BODY, 0, 1]);
        rb.extend_from_slice(&(size as u32).to_be_bytes());
        assert_eq!(parse_frame(&mut rb, 0), Ok(None));
        rb.extend_from_slice(&vec![5u8; size]);
        assert_eq!(parse_frame(&mut rb, 0), Ok(None));
        rb.extend_from_slice(&[FRAME_END]);
        let f = parse_frame(&mut rb, 0).unwrap().unwrap();
        assert_eq!(f.payload.len(), size);
        assert!(rb.is_empty());
    }

    #[test]
    fn fast_deliver_matches_generic_encoding() {
        let mut fast = BytesMut::new();
        write_deliver(
            &mut fast,
            1,
            "ct",
            9,
            true,
            "ex",
            "rk",
            &[0, 0],
            b"hello",
            4096,
        );
        let mut slow = BytesMut::new();
        let m: Method = BasicDeliver {
            consumer_tag: "ct".into(),
            delivery_tag: 9,
            redelivered: true,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        }
        .into();
        write_method(&mut slow, 1, &m);
        write_content(&mut slow, 1, &[0, 0], b"hello", 4096);
        assert_eq!(fast, slow);
    }

    #[test]
    fn body_is_split_at_frame_max() {
        let mut out = BytesMut::new();
        let body = vec![7u8; 10_000];
        write_content(&mut out, 1, &[0, 0], &body, 4096);
        let mut frames = Vec::new();
        while let Some(f) = parse_frame(&mut out, 4096).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames.len(), 1 + 3);
        assert_eq!(
            frames[1..].iter().map(|f| f.payload.len()).sum::<usize>(),
            10_000
        );
    }
}
