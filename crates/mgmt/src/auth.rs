//! HTTP basic authentication against the broker's users, with RabbitMQ's rules: the user must
//! exist with that password, a loopback-only user (guest) must come from loopback, and the
//! user needs a management tag (`administrator`, `monitoring`, `policymaker`, `management`).

use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use warren_broker::broker::User;

const MANAGEMENT_TAGS: &[&str] = &["administrator", "monitoring", "policymaker", "management"];

/// The authenticated user, for handlers that need it (`/api/whoami`).
#[derive(Clone, Debug)]
pub struct AuthUser(pub User);

/// Middleware: authenticates the request or answers 401.
pub async fn require_user(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    // The web console's requests say so: their 401s carry no `WWW-Authenticate`, so that
    // the browser shows the console's own error instead of its password dialog.
    let from_console = req
        .headers()
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
    let quiet = |e: ApiError| match e {
        ApiError::Unauthorized(reason) if from_console => ApiError::LoginRefused(reason),
        other => other,
    };
    let (user, password) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(decode_basic)
        .ok_or_else(|| quiet(ApiError::Unauthorized("Login failed".into())))?;
    let u = check(&state, &user, &password, loopback).map_err(quiet)?;
    req.extensions_mut().insert(AuthUser(u));
    Ok(next.run(req).await)
}

fn check(state: &AppState, user: &str, password: &str, loopback: bool) -> Result<User, ApiError> {
    // Asked first as if from loopback, so that a wrong password and a remote guest get
    // RabbitMQ's two different reasons.
    let u = state
        .broker
        .authenticate(user, password, true)
        .map_err(|_| ApiError::Unauthorized("Login failed".into()))?;
    if !loopback && state.broker.authenticate(user, password, false).is_err() {
        return Err(ApiError::Unauthorized(
            "User can only log in via localhost".into(),
        ));
    }
    if !u.tags.iter().any(|t| MANAGEMENT_TAGS.contains(&t.as_str())) {
        return Err(ApiError::Unauthorized("Not management user".into()));
    }
    Ok(u)
}

/// `Basic dXNlcjpwYXNz` → ("user", "pass").
fn decode_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode() {
        assert_eq!(
            decode_basic("Basic Z3Vlc3Q6Z3Vlc3Q="),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            decode_basic("basic dTpwOnE="),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(decode_basic("Bearer abc"), None);
        assert_eq!(decode_basic("Basic !!!"), None);
    }
}
