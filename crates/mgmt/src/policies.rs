//! `/api/policies` and `/api/operator-policies`: list, show, set (PUT) and clear (DELETE)
//! policies, in RabbitMQ's JSON shape (`pattern`, `apply-to`, `priority`, `definition`).

use crate::access::{require_admin, require_policymaker};
use crate::auth::AuthUser;
use crate::error::parse_body;
use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::{ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::json::{json_to_table, table_to_json};
use warren_broker::policy::Policy;
use warren_broker::VHost;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/policies", get(|s, l| list_all(s, l, false)))
        .route(
            "/policies/{vhost}",
            get(|s, p, l| list_vhost(s, p, l, false)),
        )
        .route(
            "/policies/{vhost}/{name}",
            get(|s, p| show(s, p, false))
                .put(|s, u, p, b| put(s, u, p, b, false))
                .delete(|s, u, p| remove(s, u, p, false)),
        )
        .route("/operator-policies", get(|s, l| list_all(s, l, true)))
        .route(
            "/operator-policies/{vhost}",
            get(|s, p, l| list_vhost(s, p, l, true)),
        )
        .route(
            "/operator-policies/{vhost}/{name}",
            get(|s, p| show(s, p, true))
                .put(|s, u, p, b| put(s, u, p, b, true))
                .delete(|s, u, p| remove(s, u, p, true)),
        )
}

fn policy_json(vhost: &str, p: &Policy) -> Value {
    json!({
        "vhost": vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to.as_str(),
        "priority": p.priority,
        "definition": table_to_json(&p.definition),
    })
}

fn vhost_policies(vh: &VHost, operator: bool) -> Vec<Value> {
    let mut ps = vh.policies(operator);
    ps.sort_by(|a, b| a.name.cmp(&b.name));
    ps.iter().map(|p| policy_json(&vh.name, p)).collect()
}

async fn list_all(state: State, list: ListQuery, operator: bool) -> Json<Value> {
    let mut vhosts = state.broker.vhosts();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    list.unpaged(
        vhosts
            .iter()
            .flat_map(|vh| vhost_policies(vh, operator))
            .collect(),
    )
}

async fn list_vhost(
    state: State,
    Path(vh): Path<String>,
    list: ListQuery,
    operator: bool,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(list.unpaged(vhost_policies(&vh, operator)))
}

async fn show(
    state: State,
    Path((vh, name)): Path<(String, String)>,
    operator: bool,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    let p = vh
        .policies(operator)
        .into_iter()
        .find(|p| p.name == name)
        .ok_or(ApiError::NotFound)?;
    Ok(Json(policy_json(&vh.name, &p)))
}

#[derive(Deserialize)]
struct PolicyBody {
    pattern: String,
    #[serde(rename = "apply-to", default = "default_apply_to")]
    apply_to: String,
    #[serde(default)]
    priority: i64,
    definition: Value,
}

fn default_apply_to() -> String {
    "all".into()
}

async fn put(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
    body: Bytes,
    operator: bool,
) -> Result<StatusCode, ApiError> {
    may_change(&me, operator)?;
    let vh = vhost(&state, &vh)?;
    let b: PolicyBody = parse_body(&body)?;
    if !b.definition.is_object() {
        return Err(ApiError::BadRequest(
            "definition must be a JSON object".into(),
        ));
    }
    let existed = vh.policies(operator).iter().any(|p| p.name == name);
    let p = Policy::new(
        &name,
        &b.pattern,
        &b.apply_to,
        b.priority,
        json_to_table(&b.definition),
    )?;
    vh.set_policy(p, operator);
    Ok(crate::created_or_updated(existed))
}

async fn remove(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vh, name)): Path<(String, String)>,
    operator: bool,
) -> Result<StatusCode, ApiError> {
    may_change(&me, operator)?;
    let vh = vhost(&state, &vh)?;
    if vh.clear_policy(&name, operator) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Policies are set by policymakers, operator policies by administrators.
fn may_change(me: &AuthUser, operator: bool) -> Result<(), ApiError> {
    if operator {
        require_admin(me)
    } else {
        require_policymaker(me)
    }
}
