//! Message counters behind the management API's `message_stats`. Each counter has one writer
//! at a time (a connection's own task, or whoever holds the lock of the object it sits in) and
//! is read by the management sampler every few seconds, so counting is a relaxed load and
//! store on a line no other core writes: no shared read-modify-write on the hot path.

use crate::exchange::Exchange;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A counter with one writer at a time.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A channel's message counters (RabbitMQ's channel `message_stats`).
#[derive(Default, Debug)]
pub struct ChannelCounters {
    /// Written by the channel's connection task. Publishes by body size (RabbitMQ's
    /// `message_size_bytes` buckets, [`SIZE_BUCKETS`] and above): their sum is the publish
    /// count, so the histogram costs no counter of its own.
    pub published_by_size: [Counter; SIZE_BUCKETS.len() + 1],
    /// Bytes of the bodies published.
    pub published_bytes: Counter,
    pub confirm: Counter,
    pub return_unroutable: Counter,
    pub drop_unroutable: Counter,
    pub ack: Counter,
    /// Written under the channel's delivery lock (by whichever task delivers).
    pub deliver: Counter,
    pub deliver_no_ack: Counter,
    pub get: Counter,
    pub get_no_ack: Counter,
    pub redeliver: Counter,
    /// The channel is in confirm mode: publishes from `confirm_from` on expect a confirm
    /// (RabbitMQ's `messages_received_confirm`), counted without a counter of their own.
    pub confirm_mode: AtomicBool,
    pub confirm_from: Counter,
    /// The channel is transactional (tx.select).
    pub transactional: AtomicBool,
}

/// Upper bounds of the message size histogram's buckets, in bytes (RabbitMQ 4's).
pub const SIZE_BUCKETS: [u64; 8] = [
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

impl ChannelCounters {
    /// A message of `size` body bytes was published.
    #[inline]
    pub fn count_publish(&self, size: usize) {
        let size = size as u64;
        let bucket = SIZE_BUCKETS
            .iter()
            .position(|b| size <= *b)
            .unwrap_or(SIZE_BUCKETS.len());
        self.published_by_size[bucket].add(1);
        self.published_bytes.add(size);
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published_by_size.iter().map(Counter::get).sum()
    }

    /// confirm.select: the publishes from now on expect confirms.
    pub fn confirm_mode_from_now(&self) {
        self.confirm_from.add(self.published());
        self.confirm_mode.store(true, Ordering::Relaxed);
    }

    pub fn is_confirm_mode(&self) -> bool {
        self.confirm_mode.load(Ordering::Relaxed)
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional.load(Ordering::Relaxed)
    }
}

/// Counts at one moment, summed over channels (and those of closed channels).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCounts {
    pub publish: u64,
    pub confirm: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
    pub ack: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub redeliver: u64,
    /// Publishes that expected a confirm (not in `message_stats`; Prometheus'
    /// `messages_received_confirm`).
    pub received_confirm: u64,
    /// Publishes by body size, and the bytes (Prometheus' `message_size_bytes`).
    pub published_by_size: [u64; SIZE_BUCKETS.len() + 1],
    pub published_bytes: u64,
}

impl MessageCounts {
    pub fn of(c: &ChannelCounters) -> Self {
        MessageCounts {
            publish: c.published(),
            confirm: c.confirm.get(),
            return_unroutable: c.return_unroutable.get(),
            drop_unroutable: c.drop_unroutable.get(),
            ack: c.ack.get(),
            deliver: c.deliver.get(),
            deliver_no_ack: c.deliver_no_ack.get(),
            get: c.get.get(),
            get_no_ack: c.get_no_ack.get(),
            redeliver: c.redeliver.get(),
            published_by_size: std::array::from_fn(|i| c.published_by_size[i].get()),
            published_bytes: c.published_bytes.get(),
            received_confirm: if c.is_confirm_mode() {
                c.published().saturating_sub(c.confirm_from.get())
            } else {
                0
            },
        }
    }

    pub fn add(&mut self, o: &MessageCounts) {
        self.publish += o.publish;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.ack += o.ack;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.redeliver += o.redeliver;
        self.received_confirm += o.received_confirm;
        for (a, b) in self.published_by_size.iter_mut().zip(o.published_by_size) {
            *a += b;
        }
        self.published_bytes += o.published_bytes;
    }

