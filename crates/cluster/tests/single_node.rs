//! A replicated queue on one node: commands go through openraft and the node's WAL, the queue
//! engine applies them, deliveries come out for the leader; a restart rebuilds the queue from
//! the WAL, and a command is answered only once its entry has been fsynced.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;
use warren_broker::queue::{Applied, QueueCommand, QueueOptions};
use warren_cluster::{NodeWal, QueueGroup};
use warren_store::{Backend, Faults, FaultyBackend, FileBackend};

const GROUP: u64 = 7;

/// Opens the node's WAL in `dir` again and starts the group from what it held (checked by
/// `check` first), once it has applied it.
async fn restart_alone(
    dir: &std::path::Path,
    check: impl FnOnce(&warren_cluster::GroupState),
) -> QueueGroup {
    let (wal, mut rec) = NodeWal::open(FileBackend::shared(), dir).unwrap();
    let recovered = rec.remove(&GROUP).expect("the group's records");
    check(&recovered);
    let (g, _out) = QueueGroup::start(1, GROUP, wal, recovered, QueueOptions::default())
        .await
        .unwrap();
    g.caught_up(Duration::from_secs(10)).await.unwrap();
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_through_the_log_and_deliveries_come_out() {
    let dir = Dir::new("deliver");
    let (_wal, g, mut out) = start_alone(FileBackend::shared(), &dir.0, GROUP)
        .await
        .expect("group starts");
    for id in 0..20 {
        assert_eq!(g.propose(enqueue(id)).await.unwrap(), Applied::Done);
    }
    assert_eq!(g.state().with_engine(|e| e.len()), 20);
    let add = QueueCommand::AddConsumer {
        owner: 42,
        tag: "c".into(),
        prefetch: 5,
        no_ack: false,
        exclusive: false,
        priority: 0,
        now: 0,
    };
    assert_eq!(g.propose(add).await.unwrap(), Applied::Done);
    let (o, ids) = next_output(&mut out).await;
    assert_eq!(ids, [0, 1, 2, 3, 4], "prefetch 5, in order");
    assert!(o.deliveries.iter().all(|d| d.0 == 42));
    // Acks give credit back: the next five come out.
    let settle = QueueCommand::Settle {
        checkouts: o.deliveries.iter().map(|d| (d.0, d.1)).collect(),
        now: 0,
    };
    assert_eq!(g.propose(settle).await.unwrap(), Applied::Settled(5));
    let (_, ids) = next_output(&mut out).await;
    assert_eq!(ids, [5, 6, 7, 8, 9]);
    let stats = g.state().with_engine(|e| e.stats());
    assert_eq!(
        (
            stats.messages_ready,
            stats.messages_unacknowledged,
            stats.acked
        ),
        (10, 5, 5)
    );
    g.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rebuilds_the_queue_from_its_wal() {
    let dir = Dir::new("restart");
    {
        let (wal, g, _out) = start_alone(FileBackend::shared(), &dir.0, GROUP)
            .await
            .unwrap();
        for id in 0..50 {
            g.propose(enqueue(id)).await.unwrap();
        }
        // Ten taken with an ack and settled, five taken and left unacked.
        for _ in 0..10 {
            let c = take(&g, 9).await;
            settle(&g, 9, c).await;
        }
        for _ in 0..5 {
            g.propose(QueueCommand::Get {
                owner: Some(9),
                now: 0,
            })
            .await
            .unwrap();
        }
        g.shutdown().await.unwrap();
        wal.close();
    }
    let g = restart_alone(&dir.0, |r| assert!(r.vote.is_some(), "the vote survived")).await;
    let s = g.state().with_engine(|e| e.stats());
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (35, 5));
    let held: Vec<u64> = g
        .state()
        .with_engine(|e| e.checked_out(9).map(|c| body_id(&c.qm.msg.body)).collect());
    assert_eq!(held, [10, 11, 12, 13, 14], "the checkouts survived too");
    // And the group goes on taking commands.
    assert_eq!(g.propose(enqueue(99)).await.unwrap(), Applied::Done);
    g.shutdown().await.unwrap();
}

/// Snapshots cut the log even when messages stay (here 100 that are never consumed, and 5
/// never settled): no state without them comes, so after four times the usual amount of log
/// a snapshot with their bodies is saved and the log below it purged; a restart loads the
/// snapshot and applies only what followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_cut_the_log_and_a_restart_starts_from_one() {
    let dir = Dir::new("snapshot");
    {
        let (wal, g, _out) = start_alone(FileBackend::shared(), &dir.0, GROUP)
            .await
            .unwrap();
        // A snapshot after every 40 entries (or 1 KB enqueued, at least the backlog's size).
        g.state().set_snapshot_thresholds(1024, 40);
        for id in 0..300 {
            g.propose(enqueue(id)).await.unwrap();
        }
        // 200 taken and settled, 5 taken and held.
        for i in 0..205 {
            let c = take(&g, 9).await;
            if i < 200 {
                settle(&g, 9, c).await;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while g.log_len() > 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was not purged: {} entries after {} snapshots",
                g.log_len(),
                g.state().snapshots_built()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            g.state().full_snapshots_built() >= 1,
            "a snapshot with bodies every 160 entries or so"
        );
        g.shutdown().await.unwrap();
        wal.close();
    }
    let g = restart_alone(&dir.0, |r| {
        assert!(r.purged.is_some(), "the log was purged below a snapshot");
        assert!(r.entries.len() <= 200, "{} entries left", r.entries.len());
    })
    .await;
    let s = g.state().with_engine(|e| e.stats());
    assert_eq!((s.messages_ready, s.messages_unacknowledged), (95, 5));
    let ready: Vec<u64> = g
        .state()
        .with_engine(|e| e.ready().map(|m| body_id(&m.msg.body)).collect());
    assert_eq!(ready, (205..300).collect::<Vec<u64>>());
    let held: Vec<u64> = g
        .state()
        .with_engine(|e| e.checked_out(9).map(|c| body_id(&c.qm.msg.body)).collect());
    assert_eq!(held, [200, 201, 202, 203, 204]);
    assert_eq!(g.propose(enqueue(999)).await.unwrap(), Applied::Done);
    g.shutdown().await.unwrap();
}

/// A queue that keeps a backlog while it is consumed snapshots without the messages' bodies:
/// the snapshot is a state the log after it settles every message of, so the log keeps each
/// live message's entry (its body) and the snapshot file stays small whatever the backlog.
/// A restart finds every live message whole, from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_leave_the_bodies_in_the_log() {
    const BODY: usize = 4096;
    let dir = Dir::new("dry");
    let big = |id: u64| {
        let mut body = vec![7u8; BODY];
        body[..8].copy_from_slice(&id.to_be_bytes());
        QueueCommand::Enqueue {
            msg: warren_broker::queue::LoggedMessage(Arc::new(
                warren_broker::message::Message::new(
                    "".into(),
                    "q".into(),
                    bytes::Bytes::from_static(&[0x10, 0x00, 2]),
                    body.into(),
                ),
            )),
            now: 0,
            from: None,
        }
    };
    {
        let (wal, g, _out) = start_alone(FileBackend::shared(), &dir.0, GROUP)
            .await
            .unwrap();
        g.state().set_snapshot_thresholds(16 << 10, 40);
        // A backlog of 30 (120 KiB of bodies) that moves: one in, one out, 400 times.
        for id in 0..30 {
            g.propose(big(id)).await.unwrap();
        }
        for id in 30..430 {
            g.propose(big(id)).await.unwrap();
            let c = take(&g, 9).await;
            settle(&g, 9, c).await;
        }
        let built = g.state().snapshots_built();
        assert!(built >= 5, "{built} snapshots");
        assert_eq!(g.state().full_snapshots_built(), 0, "none carried bodies");
        let snap = wal.load_snapshot(GROUP).unwrap().expect("a saved snapshot");
        assert!(
            snap.len() < 30 * BODY / 4,
            "the snapshot ({} bytes) has no bodies in it",
            snap.len()
        );
        g.shutdown().await.unwrap();
        wal.close();
    }
    let g = restart_alone(&dir.0, |r| {
        assert!(r.purged.is_some(), "the log was cut below a snapshot")
    })
    .await;
    let ready: Vec<(u64, usize, bool)> = g.state().with_engine(|e| {
        e.ready()
            .map(|m| {
                (
                    body_id(&m.msg.body),
                    m.msg.body.len(),
                    m.msg.body[BODY - 1] == 7,
                )
            })
            .collect()
    });
    let want: Vec<(u64, usize, bool)> = (400..430).map(|id| (id, BODY, true)).collect();
    assert_eq!(ready, want, "every live message, body and all");
    g.shutdown().await.unwrap();
}

