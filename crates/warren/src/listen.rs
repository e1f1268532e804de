//! Listener addresses as `rabbitmq.conf` writes them (`listeners.tcp.* = 5672`,
//! `127.0.0.1:5672`, `::1:5672`, or `[::1]:5672`), binding them, and the listeners file that
//! tells scripts and tests which addresses were actually bound (port 0 picks a free one).
//!
//! A bare port means loopback on both families (127.0.0.1 and ::1): Warren listens on loopback
//! only by default (RabbitMQ listens on every interface), and a client that resolves
//! `localhost` to `::1` (Node.js since v17) must still reach it. On a machine without IPv6 the
//! `::1` half of a bare port is skipped with a warning; an address written out is required.

use crate::config::ConfigError;
use crate::error::StartupError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use tokio::net::TcpListener;

/// One address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub addr: SocketAddr,
    /// Skipped with a warning if the machine cannot bind it (the `::1` of a bare port).
    pub optional: bool,
}

/// Loopback on both families: 127.0.0.1 and (where the machine has IPv6) ::1.
pub fn loopback(port: u16) -> Vec<ListenAddr> {
    vec![
        ListenAddr {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            optional: false,
        },
        ListenAddr {
            addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
            optional: true,
        },
    ]
}

/// Parses one listener value: a port, `ipv4:port`, `[ipv6]:port` or `ipv6:port`.
pub fn parse(value: &str) -> Option<Vec<ListenAddr>> {
    let v = value.trim();
    if let Ok(port) = v.parse::<u16>() {
        return Some(loopback(port));
    }
    let addr = match v.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            // RabbitMQ's `::1:5672`: the port follows the last colon.
            let (ip, port) = v.rsplit_once(':')?;
            SocketAddr::new(ip.parse::<Ipv6Addr>().ok()?.into(), port.parse().ok()?)
        }
    };
    Some(vec![ListenAddr {
        addr,
        optional: false,
    }])
}

/// An IP address as a setting gives it: `127.0.0.1`, `::1` or `[::1]`.
pub fn parse_ip(value: &str) -> Option<IpAddr> {
    let v = value.trim();
    let v = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(v);
    v.parse().ok()
}

/// Parses several settings (`(key, value)`, each value of `parse`'s forms); an error names the
/// key.
pub fn parse_all<'a>(
    settings: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<ListenAddr>, ConfigError> {
    let mut out = Vec::new();
    for (key, v) in settings {
        let addrs = parse(v).ok_or_else(|| ConfigError::BadListener {
            key: key.to_string(),
            value: v.to_string(),
        })?;
        for a in addrs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Binds every address; `what` names the listener in errors and logs. A bare port's `::1` is
/// skipped where the machine has no IPv6.
/// Binds `addrs` as [`bind_all`] does when a setting chose them; when they are the default
/// (`is_default`), an address that will not bind is skipped with a warning (`skipped` says
/// what is lost and how to choose another port) instead of stopping the start.
pub async fn bind_unless_taken_default(
    addrs: &[ListenAddr],
    is_default: bool,
    what: &str,
    skipped: &str,
) -> Result<Vec<TcpListener>, StartupError> {
    if !is_default {
        return bind_all(addrs, what).await;
    }
    let mut out = Vec::new();
    for a in addrs {
        match bind_all(std::slice::from_ref(a), what).await {
            Ok(l) => out.extend(l),
            Err(e) => tracing::warn!("{e}; {skipped}"),
        }
    }
    Ok(out)
}

pub async fn bind_all(addrs: &[ListenAddr], what: &str) -> Result<Vec<TcpListener>, StartupError> {
    let mut out = Vec::new();
    for a in addrs {
        match TcpListener::bind(a.addr).await {
            Ok(l) => out.push(l),
            Err(e) if a.optional && no_such_address(&e) => {
                tracing::warn!(addr = %a.addr, error = %e, "not listening for {what} on IPv6 loopback: this machine has none");
            }
            Err(source) => {
                return Err(StartupError::Bind {
                    addr: a.addr,
                    what: what.to_string(),
                    source,
                })
            }
        }
    }
    Ok(out)
}

fn no_such_address(e: &std::io::Error) -> bool {
    // EADDRNOTAVAIL (no ::1 configured) or EAFNOSUPPORT (IPv6 disabled).
    matches!(e.raw_os_error(), Some(99) | Some(97))
        || e.kind() == std::io::ErrorKind::AddrNotAvailable
}

/// Writes `lines` (`<protocol> <address>`, one per bound listener) to `path` atomically, so a
/// reader never sees a partial file.
pub fn write_listeners_file(path: &Path, lines: &[(&str, SocketAddr)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (protocol, addr) in lines {
        text.push_str(&format!("{protocol} {addr}\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(v: &str) -> Vec<String> {
        parse(v)
            .unwrap()
            .iter()
            .map(|a| a.addr.to_string())
            .collect()
    }

    #[test]
    fn rabbitmq_conf_listener_forms() {
        assert_eq!(addrs("5672"), vec!["127.0.0.1:5672", "[::1]:5672"]);
        assert_eq!(addrs("127.0.0.1:5673"), vec!["127.0.0.1:5673"]);
        assert_eq!(addrs("0.0.0.0:5672"), vec!["0.0.0.0:5672"]);
        assert_eq!(addrs("[::1]:5672"), vec!["[::1]:5672"]);
        assert_eq!(addrs("::1:5672"), vec!["[::1]:5672"]);
        assert_eq!(addrs("[::]:5672"), vec!["[::]:5672"]);
        assert_eq!(addrs(":::5672"), vec!["[::]:5672"]);
        assert!(parse("localhost:5672").is_none());
        assert_eq!(parse_ip("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(parse_ip("::"), Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
        assert_eq!(parse_ip("127.0.0.1"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(parse("127.0.0.1").is_none());
        assert!(parse("70000").is_none());
        // Only the ::1 of a bare port is optional.
        assert!(parse("5672").unwrap()[1].optional);
        assert!(!parse("[::1]:5672").unwrap()[0].optional);
        let all = parse_all(["5672", "127.0.0.1:5672", "[::]:5673"].map(|v| ("k", v))).unwrap();
        assert_eq!(all.len(), 3);
        let e = parse_all([("listeners.tcp.x", "nope")]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadListener { key, value } if key == "listeners.tcp.x" && value == "nope"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "listeners.tcp.x: 'nope' is not a listener address: expected a port, ip:port, [ipv6]:port or ipv6:port"
        );
    }

    /// A port in use: the error names the listener and says what to do.
    #[tokio::test]
    async fn a_port_in_use_is_a_bind_error_with_a_hint() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let want = [ListenAddr {
            addr,
            optional: false,
        }];
        let e = bind_all(&want, "AMQP (--listen)").await.err().unwrap();
        assert!(
            matches!(&e, StartupError::Bind { addr: a, source, .. }
                if *a == addr && source.kind() == std::io::ErrorKind::AddrInUse),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot listen on {addr} for AMQP (--listen): "))
                && text.ends_with("is another broker running there? Choose another address in the listener settings (see `warren --help`)"),
            "{text}"
        );
        assert_eq!(e.exit_code(), 1);
    }
}
