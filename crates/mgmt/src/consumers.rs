//! `/api/consumers`: every consumer, with its queue and channel.

use crate::channels::{all_channels, channel_details};
use crate::listing::ListQuery;
use crate::queues::vhost;
use crate::{ApiError, AppState, State};
use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/consumers", get(list_all))
        .route("/consumers/{vhost}", get(list_vhost))
}

/// The consumers on channels of connections to `vhost` (or all), by connection, channel, tag.
fn consumers(state: &AppState, vhost: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for (conn, ch) in all_channels(state, vhost) {
        let mut list = ch.consumers();
        list.sort_by(|a, b| a.tag.cmp(&b.tag));
        for c in list {
            let exclusive = c.queue.consumers().iter().any(|(tag, qch, _, exclusive)| {
                *exclusive && *tag == c.tag && Arc::ptr_eq(qch, &ch)
            });
            out.push(json!({
                "consumer_tag": c.tag.as_str(),
                "queue": {"name": c.queue.name.as_str(), "vhost": c.queue.vhost_name},
                "channel_details": channel_details(state, &conn, ch.number),
                "ack_required": !c.no_ack,
                "exclusive": exclusive,
                "prefetch_count": c.prefetch,
                // Warren's additions: what the consumer holds unacknowledged, and for how long.
                "messages_unacknowledged": c.unacked,
                "oldest_unacked_age_ms": c.oldest_unacked.map(|t| t.elapsed().as_millis() as u64),
                "active": true,
                "activity_status": "up",
                "arguments": {},
            }));
        }
    }
    out
}

async fn list_all(state: State, list: ListQuery) -> Json<Value> {
    list.unpaged(consumers(&state, None))
}

async fn list_vhost(
    state: State,
    Path(vh): Path<String>,
    list: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let vh = vhost(&state, &vh)?;
    Ok(list.unpaged(consumers(&state, Some(&vh.name))))
}
