//! RabbitMQ's list query parameters, in one place for every list the API returns (as the
//! plugin's `rabbit_mgmt_util:reply_list/5` and `augment_resources/6`):
//!
//! - `sort` (a column, dotted for nested fields: `message_stats.publish`) and `sort_reverse`;
//!   values compare in Erlang's term order (numbers, then `false`/`null`/`true`, objects,
//!   arrays, strings), a missing value as `0`; ties keep the list's default order (by vhost,
//!   then name).
//! - `columns` (comma-separated, dotted for nested fields): only those fields are kept.
//! - `page` and `page_size` (default 100, at most 500), and `name` (a case-insensitive
//!   substring, or a case-insensitive regex with `use_regex=true`), on the lists RabbitMQ
//!   paginates: the answer is then `{filtered_count, item_count, items, page, page_count,
//!   page_size, total_count}` instead of the plain array. As in RabbitMQ, `name` filters only
//!   a paginated list.
//!
//! Lists show only what the user may see ([`crate::access`]): objects of the vhosts it has
//! permissions in, and (unless it is a monitor) only its own connections and channels.
//!
//! Bad values get RabbitMQ's 400s with its words: `Pagination parameters are invalid` (not
//! a number, or a bad regex), `invalid_pagination_parameters` (out of range),
//! `page_out_of_range`.

use crate::access::{is_monitor, visible_vhosts};
use crate::auth::AuthUser;
use crate::{ApiError, AppState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::Json;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

pub const DEFAULT_PAGE_SIZE: i64 = 100;
pub const MAX_PAGE_SIZE: i64 = 500;

/// The query string of a list request, read when the list is answered, and what the user
/// may see.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pairs: Vec<(String, String)>,
    /// The vhosts whose objects are shown (None: all).
    visible: Option<HashSet<String>>,
    /// Show only this user's connections and channels (None: everyone's).
    own: Option<String>,
    /// The user is a monitor (sees every vhost in `/api/vhosts`).
    monitor: bool,
}

impl FromRequestParts<Arc<AppState>> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let mut q = ListQuery::parse(parts.uri.query().unwrap_or(""));
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            q.visible = visible_vhosts(state, user);
            q.monitor = is_monitor(user);
            q.own = (!q.monitor).then(|| user.0.name.clone());
        }
        Ok(q)
    }
}

/// A page that was asked for.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    page: usize,
    page_size: usize,
}

impl ListQuery {
    /// Reads `a=b&c=d` (percent-decoded, `+` as a space); pairs that do not decode are skipped.
    pub fn parse(query: &str) -> ListQuery {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect();
        ListQuery {
            pairs,
            ..Default::default()
        }
    }

    /// Whether the user sees the vhost `name` in `/api/vhosts`.
    pub fn sees_vhost(&self, name: &str) -> bool {
        self.monitor || self.visible.as_ref().is_none_or(|v| v.contains(name))
    }

    /// Connections or channels, paginated as [`ListQuery::paged`]: a monitor sees everyone's,
    /// other users only their own (whatever the vhost, as RabbitMQ's `filter_conn_ch_list`).
    pub fn paged_own(&self, items: Vec<Value>) -> Result<Json<Value>, ApiError> {
        let items = match &self.own {
            None => items,
            Some(me) => items
                .into_iter()
                .filter(|v| v.get("user").and_then(Value::as_str) == Some(me))
                .collect(),
        };
        self.paged_visible(items)
    }

    /// Objects of connections (stream publishers and consumers), unpaginated: a monitor
    /// sees everyone's, other users those of their own connections.
    pub fn unpaged_own(&self, items: Vec<Value>) -> Json<Value> {
        let items = match &self.own {
            None => items,
            Some(me) => items
                .into_iter()
                .filter(|v| v["connection_details"]["user"].as_str() == Some(me))
                .collect(),
        };
        self.unpaged(items)
    }

