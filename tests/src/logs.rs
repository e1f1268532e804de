//! The broker's `tracing` output captured in memory, so a test can check what the broker
//! told its operator (recovery warnings, say). One subscriber for the whole test process:
//! tests running side by side share it, so a test looks only for lines that name its own
//! files or objects.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
        lines.extend(text.lines().map(str::to_string));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing (INFO and above) if no test of this process did yet.
pub fn capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Sink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

/// Removes and returns the captured lines that contain `needle`.
pub fn take_containing(needle: &str) -> Vec<String> {
    let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
    let (hit, rest): (Vec<String>, Vec<String>) = lines.drain(..).partition(|l| l.contains(needle));
    *lines = rest;
    hit
}
