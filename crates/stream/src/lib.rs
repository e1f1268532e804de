//! RabbitMQ's stream protocol (its `rabbitmq_stream` plugin, port 5552) on Warren's streams,
//! so stream clients (Rust `rabbitmq-stream-client`, Python `rstream`, the Java and Go
//! clients) work unmodified. A stream is the same log whichever protocol writes or reads
//! it (`warren_broker::stream`): AMQP 0-9-1 messages are delivered here as AMQP 1.0
//! messages, and messages published here are read over 0-9-1.
//!
//! Layout (the reference is RabbitMQ's `deps/rabbitmq_stream/docs/PROTOCOL.adoc`):
//! - [`frame`]: framing and primitive types (decode from `Bytes`, encode into frames).
//! - [`command`]: the client's commands, decoded.
//! - [`response`]: response codes, and the one place where errors become them.
//! - [`chunk`]: delivered chunks in osiris' format, with their CRC.
//! - [`compression`]: compressed sub-entry batches (gzip), decompressed on publish.
//! - `connection`: one connection's task: the read loop, dispatch, the writer, heartbeats,
//!   cleanup.
//! - `handshake`: peer properties, SASL PLAIN, tune, open, close, heartbeat.
//! - `streams`: create, delete, metadata, stream statistics, command versions.
//! - `super_streams`: create and delete super streams, route and partitions.
//! - `publish`: declare/delete publisher, publish (with sub-entry batches), confirms and
//!   errors after the group commit, deduplication, query publisher sequence.
//! - `consume`: subscribe with offset specifications, credit, deliver, unsubscribe, store
//!   and query offset, single active consumers (consumer updates).
//! - this file: [`StreamConfig`], and the listeners: [`serve`] (TCP) and [`serve_tls`].

pub mod chunk;
pub mod command;
pub mod compression;
mod connection;
mod consume;
pub mod frame;
mod handshake;
mod publish;
pub mod response;
mod streams;
mod super_streams;

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_broker::Broker;

/// The stream listener's settings, with RabbitMQ's defaults.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Largest frame the server accepts after `open` (RabbitMQ's `stream.frame_max`).
    pub frame_max: u32,
    /// Largest frame before `open` (RabbitMQ's `stream.initial_frame_max`).
    pub initial_frame_max: u32,
    /// Heartbeat the server proposes, seconds (0: none).
    pub heartbeat: u32,
    /// Host given to clients in `metadata` and `open` (`stream.advertised_host`); by
    /// default the address the client connected to.
    pub advertised_host: Option<String>,
    /// Port given to clients (`stream.advertised_port`); by default the listener's.
    pub advertised_port: Option<u16>,
    /// Time a new socket has to open (peer properties to open).
    pub handshake_timeout: Duration,
    /// Treat every peer as remote (tests of loopback-only users).
    pub peers_are_remote: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            frame_max: 1_048_576,
            initial_frame_max: 8192,
            heartbeat: 60,
            advertised_host: None,
            advertised_port: None,
            handshake_timeout: Duration::from_secs(10),
            peers_are_remote: false,
        }
    }
}

/// RabbitMQ's stream port.
pub const DEFAULT_PORT: u16 = 5552;

/// Accepts stream-protocol connections on `listener` until `stop` turns true; then closes
/// the open ones (with a `close`, as RabbitMQ does at shutdown) and returns.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: Arc<StreamConfig>,
    stop: watch::Receiver<bool>,
) {
    accept_loop(listener, stop, move |socket, peer, stop| {
        connection::run(socket, peer, broker.clone(), config.clone(), stop)
    })
    .await
}

/// As [`serve`], over TLS (RabbitMQ's `stream.listeners.ssl.*` with `ssl_options.*`): the TLS
/// handshake, then the protocol's, each within the handshake timeout.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<Broker>,
    config: Arc<StreamConfig>,
    stop: watch::Receiver<bool>,
) {
    accept_loop(listener, stop, move |socket, peer, stop| {
        let (acceptor, broker, config) = (acceptor.clone(), broker.clone(), config.clone());
        async move {
            let local = socket.local_addr().unwrap_or(peer);
            let handshake = acceptor.accept(socket);
            let tls = match tokio::time::timeout(config.handshake_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return tracing::warn!(%peer, "stream connection: TLS handshake failed: {e}")
                }
                Err(_) => {
                    return tracing::warn!(%peer, "stream connection: TLS handshake not completed within {:?}", config.handshake_timeout)
                }
            };
            let (rd, wr) = tokio::io::split(tls);
            connection::run_io(rd, wr, peer, local, broker, config, stop).await
        }
    })
    .await
}

/// The listener's loop: each accepted socket gets a task from `connect`; when `stop` turns
/// true, the connections (which see it too) get a moment to close.
async fn accept_loop<F, C>(listener: TcpListener, mut stop: watch::Receiver<bool>, connect: F)
where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr, watch::Receiver<bool>) -> C,
    C: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    tasks.spawn(connect(socket, peer, stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    // Each connection sees `stop` and closes itself; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}
