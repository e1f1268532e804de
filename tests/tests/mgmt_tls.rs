//! The management API over HTTPS (RabbitMQ's `management.ssl.*`): real TLS clients (ureq with
//! rustls, and warrenctl) against the API served by `warren_mgmt::serve_listeners`, with
//! certificates made by rcgen; and the `warren` binary started with `management.ssl.*` keys in
//! its config file.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
use warren_mgmt::{HttpsListener, Listeners};
use warren_server::tls::{acceptor_for, TlsOptions};
use warren_tests::TestBroker;
use warren_tests::{within, TIMEOUT};
use warren_tests::{Identity, Pki};

/// A broker with its management API on free loopback ports: HTTPS, and plain HTTP if asked.
struct Api {
    broker: TestBroker,
    https: SocketAddr,
    http: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    served: JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start(o: &TlsOptions, with_http: bool) -> Api {
        Self::start_with(o, with_http, warren_mgmt::https::DEFAULT_HANDSHAKE_TIMEOUT).await
    }

    async fn start_with(o: &TlsOptions, with_http: bool, handshake_timeout: Duration) -> Api {
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
        Api {
            broker,
            https,
            http,
            stop,
            served,
        }
    }

    fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https.port())
    }
}

/// A client that trusts `ca`'s CA (the public web CAs if none) and presents `id` if given.
fn agent(ca: Option<&Pki>, id: Option<&Identity>) -> ureq::Agent {
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
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        assert!(
            self.content_type.starts_with("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// A GET as guest:guest; an error is a failure to connect, to do TLS, or to read the answer.
async fn get(agent: ureq::Agent, url: String) -> Result<Answer, String> {
    tokio::task::spawn_blocking(move || {
        let mut resp = agent
            .get(&url)
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .call()
            .map_err(|e| e.to_string())?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok(Answer {
            status: resp.status().as_u16(),
            content_type,
            body,
        })
    })
    .await
    .expect("request task")
}

/// The `protocol:port` of each listener in an overview.
fn listeners(overview: &Value) -> Vec<String> {
    overview["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| format!("{}:{}", l["protocol"].as_str().unwrap(), l["port"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_to_clients_that_trust_the_ca() {
    let pki = Pki::new("mgmt-https");
    let api = Api::start(&pki.options(false, false), false).await;
    let overview = get(agent(Some(&pki), None), api.https_url("/api/overview"))
        .await
        .expect("HTTPS GET /api/overview")
        .json();
    // guest is loopback-only: accepted, so the peer address reached the auth check.
    assert_eq!(overview["rabbitmq_version"], "3.13.0");
    assert_eq!(
        listeners(&overview),
        vec![format!("https:{}", api.https.port())]
    );
    let whoami = get(agent(Some(&pki), None), api.https_url("/api/whoami"))
        .await
        .unwrap()
        .json();
    assert_eq!(whoami["name"], "guest");
    // The broker behind it is the one the API reports on.
    assert_eq!(
        overview["object_totals"]["queues"],
        api.broker
            .broker
            .vhosts()
            .iter()
            .map(|v| v.queue_count())
            .sum::<usize>()
    );
    // Wrong credentials get the API's 401, over TLS too.
    let a = agent(Some(&pki), None);
    let url = api.https_url("/api/overview");
    let status = tokio::task::spawn_blocking(move || {
        a.get(&url)
            .header("authorization", "Basic Z3Vlc3Q6d3Jvbmc=")
            .call()
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap()
    .expect("answer");
    assert_eq!(status, 401);
    // A client that does not trust the server's CA does not get through the handshake.
    let stranger = Pki::new("mgmt-stranger");
    let e = get(agent(Some(&stranger), None), api.https_url("/api/overview"))
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_https_port_fails() {
    let pki = Pki::new("mgmt-plain");
    let api = Api::start(&pki.options(false, false), false).await;
    let url = format!("http://127.0.0.1:{}/api/overview", api.https.port());
    let r = get(agent(None, None), url).await;
    assert!(r.is_err(), "plain HTTP answered on the HTTPS port: {r:?}");
    // The listener goes on serving HTTPS.
    get(agent(Some(&pki), None), api.https_url("/api/overview"))
        .await
        .expect("HTTPS after a plain-HTTP attempt")
        .json();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_with_fail_if_no_peer_cert_requires_a_valid_client_certificate() {
    let pki = Pki::new("mgmt-strict");
    let api = Api::start(&pki.options(true, true), false).await;
    let url = api.https_url("/api/overview");
    let e = get(agent(Some(&pki), None), url.clone())
        .await
        .expect_err("a client without a certificate is refused");
    assert!(!e.is_empty());
    let id = pki.client("ops");
    get(agent(Some(&pki), Some(&id)), url.clone())
        .await
        .expect("a client certificate from the trusted CA is accepted")
        .json();
    let rogue = Pki::new("mgmt-rogue").client("ops");
    get(agent(Some(&pki), Some(&rogue)), url)
        .await
        .expect_err("a certificate from another CA is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_without_fail_if_no_peer_cert_makes_certificates_optional() {
    let pki = Pki::new("mgmt-optional");
    let api = Api::start(&pki.options(true, false), false).await;
    let url = api.https_url("/api/overview");
    get(agent(Some(&pki), None), url.clone())
        .await
        .expect("no certificate is fine")
        .json();
    get(agent(Some(&pki), Some(&pki.client("ops"))), url.clone())
        .await
        .expect("a valid certificate is fine")
        .json();
    let rogue = Pki::new("mgmt-rogue2").client("ops");
    get(agent(Some(&pki), Some(&rogue)), url)
        .await
        .expect_err("an invalid certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_disconnected_after_the_handshake_timeout() {
    let pki = Pki::new("mgmt-silent");
    let timeout = Duration::from_millis(300);
    let api = Api::start_with(&pki.options(false, false), false, timeout).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(api.https).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("the server closes a silent connection", s.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the server sent something to a silent client");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_https_serve_the_same_api_and_stop_together() {
    let pki = Pki::new("mgmt-both");
    let api = Api::start(&pki.options(false, false), true).await;
    let http = api.http.unwrap();
    let plain = get(agent(None, None), format!("http://{http}/api/overview"))
        .await
        .expect("plain HTTP")
        .json();
    let mut want = vec![
        format!("http:{}", http.port()),
        format!("https:{}", api.https.port()),
    ];
    want.sort();
    let mut got = listeners(&plain);
    got.sort();
    assert_eq!(got, want);
    // A vhost made through one listener is seen through the other.
    let a = agent(None, None);
    let url = format!("http://{http}/api/vhosts/both-listeners");
    let status = tokio::task::spawn_blocking(move || {
        a.put(&url)
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .send(&b"{}"[..])
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap()
    .expect("PUT vhost");
    assert_eq!(status, 201);
    let vhost = get(
        agent(Some(&pki), None),
        api.https_url("/api/vhosts/both-listeners"),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(vhost["name"], "both-listeners");
    // Stopping ends both listeners, and serve_listeners returns.
    api.stop.send(true).unwrap();
    within("serve_listeners returns", api.served)
        .await
        .expect("serve task")
        .expect("served without error");
    assert!(tokio::net::TcpStream::connect(api.https).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

/// Runs warrenctl with `args`; exit code, stdout, stderr.
async fn warrenctl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(warren_tests::built_binary("warrenctl"))
            .args(&args)
            .env_remove("WARRENCTL_URL")
            .env_remove("WARRENCTL_CACERT")
            .env_remove("WARRENCTL_CERT")
            .env_remove("WARRENCTL_KEY")
            .output()
            .expect("run warrenctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warrenctl_over_https_with_cacert_and_a_client_certificate() {
    let pki = Pki::new("mgmt-ctl");
    let api = Api::start(&pki.options(true, true), false).await;
    let url = api.https_url("");
    let ca = pki.ca_file();
    let (cert, key) = pki.client("ops").write(&pki.dir, "ops");
    let (code, out, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-q",
        "list_vhosts",
    ]))
    .await;
    assert_eq!((code, out.as_str()), (0, "name\n/\n"), "stderr: {err}");
    let (code, out, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "status",
    ]))
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.contains(&format!(
            "port: {}, protocol: https, purpose: HTTP API over TLS (HTTPS)",
            api.https.port()
        )),
        "{out}"
    );
    // Without the client certificate: refused, exit 69 and a hint.
    let (code, _, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "list_vhosts",
    ]))
    .await;
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("--cert"), "{err}");
    // Without --cacert the broker's certificate is not trusted.
    let (code, _, err) = warrenctl(strings(&["--url", &url, "list_vhosts"])).await;
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("--cacert"), "{err}");
    // Bad files are named.
    let (code, _, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        "/nonexistent/ca.pem",
        "list_vhosts",
    ]))
    .await;
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--cacert /nonexistent/ca.pem"), "{err}");
    let (code, _, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cert",
        cert.to_str().unwrap(),
        "list_vhosts",
    ]))
    .await;
    assert_eq!(code, 64, "{err}");
}

/// Writes `conf` as a config file in `dir`; the `warren` command that uses it, with its AMQP
/// listener on a free port.
fn warren(dir: &Path, conf: &str) -> Command {
    let path = dir.join("warren.conf");
    std::fs::write(&path, conf).unwrap();
    let mut c = Command::new(warren_tests::built_binary("warren"));
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
    let mut child = warren(&pki.dir, &conf)
        .arg("--listeners-file")
        .arg(&file)
        .spawn()
        .expect("spawn warren");
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
    let overview = get(
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
