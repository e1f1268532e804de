//! Publisher confirms against a failing disk, end to end: a real AMQP client (lapin) and an
//! in-process broker whose data directory sits on the store's fault-injecting backend
//! ([`FaultyBackend`]), so fsyncs can be held, fsyncs can fail and writes can fail with EIO or
//! ENOSPC while the client watches its confirms.
//!
//! What is checked:
//! - a persistent message is confirmed only after the group commit's fsync; transient and
//!   unroutable messages need no fsync and are confirmed at once;
//! - a failed fsync or a failed write (EIO, ENOSPC) turns into basic.nack, and the broker
//!   goes on serving;
//! - a publish made while a failing group commit is under way is nacked too, not acked by the
//!   next, empty, group commit;
//! - what a queue holds after the fault, and after a restart.
//!
//! Appends are buffered (64 KiB per store), so a write error shows either at the group
//! commit's flush (a small message) or at the append itself (a message that does not fit
//! behind what is buffered); the tests provoke each on purpose.

use futures_util::FutureExt;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use warren_tests::*;

/// A persisting broker whose disk fails on demand.
struct FaultyBroker {
    broker: Option<TestBroker>,
    faults: Arc<Faults>,
    dir: TempDir,
}

impl FaultyBroker {
    fn start(name: &str) -> Self {
        let dir = TempDir::new(&format!("faults-{name}"));
        let (broker, faults) = Self::open(dir.path());
        FaultyBroker {
            broker: Some(broker),
            faults,
            dir,
        }
    }

    fn open(dir: &Path) -> (TestBroker, Arc<Faults>) {
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        (TestBroker::with_backend(dir, Arc::new(backend)), faults)
    }

    fn broker(&self) -> &TestBroker {
        self.broker.as_ref().expect("broker running")
    }

    /// Every fault off, every held fsync released.
    fn heal(&self) {
        self.faults.hold_sync(false);
        self.faults.set_fail_sync(false);
        self.faults.set_eio(false);
        self.faults.set_enospc(false);
    }

    /// Stops the broker cleanly and starts a new one on the same data directory, on a healthy
    /// disk. Close the clients' connections first.
    fn restart(&mut self) {
        self.heal();
        self.broker.take().expect("broker running").stop();
        let (broker, faults) = Self::open(self.dir.path());
        self.broker = Some(broker);
        self.faults = faults;
    }

    /// Waits until the last group commit succeeded, so that the next publish is not caught
    /// by the tail of a failure.
    async fn settled(&self) {
        let p = self.broker().broker.persistence().expect("persistence");
        let rx = p.subscribe();
        eventually("a group commit that succeeds", || {
            let s = *rx.borrow();
            s.synced_epoch > s.failed_epoch
        })
        .await;
    }
}

