//! The queue engine: one queue's state as a deterministic state machine. Commands are method
//! calls that take the current time as a value; what must happen outside the queue comes out
//! as [`Effect`]s (store marks, dead letters, a timer to start) or through the [`Env`] the
//! caller passes in (offering a message to a consumer, reading paged-out messages back).
//! Nothing here locks another object, does I/O or reads a clock, so the engine is tested
//! without sockets or sleeps, and the same engine can later be the state a replicated log
//! applies.
//!
//! What the engine decides: ready order (publish order per priority level, requeued messages
//! back in their place), dispatch (consumer priority, round-robin, single active consumer),
//! which messages are checked out to whom, TTL expiry at the head, max-length with each
//! overflow mode, the delivery limit, dead-letter reasons, when to page, flow control, and
//! when an unused queue expires.
//!
//! Checkouts: a message delivered with an ack expected leaves the ready list for its owner (a
//! consumer, or a channel's basic.get) under a [`CheckoutId`] unique in the queue. The owner
//! later settles it, returns it (requeue) or discards it (reject) by that id, so the engine
//! alone knows every message's state: ready, checked out to one owner, or gone.

use super::options::{Overflow, QueueOptions};
use super::paged::PagedTail;
use super::ready::ReadyList;
use super::{QueuedMessage, FLOW_HIGH, FLOW_HIGH_BYTES, FLOW_LOW, FLOW_LOW_BYTES, RAM_BUDGET};
use crate::deadletter::{DeadLetter, DeathReason};
use crate::message::Message;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use warren_protocol::ShortStr;
use warren_store::{Position, RecoveredMessage};

/// Most bytes of bodies one page-in reads.
const PAGE_IN_BATCH: usize = 2 << 20;

/// Most spilled messages one read-back loads (they are read in one go, up to
/// [`PAGE_IN_BATCH`] bytes).
const SPILL_READ_BATCH: usize = 2048;

/// A message whose body lives only in the queue's store: its place in publish order and its
/// record. This is all a checked-out or requeued message costs in memory once the queue is
/// over its memory budget (16 bytes; the body is read back when it is delivered again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spilled {
    seq: u64,
    pos: Position,
}
const _: () = assert!(std::mem::size_of::<Spilled>() == 16);

/// What the caller must do after a command, in order.
#[derive(Debug)]
pub enum Effect {
    /// The message at this store position left the queue for good (acked with no-ack,
    /// expired, dropped by max-length, dead-lettered, purged).
    StoreAck(Position),
    /// Every record from this position on left the queue (a purged paged tail).
    StoreAckFrom(Position),
    /// Nothing in the store outlives this purge: drop it whole.
    StorePurge,
    /// The message at this position was delivered (it comes back redelivered after a restart).
    StoreDelivered(Position),
    /// Publish to the dead-letter exchange, once the queue's lock is released.
    DeadLetter(DeadLetter),
    /// A message with a TTL arrived: the queue needs timer ticks.
    StartTimer,
}

/// Who holds checked-out messages: a consumer, or a channel taking messages with
/// basic.get. Unique in the broker (never reused), so checkouts outlive a cancelled consumer.
pub type Owner = u64;

/// One checked-out message's id, unique in its queue; ids increase in checkout order.
pub type CheckoutId = u64;

/// Names one checked-out message: its owner and its checkout id.
pub type CheckoutKey = (Owner, CheckoutId);

/// A message checked out to an owner.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub id: CheckoutId,
    pub qm: QueuedMessage,
}

/// The messages one owner holds, in checkout order.
#[derive(Default)]
struct Holding {
    /// The owner is a consumer of the queue (its entry stays while it is, even when empty).
    consuming: bool,
    /// Checkouts with their message in memory.
    msgs: VecDeque<Checkout>,
    /// Checkouts whose message lives only in the store (the queue was over its memory budget
    /// when they were checked out), in checkout order.
    stored: VecDeque<(CheckoutId, Spilled)>,
}

/// A checkout taken back from its owner.
enum Returned {
    Mem(QueuedMessage),
    Stored(Spilled),
}

impl Holding {
    fn len(&self) -> usize {
        self.msgs.len() + self.stored.len()
    }

    fn is_empty(&self) -> bool {
        self.msgs.is_empty() && self.stored.is_empty()
    }

    /// Takes the checkout `id`: acks come in checkout order, so it is nearly always the first
    /// of one of the two lists.
    fn take(&mut self, id: CheckoutId) -> Option<Returned> {
        if self.msgs.front().is_some_and(|c| c.id == id) {
            return self.msgs.pop_front().map(|c| Returned::Mem(c.qm));
        }
        if self.stored.front().is_some_and(|c| c.0 == id) {
            return self.stored.pop_front().map(|c| Returned::Stored(c.1));
        }
        if let Ok(at) = self.msgs.binary_search_by_key(&id, |c| c.id) {
            return self.msgs.remove(at).map(|c| Returned::Mem(c.qm));
        }
        let at = self.stored.binary_search_by_key(&id, |c| c.0).ok()?;
        self.stored.remove(at).map(|c| Returned::Stored(c.1))
    }
}

/// A message taken with basic.get.
#[derive(Debug)]
pub struct Got {
    pub qm: QueuedMessage,
    /// Ready messages left in the queue.
    pub remaining: u32,
    /// Its checkout, when an ack is expected.
    pub checkout: Option<CheckoutId>,
}

