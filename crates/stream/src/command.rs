//! The stream protocol's commands as the client sends them (PROTOCOL.adoc, "Commands"):
//! their keys, and [`Request::decode`] from a frame. A response's key is its request's with
//! the top bit set.

use crate::frame::{DecodeError, Decoder};
use bytes::Bytes;

pub mod key {
    pub const DECLARE_PUBLISHER: u16 = 0x01;
    pub const PUBLISH: u16 = 0x02;
    pub const PUBLISH_CONFIRM: u16 = 0x03;
    pub const PUBLISH_ERROR: u16 = 0x04;
    pub const QUERY_PUBLISHER_SEQUENCE: u16 = 0x05;
    pub const DELETE_PUBLISHER: u16 = 0x06;
    pub const SUBSCRIBE: u16 = 0x07;
    pub const DELIVER: u16 = 0x08;
    pub const CREDIT: u16 = 0x09;
    pub const STORE_OFFSET: u16 = 0x0a;
    pub const QUERY_OFFSET: u16 = 0x0b;
    pub const UNSUBSCRIBE: u16 = 0x0c;
    pub const CREATE: u16 = 0x0d;
    pub const DELETE: u16 = 0x0e;
    pub const METADATA: u16 = 0x0f;
    pub const METADATA_UPDATE: u16 = 0x10;
    pub const PEER_PROPERTIES: u16 = 0x11;
    pub const SASL_HANDSHAKE: u16 = 0x12;
    pub const SASL_AUTHENTICATE: u16 = 0x13;
    pub const TUNE: u16 = 0x14;
    pub const OPEN: u16 = 0x15;
    pub const CLOSE: u16 = 0x16;
    pub const HEARTBEAT: u16 = 0x17;
    pub const ROUTE: u16 = 0x18;
    pub const PARTITIONS: u16 = 0x19;
    pub const CONSUMER_UPDATE: u16 = 0x1a;
    pub const EXCHANGE_COMMAND_VERSIONS: u16 = 0x1b;
    pub const STREAM_STATS: u16 = 0x1c;
    pub const CREATE_SUPER_STREAM: u16 = 0x1d;
    pub const DELETE_SUPER_STREAM: u16 = 0x1e;
    /// The bit that makes a key a response's.
    pub const RESPONSE: u16 = 0x8000;
}

/// Where a subscription starts (the protocol's OffsetType and Offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpecification {
    First,
    Last,
    Next,
    Offset(u64),
    Timestamp(i64),
}

/// One publishing id's message(s) in a publish frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedMessage {
    pub publishing_id: u64,
    /// Publish version 2's filter value.
    pub filter_value: Option<String>,
    pub body: PublishedBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishedBody {
    /// One message.
    Simple(Bytes),
    /// A sub-entry batch: `count` messages, each `u32 size | bytes`, compressed with
    /// `compression` (0: none).
    SubEntries {
        compression: u8,
        count: u16,
        uncompressed_len: u32,
        data: Bytes,
    },
}

