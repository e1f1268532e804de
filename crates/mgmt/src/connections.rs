//! `/api/connections`: the client connections, and closing one (DELETE), which the connection
//! sees as connection.close with 320 CONNECTION_FORCED and the operator's reason.

use crate::channels::channel_json;
use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::rates::History;
use crate::{ApiError, AppState, State};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use warren_broker::connections::ConnectionEntry;
use warren_broker::Broker;

/// RabbitMQ's reason when the request names none.
const DEFAULT_REASON: &str = "Closed via management plugin";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/connections", get(list_all))
        .route("/connections/{name}", get(show).delete(close))
        .route("/connections/{name}/channels", get(channels_of))
        .route("/vhosts/{vhost}/connections", get(list_vhost))
}

pub(crate) fn find_by_id(broker: &Broker, id: u64) -> Option<Arc<ConnectionEntry>> {
    broker.connections.list().into_iter().find(|c| c.id == id)
}

fn find_by_name(state: &AppState, name: &str) -> Result<Arc<ConnectionEntry>, ApiError> {
    state
        .broker
        .connections
        .by_name(name)
        .ok_or(ApiError::NotFound)
}

pub(crate) fn connection_json(state: &AppState, c: &ConnectionEntry, h: History) -> Value {
    let connected_at = c
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let client_properties: Map<String, Value> = c
        .client_properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut v = json!({
        "name": c.name,
        "node": state.node,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "channels": c.channels.lock().len(),
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.heartbeat,
        "connected_at": connected_at,
        "client_properties": client_properties,
        "protocol": c.protocol().name(),
        "auth_mechanism": "PLAIN",
        "ssl": false,
        "state": "running",
        "type": "network",
    });
    // recv_oct, send_oct, ... and their rates, at the top level as RabbitMQ has them.
    if let (Value::Object(m), Value::Object(io)) = (&mut v, state.rates.connection_stats(c, h)) {
        m.extend(io);
    }
    v
}

async fn list_all(state: State, h: History, list: ListQuery) -> Result<Json<Value>, ApiError> {
    list.paged_own(
        state
            .broker
            .connections
            .list()
            .iter()
            .map(|c| connection_json(&state, c, h))
            .collect(),
    )
}

async fn list_vhost(
    state: State,
    Path(vh): Path<String>,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    let conns = state.broker.connections.list();
    list.paged_own(
        conns
            .iter()
            .filter(|c| c.vhost == vh.name)
            .map(|c| connection_json(&state, c, h))
            .collect(),
    )
}

async fn show(state: State, Path(name): Path<String>, h: History) -> Result<Json<Value>, ApiError> {
    let c = find_by_name(&state, &name)?;
    Ok(Json(connection_json(&state, &c, h)))
}

/// DELETE: closes the connection; the reason comes from the `X-Reason` header, as in RabbitMQ.
async fn close(
    state: State,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let c = find_by_name(&state, &name)?;
    close_connection(&c, &headers);
    Ok(StatusCode::NO_CONTENT)
}

/// Closes `c` with the reason of the `X-Reason` header (RabbitMQ's default otherwise).
pub(crate) fn close_connection(c: &ConnectionEntry, headers: &HeaderMap) {
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .filter(|r| !r.is_empty())
        .unwrap_or(DEFAULT_REASON);
    tracing::info!(connection = %c.name, reason, "closing connection at an operator's request");
    c.closer.force_close(reason);
}

async fn channels_of(
    state: State,
    Path(name): Path<String>,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let c = find_by_name(&state, &name)?;
    let mut chans = c.channels.lock().clone();
    chans.sort_by_key(|ch| ch.number);
    Ok(list.unpaged(
        chans
            .iter()
            .map(|ch| channel_json(&state, &c, ch, h))
            .collect(),
    ))
}
