//! The AMQP handshake of a new connection: protocol header, connection.start / start-ok
//! (authentication), tune / tune-ok (frame_max, channel_max, heartbeat), open (vhost access
//! and connection limits). A refused handshake is answered here, before the connection exists.

use crate::connection::{ConnectionError, PRODUCT, VERSION};
use crate::ServerConfig;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_broker::{Broker, VHost};
use warren_protocol::constants::*;
use warren_protocol::frame::{parse_frame, Frame};
use warren_protocol::methods::*;
use warren_protocol::{FieldTable, FieldValue, Method};

pub(crate) struct Handshake {
    pub(crate) user: String,
    pub(crate) vhost: Arc<VHost>,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) heartbeat: u16,
    pub(crate) cancel_notify: bool,
    /// The client announced the connection.blocked capability.
    pub(crate) blocked_notify: bool,
    pub(crate) access: warren_broker::auth::AccessContext,
    pub(crate) slot: warren_broker::auth::ConnectionSlot,
    pub(crate) client_properties: Vec<(String, String)>,
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "connection.blocked",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(c, true);
    }
    let mut p = FieldTable::new();
    p.insert("product", PRODUCT);
    p.insert("version", VERSION);
    p.insert("platform", "Rust");
    p.insert("copyright", "Warren contributors");
    p.insert(
        "information",
        "A RabbitMQ-compatible AMQP 0-9-1 broker, see https://www.rabbitmq.com/docs",
    );
    p.insert("cluster_name", "warren");
    p.insert("capabilities", caps);
    p
}

async fn write_frames(
    wr: &mut (impl AsyncWrite + Unpin),
    f: impl FnOnce(&mut BytesMut),
) -> std::io::Result<()> {
    let mut b = BytesMut::new();
    f(&mut b);
    wr.write_all(&b).await
}

/// Ends a handshake that failed: connection.close with the error (code 0: none, the client
/// did not ask for one), then the socket is shut.
async fn refuse(wr: &mut (impl AsyncWrite + Unpin), e: ConnectionError) {
    if e.code != 0 {
        let close = ConnectionClose {
            reply_code: e.code,
            reply_text: e.text.into(),
            class_id: e.class_id,
            method_id: e.method_id,
        };
        let _ = send_method(wr, close).await;
    }
    let _ = wr.shutdown().await;
}

async fn send_method(
    wr: &mut (impl AsyncWrite + Unpin),
    m: impl Into<Method>,
) -> std::io::Result<()> {
    let m = m.into();
    write_frames(wr, |b| warren_protocol::frame::write_method(b, 0, &m)).await
}

