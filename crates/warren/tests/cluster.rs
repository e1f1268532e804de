//! Three `warren` processes clustered from their config files (issue 14): definitions made on
//! one node are there on every node; a quorum queue spans the three; a publish on one node is
//! consumed on another (also of a queue declared without a type in a vhost whose default
//! queue type is quorum); the queue's leader killed with SIGKILL, the queue takes confirmed
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

    /// SIGKILL node `i`, then start it again on its data and config.
    fn kill9_and_restart(&mut self, i: usize) {
        let config = self.configs[i].to_str().unwrap().to_string();
        self.nodes[i].kill9_and_restart(&["--config", &config]);
    }

    /// A node of its own (its config names only itself, as a cluster of one) with the
    /// cluster's secret: the process, its name, its config file.
    fn start_outsider(&self) -> (BrokerProcess, String, std::path::PathBuf) {
        let dir = self._dir.path();
        let name = format!("warren@127.0.0.1:{}", free_port());
        let config = dir.join("outsider.conf");
        let mut text = format!(
            "cluster.node_name = {name}\ncluster.secret_file = {}\n",
            dir.join("cookie").display()
        );
        if let Ok(level) = std::env::var("WARREN_TEST_LOG_LEVEL") {
            text.push_str(&format!("log.console.level = {level}\n"));
        }
        std::fs::write(&config, text).unwrap();
        let node = BrokerProcess::start_logging(
            WARREN,
            &dir.join("data-outsider"),
            &["--config", config.to_str().unwrap()],
            &dir.join("outsider.log"),
        );
        (node, name, config)
    }

    /// `/api/nodes` on node `asked`: (name, running) of each node.
    fn nodes_seen_by(&self, asked: usize) -> Vec<(String, bool)> {
        nodes_listed(&self.nodes[asked])
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

/// Publishes `body` (persistent) to `queue` on a channel in confirm mode: its confirm (ack or
/// nack), within 30 s.
async fn confirm_of(ch: &Channel, queue: &str, body: &[u8]) -> lapin::Confirmation {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), confirm)
        .await
        .expect("an answer within 30 s")
        .expect("a confirm frame")
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
    // Its queues are quorum queues unless declared otherwise: every node reaches them.
    let (s, _) = api(
        0,
        "PUT",
        "/api/vhosts/orders",
        Some(serde_json::json!({"default_queue_type": "quorum", "description": "orders"})),
    );
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
        let (_, v) = api(i, "GET", "/api/vhosts/orders", None);
        assert_eq!(v["default_queue_type"], "quorum", "node {i}: {v}");
        assert_eq!(v["metadata"]["description"], "orders", "node {i}: {v}");
    }
    // Alice logs in on another node with the password set on node 0, in the new vhost, and
    // declares a queue as a client that knows nothing of queue types: it is a quorum queue,
    // published to on node 2 and consumed from on node 1.
    let port = cluster.nodes[2].port;
    let conn = Connection::connect(
        &format!("amqp://alice:wonderland@127.0.0.1:{port}/orders"),
        ConnectionProperties::default(),
    )
    .await
    .expect("alice connects to node 2");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("jobs".into(), durable(), FieldTable::default())
        .await
        .expect("declare jobs without a type");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..10).map(|i| format!("job {i}")).collect();
    publish_confirmed(&ch, "", "jobs", &bodies).await;
    conn.close(200, "bye".into()).await.unwrap();
    let (_, v) = api(0, "GET", "/api/queues/orders/jobs", None);
    assert_eq!(v["type"], "quorum", "{v}");
    let port = cluster.nodes[1].port;
    let conn = Connection::connect(
        &format!("amqp://alice:wonderland@127.0.0.1:{port}/orders"),
        ConnectionProperties::default(),
    )
    .await
    .expect("alice connects to node 1");
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(consume(&ch, "jobs", 10).await, bodies);
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
    let c = confirm_of(&ch, "alone", b"never confirmed").await;
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

// ---- Group sizes, members added and removed (issue 14: x-quorum-initial-group-size,
// rabbitmq-queues add_member / delete_member / grow / shrink).

