//! Power loss through the whole broker: an in-process broker whose data directory lives on
//! [`SimDisk`], an in-memory file system that throws away everything not fsynced when the test
//! pulls the plug (data appended since the last fsync, directory changes since the directory's
//! last fsync; a random part of it may survive, torn). Real lapin clients over real sockets
//! publish persistent messages with confirms and in transactions, to durable queues and a
//! durable delayed exchange, consume and ack, and declare and delete queues, until the plug is
//! pulled at a random point; the broker then restarts on what survived, and a checker compares
//! what it finds with what the clients were promised.
//!
//! The checker, after every restart:
//! - the broker opens (recovery never refuses a disk that only lost unsynced data), and the
//!   definitions (queues, exchanges, bindings) declared before anything was confirmed are all
//!   there; a queue whose declare-ok came is there unless its deletion was asked for, and one
//!   whose delete-ok came is gone;
//! - every confirmed message, and every message of a transaction whose `tx.commit-ok` arrived,
//!   is in its queue (or held by the delayed exchange and released), unless the consumer had
//!   acked it before the cut;
//! - a transaction is in each of its queues whole or not at all (committed or not);
//! - no message comes back whose ack was made durable (a full group commit after the ack was
//!   processed); nothing appears that was never published, nor twice in one queue, nor with a
//!   body that differs from what was sent;
//! - every truncation recovery made is named in its log (what was dropped);
//! - no file was written outside the simulated disk (the data directory's path does not exist
//!   on the real one).
//!
//! Anything the broker confirms after the cut must also hold: the disk refuses every write and
//! fsync from the cut on, so a confirm sent late is checked like any other.
//!
//! Also: cuts at every step of a definitions save, of a segment roll-over and of a queue
//! deletion (`cut_during_*`).
//!
//! Sizes: `WARREN_POWER_LOSS_ROUNDS` (default 100) rounds in `power_loss_rounds`; the ignored
//! `power_loss_1000_rounds` runs 1,000. `WARREN_POWER_LOSS_SEED` replays a run (the seed is
//! printed at the start and in every failure).

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_broker::persist::Persistence;
use warren_store::sim::SimRng;
use warren_store::{LossReport, SimDisk};
use warren_tests::*;

/// Queues every round publishes to. `cq*` get confirmed messages (`cq0` alone, or both through
/// the fanout `pl.fan`), `tq*` transactions, `dq` the delayed exchange's releases. The
/// consumer drains `cq0`, `tq0` and `dq` while the round runs; `cq1` and `tq1` pile up.
const QUEUES: [&str; 5] = ["cq0", "cq1", "tq0", "tq1", "dq"];
const CONSUMED: [&str; 3] = ["cq0", "tq0", "dq"];
const FAN: &str = "pl.fan";
const DELAY: &str = "pl.delay";

/// A data directory path that is never created on the real disk.
fn data_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "warren-power-loss-{}-{name}-never-on-disk",
        std::process::id()
    ))
}

fn start(disk: &SimDisk, dir: &Path, max_segment_size: u32) -> TestBroker {
    let mut p = Persistence::new(dir, Arc::new(disk.clone()));
    Arc::get_mut(&mut p)
        .expect("a new persistence")
        .store_options
        .max_segment_size = max_segment_size;
    TestBroker::with_persistence(p)
}

// ---------------------------------------------------------------------------------------
// Bodies: an id, then padding derived from it, so a corrupt body shows.

fn make_body(id: &str, len: usize) -> Vec<u8> {
    let mut b = format!("{id}|{len}|").into_bytes();
    let seed = id
        .bytes()
        .fold(7u8, |a, c| a.wrapping_mul(31).wrapping_add(c));
    b.extend((0..len).map(|i| b'a' + (seed.wrapping_add(i as u8)) % 26));
    b
}

/// The id of a body, if it is one `make_body` made.
fn body_id(body: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(body);
    let mut parts = text.splitn(3, '|');
    let (Some(id), Some(len)) = (parts.next(), parts.next()) else {
        return Err(format!("malformed body {:?}", &text[..text.len().min(40)]));
    };
    let len: usize = len.parse().map_err(|_| format!("malformed body {id}"))?;
    if make_body(id, len) != body {
        return Err(format!("body of {id} differs from what was published"));
    }
    Ok(id.to_string())
}

