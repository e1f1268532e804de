//! A channel's delivery side: delivery tags, the unacknowledged messages, prefetch limits and
//! the consumers on the channel. Queues call [`DeliveryChannel::deliver`] (holding their own
//! lock); the server calls ack / nack / reject / cancel / close, passing the [`Followups`]
//! its vhost carries out afterwards (dead letters, auto-delete).
//!
//! Prefetch follows RabbitMQ's reading of `basic.qos`: `global = false` sets the limit of each
//! consumer created afterwards, `global = true` a limit shared by the whole channel.

use crate::error::{AmqpError, Result};
use crate::message::Message;
use crate::queue::{
    CheckoutId, CheckoutKey, ConsumeRefused, Followups, Owner, Queue, QueueConsumer, QueuedMessage,
};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_protocol::ShortStr;

/// Where deliveries go: implemented by the server, which encodes frames into the
/// connection's write buffer.
pub trait DeliveryWriter: Send + Sync {
    fn deliver(
        &self,
        channel: u16,
        consumer_tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        msg: &Message,
    );
    /// A server-initiated basic.cancel (queue deleted), for clients that announce
    /// `consumer_cancel_notify`.
    fn cancel(&self, channel: u16, consumer_tag: &str);
    /// Whether the connection's write buffer is full. A saturated writer must later call for
    /// the channel's consumers to resume (see [`DeliveryChannel::resume`]).
    fn is_saturated(&self) -> bool;
}

/// A delivery a queue offers to a channel.
pub struct Deliver<'a> {
    pub queue: &'a Arc<Queue>,
    pub consumer_id: u32,
    pub tag: &'a ShortStr,
    pub no_ack: bool,
    pub qm: &'a QueuedMessage,
    /// The message's checkout in its queue, if the consumer acks.
    pub checkout: CheckoutId,
    /// A replicated queue's engine already checked it out (it counted the consumer's
    /// prefetch): the channel takes it whatever its own limits say, unless it is closed.
    pub decided: bool,
}

/// A message delivered on this channel and not yet acknowledged: its delivery tag, its
/// checkout in its queue (the queue keeps the message itself, or only where the message is
/// in its store) and who holds it there, as an index into the channel's holders. 24 bytes:
/// a consumer that never acks holds one per message, so the queue and the owner, shared by
/// all of a consumer's deliveries, are kept once in a [`Holder`], and the delivery time is
/// tenths of a second in 32 bits.
pub struct Unacked {
    pub delivery_tag: u64,
    pub checkout: CheckoutId,
    holder: u32,
    /// When it was delivered: tenths of a second after the channel's `epoch`, rounded up
    /// (timeouts are checked once a second; 32 bits last 13 years).
    delivered: u32,
}

const _: () = assert!(std::mem::size_of::<Unacked>() == 24);

impl Unacked {
    fn delivered_at(&self, epoch: Instant) -> Instant {
        epoch + Duration::from_millis(self.delivered as u64 * TICK_MS)
    }
}

/// What the unacked deliveries of one consumer (or of the channel's basic.get on one queue)
/// share: their queue, their owner there, the consumer's slot and the
/// delivery-acknowledgement timeout.
struct Holder {
    queue: Arc<Queue>,
    owner: Owner,
    /// The consumer's slot on this channel (None for basic.get).
    consumer: Option<u32>,
    timeout: Option<Duration>,
    /// Unacked deliveries naming it, plus one while its consumer is on the channel.
    refs: u32,
}

/// Unacked deliveries taken off the channel (acked, rejected, requeued), with their queues.
struct Taken {
    /// (holder index, checkout) in delivery-tag order.
    items: Vec<(u32, CheckoutKey)>,
    /// The queue of each holder named in `items`.
    queues: Vec<(u32, Arc<Queue>)>,
    /// Owners of replicated queues nobody on the channel holds anything for any more (see
    /// `State::released`), once `items` are settled.
    released: Vec<(Arc<Queue>, Owner)>,
}