/// A consumer as the queue sees it. `C` is how the caller reaches it (a channel handle).
pub struct Consumer<C> {
    pub handle: C,
    pub consumer_id: u32,
    /// Who holds what this consumer takes with an ack expected.
    pub owner: Owner,
    pub tag: ShortStr,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers are served first.
    pub priority: i64,
    /// Most messages the engine checks out to this consumer at once (0: no limit of the
    /// engine's; a channel's prefetch is then enforced by the channel, through `Env::offer`).
    /// A replicated queue's consumers carry their prefetch here, so every replica decides
    /// the same deliveries.
    pub prefetch: u32,
}

/// What the engine asks of its surroundings while it runs a command.
pub trait Env<C> {
    /// Offers the head message to a consumer; true if the consumer took it (it had credit).
    /// `checkout` is the id the message is checked out under if the consumer acks.
    fn offer(&mut self, consumer: &Consumer<C>, qm: &QueuedMessage, checkout: CheckoutId) -> bool;
    /// Reads paged-out messages back from the store: from `from`, about `max_bytes` of them,
    /// and the position after the last one read.
    fn read_paged(
        &mut self,
        from: Position,
        max_bytes: usize,
    ) -> warren_store::Result<(Vec<RecoveredMessage>, Position)>;

    /// Whether checked-out and requeued messages may leave memory for the queue's store when
    /// the queue is over its memory budget (a classic queue that has, or may open, a store).
    fn can_spill(&self) -> bool {
        false
    }

    /// Writes a message that is not in the store yet to it (as a transient record, dropped at
    /// a restart), so its body may leave memory. Its position, or None if it cannot be
    /// written (it then stays in memory).
    fn spill(&mut self, _msg: &Message) -> Option<Position> {
        None
    }

    /// Reads spilled messages back: the records at `positions`, in that order, until about
    /// `max_bytes` were read (at least one). Each is its record's payload or the error that
    /// kept it from being read.
    fn read_spilled(
        &mut self,
        positions: &[Position],
        _max_bytes: usize,
    ) -> Vec<warren_store::Result<bytes::Bytes>> {
        positions
            .iter()
            .map(|&position| Err(warren_store::StoreError::UnknownPosition { position }))
            .collect()
    }
}

/// Why a consumer could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsumeRefused {
    ExclusiveInUse,
    Deleted,
    /// A replicated queue's group did not answer (why).
    Unavailable(String),
}

/// The queue is full and its overflow mode refuses publishes.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected;

/// Counters for list_queues and the management API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub message_bytes_ready: u64,
    pub consumers: u64,
    pub published: u64,
    /// Messages that left for a consumer or a basic.get (RabbitMQ's `deliver_get`).
    pub delivered: u64,
    pub acked: u64,
    /// `delivered`, split as RabbitMQ's `message_stats` split it.
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    /// Of `delivered`, those that went out again (redelivered).
    pub redeliver: u64,
    /// basic.get on the queue found it empty.
    pub get_empty: u64,
    /// Messages read from and written to the queue's message store (filled in by the queue,
    /// which owns the store; the engine leaves them 0).
    pub disk_reads: u64,
    pub disk_writes: u64,
}

pub struct QueueEngine<C> {
    opts: QueueOptions,
    ready: ReadyList,
    /// Messages paged out to the store, after everything in `ready`.
    paged: PagedTail,
    /// Requeued messages whose bodies are only in the store (ready, in publish order); they
    /// are read back when they reach the head of the queue.
    spilled: VecDeque<Spilled>,
    ready_bytes: usize,
    /// Bytes of bodies of checked-out messages held in memory (those of spilled checkouts are
    /// in the store only).
    unacked_bytes: usize,
    /// Bytes of bodies (ready and checked out) beyond which checkouts and requeued messages
    /// keep only their store position ([`RAM_BUDGET`]; tests lower it).
    spill_budget: usize,
    /// Checked-out messages by owner.
    checked_out: FxHashMap<Owner, Holding>,
    /// How many messages are checked out, over all owners.
    unacked: u32,
    next_checkout: CheckoutId,
    /// Replicated queues: the highest publish sequence number enqueued per publisher.
    publishers: FxHashMap<u64, u64>,
    consumers: Vec<Consumer<C>>,
    /// Index of the consumer that gets the next message (round-robin within a priority).
    next_consumer: usize,
    next_seq: u64,
    /// Set once a consumer has subscribed: auto-delete only applies after that.
    had_consumer: bool,
    published: u64,
    delivered: u64,
    acked: u64,
    /// By kind: [consumer with ack, consumer no-ack, get with ack, get no-ack], redelivered.
    delivered_by: [u64; 4],
    redelivered: u64,
    get_empty: u64,
    /// Last time the queue was used (ms), for `x-expires`.
    last_used: u64,
    /// Some message carries its own TTL: dispatch looks at the clock.
    timed: bool,
    effects: Vec<Effect>,
}

