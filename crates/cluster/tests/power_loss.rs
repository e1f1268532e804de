//! The node's WAL through power cuts (warren-store's `SimDisk`: what was not fsynced is lost,
//! directory entries included): a replicated queue takes enqueues and settles while the plug
//! is pulled at a random disk operation; the node restarts on what survived. Every enqueue
//! that was answered is there unless a settle of it was answered; nothing settled comes back;
//! nothing appears twice or out of nowhere. `WARREN_WAL_CUT_ROUNDS` sets the number of rounds
//! (30 by default).

mod common;
use common::*;

use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_broker::queue::{Applied, QueueCommand};
use warren_cluster::QueueGroup;
use warren_store::{Backend, SimDisk};

const GROUP: u64 = 11;
const OWNER: u64 = 9;

#[derive(Default)]
struct Ledger {
    proposed: BTreeSet<u64>,
    enqueued: BTreeSet<u64>,
    /// A settle was proposed (answered or not: one cut after its fsync is applied anyway).
    settling: BTreeSet<u64>,
    settled: BTreeSet<u64>,
}

/// The ids the queue holds after a restart (ready, or checked out to the test's owner),
/// failing on a duplicate.
fn present(g: &QueueGroup) -> Vec<u64> {
    g.state().with_engine(|e| {
        e.ready()
            .map(|m| body_id(&m.msg.body))
            .chain(e.checked_out(OWNER).map(|c| body_id(&c.qm.msg.body)))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_entries_survive_power_cuts() {
    let rounds: u64 = std::env::var("WARREN_WAL_CUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("WARREN_WAL_CUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand_seed);
    eprintln!("seed {seed} (WARREN_WAL_CUT_SEED to replay), {rounds} rounds");
    let dir = PathBuf::from(format!("/sim/warren-wal-{}", std::process::id()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut disk = SimDisk::new(&dir);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next_id = 0u64;
    let (mut cut_rounds, mut files_cut, mut snapshots) = (0, 0, 0);
    for round in 0..=rounds {
        // Small segments: roll-overs (with their checkpoints) and removals of old segments
        // happen between cuts too.
        let (wal, g, _out) = match start_alone_with_segments(
            Arc::new(disk.clone()),
            &dir,
            GROUP,
            2048,
        )
        .await
        {
            Ok(started) => started,
            Err(e) => {
                // What the disk held, to tell which record or file was missing.
                let files = disk.list(&dir).unwrap_or_default();
                let snaps = disk.list(&dir.join("snapshots")).unwrap_or_default();
                let (_w, rec) = warren_cluster::NodeWal::open_with_segment_size(
                    Arc::new(disk.clone()),
                    &dir,
                    2048,
                )
                .map(|(w, mut r)| (w, r.remove(&GROUP)))
                .unwrap_or_else(|e| panic!("reopen: {e}"));
                let summary = rec.map(|g| {
                    format!(
                        "purged {:?} committed {:?} entries {:?}..{:?}",
                        g.purged.map(|p| p.index),
                        g.committed.map(|c| c.index),
                        g.entries.keys().next(),
                        g.entries.keys().last()
                    )
                });
                panic!("seed {seed} round {round}: {e}; files {files:?}, snapshots {snaps:?}, group {summary:?}")
            }
        };
        g.caught_up(Duration::from_secs(10)).await.unwrap();
        // Snapshots (and the log purged below them) often, so cuts land in them too.
        g.state().set_snapshot_thresholds(512, 3);
        // The check: what was answered is there, what was settled is not.
        let ids = present(&g);
        let set: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            set.len(),
            ids.len(),
            "seed {seed} round {round}: a message twice: {ids:?}"
        );
        {
            let l = ledger.lock().unwrap();
            let lost: Vec<u64> = l
                .enqueued
                .difference(&l.settling)
                .filter(|id| !set.contains(id))
                .copied()
                .collect();
            assert!(
                lost.is_empty(),
                "seed {seed} round {round}: confirmed messages lost: {lost:?}; present {} ({:?}), enqueued {}, settled {:?}",
                set.len(),
                set.iter().take(8).collect::<Vec<_>>(),
                l.enqueued.len(),
                l.settled
            );
            for id in &set {
                assert!(
                    !l.settled.contains(id),
                    "seed {seed} round {round}: settled message {id} came back"
                );
                assert!(
                    l.proposed.contains(id),
                    "seed {seed} round {round}: message {id} never proposed"
                );
            }
        }
        if round == rounds {
            break;
        }
        // Settle what a previous round left checked out, then work until the plug is pulled.
        let g = Arc::new(g);
        disk.arm(rng.gen_range(1..60), |_| true);
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (g, l) = (g.clone(), ledger.clone());
            let first = next_id;
            next_id += 1000;
            tasks.push(tokio::spawn(async move {
                for id in first..first + 1000 {
                    l.lock().unwrap().proposed.insert(id);
                    match g.propose(enqueue(id)).await {
                        Ok(Applied::Done) => {
                            l.lock().unwrap().enqueued.insert(id);
                        }
                        _ => return,
                    }
                }
            }));
        }
        {
            let (g, l) = (g.clone(), ledger.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let got = g
                        .propose(QueueCommand::Get {
                            owner: Some(OWNER),
                            now: 0,
                        })
                        .await;
                    let c = match got {
                        Ok(Applied::Got {
                            checkout: Some(c), ..
                        }) => c,
                        // Empty for now: the publishers are behind.
                        Ok(_) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        // The cut.
                        Err(_) => return,
                    };
                    let id = g.state().with_engine(|e| {
                        e.checked_out(OWNER)
                            .find(|x| x.id == c)
                            .map(|x| body_id(&x.qm.msg.body))
                    });
                    if let Some(id) = id {
                        l.lock().unwrap().settling.insert(id);
                    }
                    let settle = QueueCommand::Settle {
                        checkouts: vec![(OWNER, c)],
                        now: 0,
                    };
                    match g.propose(settle).await {
                        Ok(Applied::Settled(1)) => {
                            if let Some(id) = id {
                                l.lock().unwrap().settled.insert(id);
                            }
                        }
                        _ => return,
                    }
                }
            }));
        }
        // The cut comes within a few dozen disk operations; the tasks then fail.
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        assert!(
            disk.is_dead(),
            "seed {seed} round {round}: the plug was never pulled"
        );
        cut_rounds += 1;
        snapshots += g.state().snapshots_built();
        let g = Arc::try_unwrap(g).unwrap_or_else(|g| {
            panic!(
                "seed {seed} round {round}: a task still runs 20 s after the cut; the group: {}",
                g.describe()
            )
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), g.shutdown()).await;
        wal.close();
        let (after, report) = disk.after_power_loss(rng.gen());
        files_cut += report.files_cut.len();
        disk = after;
    }
    let l = ledger.lock().unwrap();
    eprintln!(
        "{cut_rounds} cuts, {files_cut} files cut back, {snapshots} snapshots saved; {} enqueues and {} settles confirmed",
        l.enqueued.len(),
        l.settled.len()
    );
    assert!(
        rounds < 10 || snapshots > 0,
        "no snapshot was saved: the cuts never met one"
    );
    let segments = disk
        .list(&dir)
        .map(|f| f.iter().filter(|n| n.starts_with("wal")).count())
        .unwrap_or(0);
    eprintln!("{segments} WAL segments left");
    assert!(l.enqueued.len() > rounds as usize, "the rounds did work");
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
