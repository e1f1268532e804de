//! Delivery semantics: prefetch and fair dispatch, round-robin, acks, nacks and rejects,
//! basic.get, redelivery after a channel, a connection or a socket goes away, publisher
//! confirms, transactions, cancellation (client- and server-initiated), auto-delete and
//! exclusive queue lifetimes, purge and the counts in declare-ok.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::BasicProperties;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warren_tests::*;

/// With prefetch 1 a slow consumer holds one message at a time, so the fast one takes the rest
/// (RabbitMQ's "fair dispatch").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_dispatches_fairly_to_the_faster_consumer() {
    let broker = TestBroker::start();
    let (_pconn, producer) = open(&broker).await;
    declare(&producer, "work").await;

    let fast_n = Arc::new(AtomicUsize::new(0));
    let slow_n = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    let mut conns = Vec::new();
    for (delay, counter) in [
        (Duration::from_millis(300), slow_n.clone()),
        (Duration::ZERO, fast_n.clone()),
    ] {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        qos(&ch, 1, false).await;
        let mut c = consume(&ch, "work", "").await;
        conns.push(conn);
        workers.push(tokio::spawn(async move {
            while let Some(Ok(d)) = c.next().await {
                tokio::time::sleep(delay).await;
                counter.fetch_add(1, Ordering::SeqCst);
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
        }));
    }
    eventually("both consumers registered", || {
        consumer_count(&broker, "work") == 2
    })
    .await;

    for i in 0..20 {
        publish(&producer, "", "work", format!("job-{i}").as_bytes()).await;
    }
    eventually("all 20 jobs done", || {
        fast_n.load(Ordering::SeqCst) + slow_n.load(Ordering::SeqCst) == 20
    })
    .await;
    let (fast, slow) = (fast_n.load(Ordering::SeqCst), slow_n.load(Ordering::SeqCst));
    assert!(
        slow <= 3,
        "the slow consumer should get few jobs, got {slow} (fast got {fast})"
    );
    assert!(
        fast >= 17,
        "the fast consumer should get most jobs, got {fast}"
    );
    wait_counts(&broker, "work", 0, 0).await;
    for w in workers {
        w.abort();
    }
}

/// Consumers without a prefetch limit share a queue's messages in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_get_messages_round_robin() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    declare(&ch, "rr").await;
    let mut consumers = Vec::new();
    for i in 0..3 {
        let ch = channel(&conn).await;
        consumers.push(consume_no_ack(&ch, "rr", &format!("c{i}")).await);
    }
    for i in 0..9 {
        publish(&ch, "", "rr", format!("{i}").as_bytes()).await;
    }
    let mut seen = Vec::new();
    for c in consumers.iter_mut() {
        let got: Vec<u32> = next_bodies(c, 3)
            .await
            .iter()
            .map(|b| b.parse().unwrap())
            .collect();
        // Each consumer gets every third message, in order.
        assert_eq!(got[1] - got[0], 3, "round-robin step: {got:?}");
        assert_eq!(got[2] - got[1], 3, "round-robin step: {got:?}");
        seen.extend(got);
        assert_no_delivery(c).await;
    }
    seen.sort();
    assert_eq!(seen, (0..9).collect::<Vec<_>>());
}

/// basic.qos caps the unacknowledged messages of a consumer; each ack lets one more through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_prefetch_limits_unacked_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "pf").await;
    for i in 0..10 {
        publish(&ch, "", "pf", format!("m{i}").as_bytes()).await;
    }
    qos(&ch, 3, false).await;
    let mut c = consume(&ch, "pf", "").await;
    let first: Vec<_> = [next(&mut c).await, next(&mut c).await, next(&mut c).await].into();
    assert_eq!(
        first.iter().map(body).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    assert_no_delivery(&mut c).await;
    wait_counts(&broker, "pf", 7, 3).await;

    ack(&first[0]).await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "m3");
    assert_no_delivery(&mut c).await;
    wait_counts(&broker, "pf", 6, 3).await;

    // Acking several at once frees as many slots.
    within(
        "ack multiple",
        ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack multiple");
    assert_eq!(next_bodies(&mut c, 3).await, ["m4", "m5", "m6"]);
    assert_no_delivery(&mut c).await;
    wait_counts(&broker, "pf", 3, 3).await;

    // Raising the limit lets more through at once.
    qos(&ch, 0, false).await;
    let mut c2 = consume(&ch, "pf", "unlimited").await;
    assert_eq!(next_bodies(&mut c2, 3).await, ["m7", "m8", "m9"]);
    wait_counts(&broker, "pf", 0, 6).await;
}

