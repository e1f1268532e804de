//! A quorum queue's members, changed as `rabbitmq-queues` changes them (RabbitMQ has no HTTP
//! endpoint for these; `warrenctl add_member`, `delete_member`, `grow` and `shrink` use
//! these, see docs/management-api.md):
//!
//! - `POST /api/queues/{vhost}/{name}/members` `{"node": "warren@h2:25672"}`: adds a member
//!   on that node (it catches up, then votes). `{"size": n}`: the group's size after.
//! - `DELETE /api/queues/{vhost}/{name}/members/{node}`: removes the member on that node
//!   (the leader too: another is elected). `{"size": n}`.
//! - `POST /api/nodes/{node}/grow` `{"strategy": "all" | "even"}`: adds a member on the node
//!   to every quorum queue that has none there (`even`: only to those with an even number of
//!   members). `POST /api/nodes/{node}/shrink`: removes the node's member from every quorum
//!   queue that has one. Both answer one row per queue: `vhost`, `name`, `size` (after, or
//!   before when it failed) and `result` (`ok`, or `error: …` as rabbitmq-queues prints it).
//!
//! - `POST /api/nodes/{node}/forget` (`rabbitmqctl forget_cluster_node`): the node, which must
//!   not be running, leaves the cluster: its member is removed from every quorum queue (as
//!   `shrink`, the rows of which it answers as `queues`), then the node from the cluster's
//!   metadata group; then the classic queues whose home it was are deleted on every node (as
//!   RabbitMQ forgets a forgotten node's durable classic queues), answered as
//!   `classic_queues_deleted` (`vhost`, `name`). Not a node of the cluster: 404
//!   `not_a_cluster_node`; running, or this node: 400.
//! - `POST /api/cluster/join` `{"node": "warren@h1:25672"}` (`rabbitmqctl join_cluster`,
//!   asked of the joining node): this node, a cluster of its own without quorum queues,
//!   joins the cluster of the node named. `{}` once it is a voting member; a node of that
//!   cluster already: the same. `node_not_running` when that node does not answer.
//!
//! Errors are RabbitMQ's reasons (`node_not_running`, `last_node`, `not_quorum_queue`,
//! `timeout`), 400; an unknown queue or vhost is 404. Administrators only (rabbitmq-queues
//! needs the Erlang cookie).

use crate::access::require_admin;
use crate::auth::AuthUser;
use crate::error::parse_body;
use crate::{ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::queue::replica::{MemberError, ReplicaHost};
use warren_broker::Queue;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/queues/{vhost}/{name}/members", post(add))
        .route("/queues/{vhost}/{name}/members/{node}", delete(remove))
        .route("/nodes/{node}/grow", post(grow))
        .route("/nodes/{node}/shrink", post(shrink))
        .route("/nodes/{node}/forget", post(forget))
        .route("/cluster/join", post(join))
}

#[derive(Deserialize)]
struct AddBody {
    node: String,
}

#[derive(Deserialize)]
struct JoinBody {
    node: String,
}

#[derive(Deserialize)]
struct GrowBody {
    #[serde(default = "all")]
    strategy: String,
}

fn all() -> String {
    "all".into()
}

fn host(state: &AppState) -> Result<Arc<dyn ReplicaHost>, ApiError> {
    state
        .broker
        .persistence()
        .and_then(|p| p.replica_host().cloned())
        .ok_or_else(|| ApiError::BadRequest(MemberError::NotClustered.to_string()))
}

/// The quorum queue named, replicated with Raft.
fn quorum_queue(state: &AppState, vhost: &str, name: &str) -> Result<Arc<Queue>, ApiError> {
    let vh = crate::queues::vhost(state, vhost)?;
    let q = vh
        .queue(name)
        .ok_or(ApiError::NotFoundReason("queue_not_found"))?;
    if q.queue_type() == "classic" {
        return Err(ApiError::BadRequest("classic_queue_not_supported".into()));
    }
    if !q.is_replicated() || q.is_remote() {
        return Err(ApiError::BadRequest(
            MemberError::NotQuorumQueue.to_string(),
        ));
    }
    Ok(q)
}

fn member_error(e: MemberError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// Runs a membership change off the async workers (it waits for the cluster).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

async fn add(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let b: AddBody = parse_body(&body)?;
    quorum_queue(&state, &vhost, &name)?;
    let host = host(&state)?;
    let size = blocking(move || host.add_member(&vhost, &name, &b.node))
        .await?
        .map_err(member_error)?;
    Ok(Json(json!({ "size": size })))
}

async fn remove(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, name, node)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    quorum_queue(&state, &vhost, &name)?;
    let host = host(&state)?;
    let size = blocking(move || host.delete_member(&vhost, &name, &node))
        .await?
        .map_err(member_error)?;
    Ok(Json(json!({ "size": size })))
}

/// Every replicated quorum queue, by vhost and name.
fn quorum_queues(state: &AppState) -> Vec<Arc<Queue>> {
    let mut vhosts = state.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts
        .iter()
        .flat_map(|v| {
            let mut qs = v.queues();
            qs.sort_by(|a, b| a.name.cmp(&b.name));
            qs
        })
        .filter(|q| q.is_replicated() && !q.is_remote() && !q.is_deleted())
        .collect()
}

