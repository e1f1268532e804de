//! Three `warren` processes clustered from their config files (issue 14): definitions made on
//! one node are there on every node; a quorum queue spans the three; a publish on one node is
//! consumed on another; the queue's leader killed with SIGKILL, the queue takes confirmed
//! publishes again on the others within 5 s; the killed node, restarted, catches up.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::path::Path;
use std::time::{Duration, Instant};
use warren_tests::mgmt::try_http;
use warren_tests::{BrokerProcess, TempDir};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

struct Cluster {
    nodes: Vec<BrokerProcess>,
    names: Vec<String>,
    configs: Vec<std::path::PathBuf>,
    _dir: TempDir,
}

/// A free TCP port on 127.0.0.1 (released for the node to bind), below the kernel's
/// ephemeral range: the nodes' own listeners bind port 0 and must not take a cluster port
/// chosen for a node not started yet.
fn free_port() -> u16 {
    let (low, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut it = r.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    loop {
        let port = 10_000 + rand::random::<u16>() % low.saturating_sub(10_000).max(1_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn write_config(path: &Path, names: &[String], me: &str, secret: &Path) {
    let mut text = String::new();
    for (i, n) in names.iter().enumerate() {
        text.push_str(&format!(
            "cluster_formation.classic_config.nodes.{} = {n}\n",
            i + 1
        ));
    }
    text.push_str(&format!("cluster.node_name = {me}\n"));
    text.push_str(&format!("cluster.secret_file = {}\n", secret.display()));
    std::fs::write(path, text).unwrap();
}

/// One cluster at a time: each is three processes, and two of them at once on a two-core
/// machine delay Raft's timers more than the failover bars allow.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    fn start(name: &str) -> Cluster {
        Self::start_with(name, "")
    }

    /// Three nodes whose config files also hold `extra`.
    fn start_with(name: &str, extra: &str) -> Cluster {
        let dir = TempDir::new(name);
        let names: Vec<String> = (0..3)
            .map(|_| format!("warren@127.0.0.1:{}", free_port()))
            .collect();
        let secret = dir.path().join("cookie");
        std::fs::write(&secret, "a shared secret of the test cluster").unwrap();
        let configs: Vec<_> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("node{i}.conf"));
                write_config(&p, &names, &names[i], &secret);
                let mut text = std::fs::read_to_string(&p).unwrap();
                text.push_str(extra);
                // WARREN_TEST_LOG_LEVEL (a filter such as `info,warren_cluster=debug`): what
                // the nodes log, to see what a failing test's nodes did.
                if let Ok(level) = std::env::var("WARREN_TEST_LOG_LEVEL") {
                    text.push_str(&format!("\nlog.console.level = {level}\n"));
                }
                std::fs::write(&p, text).unwrap();
                p
            })
            .collect();
        // Started one after another: each start returns once its listeners are up, without
        // waiting for the others.
        let nodes = (0..3)
            .map(|i| {
                // Each node logs at info into its own file beside its data (kept with
                // WARREN_KEEP_TEST_DIRS=1: what a failed run's nodes did).
                BrokerProcess::start_logging(
                    WARREN,
                    &dir.path().join(format!("data{i}")),
                    &["--config", configs[i].to_str().unwrap()],
                    &dir.path().join(format!("node{i}.log")),
                )
            })
            .collect();
        Cluster {
            nodes,
            names,
            configs,
            _dir: dir,
        }
    }

    fn extra(&self, i: usize) -> Vec<&str> {
        vec!["--config", self.configs[i].to_str().unwrap()]
    }

    /// `/api/nodes` on node `asked`: (name, running) of each node.
    fn nodes_seen_by(&self, asked: usize) -> Vec<(String, bool)> {
        let base = format!("http://{}", self.nodes[asked].listener("http").unwrap());
        let (status, v) = try_http(
            &base,
            "GET",
            "/api/nodes",
            None,
            Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
        )
        .expect("/api/nodes");
        assert_eq!(status, 200);
        let mut nodes: Vec<(String, bool)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_string(),
                    n["running"] == true,
                )
            })
            .collect();
        nodes.sort();
        nodes
    }

    /// The node (index) that leads `queue`'s group, as node `asked`'s management API says.
    fn leader_of(&self, asked: usize, queue: &str) -> Option<usize> {
        let base = format!("http://{}", self.nodes[asked].listener("http")?);
        let (status, v) = try_http(
            &base,
            "GET",
            &format!("/api/queues/%2f/{queue}"),
            None,
            Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let leader = v["leader"].as_str()?;
        self.names.iter().position(|n| n == leader)
    }
}