/// A global prefetch (RabbitMQ: per channel) is shared by all consumers of the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_is_shared_by_the_channels_consumers() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "g1").await;
    declare(&ch, "g2").await;
    for i in 0..5 {
        publish(&ch, "", "g1", format!("a{i}").as_bytes()).await;
        publish(&ch, "", "g2", format!("b{i}").as_bytes()).await;
    }
    qos(&ch, 3, true).await;
    let _c1 = consume(&ch, "g1", "c1").await;
    let _c2 = consume(&ch, "g2", "c2").await;
    eventually("three unacked on the channel", || {
        let a = queue_counts(&broker, "g1").unwrap().1;
        let b = queue_counts(&broker, "g2").unwrap().1;
        a + b == 3
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let a = queue_counts(&broker, "g1").unwrap().1;
    let b = queue_counts(&broker, "g2").unwrap().1;
    assert_eq!(a + b, 3, "global prefetch 3 across both consumers");
}

/// Acking a message delivered to a consumer that has since been cancelled must not give
/// credit to a newer consumer on the same channel: prefetch counts that consumer's own
/// unacknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_a_cancelled_consumers_message_does_not_lift_another_consumers_prefetch() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "slots").await;
    for m in ["m1", "m2", "m3", "m4"] {
        publish(&ch, "", "slots", m.as_bytes()).await;
    }
    qos(&ch, 1, false).await;
    let mut old = consume(&ch, "slots", "old").await;
    let m1 = next(&mut old).await;
    within(
        "cancel old",
        ch.basic_cancel("old".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");

    let mut new = consume(&ch, "slots", "new").await;
    let m2 = next(&mut new).await;
    assert_eq!(body(&m2), "m2");
    wait_counts(&broker, "slots", 2, 2).await;

    // m1 belonged to the cancelled consumer; "new" still holds m2 unacked.
    ack(&m1).await;
    assert_no_delivery(&mut new).await;
    wait_counts(&broker, "slots", 2, 1).await;
    ack(&m2).await;
    assert_eq!(body(&next(&mut new).await), "m3");
}

/// A cancelled consumer's unacked messages stay checked out to it (not redelivered to
/// others) until its channel acks them or closes; then they come back, redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_consumers_unacked_messages_come_back_when_its_channel_closes() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "held").await;
    for m in ["h1", "h2", "h3"] {
        publish(&ch, "", "held", m.as_bytes()).await;
    }
    qos(&ch, 2, false).await;
    let mut c = consume(&ch, "held", "holder").await;
    let h1 = next(&mut c).await;
    let _h2 = next(&mut c).await;
    within(
        "cancel holder",
        ch.basic_cancel("holder".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    // Another channel's consumer gets only what is ready: h3.
    let (_conn2, other) = open(&broker).await;
    let mut o = consume(&other, "held", "other").await;
    assert_eq!(body(&next(&mut o).await), "h3");
    assert_no_delivery(&mut o).await;
    wait_counts(&broker, "held", 0, 3).await;
    // The cancelled consumer's channel acks one and closes: the other comes back.
    ack(&h1).await;
    within("close", ch.close(200, "bye".into()))
        .await
        .expect("close");
    let again = next(&mut o).await;
    assert_eq!(body(&again), "h2");
    assert!(again.redelivered, "h2 comes back redelivered");
    assert_no_delivery(&mut o).await;
}

/// nack and reject with requeue put messages back in their original places, marked
/// redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_reject_with_requeue_redeliver_in_original_order() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "rq").await;
    for m in ["m1", "m2", "m3", "m4"] {
        publish(&ch, "", "rq", m.as_bytes()).await;
    }
    let mut c = consume(&ch, "rq", "").await;
    let ds = [
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
        next(&mut c).await,
    ];
    assert!(ds.iter().all(|d| !d.redelivered));
    wait_counts(&broker, "rq", 0, 4).await;

    // Reject m2 alone, then nack m1..m3 (m1 and m3 still outstanding) at once; m4 stays out.
    within(
        "cancel",
        ch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    within(
        "reject m2",
        ch.basic_reject(ds[1].delivery_tag, BasicRejectOptions { requeue: true }),
    )
    .await
    .expect("reject");
    within(
        "nack up to m3",
        ch.basic_nack(
            ds[2].delivery_tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .expect("nack");
    wait_counts(&broker, "rq", 3, 1).await;

    let mut c = consume(&ch, "rq", "again").await;
    let again = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert_eq!(
        again.iter().map(body).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    assert!(
        again.iter().all(|d| d.redelivered),
        "requeued messages are marked redelivered"
    );
    for d in &again {
        ack(d).await;
    }
    ack(&ds[3]).await;
    wait_counts(&broker, "rq", 0, 0).await;
}

/// A requeued message goes back ahead of messages published after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_message_is_delivered_before_later_ones() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "order").await;
    for m in ["a", "b", "c"] {
        publish(&ch, "", "order", m.as_bytes()).await;
    }
    let a = get(&ch, "order", false).await.expect("a");
    assert_eq!(a.delivery.data, b"a");
    within(
        "nack",
        ch.basic_nack(
            a.delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        ),
    )
    .await
    .expect("nack");
    let again = get(&ch, "order", true).await.expect("a again");
    assert_eq!(again.delivery.data, b"a");
    assert!(again.delivery.redelivered);
    assert_eq!(again.message_count, 2);
    let b = get(&ch, "order", true).await.expect("b");
    assert_eq!(b.delivery.data, b"b");
    assert!(!b.delivery.redelivered);
}

/// nack and reject without requeue drop the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_reject_without_requeue_drop_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "dropq").await;
    for m in ["m1", "m2", "m3"] {
        publish(&ch, "", "dropq", m.as_bytes()).await;
    }
    let mut c = consume(&ch, "dropq", "").await;
    let ds = [next(&mut c).await, next(&mut c).await, next(&mut c).await];
    within(
        "reject m1",
        ch.basic_reject(ds[0].delivery_tag, BasicRejectOptions { requeue: false }),
    )
    .await
    .expect("reject");
    within(
        "nack m2..m3",
        ch.basic_nack(
            ds[2].delivery_tag,
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        ),
    )
    .await
    .expect("nack");
    wait_counts(&broker, "dropq", 0, 0).await;
    assert_no_delivery(&mut c).await;
    let stats = broker
        .broker
        .vhost("/")
        .unwrap()
        .queue("dropq")
        .unwrap()
        .stats();
    assert_eq!(
        (stats.messages_ready, stats.messages_unacknowledged),
        (0, 0)
    );
}

/// ack with multiple settles every outstanding delivery up to the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_settles_up_to_the_tag() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "am").await;
    for i in 0..5 {
        publish(&ch, "", "am", format!("{i}").as_bytes()).await;
    }
    let mut c = consume(&ch, "am", "").await;
    let mut ds = Vec::new();
    for _ in 0..5 {
        ds.push(next(&mut c).await);
    }
    let tags: Vec<u64> = ds.iter().map(|d| d.delivery_tag).collect();
    assert_eq!(
        tags,
        [1, 2, 3, 4, 5],
        "delivery tags count up from 1 on a channel"
    );
    within(
        "ack multiple 3",
        ch.basic_ack(3, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    wait_counts(&broker, "am", 0, 2).await;
    within("ack 5", ch.basic_ack(5, BasicAckOptions::default()))
        .await
        .expect("ack");
    wait_counts(&broker, "am", 0, 1).await;
    // Multiple with tag 0 means "everything outstanding".
    within(
        "ack all",
        ch.basic_ack(0, BasicAckOptions { multiple: true }),
    )
    .await
    .expect("ack");
    wait_counts(&broker, "am", 0, 0).await;
    // The channel is still healthy.
    declare(&ch, "am").await;
}

/// basic.get returns messages one at a time with the remaining count, and get-empty (None in
/// lapin) on an empty queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_and_get_empty() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "gq").await;
    assert!(
        get(&ch, "gq", false).await.is_none(),
        "get-empty on an empty queue"
    );

    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_priority(3);
    for m in ["one", "two", "three"] {
        publish_props(&ch, "", "gq", m.as_bytes(), props.clone()).await;
    }
    let m1 = get(&ch, "gq", false).await.expect("one");
    assert_eq!(m1.delivery.data, b"one");
    assert_eq!(m1.message_count, 2, "remaining after this one");
    assert_eq!(m1.delivery.routing_key.as_str(), "gq");
    assert_eq!(
        m1.delivery.properties.content_type(),
        &Some("text/plain".into())
    );
    assert_eq!(m1.delivery.properties.priority(), &Some(3));
    assert!(!m1.delivery.redelivered);
    wait_counts(&broker, "gq", 2, 1).await;

    let m2 = get(&ch, "gq", true).await.expect("two");
    assert_eq!(m2.delivery.data, b"two");
    assert_eq!(m2.message_count, 1);
    assert!(m2.delivery.delivery_tag > m1.delivery.delivery_tag);
    wait_counts(&broker, "gq", 1, 1).await; // no-ack get leaves nothing unacked

    within(
        "ack one",
        ch.basic_ack(m1.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    let m3 = get(&ch, "gq", true).await.expect("three");
    assert_eq!(
        (m3.delivery.data.as_slice(), m3.message_count),
        (&b"three"[..], 0)
    );
    assert!(get(&ch, "gq", true).await.is_none());
    wait_counts(&broker, "gq", 0, 0).await;
}

async fn take_two_unacked(
    broker: &TestBroker,
    ch: &lapin::Channel,
    queue: &str,
) -> lapin::Consumer {
    declare(ch, queue).await;
    publish(ch, "", queue, b"first").await;
    publish(ch, "", queue, b"second").await;
    let mut c = consume(ch, queue, "").await;
    assert_eq!(next_bodies(&mut c, 2).await, ["first", "second"]);
    wait_counts(broker, queue, 0, 2).await;
    c
}

async fn assert_redelivered_to_a_new_consumer(broker: &TestBroker, queue: &str) {
    wait_counts(broker, queue, 2, 0).await;
    let (_conn, ch) = open(broker).await;
    let mut c = consume(&ch, queue, "").await;
    let ds = [next(&mut c).await, next(&mut c).await];
    assert_eq!(ds.iter().map(body).collect::<Vec<_>>(), ["first", "second"]);
    assert!(ds.iter().all(|d| d.redelivered), "redelivered flag set");
    for d in &ds {
        ack(d).await;
    }
    wait_counts(broker, queue, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_redelivered_after_channel_close() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let _c = take_two_unacked(&broker, &ch, "after-channel").await;
    within("close channel", ch.close(200, "bye".into()))
        .await
        .expect("channel close");
    assert_redelivered_to_a_new_consumer(&broker, "after-channel").await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_redelivered_after_connection_close() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let _c = take_two_unacked(&broker, &ch, "after-conn").await;
    within("close connection", conn.close(200, "bye".into()))
        .await
        .expect("connection close");
    assert_redelivered_to_a_new_consumer(&broker, "after-conn").await;
}

/// The client's socket is cut with no connection.close (as when its process is killed):
/// the broker notices, cleans up the connection and requeues what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_redelivered_after_an_abrupt_socket_drop() {
    let broker = TestBroker::start();
    let proxy = Proxy::start(broker.addr).await;
    let conn = connect_url(&proxy.url()).await;
    let ch = channel(&conn).await;
    let _c = take_two_unacked(&broker, &ch, "after-drop").await;
    // An exclusive queue of that connection must go too.
    let excl = declare_exclusive(&ch).await.name().to_string();
    assert_eq!(broker.broker.connections.len(), 1);

    proxy.cut();
    eventually("broker noticed the dropped socket", || {
        broker.broker.connections.is_empty()
    })
    .await;
    assert_redelivered_to_a_new_consumer(&broker, "after-drop").await;
    eventually("exclusive queue removed", || !queue_exists(&broker, &excl)).await;
}

/// basic.recover requeues everything unacknowledged on the channel.
///
/// RabbitMQ answers recover-ok before the requeued messages come back (the queue redelivers
/// them asynchronously), and lapin relies on it: it discards deliveries buffered when
/// recover-ok arrives, as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_recover_redelivers_unacked_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let mut c = take_two_unacked(&broker, &ch, "recover").await;
    within(
        "recover",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("recover");
    let ds = [next(&mut c).await, next(&mut c).await];
    assert_eq!(ds.iter().map(body).collect::<Vec<_>>(), ["first", "second"]);
    assert!(ds.iter().all(|d| d.redelivered));
}

/// basic.recover-async (no reply) requeues the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_recover_async_redelivers_unacked_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let mut c = take_two_unacked(&broker, &ch, "recover-async").await;
    within(
        "recover-async",
        ch.basic_recover_async(BasicRecoverAsyncOptions { requeue: true }),
    )
    .await
    .expect("recover-async");
    let ds = [next(&mut c).await, next(&mut c).await];
    assert_eq!(ds.iter().map(body).collect::<Vec<_>>(), ["first", "second"]);
    assert!(ds.iter().all(|d| d.redelivered));
    for d in &ds {
        ack(d).await;
    }
    wait_counts(&broker, "recover-async", 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_confirms_ack_every_message() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "confirmed").await;
    confirm_select(&ch).await;

    // Awaited one by one...
    for i in 0..10 {
        let confirm = within(
            "publish",
            ch.basic_publish(
                "".into(),
                "confirmed".into(),
                BasicPublishOptions::default(),
                format!("a{i}").as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        assert!(within("confirm", confirm).await.expect("confirm").is_ack());
    }
    // ...and in bulk.
    let mut confirms = Vec::new();
    for i in 0..200 {
        confirms.push(
            within(
                "publish",
                ch.basic_publish(
                    "".into(),
                    "confirmed".into(),
                    BasicPublishOptions::default(),
                    format!("b{i}").as_bytes(),
                    BasicProperties::default(),
                ),
            )
            .await
            .expect("publish"),
        );
    }
    let returned = within("wait_for_confirms", ch.wait_for_confirms())
        .await
        .expect("wait_for_confirms");
    assert!(returned.is_empty());
    for c in confirms {
        assert!(within("confirm", c).await.expect("confirm").is_ack());
    }
    wait_counts(&broker, "confirmed", 210, 0).await;

    // Messages routed nowhere are confirmed too.
    publish_confirmed(&ch, "amq.direct", "nowhere", b"x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_rollback() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "txq").await;
    within("tx_select", ch.tx_select())
        .await
        .expect("tx_select");

    publish(&ch, "", "txq", b"rolled-back-1").await;
    publish(&ch, "", "txq", b"rolled-back-2").await;
    // Nothing is enqueued before commit.
    tokio::time::sleep(QUIET).await;
    assert_eq!(queue_counts(&broker, "txq"), Some((0, 0)));
    within("tx_rollback", ch.tx_rollback())
        .await
        .expect("rollback");
    assert_eq!(queue_counts(&broker, "txq"), Some((0, 0)));

    publish(&ch, "", "txq", b"committed-1").await;
    publish(&ch, "", "txq", b"committed-2").await;
    within("tx_commit", ch.tx_commit()).await.expect("commit");
    assert_eq!(
        queue_counts(&broker, "txq"),
        Some((2, 0)),
        "published on commit"
    );

    // Acks are transactional too.
    let m = get(&ch, "txq", false).await.expect("a message");
    assert_eq!(m.delivery.data, b"committed-1");
    within(
        "ack",
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    within("tx_rollback", ch.tx_rollback())
        .await
        .expect("rollback");
    assert_eq!(
        queue_counts(&broker, "txq"),
        Some((1, 1)),
        "rolled-back ack leaves it unacked"
    );
    within(
        "ack",
        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .expect("ack");
    within("tx_commit", ch.tx_commit()).await.expect("commit");
    assert_eq!(
        queue_counts(&broker, "txq"),
        Some((1, 0)),
        "committed ack settles it"
    );

    // Each commit opens a new transaction: the channel stays transactional.
    publish(&ch, "", "txq", b"later").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(queue_counts(&broker, "txq"), Some((1, 0)));
    within("tx_commit", ch.tx_commit()).await.expect("commit");
    assert_eq!(queue_counts(&broker, "txq"), Some((2, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_tx_modes_exclude_each_other() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    within("tx_select", ch.tx_select())
        .await
        .expect("tx_select");
    let r = within(
        "confirm_select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    expect_code(r, 406);
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    let r = within("tx_select", ch.tx_select()).await;
    expect_code(r, 406);
    let ch = channel(&conn).await;
    let r = within("tx_commit without select", ch.tx_commit()).await;
    expect_code(r, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_consumer_gets_nothing_more() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "cq").await;
    let mut c = consume_no_ack(&ch, "cq", "to-cancel").await;
    publish(&ch, "", "cq", b"before").await;
    assert_eq!(body(&next(&mut c).await), "before");
    assert_eq!(consumer_count(&broker, "cq"), 1);

    within(
        "cancel",
        ch.basic_cancel("to-cancel".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert!(
        within("stream end", c.next()).await.is_none(),
        "the consumer stream ends"
    );
    assert_eq!(consumer_count(&broker, "cq"), 0);
    publish(&ch, "", "cq", b"after").await;
    wait_counts(&broker, "cq", 1, 0).await;
    // The tag can be reused after cancellation.
    let mut c = consume_no_ack(&ch, "cq", "to-cancel").await;
    assert_eq!(body(&next(&mut c).await), "after");
}

/// Deleting a queue cancels its consumers with a server-sent basic.cancel (the client
/// announced consumer_cancel_notify); the channel stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = TestBroker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "doomed").await;
    let mut c = consume(&ch, "doomed", "watcher").await;
    publish(&ch, "", "doomed", b"last words").await;
    let d = next(&mut c).await;

    let (_other_conn, other) = open(&broker).await;
    let n = within(
        "delete",
        other.queue_delete("doomed".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    assert_eq!(n, 0, "the only message was out, unacked");
    match within("server-sent cancel", c.next()).await {
        None => {}
        Some(Ok(d)) => panic!("unexpected delivery {:?}", body(&d)),
        Some(Err(e)) => panic!("consumer failed instead of being cancelled: {e}"),
    }
    assert!(
        ch.status().connected(),
        "basic.cancel is not a channel error"
    );
    // Acking a message of a deleted queue is harmless.
    ack(&d).await;
    declare(&ch, "fresh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_when_its_last_consumer_cancels() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let opts = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    within("declare", ch.queue_declare("ad".into(), opts, no_args()))
        .await
        .expect("declare");
    // Never consumed: it stays.
    tokio::time::sleep(QUIET).await;
    assert!(queue_exists(&broker, "ad"));

    let _c1 = consume(&ch, "ad", "c1").await;
    let _c2 = consume(&ch, "ad", "c2").await;
    within(
        "cancel c1",
        ch.basic_cancel("c1".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    assert!(queue_exists(&broker, "ad"), "one consumer left");
    within(
        "cancel c2",
        ch.basic_cancel("c2".into(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    eventually("auto-delete queue deleted", || !queue_exists(&broker, "ad")).await;

    // Also when the last consumer's channel closes.
    within("declare", ch.queue_declare("ad2".into(), opts, no_args()))
        .await
        .expect("declare");
    let (conn2, ch2) = open(&broker).await;
    let _c = consume(&ch2, "ad2", "").await;
    within("close", conn2.close(200, "bye".into()))
        .await
        .expect("close");
    eventually(
        "auto-delete queue deleted with its consumer's connection",
        || !queue_exists(&broker, "ad2"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    within(
        "declare named exclusive",
        ch.queue_declare("excl".into(), QueueDeclareOptions::exclusive(), no_args()),
    )
    .await
    .expect("declare");
    let generated = declare_exclusive(&ch).await.name().to_string();
    publish(&ch, "", "excl", b"x").await;
    // Closing a channel is not enough.
    within("close channel", ch.close(200, "".into()))
        .await
        .expect("close channel");
    tokio::time::sleep(QUIET).await;
    assert!(queue_exists(&broker, "excl") && queue_exists(&broker, &generated));

    within("close", conn.close(200, "bye".into()))
        .await
        .expect("close");
    eventually("exclusive queues deleted", || {
        !queue_exists(&broker, "excl") && !queue_exists(&broker, &generated)
    })
    .await;
    // The name is free for others now.
    let (_c, ch) = open(&broker).await;
    let q = declare(&ch, "excl").await;
    assert_eq!(q.message_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_reports_the_ready_messages_it_removed() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "pq").await;
    for i in 0..5 {
        publish(&ch, "", "pq", format!("{i}").as_bytes()).await;
    }
    // One is out unacknowledged: purge leaves it alone.
    let out = get(&ch, "pq", false).await.expect("message");
    let n = within(
        "purge",
        ch.queue_purge("pq".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(n, 4);
    wait_counts(&broker, "pq", 0, 1).await;
    let n = within(
        "purge again",
        ch.queue_purge("pq".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(n, 0);
    // Requeued after the purge, the unacked one is back.
    within(
        "nack",
        ch.basic_nack(
            out.delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        ),
    )
    .await
    .expect("nack");
    wait_counts(&broker, "pq", 1, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_reports_ready_messages_and_consumers() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker).await;
    let q = declare(&ch, "counts").await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    for i in 0..5 {
        publish(&ch, "", "counts", format!("{i}").as_bytes()).await;
    }
    let q = declare(&ch, "counts").await;
    assert_eq!((q.message_count(), q.consumer_count()), (5, 0));

    // Two consumers with prefetch 1 each hold one message: 3 ready, 2 consumers.
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let c_ch = channel(&conn).await;
        qos(&c_ch, 1, false).await;
        let mut c = consume(&c_ch, "counts", "").await;
        next(&mut c).await;
        consumers.push((c_ch, c));
    }
    wait_counts(&broker, "counts", 3, 2).await;
    let q = declare(&ch, "counts").await;
    assert_eq!(
        (q.message_count(), q.consumer_count()),
        (3, 2),
        "message_count counts ready messages only"
    );
    let q = within(
        "passive declare",
        ch.queue_declare(
            "counts".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
    )
    .await
    .expect("passive");
    assert_eq!((q.message_count(), q.consumer_count()), (3, 2));
}

/// Bodies larger than frame_max are split into several body frames and joined again; an
/// empty body has no body frame at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_empty_bodies_round_trip() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "big").await;
    let sizes = [
        0usize,
        1,
        131_072 - 8,
        131_072,
        131_073,
        1 << 20,
        3 * (1 << 20) + 17,
    ];
    let bodies: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
        .collect();
    for b in &bodies {
        publish(&ch, "", "big", b).await;
    }
    let mut c = consume_no_ack(&ch, "big", "").await;
    for (n, want) in sizes.iter().zip(&bodies) {
        let d = next(&mut c).await;
        assert_eq!(d.data.len(), *n, "body size");
        assert!(d.data == *want, "body of {n} bytes corrupted");
    }
}

/// Every content-header property, headers of every field type included, reaches the
/// consumer as published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_properties_round_trip() {
    use lapin::types::{
        AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
    };
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "props").await;

    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    let mut headers = FieldTable::default();
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("string", AMQPValue::LongString(LongString::from("text ✓"))),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::LongString("two".into()),
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 255])),
        ),
        ("void", AMQPValue::Void),
    ];
    for (k, v) in values.iter().cloned() {
        headers.insert(ShortString::from(k), v);
    }
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers.clone())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_600_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("tests".into())
        .with_cluster_id("".into());
    publish_props(&ch, "", "props", b"{}", props.clone()).await;
    let mut c = consume_no_ack(&ch, "props", "").await;
    let d = next(&mut c).await;
    let got = &d.properties;
    assert_eq!(got.content_type(), props.content_type());
    assert_eq!(got.content_encoding(), props.content_encoding());
    assert_eq!(got.delivery_mode(), &Some(2));
    assert_eq!(got.priority(), &Some(7));
    assert_eq!(got.correlation_id(), props.correlation_id());
    assert_eq!(got.reply_to(), props.reply_to());
    assert_eq!(got.expiration(), props.expiration());
    assert_eq!(got.message_id(), props.message_id());
    assert_eq!(got.timestamp(), &Some(1_600_000_000));
    assert_eq!(got.kind(), props.kind());
    assert_eq!(got.user_id(), props.user_id());
    assert_eq!(got.app_id(), props.app_id());
    let got_headers = got.headers().as_ref().expect("headers");
    for (k, v) in values.iter() {
        assert_eq!(got_headers.inner().get(*k), Some(v), "header {k}");
    }
    assert_eq!(got_headers.inner().len(), values.len());
}

/// A no-ack consumer slower than the publisher: the broker buffers at most a few MiB for the
/// connection and resumes as the socket drains, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_ack_consumer_gets_everything_through_write_backpressure() {
    let broker = TestBroker::start();
    let (_pconn, producer) = open(&broker).await;
    declare(&producer, "flood").await;
    const N: usize = 3000;
    let payload = vec![b'x'; 16 * 1024]; // 48 MiB in all, well above the write buffer's limit
    confirm_select(&producer).await;
    for i in 0..N {
        let mut body = payload.clone();
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        // Its confirm is awaited with the others' below (wait_for_confirms).
        let _confirm = within(
            "publish",
            producer.basic_publish(
                "".into(),
                "flood".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
    }
    within("wait_for_confirms", producer.wait_for_confirms())
        .await
        .expect("confirms");

    let (_cconn, ch) = open(&broker).await;
    let mut c = consume_no_ack(&ch, "flood", "").await;
    for i in 0..N {
        let d = next(&mut c).await;
        let seq = u64::from_be_bytes(d.data[..8].try_into().unwrap());
        assert_eq!(seq, i as u64, "messages arrive in order, none lost");
        if i % 500 == 0 {
            // Be slow now and then, so the broker's buffer fills.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_no_delivery(&mut c).await;
    wait_counts(&broker, "flood", 0, 0).await;
}

/// An empty queue name means "the queue last declared on this channel" for consume, get,
/// bind, purge and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queue_name_means_the_last_declared_queue() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker).await;
    let q = declare_exclusive(&ch).await.name().to_string();
    bind(&ch, "", "amq.direct", "k").await;
    publish(&ch, "amq.direct", "k", b"via-binding").await;
    let m = get(&ch, "", true)
        .await
        .expect("get from the last declared queue");
    assert_eq!(m.delivery.data, b"via-binding");
    assert_eq!(m.delivery.routing_key.as_str(), "k");
    publish(&ch, "", &q, b"purged").await;
    let n = within(
        "purge",
        ch.queue_purge("".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge");
    assert_eq!(n, 1);
    publish(&ch, "", &q, b"consumed").await;
    let mut c = consume_no_ack(&ch, "", "").await;
    assert_eq!(body(&next(&mut c).await), "consumed");
    within(
        "delete",
        ch.queue_delete("".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete");
    eventually("deleted", || !queue_exists(&broker, &q)).await;
}

/// Two services that each publish on the connection where they also consume (a common
/// shape: A sends requests to B's queue and consumes B's answers, and vice versa). With
/// both queues backlogged, neither connection may stop reading the acks that drain the other
/// queue: RabbitMQ's credit flow throttles publishers but never stops a queue from draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_does_not_deadlock_connections_feeding_each_other() {
    const N: usize = 60_000; // above the broker's 50,000-message backlog limit
    let broker = TestBroker::start();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let consumed = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for (own, other) in [("svc-a", "svc-b"), ("svc-b", "svc-a")] {
        let conn = connect(&broker).await;
        let cons_ch = channel(&conn).await;
        declare(&cons_ch, own).await;
        declare(&cons_ch, other).await;
        qos(&cons_ch, 50, false).await;
        let mut c = consume(&cons_ch, own, "").await;
        let mut gate = gate_rx.clone();
        let n = consumed.clone();
        tasks.push(tokio::spawn(async move {
            // Hold off until both queues are backlogged.
            while !*gate.borrow_and_update() {
                if gate.changed().await.is_err() {
                    return;
                }
            }
            while let Some(Ok(d)) = c.next().await {
                d.ack(BasicAckOptions::default()).await.expect("ack");
                n.fetch_add(1, Ordering::Relaxed);
            }
        }));
        let pub_ch = channel(&conn).await;
        let target = other.to_string();
        let p = published.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..N {
                pub_ch
                    .basic_publish(
                        "".into(),
                        target.as_str().into(),
                        BasicPublishOptions::default(),
                        b"req",
                        BasicProperties::default(),
                    )
                    .await
                    .expect("publish");
                p.fetch_add(1, Ordering::Relaxed);
            }
        }));
        conns.push(conn);
    }
    // Let the backlogs build (or give up waiting after a while), then start consuming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let a = queue_counts(&broker, "svc-a").map_or(0, |c| c.0);
        let b = queue_counts(&broker, "svc-b").map_or(0, |c| c.0);
        if a > 50_000 && b > 50_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gate_tx.send(true).expect("open the gate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while consumed.load(Ordering::Relaxed) < 2 * N {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "stalled: published {} and consumed {} of {}; ready a={:?} b={:?}",
                published.load(Ordering::Relaxed),
                consumed.load(Ordering::Relaxed),
                2 * N,
                queue_counts(&broker, "svc-a"),
                queue_counts(&broker, "svc-b"),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.abort();
    }
}