/// The WAL does not grow without end: segments whose entries are all below snapshots go,
/// and an idle group whose few old entries hold a segment back is asked for a snapshot.
/// A restart afterwards finds both groups whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_wal_segments_are_removed_once_their_entries_are_below_snapshots() {
    const SEGMENT: u32 = 8 << 10;
    let dir = Dir::new("wal-gc");
    let (busy, idle) = (GROUP, GROUP + 1);
    {
        let (wal, mut rec) =
            NodeWal::open_with_segment_size(FileBackend::shared(), &dir.0, SEGMENT).unwrap();
        let start = |id: u64, rec: warren_cluster::GroupState| {
            QueueGroup::start(1, id, wal.clone(), rec, QueueOptions::default())
        };
        let (b, _bo) = start(busy, rec.remove(&busy).unwrap_or_default())
            .await
            .unwrap();
        let (i, _io) = start(idle, rec.remove(&idle).unwrap_or_default())
            .await
            .unwrap();
        b.state().set_snapshot_thresholds(2048, 50);
        for id in 0..3 {
            i.propose(enqueue(1000 + id)).await.unwrap();
        }
        // Far more than a segment's worth through the busy group, consumed as it goes.
        for id in 0..1500 {
            b.propose(enqueue(id)).await.unwrap();
            let c = take(&b, 9).await;
            settle(&b, 9, c).await;
        }
        b.propose(enqueue(5000)).await.unwrap();
        let segments = wal.segments();
        assert!(
            segments.len() <= 6 && segments[0] > 10,
            "old segments were not removed: {segments:?}"
        );
        // Their files go too (the WAL's reaper thread deletes them a little later).
        let files = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&dir.0)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("wal."))
                .collect();
            v.sort();
            v
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while files().len() > wal.segments().len() {
            assert!(
                std::time::Instant::now() < deadline,
                "segment files left: {:?} (segments {:?})",
                files(),
                wal.segments()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            i.state().snapshots_built() >= 1,
            "the idle group was asked for a snapshot"
        );
        assert_eq!(
            b.state().full_snapshots_built(),
            0,
            "the busy group, consumed as it goes, never needed bodies in a snapshot"
        );
        b.shutdown().await.unwrap();
        i.shutdown().await.unwrap();
        wal.close();
    }
    let (wal, mut rec) =
        NodeWal::open_with_segment_size(FileBackend::shared(), &dir.0, SEGMENT).unwrap();
    for (id, want) in [(busy, vec![5000]), (idle, vec![1000, 1001, 1002])] {
        let (g, _out) = QueueGroup::start(
            1,
            id,
            wal.clone(),
            rec.remove(&id).expect("the group's records"),
            QueueOptions::default(),
        )
        .await
        .unwrap();
        g.caught_up(Duration::from_secs(10)).await.unwrap();
        let ready: Vec<u64> = g
            .state()
            .with_engine(|e| e.ready().map(|m| body_id(&m.msg.body)).collect());
        assert_eq!(ready, want, "group {id} after the restart");
        g.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_answered_only_after_its_entry_is_fsynced() {
    let dir = Dir::new("fsync");
    let faulty = FaultyBackend::new(FileBackend::shared());
    let faults: Arc<Faults> = faulty.faults();
    let backend: Arc<dyn Backend> = Arc::new(faulty);
    let (_wal, g, _out) = start_alone(backend, &dir.0, GROUP).await.unwrap();
    let g = Arc::new(g);
    faults.hold_sync(true);
    let p = {
        let g = g.clone();
        tokio::spawn(async move { g.propose(enqueue(1)).await })
    };
    // The entry is appended but its fsync is held: no answer, nothing applied.
    for _ in 0..100 {
        if faults.held_syncs() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(faults.held_syncs() > 0, "the WAL is fsyncing the entry");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!p.is_finished(), "answered before the fsync");
    assert_eq!(
        g.state().with_engine(|e| e.len()),
        0,
        "applied before the fsync"
    );
    faults.hold_sync(false);
    let r = tokio::time::timeout(Duration::from_secs(10), p)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap(), Applied::Done);
    assert_eq!(g.state().with_engine(|e| e.len()), 1);
}

