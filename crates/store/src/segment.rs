//! The segment log: an append-only sequence of checksummed records spread over numbered
//! segment files (`<prefix>.0000000001`, ...), each at most `max_segment_size` bytes.
//!
//! It owns framing, rollover, buffered appends, positional reads, fsync, recovery of torn or
//! corrupt tails, and removing whole segments. It knows nothing of what the records mean; the
//! queue store builds messages and acks on top of two of these.
//!
//! Layout of a segment: an 8-byte header (`WRNSEG` + format version u16 LE), then records
//! framed as `[u32 LE payload length][u32 LE CRC32C][payload]`. The CRC covers the four
//! length bytes followed by the payload, so a zero-filled tail (which file systems leave after
//! a crash) can never pass as a run of empty records. `docs/storage.md` has the full format.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::warn;

use crate::backend::{Backend, BackendFile, SyncHandle};
use crate::error::{Result, StoreError};

/// First six bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 6] = *b"WRNSEG";
/// Segment format version this build writes and reads.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: u32 = 8;
/// Bytes of framing in front of every payload.
pub const RECORD_HEADER_LEN: u32 = 8;
/// Default segment size, 8 MiB.
pub const DEFAULT_MAX_SEGMENT_SIZE: u32 = 8 * 1024 * 1024;
/// Largest payload: one record alone in a segment must keep every offset within a u32.
pub const MAX_PAYLOAD_LEN: u64 = (u32::MAX - SEGMENT_HEADER_LEN - RECORD_HEADER_LEN) as u64;

/// Appends collect in memory up to this size before one write; it keeps the hot path free of
/// per-message syscalls.
const WRITE_BUFFER: usize = 64 * 1024;
/// Readers fetch this much per positional read, so scanning costs one syscall per chunk.
const READ_CHUNK: usize = 64 * 1024;

/// Where a record lives: segment id and byte offset of its framing. Ordering is append order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u32,
    pub offset: u32,
}

impl Position {
    /// Little-endian encoding, as stored in ack records.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.segment.to_le_bytes());
        b[4..].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    pub fn from_bytes(b: [u8; 8]) -> Self {
        Position {
            segment: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            offset: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// File name of segment `id` of the log with this prefix, e.g. `msgs.0000000001`.
pub fn segment_file_name(prefix: &str, id: u32) -> String {
    format!("{prefix}.{id:010}")
}

/// The segment id in a file name of this log, or `None` for any other file.
pub fn parse_segment_file_name(prefix: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?.strip_prefix('.')?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..6].copy_from_slice(&SEGMENT_MAGIC);
    h[6..].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h
}

pub(crate) fn record_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Why a segment's valid records end before its file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailDamage {
    /// Fewer bytes left than a record header.
    ShortHeader,
    /// The length field points past the end of the file.
    LengthOverflow { len: u32 },
    /// The checksum does not match the length and payload.
    BadChecksum,
}

impl fmt::Display for TailDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailDamage::ShortHeader => f.write_str("short record header"),
            TailDamage::LengthOverflow { len } => {
                write!(f, "record length {len} runs past the end of the file")
            }
            TailDamage::BadChecksum => f.write_str("checksum mismatch"),
        }
    }
}

/// Checks one record's framing in `buf`, which starts at the record and holds at least its
/// header. Returns the payload length, or what is wrong. `avail` is how many bytes of the
/// file (or buffer) exist from the record on.
pub(crate) fn check_header(hdr: &[u8], avail: u64) -> std::result::Result<(u32, u32), TailDamage> {
    if avail < RECORD_HEADER_LEN as u64 || hdr.len() < RECORD_HEADER_LEN as usize {
        return Err(TailDamage::ShortHeader);
    }
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    if len as u64 > avail - RECORD_HEADER_LEN as u64 {
        return Err(TailDamage::LengthOverflow { len });
    }
    Ok((len, crc))
}

/// Streams the records of one segment file in order, a chunk at a time, so recovery never
/// holds more than a chunk (or one record, if larger) of it in memory.
///
/// [`SegmentReader::next_record`] lends each payload without copying; the `Iterator` impl
/// copies each into `Bytes`.
pub struct SegmentReader {
    file: Box<dyn BackendFile>,
    path: PathBuf,
    segment: u32,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
    next: u64,
    damage: Option<TailDamage>,
}

impl SegmentReader {
    /// Opens segment `segment` at `path` read-only and checks its header.
    pub fn open(backend: &dyn Backend, path: &Path, segment: u32) -> Result<Self> {
        let file = backend
            .open_read(path)
            .map_err(|e| StoreError::io("open", path, e))?;
        Self::new(file, path.to_path_buf(), segment)
    }