// ---------------------------------------------------------------------------------------
// What the clients were promised and what they did, for the checker.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    Open,
    CommitSent,
    Committed,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Set at the cut (under the disk's lock): no ack is sent after it.
    frozen: bool,
    /// Every id ever published, across rounds.
    sent: HashSet<String>,
    /// Confirmed (basic.ack) ids and the queues they must be in.
    confirmed: Vec<(String, Vec<&'static str>)>,
    nacked: usize,
    /// Transactions: their (id, queue) messages and how far the commit got.
    txs: Vec<(Vec<(String, &'static str)>, TxState)>,
    /// (queue, id) the consumer acked before the cut.
    client_acked: HashSet<(String, String)>,
    /// (queue, id) whose ack was made durable (full group commit after it); never come back.
    durable_acked: HashSet<(String, String)>,
    /// Temporary durable queues: name, whether declare-ok came, confirmed ids, whether its
    /// deletion was asked for, and whether delete-ok came.
    tmp: Vec<TmpQueue>,
    /// Errors a client met before the cut (a healthy broker gives none).
    errors: Vec<String>,
    /// Statistics over the run.
    stats: Stats,
}

#[derive(Debug, Default, Clone)]
struct TmpQueue {
    name: String,
    declared: bool,
    confirmed: Vec<String>,
    delete_sent: bool,
    delete_ok: bool,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    confirmed: usize,
    committed_txs: usize,
    recovered: usize,
    acked_came_back: usize,
    delayed_released_twice: usize,
    files_cut: usize,
    dirs_rolled_back: usize,
    truncations_logged: usize,
}

type Shared = Arc<Mutex<Ledger>>;

fn ledger(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn delayed(ms: i64) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
    persistent().with_headers(h)
}

/// The topology every round relies on, declared once on a fresh disk.
async fn declare_topology(ch: &Channel) {
    for q in QUEUES {
        declare_durable(ch, q).await;
    }
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "declare fanout",
        ch.exchange_declare(FAN.into(), ExchangeKind::Fanout, durable, no_args()),
    )
    .await
    .expect("declare fanout");
    let mut args = FieldTable::default();
    args.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    within(
        "declare delayed exchange",
        ch.exchange_declare(
            DELAY.into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            durable,
            args,
        ),
    )
    .await
    .expect("declare delayed exchange");
    bind(ch, "cq0", FAN, "").await;
    bind(ch, "cq1", FAN, "").await;
    bind(ch, "dq", DELAY, "d").await;
}

/// The definitions the broker restored hold the topology, bindings included.
fn check_topology(b: &TestBroker) -> Result<(), String> {
    let d = b.broker.definitions(true);
    for q in QUEUES {
        if !d.queues.iter().any(|x| x.name == q && x.durable) {
            return Err(format!("durable queue {q} missing after recovery"));
        }
    }
    for (x, kind) in [(FAN, "fanout"), (DELAY, "x-delayed-message")] {
        if !d.exchanges.iter().any(|e| e.name == x && e.kind == kind) {
            return Err(format!("exchange {x} ({kind}) missing after recovery"));
        }
    }
    for (src, dst, key) in [(FAN, "cq0", ""), (FAN, "cq1", ""), (DELAY, "dq", "d")] {
        if !d
            .bindings
            .iter()
            .any(|x| x.source == src && x.destination == dst && x.routing_key == key)
        {
            return Err(format!(
                "binding {src} -> {dst} ({key:?}) missing after recovery"
            ));
        }
    }
    Ok(())
}

/// Every message in `queue`, taken with basic.get (no-ack), as ids. Checks each body.
async fn take_all(ch: &Channel, queue: &str) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    loop {
        let got = within(
            "basic_get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .map_err(|e| format!("basic.get from {queue}: {e}"))?;
        match got {
            Some(m) => ids.push(body_id(&m.delivery.data).map_err(|e| format!("{queue}: {e}"))?),
            None => return Ok(ids),
        }
    }
}

/// After the acks the broker has processed, a full group commit: they are durable once it
/// returns on a disk that is still alive. Returns whether it was.
async fn checkpoint(b: &TestBroker, disk: &SimDisk) -> bool {
    let broker = b.broker.clone();
    tokio::task::spawn_blocking(move || broker.flush_all())
        .await
        .expect("flush_all");
    !disk.is_dead()
}

// ---------------------------------------------------------------------------------------
// Recovery and the checker.

/// What one restart found, checked against the ledger of the round before.
async fn recover_and_check(
    b: &TestBroker,
    disk: &SimDisk,
    l: &Shared,
    dir: &Path,
) -> Result<(), String> {
    // Recovery must say what it dropped: every truncation it made names its file in a
    // warning (the header reset and the torn tail both do).
    for (path, from, to) in disk.truncations() {
        let name = path.display().to_string();
        let lines = logs::take_containing(&name);
        if !lines
            .iter()
            .any(|l| l.contains("WARN") && (l.contains("truncat") || l.contains("header")))
        {
            return Err(format!(
                "recovery cut {name} from {from} to {to} bytes without a warning naming it (log: {lines:?})"
            ));
        }
        ledger(l).stats.truncations_logged += 1;
    }
    logs::take_containing(&dir.display().to_string());
    check_topology(b)?;

    let conn = connect(b).await;
    let ch = channel(&conn).await;
    let mut present: HashMap<String, Vec<String>> = HashMap::new();
    for q in QUEUES {
        present.insert(q.to_string(), take_all(&ch, q).await?);
    }
    // Held delayed messages are released when due (at most 300 ms after their publish, so
    // soon after the restart); wait for the confirmed ones.
    let want_delayed: HashSet<String> = {
        let g = ledger(l);
        g.confirmed
            .iter()
            .filter(|(_, qs)| qs == &vec!["dq"])
            .filter(|(id, _)| !g.client_acked.contains(&("dq".to_string(), id.clone())))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dq = present.get_mut("dq").expect("dq");
        let have: HashSet<&String> = dq.iter().collect();
        if want_delayed.iter().all(|id| have.contains(id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        dq.extend(take_all(&ch, "dq").await?);
    }
    // Temporary queues that exist now.
    let tmp: Vec<TmpQueue> = ledger(l).tmp.clone();
    let mut tmp_present: HashMap<String, Vec<String>> = HashMap::new();
    let defs = b.broker.definitions(true);
    for t in &tmp {
        if defs.queues.iter().any(|q| q.name == t.name) {
            tmp_present.insert(t.name.clone(), take_all(&ch, &t.name).await?);
        }
    }

    let drained = check_ledger(&mut ledger(l), &present, &tmp_present, &tmp)?;
    // A come-back of a deleted temporary queue goes again.
    for t in &tmp {
        let _ = within(
            "queue_delete",
            ch.queue_delete(t.name.as_str().into(), QueueDeleteOptions::default()),
        )
        .await;
    }
    let _ = within("close", conn.close(200, "checked".into())).await;
    if !checkpoint(b, disk).await {
        return Err("the disk died during the checkpoint".into());
    }
    ledger(l).durable_acked.extend(drained);
    Ok(())
}

/// The checks of one recovery against the ledger of the round before; clears that round's
/// records and returns the (queue, id) pairs found, which the caller then acks durably.
fn check_ledger(
    g: &mut Ledger,
    present: &HashMap<String, Vec<String>>,
    tmp_present: &HashMap<String, Vec<String>>,
    tmp: &[TmpQueue],
) -> Result<Vec<(String, String)>, String> {
    // Nothing unknown, nothing twice, nothing whose ack was durable.
    for (q, ids) in present.iter().chain(tmp_present.iter()) {
        let mut seen: HashMap<&String, usize> = HashMap::new();
        for id in ids {
            if !g.sent.contains(id) {
                return Err(format!("{q}: message {id} was never published"));
            }
            let n = seen.entry(id).or_default();
            *n += 1;
            // A delayed message whose copy in dq was durable when the cut came, but not yet the
            // ack of its record in the delayed store, is released again at the start: at least
            // once (documented in storage.md), so twice at most, and only there.
            if *n == 2 && q == "dq" {
                g.stats.delayed_released_twice += 1;
            } else if *n > 1 {
                return Err(format!("{q}: message {id} is there {n} times"));
            }
            if g.durable_acked.contains(&(q.clone(), id.clone())) {
                return Err(format!(
                    "{q}: message {id} came back although its ack was durable"
                ));
            }
            if g.client_acked.contains(&(q.clone(), id.clone())) {
                g.stats.acked_came_back += 1;
            }
        }
    }
    let has = |q: &str, id: &String| {
        present
            .get(q)
            .or_else(|| tmp_present.get(q))
            .is_some_and(|v| v.contains(id))
    };
    // Every confirmed message.
    for (id, queues) in &g.confirmed {
        for q in queues {
            if !has(q, id) && !g.client_acked.contains(&(q.to_string(), id.clone())) {
                return Err(format!("confirmed message {id} missing from {q}"));
            }
        }
    }
    // Transactions: whole or nothing per queue; committed ones whole.
    for (msgs, state) in &g.txs {
        let mut per_queue: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (id, q) in msgs {
            let e = per_queue.entry(q).or_default();
            e.0 += 1;
            if has(q, id) || g.client_acked.contains(&(q.to_string(), id.clone())) {
                e.1 += 1;
            }
            if has(q, id) && *state == TxState::Open {
                return Err(format!(
                    "{q}: message {id} of a transaction never committed"
                ));
            }
        }
        for (q, (n, there)) in per_queue {
            let present_any = msgs.iter().any(|(id, qq)| *qq == q && has(q, id));
            if *state == TxState::Committed && there != n {
                return Err(format!(
                    "{q}: committed transaction {msgs:?} has {there} of its {n} messages"
                ));
            }
            if present_any && there != n {
                return Err(format!(
                    "{q}: transaction {msgs:?} half applied ({there} of {n} messages)"
                ));
            }
        }
    }
    // Temporary queues: one declared (declare-ok came) whose deletion was never asked for is
    // there with its confirmed messages; one whose delete-ok came is gone for good (both
    // answers wait for the definitions to be on disk); one deleted without an answer may be
    // either, holding no phantoms.
    for t in tmp {
        match tmp_present.get(&t.name) {
            None if !t.delete_sent && (t.declared || !t.confirmed.is_empty()) => {
                return Err(format!(
                    "queue {} lost (declare-ok came, or its messages were confirmed, and it was never deleted)",
                    t.name
                ))
            }
            None => {}
            Some(_) if t.delete_ok => {
                return Err(format!(
                    "queue {} came back although delete-ok had come",
                    t.name
                ))
            }
            Some(ids) if !t.delete_sent => {
                for id in &t.confirmed {
                    if !ids.contains(id) {
                        return Err(format!("confirmed message {id} missing from {}", t.name));
                    }
                }
            }
            Some(_) => {}
        }
    }
    let recovered: usize = present.values().map(Vec::len).sum();
    g.stats.recovered += recovered;
    // The slate for the next round: what was drained becomes durably acked once the
    // checkpoint below returns.
    let drained: Vec<(String, String)> = present
        .iter()
        .flat_map(|(q, ids)| ids.iter().map(move |id| (q.clone(), id.clone())))
        .collect();
    g.confirmed.clear();
    g.txs.clear();
    g.client_acked.clear();
    g.tmp.clear();
    Ok(drained)
}

// ---------------------------------------------------------------------------------------
// The workload of one round.

struct Round {
    round: u64,
    seed: u64,
}

/// Confirmed publishes: to cq0 alone, to cq0 and cq1 through the fanout, or delayed to dq.
async fn confirm_publisher(ch: Channel, l: Shared, disk: SimDisk, r: Round) {
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let mut rng = SimRng::new(r.seed ^ 0xC0FF);
    let mut n = 0u64;
    while !disk.is_dead() {
        let mut batch = Vec::new();
        for _ in 0..1 + rng.below(8) {
            n += 1;
            let id = format!("c.{}.{n}", r.round);
            let len = rng.below(2500) as usize;
            let (exchange, key, props, queues): (&str, &str, _, Vec<&'static str>) =
                match rng.below(5) {
                    0 | 1 => ("", "cq0", persistent(), vec!["cq0"]),
                    2 | 3 => (FAN, "", persistent(), vec!["cq0", "cq1"]),
                    _ => (DELAY, "d", delayed(50 + rng.below(250) as i64), vec!["dq"]),
                };
            ledger(&l).sent.insert(id.clone());
            let published = ch
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &make_body(&id, len),
                    props,
                )
                .await;
            match published {
                Ok(c) => batch.push((id, queues, c)),
                Err(e) => return note_error(&l, &disk, format!("publish: {e}")),
            }
        }
        for (id, queues, c) in batch {
            match c.await {
                Ok(Confirmation::Ack(_)) => {
                    let mut g = ledger(&l);
                    g.stats.confirmed += 1;
                    g.confirmed.push((id, queues));
                }
                Ok(_) => ledger(&l).nacked += 1,
                Err(e) => return note_error(&l, &disk, format!("confirm: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
    }
}

/// Transactions of one to four messages, each to tq0, tq1 or both.
async fn tx_publisher(ch: Channel, l: Shared, disk: SimDisk, r: Round) {
    if ch.tx_select().await.is_err() {
        return;
    }
    let mut rng = SimRng::new(r.seed ^ 0x7777);
    let mut t = 0u64;
    while !disk.is_dead() {
        t += 1;
        let mut msgs = Vec::new();
        for i in 0..1 + rng.below(4) {
            let id = format!("t.{}.{t}.{i}", r.round);
            let queue = if rng.below(2) == 0 { "tq0" } else { "tq1" };
            msgs.push((id, queue));
        }
        let slot = {
            let mut g = ledger(&l);
            for (id, _) in &msgs {
                g.sent.insert(id.clone());
            }
            g.txs.push((msgs.clone(), TxState::Open));
            g.txs.len() - 1
        };
        for (id, queue) in &msgs {
            let len = rng.below(1500) as usize;
            if let Err(e) = ch
                .basic_publish(
                    "".into(),
                    (*queue).into(),
                    BasicPublishOptions::default(),
                    &make_body(id, len),
                    persistent(),
                )
                .await
            {
                return note_error(&l, &disk, format!("tx publish: {e}"));
            }
        }
        ledger(&l).txs[slot].1 = TxState::CommitSent;
        match ch.tx_commit().await {
            Ok(()) => {
                let mut g = ledger(&l);
                g.txs[slot].1 = TxState::Committed;
                g.stats.committed_txs += 1;
            }
            Err(e) => return note_error(&l, &disk, format!("tx.commit: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
    }
}

/// Consumes cq0, tq0 and dq with manual acks; every so often makes its acks durable with a
/// checkpoint, after which those messages must never come back.
async fn consumer(ch: Channel, l: Shared, disk: SimDisk, b: Arc<warren_broker::Broker>) {
    if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
        return;
    }
    let mut streams = Vec::new();
    for q in CONSUMED {
        match ch
            .basic_consume(
                q.into(),
                q.into(),
                BasicConsumeOptions::default(),
                no_args(),
            )
            .await
        {
            Ok(c) => streams.push(c.map(move |d| (q, d))),
            Err(e) => return note_error(&l, &disk, format!("consume {q}: {e}")),
        }
    }
    let mut all = futures_util::stream::select_all(streams);
    let mut since_checkpoint = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(20), all.next()).await;
        if disk.is_dead() {
            return;
        }
        let Ok(Some((q, Ok(d)))) = next else {
            if matches!(next, Ok(None) | Ok(Some((_, Err(_))))) {
                return note_error(&l, &disk, "consumer stream ended".into());
            }
            continue;
        };
        let id = match body_id(&d.data) {
            Ok(id) => id,
            Err(e) => {
                ledger(&l).errors.push(format!("{q}: delivered {e}"));
                return;
            }
        };
        {
            let mut g = ledger(&l);
            if g.frozen {
                return;
            }
            g.client_acked.insert((q.to_string(), id.clone()));
        }
        if d.acker.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
        since_checkpoint.push((q.to_string(), id));
        if since_checkpoint.len() >= 40 {
            // A round trip on the channel: the acks before it are processed.
            if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
                return;
            }
            let broker = b.clone();
            if tokio::task::spawn_blocking(move || broker.flush_all())
                .await
                .is_err()
            {
                return;
            }
            if disk.is_dead() {
                return;
            }
            ledger(&l)
                .durable_acked
                .extend(std::mem::take(&mut since_checkpoint));
        }
    }
}

/// Declares a durable queue, publishes a few confirmed messages to it, and deletes it.
async fn queue_churn(ch: Channel, l: Shared, disk: SimDisk, r: Round) {
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return;
    }
    let mut rng = SimRng::new(r.seed ^ 0x5151);
    let mut k = 0;
    while !disk.is_dead() {
        k += 1;
        let name = format!("tmp.{}.{k}", r.round);
        let slot = {
            let mut g = ledger(&l);
            g.tmp.push(TmpQueue {
                name: name.clone(),
                ..Default::default()
            });
            g.tmp.len() - 1
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        if let Err(e) = ch
            .queue_declare(name.as_str().into(), durable, no_args())
            .await
        {
            return note_error(&l, &disk, format!("declare {name}: {e}"));
        }
        ledger(&l).tmp[slot].declared = true;
        for i in 0..1 + rng.below(6) {
            let id = format!("q.{}.{k}.{i}", r.round);
            ledger(&l).sent.insert(id.clone());
            let c = match ch
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    &make_body(&id, rng.below(3000) as usize),
                    persistent(),
                )
                .await
            {
                Ok(c) => c,
                Err(e) => return note_error(&l, &disk, format!("publish to {name}: {e}")),
            };
            match c.await {
                Ok(Confirmation::Ack(_)) => ledger(&l).tmp[slot].confirmed.push(id),
                Ok(_) => {}
                Err(e) => return note_error(&l, &disk, format!("confirm from {name}: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
        ledger(&l).tmp[slot].delete_sent = true;
        match ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            Ok(_) => ledger(&l).tmp[slot].delete_ok = true,
            Err(e) => return note_error(&l, &disk, format!("delete {name}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.below(50))).await;
    }
}

/// An error a client met: expected after the cut, a failure before it.
fn note_error(l: &Shared, disk: &SimDisk, what: String) {
    if !disk.is_dead() {
        ledger(l).errors.push(what);
    }
}

/// Runs the workload until the plug is pulled: at the `cut_at`th disk operation, or after
/// `cut_after` at the latest.
async fn run_round(
    b: &TestBroker,
    disk: &SimDisk,
    l: &Shared,
    round: u64,
    seed: u64,
) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let cut_at = 1 + rng.below(600);
    let cut_after = Duration::from_millis(30 + rng.below(400));
    ledger(l).frozen = false;
    let frozen = l.clone();
    disk.on_cut(move || ledger(&frozen).frozen = true);
    disk.arm(cut_at, |_| true);

    let mut tasks = Vec::new();
    let r = |k: u64| Round {
        round,
        seed: seed.wrapping_add(k),
    };
    let conns = [
        connect(b).await,
        connect(b).await,
        connect(b).await,
        connect(b).await,
    ];
    let [c1, c2, c3, c4] = [
        channel(&conns[0]).await,
        channel(&conns[1]).await,
        channel(&conns[2]).await,
        channel(&conns[3]).await,
    ];
    tasks.push(tokio::spawn(confirm_publisher(
        c1,
        l.clone(),
        disk.clone(),
        r(1),
    )));
    tasks.push(tokio::spawn(tx_publisher(
        c2,
        l.clone(),
        disk.clone(),
        r(2),
    )));
    tasks.push(tokio::spawn(consumer(
        c3,
        l.clone(),
        disk.clone(),
        b.broker.clone(),
    )));
    if rng.below(2) == 0 {
        tasks.push(tokio::spawn(queue_churn(c4, l.clone(), disk.clone(), r(4))));
    }
    let started = Instant::now();
    while !disk.is_dead() && started.elapsed() < cut_after {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    disk.pull_plug();
    // The clients stop on their own: confirms after the cut are nacks (the disk refuses
    // every fsync), commits fail. A client stuck for long means the broker stalled.
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(20), t).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("a client task panicked: {e}")),
            Err(_) => return Err("a client was stuck for 20 s after the cut".into()),
        }
    }
    for c in conns {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close(200, "cut".into())).await;
    }
    let errors = std::mem::take(&mut ledger(l).errors);
    if !errors.is_empty() {
        return Err(format!("clients failed before the cut: {errors:?}"));
    }
    Ok(())
}

/// `rounds` rounds of: restart on what survived, check, run the workload, cut.
async fn power_loss(name: &str, rounds: u64) {
    logs::capture();
    let base: u64 = std::env::var("WARREN_POWER_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{name}: {rounds} rounds, WARREN_POWER_LOSS_SEED={base}");
    let dir = data_dir(name);
    let mut disk = SimDisk::new(&dir);
    let l: Shared = Arc::default();
    let started = Instant::now();
    let mut last_report = LossReport::default();
    for round in 0..rounds {
        let seed = base.wrapping_add(round.wrapping_mul(0x9E37_79B9));
        let fail = |what: String, report: &LossReport| -> ! {
            panic!(
                "{name}: round {round} failed (WARREN_POWER_LOSS_SEED={base}, round seed {seed}): {what}\nlast power loss: {report:?}"
            )
        };
        let b = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            start(&disk, &dir, 16 * 1024)
        })) {
            Ok(b) => b,
            Err(e) => fail(
                format!(
                    "the broker did not start on the disk the power cut left: {:?}",
                    e.downcast_ref::<String>()
                ),
                &last_report,
            ),
        };
        if round == 0 {
            let (conn, ch) = open(&b).await;
            declare_topology(&ch).await;
            let _ = conn.close(200, "declared".into()).await;
            // The declarations are saved before the first confirm of the round is sent, by
            // the group commit; make sure of it so round 0's checks hold.
            assert!(checkpoint(&b, &disk).await);
        } else if let Err(e) = recover_and_check(&b, &disk, &l, &dir).await {
            fail(e, &last_report);
        }
        if let Err(e) = run_round(&b, &disk, &l, round, seed).await {
            fail(e, &last_report);
        }
        drop(b);
        let (next, report) = disk.after_power_loss(seed);
        {
            let mut g = ledger(&l);
            g.stats.files_cut += report.files_cut.len();
            g.stats.dirs_rolled_back += report.dirs_rolled_back.len();
        }
        last_report = report;
        disk = next;
    }
    // The last cut is checked too.
    let b = start(&disk, &dir, 16 * 1024);
    if let Err(e) = recover_and_check(&b, &disk, &l, &dir).await {
        panic!("{name}: final recovery failed (WARREN_POWER_LOSS_SEED={base}): {e}\nlast power loss: {last_report:?}");
    }
    drop(b);
    let g = ledger(&l);
    eprintln!(
        "{name}: {rounds} rounds in {:.1?}: {:?}, nacked {}",
        started.elapsed(),
        g.stats,
        g.nacked
    );
    assert!(
        g.stats.confirmed > rounds as usize,
        "too few confirms to prove anything"
    );
    assert!(g.stats.committed_txs > 0, "no transaction committed");
    assert!(
        g.stats.files_cut > 0 && g.stats.dirs_rolled_back > 0,
        "the cuts never lost anything"
    );
    assert!(
        !dir.exists(),
        "something wrote to the real disk at {} instead of through the store's backend",
        dir.display()
    );
}

fn rounds() -> u64 {
    std::env::var("WARREN_POWER_LOSS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_rounds() {
    power_loss("rounds", rounds()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "1,000 rounds, by hand: cargo test -p warren-tests --test power_loss -- --ignored"]
async fn power_loss_1000_rounds() {
    power_loss("rounds-1000", 1000).await;
}

// ---------------------------------------------------------------------------------------
// Cuts at every step of one operation: the disk is armed to die at the `k`th disk operation
// the operation makes, for k = 1, 2, ... until the operation completes without reaching it.
// Each cut is recovered with several seeds (different torn tails and lost directory changes).

const CUT_SEEDS: u64 = 4;

/// Publishes `n` persistent messages to `queue` with confirms, one at a time; returns the ids
/// that were confirmed (stops at the first that is not).
async fn publish_each(
    ch: &Channel,
    queue: &str,
    prefix: &str,
    n: usize,
    len: usize,
) -> Vec<String> {
    let mut ok = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}.{i}");
        let Ok(c) = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &make_body(&id, len),
                persistent(),
            )
            .await
        else {
            break;
        };
        match c.await {
            Ok(Confirmation::Ack(_)) => ok.push(id),
            _ => break,
        }
    }
    ok
}

async fn confirm_channel(b: &TestBroker) -> (lapin::Connection, Channel) {
    let (conn, ch) = open(b).await;
    confirm_select(&ch).await;
    (conn, ch)
}

/// The ids in `queue` after a restart on `disk`, in order (None if the queue is gone).
async fn ids_after_restart(
    disk: &SimDisk,
    dir: &Path,
    queue: &str,
    seg: u32,
) -> Option<Vec<String>> {
    let b = start(disk, dir, seg);
    let defs = b.broker.definitions(true);
    let ids = if defs.queues.iter().any(|q| q.name == queue) {
        let (conn, ch) = open(&b).await;
        let ids = take_all(&ch, queue).await.unwrap_or_else(|e| panic!("{e}"));
        let _ = conn.close(200, "read".into()).await;
        Some(ids)
    } else {
        None
    };
    // A clean stop: the gets' acks are durable, so the next start does not bring them back.
    b.stop();
    ids
}

/// Cut in the middle of a definitions save: the definitions that come back are the old ones
/// or the new ones, never a binding without its queue, and the new ones once declare-ok,
/// bind-ok or a confirm came (each waits for the save).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_definitions_save() {
    logs::capture();
    let dir = data_dir("defs-save");
    let mut cut_points = 0;
    for k in 1.. {
        let disk = SimDisk::new(&dir);
        let b = start(&disk, &dir, 1 << 20);
        let (conn, ch) = confirm_channel(&b).await;
        declare_durable(&ch, "base").await;
        assert_eq!(publish_each(&ch, "base", "base", 1, 10).await.len(), 1);
        // Every operation of a save: the temporary file, the rename, the directory fsync.
        let d = dir.clone();
        disk.arm(k, move |p| {
            p == d
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("definitions"))
        });
        // declare-ok and bind-ok wait for the save (a failed one closes the connection).
        let declared = ch
            .queue_declare(
                "new".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let bound_ok = declared
            && ch
                .queue_bind(
                    "new".into(),
                    "amq.fanout".into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .is_ok();
        assert!(bound_ok || disk.is_dead(), "k={k}: refused without a cut");
        let confirmed = bound_ok && publish_each(&ch, "base", "after", 1, 10).await.len() == 1;
        let _ = conn.close(200, "cut".into()).await;
        drop(b);
        let cut = disk.is_dead();
        for seed in 0..CUT_SEEDS {
            let (after, _) = disk.after_power_loss(seed);
            let b = start(&after, &dir, 1 << 20);
            let defs = b.broker.definitions(true);
            let new = defs.queues.iter().any(|q| q.name == "new");
            let bound = defs
                .bindings
                .iter()
                .any(|x| x.destination == "new" && x.source == "amq.fanout");
            assert!(
                defs.queues.iter().any(|q| q.name == "base"),
                "k={k} seed={seed}: the old definitions are gone"
            );
            // Old (base), after the declaration (base, new) or after the binding: a save
            // is the whole document of one moment, so never a binding without its queue.
            assert!(
                new || !bound,
                "k={k} seed={seed}: a save came back half applied"
            );
            assert!(
                new || !declared,
                "k={k} seed={seed}: declare-ok came, yet the queue is lost"
            );
            assert!(
                bound || !bound_ok,
                "k={k} seed={seed}: bind-ok came, yet the binding is lost"
            );
            if confirmed {
                assert!(
                    new,
                    "k={k} seed={seed}: confirmed after the save, yet it is lost"
                );
            }
            drop(b);
        }
        if !cut {
            assert!(confirmed);
            break;
        }
        cut_points += 1;
    }
    // The journal's write and fsync for the declaration and for the binding.
    assert!(cut_points >= 4, "only {cut_points} cut points in the saves");
    assert!(!dir.exists());
}

/// Cut in the middle of a segment roll-over (4 KiB segments, 1 KiB messages): every
/// confirmed message comes back, in order, and the log goes on after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_segment_roll_over() {
    logs::capture();
    let dir = data_dir("roll-over");
    const SEG: u32 = 4096;
    let mut cut_points = 0;
    for k in 1.. {
        let disk = SimDisk::new(&dir);
        let b = start(&disk, &dir, SEG);
        let (conn, ch) = confirm_channel(&b).await;
        declare_durable(&ch, "roll").await;
        let mut confirmed = publish_each(&ch, "roll", "before", 2, 1000).await;
        assert_eq!(confirmed.len(), 2);
        let qdir = b
            .broker
            .persistence()
            .expect("persistence")
            .queue_dir("/", "roll");
        disk.arm(k, move |p| p.starts_with(&qdir));
        // Three 1 KiB records fill a 4 KiB segment: these roll over to segment 2 (and 3).
        confirmed.extend(publish_each(&ch, "roll", "during", 6, 1000).await);
        let _ = conn.close(200, "cut".into()).await;
        drop(b);
        let cut = disk.is_dead();
        for seed in 0..CUT_SEEDS {
            let (after, _) = disk.after_power_loss(seed);
            let ids = ids_after_restart(&after, &dir, "roll", SEG)
                .await
                .unwrap_or_else(|| panic!("k={k} seed={seed}: queue lost"));
            // In publish order, confirmed ones first; the unconfirmed one at most after them.
            assert!(
                ids.len() >= confirmed.len() && ids[..confirmed.len()] == confirmed[..],
                "k={k} seed={seed}: confirmed {confirmed:?}, found {ids:?}"
            );
            assert!(
                ids.len() <= confirmed.len() + 1,
                "k={k} seed={seed}: {ids:?}"
            );
            // The log takes new messages after the cut, and keeps them.
            let b = start(&after, &dir, SEG);
            let (conn, ch) = confirm_channel(&b).await;
            assert_eq!(publish_each(&ch, "roll", "later", 4, 1000).await.len(), 4);
            let _ = conn.close(200, "done".into()).await;
            b.stop();
            let ids = ids_after_restart(&after, &dir, "roll", SEG)
                .await
                .expect("queue");
            assert_eq!(ids.len(), 4, "k={k} seed={seed}: after the restart {ids:?}");
        }
        if !cut {
            assert_eq!(confirmed.len(), 8);
            break;
        }
        cut_points += 1;
    }
    assert!(cut_points >= 10, "only {cut_points} cut points");
    assert!(!dir.exists());
}

/// Cut in the middle of a queue deletion (its messages over several segments): the queue
/// either is gone or comes back with a subset of its messages in order; once delete-ok came
/// (it waits for the definitions to be on disk, as RabbitMQ's for its metadata store) it
/// stays gone; the other queue keeps all of its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_queue_deletion() {
    logs::capture();
    let dir = data_dir("deletion");
    const SEG: u32 = 4096;
    let mut cut_points = 0;
    let mut came_back = 0;
    for k in 1.. {
        let disk = SimDisk::new(&dir);
        let b = start(&disk, &dir, SEG);
        let (conn, ch) = confirm_channel(&b).await;
        declare_durable(&ch, "doomed").await;
        declare_durable(&ch, "keeper").await;
        let doomed = publish_each(&ch, "doomed", "doomed", 10, 1000).await;
        let kept = publish_each(&ch, "keeper", "keeper", 3, 100).await;
        assert_eq!((doomed.len(), kept.len()), (10, 3));
        let p = b.broker.persistence().expect("persistence");
        let (qdir, d) = (p.queue_dir("/", "doomed"), dir.clone());
        disk.arm(k, move |p| {
            p.starts_with(&qdir)
                || p == d
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("definitions"))
        });
        let deleted = ch
            .queue_delete("doomed".into(), QueueDeleteOptions::default())
            .await
            .is_ok();
        let saved = deleted && publish_each(&ch, "keeper", "after", 1, 100).await.len() == 1;
        let _ = conn.close(200, "cut".into()).await;
        drop(b);
        let cut = disk.is_dead();
        for seed in 0..CUT_SEEDS {
            let (after, _) = disk.after_power_loss(seed);
            let keeper = ids_after_restart(&after, &dir, "keeper", SEG).await;
            let keeper = keeper.unwrap_or_else(|| panic!("k={k} seed={seed}: keeper lost"));
            assert!(keeper.starts_with(&kept), "k={k} seed={seed}: {keeper:?}");
            let (after, _) = disk.after_power_loss(seed);
            match ids_after_restart(&after, &dir, "doomed", SEG).await {
                None => {}
                Some(ids) => {
                    assert!(
                        !deleted,
                        "k={k} seed={seed}: delete-ok came, yet the queue came back"
                    );
                    came_back += 1;
                    let mut rest = doomed.iter();
                    for id in &ids {
                        assert!(
                            rest.any(|d| d == id),
                            "k={k} seed={seed}: {ids:?} is not an ordered subset of {doomed:?}"
                        );
                    }
                }
            }
        }
        if !cut {
            assert!(saved);
            break;
        }
        cut_points += 1;
    }
    eprintln!(
        "queue deletion: {cut_points} cut points, the queue came back in {came_back} recoveries"
    );
    assert!(cut_points >= 5, "only {cut_points} cut points");
    assert!(!dir.exists());
}

