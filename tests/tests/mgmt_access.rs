//! What each kind of management user may see and do over the API, by tags and permissions,
//! with RabbitMQ 4.0.5's answers: administrators everything; monitors the node and everyone's
//! connections; policymakers policies; management users only the vhosts they have
//! permissions in, their own connections, and queue actions their permissions allow.

use serde_json::{json, Value};
use warren_tests::mgmt::{http, MgmtBroker};
use warren_tests::*;

fn basic(user: &str) -> String {
    // user:user in base64, for the short names used here.
    let raw = format!("{user}:{user}");
    let t = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in raw.as_bytes().chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            out.push(if i <= c.len() {
                t[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    format!("Basic {out}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_permissions_decide_what_a_user_sees_and_does() {
    let m = MgmtBroker::start().await;
    let (_conn, ch) = open(&m.broker).await;
    declare(&ch, "qa").await;
    publish(&ch, "", "qa", b"x").await;
    let (s, _) = m.http("PUT", "/api/vhosts/other", None);
    assert_eq!(s, 201);
    for (user, tags, perms) in [
        (
            "lim",
            "management",
            Some(json!({"configure": "^$", "write": ".*", "read": "^qb$"})),
        ),
        ("mon", "monitoring", None),
        (
            "pol",
            "policymaker",
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        ),
    ] {
        let (s, _) = m.http(
            "PUT",
            &format!("/api/users/{user}"),
            Some(json!({"password": user, "tags": tags})),
        );
        assert_eq!(s, 201);
        if let Some(p) = perms {
            let (s, _) = m.http("PUT", &format!("/api/permissions/%2F/{user}"), Some(p));
            assert_eq!(s, 201);
        }
    }
    let req = |user: &str, method: &str, path: &str, body: Option<Value>| {
        http(&m.url(), method, path, body, Some(&basic(user)))
    };
    let refused = |reason: &str| (401, json!({"error": "not_authorised", "reason": reason}));
    let not_admin = refused("Not administrator user");

    // Administrator-only: definitions, users, creating vhosts.
    for user in ["lim", "mon", "pol"] {
        assert_eq!(
            req(user, "GET", "/api/definitions", None),
            not_admin,
            "{user}"
        );
        assert_eq!(
            req(user, "POST", "/api/definitions", Some(json!({}))),
            not_admin,
            "{user}"
        );
        assert_eq!(req(user, "GET", "/api/users", None), not_admin, "{user}");
        assert_eq!(
            req(user, "PUT", "/api/vhosts/v2", None),
            not_admin,
            "{user}"
        );
    }
    // The node: monitors only.
    assert_eq!(
        req("lim", "GET", "/api/nodes", None),
        refused("Not monitor user")
    );
    assert_eq!(req("mon", "GET", "/api/nodes", None).0, 200);

    // Lists show the vhosts the user has permissions in: lim sees "/", mon nothing.
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&req("lim", "GET", "/api/queues", None).1), ["qa"]);
    assert_eq!(req("mon", "GET", "/api/queues", None).1, json!([]));
    assert_eq!(names(&req("lim", "GET", "/api/vhosts", None).1), ["/"]);
    assert_eq!(
        names(&req("mon", "GET", "/api/vhosts", None).1),
        ["/", "other"]
    );
    // Connections: a management user sees only its own; a monitor everyone's.
    assert_eq!(req("lim", "GET", "/api/connections", None).1, json!([]));
    assert_eq!(
        req("mon", "GET", "/api/connections", None)
            .1
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // The overview counts what the user may see: its own connections unless a monitor.
    let totals = |user: &str| req(user, "GET", "/api/overview", None).1["object_totals"].clone();
    assert_eq!(
        (&totals("lim")["connections"], &totals("lim")["queues"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(totals("mon")["connections"], json!(1));

    // Queue actions need the AMQP permission: lim may not purge (read) or delete (configure).
    assert_eq!(
        req("lim", "DELETE", "/api/queues/%2F/qa/contents", None),
        refused("Access refused.")
    );
    assert_eq!(
        req("lim", "DELETE", "/api/queues/%2F/qa", None),
        refused("Access refused.")
    );
    assert_eq!(
        req("lim", "PUT", "/api/queues/%2F/qn", Some(json!({}))),
        refused("Access refused.")
    );
    assert_eq!(queue_counts(&m.broker, "qa"), Some((1, 0)));
    assert_eq!(
        req("pol", "DELETE", "/api/queues/%2F/qa/contents", None).0,
        204
    );
    assert_eq!(queue_counts(&m.broker, "qa"), Some((0, 0)));

    // Policies: policymakers set them; management users may not.
    let policy = json!({"pattern": "^p", "definition": {"max-length": 1}});
    assert_eq!(
        req("lim", "PUT", "/api/policies/%2F/p1", Some(policy.clone())),
        refused("User not authorised to access object")
    );
    assert_eq!(
        req("pol", "PUT", "/api/policies/%2F/p1", Some(policy)).0,
        201
    );
    assert_eq!(names(&req("lim", "GET", "/api/policies", None).1), ["p1"]);
}
