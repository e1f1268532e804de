//! Messages through the API, as RabbitMQ's management plugin: `POST
//! /api/queues/{vhost}/{name}/get` takes messages from a queue (`count`, `ackmode`,
//! `encoding`, `truncate`) and `POST /api/exchanges/{vhost}/{name}/publish` publishes one
//! (`routing_key`, `properties`, `payload`, `payload_encoding`), answering `{"routed": …}`.
//!
//! Both act as the authenticated user would over AMQP: the user needs access to the vhost,
//! read permission on the queue, write permission on the exchange. They use the queue's own
//! basic.get, ack, reject and requeue commands and the vhost's routing, so dead-lettering,
//! redelivery flags, counters and durability are those of a client's get or publish. A
//! persistent message routed to a durable queue is answered once it is on disk (RabbitMQ's
//! plugin publishes in confirm mode).

use crate::auth::AuthUser;
use crate::{args, exchange_from_path, ApiError, AppState, State};
use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use warren_broker::auth::{Access, AccessContext, Resource};
use warren_broker::queue::{CheckoutKey, Followups};
use warren_broker::queue::{PublishError, QueuedMessage};
use warren_broker::{Message, VHost};
use warren_protocol::{BasicProperties, ShortStr};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/queues/{vhost}/{name}/get", post(get_messages))
        .route("/exchanges/{vhost}/{name}/publish", post(publish))
}

/// How long a publish waits for its group commit before answering 500.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The vhost, and the user's access to it: 404 if it does not exist, 401 without access.
fn vhost_for(
    state: &AppState,
    user: &AuthUser,
    vhost: &str,
) -> Result<(Arc<VHost>, AccessContext), ApiError> {
    let vh = state.broker.vhost(vhost).ok_or(ApiError::VHostNotFound)?;
    let access = state
        .broker
        .vhost_access(&user.0.name, vhost)
        .map_err(|_| {
            ApiError::AccessRefused("User not authorised to access virtual host".into())
        })?;
    Ok((vh, access))
}

/// A body as JSON (`not_json` otherwise), with RabbitMQ's list of missing keys.
fn decode_body(body: &[u8], keys: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = match body.iter().all(u8::is_ascii_whitespace) {
        true => json!({}),
        false => {
            serde_json::from_slice(body).map_err(|_| ApiError::BadRequest("not_json".into()))?
        }
    };
    let Value::Object(m) = v else {
        return Err(ApiError::BadRequest("not_json".into()));
    };
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !m.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if missing.is_empty() {
        return Ok(m);
    }
    // As Erlang's ~p prints the list: on one line if it fits in 80 columns.
    let one_line = format!("[{}]", missing.join(","));
    let reason = if one_line.len() <= 80 {
        one_line
    } else {
        format!("[{}]", missing.join(",\n "))
    };
    Err(ApiError::BadRequest(reason))
}

/// An integer as RabbitMQ's `parse_int` reads it (a number or a numeric string).
fn int_field(v: &Value) -> Result<i64, ApiError> {
    match v {
        Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or(0)),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequestTerm(json!(["not_integer", s]))),
        other => Err(ApiError::BadRequestTerm(json!(["not_integer", other]))),
    }
}

/// What happens to each message got, as RabbitMQ's `ackmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    /// Back into the queue (redelivered) once all are got.
    Requeue,
    /// Acknowledged: gone.
    Ack,
    /// Rejected without requeue: dead-lettered if the queue has a dead-letter exchange.
    Reject,
}

fn ack_mode(s: &str) -> Option<AckMode> {
    Some(match s {
        "ack_requeue_true" | "reject_requeue_true" => AckMode::Requeue,
        "ack_requeue_false" => AckMode::Ack,
        "reject_requeue_false" => AckMode::Reject,
        _ => return None,
    })
}

async fn get_messages(
    state: State,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (vh, access) = vhost_for(&state, &user, &vhost)?;
    vh.queue(&name)
        .ok_or(ApiError::NotFoundReason("queue_not_found"))?;
    let b = decode_body(&body, &["ackmode", "count", "encoding"])?;
    let count = int_field(&b["count"])?;
    let truncate = match b.get("truncate") {
        None | Some(Value::Null) => None,
        Some(v) => Some(int_field(v)?).filter(|t| *t >= 0).map(|t| t as usize),
    };
    let mode = b["ackmode"]
        .as_str()
        .and_then(ack_mode)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Unsupported ackmode {}. Please use ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false.",
                b["ackmode"]
            ))
        })?;
    let base64 = match b["encoding"].as_str() {
        Some("auto") => false,
        Some("base64") => true,
        _ => {
            return Err(ApiError::BadRequest(
                "Unsupported encoding. Please use auto or base64.".into(),
            ))
        }
    };
    // As basic.get over AMQP: read permission, then the queue (an exclusive queue of a
    // connection is locked).
    access
        .check(Access::Read, Resource::Queue, &name)
        .map_err(|e| ApiError::AccessRefused(e.text))?;
    let q = vh.queue_for(&name, 0)?;
    let mut fu = Followups::new();
    // The messages are checked out to the request, as to a channel's basic.get.
    let owner = warren_broker::delivery::new_owner();
    let (mut out, mut held) = (Vec::new(), Vec::<CheckoutKey>::new());
    // A negative count takes every message (RabbitMQ counts down and never reaches 0).
    while count < 0 || (out.len() as i64) < count {
        let Some(got) = q.get(Some(owner), &mut fu) else {
            break;
        };
        out.push(message_json(&got.qm, got.remaining, base64, truncate));
        let Some(checkout) = got.checkout else {
            continue;
        };
        let key = (owner, checkout);
        match mode {
            AckMode::Ack => q.settle([key]),
            AckMode::Reject => q.reject([key], &mut fu),
            AckMode::Requeue => held.push(key),
        }
    }
    if !held.is_empty() {
        q.requeue(held, &mut fu);
    }
    vh.follow_up(fu);
    tracing::debug!(queue = %name, vhost = %vhost, user = %user.0.name, got = out.len(), ?mode, "messages got through the management API");
    Ok(Json(Value::Array(out)))
}

