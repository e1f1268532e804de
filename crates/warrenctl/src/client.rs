//! A small blocking client of Warren's management API, and the errors a command can end with,
//! each with the exit code rabbitmqctl uses for it.

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Characters left as they are in a path segment; everything else (`/` included, so that the
/// default vhost is `%2F`) is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// How a command failed. The exit codes are rabbitmqctl's (BSD sysexits).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A wrong command line (EX_USAGE).
    #[error("{0}")]
    Usage(String),
    /// An input file that is missing or not valid (EX_DATAERR).
    #[error("{0}")]
    Data(String),
    /// The management API could not be reached (EX_UNAVAILABLE).
    #[error("unable to connect to Warren's management API at {url}: {detail}. Is the broker running with its management listener there? Point warrenctl at it with --url (or WARRENCTL_URL).")]
    Unreachable { url: String, detail: String },
    /// The broker refused or could not do what was asked (EX_UNAVAILABLE, as rabbitmqctl).
    #[error("{0}")]
    Failed(String),
    /// The broker answered something unexpected (EX_SOFTWARE).
    #[error("{0}")]
    Software(String),
    /// No answer in time (EX_TEMPFAIL).
    #[error("no answer from {url} within {secs} seconds. Is the broker overloaded? Allow more time with --timeout.")]
    Timeout { url: String, secs: f64 },
    /// Wrong credentials (EX_NOPERM).
    #[error("the management API at {url} refused user '{user}': {reason}. Check --username and --password (or WARRENCTL_USERNAME and WARRENCTL_PASSWORD).")]
    Unauthorized {
        url: String,
        user: String,
        reason: String,
    },
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 64,
            CtlError::Data(_) => 65,
            CtlError::Unreachable { .. } | CtlError::Failed(_) => 69,
            CtlError::Software(_) => 70,
            CtlError::Timeout { .. } => 75,
            CtlError::Unauthorized { .. } => 77,
        }
    }
}

/// An API answer other than success: its status and RabbitMQ-style `reason`.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    user: String,
    authorization: String,
    timeout_secs: f64,
}

