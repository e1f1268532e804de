//! `/api/queues`: list, show, declare (PUT), delete and purge queues, and a queue's bindings.

use crate::access::check_queue;
use crate::auth::AuthUser;
use crate::bindings::{binding_json, default_binding_json};
use crate::error::parse_body;
use crate::listing::ListQuery;
use crate::rates::History;
use crate::{args, channels, connections, ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::auth::Access;
use warren_broker::exchange::Destination;
use warren_broker::queue::{QueueConsumer, QueuedMessage};
use warren_broker::vhost::QueueDeclare;
use warren_broker::{Queue, VHost};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/queues", get(list_all))
        .route("/queues/{vhost}", get(list_vhost))
        .route(
            "/queues/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route("/queues/{vhost}/{name}/contents", delete(purge))
        .route("/queues/{vhost}/{name}/bindings", get(bindings))
}

/// The vhost named in a path, or 404.
pub(crate) fn vhost(state: &AppState, name: &str) -> Result<Arc<VHost>, ApiError> {
    state.broker.vhost(name).ok_or(ApiError::NotFound)
}

/// Names in paths become AMQP short strings: longer ones would be cut, so refuse them.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > 255 {
        return Err(ApiError::BadRequest(format!(
            "{kind} name is longer than 255 bytes"
        )));
    }
    Ok(())
}

fn sorted_queues(vh: &VHost) -> Vec<Arc<Queue>> {
    let mut qs = vh.queues();
    qs.sort_by(|a, b| a.name.cmp(&b.name));
    qs
}

fn sorted_vhosts(state: &AppState) -> Vec<Arc<VHost>> {
    let mut vs = state.broker.vhosts();
    vs.sort_by(|a, b| a.name.cmp(&b.name));
    vs
}

async fn list_all(state: State, h: History, list: ListQuery) -> Result<Json<Value>, ApiError> {
    let all = sorted_vhosts(&state)
        .iter()
        .flat_map(|vh| sorted_queues(vh))
        .map(|q| queue_json(&state, &q, false, h))
        .collect();
    list.paged(all)
}

async fn list_vhost(
    state: State,
    Path(vh): Path<String>,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    list.paged(
        sorted_queues(&vh)
            .iter()
            .map(|q| queue_json(&state, q, false, h))
            .collect(),
    )
}

fn find(state: &AppState, vh: &str, name: &str) -> Result<(Arc<VHost>, Arc<Queue>), ApiError> {
    let vh = vhost(state, vh)?;
    let q = vh.queue(name).ok_or(ApiError::NotFound)?;
    Ok((vh, q))
}

async fn show(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    h: History,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, q) = find(&state, &vh, &name)?;
    Ok(list.object(queue_json(&state, &q, true, h)))
}

#[derive(Deserialize)]
struct QueueBody {
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    arguments: Value,
}

/// PUT: declares the queue as queue.declare would: 201 when created, 204 when an equivalent
/// one exists, 400 with RabbitMQ's text when it is not equivalent.
async fn declare(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: QueueBody = parse_body(&body)?;
    check_name("queue", &name)?;
    if state.broker.vhost(&vh).is_some() {
        check_queue(&state, &me, &vh, Access::Configure, &name)?;
    }
    if b.exclusive {
        return Err(ApiError::BadRequest(
            "exclusive queues belong to a connection and cannot be declared here".into(),
        ));
    }
    let vh = state.broker.vhost(&vh).ok_or(ApiError::VHostNotFound)?;
    let existed = vh.queue(&name).is_some();
    let mut declare = QueueDeclare {
        name: name.as_str().into(),
        passive: false,
        durable: b.durable,
        exclusive: false,
        auto_delete: b.auto_delete,
        arguments: args::json_to_table(&b.arguments)?,
    };
    vh.apply_default_queue_type(&mut declare);
    vh.declare_queue(declare, 0)?;
    Ok(crate::created_or_updated(existed))
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(rename = "if-empty", default)]
    if_empty: bool,
    #[serde(rename = "if-unused", default)]
    if_unused: bool,
}