/// Reads frames until one complete method on channel 0 arrives.
async fn next_method(
    rd: &mut (impl AsyncRead + Unpin),
    rbuf: &mut BytesMut,
) -> Result<Method, ConnectionError> {
    loop {
        match parse_frame(rbuf, FRAME_MIN_SIZE.max(131072)) {
            Ok(Some(Frame {
                kind: FRAME_HEARTBEAT,
                ..
            })) => continue,
            Ok(Some(Frame {
                kind: FRAME_METHOD,
                channel: 0,
                payload,
            })) => {
                return Method::decode(payload).map_err(|e| ConnectionError::new(SYNTAX_ERROR, e));
            }
            Ok(Some(f)) => {
                return Err(ConnectionError::new(
                    COMMAND_INVALID,
                    format!(
                        "unexpected frame type {} on channel {} during the handshake",
                        f.kind, f.channel
                    ),
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectionError::new(FRAME_ERROR, e)),
        }
        rbuf.reserve(4096);
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => {
                return Err(ConnectionError::new(
                    CONNECTION_FORCED,
                    "socket closed during handshake",
                ))
            }
            Ok(_) => {}
        }
    }
}

/// The handshake. `Ok(None)` means the connection was refused and is already answered.
pub(crate) async fn handshake(
    rd: &mut (impl AsyncRead + Unpin),
    wr: &mut (impl AsyncWrite + Unpin),
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: &Arc<Broker>,
    config: &ServerConfig,
) -> std::io::Result<Option<Handshake>> {
    while rbuf.len() < 8 {
        if rd.read_buf(rbuf).await? == 0 {
            return Ok(None);
        }
        // A client that sends a different protocol header gets ours back at once.
        if rbuf.len() < 8 && !PROTOCOL_HEADER.starts_with(&rbuf[..]) {
            break;
        }
    }
    if rbuf.len() < 8 || &rbuf[..8] != PROTOCOL_HEADER {
        tracing::warn!(%peer, "closing connection: bad AMQP protocol header {:?}", &rbuf[..rbuf.len().min(8)]);
        wr.write_all(PROTOCOL_HEADER).await?;
        let _ = wr.shutdown().await;
        return Ok(None);
    }
    let _ = rbuf.split_to(8);
    send_method(
        wr,
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        },
    )
    .await?;

    let result = async {
        let start_ok = match next_method(rd, rbuf).await? {
            Method::ConnectionStartOk(s) => s,
            other => {
                return Err(ConnectionError::new(
                    COMMAND_INVALID,
                    format!("expected connection.start_ok, got {}", other.name()),
                ))
            }
        };
        let caps = match start_ok.client_properties.get("capabilities") {
            Some(FieldValue::Table(t)) => t.clone(),
            _ => FieldTable::new(),
        };
        let cap = |name: &str| {
            caps.get(name)
                .and_then(FieldValue::as_bool)
                .unwrap_or(false)
        };
        let (user, pass) = parse_credentials(&start_ok.mechanism, start_ok.response.as_bytes())?;
        let loopback = peer.ip().is_loopback() && !config.peers_are_remote;
        if let Err(e) = broker.authenticate(&user, &pass, loopback) {
            tracing::warn!(%peer, user = %user, "authentication failed: {}", e.text);
            if cap("authentication_failure_close") {
                return Err(e.on(0, 0));
            }
            return Err(ConnectionError::new(0, "authentication failed"));
        }
        Ok((
            user,
            cap("consumer_cancel_notify"),
            cap("connection.blocked"),
            start_ok.client_properties,
        ))
    }
    .await;
    let (user, cancel_notify, blocked_notify, client_props) = match result {
        Ok(v) => v,
        Err(e) => {
            refuse(wr, e).await;
            return Ok(None);
        }
    };

    send_method(
        wr,
        ConnectionTune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        },
    )
    .await?;
    let result = async {
        let tune_ok = match next_method(rd, rbuf).await? {
            Method::ConnectionTuneOk(t) => t,
            other => {
                return Err(ConnectionError::new(
                    COMMAND_INVALID,
                    format!("expected connection.tune_ok, got {}", other.name()),
                ))
            }
        };
        let frame_max = match tune_ok.frame_max {
            0 => config.frame_max,
            f if f < FRAME_MIN_SIZE => {
                return Err(ConnectionError::new(
                    NOT_ALLOWED,
                    format!("frame_max={f} < {FRAME_MIN_SIZE} min size"),
                ))
            }
            f if f > config.frame_max => {
                return Err(ConnectionError::new(
                    NOT_ALLOWED,
                    format!("frame_max={f} > {} max size", config.frame_max),
                ))
            }
            f => f,
        };
        let channel_max = match tune_ok.channel_max {
            0 => config.channel_max,
            c => c.min(config.channel_max),
        };
        let open = match next_method(rd, rbuf).await? {
            Method::ConnectionOpen(o) => o,
            other => {
                return Err(ConnectionError::new(
                    COMMAND_INVALID,
                    format!("expected connection.open, got {}", other.name()),
                ))
            }
        };
        // RabbitMQ's checks and texts: the vhost exists and the user has permissions there,
        // then the node, vhost and user connection limits.
        let vhost_name = open.virtual_host.as_str();
        let (class_id, method_id) = (ConnectionOpen::CLASS_ID, ConnectionOpen::METHOD_ID);
        let access = broker
            .vhost_access(&user, vhost_name)
            .map_err(|e| e.on(class_id, method_id))?;
        let slot = broker
            .acquire_connection(&user, vhost_name, config.connection_max)
            .map_err(|e| e.on(class_id, method_id))?;
        let vhost = broker.vhost(vhost_name).ok_or_else(|| {
            ConnectionError::new(NOT_ALLOWED, format!("vhost {vhost_name} not found"))
        })?;
        Ok((
            frame_max,
            channel_max,
            tune_ok.heartbeat,
            vhost,
            access,
            slot,
        ))
    }
    .await;
    match result {
        Ok((frame_max, channel_max, heartbeat, vhost, access, slot)) => Ok(Some(Handshake {
            user,
            vhost,
            access,
            slot,
            blocked_notify,
            frame_max,
            channel_max,
            heartbeat,
            cancel_notify,
            client_properties: client_props
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.to_string(), s.to_string())))
                .collect(),
        })),
        Err(e) => {
            tracing::warn!(%peer, "closing connection: {}", e.text);
            refuse(wr, e).await;
            Ok(None)
        }
    }
}

/// Username and password from a PLAIN or AMQPLAIN response.
fn parse_credentials(
    mechanism: &str,
    response: &[u8],
) -> Result<(String, String), ConnectionError> {
    use warren_protocol::sasl::{parse_response, SaslError};
    parse_response(mechanism, response).map_err(|e| match e {
        SaslError::Malformed(_) => ConnectionError::new(ACCESS_REFUSED, e),
        SaslError::UnknownMechanism(_) => ConnectionError::new(COMMAND_INVALID, e),
    })
}
