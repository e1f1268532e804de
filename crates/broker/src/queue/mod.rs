//! A queue: its ready messages (in publish order), how many are out unacknowledged, its
//! consumers, and dispatch — round-robin among consumers that have prefetch credit.
//!
//! A requeued message goes back to its original place: ready messages are kept ordered by
//! their sequence number, so a requeue is an ordered insert (almost always at the front).
//!
//! Messages leaving for a dead-letter exchange are collected while the queue is locked and
//! published after the lock is released ([`Locked`]), so queues never lock each other.

mod options;
mod paged;
mod ready;

pub use options::{Overflow, QueueOptions};
use paged::PagedTail;
use ready::ReadyList;

use crate::channel::{Deliver, DeliveryChannel};
use crate::clock::now_ms;
use crate::deadletter::{DeadLetter, DeathReason};
use crate::message::Message;
use crate::persist::Persistence;
use crate::vhost::VHost;
use parking_lot::{Mutex, MutexGuard};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use warren_protocol::{FieldTable, ShortStr};
use warren_store::{Position, QueueStore, Recovery};

/// A message in a queue, with its place in publish order.
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// Where the message sits in the queue's store, if it was written there.
    pub pos: Option<Position>,
    pub priority: u8,
    /// When the message expires (ms on the broker's clock), from the queue's or its own TTL.
    pub expires_at: Option<u64>,
    /// Times the message went back to the queue (for `x-delivery-limit`).
    pub delivery_count: u32,
}

impl QueuedMessage {
    fn new(
        seq: u64,
        msg: Arc<Message>,
        pos: Option<Position>,
        redelivered: bool,
        opts: &QueueOptions,
    ) -> Self {
        let (mut priority, mut expires_at) = (0u8, opts.message_ttl.map(|t| now_ms() + t));
        use warren_protocol::properties::{flag, flags};
        let flags = flags(&msg.properties);
        // Only decode the properties when a priority or expiration is present and matters.
        let wants_priority = opts.max_priority > 0 && flags & flag::PRIORITY != 0;
        if wants_priority || flags & flag::EXPIRATION != 0 {
            let p = msg.props();
            if wants_priority {
                priority = p.priority.unwrap_or(0).min(opts.max_priority);
            }
            if let Some(ms) = p.expiration.as_ref().and_then(|e| e.parse::<u64>().ok()) {
                let at = now_ms() + ms;
                expires_at = Some(expires_at.map_or(at, |q| q.min(at)));
            }
        }
        QueuedMessage {
            seq,
            msg,
            redelivered,
            pos,
            priority,
            expires_at,
            delivery_count: 0,
        }
    }
}

/// Bytes of message bodies a durable queue keeps in memory; beyond this, new messages live
/// only in the store (about 4 bytes each in RAM) until the queue drains to them.
pub const RAM_BUDGET: usize = 16 << 20;

/// Most bytes of bodies one page-in reads (with the queue locked).
const PAGE_IN_BATCH: usize = 2 << 20;

/// Flow control: when a queue that has consumers holds more than this many ready messages,
/// or more than [`FLOW_HIGH_BYTES`] of bodies (or has paged out), publishers to it wait (as
/// RabbitMQ's credit flow makes them) until it is down to [`FLOW_LOW`] messages and
/// [`FLOW_LOW_BYTES`]. Counting bytes keeps a queue whose consumers keep up in memory: it only
/// pages when it has no consumers or they fall far behind. A queue without consumers takes
/// publishes at full speed.
pub const FLOW_HIGH: usize = 50_000;
pub const FLOW_LOW: usize = 25_000;
pub const FLOW_HIGH_BYTES: usize = RAM_BUDGET / 2;
pub const FLOW_LOW_BYTES: usize = RAM_BUDGET / 4;

/// A durable queue's message store and whether it has writes awaiting fsync.
pub(crate) struct StoreSlot {
    pub store: QueueStore,
    pub dirty: bool,
    scratch: Vec<u8>,
}

impl StoreSlot {
    /// Appends the record `encode` writes, reusing one buffer.
    fn append_with(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> warren_store::Result<Position> {
        let mut buf = std::mem::take(&mut self.scratch);
        encode(&mut buf);
        let r = self.store.append(&buf);
        self.scratch = buf;
        r
    }
}

/// What a queue did with a publish.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    /// The group-commit epoch the publisher's confirm waits for (persistent messages).
    pub epoch: Option<u64>,
    /// The queue's consumers are behind: the publisher should wait for it (flow control).
    pub backlogged: bool,
}