/// A message as the plugin shows it: the payload as a string when it is UTF-8 (and
/// `encoding` is `auto`), otherwise base64; `truncate` cuts it (not `payload_bytes`).
fn message_json(
    qm: &QueuedMessage,
    remaining: u32,
    base64: bool,
    truncate: Option<usize>,
) -> Value {
    let m = &qm.msg;
    let body = &m.body[..truncate.unwrap_or(usize::MAX).min(m.body.len())];
    let (payload, encoding) = match (base64, std::str::from_utf8(body)) {
        (false, Ok(s)) => (s.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    };
    json!({
        "payload_bytes": m.body.len(),
        "redelivered": qm.redelivered,
        "exchange": m.exchange.as_str(),
        "routing_key": m.routing_key.as_str(),
        "message_count": remaining,
        "properties": properties_json(&m.decode_properties()),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// Message properties as JSON; none at all is `[]`, as RabbitMQ writes an empty list.
pub(crate) fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<ShortStr>| {
        if let Some(v) = v {
            m.insert(k.into(), v.as_str().into());
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        m.insert("headers".into(), args::table_to_json(h));
    }
    if let Some(d) = p.delivery_mode {
        m.insert("delivery_mode".into(), d.into());
    }
    if let Some(n) = p.priority {
        m.insert("priority".into(), n.into());
    }
    if let Some(t) = p.timestamp {
        m.insert("timestamp".into(), t.into());
    }
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

/// The `properties` of a publish, as the plugin's `props_to_method` reads them: unknown keys
/// are ignored, integers must be integers (`["not_int", key]`).
fn properties_from_json(v: &Value) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    let m = match v {
        Value::Object(m) => m,
        Value::Array(a) if a.is_empty() => return Ok(p),
        Value::Null => return Ok(p),
        _ => return Err(ApiError::BadRequest("properties must be an object".into())),
    };
    let short = |k: &str| -> Result<Option<ShortStr>, ApiError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.as_str().into())),
            Some(_) => Err(ApiError::BadRequestTerm(json!(["not_short_string", k]))),
        }
    };
    let int = |k: &str, max: i64| -> Result<Option<i64>, ApiError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match int_field(v) {
                Ok(n) if (0..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::BadRequestTerm(json!(["not_int", k]))),
            },
        }
    };
    p.content_type = short("content_type")?;
    p.content_encoding = short("content_encoding")?;
    p.correlation_id = short("correlation_id")?;
    p.reply_to = short("reply_to")?;
    p.expiration = short("expiration")?;
    p.message_id = short("message_id")?;
    p.kind = short("type")?;
    p.user_id = short("user_id")?;
    p.app_id = short("app_id")?;
    p.cluster_id = short("cluster_id")?;
    p.delivery_mode = int("delivery_mode", 255)?.map(|n| n as u8);
    p.priority = int("priority", 255)?.map(|n| n as u8);
    p.timestamp = int("timestamp", i64::MAX)?.map(|n| n as u64);
    if let Some(h) = m.get("headers").filter(|h| !h.is_null()) {
        p.headers = Some(args::json_to_table(h)?);
    }
    Ok(p)
}

