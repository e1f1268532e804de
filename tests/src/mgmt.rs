//! The management API served in-process beside a [`TestBroker`] (plain HTTP, or HTTPS with
//! certificates from [`crate::Pki`]), HTTP clients for it, and running the `warrenctl` binary.
//!
//! As with `warren`, this library cannot name the `warrenctl` binary: the tests that run it
//! live in `crates/warrenctl/tests` and pass `env!("CARGO_BIN_EXE_warrenctl")` to
//! [`run_warrenctl`].

use crate::{Identity, Pki, TestBroker, TIMEOUT};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use warren_mgmt::{HttpsListener, Listeners};
use warren_server::tls::{acceptor_for, TlsOptions};

/// A broker with its management API (plain HTTP) on a free loopback port.
pub struct MgmtBroker {
    pub broker: TestBroker,
    pub addr: SocketAddr,
    _stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

impl MgmtBroker {
    pub async fn start() -> MgmtBroker {
        Self::on(TestBroker::start()).await
    }

    /// The management API of `broker` (one with a data directory, say).
    pub async fn on(broker: TestBroker) -> MgmtBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mgmt");
        let addr = listener.local_addr().expect("mgmt addr");
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(warren_mgmt::serve(listener, broker.broker.clone(), stop_rx));
        MgmtBroker {
            broker,
            addr,
            _stop: stop,
            server,
        }
    }

    /// Stops the management API, then the broker ([`TestBroker::stop`]), so that another
    /// broker can open its data directory.
    pub async fn stop(self) {
        let _ = self._stop.send(true);
        let _ = tokio::time::timeout(TIMEOUT, self.server).await;
        self.broker.stop();
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs warrenctl (`bin`: `env!("CARGO_BIN_EXE_warrenctl")`) against this broker's API.
    pub async fn warrenctl(&self, bin: &str, args: &[&str]) -> CtlOutput {
        let mut full = vec!["--url".to_string(), self.url()];
        full.extend(args.iter().map(|a| a.to_string()));
        run_warrenctl(bin, full).await
    }

    /// One request as guest; the status and the body as JSON.
    pub fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(
            &self.url(),
            method,
            path,
            body,
            Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
        )
    }
}

/// One HTTP request; the status and the body as JSON (null when empty).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (u16, Value) {
    try_http(base, method, path, body, auth).expect("http request")
}

/// [`http`], with a failure to connect or to read the answer (a broker that is restarting)
/// returned instead of failing the test.
pub fn try_http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> Result<(u16, Value), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let url = format!("{base}{path}");
    // An empty Authorization header is as good as none.
    let auth = auth.unwrap_or("");
    let body = body.unwrap_or(json!({})).to_string();
    let resp = match method {
        "GET" => agent.get(&url).header("authorization", auth).call(),
        "DELETE" => agent.delete(&url).header("authorization", auth).call(),
        "PUT" => agent
            .put(&url)
            .header("authorization", auth)
            .send(body.as_bytes()),
        "POST" => agent
            .post(&url)
            .header("authorization", auth)
            .send(body.as_bytes()),
        other => panic!("method {other}"),
    };
    let mut resp = resp?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON body")
    };
    Ok((status, json))
}

/// A broker with its management API on free loopback ports: HTTPS, and plain HTTP if asked.
pub struct HttpsApi {
    pub broker: TestBroker,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub stop: watch::Sender<bool>,
    pub served: JoinHandle<std::io::Result<()>>,
}

impl HttpsApi {
    pub async fn start(o: &TlsOptions, with_http: bool) -> HttpsApi {
        Self::start_with(o, with_http, warren_mgmt::https::DEFAULT_HANDSHAKE_TIMEOUT).await
    }

    pub async fn start_with(
        o: &TlsOptions,
        with_http: bool,
        handshake_timeout: Duration,
    ) -> HttpsApi {
        let broker = TestBroker::start();
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let tls = bind().await.unwrap();
        let https = tls.local_addr().unwrap();
        let plain = match with_http {
            true => Some(bind().await.unwrap()),
            false => None,
        };
        let http = plain.as_ref().map(|l| l.local_addr().unwrap());
        let listeners = Listeners {
            http: plain.into_iter().collect(),
            https: Some(HttpsListener {
                listener: tls,
                acceptor: acceptor_for(o, "management.ssl").expect("acceptor"),
                handshake_timeout,
            }),
        };
        let (stop, stop_rx) = watch::channel(false);
        let served = tokio::spawn(warren_mgmt::serve_listeners(
            listeners,
            broker.broker.clone(),
            warren_mgmt::Options::default(),
            stop_rx,
        ));
        HttpsApi {
            broker,
            https,
            http,
            stop,
            served,
        }
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https.port())
    }
}

/// A client that trusts `ca`'s CA (the public web CAs if none) and presents `id` if given.
pub fn agent(ca: Option<&Pki>, id: Option<&Identity>) -> ureq::Agent {
    let mut tls = TlsConfig::builder();
    if let Some(p) = ca {
        let root = Certificate::from_der(p.ca.der()).to_owned();
        tls = tls.root_certs(RootCerts::new_with_certs(&[root]));
    }
    if let Some(id) = id {
        let cert = Certificate::from_der(id.cert.der()).to_owned();
        let key = PrivateKey::from_pem(id.key.serialize_pem().as_bytes()).unwrap();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(TIMEOUT))
        .tls_config(tls.build())
        .build()
        .into()
}

/// What a GET answered: the status, the content type and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// A GET as guest:guest; an error is a failure to connect, to do TLS, or to read the answer.
pub async fn guest_get(agent: ureq::Agent, url: String) -> Result<Answer, String> {
    tokio::task::spawn_blocking(move || {
        let mut resp = agent
            .get(&url)
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .call()
            .map_err(|e| e.to_string())?;
        read_answer(&mut resp).map_err(|e| e.to_string())
    })
    .await
    .expect("request task")
}

/// A response's status, content type and body.
pub fn read_answer(resp: &mut ureq::http::Response<ureq::Body>) -> Result<Answer, ureq::Error> {
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.body_mut().read_to_string()?;
    Ok(Answer {
        status: resp.status().as_u16(),
        content_type,
        body,
    })
}

/// The `protocol:port` of each listener in an overview.
pub fn listeners(overview: &Value) -> Vec<String> {
    overview["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| format!("{}:{}", l["protocol"].as_str().unwrap(), l["port"]))
        .collect()
}

/// What one run of warrenctl did.
pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// The output of a run that must have succeeded.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "warrenctl failed; stderr: {}", self.stderr);
        self.stdout
    }
}

/// Runs the warrenctl binary `bin` (`env!("CARGO_BIN_EXE_warrenctl")`) with `args`, without the
/// `WARRENCTL_*` variables of the environment the tests run in.
pub async fn run_warrenctl(bin: impl AsRef<Path>, args: Vec<String>) -> CtlOutput {
    let bin = bin.as_ref().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WARRENCTL_") {
                cmd.env_remove(&key);
            }
        }
        let out = cmd.output().expect("run warrenctl");
        CtlOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("warrenctl task")
}
