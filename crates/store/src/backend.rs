//! The storage backend: every byte the store reads or writes goes through [`Backend`] and
//! [`BackendFile`], so tests can swap the file system for one that fails on demand.
//!
//! [`FileBackend`] is the real thing (std::fs, positional reads). [`FaultyBackend`] wraps any
//! backend and, when its [`Faults`] switches say so, fails writes with ENOSPC or EIO, fails
//! fsync, holds fsyncs until released, and counts fsync calls so a test can prove that a
//! confirm followed an fsync.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// File-system operations the store needs, and nothing more.
pub trait Backend: Send + Sync {
    /// Opens `path` for appending and positional reads, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn BackendFile>>;
    /// Opens an existing file for positional reads only.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn BackendFile>>;
    /// Names (not paths) of the entries in `dir`; names that are not UTF-8 are skipped
    /// because the store never creates them.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists. (The default lists it: a backend whose directories can be
    /// large answers without reading them.)
    fn exists(&self, path: &Path) -> io::Result<bool> {
        match self.list(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(true),
            Err(e) => Err(e),
        }
    }
    /// Removes one file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. Writes only ever append; reads are positional so they need no seek state
/// and can run through `&self`.
pub trait BackendFile: Send + Sync {
    /// Appends all of `buf`. On error part of it may have been written; the caller decides
    /// whether to truncate it away.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Fills `buf` from offset `off`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Cuts the file to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// An fsync of what was appended so far that can run later without the file (a
    /// duplicated descriptor), so group commit need not hold the store's lock while the disk
    /// works.
    fn sync_handle(&self) -> io::Result<SyncHandle>;
}

/// A deferred fdatasync, from [`BackendFile::sync_handle`].
pub type SyncHandle = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileBackend;

impl FileBackend {
    /// A shareable handle, the form the store takes backends in.
    pub fn shared() -> Arc<dyn Backend> {
        Arc::new(FileBackend)
    }
}

/// A file of [`FileBackend`]. The length is cached so `len()` costs no syscall.
struct FsFile {
    file: File,
    len: u64,
}

impl Backend for FileBackend {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(FsFile { file, len }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(FsFile { file, len }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl BackendFile for FsFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.file.write_all(buf) {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A short write moved the end by an unknown amount; ask the file system.
                if let Ok(meta) = self.file.metadata() {
                    self.len = meta.len();
                }
                Err(e)
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn sync_handle(&self) -> io::Result<SyncHandle> {
        let f = self.file.try_clone()?;
        Ok(Box::new(move || f.sync_data()))
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// Switches and counters shared between a [`FaultyBackend`] and the test driving it.
#[derive(Debug, Default)]
pub struct Faults {
    enospc: AtomicBool,
    eio: AtomicBool,
    fail_sync: AtomicBool,
    syncs: AtomicU64,
    hold: Mutex<Hold>,
    released: Condvar,
}

/// State of [`Faults::hold_sync`].
#[derive(Debug, Default)]
struct Hold {
    on: bool,
    /// Only fsyncs of paths containing this are held.
    only: Option<String>,
    /// fsyncs blocked now.
    waiting: u64,
    /// Bumped by [`Faults::release_held`]: an fsync blocked under an older round goes on.
    round: u64,
}

impl Faults {
    /// While on, appends write half their bytes and then fail with ENOSPC, as a full disk does.
    pub fn set_enospc(&self, on: bool) {
        self.enospc.store(on, Ordering::SeqCst);
    }

    /// While on, appends write half their bytes and then fail with EIO.
    pub fn set_eio(&self, on: bool) {
        self.eio.store(on, Ordering::SeqCst);
    }

    /// While on, file and directory fsyncs fail with EIO (and are still counted).
    pub fn set_fail_sync(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }

    /// While on, file and directory fsyncs block until it is turned off again, as a slow disk
    /// would: a test can then check that nothing waiting for durability went ahead. A held
    /// fsync blocks its thread, so turn this off before stopping anything that may be
    /// fsyncing (a drop guard in the test does it even when the test fails).
    pub fn hold_sync(&self, on: bool) {
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        hold.on = on;
        hold.only = None;
        if !on {
            self.released.notify_all();
        }
    }

    /// As `hold_sync(true)`, but holds only the fsyncs of files and directories whose path
    /// contains `pattern` (one queue's store, say); the others go through.
    pub fn hold_sync_of(&self, pattern: &str) {
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        hold.on = true;
        hold.only = Some(pattern.to_string());
    }

    /// Lets the fsyncs blocked now go on, while later ones are still held: a test can step a
    /// group commit from one fsync to the next.
    pub fn release_held(&self) {
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        hold.round += 1;
        self.released.notify_all();
    }

    /// Number of fsyncs blocked right now by [`Faults::hold_sync`].
    pub fn held_syncs(&self) -> u64 {
        self.hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
    }

    /// Number of fsync calls (files and directories) so far, failed ones included. A held
    /// fsync is counted once it is released.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn write_fault(&self) -> Option<io::Error> {
        if self.enospc.load(Ordering::SeqCst) {
            Some(io::Error::from_raw_os_error(ENOSPC))
        } else if self.eio.load(Ordering::SeqCst) {
            Some(io::Error::from_raw_os_error(EIO))
        } else {
            None
        }
    }

    fn sync_fault(&self, path: &Path) -> io::Result<()> {
        {
            let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
            let held = |only: &Option<String>| {
                only.as_ref()
                    .is_none_or(|p| path.to_string_lossy().contains(p.as_str()))
            };
            if hold.on && held(&hold.only) {
                let round = hold.round;
                hold.waiting += 1;
                while hold.on && hold.round == round {
                    hold = self
                        .released
                        .wait(hold)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                hold.waiting -= 1;
            }
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_sync.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(EIO))
        } else {
            Ok(())
        }
    }
}

/// A backend that injects the failures its [`Faults`] ask for into another backend.
#[derive(Clone)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FaultyBackend {
            inner,
            faults: Arc::new(Faults::default()),
        }
    }

    /// The switches, to flip from the test while the store runs.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
}

struct FaultyFile {
    inner: Box<dyn BackendFile>,
    faults: Arc<Faults>,
    path: PathBuf,
}

impl Backend for FaultyBackend {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let inner = self.inner.open_append(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let inner = self.inner.open_read(path)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.sync_fault(dir)?;
        self.inner.sync_dir(dir)
    }
}

impl BackendFile for FaultyFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.faults.write_fault() {
            None => self.inner.append(buf),
            Some(err) => {
                // Real disks fail part-way through a write, leaving a torn tail behind.
                self.inner.append(&buf[..buf.len() / 2])?;
                Err(err)
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.faults.sync_fault(&self.path)?;
        self.inner.sync()
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(off, buf)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }

