//! What RabbitMQ's stream protocol (`warren-stream`, port 5552) does with a stream: appends
//! of AMQP 1.0 messages with deduplication by publisher reference, reads of consecutive
//! records for chunks, offset specifications resolved to a position, named consumers'
//! offsets and named publishers' sequences. The same log as AMQP 0-9-1's: a message
//! published by either protocol is read by both.

use super::{entry, tracking, unix_ms, OffsetSpec, Stream};
use crate::Queue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use warren_store::{Position, StreamRecord};

/// Where a stream-protocol reader is: the next read's position and the first offset it
/// still wants (records below it are skipped).
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    pub pos: Position,
    pub next_offset: u64,
}

/// What happened to one publishing id's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Appended: confirm once the group commit has announced this epoch.
    Appended { epoch: u64 },
    /// The publisher reference has seen this publishing id (or a later one): not appended
    /// again, confirmed at once (as RabbitMQ confirms a duplicate).
    Duplicate,
}

/// What a filtered read found ([`Stream::read_filtered_records`]).
pub enum FilteredRead {
    /// Consecutive records the filter takes (one chunk).
    Records(Vec<StreamRecord>),
    /// Records the filter does not take, skipped: read again.
    Skipped,
    /// The end of the stream.
    Tail,
}

/// How many reads of records a filtered read scans before it lets its task do something
/// else (a long run of records a filter does not take is skipped in several calls).
pub const FILTER_SCAN_BATCHES: usize = 16;

