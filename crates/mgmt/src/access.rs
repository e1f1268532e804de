//! What a management user may see and do, by tags and permissions, as RabbitMQ's
//! `rabbit_web_dispatch_access_control`:
//!
//! - `administrator`: everything.
//! - `monitoring`: also the node (`/api/nodes`), every vhost in `/api/vhosts`, and every
//!   connection and channel.
//! - `policymaker`: also policies (set and cleared) in the vhosts it has permissions in.
//! - `management`: the objects of the vhosts it has permissions in, and its own connections
//!   and channels.
//!
//! Acting on a queue through the API needs the permission AMQP would need (configure to
//! declare or delete, read to purge or get), so the console cannot do more than a client.

use crate::auth::AuthUser;
use crate::{ApiError, AppState};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashSet;
use warren_broker::auth::{Access, Resource};

pub fn has_tag(u: &AuthUser, tag: &str) -> bool {
    u.0.tags.iter().any(|t| t == tag)
}

pub fn is_admin(u: &AuthUser) -> bool {
    has_tag(u, "administrator")
}

pub fn is_monitor(u: &AuthUser) -> bool {
    is_admin(u) || has_tag(u, "monitoring")
}

pub fn is_policymaker(u: &AuthUser) -> bool {
    is_admin(u) || has_tag(u, "policymaker")
}

/// 401 "Not administrator user" unless the user is one.
pub fn require_admin(u: &AuthUser) -> Result<(), ApiError> {
    if is_admin(u) {
        Ok(())
    } else {
        Err(ApiError::AccessRefused("Not administrator user".into()))
    }
}

/// Middleware for routes only administrators may use (definitions).
pub async fn admin_only(req: Request, next: Next) -> Result<Response, ApiError> {
    match req.extensions().get::<AuthUser>() {
        Some(u) => require_admin(u)?,
        None => return Err(ApiError::Unauthorized("Login failed".into())),
    }
    Ok(next.run(req).await)
}

/// 401 "Not monitor user" unless the user is tagged `monitoring` or `administrator`.
pub fn require_monitor(u: &AuthUser) -> Result<(), ApiError> {
    if is_monitor(u) {
        Ok(())
    } else {
        Err(ApiError::AccessRefused("Not monitor user".into()))
    }
}

/// 401 as RabbitMQ refuses a policy change from a user that is not a policymaker.
pub fn require_policymaker(u: &AuthUser) -> Result<(), ApiError> {
    if is_policymaker(u) {
        Ok(())
    } else {
        Err(ApiError::AccessRefused(
            "User not authorised to access object".into(),
        ))
    }
}

/// The vhosts whose objects the user's lists show: None for all (administrators), else
/// those it has permissions in.
pub fn visible_vhosts(state: &AppState, u: &AuthUser) -> Option<HashSet<String>> {
    if is_admin(u) {
        return None;
    }
    Some(
        state
            .broker
            .permissions()
            .into_iter()
            .filter(|(user, _, _)| *user == u.0.name)
            .map(|(_, vhost, _)| vhost)
            .collect(),
    )
}

/// 401 "Access refused." unless the user has `access` to the queue `name` in `vhost` (what
/// RabbitMQ answers to a purge, declare or delete the user's permissions do not allow).
pub fn check_queue(
    state: &AppState,
    u: &AuthUser,
    vhost: &str,
    access: Access,
    name: &str,
) -> Result<(), ApiError> {
    check_resource(state, u, vhost, access, Resource::Queue, name)
}

/// As [`check_queue`], for any kind of resource.
pub fn check_resource(
    state: &AppState,
    u: &AuthUser,
    vhost: &str,
    access: Access,
    resource: Resource,
    name: &str,
) -> Result<(), ApiError> {
    let refused = || ApiError::AccessRefused("Access refused.".into());
    let ctx = state
        .broker
        .vhost_access(&u.0.name, vhost)
        .map_err(|_| refused())?;
    ctx.check(access, resource, name).map_err(|_| refused())
}
