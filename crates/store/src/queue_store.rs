//! `QueueStore`: the on-disk state of one durable queue, in its own directory.
//!
//! Two segment logs: `msgs.*` holds message payloads in publish order; `acks.*` holds small
//! marks, "acked" or "delivered", each naming a message by its [`Position`]. Nothing is ever
//! rewritten in place. On open, the marks are replayed over an index of the message segments
//! (per segment: its end, its live count and the sorted offsets its marks name; nothing per
//! message that has no mark) and the unacked messages are handed back through [`Recovery`],
//! which scans the segments lazily. [`QueueStore::read_next`] walks the unacked messages from
//! a position onwards, so a queue can page a backlog out and in holding one position.
//!
//! Space comes back whole segments at a time. A sealed message segment whose every record is
//! acked is deleted at the next [`QueueStore::sync`]. An ack segment is deleted once every
//! message segment its marks point into is gone (its reference count drops to zero): the ack
//! log is never compacted. When the queue is empty at a sync, the current segments are
//! rolled over (if past 1/8 of the segment size) so a drained queue frees its disk too.
//!
//! Message segment ids are never reused while a mark could still name them, so a stale mark
//! can never hit a newer message (see `open`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use crate::backend::Backend;
use crate::error::{Result, StoreError};
use crate::segment::{
    check_header, record_crc, segment_file_name, Position, SegmentLog, SegmentReader,
    DEFAULT_MAX_SEGMENT_SIZE, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// How long a group commit may leave acks and delivered marks unsynced while messages keep
/// arriving (see [`QueueStore::begin_group_sync`]).
pub const MARK_SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes [`QueueStore::read_batch`] reads per system call; below the mmap threshold, as the
/// stream store's (see [`crate::stream_store::READ_AHEAD`]).
const READ_AHEAD: usize = crate::stream_store::READ_AHEAD;

/// File-name prefix of message segments.
pub const MSGS_PREFIX: &str = "msgs";
/// File-name prefix of ack/mark segments.
pub const ACKS_PREFIX: &str = "acks";
/// Mark kind: the message was acked and is gone.
pub const MARK_ACK: u8 = 1;
/// Mark kind: the message was delivered at least once (redelivered after a restart).
pub const MARK_DELIVERED: u8 = 2;
/// Bytes of a mark record's payload: kind + position.
pub const MARK_LEN: usize = 9;

/// Tuning for a queue store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Largest segment file, in bytes, for both logs (a larger message gets a segment alone).
    pub max_segment_size: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_segment_size: DEFAULT_MAX_SEGMENT_SIZE,
        }
    }
}

/// A sorted set of record offsets within one segment. Marks arrive roughly in offset order
/// (queues deliver in publish order), so inserts are nearly always appends; a segment that is
/// only appended to costs nothing here.
#[derive(Default, Debug, Clone)]
struct OffsetSet(Vec<u32>);

impl OffsetSet {
    fn contains(&self, off: u32) -> bool {
        match self.0.last() {
            Some(&last) if last < off => false,
            None => false,
            _ => self.0.binary_search(&off).is_ok(),
        }
    }

    /// Adds `off`; false if it was already there.
    fn insert(&mut self, off: u32) -> bool {
        match self.0.last() {
            Some(&last) if last >= off => match self.0.binary_search(&off) {
                Ok(_) => false,
                Err(i) => {
                    self.0.insert(i, off);
                    true
                }
            },
            _ => {
                self.0.push(off);
                true
            }
        }
    }
}

/// What the store knows about one message segment: no per-record state while its records are
/// only appended and waiting, just the acked and delivered marks that name it.
#[derive(Default, Debug)]
struct SegmentIndex {
    /// Offset just past its last record: record offsets lie in `SEGMENT_HEADER_LEN..end`.
    end: u32,
    acked: OffsetSet,
    delivered: OffsetSet,
    /// Records not yet acked.
    live: u32,
    /// (ack segment, marks in it that point here), ack segments ascending.
    refs: Vec<(u32, u32)>,
}

impl SegmentIndex {
    /// Whether `offset` can name a record of this segment (marks are only ever written for
    /// positions the store handed out, so in range means it is one).
    fn holds(&self, offset: u32) -> bool {
        (SEGMENT_HEADER_LEN..self.end).contains(&offset)
    }

    fn add_record(&mut self, pos: Position, payload_len: usize) {
        self.end = pos.offset + RECORD_HEADER_LEN + payload_len as u32;
        self.live += 1;
    }

    fn add_ref(&mut self, ack_segment: u32) {
        match self.refs.last_mut() {
            Some((s, n)) if *s == ack_segment => *n += 1,
            _ => self.refs.push((ack_segment, 1)),
        }
    }
}

/// What [`QueueStore::open_transactional`] needs to know of a record that belongs to a
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxTag {
    /// The transaction (unique: never reused for another one).
    pub id: u64,
    /// The record that ends the transaction's records in this store.
    pub end: bool,
}

fn encode_mark(kind: u8, pos: Position) -> [u8; MARK_LEN] {
    let mut m = [0u8; MARK_LEN];
    m[0] = kind;
    m[1..].copy_from_slice(&pos.to_bytes());
    m
}

fn decode_mark(payload: &[u8]) -> Option<(u8, Position)> {
    let m: &[u8; MARK_LEN] = payload.try_into().ok()?;
    if m[0] != MARK_ACK && m[0] != MARK_DELIVERED {
        return None;
    }
    let mut p = [0u8; 8];
    p.copy_from_slice(&m[1..]);
    Some((m[0], Position::from_bytes(p)))
}

/// The message store of one durable queue.
pub struct QueueStore {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    opts: StoreOptions,
    msgs: SegmentLog,
    acks: SegmentLog,
    index: BTreeMap<u32, SegmentIndex>,
    /// Ack segment -> marks in it pointing into message segments still on disk.
    ack_refs: BTreeMap<u32, u32>,
    /// Sealed message segments with nothing live, deleted at the next sync.
    pending_delete: Vec<u32>,
    /// Ack segments may have become deletable.
    ack_gc: bool,
    message_count: u64,
    /// Scratch store (see [`QueueStore::set_volatile`]).
    volatile: bool,
    /// When the ack log was last synced.
    marks_synced_at: std::time::Instant,
}