impl<C> QueueEngine<C> {
    pub fn new(opts: QueueOptions, now: u64) -> Self {
        QueueEngine {
            ready: ReadyList::new(opts.max_priority),
            opts,
            paged: PagedTail::default(),
            spilled: VecDeque::new(),
            ready_bytes: 0,
            unacked_bytes: 0,
            spill_budget: RAM_BUDGET,
            checked_out: FxHashMap::default(),
            unacked: 0,
            next_checkout: 0,
            publishers: FxHashMap::default(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            had_consumer: false,
            published: 0,
            delivered: 0,
            acked: 0,
            delivered_by: [0; 4],
            redelivered: 0,
            get_empty: 0,
            last_used: now,
            timed: false,
            effects: Vec::new(),
        }
    }

    /// The effects of the commands run since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// [`QueueEngine::take_effects`] without giving up the buffer (no allocation per command
    /// on the hot path).
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    pub fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }

    pub fn options(&self) -> &QueueOptions {
        &self.opts
    }

    /// Ready messages, in memory, spilled and paged out.
    pub fn len(&self) -> usize {
        self.ready.len() + self.paged.len() + self.spilled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn consumers(&self) -> &[Consumer<C>] {
        &self.consumers
    }

    /// The messages `owner` holds in memory, oldest checkout first (a replicated queue's are
    /// all there: its engine never spills).
    pub fn checked_out(&self, owner: Owner) -> impl Iterator<Item = &Checkout> {
        self.checked_out
            .get(&owner)
            .into_iter()
            .flat_map(|h| h.msgs.iter())
    }

    /// How many messages `owner` holds.
    pub fn held(&self, owner: Owner) -> usize {
        self.checked_out.get(&owner).map_or(0, Holding::len)
    }

    /// The ready messages in memory, in delivery order (the paged-out tail follows them).
    pub fn ready(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.ready.iter()
    }

    /// Every owner the queue knows: its consumers' and those holding checkouts.
    pub fn owner_ids(&self) -> Vec<Owner> {
        let mut v: Vec<Owner> = self.checked_out.keys().copied().collect();
        v.extend(self.consumers.iter().map(|c| c.owner));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether a [`QueueEngine::tick`] at `now` would change anything (a message at the head
    /// has expired, or the queue has been unused too long).
    pub fn tick_due(&self, now: u64) -> bool {
        self.ready
            .front()
            .is_some_and(|m| m.expires_at.is_some_and(|at| at <= now))
            || self.unused_expired(now)
    }

    /// How many owners hold (or may come to hold) checkouts.
    pub fn owners(&self) -> usize {
        self.checked_out.len()
    }

    /// Bytes of the bodies of every message held, ready and unacknowledged (in memory).
    pub fn message_bytes(&self) -> usize {
        self.ready_bytes + self.unacked_bytes
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            messages_ready: self.len() as u64,
            messages_unacknowledged: self.unacked as u64,
            message_bytes_ready: self.ready_bytes as u64,
            consumers: self.consumers.len() as u64,
            published: self.published,
            delivered: self.delivered,
            acked: self.acked,
            deliver: self.delivered_by[0],
            deliver_no_ack: self.delivered_by[1],
            get: self.delivered_by[2],
            get_no_ack: self.delivered_by[3],
            redeliver: self.redelivered,
            get_empty: self.get_empty,
            disk_reads: 0,
            disk_writes: 0,
        }
    }

    /// The queue was used (declared, consumed from, polled): restarts the `x-expires` clock.
    pub fn touch(&mut self, now: u64) {
        self.last_used = now;
    }

    /// Whether the queue has been unused longer than `x-expires` (and has no consumers).
    pub fn unused_expired(&self, now: u64) -> bool {
        match self.opts.expires {
            Some(ms) => self.consumers.is_empty() && now.saturating_sub(self.last_used) > ms,
            None => false,
        }
    }

    /// Whether a command may need the time: message TTLs, or a paged tail whose messages may
    /// carry their own. Otherwise the caller may pass 0 and spare itself reading the clock for
    /// every message.
    pub fn uses_clock(&self) -> bool {
        self.opts.message_ttl.is_some() || self.timed || !self.paged.is_empty()
    }

    /// Flow control: publishers should wait before sending more.
    pub fn backlogged(&self) -> bool {
        !self.consumers.is_empty()
            && (self.len() > FLOW_HIGH
                || self.ready_bytes > FLOW_HIGH_BYTES
                || !self.paged.is_empty())
    }

    /// Flow control: waiting publishers may go on.
    pub fn drained_enough(&self) -> bool {
        self.len() <= FLOW_LOW && self.ready_bytes <= FLOW_LOW_BYTES && self.paged.is_empty()
    }

    /// Whether a publish should go to the store only (paged out) rather than memory.
    pub fn should_page(&self) -> bool {
        (!self.paged.is_empty() || self.ready_bytes >= RAM_BUDGET) && self.opts.max_priority == 0
    }

    /// Recovery: whether memory is full, so the rest of the store stays the paged tail.
    pub fn memory_full(&self) -> bool {
        self.ready_bytes >= RAM_BUDGET && self.opts.max_priority == 0
    }

    fn dead_letter(&mut self, msg: Arc<Message>, reason: DeathReason) {
        if let Some(dlx) = &self.opts.dead_letter_exchange {
            self.effects.push(Effect::DeadLetter(DeadLetter {
                msg,
                reason,
                exchange: dlx.clone(),
                routing_key: self.opts.dead_letter_routing_key.clone(),
            }));
        }
    }

    /// Whether a message of `len` bytes would take the queue's memory (ready and checked-out
    /// bodies) over its budget.
    fn over_budget(&self, len: usize) -> bool {
        self.ready_bytes + self.unacked_bytes + len > self.spill_budget
    }

    /// Tests: spill past `bytes` instead of [`RAM_BUDGET`].
    #[cfg(test)]
    pub(crate) fn set_spill_budget(&mut self, bytes: usize) {
        self.spill_budget = bytes;
    }

    /// Tests: the checkouts `owner` holds whose message is only in the store.
    #[cfg(test)]
    pub(crate) fn held_spilled(&self, owner: Owner) -> Vec<(CheckoutId, Position)> {
        self.checked_out
            .get(&owner)
            .map(|h| h.stored.iter().map(|&(id, s)| (id, s.pos)).collect())
            .unwrap_or_default()
    }

    /// Requeued messages waiting in the store only.
    pub fn spilled_len(&self) -> usize {
        self.spilled.len()
    }

    /// Whether a message may live in the store only while checked out or requeued: not when
    /// it needs more than its place and position (an expiry, a priority, a delivery count).
    fn spillable(&self, qm: &QueuedMessage) -> bool {
        qm.expires_at.is_none()
            && self.opts.max_priority == 0
            && self.opts.delivery_limit.is_none()
            && !self.opts.quorum
    }

    /// Reads a spilled message back (for a dead letter); None if it cannot be read.
    fn read_one(&mut self, s: Spilled, env: &mut impl Env<C>) -> Option<Message> {
        let rec = env.read_spilled(&[s.pos], usize::MAX).pop();
        match rec {
            Some(Ok(b)) => Message::decode_record(b).map(|(m, _)| m),
            Some(Err(e)) => {
                tracing::error!(pos = %s.pos, error = %e, "spilled message unreadable");
                None
            }
            None => None,
        }
    }

    /// Requeued messages whose bodies are in the store go back to the ready list when they
    /// are next in line (a batch at a time, so memory holds about one batch of them).
    fn load_spilled(&mut self, now: u64, env: &mut impl Env<C>) {
        let Some(first) = self.spilled.front() else {
            return;
        };
        if self.ready.front().is_some_and(|r| r.seq < first.seq) {
            return;
        }
        let n = self.spilled.len().min(SPILL_READ_BATCH);
        let positions: Vec<Position> = self.spilled.iter().take(n).map(|s| s.pos).collect();
        let recs = env.read_spilled(&positions, PAGE_IN_BATCH);
        let n = recs.len().clamp(1, n);
        let batch: Vec<Spilled> = self.spilled.drain(..n).collect();
        let mut recs = recs.into_iter();
        // Backwards, so each goes to the front of the ready list (they precede what is there).
        let mut loaded: Vec<(Spilled, Option<Message>)> = batch
            .into_iter()
            .map(|s| {
                let m = match recs.next() {
                    Some(Ok(b)) => Message::decode_record(b).map(|(m, _)| m),
                    Some(Err(e)) => {
                        tracing::error!(pos = %s.pos, error = %e, "spilled message unreadable; left in the store until a restart");
                        None
                    }
                    None => None,
                };
                (s, m)
            })
            .collect();
        while let Some((s, m)) = loaded.pop() {
            let Some(msg) = m else { continue };
            self.ready_bytes += msg.body.len();
            let qm = QueuedMessage::new(s.seq, Arc::new(msg), Some(s.pos), true, &self.opts, now);
            if qm.expires_at.is_some() && !self.timed {
                self.timed = true;
                self.effects.push(Effect::StartTimer);
            }
            self.ready.insert_ordered(qm);
        }
    }

    fn gone(&mut self, m: QueuedMessage, reason: Option<DeathReason>) {
        self.ready_bytes -= m.msg.body.len();
        if let Some(pos) = m.pos {
            self.effects.push(Effect::StoreAck(pos));
        }
        if let Some(r) = reason {
            self.dead_letter(m.msg, r);
        }
    }

    // ---- publishing ---------------------------------------------------------------------

    /// Refuses a publish of `size` bytes when the queue is full and its overflow mode is
    /// reject-publish (reject-publish-dlx also dead-letters the message).
    pub fn admit(&mut self, msg: &Arc<Message>) -> Result<(), Rejected> {
        let size = msg.body.len();
        let full = self.opts.overflow != Overflow::DropHead
            && (self.opts.max_length.is_some_and(|m| self.len() as u64 >= m)
                || self
                    .opts
                    .max_length_bytes
                    .is_some_and(|m| (self.ready_bytes + size) as u64 > m));
        if !full {
            return Ok(());
        }
        if self.opts.overflow == Overflow::RejectPublishDlx {
            self.dead_letter(msg.clone(), DeathReason::Maxlen);
        }
        Err(Rejected)
    }

    /// Enqueues a routed message (written to the store at `pos`, if it was) and hands it to a
    /// consumer with credit.
    pub fn enqueue(
        &mut self,
        msg: Arc<Message>,
        pos: Option<Position>,
        now: u64,
        env: &mut impl Env<C>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.published += 1;
        self.ready_bytes += msg.body.len();
        let qm = QueuedMessage::new(seq, msg, pos, false, &self.opts, now);
        if qm.expires_at.is_some() && !self.timed {
            self.timed = true;
            self.effects.push(Effect::StartTimer);
        }
        self.ready.push_back(qm);
        self.enforce_limits(now, env);
        // A message that expires the instant it arrives (TTL 0) still goes to a consumer
        // waiting for it, as in RabbitMQ; it is dropped otherwise.
        self.dispatch_at(now.saturating_sub(1), env);
    }

    /// A message was written to the store at `pos` and stays only there (the queue pages).
    pub fn push_paged(&mut self, pos: Position, now: u64, env: &mut impl Env<C>) {
        self.published += 1;
        self.paged.push_back(pos);
        self.enforce_limits(now, env);
    }

    /// Recovery and page-in: a message read back from the store joins the ready list.
    pub fn push_from_store(&mut self, msg: Message, pos: Position, redelivered: bool, now: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += msg.body.len();
        let qm = QueuedMessage::new(seq, Arc::new(msg), Some(pos), redelivered, &self.opts, now);
        if qm.expires_at.is_some() && !self.timed {
            self.timed = true;
            self.effects.push(Effect::StartTimer);
        }
        self.ready.push_back(qm);
    }

    /// Recovery: the rest of the store (`len` messages from `head`) stays paged out.
    pub fn set_paged_tail(&mut self, head: Position, len: u64) {
        self.paged = PagedTail::starting_at(head, len);
    }

    /// Records that publisher `id` sent `seq`; false if it had sent `seq` (or a later one)
    /// already: a publisher's sequence numbers only grow, so that one is a resend.
    pub fn publisher_advanced(&mut self, id: u64, seq: u64) -> bool {
        let last = self.publishers.entry(id).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }

    /// The publisher is gone: forget its sequence numbers.
    pub fn forget_publisher(&mut self, id: u64) {
        self.publishers.remove(&id);
    }

    // ---- limits and time ----------------------------------------------------------------

    /// x-max-length / x-max-length-bytes with drop-head: the oldest messages go.
    fn enforce_limits(&mut self, now: u64, env: &mut impl Env<C>) {
        if self.opts.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over = self.opts.max_length.is_some_and(|m| self.len() as u64 > m)
                || self
                    .opts
                    .max_length_bytes
                    .is_some_and(|m| self.ready_bytes as u64 > m);
            if !over {
                return;
            }
            self.page_in(now, env);
            let Some(m) = self.ready.pop_front() else {
                return;
            };
            self.gone(m, Some(DeathReason::Maxlen));
        }
    }

    /// Drops (dead-letters) expired messages at the head. Like RabbitMQ, only the head is
    /// examined, so this never scans the queue.
    fn expire_head(&mut self, now: u64) {
        while let Some(front) = self.ready.front() {
            if front.expires_at.is_none_or(|at| at > now) {
                break;
            }
            let m = self.ready.pop_front().expect("front exists");
            self.gone(m, Some(DeathReason::Expired));
        }
    }

    /// Timer work: expire messages at the head. Returns whether the queue has been unused
    /// longer than `x-expires` (the caller deletes it).
    pub fn tick(&mut self, now: u64) -> bool {
        self.expire_head(now);
        self.unused_expired(now)
    }

    /// Replaces the options (a policy changed); applies length limits at once.
    pub fn set_options(&mut self, mut opts: QueueOptions, now: u64, env: &mut impl Env<C>) {
        // Priorities come from the declaration alone (as in RabbitMQ, no policy sets
        // them): the ready list's levels were made for them.
        opts.max_priority = self.opts.max_priority;
        self.opts = opts;
        self.enforce_limits(now, env);
        self.dispatch(now, env);
    }

    // ---- delivery -----------------------------------------------------------------------

    /// Loads paged-out messages back while the in-memory part is below half the budget (their
    /// queue TTL counts from `now`).
    fn page_in(&mut self, now: u64, env: &mut impl Env<C>) {
        self.load_spilled(now, env);
        if self.paged.is_empty() || self.ready_bytes >= RAM_BUDGET / 2 {
            return;
        }
        let want = (RAM_BUDGET / 2 - self.ready_bytes).min(PAGE_IN_BATCH);
        let (batch, next) = match env.read_paged(self.paged.head(), want) {
            Ok(found) => found,
            Err(e) => {
                // Without the record's length there is no next position: give up on the tail
                // rather than spin on it (its records stay on disk for a restart).
                let lost = self.paged.clear();
                tracing::error!(error = %e, lost, "paged-out messages unreadable; dropped until restart");
                return;
            }
        };
        if batch.is_empty() {
            let lost = self.paged.clear();
            tracing::error!(lost, "the store ended before the paged-out messages did");
            return;
        }
        // Paged-out messages are all there is after the head, so the batch never runs past
        // the tail; cap it anyway so the count stays true.
        let n = batch.len().min(self.paged.len());
        self.paged.advance_by(n as u64, next);
        for rec in batch.into_iter().take(n) {
            match Message::decode_record(rec.payload) {
                Some((msg, _)) => self.push_from_store(msg, rec.position, rec.redelivered, now),
                None => {
                    tracing::error!(pos = %rec.position, "paged-out message undecodable; dropped")
                }
            }
        }
    }

    /// Delivers ready messages while some consumer has credit.
    pub fn dispatch(&mut self, now: u64, env: &mut impl Env<C>) {
        self.dispatch_at(now, env)
    }

    fn dispatch_at(&mut self, now: u64, env: &mut impl Env<C>) {
        self.page_in(now, env);
        let expiring = self.opts.message_ttl.is_some() || self.timed;
        while !self.consumers.is_empty() {
            if expiring {
                self.expire_head(now);
            }
            if !self.spilled.is_empty() {
                self.load_spilled(now, env);
            }
            if self.ready.is_empty() {
                return;
            }
            match self.pick_consumer(env) {
                Some(idx) => self.delivered_to(idx, now, env),
                None => return,
            }
        }
    }

    /// Offers the head message to consumers: the highest consumer priority first,
    /// round-robin within a priority; with single active consumer, only the first consumer.
    /// Returns the index of the consumer that took it.
    fn pick_consumer(&mut self, env: &mut impl Env<C>) -> Option<usize> {
        let front = self.ready.front()?;
        let n = self.consumers.len();
        let mut start = 0;
        while start < n {
            let prio = self.consumers[start].priority;
            let end = if self.opts.single_active_consumer {
                1
            } else {
                self.consumers[start..]
                    .iter()
                    .position(|c| c.priority != prio)
                    .map_or(n, |k| start + k)
            };
            let size = end - start;
            for k in 0..size {
                let idx = start + (self.next_consumer + k) % size;
                let c = &self.consumers[idx];
                if c.prefetch != 0 && !c.no_ack && self.held(c.owner) >= c.prefetch as usize {
                    continue;
                }
                if env.offer(c, front, self.next_checkout) {
                    self.next_consumer = (idx - start + 1) % size;
                    return Some(idx);
                }
            }
            if self.opts.single_active_consumer {
                return None;
            }
            start = end;
        }
        None
    }

    /// Bookkeeping after consumer `idx` took the head message.
    fn delivered_to(&mut self, idx: usize, now: u64, env: &mut impl Env<C>) {
        let c = &self.consumers[idx];
        let owner = (!c.no_ack).then_some(c.owner);
        let qm = self
            .ready
            .pop_front()
            .expect("a consumer took the head message");
        self.delivered_by[owner.is_none() as usize] += 1;
        self.taken(qm, owner, env);
        if self.ready.is_empty() {
            self.page_in(now, env);
        }
    }

    /// A message left the ready list for a consumer or a basic.get; with an owner it is
    /// checked out to it (and its id returned), without it is gone.
    fn taken(
        &mut self,
        qm: QueuedMessage,
        owner: Option<Owner>,
        env: &mut impl Env<C>,
    ) -> Option<CheckoutId> {
        self.ready_bytes -= qm.msg.body.len();
        self.delivered += 1;
        self.redelivered += qm.redelivered as u64;
        let Some(owner) = owner else {
            if let Some(pos) = qm.pos {
                self.effects.push(Effect::StoreAck(pos));
            }
            return None;
        };
        if let (Some(pos), false) = (qm.pos, qm.redelivered) {
            self.effects.push(Effect::StoreDelivered(pos));
        }
        let id = self.next_checkout;
        self.next_checkout += 1;
        self.unacked += 1;
        let len = qm.msg.body.len();
        // Over the memory budget, the checkout keeps only where its message is in the store
        // (writing a transient one there first); the body goes once the consumer has it.
        if self.over_budget(len) && self.spillable(&qm) && env.can_spill() {
            if let Some(pos) = qm.pos.or_else(|| env.spill(&qm.msg)) {
                let s = Spilled { seq: qm.seq, pos };
                self.checked_out
                    .entry(owner)
                    .or_default()
                    .stored
                    .push_back((id, s));
                return Some(id);
            }
        }
        self.unacked_bytes += len;
        self.checked_out
            .entry(owner)
            .or_default()
            .msgs
            .push_back(Checkout { id, qm });
        Some(id)
    }

    /// basic.get: the next ready message, and how many remain. With an owner, the message is
    /// checked out to it (an ack is expected).
    pub fn get(&mut self, owner: Option<Owner>, now: u64, env: &mut impl Env<C>) -> Option<Got> {
        self.last_used = now;
        self.page_in(now, env);
        self.expire_head(now);
        let Some(qm) = self.ready.pop_front() else {
            self.get_empty += 1;
            return None;
        };
        self.delivered_by[2 + owner.is_none() as usize] += 1;
        let checkout = self.taken(qm.clone(), owner, env);
        Some(Got {
            qm,
            remaining: self.len() as u32,
            checkout,
        })
    }

    // ---- settling -----------------------------------------------------------------------

    /// Takes one checkout back from its owner; None if the owner does not hold it (already
    /// settled, or the queue was deleted meanwhile).
    fn take_checkout(&mut self, owner: Owner, id: CheckoutId) -> Option<Returned> {
        let h = self.checked_out.get_mut(&owner)?;
        let r = h.take(id)?;
        if h.is_empty() && !h.consuming {
            self.checked_out.remove(&owner);
        }
        self.unacked -= 1;
        if let Returned::Mem(qm) = &r {
            self.unacked_bytes -= qm.msg.body.len();
        }
        Some(r)
    }

    /// basic.ack: the checked-out messages are done with and leave the store. Returns how
    /// many were settled.
    pub fn settle(&mut self, checkouts: impl IntoIterator<Item = CheckoutKey>) -> u32 {
        let mut n = 0;
        for (owner, id) in checkouts {
            if let Some(r) = self.take_checkout(owner, id) {
                self.settled_one(&r);
                n += 1;
            }
        }
        n
    }

    fn settled_one(&mut self, r: &Returned) {
        self.acked += 1;
        let pos = match r {
            Returned::Mem(qm) => qm.pos,
            Returned::Stored(s) => Some(s.pos),
        };
        if let Some(pos) = pos {
            self.effects.push(Effect::StoreAck(pos));
        }
    }

    /// basic.reject / basic.nack without requeue: settled, and dead-lettered (reason
    /// `rejected`) if the queue has a dead-letter exchange.
    pub fn discard(
        &mut self,
        checkouts: impl IntoIterator<Item = CheckoutKey>,
        env: &mut impl Env<C>,
    ) {
        for (owner, id) in checkouts {
            if let Some(r) = self.take_checkout(owner, id) {
                self.settled_one(&r);
                match r {
                    Returned::Mem(qm) => self.dead_letter(qm.msg, DeathReason::Rejected),
                    Returned::Stored(s) if self.opts.dead_letter_exchange.is_some() => {
                        if let Some(m) = self.read_one(s, env) {
                            self.dead_letter(Arc::new(m), DeathReason::Rejected);
                        }
                    }
                    Returned::Stored(_) => {}
                }
            }
        }
    }

    /// Checked-out messages come back (requeue): to their original places, marked
    /// redelivered, and are delivered again at once. A message past the delivery limit is
    /// dead-lettered instead.
    pub fn return_checkouts(
        &mut self,
        checkouts: impl IntoIterator<Item = CheckoutKey>,
        now: u64,
        env: &mut impl Env<C>,
    ) {
        let (msgs, stored) = self.take_checkouts(checkouts);
        self.requeue(msgs, stored, now, env);
    }

    /// Checked-out messages that never reached their consumer come back as they were: not
    /// marked redelivered, not counted as a delivery (see [`QueueCommand::Unsent`]).
    ///
    /// [`QueueCommand::Unsent`]: super::command::QueueCommand::Unsent
    pub fn put_back_unsent(
        &mut self,
        checkouts: impl IntoIterator<Item = CheckoutKey>,
        now: u64,
        env: &mut impl Env<C>,
    ) {
        let (msgs, stored) = self.take_checkouts(checkouts);
        for qm in msgs {
            self.ready_bytes += qm.msg.body.len();
            self.ready.insert_ordered(qm);
        }
        self.respill(stored);
        self.dispatch(now, env);
    }

    /// Takes checkouts back from their owners: those held in memory, and those whose message
    /// waits in the store. Checkouts not held (already settled) are skipped.
    fn take_checkouts(
        &mut self,
        checkouts: impl IntoIterator<Item = CheckoutKey>,
    ) -> (Vec<QueuedMessage>, Vec<Spilled>) {
        let mut msgs = Vec::new();
        let mut stored = Vec::new();
        for (owner, id) in checkouts {
            match self.take_checkout(owner, id) {
                Some(Returned::Mem(qm)) => msgs.push(qm),
                Some(Returned::Stored(s)) => stored.push(s),
                None => {}
            }
        }
        (msgs, stored)
    }

    /// Everything `owner` holds comes back (its channel is gone).
    pub fn return_all(&mut self, owner: Owner, now: u64, env: &mut impl Env<C>) {
        let Some(h) = self.checked_out.get_mut(&owner) else {
            return;
        };
        let msgs: Vec<QueuedMessage> = h.msgs.drain(..).map(|c| c.qm).collect();
        let stored: Vec<Spilled> = h.stored.drain(..).map(|c| c.1).collect();
        // The deques' memory goes with them, not with the next checkout.
        h.msgs.shrink_to(0);
        h.stored.shrink_to(0);
        if !h.consuming {
            self.checked_out.remove(&owner);
        }
        self.unacked -= (msgs.len() + stored.len()) as u32;
        self.unacked_bytes -= msgs.iter().map(|m| m.msg.body.len()).sum::<usize>();
        self.requeue(msgs, stored, now, env);
    }

    fn requeue(
        &mut self,
        mut msgs: Vec<QueuedMessage>,
        mut stored: Vec<Spilled>,
        now: u64,
        env: &mut impl Env<C>,
    ) {
        if msgs.is_empty() && stored.is_empty() {
            return;
        }
        let limit = self.opts.delivery_limit;
        let count_deliveries = limit.is_some() || self.opts.quorum;
        if count_deliveries && !stored.is_empty() {
            // Counting deliveries rewrites the message (a policy set a delivery limit after
            // these were spilled): read them back.
            for s in std::mem::take(&mut stored) {
                if let Some(m) = self.read_one(s, env) {
                    let qm =
                        QueuedMessage::new(s.seq, Arc::new(m), Some(s.pos), true, &self.opts, now);
                    msgs.push(qm);
                }
            }
        }
        msgs.sort_unstable_by_key(|m| m.seq);
        // In-memory messages that the budget has no room for join the spilled ones when
        // they are in the store already.
        let mut kept = Vec::with_capacity(msgs.len());
        for m in msgs {
            match m.pos {
                Some(pos)
                    if !count_deliveries
                        && self.spillable(&m)
                        && env.can_spill()
                        && self.over_budget(m.msg.body.len()) =>
                {
                    stored.push(Spilled { seq: m.seq, pos })
                }
                _ => kept.push(m),
            }
        }
        let msgs = kept;
        self.respill(stored);
        for mut m in msgs.into_iter().rev() {
            m.redelivered = true;
            if count_deliveries {
                m.delivery_count += 1;
                if limit.is_some_and(|l| m.delivery_count as u64 > l) {
                    if let Some(pos) = m.pos {
                        self.effects.push(Effect::StoreAck(pos));
                    }
                    self.dead_letter(m.msg, DeathReason::DeliveryLimit);
                    continue;
                }
                m.msg = Arc::new(
                    m.msg
                        .with_header("x-delivery-count", m.delivery_count as i64),
                );
            }
            self.ready_bytes += m.msg.body.len();
            self.ready.insert_ordered(m);
        }
        self.dispatch(now, env);
    }

    /// Requeued messages that stay in the store join the spilled ready list, in publish order.
    fn respill(&mut self, mut stored: Vec<Spilled>) {
        if stored.is_empty() {
            return;
        }
        stored.sort_unstable_by_key(|s| s.seq);
        let first = stored[0].seq;
        if self.spilled.back().is_none_or(|b| b.seq < first) {
            self.spilled.extend(stored);
        } else if self
            .spilled
            .front()
            .is_some_and(|f| f.seq > stored[stored.len() - 1].seq)
        {
            for s in stored.into_iter().rev() {
                self.spilled.push_front(s);
            }
        } else {
            let old = std::mem::take(&mut self.spilled);
            let mut merged = VecDeque::with_capacity(old.len() + stored.len());
            let (mut a, mut b) = (old.into_iter().peekable(), stored.into_iter().peekable());
            while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
                merged.push_back(if x.seq < y.seq { a.next() } else { b.next() }.expect("peeked"));
            }
            merged.extend(a);
            merged.extend(b);
            self.spilled = merged;
        }
    }

