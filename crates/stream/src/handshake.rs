//! The handshake (PROTOCOL.adoc, "Authentication"): peer properties, SASL handshake and
//! authenticate (PLAIN, with the broker's users), our tune and the client's, then open
//! (the vhost, its permissions and the connection limits). Anything else before open
//! closes the connection.

use crate::command::{key, Request};
use crate::connection::{Conn, Flow, Phase};
use crate::response;
use std::sync::atomic::Ordering;

impl Conn {
    pub(crate) fn handshake(&mut self, r: Request) -> Flow {
        match (self.phase, r) {
            (
                Phase::Sasl,
                Request::PeerProperties {
                    correlation_id,
                    properties,
                },
            ) => {
                tracing::debug!(peer = %self.peer, ?properties, "stream client properties");
                self.client_properties = properties;
                let version = env!("CARGO_PKG_VERSION");
                let props = [
                    ("product", "RabbitMQ"),
                    ("version", "4.0.5"),
                    ("platform", "Warren"),
                    ("warren_version", version),
                    ("copyright", "Warren contributors"),
                    ("information", "Warren, a RabbitMQ-compatible broker"),
                    ("cluster_name", "warren"),
                ];
                self.out
                    .respond(key::PEER_PROPERTIES, correlation_id, response::OK, |w| {
                        w.string_map(props.iter().map(|(k, v)| (*k, *v)))
                    });
                Flow::Continue
            }
            (Phase::Sasl, Request::SaslHandshake { correlation_id }) => {
                self.out
                    .respond(key::SASL_HANDSHAKE, correlation_id, response::OK, |w| {
                        w.u32(1);
                        w.string("PLAIN");
                    });
                Flow::Continue
            }
            (
                Phase::Sasl,
                Request::SaslAuthenticate {
                    correlation_id,
                    mechanism,
                    data,
                },
            ) => self.authenticate(correlation_id, &mechanism, &data),
            (
                Phase::Tune,
                Request::Tune {
                    frame_max,
                    heartbeat,
                },
            ) => {
                // The client's values, never above ours (0 means no limit).
                let ours = self.config.frame_max;
                self.frame_max = match (frame_max, ours) {
                    (0, o) => o,
                    (c, 0) => c,
                    (c, o) => c.min(o),
                };
                self.heartbeat.store(heartbeat, Ordering::Relaxed);
                Flow::Continue
            }
            (
                Phase::Tune,
                Request::Open {
                    correlation_id,
                    vhost,
                },
            ) => self.open(correlation_id, &vhost),
            (_, other) => {
                tracing::warn!(peer = %self.peer, command = ?std::mem::discriminant(&other), "stream connection: command before open; closing");
                self.close_with(response::UNKNOWN_FRAME, "command before open")
            }
        }
    }

    fn authenticate(&mut self, correlation_id: u32, mechanism: &str, data: &[u8]) -> Flow {
        if mechanism != "PLAIN" {
            self.out.code(
                key::SASL_AUTHENTICATE,
                correlation_id,
                response::SASL_MECHANISM_NOT_SUPPORTED,
            );
            return Flow::Continue;
        }
        // PLAIN: authzid NUL authcid NUL password.
        let mut parts = data.splitn(3, |b| *b == 0);
        let (_, user, pass) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(u), Some(p)) => (a, u, p),
            _ => {
                self.out
                    .code(key::SASL_AUTHENTICATE, correlation_id, response::SASL_ERROR);
                return self.close_with(response::SASL_ERROR, "malformed PLAIN response");
            }
        };
        let user = String::from_utf8_lossy(user).into_owned();
        let pass = String::from_utf8_lossy(pass).into_owned();
        let loopback = self.peer.ip().is_loopback() && !self.config.peers_are_remote;
        match self.broker.authenticate(&user, &pass, loopback) {
            Ok(_) => {
                self.out
                    .code(key::SASL_AUTHENTICATE, correlation_id, response::OK);
                self.user = Some(user);
                self.phase = Phase::Tune;
                let (frame_max, heartbeat) = (self.config.frame_max, self.config.heartbeat);
                self.out.send(|w| {
                    w.frame(key::TUNE, 1, |w| {
                        w.u32(frame_max);
                        w.u32(heartbeat);
                    })
                });
                Flow::Continue
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, user = %user, "stream connection: authentication failed: {}", e.text);
                let code = if e.text.contains("only connect via localhost") {
                    response::SASL_AUTHENTICATION_FAILURE_LOOPBACK
                } else {
                    response::AUTHENTICATION_FAILURE
                };
                self.out.code(key::SASL_AUTHENTICATE, correlation_id, code);
                Flow::Close
            }
        }
    }

    fn open(&mut self, correlation_id: u32, vhost: &str) -> Flow {
        let user = self.user.clone().expect("authenticated");
        let access = self.broker.vhost_access(&user, vhost);
        let slot = access
            .as_ref()
            .ok()
            .map(|_| self.broker.acquire_connection(&user, vhost, None));
        let (access, slot, vh) = match (access, slot, self.broker.vhost(vhost)) {
            (Ok(a), Some(Ok(s)), Some(v)) => (a, s, v),
            (a, s, _) => {
                let why = match (a, s) {
                    (Err(e), _) | (_, Some(Err(e))) => e.text,
                    _ => format!("vhost {vhost} not found"),
                };
                tracing::warn!(peer = %self.peer, user = %user, vhost, "stream connection refused: {why}");
                self.out.code(
                    key::OPEN,
                    correlation_id,
                    response::VIRTUAL_HOST_ACCESS_FAILURE,
                );
                return Flow::Close;
            }
        };
        self.access = Some(access);
        self.slot = Some(slot);
        self.vhost = Some(vh);
        self.phase = Phase::Open;
        let (host, port) = self.advertised();
        let port = port.to_string();
        self.out
            .respond(key::OPEN, correlation_id, response::OK, |w| {
                w.string_map(
                    [
                        ("advertised_host", host.as_str()),
                        ("advertised_port", port.as_str()),
                    ]
                    .into_iter(),
                )
            });
        self.register();
        tracing::info!(peer = %self.peer, user = %user, vhost, "stream connection opened");
        Flow::Continue
    }

    /// The host and port clients are told to connect to (metadata, open).
    pub(crate) fn advertised(&self) -> (String, u16) {
        let host = self
            .config
            .advertised_host
            .clone()
            .unwrap_or_else(|| self.local.ip().to_string());
        let port = self.config.advertised_port.unwrap_or(self.local.port());
        (host, port)
    }
}
