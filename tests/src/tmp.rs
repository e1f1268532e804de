//! Scratch directories that are removed even when the test that made them fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh, empty directory under the system's temporary directory, removed with everything
/// in it when dropped: at the end of the test, and also when the test panics (the guard is
/// dropped while the panic unwinds), unless `WARREN_KEEP_TEST_DIRS` is set. Derefs to its
/// [`Path`].
///
/// Declare it before whatever writes into it (a [`crate::BrokerProcess`], a
/// [`crate::TestBroker`] with a data directory), so that is dropped, and stopped, first.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<temp>/warren-<name>-<pid>-<n>`, made empty.
    pub fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("warren-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // WARREN_KEEP_TEST_DIRS=1 keeps them (brokers' logs and data) for a look afterwards.
        if std::env::var_os("WARREN_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