/// DELETE, with RabbitMQ's `if-empty` / `if-unused` query parameters. An exclusive queue can
/// be deleted too (the operator is not its connection, but may remove it).
async fn remove(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
    Query(p): Query<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    let (vh, q) = find(&state, &vh, &name)?;
    check_queue(&state, &me, &vh.name, Access::Configure, &name)?;
    vh.delete_queue(
        &name,
        p.if_unused,
        p.if_empty,
        q.exclusive_owner.unwrap_or(0),
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE …/contents: purge.
async fn purge(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (vh, q) = find(&state, &vh, &name)?;
    check_queue(&state, &me, &vh.name, Access::Read, &name)?;
    vh.purge_queue(&name, q.exclusive_owner.unwrap_or(0))?;
    Ok(StatusCode::NO_CONTENT)
}

/// The bindings that lead to the queue, the default exchange's first.
async fn bindings(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let (vh, q) = find(&state, &vh, &name)?;
    let mut out = vec![default_binding_json(&vh.name, &q.name)];
    let mut exchanges = vh.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for x in exchanges.iter().filter(|x| !x.name.is_empty()) {
        for b in x.bindings() {
            if matches!(&b.destination, Destination::Queue(d) if Arc::ptr_eq(d, &q)) {
                out.push(binding_json(&vh.name, &x.name, &b));
            }
        }
    }
    Ok(list.unpaged(out))
}

/// A queue as RabbitMQ's API shows it. `detailed` adds `consumer_details`.
pub(crate) fn queue_json(state: &AppState, q: &Arc<Queue>, detailed: bool, h: History) -> Value {
    let s = q.stats();
    let kind = q
        .arguments
        .get("x-queue-type")
        .and_then(|v| v.as_str())
        .unwrap_or("classic");
    let mut v = json!({
        "name": q.name.as_str(),
        "vhost": q.vhost_name,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": args::table_to_json(&q.arguments),
        "type": kind,
        // A classic queue of another node (cluster.classic_queues_everywhere): its home,
        // and "down" while that node is, as RabbitMQ shows them.
        "node": q.home().unwrap_or(&state.node),
        "state": if q.is_deleted() {
            "stopped"
        } else if q.home_down().is_some() {
            "down"
        } else {
            "running"
        },
        "policy": null,
        "exclusive_consumer_tag": null,
        "messages": s.messages_ready + s.messages_unacknowledged,
        "messages_ready": s.messages_ready,
        "messages_unacknowledged": s.messages_unacknowledged,
        "message_bytes_ready": s.message_bytes_ready,
        "consumers": s.consumers,
        "memory": memory_estimate(s.messages_ready, s.consumers),
        "message_stats": state.rates.queue_stats(&q.vhost_name, &q.name, &crate::rates::queue_fields(&s), h),
    });
    if kind == "quorum" {
        // As RabbitMQ shows a quorum queue's Raft group.
        match q.replica_members() {
            Some(g) => {
                v["leader"] = json!(g.leader);
                v["online"] = json!(g.online);
                v["members"] = json!(g.members);
            }
            None => {
                v["leader"] = json!(state.node);
                v["members"] = json!([state.node]);
                v["online"] = json!([state.node]);
            }
        }
    }
    if let Some(owner) = q
        .exclusive_owner
        .and_then(|id| connections::find_by_id(&state.broker, id))
    {
        v["owner_pid_details"] = json!({
            "name": owner.name,
            "peer_host": owner.peer.ip().to_string(),
            "peer_port": owner.peer.port(),
        });
    }
    if detailed {
        let details: Vec<Value> = q
            .consumers()
            .into_iter()
            .map(|(tag, ch, no_ack, exclusive)| {
                let info = ch.consumers().into_iter().find(|c| c.tag == tag);
                let prefetch = info.as_ref().map_or(0, |c| c.prefetch);
                let channel_details = connections::find_by_id(&state.broker, ch.conn_id)
                    .map(|c| channels::channel_details(state, &c, ch.number));
                json!({
                    "consumer_tag": tag.as_str(),
                    "queue": {"name": q.name.as_str(), "vhost": q.vhost_name},
                    "channel_details": channel_details.unwrap_or(Value::Null),
                    "ack_required": !no_ack,
                    "exclusive": exclusive,
                    "prefetch_count": prefetch,
                    // Warren's additions (as on /api/consumers): what the consumer holds
                    // unacknowledged, and for how long.
                    "messages_unacknowledged": info.as_ref().map_or(0, |c| c.unacked),
                    "oldest_unacked_age_ms": info
                        .as_ref()
                        .and_then(|c| c.oldest_unacked)
                        .map(|t| t.elapsed().as_millis() as u64),
                    "active": true,
                    "activity_status": "up",
                    "arguments": {},
                })
            })
            .collect();
        v["consumer_details"] = Value::Array(details);
    }
    v
}

/// An estimate of the queue's own bookkeeping in bytes: the queue, one entry per ready message
/// and per consumer. Message bodies are not counted: they are shared by every queue a message
/// was routed to (RabbitMQ's `memory` is its queue process's heap, which is not comparable).
fn memory_estimate(ready: u64, consumers: u64) -> u64 {
    let size = |n: usize| n as u64;
    size(std::mem::size_of::<Queue>())
        + ready * size(std::mem::size_of::<QueuedMessage>())
        + consumers * size(std::mem::size_of::<QueueConsumer>())
}
