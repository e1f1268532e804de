//! [`SimDisk`], an in-memory file system that models what a power cut does, for tests.
//!
//! Unlike `kill -9`, which keeps the page cache, a power cut keeps only what reached the
//! disk. `SimDisk` keeps two views of every file and directory: what the running process sees
//! (the page cache) and what is durable. [`SimDisk::pull_plug`] freezes the disk (every later
//! write, fsync or directory change fails with EIO, so nothing can be made durable after the
//! cut) and [`SimDisk::after_power_loss`] builds the disk a restart sees.
//!
//! The model (see `docs/storage.md`, "Power loss"):
//! - A file's data is durable up to its last fsync (fdatasync). Bytes appended since are lost,
//!   except that the kernel may already have written some of them back: a random prefix of
//!   the unsynced tail may survive, and the last surviving 4 KiB page may be only partly
//!   written (zeros from a sector boundary on: sectors are written whole or not at all). A truncation not followed by
//!   an fsync is lost (the durable content comes back).
//! - A directory's entries (files created, removed, renamed; directories created or removed)
//!   are durable up to its last fsync. Changes since are lost, except that a random prefix
//!   of them (in the order they were made) may survive, as a journalling file system commits
//!   them in order. A rename is one change: it survives whole or not at all.
//! - A file or directory whose entry did not survive is gone with everything under it, even
//!   if its data was fsynced (POSIX: fsync a file does not make its name durable; the parent
//!   directory must be fsynced too).
//! - Every random choice comes from the seed given to `after_power_loss`, so a failing run
//!   can be replayed (as far as the threads of the process under test allow).
//!
//! It is a test tool: everything is in memory, behind one lock.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::{Backend, BackendFile, SyncHandle};

const PAGE: usize = 4096;
const SECTOR: usize = 512;
const EIO: i32 = 5;

/// A deterministic PRNG (xorshift64*), so the store needs no `rand`.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

type Ino = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(Ino),
    Dir(Ino),
}

#[derive(Debug, Clone)]
enum DirOp {
    Set(String, Node),
    Remove(String),
    /// Atomic within one directory.
    Rename(String, String),
}

fn apply(entries: &mut BTreeMap<String, Node>, op: &DirOp) {
    match op {
        DirOp::Set(name, node) => {
            entries.insert(name.clone(), *node);
        }
        DirOp::Remove(name) => {
            entries.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(n) = entries.remove(from) {
                entries.insert(to.clone(), n);
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct FileData {
    /// What the process sees.
    data: Vec<u8>,
    /// `data[..durable_len]` is durable, unless `diverged` holds the durable content (a
    /// truncation below the durable length was not fsynced yet).
    durable_len: usize,
    diverged: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone)]
struct DirData {
    entries: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
    /// Changes since the last fsync of the directory, in order.
    log: Vec<DirOp>,
}

/// What a plug pull threw away, for the test's report and its checks.
#[derive(Debug, Default, Clone)]
pub struct LossReport {
    /// Files that lost unsynced bytes: (path, bytes the process had, bytes that survived).
    pub files_cut: Vec<(PathBuf, usize, usize)>,
    /// Directories that lost changes: (path, changes made since the last fsync, changes kept).
    pub dirs_rolled_back: Vec<(PathBuf, usize, usize)>,
    /// Total bytes lost.
    pub bytes_lost: u64,
}

type PathFilter = Box<dyn Fn(&Path) -> bool + Send>;
type CutHook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    files: HashMap<Ino, FileData>,
    dirs: HashMap<Ino, DirData>,
    next_ino: Ino,
    dead: bool,
    /// Mutating operations so far (writes, fsyncs, directory changes), for plugging at one.
    ops: u64,
    /// Pull the plug before the `n`th further operation whose path passes the filter.
    armed: Option<(PathFilter, u64)>,
    /// Runs under the disk's lock at the instant of the cut.
    on_cut: Option<CutHook>,
    /// Truncations made (path, from, to), so a test can check each was logged.
    truncations: Vec<(PathBuf, u64, u64)>,
}

const ROOT: Ino = 0;

fn eio() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn components(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 path"))?
                    .to_string(),
            ),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: only absolute, normalized paths", path.display()),
                ))
            }
        }
    }
    Ok(out)
}

impl State {
    fn new_ino(&mut self) -> Ino {
        self.next_ino += 1;
        self.next_ino
    }