    /// Drops the objects of vhosts the user may not see.
    fn visible_items(&self, mut items: Vec<Value>) -> Vec<Value> {
        if let Some(vhosts) = &self.visible {
            // Objects name their vhost; consumers name their queue's.
            let vhost_of = |v: &Value| {
                v.get("vhost")
                    .or_else(|| v.get("queue").and_then(|q| q.get("vhost")))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            items.retain(|v| vhost_of(v).is_none_or(|vh| vhosts.contains(&vh)));
        }
        items
    }

    /// The first value of `key`, as RabbitMQ's `qs_val`.
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A list RabbitMQ paginates (queues, exchanges, connections, channels, vhosts, users).
    pub fn paged(&self, items: Vec<Value>) -> Result<Json<Value>, ApiError> {
        self.paged_visible(self.visible_items(items))
    }

    fn paged_visible(&self, items: Vec<Value>) -> Result<Json<Value>, ApiError> {
        let page = self.page()?;
        let items = self.sorted(items);
        let Some(page) = page else {
            return Ok(Json(Value::Array(self.select_columns(items))));
        };
        let total = items.len();
        let filtered = self.filter_by_name(items)?;
        let filtered_count = filtered.len();
        // As lists:sublist/3: a page may start just past the end (empty), not beyond.
        let offset = (page.page - 1).saturating_mul(page.page_size);
        if offset > filtered_count {
            return Err(ApiError::Pagination {
                error: "page_out_of_range",
                reason: format!(
                    "Page out of range, page: {} page size: {}, len: {}",
                    page.page, page.page_size, filtered_count
                ),
            });
        }
        let items: Vec<Value> = filtered
            .into_iter()
            .skip(offset)
            .take(page.page_size)
            .collect();
        let items = self.select_columns(items);
        Ok(Json(serde_json::json!({
            "filtered_count": filtered_count,
            "item_count": items.len(),
            "items": items,
            "page": page.page,
            "page_count": filtered_count.div_ceil(page.page_size),
            "page_size": page.page_size,
            "total_count": total,
        })))
    }

    /// A list RabbitMQ sorts and cuts to columns but does not paginate (bindings, consumers,
    /// permissions, policies, nodes).
    pub fn unpaged(&self, items: Vec<Value>) -> Json<Value> {
        Json(Value::Array(
            self.select_columns(self.sorted(self.visible_items(items))),
        ))
    }

    /// `page` and `page_size`, checked as `rabbit_mgmt_util:pagination_params/1`.
    fn page(&self) -> Result<Option<Page>, ApiError> {
        let number = |key: &str| -> Result<Option<i64>, ApiError> {
            match self.get(key) {
                None => Ok(None),
                Some(s) => s
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| ApiError::BadRequest("Pagination parameters are invalid".into())),
            }
        };
        let (page, size) = (number("page")?, number("page_size")?);
        let shown = |v: Option<i64>| v.map_or("undefined".to_string(), |n| n.to_string());
        match (page, size) {
            (None, _) => Ok(None),
            (Some(p), None) if p > 0 => Ok(Some(Page {
                page: p as usize,
                page_size: DEFAULT_PAGE_SIZE as usize,
            })),
            (Some(p), Some(s)) if p > 0 && s > 0 && s <= MAX_PAGE_SIZE => Ok(Some(Page {
                page: p as usize,
                page_size: s as usize,
            })),
            _ => Err(ApiError::Pagination {
                error: "invalid_pagination_parameters",
                reason: format!(
                    "Invalid pagination parameters: page number {}, page size {}",
                    shown(page),
                    shown(size)
                ),
            }),
        }
    }

    /// Sorted by `sort` (stable: ties keep the default order the list came in), reversed with
    /// `sort_reverse=true` (the whole list, as RabbitMQ).
    fn sorted(&self, mut items: Vec<Value>) -> Vec<Value> {
        if let Some(key) = self.get("sort").filter(|s| !s.is_empty()) {
            let path: Vec<&str> = key.split('.').filter(|k| !k.is_empty()).collect();
            let mut keyed: Vec<(Value, Value)> =
                items.into_iter().map(|v| (dotted(&v, &path), v)).collect();
            keyed.sort_by(|a, b| erlang_order(&a.0, &b.0));
            items = keyed.into_iter().map(|(_, v)| v).collect();
        }
        if self.get("sort_reverse") == Some("true") {
            items.reverse();
        }
        items
    }

