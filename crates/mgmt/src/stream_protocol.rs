//! `/api/stream/*`: the stream protocol's connections, publishers and consumers, as RabbitMQ's
//! `rabbitmq_stream_management` plugin lists them (`rabbitmq-streams list_stream_connections`,
//! `list_stream_publishers`, `list_stream_consumers` read these):
//!
//! - `GET /api/stream/connections[/{vhost}]`, `GET|DELETE /api/stream/connections/{vhost}/{name}`
//!   (the same objects as `/api/connections`, whose `protocol` is `stream`), and a
//!   connection's `…/publishers` and `…/consumers`.
//! - `GET /api/stream/publishers[/{vhost}[/{stream}]]`: `publisher_id`, `reference`,
//!   `published`, `confirmed`, `errored`, the stream as `queue` and `connection_details`.
//! - `GET /api/stream/consumers[/{vhost}]`: `subscription_id`, `credits`, `consumed`, `offset`
//!   (the last delivered), `offset_lag`, `active`, `activity_status`, `properties`.
//!
//! - `PUT /api/stream/super-streams/{vhost}/{name}` `{"partitions": 3}` or
//!   `{"binding-keys": "eu,us"}`, with `"arguments"` (the stream protocol's: `max-age`,
//!   `max-length-bytes`, …): a super stream (`rabbitmq-streams add_super_stream`); `DELETE`
//!   (Warren's addition, RabbitMQ's API has none) removes one (`delete_super_stream`).
//!
//! A user who is not a monitor sees only its own connections' objects, as in RabbitMQ.

use crate::access::check_resource;
use crate::auth::AuthUser;
use crate::connections::{close_connection, connection_json};
use crate::error::parse_body;
use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::rates::History;
use crate::{ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use warren_broker::auth::{Access, Resource};
use warren_broker::connections::{ConnectionEntry, StreamClients};
use warren_broker::stream::super_stream::{partitions_for, SuperStreamError};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/stream/connections", get(connections_all))
        .route("/stream/connections/{vhost}", get(connections_vhost))
        .route(
            "/stream/connections/{vhost}/{name}",
            get(connection_show).delete(connection_close),
        )
        .route(
            "/stream/connections/{vhost}/{name}/publishers",
            get(connection_publishers),
        )
        .route(
            "/stream/connections/{vhost}/{name}/consumers",
            get(connection_consumers),
        )
        .route("/stream/publishers", get(publishers_all))
        .route("/stream/publishers/{vhost}", get(publishers_vhost))
        .route(
            "/stream/publishers/{vhost}/{stream}",
            get(publishers_stream),
        )
        .route("/stream/consumers", get(consumers_all))
        .route("/stream/consumers/{vhost}", get(consumers_vhost))
        .route(
            "/stream/super-streams/{vhost}/{name}",
            put(super_stream_create).delete(super_stream_delete),
        )
}

/// The stream-protocol connections (to `vhost`, or all), with their publishers and consumers.
fn stream_connections(
    state: &AppState,
    vhost: Option<&str>,
) -> Vec<(Arc<ConnectionEntry>, Arc<StreamClients>)> {
    let mut conns: Vec<_> = state
        .broker
        .connections
        .list()
        .into_iter()
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .filter_map(|c| c.stream.clone().map(|s| (c, s)))
        .collect();
    conns.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    conns
}

/// The stream-protocol connection `name` to `vhost`.
fn stream_connection(
    state: &AppState,
    vh: &str,
    name: &str,
) -> Result<(Arc<ConnectionEntry>, Arc<StreamClients>), ApiError> {
    let vh = vhost(state, vh)?;
    stream_connections(state, Some(&vh.name))
        .into_iter()
        .find(|(c, _)| c.name == name)
        .ok_or(ApiError::NotFound)
}

fn connection_details(state: &AppState, c: &ConnectionEntry) -> Value {
    json!({
        "name": c.name,
        "user": c.user,
        "node": state.node,
        "peer_port": c.peer.port(),
        "peer_host": c.peer.ip().to_string(),
    })
}