/// One row of grow's and shrink's answer, as `rabbitmq-queues` formats its results.
fn row(q: &Queue, r: Result<usize, MemberError>, before: usize) -> Value {
    let (size, result) = match r {
        Ok(n) => (json!(n), "ok".to_string()),
        Err(MemberError::Timeout) => (
            json!("?"),
            "error: the operation timed out and may not have been completed".to_string(),
        ),
        // (Its one member: the size seen before may be a moment old.)
        Err(MemberError::LastNode) => (
            json!(1),
            "error: the last node cannot be removed".to_string(),
        ),
        Err(e) => (json!(before), format!("error: {e}")),
    };
    json!({"vhost": q.vhost_name, "name": q.name.as_str(), "size": size, "result": result})
}

async fn grow(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(node): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let b: GrowBody = parse_body(&body)?;
    let even = match b.strategy.as_str() {
        "all" => false,
        "even" => true,
        s => {
            return Err(ApiError::BadRequest(format!(
                "strategy '{s}' is not recognised."
            )))
        }
    };
    let host = host(&state)?;
    // As RabbitMQ: nothing for a node that is not running.
    let h = host.clone();
    let running = blocking(move || h.cluster_nodes())
        .await?
        .unwrap_or_default()
        .into_iter()
        .any(|n| n.name == node && n.running);
    let queues = quorum_queues(&state);
    let rows = blocking(move || {
        let mut rows = Vec::new();
        if !running {
            return rows;
        }
        for q in queues {
            let Some(g) = q.replica_members() else {
                continue;
            };
            if g.members.contains(&node) || (even && g.members.len() % 2 != 0) {
                continue;
            }
            let r = host.add_member(&q.vhost_name, &q.name, &node);
            rows.push(row(&q, r, g.members.len()));
        }
        rows
    })
    .await?;
    Ok(Json(Value::Array(rows)))
}

async fn shrink(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let host = host(&state)?;
    let queues = quorum_queues(&state);
    let rows = blocking(move || remove_everywhere(&*host, queues, &node)).await?;
    Ok(Json(Value::Array(rows)))
}

/// Removes `node`'s member from each of `queues` that has one: a row each.
fn remove_everywhere(host: &dyn ReplicaHost, queues: Vec<Arc<Queue>>, node: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    for q in queues {
        let Some(g) = q.replica_members() else {
            continue;
        };
        if !g.members.iter().any(|m| m == node) {
            continue;
        }
        let r = host.delete_member(&q.vhost_name, &q.name, node);
        rows.push(row(&q, r, g.members.len()));
    }
    rows
}

async fn forget(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(node): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let host = host(&state)?;
    let h = host.clone();
    let known = blocking(move || h.cluster_nodes())
        .await?
        .ok_or_else(|| member_error(MemberError::NotClustered))?
        .into_iter()
        .find(|n| n.name == node);
    let Some(known) = known else {
        return Err(ApiError::NotFoundReason("not_a_cluster_node"));
    };
    if known.me {
        return Err(ApiError::BadRequest(format!(
            "{node} is the node asked: a node cannot forget itself, ask another node of the cluster"
        )));
    }
    if known.running {
        return Err(ApiError::BadRequest(format!(
            "{}: {node} is running; stop it before forgetting it",
            MemberError::NodeRunning
        )));
    }
    let queues = quorum_queues(&state);
    let forgotten = node.clone();
    let (rows, forgot) = blocking(move || {
        let rows = remove_everywhere(&*host, queues, &forgotten);
        (rows, host.forget_node(&forgotten))
    })
    .await?;
    forgot.map_err(|e| match e {
        MemberError::NotClusterNode => ApiError::NotFoundReason("not_a_cluster_node"),
        e => member_error(e),
    })?;
    let broker = state.broker.clone();
    let deleted = blocking(move || delete_homed_queues(&broker, &node)).await?;
    Ok(Json(
        json!({ "queues": rows, "classic_queues_deleted": deleted }),
    ))
}

/// Deletes (on every node, through the metadata log) the classic queues whose home was
/// `node`, a node forgotten: their messages went with it.
fn delete_homed_queues(broker: &warren_broker::Broker, node: &str) -> Vec<Value> {
    let mut deleted = Vec::new();
    for v in broker.vhosts() {
        for q in v.queues() {
            if q.home() != Some(node) {
                continue;
            }
            match v.delete_queue(&q.name, false, false, 0) {
                Ok(_) => deleted.push(json!({"vhost": v.name, "name": q.name.as_str()})),
                Err(e) => {
                    tracing::warn!(queue = %q.name, vhost = %v.name, error = %e, "a forgotten node's classic queue could not be deleted")
                }
            }
        }
    }
    deleted
}

async fn join(
    state: State,
    Extension(me): Extension<AuthUser>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let b: JoinBody = parse_body(&body)?;
    let host = host(&state)?;
    blocking(move || host.join_cluster(&b.node))
        .await?
        .map_err(member_error)?;
    Ok(Json(json!({})))
}