    fn lookup(&self, path: &Path) -> io::Result<Node> {
        let mut node = Node::Dir(ROOT);
        for name in components(path)? {
            let Node::Dir(d) = node else {
                return Err(not_found(path));
            };
            node = *self.dirs[&d]
                .entries
                .get(&name)
                .ok_or_else(|| not_found(path))?;
        }
        Ok(node)
    }

    /// The directory holding `path` and the last name of `path`.
    fn parent(&self, path: &Path) -> io::Result<(Ino, String)> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| not_found(path))?
            .to_string();
        match self.lookup(path.parent().ok_or_else(|| not_found(path))?)? {
            Node::Dir(d) => Ok((d, name)),
            Node::File(_) => Err(not_found(path)),
        }
    }

    fn change_dir(&mut self, dir: Ino, op: DirOp) {
        let d = self.dirs.get_mut(&dir).expect("directory exists");
        apply(&mut d.entries, &op);
        d.log.push(op);
    }

    /// Counts one mutating operation on `path`; fails it (and everything after) once the
    /// disk is dead or the armed operation is reached.
    fn mutate(&mut self, path: &Path) -> io::Result<()> {
        if self.dead {
            return Err(eio());
        }
        self.ops += 1;
        if let Some((filter, n)) = &mut self.armed {
            if filter(path) {
                *n -= 1;
                if *n == 0 {
                    self.armed = None;
                    tracing::info!(path = %path.display(), "simulated disk: power cut (armed)");
                    self.cut();
                    return Err(eio());
                }
            }
        }
        Ok(())
    }

    fn cut(&mut self) {
        self.dead = true;
        if let Some(hook) = self.on_cut.take() {
            hook();
        }
    }
}

/// The simulated disk: cheap to clone (clones share the disk), a [`Backend`] for the store.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SimDisk")
            .field("files", &s.files.len())
            .field("dirs", &s.dirs.len())
            .field("ops", &s.ops)
            .field("dead", &s.dead)
            .finish()
    }
}

impl SimDisk {
    /// An empty disk with `dir` (and its ancestors) already created and durable.
    pub fn new(dir: &Path) -> Self {
        let mut s = State::default();
        s.dirs.insert(ROOT, DirData::default());
        let disk = SimDisk {
            state: Arc::new(Mutex::new(s)),
        };
        disk.create_dir_all(dir).expect("create the root directory");
        let mut s = disk.lock();
        for d in s.dirs.values_mut() {
            d.durable = d.entries.clone();
            d.log.clear();
        }
        drop(s);
        disk
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power now: every later mutating operation fails with EIO. Returns false if
    /// the disk was already dead.
    pub fn pull_plug(&self) -> bool {
        let mut s = self.lock();
        if s.dead {
            return false;
        }
        s.cut();
        true
    }

    /// `hook` runs under the disk's lock at the instant of the cut, however it comes (a test
    /// freezes its own records there, so nothing it does after the cut can be mistaken for
    /// something done before). It must not touch the disk.
    pub fn on_cut(&self, hook: impl FnOnce() + Send + 'static) {
        self.lock().on_cut = Some(Box::new(hook));
    }

    /// Cuts the power right before the `n`th (from 1) mutating operation from now whose path
    /// `filter` accepts; that operation fails.
    pub fn arm(&self, n: u64, filter: impl Fn(&Path) -> bool + Send + 'static) {
        assert!(n > 0);
        self.lock().armed = Some((Box::new(filter), n));
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Mutating operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Truncations made so far: (path, length before, length after).
    pub fn truncations(&self) -> Vec<(PathBuf, u64, u64)> {
        self.lock().truncations.clone()
    }

    /// Whether `path` exists now (as the process sees it).
    pub fn exists(&self, path: &Path) -> bool {
        self.lock().lookup(path).is_ok()
    }

    /// The content of a file as the process sees it.
    pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        match s.lookup(path)? {
            Node::File(ino) => Ok(s.files[&ino].data.clone()),
            Node::Dir(_) => Err(not_found(path)),
        }
    }

    /// Paths of all files, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let s = self.lock();
        let mut out = Vec::new();
        let mut stack = vec![(PathBuf::from("/"), ROOT)];
        while let Some((p, d)) = stack.pop() {
            for (name, node) in &s.dirs[&d].entries {
                match node {
                    Node::File(_) => out.push(p.join(name)),
                    Node::Dir(c) => stack.push((p.join(name), *c)),
                }
            }
        }
        out.sort();
        out
    }

