//! The resource monitor: samples the process's memory and the data directory's free disk
//! space and feeds them to the broker's [`warren_broker::alarm::ResourceAlarms`], which set
//! and clear the memory and disk alarms that block publishers.
//!
//! Limits as RabbitMQ's `vm_memory_high_watermark.relative` (default 0.6 of the RAM available
//! to the process: the machine's, or the cgroup's limit when lower) or `.absolute`, and
//! `disk_free_limit.absolute` (default 50 MB).

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
pub use warren_broker::alarm::{process_memory, total_memory};
use warren_broker::Broker;

/// The memory high watermark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    /// A fraction of the RAM available to the process.
    Relative(f64),
    /// Bytes.
    Absolute(u64),
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark::Relative(0.6)
    }
}

/// RabbitMQ's default `disk_free_limit.absolute`: 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;

/// How often memory and disk are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Sets the limits on the broker and starts a thread that samples memory and disk until the
/// broker is dropped. `data_dir` is where free disk space is measured (none: not measured).
pub fn start_monitor(
    broker: &Arc<Broker>,
    watermark: Watermark,
    disk_free_limit: u64,
    data_dir: Option<PathBuf>,
) {
    let limit = memory_limit(watermark);
    tracing::info!(
        memory_limit = limit,
        disk_free_limit,
        "memory high watermark set to {} MiB, disk free limit to {} MB",
        limit >> 20,
        disk_free_limit / 1_000_000
    );
    broker.alarms.set_memory_limit(limit);
    broker.alarms.set_disk_free_limit(disk_free_limit);
    sample(broker, data_dir.as_ref());
    let weak: Weak<Broker> = Arc::downgrade(broker);
    std::thread::Builder::new()
        .name("warren-resources".into())
        .spawn(move || loop {
            std::thread::sleep(SAMPLE_INTERVAL);
            let Some(b) = weak.upgrade() else { return };
            sample(&b, data_dir.as_ref());
        })
        .expect("spawn resource monitor thread");
}

fn sample(broker: &Broker, data_dir: Option<&PathBuf>) {
    broker
        .alarms
        .sample(process_memory(), data_dir.and_then(|d| disk_free(d)));
}

/// The watermark in bytes.
pub fn memory_limit(w: Watermark) -> u64 {
    match w {
        Watermark::Absolute(b) => b,
        Watermark::Relative(f) => (total_memory() as f64 * f) as u64,
    }
}

/// Free bytes (for unprivileged users) on the file system holding `path`.
pub fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_plausible() {
        assert!(disk_free(std::path::Path::new("/")).is_some());
        assert_eq!(memory_limit(Watermark::Absolute(7)), 7);
        let l = memory_limit(Watermark::Relative(0.5));
        assert!(l > 0 && l < total_memory());
    }
}