/// A command from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    PeerProperties {
        correlation_id: u32,
        properties: Vec<(String, String)>,
    },
    SaslHandshake {
        correlation_id: u32,
    },
    SaslAuthenticate {
        correlation_id: u32,
        mechanism: String,
        data: Bytes,
    },
    Tune {
        frame_max: u32,
        heartbeat: u32,
    },
    Open {
        correlation_id: u32,
        vhost: String,
    },
    Close {
        correlation_id: u32,
        code: u16,
        reason: String,
    },
    /// The client's answer to our close.
    CloseResponse {
        correlation_id: u32,
        code: u16,
    },
    Heartbeat,
    DeclarePublisher {
        correlation_id: u32,
        publisher_id: u8,
        reference: String,
        stream: String,
    },
    Publish {
        publisher_id: u8,
        messages: Vec<PublishedMessage>,
    },
    QueryPublisherSequence {
        correlation_id: u32,
        reference: String,
        stream: String,
    },
    DeletePublisher {
        correlation_id: u32,
        publisher_id: u8,
    },
    Subscribe {
        correlation_id: u32,
        subscription_id: u8,
        stream: String,
        offset: OffsetSpecification,
        credit: u16,
        properties: Vec<(String, String)>,
    },
    Credit {
        subscription_id: u8,
        credit: u16,
    },
    StoreOffset {
        reference: String,
        stream: String,
        offset: u64,
    },
    QueryOffset {
        correlation_id: u32,
        reference: String,
        stream: String,
    },
    Unsubscribe {
        correlation_id: u32,
        subscription_id: u8,
    },
    Create {
        correlation_id: u32,
        stream: String,
        arguments: Vec<(String, String)>,
    },
    Delete {
        correlation_id: u32,
        stream: String,
    },
    Metadata {
        correlation_id: u32,
        streams: Vec<String>,
    },
    Route {
        correlation_id: u32,
        routing_key: String,
        super_stream: String,
    },
    Partitions {
        correlation_id: u32,
        super_stream: String,
    },
    /// A super stream: a direct exchange and its partition streams, each bound with its
    /// binding key (RabbitMQ 3.13).
    CreateSuperStream {
        correlation_id: u32,
        name: String,
        partitions: Vec<String>,
        binding_keys: Vec<String>,
        arguments: Vec<(String, String)>,
    },
    DeleteSuperStream {
        correlation_id: u32,
        name: String,
    },
    /// The answer to a consumer update (single active consumer): where the subscription that
    /// became active starts (None: where it subscribed).
    ConsumerUpdateResponse {
        correlation_id: u32,
        code: u16,
        offset: Option<OffsetSpecification>,
    },
    ExchangeCommandVersions {
        correlation_id: u32,
        versions: Vec<(u16, u16, u16)>,
    },
    StreamStats {
        correlation_id: u32,
        stream: String,
    },
    /// A request Warren does not know: answered with "unknown frame" if it has a
    /// correlation id.
    Unknown {
        key: u16,
        version: u16,
        correlation_id: Option<u32>,
    },
}

