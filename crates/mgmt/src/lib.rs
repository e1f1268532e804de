//! Warren's HTTP management API: RabbitMQ's paths under `/api` and the JSON shapes its
//! management plugin returns, so that existing tools (rabbitmqadmin, monitoring scripts,
//! `warrenctl`) work against Warren.
//!
//! Layout (one module per resource, as the plugin's `rabbit_mgmt_wm_*`):
//! - [`auth`]: HTTP basic authentication against the broker's users.
//! - [`access`]: what each user may see and do, by its tags and permissions.
//! - [`error`]: [`ApiError`], errors as RabbitMQ returns them (`{"error": …, "reason": …}`).
//! - [`args`]: field tables (queue, exchange and binding arguments) to and from JSON.
//! - [`listing`]: RabbitMQ's list query parameters (`sort`, `columns`, `page`, `name`, …),
//!   applied to every list in one place.
//! - [`overview`]: `/api/overview`, `/api/nodes`, `/api/vhosts`, `/api/whoami`, health checks.
//! - [`queues`], [`exchanges`], [`bindings`]: the topology, listed, declared and deleted.
//! - [`members`]: a quorum queue's Raft group grown and shrunk (`rabbitmq-queues`'
//!   add_member, delete_member, grow, shrink; Warren's own paths).
//! - [`messages`]: getting messages from a queue and publishing to an exchange over HTTP.
//! - [`connections`], [`channels`], [`consumers`]: who is connected and what they hold.
//! - [`stream_protocol`]: `/api/stream/*`, the stream protocol's connections, publishers and
//!   consumers (RabbitMQ's `rabbitmq_stream_management`).
//! - [`users`]: users, permissions, user and vhost limits, vhost deletion.
//! - `policies`: `/api/policies` and `/api/operator-policies`.
//! - [`definitions`]: export and import of the topology in RabbitMQ's definitions format.
//! - [`https`]: the HTTPS listener (RabbitMQ's `management.ssl.*`), next to or instead of the
//!   plain HTTP one.
//! - [`rates`]: the sampler behind `message_stats` rates and their 10 minutes of history (every
//!   `collect_statistics_interval`), and the `msg_rates_age` / `msg_rates_incr` parameters.
//! - [`console`]: the web console at `/` (HTML, CSS and JavaScript embedded from
//!   `console/`), a client of this API.
//! - [`prometheus`]: the Prometheus metrics endpoints (RabbitMQ's `rabbitmq_prometheus`:
//!   `/metrics`, `/metrics/per-object`, `/metrics/detailed`), on a listener of their own.
//!
//! Handlers read the broker through its public accessors and change it through the same vhost
//! operations a client's AMQP methods use, so the rules and reply texts are RabbitMQ's. An
//! object the API declares belongs to no connection (connection id 0).

pub mod access;
pub mod args;
pub mod auth;
pub mod bindings;
pub mod channels;
pub mod connections;
pub mod console;
pub mod consumers;
pub mod definitions;
pub mod error;
pub mod exchanges;
pub mod https;
pub mod listing;
pub mod members;
pub mod messages;
pub mod overview;
mod policies;
pub mod prometheus;
pub mod queues;
pub mod rates;
pub mod stream_protocol;
pub mod users;

pub use error::ApiError;
pub use https::HttpsListener;

use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_broker::Broker;

/// The RabbitMQ version Warren's API answers as (`rabbitmq_version`, `management_version`):
/// tools use it to pick which paths and fields to expect.
pub const RABBITMQ_COMPAT_VERSION: &str = "3.13.0";

/// What the API reports about the node beyond what the broker knows.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The AMQP listeners, for `/api/overview`'s `listeners` (and `warrenctl status`).
    pub amqp_listeners: Vec<SocketAddr>,
    /// The node name (`warren@<hostname>` when empty).
    pub node_name: String,
    /// How often message rates are sampled (RabbitMQ's `collect_statistics_interval`; 5 s
    /// when zero).
    pub stats_interval: std::time::Duration,
}

/// Shared by every handler.
pub struct AppState {
    pub broker: Arc<Broker>,
    pub node: String,
    pub started: Instant,
    pub http_listeners: Vec<SocketAddr>,
    pub https_listener: Option<SocketAddr>,
    pub amqp_listeners: Vec<SocketAddr>,
    /// Message rates (sampled in the background).
    pub rates: Arc<rates::Rates>,
}

pub type State = axum::extract::State<Arc<AppState>>;

/// Where the API is served: plain HTTP, HTTPS, or both, as RabbitMQ's `management.tcp.*` and
/// `management.ssl.*` listeners.
#[derive(Default)]
pub struct Listeners {
    /// Plain HTTP (by default on both loopback families, 127.0.0.1 and ::1).
    pub http: Vec<TcpListener>,
    pub https: Option<HttpsListener>,
}

