//! Access control over HTTP, as RabbitMQ's management API: `/api/users`,
//! `/api/permissions`, `/api/vhosts/{vhost}/permissions`, `/api/users/{user}/permissions`,
//! `/api/user-limits` and `/api/vhost-limits`, and vhost deletion. Changing anything, and
//! listing users (with their password hashes), needs the `administrator` tag.

use crate::access::require_admin;
use crate::auth::AuthUser;
use crate::error::parse_body;
use crate::listing::ListQuery;
use crate::{ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::auth::{HashingAlgorithm, User, UserLimits, VHostLimits};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/users", get(list_users))
        .route(
            "/users/{user}",
            get(one_user).put(put_user).delete(delete_user),
        )
        .route("/users/{user}/permissions", get(user_permissions))
        .route("/permissions", get(all_permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(one_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/user-limits", get(user_limits))
        .route(
            "/user-limits/{user}/{name}",
            axum::routing::put(put_user_limit).delete(delete_user_limit),
        )
        .route("/vhost-limits", get(vhost_limits))
        .route(
            "/vhost-limits/{vhost}/{name}",
            axum::routing::put(put_vhost_limit).delete(delete_vhost_limit),
        )
}

fn user_json(u: &User) -> Value {
    let mut limits = serde_json::Map::new();
    if let Some(n) = u.limits.max_connections {
        limits.insert("max-connections".into(), n.into());
    }
    if let Some(n) = u.limits.max_channels {
        limits.insert("max-channels".into(), n.into());
    }
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm.as_str(),
        "tags": u.tags,
        "limits": limits,
    })
}

async fn list_users(
    state: State,
    Extension(me): Extension<AuthUser>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let mut users = state.broker.users();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    list.paged(users.iter().map(user_json).collect())
}

async fn one_user(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let u = state.broker.user(&name).ok_or(ApiError::NotFound)?;
    Ok(Json(user_json(&u)))
}

/// PUT `{"password": "…", "tags": "administrator"}` or `{"password_hash": "…",
/// "hashing_algorithm": "…"}`: creates (201) or updates (204) a user.
async fn put_user(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    if name.is_empty() {
        return Err(ApiError::BadRequest("user name must not be empty".into()));
    }
    let b: Value = parse_body(&body)?;
    let existing = state.broker.user(&name);
    let (hash, alg) = match (b.get("password"), b.get("password_hash")) {
        (Some(Value::String(p)), _) => (
            warren_broker::auth::hash_password(p, HashingAlgorithm::Sha256),
            HashingAlgorithm::Sha256,
        ),
        (_, Some(Value::String(h))) => (
            h.clone(),
            HashingAlgorithm::parse(Some(
                b.get("hashing_algorithm")
                    .and_then(Value::as_str)
                    .unwrap_or("rabbit_password_hashing_sha256"),
            ))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        ),
        _ => match &existing {
            Some(u) => (u.password_hash.clone(), u.hashing_algorithm),
            None => {
                return Err(ApiError::BadRequest(
                    "password or password_hash must be set".into(),
                ))
            }
        },
    };
    let tags = match b.get("tags") {
        Some(t) => warren_broker::json::tags_from_json(t),
        None => existing
            .as_ref()
            .map(|u| u.tags.clone())
            .unwrap_or_default(),
    };
    state.broker.put_user(User {
        name,
        password_hash: hash,
        hashing_algorithm: alg,
        tags,
        limits: existing.as_ref().map(|u| u.limits).unwrap_or_default(),
    });
    Ok(crate::created_or_updated(existing.is_some()))
}

async fn delete_user(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    if state.broker.delete_user(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

fn permissions_json(state: &AppState, keep: impl Fn(&str, &str) -> bool) -> Value {
    state
        .broker
        .permissions()
        .into_iter()
        .filter(|(u, v, _)| keep(u, v))
        .map(|(user, vhost, p)| {
            json!({"user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read})
        })
        .collect()
}

async fn all_permissions(
    state: State,
    Extension(me): Extension<AuthUser>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    Ok(Json(permissions_json(&state, |_, _| true)))
}

async fn user_permissions(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    state.broker.user(&user).ok_or(ApiError::NotFound)?;
    Ok(Json(permissions_json(&state, |u, _| u == user)))
}

async fn vhost_permissions(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    state.broker.vhost(&vhost).ok_or(ApiError::VHostNotFound)?;
    Ok(Json(permissions_json(&state, |_, v| v == vhost)))
}

async fn one_permission(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let v = permissions_json(&state, |u, v| u == user && v == vhost);
    v.as_array()
        .and_then(|a| a.first().cloned())
        .map(Json)
        .ok_or(ApiError::NotFound)
}

/// PUT `{"configure": ".*", "write": ".*", "read": ".*"}`.
async fn put_permission(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    let b: Value = parse_body(&body)?;
    let field = |k: &str| -> Result<String, ApiError> {
        b.get(k)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| ApiError::BadRequest(format!("{k} not found")))
    };
    let (c, w, r) = (field("configure")?, field("write")?, field("read")?);
    if state.broker.user(&user).is_none() || state.broker.vhost(&vhost).is_none() {
        return Err(ApiError::BadRequest("vhost_or_user_not_found".into()));
    }
    let existed = state
        .broker
        .permissions()
        .iter()
        .any(|(u, v, _)| *u == user && *v == vhost);
    state
        .broker
        .set_permissions(&user, &vhost, &c, &w, &r)
        .map_err(ApiError::from)?;
    Ok(crate::created_or_updated(existed))
}

async fn delete_permission(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    if state.broker.clear_permissions(&user, &vhost) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// DELETE /api/vhosts/{vhost}: deletes the vhost, its queues and exchanges, and closes its
/// connections.
pub async fn delete_vhost(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path(vhost): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    if state.broker.delete_vhost(&vhost) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::VHostNotFound)
    }
}

fn limit_value(body: &[u8]) -> Result<Option<u32>, ApiError> {
    let b: Value = parse_body(body)?;
    match b.get("value").and_then(Value::as_i64) {
        Some(n) if n < 0 => Ok(None),
        Some(n) => Ok(Some(n as u32)),
        None => Err(ApiError::BadRequest("value not found".into())),
    }
}

async fn user_limits(
    state: State,
    Extension(me): Extension<AuthUser>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    Ok(Json(
        state
            .broker
            .users()
            .iter()
            .filter(|u| u.limits != UserLimits::default())
            .map(|u| json!({"user": u.name, "value": user_json(u)["limits"]}))
            .collect(),
    ))
}

fn set_user_limit(
    state: &AppState,
    user: &str,
    name: &str,
    value: Option<u32>,
) -> Result<StatusCode, ApiError> {
    let mut l = state.broker.user(user).ok_or(ApiError::NotFound)?.limits;
    match name {
        "max-connections" => l.max_connections = value,
        "max-channels" => l.max_channels = value,
        other => return Err(ApiError::BadRequest(format!("unknown limit '{other}'"))),
    }
    state.broker.set_user_limits(user, l)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_user_limit(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    set_user_limit(&state, &user, &name, limit_value(&body)?)
}

async fn delete_user_limit(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((user, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    set_user_limit(&state, &user, &name, None)
}

async fn vhost_limits(
    state: State,
    Extension(me): Extension<AuthUser>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&me)?;
    let mut out = Vec::new();
    for vh in state.broker.vhosts() {
        let l = state.broker.vhost_limits(&vh.name);
        let mut m = serde_json::Map::new();
        if let Some(n) = l.max_connections {
            m.insert("max-connections".into(), n.into());
        }
        if let Some(n) = l.max_queues {
            m.insert("max-queues".into(), n.into());
        }
        if !m.is_empty() {
            out.push(json!({"vhost": vh.name, "value": m}));
        }
    }
    Ok(Json(Value::Array(out)))
}

fn set_vhost_limit(
    state: &AppState,
    vhost: &str,
    name: &str,
    value: Option<u32>,
) -> Result<StatusCode, ApiError> {
    state.broker.vhost(vhost).ok_or(ApiError::VHostNotFound)?;
    let mut l: VHostLimits = state.broker.vhost_limits(vhost);
    match name {
        "max-connections" => l.max_connections = value,
        "max-queues" => l.max_queues = value,
        other => return Err(ApiError::BadRequest(format!("unknown limit '{other}'"))),
    }
    state.broker.set_vhost_limits(vhost, l)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_vhost_limit(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    set_vhost_limit(&state, &vhost, &name, limit_value(&body)?)
}

async fn delete_vhost_limit(
    state: State,
    Extension(me): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_admin(&me)?;
    set_vhost_limit(&state, &vhost, &name, None)
}