    /// Wraps an open segment file and checks its header.
    pub fn new(file: Box<dyn BackendFile>, path: PathBuf, segment: u32) -> Result<Self> {
        let file_len = file.len();
        if file_len < SEGMENT_HEADER_LEN as u64 {
            return Err(StoreError::BadSegmentHeader {
                path,
                reason: "shorter than the segment header",
            });
        }
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        file.read_at(0, &mut h)
            .map_err(|e| StoreError::io("read", &path, e))?;
        if h[..6] != SEGMENT_MAGIC {
            return Err(StoreError::BadSegmentHeader {
                path,
                reason: "bad magic",
            });
        }
        let version = u16::from_le_bytes([h[6], h[7]]);
        if version != SEGMENT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                path,
                found: version,
                supported: SEGMENT_VERSION,
            });
        }
        Ok(SegmentReader {
            file,
            path,
            segment,
            file_len,
            buf: Vec::new(),
            buf_start: 0,
            next: SEGMENT_HEADER_LEN as u64,
            damage: None,
        })
    }

    /// Offset just past the last valid record returned so far: where a damaged file is cut.
    pub fn valid_len(&self) -> u64 {
        self.next
    }

    /// Why reading stopped early, if it did.
    pub fn damage(&self) -> Option<TailDamage> {
        self.damage
    }

    /// Length of the file as seen when it was opened.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Gives the file handle back (recovery keeps it as the segment's handle).
    pub fn into_file(self) -> Box<dyn BackendFile> {
        self.file
    }

    /// The next valid record as (offset, payload), or `None` at the end of the file or at the
    /// first damaged record (see [`SegmentReader::damage`]). Errors are I/O failures only.
    pub fn next_record(&mut self) -> Result<Option<(u32, &[u8])>> {
        if self.damage.is_some() || self.next >= self.file_len {
            return Ok(None);
        }
        let off = self.next;
        match self.record_at(off)? {
            Ok((start, len)) => {
                self.next = off + RECORD_HEADER_LEN as u64 + len as u64;
                // Offsets fit in u32: segments never start a record past max_segment_size.
                Ok(Some((off as u32, &self.buf[start..start + len as usize])))
            }
            Err(damage) => {
                self.damage = Some(damage);
                Ok(None)
            }
        }
    }

    /// Reads the record at `off`, which must be a record boundary this reader has not yet
    /// passed (recovery jumps straight to the live records of a segment).
    pub fn read_record_at(&mut self, off: u32) -> Result<Bytes> {
        match self.record_at(off as u64)? {
            Ok((start, len)) => {
                self.next = off as u64 + RECORD_HEADER_LEN as u64 + len as u64;
                Ok(Bytes::copy_from_slice(
                    &self.buf[start..start + len as usize],
                ))
            }
            Err(damage) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                offset: off as u64,
                reason: damage.to_string(),
            }),
        }
    }

    /// Validates the record at `off`; on success the payload is `buf[start..start + len]`.
    fn record_at(&mut self, off: u64) -> Result<std::result::Result<(usize, u32), TailDamage>> {
        let avail = self.file_len.saturating_sub(off);
        if avail < RECORD_HEADER_LEN as u64 {
            return Ok(Err(TailDamage::ShortHeader));
        }
        self.fill(off, RECORD_HEADER_LEN as usize)?;
        let rel = (off - self.buf_start) as usize;
        let (len, crc) = match check_header(&self.buf[rel..], avail) {
            Ok(v) => v,
            Err(d) => return Ok(Err(d)),
        };
        let total = RECORD_HEADER_LEN as usize + len as usize;
        self.fill(off, total)?;
        let rel = (off - self.buf_start) as usize;
        let len_bytes = [
            self.buf[rel],
            self.buf[rel + 1],
            self.buf[rel + 2],
            self.buf[rel + 3],
        ];
        let start = rel + RECORD_HEADER_LEN as usize;
        if record_crc(len_bytes, &self.buf[start..start + len as usize]) != crc {
            return Ok(Err(TailDamage::BadChecksum));
        }
        Ok(Ok((start, len)))
    }

    /// Makes `buf` cover file bytes `[off, off + need)`; the caller has checked they exist.
    fn fill(&mut self, off: u64, need: usize) -> Result<()> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if off >= self.buf_start && off + need as u64 <= buf_end {
            return Ok(());
        }
        let want = need
            .max(READ_CHUNK)
            .min((self.file_len - off) as usize)
            .max(need);
        if need <= READ_CHUNK && self.buf.capacity() > 2 * READ_CHUNK {
            // Drop the memory a single huge record needed once we are past it.
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.buf.resize(want, 0);
        if let Err(e) = self.file.read_at(off, &mut self.buf) {
            self.buf.clear();
            return Err(StoreError::io("read", &self.path, e));
        }
        self.buf_start = off;
        Ok(())
    }
}

impl Iterator for SegmentReader {
    type Item = Result<(Position, Bytes)>;

    /// Yields every valid record; damage in a segment that recovery already checked is
    /// reported as one `Corrupt` error.
    fn next(&mut self) -> Option<Self::Item> {
        let segment = self.segment;
        match self.next_record() {
            Ok(Some((offset, payload))) => Some(Ok((
                Position { segment, offset },
                Bytes::copy_from_slice(payload),
            ))),
            Ok(None) => {
                let damage = self.damage.take()?;
                let offset = self.next;
                // Leave the reader finished rather than re-reporting the same damage.
                self.next = self.file_len;
                Some(Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    offset,
                    reason: damage.to_string(),
                }))
            }
            Err(e) => {
                self.next = self.file_len;
                Some(Err(e))
            }
        }
    }
}