    /// Keeps the items whose `name` contains the `name` parameter (any case), or matches it
    /// as a regex with `use_regex=true`.
    fn filter_by_name(&self, items: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let Some(wanted) = self.get("name").filter(|n| !n.is_empty()) else {
            return Ok(items);
        };
        let name_of = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
        if self.get("use_regex") == Some("true") {
            let re = regex::RegexBuilder::new(wanted)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|_| ApiError::BadRequest("Pagination parameters are invalid".into()))?;
            Ok(items
                .into_iter()
                .filter(|v| name_of(v).is_some_and(|n| re.is_match(&n)))
                .collect())
        } else {
            let wanted = wanted.to_lowercase();
            Ok(items
                .into_iter()
                .filter(|v| name_of(v).is_some_and(|n| n.to_lowercase().contains(&wanted)))
                .collect())
        }
    }

    /// The `columns` parameter as paths (`a.b,c` → `[[a, b], [c]]`), or None for all.
    fn columns(&self) -> Option<Vec<Vec<String>>> {
        self.get("columns").map(|c| {
            c.split(',')
                .map(|col| {
                    col.split('.')
                        .filter(|k| !k.is_empty())
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .filter(|p| !p.is_empty())
                .collect()
        })
    }

    fn select_columns(&self, items: Vec<Value>) -> Vec<Value> {
        match self.columns() {
            None => items,
            Some(cols) => items.into_iter().map(|v| select(v, Some(&cols))).collect(),
        }
    }

    /// An object cut to `columns` (a single object's answer, as `rabbit_mgmt_util:reply/3`).
    pub fn object(&self, v: Value) -> Json<Value> {
        match self.columns() {
            None => Json(v),
            Some(cols) => Json(select(v, Some(&cols))),
        }
    }
}

/// `columns` applied to a value: an object keeps the keys some column starts with, and each
/// kept value is cut to the rest of those columns (all of it if a column ends there); an array
/// applies them to each element.
fn select(v: Value, cols: Option<&[Vec<String>]>) -> Value {
    let Some(cols) = cols else { return v };
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                if !cols.iter().any(|c| c[0] == k) {
                    continue;
                }
                let whole = cols.iter().any(|c| c.len() == 1 && c[0] == k);
                let rest: Vec<Vec<String>> = cols
                    .iter()
                    .filter(|c| c.len() > 1 && c[0] == k)
                    .map(|c| c[1..].to_vec())
                    .collect();
                let val = if whole { val } else { select(val, Some(&rest)) };
                out.insert(k, val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|e| select(e, Some(cols))).collect()),
        other => other,
    }
}

/// The value at a dotted path; missing is 0, as RabbitMQ sorts "nothing" first.
fn dotted(v: &Value, path: &[&str]) -> Value {
    let mut cur = v;
    for k in path {
        match cur.get(*k) {
            Some(next) => cur = next,
            None => return Value::from(0),
        }
    }
    cur.clone()
}