fn publishers_of(state: &AppState, c: &ConnectionEntry, s: &StreamClients) -> Vec<Value> {
    let details = connection_details(state, c);
    s.publishers
        .lock()
        .iter()
        .map(|(id, p)| {
            json!({
                "connection_details": details,
                "queue": {"name": p.stream, "vhost": c.vhost},
                "publisher_id": id,
                "reference": p.reference,
                "published": p.published.load(Ordering::Relaxed),
                "confirmed": p.confirmed.load(Ordering::Relaxed),
                "errored": p.errored.load(Ordering::Relaxed),
            })
        })
        .collect()
}

fn consumers_of(state: &AppState, c: &ConnectionEntry, s: &StreamClients) -> Vec<Value> {
    let details = connection_details(state, c);
    let vh = state.broker.vhost(&c.vhost);
    s.consumers
        .lock()
        .iter()
        .map(|(id, sub)| {
            let offset = *sub.offset.lock();
            // The last offset in the stream now.
            let last = vh
                .as_ref()
                .and_then(|v| v.queue(&sub.stream))
                .and_then(|q| q.stream().and_then(|st| st.offsets().1));
            let lag = match (last, offset) {
                (Some(l), Some(o)) => l.saturating_sub(o),
                (Some(l), None) => l + 1,
                _ => 0,
            };
            let properties: Map<String, Value> = sub
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({
                "connection_details": details,
                "queue": {"name": sub.stream, "vhost": c.vhost},
                "subscription_id": id,
                "credits": sub.credits.available_permits(),
                "consumed": sub.consumed.load(Ordering::Relaxed),
                "offset": offset.unwrap_or(0),
                "offset_lag": lag,
                "active": sub.active.load(Ordering::Relaxed),
                // RabbitMQ's names: a single active consumer is `single_active` or `waiting`.
                "activity_status": match (sub.single_active, sub.active.load(Ordering::Relaxed)) {
                    (false, _) => "up",
                    (true, true) => "single_active",
                    (true, false) => "waiting",
                },
                "properties": properties,
            })
        })
        .collect()
}

/// A stream connection as `/api/connections` shows it, with its subscriptions' count.
fn stream_connection_json(
    state: &AppState,
    c: &ConnectionEntry,
    s: &StreamClients,
    h: History,
) -> Value {
    let mut v = connection_json(state, c, h);
    v["subscriptions"] = json!(s.consumers.lock().len());
    v
}

/// The stream connections (to `vhost`, or all) as a list page.
fn connection_list(
    state: &AppState,
    vhost: Option<&str>,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    list.paged_own(
        stream_connections(state, vhost)
            .iter()
            .map(|(c, s)| stream_connection_json(state, c, s, h))
            .collect(),
    )
}

async fn connections_all(
    state: State,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    connection_list(&state, None, h, list)
}

async fn connections_vhost(
    state: State,
    Path(vh): Path<String>,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    connection_list(&state, Some(&vh.name), h, list)
}

async fn connection_show(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    h: History,
) -> Result<Json<Value>, ApiError> {
    let (c, s) = stream_connection(&state, &vh, &name)?;
    Ok(Json(stream_connection_json(&state, &c, &s, h)))
}

async fn connection_close(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (c, _) = stream_connection(&state, &vh, &name)?;
    close_connection(&c, &headers);
    Ok(StatusCode::NO_CONTENT)
}

async fn connection_publishers(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let (c, s) = stream_connection(&state, &vh, &name)?;
    Ok(list.unpaged_own(publishers_of(&state, &c, &s)))
}

async fn connection_consumers(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let (c, s) = stream_connection(&state, &vh, &name)?;
    Ok(list.unpaged_own(consumers_of(&state, &c, &s)))
}

/// Every publisher (of connections to `vhost`, or all; to `stream` only, if given).
fn publishers(state: &AppState, vhost: Option<&str>, stream: Option<&str>) -> Vec<Value> {
    stream_connections(state, vhost)
        .iter()
        .flat_map(|(c, s)| publishers_of(state, c, s))
        .filter(|p| stream.is_none_or(|st| p["queue"]["name"] == st))
        .collect()
}