async fn publish(
    state: State,
    Extension(user): Extension<AuthUser>,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (vh, access) = vhost_for(&state, &user, &vhost)?;
    let name = exchange_from_path(&name);
    vh.exchange(name)
        .ok_or(ApiError::NotFoundReason("exchange_not_found"))?;
    let b = decode_body(
        &body,
        &["routing_key", "properties", "payload", "payload_encoding"],
    )?;
    let routing_key = match &b["routing_key"] {
        Value::String(s) if s.len() <= 255 => s.clone(),
        Value::String(_) => {
            return Err(ApiError::BadRequest(
                "routing_key is longer than 255 bytes".into(),
            ))
        }
        _ => {
            return Err(ApiError::BadRequestTerm(json!([
                "not_string",
                "routing_key"
            ])))
        }
    };
    let payload = b["payload"].as_str().unwrap_or_default();
    let payload: Vec<u8> = match &b["payload_encoding"] {
        Value::String(e) if e == "string" => payload.as_bytes().to_vec(),
        Value::String(e) if e == "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|_| ApiError::BadRequestTerm(json!(["not_base64", payload])))?,
        other => {
            let shown = other.as_str().map_or_else(|| other.clone(), |s| json!(s));
            return Err(ApiError::BadRequestTerm(json!([
                "unsupported_encoding",
                shown
            ])));
        }
    };
    let props = properties_from_json(&b["properties"])?;
    // Refusals as a channel would make them, reported as RabbitMQ's plugin reports a closed
    // channel: 400 with the reply code and text.
    let refused =
        |e: warren_broker::AmqpError| ApiError::BadRequest(format!("{} {}", e.code, e.text));
    access
        .check(Access::Write, Resource::Exchange, name)
        .map_err(refused)?;
    let x = vh.exchange_for_publish(name).map_err(refused)?;
    if let Some(claimed) = props
        .user_id
        .as_ref()
        .filter(|u| u.as_str() != user.0.name)
        .filter(|_| !user.0.tags.iter().any(|t| t == "impersonator"))
    {
        return Err(refused(warren_broker::AmqpError::precondition(format!(
            "user_id property set to '{}' but authenticated user was '{}'",
            claimed.as_str(),
            user.0.name
        ))));
    }
    let msg = Arc::new(Message::new(
        name.into(),
        routing_key.as_str().into(),
        props.to_bytes(),
        payload.into(),
    ));
    if x.delayed {
        if let Some(delay) = warren_broker::delayed::delay_of(&msg) {
            vh.delayed
                .hold(&x.name, x.durable, msg, delay)
                .map_err(|e| {
                    ApiError::Internal(format!("could not store the delayed message: {e}"))
                })?;
            return Ok(Json(json!({"routed": true})));
        }
    }
    let mut queues = Vec::new();
    vh.route(&x, &msg, &mut queues);
    let persistent = msg.is_persistent();
    let (mut fu, mut epoch, mut failed) = (Followups::new(), None::<u64>, None);
    for q in &queues {
        match q.publish(msg.clone(), persistent, &mut fu) {
            Ok(p) => epoch = epoch.max(p.epoch),
            Err(PublishError::Rejected) => {}
            Err(PublishError::Store(e)) => failed = Some(e.to_string()),
        }
    }
    vh.follow_up(fu);
    if let Some(e) = failed {
        tracing::error!(exchange = %x.name, vhost = %vhost, error = %e, "could not store a message published through the management API");
        return Err(ApiError::Internal(format!(
            "could not store the message: {e}"
        )));
    }
    if let (Some(epoch), Some(p)) = (epoch, state.broker.persistence()) {
        let mut synced = p.subscribe();
        let on_disk = tokio::time::timeout(
            SYNC_TIMEOUT,
            synced.wait_for(|s| s.synced_epoch >= epoch || s.failed_epoch >= epoch),
        )
        .await;
        match on_disk {
            Ok(Ok(s)) if s.failed_epoch < epoch => {}
            _ => {
                return Err(ApiError::Internal(
                    "the message could not be written to disk".into(),
                ))
            }
        }
    }
    Ok(Json(json!({"routed": !queues.is_empty()})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_are_listed_as_rabbitmq_prints_them() {
        assert_eq!(
            decode_body(b"{}", &["ackmode", "count", "encoding"]).unwrap_err(),
            ApiError::BadRequest(
                "[{key_missing,ackmode},{key_missing,count},{key_missing,encoding}]".into()
            )
        );
        assert_eq!(
            decode_body(b"{}", &["routing_key", "properties", "payload", "payload_encoding"])
                .unwrap_err(),
            ApiError::BadRequest("[{key_missing,routing_key},\n {key_missing,properties},\n {key_missing,payload},\n {key_missing,payload_encoding}]".into())
        );
        assert_eq!(
            decode_body(b"nope", &[]).unwrap_err(),
            ApiError::BadRequest("not_json".into())
        );
    }

    #[test]
    fn properties_round_trip_and_bad_integers_are_named() {
        let v = json!({"content_type": "text/plain", "headers": {"h": 1}, "delivery_mode": 2, "priority": 3, "bogus": 1});
        let p = properties_from_json(&v).unwrap();
        assert_eq!(
            properties_json(&p),
            json!({"content_type": "text/plain", "headers": {"h": 1}, "delivery_mode": 2, "priority": 3})
        );
        assert_eq!(properties_json(&BasicProperties::default()), json!([]));
        assert_eq!(
            properties_from_json(&json!({"delivery_mode": "x"})).unwrap_err(),
            ApiError::BadRequestTerm(json!(["not_int", "delivery_mode"]))
        );
        assert_eq!(
            int_field(&json!("x")).unwrap_err(),
            ApiError::BadRequestTerm(json!(["not_integer", "x"]))
        );
        assert_eq!(int_field(&json!("5")).unwrap(), 5);
    }
}
