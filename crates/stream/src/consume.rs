//! Subscriptions: subscribe at an offset specification, credit (one per chunk), deliver,
//! unsubscribe; and named consumers' stored offsets (store offset, query offset).
//!
//! Each subscription has a task: while it has credit it reads the next consecutive records
//! (up to a chunk's worth of bytes), makes them one chunk (0-9-1 messages converted to AMQP
//! 1.0 on the way) and writes a deliver frame; at the tail it waits for the next append.
//! When the stream is deleted it tells the client with a metadata update (stream not
//! available) and ends, as RabbitMQ does.

use crate::chunk;
use crate::command::{key, OffsetSpecification};
use crate::connection::{Conn, ConnEvent, Outbox, Subscription, OUTBOX_LIMIT};
use crate::response::{self, Result, StreamError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;
use warren_broker::auth::{Access, Resource};
use warren_broker::connections::StreamConsumerInfo;
use warren_broker::stream::args::Filter;
use warren_broker::stream::sac::{SacEvent, SacMember};
use warren_broker::stream::{amqp10, entry, FilteredChunk, OffsetSpec};
use warren_broker::Queue;

/// Bytes of records one chunk holds at most (at least one record, whatever its size). Under
/// the allocator's mmap threshold (64 KiB, fixed): a chunk of 256 KiB was a fresh mapping
/// whose pages faulted in one by one, and that was most of a replay's cost (1.5 µs of broker
/// CPU a message, 0.5 with these; docs/benchmarks.md).
const CHUNK_BYTES: usize = 60 * 1024;

impl Conn {
    pub(crate) fn subscribe(
        &mut self,
        correlation_id: u32,
        sid: u8,
        stream: String,
        offset: OffsetSpecification,
        credit: u16,
        properties: Vec<(String, String)>,
    ) {
        let r = self.start_subscription(sid, &stream, offset, credit, &properties);
        self.out.outcome(key::SUBSCRIBE, correlation_id, &r);
        // After the response: the client knows the subscription before its first chunk, or
        // before the consumer update that makes it active.
        match r {
            Ok(Start::Deliver) => self.start_delivery(sid, None),
            Ok(Start::Activate) => self.activate(sid),
            Ok(Start::Wait) | Err(_) => {}
        }
    }

    fn start_subscription(
        &mut self,
        sid: u8,
        stream: &str,
        offset: OffsetSpecification,
        credit: u16,
        properties: &[(String, String)],
    ) -> Result<Start> {
        if self.subscriptions.contains_key(&sid) {
            return Err(StreamError::SubscriptionExists(sid));
        }
        let q = self.stream(stream)?;
        self.access()
            .check(Access::Read, Resource::Queue, stream)
            .map_err(|e| StreamError::from_amqp(e, stream))?;
        let property = |k: &str| {
            properties
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let sac = match property("single-active-consumer") {
            Some("true") => match property("name") {
                Some(name) if !name.is_empty() => Some(name.to_string()),
                // RabbitMQ refuses a single active consumer without a name.
                _ => {
                    return Err(StreamError::Precondition(
                        "a single active consumer needs a name".into(),
                    ))
                }
            },
            _ => None,
        };
        let info = Arc::new(StreamConsumerInfo {
            stream: stream.to_string(),
            consumed: AtomicU64::new(0),
            offset: Default::default(),
            credits: Arc::new(Semaphore::new(credit as usize)),
            properties: properties.to_vec(),
            single_active: sac.is_some(),
            active: AtomicBool::new(sac.is_none()),
        });
        self.clients.consumers.lock().insert(sid, info.clone());
        let start = match &sac {
            None => Start::Deliver,
            Some(name) => {
                let events = self.events.clone();
                let member = SacMember {
                    conn: self.id,
                    sid,
                    notify: Arc::new(move |e| {
                        let _ = events.send(ConnEvent::Sac(sid, e));
                    }),
                };
                // A super stream's partition spreads its groups' active consumers.
                let partition = property("super-stream")
                    .and_then(|ss| self.vhost().super_stream_partition_index(ss, stream));
                let active = q
                    .stream()
                    .is_some_and(|s| s.sac.join(name, partition, member));
                if active {
                    Start::Activate
                } else {
                    Start::Wait
                }
            }
        };
        self.subscriptions.insert(
            sid,
            Subscription {
                task: None,
                queue: q,
                spec: offset_spec(offset),
                info,
                sac,
                filter: filter_of(properties),
            },
        );
        Ok(start)
    }

    /// Starts delivering to subscription `sid`, from `spec` (None: where it subscribed).
    fn start_delivery(&mut self, sid: u8, spec: Option<OffsetSpec>) {
        let (out, v2) = (self.out.clone(), self.deliver_v2);
        let Some(s) = self
            .subscriptions
            .get_mut(&sid)
            .filter(|s| s.task.is_none())
        else {
            return;
        };
        let deliver = deliver_loop(
            s.queue.clone(),
            spec.unwrap_or(s.spec),
            sid,
            s.info.clone(),
            s.filter.clone(),
            out,
            v2,
            s.info.stream.clone(),
        );
        s.task = Some(tokio::spawn(deliver));
    }

    /// Tells the client that single-active-consumer subscription `sid` is now its group's
    /// active one; it answers where to start (RabbitMQ's consumer update).
    fn activate(&mut self, sid: u8) {
        let Some(s) = self.subscriptions.get(&sid) else {
            return;
        };
        s.info.active.store(true, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, stream = %s.info.stream, sid, "a single active consumer becomes active");
        self.send_consumer_update(sid, true);
    }

    /// Tells single-active-consumer subscription `sid` that it is no longer its group's
    /// active one (a super stream's consumers were rebalanced): its delivery stops, and its
    /// answer lets the group activate the next one.
    fn step_down(&mut self, sid: u8) {
        let Some(s) = self.subscriptions.get_mut(&sid) else {
            return;
        };
        if let Some(t) = s.task.take() {
            t.abort();
        }
        s.info.active.store(false, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, stream = %s.info.stream, sid, "a single active consumer steps down");
        self.send_consumer_update(sid, false);
    }

    /// A consumer update request (RabbitMQ's `ConsumerUpdate`, server to client); its
    /// answer comes to [`Conn::consumer_update_response`].
    fn send_consumer_update(&mut self, sid: u8, active: bool) {
        let correlation_id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        self.consumer_updates.insert(correlation_id, (sid, active));
        self.out.send(|w| {
            w.frame(key::CONSUMER_UPDATE, 1, |w| {
                w.u32(correlation_id);
                w.u8(sid);
                w.u8(active as u8);
            })
        });
    }

    pub(crate) fn on_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Sac(sid, SacEvent::Activate) => self.activate(sid),
            ConnEvent::Sac(sid, SacEvent::StepDown) => self.step_down(sid),
        }
    }

    pub(crate) fn consumer_update_response(
        &mut self,
        correlation_id: u32,
        code: u16,
        offset: Option<OffsetSpecification>,
    ) {
        let Some((sid, activated)) = self.consumer_updates.remove(&correlation_id) else {
            tracing::debug!(peer = %self.peer, correlation_id, "an answer to no consumer update");
            return;
        };
        if code != response::OK {
            tracing::info!(peer = %self.peer, sid, code, "unexpected consumer update response code");
        }
        let Some(s) = self.subscriptions.get(&sid) else {
            return;
        };
        if !activated {
            // It has stopped: the group's next active one may start.
            if let (Some(name), Some(stream)) = (&s.sac, s.queue.stream()) {
                stream.sac.stepped_down(name, self.id, sid);
            }
        } else if s.info.active.load(Ordering::Relaxed) {
            // (Unless told to step down before it answered.)
            self.start_delivery(sid, offset.map(offset_spec));
        }
    }

    /// A subscription ends (unsubscribed, or its connection closed): its delivery stops, and
    /// its single-active-consumer group, if it was the active one, activates the next.
    pub(crate) fn end_subscription(&mut self, sid: u8, s: Subscription) {
        if let Some(t) = &s.task {
            t.abort();
        }
        self.clients.consumers.lock().remove(&sid);
        if let (Some(name), Some(stream)) = (&s.sac, s.queue.stream()) {
            stream.sac.leave(name, self.id, sid);
        }
    }

    pub(crate) fn credit(&mut self, sid: u8, credit: u16) {
        match self.subscriptions.get(&sid) {
            Some(s) => s.info.credits.add_permits(credit as usize),
            None => {
                // Only a problem gets an answer (PROTOCOL.adoc, "Credit").
                self.out.send(|w| {
                    w.frame(key::CREDIT | key::RESPONSE, 1, |w| {
                        w.u16(response::SUBSCRIPTION_ID_DOES_NOT_EXIST);
                        w.u8(sid);
                    })
                });
            }
        }
    }

    pub(crate) fn unsubscribe(&mut self, sid: u8) -> Result<()> {
        let s = self
            .subscriptions
            .remove(&sid)
            .ok_or(StreamError::NoSubscription(sid))?;
        tracing::debug!(peer = %self.peer, stream = %s.info.stream, sid, "unsubscribed");
        self.end_subscription(sid, s);
        Ok(())
    }

    pub(crate) fn store_offset(&mut self, reference: &str, stream: &str, offset: u64) {
        // No response: a failure is only logged (as RabbitMQ).
        let r = self.stream(stream).and_then(|q| {
            self.access()
                .check(Access::Read, Resource::Queue, stream)
                .map_err(|e| StreamError::from_amqp(e, stream))?;
            if reference.is_empty() || reference.chars().count() > 256 {
                return Err(StreamError::Precondition("invalid reference".into()));
            }
            if let Some(s) = q.stream() {
                s.store_offset(&q, reference, offset);
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(peer = %self.peer, stream, reference, error = %e, "store offset refused");
        }
    }

    pub(crate) fn query_offset(&mut self, reference: &str, stream: &str) -> Result<u64> {
        let q = self.stream(stream)?;
        self.access()
            .check(Access::Read, Resource::Queue, stream)
            .map_err(|e| StreamError::from_amqp(e, stream))?;
        q.stream()
            .and_then(|s| s.query_offset(reference))
            .ok_or_else(|| StreamError::NoOffset(reference.to_string()))
    }
}

/// What follows a subscription's response.
enum Start {
    /// Deliver at once.
    Deliver,
    /// A single active consumer that is its group's active one: tell it (consumer update),
    /// deliver from where it answers.
    Activate,
    /// A single active consumer waiting for its turn.
    Wait,
}

fn offset_spec(o: OffsetSpecification) -> OffsetSpec {
    match o {
        OffsetSpecification::First => OffsetSpec::First,
        OffsetSpecification::Last => OffsetSpec::Last,
        OffsetSpecification::Next => OffsetSpec::Next,
        OffsetSpecification::Offset(o) => OffsetSpec::Offset(o),
        OffsetSpecification::Timestamp(t) => OffsetSpec::Timestamp(t.max(0) as u64),
    }
}

/// Delivers chunks to subscription `sid` while it has credit, until it is aborted or the
/// stream is deleted.
#[allow(clippy::too_many_arguments)]
async fn deliver_loop(
    q: Arc<Queue>,
    spec: OffsetSpec,
    sid: u8,
    info: Arc<StreamConsumerInfo>,
    filter: Option<Filter>,
    out: Arc<Outbox>,
    v2: bool,
    name: String,
) {
    let credit = info.credits.clone();
    let Some(stream) = q.stream() else { return };
    let _reading = stream.reading();
    let mut tail = stream.watch_tail();
    let mut cursor = stream.resolve(spec);
    loop {
        // The credit is used once a chunk goes out: a task stopped while it waits at the
        // tail (a single active consumer stepping down) leaves it to the next one.
        let Ok(permit) = credit.acquire().await else {
            return;
        };
        let chunk = loop {
            if q.is_deleted() || out.is_dead() {
                if q.is_deleted() {
                    out.send(|w| {
                        w.frame(key::METADATA_UPDATE, 1, |w| {
                            w.u16(response::STREAM_NOT_AVAILABLE);
                            w.string(&name);
                        })
                    });
                }
                return;
            }
            tail.borrow_and_update();
            let build = |recs: &[warren_store::StreamRecord]| encode_chunk(recs, &name);
            let read = match &filter {
                None => stream
                    .read_chunk(&mut cursor, CHUNK_BYTES, build)
                    .map(|c| c.map_or(FilteredChunk::Tail, FilteredChunk::Chunk)),
                Some(f) => stream.read_filtered_chunk(&mut cursor, CHUNK_BYTES, f, build),
            };
            let read = read.unwrap_or_else(|e| {
                tracing::warn!(stream = %name, error = %e, "stream read failed; the subscription waits");
                FilteredChunk::Tail
            });
            let chunk = match read {
                FilteredChunk::Chunk(c) => c,
                FilteredChunk::Skipped => {
                    tokio::task::yield_now().await;
                    continue;
                }
                FilteredChunk::Tail => {
                    if tail.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            break chunk;
        };
        permit.forget();
        out.send_with_tail(
            key::DELIVER,
            if v2 { 2 } else { 1 },
            |w| {
                w.u8(sid);
                if v2 {
                    w.u64(chunk.last);
                }
            },
            chunk.bytes.clone(),
        );
        // The chunk header's record count (bytes 4..8).
        let records = chunk
            .bytes
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        info.consumed.fetch_add(records as u64, Ordering::Relaxed);
        *info.offset.lock() = Some(chunk.last);
        out.wait_below(OUTBOX_LIMIT).await;
    }
}

/// A subscription's filter from its properties: `filter.0`, `filter.1`, … (the values) and
/// `match-unfiltered` (`true`: also the messages without a value), as RabbitMQ's clients
/// send them. None without a value.
fn filter_of(properties: &[(String, String)]) -> Option<Filter> {
    let values: Vec<String> = properties
        .iter()
        .filter(|(k, _)| k.starts_with("filter."))
        .map(|(_, v)| v.clone())
        .collect();
    (!values.is_empty()).then(|| Filter {
        values,
        match_unfiltered: properties
            .iter()
            .any(|(k, v)| k == "match-unfiltered" && v == "true"),
    })
}

/// The chunk of `recs` as delivered (after the subscription id): messages published over the
/// stream protocol as they came, those published over 0-9-1 encoded as AMQP 1.0.
fn encode_chunk(recs: &[warren_store::StreamRecord], name: &str) -> bytes::Bytes {
    let mut entries: Vec<bytes::Bytes> = Vec::with_capacity(recs.len());
    for r in recs {
        match entry::decode(r.payload.clone()) {
            Some(entry::Entry::Amqp10 { message, .. }) => entries.push(message),
            Some(entry::Entry::Amqp091(m)) => {
                let mut buf = Vec::new();
                amqp10::encode_message(&m, &mut buf);
                entries.push(bytes::Bytes::from(buf));
            }
            None => {
                // Never written by Warren; an empty message keeps the offsets.
                tracing::warn!(stream = %name, offset = r.offset, "undecodable stream record delivered empty");
                entries.push(bytes::Bytes::new());
            }
        }
    }
    let slices: Vec<&[u8]> = entries.iter().map(|b| &b[..]).collect();
    let mut w = crate::frame::FrameBuf::default();
    w.buf
        .reserve(chunk::HEADER_LEN + slices.iter().map(|s| 4 + s.len()).sum::<usize>());
    chunk::write(&mut w, recs[0].offset, recs[0].timestamp as i64, &slices);
    w.buf.freeze()
}