    /// RabbitMQ's names and values, including the derived `deliver_get`.
    pub fn fields(&self) -> [(&'static str, u64); 11] {
        [
            ("publish", self.publish),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("drop_unroutable", self.drop_unroutable),
            ("ack", self.ack),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("redeliver", self.redeliver),
            (
                "deliver_get",
                self.deliver + self.deliver_no_ack + self.get + self.get_no_ack,
            ),
        ]
    }
}

/// A connection's bytes in and out (RabbitMQ's `recv_oct` / `send_oct`).
#[derive(Default, Debug)]
pub struct IoCounters {
    /// Written by the reader task.
    pub recv_oct: Counter,
    pub recv_cnt: Counter,
    /// Written by the writer task.
    pub send_oct: Counter,
    pub send_cnt: Counter,
}

/// What a channel published into one exchange (RabbitMQ's `channel_exchange_metrics`, and the
/// exchange's `publish_in` / `publish_out`). Written by the channel's connection task only.
#[derive(Default, Debug)]
pub struct ExchangeCounters {
    /// Messages published into the exchange.
    pub publish_in: Counter,
    /// Copies it routed to queues (a message routed to three queues counts three, as in
    /// RabbitMQ).
    pub publish_out: Counter,
}

/// [`ExchangeCounters`] read at one moment, or summed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeCounts {
    pub publish_in: u64,
    pub publish_out: u64,
}

impl ExchangeCounts {
    pub fn of(c: &ExchangeCounters) -> Self {
        ExchangeCounts {
            publish_in: c.publish_in.get(),
            publish_out: c.publish_out.get(),
        }
    }

    pub fn add(&mut self, o: &ExchangeCounts) {
        self.publish_in += o.publish_in;
        self.publish_out += o.publish_out;
    }
}

/// A channel's counters by exchange. The channel's task looks an exchange's entry up when it
/// publishes to another exchange than the last one (it keeps the last one's at hand), so a
/// message costs two relaxed load-and-stores on counters of its own; the sampler reads the
/// entries under the lock.
#[derive(Default)]
pub struct ChannelExchanges {
    inner: parking_lot::Mutex<ExchangeEntries>,
}

#[derive(Default)]
struct ExchangeEntries {
    /// By the exchange's address (the entry holds the exchange, so the address is not reused
    /// while the entry lives).
    map: rustc_hash::FxHashMap<usize, (Arc<Exchange>, Arc<ExchangeCounters>)>,
    /// Deleted exchanges' entries are dropped when the map grows to this size.
    prune_at: usize,
}

impl ChannelExchanges {
    /// The counters of this channel's publishes into `x`.
    pub fn counters_for(&self, x: &Arc<Exchange>) -> Arc<ExchangeCounters> {
        let mut e = self.inner.lock();
        let key = Arc::as_ptr(x) as usize;
        if let Some((_, c)) = e.map.get(&key) {
            return c.clone();
        }
        if e.map.len() >= e.prune_at {
            // A deleted exchange's counts go with it, as in RabbitMQ.
            e.map.retain(|_, (x, _)| !x.is_deleted());
            e.prune_at = (e.map.len() * 2).max(16);
        }
        let c = Arc::new(ExchangeCounters::default());
        e.map.insert(key, (x.clone(), c.clone()));
        c
    }

    /// Calls `f` with every exchange this channel published into and its counts now, without
    /// copying the list (the statistics round visits every channel).
    pub fn for_each_count(&self, mut f: impl FnMut(&Arc<Exchange>, ExchangeCounts)) {
        for (x, c) in self.inner.lock().map.values() {
            f(x, ExchangeCounts::of(c));
        }
    }

    /// Every exchange this channel published into, with its counts now.
    pub fn counts(&self) -> Vec<(Arc<Exchange>, ExchangeCounts)> {
        self.inner
            .lock()
            .map
            .values()
            .map(|(x, c)| (x.clone(), ExchangeCounts::of(c)))
            .collect()
    }
}

/// Objects coming and going (RabbitMQ's `connection_churn_metrics`). Written when a
/// connection, channel or queue opens or closes, never per message.
#[derive(Default, Debug)]
pub struct Churn {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
    pub queues_declared: AtomicU64,
    pub queues_created: AtomicU64,
    pub queues_deleted: AtomicU64,
}

impl Churn {
    pub fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