/// Why a publish was not accepted by a queue.
#[derive(Debug)]
pub enum PublishError {
    /// The store could not write the message (disk full, I/O error).
    Store(warren_store::StoreError),
    /// The queue is full and its overflow mode is reject-publish(-dlx).
    Rejected,
}

/// A consumer as the queue sees it: where to deliver and how.
pub struct QueueConsumer {
    pub channel: Arc<DeliveryChannel>,
    pub consumer_id: u32,
    pub tag: ShortStr,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers are served first.
    pub priority: i64,
}

struct Inner {
    opts: QueueOptions,
    ready: ReadyList,
    /// Messages paged out to the store, after everything in `ready`.
    paged: PagedTail,
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
    /// Messages on their way to the dead-letter exchange, published once the lock is released.
    dead: Vec<DeadLetter>,
    /// Last time the queue was used (ms), for `x-expires`.
    last_used: u64,
}

impl Inner {
    fn new(opts: QueueOptions) -> Self {
        Inner {
            ready: ReadyList::new(opts.max_priority),
            opts,
            paged: PagedTail::default(),
            ready_bytes: 0,
            unacked: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            had_consumer: false,
            published: 0,
            delivered: 0,
            acked: 0,
            dead: Vec::new(),
            last_used: now_ms(),
        }
    }

    fn len(&self) -> usize {
        self.ready.len() + self.paged.len()
    }

    /// Appends a message read back from the store (recovery, page-in) to the ready list.
    fn push_from_store(&mut self, msg: Message, pos: Position, redelivered: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += msg.body.len();
        let qm = QueuedMessage::new(seq, Arc::new(msg), Some(pos), redelivered, &self.opts);
        self.ready.push_back(qm);
    }

    /// Queues a message for the dead-letter exchange (if the queue has one) or drops it.
    fn dead_letter(&mut self, msg: Arc<Message>, reason: DeathReason) {
        if let Some(dlx) = &self.opts.dead_letter_exchange {
            self.dead.push(DeadLetter {
                msg,
                reason,
                exchange: dlx.clone(),
                routing_key: self.opts.dead_letter_routing_key.clone(),
            });
        }
    }
}

/// The queue's lock; dead letters gathered under it are published when it is released.
struct Locked<'a> {
    q: &'a Arc<Queue>,
    g: ManuallyDrop<MutexGuard<'a, Inner>>,
}

