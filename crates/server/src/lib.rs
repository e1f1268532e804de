//! Warren's AMQP 0-9-1 server: the TCP listener, one reader task and one writer task per
//! connection, and the connection and channel state machines that turn commands into broker
//! calls and broker events into frames. This is the one place where a broker error becomes a
//! `channel.close` or `connection.close`.
//!
//! Layout:
//! - [`outbox`]: the connection's shared write buffer, drained by the writer task.
//! - `handshake`: protocol header, start/start-ok (authentication), tune, open.
//! - [`connection`]: the read loop, frame dispatch, heartbeats, flow control, connection-level
//!   errors, cleanup.
//! - `writer`: the writer task (outbox to socket, heartbeats when idle).
//! - `heartbeat_grid`: heartbeat deadlines rounded to a grid all connections share.
//! - [`channel`]: the per-channel method handlers (exchange, queue, basic, confirm, tx).
//! - `channel_table`: a connection's open channels by number (any number, `channel_max` of them).
//! - [`security`]: a connection's user, permission checks, limits and alarm blocking.
//! - [`alarms`]: the memory and disk monitor behind the resource alarms.
//! - [`tls`]: the AMQPS listener (rustls).

pub mod alarms;
pub mod channel;
mod channel_table;
pub mod connection;
mod handshake;
mod heartbeat_grid;
pub mod outbox;
pub mod security;
pub mod tls;
mod writer;

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_broker::Broker;

/// Protocol settings, with RabbitMQ's defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Heartbeat timeout the server proposes, in seconds (0 disables).
    pub heartbeat: u16,
    pub frame_max: u32,
    pub channel_max: u16,
    /// Largest message body accepted (RabbitMQ 4's default: 16 MiB).
    pub max_message_size: u64,
    /// Time a new socket has to complete the AMQP handshake.
    pub handshake_timeout: Duration,
    /// Consumer delivery-acknowledgement timeout (None disables).
    pub consumer_timeout: Option<Duration>,
    /// What happens to a consumer that times out.
    pub consumer_timeout_action: ConsumerTimeoutAction,
    /// Treat every peer as remote (tests of loopback-only users).
    pub peers_are_remote: bool,
    /// Most client connections on this node (RabbitMQ's `connection_max`; None: no limit).
    pub connection_max: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            heartbeat: 60,
            frame_max: 131072,
            channel_max: 2047,
            max_message_size: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            consumer_timeout: Some(Duration::from_millis(1_800_000)),
            consumer_timeout_action: ConsumerTimeoutAction::CloseChannel,
            peers_are_remote: false,
            connection_max: None,
        }
    }
}

/// What to do with a consumer that holds a delivery unacknowledged past its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerTimeoutAction {
    /// RabbitMQ's behaviour: close the channel with 406 PRECONDITION_FAILED.
    CloseChannel,
    /// Cancel only that consumer (basic.cancel for clients that announce
    /// consumer_cancel_notify) and requeue its unacked messages.
    Cancel,
}

/// Accepts connections until `shutdown` turns true, then closes every connection with
/// 320 CONNECTION_FORCED.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let broker = broker.clone();
                    let config = config.clone();
                    tokio::spawn(async move { connection::run(stream, peer, broker, config).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
    for c in broker.connections.list() {
        c.closer.force_close("shutdown");
    }
}