impl Drop for FaultyBroker {
    /// Before the broker stops: a held fsync would block its flusher (and a connection
    /// thread blocked in one would block the runtime's shutdown), even when the test failed.
    fn drop(&mut self) {
        self.heal();
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Eio,
    Enospc,
    FailedFsync,
}

fn set_fault(faults: &Faults, fault: Fault, on: bool) {
    match fault {
        Fault::Eio => faults.set_eio(on),
        Fault::Enospc => faults.set_enospc(on),
        Fault::FailedFsync => faults.set_fail_sync(on),
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

/// A new channel in confirm mode.
async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    confirm_select(&ch).await;
    ch
}

/// Publishes to `queue` through the default exchange; the confirm is left to the caller.
async fn send(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) -> PublisherConfirm {
    publish_for_confirm(ch, "", queue, body, props).await
}

async fn confirmation(what: &str, confirm: PublisherConfirm) -> Confirmation {
    within(what, confirm)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[track_caller]
fn assert_ack(c: &Confirmation, what: &str) {
    assert!(matches!(c, Confirmation::Ack(_)), "{what}: got {c:?}");
}

#[track_caller]
fn assert_nack(c: &Confirmation, what: &str) {
    assert!(matches!(c, Confirmation::Nack(_)), "{what}: got {c:?}");
}

/// Publishes and waits for the confirm.
async fn publish_for(
    ch: &Channel,
    queue: &str,
    body: &str,
    props: BasicProperties,
) -> Confirmation {
    let c = send(ch, queue, body.as_bytes(), props).await;
    confirmation(&format!("confirm of {body:?}"), c).await
}

/// Ready messages of a queue, as the broker counts them.
fn ready(h: &FaultyBroker, queue: &str) -> u64 {
    queue_counts(h.broker(), queue).map_or(0, |(r, _)| r)
}

/// Bodies of the next `n` deliveries from `queue`, acked, on a fresh channel; then checks
/// that nothing else is there.
async fn drain(conn: &Connection, queue: &str, n: usize) -> Vec<String> {
    let ch = channel(conn).await;
    let mut consumer = consume(&ch, queue, "drain").await;
    let mut bodies = Vec::new();
    for _ in 0..n {
        let d = next(&mut consumer).await;
        bodies.push(body(&d));
        ack(&d).await;
    }
    assert_no_delivery(&mut consumer).await;
    let _ = ch.close(200, "drained".into()).await;
    bodies
}

/// Bodies of the next `n` deliveries from `queue`, left unacked; closing the channel puts
/// them back.
async fn peek(conn: &Connection, queue: &str, n: usize) -> Vec<String> {
    let ch = channel(conn).await;
    let mut consumer = consume(&ch, queue, "peek").await;
    let bodies = next_bodies(&mut consumer, n).await;
    assert_no_delivery(&mut consumer).await;
    within("close peek channel", ch.close(200, "peeked".into()))
        .await
        .expect("close peek channel");
    bodies
}

async fn close(conn: Connection) {
    let _ = within("connection close", conn.close(200, "bye".into())).await;
}

/// The broker goes on serving: a new connection declares a transient queue, publishes with
/// confirms and consumes.
async fn still_serving(h: &FaultyBroker, queue: &str) {
    let conn = connect(h.broker()).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, queue).await;
    for i in 0..3 {
        let c = publish_for(&ch, queue, &format!("{queue}-{i}"), transient()).await;
        assert_ack(&c, "transient publish to a transient queue");
    }
    let got = drain(&conn, queue, 3).await;
    assert_eq!(got, [0, 1, 2].map(|i| format!("{queue}-{i}")));
    close(conn).await;
}

/// Confirms of persistent messages wait for the fsync; a transient message (even in a
/// durable queue) and an unroutable one need no disk and are confirmed at once, as in
/// RabbitMQ.
#[tokio::test]
async fn persistent_confirms_wait_for_the_fsync_others_do_not() {
    let h = FaultyBroker::start("hold");
    let conn = connect(h.broker()).await;
    declare_durable(&channel(&conn).await, "held").await;
    // One channel each: a channel confirms in publish order, so a transient publish behind a
    // held persistent one on the same channel waits for it.
    let persistent_ch = confirm_channel(&conn).await;
    let transient_ch = confirm_channel(&conn).await;
    let unroutable_ch = confirm_channel(&conn).await;

    h.faults.hold_sync(true);
    let mut held = send(&persistent_ch, "held", b"persistent", persistent()).await;
    eventually("the group commit blocks in an fsync", || {
        h.faults.held_syncs() > 0
    })
    .await;
    let syncs = h.faults.sync_count();
    assert!(
        tokio::time::timeout(QUIET, &mut held).await.is_err(),
        "a persistent message was confirmed while the fsyncs were held"
    );

    let c = publish_for(&transient_ch, "held", "transient", transient()).await;
    assert_ack(&c, "transient message to a durable queue, fsyncs held");
    let c = publish_for(&unroutable_ch, "no-such-queue", "unroutable", persistent()).await;
    assert_ack(&c, "unroutable persistent message, fsyncs held");
    assert!(
        (&mut held).now_or_never().is_none(),
        "a persistent message was confirmed while the fsyncs were held"
    );
    assert_eq!(
        h.faults.sync_count(),
        syncs,
        "no fsync completed while held"
    );

    h.faults.hold_sync(false);
    let c = within("confirm once the fsync is released", held)
        .await
        .expect("confirm");
    assert_ack(&c, "persistent message after the fsync");
    assert!(
        h.faults.sync_count() > syncs,
        "the ack came after an fsync completed"
    );

    assert_eq!(drain(&conn, "held", 2).await, ["persistent", "transient"]);
    close(conn).await;
}

/// A failed fsync nacks what it covered. After one, the kernel may have dropped the dirty
/// pages, so the store refuses further writes rather than trust a retry: the queue takes
/// transient messages but nacks persistent ones until the broker restarts. The rest of the
/// broker goes on serving.
#[tokio::test]
async fn a_failed_fsync_nacks_and_the_broker_keeps_serving() {
    let mut h = FaultyBroker::start("fsync");
    let conn = connect(h.broker()).await;
    let ch = confirm_channel(&conn).await;
    declare_durable(&ch, "fragile").await;
    assert_ack(
        &publish_for(&ch, "fragile", "kept", persistent()).await,
        "persistent publish before the fault",
    );

    h.faults.set_fail_sync(true);
    assert_nack(
        &publish_for(&ch, "fragile", "doomed", persistent()).await,
        "persistent publish whose fsync fails",
    );
    h.faults.set_fail_sync(false);
    h.settled().await;

    // The disk is fine again, but the queue's store is not trusted until a restart.
    assert_nack(
        &publish_for(&ch, "fragile", "refused", persistent()).await,
        "persistent publish to the queue whose fsync failed",
    );
    assert_ack(
        &publish_for(&ch, "fragile", "transient", transient()).await,
        "transient publish to the queue whose fsync failed",
    );
    // "doomed" was nacked, yet it is in the queue: its bytes were written, only the fsync
    // failed. A nack tells the publisher the broker took no responsibility for the message
    // (it republishes, at least once), not that the message is gone. "refused" never got in.
    assert_eq!(
        peek(&conn, "fragile", 3).await,
        ["kept", "doomed", "transient"]
    );

    still_serving(&h, "plain").await;
    // Other durable queues have stores of their own and take persistent messages. (Wait for
    // the group commit that failed on the delivered marks `peek` tried to write: see
    // `a_poisoned_queue_does_not_nack_other_queues_publishes`.)
    h.settled().await;
    declare_durable(&ch, "sturdy").await;
    assert_ack(
        &publish_for(&ch, "sturdy", "sturdy-1", persistent()).await,
        "persistent publish to another durable queue",
    );

    // A restart reopens the store from what is on disk: the persistent messages come back
    // (here "doomed" too, as the fault injected left its bytes in the file) and the queue
    // takes persistent messages again.
    close(conn).await;
    h.restart();
    let conn = connect(h.broker()).await;
    let ch = confirm_channel(&conn).await;
    assert_ack(
        &publish_for(&ch, "fragile", "after-restart", persistent()).await,
        "persistent publish after the restart",
    );
    assert_eq!(
        drain(&conn, "fragile", 3).await,
        ["kept", "doomed", "after-restart"]
    );
    assert_eq!(drain(&conn, "sturdy", 1).await, ["sturdy-1"]);
    close(conn).await;
}

/// A write that fails with EIO or ENOSPC nacks the persistent publishes it concerns, whether
/// it shows at the group commit's flush or at the append. The store cuts the torn write off,
/// keeps going once the disk does, and nothing acked before is lost, even across a restart.
async fn failed_writes_nack(fault: Fault, name: &str) {
    let mut h = FaultyBroker::start(name);
    let conn = connect(h.broker()).await;
    let ch = confirm_channel(&conn).await;
    let q = "writes";
    declare_durable(&ch, q).await;
    for body in ["before-1", "before-2"] {
        assert_ack(
            &publish_for(&ch, q, body, persistent()).await,
            "persistent publish before the fault",
        );
    }

    set_fault(&h.faults, fault, true);
    // Small: it waits in the write buffer and the group commit's flush fails.
    assert_nack(
        &publish_for(&ch, q, "small", persistent()).await,
        "persistent publish whose flush fails",
    );
    // Large: it does not fit behind "small" (still buffered), so the append flushes first and
    // fails at once.
    let large = "L".repeat(100 * 1024);
    assert_nack(
        &publish_for(&ch, q, &large, persistent()).await,
        "persistent publish whose append fails",
    );
    assert_ack(
        &publish_for(&ch, q, "transient", transient()).await,
        "transient publish while writes fail",
    );
    still_serving(&h, "plain").await;

    set_fault(&h.faults, fault, false);
    h.settled().await;
    assert_ack(
        &publish_for(&ch, q, "after", persistent()).await,
        "persistent publish after the disk recovered",
    );
    // "small" was nacked but stayed queued (and buffered: it reached the disk once writes
    // worked again); the large message failed at its append and never got in.
    assert_eq!(
        peek(&conn, q, 5).await,
        ["before-1", "before-2", "small", "transient", "after"]
    );

    // The torn writes were cut off: every record on disk reads back after a restart.
    close(conn).await;
    h.restart();
    let conn = connect(h.broker()).await;
    assert_eq!(
        drain(&conn, q, 4).await,
        ["before-1", "before-2", "small", "after"]
    );
    close(conn).await;
}

#[tokio::test]
async fn eio_on_write_nacks_and_the_broker_recovers() {
    failed_writes_nack(Fault::Eio, "eio").await;
}

#[tokio::test]
async fn enospc_on_write_nacks_and_the_broker_recovers() {
    failed_writes_nack(Fault::Enospc, "enospc").await;
}

/// A persistent publish can land while a group commit is still going through the queues it
/// closed: it belongs to the next epoch, but if its queue is still waiting for its turn in
/// this commit, the flush of this commit writes it. When that flush or fsync fails, the
/// publish must be nacked too, not acked by the next group commit (which has nothing to sync
/// for that queue).
///
/// The group commit is stopped at the right place by holding the fsync of another queue
/// that comes first in it.
async fn publish_racing_a_failed_commit_is_nacked(fault: Fault, name: &str) {
    let h = FaultyBroker::start(name);
    let conn = connect(h.broker()).await;
    let first_ch = confirm_channel(&conn).await;
    let racing_ch = confirm_channel(&conn).await;
    declare_durable(&first_ch, "first").await;
    declare_durable(&first_ch, "racing").await;

    // 1. A group commit blocks in the fsync of "first".
    h.faults.hold_sync_of("/qfirst");
    let y = send(&first_ch, "first", b"y", persistent()).await;
    eventually("a group commit blocks in an fsync of \"first\"", || {
        h.faults.held_syncs() > 0
    })
    .await;
    // 2. The next one gets "first", then "racing".
    let x = send(&first_ch, "first", b"x", persistent()).await;
    eventually("x is queued", || ready(&h, "first") == 2).await;
    let q1 = send(&racing_ch, "racing", b"q1", persistent()).await;
    eventually("q1 is queued", || ready(&h, "racing") == 1).await;
    // 3. Let the first commit through, fsync by fsync, until it is announced; the next
    //    commit then blocks in the fsync of "first", before it gets to "racing". The
    //    announcement, not y's confirm, says when to stop: the confirm reaches the client a
    //    little after the next commit may already be blocked, and releasing that one too
    //    would let it sync "racing" before the disk fails.
    let p = h
        .broker()
        .broker
        .persistence()
        .expect("persistence")
        .clone();
    let before = p.sync_state().synced_epoch;
    while p.sync_state().synced_epoch == before {
        if h.faults.held_syncs() > 0 {
            h.faults.release_held();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let y = confirmation("y", y).await;
    assert_ack(&y, "y, its group commit went through");
    eventually(
        "the next group commit blocks in an fsync of \"first\"",
        || h.faults.held_syncs() > 0,
    )
    .await;
    // 4. The racing publish: "racing" is still waiting for its turn in this commit.
    let m = send(&racing_ch, "racing", b"m", persistent()).await;
    eventually("m is queued", || ready(&h, "racing") == 2).await;
    // 5. The disk fails, and the commit goes on.
    set_fault(&h.faults, fault, true);
    h.faults.hold_sync(false);

    assert_nack(&confirmation("q1", q1).await, "q1, its commit failed");
    assert_nack(&confirmation("x", x).await, "x, its commit failed");
    assert_nack(
        &confirmation("m", m).await,
        "m, published while the failing commit went on",
    );

    set_fault(&h.faults, fault, false);
    h.settled().await;
    still_serving(&h, "plain").await;
    close(conn).await;
}

#[tokio::test]
async fn a_publish_racing_a_failed_write_is_nacked() {
    publish_racing_a_failed_commit_is_nacked(Fault::Eio, "race-eio").await;
}

#[tokio::test]
async fn a_publish_racing_a_failed_fsync_is_nacked() {
    publish_racing_a_failed_commit_is_nacked(Fault::FailedFsync, "race-fsync").await;
}

/// After a failed fsync a queue's store is poisoned until restart: its acks and delivered marks
/// are refused (they could never be synced) and do not enlist the queue for the next group
/// commit, so persistent publishes to healthy queues sharing that commit are still acked.
#[tokio::test]
async fn a_poisoned_queue_does_not_nack_other_queues_publishes() {
    let h = FaultyBroker::start("poisoned");
    let conn = connect(h.broker()).await;
    let ch = confirm_channel(&conn).await;
    declare_durable(&ch, "fragile").await;
    declare_durable(&ch, "healthy").await;
    assert_ack(
        &publish_for(&ch, "fragile", "kept", persistent()).await,
        "before the fault",
    );
    h.faults.set_fail_sync(true);
    assert_nack(
        &publish_for(&ch, "fragile", "doomed", persistent()).await,
        "fsync fails",
    );
    h.faults.set_fail_sync(false);

    let consumer_ch = channel(&conn).await;
    let mut consumer = consume(&consumer_ch, "fragile", "c").await;
    let deliveries = [next(&mut consumer).await, next(&mut consumer).await];
    h.settled().await;

    // Stop a group commit in the fsync of "healthy": the next one gathers the consumer's acks
    // and a second publish to "healthy".
    h.faults.hold_sync_of("/qhealthy");
    let h1 = send(&ch, "healthy", b"h1", persistent()).await;
    eventually("a group commit blocks in an fsync of \"healthy\"", || {
        h.faults.held_syncs() > 0
    })
    .await;
    for d in &deliveries {
        ack(d).await;
    }
    eventually("the acks are processed", || {
        queue_counts(h.broker(), "fragile") == Some((0, 0))
    })
    .await;
    let h2 = send(&ch, "healthy", b"h2", persistent()).await;
    eventually("h2 is queued", || ready(&h, "healthy") == 2).await;
    h.faults.hold_sync(false);

    assert_ack(&confirmation("h1", h1).await, "h1");
    assert_ack(
        &confirmation("h2", h2).await,
        "h2, fsynced, in the same group commit as acks on the poisoned queue",
    );
    close(conn).await;
}

/// tx.commit-ok means the transaction's persistent messages are on disk: it waits for the
/// group commit's fsync, as a publisher confirm does. A rolled-back transaction leaves
/// nothing behind, and the committed one is all there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_commit_ok_waits_for_the_fsync() {
    let mut h = FaultyBroker::start("tx-commit");
    let conn = connect(h.broker()).await;
    let ch = channel(&conn).await;
    declare_durable(&ch, "txq").await;
    within("tx_select", ch.tx_select())
        .await
        .expect("tx_select");
    h.settled().await;
    for i in 0..3 {
        send(&ch, "txq", format!("tx-{i}").as_bytes(), persistent()).await;
    }
    assert_eq!(ready(&h, "txq"), 0, "nothing is enqueued before the commit");

    h.faults.hold_sync(true);
    // Spawned: lapin sends tx.commit only when its future is polled.
    let mut commit = tokio::spawn({
        let ch = ch.clone();
        async move { ch.tx_commit().await }
    });
    eventually("the group commit blocks in an fsync", || {
        h.faults.held_syncs() > 0
    })
    .await;
    assert!(
        tokio::time::timeout(QUIET, &mut commit).await.is_err(),
        "tx.commit-ok came while the fsyncs were held"
    );
    let syncs = h.faults.sync_count();
    h.faults.hold_sync(false);
    within("tx.commit-ok once the fsync is released", commit)
        .await
        .expect("commit task")
        .expect("tx_commit");
    assert!(
        h.faults.sync_count() > syncs,
        "commit-ok came after an fsync completed"
    );

    send(&ch, "txq", b"rolled back", persistent()).await;
    within("tx_rollback", ch.tx_rollback())
        .await
        .expect("tx_rollback");
    close(conn).await;

    h.restart();
    let conn = connect(h.broker()).await;
    assert_eq!(drain(&conn, "txq", 3).await, ["tx-0", "tx-1", "tx-2"]);
    close(conn).await;
}

/// A transaction that fans out to several durable queues (and a transient one) gets an end
/// record in each durable queue: after a restart every durable queue has all of it, in order,
/// mixed with the non-transactional publishes around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_to_several_queues_is_all_there_after_a_restart() {
    let mut h = FaultyBroker::start("tx-fanout");
    let conn = connect(h.broker()).await;
    let ch = channel(&conn).await;
    for q in ["tx-a", "tx-b"] {
        declare_durable(&ch, q).await;
        bind(&ch, q, "amq.fanout", "").await;
    }
    declare(&ch, "tx-transient").await;
    bind(&ch, "tx-transient", "amq.fanout", "").await;
    let plain = channel(&conn).await;
    within("tx_select", ch.tx_select())
        .await
        .expect("tx_select");
    for round in 0..2 {
        for i in 0..3 {
            let body = format!("tx{round}-{i}");
            publish_for_confirm(&ch, "amq.fanout", "", body.as_bytes(), persistent()).await;
        }
        within("tx_commit", ch.tx_commit())
            .await
            .expect("tx_commit");
        let body = format!("plain{round}");
        publish_for_confirm(&plain, "amq.fanout", "", body.as_bytes(), persistent()).await;
    }
    // The last publish (on `plain`, no confirms) is routed to one queue after another: the
    // transient queue may get its copy a moment after tx-b.
    eventually("all published", || {
        ["tx-a", "tx-b", "tx-transient"]
            .iter()
            .all(|q| ready(&h, q) == 8)
    })
    .await;
    close(conn).await;

    h.restart();
    let conn = connect(h.broker()).await;
    let want = [
        "tx0-0", "tx0-1", "tx0-2", "plain0", "tx1-0", "tx1-1", "tx1-2", "plain1",
    ];
    for q in ["tx-a", "tx-b"] {
        assert_eq!(drain(&conn, q, 8).await, want, "queue {q}");
    }
    assert!(!queue_exists(h.broker(), "tx-transient"));
    close(conn).await;
}