impl Stream {
    /// Appends the messages of one publishing id (several for a sub-entry batch), unless
    /// `reference` (empty for none) has already published this id or a later one.
    pub fn publish_amqp10<'m>(
        &self,
        q: &Arc<Queue>,
        reference: &str,
        publishing_id: u64,
        filter_value: Option<&str>,
        messages: impl IntoIterator<Item = &'m [u8]>,
    ) -> warren_store::Result<Published> {
        let p = &self.persistence;
        let now = unix_ms();
        let (epoch, rolled, n) = {
            let _gate = p.gate.read();
            // The tracking lock is held across the append: two connections with the same
            // reference cannot both pass the check.
            let mut tr = self.tracking.lock();
            if !reference.is_empty()
                && tr
                    .writers
                    .get(reference.as_bytes())
                    .is_some_and(|last| *last >= publishing_id)
            {
                return Ok(Published::Duplicate);
            }
            let epoch = p.current_epoch();
            let mut st = self.store.lock();
            let before = st.end().segment;
            let mut n = 0u64;
            for m in messages {
                st.append(now, |buf| {
                    entry::encode_amqp10(reference, publishing_id, filter_value, m, buf)
                })?;
                n += 1;
            }
            tr.saw_writer(reference.as_bytes(), publishing_id);
            let rolled = st.end().segment != before;
            self.tail.send_replace(st.next_offset());
            drop(st);
            drop(tr);
            self.enlist(q);
            (epoch, rolled, n)
        };
        self.published.fetch_add(n, Ordering::Relaxed);
        if rolled {
            self.apply_retention();
        }
        // 0-9-1 consumers at the tail get the new messages too.
        self.dispatch(q);
        Ok(Published::Appended { epoch })
    }

    fn enlist(&self, q: &Arc<Queue>) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.persistence.enlist(q);
        }
    }

    /// The last publishing id of a named publisher (0 if it never published).
    pub fn publisher_sequence(&self, reference: &str) -> u64 {
        self.tracking
            .lock()
            .writers
            .get(reference.as_bytes())
            .copied()
            .unwrap_or(0)
    }

    /// Stores a named consumer's offset; written to disk by the next group commit.
    pub fn store_offset(&self, q: &Arc<Queue>, reference: &str, offset: u64) {
        {
            let mut tr = self.tracking.lock();
            if tr.offsets.get(reference) == Some(&offset) {
                return;
            }
            tr.offsets.insert(reference.to_string(), offset);
            tr.dirty = true;
        }
        self.enlist(q);
    }

    pub fn query_offset(&self, reference: &str) -> Option<u64> {
        self.tracking.lock().offsets.get(reference).copied()
    }

    /// Writes the tracking file if something changed (called by the group commit after the
    /// log's fsync). A failure is logged and retried by the next commit.
    pub(super) fn save_tracking(&self, dir: &std::path::Path) -> warren_store::Result<()> {
        let bytes = {
            let mut tr = self.tracking.lock();
            if !tr.dirty {
                return Ok(());
            }
            tr.dirty = false;
            tr.encode()
        };
        if !dir.exists() {
            return Ok(()); // deleted meanwhile
        }
        if let Err(e) = tracking::save(&*self.persistence.backend(), dir, &bytes) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the stream's tracking file; retrying at the next commit");
            self.tracking.lock().dirty = true;
        }
        Ok(())
    }

    /// Where a reader starting at `spec` begins (RabbitMQ's offset specifications; `last`
    /// is the last message, Warren's chunks being made at read time).
    pub fn resolve(&self, spec: OffsetSpec) -> Cursor {
        let st = self.store.lock();
        let seek = |r: warren_store::Result<Position>| {
            r.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stream seek failed; reading from the first message");
                st.start()
            })
        };
        let (pos, next_offset) = match spec {
            OffsetSpec::First => (st.start(), st.first_offset()),
            OffsetSpec::Next => (st.end(), st.next_offset()),
            OffsetSpec::Last if st.count() > 0 => {
                let last = st.next_offset() - 1;
                (seek(st.seek_offset(last)), last)
            }
            OffsetSpec::Last => (st.end(), st.next_offset()),
            OffsetSpec::Offset(o) => {
                let o = o.max(st.first_offset());
                (seek(st.seek_offset(o)), o)
            }
            OffsetSpec::Timestamp(t) => (seek(st.seek_timestamp(t)), 0),
        };
        Cursor { pos, next_offset }
    }

    /// Reads up to `max_bytes` of consecutive records at `cursor` (at least one if there is
    /// one), skipping those below its offset, and moves the cursor on. Empty at the tail.
    pub fn read_records(
        &self,
        cursor: &mut Cursor,
        max_bytes: usize,
    ) -> warren_store::Result<Vec<StreamRecord>> {
        let st = self.store.lock();
        loop {
            let (recs, next) = st.read_batch(cursor.pos, max_bytes)?;
            let at_end = recs.is_empty() || next == cursor.pos;
            cursor.pos = next;
            let out: Vec<StreamRecord> = recs
                .into_iter()
                .map(|(_, r)| r)
                .filter(|r| r.offset >= cursor.next_offset)
                .collect();
            // Offsets are consecutive in the log, so these records make one chunk.
            if let Some(last) = out.last() {
                cursor.next_offset = last.offset + 1;
                return Ok(out);
            }
            if at_end {
                return Ok(out);
            }
        }
    }

    /// [`Stream::read_records`] for a subscription with a filter: the first run of
    /// consecutive records that `filter` takes, skipping those before it that it does not
    /// (a chunk's offsets follow each other, so a record it does not take ends the run; the
    /// next read starts there). At most [`FILTER_SCAN_BATCHES`] reads are scanned a call:
    /// `Skipped` says the cursor moved on without finding one (call again), `Tail` that the
    /// cursor is at the end.
    pub fn read_filtered_records(
        &self,
        cursor: &mut Cursor,
        max_bytes: usize,
        filter: &super::args::Filter,
    ) -> warren_store::Result<FilteredRead> {
        for _ in 0..FILTER_SCAN_BATCHES {
            let (recs, next) = self.store.lock().read_batch(cursor.pos, max_bytes)?;
            let at_end = recs.is_empty() || next == cursor.pos;
            let mut run = Vec::new();
            for (pos, r) in recs {
                if r.offset < cursor.next_offset {
                    continue;
                }
                let entry = entry::decode(r.payload.clone());
                if filter.matches(entry.as_ref().and_then(entry::Entry::filter_value)) {
                    run.push(r);
                } else if run.is_empty() {
                    cursor.next_offset = r.offset + 1;
                } else {
                    cursor.pos = pos;
                    cursor.next_offset = r.offset;
                    return Ok(FilteredRead::Records(run));
                }
            }
            cursor.pos = next;
            if let Some(last) = run.last() {
                cursor.next_offset = last.offset + 1;
                return Ok(FilteredRead::Records(run));
            }
            if at_end {
                return Ok(FilteredRead::Tail);
            }
        }
        Ok(FilteredRead::Skipped)
    }

    /// A receiver told of every append (its value: the next offset; `u64::MAX` once the
    /// stream is deleted).
    pub fn watch_tail(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tail.subscribe()
    }

    /// First offset, last offset (None when empty), and the first offset of the last
    /// "chunk" (the last message), for metadata and stream statistics.
    pub fn offsets(&self) -> (u64, Option<u64>) {
        let st = self.store.lock();
        (
            st.first_offset(),
            st.next_offset().checked_sub(1).filter(|_| st.count() > 0),
        )
    }
}