impl Taken {
    fn len(&self) -> usize {
        self.items.len()
    }

    /// After the items are settled or requeued: see [`Queue::release_owner`].
    fn release_owners(self) {
        release_owners(self.released);
    }

    fn queue(&self, holder: u32) -> &Arc<Queue> {
        &self
            .queues
            .iter()
            .find(|q| q.0 == holder)
            .expect("every holder taken has its queue")
            .1
    }

    /// Calls `f` once per run of consecutive entries from the same queue (acks usually come
    /// in long runs from one queue, so this is one queue lock per batch).
    fn for_each_queue_run(&self, mut f: impl FnMut(&Arc<Queue>, &[(u32, CheckoutKey)])) {
        let items = &self.items;
        let mut start = 0;
        for i in 1..=items.len() {
            if i == items.len()
                || items[i].0 != items[start].0
                    && !Arc::ptr_eq(self.queue(items[i].0), self.queue(items[start].0))
            {
                f(self.queue(items[start].0), &items[start..i]);
                start = i;
            }
        }
    }
}

/// Owners of checkouts are unique in the broker: a consumer or a channel's basic.get.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A new owner of checkouts (each consumer, each channel's basic.get, each management API
/// get request has its own).
pub fn new_owner() -> Owner {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// Owners from now on are numbered from `base` up (a node of a cluster has its own range,
/// so an owner id names its node: [`crate::queue::replica::ReplicaHost::owner_base`]).
pub fn set_owner_base(base: Owner) {
    NEXT_OWNER.fetch_max(base + 1, Ordering::Relaxed);
}

struct ConsumerSlot {
    owner: Owner,
    tag: ShortStr,
    queue: Arc<Queue>,
    no_ack: bool,
    prefetch: u16,
    unacked: u32,
    /// Its deliveries' [`Holder`] (the slot holds a reference to it).
    holder: u32,
}

/// A delivery that was not acknowledged in time.
#[derive(Debug, Clone)]
pub struct TimedOut {
    /// The consumer it went to (None for basic.get).
    pub consumer_tag: Option<ShortStr>,
    pub timeout: Duration,
}

/// The delivery-acknowledgement timeout: a consumer's own `x-consumer-timeout` argument wins
/// over its queue's, which wins over the broker-wide default. 0 disables.
pub fn effective_timeout(
    consumer_args: Option<&warren_protocol::FieldTable>,
    queue: &Queue,
    default: Option<Duration>,
) -> Option<Duration> {
    let from = |t: Option<&warren_protocol::FieldTable>| {
        t.and_then(|t| t.get("x-consumer-timeout"))
            .and_then(|v| v.as_i64())
    };
    match from(consumer_args).or_else(|| queue.options().consumer_timeout.map(|v| v as i64)) {
        Some(ms) if ms <= 0 => None,
        Some(ms) => Some(Duration::from_millis(ms as u64)),
        None => default,
    }
}

struct State {
    closed: bool,
    flow_active: bool,
    next_tag: u64,
    unacked: VecDeque<Unacked>,
    /// What unacked deliveries share, by index (free entries are reused).
    holders: Vec<Option<Holder>>,
    prefetch_count: u16,
    global_prefetch: u16,
    consumers: Vec<Option<ConsumerSlot>>,
    /// Holders of replicated queues that went (their consumer gone, their deliveries
    /// settled): whatever their owner still holds in the queue is returned once the settles
    /// are submitted ([`Queue::release_owner`]).
    released: Vec<(Arc<Queue>, Owner)>,
}

impl State {
    fn hold(&mut self, h: Holder) -> u32 {
        match self.holders.iter().position(Option::is_none) {
            Some(i) => {
                self.holders[i] = Some(h);
                i as u32
            }
            None => {
                self.holders.push(Some(h));
                (self.holders.len() - 1) as u32
            }
        }
    }

    fn holder(&self, i: u32) -> &Holder {
        self.holders[i as usize]
            .as_ref()
            .expect("an unacked delivery's holder lives")
    }

    fn holder_mut(&mut self, i: u32) -> &mut Holder {
        self.holders[i as usize]
            .as_mut()
            .expect("an unacked delivery's holder lives")
    }

    fn release(&mut self, i: u32) {
        let h = self.holder_mut(i);
        h.refs -= 1;
        if h.refs == 0 {
            if let Some(h) = self.holders[i as usize].take() {
                if h.queue.is_replicated() {
                    self.released.push((h.queue, h.owner));
                }
            }
        }
    }

    /// A consumer's slot left the channel: its holder goes once its deliveries are settled.
    fn drop_slot(&mut self, slot: &ConsumerSlot) {
        self.release(slot.holder);
    }

    /// The holder of what basic.get on `queue` takes for `owner` (made on first use).
    fn get_holder(&mut self, queue: &Arc<Queue>, owner: Owner, timeout: Option<Duration>) -> u32 {
        let found = self.holders.iter().position(|h| {
            h.as_ref()
                .is_some_and(|h| h.owner == owner && Arc::ptr_eq(&h.queue, queue))
        });
        match found {
            Some(i) => {
                self.holders[i].as_mut().expect("found").timeout = timeout;
                i as u32
            }
            None => self.hold(Holder {
                queue: queue.clone(),
                owner,
                consumer: None,
                timeout,
                refs: 0,
            }),
        }
    }

    /// Unacked deliveries leave the channel: their consumers' counts go down, their holders
    /// are released, and what the queues need is returned.
    fn resolve(&mut self, removed: impl IntoIterator<Item = Unacked>) -> Taken {
        let mut t = Taken {
            items: Vec::new(),
            queues: Vec::new(),
            released: Vec::new(),
        };
        for u in removed {
            let h = self.holder(u.holder);
            let (owner, consumer) = (h.owner, h.consumer);
            if !t.queues.iter().any(|q| q.0 == u.holder) {
                t.queues.push((u.holder, h.queue.clone()));
            }
            t.items.push((u.holder, (owner, u.checkout)));
            if let Some(Some(slot)) = consumer.and_then(|id| self.consumers.get_mut(id as usize)) {
                if slot.owner == owner {
                    slot.unacked = slot.unacked.saturating_sub(1);
                }
            }
            self.release(u.holder);
        }
        t.released = std::mem::take(&mut self.released);
        t
    }
}

pub struct DeliveryChannel {
    pub number: u16,
    pub conn_id: u64,
    /// The broker-wide consumer timeout, for deliveries without a more specific one.
    pub default_timeout: Option<Duration>,
    /// The owner of what basic.get takes on this channel with an ack expected.
    get_owner: Owner,
    /// The channel's message counts (the management API's `message_stats`).
    pub counters: crate::stats::ChannelCounters,
    /// Its publishes by exchange.
    pub exchanges: crate::stats::ChannelExchanges,
    writer: Arc<dyn DeliveryWriter>,
    state: Mutex<State>,
    /// Delivery times are kept relative to this (see [`Unacked`]).
    epoch: Instant,
}

/// A consumer of this channel, for listing.
pub struct ConsumerInfo {
    pub tag: ShortStr,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    pub prefetch: u16,
    pub unacked: u32,
    /// When the oldest of its unacknowledged deliveries went out.
    pub oldest_unacked: Option<Instant>,
}

/// Channel counters for list_channels and the management API.
#[derive(Debug, Clone, Default)]
pub struct ChannelStats {
    pub consumers: u32,
    pub messages_unacknowledged: u32,
    pub prefetch_count: u16,
    pub global_prefetch_count: u16,
    pub oldest_unacked: Option<Instant>,
}

impl DeliveryChannel {
    pub fn new(
        number: u16,
        conn_id: u64,
        writer: Arc<dyn DeliveryWriter>,
        default_timeout: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(DeliveryChannel {
            number,
            conn_id,
            default_timeout,
            get_owner: new_owner(),
            counters: Default::default(),
            exchanges: Default::default(),
            writer,
            epoch: Instant::now(),
            state: Mutex::new(State {
                closed: false,
                flow_active: true,
                next_tag: 1,
                unacked: VecDeque::new(),
                holders: Vec::new(),
                prefetch_count: 0,
                global_prefetch: 0,
                consumers: Vec::new(),
                released: Vec::new(),
            }),
        })
    }

    /// Called by a queue holding its lock. Returns false when the consumer has no credit (or
    /// the channel is closed, flow-stopped or its connection saturated).
    pub fn deliver(&self, d: Deliver<'_>) -> bool {
        let mut s = self.state.lock();
        if s.closed || !d.decided && (!s.flow_active || self.writer.is_saturated()) {
            return false;
        }
        let global_full = s.global_prefetch != 0 && s.unacked.len() >= s.global_prefetch as usize;
        let Some(Some(slot)) = s.consumers.get_mut(d.consumer_id as usize) else {
            return false;
        };
        if !d.no_ack {
            if !d.decided
                && (global_full || (slot.prefetch != 0 && slot.unacked >= slot.prefetch as u32))
            {
                return false;
            }
            slot.unacked += 1;
        }
        let tag = s.next_tag;
        s.next_tag += 1;
        self.writer
            .deliver(self.number, d.tag, tag, d.qm.redelivered, &d.qm.msg);
        // Counted under the channel's lock: one writer at a time.
        let c = &self.counters;
        if d.no_ack {
            &c.deliver_no_ack
        } else {
            &c.deliver
        }
        .add(1);
        if d.qm.redelivered {
            c.redeliver.add(1);
        }
        let Some(Some(slot)) = s.consumers.get(d.consumer_id as usize) else {
            return true;
        };
        if !d.no_ack {
            let holder = slot.holder;
            s.holder_mut(holder).refs += 1;
            s.unacked.push_back(Unacked {
                delivery_tag: tag,
                checkout: d.checkout,
                holder,
                delivered: ticks_since(self.epoch),
            });
        }
        true
    }

    /// Whether consumer `consumer_id` may be sent one more delivery now: its channel is open
    /// and its prefetch is not used up. A replicated queue's node asks before it sends what
    /// the engine decided (see `Queue::release_held`); as RabbitMQ's quorum queues, those
    /// ignore a channel-wide (`global`) prefetch.
    pub fn has_credit(&self, consumer_id: u32) -> bool {
        let s = self.state.lock();
        if s.closed {
            return false;
        }
        match s.consumers.get(consumer_id as usize) {
            Some(Some(slot)) => {
                slot.no_ack || slot.prefetch == 0 || slot.unacked < slot.prefetch as u32
            }
            _ => false,
        }
    }

    /// basic.get: takes the next message of `queue` (checked out to this channel when an ack
    /// is expected). Returns it, how many remain ready, and its delivery tag.
    pub fn get(
        &self,
        queue: &Arc<Queue>,
        ack_expected: bool,
        fu: &mut Followups,
    ) -> Option<(QueuedMessage, u32, u64)> {
        let got = queue.get(ack_expected.then_some(self.get_owner), fu)?;
        let mut s = self.state.lock();
        let tag = s.next_tag;
        s.next_tag += 1;
        let c = &self.counters;
        if ack_expected { &c.get } else { &c.get_no_ack }.add(1);
        if got.qm.redelivered {
            c.redeliver.add(1);
        }
        if let Some(checkout) = got.checkout {
            let timeout = effective_timeout(None, queue, self.default_timeout);
            let holder = s.get_holder(queue, self.get_owner, timeout);
            s.holder_mut(holder).refs += 1;
            s.unacked.push_back(Unacked {
                delivery_tag: tag,
                checkout,
                holder,
                delivered: ticks_since(self.epoch),
            });
        }
        Some((got.qm, got.remaining, tag))
    }

    /// Checks that an ack/nack/reject names unacked messages, without settling them (a
    /// transaction's acks are checked when they arrive and applied at commit, as RabbitMQ).
    pub fn check_tag(&self, tag: u64, multiple: bool) -> Result<()> {
        let s = self.state.lock();
        if multiple && tag == 0 {
            return Ok(());
        }
        let at = s.unacked.partition_point(|u| u.delivery_tag < tag);
        match s.unacked.get(at) {
            Some(u) if u.delivery_tag == tag => Ok(()),
            _ => Err(unknown_tag(tag)),
        }
    }

    /// Takes the unacked messages an ack/nack/reject names. `multiple` with tag 0 means all.
    fn take(&self, tag: u64, multiple: bool) -> Result<Taken> {
        let mut s = self.state.lock();
        let taken: Vec<Unacked> = if multiple {
            if tag == 0 {
                s.unacked.drain(..).collect()
            } else {
                let end = s.unacked.partition_point(|u| u.delivery_tag <= tag);
                if end == 0 || s.unacked[end - 1].delivery_tag != tag {
                    return Err(unknown_tag(tag));
                }
                s.unacked.drain(..end).collect()
            }
        } else {
            let at = s.unacked.partition_point(|u| u.delivery_tag < tag);
            match s.unacked.get(at) {
                Some(u) if u.delivery_tag == tag => {}
                _ => return Err(unknown_tag(tag)),
            }
            let u = s.unacked.remove(at).expect("index checked");
            vec![u]
        };
        Ok(s.resolve(taken))
    }

    /// basic.ack.
    pub fn ack(&self, tag: u64, multiple: bool, fu: &mut Followups) -> Result<()> {
        self.ack_without_resume(tag, multiple)?;
        self.resume(fu);
        Ok(())
    }

    /// basic.ack, leaving the refill of the consumers' credit to a later
    /// [`DeliveryChannel::resume`] (the server calls it once per read of the socket, so a burst
    /// of acks costs one dispatch).
    pub fn ack_without_resume(&self, tag: u64, multiple: bool) -> Result<()> {
        let taken = self.take(tag, multiple)?;
        self.counters.ack.add(taken.len() as u64);
        taken.for_each_queue_run(|q, run| q.settle(run.iter().map(|x| x.1)));
        taken.release_owners();
        Ok(())
    }

    /// basic.nack / basic.reject: requeue or drop.
    pub fn nack(&self, tag: u64, multiple: bool, requeue: bool, fu: &mut Followups) -> Result<()> {
        let taken = self.take(tag, multiple)?;
        settle_or_requeue(&taken, requeue, fu);
        taken.release_owners();
        self.resume(fu);
        Ok(())
    }

    /// basic.recover: every unacked message of the channel goes back to its queue.
    pub fn recover(&self, fu: &mut Followups) {
        if let Ok(taken) = self.take(0, true) {
            settle_or_requeue(&taken, true, fu);
            taken.release_owners();
        }
        self.resume(fu);
    }

    /// basic.qos.
    pub fn set_prefetch(&self, count: u16, global: bool, fu: &mut Followups) {
        {
            let mut s = self.state.lock();
            if global {
                s.global_prefetch = count;
            } else {
                s.prefetch_count = count;
            }
        }
        self.resume(fu);
    }

    /// channel.flow from the client: stop or restart deliveries.
    pub fn set_flow(&self, active: bool, fu: &mut Followups) {
        self.state.lock().flow_active = active;
        if active {
            self.resume(fu);
        }
    }

    /// Registers a consumer on `queue`. `on_added` runs under the queue's lock before the first
    /// delivery, so the server can write consume-ok ahead of any basic.deliver.
    #[allow(clippy::too_many_arguments)]
    pub fn consume(
        self: &Arc<Self>,
        queue: &Arc<Queue>,
        tag: ShortStr,
        no_ack: bool,
        exclusive: bool,
        arguments: &warren_protocol::FieldTable,
        on_added: impl FnOnce(),
        fu: &mut Followups,
    ) -> Result<()> {
        // `x-priority` must be an integer (RabbitMQ's text).
        let priority = match arguments.get("x-priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                AmqpError::precondition(format!(
                    "invalid arg 'x-priority' for queue '{}' in vhost '{}': \"expected integer, got {}\"",
                    queue.name,
                    queue.vhost_name,
                    v.type_name()
                ))
            })?,
        };
        let timeout = effective_timeout(Some(arguments), queue, self.default_timeout);
        // A stream's consumer: its checks, and where it starts reading.
        let stream_args = match queue.stream() {
            Some(_) => {
                let prefetch = self.state.lock().prefetch_count;
                crate::stream::check_consume(queue, prefetch, no_ack)?;
                Some(crate::stream::args::consumer_args(
                    arguments,
                    &queue.name,
                    &queue.vhost_name,
                    crate::stream::unix_ms(),
                )?)
            }
            None => None,
        };
        let (id, owner) = {
            let mut s = self.state.lock();
            if s.consumers.iter().flatten().any(|c| c.tag == tag) {
                return Err(not_allowed_tag(&tag));
            }
            let owner = new_owner();
            let id = match s.consumers.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    s.consumers.push(None);
                    s.consumers.len() - 1
                }
            } as u32;
            let holder = s.hold(Holder {
                queue: queue.clone(),
                owner,
                consumer: Some(id),
                timeout,
                refs: 1,
            });
            s.consumers[id as usize] = Some(ConsumerSlot {
                owner,
                tag: tag.clone(),
                queue: queue.clone(),
                no_ack,
                prefetch: s.prefetch_count,
                unacked: 0,
                holder,
            });
            (id, owner)
        };
        let c = QueueConsumer {
            handle: self.clone(),
            consumer_id: id,
            owner,
            tag,
            no_ack,
            exclusive,
            priority,
            // The channel enforces prefetch (per consumer or channel-wide) in `deliver`; a
            // replicated queue's engine counts it itself (every replica decides the same
            // deliveries), with the consumer's prefetch as RabbitMQ's quorum queues do.
            prefetch: if queue.is_replicated() {
                self.state.lock().prefetch_count as u32
            } else {
                0
            },
        };
        let added = match (queue.stream(), stream_args) {
            (Some(s), Some((spec, filter))) => s.add_consumer(queue, c, spec, filter, on_added),
            _ => queue.add_consumer(c, on_added, fu),
        };
        match added {
            Ok(()) => Ok(()),
            Err(refused) => {
                let mut s = self.state.lock();
                if let Some(slot) = s.consumers[id as usize].take() {
                    s.drop_slot(&slot);
                }
                drop(s);
                self.release_owners();
                Err(match refused {
                    ConsumeRefused::ExclusiveInUse => AmqpError::access_refused(format!(
                        "queue '{}' in vhost '{}' in exclusive use",
                        queue.name, queue.vhost_name
                    )),
                    ConsumeRefused::Deleted => AmqpError::not_found(format!(
                        "no queue '{}' in vhost '{}'",
                        queue.name, queue.vhost_name
                    )),
                    ConsumeRefused::Unavailable(why) => AmqpError::precondition(format!(
                        "queue '{}' in vhost '{}' is not available: {why}",
                        queue.name, queue.vhost_name
                    )),
                })
            }
        }
    }

    /// basic.cancel; false when no consumer has that tag.
    pub fn cancel(&self, tag: &str, fu: &mut Followups) -> bool {
        let found = {
            let mut s = self.state.lock();
            let pos = s
                .consumers
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.tag == tag));
            let slot = pos.and_then(|i| s.consumers[i].take().map(|c| (i as u32, c)));
            slot.map(|(i, c)| {
                s.drop_slot(&c);
                (i, c.queue)
            })
        };
        match found {
            Some((id, queue)) => {
                queue.remove_consumer(self, id, fu);
                self.release_owners();
                true
            }
            None => false,
        }
    }

    /// The first delivery whose acknowledgement timeout has passed, if any. (A scan of the
    /// unacked deliveries, once a second: their number is bounded by prefetch in practice.)
    pub fn timed_out(&self, now: Instant) -> Option<TimedOut> {
        let s = self.state.lock();
        let u = s.unacked.iter().find(|u| {
            s.holder(u.holder)
                .timeout
                .is_some_and(|t| now.saturating_duration_since(u.delivered_at(self.epoch)) > t)
        })?;
        let h = s.holder(u.holder);
        let consumer_tag = h.consumer.and_then(|id| {
            s.consumers
                .get(id as usize)?
                .as_ref()
                .filter(|c| c.owner == h.owner)
                .map(|c| c.tag.clone())
        });
        Some(TimedOut {
            consumer_tag,
            timeout: h.timeout.unwrap_or_default(),
        })
    }

    /// When the connection must next look for timed-out deliveries ([`Self::timed_out`]):
    /// the earliest deadline of an unacked delivery, and for deliveries still to come to this
    /// channel's consumers, `now` plus the shortest of their timeouts. None: nothing here can
    /// time out before the next basic.get or basic.consume (the connection looks again after
    /// those). Lets an idle connection sleep until then instead of polling.
    pub fn next_timeout_check(&self, now: Instant) -> Option<Instant> {
        let s = self.state.lock();
        let unacked = s.unacked.iter().filter_map(|u| {
            s.holder(u.holder)
                .timeout
                .map(|t| u.delivered_at(self.epoch) + t)
        });
        let to_come = s
            .consumers
            .iter()
            .flatten()
            .filter(|c| !c.no_ack)
            .filter_map(|c| s.holder(c.holder).timeout.map(|t| now + t));
        unacked.chain(to_come).min()
    }

    /// Cancels one consumer (telling the client) and requeues the messages it had not acked;
    /// the rest of the channel goes on.
    pub fn cancel_and_requeue(&self, tag: &str, fu: &mut Followups) {
        let id = {
            let s = self.state.lock();
            s.consumers
                .iter()
                .flatten()
                .find(|c| c.tag == tag)
                .map(|c| c.owner)
        };
        let Some(owner) = id else { return };
        self.writer.cancel(self.number, tag);
        self.cancel(tag, fu);
        let taken = {
            let mut s = self.state.lock();
            let all = std::mem::take(&mut s.unacked);
            let mut mine = Vec::new();
            let mut rest = VecDeque::new();
            for u in all {
                if s.holder(u.holder).owner == owner {
                    mine.push(u);
                } else {
                    rest.push_back(u);
                }
            }
            s.unacked = rest;
            s.resolve(mine)
        };
        settle_or_requeue(&taken, true, fu);
        taken.release_owners();
    }

    /// The queue of a consumer was deleted: forget the consumer and tell the client.
    pub(crate) fn consumer_cancelled_by_server(&self, consumer_id: u32) {
        {
            let mut s = self.state.lock();
            if let Some(slot) = s.consumers.get_mut(consumer_id as usize) {
                if let Some(c) = slot.take() {
                    s.drop_slot(&c);
                    if !s.closed {
                        self.writer.cancel(self.number, &c.tag);
                    }
                }
            }
        }
        self.release_owners();
    }

    /// Holders that went when a consumer left with nothing unacked (see `State::released`).
    fn release_owners(&self) {
        release_owners(std::mem::take(&mut self.state.lock().released));
    }

    /// Channel or connection closed: cancel consumers, then put every unacked message back in
    /// its queue (redelivered) so other consumers get it at once.
    pub fn close(&self, fu: &mut Followups) {
        let (consumers, unacked) = {
            let mut s = self.state.lock();
            s.closed = true;
            let slots: Vec<(u32, ConsumerSlot)> = s
                .consumers
                .iter_mut()
                .enumerate()
                .filter_map(|(i, c)| c.take().map(|c| (i as u32, c)))
                .collect();
            let mut consumers = Vec::with_capacity(slots.len());
            for (i, c) in slots {
                s.drop_slot(&c);
                consumers.push((i, c.queue));
            }
            let all = std::mem::take(&mut s.unacked);
            (consumers, s.resolve(all))
        };
        // Requeue first (this channel is closed, so nothing comes back to it), then remove the
        // consumers: a single active consumer's successor then starts with the oldest message.
        settle_or_requeue(&unacked, true, fu);
        for (id, q) in consumers {
            q.remove_consumer(self, id, fu);
        }
        unacked.release_owners();
    }

    /// Redelivers from the queues of this channel's consumers, after credit came back.
    pub fn resume(&self, fu: &mut Followups) {
        let queues: Vec<Arc<Queue>> = {
            let s = self.state.lock();
            if s.closed {
                return;
            }
            let mut v: Vec<Arc<Queue>> = Vec::new();
            for c in s.consumers.iter().flatten() {
                if !v.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                    v.push(c.queue.clone());
                }
            }
            v
        };
        for q in queues {
            q.dispatch(fu);
        }
    }

    pub fn stats(&self) -> ChannelStats {
        let s = self.state.lock();
        ChannelStats {
            consumers: s.consumers.iter().flatten().count() as u32,
            messages_unacknowledged: s.unacked.len() as u32,
            prefetch_count: s.prefetch_count,
            global_prefetch_count: s.global_prefetch,
            oldest_unacked: s.unacked.front().map(|u| u.delivered_at(self.epoch)),
        }
    }

    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        let s = self.state.lock();
        s.consumers
            .iter()
            .flatten()
            .map(|c| ConsumerInfo {
                tag: c.tag.clone(),
                queue: c.queue.clone(),
                no_ack: c.no_ack,
                prefetch: c.prefetch,
                unacked: c.unacked,
                // Deliveries are in delivery order: the first one of this consumer is its oldest.
                oldest_unacked: (c.unacked > 0)
                    .then(|| {
                        s.unacked
                            .iter()
                            .find(|u| s.holder(u.holder).owner == c.owner)
                            .map(|u| u.delivered_at(self.epoch))
                    })
                    .flatten(),
            })
            .collect()
    }

    pub fn consumes_from(&self, queue: &Arc<Queue>) -> bool {
        self.state
            .lock()
            .consumers
            .iter()
            .flatten()
            .any(|c| Arc::ptr_eq(&c.queue, queue))
    }

    pub fn has_consumer(&self, tag: &str) -> bool {
        self.state
            .lock()
            .consumers
            .iter()
            .flatten()
            .any(|c| c.tag == tag)
    }
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition(format!("unknown delivery tag {tag}"))
}

