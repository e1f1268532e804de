//! Streams (`x-queue-type: stream`) over AMQP 0-9-1, as RabbitMQ's: an append-only log that
//! consumption never shortens. Every message gets an offset (a u64 from 0); consumers say where
//! to start (`x-stream-offset`), read at their own pace with `basic.qos` credit that acks give
//! back, and each delivery carries its `x-stream-offset` header. Retention removes whole old
//! segments (`x-max-length-bytes`, `x-max-age`, by argument or policy).
//!
//! A stream is a [`Queue`] with a [`Stream`] inside: routing, bindings, declarations and the
//! management API see a queue, and the queue hands its messages and consumers to the stream.
//!
//! Layout: [`args`] (declaration checks, options, consumer arguments), `reader` (one
//! consumer's position and read-ahead), [`entry`] (what a record holds: a 0-9-1 message or a
//! stream-protocol one), [`amqp10`] (AMQP 1.0 messages and their conversion to and from
//! 0-9-1), `tracking` (named publishers' ids and named consumers' offsets), `protocol` (what
//! the stream protocol's listener, `warren-stream`, calls: appends with deduplication, reads
//! by chunk, offsets), `chunks` (chunks built once for the stream protocol's readers at the
//! same place), [`sac`] (single active consumer groups), [`super_stream`] (super streams:
//! an exchange and its partition streams), this file (the log, appends with group commit, dispatch to readers,
//! retention, statistics). The log is a `warren_store::StreamStore` (`docs/streams.md`).
//!
//! Lock order: the stream's readers → its store; its chunk cache → its store; readers → a
//! consumer's delivery channel (as a queue's lock comes before its channels'). An append
//! takes only the store's lock (with the persistence gate), then the readers' lock to
//! deliver.

pub mod amqp10;
pub mod args;
mod chunks;
pub mod entry;
mod protocol;
mod reader;
pub mod sac;
pub mod super_stream;
mod tracking;

use crate::delivery::{Deliver, DeliveryChannel};
use crate::error::{AmqpError, Result};
use crate::message::Message;
use crate::persist::Persistence;
use crate::queue::{
    ConsumeRefused, PublishError, Published, QueueConsumer, QueueStats, QueuedMessage,
};
use crate::Queue;
pub use args::OffsetSpec;
use args::{Filter, StreamOptions};
use parking_lot::Mutex;
use reader::{Reader, READ_AHEAD};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use warren_protocol::constants::NOT_IMPLEMENTED;
use warren_protocol::ShortStr;
use warren_store::{StreamRecord, StreamStore};

pub use args::parse_age;
pub use chunks::{FilteredChunk, ReadChunk, Reading};
pub use protocol::{Cursor, Published as StreamPublished};
use tracking::Tracking;

/// Wall-clock time in ms since the Unix epoch: a stream's timestamps outlive the process
/// (the broker's own clock counts from its start).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A stream's log, its readers and its counters.
pub struct Stream {
    store: Mutex<StreamStore>,
    readers: Mutex<Vec<Reader>>,
    options: Mutex<StreamOptions>,
    persistence: Arc<Persistence>,
    /// Enlisted for the next group commit (see `Queue`'s store slot: the same protocol).
    dirty: AtomicBool,
    published: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    /// Named publishers' last publishing ids and named consumers' offsets.
    tracking: Mutex<Tracking>,
    /// The next offset, for the stream protocol's readers to wait on (closed-over senders
    /// wake them on deletion too: they check the queue).
    tail: tokio::sync::watch::Sender<u64>,
    /// Chunks built for the stream protocol's readers (see `chunks`), and how many of them
    /// read now.
    chunks: Mutex<chunks::ChunkCache>,
    chunk_readers: std::sync::atomic::AtomicUsize,
    /// Single active consumer groups of the stream protocol's subscriptions.
    pub sac: sac::SacGroups,
}

/// `queue 'q' in vhost 'v'`, as RabbitMQ's `rabbit_misc:rs`.
fn rs(q: &Queue) -> String {
    format!("queue '{}' in vhost '{}'", q.name, q.vhost_name)
}

/// basic.get on a stream: RabbitMQ closes the connection with 540.
pub fn get_refused(q: &Queue) -> AmqpError {
    AmqpError::new(
        NOT_IMPLEMENTED,
        format!("basic.get not supported by stream queues {}", rs(q)),
    )
}

/// queue.purge on a stream: RabbitMQ closes the connection with 540.
pub fn purge_refused(q: &Queue) -> AmqpError {
    AmqpError::new(
        NOT_IMPLEMENTED,
        format!("queue.purge not supported by stream queues {}", rs(q)),
    )
}

/// basic.consume's checks, in RabbitMQ's order: a consumer prefetch (`basic.qos` with
/// `global = false`) must be set, and acks must be manual.
pub fn check_consume(q: &Queue, prefetch: u16, no_ack: bool) -> Result<()> {
    if prefetch == 0 {
        return Err(AmqpError::precondition(format!(
            "consumer prefetch count is not set for stream {}",
            rs(q)
        )));
    }
    if no_ack {
        return Err(AmqpError::new(
            NOT_IMPLEMENTED,
            format!(
                "automatic acknowledgement not supported by stream {}",
                rs(q)
            ),
        ));
    }
    Ok(())
}