    /// The disk a restart sees after the power was cut (the plug is pulled now if it was
    /// not already): only what was durable, plus what the `seed`'s random write-back kept.
    pub fn after_power_loss(&self, seed: u64) -> (SimDisk, LossReport) {
        let mut s = self.lock();
        s.dead = true;
        let mut rng = SimRng::new(seed);
        let mut report = LossReport::default();
        let mut new = State {
            next_ino: s.next_ino,
            ..State::default()
        };
        let mut stack = vec![(PathBuf::from("/"), ROOT)];
        while let Some((path, d)) = stack.pop() {
            let dir = &s.dirs[&d];
            let mut entries = dir.durable.clone();
            if !dir.log.is_empty() {
                // None, all, or a random prefix of the unsynced changes survive.
                let kept = match rng.below(4) {
                    0 | 1 => 0,
                    2 => dir.log.len(),
                    _ => rng.below(dir.log.len() as u64 + 1) as usize,
                };
                for op in &dir.log[..kept] {
                    apply(&mut entries, op);
                }
                if kept < dir.log.len() {
                    report
                        .dirs_rolled_back
                        .push((path.clone(), dir.log.len(), kept));
                }
            }
            for (name, node) in &entries {
                match *node {
                    Node::Dir(c) => stack.push((path.join(name), c)),
                    Node::File(ino) if !new.files.contains_key(&ino) => {
                        let f = &s.files[&ino];
                        let data = survivor(f, &mut rng);
                        if data != f.data {
                            let lost = f.data.len().saturating_sub(data.len());
                            report.bytes_lost += lost as u64;
                            report
                                .files_cut
                                .push((path.join(name), f.data.len(), data.len()));
                        }
                        new.files.insert(
                            ino,
                            FileData {
                                durable_len: data.len(),
                                data,
                                diverged: None,
                            },
                        );
                    }
                    Node::File(_) => {}
                }
            }
            new.dirs.insert(
                d,
                DirData {
                    durable: entries.clone(),
                    entries,
                    log: Vec::new(),
                },
            );
        }
        if !report.files_cut.is_empty() || !report.dirs_rolled_back.is_empty() {
            tracing::info!(
                files_cut = report.files_cut.len(),
                dirs_rolled_back = report.dirs_rolled_back.len(),
                bytes_lost = report.bytes_lost,
                "simulated disk: power loss"
            );
        }
        (
            SimDisk {
                state: Arc::new(Mutex::new(new)),
            },
            report,
        )
    }
}

/// What of a file is on the platter after the cut.
fn survivor(f: &FileData, rng: &mut SimRng) -> Vec<u8> {
    if let Some(d) = &f.diverged {
        return d.clone();
    }
    let mut out = f.data[..f.durable_len].to_vec();
    let tail = &f.data[f.durable_len..];
    if tail.is_empty() {
        return out;
    }
    let keep = match rng.below(4) {
        0 | 1 => 0,
        2 => tail.len(),
        _ => rng.below(tail.len() as u64 + 1) as usize,
    };
    out.extend_from_slice(&tail[..keep]);
    if keep > 0 && rng.below(3) == 0 {
        // The last page written back only in part: the file's size was updated but not all
        // of its data landed, and a journalling file system shows zeros there (never stale
        // blocks of another file).
        // Sectors (512 bytes) are written whole or not at all.
        let page_start = out.len() - 1 - (out.len() - 1) % PAGE;
        let lo = page_start.max(f.durable_len);
        if lo < out.len() {
            let from = lo + rng.below((out.len() - lo) as u64) as usize;
            let from = from.next_multiple_of(SECTOR).max(lo);
            for b in out.iter_mut().skip(from) {
                *b = 0;
            }
        }
    }
    out
}

struct SimFile {
    disk: SimDisk,
    ino: Ino,
    path: PathBuf,
}

