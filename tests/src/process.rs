//! The real `warren` binary, for tests of what only a process has: restarts on the same data
//! directory, SIGKILL and SIGTERM, command-line flags, config files and listeners.
//!
//! This library cannot name the binary itself (Cargo tells only an integration test of the
//! package that builds it where it is), so the tests that start it live in
//! `crates/warren/tests` and pass `env!("CARGO_BIN_EXE_warren")`, which also makes Cargo build
//! the binary before it builds them.

use std::path::{Path, PathBuf};

/// The broker binary a test starts: `built` (its `env!("CARGO_BIN_EXE_warren")`), or
/// `WARREN_BIN` when set (a copy, so that a long run by hand survives the tree being rebuilt).
pub fn warren_bin(built: &str) -> String {
    std::env::var("WARREN_BIN").unwrap_or_else(|_| built.to_string())
}

/// Starts `bin` with a config file holding `conf` (written in `dir`, with a data directory
/// there) and waits for it to stop: a start that must be refused. Its exit code and stderr.
pub fn start_refused(bin: &str, dir: &Path, conf: &str) -> (Option<i32>, String) {
    let path = dir.join("warren.conf");
    std::fs::write(&path, conf).expect("write warren.conf");
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("run warren");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `warren` process with its own data directory, for restart and crash tests. It listens
/// on ports the kernel picks (`--listen 127.0.0.1:0`) and says which in its listeners file, so
/// no other process can take its port between a check and a bind, nor after a restart.
pub struct BrokerProcess {
    /// The AMQP port of the running process (a restart gets a new one).
    pub port: u16,
    /// Every listener the running process bound: (protocol, address).
    pub listeners: Vec<(String, std::net::SocketAddr)>,
    pub data_dir: PathBuf,
    /// The `warren` binary.
    bin: PathBuf,
    listen: String,
    /// Where the broker's log goes (stdout and stderr, appended, at its normal level), if the
    /// test reads it; otherwise only warnings, to the test's stdout (unseen).
    log: Option<PathBuf>,
    child: Option<std::process::Child>,
}

impl BrokerProcess {
    /// Starts the `warren` binary at `bin` (`env!("CARGO_BIN_EXE_warren")`) on `data_dir`, with
    /// `extra` flags, and waits until it listens.
    pub fn start(bin: impl AsRef<Path>, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_listening(bin, data_dir, "127.0.0.1:0", extra)
    }

    /// Started with `--listen <listen>` (any of its forms, e.g. `0` for both loopback families).
    pub fn start_listening(
        bin: impl AsRef<Path>,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        Self::start_with(bin, data_dir, listen, extra, None)
    }

    /// As [`BrokerProcess::start`], logging at the broker's normal level (info) into `log`;
    /// restarts append to it, so it holds every run's lines for the test to check.
    pub fn start_logging(
        bin: impl AsRef<Path>,
        data_dir: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Self {
        Self::start_with(bin, data_dir, "127.0.0.1:0", extra, Some(log.to_path_buf()))
    }

    fn start_with(
        bin: impl AsRef<Path>,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        log: Option<PathBuf>,
    ) -> Self {
        let mut p = BrokerProcess {
            port: 0,
            listeners: Vec::new(),
            data_dir: data_dir.to_path_buf(),
            bin: bin.as_ref().to_path_buf(),
            listen: listen.to_string(),
            log,
            child: None,
        };
        p.spawn(extra);
        p
    }

    fn listeners_file(&self) -> PathBuf {
        let mut name = self.data_dir.as_os_str().to_owned();
        name.push(".listeners");
        PathBuf::from(name)
    }

    fn spawn(&mut self, extra: &[&str]) {
        let file = self.listeners_file();
        let _ = std::fs::remove_file(&file);
        // Held by `self` from the start, so that a start that fails (the panics below) kills
        // the process when `self` is dropped, before the test's data directory is removed.
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.args(["--listen", &self.listen, "--mgmt-listen", "127.0.0.1:0"])
            .args(["--prometheus-listen", "127.0.0.1:0"])
            .args(["--stream-listen", "127.0.0.1:0"])
            .arg("--listeners-file")
            .arg(&file)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra);
        match &self.log {
            // The log lines go to stdout; a panic's message to stderr.
            Some(log) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
                cmd.stderr(f.try_clone().expect("clone the log's descriptor"));
                cmd.stdout(f);
            }
            None => {
                cmd.args(["--log-level", "warn"]);
                cmd.stdout(std::process::Stdio::null());
            }
        }
        let child = self.child.insert(cmd.spawn().expect("spawn warren"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&file) {
                break t;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // What it said on its way out (its log, when it has one): the panic is often
                // all a CI run shows of a failed start.
                let said = self
                    .log
                    .as_ref()
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .map(|t| {
                        let lines: Vec<&str> = t.lines().collect();
                        lines[lines.len().saturating_sub(15)..].join("\n")
                    })
                    .unwrap_or_default();
                panic!("warren exited before listening: {status}\n{said}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "warren did not write {} within 20 s",
                file.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        self.listeners = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, a)| (p.to_string(), a.parse().expect("listener address")))
            .collect();
        self.port = self
            .listener("amqp")
            .expect("an amqp line in the listeners file")
            .port();
    }

    /// The first listener of `protocol` (amqp, amqps, http, https, http/prometheus, stream).
    pub fn listener(&self, protocol: &str) -> Option<std::net::SocketAddr> {
        self.listeners
            .iter()
            .find(|(p, _)| p == protocol)
            .map(|(_, a)| *a)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL, then start again on the same data directory (on a new port: use `url()`).
    pub fn kill9_and_restart(&mut self, extra: &[&str]) {
        self.kill9();
        self.spawn(extra);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns at once (see [`BrokerProcess::stop`] to wait).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            sigterm(c.id());
        }
    }

    /// Waits for the process to exit (after [`BrokerProcess::sigterm`]); returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        c.wait().ok().and_then(|s| s.code())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, wait for the exit, then start again on the same data directory (on new ports:
    /// use `url()` and `listener()`); returns the exit code of the stopped process.
    pub fn sigterm_and_restart(&mut self, extra: &[&str]) -> Option<i32> {
        let code = self.stop();
        self.spawn(extra);
        code
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        sigterm(c.id());
        c.wait().ok().and_then(|s| s.code())
    }
}

fn sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process (a `warren` a test started with a command of its own) that is killed and
/// reaped when dropped, so that a test that fails while it runs leaves no process behind, nor
/// one that goes on writing into the directory the test removes. Derefs to the
/// [`std::process::Child`].
pub struct ChildGuard(std::process::Child);

impl ChildGuard {
    pub fn new(child: std::process::Child) -> Self {
        ChildGuard(child)
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Harmless when the test already waited for it: the exit status is kept.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
