//! `/api/bindings`: list bindings (with the default exchange's implicit binding of every queue,
//! as RabbitMQ lists it), create them (POST) and delete them by their `properties_key`.

use crate::error::parse_body;
use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::{args, exchange_from_path, ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::exchange::{Binding, Destination};
use warren_broker::VHost;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/bindings", get(list_all))
        .route("/bindings/{vhost}", get(list_vhost))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(list_between).post(create),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(show).delete(remove),
        )
}

/// The characters RabbitMQ leaves unquoted in a properties key.
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// A binding's id in paths: the quoted routing key, plus `~` and a hash of the arguments when
/// there are any (`~` alone for an empty key without arguments), as RabbitMQ builds it.
pub fn properties_key(routing_key: &str, arguments: &Value) -> String {
    let quoted = utf8_percent_encode(routing_key, KEY_SAFE).to_string();
    let no_args = arguments.as_object().is_none_or(|m| m.is_empty());
    match (quoted.is_empty(), no_args) {
        (true, true) => "~".into(),
        (false, true) => quoted,
        _ => format!("{quoted}~{}", args_hash(arguments)),
    }
}

/// A short hash of the arguments, stable across runs (FNV-1a of their sorted JSON).
fn args_hash(arguments: &Value) -> String {
    let mut entries: Vec<(String, String)> = arguments
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
        .unwrap_or_default();
    entries.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in &entries {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h.to_be_bytes()[..6])
}

fn kind_of(d: &Destination) -> &'static str {
    match d {
        Destination::Queue(_) => "queue",
        Destination::Exchange(_) => "exchange",
    }
}

pub(crate) fn binding_json(vhost: &str, source: &str, b: &Binding) -> Value {
    let arguments = args::table_to_json(&b.arguments);
    json!({
        "source": source,
        "vhost": vhost,
        "destination": b.destination.name().as_str(),
        "destination_type": kind_of(&b.destination),
        "routing_key": b.routing_key.as_str(),
        "properties_key": properties_key(&b.routing_key, &arguments),
        "arguments": arguments,
    })
}

/// The binding of a queue to the default exchange, which every queue has and RabbitMQ lists.
pub(crate) fn default_binding_json(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "properties_key": properties_key(queue, &json!({})),
        "arguments": {},
    })
}

/// Every binding of a vhost: the default exchange's first (by queue), then by source,
/// destination and routing key.
pub(crate) fn vhost_bindings(vh: &VHost) -> Vec<Value> {
    let mut queues: Vec<String> = vh.queues().iter().map(|q| q.name.to_string()).collect();
    queues.sort();
    let mut out: Vec<Value> = queues
        .iter()
        .map(|q| default_binding_json(&vh.name, q))
        .collect();
    let mut exchanges = vh.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for x in exchanges.iter().filter(|x| !x.name.is_empty()) {
        let mut bs = x.bindings();
        bs.sort_by(|a, b| {
            (
                a.destination.name(),
                kind_of(&a.destination),
                &a.routing_key,
            )
                .cmp(&(
                    b.destination.name(),
                    kind_of(&b.destination),
                    &b.routing_key,
                ))
        });
        out.extend(bs.iter().map(|b| binding_json(&vh.name, &x.name, b)));
    }
    out
}

async fn list_all(state: State, list: ListQuery) -> Json<Value> {
    let mut vhosts = state.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    list.unpaged(vhosts.iter().flat_map(|vh| vhost_bindings(vh)).collect())
}

async fn list_vhost(
    state: State,
    Path(vh): Path<String>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(list.unpaged(vhost_bindings(&vh)))
}

/// `q` or `e` in a path.
fn destination_kind(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::NotFound),
    }
}

