//! The security-related settings of `warren.conf` (TLS listeners, memory and disk alarm
//! limits) and starting what they configure: the resource monitor, the AMQPS listener and the
//! stream protocol's TLS listener. The
//! management API's HTTPS listener (`management.ssl.*`) is read here and started with the API.

use crate::config::{ConfigError, ConfigFile};
use crate::error::StartupError;
use crate::listen::ListenAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_broker::alarm::{parse_bytes, total_memory};
use warren_server::alarms::{Watermark, DEFAULT_DISK_FREE_LIMIT};
use warren_server::tls::TlsOptions;

/// The keys this module reads, for `config::KEYS`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "listeners.ssl.*",
        "AMQPS (TLS) listener (any name, several allowed): a port (on 127.0.0.1 and ::1), ip:port, [ipv6]:port or ipv6:port; 5671 in RabbitMQ's examples",
    ),
    (
        "stream.listeners.ssl.*",
        "stream protocol over TLS (any name, several allowed), same forms as listeners.ssl.*, with the ssl_options.* keys; 5551 in RabbitMQ's examples",
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
        "management.ssl.port",
        "management API over HTTPS on this port (15671 in RabbitMQ's examples)",
    ),
    (
        "management.ssl.ip",
        "management HTTPS address [default: 127.0.0.1]",
    ),
    (
        "management.ssl.certfile",
        "management HTTPS server certificate chain (PEM)",
    ),
    (
        "management.ssl.keyfile",
        "management HTTPS server private key (PEM)",
    ),
    (
        "management.ssl.cacertfile",
        "CA certificates that management HTTPS client certificates must chain to (PEM)",
    ),
    (
        "management.ssl.verify",
        "verify_peer (ask HTTPS clients for a certificate) or verify_none",
    ),
    (
        "management.ssl.fail_if_no_peer_cert",
        "true refuses HTTPS clients without a certificate (with verify_peer)",
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
    /// The AMQPS listener (`listeners.ssl.default`, `ssl_options.*`).
    pub tls: Option<(Vec<ListenAddr>, TlsOptions)>,
    /// The stream protocol over TLS (`stream.listeners.ssl.*`, `ssl_options.*`).
    pub stream_tls: Option<(Vec<ListenAddr>, TlsOptions)>,
    /// The management API's HTTPS listener (`management.ssl.*`).
    pub mgmt_tls: Option<(SocketAddr, TlsOptions)>,
    pub watermark: Watermark,
    /// Bytes.
    pub disk_free_limit: u64,
}

/// The `<prefix>.certfile`, `keyfile`, `cacertfile`, `verify` and `fail_if_no_peer_cert` keys;
/// `listener` names the key that asked for TLS, for the error when a file is missing.
fn tls_options(file: &ConfigFile, prefix: &str, listener: &str) -> Result<TlsOptions, ConfigError> {
    let path = |k: &str| -> Result<PathBuf, ConfigError> {
        let key = format!("{prefix}.{k}");
        file.get(&key)
            .map(PathBuf::from)
            .ok_or_else(|| ConfigError::Missing {
                set: listener.to_string(),
                needed: key,
            })
    };
    let verify = format!("{prefix}.verify");
    let verify_peer = match file.get(&verify) {
        None | Some("verify_none") => false,
        Some("verify_peer") => true,
        Some(_) => return Err(file.error(&verify, "expected verify_peer or verify_none")),
    };
    Ok(TlsOptions {
        certfile: path("certfile")?,
        keyfile: path("keyfile")?,
        cacertfile: file.get(&format!("{prefix}.cacertfile")).map(PathBuf::from),
        verify_peer,
        fail_if_no_peer_cert: file
            .parse_value(&format!("{prefix}.fail_if_no_peer_cert"))?
            .unwrap_or(false),
    })
}