    // ---- consumers ----------------------------------------------------------------------

    /// Adds a consumer; [`QueueEngine::dispatch`] then starts delivering to it.
    pub fn add_consumer(&mut self, c: Consumer<C>, now: u64) -> Result<(), ConsumeRefused> {
        // The same owner subscribing again (a replicated queue's consumer whose removal it
        // learnt of twice, each time subscribing again) stays one consumer.
        if self.consumers.iter().any(|x| x.owner == c.owner) {
            return Ok(());
        }
        if c.exclusive && !self.consumers.is_empty() || self.consumers.iter().any(|x| x.exclusive) {
            return Err(ConsumeRefused::ExclusiveInUse);
        }
        // Kept in descending consumer priority, in arrival order within a priority (the first
        // one is the single active consumer).
        let at = self
            .consumers
            .iter()
            .position(|x| x.priority < c.priority)
            .unwrap_or(self.consumers.len());
        self.checked_out.entry(c.owner).or_default().consuming = true;
        self.consumers.insert(at, c);
        self.had_consumer = true;
        self.last_used = now;
        Ok(())
    }

    /// Removes the consumers `matches` picks. Returns true when the queue just lost its last
    /// consumer (an auto-delete queue then goes).
    pub fn remove_consumers(
        &mut self,
        matches: impl Fn(&Consumer<C>) -> bool,
        now: u64,
        env: &mut impl Env<C>,
    ) -> bool {
        self.last_used = now;
        let before = self.consumers.len();
        let checked_out = &mut self.checked_out;
        self.consumers.retain(|c| {
            if !matches(c) {
                return true;
            }
            // A cancelled consumer's checkouts stay its own until its channel settles or
            // returns them.
            if let Some(h) = checked_out.get_mut(&c.owner) {
                h.consuming = false;
                if h.is_empty() {
                    checked_out.remove(&c.owner);
                }
            }
            false
        });
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        // A single active consumer's successor starts at once.
        self.dispatch(now, env);
        before != self.consumers.len() && self.consumers.is_empty() && self.had_consumer
    }

