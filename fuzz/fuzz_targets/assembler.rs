//! A channel's frame stream built from arbitrary operations (well-formed methods, headers and
//! bodies mixed with raw frames and frames parsed from raw bytes) pushed through the
//! [`Assembler`]. It must never panic, and every command it completes must carry exactly the
//! body its header announced: the bytes of the body frames, in order.

#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_protocol::assembler::Assembler;
use warren_protocol::constants::*;
use warren_protocol::frame::{parse_frame, Frame};
use warren_protocol::methods::{
    BasicAck, BasicDeliver, BasicGetOk, BasicPublish, BasicReturn, QueueDeclare,
};
use warren_protocol::properties::ContentHeader;
use warren_protocol::Method;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A content-bearing method, well formed.
    Publish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
    },
    Deliver {
        consumer_tag: String,
        delivery_tag: u64,
    },
    GetOk {
        delivery_tag: u64,
        message_count: u32,
    },
    Return {
        reply_code: u16,
        reply_text: String,
    },
    /// A method without content.
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Declare {
        queue: String,
        durable: bool,
    },
    /// A content header for class 60 with a small body size.
    Header {
        body_size: u16,
        properties: Vec<u8>,
    },
    /// A content header for class 60 with any size.
    BigHeader {
        body_size: u64,
        properties: Vec<u8>,
    },
    /// A content header with any class and any size.
    AnyHeader {
        class_id: u16,
        body_size: u64,
        properties: Vec<u8>,
    },
    Body(Vec<u8>),
    Heartbeat,
    Raw {
        kind: u8,
        payload: Vec<u8>,
    },
    /// Bytes parsed as frames, as the connection would from its read buffer.
    Wire(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_body: u8,
    ops: Vec<Op>,
}

/// What the test expects of the command in progress.
#[derive(Default)]
struct Expect {
    announced: Option<u64>,
    body: Vec<u8>,
}

fn method_frame(m: impl Into<Method>) -> Frame {
    let mut b = BytesMut::new();
    m.into().encode(&mut b);
    Frame {
        kind: FRAME_METHOD,
        channel: 1,
        payload: b.freeze(),
    }
}

fn header_frame(class_id: u16, body_size: u64, properties: &[u8]) -> Frame {
    let mut b = BytesMut::new();
    ContentHeader::encode(class_id, body_size, properties, &mut b);
    Frame {
        kind: FRAME_HEADER,
        channel: 1,
        payload: b.freeze(),
    }
}

fn frames(op: Op) -> Vec<Frame> {
    let one = |f| vec![f];
    match op {
        Op::Publish {
            exchange,
            routing_key,
            mandatory,
        } => one(method_frame(BasicPublish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory,
            ..Default::default()
        })),
        Op::Deliver {
            consumer_tag,
            delivery_tag,
        } => one(method_frame(BasicDeliver {
            consumer_tag: consumer_tag.into(),
            delivery_tag,
            ..Default::default()
        })),
        Op::GetOk {
            delivery_tag,
            message_count,
        } => one(method_frame(BasicGetOk {
            delivery_tag,
            message_count,
            ..Default::default()
        })),
        Op::Return {
            reply_code,
            reply_text,
        } => one(method_frame(BasicReturn {
            reply_code,
            reply_text: reply_text.into(),
            ..Default::default()
        })),
        Op::Ack {
            delivery_tag,
            multiple,
        } => one(method_frame(BasicAck {
            delivery_tag,
            multiple,
        })),
        Op::Declare { queue, durable } => one(method_frame(QueueDeclare {
            queue: queue.into(),
            durable,
            ..Default::default()
        })),
        Op::Header {
            body_size,
            properties,
        } => one(header_frame(60, body_size as u64, &properties)),
        Op::BigHeader {
            body_size,
            properties,
        } => one(header_frame(60, body_size, &properties)),
        Op::AnyHeader {
            class_id,
            body_size,
            properties,
        } => one(header_frame(class_id, body_size, &properties)),
        Op::Body(b) => one(Frame {
            kind: FRAME_BODY,
            channel: 1,
            payload: Bytes::from(b),
        }),
        Op::Heartbeat => one(Frame {
            kind: FRAME_HEARTBEAT,
            channel: 0,
            payload: Bytes::new(),
        }),
        Op::Raw { kind, payload } => one(Frame {
            kind,
            channel: 1,
            payload: Bytes::from(payload),
        }),
        Op::Wire(bytes) => {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut v = Vec::new();
            while let Ok(Some(f)) = parse_frame(&mut buf, FRAME_MIN_SIZE) {
                v.push(f);
            }
            v
        }
    }
}

fuzz_target!(|input: Input| {
    // Includes "no limit": a caller that does not bound bodies must still not crash.
    let max_body = match input.max_body % 5 {
        0 => 0,
        1 => 100,
        2 => 16 * 1024 * 1024,
        3 => 1 << 40,
        _ => u64::MAX,
    };
    let mut a = Assembler::new();
    let mut expect = Expect::default();
    for op in input.ops {
        for frame in frames(op) {
            let kind = frame.kind;
            let payload = frame.payload.clone();
            let was_idle = a.is_idle();
            match a.push(frame, max_body) {
                Ok(Some(cmd)) => {
                    assert!(a.is_idle(), "a completed command leaves the assembler idle");
                    assert_eq!(cmd.content.is_some(), cmd.method.has_content());
                    if let Some(content) = cmd.content {
                        if kind == FRAME_HEADER {
                            let h =
                                ContentHeader::decode(payload).expect("accepted header decodes");
                            assert_eq!(h.body_size, 0);
                            assert_eq!(content.properties, h.properties);
                            assert!(content.body.is_empty());
                        } else {
                            assert_eq!(kind, FRAME_BODY);
                            expect.body.extend_from_slice(&payload);
                            let announced = expect.announced.expect("a body follows a header");
                            assert_eq!(
                                content.body.len() as u64,
                                announced,
                                "body size != announced"
                            );
                            assert_eq!(&content.body[..], &expect.body[..], "body bytes differ");
                        }
                    } else {
                        assert!(was_idle && kind == FRAME_METHOD);
                    }
                    expect = Expect::default();
                }
                Ok(None) => match kind {
                    FRAME_METHOD => assert!(was_idle),
                    FRAME_HEADER => {
                        let h = ContentHeader::decode(payload).expect("accepted header decodes");
                        assert!(h.body_size > 0 && h.body_size <= max_body);
                        expect = Expect {
                            announced: Some(h.body_size),
                            body: Vec::new(),
                        };
                    }
                    FRAME_BODY => {
                        expect.body.extend_from_slice(&payload);
                        assert!(
                            (expect.body.len() as u64) < expect.announced.expect("header seen")
                        );
                    }
                    other => panic!("frame type {other} accepted"),
                },
                Err(e) => {
                    assert!(
                        e.code >= 500 || e.code == PRECONDITION_FAILED,
                        "reply code {}",
                        e.code
                    );
                    assert!(!e.text.is_empty());
                    // The channel is closed on error; the assembler starts over.
                    assert!(a.is_idle());
                    expect = Expect::default();
                }
            }
        }
    }
});