    fn sync_handle(&self) -> io::Result<SyncHandle> {
        let inner = self.inner.sync_handle()?;
        let faults = self.faults.clone();
        let path = self.path.clone();
        Ok(Box::new(move || {
            faults.sync_fault(&path)?;
            inner()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    #[test]
    fn file_backend_appends_reads_and_truncates() {
        let dir = TestDir::new("backend-basic");
        let b = FileBackend;
        let path = dir.path().join("f");
        let mut f = b.open_append(&path).unwrap();
        f.append(b"hello ").unwrap();
        f.append(b"world").unwrap();
        assert_eq!(f.len(), 11);
        let mut buf = [0u8; 5];
        f.read_at(6, &mut buf).unwrap();
        assert_eq!(&buf, b"world");
        f.truncate(5).unwrap();
        f.append(b"!").unwrap();
        let r = b.open_read(&path).unwrap();
        let mut all = vec![0u8; r.len() as usize];
        r.read_at(0, &mut all).unwrap();
        assert_eq!(all, b"hello!");
        assert!(r.read_at(3, &mut [0u8; 10]).is_err());
        assert_eq!(b.list(dir.path()).unwrap(), vec!["f".to_string()]);
    }

    #[test]
    fn faulty_backend_tears_writes_and_counts_syncs() {
        let dir = TestDir::new("backend-faulty");
        let b = FaultyBackend::new(FileBackend::shared());
        let faults = b.faults();
        let mut f = b.open_append(&dir.path().join("f")).unwrap();
        f.append(b"abcd").unwrap();
        faults.set_enospc(true);
        let err = f.append(b"efgh").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(f.len(), 6, "half of the failed write landed");
        faults.set_enospc(false);
        faults.set_eio(true);
        assert_eq!(f.append(b"xx").unwrap_err().raw_os_error(), Some(EIO));
        faults.set_eio(false);
        assert_eq!(faults.sync_count(), 0);
        f.sync().unwrap();
        faults.set_fail_sync(true);
        assert!(f.sync().is_err());
        assert!(b.sync_dir(dir.path()).is_err());
        assert_eq!(faults.sync_count(), 3);
    }

    #[test]
    fn held_fsyncs_wait_for_the_release() {
        let dir = TestDir::new("backend-hold");
        let b = FaultyBackend::new(FileBackend::shared());
        let faults = b.faults();
        let mut f = b.open_append(&dir.path().join("f")).unwrap();
        f.append(b"abcd").unwrap();
        faults.hold_sync(true);
        let held = |f: &dyn BackendFile| {
            let sync = f.sync_handle().unwrap();
            let t = std::thread::spawn(sync);
            while faults.held_syncs() == 0 {
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!t.is_finished(), "a held fsync returned");
            t
        };
        let t = held(&*f);
        assert_eq!(faults.sync_count(), 0, "a held fsync is not counted yet");
        faults.release_held();
        t.join().unwrap().unwrap();
        assert_eq!(faults.sync_count(), 1);
        let t = held(&*f);
        assert_eq!(faults.held_syncs(), 1, "still holding after release_held");
        faults.hold_sync(false);
        t.join().unwrap().unwrap();
        assert_eq!(faults.held_syncs(), 0);
        assert_eq!(faults.sync_count(), 2);
        f.sync().unwrap();
        assert_eq!(faults.sync_count(), 3, "no hold: fsyncs go through");

        faults.hold_sync_of("/g");
        let mut g = b.open_append(&dir.path().join("g")).unwrap();
        f.sync().unwrap();
        assert_eq!(faults.sync_count(), 4, "f is not held");
        let t = held(&*g);
        faults.hold_sync(false);
        t.join().unwrap().unwrap();
        g.sync().unwrap();
        assert_eq!(faults.sync_count(), 6);
    }
}