/// The bindings from `source` to `dest` (of `kind`), as JSON, checking both ends exist.
fn between(
    state: &AppState,
    vh: &str,
    source: &str,
    kind: &str,
    dest: &str,
) -> Result<(Arc<VHost>, Vec<Value>), ApiError> {
    let vh = vhost(state, vh)?;
    let kind = destination_kind(kind)?;
    let source = exchange_from_path(source);
    let x = vh.exchange(source).ok_or(ApiError::NotFound)?;
    let dest_exists = if kind == "queue" {
        vh.queue(dest).is_some()
    } else {
        vh.exchange(dest).is_some()
    };
    if !dest_exists {
        return Err(ApiError::NotFound);
    }
    let list = if source.is_empty() {
        if kind == "queue" {
            vec![default_binding_json(&vh.name, dest)]
        } else {
            vec![]
        }
    } else {
        vhost_bindings(&vh)
            .into_iter()
            .filter(|b| {
                b["source"] == x.name.as_str()
                    && b["destination"] == dest
                    && b["destination_type"] == kind
            })
            .collect()
    };
    Ok((vh, list))
}

async fn list_between(
    state: State,
    Path((vh, source, kind, dest)): Path<(String, String, String, String)>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    Ok(list.unpaged(between(&state, &vh, &source, &kind, &dest)?.1))
}

async fn show(
    state: State,
    Path((vh, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, list) = between(&state, &vh, &source, &kind, &dest)?;
    list.into_iter()
        .find(|b| b["properties_key"] == props.as_str())
        .map(Json)
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
struct BindingBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Value,
}

/// POST: binds, answering 201 with the new binding's path (relative) in `Location`.
async fn create(
    state: State,
    Path((vh, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: BindingBody = parse_body(&body)?;
    crate::queues::check_name("routing key", &b.routing_key)?;
    let (vh, _) = between(&state, &vh, &source, &kind, &dest)?;
    let source = exchange_from_path(&source);
    let table = args::json_to_table(&b.arguments)?;
    if kind == "q" {
        let owner = vh.queue(&dest).and_then(|q| q.exclusive_owner).unwrap_or(0);
        vh.bind_queue(
            &dest,
            source,
            b.routing_key.as_str().into(),
            table.clone(),
            owner,
        )?;
    } else {
        vh.bind_exchange(&dest, source, b.routing_key.as_str().into(), table.clone())?;
    }
    let props = properties_key(&b.routing_key, &args::table_to_json(&table));
    let location = format!("{}/{}", utf8_percent_encode(&dest, KEY_SAFE), props);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

/// DELETE …/{props}: unbinds the binding with that properties key.
async fn remove(
    state: State,
    Path((vh, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (vh, _) = between(&state, &vh, &source, &kind, &dest)?;
    let source = exchange_from_path(&source);
    let x = vh.exchange(source).ok_or(ApiError::NotFound)?;
    let want_kind = destination_kind(&kind)?;
    let b = x
        .bindings()
        .into_iter()
        .find(|b| {
            kind_of(&b.destination) == want_kind
                && b.destination.name().as_str() == dest
                && properties_key(&b.routing_key, &args::table_to_json(&b.arguments)) == props
        })
        .ok_or(ApiError::NotFound)?;
    match &b.destination {
        Destination::Queue(q) => vh.unbind_queue(
            &dest,
            source,
            b.routing_key.clone(),
            b.arguments.clone(),
            q.exclusive_owner.unwrap_or(0),
        )?,
        Destination::Exchange(_) => {
            vh.unbind_exchange(&dest, source, b.routing_key.clone(), b.arguments.clone())?
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_as_rabbitmq_builds_them() {
        assert_eq!(properties_key("q1", &json!({})), "q1");
        assert_eq!(properties_key("a.*", &json!({})), "a.%2A");
        assert_eq!(properties_key("#", &json!({})), "%23");
        assert_eq!(properties_key("", &json!({})), "~");
        let with_args = properties_key("", &json!({"x-match": "any", "k": "v"}));
        assert!(with_args.starts_with('~') && with_args.len() > 1);
        assert_eq!(
            with_args,
            properties_key("", &json!({"k": "v", "x-match": "any"}))
        );
    }
}
