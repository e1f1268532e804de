//! A queue: its ready messages (in publish order), how many are out unacknowledged, its
//! consumers, and dispatch — round-robin among consumers that have prefetch credit.
//!
//! A requeued message goes back to its original place: ready messages are kept ordered by
//! their sequence number, so a requeue is an ordered insert (almost always at the front).

use crate::channel::{DeliveryChannel, Deliver};
use crate::message::Message;
use crate::vhost::VHost;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use warren_protocol::{FieldTable, ShortStr};

/// A message in a queue, with its place in publish order.
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
}

/// A consumer as the queue sees it: where to deliver and how.
pub struct QueueConsumer {
    pub channel: Arc<DeliveryChannel>,
    pub consumer_id: u32,
    pub tag: ShortStr,
    pub no_ack: bool,
    pub exclusive: bool,
}

#[derive(Default)]
struct Inner {
    ready: VecDeque<QueuedMessage>,
    ready_bytes: usize,
    unacked: u32,
    consumers: Vec<QueueConsumer>,
    /// Index of the consumer that gets the next message (round-robin).
    next_consumer: usize,
    next_seq: u64,
    /// Set once a consumer has subscribed: auto-delete only applies after that.
    had_consumer: bool,
    published: u64,
    delivered: u64,
    acked: u64,
}

/// The declared properties of a queue and its live state.
pub struct Queue {
    pub name: ShortStr,
    pub vhost: Weak<VHost>,
    pub vhost_name: String,
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    deleted: AtomicBool,
    inner: Mutex<Inner>,
    /// The bindings that lead here (exchange, routing key, arguments), so deleting the queue
    /// removes them without scanning every exchange.
    pub(crate) bindings: Mutex<Vec<(ShortStr, ShortStr, FieldTable)>>,
}

/// Counters for list_queues and the management API.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub message_bytes_ready: u64,
    pub consumers: u64,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
}

/// Why a consumer could not be added.
pub enum ConsumeRefused {
    ExclusiveInUse,
    Deleted,
}

