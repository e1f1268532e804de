//! A queue: the [`engine`] that decides everything about its messages and consumers, and
//! around it what the engine leaves to its caller: the lock, the message store (appends,
//! marks, paging reads, fsync through the group commit), the clock, the vhost's timer, flow
//! control wake-ups, and publishing dead letters once the lock is released ([`Locked`]), so
//! queues never lock each other.
//!
//! Layout: [`engine`] (the state machine), [`command`] (its commands as values, for a
//! replicated log), `ready` (the ready list by priority and publish order), `paged` (the part of the backlog that lives only in the store), [`options`] (the
//! queue's arguments and policy), [`followups`] (what a command leaves for the vhost: dead
//! letters, the timer, deletion; a queue does not hold its vhost), [`replica`] (a queue whose
//! engine is a Raft group's state machine, or the stand-in of a classic queue of another
//! node: the interface to crates/cluster), `replicated` (the queue's commands when it is
//! one) and [`home`] (a classic queue of this node served to the other nodes).

pub mod command;
pub mod engine;
pub mod followups;
pub mod home;
pub mod options;
mod paged;
mod ready;
pub mod replica;
mod replicated;

pub use command::{Applied, Deliveries, LoggedMessage, Publisher, QueueCommand};
pub use engine::snapshot::{is_dry, EngineSnapshot};
pub use engine::{
    Checkout, CheckoutId, CheckoutKey, ConsumeRefused, Consumer, Effect, EngineStats, Env, Got,
    Owner, QueueEngine, Rejected,
};
pub use followups::{DeleteReason, Followup, Followups};
pub use options::{Overflow, QueueOptions};

use crate::clock::now_ms;
use crate::deadletter::DeadLetter;
use crate::delivery::{Deliver, DeliveryChannel};
use crate::message::Message;
use crate::persist::Persistence;
use parking_lot::{Mutex, MutexGuard};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use warren_protocol::properties::{flag, has};
use warren_protocol::{FieldTable, FieldValue, ShortStr};
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
        now: u64,
    ) -> Self {
        let (mut priority, mut expires_at) = (0u8, opts.message_ttl.map(|t| now + t));
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
                let at = now + ms;
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
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// The group-commit epoch the publisher's confirm waits for (persistent messages).
    pub epoch: Option<u64>,
    /// A replicated queue's publish: the confirm waits for its commit.
    pub commit: Option<Arc<replica::Commit>>,
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

/// A consumer as a queue sees it: its channel, tag and options.
pub type QueueConsumer = Consumer<Arc<DeliveryChannel>>;

/// Counters for list_queues and the management API.
pub type QueueStats = EngineStats;

/// The queue's lock. The engine's effects are carried out when it is released: store marks
/// while the lock is still held (so they follow the queue's own order); dead letters and the
/// timer become follow-ups for the caller's vhost.
struct Locked<'a> {
    q: &'a Arc<Queue>,
    g: ManuallyDrop<MutexGuard<'a, QueueEngine<Arc<DeliveryChannel>>>>,
    /// Where dead letters and the timer go; None for commands that never produce them.
    fu: Option<&'a mut Followups>,
}

impl Deref for Locked<'_> {
    type Target = QueueEngine<Arc<DeliveryChannel>>;
    fn deref(&self) -> &Self::Target {
        &self.g
    }
}
impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.g
    }
}
impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let (dead, start_timer) = if self.g.has_effects() {
            let q = self.q;
            q.apply_effects(self.g.drain_effects())
        } else {
            (Vec::new(), false)
        };
        // SAFETY: the guard is dropped exactly once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.g) };
        if !start_timer && dead.is_empty() {
            return;
        }
        let Some(fu) = self.fu.as_deref_mut() else {
            debug_assert!(
                false,
                "a quiet queue command produced dead letters or a timer"
            );
            tracing::error!(queue = %self.q.name, "dead letters dropped: the command had no follow-ups");
            return;
        };
        if start_timer {
            self.q.timer_followup(fu);
        }
        for d in dead {
            fu.push(Followup::DeadLetter(self.q.clone(), d));
        }
    }
}

/// What the engine reaches through while the queue is locked: the consumers' channels and the
/// queue's store.
struct QueueEnv<'a> {
    q: &'a Arc<Queue>,
}

