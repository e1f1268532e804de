//! `/api/channels`: every open channel with its consumers, unacknowledged messages and
//! prefetch. A channel is named `<connection name> (<number>)`, as in RabbitMQ.

use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::rates::History;
use crate::{ApiError, AppState, State};
use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use warren_broker::connections::ConnectionEntry;
use warren_broker::DeliveryChannel;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/channels", get(list_all))
        .route("/channels/{name}", get(show))
        .route("/vhosts/{vhost}/channels", get(list_vhost))
}

pub(crate) fn channel_name(conn: &ConnectionEntry, number: u16) -> String {
    format!("{} ({number})", conn.name)
}

/// The short form of a channel that consumers carry (`channel_details`).
pub(crate) fn channel_details(state: &AppState, conn: &ConnectionEntry, number: u16) -> Value {
    json!({
        "name": channel_name(conn, number),
        "number": number,
        "connection_name": conn.name,
        "node": state.node,
        "peer_host": conn.peer.ip().to_string(),
        "peer_port": conn.peer.port(),
        "user": conn.user,
    })
}

pub(crate) fn channel_json(
    state: &AppState,
    conn: &ConnectionEntry,
    ch: &DeliveryChannel,
    h: History,
) -> Value {
    let s = ch.stats();
    json!({
        "name": channel_name(conn, ch.number),
        "number": ch.number,
        "node": state.node,
        "user": conn.user,
        "user_who_performed_action": conn.user,
        "vhost": conn.vhost,
        "connection_details": {
            "name": conn.name,
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
        },
        "consumer_count": s.consumers,
        "messages_unacknowledged": s.messages_unacknowledged,
        "prefetch_count": s.prefetch_count,
        "global_prefetch_count": s.global_prefetch_count,
        "state": "running",
        "transactional": ch.counters.is_transactional(),
        "confirm": ch.counters.is_confirm_mode(),
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "message_stats": state.rates.channel_stats(
            conn.id,
            ch.number,
            &crate::rates::message_fields(&warren_broker::stats::MessageCounts::of(&ch.counters)),
            h,
        ),
    })
}

/// Every channel of every connection (of one vhost, if given), by connection then number.
pub(crate) fn all_channels(
    state: &AppState,
    vhost: Option<&str>,
) -> Vec<(Arc<ConnectionEntry>, Arc<DeliveryChannel>)> {
    let mut out = Vec::new();
    for c in state.broker.connections.list() {
        if vhost.is_some_and(|v| v != c.vhost) {
            continue;
        }
        let mut chans = c.channels.lock().clone();
        chans.sort_by_key(|ch| ch.number);
        out.extend(chans.into_iter().map(|ch| (c.clone(), ch)));
    }
    out
}

async fn list_all(state: State, h: History, list: ListQuery) -> Result<Json<Value>, ApiError> {
    list.paged_own(
        all_channels(&state, None)
            .iter()
            .map(|(c, ch)| channel_json(&state, c, ch, h))
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
    let chans = all_channels(&state, Some(&vh.name));
    list.paged_own(
        chans
            .iter()
            .map(|(c, ch)| channel_json(&state, c, ch, h))
            .collect(),
    )
}

async fn show(state: State, Path(name): Path<String>, h: History) -> Result<Json<Value>, ApiError> {
    all_channels(&state, None)
        .iter()
        .find(|(c, ch)| channel_name(c, ch.number) == name)
        .map(|(c, ch)| Json(channel_json(&state, c, ch, h)))
        .ok_or(ApiError::NotFound)
}
