//! What a stream tracks beside its messages, for the stream protocol: each named
//! publisher's last publishing id (deduplication) and each named consumer's stored offset.
//!
//! Both are kept in the stream's directory in the file `tracking`, rewritten whole (a new
//! file renamed over the old one, then the directory fsynced) by the group commit after the
//! log's fsync whenever something changed. Publishing ids are also in the log's records, so
//! a crash between the two loses nothing: at start the larger of the file's and the log's
//! wins (the file keeps a publisher whose records retention removed).
//!
//! File format (integers big-endian): a sequence of `kind (u8: 0 publisher, 1 consumer
//! offset) | name length (u16) | name | value (u64)`; a truncated or unreadable file is
//! ignored (the log still gives the publishers).

use std::collections::HashMap;
use std::path::Path;
use warren_store::Backend;

const FILE: &str = "tracking";
const WRITER: u8 = 0;
const OFFSET: u8 = 1;

#[derive(Debug, Default)]
pub struct Tracking {
    pub writers: HashMap<Vec<u8>, u64>,
    pub offsets: HashMap<String, u64>,
    /// Changed since the file was last written.
    pub dirty: bool,
}

impl Tracking {
    /// A publisher's publishing id seen in the log (or published now).
    pub fn saw_writer(&mut self, reference: &[u8], id: u64) {
        if reference.is_empty() {
            return;
        }
        match self.writers.get_mut(reference) {
            Some(v) if *v >= id => {}
            Some(v) => {
                *v = id;
                self.dirty = true;
            }
            None => {
                self.writers.insert(reference.to_vec(), id);
                self.dirty = true;
            }
        }
    }

    pub fn load(backend: &dyn Backend, dir: &Path) -> Tracking {
        let mut t = Tracking::default();
        let path = dir.join(FILE);
        let Ok(f) = backend.open_read(&path) else {
            return t;
        };
        let mut buf = vec![0u8; f.len() as usize];
        if let Err(e) = f.read_at(0, &mut buf) {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the stream's tracking file; stored offsets are lost");
            return t;
        }
        let mut at = 0usize;
        while at + 3 <= buf.len() {
            let kind = buf[at];
            let n = u16::from_be_bytes([buf[at + 1], buf[at + 2]]) as usize;
            let (Some(name), Some(v)) = (
                buf.get(at + 3..at + 3 + n),
                buf.get(at + 3 + n..at + 11 + n),
            ) else {
                break;
            };
            let v = u64::from_be_bytes(v.try_into().expect("8 bytes"));
            match kind {
                WRITER => {
                    t.writers.insert(name.to_vec(), v);
                }
                OFFSET => {
                    t.offsets
                        .insert(String::from_utf8_lossy(name).into_owned(), v);
                }
                _ => break,
            }
            at += 11 + n;
        }
        t
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |kind: u8, name: &[u8], v: u64| {
            out.push(kind);
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&v.to_be_bytes());
        };
        for (k, v) in &self.writers {
            put(WRITER, k, *v);
        }
        for (k, v) in &self.offsets {
            put(OFFSET, k.as_bytes(), *v);
        }
        out
    }
}

/// Writes `bytes` as the tracking file of `dir`, atomically and durably.
pub fn save(backend: &dyn Backend, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join("tracking.new");
    let _ = backend.remove(&tmp);
    let mut f = backend.open_append(&tmp)?;
    f.append(bytes)?;
    f.sync()?;
    drop(f);
    backend.rename(&tmp, &dir.join(FILE))?;
    backend.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_and_loaded() {
        let dir = crate::testutil::TestDir::new("stream-tracking");
        let backend = warren_store::FileBackend::shared();
        let mut t = Tracking::default();
        t.saw_writer(b"p1", 10);
        t.saw_writer(b"p1", 7);
        t.saw_writer(b"", 99);
        t.offsets.insert("c1".into(), 1234);
        assert_eq!(t.writers.len(), 1);
        save(&*backend, dir.path(), &t.encode()).unwrap();
        let back = Tracking::load(&*backend, dir.path());
        assert_eq!(back.writers.get(&b"p1"[..]), Some(&10));
        assert_eq!(back.offsets.get("c1"), Some(&1234));
        // Garbage after the entries is ignored, the entries before kept.
        let mut bytes = t.encode();
        bytes.extend_from_slice(&[9, 0]);
        save(&*backend, dir.path(), &bytes).unwrap();
        assert_eq!(
            Tracking::load(&*backend, dir.path()).offsets.get("c1"),
            Some(&1234)
        );
    }
}
