//! `/api/overview`, `/api/nodes`, `/api/vhosts` (listed and created), `/api/whoami` and the
//! health checks: the node as a whole, with its memory and disk alarms, whose limits
//! `PUT /api/nodes/{node}/memory-high-watermark` and `/disk-free-limit` change at run time
//! (RabbitMQ does this with `rabbitmqctl set_vm_memory_high_watermark` and
//! `set_disk_free_limit` only; Warren's `warrenctl` commands of those names use these paths).

use crate::access::{is_monitor, require_admin, require_monitor, visible_vhosts};
use crate::auth::AuthUser;
use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::rates::History;
use crate::{ApiError, AppState, State, RABBITMQ_COMPAT_VERSION};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::VHost;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/overview", get(overview))
        .route("/nodes", get(nodes))
        .route("/nodes/{name}", get(node))
        .route(
            "/nodes/{name}/memory-high-watermark",
            put(set_memory_high_watermark),
        )
        .route("/nodes/{name}/disk-free-limit", put(set_disk_free_limit))
        .route("/vhosts", get(vhosts))
        .route(
            "/vhosts/{vhost}",
            get(one_vhost)
                .put(create_vhost)
                .delete(crate::users::delete_vhost),
        )
        .route("/whoami", get(whoami))
        .route("/health/checks/alarms", get(alarms_check))
        .route("/health/checks/local-alarms", get(alarms_check))
        .route("/aliveness-test/{vhost}", get(aliveness))
}

/// Ready and unacknowledged messages of every queue of a vhost.
fn message_totals(vh: &VHost) -> (u64, u64) {
    vh.queues()
        .iter()
        .map(|q| q.stats())
        .fold((0, 0), |(r, u), s| {
            (r + s.messages_ready, u + s.messages_unacknowledged)
        })
}

fn listeners(state: &AppState) -> Vec<Value> {
    let listener = |protocol: &str, addr: &std::net::SocketAddr| json!({"node": state.node, "protocol": protocol, "ip_address": addr.ip().to_string(), "port": addr.port()});
    let mut out: Vec<Value> = state
        .amqp_listeners
        .iter()
        .map(|a| listener("amqp", a))
        .collect();
    out.extend(state.http_listeners.iter().map(|a| listener("http", a)));
    out.extend(state.https_listener.iter().map(|a| listener("https", a)));
    out
}

/// The node's totals; a user that is not a monitor gets those of the vhosts it has
/// permissions in and of its own connections, as in RabbitMQ.
async fn overview(
    state: State,
    Extension(me): Extension<AuthUser>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let visible = if is_monitor(&me) {
        None
    } else {
        visible_vhosts(&state, &me)
    };
    let message_stats = match &visible {
        None => {
            state
                .rates
                .aggregate_stats(&state.broker, None, crate::rates::History::from_query(&q))
        }
        Some(v) => {
            let names: Vec<String> = v.iter().cloned().collect();
            state.rates.vhosts_stats(&state.broker, &names)
        }
    };
    let vhosts: Vec<_> = state
        .broker
        .vhosts()
        .into_iter()
        .filter(|vh| visible.as_ref().is_none_or(|v| v.contains(&vh.name)))
        .collect();
    let (mut ready, mut unacked, mut queues, mut exchanges) = (0, 0, 0, 0);
    for vh in &vhosts {
        let (r, u) = message_totals(vh);
        ready += r;
        unacked += u;
        queues += vh.queue_count();
        exchanges += vh.exchanges().len();
    }
    let connections: Vec<_> = state
        .broker
        .connections
        .list()
        .into_iter()
        .filter(|c| is_monitor(&me) || c.user == me.0.name)
        .collect();
    let channels: Vec<_> = connections
        .iter()
        .flat_map(|c| c.channels.lock().clone())
        .collect();
    let consumers: u32 = channels.iter().map(|ch| ch.stats().consumers).sum();
    let exchange_types: Vec<Value> = ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| json!({"name": t, "description": format!("AMQP {t} exchange"), "enabled": true}))
        .collect();
    Json(json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "basic",
        "disable_stats": false,
        "enable_queue_totals": true,
        "node": state.node,
        "cluster_name": state.node,
        "exchange_types": exchange_types,
        "message_stats": message_stats,
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": connections.len(),
            "channels": channels.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
            "vhosts": vhosts.len(),
        },
        "statistics_db_event_queue": 0,
        "listeners": listeners(&state),
        "contexts": [],
    }))
}