impl Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.g
    }
}
impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.g
    }
}
impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let dead = std::mem::take(&mut self.g.dead);
        // SAFETY: the guard is dropped exactly once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.g) };
        if !dead.is_empty() {
            if let Some(vh) = self.q.vhost.upgrade() {
                for d in dead {
                    vh.publish_dead_letter(self.q, d);
                }
            }
        }
    }
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
    persistence: Option<Arc<Persistence>>,
    /// The queue's message store: opened at declaration for a durable queue, or on first
    /// page-out for a transient one.
    store: std::sync::OnceLock<Mutex<StoreSlot>>,
    /// Whether the store keeps persistent messages across restarts (durable queues).
    durable_store: bool,
    /// Wakes publishers waiting for this queue's backlog to shrink.
    drained: tokio::sync::Notify,
    flow_waiting: AtomicBool,
    /// Registered with the vhost's timer (TTL, expiry).
    timed: AtomicBool,
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
            arguments: arguments.clone(),
            deleted: AtomicBool::new(false),
            inner: Mutex::new(Inner::new(QueueOptions::from_arguments(&arguments, None))),
            bindings: Mutex::new(Vec::new()),
            persistence: None,
            store: std::sync::OnceLock::new(),
            durable_store: false,
            drained: tokio::sync::Notify::new(),
            flow_waiting: AtomicBool::new(false),
            timed: AtomicBool::new(false),
        }
    }

    fn locked(self: &Arc<Self>) -> Locked<'_> {
        Locked {
            q: self,
            g: ManuallyDrop::new(self.inner.lock()),
        }
    }

    pub fn options(&self) -> QueueOptions {
        self.inner.lock().opts.clone()
    }

    /// Replaces the options (a policy changed); applies length limits at once.
    pub fn set_options(self: &Arc<Self>, opts: QueueOptions) {
        let needs_timer = opts.message_ttl.is_some() || opts.expires.is_some();
        let mut i = self.locked();
        i.opts = opts;
        self.enforce_limits(&mut i);
        self.dispatch_locked(&mut i);
        drop(i);
        if needs_timer {
            self.register_timer();
        }
    }

    /// Asks the vhost's timer to call [`Queue::tick`] (TTL and expiry need time to pass).
    pub(crate) fn register_timer(self: &Arc<Self>) {
        if !self.timed.swap(true, Ordering::AcqRel) {
            if let Some(vh) = self.vhost.upgrade() {
                vh.register_timed(self);
            }
        }
    }

    /// The queue was used (declared, consumed from, polled): restarts the `x-expires` clock.
    pub fn touch(&self) {
        self.inner.lock().last_used = now_ms();
    }

    /// Timer work: expire messages at the head, and delete the queue if it has been unused
    /// longer than `x-expires`. Returns false once the queue needs no more ticks.
    pub fn tick(self: &Arc<Self>, now: u64) -> bool {
        if self.is_deleted() {
            return false;
        }
        let expired = {
            let mut i = self.locked();
            self.expire_head(&mut i, now);
            match i.opts.expires {
                Some(ms) => i.consumers.is_empty() && now.saturating_sub(i.last_used) > ms,
                None => false,
            }
        };
        if expired {
            if let Some(vh) = self.vhost.upgrade() {
                tracing::info!(queue = %self.name, vhost = %self.vhost_name, "deleting queue: unused for longer than x-expires");
                vh.delete_queue_unchecked(&self.name);
            }
            return false;
        }
        true
    }

    /// Drops (dead-letters) expired messages at the head of the queue. Like RabbitMQ, only the
    /// head is examined, so this never scans the queue.
    fn expire_head(self: &Arc<Self>, i: &mut Inner, now: u64) {
        while let Some(front) = i.ready.front() {
            if front.expires_at.is_none_or(|at| at > now) {
                break;
            }
            let m = i.ready.pop_front().expect("front exists");
            i.ready_bytes -= m.msg.body.len();
            if let Some(pos) = m.pos {
                self.store_op(|s| s.ack(pos));
            }
            i.dead_letter(m.msg, DeathReason::Expired);
        }
    }

    /// Applies x-max-length / x-max-length-bytes with drop-head: the oldest messages go.
    fn enforce_limits(self: &Arc<Self>, i: &mut Inner) {
        if i.opts.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over = i.opts.max_length.is_some_and(|m| i.len() as u64 > m)
                || i.opts
                    .max_length_bytes
                    .is_some_and(|m| i.ready_bytes as u64 > m);
            if !over {
                return;
            }
            self.page_in(i);
            let Some(m) = i.ready.pop_front() else { return };
            i.ready_bytes -= m.msg.body.len();
            if let Some(pos) = m.pos {
                self.store_op(|s| s.ack(pos));
            }
            i.dead_letter(m.msg, DeathReason::Maxlen);
        }
    }

    /// Whether reject-publish refuses a message of `size` bytes now.
    fn full_for(i: &Inner, size: usize) -> bool {
        i.opts.overflow != Overflow::DropHead
            && (i.opts.max_length.is_some_and(|m| i.len() as u64 >= m)
                || i.opts
                    .max_length_bytes
                    .is_some_and(|m| (i.ready_bytes + size) as u64 > m))
    }

    /// Whether publishers should wait before sending more to this queue.
    pub fn over_flow_limit(&self) -> bool {
        Self::backlogged(&self.inner.lock())
    }

    /// Waits until the queue's backlog is below the low-water mark, its consumers are gone,
    /// or it is deleted.
    pub async fn wait_for_flow(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.flow_waiting.store(true, Ordering::Release);
            if self.is_deleted() || !self.over_flow_limit() {
                return;
            }
            // The timeout is a safety net; the queue notifies when it drains.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), notified).await;
        }
    }

    /// Gives a durable queue its message store.
    pub(crate) fn with_store(mut self, persistence: Arc<Persistence>, store: QueueStore) -> Self {
        self.persistence = Some(persistence);
        let _ = self.store.set(Mutex::new(StoreSlot {
            store,
            dirty: false,
            scratch: Vec::new(),
        }));
        self.durable_store = true;
        self
    }

    /// Lets a transient queue page its backlog out to disk.
    pub(crate) fn with_paging(mut self, persistence: Arc<Persistence>) -> Self {
        self.persistence = Some(persistence);
        self
    }

    /// The store, opening a transient queue's scratch store on first use.
    fn paging_store(&self) -> Option<&Mutex<StoreSlot>> {
        if let Some(s) = self.store.get() {
            return Some(s);
        }
        let p = self.persistence.as_ref()?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = p
            .transient_dir()
            .join(crate::persist::encode_name(&self.vhost_name))
            .join(format!("{}.{n}", crate::persist::encode_name(&self.name)));
        match p.open_store(dir) {
            Ok((mut store, _)) => {
                store.set_volatile();
                let _ = self.store.set(Mutex::new(StoreSlot {
                    store,
                    dirty: false,
                    scratch: Vec::new(),
                }));
                self.store.get()
            }
            Err(e) => {
                tracing::warn!(queue = %self.name, error = %e, "cannot open a paging store; the backlog stays in memory");
                None
            }
        }
    }

    /// Loads what the store recovered (its persistent messages; see `Persistence`): they come
    /// back redelivered if they had been delivered. What does not fit the memory budget stays
    /// on disk as the paged tail, so recovery reads no more of the backlog than that.
    pub(crate) fn recover(&self, mut recovery: Recovery) -> (u64, u64) {
        let mut i = self.inner.lock();
        let (mut restored, mut errors) = (0u64, 0u64);
        let mut dropped = Vec::new();
        while let Some(r) = recovery.next() {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    errors += 1;
                    tracing::warn!(queue = %self.name, error = %e, "unreadable message skipped during recovery");
                    continue;
                }
            };
            if i.ready_bytes >= RAM_BUDGET && i.opts.max_priority == 0 {
                let rest = recovery.remaining();
                i.paged = PagedTail::starting_at(r.position, rest + 1);
                restored += rest + 1;
                break;
            }
            let position = r.position;
            match Message::decode_record(r.payload) {
                Some((msg, _)) => {
                    restored += 1;
                    i.push_from_store(msg, position, r.redelivered);
                }
                None => {
                    errors += 1;
                    dropped.push(position);
                }
            }
        }
        drop(i);
        if let Some(slot) = self.store.get() {
            let mut st = slot.lock();
            for p in dropped {
                let _ = st.store.ack(p);
            }
        }
        (restored, errors)
    }

    /// fsync of the queue's store, called by the group-commit flusher. The disk work runs
    /// without the store's lock, so publishers and consumers of the queue go on meanwhile.
    /// With `full` false (the group commit), acks and delivered marks may be left for a later
    /// sync: the result says whether the queue needs one.
    pub(crate) fn sync_store(&self, full: bool) -> warren_store::Result<bool> {
        let Some(slot) = self.store.get() else {
            return Ok(false);
        };
        let (batch, again) = {
            let mut st = slot.lock();
            st.dirty = false;
            if full {
                (st.store.begin_sync()?, false)
            } else {
                st.store.begin_group_sync()?
            }
        };
        let outcome = batch.run();
        slot.lock().store.end_sync(outcome)?;
        Ok(again)
    }

    pub fn is_durable_store(&self) -> bool {
        self.durable_store
    }

    /// Writes a message to the store. Returns its position and the group-commit epoch to wait
    /// for. Called with the persistence gate held (read).
    fn store_append(
        self: &Arc<Self>,
        msg: &Message,
        persistent: bool,
        tx: Option<u64>,
    ) -> Result<Position, PublishError> {
        let (slot, p) = match (self.store.get(), &self.persistence) {
            (Some(s), Some(p)) => (s, p),
            _ => unreachable!("store_append on a queue without a store"),
        };
        let mut st = slot.lock();
        let pos = st
            .append_with(|buf| msg.encode_record(persistent, tx.filter(|_| persistent), buf))
            .map_err(PublishError::Store)?;
        self.enlist_written(&mut st, p);
        Ok(pos)
    }

    /// The store was written to: the flusher syncs it in the next group commit. A transient
    /// queue's paging store never needs an fsync.
    fn enlist_written(self: &Arc<Self>, st: &mut StoreSlot, p: &Persistence) {
        if !st.dirty && self.durable_store {
            st.dirty = true;
            p.enlist(self);
        }
    }

    /// Ends transaction `tx`'s records in this queue's store (see [`Queue::publish_in`]).
    /// Returns the group-commit epoch after which the whole transaction is on disk.
    pub fn end_transaction(self: &Arc<Self>, tx: u64) -> warren_store::Result<u64> {
        let (Some(slot), Some(p), true) = (self.store.get(), &self.persistence, self.durable_store)
        else {
            return Ok(0);
        };
        let _gate = p.gate.read();
        let epoch = p.current_epoch();
        let mut st = slot.lock();
        let pos = st.append_with(|buf| Message::encode_tx_end(tx, buf))?;
        // Not a message: acked at once, so reading and reclaiming skip it.
        st.store.ack(pos)?;
        self.enlist_written(&mut st, p);
        Ok(epoch)
    }

    /// Records an ack or delivered mark; the flusher writes it out with the next group commit
    /// (marks need no confirm, so no epoch is taken).
    fn store_op(self: &Arc<Self>, f: impl FnOnce(&mut QueueStore) -> warren_store::Result<()>) {
        if let (Some(slot), Some(p)) = (self.store.get(), &self.persistence) {
            let mut st = slot.lock();
            if let Err(e) = f(&mut st.store) {
                // Nothing new to sync (a poisoned store fails every write): enlisting the
                // queue would only fail the next group commit for everyone in it.
                tracing::warn!(queue = %self.name, error = %e, "message store write failed");
                return;
            }
            self.enlist_written(&mut st, p);
        }
    }

    /// Loads paged-out messages back into memory while the in-memory part is below half the
    /// budget, at most [`PAGE_IN_BATCH`] bytes per call (the queue's lock is held meanwhile).
    fn page_in(&self, i: &mut Inner) {
        if i.paged.is_empty() || i.ready_bytes >= RAM_BUDGET / 2 {
            return;
        }
        let Some(slot) = self.store.get() else { return };
        let want = (RAM_BUDGET / 2 - i.ready_bytes).min(PAGE_IN_BATCH);
        let read = slot.lock().store.read_batch(i.paged.head(), want);
        let (batch, next) = match read {
            Ok(found) => found,
            Err(e) => {
                // Without the record's length there is no next position: give up on the tail
                // rather than spin on it (its records stay on disk for a restart).
                let lost = i.paged.clear();
                tracing::error!(queue = %self.name, error = %e, lost, "paged-out messages unreadable; dropped until restart");
                return;
            }
        };
        if batch.is_empty() {
            let lost = i.paged.clear();
            tracing::error!(queue = %self.name, lost, "the store ended before the paged-out messages did");
            return;
        }
        // Paged-out messages are all there is after the head, so the batch never runs past
        // the tail; cap it anyway so the count stays true.
        let n = batch.len().min(i.paged.len());
        i.paged.advance_by(n as u64, next);
        for rec in batch.into_iter().take(n) {
            match Message::decode_record(rec.payload) {
                Some((msg, _)) => i.push_from_store(msg, rec.position, rec.redelivered),
                None => {
                    tracing::error!(queue = %self.name, pos = %rec.position, "paged-out message undecodable; dropped")
                }
            }
        }
    }

    /// Drops the record of a binding from `exchange` that was removed.
    pub(crate) fn forget_binding(&self, exchange: &ShortStr, b: &crate::exchange::Binding) {
        self.bindings.lock().retain(|(e, k, a)| {
            !(e == exchange && *k == b.routing_key && a.same_entries(&b.arguments))
        });
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> QueueStats {
        let i = self.inner.lock();
        QueueStats {
            messages_ready: (i.ready.len() + i.paged.len()) as u64,
            messages_unacknowledged: i.unacked as u64,
            message_bytes_ready: i.ready_bytes as u64,
            consumers: i.consumers.len() as u64,
            published: i.published,
            delivered: i.delivered,
            acked: i.acked,
        }
    }

    pub fn message_count(&self) -> u32 {
        let i = self.inner.lock();
        (i.ready.len() + i.paged.len()) as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers.len() as u32
    }

    /// Consumer tags and channels, for listing.
    pub fn consumers(&self) -> Vec<(ShortStr, Arc<DeliveryChannel>, bool, bool)> {
        self.inner
            .lock()
            .consumers
            .iter()
            .map(|c| (c.tag.clone(), c.channel.clone(), c.no_ack, c.exclusive))
            .collect()
    }

    /// Enqueues a routed message and hands it to a consumer if one has credit. A persistent
    /// message in a durable queue is written to the store first; the returned epoch is the
    /// group commit its confirm waits for.
    pub fn publish(
        self: &Arc<Self>,
        msg: Arc<Message>,
        persistent: bool,
    ) -> Result<Published, PublishError> {
        self.publish_in(msg, persistent, None)
    }

    /// [`Queue::publish`] within transaction `tx` (at its commit): the store record names the
    /// transaction, and [`Queue::end_transaction`] must follow once all of its publishes are
    /// done, or a restart drops them.
    pub fn publish_in(
        self: &Arc<Self>,
        msg: Arc<Message>,
        persistent: bool,
        tx: Option<u64>,
    ) -> Result<Published, PublishError> {
        if self.is_deleted() {
            return Ok(Published::default());
        }
        let mut i = self.locked();
        if Self::full_for(&i, msg.body.len()) {
            if i.opts.overflow == Overflow::RejectPublishDlx {
                i.dead_letter(msg, DeathReason::Maxlen);
            }
            return Err(PublishError::Rejected);
        }
        let durable_write = persistent && self.durable_store;
        let paging = (!i.paged.is_empty() || i.ready_bytes >= RAM_BUDGET)
            && i.opts.max_priority == 0
            && self.paging_store().is_some();
        let (Some(p), true) = (&self.persistence, durable_write || paging) else {
            self.enqueue(&mut i, msg, None);
            return Ok(Published {
                epoch: None,
                backlogged: Self::backlogged(&i),
            });
        };
        // The gate makes "read the epoch, append, enlist" atomic with respect to the flusher
        // closing the epoch; it is held for just that.
        let (epoch, pos) = {
            let _gate = p.gate.read();
            (
                p.current_epoch(),
                self.store_append(&msg, durable_write, tx)?,
            )
        };
        let persistent = durable_write;
        if paging {
            i.published += 1;
            i.paged.push_back(pos);
            self.enforce_limits(&mut i);
        } else {
            self.enqueue(&mut i, msg, Some(pos));
        }
        Ok(Published {
            epoch: persistent.then_some(epoch),
            backlogged: Self::backlogged(&i),
        })
    }

    fn backlogged(i: &Inner) -> bool {
        !i.consumers.is_empty()
            && (i.len() > FLOW_HIGH || i.ready_bytes > FLOW_HIGH_BYTES || !i.paged.is_empty())
    }

    fn drained_enough(i: &Inner) -> bool {
        i.len() <= FLOW_LOW && i.ready_bytes <= FLOW_LOW_BYTES && i.paged.is_empty()
    }

    fn enqueue(self: &Arc<Self>, i: &mut Inner, msg: Arc<Message>, pos: Option<Position>) {
        let seq = i.next_seq;
        i.next_seq += 1;
        i.published += 1;
        i.ready_bytes += msg.body.len();
        let qm = QueuedMessage::new(seq, msg, pos, false, &i.opts);
        if qm.expires_at.is_some() && !self.timed.load(Ordering::Relaxed) {
            self.register_timer();
        }
        i.ready.push_back(qm);
        self.enforce_limits(i);
        // A message that expires the instant it arrives (TTL 0) still goes to a consumer
        // waiting for it, as in RabbitMQ; it is dropped otherwise.
        self.dispatch_with(i, true);
    }

    /// Delivers ready messages while some consumer has credit.
    pub fn dispatch(self: &Arc<Self>) {
        let mut i = self.locked();
        self.dispatch_locked(&mut i);
    }

    fn dispatch_locked(self: &Arc<Self>, i: &mut Inner) {
        self.dispatch_with(i, false);
    }

    fn dispatch_with(self: &Arc<Self>, i: &mut Inner, arriving: bool) {
        self.dispatch_inner(i, arriving);
        if Self::drained_enough(i) && self.flow_waiting.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
    }

    fn dispatch_inner(self: &Arc<Self>, i: &mut Inner, arriving: bool) {
        self.page_in(i);
        let mut now = if i.opts.message_ttl.is_some() || self.timed.load(Ordering::Relaxed) {
            now_ms()
        } else {
            0
        };
        if arriving {
            now = now.saturating_sub(1);
        }
        while !i.consumers.is_empty() {
            if now != 0 {
                self.expire_head(i, now);
            }
            if i.ready.is_empty() {
                return;
            }
            match self.pick_consumer(i) {
                Some(idx) => self.delivered_to(i, idx),
                None => return,
            }
        }
    }

    /// Offers the head message to consumers: the highest consumer priority first, round-robin
    /// within a priority; with single active consumer, only the first consumer. Returns the
    /// index of the consumer that took it.
    fn pick_consumer(self: &Arc<Self>, i: &mut Inner) -> Option<usize> {
        let front = i.ready.front()?;
        let n = i.consumers.len();
        let mut start = 0;
        while start < n {
            let prio = i.consumers[start].priority;
            let end = if i.opts.single_active_consumer {
                1
            } else {
                i.consumers[start..]
                    .iter()
                    .position(|c| c.priority != prio)
                    .map_or(n, |k| start + k)
            };
            let size = end - start;
            for k in 0..size {
                let idx = start + (i.next_consumer + k) % size;
                let c = &i.consumers[idx];
                let taken = c.channel.deliver(Deliver {
                    queue: self,
                    consumer_id: c.consumer_id,
                    tag: &c.tag,
                    no_ack: c.no_ack,
                    qm: front,
                });
                if taken {
                    i.next_consumer = (idx - start + 1) % size;
                    return Some(idx);
                }
            }
            if i.opts.single_active_consumer {
                return None;
            }
            start = end;
        }
        None
    }

    /// Bookkeeping after consumer `idx` took the head message.
    fn delivered_to(self: &Arc<Self>, i: &mut Inner, idx: usize) {
        let no_ack = i.consumers[idx].no_ack;
        let qm = i
            .ready
            .pop_front()
            .expect("a consumer took the head message");
        i.ready_bytes -= qm.msg.body.len();
        i.delivered += 1;
        if let Some(pos) = qm.pos {
            if no_ack {
                self.store_op(|s| s.ack(pos));
            } else if !qm.redelivered {
                self.store_op(|s| s.mark_delivered(pos));
            }
        }
        if !no_ack {
            i.unacked += 1;
        }
        if i.ready.is_empty() {
            self.page_in(i);
        }
    }

    /// basic.get: takes the next ready message. `ack_expected` counts it as unacked.
    pub fn get(self: &Arc<Self>, ack_expected: bool) -> Option<(QueuedMessage, u32)> {
        let mut i = self.locked();
        i.last_used = now_ms();
        self.page_in(&mut i);
        let now = now_ms();
        self.expire_head(&mut i, now);
        let qm = i.ready.pop_front()?;
        i.ready_bytes -= qm.msg.body.len();
        i.delivered += 1;
        if let Some(pos) = qm.pos {
            if !ack_expected {
                self.store_op(|s| s.ack(pos));
            } else if !qm.redelivered {
                self.store_op(|s| s.mark_delivered(pos));
            }
        }
        if ack_expected {
            i.unacked += 1;
        }
        Some((qm, (i.ready.len() + i.paged.len()) as u32))
    }

    /// basic.reject / basic.nack without requeue: the messages leave the queue for its
    /// dead-letter exchange (reason `rejected`), or are dropped.
    pub fn reject<'a>(self: &Arc<Self>, msgs: impl Iterator<Item = &'a QueuedMessage> + Clone) {
        self.settle(msgs.clone());
        let mut i = self.locked();
        if i.opts.dead_letter_exchange.is_some() {
            for m in msgs {
                i.dead_letter(m.msg.clone(), DeathReason::Rejected);
            }
        }
    }

    /// Settles unacked messages (acked, or rejected without requeue): they leave the store.
    pub fn settle<'a>(self: &Arc<Self>, msgs: impl Iterator<Item = &'a QueuedMessage>) {
        let mut n = 0u32;
        if self.store.get().is_some() {
            self.store_op(|s| {
                for m in msgs {
                    n += 1;
                    if let Some(pos) = m.pos {
                        s.ack(pos)?;
                    }
                }
                Ok(())
            });
        } else {
            n = msgs.count() as u32;
        }
        let mut i = self.inner.lock();
        i.unacked = i.unacked.saturating_sub(n);
        i.acked += n as u64;
    }

    /// Puts unacked messages back in their original places, marked redelivered, and delivers
    /// them again at once. Messages of a deleted queue are dropped.
    pub fn requeue(self: &Arc<Self>, mut msgs: Vec<QueuedMessage>) {
        let mut i = self.locked();
        i.unacked = i.unacked.saturating_sub(msgs.len() as u32);
        if self.is_deleted() {
            return;
        }
        let limit = i.opts.delivery_limit;
        let count_deliveries = limit.is_some() || i.opts.quorum;
        msgs.sort_unstable_by_key(|m| m.seq);
        for mut m in msgs.into_iter().rev() {
            m.redelivered = true;
            if count_deliveries {
                m.delivery_count += 1;
                if limit.is_some_and(|l| m.delivery_count as u64 > l) {
                    if let Some(pos) = m.pos {
                        self.store_op(|s| s.ack(pos));
                    }
                    i.dead_letter(m.msg, DeathReason::DeliveryLimit);
                    continue;
                }
                m.msg = Arc::new(
                    m.msg
                        .with_header("x-delivery-count", m.delivery_count as i64),
                );
            }
            i.ready_bytes += m.msg.body.len();
            i.ready.insert_ordered(m);
        }
        self.dispatch_locked(&mut i);
    }

    /// Adds a consumer and starts delivering to it.
    pub fn add_consumer(
        self: &Arc<Self>,
        c: QueueConsumer,
        on_added: impl FnOnce(),
    ) -> Result<(), ConsumeRefused> {
        let mut i = self.locked();
        if self.is_deleted() {
            return Err(ConsumeRefused::Deleted);
        }
        if c.exclusive && !i.consumers.is_empty() || i.consumers.iter().any(|x| x.exclusive) {
            return Err(ConsumeRefused::ExclusiveInUse);
        }
        // Kept in descending consumer priority, in arrival order within a priority (the first
        // one is the single active consumer).
        let at = i
            .consumers
            .iter()
            .position(|x| x.priority < c.priority)
            .unwrap_or(i.consumers.len());
        i.consumers.insert(at, c);
        i.had_consumer = true;
        i.last_used = now_ms();
        on_added();
        self.dispatch_locked(&mut i);
        Ok(())
    }

    /// Removes a consumer. Deletes an auto-delete queue that has lost its last consumer.
    pub fn remove_consumer(self: &Arc<Self>, channel: &DeliveryChannel, consumer_id: u32) {
        let now_unused = {
            let mut i = self.locked();
            i.last_used = now_ms();
            let before = i.consumers.len();
            i.consumers
                .retain(|c| !(std::ptr::eq(&*c.channel, channel) && c.consumer_id == consumer_id));
            if i.next_consumer >= i.consumers.len() {
                i.next_consumer = 0;
            }
            // A single active consumer's successor starts at once.
            self.dispatch_locked(&mut i);
            before != i.consumers.len() && i.consumers.is_empty() && i.had_consumer
        };
        if self.flow_waiting.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
        if now_unused && self.auto_delete {
            if let Some(vh) = self.vhost.upgrade() {
                vh.delete_queue_unchecked(&self.name);
            }
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(self: &Arc<Self>) -> u32 {
        let mut i = self.inner.lock();
        let n = (i.ready.len() + i.paged.len()) as u32;
        let ready = i.ready.drain();
        let paged_from = (!i.paged.is_empty()).then(|| i.paged.head());
        i.paged.clear();
        i.ready_bytes = 0;
        let unacked = i.unacked;
        self.store_op(|s| {
            if unacked == 0 {
                // Nothing in the store outlives the purge: drop it whole.
                return s.purge().map(|_| ());
            }
            for pos in ready.iter().filter_map(|m| m.pos) {
                s.ack(pos)?;
            }
            if let Some(from) = paged_from {
                s.ack_from(from)?;
            }
            Ok(())
        });
        n
    }

    /// Marks the queue deleted, drops its messages and tells its consumers' channels (which
    /// send basic.cancel to clients that asked for it). Returns the ready count.
    pub(crate) fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        self.drained.notify_waiters();
        let (n, consumers) = {
            let mut i = self.inner.lock();
            let n = (i.ready.len() + i.paged.len()) as u32;
            i.ready.drain();
            i.paged.clear();
            i.ready_bytes = 0;
            (n, std::mem::take(&mut i.consumers))
        };
        if let Some(slot) = self.store.get() {
            let mut st = slot.lock();
            let dir = st.store.dir().to_path_buf();
            // Empty the store, then remove its directory (the store is dropped with the queue).
            if let Err(e) = st.store.purge() {
                tracing::warn!(queue = %self.name, error = %e, "purging the deleted queue's store failed");
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        for c in consumers {
            c.channel.consumer_cancelled_by_server(c.consumer_id);
        }
        n
    }
}
