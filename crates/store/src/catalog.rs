//! The metadata catalogue: durable definitions (vhosts, users, permissions, exchanges,
//! queues, bindings, policies) kept as one JSON document, `definitions.json`.
//!
//! The broker owns the schema; this module only stores a `Serialize`/`DeserializeOwned`
//! value safely. Definitions change rarely and are small, so each save rewrites the whole
//! file: written to `definitions.json.tmp`, fsynced, renamed over the old file, and the
//! directory fsynced. A crash at any point leaves either the old or the new file, never a mix.
//!
//! File format: one header line `WRNDEF1 <crc32c as 8 lowercase hex digits> <length>
//! <generation>\n`, then exactly `<length>` bytes of JSON whose CRC32C is the one in the
//! header. The generation (absent in files of earlier builds: 0) names the journal of the
//! changes made since ([`crate::catalog_journal`]): between two full saves a change is
//! appended there, and a load hands back the saved document and the journal's records.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Backend;
use crate::catalog_journal::Journal;
use crate::error::{Result, StoreError};

/// Name of the catalogue file in its directory.
pub const CATALOG_FILE: &str = "definitions.json";
/// Name of the file a save writes before renaming it into place.
pub const CATALOG_TMP_FILE: &str = "definitions.json.tmp";
/// Magic and format version of the header line.
pub const CATALOG_MAGIC: &str = "WRNDEF1";
/// The header line is short; anything longer is not a header.
const MAX_HEADER_LEN: usize = 64;

/// Loads and saves the definitions document in one directory, and journals changes to it.
pub struct Catalog {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    /// The journal of the saved document's generation.
    journal: Mutex<Journal>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("dir", &self.dir).finish()
    }
}

impl Catalog {
    pub fn new(backend: Arc<dyn Backend>, dir: impl Into<PathBuf>) -> Self {
        Catalog {
            backend,
            dir: dir.into(),
            journal: Mutex::new(Journal::new(0)),
        }
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(CATALOG_FILE)
    }

