//! The definitions journal: the changes made since the last full save of the catalogue, so a
//! change is durable once a few hundred bytes are appended and fsynced rather than once every
//! definition is rewritten (a broker with 10,000 queues would rewrite megabytes per declare).
//!
//! One journal per catalogue generation, `definitions.<generation>.log`: a full save writes
//! the next generation's `definitions.json` (the generation is in its header) and starts an
//! empty journal of that generation; a journal of another generation than the saved file's
//! is stale (a crash came between a save and the removal of the old journal) and is never
//! read. Records are `<length: u32 LE> <crc32c of the payload: u32 LE> <payload>`; the
//! payload belongs to the broker and is never empty. Recovery reads records until the first
//! torn one (short, past the end, or a checksum mismatch: a power cut during an append),
//! truncates the file there and says so in a warning, as the segment logs do.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, BackendFile};
use crate::error::{Result, StoreError};

/// Bytes before each record's payload.
const RECORD_HEADER: usize = 8;

/// The name of generation `generation`'s journal.
pub fn journal_file_name(generation: u64) -> String {
    format!("definitions.{generation}.log")
}

/// The generation a file name is the journal of, if it is one.
fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix("definitions.")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The open journal of the current generation.
pub(crate) struct Journal {
    pub(crate) generation: u64,
    file: Option<Box<dyn BackendFile>>,
    /// A write or fsync failed: nothing more is appended until the next full save (after a
    /// failed fsync the kernel may have dropped the pages, so the file's state is unknown).
    poisoned: bool,
}

impl Journal {
    pub(crate) fn new(generation: u64) -> Self {
        Journal {
            generation,
            file: None,
            poisoned: false,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.len())
    }

    fn path(&self, dir: &Path) -> PathBuf {
        dir.join(journal_file_name(self.generation))
    }

    /// Appends one record and makes it durable.
    pub(crate) fn append(
        &mut self,
        backend: &Arc<dyn Backend>,
        dir: &Path,
        payload: &[u8],
    ) -> Result<()> {
        let path = self.path(dir);
        if self.poisoned {
            return Err(StoreError::io(
                "append",
                &path,
                io::Error::other(
                    "an earlier write failed; the next full save starts a new journal",
                ),
            ));
        }
        assert!(!payload.is_empty(), "a journal record is never empty");
        let created = self.file.is_none();
        if created {
            let f = backend
                .open_append(&path)
                .map_err(|e| StoreError::io("create", &path, e))?;
            self.file = Some(f);
        }
        let file = self.file.as_mut().expect("opened above");
        let before = file.len();
        let mut frame = Vec::with_capacity(RECORD_HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        if let Err(e) = file.append(&frame) {
            // Cut back what part of it landed, so a later save or restart sees no half record.
            if file.truncate(before).is_err() {
                self.poisoned = true;
            }
            return Err(StoreError::io("write", &path, e));
        }
        if let Err(e) = file.sync() {
            self.poisoned = true;
            return Err(StoreError::io("fsync", &path, e));
        }
        if created {
            // A new file's name is durable only once its directory is synced.
            if let Err(e) = backend.sync_dir(dir) {
                self.poisoned = true;
                return Err(StoreError::io("fsync directory", dir, e));
            }
        }
        Ok(())
    }

    /// Reads generation `self.generation`'s journal: every intact record's payload, in order.
    /// A torn tail is cut off (and fsynced) with a warning naming what was dropped.
    pub(crate) fn read(&mut self, backend: &Arc<dyn Backend>, dir: &Path) -> Result<Vec<Vec<u8>>> {
        let path = self.path(dir);
        let file = match backend.open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("open", &path, e)),
        };
        let len = file.len();
        let mut bytes = vec![0u8; len as usize];
        file.read_at(0, &mut bytes)
            .map_err(|e| StoreError::io("read", &path, e))?;
        drop(file);
        let (records, good) = parse(&bytes);
        if good < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                offset = good,
                dropped_bytes = bytes.len() - good,
                "definitions journal: a torn record at its end (the process died or the power went during a change); the changes before it are kept"
            );
            let mut f = backend
                .open_append(&path)
                .map_err(|e| StoreError::io("open", &path, e))?;
            f.truncate(good as u64)
                .map_err(|e| StoreError::io("truncate", &path, e))?;
            f.sync().map_err(|e| StoreError::io("fsync", &path, e))?;
        }
        Ok(records)
    }

    /// After a full save of generation `generation`: the journal starts empty in that
    /// generation, and the journals of earlier ones go (best effort: a stale journal left
    /// behind is never read).
    pub(crate) fn restart(&mut self, backend: &Arc<dyn Backend>, dir: &Path, generation: u64) {
        self.file = None;
        self.poisoned = false;
        self.generation = generation;
        remove_stale(backend, dir, generation);
    }
}

/// Removes the journals of generations other than `current`.
pub(crate) fn remove_stale(backend: &Arc<dyn Backend>, dir: &Path, current: u64) {
    let Ok(names) = backend.list(dir) else { return };
    let mut removed = false;
    for name in names {
        if generation_of(&name).is_some_and(|g| g != current) {
            let path = dir.join(&name);
            match backend.remove(&path) {
                Ok(()) => removed = true,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove an old definitions journal; it is never read again")
                }
            }
        }
    }
    if removed {
        let _ = backend.sync_dir(dir);
    }
}

/// The intact records of a journal and the length they span.
fn parse(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut off = 0;
    while bytes.len() - off >= RECORD_HEADER {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap());
        let start = off + RECORD_HEADER;
        // An empty record is never written: zeros where data did not land are a torn tail.
        if len == 0 || bytes.len() - start < len {
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32c::crc32c(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        off = start + len;
    }
    (records, off)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(p: &[u8]) -> Vec<u8> {
        let mut v = (p.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&crc32c::crc32c(p).to_le_bytes());
        v.extend_from_slice(p);
        v
    }

    #[test]
    fn records_are_read_up_to_a_torn_one() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b"two"));
        let whole = bytes.len();
        assert_eq!(
            parse(&bytes),
            (vec![b"one".to_vec(), b"two".to_vec()], whole)
        );
        // Zeros where the next record did not land.
        let mut zeros = bytes.clone();
        zeros.extend([0u8; 600]);
        assert_eq!(parse(&zeros).1, whole);
        // A short record and a damaged one.
        let mut short = bytes.clone();
        short.extend(&frame(b"three")[..10]);
        assert_eq!(parse(&short).1, whole);
        let mut damaged = bytes.clone();
        let mut f = frame(b"three");
        let last = f.len() - 1;
        f[last] ^= 1;
        damaged.extend(f);
        damaged.extend(frame(b"four"));
        let (records, good) = parse(&damaged);
        assert_eq!((records.len(), good), (2, whole));
    }

    #[test]
    fn journal_names_carry_their_generation() {
        assert_eq!(generation_of(&journal_file_name(42)), Some(42));
        assert_eq!(generation_of("definitions.json"), None);
        assert_eq!(generation_of("definitions.json.tmp"), None);
    }
}
