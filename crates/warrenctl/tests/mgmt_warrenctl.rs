//! The management API and `warrenctl` against a running broker: the warrenctl binary is run as
//! an operator would, and its output compared with what rabbitmqctl 3.x prints for the same
//! state (captured from a RabbitMQ 3.10.8 node), including the "forgotten acknowledgment"
//! case. The API's JSON shapes and errors are checked with plain HTTP requests.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::ExchangeKind;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use warren_tests::mgmt::{http, run_warrenctl, CtlOutput, MgmtBroker};
use warren_tests::*;

/// The `warrenctl` binary, built by Cargo for this package's tests.
const WARRENCTL: &str = env!("CARGO_BIN_EXE_warrenctl");

/// A broker with its management API on a free loopback port, and warrenctl pointed at it.
struct Mgmt(MgmtBroker);

impl std::ops::Deref for Mgmt {
    type Target = MgmtBroker;

    fn deref(&self) -> &MgmtBroker {
        &self.0
    }
}

impl Mgmt {
    async fn start() -> Mgmt {
        Mgmt(MgmtBroker::start().await)
    }

    /// Runs warrenctl against this broker.
    async fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut full = vec!["--url".to_string(), self.url()];
        full.extend(args.iter().map(|a| a.to_string()));
        run_ctl(full).await
    }

    /// Runs warrenctl until its stdout equals `want` (counts move asynchronously).
    async fn ctl_until(&self, args: &[&str], want: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.ctl(args).await;
            if out.stdout == want {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "warrenctl {args:?}: expected\n{want}\ngot\n{}\nstderr: {}",
                    out.stdout, out.stderr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn run_ctl(args: Vec<String>) -> CtlOutput {
    run_warrenctl(WARRENCTL, args).await
}

/// q1 (durable, 5 messages), q2 (with arguments, 1 message), exchange ex1 (topic) bound to q1
/// and to hx (headers), hx bound to q2 with arguments: the state the reference rabbitmqctl
/// output was captured from.
async fn sample_topology(m: &Mgmt) -> (lapin::Connection, lapin::Channel) {
    let (conn, ch) = open(&m.broker).await;
    within(
        "declare q1",
        ch.queue_declare("q1".into(), QueueDeclareOptions::durable(), no_args()),
    )
    .await
    .expect("q1");
    let q2_args = table(&[
        ("x-message-ttl", AMQPValue::LongInt(60000)),
        ("x-queue-type", AMQPValue::LongString("classic".into())),
    ]);
    within(
        "declare q2",
        ch.queue_declare("q2".into(), QueueDeclareOptions::default(), q2_args),
    )
    .await
    .expect("q2");
    within(
        "declare ex1",
        ch.exchange_declare(
            "ex1".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("ex1");
    declare_exchange(&ch, "hx", ExchangeKind::Headers).await;
    bind(&ch, "q1", "ex1", "a.*").await;
    let hargs = table(&[
        ("k", AMQPValue::LongString("v".into())),
        ("x-match", AMQPValue::LongString("any".into())),
    ]);
    bind_args(&ch, "q2", "hx", "", hargs).await;
    within(
        "exchange_bind",
        ch.exchange_bind(
            "hx".into(),
            "ex1".into(),
            "#".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ),
    )
    .await
    .expect("exchange_bind");
    for i in 0..5 {
        publish(&ch, "", "q1", format!("hello{i}").as_bytes()).await;
    }
    publish(&ch, "", "q2", &[b'x'; 100]).await;
    wait_counts(&m.broker, "q1", 5, 0).await;
    wait_counts(&m.broker, "q2", 1, 0).await;
    (conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_prints_what_rabbitmqctl_prints() {
    let m = Mgmt::start().await;
    let _keep = sample_topology(&m).await;

    let out = m.ctl(&["list_queues"]).await.ok();
    assert_eq!(
        out,
        "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\nname\tmessages\nq1\t5\nq2\t1\n"
    );
    // -q drops the informational lines; rabbitmqctl 3.x keeps the header row
    // (--no-table-headers drops it).
    assert_eq!(
        m.ctl(&["list_queues", "-q"]).await.ok(),
        "name\tmessages\nq1\t5\nq2\t1\n"
    );
    assert_eq!(
        m.ctl(&["-q", "list_queues", "--no-table-headers", "name"])
            .await
            .ok(),
        "q1\nq2\n"
    );
    let cols = "name durable auto_delete exclusive arguments messages messages_ready messages_unacknowledged consumers state";
    let mut argv = vec!["list_queues", "-q"];
    argv.extend(cols.split(' '));
    assert_eq!(
        m.ctl(&argv).await.ok(),
        "name\tdurable\tauto_delete\texclusive\targuments\tmessages\tmessages_ready\tmessages_unacknowledged\tconsumers\tstate\n\
         q1\ttrue\tfalse\tfalse\t[]\t5\t5\t0\t0\trunning\n\
         q2\tfalse\tfalse\tfalse\t[{\"x-message-ttl\",60000},{\"x-queue-type\",\"classic\"}]\t1\t1\t0\t0\trunning\n"
    );
    assert_eq!(
        m.ctl(&["list_queues", "--formatter", "json", "name", "arguments", "durable"]).await.ok(),
        "[\n{\"name\":\"q1\",\"arguments\":[],\"durable\":true}\n\
         ,{\"name\":\"q2\",\"arguments\":[[\"x-message-ttl\",\"signedint\",60000],[\"x-queue-type\",\"longstr\",\"classic\"]],\"durable\":false}\n]\n"
    );
    // memory is an estimate, but a number.
    let mem = m
        .ctl(&["list_queues", "-q", "--no-table-headers", "memory"])
        .await
        .ok();
    assert!(
        mem.lines().all(|l| l.parse::<u64>().is_ok_and(|n| n > 0)),
        "{mem}"
    );
    // A vhost that does not exist lists nothing, as rabbitmqctl.
    assert_eq!(
        m.ctl(&["list_queues", "-p", "nohost"]).await.ok(),
        "Timeout: 60.0 seconds ...\nListing queues for vhost nohost ...\n"
    );
}

/// A consumer that never acks: its messages show as unacknowledged; once it disconnects they
/// are back as ready — the check an operator runs when messages "disappear".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_acknowledgment_shows_then_returns_to_ready() {
    let m = Mgmt::start().await;
    let (_pconn, producer) = open(&m.broker).await;
    declare(&producer, "work").await;
    for i in 0..3 {
        publish(&producer, "", "work", format!("task-{i}").as_bytes()).await;
    }
    wait_counts(&m.broker, "work", 3, 0).await;

    let (conn, ch) = open(&m.broker).await;
    let mut consumer = consume(&ch, "work", "forgetful").await;
    for _ in 0..3 {
        next(&mut consumer).await; // ... and never acked.
    }
    let cols = [
        "list_queues",
        "-q",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ];
    m.ctl_until(
        &cols,
        "name\tmessages_ready\tmessages_unacknowledged\nwork\t0\t3\n",
    )
    .await;
    assert_eq!(
        m.ctl(&["list_consumers"]).await.ok(),
        format!(
            "Listing consumers in vhost / ...\n\
             queue_name\tchannel_pid\tconsumer_tag\tack_required\tprefetch_count\tactive\targuments\n\
             work\t{} (1)\tforgetful\ttrue\t0\ttrue\t[]\n",
            connection_name(&m).await
        )
    );
    let channels = m
        .ctl(&[
            "list_channels",
            "-q",
            "--no-table-headers",
            "consumer_count",
            "messages_unacknowledged",
        ])
        .await
        .ok();
    assert!(channels.lines().any(|l| l == "1\t3"), "{channels}");

    within("close consumer connection", conn.close(200, "bye".into()))
        .await
        .expect("close");
    m.ctl_until(
        &cols,
        "name\tmessages_ready\tmessages_unacknowledged\nwork\t3\t0\n",
    )
    .await;
    assert_eq!(m.ctl(&["list_consumers", "-q"]).await.ok(), "");
}

/// The name of the newest connection (connections are listed oldest first).
async fn connection_name(m: &Mgmt) -> String {
    let names = m
        .ctl(&["list_connections", "-q", "--no-table-headers", "name"])
        .await
        .ok();
    names.lines().last().expect("a connection").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_exchanges_and_bindings_print_what_rabbitmqctl_prints() {
    let m = Mgmt::start().await;
    let _keep = sample_topology(&m).await;
    assert_eq!(
        m.ctl(&["list_exchanges"]).await.ok(),
        "Listing exchanges for vhost / ...\nname\ttype\n\tdirect\namq.direct\tdirect\namq.fanout\tfanout\n\
         amq.headers\theaders\namq.match\theaders\namq.topic\ttopic\nex1\ttopic\nhx\theaders\n"
    );
    let out = m
        .ctl(&[
            "list_exchanges",
            "-q",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
            "arguments",
        ])
        .await
        .ok();
    assert!(out.starts_with("name\ttype\tdurable\tauto_delete\tinternal\targuments\n\tdirect\ttrue\tfalse\tfalse\t[]\n"), "{out}");
    assert!(
        out.contains("\nhx\theaders\tfalse\tfalse\tfalse\t[]\n"),
        "{out}"
    );
    assert_eq!(
        m.ctl(&["list_bindings"]).await.ok(),
        "Listing bindings for vhost /...\n\
         source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments\n\
         \texchange\tq1\tqueue\tq1\t[]\n\
         \texchange\tq2\tqueue\tq2\t[]\n\
         ex1\texchange\thx\texchange\t#\t[]\n\
         ex1\texchange\tq1\tqueue\ta.*\t[]\n\
         hx\texchange\tq2\tqueue\t\t[{\"k\",\"v\"},{\"x-match\",\"any\"}]\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_delete_queue() {
    let m = Mgmt::start().await;
    let _keep = sample_topology(&m).await;
    assert_eq!(
        m.ctl(&["purge_queue", "q2"]).await.ok(),
        "Purging queue 'q2' in vhost '/' ...\n"
    );
    assert_eq!(
        m.broker
            .broker
            .vhost("/")
            .and_then(|v| v.queue("q2"))
            .map(|q| q.stats().messages_ready),
        Some(0)
    );
    assert_eq!(m.ctl(&["purge_queue", "-q", "q2"]).await.ok(), "");
    assert_eq!(
        m.ctl(&["delete_queue", "q1"]).await.ok(),
        "Deleting queue 'q1' on vhost '/' ...\nQueue was successfully deleted with 5 ready messages\n"
    );
    assert!(!queue_exists(&m.broker, "q1"));
    // A missing queue: one line on stderr, rabbitmqctl's exit codes (64 for delete, 69 for
    // purge).
    let out = m.ctl(&["delete_queue", "-q", "q1"]).await;
    assert_eq!(out.code, 64);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("Error: no queue 'q1' in vhost '/'"),
        "{}",
        out.stderr
    );
    let out = m.ctl(&["purge_queue", "q1"]).await;
    assert_eq!(out.code, 69);
    assert!(
        out.stderr.starts_with("Error: no queue 'q1'"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_queue_if_empty_refuses_a_queue_with_messages() {
    let m = Mgmt::start().await;
    let _keep = sample_topology(&m).await;
    let out = m.ctl(&["delete_queue", "--if-empty", "q1"]).await;
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    assert!(queue_exists(&m.broker, "q1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_connection_closes_it_with_320() {
    let m = Mgmt::start().await;
    let (conn, _ch) = open(&m.broker).await;
    let mut events = conn.events_listener();
    let out = m.ctl(&["list_connections"]).await.ok();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("Listing connections ..."));
    assert_eq!(lines.next(), Some("user\tpeer_host\tpeer_port\tstate"));
    let row = lines.next().expect("a connection row");
    assert!(
        row.starts_with("guest\t127.0.0.1\t") && row.ends_with("\trunning"),
        "{row}"
    );

    let name = connection_name(&m).await;
    assert_eq!(
        m.ctl(&["close_connection", &name, "go away"]).await.ok(),
        format!("Closing connection {name}, reason: go away...\n")
    );
    let err = within("connection error event", async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => return e,
                Some(_) => continue,
                None => panic!("events ended without an error"),
            }
        }
    })
    .await;
    assert_eq!(reply_code(&err), Some(320), "{err}");
    assert!(err.to_string().contains("go away"), "{err}");
    m.ctl_until(&["list_connections", "-q"], "").await;

    let out = m
        .ctl(&["close_connection", "127.0.0.1:1 -> 127.0.0.1:2", "x"])
        .await;
    assert_eq!(out.code, 69);
    assert!(
        out.stderr.starts_with("Error: no connection named"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_clear_line_and_an_exit_code() {
    let m = Mgmt::start().await;
    let one_line = |o: &CtlOutput| {
        assert_eq!(o.stderr.lines().count(), 1, "stderr: {}", o.stderr);
        assert!(o.stderr.starts_with("Error: "), "stderr: {}", o.stderr);
        assert_eq!(o.stdout, "");
    };

    // No broker there: 69, and says what to do.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let out = run_ctl(vec![
        "--url".into(),
        format!("http://{free}"),
        "list_queues".into(),
    ])
    .await;
    assert_eq!(out.code, 69);
    one_line(&out);
    assert!(
        out.stderr.contains("unable to connect") && out.stderr.contains("--url"),
        "{}",
        out.stderr
    );

    // Wrong password: 77 (rabbitmqctl's "no permission").
    let out = m.ctl(&["--password", "nope", "list_queues"]).await;
    assert_eq!(out.code, 77);
    one_line(&out);
    assert!(
        out.stderr.contains("refused user 'guest'") && out.stderr.contains("--password"),
        "{}",
        out.stderr
    );

    // Unknown command, unknown column, bad formatter: usage errors, 64.
    let out = m.ctl(&["bogus_cmd"]).await;
    assert_eq!(out.code, 64);
    one_line(&out);
    assert!(
        out.stderr.contains("'bogus_cmd'") && out.stderr.contains("warrenctl help"),
        "{}",
        out.stderr
    );
    let out = m.ctl(&["list_queues", "name", "bogus"]).await;
    assert_eq!(out.code, 64);
    one_line(&out);
    assert!(
        out.stderr.contains("bogus") && out.stderr.contains("messages_ready"),
        "{}",
        out.stderr
    );
    let out = m.ctl(&["list_queues", "--formatter", "yaml"]).await;
    assert_eq!(out.code, 64);
    one_line(&out);

    // A definitions file that is not there: 65.
    let out = m
        .ctl(&["import_definitions", "/nonexistent/defs.json"])
        .await;
    assert_eq!(out.code, 65);
    one_line(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_and_import_round_trip() {
    let m = Mgmt::start().await;
    let (conn, ch) = sample_topology(&m).await;
    // Exclusive queues are not exported.
    declare_exclusive(&ch).await;
    let dir = TempDir::new("warrenctl-defs");
    let file = dir.join("defs.json");
    let path = file.to_str().expect("utf-8 path");
    assert_eq!(
        m.ctl(&["export_definitions", path]).await.ok(),
        format!("Exporting definitions in JSON to a file at \"{path}\" ...\n")
    );
    let defs: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("JSON");
    let names = |key: &str| -> Vec<String> {
        defs[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|o| o["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names("queues"), ["q1", "q2"]);
    assert_eq!(names("exchanges"), ["ex1", "hx"]);
    assert_eq!(defs["bindings"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        defs["queues"][1]["arguments"],
        json!({"x-message-ttl": 60000, "x-queue-type": "classic"})
    );
    for key in ["rabbit_version", "users", "vhosts", "permissions"] {
        assert!(defs.get(key).is_some(), "no {key} in {defs}");
    }
    let stdout = m.ctl(&["export_definitions", "-"]).await.ok();
    let again: Value = serde_json::from_str(&stdout).expect("export to stdout is JSON");
    assert_eq!(again["queues"], defs["queues"]);

    drop((ch, conn));
    for q in ["q1", "q2"] {
        m.ctl(&["delete_queue", "-q", q]).await.ok();
    }
    m.http("DELETE", "/api/exchanges/%2F/ex1", None);
    assert_eq!(
        m.ctl(&["import_definitions", path]).await.ok(),
        format!("Importing definitions in JSON from a file at \"{path}\" ...\nSuccessfully imported definitions.\n")
    );
    assert!(queue_exists(&m.broker, "q1") && queue_exists(&m.broker, "q2"));
    let bindings = m
        .ctl(&[
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .await
        .ok();
    assert!(
        bindings.contains("ex1\tq1\ta.*\n") && bindings.contains("ex1\thx\t#\n"),
        "{bindings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_node() {
    let m = Mgmt::start().await;
    let _keep = sample_topology(&m).await;
    let out = m.ctl(&["status"]).await.ok();
    assert!(out.starts_with("Status of node warren@"), "{out}");
    for line in [
        "Queue count: 2",
        "Connection count: 1",
        "Virtual host count: 1",
        "(none)",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
    }
    assert!(
        out.contains(&format!("port: {}, protocol: http", m.addr.port())),
        "{out}"
    );
}

/// `set_vm_memory_high_watermark` and `set_disk_free_limit` change the limits at run time (the
/// soak test trips the alarms with them): the alarms follow at once, `status` shows them, and a
/// value of neither form is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_limits_are_set_at_run_time() {
    let m = Mgmt::start().await;
    let alarms = &m.broker.broker.alarms;
    // No resource monitor in-process: the test gives the samples.
    alarms.sample(100 << 20, Some(10_000_000_000));
    let out = m
        .ctl(&["set_vm_memory_high_watermark", "absolute", "50MiB"])
        .await
        .ok();
    assert!(
        out.starts_with("Setting memory threshold on warren@"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("to absolute 50MiB ..."), "{out}");
    assert_eq!(alarms.memory_limit(), 50 << 20);
    assert_eq!(alarms.active(), ["memory"]);
    let status = m.ctl(&["status"]).await.ok();
    assert!(status.contains("Memory alarm on node warren@"), "{status}");
    m.ctl(&["set_vm_memory_high_watermark", "0.9"]).await.ok();
    assert!(alarms.memory_limit() > 100 << 20, "0.9 of the RAM");
    assert!(alarms.active().is_empty());
    m.ctl(&["set_disk_free_limit", "20GB"]).await.ok();
    assert_eq!(alarms.disk_free_limit(), 20_000_000_000);
    assert_eq!(alarms.active(), ["disk"]);
    m.ctl(&["set_disk_free_limit", "mem_relative", "0"])
        .await
        .ok();
    assert!(alarms.active().is_empty());
    let (code, _) = m.http(
        "PUT",
        "/api/nodes/nosuchnode/disk-free-limit",
        Some(json!({"absolute": 1})),
    );
    assert_eq!(code, 404);
    for bad in [
        &["set_disk_free_limit", "mem_relative", "lots"][..],
        &["set_vm_memory_high_watermark", "relative", "0.4"],
    ] {
        let out = m.ctl(bad).await;
        assert_eq!(out.code, 64, "{bad:?}: {}", out.stderr);
    }
    let out = m.ctl(&["set_disk_free_limit", "lots"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("absolute"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_speaks_rabbitmqs_json() {
    let m = Mgmt::start().await;
    let (_conn, ch) = sample_topology(&m).await;
    let mut c = consume(&ch, "q1", "c1").await;
    next(&mut c).await;

    // Authentication.
    let (status, body) = http(&m.url(), "GET", "/api/queues", None, None);
    assert_eq!((status, &body["error"]), (401, &json!("not_authorized")));
    let (status, _) = http(
        &m.url(),
        "GET",
        "/api/queues",
        None,
        Some("Basic Z3Vlc3Q6bm9wZQ=="),
    );
    assert_eq!(status, 401);

    // A queue carries what operators and tools read.
    let (status, q) = m.http("GET", "/api/queues/%2F/q1", None);
    assert_eq!(status, 200);
    for key in [
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "memory",
        "state",
    ] {
        assert!(q.get(key).is_some(), "no {key} in {q}");
    }
    assert_eq!(
        (
            q["messages"].clone(),
            q["consumers"].clone(),
            q["vhost"].clone()
        ),
        (json!(5), json!(1), json!("/"))
    );
    assert_eq!(q["consumer_details"][0]["consumer_tag"], "c1");
    let (_, list) = m.http("GET", "/api/queues", None);
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    // Declare: 201, again 204, inequivalent 400 with RabbitMQ's text; unknown vhost 404.
    let body = json!({"durable": true, "arguments": {"x-max-length": 10}});
    assert_eq!(
        m.http("PUT", "/api/queues/%2F/made", Some(body.clone())).0,
        201
    );
    assert_eq!(m.http("PUT", "/api/queues/%2F/made", Some(body)).0, 204);
    let (status, err) = m.http(
        "PUT",
        "/api/queues/%2F/made",
        Some(json!({"durable": false})),
    );
    assert_eq!(status, 400);
    assert_eq!(err["error"], "bad_request");
    assert!(
        err["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("inequivalent arg 'durable'")),
        "{err}"
    );
    assert_eq!(
        m.http("PUT", "/api/queues/nohost/made", None),
        (
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"})
        )
    );
    assert_eq!(
        m.http("GET", "/api/queues/%2F/nope", None),
        (
            404,
            json!({"error": "Object Not Found", "reason": "Not Found"})
        )
    );
    assert_eq!(m.http("GET", "/api/no/such/path", None).0, 404);

    // Purge and delete.
    assert_eq!(m.http("DELETE", "/api/queues/%2F/q2/contents", None).0, 204);
    assert_eq!(m.http("DELETE", "/api/queues/%2F/made", None).0, 204);
    assert_eq!(m.http("DELETE", "/api/queues/%2F/made", None).0, 404);

    // Exchanges, with the default exchange as "" and amq.default in paths.
    let (_, xs) = m.http("GET", "/api/exchanges/%2F", None);
    assert_eq!(xs[0]["name"], "");
    assert_eq!(
        m.http("GET", "/api/exchanges/%2F/amq.default", None).1["type"],
        "direct"
    );
    assert_eq!(
        m.http(
            "PUT",
            "/api/exchanges/%2F/made.x",
            Some(json!({"type": "fanout"}))
        )
        .0,
        201
    );
    assert_eq!(
        m.http(
            "PUT",
            "/api/exchanges/%2F/bad.x",
            Some(json!({"type": "bogus"}))
        )
        .0,
        400
    );
    assert_eq!(
        m.http("DELETE", "/api/exchanges/%2F/amq.direct", None).0,
        401
    );

    // Bindings: create, find by properties key, delete.
    assert_eq!(
        m.http(
            "POST",
            "/api/bindings/%2F/e/made.x/q/q2",
            Some(json!({"routing_key": "k.*"}))
        )
        .0,
        201
    );
    let (_, bs) = m.http("GET", "/api/bindings/%2F/e/made.x/q/q2", None);
    assert_eq!(bs[0]["properties_key"], "k.%2A");
    assert_eq!(
        m.http("DELETE", "/api/bindings/%2F/e/made.x/q/q2/k.%252A", None)
            .0,
        204
    );
    assert_eq!(
        m.http("GET", "/api/bindings/%2F/e/made.x/q/q2", None).1,
        json!([])
    );
    let (_, qb) = m.http("GET", "/api/queues/%2F/q2/bindings", None);
    assert_eq!(qb[0]["source"], "");

    // Connections, channels, consumers, overview, health.
    let (_, conns) = m.http("GET", "/api/connections", None);
    assert_eq!(conns[0]["user"], "guest");
    let (_, chans) = m.http("GET", "/api/channels", None);
    assert_eq!(chans[0]["consumer_count"], 1);
    let (_, cons) = m.http("GET", "/api/consumers/%2F", None);
    assert_eq!(cons[0]["queue"]["name"], "q1");
    let (_, o) = m.http("GET", "/api/overview", None);
    assert_eq!(o["object_totals"]["queues"], 2);
    assert_eq!(o["queue_totals"]["messages_unacknowledged"], 5);
    assert_eq!(
        m.http("GET", "/api/health/checks/alarms", None),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(m.http("GET", "/api/whoami", None).1["name"], "guest");
    assert_eq!(m.http("GET", "/api/vhosts", None).1[0]["name"], "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_are_created_and_listed_and_filter_listings() {
    let m = Mgmt::start().await;
    assert_eq!(m.http("PUT", "/api/vhosts/other", None).0, 201);
    assert_eq!(m.http("PUT", "/api/vhosts/other", None).0, 204);
    assert_eq!(
        m.ctl(&["list_vhosts"]).await.ok(),
        "Listing vhosts ...\nname\n/\nother\n"
    );
    assert_eq!(
        m.http(
            "PUT",
            "/api/queues/other/only-here",
            Some(json!({"durable": true}))
        )
        .0,
        201
    );
    assert_eq!(
        m.ctl(&["list_queues", "-q", "-p", "other"]).await.ok(),
        "name\tmessages\nonly-here\t0\n"
    );
    assert_eq!(m.ctl(&["list_queues", "-q"]).await.ok(), "");
    // A definitions file for a vhost that does not exist yet creates it.
    let defs = json!({
        "vhosts": [{"name": "third"}],
        "queues": [{"name": "tq", "vhost": "third", "durable": true, "auto_delete": false, "arguments": {}}],
    });
    assert_eq!(m.http("POST", "/api/definitions", Some(defs)).0, 204);
    assert_eq!(
        m.ctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "-p",
            "third",
            "name"
        ])
        .await
        .ok(),
        "tq\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_membership_commands_on_a_node_alone_say_it_is_not_clustered() {
    let m = Mgmt::start().await;
    for args in [
        &["forget_cluster_node", "warren@elsewhere:25672"][..],
        &["shrink", "warren@elsewhere:25672"][..],
    ] {
        let out = m.ctl(args).await;
        assert_eq!(out.code, 69, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .starts_with("Error: not_clustered (this broker is not in a cluster"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // The banner, as rabbitmqctl prints it, comes first.
    let out = m
        .ctl(&["forget_cluster_node", "warren@elsewhere:25672"])
        .await;
    assert_eq!(
        out.stdout,
        "Removing node warren@elsewhere:25672 from the cluster\n"
    );
}
