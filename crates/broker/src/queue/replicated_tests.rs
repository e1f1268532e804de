//! A replicated queue on a stand-in group: commands are applied in order on a thread of
//! their own, and the outputs go to the queue as a member's would, except while `skipping`
//! (entries this node never applied itself: the leader's snapshot covered them). No
//! sockets, no Raft.

use super::super::replica::{Answer, OutputSink, Replica, ReplicaHost, ReplicaOutput};
use super::super::{Deliveries, Followups, Owner, Queue, QueueCommand, QueueEngine, QueueOptions};
use crate::delivery::{DeliveryChannel, DeliveryWriter};
use crate::message::Message;
use crate::queue::LoggedMessage;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use warren_protocol::{BasicProperties, FieldTable};

struct StandIn {
    engine: Mutex<QueueEngine<Owner>>,
    outputs: Mutex<Option<OutputSink>>,
    skipping: AtomicBool,
    log: Mutex<mpsc::Sender<(QueueCommand, Option<Answer>)>>,
    submitted: AtomicU64,
    applied: AtomicU64,
}

impl StandIn {
    fn start() -> Arc<StandIn> {
        let (tx, rx) = mpsc::channel::<(QueueCommand, Option<Answer>)>();
        let group = Arc::new(StandIn {
            engine: Mutex::new(QueueEngine::new(QueueOptions::default(), 0)),
            outputs: Mutex::new(None),
            skipping: AtomicBool::new(false),
            log: Mutex::new(tx),
            submitted: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        });
        let g = Arc::downgrade(&group);
        std::thread::spawn(move || {
            while let Ok((cmd, answer)) = rx.recv() {
                let Some(g) = g.upgrade() else { return };
                g.apply(cmd, answer);
                g.applied.fetch_add(1, Ordering::AcqRel);
            }
        });
        group
    }

    fn apply(&self, cmd: QueueCommand, answer: Option<Answer>) {
        let mut out = Deliveries::default();
        let applied = self.engine.lock().apply(&cmd, &mut out);
        let _ = self.engine.lock().drain_effects();
        if let Some(a) = answer {
            a(Ok(applied));
        }
        if self.skipping.load(Ordering::Acquire) {
            return;
        }
        let removed_consumers = match cmd {
            QueueCommand::RemoveConsumer { owner, .. } => vec![owner],
            _ => Vec::new(),
        };
        self.output(ReplicaOutput {
            deliveries: out.list,
            removed_consumers,
            ..Default::default()
        });
    }

    /// Waits until every command submitted so far (and those their outputs led to) is
    /// applied.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.applied.load(Ordering::Acquire) != self.submitted.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the stand-in group is stuck");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn output(&self, out: ReplicaOutput) {
        let sink = self.outputs.lock().clone().expect("opened");
        sink(out);
    }

    fn unacked_and_ready(&self) -> (u64, u64) {
        let s = self.engine.lock().stats();
        (s.messages_unacknowledged, s.messages_ready)
    }
}

impl Replica for StandIn {
    fn submit(&self, cmd: QueueCommand, answer: Option<Answer>) {
        self.submitted.fetch_add(1, Ordering::AcqRel);
        let _ = self.log.lock().send((cmd, answer));
    }
    fn read(&self, f: &mut dyn FnMut(&QueueEngine<Owner>)) {
        f(&self.engine.lock())
    }
    fn remove(&self) {}
    fn touch(&self, now: u64) {
        self.engine.lock().touch(now)
    }
    fn queued(&self) -> usize {
        0
    }
}

struct Host(Arc<StandIn>);

impl ReplicaHost for Host {
    fn open(
        &self,
        _vhost: &str,
        _name: &str,
        _opts: QueueOptions,
        outputs: OutputSink,
    ) -> Result<Arc<dyn Replica>, String> {
        *self.0.outputs.lock() = Some(outputs);
        Ok(self.0.clone())
    }
    fn retain(&self, _live: &[(String, String)]) {}
}

/// The ids of the messages a channel was handed, in order.
#[derive(Default)]
struct Writer(Mutex<Vec<u64>>);