    /// The saved definitions (without the changes journaled since), or `None` if none were
    /// ever saved. A leftover `.tmp` from an interrupted save is ignored: the rename never
    /// happened, so the old file is current.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        Ok(self.load_journaled()?.map(|(t, _)| t))
    }

    /// The saved definitions and the payloads of the changes journaled since, in order (for
    /// the caller to apply); `None` if none were ever saved. Later appends go to this
    /// generation's journal.
    pub fn load_journaled<T: DeserializeOwned>(&self) -> Result<Option<(T, Vec<Vec<u8>>)>> {
        let path = self.path();
        let file = match self.backend.open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open", path, e)),
        };
        let len = usize::try_from(file.len()).map_err(|_| corrupt(&path, "file too large"))?;
        let mut bytes = vec![0u8; len];
        file.read_at(0, &mut bytes)
            .map_err(|e| StoreError::io("read", &path, e))?;
        let (body, generation) = check(&bytes).map_err(|reason| corrupt(&path, reason))?;
        let value = serde_json::from_slice(body)
            .map_err(|source| StoreError::CatalogDecode { path, source })?;
        let mut journal = self.journal();
        *journal = Journal::new(generation);
        let changes = journal.read(&self.backend, &self.dir)?;
        Ok(Some((value, changes)))
    }

    /// Appends one change to the journal (durable when this returns Ok). After an error,
    /// appends fail until the next [`Catalog::save`].
    pub fn append(&self, change: &[u8]) -> Result<()> {
        self.journal().append(&self.backend, &self.dir, change)
    }

    /// Bytes journaled since the last full save.
    pub fn journal_len(&self) -> u64 {
        self.journal().len()
    }

    /// Replaces the saved definitions with `value` (durable when this returns Ok) and starts
    /// an empty journal.
    pub fn save<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut journal = self.journal();
        let generation = journal.generation + 1;
        let json = serde_json::to_vec_pretty(value).map_err(StoreError::CatalogEncode)?;
        let mut out = format!(
            "{CATALOG_MAGIC} {:08x} {} {generation}\n",
            crc32c::crc32c(&json),
            json.len()
        )
        .into_bytes();
        out.extend_from_slice(&json);

        self.backend
            .create_dir_all(&self.dir)
            .map_err(|e| StoreError::io("create directory", &self.dir, e))?;
        let tmp = self.dir.join(CATALOG_TMP_FILE);
        // A leftover from a crashed save would otherwise be appended to.
        match self.backend.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &tmp, e)),
        }
        let mut file = self
            .backend
            .open_append(&tmp)
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        file.append(&out)
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        file.sync().map_err(|e| StoreError::io("fsync", &tmp, e))?;
        drop(file);
        let path = self.path();
        self.backend
            .rename(&tmp, &path)
            .map_err(|e| StoreError::io("rename into place", &path, e))?;
        self.backend
            .sync_dir(&self.dir)
            .map_err(|e| StoreError::io("fsync directory", &self.dir, e))?;
        journal.restart(&self.backend, &self.dir, generation);
        Ok(())
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::CatalogCorrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Verifies header, length and checksum; returns the JSON body and the generation.
fn check(bytes: &[u8]) -> std::result::Result<(&[u8], u64), String> {
    let nl = bytes
        .iter()
        .take(MAX_HEADER_LEN)
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| "header is not text")?;
    let body = &bytes[nl + 1..];
    let mut parts = header.split(' ');
    let (Some(magic), Some(crc), Some(len), generation, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(format!("malformed header {header:?}"));
    };
    let generation: u64 = match generation {
        // Written before journals: generation 0.
        None => 0,
        Some(g) => g
            .parse()
            .map_err(|_| format!("bad generation field {g:?}"))?,
    };
    if magic != CATALOG_MAGIC {
        return Err(if magic.starts_with("WRNDEF") {
            format!("format {magic} is not supported by this build (reads {CATALOG_MAGIC})")
        } else {
            format!("not a definitions file (header {header:?})")
        });
    }
    let crc = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum field {crc:?}"))?;
    let len: usize = len
        .parse()
        .map_err(|_| format!("bad length field {len:?}"))?;
    if body.len() != len {
        return Err(format!(
            "header says {len} bytes of JSON, file has {}",
            body.len()
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((body, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FaultyBackend, FileBackend};
    use crate::testutil::{flip_byte, TestDir};
    use serde::Deserialize;
    use serde_json::json;
    use std::fs;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Defs {
        vhosts: Vec<String>,
        queues: Vec<(String, bool)>,
    }

    #[test]
    fn missing_file_is_none_and_saves_round_trip() {
        let dir = TestDir::new("cat-roundtrip");
        let cat = Catalog::new(FileBackend::shared(), dir.path());
        assert_eq!(cat.load::<Defs>().unwrap(), None);
        let d = Defs {
            vhosts: vec!["/".into()],
            queues: vec![("q1".into(), true)],
        };
        cat.save(&d).unwrap();
        assert_eq!(cat.load::<Defs>().unwrap(), Some(d));
        let v = json!({"vhosts": [{"name": "/"}, {"name": "prod"}], "users": []});
        cat.save(&v).unwrap();
        assert_eq!(cat.load::<serde_json::Value>().unwrap(), Some(v));
        assert!(!dir.path().join(CATALOG_TMP_FILE).exists());
        let text = fs::read_to_string(cat.path()).unwrap();
        assert!(text.starts_with("WRNDEF1 "), "{text}");
    }

    #[test]
    fn corruption_is_an_error_that_says_what_to_do() {
        let dir = TestDir::new("cat-corrupt");
        let cat = Catalog::new(FileBackend::shared(), dir.path());
        cat.save(&json!({"queues": ["a", "b", "c"]})).unwrap();
        let len = fs::metadata(cat.path()).unwrap().len();
        flip_byte(&cat.path(), len - 5);
        let err = cat.load::<serde_json::Value>().unwrap_err();
        assert!(matches!(err, StoreError::CatalogCorrupt { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("checksum mismatch") && msg.contains("restore"),
            "{msg}"
        );

        cat.save(&json!({"queues": []})).unwrap();
        let bytes = fs::read(cat.path()).unwrap();
        fs::write(cat.path(), &bytes[..bytes.len() - 1]).unwrap();
        let msg = cat.load::<serde_json::Value>().unwrap_err().to_string();
        assert!(msg.contains("file has"), "{msg}");

        fs::write(cat.path(), b"{\"queues\": []}").unwrap();
        assert!(matches!(
            cat.load::<serde_json::Value>(),
            Err(StoreError::CatalogCorrupt { .. })
        ));
        fs::write(cat.path(), b"WRNDEF9 00000000 0\n").unwrap();
        let msg = cat.load::<serde_json::Value>().unwrap_err().to_string();
        assert!(msg.contains("not supported"), "{msg}");
    }

    #[test]
    fn schema_mismatch_is_a_decode_error() {
        let dir = TestDir::new("cat-schema");
        let cat = Catalog::new(FileBackend::shared(), dir.path());
        cat.save(&json!({"something": "else"})).unwrap();
        assert!(matches!(
            cat.load::<Defs>(),
            Err(StoreError::CatalogDecode { .. })
        ));
    }

    #[test]
    fn interrupted_save_keeps_the_old_definitions() {
        let dir = TestDir::new("cat-interrupted");
        let backend = FaultyBackend::new(FileBackend::shared());
        let faults = backend.faults();
        let cat = Catalog::new(Arc::new(backend), dir.path());
        cat.save(&json!({"v": 1})).unwrap();
        faults.set_enospc(true);
        assert!(cat.save(&json!({"v": 2})).unwrap_err().is_disk_full());
        faults.set_enospc(false);
        assert!(
            dir.path().join(CATALOG_TMP_FILE).exists(),
            "torn tmp left behind"
        );
        assert_eq!(
            cat.load::<serde_json::Value>().unwrap(),
            Some(json!({"v": 1}))
        );
        faults.set_fail_sync(true);
        assert!(cat.save(&json!({"v": 3})).is_err());
        faults.set_fail_sync(false);
        assert_eq!(
            cat.load::<serde_json::Value>().unwrap(),
            Some(json!({"v": 1})),
            "an fsync failure stops the save before the rename"
        );
        cat.save(&json!({"v": 4})).unwrap();
        assert_eq!(
            cat.load::<serde_json::Value>().unwrap(),
            Some(json!({"v": 4}))
        );
    }

    /// Changes appended after a save come back with it, in order; a full save folds them in
    /// and starts an empty journal; a journal of another generation is never read.
    #[test]
    fn journaled_changes_come_back_until_the_next_full_save() {
        let dir = TestDir::new("cat-journal");
        let cat = Catalog::new(FileBackend::shared(), dir.path());
        cat.save(&json!({"v": 1})).unwrap();
        cat.append(b"one").unwrap();
        cat.append(b"two").unwrap();
        assert!(cat.journal_len() > 6);
        let again = Catalog::new(FileBackend::shared(), dir.path());
        let (v, changes) = again
            .load_journaled::<serde_json::Value>()
            .unwrap()
            .unwrap();
        assert_eq!(v, json!({"v": 1}));
        assert_eq!(changes, vec![b"one".to_vec(), b"two".to_vec()]);
        // The reopened catalogue appends to the same journal.
        again.append(b"three").unwrap();
        assert_eq!(
            cat.load_journaled::<serde_json::Value>()
                .unwrap()
                .unwrap()
                .1
                .len(),
            3
        );
        again.save(&json!({"v": 2})).unwrap();
        assert_eq!(again.journal_len(), 0);
        let (v, changes) = cat.load_journaled::<serde_json::Value>().unwrap().unwrap();
        assert_eq!((v, changes.len()), (json!({"v": 2}), 0));
        let logs: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log"))
            .collect();
        assert!(logs.is_empty(), "the old journal is removed: {logs:?}");
        // A stale journal (a crash between a save and its removal) is not read.
        fs::write(
            dir.path()
                .join(crate::catalog_journal::journal_file_name(1)),
            b"\x03\x00\x00\x00garbage",
        )
        .unwrap();
        let (_, changes) = cat.load_journaled::<serde_json::Value>().unwrap().unwrap();
        assert!(changes.is_empty());
    }

    /// A torn record at the journal's end (a cut during an append) is dropped and the file
    /// cut back, so the next append follows the last intact record.
    #[test]
    fn a_torn_journal_tail_is_cut_off() {
        let dir = TestDir::new("cat-journal-torn");
        let cat = Catalog::new(FileBackend::shared(), dir.path());
        cat.save(&json!({"v": 1})).unwrap();
        cat.append(b"kept").unwrap();
        let path = dir
            .path()
            .join(crate::catalog_journal::journal_file_name(1));
        let good = fs::metadata(&path).unwrap().len();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&path, &bytes).unwrap();
        let (_, changes) = cat.load_journaled::<serde_json::Value>().unwrap().unwrap();
        assert_eq!(changes, vec![b"kept".to_vec()]);
        assert_eq!(fs::metadata(&path).unwrap().len(), good);
        cat.append(b"next").unwrap();
        let (_, changes) = cat.load_journaled::<serde_json::Value>().unwrap().unwrap();
        assert_eq!(changes, vec![b"kept".to_vec(), b"next".to_vec()]);
    }

    /// Files of earlier builds have no generation: they load as generation 0.
    #[test]
    fn a_file_without_a_generation_loads() {
        let dir = TestDir::new("cat-gen0");
        let cat = Catalog::new(FileBackend::shared(), dir.path());
        let json = br#"{"v":0}"#;
        let mut bytes =
            format!("WRNDEF1 {:08x} {}\n", crc32c::crc32c(json), json.len()).into_bytes();
        bytes.extend_from_slice(json);
        fs::write(cat.path(), bytes).unwrap();
        assert_eq!(
            cat.load::<serde_json::Value>().unwrap(),
            Some(json!({"v": 0}))
        );
        cat.save(&json!({"v": 1})).unwrap();
        assert!(fs::read_to_string(cat.path())
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .ends_with(" 1"));
    }
}