/// The resident memory of this process, from /proc (0 where there is none).
pub(crate) fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn node_json(state: &AppState) -> Value {
    json!({
        "name": state.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "uptime": state.started.elapsed().as_millis() as u64,
        "mem_used": resident_bytes(),
        "fd_used": crate::prometheus::open_fds(),
        "fd_total": crate::prometheus::max_fds(),
        "mem_limit": state.broker.alarms.memory_limit(),
        "mem_alarm": state.broker.alarms.active().contains(&"memory"),
        "disk_free": state.broker.alarms.disk_free().unwrap_or(0),
        "disk_free_limit": state.broker.alarms.disk_free_limit(),
        "disk_free_alarm": state.broker.alarms.active().contains(&"disk"),
        "partitions": [],
        "being_drained": false,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "listeners": listeners(state),
        "rates_mode": "basic",
    })
}

async fn nodes(
    state: State,
    Extension(me): Extension<AuthUser>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    require_monitor(&me)?;
    let mut nodes = vec![node_json(&state)];
    if let Some(others) = cluster_nodes(&state).await {
        // In a cluster: this node in full, the others by name and whether they answer (as
        // RabbitMQ lists a node that is down: running false).
        nodes = others
            .into_iter()
            .map(|n| {
                if n.me {
                    node_json(&state)
                } else {
                    json!({"name": n.name, "type": "disc", "running": n.running})
                }
            })
            .collect();
    }
    Ok(list.unpaged(nodes))
}

/// The cluster's nodes, if this node is in one (probing the others takes up to a second
/// each: off the async workers).
async fn cluster_nodes(
    state: &AppState,
) -> Option<Vec<warren_broker::queue::replica::ClusterNode>> {
    let host = state.broker.persistence()?.replica_host()?.clone();
    tokio::task::spawn_blocking(move || host.cluster_nodes())
        .await
        .ok()
        .flatten()
}

async fn node(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_monitor(&me)?;
    if name != state.node {
        return Err(ApiError::NotFound);
    }
    Ok(Json(node_json(&state)))
}

/// A limit's new value, from a body `{"<relative>": fraction}` or `{"absolute": bytes}` (a
/// number, or a string with rabbitmq.conf's units: `"2GB"`, `"512MiB"`); the fraction is of
/// the RAM available to the process. Only an administrator on this node may change it.
fn new_limit(
    state: &AppState,
    me: &AuthUser,
    name: &str,
    body: &[u8],
    relative: &str,
) -> Result<u64, ApiError> {
    require_admin(me)?;
    if name != state.node {
        return Err(ApiError::NotFound);
    }
    let b: Value = crate::error::parse_body(body)?;
    let fraction = b[relative].as_f64();
    let bytes = match &b["absolute"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => warren_broker::alarm::parse_bytes(s),
        _ => None,
    };
    match (fraction, bytes) {
        (Some(f), None) if f >= 0.0 && f.is_finite() => {
            Ok((warren_broker::alarm::total_memory() as f64 * f) as u64)
        }
        (None, Some(b)) => Ok(b),
        _ => Err(ApiError::BadRequest(format!(
            "expected {{\"{relative}\": a fraction}} or {{\"absolute\": bytes, e.g. \"2GB\"}}"
        ))),
    }
}

/// PUT `{"relative": 0.4}` or `{"absolute": "2GB"}`: the memory high watermark, until the node
/// restarts (as `rabbitmqctl set_vm_memory_high_watermark`).
async fn set_memory_high_watermark(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let limit = new_limit(&state, &me, &name, &body, "relative")?;
    tracing::info!(
        memory_limit = limit,
        user = %me.0.name,
        "memory high watermark set to {} MiB",
        limit >> 20
    );
    state.broker.alarms.set_memory_limit(limit);
    Ok(StatusCode::NO_CONTENT)
}

/// PUT `{"absolute": "50MB"}` or `{"mem_relative": 1.5}`: the disk free limit, until the node
/// restarts (as `rabbitmqctl set_disk_free_limit`).
async fn set_disk_free_limit(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let limit = new_limit(&state, &me, &name, &body, "mem_relative")?;
    tracing::info!(
        disk_free_limit = limit,
        user = %me.0.name,
        "disk free limit set to {} MB",
        limit / 1_000_000
    );
    state.broker.alarms.set_disk_free_limit(limit);
    Ok(StatusCode::NO_CONTENT)
}