/// A segment no longer written to.
/// See [`SegmentLog::locate`].
enum Located<'a> {
    Buffered(&'a [u8]),
    File(&'a dyn BackendFile, u64),
}

struct Sealed {
    file: Box<dyn BackendFile>,
    len: u64,
}

/// The segment being appended to. Its bytes are `file[..flushed]` followed by `buf`.
struct Current {
    id: u32,
    file: Box<dyn BackendFile>,
    flushed: u64,
    buf: Vec<u8>,
    /// Bytes reached the file since the last fsync.
    needs_sync: bool,
}

impl Current {
    fn len(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }
}

/// A log of records in segment files sharing a directory and a file-name prefix.
pub struct SegmentLog {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    prefix: String,
    max_segment_size: u32,
    sealed: BTreeMap<u32, Sealed>,
    current: Current,
    /// Sealed segments written since their last fsync; `sync` covers them too.
    unsynced: Vec<u32>,
    /// A segment file was created since the last directory fsync.
    dir_dirty: bool,
    /// Directories whose entries `open` created (the parents of the directories it made),
    /// fsynced with the log's directory at the first sync: until then a power cut may lose
    /// the new directory, with every fsynced segment in it.
    new_entries_in: Vec<PathBuf>,
    poisoned: bool,
}

impl fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field("current", &self.current.id)
            .field("sealed", &self.sealed.len())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl SegmentLog {
    /// Opens (creating if needed) the log `prefix` in `dir`, checking every segment.
    ///
    /// Each valid record is passed to `visit` in log order, so callers rebuild their indexes
    /// in the same pass. A torn or corrupt tail of any segment is logged and truncated; a
    /// segment whose header was never completely written is reset to an empty segment. A
    /// file with a foreign header or version is an error: it is never silently discarded.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: &Path,
        prefix: &str,
        max_segment_size: u32,
        mut visit: impl FnMut(Position, &[u8]),
    ) -> Result<Self> {
        if max_segment_size < SEGMENT_HEADER_LEN + RECORD_HEADER_LEN {
            return Err(StoreError::InvalidOptions(
                "max_segment_size must leave room for the segment header and a record header",
            ));
        }
        let names = match backend.list(dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("list", dir, e)),
        };
        // A directory made here is durable only once its parent is fsynced (and so on up
        // to the first directory that existed): note which parents got a new entry.
        let mut new_entries_in = Vec::new();
        if names.is_empty() {
            // (Whether each exists, not its listing: the parent can hold thousands of
            // queues' directories.)
            let mut missing = dir;
            while let Ok(false) = backend.exists(missing) {
                match missing.parent() {
                    Some(parent) => {
                        new_entries_in.push(parent.to_path_buf());
                        missing = parent;
                    }
                    None => break,
                }
            }
            backend
                .create_dir_all(dir)
                .map_err(|e| StoreError::io("create directory", dir, e))?;
        }
        let mut ids: Vec<u32> = names
            .iter()
            .filter_map(|name| parse_segment_file_name(prefix, name))
            .collect();
        ids.sort_unstable();

        let mut sealed = BTreeMap::new();
        let mut current = None;
        for (i, &id) in ids.iter().enumerate() {
            let path = dir.join(segment_file_name(prefix, id));
            // Writable even for sealed segments: recovery may have to truncate them.
            let mut file = backend
                .open_append(&path)
                .map_err(|e| StoreError::io("open", &path, e))?;
            if file.len() < SEGMENT_HEADER_LEN as u64 || header_is_zeros(&*file) {
                // The crash came between creating the file and writing its header, or before
                // the header reached the disk: after a power cut a file system can leave a
                // file its length with zeros where the unsynced data was. Nothing in such a
                // file was ever synced (a sync writes the header first).
                warn!(
                    file = %path.display(),
                    len = file.len(),
                    dropped_bytes = file.len(),
                    "segment log: segment header incomplete or never written (zeros); resetting to an empty segment"
                );
                file.truncate(0)
                    .and_then(|()| file.append(&segment_header()))
                    .and_then(|()| file.sync())
                    .map_err(|e| StoreError::io("rewrite header of", &path, e))?;
            }
            let mut reader = SegmentReader::new(file, path.clone(), id)?;
            while let Some((offset, payload)) = reader.next_record()? {
                visit(
                    Position {
                        segment: id,
                        offset,
                    },
                    payload,
                );
            }
            let valid = reader.valid_len();
            let file_len = reader.file_len();
            let damage = reader.damage();
            let mut file = reader.into_file();
            if let Some(damage) = damage {
                warn!(
                    file = %path.display(),
                    offset = valid,
                    dropped_bytes = file_len - valid,
                    reason = %damage,
                    "segment log: truncating torn or corrupt tail"
                );
                file.truncate(valid)
                    .and_then(|()| file.sync())
                    .map_err(|e| StoreError::io("truncate", &path, e))?;
            }
            if i + 1 == ids.len() {
                current = Some(Current {
                    id,
                    file,
                    flushed: valid,
                    buf: Vec::with_capacity(WRITE_BUFFER),
                    needs_sync: false,
                });
            } else {
                sealed.insert(id, Sealed { file, len: valid });
            }
        }

        let (current, dir_dirty) = match current {
            Some(c) => (c, false),
            None => (Self::create_segment(&*backend, dir, prefix, 1)?, true),
        };
        Ok(SegmentLog {
            backend,
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            max_segment_size,
            sealed,
            current,
            unsynced: Vec::new(),
            dir_dirty,
            new_entries_in,
            poisoned: false,
        })
    }

    /// Creates segment `id` with its header waiting in the write buffer.
    fn create_segment(backend: &dyn Backend, dir: &Path, prefix: &str, id: u32) -> Result<Current> {
        let path = dir.join(segment_file_name(prefix, id));
        let mut file = backend
            .open_append(&path)
            .map_err(|e| StoreError::io("create", &path, e))?;
        if !file.is_empty() {
            // Only a leftover of an interrupted removal can be here; ids are never reused
            // while their records could still be referenced.
            file.truncate(0)
                .map_err(|e| StoreError::io("truncate", &path, e))?;
        }
        let mut buf = Vec::with_capacity(WRITE_BUFFER);
        buf.extend_from_slice(&segment_header());
        Ok(Current {
            id,
            file,
            flushed: 0,
            buf,
            needs_sync: false,
        })
    }

    fn segment_path(&self, id: u32) -> PathBuf {
        self.dir.join(segment_file_name(&self.prefix, id))
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                path: self.dir.join(format!("{}.*", self.prefix)),
            });
        }
        Ok(())
    }

    /// Appends one record and returns where it lives. The record is buffered: it reaches the
    /// file when the buffer fills or at [`SegmentLog::flush`]/[`SegmentLog::sync`], and is
    /// durable only after `sync`. On error nothing was appended.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position> {
        self.check_poisoned()?;
        if payload.len() as u64 > MAX_PAYLOAD_LEN {
            return Err(StoreError::RecordTooLarge {
                len: payload.len() as u64,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let rec_len = RECORD_HEADER_LEN as usize + payload.len();
        let has_records = self.current.len() > SEGMENT_HEADER_LEN as u64;
        // A record larger than a segment still goes in, alone in a fresh segment.
        if has_records && self.current.len() + rec_len as u64 > self.max_segment_size as u64 {
            self.roll()?;
        }
        // Flush before adding, so that a failed write leaves this record out entirely.
        if !self.current.buf.is_empty() && self.current.buf.len() + rec_len > WRITE_BUFFER {
            self.flush()?;
        }
        let offset = self.current.len() as u32;
        let len = (payload.len() as u32).to_le_bytes();
        let buf = &mut self.current.buf;
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&record_crc(len, payload).to_le_bytes());
        buf.extend_from_slice(payload);
        Ok(Position {
            segment: self.current.id,
            offset,
        })
    }

    /// Writes buffered records to the file (no fsync).
    ///
    /// If the write fails, the partial write is cut off and the records stay buffered, so a
    /// later flush retries them at the same positions (a full disk is survivable). If even the
    /// cut fails, the log is poisoned.
    pub fn flush(&mut self) -> Result<()> {
        if self.current.buf.is_empty() {
            return Ok(());
        }
        self.check_poisoned()?;
        let cur = &mut self.current;
        match cur.file.append(&cur.buf) {
            Ok(()) => {
                cur.flushed += cur.buf.len() as u64;
                cur.buf.clear();
                cur.buf.shrink_to(2 * WRITE_BUFFER);
                cur.needs_sync = true;
                Ok(())
            }
            Err(e) => {
                let path = self.segment_path(self.current.id);
                // Truncate even if the length looks unchanged: after a failed write the
                // cached length is only a best guess.
                let cur = &mut self.current;
                if let Err(te) = cur.file.truncate(cur.flushed) {
                    warn!(
                        file = %path.display(),
                        error = %te,
                        "segment log: cannot cut off a failed write; refusing further writes"
                    );
                    self.poisoned = true;
                }
                Err(StoreError::io("write", path, e))
            }
        }
    }

    /// Makes every record appended so far durable: flushes, fsyncs sealed segments written
    /// since their last fsync, the current segment, and the directory if a segment was
    /// created. A failed fsync poisons the log (after one, Linux may have dropped the dirty
    /// pages, so retrying could falsely succeed).
    pub fn sync(&mut self) -> Result<()> {
        let handles = self.begin_sync()?;
        let fsynced = handles.into_iter().try_for_each(|h| h());
        self.end_sync(fsynced)
    }

    /// Whether anything appended is not yet known durable.
    pub fn has_unsynced(&self) -> bool {
        !self.current.buf.is_empty() || self.current.needs_sync || !self.unsynced.is_empty()
    }

    /// First half of a sync that runs the fsyncs outside the caller's lock: flushes, and
    /// returns the fsyncs to run. Pass their outcome to [`SegmentLog::end_sync`].
    pub fn begin_sync(&mut self) -> Result<Vec<SyncHandle>> {
        self.check_poisoned()?;
        self.flush()?;
        let mut handles = Vec::new();
        while let Some(&id) = self.unsynced.last() {
            if let Some(s) = self.sealed.get(&id) {
                handles.push(
                    s.file
                        .sync_handle()
                        .map_err(|e| StoreError::io("fsync", self.segment_path(id), e))?,
                );
            }
            self.unsynced.pop();
        }
        if self.current.needs_sync {
            let path = self.segment_path(self.current.id);
            handles.push(
                self.current
                    .file
                    .sync_handle()
                    .map_err(|e| StoreError::io("fsync", path, e))?,
            );
            // A later append sets it again; if the fsync fails the log is poisoned anyway.
            self.current.needs_sync = false;
        }
        Ok(handles)
    }

    /// Second half of [`SegmentLog::begin_sync`]: a failed fsync poisons the log, as in
    /// [`SegmentLog::sync`]; then the directory is synced if a segment was created.
    pub fn end_sync(&mut self, fsynced: std::io::Result<()>) -> Result<()> {
        if let Err(e) = fsynced {
            self.poisoned = true;
            return Err(StoreError::io(
                "fsync",
                self.segment_path(self.current.id),
                e,
            ));
        }
        self.sync_dir_if_dirty()
    }

    fn sync_dir_if_dirty(&mut self) -> Result<()> {
        if self.dir_dirty {
            if let Err(e) = self.backend.sync_dir(&self.dir) {
                self.poisoned = true;
                return Err(StoreError::io("fsync directory", &self.dir, e));
            }
            self.dir_dirty = false;
        }
        while let Some(parent) = self.new_entries_in.last() {
            if let Err(e) = self.backend.sync_dir(parent) {
                self.poisoned = true;
                return Err(StoreError::io("fsync directory", parent, e));
            }
            self.new_entries_in.pop();
        }
        Ok(())
    }

    /// Seals the current segment and starts the next one. On error nothing changed.
    pub fn roll(&mut self) -> Result<()> {
        let next_id = self
            .current
            .id
            .checked_add(1)
            .ok_or(StoreError::InvalidOptions(
                "segment ids exhausted (u32); the log cannot grow further",
            ))?;
        self.roll_to(next_id)
    }

    /// Seals the current segment and starts segment `id`, which must be above the current
    /// one. Skipping ids lets a caller step past ids that stale references may still name.
    pub fn roll_to(&mut self, id: u32) -> Result<()> {
        if id <= self.current.id {
            return Err(StoreError::InvalidOptions(
                "a new segment id must be above the current one",
            ));
        }
        self.check_poisoned()?;
        self.flush()?;
        let next = Self::create_segment(&*self.backend, &self.dir, &self.prefix, id)?;
        let old = std::mem::replace(&mut self.current, next);
        if old.needs_sync {
            self.unsynced.push(old.id);
        }
        self.sealed.insert(
            old.id,
            Sealed {
                file: old.file,
                len: old.flushed,
            },
        );
        self.dir_dirty = true;
        Ok(())
    }

    /// Reads and verifies the record at `pos`.
    pub fn read(&self, pos: Position) -> Result<Bytes> {
        let (file, len) = match self.locate(pos)? {
            Located::Buffered(rest) => return self.read_buffered(pos, rest),
            Located::File(file, len) => (file, len),
        };
        let unknown = StoreError::UnknownPosition { position: pos };
        let off = pos.offset as u64;
        let path = || self.segment_path(pos.segment);
        if off + RECORD_HEADER_LEN as u64 > len {
            return Err(unknown);
        }
        let mut hdr = [0u8; RECORD_HEADER_LEN as usize];
        file.read_at(off, &mut hdr)
            .map_err(|e| StoreError::io("read", path(), e))?;
        let corrupt = |d: TailDamage| StoreError::Corrupt {
            path: path(),
            offset: off,
            reason: d.to_string(),
        };
        let (plen, crc) = check_header(&hdr, len - off).map_err(corrupt)?;
        let mut payload = vec![0u8; plen as usize];
        file.read_at(off + RECORD_HEADER_LEN as u64, &mut payload)
            .map_err(|e| StoreError::io("read", path(), e))?;
        if record_crc([hdr[0], hdr[1], hdr[2], hdr[3]], &payload) != crc {
            return Err(corrupt(TailDamage::BadChecksum));
        }
        Ok(Bytes::from(payload))
    }

    /// Up to `max` raw bytes of segment `pos.segment` from `pos.offset` on (never past the
    /// end of what was appended), in one read: callers parse several records out of it.
    pub fn read_chunk(&self, pos: Position, max: usize) -> Result<Bytes> {
        let (file, len) = match self.locate(pos)? {
            Located::Buffered(rest) => {
                return Ok(Bytes::copy_from_slice(&rest[..rest.len().min(max)]))
            }
            Located::File(file, len) => (file, len),
        };
        let off = pos.offset as u64;
        let n = (len.saturating_sub(off)).min(max as u64) as usize;
        let mut chunk = vec![0u8; n];
        file.read_at(off, &mut chunk)
            .map_err(|e| StoreError::io("read", self.segment_path(pos.segment), e))?;
        Ok(Bytes::from(chunk))
    }

    /// Where the bytes at `pos` are: still in the write buffer (from `pos` on), or in a file
    /// of which the first `len` bytes are written.
    fn locate(&self, pos: Position) -> Result<Located<'_>> {
        let unknown = StoreError::UnknownPosition { position: pos };
        if pos.offset < SEGMENT_HEADER_LEN {
            return Err(unknown);
        }
        let off = pos.offset as u64;
        if pos.segment == self.current.id {
            if off >= self.current.flushed {
                let rel = (off - self.current.flushed) as usize;
                return self
                    .current
                    .buf
                    .get(rel..)
                    .map(Located::Buffered)
                    .ok_or(unknown);
            }
            return Ok(Located::File(&*self.current.file, self.current.flushed));
        }
        match self.sealed.get(&pos.segment) {
            Some(s) => Ok(Located::File(&*s.file, s.len)),
            None => Err(unknown),
        }
    }

    fn read_buffered(&self, pos: Position, rest: &[u8]) -> Result<Bytes> {
        let corrupt = |d: TailDamage| StoreError::Corrupt {
            path: self.segment_path(pos.segment),
            offset: pos.offset as u64,
            reason: d.to_string(),
        };
        let (plen, crc) = check_header(rest, rest.len() as u64).map_err(corrupt)?;
        let payload = &rest[RECORD_HEADER_LEN as usize..][..plen as usize];
        if record_crc([rest[0], rest[1], rest[2], rest[3]], payload) != crc {
            return Err(corrupt(TailDamage::BadChecksum));
        }
        Ok(Bytes::copy_from_slice(payload))
    }

    /// Deletes sealed segment `id`. Its records must no longer be needed; positions in it
    /// become unknown. The directory is not fsynced here (see `sync_dir`).
    pub fn remove_segment(&mut self, id: u32) -> Result<()> {
        let Some(path) = self.forget_segment(id)? else {
            return Ok(());
        };
        match self.backend.remove(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", path, e)),
        }
    }

    /// Forgets sealed segment `id` (its records must no longer be needed; positions in it
    /// become unknown) and returns the path of its file, for the caller to delete: deleting
    /// a large file can take a while (over 100 ms for 64 MiB seen on ext4), which a caller
    /// holding a lock around the log may rather spend outside it. None if it was not there.
    pub fn forget_segment(&mut self, id: u32) -> Result<Option<PathBuf>> {
        if id == self.current.id {
            return Err(StoreError::ActiveSegment { segment: id });
        }
        if self.sealed.remove(&id).is_none() {
            return Ok(None);
        }
        self.unsynced.retain(|&u| u != id);
        Ok(Some(self.segment_path(id)))
    }

    /// Fsyncs the log's directory, making removals durable.
    pub fn sync_dir(&mut self) -> Result<()> {
        self.dir_dirty = true;
        self.sync_dir_if_dirty()
    }

    /// A reader over every record appended so far to segment `id` (flushes first).
    pub fn reader(&mut self, id: u32) -> Result<SegmentReader> {
        if id == self.current.id {
            self.flush()?;
        }
        if id != self.current.id && !self.sealed.contains_key(&id) {
            return Err(StoreError::UnknownPosition {
                position: Position {
                    segment: id,
                    offset: SEGMENT_HEADER_LEN,
                },
            });
        }
        SegmentReader::open(&*self.backend, &self.segment_path(id), id)
    }

    /// A new segment size limit, for the records appended from now on.
    pub fn set_max_segment_size(&mut self, max: u32) {
        self.max_segment_size = max.max(SEGMENT_HEADER_LEN + RECORD_HEADER_LEN);
    }

    /// Id of the segment being written.
    pub fn current_segment(&self) -> u32 {
        self.current.id
    }

    /// Bytes in the current segment, buffered ones included.
    pub fn current_len(&self) -> u64 {
        self.current.len()
    }

    /// Ids of all segments, oldest first, the current one last.
    pub fn segment_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.sealed.keys().copied().collect();
        ids.push(self.current.id);
        ids
    }

    /// Bytes in all segment files, buffered bytes included.
    pub fn disk_bytes(&self) -> u64 {
        self.sealed.values().map(|s| s.len).sum::<u64>() + self.current.len()
    }

    /// Whether any segment (or the write buffer) holds a record: false for a log that was
    /// never written to.
    pub fn holds_records(&self) -> bool {
        !self.sealed.is_empty() || self.current.len() > SEGMENT_HEADER_LEN as u64
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True once a failure made the log refuse writes; reopen it to recover.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Forgets buffered records; for a log whose files are about to be deleted.
    pub(crate) fn discard_buffer(&mut self) {
        self.current.buf.clear();
    }
}