/// A delayed message released into its queue is not released a second time after the
/// broker's last group commit (`flush_all`, what a clean stop ends with) and a power cut:
/// that commit also drops the delayed store's record of it. Before, only the timer's next
/// tick did (up to 50 ms later), so a stop or a cut in between released it again at the next
/// start; `power_loss_rounds` found it as an acked message coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_delayed_message_is_not_released_again_after_the_last_commit() {
    let dir = data_dir("delayed-stop");
    let mut disk = SimDisk::new(&dir);
    for round in 0..5 {
        let b = start(&disk, &dir, 1 << 20);
        let (conn, ch) = confirm_channel(&b).await;
        if round == 0 {
            declare_topology(&ch).await;
        }
        let id = format!("once.{round}");
        let c = publish_for_confirm(&ch, DELAY, "d", &make_body(&id, 10), delayed(1)).await;
        assert!(within("confirm", c).await.expect("confirm").is_ack());
        // As soon as it is in its queue (before the timer's next tick): the last commit,
        // then the cut.
        eventually("released", || queue_counts(&b, "dq") == Some((1, 0))).await;
        let broker = b.broker.clone();
        tokio::task::spawn_blocking(move || broker.flush_all())
            .await
            .expect("flush_all");
        disk.pull_plug();
        let _ = conn.close(200, "cut".into()).await;
        drop(b);
        disk = disk.after_power_loss(round).0;
        let b = start(&disk, &dir, 1 << 20);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (conn, ch) = open(&b).await;
        let ids = take_all(&ch, "dq").await.expect("dq");
        assert_eq!(ids, vec![id], "round {round}");
        let _ = conn.close(200, "checked".into()).await;
        b.stop();
    }
}
