//! `/api/definitions`: the topology (vhosts, exchanges, queues, bindings) exported and
//! imported in RabbitMQ's definitions format, so a RabbitMQ export loads into Warren and back.
//! The broker's [`warren_broker::definitions`] does the work; this module adds what the API
//! shows around it.
//!
//! Users (with their password hashes, so a RabbitMQ export's users log in with the same
//! passwords) and permissions are exported and imported; a vhost's export leaves users out.
//! Not carried yet: topic permissions, policies and parameters; an export lists them empty,
//! an import skips them (with a log line). Exclusive queues (and bindings to them), the
//! predeclared exchanges and the default exchange's implicit bindings are left out of
//! exports, as in RabbitMQ.

use crate::error::parse_body;
use crate::queues::{check_name, vhost};
use crate::{ApiError, AppState, State, RABBITMQ_COMPAT_VERSION};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::definitions::{Definitions, DefinitionsError};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/definitions", get(export_all).post(import_all))
        .route("/definitions/{vhost}", get(export_vhost).post(import_vhost))
        .route_layer(axum::middleware::from_fn(crate::access::admin_only))
        .layer(DefaultBodyLimit::max(DEFINITIONS_LIMIT))
}

/// Definitions files of large installations pass axum's default 2 MB body limit.
const DEFINITIONS_LIMIT: usize = 256 << 20;

/// The definitions of every vhost, or of one.
fn export(state: &AppState, only_vhost: Option<&str>) -> Result<Value, ApiError> {
    let mut d = state.broker.definitions(false);
    let exclusive: Vec<(String, String)> = state
        .broker
        .vhosts()
        .iter()
        .flat_map(|vh| vh.queues())
        .filter(|q| q.exclusive_owner.is_some())
        .map(|q| (q.vhost_name.clone(), q.name.to_string()))
        .collect();
    let is_exclusive =
        |vhost: &str, queue: &str| exclusive.iter().any(|(v, q)| v == vhost && q == queue);
    d.queues.retain(|q| !is_exclusive(&q.vhost, &q.name));
    d.bindings
        .retain(|b| b.destination_type != "queue" || !is_exclusive(&b.vhost, &b.destination));
    if let Some(v) = only_vhost {
        d.vhosts.retain(|x| x.name == v);
        d.queues.retain(|x| x.vhost == v);
        d.exchanges.retain(|x| x.vhost == v);
        d.bindings.retain(|x| x.vhost == v);
        d.users.clear();
        d.permissions.retain(|x| x.vhost == v);
    }
    let mut v = serde_json::to_value(&d).map_err(|e| ApiError::Internal(e.to_string()))?;
    v["rabbit_version"] = json!(RABBITMQ_COMPAT_VERSION);
    v["rabbitmq_version"] = json!(RABBITMQ_COMPAT_VERSION);
    for key in [
        "topic_permissions",
        "parameters",
        "global_parameters",
        "policies",
    ] {
        v[key] = json!([]);
    }
    Ok(v)
}

async fn export_all(state: State) -> Result<Json<Value>, ApiError> {
    Ok(Json(export(&state, None)?))
}

async fn export_vhost(state: State, Path(vh): Path<String>) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(Json(export(&state, Some(&vh.name))?))
}

/// Declares everything in `d` (vhosts, exchanges, queues, bindings, in that order), going on
/// after an error; a 400 lists every error met.
fn import(state: &AppState, d: Value) -> Result<(), ApiError> {
    let count = |key: &str| d[key].as_array().map_or(0, Vec::len);
    let skipped = ["topic_permissions", "policies", "parameters"].map(|k| (k, count(k)));
    if skipped.iter().any(|(_, n)| *n > 0) {
        tracing::info!(
            ?skipped,
            "definitions import: skipping what Warren does not import yet"
        );
    }
    for (key, kind) in [("queues", "queue"), ("exchanges", "exchange")] {
        for o in d[key].as_array().into_iter().flatten() {
            check_name(kind, o["name"].as_str().unwrap_or_default())?;
        }
    }
    let defs: Definitions = serde_json::from_value(d)
        .map_err(|e| ApiError::BadRequest(format!("not a definitions document: {e}")))?;
    let errors = state.broker.import_definitions(&defs);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(import_failed(&errors))
    }
}

/// RabbitMQ's 400 for an import that failed: every error, in the order met.
fn import_failed(errors: &[DefinitionsError]) -> ApiError {
    let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
    ApiError::BadRequest(reasons.join("; "))
}

async fn import_all(state: State, body: Bytes) -> Result<StatusCode, ApiError> {
    import(&state, parse_body(&body)?)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A vhost's definitions apply to that vhost, whatever vhost their objects name (RabbitMQ's
/// per-vhost exports name none).
async fn import_vhost(
    state: State,
    Path(vh): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let vh = vhost(&state, &vh)?;
    let mut d: Value = parse_body(&body)?;
    for key in ["queues", "exchanges", "bindings"] {
        for o in d[key].as_array_mut().into_iter().flatten() {
            o["vhost"] = json!(vh.name);
        }
    }
    d["vhosts"] = json!([]);
    import(&state, d)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use std::time::Instant;
    use warren_broker::definitions::DefObject;
    use warren_broker::{Broker, BrokerConfig};

    fn state() -> AppState {
        AppState {
            broker: Broker::new(BrokerConfig::default()),
            node: "warren@test".into(),
            started: Instant::now(),
            http_listeners: Vec::new(),
            https_listener: None,
            amqp_listeners: Vec::new(),
            rates: crate::rates::Rates::new(std::time::Duration::from_secs(5)),
        }
    }

    /// The broker's typed errors become RabbitMQ's 400 `{"error": "bad_request", "reason": …}`,
    /// every error in the reason, in the order met (exchanges before queues).
    #[tokio::test]
    async fn failed_imports_are_a_bad_request_listing_every_error() {
        let s = state();
        let defs = json!({
            "queues": [{"name": "q", "vhost": "nowhere", "durable": true}],
            "exchanges": [{"name": "x", "vhost": "/", "type": "nonsense"}],
        });
        let typed = s
            .broker
            .import_definitions(&serde_json::from_value(defs.clone()).unwrap());
        assert!(matches!(
            &typed[1],
            DefinitionsError::NoVHost { vhost, object: DefObject::Queue { name } }
                if vhost == "nowhere" && name == "q"
        ));
        let err = import(&s, defs).unwrap_err();
        let reason = "exchange 'x' in vhost '/': PRECONDITION_FAILED - unknown exchange type \
                      'nonsense'; queue 'q': no vhost 'nowhere'; list it under \"vhosts\" in \
                      the definitions, or create it first";
        assert_eq!(err, ApiError::BadRequest(reason.into()));
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({"error": "bad_request", "reason": reason}));
        // A document without errors imports.
        let defs = json!({"vhosts": [{"name": "v"}], "queues": [{"name": "q", "vhost": "v"}]});
        assert_eq!(import(&s, defs), Ok(()));
        assert!(s.broker.vhost("v").unwrap().queue("q").is_some());
    }
}
