//! `/api/exchanges`: list, show, declare (PUT) and delete exchanges, and the bindings from and
//! to one. The default exchange is `""` in JSON and `amq.default` in paths.

use crate::bindings::vhost_bindings;
use crate::error::parse_body;
use crate::listing::ListQuery;
use crate::queues::{check_name, vhost};
use crate::rates::History;
use crate::{args, exchange_from_path, ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::exchange::Exchange;
use warren_broker::stats::ExchangeCounts;
use warren_broker::vhost::ExchangeDeclare;
use warren_broker::VHost;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/exchanges", get(list_all))
        .route("/exchanges/{vhost}", get(list_vhost))
        .route(
            "/exchanges/{vhost}/{name}",
            get(show).put(declare).delete(remove),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/source",
            get(bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings_destination),
        )
}

/// An exchange as RabbitMQ's API shows it, with its `message_stats` (`publish_in`,
/// `publish_out`) when `counts` are given.
pub(crate) fn exchange_json(
    state: &AppState,
    vhost: &str,
    x: &Exchange,
    counts: Option<&ExchangeCounts>,
    h: History,
) -> Value {
    let mut v = json!({
        "name": x.name.as_str(),
        "vhost": vhost,
        "type": x.type_name(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": args::table_to_json(&x.arguments),
        "policy": null,
    });
    if let Some(c) = counts {
        v["message_stats"] =
            state
                .rates
                .exchange_stats(vhost, &x.name, &crate::rates::exchange_fields(c), h);
    }
    v
}

fn vhost_exchanges(state: &AppState, vh: &VHost, h: History) -> Vec<Value> {
    let mut xs = vh.exchanges();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    let counts = crate::rates::exchange_counts(&state.broker, vh);
    xs.iter()
        .map(|x| exchange_json(state, &vh.name, x, counts.get(x.name.as_str()), h))
        .collect()
}

async fn list_all(state: State, h: History, list: ListQuery) -> Result<Json<Value>, ApiError> {
    let mut vhosts = state.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    list.paged(
        vhosts
            .iter()
            .flat_map(|vh| vhost_exchanges(&state, vh, h))
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
    list.paged(vhost_exchanges(&state, &vh, h))
}

async fn show(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    h: History,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    let x = vh
        .exchange(exchange_from_path(&name))
        .ok_or(ApiError::NotFound)?;
    let counts = crate::rates::exchange_counts(&state.broker, &vh);
    Ok(Json(exchange_json(
        &state,
        &vh.name,
        &x,
        counts.get(x.name.as_str()),
        h,
    )))
}

#[derive(Deserialize)]
struct ExchangeBody {
    #[serde(rename = "type", default = "direct")]
    kind: String,
    #[serde(default)]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

fn direct() -> String {
    "direct".into()
}

/// PUT: declares as exchange.declare would; 201 when created, 204 when it existed.
async fn declare(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: ExchangeBody = parse_body(&body)?;
    check_name("exchange", &name)?;
    let vh = state.broker.vhost(&vh).ok_or(ApiError::VHostNotFound)?;
    let name = exchange_from_path(&name);
    let existed = vh.exchange(name).is_some();
    vh.declare_exchange(ExchangeDeclare {
        name: name.into(),
        kind: b.kind.as_str().into(),
        passive: false,
        durable: b.durable,
        auto_delete: b.auto_delete,
        internal: b.internal,
        arguments: args::json_to_table(&b.arguments)?,
    })?;
    Ok(crate::created_or_updated(existed))
}

#[derive(Deserialize)]
struct DeleteParams {
    #[serde(rename = "if-unused", default)]
    if_unused: bool,
}

async fn remove(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    Query(p): Query<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    let vh = vhost(&state, &vh)?;
    let name = exchange_from_path(&name);
    vh.exchange(name).ok_or(ApiError::NotFound)?;
    vh.delete_exchange(name, p.if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Bindings whose `field` (source or destination) is this exchange.
fn bindings_where(
    state: &AppState,
    vh: &str,
    name: &str,
    field: &str,
) -> Result<Vec<Value>, ApiError> {
    let vh = vhost(state, vh)?;
    let name = exchange_from_path(name);
    vh.exchange(name).ok_or(ApiError::NotFound)?;
    Ok(vhost_bindings(&vh)
        .into_iter()
        .filter(|b| b[field] == name && (field == "source" || b["destination_type"] == "exchange"))
        .collect())
}

async fn bindings_source(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    Ok(list.unpaged(bindings_where(&state, &vh, &name, "source")?))
}

async fn bindings_destination(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    Ok(list.unpaged(bindings_where(&state, &vh, &name, "destination")?))
}