async fn open(node: &BrokerProcess) -> (Connection, Channel) {
    let conn = Connection::connect(&node.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// A passive queue.declare (the queue's counts, or why it is not there).
async fn passive_queue(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, bodies: &[String]) {
    let mut confirms = Vec::new();
    for b in bodies {
        confirms.push(
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        let c = tokio::time::timeout(Duration::from_secs(20), c)
            .await
            .expect("a confirm within 20 s")
            .expect("confirm");
        assert!(c.is_ack(), "nacked: {c:?}");
    }
}

async fn consume(ch: &Channel, queue: &str, n: usize) -> Vec<String> {
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut got = Vec::new();
    while got.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} deliveries within 20 s", got.len()))
            .expect("a delivery")
            .expect("delivery");
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_definitions_and_quorum_queues_and_survive_a_leader_kill() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("cluster3");
    let mut all: Vec<(String, bool)> = cluster.names.iter().map(|n| (n.clone(), true)).collect();
    all.sort();
    assert_eq!(
        cluster.nodes_seen_by(1),
        all,
        "/api/nodes lists every node, running"
    );
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.exchange_declare(
        "orders".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare on node 0");
    ch0.queue_declare("q3".into(), durable(), quorum())
        .await
        .expect("quorum queue.declare on node 0");
    ch0.queue_bind(
        "q3".into(),
        "orders".into(),
        "new".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind on node 0");

    // Led by the node it was declared through (RabbitMQ's client-local leader locator).
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.leader_of(0, "q3") != Some(0) {
        assert!(
            Instant::now() < deadline,
            "q3 is led by node {:?}, not the node it was declared through",
            cluster.leader_of(0, "q3")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Visible on the other nodes as soon as the declaration returned.
    for i in 1..3 {
        let (_c, ch) = open(&cluster.nodes[i]).await;
        ch.exchange_declare(
            "orders".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("the exchange is not on node {i}: {e}"));
        passive_queue(&ch, "q3")
            .await
            .unwrap_or_else(|e| panic!("the queue is not on node {i}: {e}"));
    }

    // Published on node 1 through the replicated binding, consumed on node 2.
    let bodies: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch1, "orders", "new", &bodies).await;
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    let got = consume(&ch2, "q3", bodies.len()).await;
    assert_eq!(got, bodies, "node 2 got the messages in publish order");

    // Kill the leader; the queue takes confirmed publishes on the others within 5 s.
    let leader = cluster.leader_of(0, "q3").expect("a leader");
    drop((_c0, ch0, _c1, ch1, _c2, ch2));
    cluster.nodes[leader].kill9();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let killed_at = Instant::now();
    let (_ca, cha) = open(&cluster.nodes[others[0]]).await;
    cha.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&cha, "orders", "new", &["after".to_string()]).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a confirmed publish took {took:?} after the leader was killed"
    );
    let new_leader = cluster.leader_of(others[1], "q3").expect("a new leader");
    assert_ne!(new_leader, leader);
    let seen = cluster.nodes_seen_by(others[1]);
    assert!(
        seen.contains(&(cluster.names[leader].clone(), false)),
        "the killed node is listed as not running: {seen:?}"
    );

    // The killed node comes back and catches up: it serves the queue's messages too.
    let extra: Vec<String> = cluster
        .extra(leader)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    cluster.nodes[leader].kill9_and_restart(&extra);
    let (_cb, chb) = open(&cluster.nodes[leader]).await;
    let got = consume(&chb, "q3", 1).await;
    assert_eq!(got, vec!["after".to_string()]);
    println!("confirmed publish {took:?} after the leader's SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_quorum_queue_is_gone_on_every_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("cluster-del");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("gone".into(), durable(), quorum())
        .await
        .unwrap();
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    ch1.queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .expect("delete on node 1");
    for i in 0..3 {
        let (_c, ch) = open(&cluster.nodes[i]).await;
        let r = passive_queue(&ch, "gone").await;
        assert!(r.is_err(), "the deleted queue is still on node {i}");
    }
    // Declared again by that name, it starts empty on every node.
    ch0.queue_declare("gone".into(), durable(), quorum())
        .await
        .unwrap();
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    let q = passive_queue(&ch2, "gone").await.unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_unacked_messages_go_back_to_the_queue() {
    unacked_messages_of_a_killed_node_come_back("cluster-dead-consumer", false).await;
}

/// Killed and started again at once: the others never see the node down, so its earlier
/// run's consumers are removed by the node itself (the fault test found a message held for
/// good by such a consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_back_at_once_gives_back_its_unacked_messages() {
    unacked_messages_of_a_killed_node_come_back("cluster-back-at-once", true).await;
}

/// A consumer on a node that does not lead the queue takes ten messages and never acks; the
/// node is SIGKILLed (and started again at once with `restart`); the messages come back,
/// redelivered, to a consumer on the third node.
async fn unacked_messages_of_a_killed_node_come_back(name: &str, restart: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(name);
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("held".into(), durable(), quorum())
        .await
        .unwrap();
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    publish_confirmed(&ch0, "", "held", &bodies).await;
    // A consumer on a node that does not lead the queue takes them all and never acks.
    let leader = cluster.leader_of(0, "held").expect("a leader");
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let survivor = (0..3).find(|i| *i != leader && *i != victim).unwrap();
    eprintln!("leader node{leader}, victim node{victim}, survivor node{survivor}");
    let (_cv, chv) = open(&cluster.nodes[victim]).await;
    chv.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut held = chv
        .basic_consume(
            "held".into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..bodies.len() {
        tokio::time::timeout(Duration::from_secs(20), held.next())
            .await
            .expect("a delivery to the holder")
            .unwrap()
            .unwrap();
    }
    if restart {
        let extra = cluster
            .extra(victim)
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>();
        let extra: Vec<&str> = extra.iter().map(|a| a.as_str()).collect();
        cluster.nodes[victim].kill9_and_restart(&extra);
    } else {
        cluster.nodes[victim].kill9();
    }
    let killed = Instant::now();
    // Its messages come back, redelivered, to a consumer on another node.
    let (_cs, chs) = open(&cluster.nodes[survivor]).await;
    chs.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut c = chs
        .basic_consume(
            "held".into(),
            "survivor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < bodies.len() {
        let d = tokio::time::timeout(Duration::from_secs(15), c.next())
            .await
            .unwrap_or_else(|_| panic!("only {} messages came back", got.len()))
            .unwrap()
            .unwrap();
        assert!(d.redelivered, "a returned message is marked redelivered");
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    got.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(got, want);
    println!(
        "a killed node's unacked messages came back {:?} after its SIGKILL (restarted: {restart})",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_users_permissions_and_policies_reach_every_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("cluster-access");
    let api = |i: usize, method: &str, path: &str, body: Option<serde_json::Value>| {
        let base = format!("http://{}", cluster.nodes[i].listener("http").unwrap());
        try_http(&base, method, path, body, Some("Basic Z3Vlc3Q6Z3Vlc3Q=")).expect("management API")
    };
    let (s, _) = api(0, "PUT", "/api/vhosts/orders", None);
    assert!(s == 201 || s == 204, "PUT vhost: {s}");
    let (s, _) = api(
        0,
        "PUT",
        "/api/users/alice",
        Some(serde_json::json!({"password": "wonderland", "tags": "monitoring"})),
    );
    assert!(s == 201 || s == 204, "PUT user: {s}");
    let (s, _) = api(
        0,
        "PUT",
        "/api/permissions/orders/alice",
        Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert!(s == 201 || s == 204, "PUT permissions: {s}");
    let (s, _) = api(
        0,
        "PUT",
        "/api/policies/orders/ttl",
        Some(
            serde_json::json!({"pattern": "^t", "definition": {"message-ttl": 60000}, "apply-to": "queues"}),
        ),
    );
    assert!(s == 201 || s == 204, "PUT policy: {s}");
    // A change is committed on a majority when its PUT answers: the third node may apply it
    // a moment later (RabbitMQ's metadata reads are local to a node as well).
    for i in 1..3 {
        warren_tests::client::eventually(
            &format!("alice, the vhost and the policy on node {i}"),
            || {
                api(i, "GET", "/api/users/alice", None).0 == 200
                    && api(i, "GET", "/api/vhosts/orders", None).0 == 200
                    && api(i, "GET", "/api/policies/orders/ttl", None).0 == 200
            },
        )
        .await;
        let (_, v) = api(i, "GET", "/api/users/alice", None);
        assert_eq!(v["tags"], serde_json::json!(["monitoring"]));
        let (_, v) = api(i, "GET", "/api/policies/orders/ttl", None);
        assert_eq!(v["definition"]["message-ttl"], 60000);
    }
    // Alice logs in on another node with the password set on node 0, in the new vhost.
    let port = cluster.nodes[2].port;
    let conn = Connection::connect(
        &format!("amqp://alice:wonderland@127.0.0.1:{port}/orders"),
        ConnectionProperties::default(),
    )
    .await
    .expect("alice connects to node 2");
    conn.close(200, "bye".into()).await.unwrap();
    // Deleted on node 1: gone everywhere.
    let (s, _) = api(1, "DELETE", "/api/users/alice", None);
    assert_eq!(s, 204);
    let (s, _) = api(1, "DELETE", "/api/vhosts/orders", None);
    assert_eq!(s, 204);
    for i in 0..3 {
        warren_tests::client::eventually(
            &format!("alice and the vhost gone from node {i}"),
            || {
                api(i, "GET", "/api/users/alice", None).0 == 404
                    && api(i, "GET", "/api/vhosts/orders", None).0 == 404
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_tls_when_configured() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pki = warren_tests::pki::Pki::new("cluster");
    let (cert, key) = pki.node().write(pki.dir.path(), "node");
    let extra = format!(
        "cluster.ssl_options.certfile = {}\ncluster.ssl_options.keyfile = {}\ncluster.ssl_options.cacertfile = {}\n",
        cert.display(),
        key.display(),
        pki.ca_file().display()
    );
    let cluster = Cluster::start_with("cluster-tls", &extra);
    // The cluster port speaks TLS: a plain client gets no frame of the handshake.
    let port = cluster.names[1].rsplit_once(':').unwrap().1;
    let mut plain = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let mut first = [0u8; 4];
    use tokio::io::AsyncReadExt;
    let r = tokio::time::timeout(Duration::from_millis(500), plain.read_exact(&mut first)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "a plain connection to a TLS cluster port was sent the handshake's first frame"
    );
    // Over TLS the cluster works: declared on node 0, published on node 1, consumed on 2.
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("tls-q".into(), durable(), quorum())
        .await
        .expect("declare over a TLS cluster");
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    publish_confirmed(&ch1, "", "tls-q", &bodies).await;
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    assert_eq!(consume(&ch2, "tls-q", bodies.len()).await, bodies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_majority_refuses_rather_than_pretends() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("cluster-minority");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("alone".into(), durable(), quorum())
        .await
        .unwrap();
    drop((_c0, ch0));
    cluster.nodes[1].kill9();
    cluster.nodes[2].kill9();
    let (_c, ch) = open(&cluster.nodes[0]).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "alone".into(),
            BasicPublishOptions::default(),
            b"never confirmed",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    let c = tokio::time::timeout(Duration::from_secs(30), confirm)
        .await
        .expect("an answer within 30 s")
        .expect("a confirm frame");
    assert!(c.is_nack(), "a publish without a majority was acked: {c:?}");
    // A definition change is refused with an error that says why.
    let (_c2, ch2) = open(&cluster.nodes[0]).await;
    let err = ch2
        .queue_declare("new-one".into(), durable(), quorum())
        .await
        .expect_err("a declaration without a majority succeeded");
    assert!(
        err.to_string().contains("majority"),
        "the error does not say a majority is missing: {err}"
    );
}