/// `management.ssl.*`: the HTTPS listener's address (`management.ssl.ip`, 127.0.0.1 by default
/// as `management.tcp.ip`, and `management.ssl.port`) and TLS options.
fn mgmt_tls(file: &ConfigFile) -> Result<Option<(SocketAddr, TlsOptions)>, ConfigError> {
    let Some(port) = file.parse_value::<u16>("management.ssl.port")? else {
        if let Some(k) = file
            .values
            .keys()
            .find(|k| k.starts_with("management.ssl."))
        {
            return Err(ConfigError::NoManagementSslPort { key: k.clone() });
        }
        return Ok(None);
    };
    let ip = crate::listen::parse_ip(file.get("management.ssl.ip").unwrap_or("127.0.0.1"))
        .ok_or_else(|| file.error("management.ssl.ip", "expected an IPv4 or IPv6 address"))?;
    let opts = tls_options(file, "management.ssl", "management.ssl.port")?;
    Ok(Some((SocketAddr::new(ip, port), opts)))
}

pub fn settings(file: &ConfigFile) -> Result<SecuritySettings, ConfigError> {
    let ssl = file.values_under("listeners.ssl.");
    let tls = match ssl.is_empty() {
        true => None,
        false => Some((
            crate::listen::parse_all(ssl)?,
            tls_options(file, "ssl_options", "listeners.ssl.default")?,
        )),
    };
    let stream_ssl = file.values_under("stream.listeners.ssl.");
    let stream_tls = match stream_ssl.is_empty() {
        true => None,
        false => Some((
            crate::listen::parse_all(stream_ssl)?,
            tls_options(file, "ssl_options", "stream.listeners.ssl.default")?,
        )),
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
        (None, Some(r)) => (total_memory() as f64 * r) as u64,
        (None, None) => DEFAULT_DISK_FREE_LIMIT,
    };
    Ok(SecuritySettings {
        tls,
        stream_tls,
        mgmt_tls: mgmt_tls(file)?,
        watermark,
        disk_free_limit,
    })
}

/// Starts the resource monitor and, if configured, the AMQPS listeners; returns the addresses
/// they are bound to.
pub async fn start(
    s: &SecuritySettings,
    broker: &Arc<warren_broker::Broker>,
    server: Arc<warren_server::ServerConfig>,
    data_dir: &Path,
    stop: watch::Receiver<bool>,
) -> Result<Vec<SocketAddr>, StartupError> {
    warren_server::alarms::start_monitor(
        broker,
        s.watermark,
        s.disk_free_limit,
        Some(data_dir.to_path_buf()),
    );
    let mut bound = Vec::new();
    if let Some((addrs, opts)) = &s.tls {
        let acceptor = warren_server::tls::acceptor(opts).map_err(StartupError::AmqpsTls)?;
        for listener in crate::listen::bind_all(addrs, "AMQPS (listeners.ssl.*)").await? {
            let addr = listener.local_addr().map_err(StartupError::ListenerAddr)?;
            tracing::info!(listen = %addr, verify_peer = opts.verify_peer, "AMQPS listener started");
            bound.push(addr);
            tokio::spawn(warren_server::tls::serve_tls(
                listener,
                acceptor.clone(),
                broker.clone(),
                server.clone(),
                stop.clone(),
            ));
        }
    }
    Ok(bound)
}