impl Request {
    /// Decodes a frame (its size already taken off).
    pub fn decode(frame: Bytes) -> Result<Request, DecodeError> {
        use key::*;
        let mut d = Decoder::new(frame);
        let k = d.u16("key")?;
        let version = d.u16("version")?;
        Ok(match k {
            PEER_PROPERTIES => Request::PeerProperties {
                correlation_id: d.u32("correlation id")?,
                properties: d.string_map("peer properties")?,
            },
            SASL_HANDSHAKE => Request::SaslHandshake {
                correlation_id: d.u32("correlation id")?,
            },
            SASL_AUTHENTICATE => Request::SaslAuthenticate {
                correlation_id: d.u32("correlation id")?,
                mechanism: d.string("mechanism")?,
                data: d.bytes("SASL data")?,
            },
            TUNE | 0x8014 => Request::Tune {
                frame_max: d.u32("frame max")?,
                heartbeat: d.u32("heartbeat")?,
            },
            OPEN => Request::Open {
                correlation_id: d.u32("correlation id")?,
                vhost: d.string("virtual host")?,
            },
            CLOSE => Request::Close {
                correlation_id: d.u32("correlation id")?,
                code: d.u16("closing code")?,
                reason: d.string("closing reason")?,
            },
            0x8016 => Request::CloseResponse {
                correlation_id: d.u32("correlation id")?,
                code: d.u16("response code")?,
            },
            HEARTBEAT => Request::Heartbeat,
            DECLARE_PUBLISHER => Request::DeclarePublisher {
                correlation_id: d.u32("correlation id")?,
                publisher_id: d.u8("publisher id")?,
                reference: d.string("publisher reference")?,
                stream: d.string("stream")?,
            },
            PUBLISH => {
                let publisher_id = d.u8("publisher id")?;
                let n = d.count("published messages")?;
                let mut messages = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let publishing_id = d.u64("publishing id")?;
                    let filter_value = if version >= 2 {
                        Some(d.string("filter value")?)
                    } else {
                        None
                    };
                    messages.push(PublishedMessage {
                        publishing_id,
                        filter_value,
                        body: published_body(&mut d)?,
                    });
                }
                Request::Publish {
                    publisher_id,
                    messages,
                }
            }
            QUERY_PUBLISHER_SEQUENCE => Request::QueryPublisherSequence {
                correlation_id: d.u32("correlation id")?,
                reference: d.string("publisher reference")?,
                stream: d.string("stream")?,
            },
            DELETE_PUBLISHER => Request::DeletePublisher {
                correlation_id: d.u32("correlation id")?,
                publisher_id: d.u8("publisher id")?,
            },
            SUBSCRIBE => {
                let correlation_id = d.u32("correlation id")?;
                let subscription_id = d.u8("subscription id")?;
                let stream = d.string("stream")?;
                let Some(offset) = offset_specification(&mut d)? else {
                    return Ok(Request::Unknown {
                        key: k,
                        version,
                        correlation_id: Some(correlation_id),
                    });
                };
                let credit = d.u16("credit")?;
                let properties = if d.remaining() > 0 {
                    d.string_map("subscription properties")?
                } else {
                    Vec::new()
                };
                Request::Subscribe {
                    correlation_id,
                    subscription_id,
                    stream,
                    offset,
                    credit,
                    properties,
                }
            }
            CREDIT => Request::Credit {
                subscription_id: d.u8("subscription id")?,
                credit: d.u16("credit")?,
            },
            STORE_OFFSET => Request::StoreOffset {
                reference: d.string("reference")?,
                stream: d.string("stream")?,
                offset: d.u64("offset")?,
            },
            QUERY_OFFSET => Request::QueryOffset {
                correlation_id: d.u32("correlation id")?,
                reference: d.string("reference")?,
                stream: d.string("stream")?,
            },
            UNSUBSCRIBE => Request::Unsubscribe {
                correlation_id: d.u32("correlation id")?,
                subscription_id: d.u8("subscription id")?,
            },
            CREATE => Request::Create {
                correlation_id: d.u32("correlation id")?,
                stream: d.string("stream")?,
                arguments: d.string_map("arguments")?,
            },
            DELETE => Request::Delete {
                correlation_id: d.u32("correlation id")?,
                stream: d.string("stream")?,
            },
            METADATA => {
                let correlation_id = d.u32("correlation id")?;
                let streams = strings(&mut d, "streams")?;
                Request::Metadata {
                    correlation_id,
                    streams,
                }
            }
            ROUTE => Request::Route {
                correlation_id: d.u32("correlation id")?,
                routing_key: d.string("routing key")?,
                super_stream: d.string("super stream")?,
            },
            PARTITIONS => Request::Partitions {
                correlation_id: d.u32("correlation id")?,
                super_stream: d.string("super stream")?,
            },
            CREATE_SUPER_STREAM => Request::CreateSuperStream {
                correlation_id: d.u32("correlation id")?,
                name: d.string("super stream")?,
                partitions: strings(&mut d, "partitions")?,
                binding_keys: strings(&mut d, "binding keys")?,
                arguments: if d.remaining() > 0 {
                    d.string_map("arguments")?
                } else {
                    Vec::new()
                },
            },
            DELETE_SUPER_STREAM => Request::DeleteSuperStream {
                correlation_id: d.u32("correlation id")?,
                name: d.string("super stream")?,
            },
            0x801a => {
                let correlation_id = d.u32("correlation id")?;
                let code = d.u16("response code")?;
                let offset = if d.remaining() >= 2 {
                    offset_specification(&mut d)?
                } else {
                    None
                };
                Request::ConsumerUpdateResponse {
                    correlation_id,
                    code,
                    offset,
                }
            }
            EXCHANGE_COMMAND_VERSIONS => {
                let correlation_id = d.u32("correlation id")?;
                let n = d.count("commands")?;
                let mut versions = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    versions.push((d.u16("key")?, d.u16("min")?, d.u16("max")?));
                }
                Request::ExchangeCommandVersions {
                    correlation_id,
                    versions,
                }
            }
            STREAM_STATS => Request::StreamStats {
                correlation_id: d.u32("correlation id")?,
                stream: d.string("stream")?,
            },
            _ => Request::Unknown {
                key: k,
                version,
                // Client requests carry a correlation id; a frame too short has none.
                correlation_id: if k & key::RESPONSE == 0 {
                    d.u32("correlation id").ok()
                } else {
                    None
                },
            },
        })
    }
}

