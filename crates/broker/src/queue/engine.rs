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
//! TTL expiry at the head, max-length with each overflow mode, the delivery limit, dead-letter
//! reasons, when to page, flow control, and when an unused queue expires.

use super::options::{Overflow, QueueOptions};
use super::paged::PagedTail;
use super::ready::ReadyList;
use super::{QueuedMessage, FLOW_HIGH, FLOW_HIGH_BYTES, FLOW_LOW, FLOW_LOW_BYTES, RAM_BUDGET};
use crate::deadletter::{DeadLetter, DeathReason};
use crate::message::Message;
use std::sync::Arc;
use warren_protocol::ShortStr;
use warren_store::{Position, RecoveredMessage};

/// Most bytes of bodies one page-in reads.
const PAGE_IN_BATCH: usize = 2 << 20;

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

/// A consumer as the queue sees it. `C` is how the caller reaches it (a channel handle).
pub struct Consumer<C> {
    pub handle: C,
    pub consumer_id: u32,
    pub tag: ShortStr,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers are served first.
    pub priority: i64,
}

/// What the engine asks of its surroundings while it runs a command.
pub trait Env<C> {
    /// Offers the head message to a consumer; true if the consumer took it (it had credit).
    fn offer(&mut self, consumer: &Consumer<C>, qm: &QueuedMessage) -> bool;
    /// Reads paged-out messages back from the store: from `from`, about `max_bytes` of them,
    /// and the position after the last one read.
    fn read_paged(
        &mut self,
        from: Position,
        max_bytes: usize,
    ) -> warren_store::Result<(Vec<RecoveredMessage>, Position)>;
}

/// Why a consumer could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsumeRefused {
    ExclusiveInUse,
    Deleted,
}

/// The queue is full and its overflow mode refuses publishes.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected;

/// Counters for list_queues and the management API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub message_bytes_ready: u64,
    pub consumers: u64,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
}

pub struct QueueEngine<C> {
    opts: QueueOptions,
    ready: ReadyList,
    /// Messages paged out to the store, after everything in `ready`.
    paged: PagedTail,
    ready_bytes: usize,
    unacked: u32,
    consumers: Vec<Consumer<C>>,
    /// Index of the consumer that gets the next message (round-robin within a priority).
    next_consumer: usize,
    next_seq: u64,
    /// Set once a consumer has subscribed: auto-delete only applies after that.
    had_consumer: bool,
    published: u64,
    delivered: u64,
    acked: u64,
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
            ready_bytes: 0,
            unacked: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            had_consumer: false,
            published: 0,
            delivered: 0,
            acked: 0,
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

    /// Ready messages, in memory and paged out.
    pub fn len(&self) -> usize {
        self.ready.len() + self.paged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn consumers(&self) -> &[Consumer<C>] {
        &self.consumers
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
    pub fn set_options(&mut self, opts: QueueOptions, now: u64, env: &mut impl Env<C>) {
        self.opts = opts;
        self.enforce_limits(now, env);
        self.dispatch(now, env);
    }

    // ---- delivery -----------------------------------------------------------------------

    /// Loads paged-out messages back while the in-memory part is below half the budget (their
    /// queue TTL counts from `now`).
    fn page_in(&mut self, now: u64, env: &mut impl Env<C>) {
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
                if env.offer(&self.consumers[idx], front) {
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
        let no_ack = self.consumers[idx].no_ack;
        let qm = self
            .ready
            .pop_front()
            .expect("a consumer took the head message");
        self.taken(&qm, !no_ack);
        if self.ready.is_empty() {
            self.page_in(now, env);
        }
    }

    /// A message left the ready list for a consumer or a basic.get.
    fn taken(&mut self, qm: &QueuedMessage, ack_expected: bool) {
        self.ready_bytes -= qm.msg.body.len();
        self.delivered += 1;
        if let Some(pos) = qm.pos {
            if !ack_expected {
                self.effects.push(Effect::StoreAck(pos));
            } else if !qm.redelivered {
                self.effects.push(Effect::StoreDelivered(pos));
            }
        }
        if ack_expected {
            self.unacked += 1;
        }
    }

    /// basic.get: the next ready message, and how many remain. `ack_expected` counts it as
    /// unacked.
    pub fn get(
        &mut self,
        ack_expected: bool,
        now: u64,
        env: &mut impl Env<C>,
    ) -> Option<(QueuedMessage, u32)> {
        self.last_used = now;
        self.page_in(now, env);
        self.expire_head(now);
        let qm = self.ready.pop_front()?;
        self.taken(&qm, ack_expected);
        Some((qm, self.len() as u32))
    }

    // ---- settling -----------------------------------------------------------------------

    /// `n` unacked messages were settled (acked, or rejected without requeue); the caller
    /// removes them from the store.
    pub fn settled(&mut self, n: u32) {
        self.unacked = self.unacked.saturating_sub(n);
        self.acked += n as u64;
    }

    /// basic.reject / basic.nack without requeue: the messages go to the dead-letter exchange
    /// (reason `rejected`), or are dropped. (Settle them too.)
    pub fn rejected<'a>(&mut self, msgs: impl Iterator<Item = &'a QueuedMessage>) {
        if self.opts.dead_letter_exchange.is_some() {
            for m in msgs {
                self.dead_letter(m.msg.clone(), DeathReason::Rejected);
            }
        }
    }

    /// Unacked messages come back: to their original places, marked redelivered, and are
    /// delivered again at once. A message past the delivery limit is dead-lettered instead.
    /// `deleted`: the queue is gone, the messages only stop counting as unacked.
    pub fn requeue(
        &mut self,
        mut msgs: Vec<QueuedMessage>,
        deleted: bool,
        now: u64,
        env: &mut impl Env<C>,
    ) {
        self.unacked = self.unacked.saturating_sub(msgs.len() as u32);
        if deleted {
            return;
        }
        let limit = self.opts.delivery_limit;
        let count_deliveries = limit.is_some() || self.opts.quorum;
        msgs.sort_unstable_by_key(|m| m.seq);
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

    // ---- consumers ----------------------------------------------------------------------

    /// Adds a consumer; [`QueueEngine::dispatch`] then starts delivering to it.
    pub fn add_consumer(&mut self, c: Consumer<C>, now: u64) -> Result<(), ConsumeRefused> {
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
        self.consumers.retain(|c| !matches(c));
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
        self.ready_bytes = 0;
        if self.unacked == 0 {
            // Nothing in the store outlives the purge.
            self.effects.push(Effect::StorePurge);
        } else {
            for pos in ready.iter().filter_map(|m| m.pos) {
                self.effects.push(Effect::StoreAck(pos));
            }
            if let Some(from) = paged_from {
                self.effects.push(Effect::StoreAckFrom(from));
            }
        }
        n
    }

    /// The queue is deleted: its ready messages go (the caller drops its store) and its
    /// consumers are returned to be told. Returns the ready count and the consumers.
    pub fn delete(&mut self) -> (u32, Vec<Consumer<C>>) {
        let n = self.len() as u32;
        self.ready.drain();
        self.paged.clear();
        self.ready_bytes = 0;
        (n, std::mem::take(&mut self.consumers))
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