impl Queue {
    pub fn new(
        name: ShortStr,
        vhost: &Arc<VHost>,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Self {
        Queue {
            name,
            vhost: Arc::downgrade(vhost),
            vhost_name: vhost.name.clone(),
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            deleted: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            bindings: Mutex::new(Vec::new()),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> QueueStats {
        let i = self.inner.lock();
        QueueStats {
            messages_ready: i.ready.len() as u64,
            messages_unacknowledged: i.unacked as u64,
            message_bytes_ready: i.ready_bytes as u64,
            consumers: i.consumers.len() as u64,
            published: i.published,
            delivered: i.delivered,
            acked: i.acked,
        }
    }

    pub fn message_count(&self) -> u32 {
        self.inner.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers.len() as u32
    }

    /// Consumer tags and channels, for listing.
    pub fn consumers(&self) -> Vec<(ShortStr, Arc<DeliveryChannel>, bool, bool)> {
        self.inner.lock().consumers.iter().map(|c| (c.tag.clone(), c.channel.clone(), c.no_ack, c.exclusive)).collect()
    }

    /// Enqueues a routed message and hands it to a consumer if one has credit.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) {
        if self.is_deleted() {
            return;
        }
        let mut i = self.inner.lock();
        let seq = i.next_seq;
        i.next_seq += 1;
        i.published += 1;
        i.ready_bytes += msg.body.len();
        i.ready.push_back(QueuedMessage { seq, msg, redelivered: false });
        self.dispatch_locked(&mut i);
    }

    /// Delivers ready messages while some consumer has credit.
    pub fn dispatch(self: &Arc<Self>) {
        let mut i = self.inner.lock();
        self.dispatch_locked(&mut i);
    }

    fn dispatch_locked(self: &Arc<Self>, i: &mut Inner) {
        while !i.ready.is_empty() && !i.consumers.is_empty() {
            let n = i.consumers.len();
            let mut delivered = false;
            for k in 0..n {
                let idx = (i.next_consumer + k) % n;
                let c = &i.consumers[idx];
                let front = i.ready.front().expect("checked non-empty");
                let outcome = c.channel.deliver(Deliver {
                    queue: self,
                    consumer_id: c.consumer_id,
                    tag: &c.tag,
                    no_ack: c.no_ack,
                    qm: front,
                });
                if outcome {
                    let no_ack = c.no_ack;
                    i.next_consumer = (idx + 1) % n;
                    let qm = i.ready.pop_front().expect("checked non-empty");
                    i.ready_bytes -= qm.msg.body.len();
                    i.delivered += 1;
                    if !no_ack {
                        i.unacked += 1;
                    }
                    delivered = true;
                    break;
                }
            }
            if !delivered {
                return;
            }
        }
    }

    /// basic.get: takes the next ready message. `ack_expected` counts it as unacked.
    pub fn get(&self, ack_expected: bool) -> Option<(QueuedMessage, u32)> {
        let mut i = self.inner.lock();
        let qm = i.ready.pop_front()?;
        i.ready_bytes -= qm.msg.body.len();
        i.delivered += 1;
        if ack_expected {
            i.unacked += 1;
        }
        Some((qm, i.ready.len() as u32))
    }

    /// Settles `n` unacked messages (acked, or rejected without requeue).
    pub fn settle(&self, n: u32) {
        let mut i = self.inner.lock();
        i.unacked = i.unacked.saturating_sub(n);
        i.acked += n as u64;
    }

    /// Puts unacked messages back in their original places, marked redelivered, and delivers
    /// them again at once. Messages of a deleted queue are dropped.
    pub fn requeue(self: &Arc<Self>, mut msgs: Vec<QueuedMessage>) {
        let mut i = self.inner.lock();
        i.unacked = i.unacked.saturating_sub(msgs.len() as u32);
        if self.is_deleted() {
            return;
        }
        msgs.sort_unstable_by_key(|m| m.seq);
        for mut m in msgs.into_iter().rev() {
            m.redelivered = true;
            i.ready_bytes += m.msg.body.len();
            let at = i.ready.partition_point(|r| r.seq < m.seq);
            i.ready.insert(at, m);
        }
        self.dispatch_locked(&mut i);
    }

    /// Adds a consumer and starts delivering to it.
    pub fn add_consumer(self: &Arc<Self>, c: QueueConsumer, on_added: impl FnOnce()) -> Result<(), ConsumeRefused> {
        let mut i = self.inner.lock();
        if self.is_deleted() {
            return Err(ConsumeRefused::Deleted);
        }
        if c.exclusive && !i.consumers.is_empty() || i.consumers.iter().any(|x| x.exclusive) {
            return Err(ConsumeRefused::ExclusiveInUse);
        }
        i.consumers.push(c);
        i.had_consumer = true;
        on_added();
        self.dispatch_locked(&mut i);
        Ok(())
    }

    /// Removes a consumer. Deletes an auto-delete queue that has lost its last consumer.
    pub fn remove_consumer(self: &Arc<Self>, channel: &DeliveryChannel, consumer_id: u32) {
        let now_unused = {
            let mut i = self.inner.lock();
            let before = i.consumers.len();
            i.consumers.retain(|c| !(std::ptr::eq(&*c.channel, channel) && c.consumer_id == consumer_id));
            if i.next_consumer >= i.consumers.len() {
                i.next_consumer = 0;
            }
            before != i.consumers.len() && i.consumers.is_empty() && i.had_consumer
        };
        if now_unused && self.auto_delete {
            if let Some(vh) = self.vhost.upgrade() {
                vh.delete_queue_unchecked(&self.name);
            }
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut i = self.inner.lock();
        let n = i.ready.len() as u32;
        i.ready.clear();
        i.ready_bytes = 0;
        n
    }

    /// Marks the queue deleted, drops its messages and tells its consumers' channels (which
    /// send basic.cancel to clients that asked for it). Returns the ready count.
    pub(crate) fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        let (n, consumers) = {
            let mut i = self.inner.lock();
            let n = i.ready.len() as u32;
            i.ready.clear();
            i.ready_bytes = 0;
            (n, std::mem::take(&mut i.consumers))
        };
        for c in consumers {
            c.channel.consumer_cancelled_by_server(c.consumer_id);
        }
        n
    }
}