async fn publishers_all(state: State, list: ListQuery) -> Json<Value> {
    list.unpaged_own(publishers(&state, None, None))
}

async fn publishers_vhost(
    state: State,
    Path(vh): Path<String>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(list.unpaged_own(publishers(&state, Some(&vh.name), None)))
}

async fn publishers_stream(
    state: State,
    Path((vh, stream)): Path<(String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    if vh.queue(&stream).is_none_or(|q| q.stream().is_none()) {
        return Err(ApiError::NotFound);
    }
    Ok(list.unpaged_own(publishers(&state, Some(&vh.name), Some(&stream))))
}

fn consumers(state: &AppState, vhost: Option<&str>) -> Vec<Value> {
    stream_connections(state, vhost)
        .iter()
        .flat_map(|(c, s)| consumers_of(state, c, s))
        .collect()
}

async fn consumers_all(state: State, list: ListQuery) -> Json<Value> {
    list.unpaged_own(consumers(&state, None))
}

async fn consumers_vhost(
    state: State,
    Path(vh): Path<String>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(list.unpaged_own(consumers(&state, Some(&vh.name))))
}

#[derive(serde::Deserialize)]
struct SuperStreamBody {
    partitions: Option<usize>,
    #[serde(rename = "binding-keys")]
    binding_keys: Option<String>,
    #[serde(default)]
    arguments: Map<String, Value>,
}

async fn super_stream_create(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: SuperStreamBody = parse_body(&body)?;
    let vh = vhost(&state, &vh)?;
    let bad = |why: &str| Err(ApiError::BadRequest(why.to_string()));
    let partitions = match (b.partitions, b.binding_keys) {
        (None, None) => return bad("Must specify partitions or binding keys"),
        (Some(_), Some(_)) => return bad("Specify partitions or binding keys, not both"),
        (Some(0), None) => return bad("The number of partitions must be greater than 0"),
        (Some(n), None) => partitions_for(&name, Some(n), None),
        (None, Some(keys)) => {
            let keys: Vec<String> = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            if keys.is_empty() {
                return bad("The number of binding keys must be greater than 0");
            }
            partitions_for(&name, None, Some(&keys))
        }
    };
    let args: Vec<(String, String)> = b
        .arguments
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    let stream_args =
        warren_broker::stream::args::protocol_arguments(&args).map_err(ApiError::BadRequest)?;
    let names = partitions.iter().map(|(p, _)| p.as_str());
    check_super_stream(&state, &me, &vh.name, &name, names)?;
    vh.create_super_stream(&name, &partitions, &stream_args, 0)
        .map_err(super_stream_error)?;
    Ok(StatusCode::CREATED)
}

async fn super_stream_delete(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let vh = vhost(&state, &vh)?;
    let partitions = vh
        .super_stream_partitions(&name)
        .ok_or(ApiError::NotFound)?;
    check_super_stream(
        &state,
        &me,
        &vh.name,
        &name,
        partitions.iter().map(String::as_str),
    )?;
    vh.delete_super_stream(&name, 0)
        .map_err(super_stream_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Configure permission on the super stream's exchange and on each of its partitions.
fn check_super_stream<'a>(
    state: &AppState,
    me: &AuthUser,
    vhost: &str,
    name: &str,
    partitions: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    check_resource(
        state,
        me,
        vhost,
        Access::Configure,
        Resource::Exchange,
        name,
    )?;
    for p in partitions {
        check_resource(state, me, vhost, Access::Configure, Resource::Queue, p)?;
    }
    Ok(())
}

fn super_stream_error(e: SuperStreamError) -> ApiError {
    match e {
        SuperStreamError::NotFound(_) => ApiError::NotFound,
        SuperStreamError::Broker(e) => e.into(),
        e => ApiError::BadRequest(e.to_string()),
    }
}