impl Stream {
    /// Opens (or creates) the stream's log in the queue's directory under the data directory.
    pub(crate) fn open(
        persistence: &Arc<Persistence>,
        vhost: &str,
        name: &str,
        options: StreamOptions,
    ) -> warren_store::Result<Stream> {
        let dir = persistence.queue_dir(vhost, name);
        let mut seen = Tracking::default();
        let store = StreamStore::open_with(
            persistence.backend(),
            dir.clone(),
            options.max_segment_size,
            |_, rec| {
                if let Some((r, id)) = entry::writer_of(rec) {
                    seen.saw_writer(r, id);
                }
            },
        )?;
        let mut tracking = Tracking::load(&*persistence.backend(), &dir);
        for (r, id) in seen.writers {
            tracking.saw_writer(&r, id);
        }
        let (tail, _) = tokio::sync::watch::channel(store.next_offset());
        let s = Stream {
            tracking: Mutex::new(tracking),
            tail,
            store: Mutex::new(store),
            readers: Mutex::new(Vec::new()),
            options: Mutex::new(options),
            persistence: persistence.clone(),
            dirty: AtomicBool::new(false),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            chunks: Default::default(),
            chunk_readers: Default::default(),
            sac: Default::default(),
        };
        s.apply_retention();
        Ok(s)
    }

    pub fn options(&self) -> StreamOptions {
        *self.options.lock()
    }

    /// New options (a policy changed): the segment size applies to the next records, the
    /// retention at once.
    pub fn set_options(&self, o: StreamOptions) {
        *self.options.lock() = o;
        self.store.lock().set_max_segment_size(o.max_segment_size);
        self.apply_retention();
    }

    fn apply_retention(&self) {
        let r = self.options.lock().retention;
        if r.max_bytes.is_none() && r.max_age_ms.is_none() {
            return;
        }
        {
            let mut st = self.store.lock();
            if let Err(e) = st.apply_retention(r, unix_ms()) {
                tracing::warn!(dir = %st.dir().display(), error = %e, "stream retention could not remove a segment");
            }
        }
        // (Chunks of removed segments are not delivered again; the cache's lock comes
        // before the store's.)
        self.chunks.lock().clear();
    }

    /// Messages retained.
    pub fn count(&self) -> u64 {
        self.store.lock().count()
    }

    /// (first retained offset, next offset, segment files, bytes on disk).
    pub fn extent(&self) -> (u64, u64, usize, u64) {
        let st = self.store.lock();
        (
            st.first_offset(),
            st.next_offset(),
            st.segment_count(),
            st.disk_bytes(),
        )
    }

    /// Appends a message (every message of a stream is kept, persistent or not) and hands it
    /// to the readers at the tail. The publisher's confirm waits for the returned epoch.
    pub(crate) fn publish(
        &self,
        q: &Arc<Queue>,
        msg: &Message,
    ) -> std::result::Result<Published, PublishError> {
        let p = &self.persistence;
        let now = unix_ms();
        let (epoch, rolled) = {
            let _gate = p.gate.read();
            let epoch = p.current_epoch();
            let mut st = self.store.lock();
            let before = st.end().segment;
            st.append(now, |buf| msg.encode_record(true, None, buf))
                .map_err(PublishError::Store)?;
            let rolled = st.end().segment != before;
            self.tail.send_replace(st.next_offset());
            drop(st);
            if !self.dirty.swap(true, Ordering::AcqRel) {
                p.enlist(q);
            }
            (epoch, rolled)
        };
        self.published.fetch_add(1, Ordering::Relaxed);
        if rolled {
            self.apply_retention();
        }
        self.dispatch(q);
        Ok(Published {
            epoch: Some(epoch),
            backlogged: false,
            ..Default::default()
        })
    }

    /// The group commit's fsync of the log; the disk work runs without the store's lock.
    pub(crate) fn sync(&self) -> warren_store::Result<bool> {
        let handles = {
            let mut st = self.store.lock();
            self.dirty.store(false, Ordering::Release);
            st.begin_sync()?
        };
        let fsynced = handles.into_iter().try_for_each(|h| h());
        let dir = {
            let mut st = self.store.lock();
            st.end_sync(fsynced)?;
            st.dir().to_path_buf()
        };
        self.save_tracking(&dir)?;
        Ok(false)
    }

    /// Adds a consumer starting at `spec`, then delivers what it has credit for.
    pub(crate) fn add_consumer(
        &self,
        q: &Arc<Queue>,
        c: QueueConsumer,
        spec: OffsetSpec,
        filter: Option<Filter>,
        on_added: impl FnOnce(),
    ) -> std::result::Result<(), ConsumeRefused> {
        let mut readers = self.readers.lock();
        if q.is_deleted() {
            return Err(ConsumeRefused::Deleted);
        }
        let protocol::Cursor { pos, next_offset } = self.resolve(spec);
        readers.push(Reader {
            handle: c.handle,
            consumer_id: c.consumer_id,
            tag: c.tag,
            exclusive: c.exclusive,
            pos,
            next_offset,
            buf: VecDeque::new(),
            pending: None,
            filter,
        });
        on_added();
        let r = readers.last_mut().expect("just pushed");
        self.feed(q, r);
        Ok(())
    }

