//! Message counters behind the management API's `message_stats`. Each counter has one writer
//! at a time (a connection's own task, or whoever holds the lock of the object it sits in) and
//! is read by the management sampler every few seconds, so counting is a relaxed load and
//! store on a line no other core writes: no shared read-modify-write on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Written by the channel's connection task.
    pub publish: Counter,
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
}

impl MessageCounts {
    pub fn of(c: &ChannelCounters) -> Self {
        MessageCounts {
            publish: c.publish.get(),
            confirm: c.confirm.get(),
            return_unroutable: c.return_unroutable.get(),
            drop_unroutable: c.drop_unroutable.get(),
            ack: c.ack.get(),
            deliver: c.deliver.get(),
            deliver_no_ack: c.deliver_no_ack.get(),
            get: c.get.get(),
            get_no_ack: c.get_no_ack.get(),
            redeliver: c.redeliver.get(),
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