/// basic.consume with a consumer tag the channel already uses: 530, closing the connection.
pub fn not_allowed_tag(tag: &str) -> AmqpError {
    AmqpError::new(
        warren_protocol::constants::NOT_ALLOWED,
        format!("attempt to reuse consumer tag '{tag}'"),
    )
}

/// See [`Queue::release_owner`].
fn release_owners(released: Vec<(Arc<Queue>, Owner)>) {
    for (q, owner) in released {
        q.release_owner(owner);
    }
}

fn settle_or_requeue(taken: &Taken, requeue: bool, fu: &mut Followups) {
    if !requeue {
        taken.for_each_queue_run(|q, run| q.reject(run.iter().map(|x| x.1), fu));
        return;
    }
    let mut by_queue: Vec<(Arc<Queue>, Vec<CheckoutKey>)> = Vec::new();
    for &(h, key) in &taken.items {
        let q = taken.queue(h);
        match by_queue.iter_mut().find(|(x, _)| Arc::ptr_eq(x, q)) {
            Some((_, v)) => v.push(key),
            None => by_queue.push((q.clone(), vec![key])),
        }
    }
    for (q, checkouts) in by_queue {
        q.requeue(checkouts, fu);
    }
}

/// The unit of [`Unacked`]'s delivery time, in milliseconds.
const TICK_MS: u64 = 100;

/// Tenths of a second since `epoch`, rounded up, saturating at 32 bits.
fn ticks_since(epoch: Instant) -> u32 {
    let ms = epoch.elapsed().as_millis() as u64;
    ms.div_ceil(TICK_MS).min(u32::MAX as u64) as u32
}
