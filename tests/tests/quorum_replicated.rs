//! Quorum queues replicated with Raft (`quorum_queues.replicated = true`; issue 14, step 3 of
//! docs/cluster-plan.md), driven by a real client: every command goes through the queue's
//! Raft group on the node's write-ahead log, publishes are confirmed on commit, deliveries
//! are decided by the replicated engine (with the consumer's prefetch), and a restart
//! rebuilds the queue from the log.

use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use warren_tests::*;

fn quorum() -> lapin::types::FieldTable {
    table(&[("x-queue-type", long("quorum"))])
}

fn is_replicated(broker: &TestBroker, queue: &str) -> bool {
    broker
        .broker
        .vhost("/")
        .and_then(|v| v.queue(queue))
        .is_some_and(|q| q.is_replicated())
}

fn delivery_count(h: Option<&lapin::types::FieldTable>) -> Option<i64> {
    match h?.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(*n as i64),
        AMQPValue::ShortInt(n) => Some(*n as i64),
        _ => None,
    }
}

async fn publish_n_confirmed(ch: &lapin::Channel, queue: &str, n: usize) {
    let mut confirms = Vec::new();
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2);
        confirms.push(publish_for_confirm(ch, "", queue, format!("m{i}").as_bytes(), props).await);
    }
    for c in confirms {
        let c = within("publisher confirm", c).await.expect("confirm");
        assert!(c.is_ack(), "publish to {queue} was not acked: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_runs_through_the_raft_log() {
    let dir = TempDir::new("qq-work");
    let broker = TestBroker::replicated(&dir);
    let (_conn, ch) = open(&broker).await;
    declare_durable_args(&ch, "work", quorum()).await;
    assert!(
        is_replicated(&broker, "work"),
        "a quorum queue is a Raft group"
    );
    confirm_select(&ch).await;
    publish_n_confirmed(&ch, "work", 200).await;
    assert_eq!(queue_counts(&broker, "work"), Some((200, 0)));
    let wal: Vec<_> = std::fs::read_dir(dir.join("raft"))
        .expect("the node's Raft log directory")
        .collect();
    assert!(!wal.is_empty(), "the WAL has segment files");

    // The client never has more than its prefetch unacked. The engine checks out three times
    // as many to the consumer (its credit comes back only once an ack is committed); the
    // consumer's node holds the rest and sends one for each ack.
    let (_c2, ch2) = open(&broker).await;
    qos(&ch2, 10, false).await;
    let mut c = consume(&ch2, "work", "w").await;
    wait_counts(&broker, "work", 170, 30).await;
    let mut out = Vec::new();
    for i in 0..10 {
        let d = next(&mut c).await;
        assert_eq!(body(&d), format!("m{i}"), "in publish order");
        out.push(d);
    }
    assert_no_delivery(&mut c).await;
    ack(&out[0]).await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "m10", "one more for the one acked");
    assert_no_delivery(&mut c).await;
    out.push(d);
    for d in &out[1..] {
        ack(d).await;
    }
    for i in 11..200 {
        let d = next(&mut c).await;
        assert_eq!(body(&d), format!("m{i}"), "in publish order");
        assert!(!d.redelivered);
        ack(&d).await;
    }
    wait_counts(&broker, "work", 0, 0).await;
    assert_no_delivery(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_reject_and_requeue_go_through_the_log() {
    let dir = TempDir::new("qq-get");
    let broker = TestBroker::replicated(&dir);
    let (_conn, ch) = open(&broker).await;
    declare_durable_args(&ch, "g", quorum()).await;
    confirm_select(&ch).await;
    publish_n_confirmed(&ch, "g", 2).await;

    let m = get(&ch, "g", false).await.expect("a message");
    assert_eq!(String::from_utf8_lossy(&m.delivery.data), "m0");
    assert_eq!(m.message_count, 1, "one left ready");
    assert_eq!(queue_counts(&broker, "g"), Some((1, 1)));
    within(
        "reject",
        m.delivery.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    wait_counts(&broker, "g", 2, 0).await;

    // Back in its place, redelivered, counted as RabbitMQ's quorum queues count.
    let m = get(&ch, "g", false).await.expect("a message");
    assert_eq!(String::from_utf8_lossy(&m.delivery.data), "m0");
    assert!(m.delivery.redelivered);
    assert_eq!(
        delivery_count(m.delivery.properties.headers().as_ref()),
        Some(1)
    );
    within("ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    wait_counts(&broker, "g", 1, 0).await;
    let m = get(&ch, "g", true).await.expect("a message");
    assert_eq!(String::from_utf8_lossy(&m.delivery.data), "m1");
    assert!(get(&ch, "g", true).await.is_none());
    wait_counts(&broker, "g", 0, 0).await;
}

/// `x-delivery-limit` on a replicated queue: past the limit the message is dead-lettered
/// (reason `delivery_limit`) through the vhost, from the group's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_delivery_limit_a_message_is_dead_lettered() {
    let dir = TempDir::new("qq-limit");
    let broker = TestBroker::replicated(&dir);
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "dead").await;
    declare_durable_args(
        &ch,
        "limited",
        table(&[
            ("x-queue-type", long("quorum")),
            ("x-delivery-limit", int(1)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("dead")),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    publish_n_confirmed(&ch, "limited", 1).await;
    let mut c = consume(&ch, "limited", "w").await;
    for attempt in 0..2 {
        let d = next(&mut c).await;
        assert_eq!(d.redelivered, attempt > 0);
        within(
            "nack",
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            }),
        )
        .await
        .expect("nack");
    }
    wait_counts(&broker, "dead", 1, 0).await;
    wait_counts(&broker, "limited", 0, 0).await;
    assert_no_delivery(&mut c).await;
}

/// A cancelled consumer keeps what it holds until its channel acks or closes; then it comes
/// back, redelivered, to the other consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_channels_unacked_messages_go_to_the_next_consumer() {
    let dir = TempDir::new("qq-close");
    let broker = TestBroker::replicated(&dir);
    let (conn, ch) = open(&broker).await;
    declare_durable_args(&ch, "q", quorum()).await;
    confirm_select(&ch).await;
    publish_n_confirmed(&ch, "q", 10).await;

    let ch1 = channel(&conn).await;
    qos(&ch1, 5, false).await;
    let mut c1 = consume(&ch1, "q", "first").await;
    let held: Vec<String> = next_bodies(&mut c1, 5).await;
    assert_eq!(held, ["m0", "m1", "m2", "m3", "m4"]);
    within(
        "cancel",
        ch1.basic_cancel("first".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    wait_counts(&broker, "q", 5, 5).await;

    let ch2 = channel(&conn).await;
    qos(&ch2, 20, false).await;
    let mut c2 = consume(&ch2, "q", "second").await;
    // The first consumer's node held these for it (its prefetch was full): they were never
    // sent, so they come back neither redelivered nor counted.
    for want in ["m5", "m6", "m7", "m8", "m9"] {
        let d = next(&mut c2).await;
        assert_eq!(body(&d), want);
        assert!(!d.redelivered, "{want} was never delivered");
        assert_eq!(delivery_count(d.properties.headers().as_ref()), None);
    }
    wait_counts(&broker, "q", 0, 10).await;
    within("close", ch1.close(200, "bye".into()))
        .await
        .expect("close");
    for want in ["m0", "m1", "m2", "m3", "m4"] {
        let d = next(&mut c2).await;
        assert_eq!(body(&d), want);
        assert!(d.redelivered);
    }
    wait_counts(&broker, "q", 0, 10).await;
}

/// A stop and start on the same data directory: the queue comes back from its log with what
/// was not acknowledged; what a consumer held comes back redelivered, in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_queue_from_its_log() {
    let dir = TempDir::new("qq-restart");
    let broker = TestBroker::replicated(&dir);
    {
        let (_conn, ch) = open(&broker).await;
        declare_durable_args(&ch, "r", quorum()).await;
        confirm_select(&ch).await;
        publish_n_confirmed(&ch, "r", 20).await;
        qos(&ch, 5, false).await;
        let mut c = consume(&ch, "r", "w").await;
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(next(&mut c).await);
        }
        ack(&held[0]).await;
        ack(&held[1]).await;
        // Two settled; m2..m4 are still out, and m5, m6 follow as credit comes back. The
        // engine checks out three times the prefetch: m7..m16 wait at the consumer's node.
        wait_counts(&broker, "r", 3, 15).await;
        broker.stop();
    }
    let broker = TestBroker::replicated(&dir);
    assert!(is_replicated(&broker, "r"));
    wait_counts(&broker, "r", 18, 0).await;
    let (_conn, ch) = open(&broker).await;
    let mut c = consume(&ch, "r", "after").await;
    for i in 2..20 {
        let d = next(&mut c).await;
        assert_eq!(body(&d), format!("m{i}"));
        // Those delivered before the stop come back redelivered; those the node held for
        // the consumer (m7..m16) were put back unsent as the stop closed its channel.
        assert_eq!(
            d.redelivered,
            i < 7,
            "m{i}: delivered before the restart or not"
        );
        ack(&d).await;
    }
    wait_counts(&broker, "r", 0, 0).await;
}

/// A deleted queue's log is forgotten: declared again by the same name (the same group id),
/// it starts empty, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_again_after_deletion_starts_empty() {
    let dir = TempDir::new("qq-delete");
    let broker = TestBroker::replicated(&dir);
    {
        let (_conn, ch) = open(&broker).await;
        declare_durable_args(&ch, "d", quorum()).await;
        confirm_select(&ch).await;
        publish_n_confirmed(&ch, "d", 5).await;
        let deleted = within(
            "delete",
            ch.queue_delete("d".into(), QueueDeleteOptions::default()),
        )
        .await
        .expect("queue.delete");
        assert_eq!(deleted, 5);
        let q = declare_durable_args(&ch, "d", quorum()).await;
        assert_eq!(q.message_count(), 0);
        publish_n_confirmed(&ch, "d", 1).await;
        broker.stop();
    }
    let broker = TestBroker::replicated(&dir);
    wait_counts(&broker, "d", 1, 0).await;
}

/// A policy reaches a replicated queue through its log (`SetOptions`): max-length 3 drops the
/// oldest at once, and after a restart (the options in the snapshot or the log) it still
/// holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_goes_through_the_log_and_survives_a_restart() {
    let dir = TempDir::new("qq-policy");
    let broker = TestBroker::replicated(&dir);
    {
        let (_conn, ch) = open(&broker).await;
        declare_durable_args(&ch, "p", quorum()).await;
        confirm_select(&ch).await;
        publish_n_confirmed(&ch, "p", 5).await;
        let mut def = warren_protocol::FieldTable::new();
        def.insert("max-length", warren_protocol::FieldValue::I64(3));
        let policy =
            warren_broker::policy::Policy::new("len", "^p$", "queues", 0, def).expect("policy");
        broker
            .broker
            .vhost("/")
            .expect("vhost")
            .set_policy(policy, false);
        wait_counts(&broker, "p", 3, 0).await;
        broker.stop();
    }
    let broker = TestBroker::replicated(&dir);
    wait_counts(&broker, "p", 3, 0).await;
    let (_conn, ch) = open(&broker).await;
    confirm_select(&ch).await;
    publish_n_confirmed(&ch, "p", 2).await;
    wait_counts(&broker, "p", 3, 0).await;
    let left = drain(&ch, "p").await;
    assert_eq!(left, ["m4", "m0", "m1"], "the oldest went each time");
}
