//! The command assembler: a small pure state machine per channel that joins a content-bearing
//! method, its content header and its body frames into one [`Command`].

use crate::codec::DecodeError;
use crate::constants::*;
use crate::error::AmqpError;
use crate::frame::Frame;
use crate::methods::Method;
use crate::properties::ContentHeader;
use bytes::{Bytes, BytesMut};

/// A content header's properties (still encoded) and the whole body.
#[derive(Debug, Clone, PartialEq)]
pub struct Content {
    pub properties: Bytes,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub method: Method,
    pub content: Option<Content>,
}

/// Why frames could not be assembled: an [`AmqpError`] to close with.
pub type AssembleError = AmqpError;

fn decode_error(e: DecodeError) -> AmqpError {
    let code = match e {
        DecodeError::UnknownMethod(..) => COMMAND_INVALID,
        _ => SYNTAX_ERROR,
    };
    AmqpError::new(code, e)
}

/// The most a multi-frame body reserves up front. The announced size is only the peer's word
/// until the frames arrive: reserving all of it let three small frames make the broker allocate
/// up to `max_body` (or abort, past what the allocator can give). Larger bodies grow as they come.
const MAX_RESERVE_AHEAD: u64 = 1 << 20;

/// Where the assembler is. The method waiting for its content is kept aside
/// ([`Assembler::method`]), so that moving between states does not move it: a method is a
/// large value, and a publish passes through three states.
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// A content-bearing method came; its content header is next.
    Header,
    /// The header came; body frames are next.
    Body {
        properties: Bytes,
        remaining: u64,
        first: Option<Bytes>,
        rest: BytesMut,
    },
}

#[derive(Debug, Default)]
pub struct Assembler {
    state: State,
    /// The content-bearing method whose header or body is awaited.
    method: Option<Method>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the assembler is between commands.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// The awaited method's class id (0 if none).
    fn class_id(&self) -> u16 {
        self.method.as_ref().map_or(0, Method::class_id)
    }

    /// Back to idle, the method dropped (after an error).
    fn reset(&mut self) {
        self.state = State::Idle;
        self.method = None;
    }

    /// The awaited method and its content: a command.
    fn complete(&mut self, properties: Bytes, body: Bytes) -> Command {
        self.state = State::Idle;
        Command {
            method: self.method.take().expect("a method awaits its content"),
            content: Some(Content { properties, body }),
        }
    }