/// The stream protocol's TLS listeners, if `stream.listeners.ssl.*` is set; returns the
/// addresses they are bound to.
pub async fn start_stream_tls(
    s: &SecuritySettings,
    broker: &Arc<warren_broker::Broker>,
    config: Arc<warren_stream::StreamConfig>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<SocketAddr>, StartupError> {
    let mut bound = Vec::new();
    if let Some((addrs, opts)) = &s.stream_tls {
        let acceptor = warren_server::tls::acceptor(opts).map_err(StartupError::AmqpsTls)?;
        let what = "the stream protocol over TLS (stream.listeners.ssl.*)";
        for listener in crate::listen::bind_all(addrs, what).await? {
            let addr = listener.local_addr().map_err(StartupError::ListenerAddr)?;
            tracing::info!(listen = %addr, verify_peer = opts.verify_peer, "stream protocol TLS listener started");
            bound.push(addr);
            tokio::spawn(warren_stream::serve_tls(
                listener,
                acceptor.clone(),
                broker.clone(),
                config.clone(),
                stop.clone(),
            ));
        }
    }
    Ok(bound)
}

/// The management API's HTTPS listener, if `management.ssl.port` is set: its certificate and
/// key are loaded (errors name the `management.ssl.*` key and the file) and its port bound.
pub async fn mgmt_https_listener(
    s: &SecuritySettings,
    handshake_timeout: std::time::Duration,
) -> Result<Option<warren_mgmt::HttpsListener>, StartupError> {
    let Some((addr, opts)) = &s.mgmt_tls else {
        return Ok(None);
    };
    let acceptor = warren_server::tls::acceptor_for(opts, "management.ssl")
        .map_err(StartupError::ManagementTls)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            addr: *addr,
            what: "the management API over HTTPS (management.ssl.port)".into(),
            source,
        })?;
    Ok(Some(warren_mgmt::HttpsListener {
        listener,
        acceptor,
        handshake_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (addrs, o) = s.tls.unwrap();
        assert_eq!(addrs[0].addr.port(), 5671);
        assert!(o.verify_peer && o.fail_if_no_peer_cert);
        assert_eq!(s.watermark, Watermark::Absolute(1 << 30));
        assert_eq!(s.disk_free_limit, 2_000_000_000);
        let f = ConfigFile::parse("listeners.ssl.default = 5671\n").unwrap();
        let e = settings(&f).err().unwrap();
        assert!(
            matches!(&e, ConfigError::Missing { set, needed }
                if set == "listeners.ssl.default" && needed == "ssl_options.certfile"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "listeners.ssl.default is set: 'ssl_options.certfile' is needed too"
        );
        let d = settings(&ConfigFile::default()).unwrap();
        assert_eq!(d.watermark, Watermark::Relative(0.6));
        assert_eq!(d.disk_free_limit, 50_000_000);
    }

    #[test]
    fn management_https_settings() {
        let f = ConfigFile::parse(
            "management.ssl.port = 15671\nmanagement.ssl.certfile = /c.pem\n\
             management.ssl.keyfile = /k.pem\nmanagement.ssl.cacertfile = /ca.pem\n\
             management.ssl.verify = verify_peer\nmanagement.ssl.fail_if_no_peer_cert = true\n",
        )
        .unwrap();
        let s = settings(&f).unwrap();
        assert!(s.tls.is_none());
        let (addr, o) = s.mgmt_tls.unwrap();
        assert_eq!(addr, "127.0.0.1:15671".parse().unwrap());
        assert_eq!(o.certfile, PathBuf::from("/c.pem"));
        assert_eq!(o.cacertfile, Some(PathBuf::from("/ca.pem")));
        assert!(o.verify_peer && o.fail_if_no_peer_cert);
        let f = ConfigFile::parse(
            "management.ssl.port = 8443\nmanagement.ssl.ip = ::\n\
             management.ssl.certfile = /c.pem\nmanagement.ssl.keyfile = /k.pem\n",
        )
        .unwrap();
        let (addr, o) = settings(&f).unwrap().mgmt_tls.unwrap();
        assert_eq!(addr, "[::]:8443".parse().unwrap());
        assert!(!o.verify_peer && !o.fail_if_no_peer_cert);
        // Each missing or bad piece is named.
        let err = |text: &str| {
            settings(&ConfigFile::parse(text).unwrap())
                .err()
                .unwrap()
                .to_string()
        };
        let e = err("management.ssl.port = 15671\nmanagement.ssl.keyfile = /k.pem\n");
        assert!(e.contains("'management.ssl.certfile' is needed"), "{e}");
        let e = settings(&ConfigFile::parse("management.ssl.certfile = /c.pem\n").unwrap());
        assert!(
            matches!(&e, Err(ConfigError::NoManagementSslPort { key }) if key == "management.ssl.certfile"),
            "{:?}",
            e.err()
        );
        let e = err(
            "management.ssl.port = 15671\nmanagement.ssl.certfile = /c.pem\n\
                     management.ssl.keyfile = /k.pem\nmanagement.ssl.verify = always\n",
        );
        assert!(
            e.contains("line 4") && e.contains("management.ssl.verify"),
            "{e}"
        );
        let e = err("management.ssl.port = 15671\nmanagement.ssl.ip = localhost\n");
        assert!(e.contains("management.ssl.ip"), "{e}");
        assert!(settings(&ConfigFile::default()).unwrap().mgmt_tls.is_none());
    }
}