impl Backend for SimDisk {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let mut s = self.lock();
        let ino = match s.lookup(path) {
            Ok(Node::File(ino)) => ino,
            Ok(Node::Dir(_)) => {
                return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory"))
            }
            Err(_) => {
                let (dir, name) = s.parent(path)?;
                s.mutate(path)?;
                let ino = s.new_ino();
                s.files.insert(ino, FileData::default());
                s.change_dir(dir, DirOp::Set(name, Node::File(ino)));
                ino
            }
        };
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
            path: path.to_path_buf(),
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn BackendFile>> {
        let s = self.lock();
        match s.lookup(path)? {
            Node::File(ino) => Ok(Box::new(SimFile {
                disk: self.clone(),
                ino,
                path: path.to_path_buf(),
            })),
            Node::Dir(_) => Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory")),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        match s.lookup(dir)? {
            Node::Dir(d) => Ok(s.dirs[&d].entries.keys().cloned().collect()),
            Node::File(_) => Err(io::Error::new(io::ErrorKind::NotADirectory, "a file")),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let Node::File(_) = s.lookup(path)? else {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory"));
        };
        let (dir, name) = s.parent(path)?;
        s.mutate(path)?;
        s.change_dir(dir, DirOp::Remove(name));
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.lookup(path)?;
        let (dir, name) = s.parent(path)?;
        s.mutate(path)?;
        // The subtree stays reachable from the durable view until the parent is fsynced.
        s.change_dir(dir, DirOp::Remove(name));
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let mut cur = ROOT;
        let mut at = PathBuf::from("/");
        for name in components(path)? {
            at.push(&name);
            cur = match s.dirs[&cur].entries.get(&name) {
                Some(Node::Dir(d)) => *d,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file"))
                }
                None => {
                    s.mutate(&at)?;
                    let d = s.new_ino();
                    s.dirs.insert(d, DirData::default());
                    s.change_dir(cur, DirOp::Set(name, Node::Dir(d)));
                    d
                }
            };
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.lookup(from)?;
        let (fd, fname) = s.parent(from)?;
        let (td, tname) = s.parent(to)?;
        if fd != td {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "simulated disk: rename across directories",
            ));
        }
        s.mutate(to)?;
        s.change_dir(fd, DirOp::Rename(fname, tname));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let Node::Dir(d) = s.lookup(dir)? else {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "a file"));
        };
        s.mutate(dir)?;
        let d = s.dirs.get_mut(&d).expect("directory exists");
        d.durable = d.entries.clone();
        d.log.clear();
        Ok(())
    }
}

impl SimFile {
    fn sync_now(disk: &SimDisk, ino: Ino, path: &Path) -> io::Result<()> {
        let mut s = disk.lock();
        s.mutate(path)?;
        let f = s.files.get_mut(&ino).expect("file exists");
        f.durable_len = f.data.len();
        f.diverged = None;
        Ok(())
    }
}