fn vhost_json(state: &AppState, vh: &VHost, h: History) -> Value {
    let (ready, unacked) = message_totals(vh);
    let m = vh.metadata();
    // RabbitMQ 4 shows the node's default (classic unless configured) when none is set.
    let shown_type = vh.default_queue_type().unwrap_or_else(|| "classic".into());
    let description = if m.description.is_empty() && vh.name == state.broker.config.default_vhost {
        "Default virtual host"
    } else {
        &m.description
    };
    json!({
        "name": vh.name,
        "description": description,
        "tags": m.tags,
        "default_queue_type": shown_type,
        "metadata": {
            "description": description,
            "tags": m.tags,
            "default_queue_type": shown_type,
        },
        "tracing": false,
        "cluster_state": {state.node.clone(): "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_stats": state.rates.aggregate_stats(&state.broker, Some(&vh.name), h),
    })
}

async fn vhosts(state: State, h: History, list: ListQuery) -> Result<Json<Value>, ApiError> {
    let mut vs = state.broker.vhosts();
    vs.sort_by(|a, b| a.name.cmp(&b.name));
    list.paged(
        vs.iter()
            .filter(|vh| list.sees_vhost(&vh.name))
            .map(|vh| vhost_json(&state, vh, h))
            .collect(),
    )
}

async fn one_vhost(
    state: State,
    Path(vh): Path<String>,
    h: History,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(Json(vhost_json(&state, &vh, h)))
}

/// What a PUT of a vhost may set; what it leaves out stays as it is.
#[derive(serde::Deserialize)]
struct VHostBody {
    description: Option<String>,
    #[serde(default, deserialize_with = "some_tags")]
    tags: Option<Vec<String>>,
    default_queue_type: Option<String>,
}

fn some_tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    warren_broker::json::deserialize_tags(d).map(Some)
}

/// PUT: creates the vhost (201), or updates an existing one's metadata (204). The body may
/// set `description`, `tags` (a list or a comma-separated string) and `default_queue_type`
/// (`classic`, `quorum` or `stream`), as RabbitMQ's.
async fn create_vhost(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(vh): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    if vh.is_empty() || vh.len() > 255 {
        return Err(ApiError::BadRequest(
            "a vhost name is 1 to 255 bytes long".into(),
        ));
    }
    let b: VHostBody = crate::error::parse_body(&body)?;
    let default_queue_type = b
        .default_queue_type
        .as_deref()
        .map(warren_broker::vhost::metadata::parse_queue_type)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let existed = state.broker.vhost(&vh).is_some();
    let v = state.broker.add_vhost(&vh);
    let mut m = v.metadata();
    if let Some(d) = b.description {
        m.description = d;
    }
    if let Some(t) = b.tags {
        m.tags = t;
    }
    if default_queue_type.is_some() {
        m.default_queue_type = default_queue_type;
    }
    state
        .broker
        .set_vhost_metadata(&vh, m)
        .map_err(ApiError::from)?;
    if !existed {
        // As RabbitMQ: whoever creates a vhost gets full permissions in it.
        state
            .broker
            .set_permissions(&me.0.name, &vh, ".*", ".*", ".*")
            .map_err(ApiError::from)?;
    }
    Ok(crate::created_or_updated(existed))
}

async fn whoami(Extension(AuthUser(user)): Extension<AuthUser>) -> Json<Value> {
    Json(json!({"name": user.name, "tags": user.tags}))
}

/// 200 `{"status": "ok"}`, or 503 with the alarms in effect, as RabbitMQ.
async fn alarms_check(state: State) -> (StatusCode, Json<Value>) {
    let active = state.broker.alarms.active();
    if active.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "ok"})));
    }
    let alarms: Vec<Value> = active
        .iter()
        .map(|a| json!({"node": state.node, "resource": a}))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(
            json!({"status": "failed", "reason": "resource alarm(s) in effect in the cluster", "alarms": alarms}),
        ),
    )
}

async fn aliveness(state: State, Path(vh): Path<String>) -> Result<Json<Value>, ApiError> {
    vhost(&state, &vh)?;
    Ok(Json(json!({"status": "ok"})))
}
