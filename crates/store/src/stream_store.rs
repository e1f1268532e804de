//! [`StreamStore`]: one stream's append-only log (RabbitMQ's `x-queue-type: stream`) on the
//! segment log. Every record is a message with its stream offset (a u64 counting from 0) and
//! the time it was appended; nothing is ever acked. Readers keep a [`Position`] each and read
//! forward in chunks; retention removes whole sealed segments from the oldest on.
//!
//! What is kept in memory: per segment, its first offset, the first and last timestamps and
//! its length (a few dozen bytes per segment), however many messages it holds.
//!
//! Record payload (integers little-endian, as the segment format):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | stream offset, u64 |
//! | 8 | 8 | append time, ms since the Unix epoch, u64 |
//! | 16 | n | the message (the broker's record; the store does not look inside) |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Backend, SyncHandle};
use crate::error::{Result, StoreError};
use crate::segment::{
    check_header, record_crc, Position, SegmentLog, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};

/// File-name prefix of a stream's segments.
const PREFIX: &str = "stream";
/// Bytes of the offset and timestamp in front of each message.
const HEADER: usize = 16;
/// One read of a segment. Below 64 KiB, the `warren` binary's fixed mmap threshold (see
/// `tune_allocator` in crates/warren/src/main.rs), so each read's buffer comes from malloc's
/// heap: a larger one would be a fresh mapping per read, paid for in page faults (a third of
/// a replay's CPU when it was 128 KiB).
pub const READ_AHEAD: usize = 60 * 1024;

/// What the store knows of one segment.
#[derive(Debug, Clone, Copy)]
struct SegInfo {
    first_offset: u64,
    last_ts: u64,
    /// Bytes in the file (header and records).
    len: u64,
}

/// One message read back.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub offset: u64,
    /// Append time, ms since the Unix epoch.
    pub timestamp: u64,
    pub payload: Bytes,
}

/// Retention limits, applied by whole segments (the segment being written is never removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove the oldest segments while the log is larger than this.
    pub max_bytes: Option<u64>,
    /// Remove segments whose newest message is older than this (ms).
    pub max_age_ms: Option<u64>,
}

pub struct StreamStore {
    log: SegmentLog,
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    segments: BTreeMap<u32, SegInfo>,
    first_offset: u64,
    next_offset: u64,
    /// The record and the message being appended (kept to reuse their memory).
    scratch: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for StreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStore")
            .field("dir", &self.dir)
            .field("first_offset", &self.first_offset)
            .field("next_offset", &self.next_offset)
            .field("segments", &self.segments.len())
            .finish()
    }
}

fn parse_header(payload: &[u8]) -> Option<(u64, u64)> {
    let off = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let ts = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((off, ts))
}

