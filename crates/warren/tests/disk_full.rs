//! A disk that fills up, on the real `warren` binary: its data directory is on a small tmpfs
//! the test mounts (we run as root; without the right to mount, the tests say so and skip),
//! and a ballast file the test writes and removes decides how much room is left.
//!
//! - `disk_alarm_blocks_publishers_before_the_disk_is_full`: `disk_free_limit.absolute` leaves
//!   room. A publisher with confirms keeps publishing 256 KiB persistent messages; the disk
//!   alarm blocks it (connection.blocked) before any write fails (no nack), a consumer on
//!   another connection keeps draining throughout, removing the ballast clears the alarm
//!   (connection.unblocked) and publishing resumes; after `kill -9` and a restart every
//!   confirmed message is there, intact.
//! - `a_full_disk_nacks_and_recovers`: the limit is too low for the alarm to help, so writes
//!   fail with ENOSPC. Every failed publish is nacked (never acked), the consumer keeps
//!   draining, the broker keeps serving, publishing works again once space is freed, and after
//!   `kill -9` and a restart every confirmed message is there, intact, nothing twice.
//!
//! The tmpfs is unmounted by a guard on every path, after the broker is killed.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_tests::*;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");
const MSG: usize = 256 * 1024;

/// A tmpfs mounted for the test; unmounted (and its mount point removed) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Result<Tmpfs, String> {
        let path =
            std::env::temp_dir().join(format!("warren-diskfull-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&path);
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path })
    }

    /// Bytes free for unprivileged users, as the broker's monitor sees them.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// A file that takes all but `leave` bytes of the free space.
    fn ballast(&self, leave: u64) -> PathBuf {
        let path = self.path.join("ballast");
        let size = self.free().saturating_sub(leave);
        std::fs::write(&path, vec![0u8; size as usize]).expect("write ballast");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a broker that would not die): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The tmpfs, or None after saying why the test cannot run here.
fn tmpfs_or_skip(name: &str, size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(name, size) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!(
                "SKIPPED {name}: cannot mount a tmpfs for the data directory ({e}); run as root"
            );
            None
        }
    }
}

fn start(fs: &Tmpfs, disk_free_limit: u64) -> BrokerProcess {
    let conf = fs.path.join("warren.conf");
    std::fs::write(
        &conf,
        format!("disk_free_limit.absolute = {disk_free_limit}\n"),
    )
    .expect("write config");
    BrokerProcess::start(
        WARREN,
        &fs.path.join("data"),
        &["--config", conf.to_str().expect("utf-8 path")],
    )
}

async fn connect_to(b: &BrokerProcess) -> Connection {
    within(
        "connect",
        Connection::connect(&b.url(), ConnectionProperties::default()),
    )
    .await
    .expect("connect")
}

fn body(id: usize) -> Vec<u8> {
    let mut b = format!("{id:08}|").into_bytes();
    b.resize(MSG, (id % 251) as u8);
    b
}

fn id_of(data: &[u8]) -> usize {
    let id: usize = std::str::from_utf8(&data[..8])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a test body: {:?}", &data[..data.len().min(16)]));
    assert_eq!(data, &body(id)[..], "body of message {id} is corrupt");
    id
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// What the publisher saw.
#[derive(Default)]
struct Outcome {
    acked: Vec<usize>,
    nacked: Vec<usize>,
}

/// Publishes message after message to `fill` with confirms (at most `window` unconfirmed, at
/// most `rate` a second) until `stop`, recording every confirm.
async fn publisher(ch: Channel, out: Arc<Mutex<Outcome>>, stop: Arc<AtomicBool>, rate: u64) {
    let mut next = 0usize;
    let mut pending = std::collections::VecDeque::new();
    let gap = Duration::from_millis(1000 / rate);
    while !stop.load(Ordering::Acquire) {
        if pending.len() < 4 {
            let id = next;
            next += 1;
            match ch
                .basic_publish(
                    "".into(),
                    "fill".into(),
                    BasicPublishOptions::default(),
                    &body(id),
                    persistent(),
                )
                .await
            {
                Ok(c) => pending.push_back((id, c)),
                Err(e) => panic!("publish {id}: {e}"),
            }
            tokio::time::sleep(gap).await;
            continue;
        }
        let (id, c) = pending.pop_front().expect("pending");
        // While blocked, the confirm waits; keep checking `stop`.
        let mut c = Box::pin(c);
        let confirmation = loop {
            tokio::select! {
                r = &mut c => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if stop.load(Ordering::Acquire) { break None; }
                }
            }
        };
        match confirmation {
            Some(Ok(Confirmation::Ack(_))) => out.lock().unwrap().acked.push(id),
            Some(Ok(_)) => out.lock().unwrap().nacked.push(id),
            Some(Err(e)) => panic!("confirm of {id}: {e}"),
            None => return,
        }
    }
}

