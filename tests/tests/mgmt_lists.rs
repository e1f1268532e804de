//! RabbitMQ's list query parameters on the management API (`page`, `page_size`, `name`,
//! `use_regex`, `sort`, `sort_reverse`, `columns`), over HTTP, on a topology lapin built.
//! The expected shapes and error texts are those RabbitMQ 4.0.5 answered for the same
//! requests.

use serde_json::{json, Value};
use warren_tests::mgmt::MgmtBroker;
use warren_tests::*;

fn names(v: &Value, field: &str) -> Vec<String> {
    let items = if v.is_object() { &v["items"] } else { v };
    items
        .as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|i| i[field].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_sort_filter_paginate_and_cut_columns_as_rabbitmq() {
    let m = MgmtBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    for (i, q) in ["Alpha", "qa", "qb", "qc", "zeta"].iter().enumerate() {
        declare(&ch, q).await;
        for _ in 0..i {
            publish(&ch, "", q, b"x").await;
        }
    }
    let ch2 = channel(&_conn).await;
    eventually("the publishes are counted", || {
        queue_counts(&m.broker, "zeta") == Some((4, 0))
    })
    .await;

    // A page: RabbitMQ's shape, items cut to the columns.
    let (status, v) = m.http(
        "GET",
        "/api/queues?page=1&page_size=2&columns=name,messages",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"filtered_count": 5, "item_count": 2, "page": 1, "page_count": 3,
               "page_size": 2, "total_count": 5,
               "items": [{"name": "Alpha", "messages": 0}, {"name": "qa", "messages": 1}]})
    );
    let (_, v) = m.http(
        "GET",
        "/api/queues/%2F?page=3&page_size=2&columns=name",
        None,
    );
    assert_eq!(v["items"], json!([{"name": "zeta"}]));

    // Sort on a number, reversed; a dotted column keeps only that nested field.
    let (_, v) = m.http(
        "GET",
        "/api/queues?sort=messages&sort_reverse=true&columns=name,message_stats.publish",
        None,
    );
    assert_eq!(names(&v, "name"), ["zeta", "qc", "qb", "qa", "Alpha"]);
    assert_eq!(
        v[0],
        json!({"name": "zeta", "message_stats": {"publish": 4}})
    );

    // name: a case-insensitive substring, or a regex; only on a paginated list.
    let (_, v) = m.http("GET", "/api/queues?page=1&name=Q&columns=name", None);
    assert_eq!(names(&v, "name"), ["qa", "qb", "qc"]);
    assert_eq!(
        (&v["filtered_count"], &v["total_count"]),
        (&json!(3), &json!(5))
    );
    let (_, v) = m.http(
        "GET",
        "/api/queues?page=1&name=%5Eq%5Bab%5D&use_regex=true&columns=name",
        None,
    );
    assert_eq!(names(&v, "name"), ["qa", "qb"]);
    let (_, v) = m.http("GET", "/api/queues?name=qa&columns=name", None);
    assert_eq!(names(&v, "name").len(), 5);

    // Bad parameters: RabbitMQ's statuses and words.
    let cases = [
        ("page=x", "bad_request", "Pagination parameters are invalid"),
        (
            "page=1&name=(&use_regex=true",
            "bad_request",
            "Pagination parameters are invalid",
        ),
        (
            "page=0",
            "invalid_pagination_parameters",
            "Invalid pagination parameters: page number 0, page size undefined",
        ),
        (
            "page=1&page_size=501",
            "invalid_pagination_parameters",
            "Invalid pagination parameters: page number 1, page size 501",
        ),
        (
            "page=4&page_size=2",
            "page_out_of_range",
            "Page out of range, page: 4 page size: 2, len: 5",
        ),
    ];
    for (q, error, reason) in cases {
        let (status, v) = m.http("GET", &format!("/api/queues?{q}"), None);
        assert_eq!(
            (status, v),
            (400, json!({"error": error, "reason": reason})),
            "{q}"
        );
    }

    // The other lists go through the same code.
    let (_, v) = m.http(
        "GET",
        "/api/exchanges?page=1&page_size=2&columns=name",
        None,
    );
    assert_eq!(v["items"], json!([{"name": ""}, {"name": "amq.direct"}]));
    let total = v["total_count"].as_u64().unwrap();
    assert_eq!(v["page_count"], json!(total.div_ceil(2)));
    let (_, v) = m.http("GET", "/api/connections?page=1&columns=user,channels", None);
    assert_eq!(v["items"], json!([{"user": "guest", "channels": 2}]));
    let (_, v) = m.http(
        "GET",
        "/api/channels?sort=number&sort_reverse=true&columns=number",
        None,
    );
    assert_eq!(v, json!([{"number": 2}, {"number": 1}]));
    let (_, v) = m.http(
        "GET",
        "/api/bindings?sort=destination&sort_reverse=true&columns=destination",
        None,
    );
    assert_eq!(
        names(&v, "destination"),
        ["zeta", "qc", "qb", "qa", "Alpha"]
    );
    let (_, v) = m.http("GET", "/api/vhosts?page=1&columns=name", None);
    assert_eq!(v["items"], json!([{"name": "/"}]));
    // A single object takes `columns` too.
    let (_, v) = m.http(
        "GET",
        "/api/queues/%2F/qb?columns=name,messages_ready",
        None,
    );
    assert_eq!(v, json!({"name": "qb", "messages_ready": 2}));
    drop(ch2);
}

/// A quorum queue shows its Raft group as RabbitMQ shows it: `type`, `leader`, `members` and
/// `online` (this node, while Warren runs one); a classic queue has none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_shows_its_leader_and_members() {
    let m = MgmtBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare_durable_args(&ch, "qq", table(&[("x-queue-type", long("quorum"))])).await;
    declare(&ch, "cq").await;
    let (status, v) = m.http("GET", "/api/queues/%2F/qq", None);
    assert_eq!(status, 200);
    let (_, overview) = m.http("GET", "/api/overview", None);
    let node = overview["node"].clone();
    assert!(node.is_string(), "the overview names the node: {overview}");
    assert_eq!(v["type"], "quorum");
    assert_eq!(v["leader"], node);
    assert_eq!(v["members"], json!([node]));
    assert_eq!(v["online"], json!([node]));
    let (_, v) = m.http("GET", "/api/queues/%2F/cq", None);
    assert_eq!(v["type"], "classic");
    assert!(
        v.get("leader").is_none() && v.get("members").is_none(),
        "{v}"
    );
}