    /// Feeds one frame. `max_body` bounds the body size a header may announce; a larger one is
    /// refused before any of it is buffered.
    pub fn push(&mut self, frame: Frame, max_body: u64) -> Result<Option<Command>, AssembleError> {
        match (&mut self.state, frame.kind) {
            (State::Idle, FRAME_METHOD) => {
                let method = Method::decode(frame.payload).map_err(decode_error)?;
                if method.has_content() {
                    self.method = Some(method);
                    self.state = State::Header;
                    Ok(None)
                } else {
                    Ok(Some(Command {
                        method,
                        content: None,
                    }))
                }
            }
            (State::Idle, kind) => Err(AmqpError::new(
                UNEXPECTED_FRAME,
                format!("expected method frame, got non method frame (type {kind}) instead"),
            )),
            (State::Header, FRAME_HEADER) => {
                let class_id = self.class_id();
                let header = match ContentHeader::decode(frame.payload) {
                    Ok(h) => h,
                    Err(e) => {
                        self.reset();
                        return Err(decode_error(e));
                    }
                };
                if header.class_id != class_id {
                    self.reset();
                    return Err(AmqpError::new(
                        UNEXPECTED_FRAME,
                        format!(
                            "expected content header for class {class_id}, got one for class {} instead",
                            header.class_id
                        ),
                    ));
                }
                if header.body_size > max_body {
                    let method_id = self.method.as_ref().map_or(0, Method::method_id);
                    self.reset();
                    return Err(AmqpError::precondition(format!(
                        "message size {} is larger than configured max size {}",
                        header.body_size, max_body
                    ))
                    .on(class_id, method_id));
                }
                if header.body_size == 0 {
                    return Ok(Some(self.complete(header.properties, Bytes::new())));
                }
                self.state = State::Body {
                    properties: header.properties,
                    remaining: header.body_size,
                    first: None,
                    rest: BytesMut::new(),
                };
                Ok(None)
            }
            (State::Header, _) => {
                let class_id = self.class_id();
                self.reset();
                Err(AmqpError::new(
                    UNEXPECTED_FRAME,
                    format!(
                        "expected content header for class {class_id}, got non content header frame instead"
                    ),
                ))
            }
            (
                State::Body {
                    remaining,
                    first,
                    rest,
                    ..
                },
                FRAME_BODY,
            ) => {
                let len = frame.payload.len() as u64;
                if len > *remaining {
                    let remaining = *remaining;
                    self.reset();
                    return Err(AmqpError::new(
                FRAME_ERROR,
                format!("content body frame of {len} bytes exceeds the {remaining} bytes remaining"),
                    ));
                }
                *remaining -= len;
                // A body in one frame stays a zero-copy slice; only multi-frame bodies are joined.
                match (&first, rest.is_empty()) {
                    (None, true) => *first = Some(frame.payload),
                    _ => {
                        if let Some(f) = first.take() {
                            let announced = f.len() as u64 + len + *remaining;
                            rest.reserve(announced.min(MAX_RESERVE_AHEAD) as usize);
                            rest.extend_from_slice(&f);
                        }
                        rest.extend_from_slice(&frame.payload);
                    }
                }
                if *remaining > 0 {
                    return Ok(None);
                }
                let State::Body {
                    properties,
                    first,
                    rest,
                    ..
                } = std::mem::take(&mut self.state)
                else {
                    unreachable!("in the body state");
                };
                let body = first.unwrap_or_else(|| rest.freeze());
                Ok(Some(self.complete(properties, body)))
            }
            (State::Body { .. }, _) => {
                self.reset();
                Err(AmqpError::new(
                    UNEXPECTED_FRAME,
                    "expected content body, got non content body frame instead",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse_frame, write_content, write_method};
    use crate::methods::{BasicPublish, QueueDeclare};

    fn frames(buf: &mut BytesMut) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some(f) = parse_frame(buf, 1 << 20).unwrap() {
            v.push(f);
        }
        v
    }

    #[test]
    fn joins_multi_frame_bodies() {
        let mut out = BytesMut::new();
        let publish: Method = BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        }
        .into();
        write_method(&mut out, 1, &publish);
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        write_content(&mut out, 1, &[0, 0], &body, 4096);
        let mut a = Assembler::new();
        let mut got = None;
        for f in frames(&mut out) {
            if let Some(c) = a.push(f, 1 << 20).unwrap() {
                got = Some(c);
            }
        }
        let c = got.unwrap();
        assert_eq!(c.method, publish);
        assert_eq!(&c.content.unwrap().body[..], &body[..]);
        assert!(a.is_idle());
    }

    #[test]
    fn method_instead_of_header_is_unexpected_frame() {
        let mut out = BytesMut::new();
        write_method(&mut out, 1, &BasicPublish::default().into());
        write_method(&mut out, 1, &QueueDeclare::default().into());
        let mut a = Assembler::new();
        let fs = frames(&mut out);
        let mut it = fs.into_iter();
        assert_eq!(a.push(it.next().unwrap(), 100).unwrap(), None);
        assert_eq!(
            a.push(it.next().unwrap(), 100).unwrap_err().code,
            UNEXPECTED_FRAME
        );
    }

    #[test]
    fn announced_body_size_is_not_reserved_up_front() {
        // A header announcing 2^40 bytes, within a caller's large max_body, then two 1-byte
        // body frames: joining them used to reserve the whole announced size (an allocation
        // failure that aborts the process), on the peer's word alone.
        let mut out = BytesMut::new();
        write_method(&mut out, 1, &BasicPublish::default().into());
        let mut a = Assembler::new();
        for f in frames(&mut out) {
            assert_eq!(a.push(f, u64::MAX).unwrap(), None);
        }
        let header = Bytes::from_static(&[0, 60, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            a.push(
                Frame {
                    kind: FRAME_HEADER,
                    channel: 1,
                    payload: header
                },
                u64::MAX
            )
            .unwrap(),
            None
        );
        for _ in 0..2 {
            let body = Frame {
                kind: FRAME_BODY,
                channel: 1,
                payload: Bytes::from_static(b"x"),
            };
            assert_eq!(a.push(body, u64::MAX).unwrap(), None);
        }
        let State::Body { rest, .. } = &a.state else {
            panic!("expected the body state")
        };
        assert_eq!(&rest[..], b"xx");
        assert!(rest.capacity() <= 1 << 20, "reserved {}", rest.capacity());
    }

    #[test]
    fn oversize_body_is_refused_from_the_header() {
        let mut out = BytesMut::new();
        write_method(&mut out, 1, &BasicPublish::default().into());
        write_content(&mut out, 1, &[0, 0], &[0u8; 200], 4096);
        let mut a = Assembler::new();
        let fs = frames(&mut out);
        let mut it = fs.into_iter();
        a.push(it.next().unwrap(), 100).unwrap();
        let e = a.push(it.next().unwrap(), 100).unwrap_err();
        assert_eq!(e.code, PRECONDITION_FAILED);
        assert_eq!((e.class_id, e.method_id), (60, 40));
    }
}
