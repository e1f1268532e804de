//! A connection's outgoing byte buffer, shared by everything that writes to the client: the
//! connection's own replies and the queues delivering to its consumers. The writer task swaps
//! the whole buffer out and sends it with one `write`, so bursts of deliveries cost one
//! syscall and one wake-up, not one per message.

use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use tokio::sync::Notify;
use warren_broker::{DeliveryWriter, Message};
use warren_protocol::frame::{write_deliver, write_method};
use warren_protocol::methods::BasicCancel;
use warren_protocol::Method;

/// Above this many buffered bytes, queues stop delivering to the connection until the writer
/// has drained it below [`LOW_WATER`]; this bounds memory for slow auto-ack consumers.
pub const HIGH_WATER: usize = 4 << 20;
pub const LOW_WATER: usize = 1 << 20;

pub struct Outbox {
    buf: Mutex<BytesMut>,
    pending: AtomicUsize,
    /// Wakes the writer task.
    pub wake_writer: Notify,
    /// Wakes the reader task to resume consumers once the buffer has drained.
    pub wake_resume: Notify,
    wants_resume: AtomicBool,
    frame_max: AtomicU32,
    cancel_notify: AtomicBool,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new(frame_max: u32) -> Self {
        Outbox {
            // Grows with the first writes; given back when the connection is idle.
            buf: Mutex::new(BytesMut::new()),
            pending: AtomicUsize::new(0),
            wake_writer: Notify::new(),
            wake_resume: Notify::new(),
            wants_resume: AtomicBool::new(false),
            frame_max: AtomicU32::new(frame_max),
            cancel_notify: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    pub fn set_frame_max(&self, v: u32) {
        self.frame_max.store(v, Ordering::Relaxed);
    }
    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }
    pub fn set_cancel_notify(&self, v: bool) {
        self.cancel_notify.store(v, Ordering::Relaxed);
    }

    /// Appends bytes produced by `f` and wakes the writer if the buffer was empty (otherwise
    /// the write that filled it has woken the writer already, and its next `take` gets these
    /// bytes too: one wake-up per burst, not per frame).
    pub fn write(&self, f: impl FnOnce(&mut BytesMut)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let was_empty = {
            let mut b = self.buf.lock();
            let was_empty = b.is_empty();
            f(&mut b);
            // Under the lock: stored after it, a count could overwrite the writer's reset in
            // `take` and leave queues waiting for a drain of bytes already sent.
            self.pending.store(b.len(), Ordering::Release);
            was_empty
        };
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    pub fn send(&self, channel: u16, m: impl Into<Method>) {
        let m = m.into();
        self.write(|b| write_method(b, channel, &m));
    }

    /// Swaps the buffered bytes into `spare` (which must be empty) for the writer.
    pub fn take(&self, spare: &mut BytesMut) {
        let mut b = self.buf.lock();
        std::mem::swap(&mut *b, spare);
        self.pending.store(0, Ordering::Release);
    }

    /// The buffer's capacity (the writer's idle release looks at it).
    pub fn capacity(&self) -> usize {
        self.buf.lock().capacity()
    }

    /// Gives the buffer's memory back if nothing is buffered (the connection is idle).
    pub fn release_idle(&self) {
        let mut b = self.buf.lock();
        if b.is_empty() {
            *b = BytesMut::new();
        }
    }

    /// Called by the writer after a write: resumes consumers that were held back.
    pub fn drained(&self) {
        if self.pending.load(Ordering::Relaxed) < LOW_WATER
            && self.wants_resume.swap(false, Ordering::AcqRel)
        {
            self.wake_resume.notify_one();
        }
    }

    /// No more writes are accepted (the connection is going away).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake_writer.notify_one();
    }
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl DeliveryWriter for Outbox {
    fn deliver(
        &self,
        channel: u16,
        consumer_tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        msg: &Message,
    ) {
        let frame_max = self.frame_max();
        self.write(|b| {
            write_deliver(
                b,
                channel,
                consumer_tag,
                delivery_tag,
                redelivered,
                &msg.exchange,
                &msg.routing_key,
                &msg.properties,
                &msg.body,
                frame_max,
            )
        });
    }

    fn cancel(&self, channel: u16, consumer_tag: &str) {
        if self.cancel_notify.load(Ordering::Relaxed) {
            self.send(
                channel,
                BasicCancel {
                    consumer_tag: consumer_tag.into(),
                    nowait: true,
                },
            );
        }
    }

    fn is_saturated(&self) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return true;
        }
        if self.pending.load(Ordering::Relaxed) < HIGH_WATER {
            return false;
        }
        self.wants_resume.store(true, Ordering::Release);
        // The writer may have drained between the load and the store; look again so a
        // resume is never lost (a spurious one is harmless).
        self.pending.load(Ordering::Acquire) >= HIGH_WATER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The count that tells queues whether to hold back must always describe the buffer: a
    /// write racing the writer's swap must not leave a stale large count behind an empty
    /// buffer (consumers would wait for a drain that never comes).
    #[test]
    fn pending_never_outlives_a_concurrent_take() {
        let outbox = Arc::new(Outbox::new(131072));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (o, stop) = (outbox.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        o.write(|b| b.extend_from_slice(&[0u8; 512]));
                    }
                })
            })
            .collect();
        let mut spare = BytesMut::new();
        let mut stale = 0;
        for _ in 0..200_000 {
            outbox.take(&mut spare);
            spare.clear();
            // Between our take and this look, writers may have added; the count may never
            // exceed what the buffer holds.
            let (buffered, pending) = {
                let b = outbox.buf.lock();
                (b.len(), outbox.pending.load(Ordering::Acquire))
            };
            if pending > buffered {
                stale += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        outbox.take(&mut spare);
        assert_eq!(outbox.pending.load(Ordering::Acquire), 0);
        assert_eq!(stale, 0, "pending counted bytes the buffer no longer held");
    }
}