impl Env<Arc<DeliveryChannel>> for QueueEnv<'_> {
    fn offer(&mut self, c: &QueueConsumer, qm: &QueuedMessage, checkout: CheckoutId) -> bool {
        c.handle.deliver(Deliver {
            queue: self.q,
            consumer_id: c.consumer_id,
            tag: &c.tag,
            no_ack: c.no_ack,
            qm,
            checkout,
            decided: false,
        })
    }

    fn read_paged(
        &mut self,
        from: Position,
        max_bytes: usize,
    ) -> warren_store::Result<(Vec<warren_store::RecoveredMessage>, Position)> {
        match self.q.store.get() {
            Some(slot) => {
                let r = slot.lock().store.read_batch(from, max_bytes);
                if let Ok((msgs, _)) = &r {
                    self.q.disk_reads.add(msgs.len() as u64);
                }
                r
            }
            None => Ok((Vec::new(), from)),
        }
    }

    fn can_spill(&self) -> bool {
        self.q.store.get().is_some() || self.q.persistence.is_some()
    }

    fn spill(&mut self, msg: &Message) -> Option<Position> {
        let slot = self.q.paging_store()?;
        // A transient record: memory relief only, dropped at a restart (a persistent message
        // is in the store already and never comes here). No fsync is asked for.
        match slot
            .lock()
            .append_with(|buf| msg.encode_record(false, None, buf))
        {
            Ok(pos) => {
                self.q.disk_writes.add(1);
                Some(pos)
            }
            Err(e) => {
                tracing::warn!(queue = %self.q.name, error = %e, "cannot spill an unacked message; it stays in memory");
                None
            }
        }
    }

    fn read_spilled(
        &mut self,
        positions: &[Position],
        max_bytes: usize,
    ) -> Vec<warren_store::Result<bytes::Bytes>> {
        let Some(slot) = self.q.store.get() else {
            return positions
                .iter()
                .map(|&position| Err(warren_store::StoreError::UnknownPosition { position }))
                .collect();
        };
        let out = slot.lock().store.read_many(positions, max_bytes);
        self.q.disk_reads.add(out.len() as u64);
        out
    }
}

/// The declared properties of a queue and its live state.
pub struct Queue {
    pub name: ShortStr,
    pub vhost_name: String,
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    deleted: AtomicBool,
    inner: Mutex<QueueEngine<Arc<DeliveryChannel>>>,
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
    /// A stream (`x-queue-type: stream`) keeps its messages and consumers here instead of in
    /// the engine; the methods below hand them over.
    stream: Option<Box<crate::stream::Stream>>,
    /// A quorum queue replicated with Raft: its engine is the group's state machine, and
    /// `inner` stays empty. Unset for every other queue.
    replica: std::sync::OnceLock<Arc<dyn replica::Replica>>,
    /// In a cluster: the node a classic queue lives on, when every node knows it (this node
    /// for the queue itself; another for a stand-in, whose `replica` reaches it).
    home: std::sync::OnceLock<String>,
    /// A replicated queue's consumers by owner (its engine names consumers by owner only).
    replica_consumers: Mutex<rustc_hash::FxHashMap<Owner, replicated::ReplicaConsumer>>,
    /// Consumers of this node that a replicated queue's engine handed messages to and that
    /// this node does not serve, with when their removal was last asked (see `hand_out`).
    unserved_asked: Mutex<rustc_hash::FxHashMap<Owner, u64>>,
    /// How many times this node's member of a replicated queue's group was restored from
    /// the leader's snapshot (a consumer subscribing meanwhile starts again: see
    /// `Queue::add_consumer_replicated`).
    replica_restores: std::sync::atomic::AtomicU64,
    /// Where a replicated queue's follow-ups go (they arise on Raft's threads, after the
    /// command that caused them has returned): its vhost.
    followups_sink: std::sync::OnceLock<replica::FollowupSink>,
    /// Messages read back from the store (paged in, recovered) and written to it (persistent
    /// or paged out): RabbitMQ's `disk_reads` / `disk_writes`. Written under the queue's lock.
    disk_reads: crate::stats::Counter,
    disk_writes: crate::stats::Counter,
}