/// Whether a segment file starts with a header of zeros (a file whose first bytes never
/// reached the disk), which no Warren segment, nor any file with a magic number, has.
fn header_is_zeros(file: &dyn BackendFile) -> bool {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_at(0, &mut h).is_ok() && h.iter().all(|&b| b == 0)
}

impl Drop for SegmentLog {
    /// Hands buffered records to the OS so a clean shutdown that forgot `sync` loses nothing
    /// to a process exit (durability still needs `sync`).
    fn drop(&mut self) {
        if !self.poisoned {
            if let Err(e) = self.flush() {
                warn!(error = %e, "segment log: buffered records lost at close");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FaultyBackend, FileBackend};
    use crate::testutil::{flip_byte, payload, TestDir};
    use std::fs;

    fn open(dir: &Path, max: u32) -> (SegmentLog, Vec<(Position, Vec<u8>)>) {
        open_with(FileBackend::shared(), dir, max)
    }

    fn open_with(
        backend: Arc<dyn Backend>,
        dir: &Path,
        max: u32,
    ) -> (SegmentLog, Vec<(Position, Vec<u8>)>) {
        let mut seen = Vec::new();
        let log =
            SegmentLog::open(backend, dir, "msgs", max, |p, b| seen.push((p, b.to_vec()))).unwrap();
        (log, seen)
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name("msgs", 1), "msgs.0000000001");
        assert_eq!(parse_segment_file_name("msgs", "msgs.0000000001"), Some(1));
        assert_eq!(
            parse_segment_file_name("msgs", "msgs.4294967295"),
            Some(u32::MAX)
        );
        assert_eq!(parse_segment_file_name("msgs", "acks.0000000001"), None);
        assert_eq!(parse_segment_file_name("msgs", "msgs.1"), None);
        assert_eq!(parse_segment_file_name("msgs", "msgs.0000000001.tmp"), None);
        assert_eq!(parse_segment_file_name("msgs", "msgs.9999999999"), None);
        let p = Position {
            segment: 7,
            offset: 99,
        };
        assert_eq!(Position::from_bytes(p.to_bytes()), p);
        assert_eq!(std::mem::size_of::<Position>(), 8);
    }

    #[test]
    fn round_trip_across_rollover_and_reopen() {
        let dir = TestDir::new("seg-roundtrip");
        let (mut log, seen) = open(dir.path(), 4096);
        assert!(seen.is_empty());
        let mut written = Vec::new();
        for i in 0..300 {
            let p = payload(i, (i * 37) % 200);
            let pos = log.append(&p).unwrap();
            assert_eq!(log.read(pos).unwrap(), p, "read from the write buffer");
            written.push((pos, p));
        }
        assert!(
            written.windows(2).all(|w| w[0].0 < w[1].0),
            "positions increase"
        );
        assert!(log.segment_ids().len() > 3, "rolled over");
        log.sync().unwrap();
        for (pos, p) in &written {
            assert_eq!(&log.read(*pos).unwrap()[..], &p[..]);
        }
        for id in log.segment_ids() {
            let len = fs::metadata(dir.path().join(segment_file_name("msgs", id)))
                .unwrap()
                .len();
            assert!(len <= 4096);
        }
        // Streaming reader yields the same records.
        let first = log.segment_ids()[0];
        let streamed: Vec<_> = log.reader(first).unwrap().map(|r| r.unwrap()).collect();
        let expected: Vec<_> = written.iter().filter(|(p, _)| p.segment == first).collect();
        assert_eq!(streamed.len(), expected.len());
        for ((p1, b1), (p2, b2)) in streamed.iter().zip(expected) {
            assert_eq!((p1, &b1[..]), (p2, &b2[..]));
        }
        drop(log);

        let (mut log, seen) = open(dir.path(), 4096);
        assert_eq!(seen, written);
        let pos = log.append(b"after reopen").unwrap();
        assert!(pos > written.last().unwrap().0);
        assert_eq!(log.read(pos).unwrap(), &b"after reopen"[..]);
    }

    #[test]
    fn oversized_record_gets_its_own_segment() {
        let dir = TestDir::new("seg-oversize");
        let (mut log, _) = open(dir.path(), 1024);
        let a = log.append(b"small").unwrap();
        let big = payload(1, 5000);
        let b = log.append(&big).unwrap();
        let c = log.append(b"next").unwrap();
        assert_eq!(a.segment + 1, b.segment);
        assert_eq!(b.offset, SEGMENT_HEADER_LEN);
        assert_eq!(b.segment + 1, c.segment);
        log.sync().unwrap();
        assert_eq!(log.read(b).unwrap(), big);
        drop(log);
        let (_, seen) = open(dir.path(), 1024);
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn truncated_mid_record_recovers_earlier_records() {
        let dir = TestDir::new("seg-torn");
        let (mut log, _) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        let mut written = Vec::new();
        for i in 0..10 {
            let p = payload(i, 100);
            written.push((log.append(&p).unwrap(), p));
        }
        log.sync().unwrap();
        drop(log);
        let path = dir.path().join(segment_file_name("msgs", 1));
        let full = fs::metadata(&path).unwrap().len();
        // Cut the last record in half, as a crash mid-write would.
        let last_off = written[9].0.offset as u64;
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 50).unwrap();
        drop(f);

        let (mut log, seen) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        assert_eq!(seen, written[..9].to_vec());
        assert_eq!(fs::metadata(&path).unwrap().len(), last_off, "tail cut off");
        let pos = log.append(b"fresh").unwrap();
        assert_eq!(pos.offset as u64, last_off, "appends continue at the cut");
        log.sync().unwrap();
        drop(log);
        let (_, seen) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        assert_eq!(seen.len(), 10);
        assert_eq!(seen[9].1, b"fresh");
    }

    #[test]
    fn flipped_byte_drops_that_record_and_the_rest() {
        let dir = TestDir::new("seg-flip");
        let (mut log, _) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        let mut written = Vec::new();
        for i in 0..10 {
            let p = payload(i, 64);
            written.push((log.append(&p).unwrap(), p));
        }
        log.sync().unwrap();
        drop(log);
        let path = dir.path().join(segment_file_name("msgs", 1));
        flip_byte(
            &path,
            written[6].0.offset as u64 + RECORD_HEADER_LEN as u64 + 10,
        );

        let (_, seen) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        assert_eq!(seen, written[..6].to_vec());
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            written[6].0.offset as u64
        );
    }

