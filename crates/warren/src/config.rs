//! `warren.conf`: settings in rabbitmq.conf's `key = value` style. Command-line flags and
//! environment variables override the file; the file overrides the defaults. An unknown key
//! or a bad value stops startup with the line, the key and what is allowed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every key the file accepts, with what it takes (shown in errors and `--help`).
pub const KEYS: &[(&str, &str)] = &[
    (
        "listeners.tcp.*",
        "AMQP listener (any name, several allowed): a port (on 127.0.0.1 and ::1), ip:port, [ipv6]:port or ipv6:port; 'listeners.tcp = none' for none",
    ),
    ("listeners.tcp", "'none': no plain AMQP listener"),
    (
        "stream.listeners.tcp.*",
        "stream protocol listener (any name, several allowed), same forms as listeners.tcp.*; 'stream.listeners.tcp = none' for none [default: 5552 on 127.0.0.1 and ::1, skipped with a warning if taken]",
    ),
    ("stream.listeners.tcp", "'none': no stream protocol listener"),
    (
        "stream.advertised_host",
        "host the stream protocol tells clients to connect to (metadata) [default: the address the client connected to]",
    ),
    (
        "stream.advertised_port",
        "port the stream protocol tells clients to connect to [default: the listener's]",
    ),
    (
        "stream.frame_max",
        "largest stream protocol frame in bytes [default: 1048576]",
    ),
    (
        "stream.initial_frame_max",
        "largest stream protocol frame before open, in bytes [default: 8192]",
    ),
    (
        "stream.heartbeat",
        "stream protocol heartbeat in seconds (0 disables) [default: 60]",
    ),
    ("management.tcp.port", "management API port"),
    (
        "management.tcp.ip",
        "management API address, IPv4 or IPv6 [default: 127.0.0.1 and ::1]",
    ),
    ("prometheus.tcp.port", "Prometheus metrics port [default: 15692]"),
    (
        "prometheus.tcp.ip",
        "Prometheus metrics address, IPv4 or IPv6 [default: 127.0.0.1 and ::1]",
    ),
    (
        "prometheus.return_per_object_metrics",
        "true: /metrics gives one series per queue, as /metrics/per-object",
    ),
    (
        "collect_statistics_interval",
        "milliseconds between samples of message rates [default: 5000]",
    ),
    ("data_dir", "data directory (definitions and messages)"),
    (
        "quorum_queues.replicated",
        "true: each quorum queue is a Raft group on the node's write-ahead log, confirmed on commit [default: false]",
    ),
    ("default_user", "user created on first start"),
    ("default_pass", "password of default_user"),
    ("default_vhost", "vhost created on first start"),
    (
        "default_queue_type",
        "type of the queues declared without x-queue-type in vhosts that set none: classic, quorum or stream [default: classic]",
    ),
    (
        "loopback_users",
        "'none' lets default_user connect from anywhere; or a user name",
    ),
    ("heartbeat", "heartbeat timeout in seconds (0 disables)"),
    ("frame_max", "largest frame in bytes (4096..=1048576)"),
    ("channel_max", "most channels per connection (1..=65535)"),
    ("max_message_size", "largest message body in bytes"),
    (
        "connection_max",
        "most client connections on this node (no limit if unset)",
    ),
    (
        "handshake_timeout",
        "milliseconds a new connection has to complete the AMQP handshake",
    ),
    (
        "consumer_timeout",
        "delivery-acknowledgement timeout in milliseconds (0 disables)",
    ),
    (
        "consumer_timeout_action",
        "close_channel (as RabbitMQ) or cancel_consumer",
    ),
    ("log.console.level", "error, warning, info, debug"),
    ("log.console.formatter", "plaintext or json"),
];

/// A key of the list matches itself, and `prefix.*` matches any `prefix.<name>`.
fn key_matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.len() > prefix.len() && key.starts_with(prefix),
        None => pattern == key,
    }
}

/// [`KEYS`] and those of the modules that read their own keys.
fn all_keys() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    KEYS.iter()
        .chain(crate::security::KEYS)
        .chain(crate::cluster::KEYS)
}

/// A line of `warren.conf` that is not a setting Warren knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: expected `key = value`, got `{text}`")]
    Syntax { line: usize, text: String },
    #[error("line {line}: unknown key '{key}'; known keys: {}", known_keys())]
    UnknownKey { line: usize, key: String },
    /// `loopback_users.<name>` with something else than `true` or `false`.
    #[error("line {line}: '{key}' takes true or false")]
    NotBoolean { line: usize, key: String },
}

/// What is wrong with the settings (flags, environment, `warren.conf`): each error names the
/// setting, its line when it came from the file, and what it takes.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    /// A value from the file that its key does not take.
    #[error("line {line}: bad value '{value}' for '{key}': {expected}")]
    BadValue {
        line: usize,
        key: String,
        value: String,
        expected: String,
    },
    /// A value from a flag or the environment that the setting does not take.
    #[error("'{key}': {expected}")]
    BadSetting { key: String, expected: String },
    /// A listener setting (`listeners.tcp.*`, `--listen`, …) that is not an address.
    #[error(
        "{key}: '{value}' is not a listener address: expected a port, ip:port, [ipv6]:port or \
         ipv6:port"
    )]
    BadListener { key: String, value: String },
    /// A setting that needs another one (a TLS listener needs its certificate and key).
    #[error("{set} is set: '{needed}' is needed too")]
    Missing { set: String, needed: String },
    /// `management.ssl.*` keys without `management.ssl.port`.
    #[error(
        "'{key}' is set but 'management.ssl.port' is not: set it (RabbitMQ's usual port is \
         15671) to serve the management API over HTTPS"
    )]
    NoManagementSslPort { key: String },
    #[error(
        "bad log level '{level}' (--log-level, WARREN_LOG, log.console.level): {source}; \
         use error, warn, info or debug, or a tracing filter such as info,warren_server=debug"
    )]
    LogLevel {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

fn known_keys() -> String {
    all_keys().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Default)]
