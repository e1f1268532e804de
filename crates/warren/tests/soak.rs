//! An hour of churn (issue 16): the real `warren` binary under a mixed workload while
//! everything around it changes, with a checker that records every confirmed message and
//! every delivery. Two minutes of it inside `cargo test`; an hour by hand:
//! `cargo test -p warren --test soak -- --ignored` (or any length: `WARREN_SOAK_SECS`).
//!
//! The workload (rates are moderate: ~150 messages a second in all, 64 B to 4 KiB bodies with
//! an occasional 128 KiB one):
//! - publishers with confirms (persistent, mandatory) to durable queues: three work queues, a
//!   TTL queue and a length-limited queue, both of which dead-letter to `soak.dlx` → `soak.dead`;
//!   every publisher closes its channel and opens another every few hundred messages;
//! - consumers with manual acks and prefetch 1, 10 or 50; those of the TTL and limited queues
//!   are slower than their publishers and reject (requeue = false) one message in 25;
//! - consumers that die without acking: their socket is cut under them (a proxy drops it) or
//!   their channel closed, with up to 20 deliveries unacknowledged, which must come back;
//! - connections and channels opened and closed continuously (exclusive queues, gets);
//! - durable queues declared, filled with confirmed messages, partly consumed and deleted;
//! - policies changed over the management API every few seconds: `message-ttl` on the TTL
//!   queue, `max-length` on the limited one, each also cleared now and then;
//! - memory and disk alarms, in turn, by lowering the watermark and raising the disk free
//!   limit at run time (`PUT /api/nodes/{node}/memory-high-watermark` and `/disk-free-limit`,
//!   what `warrenctl set_vm_memory_high_watermark` and `set_disk_free_limit` use), each held a
//!   few seconds, then put back;
//! - the broker restarted with SIGTERM twice (at 15 % and 30 % of the run, so the last 70 %
//!   is one process whose memory and descriptors can be judged); clients reconnect.
//!
//! Then publishing stops, every queue is drained, the broker is stopped and started once more
//! (nothing acknowledged may come back) and the checker accounts for every confirmed message:
//! delivered and acknowledged, dead-lettered (its `x-death` reason and queue are checked:
//! `expired` and `rejected` from the TTL queue, `maxlen` and `rejected` from the limited one),
//! or in a queue the test deleted. Unconfirmed publishes may be lost; confirmed ones never.
//!
//! Pass, besides that: no publish nacked or returned, no confirm stalled for a minute, every
//! SIGTERM a clean exit, every alarm blocked the publishers (connection.blocked), no
//! error-level line (nor a panic) in the broker's log, run at its normal level; and the
//! broker's RSS and open descriptors flat (see [`check_flat`]). The samples (one a second:
//! time, pid, RSS, descriptors) go to `WARREN_SOAK_CSV` (default `soak.csv` in Cargo's
//! scratch directory for tests); `tests/hand/plot_soak.py` draws them (docs/soak.md).

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event,
    ExchangeKind, PublisherConfirm,
};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use warren_tests::mgmt::try_http;
use warren_tests::*;

/// The broker under test (`WARREN_BIN` for the hour by hand on a copy).
fn warren() -> String {
    warren_bin(env!("CARGO_BIN_EXE_warren"))
}
const GUEST: Option<&str> = Some("Basic Z3Vlc3Q6Z3Vlc3Q=");

const WORK: [&str; 3] = ["soak.work.0", "soak.work.1", "soak.work.2"];
/// Has a `message-ttl` policy now and then; dead-letters to `DLX` (a queue argument, so
/// whatever the policy says, nothing it drops goes unseen).
const TTL: &str = "soak.ttl";
/// Has a `max-length` policy now and then; dead-letters to `DLX`.
const LIMITED: &str = "soak.limited";
const DLX: &str = "soak.dlx";
const DEAD: &str = "soak.dead";
const TEMP: &str = "soak.temp.";

/// Longest a publisher waits for one confirm (alarms block for a few seconds): longer is a
/// stall, and fails the test.
const CONFIRM_STALL: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res = Result<(), BoxError>;