impl Queue {
    pub fn new(
        name: ShortStr,
        vhost_name: &str,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> Self {
        Queue {
            name,
            vhost_name: vhost_name.to_string(),
            durable,
            exclusive_owner,
            auto_delete,
            arguments: arguments.clone(),
            deleted: AtomicBool::new(false),
            inner: Mutex::new(QueueEngine::new(
                QueueOptions::from_arguments(&arguments, None),
                now_ms(),
            )),
            bindings: Mutex::new(Vec::new()),
            persistence: None,
            store: std::sync::OnceLock::new(),
            durable_store: false,
            drained: tokio::sync::Notify::new(),
            flow_waiting: AtomicBool::new(false),
            timed: AtomicBool::new(false),
            stream: None,
            replica: std::sync::OnceLock::new(),
            home: std::sync::OnceLock::new(),
            replica_consumers: Mutex::new(Default::default()),
            unserved_asked: Mutex::new(Default::default()),
            replica_restores: Default::default(),
            followups_sink: std::sync::OnceLock::new(),
            disk_reads: Default::default(),
            disk_writes: Default::default(),
        }
    }

    /// Makes this queue a stream with `stream` as its log.
    pub(crate) fn with_stream(
        mut self,
        persistence: Arc<Persistence>,
        stream: crate::stream::Stream,
    ) -> Self {
        self.persistence = Some(persistence);
        self.stream = Some(Box::new(stream));
        self
    }

    /// The stream, if this queue is one.
    pub fn stream(&self) -> Option<&crate::stream::Stream> {
        self.stream.as_deref()
    }

    /// Locks the queue for a command whose dead letters and timer go to `fu`.
    fn locked<'a>(self: &'a Arc<Self>, fu: &'a mut Followups) -> Locked<'a> {
        Locked {
            q: self,
            g: ManuallyDrop::new(self.inner.lock()),
            fu: Some(fu),
        }
    }

    /// Locks the queue for a command that only ever marks the store (purge, recovery).
    fn locked_quiet(self: &Arc<Self>) -> Locked<'_> {
        Locked {
            q: self,
            g: ManuallyDrop::new(self.inner.lock()),
            fu: None,
        }
    }

    pub fn options(&self) -> QueueOptions {
        if let Some(r) = self.replica.get() {
            return replicated::read(r, |e| e.options().clone());
        }
        self.inner.lock().options().clone()
    }

    /// Replaces the options (a policy changed); applies length limits at once.
    pub fn set_options(self: &Arc<Self>, opts: QueueOptions, fu: &mut Followups) {
        if let Some(r) = self.replica.get() {
            return self.set_options_replicated(r, opts, fu);
        }
        let needs_timer = opts.message_ttl.is_some() || opts.expires.is_some();
        let mut i = self.locked(fu);
        i.set_options(opts, now_ms(), &mut QueueEnv { q: self });
        self.notify_flow(&i);
        drop(i);
        if needs_timer {
            self.timer_followup(fu);
        }
    }

    /// Asks the vhost's timer to call [`Queue::tick`] (TTL and expiry need time to pass), once.
    pub(crate) fn timer_followup(self: &Arc<Self>, fu: &mut Followups) {
        if !self.timed.swap(true, Ordering::AcqRel) {
            fu.push(Followup::StartTimer(self.clone()));
        }
    }

    /// The queue was used (declared, consumed from, polled): restarts the `x-expires` clock.
    pub fn touch(&self) {
        if let Some(r) = self.replica.get() {
            return r.touch(now_ms());
        }
        self.inner.lock().touch(now_ms());
    }

    /// Timer work: expire messages at the head, and delete the queue if it has been unused
    /// longer than `x-expires`. Returns false once the queue needs no more ticks.
    pub fn tick(self: &Arc<Self>, now: u64, fu: &mut Followups) -> bool {
        if self.is_deleted() {
            return false;
        }
        if let Some(r) = self.replica.get() {
            return self.tick_replicated(r, now);
        }
        let expired = self.locked(fu).tick(now);
        if expired {
            fu.push(Followup::Delete(self.clone(), DeleteReason::Expired));
            return false;
        }
        true
    }