    pub(crate) fn remove_consumer(&self, channel: &DeliveryChannel, consumer_id: u32) {
        self.readers.lock().retain(|r| !r.is(channel, consumer_id));
    }

    /// Delivers to every reader what its credit allows.
    pub(crate) fn dispatch(&self, q: &Arc<Queue>) {
        let mut readers = self.readers.lock();
        for r in readers.iter_mut() {
            self.feed(q, r);
        }
    }

    /// Acks, nacks and rejects only give credit back (RabbitMQ: "all settle reasons give
    /// credit"); the channel counts it, the stream only the acks.
    pub(crate) fn settled(&self, n: usize) {
        self.acked.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The next record for `r`, reading a chunk when its read-ahead is empty.
    fn next_record(&self, q: &Queue, r: &mut Reader) -> Option<StreamRecord> {
        if r.buf.is_empty() {
            let st = self.store.lock();
            match st.read_batch(r.pos, READ_AHEAD) {
                Ok((recs, next)) => {
                    r.pos = next;
                    r.buf.extend(recs.into_iter().map(|(_, rec)| rec));
                }
                Err(e) => {
                    tracing::warn!(queue = %q.name, vhost = %q.vhost_name, error = %e, "stream read failed; the consumer waits");
                    return None;
                }
            }
        }
        r.buf.pop_front()
    }

    fn feed(&self, q: &Arc<Queue>, r: &mut Reader) {
        loop {
            if r.pending.is_none() {
                let Some(rec) = self.next_record(q, r) else {
                    return;
                };
                if rec.offset < r.next_offset {
                    continue;
                }
                r.next_offset = rec.offset + 1;
                let Some(entry) = entry::decode(rec.payload) else {
                    tracing::warn!(queue = %q.name, offset = rec.offset, "undecodable stream record skipped");
                    continue;
                };
                if let Some(f) = &r.filter {
                    if !f.matches(entry.filter_value()) {
                        continue;
                    }
                }
                let msg = match entry {
                    entry::Entry::Amqp091(m) => m,
                    entry::Entry::Amqp10 { message, .. } => {
                        amqp10::decode_message(message, "", &q.name)
                    }
                };
                let msg = msg.with_header("x-stream-offset", rec.offset as i64);
                r.pending = Some(QueuedMessage {
                    seq: rec.offset,
                    msg: Arc::new(msg),
                    redelivered: false,
                    pos: None,
                    priority: 0,
                    expires_at: None,
                    delivery_count: 0,
                });
            }
            let qm = r.pending.as_ref().expect("set above");
            let taken = r.handle.deliver(Deliver {
                queue: q,
                consumer_id: r.consumer_id,
                tag: &r.tag,
                no_ack: false,
                qm,
                checkout: qm.seq,
                decided: false,
            });
            if !taken {
                return;
            }
            r.pending = None;
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn consumer_count(&self) -> u32 {
        self.readers.lock().len() as u32
    }

    pub fn consumers(&self) -> Vec<(ShortStr, Arc<DeliveryChannel>, bool, bool)> {
        self.readers
            .lock()
            .iter()
            .map(|r| (r.tag.clone(), r.handle.clone(), false, r.exclusive))
            .collect()
    }

    pub fn stats(&self) -> QueueStats {
        let (readers, count) = (self.consumer_count(), self.count());
        let delivered = self.delivered.load(Ordering::Relaxed);
        QueueStats {
            messages_ready: count,
            consumers: readers as u64,
            published: self.published.load(Ordering::Relaxed),
            delivered,
            deliver: delivered,
            acked: self.acked.load(Ordering::Relaxed),
            ..Default::default()
        }
    }

    /// The stream was deleted: its consumers are cancelled and its log removed. Returns how
    /// many messages it held.
    pub(crate) fn delete(&self) -> u32 {
        let readers = std::mem::take(&mut *self.readers.lock());
        let mut st = self.store.lock();
        let n = st.count() as u32;
        if let Err(e) = st.remove_dir() {
            tracing::warn!(dir = %st.dir().display(), error = %e, "could not remove the deleted stream's log; the next start removes it");
        }
        drop(st);
        for r in readers {
            r.handle.consumer_cancelled_by_server(r.consumer_id);
        }
        // Wakes the stream protocol's readers, who find the queue deleted.
        self.tail.send_replace(u64::MAX);
        n
    }
}

/// The options a stream's policy and arguments give.
pub(crate) fn options_for(
    q: &Queue,
    policy: Option<&warren_protocol::FieldTable>,
) -> StreamOptions {
    StreamOptions::from_arguments(&q.arguments, policy)
}