fn param(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Where clients find the broker; a restart changes it (new ports, new pid).
#[derive(Clone, Default)]
struct Target {
    amqp: Option<std::net::SocketAddr>,
    mgmt: String,
    pid: u32,
}

/// Everything the checker records. Queue names are interned: `queues[i]`.
#[derive(Default)]
struct Ledger {
    queues: Vec<String>,
    queue_ids: HashMap<String, u32>,
    /// Confirmed (acked by the broker, routed): id → queue.
    confirmed: HashMap<u64, u32>,
    /// Acknowledged by a consumer of the queue it was published to.
    acked: HashSet<u64>,
    /// Acknowledged by the consumer of `DEAD`: id → its `x-death` reason.
    dead: HashMap<u64, String>,
    /// Temporary queues whose queue.delete was sent.
    delete_sent: HashSet<String>,
    unconfirmed: u64,
    nacked: u64,
    returned: u64,
    deliveries: u64,
    redeliveries: u64,
    /// Deliveries of a message already acknowledged.
    after_ack: u64,
    rejected: u64,
    /// Deliveries left unacknowledged by consumers that died.
    deserted: u64,
    blocked: u64,
    /// What went wrong on the client side (connections lost in restarts, mostly), by kind.
    client_errors: BTreeMap<String, u64>,
    /// Broken promises seen on the way (bad bodies, wrong x-death): the test fails on any.
    violations: Vec<String>,
}

impl Ledger {
    fn queue_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.queue_ids.get(name) {
            return i;
        }
        let i = self.queues.len() as u32;
        self.queues.push(name.to_string());
        self.queue_ids.insert(name.to_string(), i);
        i
    }
}

struct Ctx {
    target: RwLock<Target>,
    ledger: Mutex<Ledger>,
    next_id: AtomicU64,
    /// Publishing and churning stop.
    stop: AtomicBool,
    /// Consumers stop (after the drain).
    drained: AtomicBool,
    /// Connections and channels the clients opened.
    connections: AtomicU64,
    channels: AtomicU64,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn target(&self) -> Target {
        self.target.read().unwrap().clone()
    }

    fn url(&self) -> String {
        match self.target().amqp {
            Some(a) => format!("amqp://guest:guest@{a}/%2f"),
            None => "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        }
    }

    async fn connect(&self) -> Result<Connection, BoxError> {
        self.connect_url(&self.url()).await
    }

    /// A connection (counted) to `url`.
    async fn connect_url(&self, url: &str) -> Result<Connection, BoxError> {
        let conn = connect_to(url).await?;
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// A channel (counted) on `conn`.
    async fn channel(&self, conn: &Connection) -> Result<Channel, lapin::Error> {
        let ch = conn.create_channel().await?;
        self.channels.fetch_add(1, Ordering::Relaxed);
        Ok(ch)
    }

    /// A channel in confirm mode.
    async fn confirm_channel(&self, conn: &Connection) -> Result<Channel, lapin::Error> {
        let ch = self.channel(conn).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(ch)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }

    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.ledger().violations.push(what);
    }

    /// One management API request, off the runtime's threads; None while the broker restarts.
    async fn api(&self, method: &'static str, path: String, body: Option<Value>) -> Option<Value> {
        let base = self.target().mgmt;
        let (status, v) =
            tokio::task::spawn_blocking(move || try_http(&base, method, &path, body, GUEST).ok())
                .await
                .expect("http task")?;
        (200..300).contains(&status).then_some(v)
    }

    /// Records a delivery of `d` from `queue`; returns its id (None for a bad body, recorded
    /// as a violation).
    fn delivered(&self, d: &lapin::message::Delivery, queue: &str) -> Option<u64> {
        let Some((id, from)) = parse_body(&d.data) else {
            self.violation(format!("a delivery from {queue} has a bad body"));
            return None;
        };
        if queue != DEAD && from != queue {
            self.violation(format!("message {id} of {from} was delivered from {queue}"));
        }
        let mut l = self.ledger();
        l.deliveries += 1;
        l.redeliveries += d.redelivered as u64;
        // An ack on its way when a restart closed the connection is lost: at least once.
        l.after_ack += l.acked.contains(&id) as u64;
        Some(id)
    }
}

async fn connect_to(url: &str) -> Result<Connection, BoxError> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(TIMEOUT, connecting).await {
        Ok(r) => Ok(r?),
        Err(_) => Err("connect timed out".into()),
    }
}

/// `id:queue:` and padding that depends on the id, 64 B to 4 KiB (1 in 200: 128 KiB).
fn make_body(id: u64, queue: &str, rng: &mut impl Rng) -> Vec<u8> {
    let len = if rng.gen_ratio(1, 200) {
        128 * 1024
    } else {
        rng.gen_range(64..4096)
    };
    let mut b = format!("{id}:{queue}:").into_bytes();
    let fill = b'a' + (id % 26) as u8;
    b.resize(len.max(b.len()), fill);
    b
}