    /// Carries out the engine's effects: store marks now (the queue is still locked, and the
    /// store is locked once for all of them), and returns the dead letters to publish and
    /// whether the timer must start.
    fn apply_effects(
        self: &Arc<Self>,
        effects: impl Iterator<Item = Effect>,
    ) -> (Vec<DeadLetter>, bool) {
        let mut dead = Vec::new();
        let mut start_timer = false;
        let mut store = None;
        let mut marked = false;
        for e in effects {
            let mark = match e {
                Effect::DeadLetter(d) => {
                    dead.push(d);
                    continue;
                }
                Effect::StartTimer => {
                    start_timer = true;
                    continue;
                }
                mark => mark,
            };
            let Some(slot) = self.store.get() else {
                continue;
            };
            let st = store.get_or_insert_with(|| slot.lock());
            let r = match mark {
                Effect::StoreAck(pos) => st.store.ack(pos),
                Effect::StoreDelivered(pos) => st.store.mark_delivered(pos),
                Effect::StoreAckFrom(pos) => st.store.ack_from(pos).map(drop),
                Effect::StorePurge => st.store.purge().map(drop),
                Effect::DeadLetter(_) | Effect::StartTimer => Ok(()),
            };
            match r {
                Ok(()) => marked = true,
                // Nothing new to sync (a poisoned store fails every write): enlisting the
                // queue would only fail the next group commit for everyone in it.
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "message store write failed")
                }
            }
        }
        if let (Some(mut st), Some(p), true) = (store, &self.persistence, marked) {
            self.enlist_written(&mut st, p);
        }
        (dead, start_timer)
    }

    /// Wakes publishers held by flow control once the queue has drained enough.
    fn notify_flow(&self, i: &QueueEngine<Arc<DeliveryChannel>>) {
        if i.drained_enough() {
            self.wake_flow_waiters();
        }
    }

    /// Wakes the publishers waiting in [`Queue::wait_for_flow`], if any (they look again).
    fn wake_flow_waiters(&self) {
        if self.flow_waiting.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
    }

    /// Whether publishers should wait before sending more to this queue.
    pub fn over_flow_limit(&self) -> bool {
        if let Some(r) = self.replica.get() {
            return replicated::over_flow_limit(r);
        }
        self.inner.lock().backlogged()
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
                // Only ever called with the queue locked: no one else can have set it.
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
    pub(crate) fn recover(
        self: &Arc<Self>,
        mut recovery: Recovery,
        fu: &mut Followups,
    ) -> (u64, u64) {
        let mut i = self.inner.lock();
        let now = now_ms();
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
            if i.memory_full() {
                let rest = recovery.remaining();
                i.set_paged_tail(r.position, rest + 1);
                restored += rest + 1;
                break;
            }
            let position = r.position;
            match Message::decode_record(r.payload) {
                Some((msg, _)) => {
                    restored += 1;
                    self.disk_reads.add(1);
                    i.push_from_store(msg, position, r.redelivered, now);
                }
                None => {
                    errors += 1;
                    dropped.push(position);
                }
            }
        }
        // Recovered messages with their own TTL need the timer.
        let start_timer = i
            .take_effects()
            .iter()
            .any(|e| matches!(e, Effect::StartTimer));
        drop(i);
        if start_timer {
            self.timer_followup(fu);
        }
        if let Some(slot) = self.store.get() {
            let mut st = slot.lock();
            for p in dropped {
                if let Err(e) = st.store.ack(p) {
                    tracing::warn!(queue = %self.name, error = %e, "could not drop an undecodable record; it is skipped again at the next start");
                }
            }
        }
        (restored, errors)
    }

    /// fsync of the queue's store, called by the group-commit flusher. The disk work runs
    /// without the store's lock, so publishers and consumers of the queue go on meanwhile.
    /// With `full` false (the group commit), acks and delivered marks may be left for a later
    /// sync: the result says whether the queue needs one.
    pub(crate) fn sync_store(&self, full: bool) -> warren_store::Result<bool> {
        if let Some(s) = &self.stream {
            return s.sync();
        }
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

    /// A quorum queue replicated with Raft (see [`replica`]), or the stand-in of a classic
    /// queue of another node (its commands go there the same way).
    pub fn is_replicated(&self) -> bool {
        self.replica.get().is_some()
    }

    /// In a cluster: the node this classic queue lives on, when every node knows it.
    pub fn home(&self) -> Option<&str> {
        self.home.get().map(String::as_str)
    }

    /// A stand-in whose home node is down: that node's name.
    pub fn home_down(&self) -> Option<String> {
        self.replica.get()?.home_down()
    }

    /// Whether it stands in for a classic queue of another node (see [`home`]).
    pub fn is_remote(&self) -> bool {
        self.home.get().is_some() && self.replica.get().is_some()
    }

    /// Whether its definition (and the bindings to it) go through the cluster's metadata
    /// log: a quorum queue, or a classic queue every node knows.
    pub fn in_metadata(&self) -> bool {
        self.replica.get().is_some() || self.home.get().is_some()
    }

    /// Records the node this classic queue lives on (declared with
    /// `cluster.classic_queues_everywhere`).
    pub(crate) fn set_home(&self, node: String) {
        let _ = self.home.set(node);
    }

    /// In a cluster: the node that leads this queue's group, its members and those online
    /// (node names).
    pub fn replica_members(&self) -> Option<replica::GroupMembers> {
        self.replica.get()?.members()
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
        self.disk_writes.add(1);
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

    /// Drops the record of a binding from `exchange` that was removed.
    pub(crate) fn forget_binding(&self, exchange: &ShortStr, b: &crate::exchange::Binding) {
        self.bindings.lock().retain(|(e, k, a)| {
            !(e == exchange && *k == b.routing_key && a.same_entries(&b.arguments))
        });
    }

    /// The queue's type as `x-queue-type` names it: `classic` unless declared otherwise.
    pub fn queue_type(&self) -> &str {
        self.arguments
            .get("x-queue-type")
            .and_then(FieldValue::as_str)
            .unwrap_or("classic")
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> QueueStats {
        if let Some(s) = &self.stream {
            return s.stats();
        }
        if let Some(r) = self.replica.get() {
            if let Some(remote) = r.remote_stats() {
                return remote.stats;
            }
            return replicated::read(r, QueueEngine::stats);
        }
        let mut s = self.inner.lock().stats();
        (s.disk_reads, s.disk_writes) = self.disk_counts();
        s
    }

    /// Messages read from and written to the queue's message store so far.
    pub fn disk_counts(&self) -> (u64, u64) {
        (self.disk_reads.get(), self.disk_writes.get())
    }

    pub fn message_count(&self) -> u32 {
        if let Some(s) = &self.stream {
            return s.count() as u32;
        }
        if let Some(r) = self.replica.get() {
            return replicated::message_count(r);
        }
        self.inner.lock().len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        if let Some(s) = &self.stream {
            return s.consumer_count();
        }
        if self.replica.get().is_some() {
            return self.replica_consumers.lock().len() as u32;
        }
        self.inner.lock().consumers().len() as u32
    }

    /// Consumer tags and channels, for listing.
    pub fn consumers(&self) -> Vec<(ShortStr, Arc<DeliveryChannel>, bool, bool)> {
        if let Some(s) = &self.stream {
            return s.consumers();
        }
        if self.replica.get().is_some() {
            return self.replica_consumers_listed();
        }
        self.inner
            .lock()
            .consumers()
            .iter()
            .map(|c| (c.tag.clone(), c.handle.clone(), c.no_ack, c.exclusive))
            .collect()
    }

    /// Enqueues a routed message and hands it to a consumer if one has credit. A persistent
    /// message in a durable queue is written to the store first; the returned epoch is the
    /// group commit its confirm waits for.
    pub fn publish(
        self: &Arc<Self>,
        msg: Arc<Message>,
        persistent: bool,
        fu: &mut Followups,
    ) -> Result<Published, PublishError> {
        self.publish_in(msg, persistent, None, fu)
    }

    /// [`Queue::publish`] within transaction `tx` (at its commit): the store record names the
    /// transaction, and [`Queue::end_transaction`] must follow once all of its publishes are
    /// done, or a restart drops them.
    pub fn publish_in(
        self: &Arc<Self>,
        msg: Arc<Message>,
        persistent: bool,
        tx: Option<u64>,
        fu: &mut Followups,
    ) -> Result<Published, PublishError> {
        if self.is_deleted() {
            return Ok(Published::default());
        }
        if let Some(s) = &self.stream {
            return s.publish(self, &msg);
        }
        if let Some(r) = self.replica.get() {
            return Ok(self.publish_replicated(r, msg));
        }
        let mut i = self.locked(fu);
        i.admit(&msg).map_err(|Rejected| PublishError::Rejected)?;
        let durable_write = persistent && self.durable_store;
        let paging = i.should_page() && self.paging_store().is_some();
        // The clock only when something will look at it (one read per message costs).
        let now = if i.uses_clock() || has(&msg.properties, flag::EXPIRATION) {
            now_ms()
        } else {
            0
        };
        let env = &mut QueueEnv { q: self };
        let (Some(p), true) = (&self.persistence, durable_write || paging) else {
            i.enqueue(msg, None, now, env);
            self.notify_flow(&i);
            return Ok(Published {
                epoch: None,
                commit: None,
                backlogged: i.backlogged(),
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
        if paging {
            i.push_paged(pos, now, env);
        } else {
            i.enqueue(msg, Some(pos), now, env);
            self.notify_flow(&i);
        }
        Ok(Published {
            epoch: durable_write.then_some(epoch),
            commit: None,
            backlogged: i.backlogged(),
        })
    }

    /// Delivers ready messages while some consumer has credit.
    pub fn dispatch(self: &Arc<Self>, fu: &mut Followups) {
        if let Some(s) = &self.stream {
            return s.dispatch(self);
        }
        // A replicated queue's engine delivers as it applies commands.
        if self.replica.get().is_some() {
            return;
        }
        let mut i = self.locked(fu);
        let now = if i.uses_clock() { now_ms() } else { 0 };
        i.dispatch(now, &mut QueueEnv { q: self });
        self.notify_flow(&i);
    }

    /// basic.get: takes the next ready message; with an owner it is checked out to it.
    pub fn get(self: &Arc<Self>, owner: Option<Owner>, fu: &mut Followups) -> Option<Got> {
        if self.stream.is_some() {
            return None; // refused before: stream::get_refused
        }
        if let Some(r) = self.replica.get() {
            return self.get_replicated(r, owner);
        }
        let mut i = self.locked(fu);
        i.get(owner, now_ms(), &mut QueueEnv { q: self })
    }

    /// basic.ack: checked-out messages are done with; they leave the store.
    pub fn settle(self: &Arc<Self>, checkouts: impl IntoIterator<Item = CheckoutKey>) {
        if let Some(s) = &self.stream {
            return s.settled(checkouts.into_iter().count());
        }
        if let Some(r) = self.replica.get() {
            replicated::submit_checkouts(r, checkouts, |checkouts, now| QueueCommand::Settle {
                checkouts,
                now,
            });
            // The client has room for what its node holds.
            return self.release_held();
        }
        self.locked_quiet().settle(checkouts);
    }

    /// basic.reject / basic.nack without requeue: the messages leave the queue for its
    /// dead-letter exchange (reason `rejected`), or are dropped.
    pub fn reject(
        self: &Arc<Self>,
        checkouts: impl IntoIterator<Item = CheckoutKey>,
        fu: &mut Followups,
    ) {
        if let Some(s) = &self.stream {
            return s.settled(checkouts.into_iter().count());
        }
        if let Some(r) = self.replica.get() {
            replicated::submit_checkouts(r, checkouts, |checkouts, now| QueueCommand::Discard {
                checkouts,
                now,
            });
            // The client has room for what its node holds.
            return self.release_held();
        }
        self.locked(fu)
            .discard(checkouts, &mut QueueEnv { q: self });
    }

    /// Puts checked-out messages back in their original places, marked redelivered, and
    /// delivers them again at once. (Those of a deleted queue are gone already.)
    pub fn requeue(
        self: &Arc<Self>,
        checkouts: impl IntoIterator<Item = CheckoutKey>,
        fu: &mut Followups,
    ) {
        if let Some(s) = &self.stream {
            return s.settled(checkouts.into_iter().count());
        }
        if let Some(r) = self.replica.get() {
            replicated::submit_checkouts(r, checkouts, |checkouts, now| QueueCommand::Return {
                checkouts,
                now,
            });
            // The client has room for what its node holds.
            return self.release_held();
        }
        let mut i = self.locked(fu);
        i.return_checkouts(checkouts, now_ms(), &mut QueueEnv { q: self });
        self.notify_flow(&i);
    }

    /// Adds a consumer and starts delivering to it (`on_added` runs in between, with the
    /// queue locked).
    pub fn add_consumer(
        self: &Arc<Self>,
        c: QueueConsumer,
        on_added: impl FnOnce(),
        fu: &mut Followups,
    ) -> Result<(), ConsumeRefused> {
        if let Some(s) = &self.stream {
            let next = crate::stream::args::OffsetSpec::Next;
            return s.add_consumer(self, c, next, None, on_added);
        }
        if let Some(r) = self.replica.get() {
            return self.add_consumer_replicated(r, c, on_added);
        }
        let mut i = self.locked(fu);
        if self.is_deleted() {
            return Err(ConsumeRefused::Deleted);
        }
        let now = now_ms();
        i.add_consumer(c, now)?;
        on_added();
        i.dispatch(now, &mut QueueEnv { q: self });
        self.notify_flow(&i);
        Ok(())
    }

    /// A channel holds nothing more for `owner` (its consumer is gone and its deliveries are
    /// settled): in a replicated queue, whatever the engine still has checked out to it is
    /// returned. That is what the channel never received: deliveries its node did not hand
    /// out (a basic.get whose answer was lost, entries a snapshot skipped). A classic queue
    /// hands out what it checks out, under its lock: nothing to do.
    pub fn release_owner(&self, owner: Owner) {
        if let Some(r) = self.replica.get() {
            r.submit(
                QueueCommand::ReturnAll {
                    owner,
                    now: now_ms(),
                },
                None,
            );
        }
    }

    /// Removes a consumer. An auto-delete queue that has lost its last consumer asks to be
    /// deleted.
    pub fn remove_consumer(
        self: &Arc<Self>,
        channel: &DeliveryChannel,
        consumer_id: u32,
        fu: &mut Followups,
    ) {
        if let Some(s) = &self.stream {
            return s.remove_consumer(channel, consumer_id);
        }
        if let Some(r) = self.replica.get() {
            return self.remove_consumer_replicated(r, channel, consumer_id);
        }
        let now_unused = self.locked(fu).remove_consumers(
            |c| std::ptr::eq(&*c.handle, channel) && c.consumer_id == consumer_id,
            now_ms(),
            &mut QueueEnv { q: self },
        );
        self.wake_flow_waiters();
        if now_unused && self.auto_delete {
            fu.push(Followup::Delete(self.clone(), DeleteReason::Unused));
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(self: &Arc<Self>) -> u32 {
        if self.stream.is_some() {
            return 0; // refused before: stream::purge_refused
        }
        if let Some(r) = self.replica.get() {
            return self.purge_replicated(r);
        }
        self.locked_quiet().purge()
    }

    /// Marks the queue deleted, drops its messages and tells its consumers' channels (which
    /// send basic.cancel to clients that asked for it). Returns the ready count.
    pub(crate) fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        self.drained.notify_waiters();
        if let Some(s) = &self.stream {
            return s.delete();
        }
        if let Some(r) = self.replica.get() {
            return self.delete_replicated(r);
        }
        let (n, consumers) = self.inner.lock().delete();
        if let Some(slot) = self.store.get() {
            let mut st = slot.lock();
            let dir = st.store.dir().to_path_buf();
            // Empty the store, then remove its directory (the store is dropped with the queue):
            // a removal cut short by a crash leaves no message that could come back. A store
            // that was never written to has none (a queue declared and deleted unused).
            let purged = if st.store.holds_records() {
                st.store.purge().map(drop)
            } else {
                Ok(())
            };
            if let Err(e) = purged {
                tracing::warn!(queue = %self.name, error = %e, "purging the deleted queue's store failed");
            }
            if let Err(e) = st.store.remove_dir() {
                tracing::warn!(queue = %self.name, dir = %dir.display(), error = %e, "could not remove the deleted queue's store; the next start removes it");
            }
        }
        for c in consumers {
            c.handle.consumer_cancelled_by_server(c.consumer_id);
        }
        n
    }
}