impl BackendFile for SimFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.mutate(&self.path)?;
        s.files
            .get_mut(&self.ino)
            .expect("file exists")
            .data
            .extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Self::sync_now(&self.disk, self.ino, &self.path)
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.disk.lock();
        let data = &s.files[&self.ino].data;
        let off = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        match data.get(off..off + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn len(&self) -> u64 {
        self.disk.lock().files[&self.ino].data.len() as u64
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.disk.lock();
        s.mutate(&self.path)?;
        let f = s.files.get_mut(&self.ino).expect("file exists");
        let before = f.data.len() as u64;
        let len = len as usize;
        if len < f.durable_len && f.diverged.is_none() {
            f.diverged = Some(f.data[..f.durable_len].to_vec());
        }
        f.data.resize(len, 0);
        s.truncations.push((self.path.clone(), before, len as u64));
        Ok(())
    }

    fn sync_handle(&self) -> io::Result<SyncHandle> {
        let (disk, ino, path) = (self.disk.clone(), self.ino, self.path.clone());
        Ok(Box::new(move || Self::sync_now(&disk, ino, &path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from("/data")
    }

    fn write(disk: &SimDisk, path: &Path, bytes: &[u8], sync: bool) {
        let mut f = disk.open_append(path).unwrap();
        f.append(bytes).unwrap();
        if sync {
            f.sync().unwrap();
        }
    }

    /// Over many seeds: synced data always survives, unsynced data never survives beyond what
    /// was written, and unsynced directory changes are lost in some runs and kept in others.
    #[test]
    fn only_what_was_synced_is_sure_to_survive() {
        let (mut lost_file, mut kept_tail, mut torn) = (0, 0, 0);
        for seed in 0..200 {
            let disk = SimDisk::new(&root());
            let a = root().join("a");
            write(&disk, &a, b"synced", true);
            disk.sync_dir(&root()).unwrap();
            let mut f = disk.open_append(&a).unwrap();
            f.append(&vec![7u8; 10_000]).unwrap();
            let b = root().join("b");
            write(&disk, &b, b"never-dir-synced", true);
            let (after, report) = disk.after_power_loss(seed);
            let got = after.read(&a).unwrap();
            assert!(got.starts_with(b"synced"), "seed {seed}");
            assert!(got.len() <= 6 + 10_000, "seed {seed}");
            let tail = &got[6..];
            if tail.is_empty() {
                assert!(report.files_cut.iter().any(|(p, _, _)| *p == a));
            } else if tail.iter().all(|&x| x == 7) {
                kept_tail += 1;
            } else {
                torn += 1;
            }
            if !after.exists(&b) {
                lost_file += 1;
            } else {
                assert_eq!(after.read(&b).unwrap(), b"never-dir-synced");
            }
        }
        assert!(lost_file > 0 && lost_file < 200, "{lost_file}");
        assert!(kept_tail > 0 && torn > 0, "{kept_tail} {torn}");
    }

    #[test]
    fn a_dead_disk_refuses_every_change() {
        let disk = SimDisk::new(&root());
        let a = root().join("a");
        let mut f = disk.open_append(&a).unwrap();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f2 = frozen.clone();
        disk.on_cut(move || f2.store(true, std::sync::atomic::Ordering::SeqCst));
        assert!(disk.pull_plug());
        assert!(frozen.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!disk.pull_plug());
        assert_eq!(f.append(b"x").unwrap_err().raw_os_error(), Some(EIO));
        assert!(f.sync().is_err());
        assert!(disk.sync_dir(&root()).is_err());
        assert!(disk.open_append(&root().join("b")).is_err());
        assert!(disk.rename(&a, &root().join("c")).is_err());
        assert!(disk.remove(&a).is_err());
    }

    #[test]
    fn an_armed_disk_dies_at_the_chosen_operation() {
        let disk = SimDisk::new(&root());
        disk.arm(2, |p| p.ends_with("x"));
        write(&disk, &root().join("a"), b"1", true);
        let mut f = disk.open_append(&root().join("x")).unwrap();
        assert!(!disk.is_dead());
        assert!(f.append(b"2").is_err(), "second operation on x");
        assert!(disk.is_dead());
    }

    /// A rename survives whole or not at all; a synced directory keeps its renames.
    #[test]
    fn renames_are_atomic_and_kept_once_the_directory_is_synced() {
        for seed in 0..100 {
            let disk = SimDisk::new(&root());
            let (tmp, dst) = (root().join("t"), root().join("d"));
            write(&disk, &dst, b"old", true);
            disk.sync_dir(&root()).unwrap();
            write(&disk, &tmp, b"new", true);
            disk.rename(&tmp, &dst).unwrap();
            let (after, _) = disk.after_power_loss(seed);
            let got = after.read(&dst).unwrap();
            assert!(got == b"old" || got == b"new", "seed {seed}");
            if got == b"new" {
                assert!(!after.exists(&tmp));
            }
        }
        let disk = SimDisk::new(&root());
        let (tmp, dst) = (root().join("t"), root().join("d"));
        write(&disk, &tmp, b"new", true);
        disk.rename(&tmp, &dst).unwrap();
        disk.sync_dir(&root()).unwrap();
        let (after, _) = disk.after_power_loss(1);
        assert_eq!(after.read(&dst).unwrap(), b"new");
    }

    /// An unsynced truncation comes back; new directories need their parent fsynced.
    #[test]
    fn truncations_and_new_directories_need_an_fsync() {
        let disk = SimDisk::new(&root());
        let a = root().join("a");
        write(&disk, &a, b"0123456789", true);
        disk.sync_dir(&root()).unwrap();
        let mut f = disk.open_append(&a).unwrap();
        f.truncate(4).unwrap();
        let sub = root().join("q").join("r");
        disk.create_dir_all(&sub).unwrap();
        write(&disk, &sub.join("f"), b"x", true);
        disk.sync_dir(&sub).unwrap();
        let lost = (0..50)
            .filter(|&seed| {
                let (after, _) = disk.after_power_loss(seed);
                assert_eq!(after.read(&a).unwrap(), b"0123456789");
                !after.exists(&sub.join("f"))
            })
            .count();
        assert!(lost > 0, "the parents of q/r were never fsynced");
        disk.sync_dir(&root()).unwrap_err(); // dead after the first loss
    }
}