impl fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStore")
            .field("dir", &self.dir)
            .field("message_count", &self.message_count)
            .field("msg_segments", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl QueueStore {
    /// Opens (creating if needed) the store in `dir`, recovering what is on disk.
    ///
    /// Returns the store, ready for appends, and a [`Recovery`] that yields the unacked
    /// messages in publish order. Drain the recovery before acking or purging, since those
    /// may delete segments it has yet to read.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        opts: StoreOptions,
    ) -> Result<(QueueStore, Recovery)> {
        Self::open_filtered(backend, dir, opts, |_| true)
    }

    /// [`QueueStore::open`], treating records for which `keep` is false as acked (a queue
    /// drops its paged-out transient messages this way on restart, without reading them
    /// twice). No mark is written for them: they are dropped again at every open until their
    /// segment goes.
    pub fn open_filtered(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        opts: StoreOptions,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(QueueStore, Recovery)> {
        Self::open_transactional(backend, dir, opts, keep, |_| None)
    }

    /// [`QueueStore::open_filtered`] for a log that holds transactions: `tx` names the
    /// transaction of a record (if any) and whether it is the record that ends that
    /// transaction's records in this store. The records of a transaction whose end record is
    /// missing (the crash came in the middle of its commit) are dropped, and acked on disk so
    /// that they stay dropped.
    pub fn open_transactional(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        opts: StoreOptions,
        keep: impl Fn(&[u8]) -> bool,
        tx: impl Fn(&[u8]) -> Option<TxTag>,
    ) -> Result<(QueueStore, Recovery)> {
        let dir = dir.into();
        let mut index: BTreeMap<u32, SegmentIndex> = BTreeMap::new();
        // Transactions whose end record has not been seen yet, with their records.
        let mut open_tx: HashMap<u64, Vec<Position>> = HashMap::new();
        let mut msgs = SegmentLog::open(
            backend.clone(),
            &dir,
            MSGS_PREFIX,
            opts.max_segment_size,
            |pos, payload| {
                let seg = index.entry(pos.segment).or_default();
                seg.add_record(pos, payload.len());
                if !keep(payload) {
                    seg.acked.insert(pos.offset);
                    seg.live -= 1;
                }
                match tx(payload) {
                    Some(TxTag { id, end: true }) => {
                        open_tx.remove(&id);
                    }
                    Some(TxTag { id, end: false }) => open_tx.entry(id).or_default().push(pos),
                    None => {}
                }
            },
        )?;
        let uncommitted: Vec<Position> = open_tx.into_values().flatten().collect();
        if !uncommitted.is_empty() {
            warn!(
                dir = %dir.display(),
                messages = uncommitted.len(),
                "queue store: dropping the messages of a transaction whose commit did not finish"
            );
        }
        for pos in &uncommitted {
            if let Some(seg) = index.get_mut(&pos.segment) {
                if seg.acked.insert(pos.offset) {
                    seg.live -= 1;
                }
            }
        }

        let mut ack_refs: BTreeMap<u32, u32> = BTreeMap::new();
        let mut max_ref: Option<Position> = None;
        let mut bad_marks = 0u64;
        let acks = SegmentLog::open(
            backend.clone(),
            &dir,
            ACKS_PREFIX,
            opts.max_segment_size,
            |apos, payload| {
                let Some((kind, pos)) = decode_mark(payload) else {
                    bad_marks += 1;
                    return;
                };
                max_ref = max_ref.max(Some(pos));
                // Marks for reclaimed segments, or for records lost with a torn tail, are
                // simply spent.
                let Some(seg) = index.get_mut(&pos.segment).filter(|s| s.holds(pos.offset)) else {
                    return;
                };
                if kind == MARK_ACK {
                    if seg.acked.insert(pos.offset) {
                        seg.live -= 1;
                    }
                } else {
                    seg.delivered.insert(pos.offset);
                }
                seg.add_ref(apos.segment);
                *ack_refs.entry(apos.segment).or_insert(0) += 1;
            },
        )?;
        if bad_marks > 0 {
            warn!(
                dir = %dir.display(),
                count = bad_marks,
                "queue store: ignoring ack records of unknown kind or size"
            );
        }

        // A crash can keep a mark while losing the message it names (the two logs are written
        // back independently). If such a mark names the spot where the next message would go,
        // or a segment that no longer exists, step past it so it never matches a new message.
        let next = Position {
            segment: msgs.current_segment(),
            offset: msgs.current_len() as u32,
        };
        if let Some(r) = max_ref.filter(|&r| r >= next) {
            let id = r.segment.max(next.segment).saturating_add(1);
            warn!(
                dir = %dir.display(),
                mark = %r,
                new_segment = id,
                "queue store: ack log refers past the end of the message log (lost in a crash); \
                 starting a new message segment"
            );
            msgs.roll_to(id)?;
        }

        let current = msgs.current_segment();
        let pending_delete: Vec<u32> = msgs
            .segment_ids()
            .into_iter()
            .filter(|&id| id != current && index.get(&id).is_none_or(|s| s.live == 0))
            .collect();
        let message_count = index.values().map(|s| s.live as u64).sum();

        let segments: Vec<RecoverySegment> = index
            .iter()
            .filter(|(_, s)| s.live > 0)
            .map(|(&id, s)| RecoverySegment {
                id,
                end: s.end,
                live: s.live,
                acked: s.acked.clone(),
                delivered: s.delivered.clone(),
            })
            .collect();
        let recovery = Recovery {
            backend: backend.clone(),
            dir: dir.clone(),
            segments: segments.into_iter(),
            reading: None,
            remaining: message_count,
        };

        let mut store = QueueStore {
            backend,
            dir,
            opts,
            msgs,
            acks,
            index,
            ack_refs,
            pending_delete,
            ack_gc: true,
            message_count,
            volatile: false,
            marks_synced_at: std::time::Instant::now(),
        };
        if !uncommitted.is_empty() {
            // Acked on disk: a later end record of the same id must not bring them back.
            // The index counts them as acked already.
            for pos in uncommitted {
                store.write_mark(MARK_ACK, pos)?;
            }
            store.sync()?;
        }
        store.reclaim()?;
        Ok((store, recovery))
    }

    /// Appends a message; it is durable once a later [`QueueStore::sync`] returns Ok.
    /// On error nothing was appended (a full disk leaves the store usable).
    pub fn append(&mut self, payload: &[u8]) -> Result<Position> {
        let before = self.msgs.current_segment();
        let result = self.msgs.append(payload);
        self.note_msgs_roll(before);
        let pos = result?;
        self.index
            .entry(pos.segment)
            .or_default()
            .add_record(pos, payload.len());
        self.message_count += 1;
        Ok(pos)
    }

    /// Records that the message at `pos` is acked; it will not be recovered after the next
    /// sync. Acking an acked message does nothing.
    pub fn ack(&mut self, pos: Position) -> Result<()> {
        self.mark(MARK_ACK, pos)
    }

    /// Records that the message at `pos` was delivered, so after a restart it comes back with
    /// `redelivered` set. Only the first delivery writes a mark.
    pub fn mark_delivered(&mut self, pos: Position) -> Result<()> {
        self.mark(MARK_DELIVERED, pos)
    }

    /// Makes this a scratch store that only pages a transient queue's backlog out of memory:
    /// nothing in it must survive a restart, so marks stay in memory (delivered marks are not
    /// kept at all) and emptied segments are deleted at once rather than at a sync.
    pub fn set_volatile(&mut self) {
        self.volatile = true;
    }

    fn mark_volatile(&mut self, kind: u8, pos: Position) -> Result<()> {
        if kind != MARK_ACK {
            return Ok(());
        }
        let seg = self
            .index
            .get_mut(&pos.segment)
            .filter(|s| s.holds(pos.offset))
            .ok_or(StoreError::UnknownPosition { position: pos })?;
        if !seg.acked.insert(pos.offset) {
            return Ok(());
        }
        seg.live -= 1;
        self.message_count -= 1;
        let current = self.msgs.current_segment();
        if seg.live == 0 && pos.segment != current {
            self.index.remove(&pos.segment);
            self.msgs.remove_segment(pos.segment)?;
        }
        if self.message_count == 0 && self.msgs.current_len() > self.drain_roll_threshold() {
            // Drained: start a fresh segment and drop the old one.
            self.msgs.roll()?;
            self.index.remove(&current);
            self.msgs.remove_segment(current)?;
        }
        Ok(())
    }

    fn mark(&mut self, kind: u8, pos: Position) -> Result<()> {
        if self.volatile {
            return self.mark_volatile(kind, pos);
        }
        if self.msgs.is_poisoned() {
            // The store cannot be synced again until it is reopened: a mark that could never
            // become durable is refused, so nothing waits on a sync that must fail.
            return Err(StoreError::Poisoned {
                path: self.dir.join(format!("{MSGS_PREFIX}.*")),
            });
        }
        let seg = self
            .index
            .get(&pos.segment)
            .filter(|s| s.holds(pos.offset))
            .ok_or(StoreError::UnknownPosition { position: pos })?;
        let done = seg.acked.contains(pos.offset)
            || (kind == MARK_DELIVERED && seg.delivered.contains(pos.offset));
        if done {
            return Ok(());
        }
        self.write_mark(kind, pos)?;
        let current = self.msgs.current_segment();
        let Some(seg) = self.index.get_mut(&pos.segment) else {
            return Ok(());
        };
        if kind == MARK_ACK {
            seg.acked.insert(pos.offset);
            seg.live -= 1;
            self.message_count -= 1;
            if seg.live == 0 && pos.segment != current {
                self.pending_delete.push(pos.segment);
            }
        } else {
            seg.delivered.insert(pos.offset);
        }
        Ok(())
    }

    /// Appends mark `kind` for `pos` to the ack log and counts the reference it makes to its
    /// ack segment; what the mark means for the index is the caller's business.
    fn write_mark(&mut self, kind: u8, pos: Position) -> Result<()> {
        let before = self.acks.current_segment();
        let apos = self.acks.append(&encode_mark(kind, pos))?;
        if apos.segment != before {
            self.ack_gc = true;
        }
        *self.ack_refs.entry(apos.segment).or_insert(0) += 1;
        if let Some(seg) = self.index.get_mut(&pos.segment) {
            seg.add_ref(apos.segment);
        }
        Ok(())
    }

    /// The message segment `before` may just have been sealed; if nothing in it is live it
    /// can go.
    fn note_msgs_roll(&mut self, before: u32) {
        if self.msgs.current_segment() != before
            && self.index.get(&before).is_none_or(|s| s.live == 0)
        {
            if self.volatile {
                self.index.remove(&before);
                if let Err(e) = self.msgs.remove_segment(before) {
                    warn!(dir = %self.dir.display(), error = %e, "scratch store: cannot remove a drained segment");
                }
            } else {
                self.pending_delete.push(before);
            }
        }
    }

    /// Reads the payload of the message at `pos`.
    pub fn read(&self, pos: Position) -> Result<Bytes> {
        self.msgs.read(pos)
    }

    /// The first record boundary at or after `at` that has a record after it (stepping over
    /// segments that ended or are gone), with its segment; `None` at the end of the log.
    fn seek(&self, mut at: Position) -> Option<(Position, &SegmentIndex)> {
        loop {
            let (&id, seg) = self.index.range(at.segment..).next()?;
            if id != at.segment || at.offset < SEGMENT_HEADER_LEN {
                at = Position {
                    segment: id,
                    offset: SEGMENT_HEADER_LEN,
                };
            }
            if at.offset < seg.end {
                return Some((at, seg));
            }
            if id >= self.msgs.current_segment() {
                return None;
            }
            at = Position {
                segment: id + 1,
                offset: SEGMENT_HEADER_LEN,
            };
        }
    }

    /// The first unacked message at or after `from`, in publish order, and the position just
    /// past it (where to continue). A queue pages its backlog out and back in with this: it
    /// keeps one position, not one per message. `None` when nothing follows `from` yet.
    pub fn read_next(&self, from: Position) -> Result<Option<(RecoveredMessage, Position)>> {
        let mut at = from;
        loop {
            let Some((found, seg)) = self.seek(at) else {
                return Ok(None);
            };
            at = found;
            let id = at.segment;
            let payload = self.msgs.read(at)?;
            let next = Position {
                segment: id,
                offset: at.offset + RECORD_HEADER_LEN + payload.len() as u32,
            };
            if !seg.acked.contains(at.offset) {
                let message = RecoveredMessage {
                    position: at,
                    payload,
                    redelivered: seg.delivered.contains(at.offset),
                };
                return Ok(Some((message, next)));
            }
            at = next;
        }
    }

    /// [`QueueStore::read_next`] for a run of messages: the unacked ones from `from` on, until
    /// their payloads reach `max_bytes` (at least one is read if any is there), read a chunk
    /// of a segment per system call. Payloads share their chunk's memory. Returns them and the
    /// position to continue from.
    pub fn read_batch(
        &self,
        from: Position,
        max_bytes: usize,
    ) -> Result<(Vec<RecoveredMessage>, Position)> {
        let mut out = Vec::new();
        let mut taken = 0usize;
        let mut at = from;
        while taken < max_bytes {
            let Some((found, seg)) = self.seek(at) else {
                break;
            };
            at = found;
            let id = at.segment;
            let want = ((seg.end - at.offset) as usize).min(READ_AHEAD);
            let chunk = self.msgs.read_chunk(at, want)?;
            let mut p = 0usize;
            while p < chunk.len() && taken < max_bytes {
                let Ok((len, crc)) = check_header(&chunk[p..], (chunk.len() - p) as u64) else {
                    break; // the record runs past the chunk: the next chunk starts with it
                };
                let start = p + RECORD_HEADER_LEN as usize;
                let payload = chunk.slice(start..start + len as usize);
                let offset = at.offset + p as u32;
                if record_crc(
                    [chunk[p], chunk[p + 1], chunk[p + 2], chunk[p + 3]],
                    &payload,
                ) != crc
                {
                    return Err(StoreError::Corrupt {
                        path: self.msgs.dir().join(segment_file_name(MSGS_PREFIX, id)),
                        offset: offset as u64,
                        reason: "checksum mismatch".into(),
                    });
                }
                if !seg.acked.contains(offset) {
                    taken += payload.len();
                    out.push(RecoveredMessage {
                        position: Position {
                            segment: id,
                            offset,
                        },
                        redelivered: seg.delivered.contains(offset),
                        payload,
                    });
                }
                p = start + len as usize;
            }
            if p == 0 {
                // A record larger than the read-ahead: read it alone.
                match self.read_next(at)? {
                    Some((m, next)) => {
                        at = next;
                        taken += m.payload.len();
                        out.push(m);
                    }
                    None => break,
                }
                continue;
            }
            at.offset += p as u32;
        }
        Ok((out, at))
    }

    /// The payloads of the records at `positions`, in that order, until they reach
    /// `max_bytes` (at least one is read). Records near each other are read a chunk per
    /// system call (requeued messages read back are mostly in store order). Each is the
    /// payload or the error that kept it from being read.
    pub fn read_many(&self, positions: &[Position], max_bytes: usize) -> Vec<Result<Bytes>> {
        let mut out = Vec::with_capacity(positions.len());
        let mut taken = 0usize;
        // The chunk last read: its segment, its first offset and its bytes.
        let mut chunk: Option<(u32, u32, Bytes)> = None;
        for &pos in positions {
            if taken >= max_bytes && !out.is_empty() {
                break;
            }
            let in_chunk = |c: &(u32, u32, Bytes)| -> Option<Bytes> {
                let (seg, start, bytes) = c;
                if *seg != pos.segment || pos.offset < *start {
                    return None;
                }
                let p = (pos.offset - start) as usize;
                let rest = bytes.get(p..)?;
                let (len, crc) = check_header(rest, rest.len() as u64).ok()?;
                let from = p + RECORD_HEADER_LEN as usize;
                let payload = bytes.slice(from..from + len as usize);
                (record_crc([rest[0], rest[1], rest[2], rest[3]], &payload) == crc)
                    .then_some(payload)
            };
            let mut got = chunk.as_ref().and_then(in_chunk);
            if got.is_none() {
                if let Ok(bytes) = self.msgs.read_chunk(pos, READ_AHEAD) {
                    chunk = Some((pos.segment, pos.offset, bytes));
                    got = chunk.as_ref().and_then(in_chunk);
                }
            }
            // A record larger than a chunk, or one the chunk could not verify: read it alone
            // (which says what is wrong with it, if anything).
            let r = match got {
                Some(b) => Ok(b),
                None => self.msgs.read(pos),
            };
            if let Ok(b) = &r {
                taken += b.len();
            }
            out.push(r);
        }
        out
    }

    /// Acks every unacked message at or after `from` (purging a paged-out backlog while
    /// earlier messages stay unacked). Returns how many.
    pub fn ack_from(&mut self, from: Position) -> Result<u64> {
        let mut at = from;
        let mut n = 0;
        while let Some((m, next)) = self.read_next(at)? {
            self.ack(m.position)?;
            n += 1;
            at = next;
        }
        Ok(n)
    }

    /// Makes every append and mark so far durable, then frees segments that are no longer
    /// needed. Called by the group-commit flusher; publisher confirms wait for it.
    pub fn sync(&mut self) -> Result<()> {
        let batch = self.begin_sync()?;
        self.end_sync(batch.run())
    }

    /// [`QueueStore::sync`] in three steps, so the fsyncs can run without the caller's lock:
    /// `begin_sync` (flush, under the lock), [`SyncBatch::run`] (the fsyncs, no lock), then
    /// `end_sync` with its outcome (under the lock). Durable once `end_sync` returns Ok.
    pub fn begin_sync(&mut self) -> Result<SyncBatch> {
        if self.message_count == 0 {
            let threshold = self.drain_roll_threshold();
            if self.msgs.current_len() > threshold {
                let before = self.msgs.current_segment();
                self.msgs.roll()?;
                self.note_msgs_roll(before);
            }
            if self.acks.current_len() > threshold {
                self.acks.roll()?;
                self.ack_gc = true;
            }
        }
        self.marks_synced_at = std::time::Instant::now();
        Ok(SyncBatch {
            msgs: self.msgs.begin_sync()?,
            acks: self.acks.begin_sync()?,
        })
    }

    /// [`QueueStore::begin_sync`] for a group commit, which only needs the messages durable:
    /// while messages are being written, marks (acks, delivered) are synced at most every
    /// [`MARK_SYNC_DELAY`], so a commit costs one device flush rather than two. Losing the
    /// latest marks in a crash means redelivery, never loss. The flag says marks were left
    /// unsynced: sync again within the delay.
    pub fn begin_group_sync(&mut self) -> Result<(SyncBatch, bool)> {
        let busy = self.msgs.has_unsynced();
        if busy && self.marks_synced_at.elapsed() < MARK_SYNC_DELAY {
            let msgs = self.msgs.begin_sync()?;
            let batch = SyncBatch {
                msgs,
                acks: Vec::new(),
            };
            return Ok((batch, self.acks.has_unsynced()));
        }
        Ok((self.begin_sync()?, false))
    }

    pub fn end_sync(&mut self, outcome: SyncOutcome) -> Result<()> {
        self.msgs.end_sync(outcome.msgs)?;
        self.acks.end_sync(outcome.acks)?;
        self.reclaim()
    }

    /// Below this, a drained queue keeps its current segment rather than churn files.
    fn drain_roll_threshold(&self) -> u64 {
        self.opts.max_segment_size as u64 / 8
    }

    /// Deletes fully acked message segments, then ack segments nothing refers to any more.
    fn reclaim(&mut self) -> Result<()> {
        if !self.pending_delete.is_empty() {
            let mut pending = std::mem::take(&mut self.pending_delete);
            pending.sort_unstable();
            pending.dedup();
            for (n, &id) in pending.iter().enumerate() {
                if let Err(e) = self.msgs.remove_segment(id) {
                    self.pending_delete.extend_from_slice(&pending[n..]);
                    return Err(e);
                }
                if let Some(seg) = self.index.remove(&id) {
                    for (ack_segment, count) in seg.refs {
                        if let Some(c) = self.ack_refs.get_mut(&ack_segment) {
                            *c = c.saturating_sub(count);
                        }
                    }
                }
            }
            // The removals must be durable before the acks for those segments go: otherwise
            // a crash could bring back a segment whose acks are gone, redelivering acked
            // messages.
            self.msgs.sync_dir()?;
            self.ack_gc = true;
        }
        if self.ack_gc {
            let current = self.acks.current_segment();
            for id in self.acks.segment_ids() {
                if id != current && self.ack_refs.get(&id).is_none_or(|&c| c == 0) {
                    self.acks.remove_segment(id)?;
                    self.ack_refs.remove(&id);
                }
            }
            self.ack_gc = false;
        }
        Ok(())
    }

    /// Drops every message (queue.purge) and frees their segments; durable on return.
    /// Returns how many messages were purged.
    pub fn purge(&mut self) -> Result<u64> {
        let purged = self.message_count;
        let before = self.msgs.current_segment();
        self.msgs.roll()?;
        self.acks.roll()?;
        self.pending_delete.extend(self.index.keys().copied());
        self.pending_delete.push(before);
        for seg in self.index.values_mut() {
            seg.live = 0;
        }
        self.message_count = 0;
        self.ack_gc = true;
        self.sync()?;
        Ok(purged)
    }

    /// Deletes the queue's directory and everything in it (queue.delete).
    pub fn delete_all(mut self) -> Result<()> {
        self.msgs.discard_buffer();
        self.acks.discard_buffer();
        let backend = self.backend.clone();
        let dir = std::mem::take(&mut self.dir);
        drop(self);
        match backend.remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove directory", dir, e)),
        }
    }

    /// Removes the queue's directory through the store's backend, leaving this store open
    /// but empty of files (queue.delete of a queue whose store lives on until the queue is
    /// dropped). Buffered records are discarded.
    pub fn remove_dir(&mut self) -> Result<()> {
        self.msgs.discard_buffer();
        self.acks.discard_buffer();
        match self.backend.remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove directory", &self.dir, e)),
        }
    }

    /// Whether a record was ever written to the store (since its segments were last
    /// removed): a store that holds none has nothing a partial removal could bring back.
    pub fn holds_records(&self) -> bool {
        self.msgs.holds_records() || self.acks.holds_records()
    }

    /// Unacked messages (RabbitMQ's `messages`, ready + unacknowledged).
    pub fn message_count(&self) -> u64 {
        self.message_count
    }

    /// Bytes the queue occupies in segment files, acked-but-unreclaimed records included.
    pub fn disk_bytes(&self) -> u64 {
        self.msgs.disk_bytes() + self.acks.disk_bytes()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One message segment with live records, as recovery reads it: its records are scanned in
/// order and the acked ones skipped.
struct RecoverySegment {
    id: u32,
    end: u32,
    live: u32,
    acked: OffsetSet,
    delivered: OffsetSet,
}

/// The fsyncs of a [`QueueStore::begin_sync`].
pub struct SyncBatch {
    msgs: Vec<crate::backend::SyncHandle>,
    acks: Vec<crate::backend::SyncHandle>,
}

/// What [`SyncBatch::run`] did, for [`QueueStore::end_sync`].
pub struct SyncOutcome {
    msgs: std::io::Result<()>,
    acks: std::io::Result<()>,
}

impl SyncBatch {
    /// Runs the fsyncs (no lock needed). When both logs have something to sync, the two run
    /// at once, so a group commit costs one device flush rather than two in a row.
    pub fn run(self) -> SyncOutcome {
        let all = |hs: Vec<crate::backend::SyncHandle>| hs.into_iter().try_for_each(|h| h());
        if self.msgs.is_empty() || self.acks.is_empty() {
            return SyncOutcome {
                msgs: all(self.msgs),
                acks: all(self.acks),
            };
        }
        let SyncBatch { msgs, acks } = self;
        std::thread::scope(|s| {
            let acks = s.spawn(move || all(acks));
            let msgs = all(msgs);
            SyncOutcome {
                msgs,
                acks: acks
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("fsync thread panicked"))),
            }
        })
    }
}