pub struct ConfigFile {
    pub values: BTreeMap<String, (usize, String)>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut values = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (k, v) = line.split_once('=').ok_or_else(|| ParseError::Syntax {
                line: n,
                text: line.to_string(),
            })?;
            let (k, v) = (k.trim(), v.trim());
            // rabbitmq.conf's loopback_users.<name> = false form.
            let key = if k.starts_with("loopback_users.") {
                "loopback_users"
            } else {
                k
            };
            if !all_keys().any(|(name, _)| key_matches(name, key)) {
                return Err(ParseError::UnknownKey {
                    line: n,
                    key: k.to_string(),
                });
            }
            let v = if key == "loopback_users" && k != key {
                // loopback_users.guest = false removes guest from the loopback-only list.
                match v {
                    "false" => "none".to_string(),
                    "true" => k["loopback_users.".len()..].to_string(),
                    _ => {
                        return Err(ParseError::NotBoolean {
                            line: n,
                            key: k.to_string(),
                        })
                    }
                }
            } else {
                v.to_string()
            };
            values.insert(key.to_string(), (n, v));
        }
        Ok(ConfigFile { values })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(_, v)| v.as_str())
    }

    /// The keys under `prefix` with their values (`listeners.tcp.` gives every named
    /// listener), in key order.
    pub fn values_under(&self, prefix: &str) -> Vec<(&str, &str)> {
        self.values
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (_, v))| (k.as_str(), v.as_str()))
            .collect()
    }

    /// A typed value; a bad one names the line, the key and what it takes.
    pub fn parse_value<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        let Some((line, v)) = self.values.get(key) else {
            return Ok(None);
        };
        v.parse().map(Some).map_err(|_| {
            let what = all_keys()
                .find(|(k, _)| *k == key)
                .map(|(_, w)| *w)
                .unwrap_or("");
            ConfigError::BadValue {
                line: *line,
                key: key.to_string(),
                value: v.clone(),
                expected: format!("expected {what}"),
            }
        })
    }

    /// A value `key` does not take: its line and value if it came from the file (else it came
    /// from a flag or the environment), and what is wrong.
    pub fn error(&self, key: &str, detail: &str) -> ConfigError {
        match self.values.get(key) {
            Some((line, v)) => ConfigError::BadValue {
                line: *line,
                key: key.to_string(),
                value: v.clone(),
                expected: detail.to_string(),
            },
            None => ConfigError::BadSetting {
                key: key.to_string(),
                expected: detail.to_string(),
            },
        }
    }
}

/// The help text's list of keys.
pub fn keys_help() -> String {
    let mut s =
        String::from("Config file keys (warren.conf, rabbitmq.conf style `key = value`):\n");
    for (k, what) in all_keys() {
        s.push_str(&format!("  {k:<35} {what}\n"));
    }
    s.push_str(
        "Precedence: command-line flags > WARREN_* environment variables > config file > defaults.",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rabbitmq_style_lines() {
        let c =
            ConfigFile::parse("# comment\nheartbeat = 30\nloopback_users.guest = false\n").unwrap();
        assert_eq!(c.parse_value::<u16>("heartbeat").unwrap(), Some(30));
        assert_eq!(c.get("loopback_users"), Some("none"));
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_line() {
        let e = ConfigFile::parse("heartbeat = 1\nhartbeat = 2\n").unwrap_err();
        assert_eq!(
            e,
            ParseError::UnknownKey {
                line: 2,
                key: "hartbeat".into()
            }
        );
        let text = e.to_string();
        assert!(
            text.starts_with("line 2: unknown key 'hartbeat'; known keys: listeners.tcp.*, "),
            "{text}"
        );
        let c = ConfigFile::parse("\nframe_max = lots\n").unwrap();
        let e = c.parse_value::<u32>("frame_max").unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadValue { line: 2, key, value, .. }
                if key == "frame_max" && value == "lots"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "line 2: bad value 'lots' for 'frame_max': expected largest frame in bytes (4096..=1048576)"
        );
        // Not from the file: the setting's name alone.
        assert_eq!(
            c.error("channel_max", "must be at least 1").to_string(),
            "'channel_max': must be at least 1"
        );
    }

    #[test]
    fn lines_that_are_not_settings() {
        assert_eq!(
            ConfigFile::parse("# ok\nheartbeat 30\n").unwrap_err(),
            ParseError::Syntax {
                line: 2,
                text: "heartbeat 30".into()
            }
        );
        let e = ConfigFile::parse("loopback_users.guest = maybe\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1: 'loopback_users.guest' takes true or false"
        );
        // load names the file.
        let dir = std::env::temp_dir().join(format!("warren-conf-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.conf");
        std::fs::write(&path, "hartbeat = 2\n").unwrap();
        let e = ConfigFile::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { path: p, source: ParseError::UnknownKey { line: 1, .. } } if *p == path),
            "{e:?}"
        );
        assert!(e.to_string().starts_with(&format!(
            "{}: line 1: unknown key 'hartbeat'",
            path.display()
        )));
        let e = ConfigFile::load(&dir.join("missing.conf")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("cannot read config file "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
