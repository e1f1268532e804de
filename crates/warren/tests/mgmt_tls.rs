//! The `warren` binary with `management.ssl.*` keys in its config file: it serves the
//! management API over HTTPS only (as RabbitMQ does when only those are set), and names the key
//! and file it cannot load.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use warren_tests::mgmt::{agent, guest_get, listeners};
use warren_tests::{ChildGuard, Pki, TIMEOUT};

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Writes `conf` as a config file in `dir`; the `warren` command that uses it, with its AMQP
/// listener on a free port.
fn warren(dir: &Path, conf: &str) -> Command {
    let path = dir.join("warren.conf");
    std::fs::write(&path, conf).unwrap();
    let mut c = Command::new(WARREN);
    c.arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .env_remove("WARREN_MGMT_LISTEN")
        .stdout(std::process::Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_serves_https_only_when_only_management_ssl_is_configured() {
    let pki = Pki::new("mgmt-binary");
    let o = pki.options(false, false);
    let conf = format!(
        "management.ssl.port = 0\nmanagement.ssl.certfile = {}\nmanagement.ssl.keyfile = {}\nmanagement.ssl.cacertfile = {}\n",
        o.certfile.display(),
        o.keyfile.display(),
        pki.ca_file().display()
    );
    // Port 0: the kernel picks the port, and warren says which in its listeners file.
    let file = pki.dir.join("listeners");
    let _ = std::fs::remove_file(&file);
    let mut child = ChildGuard::new(
        warren(&pki.dir, &conf)
            .arg("--listeners-file")
            .arg(&file)
            .spawn()
            .expect("spawn warren"),
    );
    let deadline = Instant::now() + TIMEOUT;
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let https = text
                .lines()
                .find_map(|l| l.strip_prefix("https "))
                .expect("an https listener");
            break https.parse::<std::net::SocketAddr>().unwrap().port();
        }
        assert!(Instant::now() < deadline, "warren wrote no listeners file");
        assert!(child.try_wait().unwrap().is_none(), "warren exited");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let overview = guest_get(
        agent(Some(&pki), None),
        format!("https://127.0.0.1:{port}/api/overview"),
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let overview = overview.expect("HTTPS GET /api/overview").json();
    // As RabbitMQ: with only management.ssl.* configured there is no plain HTTP listener.
    let l = listeners(&overview);
    assert!(l.contains(&format!("https:{port}")), "{l:?}");
    assert!(!l.iter().any(|l| l.starts_with("http:")), "{l:?}");
    assert_eq!(status.code(), Some(0), "warren did not stop cleanly");
}

#[test]
fn warren_names_the_management_ssl_key_and_file_it_cannot_load() {
    let pki = Pki::new("mgmt-badfiles");
    let o = pki.options(false, false);
    let port = 0;
    let conf = format!(
        "management.ssl.port = {port}\nmanagement.ssl.certfile = /nonexistent/server.pem\nmanagement.ssl.keyfile = {}\n",
        o.keyfile.display()
    );
    let out = warren(&pki.dir, &conf)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run warren");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("management.ssl.certfile /nonexistent/server.pem"),
        "{err}"
    );
    // A key file that holds no key.
    let conf = format!(
        "management.ssl.port = {port}\nmanagement.ssl.certfile = {}\nmanagement.ssl.keyfile = {}\n",
        o.certfile.display(),
        o.certfile.display()
    );
    let out = warren(&pki.dir, &conf)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run warren");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("management.ssl.keyfile {}", o.certfile.display())),
        "{err}"
    );
    // A bad value is a configuration error (exit 64) naming the key.
    let out = warren(
        &pki.dir,
        &format!("management.ssl.port = {port}\nmanagement.ssl.verify = maybe\n"),
    )
    .stderr(std::process::Stdio::piped())
    .output()
    .expect("run warren");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("management.ssl"), "{err}");
}