/// One message brought back by [`Recovery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredMessage {
    pub position: Position,
    pub payload: Bytes,
    /// A delivered mark was recorded: the message goes out with `redelivered = true`.
    pub redelivered: bool,
}

/// Streams the unacked messages found at open, in publish order. Payloads are read from disk
/// as the iterator advances, one segment file open at a time, a chunk at a time; what it holds
/// up front is only the marks of each segment.
pub struct Recovery {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    segments: std::vec::IntoIter<RecoverySegment>,
    reading: Option<(SegmentReader, RecoverySegment)>,
    remaining: u64,
}

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("dir", &self.dir)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl Recovery {
    /// Messages not yet yielded.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Iterator for Recovery {
    type Item = Result<RecoveredMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((reader, seg)) = &mut self.reading {
                if seg.live > 0 {
                    match reader.next_record() {
                        Ok(Some((offset, payload))) if offset < seg.end => {
                            if seg.acked.contains(offset) {
                                continue;
                            }
                            seg.live -= 1;
                            self.remaining -= 1;
                            return Some(Ok(RecoveredMessage {
                                position: Position {
                                    segment: seg.id,
                                    offset,
                                },
                                payload: Bytes::copy_from_slice(payload),
                                redelivered: seg.delivered.contains(offset),
                            }));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.remaining -= seg.live as u64;
                            self.reading = None;
                            return Some(Err(e));
                        }
                    }
                    // The file ended before its live records did (it changed under us).
                    self.remaining -= seg.live as u64;
                }
                self.reading = None;
            }
            let seg = self.segments.next()?;
            let path = self.dir.join(segment_file_name(MSGS_PREFIX, seg.id));
            match SegmentReader::open(&*self.backend, &path, seg.id) {
                Ok(reader) => self.reading = Some((reader, seg)),
                Err(e) => {
                    self.remaining -= seg.live as u64;
                    return Some(Err(e));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, usize::try_from(self.remaining).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FaultyBackend, FileBackend};
    use crate::testutil::{dir_files, payload, TestDir, XorShift};
    use std::fs;

    const SMALL: StoreOptions = StoreOptions {
        max_segment_size: 4096,
    };

    fn open(dir: &Path, opts: StoreOptions) -> (QueueStore, Vec<RecoveredMessage>) {
        open_with(FileBackend::shared(), dir, opts)
    }

    fn open_with(
        backend: Arc<dyn Backend>,
        dir: &Path,
        opts: StoreOptions,
    ) -> (QueueStore, Vec<RecoveredMessage>) {
        let (store, recovery) = QueueStore::open(backend, dir, opts).unwrap();
        let msgs: Vec<_> = recovery.map(|m| m.unwrap()).collect();
        assert_eq!(store.message_count(), msgs.len() as u64);
        (store, msgs)
    }

    /// A store made in directories that did not exist: once its first sync returned, a power
    /// cut keeps its messages. The new directories' entries in their parents must be fsynced
    /// too (before this was done, most cuts lost the whole store with its synced segments).
    #[test]
    fn a_new_store_survives_a_power_cut_after_its_first_sync() {
        use crate::sim::SimDisk;
        let dir = Path::new("/data/queues/vhost/q");
        for seed in 0..64 {
            let disk = SimDisk::new(Path::new("/data"));
            let (mut store, _) = open_with(Arc::new(disk.clone()), dir, SMALL);
            for i in 0..5 {
                store.append(&payload(i, 1000)).unwrap();
            }
            store.sync().unwrap();
            store.append(&payload(9, 10)).unwrap();
            let (after, _) = disk.after_power_loss(seed);
            let (_, msgs) = open_with(Arc::new(after), dir, SMALL);
            assert!(
                msgs.len() >= 5,
                "seed {seed}: {} of 5 synced messages",
                msgs.len()
            );
            for (i, m) in msgs.iter().take(5).enumerate() {
                assert_eq!(&m.payload[..], &payload(i, 1000)[..], "seed {seed}");
            }
        }
    }

    fn msg_files(dir: &Path) -> Vec<String> {
        dir_files(dir)
            .into_iter()
            .filter(|(n, _)| n.starts_with("msgs."))
            .map(|(n, _)| n)
            .collect()
    }

    /// Test records: `[0, n]` a plain message, `[1, id]` a message of transaction `id`,
    /// `[2, id]` the end record of transaction `id` (not a message).
    fn open_tx(dir: &Path) -> (QueueStore, Vec<Vec<u8>>) {
        let (store, recovery) = QueueStore::open_transactional(
            FileBackend::shared(),
            dir,
            SMALL,
            |p| p.first() != Some(&2),
            |p| match p {
                [1, id] => Some(TxTag {
                    id: *id as u64,
                    end: false,
                }),
                [2, id] => Some(TxTag {
                    id: *id as u64,
                    end: true,
                }),
                _ => None,
            },
        )
        .unwrap();
        let msgs: Vec<Vec<u8>> = recovery.map(|m| m.unwrap().payload.to_vec()).collect();
        assert_eq!(store.message_count(), msgs.len() as u64);
        (store, msgs)
    }

    #[test]
    fn a_transaction_without_its_end_record_is_dropped_and_stays_dropped() {
        let dir = TestDir::new("qs-tx");
        {
            let (mut st, msgs) = open_tx(dir.path());
            assert!(msgs.is_empty());
            st.append(&[0, 0]).unwrap();
            st.append(&[1, 5]).unwrap();
            st.append(&[0, 1]).unwrap();
            st.append(&[1, 5]).unwrap();
            let end = st.append(&[2, 5]).unwrap();
            st.ack(end).unwrap();
            // Transaction 6 is cut short by the "crash": no end record.
            st.append(&[1, 6]).unwrap();
            st.append(&[0, 2]).unwrap();
            st.append(&[1, 6]).unwrap();
            st.sync().unwrap();
        }
        let expected = vec![vec![0, 0], vec![1, 5], vec![0, 1], vec![1, 5], vec![0, 2]];
        {
            let (mut st, msgs) = open_tx(dir.path());
            assert_eq!(msgs, expected);
            // An end record of the same id coming later does not bring them back.
            let end = st.append(&[2, 6]).unwrap();
            st.ack(end).unwrap();
            st.sync().unwrap();
        }
        let (_, msgs) = open_tx(dir.path());
        assert_eq!(msgs, expected);
    }

    #[test]
    fn store_types_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<QueueStore>();
        send_sync::<Recovery>();
        send_sync::<crate::Catalog>();
    }

    #[test]
    fn marks_mark_and_acks_remove_across_reopen() {
        let dir = TestDir::new("qs-basic");
        let (mut qs, recovered) = open(dir.path(), SMALL);
        assert!(recovered.is_empty());
        let mut pos = Vec::new();
        for i in 0..10 {
            pos.push(qs.append(&payload(i, 50)).unwrap());
        }
        qs.ack(pos[0]).unwrap();
        qs.ack(pos[5]).unwrap();
        qs.ack(pos[5]).unwrap(); // idempotent
        qs.mark_delivered(pos[1]).unwrap();
        qs.mark_delivered(pos[1]).unwrap();
        qs.mark_delivered(pos[5]).unwrap(); // acked already: no mark
        qs.mark_delivered(pos[7]).unwrap();
        assert_eq!(qs.message_count(), 8);
        assert_eq!(qs.read(pos[3]).unwrap(), payload(3, 50));
        qs.sync().unwrap();
        drop(qs);

        let (mut qs, recovered) = open(dir.path(), SMALL);
        let expected: Vec<_> = (0..10)
            .filter(|&i| i != 0 && i != 5)
            .map(|i| RecoveredMessage {
                position: pos[i],
                payload: Bytes::from(payload(i, 50)),
                redelivered: i == 1 || i == 7,
            })
            .collect();
        assert_eq!(recovered, expected);
        assert!(matches!(
            qs.ack(Position {
                segment: 99,
                offset: 8
            }),
            Err(StoreError::UnknownPosition { .. })
        ));
        // Only the three distinct marks that changed something were written.
        let acks_len: u64 = dir_files(dir.path())
            .iter()
            .filter(|(n, _)| n.starts_with("acks."))
            .map(|(_, l)| l)
            .sum();
        assert_eq!(acks_len, 8 + 4 * 17);
    }

    #[test]
    fn acked_segments_are_deleted_and_a_drained_queue_frees_its_disk() {
        let dir = TestDir::new("qs-reclaim");
        let (mut qs, _) = open(dir.path(), SMALL);
        let mut pos = Vec::new();
        for i in 0..400 {
            pos.push(qs.append(&payload(i, 100)).unwrap());
        }
        qs.sync().unwrap();
        let full: u64 = dir_files(dir.path()).iter().map(|(_, l)| l).sum();
        assert!(full > 400 * 100);
        assert!(msg_files(dir.path()).len() > 10);

        // Ack all of the first half: those segments go, except one straddling the middle.
        for p in &pos[..200] {
            qs.ack(*p).unwrap();
        }
        qs.sync().unwrap();
        let first_live = pos[200].segment;
        for f in msg_files(dir.path()) {
            let id: u32 = f["msgs.".len()..].parse().unwrap();
            assert!(id >= first_live, "{f} should have been reclaimed");
        }

        for p in &pos[200..] {
            qs.ack(*p).unwrap();
        }
        qs.sync().unwrap();
        let files = dir_files(dir.path());
        let left: u64 = files.iter().map(|(_, l)| l).sum();
        assert_eq!(files.len(), 2, "one empty segment per log: {files:?}");
        assert_eq!(left, 16);
        assert_eq!(qs.disk_bytes(), 16);
        drop(qs);

        let (mut qs, recovered) = open(dir.path(), SMALL);
        assert!(recovered.is_empty());
        let p = qs.append(b"again").unwrap();
        assert!(p > *pos.last().unwrap(), "ids keep increasing");
        qs.sync().unwrap();
        drop(qs);
        let (_, recovered) = open(dir.path(), SMALL);
        assert_eq!(recovered.len(), 1);
    }

    #[test]
    fn ack_segments_live_as_long_as_what_they_refer_to() {
        let dir = TestDir::new("qs-ackrefs");
        let opts = StoreOptions {
            max_segment_size: 256,
        };
        let (mut qs, _) = open(dir.path(), opts);
        let keep = qs.append(b"long-lived").unwrap();
        qs.mark_delivered(keep).unwrap();
        let mut pos = Vec::new();
        for i in 0..100 {
            pos.push(qs.append(&payload(i, 40)).unwrap());
        }
        for p in &pos {
            qs.ack(*p).unwrap();
        }
        qs.sync().unwrap();
        let acks: Vec<_> = dir_files(dir.path())
            .into_iter()
            .filter(|(n, _)| n.starts_with("acks."))
            .collect();
        // The first ack segment holds the delivered mark of `keep` and must stay; the
        // others only pointed at reclaimed segments.
        assert!(acks.iter().any(|(n, _)| n == "acks.0000000001"));
        assert!(acks.len() <= 2, "{acks:?}");
        drop(qs);
        let (_, recovered) = open(dir.path(), opts);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].position, keep);
        assert!(recovered[0].redelivered);
    }

    #[test]
    fn delivered_marks_survive_a_close_without_sync() {
        let dir = TestDir::new("qs-redelivered");
        let (mut qs, _) = open(dir.path(), StoreOptions::default());
        let a = qs.append(b"a").unwrap();
        let b = qs.append(b"b").unwrap();
        qs.sync().unwrap();
        qs.mark_delivered(b).unwrap();
        drop(qs); // flushes to the OS on close
        let (_, recovered) = open(dir.path(), StoreOptions::default());
        assert_eq!(
            recovered
                .iter()
                .map(|m| (m.position, m.redelivered))
                .collect::<Vec<_>>(),
            vec![(a, false), (b, true)]
        );
    }

    #[test]
    fn a_mark_outliving_its_message_never_hits_a_new_one() {
        let dir = TestDir::new("qs-stale-mark");
        let (mut qs, _) = open(dir.path(), StoreOptions::default());
        qs.append(b"one").unwrap();
        qs.append(b"two").unwrap();
        let lost = qs.append(b"three").unwrap();
        qs.ack(lost).unwrap();
        qs.sync().unwrap();
        drop(qs);
        // The crash kept the ack but lost the message it acked.
        let path = dir
            .path()
            .join(segment_file_name(MSGS_PREFIX, lost.segment));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(lost.offset as u64)
            .unwrap();

        let (mut qs, recovered) = open(dir.path(), StoreOptions::default());
        assert_eq!(recovered.len(), 2);
        let fresh = qs.append(b"fresh").unwrap();
        assert_ne!(fresh, lost);
        qs.sync().unwrap();
        drop(qs);
        let (_, recovered) = open(dir.path(), StoreOptions::default());
        assert_eq!(recovered.len(), 3);
        assert_eq!(recovered[2].payload, &b"fresh"[..]);
    }

    #[test]
    fn a_torn_ack_log_means_redelivery_not_loss() {
        let dir = TestDir::new("qs-torn-acks");
        let (mut qs, _) = open(dir.path(), SMALL);
        let a = qs.append(b"a").unwrap();
        let b = qs.append(b"b").unwrap();
        let c = qs.append(b"c").unwrap();
        qs.ack(a).unwrap();
        qs.ack(b).unwrap();
        qs.sync().unwrap();
        drop(qs);
        let path = dir.path().join(segment_file_name(ACKS_PREFIX, 1));
        let len = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (_, recovered) = open(dir.path(), SMALL);
        let got: Vec<_> = recovered.iter().map(|m| m.position).collect();
        assert_eq!(got, vec![b, c]);
    }

    #[test]
    fn disk_full_during_publish_is_survivable() {
        let dir = TestDir::new("qs-enospc");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let (mut qs, _) = open_with(Arc::new(backend.clone()), dir.path(), SMALL);
        let mut kept = Vec::new();
        faults.set_enospc(true);
        let mut failed = 0;
        for i in 0..100 {
            match qs.append(&payload(i, 500)) {
                Ok(p) => kept.push((p, payload(i, 500))),
                Err(e) => {
                    assert!(e.is_disk_full(), "{e}");
                    failed += 1;
                }
            }
        }
        assert!(failed > 0);
        assert_eq!(qs.message_count(), kept.len() as u64);
        assert!(qs.sync().is_err());
        faults.set_enospc(false);
        qs.sync().unwrap();

        for (p, bytes) in &kept {
            assert_eq!(qs.read(*p).unwrap(), bytes);
        }
        drop(qs);
        let (_, recovered) = open_with(Arc::new(backend), dir.path(), SMALL);
        let got: Vec<_> = recovered
            .into_iter()
            .map(|m| (m.position, m.payload.to_vec()))
            .collect();
        assert_eq!(got, kept, "failed appends left no trace");
    }

    #[test]
    fn failed_ack_write_changes_nothing() {
        let dir = TestDir::new("qs-ack-fail");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let (mut qs, _) = open_with(Arc::new(backend.clone()), dir.path(), SMALL);
        let mut pos = Vec::new();
        for i in 0..5000 {
            pos.push(qs.append(&payload(i, 8)).unwrap());
        }
        qs.sync().unwrap();
        faults.set_enospc(true);
        // 17-byte mark records: the ack log's first rollover has to write its buffer.
        let mut first_err = None;
        for (n, p) in pos.iter().enumerate() {
            if let Err(e) = qs.ack(*p) {
                assert!(e.is_disk_full());
                first_err = Some(n);
                break;
            }
        }
        let n = first_err.expect("the ack buffer had to be written");
        assert_eq!(
            qs.message_count(),
            (5000 - n) as u64,
            "the failed ack is not counted"
        );
        faults.set_enospc(false);
        qs.ack(pos[n]).unwrap();
        qs.sync().unwrap();
        drop(qs);
        let (_, recovered) = open_with(Arc::new(backend), dir.path(), SMALL);
        assert_eq!(recovered.len(), 5000 - n - 1);
        assert_eq!(recovered[0].position, pos[n + 1]);
    }

    #[test]
    fn confirms_can_wait_for_fsync() {
        let dir = TestDir::new("qs-fsync");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let (mut qs, _) = open_with(Arc::new(backend), dir.path(), SMALL);
        qs.sync().unwrap();
        let before = faults.sync_count();
        let p = qs.append(b"confirm me").unwrap();
        qs.ack(p).unwrap();
        assert_eq!(
            faults.sync_count(),
            before,
            "no fsync on the publish/ack path"
        );
        qs.sync().unwrap();
        assert_eq!(faults.sync_count(), before + 2, "one fsync per log");

        qs.append(b"m").unwrap();
        faults.set_fail_sync(true);
        assert!(
            qs.sync().is_err(),
            "a failed fsync must not let a confirm through"
        );
        faults.set_fail_sync(false);
        assert!(matches!(qs.append(b"n"), Err(StoreError::Poisoned { .. })));
    }

    #[test]
    fn purge_and_delete() {
        let dir = TestDir::new("qs-purge");
        let (mut qs, _) = open(dir.path(), SMALL);
        for i in 0..100 {
            qs.append(&payload(i, 100)).unwrap();
        }
        assert_eq!(qs.purge().unwrap(), 100);
        assert_eq!(qs.message_count(), 0);
        assert_eq!(dir_files(dir.path()).len(), 2);
        let p = qs.append(b"after purge").unwrap();
        qs.sync().unwrap();
        drop(qs);
        let (qs, recovered) = open(dir.path(), SMALL);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].position, p);
        qs.delete_all().unwrap();
        assert!(!dir.path().exists());
    }

    /// What a deleted queue's store is not purged for (it never held a record) is told
    /// apart from a store that did, reopened or not.
    #[test]
    fn holds_records_tells_a_store_never_written_to() {
        let dir = TestDir::new("qs-holds");
        let (qs, _) = open(dir.path(), SMALL);
        assert!(!qs.holds_records(), "a new store");
        drop(qs);
        let (mut qs, _) = open(dir.path(), SMALL);
        assert!(!qs.holds_records(), "an empty store reopened");
        let p = qs.append(b"one").unwrap();
        assert!(qs.holds_records(), "a record in the write buffer");
        qs.ack(p).unwrap();
        qs.sync().unwrap();
        drop(qs);
        let (qs, recovered) = open(dir.path(), SMALL);
        assert!(recovered.is_empty());
        assert!(qs.holds_records(), "acked records are still records");
    }

    #[test]
    fn read_batch_reads_records_larger_than_its_read_ahead() {
        let dir = TestDir::new("qs-big");
        let (mut qs, _) = open(dir.path(), StoreOptions::default());
        let sizes = [10, READ_AHEAD + 5000, 20, 3 * READ_AHEAD, 7];
        let pos: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| qs.append(&payload(i, n)).unwrap())
            .collect();
        qs.sync().unwrap();
        let (mut got, mut at) = (Vec::new(), pos[0]);
        loop {
            let (batch, next) = qs.read_batch(at, 1).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch.into_iter().map(|m| (m.position, m.payload.len())));
            at = next;
        }
        let want: Vec<_> = pos.iter().copied().zip(sizes).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_volatile_store_frees_drained_segments_at_once() {
        let dir = TestDir::new("qs-volatile");
        let (mut qs, _) = open(dir.path(), SMALL);
        qs.set_volatile();
        let pos: Vec<_> = (0..400)
            .map(|i| qs.append(&payload(i, 100)).unwrap())
            .collect();
        assert!(msg_files(dir.path()).len() > 10);
        for p in &pos[..200] {
            qs.mark_delivered(*p).unwrap();
            qs.ack(*p).unwrap();
        }
        // The first half's segments are gone without a sync, and no marks were written.
        assert!(qs.read(pos[0]).is_err());
        assert_eq!(qs.read(pos[300]).unwrap(), payload(300, 100));
        let (m, _) = qs.read_next(pos[0]).unwrap().unwrap();
        assert!(m.position <= pos[200]);
        for p in &pos[200..] {
            qs.ack(*p).unwrap();
        }
        assert_eq!(qs.message_count(), 0);
        assert!(
            msg_files(dir.path()).len() <= 1,
            "{:?}",
            msg_files(dir.path())
        );
        let acks: u64 = dir_files(dir.path())
            .iter()
            .filter(|(n, _)| n.starts_with("acks."))
            .map(|(_, l)| l)
            .sum();
        assert!(acks <= 8, "{acks} bytes of marks");
    }

    #[test]
    fn filtered_records_are_dropped_at_open_and_ack_from_purges_the_tail() {
        let dir = TestDir::new("qs-filter");
        let (mut qs, _) = open(dir.path(), SMALL);
        let pos: Vec<_> = (0..100)
            .map(|i| qs.append(&payload(i, 60)).unwrap())
            .collect();
        qs.sync().unwrap();
        drop(qs);
        // Keep only even-numbered payloads (payload(i, _) starts with byte i).
        let (mut qs, rec) =
            QueueStore::open_filtered(FileBackend::shared(), dir.path(), SMALL, |p| p[0] % 2 == 0)
                .unwrap();
        let got: Vec<_> = rec.map(|m| m.unwrap().position).collect();
        let even: Vec<_> = pos.iter().copied().step_by(2).collect();
        assert_eq!(got, even);
        assert_eq!(qs.message_count(), 50);
        // read_next skips the dropped ones too.
        let (m, _) = qs.read_next(pos[1]).unwrap().unwrap();
        assert_eq!(m.position, pos[2]);
        // Ack everything from the 60th on; the rest stays.
        assert_eq!(qs.ack_from(pos[60]).unwrap(), 20);
        assert_eq!(qs.message_count(), 30);
        qs.sync().unwrap();
        drop(qs);
        let (_, rec) =
            QueueStore::open_filtered(FileBackend::shared(), dir.path(), SMALL, |p| p[0] % 2 == 0)
                .unwrap();
        let got: Vec<_> = rec.map(|m| m.unwrap().position).collect();
        assert_eq!(got, even[..30].to_vec());
    }

    #[test]
    fn randomized_against_a_model() {
        let dir = TestDir::new("qs-random");
        let opts = StoreOptions {
            max_segment_size: 2048,
        };
        let mut rng = XorShift::new(0x5eed_1234_abcd_0001);
        // Model: position -> (payload, delivered), for unacked messages.
        let mut model: BTreeMap<Position, (Vec<u8>, bool)> = BTreeMap::new();
        let (mut qs, _) = open(dir.path(), opts);
        for step in 0..5000u64 {
            match rng.below(100) {
                0..=44 => {
                    let p = payload(step as usize, rng.below(300) as usize);
                    let pos = qs.append(&p).unwrap();
                    model.insert(pos, (p, false));
                }
                45..=79 if !model.is_empty() => {
                    // Mostly ack the oldest, like a consumer; sometimes any.
                    let k = if rng.below(4) == 0 {
                        rng.below(model.len() as u64) as usize
                    } else {
                        0
                    };
                    let pos = *model.keys().nth(k).unwrap();
                    qs.ack(pos).unwrap();
                    model.remove(&pos);
                }
                80..=89 if !model.is_empty() => {
                    let k = rng.below(model.len() as u64) as usize;
                    let pos = *model.keys().nth(k).unwrap();
                    qs.mark_delivered(pos).unwrap();
                    model.get_mut(&pos).unwrap().1 = true;
                    assert_eq!(qs.read(pos).unwrap(), model[&pos].0);
                }
                90..=94 => qs.sync().unwrap(),
                95..=96 => {
                    // Walking from any unacked message (or the start) sees the rest in order.
                    let from = match rng.below(model.len() as u64 + 1) as usize {
                        0 => Position {
                            segment: 0,
                            offset: 0,
                        },
                        k => *model.keys().nth(k - 1).unwrap(),
                    };
                    let want: Vec<_> = model.range(from..).map(|(p, v)| (*p, v.clone())).collect();
                    let (mut got, mut at) = (Vec::new(), from);
                    while let Some((m, next)) = qs.read_next(at).unwrap() {
                        got.push((m.position, (m.payload.to_vec(), m.redelivered)));
                        at = next;
                    }
                    assert_eq!(got, want, "read_next differs from the model at step {step}");
                    // The same in batches of a few hundred bytes.
                    let (mut got, mut at) = (Vec::new(), from);
                    loop {
                        let (batch, next) = qs.read_batch(at, 1 + rng.below(900) as usize).unwrap();
                        if batch.is_empty() {
                            break;
                        }
                        got.extend(
                            batch
                                .into_iter()
                                .map(|m| (m.position, (m.payload.to_vec(), m.redelivered))),
                        );
                        at = next;
                    }
                    assert_eq!(
                        got, want,
                        "read_batch differs from the model at step {step}"
                    );
                }
                _ => {
                    if rng.below(2) == 0 {
                        qs.sync().unwrap();
                    }
                    drop(qs);
                    let (reopened, recovered) = open(dir.path(), opts);
                    qs = reopened;
                    let got: Vec<_> = recovered
                        .into_iter()
                        .map(|m| (m.position, (m.payload.to_vec(), m.redelivered)))
                        .collect();
                    let want: Vec<_> = model.iter().map(|(p, v)| (*p, v.clone())).collect();
                    assert_eq!(got, want, "recovery differs from the model at step {step}");
                }
            }
            assert_eq!(qs.message_count(), model.len() as u64);
        }
        // Drain everything: the disk comes back.
        let all: Vec<_> = model.keys().copied().collect();
        for p in all {
            qs.ack(p).unwrap();
        }
        qs.sync().unwrap();
        assert_eq!(dir_files(dir.path()).len(), 2);
    }
}
