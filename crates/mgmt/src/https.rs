//! The HTTPS listener (RabbitMQ's `management.ssl.*`): TLS (rustls, built by the caller, e.g.
//! with `warren_server::tls::acceptor_for`) in front of the same router as the plain listener.
//!
//! Each connection runs in its own task: the TLS handshake, limited to the listener's handshake
//! timeout, then HTTP/1.1 with hyper. When shutdown is asked, the listener stops accepting, idle
//! connections close, requests in progress finish, and [`serve`] returns once every connection
//! is gone.

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a client has for the TLS handshake unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound socket and the TLS settings to serve the API on it.
pub struct HttpsListener {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
    /// A client that has not finished the TLS handshake by then is disconnected.
    pub handshake_timeout: Duration,
}

impl HttpsListener {
    /// With [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        HttpsListener {
            listener,
            acceptor,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Accepts connections until `shutdown` turns true, then waits for the open ones to finish.
pub(crate) async fn serve(l: HttpsListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let HttpsListener {
        listener,
        acceptor,
        handshake_timeout,
    } = l;
    let mut http = auto::Builder::new(TokioExecutor::new()).http1_only();
    // hyper's header read timeout (30 s) needs a timer.
    http.http1().timer(TokioTimer::new());
    let http = Arc::new(http);
    // Every connection task holds a sender: once all are dropped, every connection is closed.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = Conn {
                        acceptor: acceptor.clone(),
                        handshake_timeout,
                        http: http.clone(),
                        app: app.clone(),
                        shutdown: shutdown.clone(),
                        _open: open_tx.clone(),
                    };
                    tokio::spawn(conn.run(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "management API (https): accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
}

/// What one connection's task needs.
struct Conn {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    http: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    shutdown: watch::Receiver<bool>,
    _open: mpsc::Sender<()>,
}

impl Conn {
    async fn run(mut self, stream: TcpStream, peer: SocketAddr) {
        // Only latency depends on it; the connection works either way.
        let _ = stream.set_nodelay(true);
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream));
        let tls = tokio::select! {
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "management API (https): TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "management API (https): TLS handshake not completed within {:?}", self.handshake_timeout);
                    return;
                }
            },
            _ = crate::stopped(&mut self.shutdown) => return,
        };
        // The peer's address, for the loopback-only users rule (as the plain listener's
        // `ConnectInfo`).
        let service = self.app.map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let conn = self
            .http
            .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = crate::stopped(&mut self.shutdown) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, "management API (https): connection ended: {e}");
        }
    }
}