/// The quorum queue arguments with `x-quorum-initial-group-size`.
/// `/api/nodes` on `node`: (name, running) of each node, sorted.
fn nodes_listed(node: &BrokerProcess) -> Vec<(String, bool)> {
    let base = format!("http://{}", node.listener("http").unwrap());

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

fn quorum_of(size: AMQPValue) -> FieldTable {
    let mut t = quorum();
    t.insert("x-quorum-initial-group-size".into(), size);
    t
}

/// The management API of node `i`: (status, body).
fn api(
    cluster: &Cluster,
    i: usize,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    api_at(&cluster.nodes[i], method, path, body)
}

/// The management API of `node`: (status, body).
fn api_at(
    node: &BrokerProcess,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let base = format!("http://{}", node.listener("http").unwrap());
    try_http(&base, method, path, body, Some("Basic Z3Vlc3Q6Z3Vlc3Q=")).expect("management API")
}

/// `queue`'s members (sorted node indexes) and leader as node `asked` shows them.
fn members_of(cluster: &Cluster, asked: usize, queue: &str) -> (Vec<usize>, Option<usize>) {
    let (s, v) = api(
        cluster,
        asked,
        "GET",
        &format!("/api/queues/%2f/{queue}"),
        None,
    );
    if s == 404 {
        // Not applied on that node yet (the management API does not wait for the cluster's
        // definitions as AMQP look-ups do).
        return (Vec::new(), None);
    }
    assert_eq!(s, 200, "the queue on node {asked}");
    let index = |n: &serde_json::Value| {
        cluster
            .names
            .iter()
            .position(|x| Some(x.as_str()) == n.as_str())
    };
    let mut members: Vec<usize> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(index)
        .collect();
    members.sort();
    (members, index(&v["leader"]))
}

/// Waits until every live node in `asked` shows `queue` with `want` members and a leader.
async fn wait_members(cluster: &Cluster, asked: &[usize], queue: &str, want: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for &i in asked {
        loop {
            let (m, leader) = members_of(cluster, i, queue);
            if m == want && leader.is_some_and(|l| want.contains(&l)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} shows {queue}'s members {m:?} (leader {leader:?}), not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Consumes until `want` distinct bodies arrived (duplicates allowed), acking each.
/// Consumes `n` deliveries of `queue` with prefetch `prefetch` and acks none: the consumer,
/// holding them.
async fn hold_unacked(ch: &Channel, queue: &str, prefetch: u16, n: usize) -> lapin::Consumer {
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "held".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
    }
    consumer
}

async fn consume_all(ch: &Channel, queue: &str, want: &[String]) {
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let tag = format!("all-{}", rand::random::<u32>());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut missing: std::collections::BTreeSet<&String> = want.iter().collect();
    while !missing.is_empty() {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} confirmed messages never delivered, e.g. {:?}",
                    missing.len(),
                    missing.iter().take(3).collect::<Vec<_>>()
                )
            })
            .expect("a delivery")
            .expect("delivery");
        missing.remove(&String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_size_places_the_queue_on_that_many_nodes_and_the_others_serve_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("cluster-sizes");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;

    // Bad sizes: RabbitMQ's 406s, the same on every node.
    for (size, why) in [
        (AMQPValue::LongInt(0), "{value_zero,0}"),
        (AMQPValue::LongInt(-1), "{value_negative,-1}"),
        (
            AMQPValue::LongString("three".into()),
            "\"expected integer, got longstr\"",
        ),
    ] {
        let (_c, ch) = open(&cluster.nodes[1]).await;
        let e = ch
            .queue_declare("bad".into(), durable(), quorum_of(size))
            .await
            .expect_err("a bad group size was taken");
        let want = format!(
            "PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue 'bad' in vhost '/': {why}"
        );
        assert!(e.to_string().contains(&want), "{e} does not say {want}");
    }

    ch0.queue_declare("one".into(), durable(), quorum_of(AMQPValue::LongInt(1)))
        .await
        .expect("a group of one");
    ch0.queue_declare(
        "two".into(),
        durable(),
        quorum_of(AMQPValue::ShortShortInt(2)),
    )
    .await
    .expect("a group of two");
    // Larger than the cluster: every node (as RabbitMQ).
    ch0.queue_declare("seven".into(), durable(), quorum_of(AMQPValue::LongInt(7)))
        .await
        .expect("a group larger than the cluster");
    wait_members(&cluster, &[0, 1, 2], "one", &[0]).await;
    wait_members(&cluster, &[0, 1, 2], "seven", &[0, 1, 2]).await;
    let (two, _) = members_of(&cluster, 0, "two");
    assert_eq!(two.len(), 2, "two's members: {two:?}");
    assert!(two.contains(&0), "the declaring node is a member: {two:?}");
    wait_members(&cluster, &[0, 1, 2], "two", &two).await;
    let outsider = (0..3).find(|i| !two.contains(i)).unwrap();

    // A client of a node that is not a member publishes with confirms and consumes.
    let bodies: Vec<String> = (0..100).map(|i| format!("o{i}")).collect();
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch2, "", "one", &bodies).await;
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    // Counts on a node that is not a member come from the members (a moment late).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = passive_queue(&ch1, "one").await.unwrap();
        if q.message_count() == 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 counts {} messages in 'one'",
            q.message_count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(consume(&ch1, "one", 60).await, bodies[..60].to_vec());
    // Deliveries beyond the 60 (prefetch) go back to the queue with the channel.
    ch1.close(200, "done".into()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while passive_queue(&ch0, "one").await.unwrap().message_count() != 40 {
        assert!(
            Instant::now() < deadline,
            "the closed channel's deliveries did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // basic.get on a node that is not a member, and a reject that requeues.
    let got = ch2
        .basic_get("one".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, bodies[60].as_bytes());
    got.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(consume(&ch2, "one", 40).await, bodies[60..].to_vec());

    let (_co, cho) = open(&cluster.nodes[outsider]).await;
    cho.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&cho, "", "two", &bodies[..10]).await;
    assert_eq!(consume(&cho, "two", 10).await, bodies[..10].to_vec());
    drop((_c1, ch1, _c2, ch2, _co, cho));

    // The groups live on their members only: with the other nodes gone, a group of one
    // still confirms (a group spanning three would have no majority).
    for i in 1..3 {
        cluster.nodes[i].kill9();
    }
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch0, "", "one", &["alone".to_string()]).await;
    assert_eq!(consume(&ch0, "one", 1).await, vec!["alone".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_catches_up_and_holds_the_queue_when_the_first_one_dies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("cluster-grow");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("grown".into(), durable(), quorum_of(AMQPValue::LongInt(1)))
        .await
        .unwrap();
    wait_members(&cluster, &[0, 1, 2], "grown", &[0]).await;
    // Enough to make the only member snapshot its queue and drop its log: the new members
    // catch up from the snapshot.
    let pad = "x".repeat(32 << 10);
    let bodies: Vec<String> = (0..400).map(|i| format!("g{i}-{pad}")).collect();
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for chunk in bodies.chunks(100) {
        publish_confirmed(&ch1, "", "grown", chunk).await;
    }

    // Errors first, as rabbitmq-queues reports them.
    let (s, v) = api(
        &cluster,
        2,
        "POST",
        "/api/queues/%2f/grown/members",
        Some(serde_json::json!({"node": "warren@nowhere:1"})),
    );
    assert_eq!((s, v["reason"].as_str()), (400, Some("node_not_running")));
    let (s, v) = api(
        &cluster,
        2,
        "DELETE",
        &format!("/api/queues/%2f/grown/members/{}", cluster.names[0]),
        None,
    );
    assert_eq!((s, v["reason"].as_str()), (400, Some("last_node")));
    let (s, _) = api(
        &cluster,
        2,
        "POST",
        "/api/queues/%2f/nothing-here/members",
        Some(serde_json::json!({"node": cluster.names[1]})),
    );
    assert_eq!(s, 404);

    // Added through a node that is not a member; then grown onto the third node.
    let (s, v) = api(
        &cluster,
        2,
        "POST",
        "/api/queues/%2f/grown/members",
        Some(serde_json::json!({"node": cluster.names[1]})),
    );
    assert_eq!((s, &v["size"]), (200, &serde_json::json!(2)), "{v}");
    wait_members(&cluster, &[0, 1, 2], "grown", &[0, 1]).await;
    let (s, rows) = api(
        &cluster,
        0,
        "POST",
        &format!("/api/nodes/{}/grow", cluster.names[2]),
        Some(serde_json::json!({"strategy": "even"})),
    );
    assert_eq!(s, 200);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "grown")
        .unwrap_or_else(|| panic!("grow did not grow 'grown': {rows}"));
    assert_eq!(
        (&row["size"], &row["result"]),
        (&serde_json::json!(3), &serde_json::json!("ok"))
    );
    wait_members(&cluster, &[0, 1, 2], "grown", &[0, 1, 2]).await;

    // The first member dies: the two added ones elect a leader among themselves and deliver
    // every confirmed message.
    drop((_c0, ch0));
    cluster.nodes[0].kill9();
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch2, "", "grown", &["after".to_string()]).await;
    let mut want = bodies.clone();
    want.push("after".into());
    consume_all(&ch2, "grown", &want).await;
    let (_, leader) = members_of(&cluster, 2, "grown");
    assert!(
        matches!(leader, Some(1 | 2)),
        "an added member leads now: {leader:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_moves_leadership_and_loses_no_confirmed_message() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("cluster-shrink");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("moving".into(), durable(), quorum())
        .await
        .unwrap();
    wait_members(&cluster, &[0, 1, 2], "moving", &[0, 1, 2]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.leader_of(0, "moving") != Some(0) {
        assert!(Instant::now() < deadline, "node 0 does not lead 'moving'");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A publisher on node 1 keeps publishing with confirms while the leader is removed.
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (ch1, stop) = (ch1.clone(), stop.clone());
        tokio::spawn(async move {
            let mut confirmed = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch: Vec<String> = (i..i + 20).map(|n| format!("p{n}")).collect();
                i += 20;
                publish_confirmed(&ch1, "", "moving", &batch).await;
                confirmed.extend(batch);
            }
            confirmed
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = api(
        &cluster,
        2,
        "DELETE",
        &format!("/api/queues/%2f/moving/members/{}", cluster.names[0]),
        None,
    );
    assert_eq!((s, &v["size"]), (200, &serde_json::json!(2)), "{v}");
    wait_members(&cluster, &[0, 1, 2], "moving", &[1, 2]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let confirmed = publisher.await.unwrap();
    assert!(confirmed.len() >= 40, "only {} confirmed", confirmed.len());

    // The removed node serves the queue from the members now: its client publishes and
    // consumes every confirmed message.
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch0, "", "moving", &["from-0".to_string()]).await;
    let mut want = confirmed.clone();
    want.push("from-0".into());
    consume_all(&ch0, "moving", &want).await;

    // shrink of a node that is a member of nothing lists nothing; deleting a node that is not
    // a member changes nothing (RabbitMQ's delete_member is idempotent).
    let (s, rows) = api(
        &cluster,
        1,
        "POST",
        &format!("/api/nodes/{}/shrink", cluster.names[0]),
        None,
    );
    assert_eq!((s, rows), (200, serde_json::json!([])));
    let (s, v) = api(
        &cluster,
        1,
        "DELETE",
        &format!("/api/queues/%2f/moving/members/{}", cluster.names[0]),
        None,
    );
    assert_eq!((s, &v["size"]), (200, &serde_json::json!(2)));
    // shrink of node 2 leaves the queue on node 1 alone; shrinking node 1 then refuses.
    let (s, rows) = api(
        &cluster,
        0,
        "POST",
        &format!("/api/nodes/{}/shrink", cluster.names[2]),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(
        rows,
        serde_json::json!([{"vhost": "/", "name": "moving", "size": 1, "result": "ok"}])
    );
    let (_, rows) = api(
        &cluster,
        0,
        "POST",
        &format!("/api/nodes/{}/shrink", cluster.names[1]),
        None,
    );
    assert_eq!(
        rows,
        serde_json::json!([{"vhost": "/", "name": "moving", "size": 1, "result": "error: the last node cannot be removed"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_node_leaves_the_cluster_and_every_quorum_queue() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start("cluster-forget");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("kept".into(), durable(), quorum())
        .await
        .unwrap();
    // A classic queue whose home is node 2: forgotten with it (as RabbitMQ).
    {
        let (_c2, ch2) = open(&cluster.nodes[2]).await;
        ch2.queue_declare("on-two".into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    wait_members(&cluster, &[0, 1, 2], "kept", &[0, 1, 2]).await;
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    publish_confirmed(&ch0, "", "kept", &bodies).await;

    // Refused: a node that runs (RabbitMQ requires it stopped), the node asked, a node that
    // is not in the cluster. None of them changes anything.
    let (s, v) = forget(&cluster, 0, &cluster.names[2]);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["reason"].as_str().unwrap().starts_with("node_running"),
        "{v}"
    );
    let (s, v) = forget(&cluster, 0, &cluster.names[0]);
    assert_eq!(s, 400, "{v}");
    let (s, v) = forget(&cluster, 0, "warren@127.0.0.1:1");
    assert_eq!(
        (s, &v["reason"]),
        (404, &serde_json::json!("not_a_cluster_node"))
    );
    wait_members(&cluster, &[0, 1, 2], "kept", &[0, 1, 2]).await;

    // Node 2 dies for good and is forgotten through node 1: its member leaves the queue.
    cluster.nodes[2].kill9();
    let (s, v) = forget(&cluster, 1, &cluster.names[2]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["queues"],
        serde_json::json!([{"vhost": "/", "name": "kept", "size": 2, "result": "ok"}])
    );
    assert_eq!(
        v["classic_queues_deleted"],
        serde_json::json!([{"vhost": "/", "name": "on-two"}])
    );
    for i in 0..2 {
        let (_c, ch) = open(&cluster.nodes[i]).await;
        let e = passive_queue(&ch, "on-two")
            .await
            .expect_err("a forgotten node's classic queue");
        assert!(e.to_string().contains("NOT_FOUND"), "node {i}: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(lists_two(&cluster, 0) && lists_two(&cluster, 1)) {
        assert!(
            Instant::now() < deadline,
            "the nodes still list a forgotten node: {:?} / {:?}",
            cluster.nodes_seen_by(0),
            cluster.nodes_seen_by(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_members(&cluster, &[0, 1], "kept", &[0, 1]).await;
    // A new queue of the default size (3) is placed on the two nodes left.
    ch0.queue_declare("after".into(), durable(), quorum())
        .await
        .unwrap();
    wait_members(&cluster, &[0, 1], "after", &[0, 1]).await;
    // Every confirmed message is still there.
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    consume_all(&ch1, "kept", &bodies).await;
    // It is not a node of the cluster any more.
    let (s, v) = forget(&cluster, 0, &cluster.names[2]);
    assert_eq!(s, 404, "{v}");

    // The cluster's nodes are kept in the metadata group's log: a restarted node still
    // lists two, though its config names three.
    drop((_c0, ch0));
    let config = cluster.configs[0].clone();
    cluster.nodes[0].kill9_and_restart(&["--config", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lists_two(&cluster, 0) {
        assert!(
            Instant::now() < deadline,
            "after a restart node 0 lists {:?}",
            cluster.nodes_seen_by(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `forget_cluster_node` of `node` through node `asked`'s management API.
fn forget(cluster: &Cluster, asked: usize, node: &str) -> (u16, serde_json::Value) {
    api(
        cluster,
        asked,
        "POST",
        &format!("/api/nodes/{node}/forget"),
        None,
    )
}

/// Whether node `i` lists nodes 0 and 1, both running, and no other.
fn lists_two(cluster: &Cluster, i: usize) -> bool {
    let mut want = vec![
        (cluster.names[0].clone(), true),
        (cluster.names[1].clone(), true),
    ];
    want.sort();
    cluster.nodes_seen_by(i) == want
}

/// Waits until `node` lists exactly `want` ((name, running), sorted).
async fn wait_listed(node: &BrokerProcess, want: &[(String, bool)], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = nodes_listed(node);
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: lists {seen:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `path` answers 200 on `node`.
async fn wait_found(node: &BrokerProcess, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = api_at(node, "GET", path, None);
        if s == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_its_own_joins_a_running_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("cluster-join");
    // What the cluster has before the join: a vhost, a quorum queue with confirmed messages.
    let (s, v) = api(&cluster, 0, "PUT", "/api/vhosts/before", None);
    assert!(s == 201 || s == 204, "{s} {v}");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("held".into(), durable(), quorum())
        .await
        .unwrap();
    wait_members(&cluster, &[0, 1, 2], "held", &[0, 1, 2]).await;
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..30).map(|i| format!("h{i}")).collect();
    publish_confirmed(&ch0, "", "held", &bodies).await;

    // A fourth node, configured with its own name only: a cluster of one.
    let (mut d, d_name, d_config) = cluster.start_outsider();
    wait_listed(&d, &[(d_name.clone(), true)], "the new node alone").await;
    let join = |seed: &str| {
        api_at(
            &d,
            "POST",
            "/api/cluster/join",
            Some(serde_json::json!({ "node": seed })),
        )
    };
    // A node that does not answer cannot be joined; nothing changes.
    let (s, v) = join("warren@127.0.0.1:1");
    assert_eq!(
        (s, &v["reason"]),
        (400, &serde_json::json!("node_not_running"))
    );
    // Through node 1 (not necessarily the metadata group's leader).
    let (s, v) = join(&cluster.names[1]);
    assert_eq!(s, 200, "{v}");
    let mut all: Vec<(String, bool)> = cluster
        .names
        .iter()
        .chain([&d_name])
        .map(|n| (n.clone(), true))
        .collect();
    all.sort();
    for (i, n) in cluster.nodes.iter().enumerate() {
        wait_listed(n, &all, &format!("node {i} after the join")).await;
    }
    wait_listed(&d, &all, "the joined node").await;

    // It has the cluster's definitions, and serves its quorum queue (from the members).
    wait_found(&d, "/api/vhosts/before").await;
    wait_found(&d, "/api/queues/%2f/held").await;
    let (_cd, chd) = open(&d).await;
    consume_all(&chd, "held", &bodies).await;
    // A definition made through it reaches the others.
    let (s, v) = api_at(&d, "PUT", "/api/vhosts/after", None);
    assert!(s == 201 || s == 204, "{s} {v}");
    wait_found(&cluster.nodes[0], "/api/vhosts/after").await;
    // The queue grows onto it; a new queue's members may be placed on it.
    let (s, v) = api(
        &cluster,
        0,
        "POST",
        "/api/queues/%2f/held/members",
        Some(serde_json::json!({ "node": d_name })),
    );
    assert_eq!((s, &v["size"]), (200, &serde_json::json!(4)), "{v}");
    chd.queue_declare(
        "everywhere".into(),
        durable(),
        quorum_of(AMQPValue::LongInt(4)),
    )
    .await
    .unwrap();
    let (s, v) = api_at(&d, "GET", "/api/queues/%2f/everywhere", None);
    assert_eq!(s, 200, "{v}");
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 4, "{v}");
    assert!(members.contains(&serde_json::json!(d_name)), "{v}");

    // Joining the same cluster again changes nothing.
    let (s, v) = join(&cluster.names[0]);
    assert_eq!(s, 200, "{v}");

    // Restarted, it is still a node of the cluster, though its config names only itself.
    drop((_cd, chd));
    d.kill9_and_restart(&["--config", d_config.to_str().unwrap()]);
    wait_listed(&d, &all, "the joined node after a restart").await;
    publish_and_consume_one(&d, "held").await;
}

/// A confirmed publish through `node` to `queue`, consumed there.
async fn publish_and_consume_one(node: &BrokerProcess, queue: &str) {
    let (_c, ch) = open(node).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let after = vec!["after-restart".to_string()];
    publish_confirmed(&ch, "", queue, &after).await;
    consume_all(&ch, queue, &after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_takes_no_deliveries_for_a_while_is_served_again() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start("cluster-push-give-up");
    let (_c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare("pushed".into(), durable(), quorum_of(AMQPValue::LongInt(2)))
        .await
        .unwrap();
    // The node that is not a member: the members send it its consumers' deliveries.
    let deadline = Instant::now() + Duration::from_secs(20);
    let members = loop {
        let (m, leader) = members_of(&cluster, 0, "pushed");
        if m.len() == 2 && leader.is_some() {
            break m;
        }
        assert!(Instant::now() < deadline, "pushed: members {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let outsider = (0..3).find(|i| !members.contains(i)).unwrap();
    wait_found(&cluster.nodes[outsider], "/api/queues/%2f/pushed").await;
    let (_co, cho) = open(&cluster.nodes[outsider]).await;
    cho.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = cho
        .basic_consume(
            "pushed".into(),
            "far".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch0.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch0, "", "pushed", &["before".to_string()]).await;
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the first delivery")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"before");
    d.ack(BasicAckOptions::default()).await.unwrap();

    // Stopped (SIGSTOP), the node takes no deliveries and answers no probes: the leader
    // takes it for down and returns what its consumer held, and the members give up the
    // deliveries they could not send (after 10 s).
    let pid = cluster.nodes[outsider].pid().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let during: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    publish_confirmed(&ch0, "", "pushed", &during).await;
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);

    // Running again, its consumer is served again: every confirmed message arrives.
    let mut missing: std::collections::BTreeSet<&String> = during.iter().collect();
    while !missing.is_empty() {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("never delivered after the node ran again: {missing:?}"))
            .expect("a delivery")
            .expect("delivery");
        missing.remove(&String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // And what comes next.
    publish_confirmed(&ch0, "", "pushed", &["after".to_string()]).await;
    loop {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("the message published after")
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
        if d.data == b"after" {
            break;
        }
    }
}

/// Three nodes with classic queues known everywhere (set explicitly, though it is the
/// default), and durable classic queue `queue` declared on node 0, its home: the cluster and
/// node 0's connection and channel.
async fn classic_queue_on_node_0(name: &str, queue: &str) -> (Cluster, Connection, Channel) {
    let cluster = Cluster::start_with(name, "cluster.classic_queues_everywhere = true\n");
    let (c0, ch0) = open(&cluster.nodes[0]).await;
    ch0.queue_declare(queue.into(), durable(), FieldTable::default())
        .await
        .expect("declare on node 0");
    (cluster, c0, ch0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_is_reached_from_every_node_on_its_home_node() {
    // cluster.classic_queues_everywhere: a durable classic queue lives on the node that
    // declared it (node 0 here); every node knows it, routes to it, and serves its clients.
    let _one = ONE_AT_A_TIME.lock().await;
    let (cluster, _c0, ch0) = classic_queue_on_node_0("cluster-classic", "orders").await;
    ch0.exchange_declare(
        "shop".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch0.queue_bind(
        "orders".into(),
        "shop".into(),
        "new".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind on node 0");
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    for ch in [&ch0, &ch1, &ch2] {
        passive_queue(ch, "orders")
            .await
            .expect("every node knows the queue");
    }
    // The management API of every node shows it on its home node.
    for i in 0..3 {
        let (status, q) = api(&cluster, i, "GET", "/api/queues/%2f/orders", None);
        assert_eq!(status, 200, "node {i}: {q}");
        assert_eq!(q["node"], cluster.names[0].as_str(), "node {i}: {q}");
        assert_eq!(q["type"], "classic", "node {i}: {q}");
    }
    // Declared again elsewhere with the same arguments: the same queue. With others: refused
    // as on its home node.
    ch2.queue_declare("orders".into(), durable(), FieldTable::default())
        .await
        .expect("the same declaration on node 2");
    {
        let (_c, ch) = open(&cluster.nodes[2]).await;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
        let e = ch
            .queue_declare("orders".into(), durable(), args)
            .await
            .expect_err("other arguments are refused");
        assert!(e.to_string().contains("PRECONDITION"), "{e}");
    }

    // Published on node 1 (through the exchange, and straight to the queue): confirmed once
    // on node 0's disk.
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bodies: Vec<String> = (0..40).map(|i| format!("order-{i}")).collect();
    publish_confirmed(&ch1, "shop", "new", &bodies[..20]).await;
    publish_confirmed(&ch1, "", "orders", &bodies[20..]).await;
    assert_eq!(
        passive_queue(&ch0, "orders").await.unwrap().message_count(),
        40,
        "the messages are on the home node"
    );

    // basic.get on node 2, acked there.
    let got = ch2
        .basic_get("orders".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message for basic.get on node 2");
    assert_eq!(got.delivery.data, b"order-0");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // Consumed on node 2, acked there: every message once, in order.
    let mut all = consume(&ch2, "orders", 39).await;
    assert_eq!(all, bodies[1..]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = passive_queue(&ch0, "orders").await.unwrap().message_count();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} messages left on node 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A consumer on node 1 whose channel closes with unacked messages: they go back.
    publish_confirmed(&ch1, "", "orders", &bodies[..3]).await;
    {
        let (c, ch) = open(&cluster.nodes[1]).await;
        let _held = hold_unacked(&ch, "orders", 10, 3).await;
        c.close(200, "bye".into()).await.unwrap();
    }
    all = consume(&ch0, "orders", 3).await;
    assert_eq!(all, bodies[..3], "redelivered on the home node");

    // Deleted on node 2: gone on every node.
    ch2.queue_delete("orders".into(), QueueDeleteOptions::default())
        .await
        .expect("delete on node 2");
    for i in 0..3 {
        let (_c, ch) = open(&cluster.nodes[i]).await;
        assert!(
            passive_queue(&ch, "orders").await.is_err(),
            "the deleted queue is still on node {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queues_home_node_down_cancels_its_consumers_elsewhere_until_it_is_back() {
    // As RabbitMQ with a classic queue whose node goes down: its consumers on the other nodes
    // get basic.cancel, it answers 404 ("home node … is down or inaccessible"), publishes
    // routed to it are nacked; once the node is back, so are its durable messages.
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut cluster, _c0, _ch0) = classic_queue_on_node_0("cluster-classic-down", "jobs").await;
    let bodies: Vec<String> = (0..10).map(|i| format!("job-{i}")).collect();
    {
        let (_c1, ch1) = open(&cluster.nodes[1]).await;
        ch1.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish_confirmed(&ch1, "", "jobs", &bodies).await;
    }
    // Node 2, killed and started again, knows the queue from its own saved definitions.
    cluster.kill9_and_restart(2);
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    assert_eq!(
        passive_queue(&ch2, "jobs").await.unwrap().message_count(),
        10,
        "node 2 shows the home node's count"
    );

    // A consumer on node 1 holds 5 unacked messages.
    let (_c1, ch1) = open(&cluster.nodes[1]).await;
    let mut consumer = hold_unacked(&ch1, "jobs", 5, 5).await;

    // The home node dies: the consumer is cancelled.
    cluster.nodes[0].kill9();
    let killed = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
        Ok(None) => {}
        Ok(Some(Ok(_))) => panic!("a delivery after the home node died"),
        Ok(Some(Err(e))) => panic!("the channel failed instead: {e}"),
        Err(_) => panic!("no basic.cancel within 10 s of the home node's death"),
    }
    println!(
        "consumer cancelled {:?} after the home node's SIGKILL",
        killed.elapsed()
    );
    // The queue answers 404 with RabbitMQ's text; a publish to it is nacked.
    // (Each node sees the home node down by its own probes, within a second or so.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        let (_c, ch) = open(&cluster.nodes[2]).await;
        match passive_queue(&ch, "jobs").await {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("node 2 still answers for a queue whose home node is down"),
        }
    };
    assert!(e.to_string().contains("is down or inaccessible"), "{e}");
    let (_, q) = api(&cluster, 2, "GET", "/api/queues/%2f/jobs", None);
    assert_eq!(q["state"], "down", "{q}");
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let c = confirm_of(&ch2, "jobs", b"lost").await;
    assert!(
        c.is_nack(),
        "a publish to a queue whose home node is down: {c:?}"
    );

    // Back: every durable message, the 5 that were unacked on node 1 included.
    cluster.kill9_and_restart(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_c, ch) = open(&cluster.nodes[1]).await;
        if let Ok(q) = passive_queue(&ch, "jobs").await {
            if q.message_count() == 10 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not come back with its 10 messages"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_c, ch) = open(&cluster.nodes[1]).await;
    let mut got = consume(&ch, "jobs", 10).await;
    got.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_publish_to_a_remote_classic_queue_survives_its_home_nodes_sigkill() {
    // Publishes on node 1 to node 0's classic queue, with confirms, while node 0 is killed
    // with SIGKILL: a confirm means the message was on node 0's disk, so once node 0 is back
    // every confirmed message is in the queue (unconfirmed ones may be there too).
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut cluster, _c0, _ch0) = classic_queue_on_node_0("cluster-classic-kill", "ledger").await;
    let url = cluster.nodes[1].url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    // Confirmed ids, in batches of 50 in flight.
    let publisher = tokio::spawn(async move {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("connect to node 1");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let (mut confirmed, mut next) = (Vec::new(), 0u64);
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let mut batch = Vec::new();
            for _ in 0..50 {
                let body = format!("entry-{next}");
                next += 1;
                let Ok(c) = ch
                    .basic_publish(
                        "".into(),
                        "ledger".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                else {
                    return confirmed;
                };
                batch.push((body, c));
            }
            for (body, c) in batch {
                match tokio::time::timeout(Duration::from_secs(20), c).await {
                    Ok(Ok(c)) if c.is_ack() => confirmed.push(body),
                    Ok(Ok(_)) => {}
                    _ => return confirmed,
                }
            }
        }
        confirmed
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[0].kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let confirmed = publisher.await.unwrap();
    assert!(
        confirmed.len() >= 100,
        "only {} publishes confirmed before the kill",
        confirmed.len()
    );
    cluster.kill9_and_restart(0);
    // Node 2 sees it back, then every confirmed message is delivered there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_c, ch) = open(&cluster.nodes[2]).await;
        if passive_queue(&ch, "ledger").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0's queue did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} publishes confirmed before and around the kill",
        confirmed.len()
    );
    let (_c2, ch2) = open(&cluster.nodes[2]).await;
    consume_all(&ch2, "ledger", &confirmed).await;
}
