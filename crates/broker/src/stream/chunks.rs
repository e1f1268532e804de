//! Chunks shared by the stream protocol's readers. A chunk is made at read time from
//! consecutive records (the log is not made of chunks), which costs a read of the store, a
//! check of each record's CRC and an encoding with the chunk's own CRC. Consumers replaying
//! a stream together read the same chunks at the same places, so the last chunks built are
//! kept, by where their read started, up to [`CACHE_BYTES`] a stream and [`CACHE_TOTAL`] in
//! all: each is built once, then handed as it is to every reader that comes to the same
//! place (RabbitMQ's osiris sends its stored chunks as they are). Measured (10 consumers
//! replaying 300,000 × 1 KiB, docs/benchmarks.md): 1.0 µs of broker CPU a message without
//! the cache, 0.5–0.6 with it.
//!
//! Only chunks cut by size are kept (those at the tail will grow), and only while the
//! stream has more than one reader. Records never change at a position (the log is
//! append-only); retention removing segments, or the last reader leaving, empties the
//! cache.

use super::protocol::{Cursor, FilteredRead};
use super::Stream;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use warren_store::{Position, StreamRecord};

/// The bytes of built chunks a stream keeps.
pub const CACHE_BYTES: usize = 16 << 20;
/// ... and all streams together.
pub const CACHE_TOTAL: usize = 64 << 20;

/// The bytes all streams' caches hold.
static CACHED: AtomicUsize = AtomicUsize::new(0);

/// A chunk as a stream-protocol reader delivers it (encoded by the protocol's crate: the
/// broker keeps it as bytes), and the cursor after it.
pub struct ReadChunk {
    pub bytes: Bytes,
    /// Its last offset.
    pub last: u64,
    pub next: Cursor,
}

/// The last chunks built at full size, oldest first.
#[derive(Default)]
pub(super) struct ChunkCache {
    entries: VecDeque<((Position, u64), Arc<ReadChunk>)>,
    bytes: usize,
    /// Chunks handed out from the cache so far.
    shared: u64,
}

impl ChunkCache {
    fn get(&self, key: (Position, u64)) -> Option<Arc<ReadChunk>> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.clone())
    }

    fn insert(&mut self, key: (Position, u64), c: Arc<ReadChunk>) {
        let len = c.bytes.len();
        while self.bytes + len > CACHE_BYTES && self.evict_oldest() {}
        if self.bytes + len > CACHE_BYTES || CACHED.load(Ordering::Relaxed) + len > CACHE_TOTAL {
            return;
        }
        CACHED.fetch_add(len, Ordering::Relaxed);
        self.bytes += len;
        self.entries.push_back((key, c));
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, old)) = self.entries.pop_front() else {
            return false;
        };
        self.bytes -= old.bytes.len();
        CACHED.fetch_sub(old.bytes.len(), Ordering::Relaxed);
        true
    }

    pub(super) fn clear(&mut self) {
        CACHED.fetch_sub(self.bytes, Ordering::Relaxed);
        self.entries.clear();
        self.bytes = 0;
    }
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A stream-protocol reader of a stream, while it reads (the cache is emptied when the last
/// one goes).
pub struct Reading<'a>(&'a Stream);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if self.0.chunk_readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.chunks.lock().clear();
        }
    }
}

impl Stream {
    /// How many chunks readers took from the cache instead of building them.
    pub fn chunks_shared(&self) -> u64 {
        self.chunks.lock().shared
    }

    /// Registers a stream-protocol reader (see [`Reading`]).
    pub fn reading(&self) -> Reading<'_> {
        self.chunk_readers.fetch_add(1, Ordering::AcqRel);
        Reading(self)
    }

    /// The chunk at `cursor` (up to `max_bytes` of records, at least one if there is one),
    /// built by `build` from its records unless another reader built it already; moves the
    /// cursor on. `None` at the tail.
    pub fn read_chunk(
        &self,
        cursor: &mut Cursor,
        max_bytes: usize,
        build: impl FnOnce(&[StreamRecord]) -> Bytes,
    ) -> warren_store::Result<Option<Arc<ReadChunk>>> {
        let key = (cursor.pos, cursor.next_offset);
        // Held while building, so that readers at the same place wait for this one's chunk
        // instead of building their own.
        let mut cache = self.chunks.lock();
        if let Some(c) = cache.get(key) {
            cache.shared += 1;
            *cursor = c.next;
            return Ok(Some(c));
        }
        let recs = self.read_records(cursor, max_bytes)?;
        let Some(last) = recs.last() else {
            return Ok(None);
        };
        let c = Arc::new(ReadChunk {
            last: last.offset,
            bytes: build(&recs),
            next: *cursor,
        });
        if cursor.next_offset < *self.tail.borrow()
            && self.chunk_readers.load(Ordering::Relaxed) > 1
        {
            cache.insert(key, c.clone());
        }
        Ok(Some(c))
    }

    /// [`Stream::read_chunk`] for a subscription with a filter: the chunk of the next run of
    /// records the filter takes (never shared: another reader's filter makes other chunks).
    pub fn read_filtered_chunk(
        &self,
        cursor: &mut Cursor,
        max_bytes: usize,
        filter: &super::args::Filter,
        build: impl FnOnce(&[StreamRecord]) -> Bytes,
    ) -> warren_store::Result<FilteredChunk> {
        Ok(
            match self.read_filtered_records(cursor, max_bytes, filter)? {
                FilteredRead::Records(recs) => {
                    let last = recs.last().expect("a run is never empty").offset;
                    FilteredChunk::Chunk(Arc::new(ReadChunk {
                        last,
                        bytes: build(&recs),
                        next: *cursor,
                    }))
                }
                FilteredRead::Skipped => FilteredChunk::Skipped,
                FilteredRead::Tail => FilteredChunk::Tail,
            },
        )
    }
}

/// What [`Stream::read_filtered_chunk`] found.
pub enum FilteredChunk {
    Chunk(Arc<ReadChunk>),
    /// Only records the filter does not take so far: read again.
    Skipped,
    Tail,
}