/// One published entry: a simple message (`0 | u31 size | bytes`) or a sub-entry batch
/// (`1 | compression (3 bits) | reserved (4) | count u16 | uncompressed u32 | size u32 | data`).
/// An array of strings (a count, then each).
fn strings(d: &mut Decoder, what: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = d.count(what)?;
    let mut v = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        v.push(d.string(what)?);
    }
    Ok(v)
}

/// An offset specification (its type, then its value if it has one); None for an unknown type.
fn offset_specification(d: &mut Decoder) -> Result<Option<OffsetSpecification>, DecodeError> {
    Ok(Some(match d.u16("offset type")? {
        1 => OffsetSpecification::First,
        2 => OffsetSpecification::Last,
        3 => OffsetSpecification::Next,
        4 => OffsetSpecification::Offset(d.u64("offset")?),
        5 => OffsetSpecification::Timestamp(d.i64("timestamp")?),
        _ => return Ok(None),
    }))
}

fn published_body(d: &mut Decoder) -> Result<PublishedBody, DecodeError> {
    let flags = d.u8("entry type")?;
    if flags & 0x80 == 0 {
        let b = [
            flags,
            d.u8("entry size")?,
            d.u8("entry size")?,
            d.u8("entry size")?,
        ];
        let n = u32::from_be_bytes(b) as usize;
        return Ok(PublishedBody::Simple(d.take_bytes(n, "message")?));
    }
    let compression = (flags >> 4) & 0x7;
    let count = d.u16("sub-entry count")?;
    let uncompressed_len = d.u32("uncompressed size")?;
    let size = d.u32("sub-entry size")? as usize;
    Ok(PublishedBody::SubEntries {
        compression,
        count,
        uncompressed_len,
        data: d.take_bytes(size, "sub-entries")?,
    })
}

/// The messages of an uncompressed sub-entry batch: `u32 size | bytes` each.
pub fn sub_entries(data: &Bytes, count: u16) -> Result<Vec<Bytes>, DecodeError> {
    let mut d = Decoder::new(data.clone());
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        out.push(d.bytes("sub-entry")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuf;

    fn decode(w: FrameBuf) -> Request {
        let mut b = w.buf;
        let f = crate::frame::next_frame(&mut b, 0).unwrap().unwrap();
        Request::decode(f).unwrap()
    }

    #[test]
    fn publish_simple_and_sub_entries() {
        let mut w = FrameBuf::default();
        w.frame(key::PUBLISH, 1, |w| {
            w.u8(3);
            w.u32(2);
            w.u64(10);
            w.bytes(b"one");
            w.u64(11);
            // Sub-entry batch, no compression, two messages.
            let mut inner = FrameBuf::default();
            inner.bytes(b"a");
            inner.bytes(b"bc");
            w.u8(0x80);
            w.u16(2);
            w.u32(inner.len() as u32);
            w.u32(inner.len() as u32);
            w.raw(&inner.buf);
        });
        match decode(w) {
            Request::Publish {
                publisher_id,
                messages,
            } => {
                assert_eq!(publisher_id, 3);
                assert_eq!(messages.len(), 2);
                assert_eq!(
                    messages[0].body,
                    PublishedBody::Simple(Bytes::from_static(b"one"))
                );
                match &messages[1].body {
                    PublishedBody::SubEntries {
                        compression,
                        count,
                        data,
                        ..
                    } => {
                        assert_eq!((*compression, *count), (0, 2));
                        let m = sub_entries(data, *count).unwrap();
                        assert_eq!((&m[0][..], &m[1][..]), (&b"a"[..], &b"bc"[..]));
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let mut w = FrameBuf::default();
        w.frame(key::PUBLISH, 1, |w| {
            w.u8(1);
            w.u32(1);
            w.u64(1);
            w.u32(1000);
        });
        let mut b = w.buf;
        let f = crate::frame::next_frame(&mut b, 0).unwrap().unwrap();
        assert!(Request::decode(f).is_err());
        assert!(Request::decode(Bytes::from_static(&[0])).is_err());
    }
}
