//! Resource alarms (RabbitMQ's memory and disk alarms): the limits, the last samples and
//! which alarms are on. The server's monitor feeds samples in; connections watch the state to
//! block publishers; the management API shows it and changes the limits at run time (as
//! `rabbitmqctl set_vm_memory_high_watermark` and `set_disk_free_limit`). Also the readings
//! and the byte sizes both need: the RAM available to the process, its resident memory, and
//! `2GB`-style sizes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;

/// No limit.
pub const UNLIMITED: u64 = u64::MAX;

pub struct ResourceAlarms {
    state: watch::Sender<Option<String>>,
    memory_alarm: AtomicBool,
    disk_alarm: AtomicBool,
    memory_limit: AtomicU64,
    disk_free_limit: AtomicU64,
    memory_used: AtomicU64,
    /// `UNLIMITED` until a sample says otherwise.
    disk_free: AtomicU64,
}

impl Default for ResourceAlarms {
    fn default() -> Self {
        ResourceAlarms {
            state: watch::channel(None).0,
            memory_alarm: AtomicBool::new(false),
            disk_alarm: AtomicBool::new(false),
            memory_limit: AtomicU64::new(UNLIMITED),
            disk_free_limit: AtomicU64::new(0),
            memory_used: AtomicU64::new(0),
            disk_free: AtomicU64::new(UNLIMITED),
        }
    }
}

impl ResourceAlarms {
    /// The memory high watermark in bytes; takes effect at once.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
        self.evaluate();
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// The disk free limit in bytes; takes effect at once.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk_free_limit.store(bytes, Ordering::Relaxed);
        self.evaluate();
    }

    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit.load(Ordering::Relaxed)
    }

    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Ordering::Relaxed)
    }

    /// Free bytes on the data directory's file system, if known.
    pub fn disk_free(&self) -> Option<u64> {
        Some(self.disk_free.load(Ordering::Relaxed)).filter(|&d| d != UNLIMITED)
    }

    /// A new sample from the monitor.
    pub fn sample(&self, memory_used: u64, disk_free: Option<u64>) {
        self.memory_used.store(memory_used, Ordering::Relaxed);
        self.disk_free
            .store(disk_free.unwrap_or(UNLIMITED), Ordering::Relaxed);
        self.evaluate();
    }

    fn evaluate(&self) {
        let mem = self.memory_used() > self.memory_limit();
        let disk = self.disk_free().is_some_and(|f| f < self.disk_free_limit());
        for (flag, on, what) in [
            (&self.memory_alarm, mem, "memory"),
            (&self.disk_alarm, disk, "disk"),
        ] {
            if flag.swap(on, Ordering::AcqRel) != on {
                if on {
                    tracing::warn!(
                        memory_used = self.memory_used(),
                        memory_limit = self.memory_limit(),
                        disk_free = ?self.disk_free(),
                        disk_free_limit = self.disk_free_limit(),
                        "{what} resource limit alarm set: publishers will be blocked"
                    );
                } else {
                    tracing::info!("{what} resource limit alarm cleared");
                }
            }
        }
        let now = self.current();
        self.state.send_if_modified(|s| {
            if *s != now {
                *s = now.clone();
                true
            } else {
                false
            }
        });
    }

    /// The alarm in force ("memory" before "disk"), if any.
    pub fn current(&self) -> Option<String> {
        self.active().first().map(|s| s.to_string())
    }

    /// Every alarm in force, as RabbitMQ names the resources.
    pub fn active(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.memory_alarm.load(Ordering::Acquire) {
            v.push("memory");
        }
        if self.disk_alarm.load(Ordering::Acquire) {
            v.push("disk");
        }
        v
    }

    /// Changes of [`current`](Self::current).
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.state.subscribe()
    }
}

/// RAM available to the process: the machine's, or the cgroup's limit when lower.
pub fn total_memory() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| kib_field(&s, "MemTotal:"))
        .unwrap_or(1 << 30);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.map_or(machine, |c| c.min(machine))
}

/// The process's resident memory in bytes.
pub fn process_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| kib_field(&s, "VmRSS:"))
        .unwrap_or(0)
}

/// `Name:   1234 kB` → bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// `2GB`, `512MiB`, `1000000` → bytes (rabbitmq.conf's and rabbitmqctl's units).
pub fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "k" | "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024f64.powi(2),
        "G" | "GiB" => 1024f64.powi(3),
        "T" | "TiB" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("50MB"), Some(50_000_000));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn memory_readings_are_plausible() {
        assert!(process_memory() > 0);
        assert!(total_memory() > process_memory());
    }

    #[test]
    fn alarms_follow_samples_and_limits() {
        let a = ResourceAlarms::default();
        let mut rx = a.subscribe();
        a.sample(100, Some(1000));
        assert_eq!(a.current(), None);
        a.set_memory_limit(50);
        assert_eq!(a.current().as_deref(), Some("memory"));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        a.set_disk_free_limit(2000);
        assert_eq!(a.active(), ["memory", "disk"]);
        a.set_memory_limit(UNLIMITED);
        assert_eq!(a.current().as_deref(), Some("disk"));
        a.sample(100, Some(5000));
        assert_eq!(a.current(), None);
    }
}