/// Groups share the WAL's fsyncs: many groups proposing at once are made durable by far fewer
/// fsyncs than there are proposals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_share_one_fsync() {
    let dir = Dir::new("groupcommit");
    let faulty = FaultyBackend::new(FileBackend::shared());
    let faults: Arc<Faults> = faulty.faults();
    let (wal, _) = NodeWal::open(Arc::new(faulty), &dir.0).unwrap();
    let mut groups = Vec::new();
    for id in 0..8u64 {
        let (g, _out) = QueueGroup::start(
            1,
            id,
            wal.clone(),
            Default::default(),
            QueueOptions::default(),
        )
        .await
        .unwrap();
        groups.push(Arc::new(g));
    }
    let before = faults.sync_count();
    // A slow disk: the first fsync is held while every group appends; the rest wait for the
    // next one. (Without the hold the outcome depends on how fast this machine fsyncs.)
    faults.hold_sync(true);
    let mut tasks = Vec::new();
    for g in &groups {
        for id in 0..50 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move { g.propose(enqueue(id)).await }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    faults.hold_sync(false);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Applied::Done);
    }
    let fsyncs = faults.sync_count() - before;
    for g in &groups {
        assert_eq!(g.state().with_engine(|e| e.len()), 50);
    }
    assert!(
        fsyncs < 400 / 2,
        "{fsyncs} fsyncs for 400 proposals in 8 groups"
    );
    eprintln!("400 proposals in 8 groups: {fsyncs} fsyncs");
}
