//! `warren.conf`: settings in rabbitmq.conf's `key = value` style. Command-line flags and
//! environment variables override the file; the file overrides the defaults. An unknown key
//! or a bad value stops startup with the line, the key and what is allowed.

use std::collections::BTreeMap;
use std::path::Path;

/// Every key the file accepts, with what it takes (shown in errors and `--help`).
pub const KEYS: &[(&str, &str)] = &[
    (
        "listeners.tcp.*",
        "AMQP listener (any name, several allowed): a port (on 127.0.0.1 and ::1), ip:port, [ipv6]:port or ipv6:port; 'listeners.tcp = none' for none",
    ),
    ("listeners.tcp", "'none': no plain AMQP listener"),
    ("management.tcp.port", "management API port"),
    (
        "management.tcp.ip",
        "management API address, IPv4 or IPv6 [default: 127.0.0.1 and ::1]",
    ),
    ("data_dir", "data directory (definitions and messages)"),
    ("default_user", "user created on first start"),
    ("default_pass", "password of default_user"),
    ("default_vhost", "vhost created on first start"),
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
    KEYS.iter().chain(crate::security::KEYS)
}

#[derive(Debug, Default)]
pub struct ConfigFile {
    pub values: BTreeMap<String, (usize, String)>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {n}: expected `key = value`, got `{line}`"))?;
            let (k, v) = (k.trim(), v.trim());
            // rabbitmq.conf's loopback_users.<name> = false form.
            let key = if k.starts_with("loopback_users.") {
                "loopback_users"
            } else {
                k
            };
            if !all_keys().any(|(name, _)| key_matches(name, key)) {
                let known: Vec<&str> = all_keys().map(|(k, _)| *k).collect();
                return Err(format!(
                    "line {n}: unknown key '{k}'; known keys: {}",
                    known.join(", ")
                ));
            }
            let v = if key == "loopback_users" && k != key {
                // loopback_users.guest = false removes guest from the loopback-only list.
                match v {
                    "false" => "none".to_string(),
                    "true" => k["loopback_users.".len()..].to_string(),
                    _ => return Err(format!("line {n}: '{k}' takes true or false")),
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
    pub fn parse_value<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        let Some((line, v)) = self.values.get(key) else {
            return Ok(None);
        };
        v.parse().map(Some).map_err(|_| {
            let what = all_keys()
                .find(|(k, _)| *k == key)
                .map(|(_, w)| *w)
                .unwrap_or("");
            format!("line {line}: bad value '{v}' for '{key}': expected {what}")
        })
    }

    pub fn error(&self, key: &str, detail: &str) -> String {
        match self.values.get(key) {
            Some((line, v)) => format!("line {line}: bad value '{v}' for '{key}': {detail}"),
            None => format!("'{key}': {detail}"),
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
        assert!(e.starts_with("line 2: unknown key 'hartbeat'"), "{e}");
        let c = ConfigFile::parse("\nframe_max = lots\n").unwrap();
        let e = c.parse_value::<u32>("frame_max").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("frame_max") && e.contains("largest frame"),
            "{e}"
        );
    }
}