/// The id and queue a body names, if it is intact.
fn parse_body(data: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(data).ok()?;
    let mut parts = text.splitn(3, ':');
    let id: u64 = parts.next()?.parse().ok()?;
    let queue = parts.next()?.to_string();
    let fill = b'a' + (id % 26) as u8;
    parts
        .next()?
        .bytes()
        .all(|b| b == fill)
        .then_some((id, queue))
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Runs `session` again and again until the workload stops (or, for consumers, until the
/// queues are drained), recording why each one ended; a broker restart ends them all.
async fn keep_running<F, Fut>(ctx: Arc<Ctx>, what: &'static str, consumer: bool, session: F)
where
    F: Fn(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = Res>,
{
    let done = |c: &Ctx| match consumer {
        true => c.drained.load(Ordering::Acquire),
        false => c.stopped(),
    };
    while !done(&ctx) {
        if let Err(e) = session(ctx.clone()).await {
            let kind = format!("{what}: {}", error_kind(&*e));
            *ctx.ledger().client_errors.entry(kind).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An error without the parts that differ each time (ids, addresses).
fn error_kind(e: &(dyn std::error::Error + 'static)) -> String {
    let text = e.to_string();
    let text: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
    text.chars().take(100).collect()
}

/// Waits for the oldest confirm and records it.
async fn settle(ctx: &Ctx, (id, queue, confirm): (u64, String, PublisherConfirm)) -> Res {
    let c = match tokio::time::timeout(CONFIRM_STALL, confirm).await {
        Ok(c) => c?,
        Err(_) => {
            ctx.violation(format!(
                "no confirm for message {id} within {CONFIRM_STALL:?}"
            ));
            return Err("confirm stalled".into());
        }
    };
    let mut l = ctx.ledger();
    match c {
        Confirmation::Ack(None) => {
            let q = l.queue_id(&queue);
            l.confirmed.insert(id, q);
        }
        Confirmation::Ack(Some(_)) => {
            l.returned += 1;
            drop(l);
            ctx.violation(format!("message {id} to {queue} was returned unroutable"));
        }
        Confirmation::Nack(_) => l.nacked += 1,
        Confirmation::NotRequested => unreachable!("confirm mode"),
    }
    Ok(())
}

/// Waits for every confirm of `pending`; those left when the connection fails are counted as
/// unconfirmed.
async fn settle_all(ctx: &Ctx, pending: &mut VecDeque<(u64, String, PublisherConfirm)>) -> Res {
    while let Some(p) = pending.pop_front() {
        if let Err(e) = settle(ctx, p).await {
            ctx.ledger().unconfirmed += 1 + pending.len() as u64;
            pending.clear();
            return Err(e);
        }
    }
    Ok(())
}

/// Publishes persistent messages with confirms to `queues` (the first with 70 % of them),
/// at `rate` a second, at most 20 unconfirmed, on a new channel every 300 messages.
async fn publisher(ctx: Arc<Ctx>, queues: &'static [&'static str], rate: f64) -> Res {
    let conn = ctx.connect().await?;
    let mut ch = ctx.confirm_channel(&conn).await?;
    let blocked = count_blocked(&ctx, &conn);
    let mut pending = VecDeque::new();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut on_channel = 0;
    let result: Res = async {
        while !ctx.stopped() {
            if on_channel == 300 {
                settle_all(&ctx, &mut pending).await?;
                ch.close(200, "next channel".into()).await?;
                ch = ctx.confirm_channel(&conn).await?;
                on_channel = 0;
            }
            let (queue, body) = {
                let mut rng = rand::thread_rng();
                let queue = match rng.gen_ratio(7, 10) {
                    true => queues[0],
                    false => queues[rng.gen_range(1..queues.len())],
                };
                let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
                (queue, (id, make_body(id, queue, &mut rng)))
            };
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            let confirm = ch
                .basic_publish("".into(), queue.into(), opts, &body.1, persistent())
                .await?;
            pending.push_back((body.0, queue.to_string(), confirm));
            on_channel += 1;
            if pending.len() > 20 {
                let oldest = pending.pop_front().expect("pending");
                if let Err(e) = settle(&ctx, oldest).await {
                    ctx.ledger().unconfirmed += 1;
                    return Err(e);
                }
            }
            tokio::time::sleep(gap).await;
        }
        settle_all(&ctx, &mut pending).await
    }
    .await;
    // Published, but the connection failed before the confirm could come.
    ctx.ledger().unconfirmed += pending.len() as u64;
    blocked.abort();
    result
}

/// Counts the connection.blocked a connection receives.
fn count_blocked(ctx: &Arc<Ctx>, conn: &Connection) -> tokio::task::JoinHandle<()> {
    let mut events = Box::pin(conn.events_listener());
    let ctx = ctx.clone();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if matches!(e, Event::ConnectionBlocked(_)) {
                ctx.ledger().blocked += 1;
            }
        }
    })
}

/// How a consumer treats what it gets.
#[derive(Clone, Copy)]
struct ConsumerSpec {
    queue: &'static str,
    prefetch: u16,
    /// Time spent on each message.
    work: Duration,
    /// Rejects (requeue = false) one message in this many; 0: never.
    reject_one_in: u32,
}

/// The next delivery, or None after `wait` (so the caller can look at its stop flag).
async fn next_within(
    consumer: &mut Consumer,
    wait: Duration,
) -> Result<Option<lapin::message::Delivery>, BoxError> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Err(_) => Ok(None),
        Ok(None) => Err("the consumer was cancelled".into()),
        Ok(Some(d)) => Ok(Some(d?)),
    }
}

async fn consumer(ctx: Arc<Ctx>, spec: ConsumerSpec) -> Res {
    let conn = ctx.connect().await?;
    let ch = ctx.channel(&conn).await?;
    ch.basic_qos(spec.prefetch, BasicQosOptions::default())
        .await?;
    let mut c = ch
        .basic_consume(
            spec.queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while !ctx.drained.load(Ordering::Acquire) {
        let Some(d) = next_within(&mut c, Duration::from_millis(500)).await? else {
            continue;
        };
        let Some(id) = ctx.delivered(&d, spec.queue) else {
            d.ack(BasicAckOptions::default()).await?;
            continue;
        };
        let reject = spec.reject_one_in > 0 && rand::thread_rng().gen_ratio(1, spec.reject_one_in);
        if reject {
            d.nack(BasicNackOptions {
                requeue: false,
                ..Default::default()
            })
            .await?;
            ctx.ledger().rejected += 1;
        } else {
            d.ack(BasicAckOptions::default()).await?;
            if spec.queue == DEAD {
                dead_lettered(&ctx, &d, id);
            } else {
                ctx.ledger().acked.insert(id);
            }
        }
        // Slower than the publishers while they publish; at full speed for the final drain.
        if !spec.work.is_zero() && !ctx.stopped() {
            tokio::time::sleep(spec.work).await;
        }
    }
    Ok(())
}

/// Records a message acknowledged from `DEAD`, checking its `x-death` history: it died once,
/// in the queue it was published to, for a reason that queue can have.
fn dead_lettered(ctx: &Ctx, d: &lapin::message::Delivery, id: u64) {
    let deaths = x_death(d);
    let from = parse_body(&d.data).map(|(_, q)| q).unwrap_or_default();
    let allowed: &[&str] = match from.as_str() {
        TTL => &["expired", "rejected"],
        LIMITED => &["maxlen", "rejected"],
        _ => &[],
    };
    match deaths.as_slice() {
        [death] if death.queue == from && allowed.contains(&death.reason.as_str()) => {
            ctx.ledger().dead.insert(id, death.reason.clone());
        }
        _ => ctx.violation(format!(
            "message {id} of {from} dead-lettered with {deaths:?}"
        )),
    }
}

/// A consumer that dies without acking: takes up to 20 deliveries (prefetch 20), then its
/// socket is cut under it (half the time) or its channel is closed; they must come back.
async fn deserter(ctx: Arc<Ctx>) -> Res {
    let Some(upstream) = ctx.target().amqp else {
        return Err("no broker".into());
    };
    let proxy = Proxy::start(upstream).await;
    let conn = ctx.connect_url(&proxy.url()).await?;
    let ch = ctx.channel(&conn).await?;
    ch.basic_qos(20, BasicQosOptions::default()).await?;
    let (queue, take, cut) = {
        let mut rng = rand::thread_rng();
        (
            WORK[rng.gen_range(0..WORK.len())],
            rng.gen_range(1..=20),
            rng.gen_bool(0.5),
        )
    };
    let mut c = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut held = Vec::new();
    while held.len() < take && !ctx.stopped() {
        match next_within(&mut c, Duration::from_secs(2)).await? {
            Some(d) => {
                ctx.delivered(&d, queue);
                held.push(d);
            }
            None => break,
        }
    }
    ctx.ledger().deserted += held.len() as u64;
    if cut {
        proxy.cut();
    } else {
        ch.close(200, "leaving without acking".into()).await?;
    }
    drop((held, c, conn));
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

/// Connections and channels opened and closed continuously: a few channels each, an exclusive
/// queue, a publish and a get on it.
async fn churner(ctx: Arc<Ctx>) -> Res {
    while !ctx.stopped() {
        let conn = ctx.connect().await?;
        let n = rand::thread_rng().gen_range(1..=5);
        let mut channels = Vec::new();
        for _ in 0..n {
            channels.push(ctx.channel(&conn).await?);
        }
        let ch = &channels[0];
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive(),
                FieldTable::default(),
            )
            .await?;
        ch.basic_publish(
            "".into(),
            q.name().clone(),
            BasicPublishOptions::default(),
            b"churn",
            BasicProperties::default(),
        )
        .await?;
        let mut got = None;
        for _ in 0..50 {
            got = ch
                .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
                .await?;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if got.is_none() {
            ctx.violation("a message to an exclusive queue never arrived".into());
        }
        // Half the channels closed one by one, the rest with the connection.
        for ch in channels.iter().take(n / 2) {
            ch.close(200, "churn".into()).await?;
        }
        conn.close(200, "churn".into()).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Durable queues declared, filled with confirmed messages, partly consumed (get and ack),
/// then deleted, one after the other.
async fn temp_queues(ctx: Arc<Ctx>, next: Arc<AtomicU64>) -> Res {
    let conn = ctx.connect().await?;
    let ch = ctx.confirm_channel(&conn).await?;
    while !ctx.stopped() {
        let name = format!("{TEMP}{}", next.fetch_add(1, Ordering::Relaxed));
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
        let (n, take) = {
            let mut rng = rand::thread_rng();
            let n = rng.gen_range(20..100);
            (n, rng.gen_range(0..n))
        };
        let mut pending = VecDeque::new();
        for _ in 0..n {
            let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
            let body = make_body(id, &name, &mut rand::thread_rng());
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            let c = ch
                .basic_publish("".into(), name.as_str().into(), opts, &body, persistent())
                .await?;
            pending.push_back((id, name.clone(), c));
        }
        settle_all(&ctx, &mut pending).await?;
        for _ in 0..take {
            let Some(m) = ch
                .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let id = ctx.delivered(&m.delivery, &name);
            m.delivery.ack(BasicAckOptions::default()).await?;
            if let Some(id) = id {
                ctx.ledger().acked.insert(id);
            }
        }
        ctx.ledger().delete_sent.insert(name.clone());
        ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
        let pause = rand::thread_rng().gen_range(200..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Ok(())
}

/// Policies changed every few seconds: `message-ttl` on `TTL`, `max-length` on `LIMITED`,
/// each cleared one time in four.
async fn policies(ctx: Arc<Ctx>, changes: Arc<AtomicU64>) {
    while !ctx.stopped() {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (name, pattern, definition) = {
            let mut rng = rand::thread_rng();
            match rng.gen_bool(0.5) {
                true => (
                    "soak-ttl",
                    "^soak\\.ttl$",
                    json!({"message-ttl": ([200, 1000, 3000][rng.gen_range(0..3)])}),
                ),
                false => (
                    "soak-limit",
                    "^soak\\.limited$",
                    json!({"max-length": ([20, 100, 500][rng.gen_range(0..3)])}),
                ),
            }
        };
        let path = format!("/api/policies/%2F/{name}");
        let clear = rand::thread_rng().gen_ratio(1, 4);
        let done = match clear {
            true => ctx.api("DELETE", path, None).await,
            false => {
                let body =
                    json!({"pattern": pattern, "definition": definition, "apply-to": "queues"});
                ctx.api("PUT", path, Some(body)).await
            }
        };
        if done.is_some() {
            changes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The node's JSON (`/api/nodes/{node}`), if the broker answers.
async fn node(ctx: &Ctx) -> Option<Value> {
    let nodes = ctx.api("GET", "/api/nodes".into(), None).await?;
    nodes.get(0).cloned()
}

/// Every `period`, an alarm (memory and disk in turn): the limit changed so that the alarm
/// goes off, held for 3 s, then put back.
async fn alarms(ctx: Arc<Ctx>, period: Duration, raised: Arc<Mutex<BTreeMap<String, u64>>>) {
    let mut memory = true;
    let mut next = Instant::now() + period;
    while !ctx.stopped() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + period;
        let Some(n) = node(&ctx).await else { continue };
        let name = n["name"].as_str().unwrap_or_default().to_string();
        let (path, flag, trip, back) = match memory {
            true => (
                "memory-high-watermark",
                "mem_alarm",
                json!({"absolute": 1}),
                json!({"absolute": n["mem_limit"]}),
            ),
            false => (
                "disk-free-limit",
                "disk_free_alarm",
                json!({"absolute": "1000TB"}),
                json!({"absolute": n["disk_free_limit"]}),
            ),
        };
        memory = !memory;
        let path = format!("/api/nodes/{name}/{path}");
        if ctx.api("PUT", path.clone(), Some(trip)).await.is_none() {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let on = node(&ctx).await.is_some_and(|n| n[flag] == true);
        if on {
            *raised.lock().unwrap().entry(flag.to_string()).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // A restart in between has put the limit back already.
        let _ = ctx.api("PUT", path, Some(back)).await;
    }
}

/// One sample of the broker process: seconds since the start, pid, RSS (KiB), descriptors.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    pid: u32,
    rss_kib: u64,
    fds: u64,
}

fn sample(pid: u32, t: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        t,
        pid,
        rss_kib,
        fds,
    })
}

/// Samples the broker once a second until `ctx.drained`, into `out` and, line by line (so
/// a run that fails or is interrupted leaves them too), into the CSV file at `csv`.
async fn sampler(ctx: Arc<Ctx>, start: Instant, out: Arc<Mutex<Vec<Sample>>>, csv: PathBuf) {
    use std::io::Write;
    let mut file =
        std::fs::File::create(&csv).unwrap_or_else(|e| panic!("create {}: {e}", csv.display()));
    writeln!(file, "seconds,pid,rss_kib,fds").expect("write the samples");
    while !ctx.drained.load(Ordering::Acquire) {
        let pid = ctx.target().pid;
        if let Some(s) = sample(pid, start.elapsed().as_secs_f64()) {
            writeln!(file, "{:.1},{},{},{}", s.t, s.pid, s.rss_kib, s.fds)
                .expect("write the samples");
            let n = {
                let mut v = out.lock().unwrap();
                v.push(s);
                v.len()
            };
            if n % 60 == 0 {
                let l = ctx.ledger();
                eprintln!(
                    "{:.0} s: RSS {} KiB, {} descriptors; {} confirmed, {} acked, {} dead-lettered",
                    s.t,
                    s.rss_kib,
                    s.fds,
                    l.confirmed.len(),
                    l.acked.len(),
                    l.dead.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// RSS and descriptors flat over the last process's samples: after a warm-up (the first
/// quarter of them, at least 15 s), the highest RSS of the last third is within 15 % (and
/// 8 MiB) of the highest of the first third, and the most descriptors of the last third at
/// most 25 more than of the first third. Why these bounds: the broker's memory moves with
/// what the queues hold (backlogs come and go with the policies and alarms, a 128 KiB body
/// now and then), its descriptors with the connections and segment files open at the moment
/// (a dozen clients reconnecting, the deleted queues' files); a leak of one buffer per
/// connection, channel or queue, or of a descriptor per anything, grows without bound and
/// crosses these within minutes at this churn.
fn check_flat(samples: &[Sample], end: f64) -> Result<String, String> {
    let last_pid = samples.last().map(|s| s.pid).ok_or("no samples")?;
    let run: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.pid == last_pid && s.t <= end)
        .collect();
    let span = run.last().ok_or("no samples")?.t - run[0].t;
    let warm = run[0].t + (span / 4.0).max(15.0);
    let steady: Vec<Sample> = run.iter().filter(|s| s.t >= warm).map(|s| **s).collect();
    if steady.len() < 9 {
        return Err(format!("too few samples after warm-up: {}", steady.len()));
    }
    let third = steady.len() / 3;
    let first = &steady[..third];
    let last = &steady[steady.len() - third..];
    let max = |v: &[Sample], f: fn(&Sample) -> u64| v.iter().map(f).max().unwrap_or(0);
    let (rss1, rss3) = (max(first, |s| s.rss_kib), max(last, |s| s.rss_kib));
    let (fd1, fd3) = (max(first, |s| s.fds), max(last, |s| s.fds));
    let report = format!(
        "pid {last_pid}, {} samples after {warm:.0} s: RSS max {rss1} KiB in the first third, \
         {rss3} KiB in the last; descriptors max {fd1} then {fd3}",
        steady.len()
    );
    let rss_bound = rss1 + (rss1 * 15 / 100).max(8 * 1024);
    if rss3 > rss_bound {
        return Err(format!("RSS grew: {report}"));
    }
    if fd3 > fd1 + 25 {
        return Err(format!("descriptors grew: {report}"));
    }
    Ok(report)
}

/// `WARREN_SOAK_CSV`, or `soak.csv` in Cargo's scratch directory for tests.
fn csv_path() -> PathBuf {
    std::env::var_os("WARREN_SOAK_CSV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("soak.csv"))
}

/// Lines of the broker's log at error level, or that tell of a panic.
fn error_lines(log: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" ERROR ") || l.contains("panicked"))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `soak.*` queues and their message counts (ready + unacknowledged).
async fn queue_counts(ctx: &Ctx) -> Option<BTreeMap<String, u64>> {
    let list = ctx.api("GET", "/api/queues/%2F".into(), None).await?;
    Some(
        list.as_array()?
            .iter()
            .filter_map(|q| {
                let name = q["name"].as_str()?;
                name.starts_with("soak.")
                    .then(|| (name.to_string(), q["messages"].as_u64().unwrap_or(0)))
            })
            .collect(),
    )
}

/// Takes (get and ack) what is left in the temporary queues the run left behind (a restart
/// came between their declaration and their deletion).
async fn drain_leftovers(ctx: &Ctx, counts: &BTreeMap<String, u64>) {
    let conn = ctx.connect().await.expect("connect to drain");
    let ch = channel(&conn).await;
    for name in counts.keys().filter(|n| n.starts_with(TEMP)) {
        while let Some(m) = get(&ch, name, false).await {
            if let Some(id) = ctx.delivered(&m.delivery, name) {
                ctx.ledger().acked.insert(id);
            }
            ack(&m.delivery).await;
        }
    }
    let _ = conn.close(200, "drained".into()).await;
}

/// Declares the permanent topology (durable, so restarts keep it).
async fn declare_topology(url: &str) {
    let conn = connect_url(url).await;
    let ch = channel(&conn).await;
    for q in WORK {
        declare_durable(&ch, q).await;
    }
    within(
        "declare dlx",
        ch.exchange_declare(
            DLX.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("declare dlx");
    declare_durable(&ch, DEAD).await;
    bind(&ch, DEAD, DLX, "").await;
    for q in [TTL, LIMITED] {
        declare_durable_args(&ch, q, table(&[("x-dead-letter-exchange", long(DLX))])).await;
    }
    let _ = conn.close(200, "declared".into()).await;
}

fn target_of(b: &BrokerProcess) -> Target {
    Target {
        amqp: b.listener("amqp"),
        mgmt: format!("http://{}", b.listener("http").expect("mgmt listener")),
        pid: b.pid().expect("running"),
    }
}

/// Blocks the runtime thread (not the runtime) while the broker restarts.
fn restart(b: &mut BrokerProcess, ctx: &Ctx) {
    let code = tokio::task::block_in_place(|| b.sigterm_and_restart(&[]));
    assert_eq!(code, Some(0), "warren did not exit cleanly on SIGTERM");
    *ctx.target.write().unwrap() = target_of(b);
}

async fn soak(secs: u64) {
    let dir = TempDir::new("soak");
    let log =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut b = BrokerProcess::start_logging(warren(), &dir.join("data"), &[], &log);
    declare_topology(&b.url()).await;
    let ctx = Arc::new(Ctx {
        target: RwLock::new(target_of(&b)),
        ledger: Mutex::default(),
        next_id: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        drained: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        channels: AtomicU64::new(0),
    });
    let start = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let csv = csv_path();
    let sampling = tokio::spawn(sampler(ctx.clone(), start, samples.clone(), csv.clone()));

    // The workload.
    static PUBLISH: [&[&str]; 3] = [
        &[WORK[0], TTL, LIMITED],
        &[WORK[1], TTL, LIMITED],
        &[WORK[2], TTL, LIMITED],
    ];
    let mut workload = Vec::new();
    for queues in PUBLISH {
        workload.push(tokio::spawn(keep_running(
            ctx.clone(),
            "publisher",
            false,
            move |c| publisher(c, queues, 50.0),
        )));
    }
    workload.push(tokio::spawn(keep_running(
        ctx.clone(),
        "deserter",
        false,
        deserter,
    )));
    workload.push(tokio::spawn(keep_running(
        ctx.clone(),
        "churner",
        false,
        churner,
    )));
    let temp_names = Arc::new(AtomicU64::new(0));
    let names = temp_names.clone();
    workload.push(tokio::spawn(keep_running(
        ctx.clone(),
        "temp queues",
        false,
        move |c| temp_queues(c, names.clone()),
    )));
    let policy_changes = Arc::new(AtomicU64::new(0));
    workload.push(tokio::spawn(policies(ctx.clone(), policy_changes.clone())));
    let raised = Arc::new(Mutex::new(BTreeMap::new()));
    let alarm_period = Duration::from_secs((secs / 6).clamp(15, 120));
    workload.push(tokio::spawn(alarms(
        ctx.clone(),
        alarm_period,
        raised.clone(),
    )));
    let mut consumers = Vec::new();
    let spec = |queue, prefetch, work_ms, reject_one_in| ConsumerSpec {
        queue,
        prefetch,
        work: Duration::from_millis(work_ms),
        reject_one_in,
    };
    let mut specs = Vec::new();
    for q in WORK {
        specs.push(spec(q, 10, 2, 0));
        specs.push(spec(q, 1, 5, 0));
    }
    specs.push(spec(WORK[0], 50, 0, 0));
    specs.push(spec(TTL, 1, 100, 25));
    specs.push(spec(LIMITED, 5, 100, 25));
    specs.push(spec(DEAD, 10, 0, 0));
    for s in specs {
        consumers.push(tokio::spawn(keep_running(
            ctx.clone(),
            "consumer",
            true,
            move |c| consumer(c, s),
        )));
    }

    // Two restarts, then the rest of the run on one process.
    let run = Duration::from_secs(secs);
    let mut restarts = 0;
    for at in [0.15, 0.30] {
        tokio::time::sleep_until((start + run.mul_f64(at)).into()).await;
        restart(&mut b, &ctx);
        restarts += 1;
        eprintln!(
            "restarted with SIGTERM at {:.0} s",
            start.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep_until((start + run).into()).await;
    let workload_end = start.elapsed().as_secs_f64();

    // Stop publishing and churning, then drain every queue.
    ctx.stop.store(true, Ordering::Release);
    for t in workload {
        tokio::time::timeout(Duration::from_secs(90), t)
            .await
            .expect("the workload did not stop within 90 s (a stalled client)")
            .expect("workload task");
    }
    for p in ["soak-ttl", "soak-limit"] {
        ctx.api("DELETE", format!("/api/policies/%2F/{p}"), None)
            .await;
    }
    let mut counts = queue_counts(&ctx).await.expect("queues");
    drain_leftovers(&ctx, &counts).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut empty_polls = 0;
    while empty_polls < 3 {
        assert!(
            Instant::now() < deadline,
            "the queues were not drained within 120 s: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        counts = queue_counts(&ctx).await.expect("queues");
        empty_polls = match counts.values().all(|&n| n == 0) {
            true => empty_polls + 1,
            false => 0,
        };
    }
    ctx.drained.store(true, Ordering::Release);
    for t in consumers {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("a consumer did not stop")
            .expect("consumer task");
    }
    sampling.await.expect("sampler");

    // Once more through a restart: nothing acknowledged comes back.
    restart(&mut b, &ctx);
    let after = queue_counts(&ctx)
        .await
        .expect("queues after the last restart");
    assert!(
        after.values().all(|&n| n == 0),
        "acknowledged messages came back after a restart: {after:?}"
    );
    let existing: HashSet<String> = after.keys().cloned().collect();
    assert_eq!(b.stop(), Some(0), "warren did not exit cleanly on SIGTERM");

    // The accounts.
    let samples = samples.lock().unwrap().clone();
    let l = ctx.ledger();
    let mut dead_by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut acked, mut deleted, mut lost) = (0u64, 0u64, Vec::new());
    for (&id, &q) in &l.confirmed {
        let queue = &l.queues[q as usize];
        if l.acked.contains(&id) {
            acked += 1;
        } else if let Some(reason) = l.dead.get(&id) {
            *dead_by_reason.entry(reason).or_default() += 1;
        } else if l.delete_sent.contains(queue) && !existing.contains(queue) {
            deleted += 1;
        } else {
            lost.push((id, queue.clone()));
        }
    }
    lost.sort();
    let raised = raised.lock().unwrap().clone();
    eprintln!(
        "soak: {secs} s, {restarts} restarts with SIGTERM (+1 at the end), alarms {raised:?}, \
         {} policy changes, {} temporary queues, {} connection.blocked, \
         {} connections and {} channels opened\n\
         confirmed {}: delivered and acked {acked}, dead-lettered {dead_by_reason:?}, \
         in deleted queues {deleted}, lost {}\n\
         deliveries {} ({} redelivered, {} after an ack), rejected {}, left unacked by deserters {}, \
         unconfirmed {}, nacked {}, returned {}\nclient-side errors: {:#?}\nsamples: {}",
        policy_changes.load(Ordering::Relaxed),
        temp_names.load(Ordering::Relaxed),
        l.blocked,
        ctx.connections.load(Ordering::Relaxed),
        ctx.channels.load(Ordering::Relaxed),
        l.confirmed.len(),
        lost.len(),
        l.deliveries,
        l.redeliveries,
        l.after_ack,
        l.rejected,
        l.deserted,
        l.unconfirmed,
        l.nacked,
        l.returned,
        l.client_errors,
        csv.display(),
    );
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(l.violations.is_empty(), "violations: {:#?}", l.violations);
    assert_eq!(l.nacked, 0, "publishes were nacked");
    assert!(!l.confirmed.is_empty() && acked > 0, "nothing went through");
    for alarm in ["mem_alarm", "disk_free_alarm"] {
        assert!(
            raised.get(alarm).is_some_and(|&n| n > 0),
            "no {alarm} was raised"
        );
    }
    assert!(l.blocked > 0, "the alarms blocked no publisher");
    let errors = error_lines(&log);
    assert!(
        errors.is_empty(),
        "the broker logged errors ({}):\n{}",
        log.display(),
        errors.join("\n")
    );
    match check_flat(&samples, workload_end) {
        Ok(report) => eprintln!("flat: {report}"),
        Err(e) => panic!("{e} (samples in {})", csv.display()),
    }
}

/// The CI version: `WARREN_SOAK_SECS` (default 120) of churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_loses_no_confirmed_message_and_leaks_nothing() {
    soak(param("WARREN_SOAK_SECS", 120)).await;
}

/// By hand: an hour of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour; run by hand"]
async fn an_hour_of_churn() {
    soak(param("WARREN_SOAK_SECS", 3600)).await;
}