/// Serves the management API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(listener, broker, Options::default(), shutdown).await
}

/// [`serve`] with [`Options`].
pub async fn serve_with(
    listener: TcpListener,
    broker: Arc<Broker>,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listeners = Listeners {
        http: vec![listener],
        https: None,
    };
    serve_listeners(listeners, broker, options, shutdown).await
}

/// Serves the management API on each of `listeners` until `shutdown` turns true, then lets
/// requests in progress finish and returns.
pub async fn serve_listeners(
    listeners: Listeners,
    broker: Arc<Broker>,
    options: Options,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let node = if options.node_name.is_empty() {
        default_node_name()
    } else {
        options.node_name
    };
    let http_addrs = listeners
        .http
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    let https_addr = match &listeners.https {
        Some(l) => Some(l.listener.local_addr()?),
        None => None,
    };
    let interval = if options.stats_interval.is_zero() {
        std::time::Duration::from_secs(5)
    } else {
        options.stats_interval
    };
    let rates = rates::Rates::new(interval);
    tokio::spawn(rates.clone().run(broker.clone(), shutdown.clone()));
    let state = Arc::new(AppState {
        broker,
        node,
        started: Instant::now(),
        http_listeners: http_addrs.clone(),
        https_listener: https_addr,
        amqp_listeners: options.amqp_listeners,
        rates,
    });
    let app = router(state);
    let https = listeners.https.map(|l| {
        tracing::info!(
            "management API listening on https://{}",
            https_addr.expect("bound")
        );
        tokio::spawn(https::serve(l, app.clone(), shutdown.clone()))
    });
    let mut http = Vec::new();
    for (listener, addr) in listeners.http.into_iter().zip(&http_addrs) {
        tracing::info!("management API listening on http://{addr}");
        let mut shutdown = shutdown.clone();
        let app = app.clone();
        http.push(tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stopped(&mut shutdown).await })
            .await
        }));
    }
    // The first failure is returned; any other is logged here rather than lost.
    let mut result = Ok(());
    let mut failed = |e: std::io::Error, listener: String| {
        if result.is_ok() {
            result = Err(e);
        } else {
            tracing::warn!(%listener, error = %e, "management API listener failed");
        }
    };
    for (h, addr) in http.into_iter().zip(&http_addrs) {
        if let Err(e) = h.await.map_err(std::io::Error::other).and_then(|r| r) {
            failed(e, format!("http://{addr}"));
        }
    }
    if let (Some(h), Some(addr)) = (https, https_addr) {
        if let Err(e) = h.await {
            failed(std::io::Error::other(e), format!("https://{addr}"));
        }
    }
    result
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
}

/// Every `/api` route, behind basic authentication, and the web console at `/`. Unknown
/// paths answer 404 in RabbitMQ's shape.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .merge(overview::routes())
        .merge(queues::routes())
        .merge(members::routes())
        .merge(exchanges::routes())
        .merge(bindings::routes())
        .merge(connections::routes())
        .merge(channels::routes())
        .merge(consumers::routes())
        .merge(stream_protocol::routes())
        .merge(definitions::routes())
        .merge(messages::routes())
        .merge(policies::routes())
        .merge(users::routes())
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            definitions_saved,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_user,
        ));
    Router::new()
        .nest("/api", api)
        .merge(console::routes())
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// A request that changes something answers once the definitions it changed are on disk
/// (a PUT of a queue, a DELETE of a user, …), as the AMQP methods do: a power cut after the
/// answer does not undo it. Reads pass straight through.
async fn definitions_saved(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let response = next.run(req).await;
    if changes && response.status().is_success() {
        if let Some(p) = state.broker.persistence() {
            if !p.definitions_saved().await {
                return axum::response::IntoResponse::into_response(ApiError::Internal(
                    "could not save the definitions to disk (the change is in effect until the broker restarts); check the disk and free space".into(),
                ));
            }
        }
    }
    response
}

/// `warren@<hostname>`, as RabbitMQ's `rabbit@<hostname>`.
pub(crate) fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("warren@{host}")
}

/// A PUT's status as RabbitMQ's API answers it: 201 for a new object, 204 for an existing one.
pub(crate) fn created_or_updated(existed: bool) -> axum::http::StatusCode {
    if existed {
        axum::http::StatusCode::NO_CONTENT
    } else {
        axum::http::StatusCode::CREATED
    }
}

/// RabbitMQ writes the default exchange as `amq.default` in paths, and `""` in JSON.
pub(crate) fn exchange_from_path(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}