/// The TLS settings for an `https://` URL (rustls with ring): the CAs to trust (`--cacert`;
/// the public web CAs without it) and a client certificate (`--cert` and `--key`) for a
/// broker with `management.ssl.verify = verify_peer`.
pub fn tls_config(
    cacert: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<TlsConfig, CtlError> {
    let mut b = TlsConfig::builder();
    if let Some(path) = cacert {
        let (certs, _) = read_pem("--cacert", path)?;
        if certs.is_empty() {
            return Err(CtlError::Data(format!(
                "--cacert {}: no certificate in the file",
                path.display()
            )));
        }
        b = b.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (cert, key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            let (chain, _) = read_pem("--cert", cert)?;
            if chain.is_empty() {
                return Err(CtlError::Data(format!(
                    "--cert {}: no certificate in the file",
                    cert.display()
                )));
            }
            let Some(k) = read_pem("--key", key)?.1 else {
                return Err(CtlError::Data(format!(
                    "--key {}: no private key in the file",
                    key.display()
                )));
            };
            b = b.client_cert(Some(ClientCert::new_with_certs(&chain, k)));
        }
        _ => {
            return Err(CtlError::Usage(
                "--cert and --key go together: give both or neither".into(),
            ))
        }
    }
    Ok(b.build())
}

/// The certificates and the first private key of a PEM file.
fn read_pem(
    option: &str,
    path: &Path,
) -> Result<(Vec<Certificate<'static>>, Option<PrivateKey<'static>>), CtlError> {
    let bad =
        |e: &dyn std::fmt::Display| CtlError::Data(format!("{option} {}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(&e))?;
    let (mut certs, mut key) = (Vec::new(), None);
    for item in ureq::tls::parse_pem(&bytes) {
        match item.map_err(|e| bad(&e))? {
            PemItem::Certificate(c) => certs.push(c),
            PemItem::PrivateKey(k) if key.is_none() => key = Some(k),
            _ => {}
        }
    }
    Ok((certs, key))
}

impl Client {
    pub fn new(
        base_url: &str,
        user: &str,
        password: &str,
        timeout_secs: f64,
        tls: TlsConfig,
    ) -> Self {
        let timeout = (timeout_secs > 0.0).then(|| Duration::from_secs_f64(timeout_secs));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(timeout)
            .tls_config(tls)
            .build();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Client {
            agent: ureq::Agent::new_with_config(config),
            base: base_url.trim_end_matches('/').to_string(),
            user: user.to_string(),
            authorization: format!("Basic {token}"),
            timeout_secs,
        }
    }

    /// Sends a request to `/api{path}`. Transport failures and refused credentials are errors;
    /// any other answer is returned with its status, for the command to interpret.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Result<Value, ApiFailure>, CtlError> {
        let url = format!("{}/api{}", self.base, path);
        let sent = match method {
            Method::Get | Method::Delete => {
                let mut req = if matches!(method, Method::Get) {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                req = req.header("authorization", &self.authorization);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            Method::Post | Method::Put => {
                let req = if matches!(method, Method::Post) {
                    self.agent.post(&url)
                } else {
                    self.agent.put(&url)
                };
                let mut req = req
                    .header("authorization", &self.authorization)
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                let bytes = body.map(|b| b.to_string()).unwrap_or_default();
                req.send(bytes.as_bytes())
            }
        };
        let mut resp = sent.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                CtlError::Software(format!(
                    "{url} answered {status} with something that is not JSON ({e})"
                ))
            })?
        };
        if (200..300).contains(&status) {
            return Ok(Ok(json));
        }
        let reason = json["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP status {status}"));
        if status == 401 && json["error"] == "not_authorized" {
            return Err(CtlError::Unauthorized {
                url: self.base.clone(),
                user: self.user.clone(),
                reason,
            });
        }
        if status >= 500 {
            return Err(CtlError::Software(format!("the broker failed: {reason}")));
        }
        Ok(Err(ApiFailure { status, reason }))
    }

    /// GET that must succeed.
    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.request(Method::Get, path, None, &[])?
            .map_err(|f| CtlError::Failed(f.reason))
    }

    fn transport_error(&self, e: ureq::Error) -> CtlError {
        let url = self.base.clone();
        match e {
            ureq::Error::Timeout(_) => CtlError::Timeout {
                url,
                secs: self.timeout_secs,
            },
            ureq::Error::Io(io) if io.kind() == ErrorKind::TimedOut => CtlError::Timeout {
                url,
                secs: self.timeout_secs,
            },
            // rustls reports a refused certificate as invalid data.
            ureq::Error::Io(io) if io.kind() == ErrorKind::InvalidData && url.starts_with("https:") => {
                CtlError::Unreachable {
                    url,
                    detail: format!(
                        "TLS: {io} (trust the broker's CA with --cacert; present a client certificate with --cert and --key if the broker asks for one)"
                    ),
                }
            }
            ureq::Error::Io(io) => CtlError::Unreachable {
                url,
                detail: io_detail(&io),
            },
            ureq::Error::HostNotFound => CtlError::Unreachable {
                url,
                detail: "host not found".into(),
            },
            ureq::Error::ConnectionFailed => CtlError::Unreachable {
                url,
                detail: "connection failed".into(),
            },
            ureq::Error::BadUri(u) => CtlError::Usage(format!(
                "invalid management API URL '{u}' (expected e.g. http://127.0.0.1:15672 or https://localhost:15671)"
            )),
            other => CtlError::Unreachable {
                url,
                detail: other.to_string(),
            },
        }
    }
}

fn io_detail(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("/"), "%2F");
        assert_eq!(seg("my queue.1"), "my%20queue.1");
    }

    #[test]
    fn unreachable_broker_is_exit_69() {
        // Port 9 (discard) on loopback: nothing listens there here.
        let c = Client::new(
            "http://127.0.0.1:9",
            "guest",
            "guest",
            5.0,
            TlsConfig::default(),
        );
        let e = c.get("/overview").unwrap_err();
        assert_eq!(e.exit_code(), 69, "{e}");
    }
}