/// Consumes `work` (prefetch 1, acking each), counting deliveries, until `stop`.
async fn consumer(ch: Channel, delivered: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
    qos(&ch, 1, false).await;
    let mut c = consume(&ch, "work", "drain").await;
    while !stop.load(Ordering::Acquire) {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), c.next()).await {
            let d = d.expect("delivery");
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            delivered.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Fills `work` with `n` small persistent messages for the consumer.
async fn fill_work(ch: &Channel, n: usize) {
    confirm_select(ch).await;
    for i in 0..n {
        let c = publish_for_confirm(ch, "", "work", format!("w{i}").as_bytes(), persistent()).await;
        assert!(within("confirm", c).await.expect("confirm").is_ack());
    }
}

/// Waits until the deliveries counter moves: the consumer is draining.
async fn draining(what: &str, delivered: &AtomicUsize) {
    let before = delivered.load(Ordering::Acquire);
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Acquire) == before {
        assert!(
            Instant::now() < deadline,
            "the consumer stopped draining {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_event(events: &mut Events, what: &str, want: impl Fn(&Event) -> bool) {
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        while let Some(e) = events.next().await {
            if want(&e) {
                return;
            }
        }
        panic!("event stream ended waiting for {what}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {deadline:?}"));
}

/// After a restart: `fill` holds every acked id, intact, each once (nacked ones may be there
/// too: a nack promises nothing either way).
async fn check_after_restart(b: &BrokerProcess, out: &Outcome) {
    let conn = connect_to(b).await;
    let ch = channel(&conn).await;
    let mut found = HashSet::new();
    while let Some(m) = get(&ch, "fill", true).await {
        let id = id_of(&m.delivery.data);
        assert!(found.insert(id), "message {id} is in the queue twice");
    }
    for id in &out.acked {
        assert!(found.contains(id), "confirmed message {id} lost");
    }
    let _ = conn.close(200, "checked".into()).await;
    eprintln!(
        "after the restart: {} messages, {} confirmed, {} nacked",
        found.len(),
        out.acked.len(),
        out.nacked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_blocks_publishers_before_the_disk_is_full() {
    let Some(fs) = tmpfs_or_skip("alarm", "64m") else {
        return;
    };
    const LIMIT: u64 = 12_000_000;
    let ballast = fs.ballast(LIMIT + 16_000_000);
    let mut b = start(&fs, LIMIT);
    let setup = connect_to(&b).await;
    let ch = channel(&setup).await;
    declare_durable(&ch, "fill").await;
    declare_durable(&ch, "work").await;
    fill_work(&ch, 2000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let cconn = connect_to(&b).await;
    let drain = tokio::spawn(consumer(
        channel(&cconn).await,
        delivered.clone(),
        stop.clone(),
    ));
    let pconn = connect_to(&b).await;
    let mut events = events(&pconn);
    let pch = channel(&pconn).await;
    confirm_select(&pch).await;
    let out = Arc::new(Mutex::new(Outcome::default()));
    // 40 × 256 KiB a second: about 2.5 MB between two samples of the monitor (250 ms),
    // well inside the 12 MB the limit leaves.
    let publish = tokio::spawn(publisher(pch, out.clone(), stop.clone(), 40));

    wait_event(&mut events, "connection.blocked", |e| {
        matches!(e, Event::ConnectionBlocked(_))
    })
    .await;
    let free = fs.free();
    assert!(free > 0, "the disk filled up before the alarm");
    // Blocked: no more confirms beyond those under way, and none is a nack.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_blocked = out.lock().unwrap().acked.len();
    draining("while the alarm is on", &delivered).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let o = out.lock().unwrap();
        assert!(
            o.nacked.is_empty(),
            "writes failed although the alarm had room: {:?}",
            o.nacked
        );
        assert_eq!(
            o.acked.len(),
            acked_blocked,
            "confirms went on while blocked"
        );
    }
    eprintln!("blocked with {free} bytes free after {acked_blocked} confirms");

    // Space freed: the alarm clears and publishing resumes.
    std::fs::remove_file(&ballast).expect("remove ballast");
    wait_event(&mut events, "connection.unblocked", |e| {
        matches!(e, Event::ConnectionUnblocked)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.lock().unwrap().acked.len() < acked_blocked + 10 {
        assert!(Instant::now() < deadline, "publishing did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    draining("after the alarm", &delivered).await;
    stop.store(true, Ordering::Release);
    publish.await.expect("publisher");
    drain.await.expect("consumer");
    let out = std::mem::take(&mut *out.lock().unwrap());
    assert!(out.nacked.is_empty(), "nacks: {:?}", out.nacked);
    drop((setup, cconn, pconn));

    b.kill9_and_restart(&["--config", fs.path.join("warren.conf").to_str().unwrap()]);
    check_after_restart(&b, &out).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_nacks_and_recovers() {
    let Some(fs) = tmpfs_or_skip("enospc", "48m") else {
        return;
    };
    // Far below what is left: the alarm cannot fire before the disk is full.
    const LIMIT: u64 = 1;
    let ballast = fs.ballast(10_000_000);
    let mut b = start(&fs, LIMIT);
    let setup = connect_to(&b).await;
    let ch = channel(&setup).await;
    declare_durable(&ch, "fill").await;
    declare_durable(&ch, "work").await;
    fill_work(&ch, 2000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let cconn = connect_to(&b).await;
    let drain = tokio::spawn(consumer(
        channel(&cconn).await,
        delivered.clone(),
        stop.clone(),
    ));
    let pconn = connect_to(&b).await;
    let pch = channel(&pconn).await;
    confirm_select(&pch).await;
    let out = Arc::new(Mutex::new(Outcome::default()));
    let publish = tokio::spawn(publisher(pch, out.clone(), stop.clone(), 200));

    // The disk fills: publishes are nacked, and keep being nacked while it is full.
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.lock().unwrap().nacked.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "no nack although the disk is full"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("full: {} bytes free", fs.free());
    draining("while the disk is full", &delivered).await;

    // Space freed: publishes are confirmed again.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let acked = out.lock().unwrap().acked.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.lock().unwrap().acked.len() < acked + 10 {
        assert!(
            Instant::now() < deadline,
            "publishing did not recover after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    draining("after space was freed", &delivered).await;
    stop.store(true, Ordering::Release);
    publish.await.expect("publisher");
    drain.await.expect("consumer");
    let out = std::mem::take(&mut *out.lock().unwrap());
    drop((setup, cconn, pconn));

    b.kill9_and_restart(&["--config", fs.path.join("warren.conf").to_str().unwrap()]);
    check_after_restart(&b, &out).await;
    // Still healthy: a new publish is confirmed.
    let conn = connect_to(&b).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    let c = publish_for_confirm(&ch, "", "fill", &body(999_999), persistent()).await;
    assert!(within("confirm", c).await.expect("confirm").is_ack());
    drop(conn);
    drop(b);
    let _: &Path = &fs.path;
}