    #[test]
    fn zero_filled_tail_is_not_taken_for_records() {
        let dir = TestDir::new("seg-zeros");
        let (mut log, _) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        log.append(b"one").unwrap();
        log.append(b"").unwrap();
        log.sync().unwrap();
        let good = log.current_len();
        drop(log);
        let path = dir.path().join(segment_file_name("msgs", 1));
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, bytes).unwrap();
        let (_, seen) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        assert_eq!(seen.len(), 2, "the empty record survives, the zeros do not");
        assert_eq!(fs::metadata(&path).unwrap().len(), good);
    }

    #[test]
    fn damage_in_a_sealed_segment_keeps_later_segments() {
        let dir = TestDir::new("seg-sealed-damage");
        let (mut log, _) = open(dir.path(), 512);
        let mut written = Vec::new();
        for i in 0..20 {
            let p = payload(i, 100);
            written.push((log.append(&p).unwrap(), p));
        }
        log.sync().unwrap();
        drop(log);
        // Last record of segment 1 torn (e.g. its segment was never fsynced).
        let in_first: Vec<_> = written.iter().filter(|(p, _)| p.segment == 1).collect();
        let last = in_first.last().unwrap().0;
        let path = dir.path().join(segment_file_name("msgs", 1));
        let len = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (_, seen) = open(dir.path(), 512);
        let expected: Vec<_> = written
            .iter()
            .filter(|(p, _)| *p != last)
            .cloned()
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn torn_header_of_new_segment_is_reset() {
        let dir = TestDir::new("seg-torn-header");
        let (mut log, _) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        log.append(b"a").unwrap();
        log.sync().unwrap();
        drop(log);
        fs::write(dir.path().join(segment_file_name("msgs", 2)), b"WRN").unwrap();
        let (mut log, seen) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        assert_eq!(seen.len(), 1);
        let pos = log.append(b"b").unwrap();
        assert_eq!(
            pos,
            Position {
                segment: 2,
                offset: SEGMENT_HEADER_LEN
            }
        );
    }

    /// After a power cut a new segment can have its length but zeros for content (its data
    /// never reached the disk): it is reset like a torn header, not refused as a foreign file
    /// (which kept the broker from starting; found by the power-loss test).
    #[test]
    fn zero_filled_new_segment_is_reset() {
        let dir = TestDir::new("seg-zero-header");
        let (mut log, _) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        log.append(b"a").unwrap();
        log.sync().unwrap();
        drop(log);
        let path = dir.path().join(segment_file_name("msgs", 2));
        fs::write(&path, [0u8; 100]).unwrap();
        let (mut log, seen) = open(dir.path(), DEFAULT_MAX_SEGMENT_SIZE);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            SEGMENT_HEADER_LEN as u64
        );
        let pos = log.append(b"b").unwrap();
        assert_eq!(pos.segment, 2);
    }

    #[test]
    fn foreign_or_future_files_are_errors_not_data_loss() {
        let dir = TestDir::new("seg-foreign");
        fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join(segment_file_name("msgs", 1));
        fs::write(&path, b"NOTASEGMENTFILE!").unwrap();
        let err = SegmentLog::open(FileBackend::shared(), dir.path(), "msgs", 4096, |_, _| {})
            .unwrap_err();
        assert!(matches!(err, StoreError::BadSegmentHeader { .. }), "{err}");
        assert_eq!(
            fs::read(&path).unwrap(),
            b"NOTASEGMENTFILE!",
            "left untouched"
        );

        let mut h = segment_header();
        h[6] = 9;
        fs::write(&path, h).unwrap();
        let err = SegmentLog::open(FileBackend::shared(), dir.path(), "msgs", 4096, |_, _| {})
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn reads_of_unknown_positions_fail_cleanly() {
        let dir = TestDir::new("seg-unknown");
        let (mut log, _) = open(dir.path(), 4096);
        let pos = log.append(b"hello").unwrap();
        log.sync().unwrap();
        for bad in [
            Position {
                segment: 9,
                offset: 8,
            },
            Position {
                segment: pos.segment,
                offset: 2,
            },
            Position {
                segment: pos.segment,
                offset: 4000,
            },
        ] {
            assert!(matches!(
                log.read(bad),
                Err(StoreError::UnknownPosition { .. })
            ));
        }
        // Mid-record: the framing check catches it.
        assert!(log
            .read(Position {
                segment: pos.segment,
                offset: pos.offset + 1
            })
            .is_err());
        assert!(matches!(
            log.remove_segment(pos.segment),
            Err(StoreError::ActiveSegment { .. })
        ));
    }

    #[test]
    fn enospc_on_append_is_an_error_and_the_log_recovers() {
        let dir = TestDir::new("seg-enospc");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let (mut log, _) = open_with(Arc::new(backend.clone()), dir.path(), 1 << 20);
        let mut written = Vec::new();
        faults.set_enospc(true);
        let mut failures = 0;
        for i in 0..200 {
            let p = payload(i, 1000);
            match log.append(&p) {
                Ok(pos) => written.push((pos, p)),
                Err(e) => {
                    assert!(e.is_disk_full(), "{e}");
                    failures += 1;
                }
            }
        }
        assert!(failures > 0, "the write buffer filled and its flush failed");
        assert!(log.sync().unwrap_err().is_disk_full());
        // Buffered records are still readable while the disk is full.
        for (pos, p) in &written {
            assert_eq!(log.read(*pos).unwrap(), p);
        }
        faults.set_enospc(false);
        let pos = log.append(b"after").unwrap();
        written.push((pos, b"after".to_vec()));
        log.sync().unwrap();
        for (pos, p) in &written {
            assert_eq!(log.read(*pos).unwrap(), p);
        }
        drop(log);
        let (_, seen) = open_with(Arc::new(backend), dir.path(), 1 << 20);
        assert_eq!(seen, written, "no torn half-writes were left behind");
    }

    #[test]
    fn sync_fsyncs_and_failed_fsync_poisons() {
        let dir = TestDir::new("seg-fsync");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let (mut log, _) = open_with(Arc::new(backend.clone()), dir.path(), 4096);
        log.sync().unwrap();
        let base = faults.sync_count();
        assert!(base >= 1, "creating the first segment fsyncs the directory");
        let pos = log.append(b"m").unwrap();
        assert_eq!(faults.sync_count(), base, "append never fsyncs");
        log.sync().unwrap();
        assert_eq!(faults.sync_count(), base + 1);
        log.sync().unwrap();
        assert_eq!(faults.sync_count(), base + 1, "nothing new, no fsync");

        log.append(b"n").unwrap();
        faults.set_fail_sync(true);
        assert!(log.sync().is_err());
        assert!(log.is_poisoned());
        faults.set_fail_sync(false);
        assert!(matches!(log.append(b"o"), Err(StoreError::Poisoned { .. })));
        assert_eq!(log.read(pos).unwrap(), &b"m"[..], "reads still work");
        drop(log);
        let (_, seen) = open_with(Arc::new(backend), dir.path(), 4096);
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn rollover_segments_are_fsynced_at_the_next_sync() {
        let dir = TestDir::new("seg-roll-fsync");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let (mut log, _) = open_with(Arc::new(backend), dir.path(), 256);
        log.sync().unwrap();
        let base = faults.sync_count();
        for i in 0..3 {
            log.append(&payload(i, 200)).unwrap();
        }
        assert_eq!(log.segment_ids().len(), 3);
        assert_eq!(
            faults.sync_count(),
            base,
            "rollover does not fsync on the append path"
        );
        log.sync().unwrap();
        // Two sealed segments, the current one and the directory.
        assert_eq!(faults.sync_count(), base + 4);
    }
}
