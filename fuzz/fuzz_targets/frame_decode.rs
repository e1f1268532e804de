//! Arbitrary bytes as a connection's read buffer: frames are taken off it with `parse_frame` for
//! a few `frame_max` values, method frames are decoded, and every decoded method must survive
//! encode → decode unchanged. Feeding the same bytes in small chunks must yield the same frames.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_protocol::constants::*;
use warren_protocol::frame::{parse_frame, write_content, write_deliver, write_method, Frame};
use warren_protocol::properties::ContentHeader;
use warren_protocol::{BasicProperties, DecodeError, Method};

/// `frame_max` 0 is AMQP's "no limit"; 4096 is the pre-tune limit; 131072 RabbitMQ's default.
const FRAME_MAXES: [u32; 3] = [0, FRAME_MIN_SIZE, 131072];

fuzz_target!(|data: &[u8]| {
    for frame_max in FRAME_MAXES {
        let (frames, end) = parse_all(data, frame_max, usize::MAX);
        for f in &frames {
            check_frame(f, frame_max, data);
        }
        // The same bytes arriving a few at a time (as from a socket) give the same frames.
        // Once is enough: chunking does not depend on frame_max.
        if frame_max == 131072 {
            let chunk = data.first().map_or(1, |b| (*b as usize % 13) + 1);
            let (chunked, chunked_end) = parse_all(data, frame_max, chunk);
            assert_eq!(frames, chunked, "chunked parse differs (chunk {chunk})");
            assert_eq!(
                end, chunked_end,
                "chunked parse ends differently (chunk {chunk})"
            );
        }
    }
});

/// Parses frames until more bytes are needed or an error, feeding `chunk` bytes at a time.
fn parse_all(data: &[u8], frame_max: u32, chunk: usize) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        let before = buf.len();
        match parse_frame(&mut buf, frame_max) {
            Ok(Some(f)) => {
                assert_eq!(
                    before - buf.len(),
                    f.payload.len() + FRAME_OVERHEAD,
                    "consumed bytes"
                );
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(
                    buf.len(),
                    before,
                    "a partial frame must leave the buffer as it was"
                );
                if fed == data.len() {
                    return (frames, Ok(()));
                }
                let n = chunk.min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + n]);
                fed += n;
            }
            Err(e) => return (frames, Err(e)),
        }
    }
}

fn check_frame(f: &Frame, frame_max: u32, data: &[u8]) {
    assert!(matches!(
        f.kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ));
    if frame_max != 0 {
        assert!(f.payload.len() + FRAME_OVERHEAD <= frame_max as usize);
    }
    match f.kind {
        FRAME_METHOD => {
            if let Ok(m) = Method::decode(f.payload.clone()) {
                check_method(&m, f.channel, data);
            }
        }
        FRAME_HEADER => {
            if let Ok(h) = ContentHeader::decode(f.payload.clone()) {
                assert!(h.properties.len() >= 2);
                let _ = BasicProperties::decode(h.properties);
            }
        }
        _ => {}
    }
}

fn encode(m: &Method) -> Bytes {
    let mut b = BytesMut::new();
    m.encode(&mut b);
    b.freeze()
}

fn check_method(m: &Method, channel: u16, data: &[u8]) {
    let _ = (m.name(), m.has_content());
    assert_eq!(
        warren_protocol::methods::method_name(m.class_id(), m.method_id()),
        m.name()
    );
    let once = encode(m);
    let back = Method::decode(once.clone()).expect("an encoded method decodes");
    // Compare the encodings as well as the values: a float NaN in an arguments table is not
    // equal to itself, but its bits are.
    assert_eq!(
        encode(&back),
        once,
        "encode(decode(encode(m))) != encode(m)"
    );
    if back != *m {
        assert_eq!(
            format!("{back:?}"),
            format!("{m:?}"),
            "decode(encode(m)) != m"
        );
    }
    // Framing a method and parsing it back gives the same payload.
    let mut framed = BytesMut::new();
    write_method(&mut framed, channel, m);
    let f = parse_frame(&mut framed, 0).unwrap().expect("a whole frame");
    assert_eq!(
        (f.kind, f.channel, &f.payload),
        (FRAME_METHOD, channel, &once)
    );
    assert!(framed.is_empty());
    // The hand-written deliver path must write exactly what the generic one writes.
    if let Method::BasicDeliver(d) = m {
        let body = &data[..data.len().min(9000)];
        let props = [0x10, 0x00, 2];
        for frame_max in [FRAME_MIN_SIZE, 131072] {
            let mut fast = BytesMut::new();
            write_deliver(
                &mut fast,
                channel,
                &d.consumer_tag,
                d.delivery_tag,
                d.redelivered,
                &d.exchange,
                &d.routing_key,
                &props,
                body,
                frame_max,
            );
            let mut slow = BytesMut::new();
            write_method(&mut slow, channel, m);
            write_content(&mut slow, channel, &props, body, frame_max);
            assert_eq!(
                fast, slow,
                "write_deliver differs from write_method + write_content"
            );
            // And every frame written respects frame_max.
            while let Some(f) = parse_frame(&mut fast, frame_max).expect("written frames parse") {
                let _ = f;
            }
            assert!(fast.is_empty());
        }
    }
}