    // ---- purge and delete ---------------------------------------------------------------

    /// Drops every ready message; returns how many.
    pub fn purge(&mut self) -> u32 {
        let n = self.len() as u32;
        let ready = self.ready.drain();
        let paged_from = (!self.paged.is_empty()).then(|| self.paged.head());
        self.paged.clear();
        let spilled = std::mem::take(&mut self.spilled);
        self.ready_bytes = 0;
        if self.unacked == 0 {
            // Nothing in the store outlives the purge.
            self.effects.push(Effect::StorePurge);
        } else {
            for pos in ready.iter().filter_map(|m| m.pos) {
                self.effects.push(Effect::StoreAck(pos));
            }
            for s in spilled {
                self.effects.push(Effect::StoreAck(s.pos));
            }
            if let Some(from) = paged_from {
                self.effects.push(Effect::StoreAckFrom(from));
            }
        }
        n
    }

    /// The queue is deleted: its ready and checked-out messages go (the caller drops its
    /// store) and its consumers are returned to be told. Returns the ready count and the
    /// consumers.
    pub fn delete(&mut self) -> (u32, Vec<Consumer<C>>) {
        let n = self.len() as u32;
        self.ready.drain();
        self.checked_out.clear();
        self.unacked = 0;
        self.unacked_bytes = 0;
        self.paged.clear();
        self.spilled = VecDeque::new();
        self.ready_bytes = 0;
        (n, std::mem::take(&mut self.consumers))
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[path = "snapshot.rs"]
pub mod snapshot;
