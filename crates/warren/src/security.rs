//! The security-related settings of `warren.conf` (TLS listener, memory and disk alarm
//! limits) and starting what they configure: the resource monitor and the AMQPS listener.

use crate::config::ConfigFile;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_server::alarms::{Watermark, DEFAULT_DISK_FREE_LIMIT};
use warren_server::tls::TlsOptions;

/// The keys this module reads, for `config::KEYS`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "listeners.ssl.default",
        "AMQPS (TLS) listener: a port (on 127.0.0.1) or ip:port; 5671 in RabbitMQ's examples",
    ),
    ("ssl_options.certfile", "server certificate chain (PEM)"),
    ("ssl_options.keyfile", "server private key (PEM)"),
    (
        "ssl_options.cacertfile",
        "CA certificates that client certificates must chain to (PEM)",
    ),
    (
        "ssl_options.verify",
        "verify_peer (ask clients for a certificate) or verify_none",
    ),
    (
        "ssl_options.fail_if_no_peer_cert",
        "true refuses clients without a certificate (with verify_peer)",
    ),
    (
        "vm_memory_high_watermark.relative",
        "memory alarm above this fraction of RAM (default 0.6)",
    ),
    (
        "vm_memory_high_watermark.absolute",
        "memory alarm above this many bytes (units: kB MB GB, KiB MiB GiB)",
    ),
    (
        "disk_free_limit.absolute",
        "disk alarm below this much free space (default 50MB)",
    ),
    (
        "disk_free_limit.relative",
        "disk alarm below this multiple of the RAM size",
    ),
];

pub struct SecuritySettings {
    pub tls: Option<(SocketAddr, TlsOptions)>,
    pub watermark: Watermark,
    /// Bytes.
    pub disk_free_limit: u64,
}

/// `2GB`, `512MiB`, `1000000` → bytes.
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

fn address(file: &ConfigFile, key: &str) -> Result<Option<SocketAddr>, String> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    match v.parse::<u16>() {
        Ok(port) => Ok(Some(SocketAddr::from(([127, 0, 0, 1], port)))),
        Err(_) => v
            .parse()
            .map(Some)
            .map_err(|_| file.error(key, "expected a port or ip:port")),
    }
}

pub fn settings(file: &ConfigFile) -> Result<SecuritySettings, String> {
    let tls = match address(file, "listeners.ssl.default")? {
        None => None,
        Some(addr) => {
            let path = |k: &str| -> Result<PathBuf, String> {
                file.get(k)
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("listeners.ssl.default is set: '{k}' is needed too"))
            };
            let verify_peer = match file.get("ssl_options.verify") {
                None | Some("verify_none") => false,
                Some("verify_peer") => true,
                Some(_) => {
                    return Err(
                        file.error("ssl_options.verify", "expected verify_peer or verify_none")
                    )
                }
            };
            Some((
                addr,
                TlsOptions {
                    certfile: path("ssl_options.certfile")?,
                    keyfile: path("ssl_options.keyfile")?,
                    cacertfile: file.get("ssl_options.cacertfile").map(PathBuf::from),
                    verify_peer,
                    fail_if_no_peer_cert: file
                        .parse_value("ssl_options.fail_if_no_peer_cert")?
                        .unwrap_or(false),
                },
            ))
        }
    };
    let watermark = match (
        file.parse_value::<f64>("vm_memory_high_watermark.relative")?,
        file.get("vm_memory_high_watermark.absolute"),
    ) {
        (_, Some(abs)) => Watermark::Absolute(parse_bytes(abs).ok_or_else(|| {
            file.error(
                "vm_memory_high_watermark.absolute",
                "expected bytes, e.g. 2GB",
            )
        })?),
        (Some(r), None) if r > 0.0 => Watermark::Relative(r),
        (Some(_), None) => {
            return Err(file.error("vm_memory_high_watermark.relative", "must be above 0"))
        }
        (None, None) => Watermark::default(),
    };
    let disk_free_limit = match (
        file.get("disk_free_limit.absolute"),
        file.parse_value::<f64>("disk_free_limit.relative")?,
    ) {
        (Some(abs), _) => parse_bytes(abs)
            .ok_or_else(|| file.error("disk_free_limit.absolute", "expected bytes, e.g. 1GB"))?,
        (None, Some(r)) => (warren_server::alarms::total_memory() as f64 * r) as u64,
        (None, None) => DEFAULT_DISK_FREE_LIMIT,
    };
    Ok(SecuritySettings {
        tls,
        watermark,
        disk_free_limit,
    })
}

/// Starts the resource monitor and, if configured, the AMQPS listener.
pub async fn start(
    s: &SecuritySettings,
    broker: &Arc<warren_broker::Broker>,
    server: Arc<warren_server::ServerConfig>,
    data_dir: &Path,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    warren_server::alarms::start_monitor(
        broker,
        s.watermark,
        s.disk_free_limit,
        Some(data_dir.to_path_buf()),
    );
    if let Some((addr, opts)) = &s.tls {
        let acceptor = warren_server::tls::acceptor(opts)
            .map_err(|e| anyhow::anyhow!("TLS configuration: {e}"))?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for AMQPS (listeners.ssl.default): {e}")
        })?;
        tracing::info!(listen = %addr, verify_peer = opts.verify_peer, "AMQPS listener started");
        tokio::spawn(warren_server::tls::serve_tls(
            listener,
            acceptor,
            broker.clone(),
            server,
            stop,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units_as_rabbitmq() {
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("50MB"), Some(50_000_000));
        assert_eq!(parse_bytes("lots"), None);
    }

    #[test]
    fn tls_and_alarm_settings() {
        let f = ConfigFile::parse(
            "listeners.ssl.default = 5671\nssl_options.certfile = /c.pem\nssl_options.keyfile = /k.pem\n\
             ssl_options.cacertfile = /ca.pem\nssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\nvm_memory_high_watermark.absolute = 1GiB\n\
             disk_free_limit.absolute = 2GB\n",
        )
        .unwrap();
        let s = settings(&f).unwrap();
        let (addr, o) = s.tls.unwrap();
        assert_eq!(addr.port(), 5671);
        assert!(o.verify_peer && o.fail_if_no_peer_cert);
        assert_eq!(s.watermark, Watermark::Absolute(1 << 30));
        assert_eq!(s.disk_free_limit, 2_000_000_000);
        let f = ConfigFile::parse("listeners.ssl.default = 5671\n").unwrap();
        assert!(settings(&f).err().unwrap().contains("ssl_options.certfile"));
        let d = settings(&ConfigFile::default()).unwrap();
        assert_eq!(d.watermark, Watermark::Relative(0.6));
        assert_eq!(d.disk_free_limit, 50_000_000);
    }
}
