//! A vhost's metadata (description, tags, default queue type) set with `warrenctl add_vhost`
//! and `update_vhost_metadata`, shown by `list_vhosts` and the management API, kept in
//! definitions and across a restart; and what the default queue type does to queues that
//! real clients declare without `x-queue-type`, as RabbitMQ 4 does.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::json;
use warren_tests::mgmt::MgmtBroker;
use warren_tests::*;

/// The `warrenctl` binary, built by Cargo for this package's tests.
const WARRENCTL: &str = env!("CARGO_BIN_EXE_warrenctl");

/// The output of a warrenctl run against `n` that must succeed.
async fn ok(n: &MgmtBroker, args: &[&str]) -> String {
    n.warrenctl(WARRENCTL, args).await.ok()
}

async fn open_in(n: &MgmtBroker, vhost: &str) -> (Connection, Channel) {
    let url = format!("amqp://guest:guest@{}/{vhost}", n.broker.addr);
    let conn = within(
        "connect",
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = channel(&conn).await;
    (conn, ch)
}

fn opts(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    }
}

async fn declare_as(ch: &Channel, name: &str, o: QueueDeclareOptions, args: FieldTable) {
    within("queue.declare", ch.queue_declare(name.into(), o, args))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// The queue's type and its `x-queue-type` argument, as the management API shows them.
fn type_of(n: &MgmtBroker, vhost: &str, queue: &str) -> (String, serde_json::Value) {
    let (s, v) = n.http("GET", &format!("/api/queues/{vhost}/{queue}"), None);
    assert_eq!(s, 200, "{queue}: {v}");
    (
        v["type"].as_str().unwrap_or_default().to_string(),
        v["arguments"]["x-queue-type"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhosts_default_queue_type_types_the_queues_declared_without_one() {
    let dir = TempDir::new("vhost-metadata");
    let data = dir.path().join("data");
    let n = MgmtBroker::on(TestBroker::with_backend(&data, FileBackend::shared())).await;
    assert_eq!(
        ok(
            &n,
            &[
                "add_vhost",
                "orders",
                "--default-queue-type",
                "quorum",
                "--description",
                "order flow",
                "--tags",
                "eu,prod",
            ],
        )
        .await,
        "Adding vhost \"orders\" ...\n"
    );
    // rabbitmqctl's usage error (64) for a type that does not exist; nothing is created.
    let o = n
        .warrenctl(
            WARRENCTL,
            &["add_vhost", "x", "--default-queue-type", "lazy"],
        )
        .await;
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert!(o.stderr.contains("'lazy'"), "{}", o.stderr);
    assert!(n.broker.broker.vhost("x").is_none());
    let (s, v) = n.http(
        "PUT",
        "/api/vhosts/y",
        Some(json!({"default_queue_type": "lazy"})),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        ok(
            &n,
            &[
                "list_vhosts",
                "-q",
                "name",
                "default_queue_type",
                "description",
                "tags"
            ]
        )
        .await,
        "name\tdefault_queue_type\tdescription\ttags\n\
         /\tclassic\tDefault virtual host\t[]\n\
         orders\tquorum\torder flow\t[eu, prod]\n"
    );

    let (conn, ch) = open_in(&n, "orders").await;
    // A durable, shared queue without a type takes the vhost's; a declaration that does not
    // suit a quorum queue is a classic queue, as is one declared classic.
    declare_as(&ch, "jobs", opts(true, false, false), no_args()).await;
    declare_as(&ch, "transient", opts(false, false, false), no_args()).await;
    declare_as(&ch, "mine", opts(true, true, false), no_args()).await;
    declare_as(&ch, "fleeting", opts(true, false, true), no_args()).await;
    let classic = table(&[("x-queue-type", long("classic"))]);
    declare_as(&ch, "legacy", opts(true, false, false), classic.clone()).await;
    assert_eq!(
        type_of(&n, "orders", "jobs"),
        ("quorum".into(), json!("quorum"))
    );
    for q in ["transient", "mine", "fleeting", "legacy"] {
        assert_eq!(
            type_of(&n, "orders", q),
            ("classic".into(), json!("classic")),
            "{q}"
        );
    }
    // Declared again without a type it is equivalent; declared classic it is not.
    declare_as(&ch, "jobs", opts(true, false, false), no_args()).await;
    let e = ch
        .queue_declare("jobs".into(), opts(true, false, false), classic)
        .await
        .expect_err("a classic redeclaration of a quorum queue is refused");
    assert_eq!(
        expect_error_code(&e, 406),
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs' in vhost \
         'orders': received 'classic' but current is 'quorum'"
    );
    let _ = conn.close(200, "bye".into()).await;

    // The default vhost has no default type: nothing is added to a declaration.
    let (conn, ch) = open_in(&n, "%2f").await;
    declare_as(&ch, "plain", opts(true, false, false), no_args()).await;
    assert_eq!(
        type_of(&n, "%2f", "plain"),
        ("classic".into(), serde_json::Value::Null)
    );
    let _ = conn.close(200, "bye".into()).await;

    // update_vhost_metadata changes what it is given and keeps the rest; existing queues
    // keep their type.
    assert_eq!(
        ok(
            &n,
            &[
                "update_vhost_metadata",
                "orders",
                "--default-queue-type",
                "stream"
            ]
        )
        .await,
        "Updating metadata of vhost \"orders\" ...\n"
    );
    let o = n
        .warrenctl(WARRENCTL, &["update_vhost_metadata", "nope", "--tags", "a"])
        .await;
    assert_ne!(o.code, 0, "updating a vhost that does not exist");
    assert!(n.broker.broker.vhost("nope").is_none(), "{}", o.stderr);
    let (conn, ch) = open_in(&n, "orders").await;
    declare_as(&ch, "events", opts(true, false, false), no_args()).await;
    assert_eq!(
        type_of(&n, "orders", "events"),
        ("stream".into(), json!("stream"))
    );
    assert_eq!(type_of(&n, "orders", "jobs").0, "quorum");
    let _ = conn.close(200, "bye".into()).await;
    let (_, v) = n.http("GET", "/api/vhosts/orders", None);
    assert_eq!(v["description"], "order flow");
    assert_eq!(v["tags"], json!(["eu", "prod"]));
    assert_eq!(v["default_queue_type"], "stream");
    assert_eq!(v["metadata"]["default_queue_type"], "stream");

    // Definitions carry it (as RabbitMQ writes them), and so does a restart.
    let (_, defs) = n.http("GET", "/api/definitions", None);
    let orders = defs["vhosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "orders")
        .cloned()
        .unwrap();
    assert_eq!(orders["default_queue_type"], "stream", "{orders}");
    assert_eq!(
        orders["metadata"]["tags"],
        json!(["eu", "prod"]),
        "{orders}"
    );
    n.stop().await;
    let n = MgmtBroker::on(TestBroker::with_backend(&data, FileBackend::shared())).await;
    let (_, v) = n.http("GET", "/api/vhosts/orders", None);
    assert_eq!(v["default_queue_type"], "stream", "{v}");
    assert_eq!(v["description"], "order flow", "{v}");
    assert_eq!(type_of(&n, "orders", "jobs").0, "quorum");
    let (conn, ch) = open_in(&n, "orders").await;
    declare_as(&ch, "more", opts(true, false, false), no_args()).await;
    assert_eq!(type_of(&n, "orders", "more").0, "stream");
    let _ = conn.close(200, "bye".into()).await;

    // A RabbitMQ export that gives the type at the top level of a vhost imports with it.
    let (s, v) = n.http(
        "POST",
        "/api/definitions",
        Some(json!({
            "vhosts": [{"name": "imported", "description": "from RabbitMQ", "tags": [],
                        "default_queue_type": "quorum"}],
            "permissions": [{"user": "guest", "vhost": "imported",
                             "configure": ".*", "write": ".*", "read": ".*"}],
        })),
    );
    assert!(s == 200 || s == 201 || s == 204, "import: {s} {v}");
    let (_, v) = n.http("GET", "/api/vhosts/imported", None);
    assert_eq!(v["default_queue_type"], "quorum", "{v}");
    let (conn, ch) = open_in(&n, "imported").await;
    declare_as(&ch, "q", opts(true, false, false), no_args()).await;
    assert_eq!(type_of(&n, "imported", "q").0, "quorum");
    let _ = conn.close(200, "bye".into()).await;
}