/// Erlang's term order over JSON as RabbitMQ holds it: number < atom (`false` < `null` <
/// `true`) < map < list < binary (string).
fn erlang_order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Bool(_) | Value::Null => 1,
            Value::Object(_) => 2,
            Value::Array(_) => 3,
            Value::String(_) => 4,
        }
    }
    fn atom(v: &Value) -> &'static str {
        match v {
            Value::Bool(false) => "false",
            Value::Bool(true) => "true",
            _ => "null",
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => {
                let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                x.partial_cmp(&y).unwrap_or(Ordering::Equal)
            }
        },
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = erlang_order(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => x.len().cmp(&y.len()),
        _ if rank(a) == 1 && rank(b) == 1 => atom(a).cmp(atom(b)),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Percent-decoding of a query component, `+` as a space (as cowboy's `parse_qs`).
fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queues() -> Vec<Value> {
        ["Alpha", "qa", "qb", "qc", "zeta"]
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": n, "vhost": "/", "messages": 5 - i, "message_stats": {"publish": i % 2}}))
            .collect()
    }

    fn names(v: &Value) -> Vec<&str> {
        let items = v.get("items").unwrap_or(v);
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect()
    }

    fn paged(q: &str) -> Result<Value, ApiError> {
        ListQuery::parse(q).paged(queues()).map(|j| j.0)
    }

    #[test]
    fn a_page_has_rabbitmqs_shape() {
        let v = paged("page=1&page_size=2").unwrap();
        assert_eq!(
            (
                &v["filtered_count"],
                &v["item_count"],
                &v["page"],
                &v["page_count"],
                &v["page_size"],
                &v["total_count"]
            ),
            (
                &json!(5),
                &json!(2),
                &json!(1),
                &json!(3),
                &json!(2),
                &json!(5)
            )
        );
        assert_eq!(names(&v), ["Alpha", "qa"]);
        assert_eq!(names(&paged("page=3&page_size=2").unwrap()), ["zeta"]);
        let v = paged("page=1").unwrap();
        assert_eq!(
            (&v["page_size"], &v["page_count"]),
            (&json!(100), &json!(1))
        );
        // Without `page`, the plain array (page_size alone does nothing).
        assert!(paged("page_size=2").unwrap().is_array());
    }

    #[test]
    fn bad_pages_get_rabbitmqs_errors() {
        let err = |q: &str| paged(q).unwrap_err();
        let bad = ApiError::BadRequest("Pagination parameters are invalid".into());
        assert_eq!(err("page=x"), bad);
        assert_eq!(err("page_size=x"), bad);
        let invalid = |reason: &str| ApiError::Pagination {
            error: "invalid_pagination_parameters",
            reason: reason.into(),
        };
        assert_eq!(
            err("page=0"),
            invalid("Invalid pagination parameters: page number 0, page size undefined")
        );
        assert_eq!(
            err("page=1&page_size=501"),
            invalid("Invalid pagination parameters: page number 1, page size 501")
        );
        assert_eq!(
            err("page=1&page_size=-1"),
            invalid("Invalid pagination parameters: page number 1, page size -1")
        );
        assert_eq!(
            err("page=4&page_size=2"),
            ApiError::Pagination {
                error: "page_out_of_range",
                reason: "Page out of range, page: 4 page size: 2, len: 5".into()
            }
        );
        // An empty list has an empty first page.
        let v = ListQuery::parse("page=1").paged(vec![]).unwrap().0;
        assert_eq!((&v["items"], &v["page_count"]), (&json!([]), &json!(0)));
    }

    #[test]
    fn name_filters_a_paginated_list_by_substring_or_regex() {
        let v = paged("page=1&name=Q").unwrap();
        assert_eq!(names(&v), ["qa", "qb", "qc"]);
        assert_eq!(
            (&v["filtered_count"], &v["total_count"]),
            (&json!(3), &json!(5))
        );
        assert_eq!(
            names(&paged("page=1&name=%5EQ%5Bab%5D&use_regex=true").unwrap()),
            ["qa", "qb"]
        );
        assert_eq!(
            paged("page=1&name=(&use_regex=true").unwrap_err(),
            ApiError::BadRequest("Pagination parameters are invalid".into())
        );
        // Not paginated: not filtered (as RabbitMQ).
        assert_eq!(names(&paged("name=qa").unwrap()).len(), 5);
    }

    #[test]
    fn sort_by_dotted_columns_and_reverse() {
        assert_eq!(
            names(&paged("sort=messages").unwrap()),
            ["zeta", "qc", "qb", "qa", "Alpha"]
        );
        // Ties keep the default order; reverse reverses everything.
        assert_eq!(
            names(&paged("sort=message_stats.publish").unwrap()),
            ["Alpha", "qb", "zeta", "qa", "qc"]
        );
        assert_eq!(
            names(&paged("sort=name&sort_reverse=true").unwrap()),
            ["zeta", "qc", "qb", "qa", "Alpha"]
        );
        // Numbers before atoms before strings; a missing value is 0.
        let mixed = vec![
            json!({"name": "s", "v": "x"}),
            json!({"name": "t", "v": true}),
            json!({"name": "m"}),
            json!({"name": "n", "v": null}),
            json!({"name": "one", "v": 1}),
        ];
        let v = ListQuery::parse("sort=v").unpaged(mixed).0;
        assert_eq!(names(&v), ["m", "one", "n", "t", "s"]);
    }

    #[test]
    fn columns_keep_named_and_nested_fields() {
        let v = ListQuery::parse("columns=name,message_stats.publish,nosuch")
            .unpaged(queues())
            .0;
        assert_eq!(v[1], json!({"name": "qa", "message_stats": {"publish": 1}}));
        let v = paged("page=1&page_size=1&columns=name").unwrap();
        assert_eq!(v["items"], json!([{"name": "Alpha"}]));
        assert_eq!(v["total_count"], json!(5));
        // Arrays of objects are cut element by element.
        let v =
            ListQuery::parse("columns=list.a").object(json!({"list": [{"a": 1, "b": 2}], "x": 1}));
        assert_eq!(v.0, json!({"list": [{"a": 1}]}));
    }
}