impl DeliveryWriter for Writer {
    fn deliver(&self, _ch: u16, _tag: &str, _dtag: u64, _redelivered: bool, msg: &Message) {
        self.0
            .lock()
            .push(u64::from_be_bytes(msg.body[..8].try_into().unwrap()));
    }
    fn cancel(&self, _channel: u16, _consumer_tag: &str) {}
    fn is_saturated(&self) -> bool {
        false
    }
}

fn setup() -> (Arc<Queue>, Arc<StandIn>, Arc<DeliveryChannel>, Arc<Writer>) {
    let group = StandIn::start();
    let q = Arc::new(Queue::new(
        "qq".into(),
        "/",
        true,
        None,
        false,
        FieldTable::default(),
    ));
    q.attach_replica(&Host(group.clone()), Arc::new(|_| {}))
        .unwrap();
    let writer = Arc::new(Writer::default());
    let ch = DeliveryChannel::new(1, 1, writer.clone(), None);
    let mut fu = Followups::new();
    ch.set_prefetch(10, false, &mut fu);
    ch.consume(
        &q,
        "c1".into(),
        false,
        false,
        &FieldTable::default(),
        || {},
        &mut fu,
    )
    .unwrap();
    group.settle();
    (q, group, ch, writer)
}

fn enqueue(group: &StandIn, id: u64) {
    let msg = Message::new(
        "".into(),
        "qq".into(),
        BasicProperties::default().to_bytes(),
        Bytes::copy_from_slice(&id.to_be_bytes()),
    );
    group.submit(
        QueueCommand::Enqueue {
            msg: LoggedMessage(Arc::new(msg)),
            now: 0,
            from: None,
        },
        None,
    );
    group.settle();
}

#[test]
fn deliveries_a_snapshot_skipped_reach_the_consumer_once_restored() {
    let (_q, group, _ch, writer) = setup();
    enqueue(&group, 1);
    assert_eq!(*writer.0.lock(), vec![1]);
    // The entries that check out 2 and 3 to the consumer are covered by a snapshot.
    group.skipping.store(true, Ordering::Release);
    enqueue(&group, 2);
    enqueue(&group, 3);
    group.skipping.store(false, Ordering::Release);
    assert_eq!(group.unacked_and_ready(), (3, 0));
    assert_eq!(*writer.0.lock(), vec![1]);
    group.output(ReplicaOutput {
        restored: true,
        ..Default::default()
    });
    group.settle();
    // Its consumer subscribed again: what it held came back, and went to it again.
    let mut got = writer.0.lock().clone();
    got.sort_unstable();
    assert_eq!(got, vec![1, 1, 2, 3]);
    assert_eq!(group.unacked_and_ready(), (3, 0));
    assert_eq!(group.engine.lock().consumers().len(), 1);
}

#[test]
fn a_closed_channel_returns_what_its_node_never_handed_out() {
    let (_q, group, ch, writer) = setup();
    enqueue(&group, 1);
    group.skipping.store(true, Ordering::Release);
    enqueue(&group, 2);
    group.skipping.store(false, Ordering::Release);
    assert_eq!(*writer.0.lock(), vec![1]);
    assert_eq!(group.unacked_and_ready(), (2, 0));
    ch.close(&mut Followups::new());
    group.settle();
    assert_eq!(group.unacked_and_ready(), (0, 2));
}

#[test]
fn a_cancelled_consumer_returns_what_it_never_got_once_the_rest_is_acked() {
    let (_q, group, ch, writer) = setup();
    enqueue(&group, 1);
    group.skipping.store(true, Ordering::Release);
    enqueue(&group, 2);
    group.skipping.store(false, Ordering::Release);
    let mut fu = Followups::new();
    assert!(ch.cancel("c1", &mut fu));
    group.settle();
    // Message 1 stays the channel's until acked (RabbitMQ's basic.cancel); 2 never reached
    // it.
    assert_eq!(group.unacked_and_ready(), (2, 0));
    assert_eq!(*writer.0.lock(), vec![1]);
    ch.ack(1, false, &mut fu).unwrap();
    group.settle();
    assert_eq!(group.unacked_and_ready(), (0, 1));
}
