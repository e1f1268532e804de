//! The Prometheus endpoint in tests: served in-process beside a [`TestBroker`]
//! ([`MetricsBroker`]), scraped and parsed ([`scrape`], [`Exposition`]), and a real Prometheus
//! server ([`PrometheusServer`], Debian's `prometheus` package) that scrapes Warren and answers
//! PromQL through its HTTP API.

use crate::{TempDir, TestBroker};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A broker with its Prometheus endpoint on a free loopback port.
pub struct MetricsBroker {
    pub broker: TestBroker,
    pub addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

impl MetricsBroker {
    pub async fn start() -> MetricsBroker {
        Self::start_with(warren_mgmt::prometheus::Options::default()).await
    }

    pub async fn start_with(options: warren_mgmt::prometheus::Options) -> MetricsBroker {
        let broker = TestBroker::start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the metrics listener");
        let addr = listener.local_addr().expect("metrics addr");
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(warren_mgmt::prometheus::serve(
            vec![listener],
            broker.broker.clone(),
            options,
            stop_rx,
        ));
        MetricsBroker {
            broker,
            addr,
            _stop: stop,
        }
    }

    /// GET `path` (`/metrics`, `/metrics/per-object`).
    pub async fn scrape(&self, path: &str) -> Scrape {
        scrape(self.addr, path).await
    }
}

/// What a GET of a metrics path answered.
pub type Scrape = crate::mgmt::Answer;

impl crate::mgmt::Answer {
    /// The body parsed, after checking it is a 200 in the Prometheus text format.
    #[track_caller]
    pub fn exposition(&self) -> Exposition {
        assert_eq!(self.status, 200, "{self:?}");
        assert!(
            self.content_type.starts_with("text/plain; version=0.0.4"),
            "{self:?}"
        );
        Exposition::parse(&self.body)
    }
}

/// GET `http://<addr><path>`.
pub async fn scrape(addr: SocketAddr, path: &str) -> Scrape {
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || {
        let mut resp = agent().get(&url).call().expect("GET the metrics");
        crate::mgmt::read_answer(&mut resp).expect("metrics body")
    })
    .await
    .expect("scrape task")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(crate::TIMEOUT))
        .build()
        .into()
}

/// One sample line: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A scrape in the text format, parsed (strictly: a line that is not a comment or a sample
/// fails the test).
#[derive(Debug, Default)]
pub struct Exposition {
    /// `# HELP` texts by family name (unescaped).
    pub help: BTreeMap<String, String>,
    /// `# TYPE` by family name.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    #[track_caller]
    pub fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                let help = help.replace("\\n", "\n").replace("\\\\", "\\");
                assert!(
                    e.help.insert(name.to_string(), help).is_none(),
                    "two HELP lines for {name}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                assert!(
                    ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                    "not a type of the text format: {line}"
                );
                assert!(
                    e.types.insert(name.to_string(), kind.to_string()).is_none(),
                    "two TYPE lines for {name}"
                );
            } else if line.starts_with('#') {
                continue;
            } else {
                e.samples.push(parse_sample(line));
            }
        }
        e
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one sample of {name} with {labels:?} expected: {found:?}"
        );
        found[0].value
    }

    /// Every sample of `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

#[track_caller]
fn bad(line: &str) -> ! {
    panic!("not a sample line: {line:?}")
}

#[track_caller]
fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => bad(line),
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            r = r.strip_prefix(',').unwrap_or(r);
            let (key, after) = r.split_once("=\"").unwrap_or_else(|| bad(line));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bad(line),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => bad(line),
                }
            };
            labels.insert(key.to_string(), value);
            r = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next().unwrap_or_else(|| bad(line));
    Sample {
        name: name.to_string(),
        labels,
        value: value.parse().unwrap_or_else(|_| bad(line)),
    }
}

/// Where Debian's `prometheus` package puts the server, or the first `prometheus` on PATH.
pub fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

/// A real Prometheus server on a free loopback port, scraping `targets` every second, with its
/// data in a scratch directory; killed when dropped.
pub struct PrometheusServer {
    pub addr: SocketAddr,
    child: crate::ChildGuard,
    log: PathBuf,
    _dir: TempDir,
}

/// One scrape job: its name, the metrics path, its query parameters (a key may repeat) and
/// the address it scrapes.
pub struct Job<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub params: &'a [(&'a str, &'a str)],
    pub target: SocketAddr,
}

impl PrometheusServer {
    /// Starts the server. Fails the test with what to install when there is no `prometheus`
    /// binary: a test that needs a real server must not pass without one.
    pub fn start(jobs: &[Job]) -> PrometheusServer {
        let bin = prometheus_binary().unwrap_or_else(|| {
            panic!(
                "the `prometheus` binary is not installed: this test scrapes Warren with a real \
                 Prometheus server. Install Debian's package (`apt-get install prometheus`; \
                 .ci/run installs it) or put a `prometheus` binary on PATH"
            )
        });
        let dir = TempDir::new("prometheus");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for j in jobs {
            config.push_str(&format!(
                "  - job_name: '{}'\n    metrics_path: '{}'\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{}']\n",
                j.name, j.path, j.target
            ));
            let mut keys: Vec<&str> = j.params.iter().map(|(k, _)| *k).collect();
            keys.dedup();
            if !keys.is_empty() {
                config.push_str("    params:\n");
            }
            for k in keys {
                let values: Vec<String> = j
                    .params
                    .iter()
                    .filter(|(key, _)| *key == k)
                    .map(|(_, v)| format!("'{v}'"))
                    .collect();
                config.push_str(&format!("      {k}: [{}]\n", values.join(", ")));
            }
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        // A free port: bound, read and released (Prometheus has no port-0 listeners file).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus log");
        let child = std::process::Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .current_dir(dir.path())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut server = PrometheusServer {
            addr,
            child: crate::ChildGuard::new(child),
            log,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited at start ({status}):\n{}", self.log());
            }
            let url = format!("http://{}/-/ready", self.addr);
            if let Ok(r) = agent().get(&url).call() {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant PromQL query through `/api/v1/query`: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            percent_encode(promql)
        );
        let mut resp = agent()
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().expect("query body");
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("JSON from the query API");
        assert_eq!(v["status"], "success", "query {promql}: {body}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        result
            .iter()
            .map(|s| {
                let labels: BTreeMap<String, String> = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// Queries `promql` until `accept` takes the answer, or fails the test after `timeout`
    /// with the last answer and the server's log.
    pub async fn query_until(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            // Blocking I/O: the test runs on a multi-threaded runtime, whose other workers go
            // on serving the broker meanwhile.
            let got = tokio::task::block_in_place(|| self.query(promql));
            if accept(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: no acceptable answer within {timeout:?}; last: {got:?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A query string value, percent-encoded (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
