//! Start-up with many durable queues: a restart with as many durable queues as the open-files
//! limit allows (each open queue store holds 2 descriptors; 100,000 need `ulimit -n` above
//! 200,000) takes seconds, and a queue whose store cannot be opened stops the start instead of
//! being dropped. `WARREN_STARTUP_QUEUES` sets the count.

use std::time::{Duration, Instant};
use warren_broker::persist::Persistence;
use warren_broker::{Broker, BrokerConfig};
use warren_tests::{wait_until_released, FileBackend, TempDir};

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// The soft open-files limit of this process.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[test]
fn a_restart_with_many_durable_queues_takes_seconds() {
    let n: usize = std::env::var("WARREN_STARTUP_QUEUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| 100_000.min(open_files_limit() / 4));
    let tmp = TempDir::new("startup");
    let dir = tmp.join("data");
    // The definitions as a broker saves them: n durable queues in the default vhost.
    let queues: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"name": format!("q-{i}"), "vhost": "/", "durable": true}))
        .collect();
    let p = Persistence::new(&dir, FileBackend::shared());
    p.catalog()
        .save(&serde_json::json!({"vhosts": [{"name": "/"}], "queues": queues}))
        .unwrap();
    drop(p);
    // The first start makes each queue's store directory.
    let t = Instant::now();
    let mut broker = warren_tests::BrokerProcess::start(WARREN, &dir, &[]);
    let first = t.elapsed();
    assert_eq!(broker.stop(), Some(0));
    let stores = std::fs::read_dir(dir.join("queues"))
        .unwrap()
        .flatten()
        .map(|v| std::fs::read_dir(v.path()).unwrap().count())
        .sum::<usize>();
    assert_eq!(stores, n, "one store directory per durable queue");
    // An orphan (a queue deleted just before a crash) goes; the rest stay.
    let orphan = dir.join("queues").join("q%2F").join("qgone");
    std::fs::create_dir_all(&orphan).unwrap();
    let t = Instant::now();
    let mut broker = warren_tests::BrokerProcess::start(WARREN, &dir, &[]);
    let restart = t.elapsed();
    assert!(!orphan.exists(), "the orphaned store was not removed");
    eprintln!("{n} durable queues: first start {first:?}, restart {restart:?} (until listening)");
    assert!(
        restart < Duration::from_secs(60),
        "a restart with {n} durable queues took {restart:?}"
    );
    assert_eq!(broker.stop(), Some(0));
    // All of them came back (the definitions the restart saved name every queue).
    let p = Persistence::new(&dir, FileBackend::shared());
    let b = Broker::open(BrokerConfig::default(), p.clone()).unwrap();
    assert_eq!(b.vhost("/").unwrap().queue_count(), n);
    drop(b);
    // Its flusher may still be saving the definitions: wait until it lets go of the data
    // directory, which the TempDir removes next.
    wait_until_released(p);
}

/// More durable queues than the open-files limit lets the broker open: the start fails with
/// an error that says what to do, and nothing is lost: with a higher limit every queue comes
/// back with its messages.
#[test]
fn a_durable_queue_that_cannot_be_opened_stops_the_start_and_loses_nothing() {
    let tmp = TempDir::new("fdlimit");
    let dir = tmp.join("data");
    const N: usize = 300;
    let queues: Vec<serde_json::Value> = (0..N)
        .map(|i| serde_json::json!({"name": format!("q-{i}"), "vhost": "/", "durable": true}))
        .collect();
    let p = Persistence::new(&dir, FileBackend::shared());
    p.catalog()
        .save(&serde_json::json!({"vhosts": [{"name": "/"}], "queues": queues}))
        .unwrap();
    drop(p);
    let run = |limit: u32| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {limit} && exec \"$0\" --listen 127.0.0.1:0 --mgmt-listen 127.0.0.1:0 --data-dir \"$1\" --listeners-file \"$1.listeners\" --log-level warn",
            ))
            .arg(WARREN)
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn warren")
    };
    // 2 descriptors per queue do not fit in 256.
    let mut child = run(256);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren started without the queues it could not open");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("could not be restored"), "{err}");
    assert!(err.contains("ulimit -n"), "{err}");
    // Everything is still there for a start with enough descriptors.
    let p = Persistence::new(&dir, FileBackend::shared());
    let b = Broker::open(BrokerConfig::default(), p.clone()).unwrap();
    assert_eq!(b.vhost("/").unwrap().queue_count(), N);
    drop(b);
    // Its flusher may still be saving the definitions: wait until it lets go of the data
    // directory, which the TempDir removes next.
    wait_until_released(p);
}
