//! Warren's durability layer. It knows ids and bytes, not routing or AMQP: the broker decides
//! what to persist and when to sync; this crate makes it durable and brings it back.
//!
//! # Layout
//!
//! - [`backend`]: the storage backend trait all file I/O goes through; [`FileBackend`] for
//!   real disks, [`FaultyBackend`] to inject ENOSPC/EIO/fsync failures and count fsyncs.
//! - [`segment`]: the segment log, checksummed records in numbered segment files, with
//!   buffered appends, positional reads, fsync, torn-tail recovery and whole-segment removal.
//! - [`queue_store`]: [`QueueStore`], one durable queue's messages and ack/delivered marks
//!   (two segment logs), streaming [`Recovery`] of unacked messages, and space reclamation.
//! - [`stream_store`]: [`StreamStore`], one stream's append-only log: records with their
//!   stream offset and append time, read forward by position, seeks by offset and time,
//!   retention by whole segments.
//! - [`catalog`]: [`Catalog`], the definitions document, saved atomically with a checksum.
//! - [`catalog_journal`]: the changes to it since its last full save, appended and fsynced.
//! - [`error`]: [`StoreError`], the one error type.
//! - [`sim`]: [`SimDisk`], an in-memory file system for tests that models a power cut
//!   (unsynced data and directory changes lost, torn tails).
//!
//! The on-disk formats are described field by field in `docs/storage.md`.
//!
//! # Durability contract
//!
//! Appends and marks are buffered in memory and return at once. They are durable only after
//! [`QueueStore::sync`] returns Ok; a group-commit flusher calls it for a batch and only then
//! sends publisher confirms. A failed fsync poisons the store (reopen it to recover), since
//! retrying an fsync after a failure can falsely report success.

pub mod backend;
pub mod catalog;
pub mod catalog_journal;
pub mod error;
pub mod queue_store;
pub mod segment;
pub mod sim;
pub mod stream_store;

pub use backend::{Backend, BackendFile, Faults, FaultyBackend, FileBackend, SyncHandle};
pub use catalog::Catalog;
pub use error::{Result, StoreError};
pub use queue_store::{
    QueueStore, RecoveredMessage, Recovery, StoreOptions, SyncBatch, SyncOutcome, TxTag,
};
pub use segment::{Position, SegmentLog, SegmentReader};
pub use sim::{LossReport, SimDisk};
pub use stream_store::{Retention, StreamRecord, StreamStore};

#[cfg(test)]
pub(crate) mod testutil {
    //! Scratch directories and deterministic data for the unit tests.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh, empty directory under the system temp dir, removed on drop.
    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(name: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("warren-store-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `len` bytes that differ per `seed`, so a misplaced read shows.
    pub fn payload(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i * 7) as u8).collect()
    }

    pub fn flip_byte(path: &Path, off: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[off as usize] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }

    /// (name, length) of the files in `dir`, sorted by name.
    pub fn dir_files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        files
    }

    /// A tiny deterministic PRNG for randomized tests without a dependency.
    pub struct XorShift(u64);

    impl XorShift {
        pub fn new(seed: u64) -> Self {
            XorShift(seed.max(1))
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}