impl StreamStore {
    /// Opens (creating if needed) the stream log in `dir`, checking every record (torn tails
    /// are cut as for any segment log) and rebuilding the per-segment index.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        max_segment_size: u32,
    ) -> Result<Self> {
        Self::open_with(backend, dir, max_segment_size, |_, _| {})
    }

    /// As [`StreamStore::open`], handing `on_record` each message it keeps (its offset and
    /// its bytes), oldest first: the broker rebuilds what it tracks per stream from them
    /// without reading the log a second time.
    pub fn open_with(
        backend: Arc<dyn Backend>,
        dir: impl Into<PathBuf>,
        max_segment_size: u32,
        mut on_record: impl FnMut(u64, &[u8]),
    ) -> Result<Self> {
        let dir = dir.into();
        let mut segments: BTreeMap<u32, SegInfo> = BTreeMap::new();
        let mut next_offset = 0u64;
        let log = SegmentLog::open(
            backend.clone(),
            &dir,
            PREFIX,
            max_segment_size,
            |pos, payload| {
                let Some((off, ts)) = parse_header(payload) else {
                    return;
                };
                let end = pos.offset as u64 + RECORD_HEADER_LEN as u64 + payload.len() as u64;
                let s = segments.entry(pos.segment).or_insert(SegInfo {
                    first_offset: off,
                    last_ts: ts,
                    len: end,
                });
                s.last_ts = ts;
                s.len = end;
                next_offset = next_offset.max(off + 1);
                on_record(off, &payload[HEADER..]);
            },
        )?;
        let first_offset = segments
            .values()
            .next()
            .map_or(next_offset, |s| s.first_offset);
        Ok(StreamStore {
            log,
            backend,
            dir,
            segments,
            first_offset,
            next_offset,
            scratch: (Vec::new(), Vec::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The offset of the oldest message retained.
    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Messages retained.
    pub fn count(&self) -> u64 {
        self.next_offset - self.first_offset
    }

    /// Bytes of the segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.log.disk_bytes()
    }

    /// Segments (files) of the log.
    pub fn segment_count(&self) -> usize {
        self.log.segment_ids().len()
    }

    /// A new segment size (a policy changed); applies from the next record on.
    pub fn set_max_segment_size(&mut self, max: u32) {
        self.log.set_max_segment_size(max);
    }

    /// Appends a message at `timestamp` (ms). Returns its offset. Durable after a sync.
    pub fn append(&mut self, timestamp: u64, message: impl FnOnce(&mut Vec<u8>)) -> Result<u64> {
        let (mut buf, mut msg) = std::mem::take(&mut self.scratch);
        // The message is written into a buffer of its own: its writer may clear what it gets.
        message(&mut msg);
        let offset = self.next_offset;
        buf.clear();
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&timestamp.to_le_bytes());
        buf.extend_from_slice(&msg);
        let r = self.log.append(&buf);
        let len = buf.len();
        msg.clear();
        self.scratch = (buf, msg);
        let pos = r?;
        let end = pos.offset as u64 + RECORD_HEADER_LEN as u64 + len as u64;
        let s = self.segments.entry(pos.segment).or_insert(SegInfo {
            first_offset: offset,
            last_ts: timestamp,
            len: end,
        });
        s.last_ts = timestamp;
        s.len = end;
        if self.count() == 0 {
            self.first_offset = offset;
        }
        self.next_offset = offset + 1;
        Ok(offset)
    }

    /// Where the next append goes: the end of the log.
    pub fn end(&self) -> Position {
        Position {
            segment: self.log.current_segment(),
            offset: self.log.current_len() as u32,
        }
    }

    /// The start of the oldest segment.
    pub fn start(&self) -> Position {
        let segment = self
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.log.current_segment());
        Position {
            segment,
            offset: SEGMENT_HEADER_LEN,
        }
    }

    /// The position of the first message with an offset at or above `offset` (the end of the
    /// log if there is none yet; the start if `offset` is no longer retained).
    pub fn seek_offset(&self, offset: u64) -> Result<Position> {
        if offset >= self.next_offset {
            return Ok(self.end());
        }
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|(_, s)| s.first_offset <= offset)
            .map(|(id, _)| *id);
        let Some(seg) = seg else {
            return Ok(self.start());
        };
        self.scan(seg, |off, _| off >= offset)
    }

    /// The position of the first message appended at or after `ts` (ms).
    pub fn seek_timestamp(&self, ts: u64) -> Result<Position> {
        let seg = self
            .segments
            .iter()
            .find(|(_, s)| s.last_ts >= ts)
            .map(|(id, _)| *id);
        match seg {
            Some(seg) => self.scan(seg, |_, t| t >= ts),
            None => Ok(self.end()),
        }
    }

    /// The first record of segment `seg` (or a later one) that `hit` accepts.
    fn scan(&self, seg: u32, hit: impl Fn(u64, u64) -> bool) -> Result<Position> {
        let mut at = Position {
            segment: seg,
            offset: SEGMENT_HEADER_LEN,
        };
        loop {
            let (recs, next) = self.read_batch(at, READ_AHEAD)?;
            if recs.is_empty() {
                return Ok(next);
            }
            if let Some((pos, _)) = recs.iter().find(|(_, r)| hit(r.offset, r.timestamp)) {
                return Ok(*pos);
            }
            at = next;
        }
    }

    /// Reads records from `from` on until their payloads reach `max_bytes` (at least one if
    /// any is there). A position in a segment that retention removed continues at the oldest
    /// segment. Returns each record with its position, and where to continue.
    pub fn read_batch(
        &self,
        from: Position,
        max_bytes: usize,
    ) -> Result<(Vec<(Position, StreamRecord)>, Position)> {
        let mut out = Vec::new();
        let mut taken = 0usize;
        let mut at = from;
        if !self.segments.contains_key(&at.segment) && at.segment != self.log.current_segment() {
            // Removed by retention (or never written to): go on with the next one there is.
            match self.segments.range(at.segment..).next() {
                Some((&id, _)) => {
                    at = Position {
                        segment: id,
                        offset: SEGMENT_HEADER_LEN,
                    }
                }
                None => {
                    at = Position {
                        segment: self.log.current_segment(),
                        offset: at.offset.max(SEGMENT_HEADER_LEN),
                    };
                    if from.segment < at.segment {
                        at.offset = SEGMENT_HEADER_LEN;
                    }
                }
            }
        }
        while taken < max_bytes {
            let chunk = match self.log.read_chunk(at, READ_AHEAD) {
                Ok(c) => c,
                Err(StoreError::UnknownPosition { .. }) => Bytes::new(),
                Err(e) => return Err(e),
            };
            let mut p = 0usize;
            while p < chunk.len() && taken < max_bytes {
                let Ok((len, crc)) = check_header(&chunk[p..], (chunk.len() - p) as u64) else {
                    break;
                };
                let start = p + RECORD_HEADER_LEN as usize;
                let payload = chunk.slice(start..start + len as usize);
                let pos = Position {
                    segment: at.segment,
                    offset: at.offset + p as u32,
                };
                if record_crc(
                    [chunk[p], chunk[p + 1], chunk[p + 2], chunk[p + 3]],
                    &payload,
                ) != crc
                {
                    return Err(StoreError::Corrupt {
                        path: self.dir.clone(),
                        offset: pos.offset as u64,
                        reason: "checksum mismatch".into(),
                    });
                }
                p = start + len as usize;
                let Some((offset, timestamp)) = parse_header(&payload) else {
                    continue;
                };
                taken += payload.len();
                out.push((
                    pos,
                    StreamRecord {
                        offset,
                        timestamp,
                        payload: payload.slice(HEADER..),
                    },
                ));
            }
            if p > 0 {
                at.offset += p as u32;
                continue;
            }
            if !chunk.is_empty() {
                // A record larger than one read: read it alone.
                let payload = self.log.read(at)?;
                let next = at.offset + RECORD_HEADER_LEN + payload.len() as u32;
                if let Some((offset, timestamp)) = parse_header(&payload) {
                    taken += payload.len();
                    out.push((
                        at,
                        StreamRecord {
                            offset,
                            timestamp,
                            payload: payload.slice(HEADER..),
                        },
                    ));
                }
                at.offset = next;
                continue;
            }
            // The end of this segment: the next one, if there is one.
            match self.segments.range(at.segment + 1..).next() {
                Some((&id, _)) => {
                    at = Position {
                        segment: id,
                        offset: SEGMENT_HEADER_LEN,
                    }
                }
                None if at.segment < self.log.current_segment() => {
                    at = Position {
                        segment: self.log.current_segment(),
                        offset: SEGMENT_HEADER_LEN,
                    }
                }
                None => break,
            }
        }
        Ok((out, at))
    }

    /// Removes the oldest sealed segments that `retention` no longer keeps (at `now`, ms).
    /// Returns how many messages went.
    pub fn apply_retention(&mut self, retention: Retention, now: u64) -> Result<u64> {
        let current = self.log.current_segment();
        let mut total: u64 = self.log.disk_bytes();
        let mut removed_msgs = 0u64;
        let mut removed_any = false;
        while let Some((&id, info)) = self.segments.iter().next() {
            if id == current {
                break;
            }
            let too_big = retention.max_bytes.is_some_and(|m| total > m);
            let too_old = retention
                .max_age_ms
                .is_some_and(|age| info.last_ts.saturating_add(age) < now);
            if !too_big && !too_old {
                break;
            }
            let len = info.len;
            self.log.remove_segment(id)?;
            self.segments.remove(&id);
            removed_any = true;
            total = total.saturating_sub(len);
            let next_first = self
                .segments
                .values()
                .next()
                .map_or(self.next_offset, |s| s.first_offset);
            removed_msgs += next_first.saturating_sub(self.first_offset);
            self.first_offset = next_first;
        }
        if removed_any {
            self.log.sync_dir()?;
        }
        Ok(removed_msgs)
    }

    /// Whether appends are waiting for an fsync.
    pub fn has_unsynced(&self) -> bool {
        self.log.has_unsynced()
    }

    /// First half of a sync whose fsyncs run outside the caller's lock (see
    /// [`SegmentLog::begin_sync`]).
    pub fn begin_sync(&mut self) -> Result<Vec<SyncHandle>> {
        self.log.begin_sync()
    }

    pub fn end_sync(&mut self, fsynced: std::io::Result<()>) -> Result<()> {
        self.log.end_sync(fsynced)
    }

    /// Makes every append so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.log.sync()
    }

    /// Removes the stream's directory (the stream was deleted).
    pub fn remove_dir(&mut self) -> Result<()> {
        self.log.discard_buffer();
        match self.backend.remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove directory", &self.dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;
    use crate::FileBackend;

    fn open(dir: &TestDir, seg: u32) -> StreamStore {
        StreamStore::open(FileBackend::shared(), dir.path(), seg).unwrap()
    }

    fn body(i: u64) -> Vec<u8> {
        format!("message {i}").into_bytes()
    }

    fn read_all(s: &StreamStore, from: Position) -> Vec<(u64, Vec<u8>)> {
        let mut at = from;
        let mut out = Vec::new();
        loop {
            let (recs, next) = s.read_batch(at, 1000).unwrap();
            if recs.is_empty() {
                return out;
            }
            out.extend(
                recs.into_iter()
                    .map(|(_, r)| (r.offset, r.payload.to_vec())),
            );
            at = next;
        }
    }

    #[test]
    fn offsets_count_from_zero_and_survive_reopening() {
        let dir = TestDir::new("stream-reopen");
        let mut s = open(&dir, 256);
        for i in 0..50 {
            // The message writer may clear its buffer (the broker's does).
            let w = |b: &mut Vec<u8>| {
                b.clear();
                b.extend_from_slice(&body(i))
            };
            assert_eq!(s.append(1000 + i, w).unwrap(), i);
        }
        s.sync().unwrap();
        assert!(s.segment_count() > 3, "small segments roll over");
        drop(s);
        let s = open(&dir, 256);
        assert_eq!((s.first_offset(), s.next_offset(), s.count()), (0, 50, 50));
        let all = read_all(&s, s.start());
        assert_eq!(all.len(), 50);
        for (i, (off, b)) in all.iter().enumerate() {
            assert_eq!(*off, i as u64);
            assert_eq!(b, &body(i as u64));
        }
    }

    #[test]
    fn seeking_by_offset_and_by_time() {
        let dir = TestDir::new("stream-seek");
        let mut s = open(&dir, 300);
        for i in 0..40 {
            s.append(1000 + 10 * i, |b| b.extend_from_slice(&body(i)))
                .unwrap();
        }
        for target in [0, 1, 17, 39] {
            let pos = s.seek_offset(target).unwrap();
            assert_eq!(read_all(&s, pos)[0].0, target);
        }
        assert!(read_all(&s, s.seek_offset(40).unwrap()).is_empty());
        // Appended at 1000 + 10 i: the first at or after 1205 is 21.
        assert_eq!(read_all(&s, s.seek_timestamp(1205).unwrap())[0].0, 21);
        assert_eq!(read_all(&s, s.seek_timestamp(0).unwrap())[0].0, 0);
        assert!(read_all(&s, s.seek_timestamp(99_999).unwrap()).is_empty());
    }

    #[test]
    fn retention_removes_whole_old_segments_never_the_current_one() {
        let dir = TestDir::new("stream-retention");
        let mut s = open(&dir, 300);
        for i in 0..100 {
            s.append(1000, |b| b.extend_from_slice(&body(i))).unwrap();
        }
        let segs = s.segment_count();
        let removed = s
            .apply_retention(
                Retention {
                    max_bytes: Some(1000),
                    max_age_ms: None,
                },
                2000,
            )
            .unwrap();
        assert!(
            removed > 0 && s.disk_bytes() <= 1000,
            "{removed} {}",
            s.disk_bytes()
        );
        assert!(s.segment_count() < segs);
        assert_eq!(s.first_offset(), removed);
        let all = read_all(
            &s,
            Position {
                segment: 1,
                offset: 8,
            },
        );
        assert_eq!(
            all[0].0, removed,
            "a reader in a removed segment goes on at the oldest"
        );
        assert_eq!(all.last().unwrap().0, 99);
        // By age: everything sealed is older than 500 ms at 5000; the current segment stays.
        s.apply_retention(
            Retention {
                max_bytes: None,
                max_age_ms: Some(500),
            },
            5000,
        )
        .unwrap();
        assert_eq!(s.segment_count(), 1);
        assert!(s.count() > 0);
        drop(s);
        let s = open(&dir, 300);
        assert_eq!(read_all(&s, s.start()).last().unwrap().0, 99);
    }
}
