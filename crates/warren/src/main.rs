//! The `warren` binary: reads settings (flags, environment, `warren.conf`), sets up logging,
//! starts the AMQP listener and stops cleanly on SIGTERM / SIGINT. No broker logic lives here.
//!
//! Layout: `config` (warren.conf), `listen` (listener addresses), `security` (TLS listeners,
//! alarm limits), `cluster` (a cluster's nodes, secret and TLS from warren.conf), `error`
//! (startup errors with what to do next).

mod cluster;
mod config;
mod error;
mod listen;
mod security;

use clap::Parser;
use config::{ConfigError, ConfigFile};
use error::StartupError;
use listen::ListenAddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use warren_server::ConsumerTimeoutAction;

/// Warren: a RabbitMQ-compatible AMQP 0-9-1 message broker.
#[derive(Parser, Debug)]
#[command(version, about, after_help = config::keys_help())]
struct Args {
    /// Config file in rabbitmq.conf style [default: ./warren.conf if it exists]
    #[arg(long, short = 'c', env = "WARREN_CONFIG_FILE")]
    config: Option<PathBuf>,
    /// AMQP listener: a port (on 127.0.0.1 and ::1), ip:port or [ipv6]:port; repeat or separate with commas for several; port 0 picks a free one [default: 5672] (listeners.tcp.*)
    #[arg(long, env = "WARREN_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Management HTTP API listener, same forms as --listen [default: 15672 on 127.0.0.1 and ::1, none if only management.ssl.port is set] (management.tcp.ip/port)
    #[arg(long, env = "WARREN_MGMT_LISTEN", value_delimiter = ',')]
    mgmt_listen: Vec<String>,
    /// Prometheus metrics listener (/metrics), same forms as --listen, or `none` [default: 15692 on 127.0.0.1 and ::1] (prometheus.tcp.ip/port)
    #[arg(long, env = "WARREN_PROMETHEUS_LISTEN", value_delimiter = ',')]
    prometheus_listen: Vec<String>,
    /// RabbitMQ stream protocol listener, same forms as --listen, or `none` [default: 5552 on 127.0.0.1 and ::1, skipped if taken] (stream.listeners.tcp.*)
    #[arg(long, env = "WARREN_STREAM_LISTEN", value_delimiter = ',')]
    stream_listen: Vec<String>,
    /// Once every listener is bound, write their actual addresses to this file, one `protocol address` line each (amqp, amqps, http, https, http/prometheus, stream, stream/ssl)
    #[arg(long, env = "WARREN_LISTENERS_FILE")]
    listeners_file: Option<PathBuf>,
    /// Data directory for durable definitions and messages [default: ./warren-data] (data_dir)
    #[arg(long, env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Default user [default: guest] (default_user)
    #[arg(long, env = "WARREN_DEFAULT_USER")]
    default_user: Option<String>,
    /// Default user's password [default: guest] (default_pass)
    #[arg(long, env = "WARREN_DEFAULT_PASS")]
    default_pass: Option<String>,
    /// Default vhost [default: /] (default_vhost)
    #[arg(long, env = "WARREN_DEFAULT_VHOST")]
    default_vhost: Option<String>,
    /// Heartbeat timeout proposed to clients, seconds; 0 disables [default: 60] (heartbeat)
    #[arg(long, env = "WARREN_HEARTBEAT")]
    heartbeat: Option<u16>,
    /// Largest frame, bytes [default: 131072] (frame_max)
    #[arg(long, env = "WARREN_FRAME_MAX")]
    frame_max: Option<u32>,
    /// Most channels per connection [default: 2047] (channel_max)
    #[arg(long, env = "WARREN_CHANNEL_MAX")]
    channel_max: Option<u16>,
    /// Consumer delivery-acknowledgement timeout, ms; 0 disables [default: 1800000] (consumer_timeout)
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT")]
    consumer_timeout: Option<u64>,
    /// close_channel (RabbitMQ's behaviour) or cancel_consumer [default: close_channel] (consumer_timeout_action)
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT_ACTION")]
    consumer_timeout_action: Option<String>,
    /// Log level or tracing filter [default: info] (log.console.level)
    #[arg(long, env = "WARREN_LOG")]
    log_level: Option<String>,
    /// Log as JSON lines [default: plaintext] (log.console.formatter = json)
    #[arg(long, env = "WARREN_LOG_JSON")]
    log_json: bool,
    /// This node's name among cluster_formation.classic_config.nodes.* (cluster.node_name)
    #[arg(long, env = "WARREN_NODENAME")]
    node_name: Option<String>,
    /// Worker threads [default: the CPUs this process may run on]
    #[arg(long, env = "WARREN_WORKERS")]
    workers: Option<usize>,
}

/// The settings after layering flags, environment, file and defaults.
struct Settings {
    /// The AMQP listeners (none with `listeners.tcp = none`).
    listen: Vec<ListenAddr>,
    /// The plain-HTTP management listeners; none when only HTTPS is configured.
    mgmt_listen: Vec<ListenAddr>,
    /// The Prometheus metrics listeners; none with `--prometheus-listen none`.
    prometheus_listen: Vec<ListenAddr>,
    /// Nothing chose the Prometheus listener: 15692 is RabbitMQ's port, and a broker that
    /// finds it taken starts without it (with a warning) rather than not at all.
    prometheus_is_default: bool,
    /// `/metrics` answers with the per-queue series (prometheus.return_per_object_metrics).
    prometheus_per_object: bool,
    /// The stream protocol's listeners; none with `stream.listeners.tcp = none`.
    stream_listen: Vec<ListenAddr>,
    /// Nothing chose the stream listener: RabbitMQ's 5552 is taken only if free.
    stream_is_default: bool,
    stream: warren_stream::StreamConfig,
    /// How often the management API samples message rates.
    stats_interval: Duration,
    /// `quorum_queues.replicated`: quorum queues as Raft groups (warren-cluster).
    replicated_quorum: bool,
    /// The cluster this node is in (`cluster_formation.*`): quorum queues are replicated.
    cluster: Option<cluster::ClusterSettings>,
    listeners_file: Option<PathBuf>,
    data_dir: PathBuf,
    broker: warren_broker::BrokerConfig,
    server: warren_server::ServerConfig,
    /// The log filter (`--log-level`, `log.console.level`), checked.
    log_filter: tracing_subscriber::EnvFilter,
    log_json: bool,
    workers: usize,
    /// TLS listener and alarm limits.
    security: security::SecuritySettings,
}

fn settings(args: Args) -> Result<Settings, ConfigError> {
    let file = match &args.config {
        Some(p) => ConfigFile::load(p)?,
        None if std::path::Path::new("warren.conf").exists() => {
            ConfigFile::load(std::path::Path::new("warren.conf"))?
        }
        None => ConfigFile::default(),
    };
    let listen = if !args.listen.is_empty() {
        listen::parse_all(args.listen.iter().map(|v| ("--listen", v.as_str())))?
    } else if file.get("listeners.tcp") == Some("none") {
        Vec::new()
    } else {
        match file.values_under("listeners.tcp.") {
            v if v.is_empty() => listen::loopback(5672),
            v => listen::parse_all(v)?,
        }
    };
    if let Some(v) = file.get("listeners.tcp").filter(|v| *v != "none") {
        return Err(file.error(
            "listeners.tcp",
            &format!("expected 'none' (name a listener: listeners.tcp.default = {v})"),
        ));
    }
    let security = security::settings(&file)?;
    // As RabbitMQ: plain HTTP on 15672 unless only the HTTPS listener is configured; both when
    // both are.
    let tcp_configured = !args.mgmt_listen.is_empty()
        || file.get("management.tcp.port").is_some()
        || file.get("management.tcp.ip").is_some();
    let mgmt_listen = if !args.mgmt_listen.is_empty() {
        listen::parse_all(
            args.mgmt_listen
                .iter()
                .map(|v| ("--mgmt-listen", v.as_str())),
        )?
    } else if !tcp_configured && security.mgmt_tls.is_some() {
        Vec::new()
    } else {
        tcp_listener(&file, "management.tcp", 15672)?
    };
    // As RabbitMQ's rabbitmq_prometheus: 15692 unless prometheus.tcp.* says otherwise.
    let prometheus_is_default = args.prometheus_listen.is_empty()
        && file.get("prometheus.tcp.port").is_none()
        && file.get("prometheus.tcp.ip").is_none();
    let prometheus_listen = if args.prometheus_listen.iter().any(|v| v == "none") {
        Vec::new()
    } else if !args.prometheus_listen.is_empty() {
        listen::parse_all(
            args.prometheus_listen
                .iter()
                .map(|v| ("--prometheus-listen", v.as_str())),
        )?
    } else {
        tcp_listener(
            &file,
            "prometheus.tcp",
            warren_mgmt::prometheus::DEFAULT_PORT,
        )?
    };
    let prometheus_per_object = file
        .parse_value::<bool>("prometheus.return_per_object_metrics")?
        .unwrap_or(false);
    let (stream_listen, stream_is_default) = stream_listeners(&args.stream_listen, &file)?;
    let stream = stream_settings(&file)?;
    let mut broker = warren_broker::BrokerConfig::default();
    if let Some(u) = args
        .default_user
        .or(file.get("default_user").map(str::to_string))
    {
        broker.loopback_users = vec![u.clone()];
        broker.default_user = u;
    }
    if let Some(p) = args
        .default_pass
        .or(file.get("default_pass").map(str::to_string))
    {
        broker.default_pass = p;
    }
    if let Some(v) = args
        .default_vhost
        .or(file.get("default_vhost").map(str::to_string))
    {
        broker.default_vhost = v;
    }
    if let Some(t) = file.get("default_queue_type") {
        let t = warren_broker::vhost::metadata::parse_queue_type(t)
            .map_err(|e| file.error("default_queue_type", &e))?;
        broker.default_queue_type = (t != "classic").then_some(t);
    }
    match file.get("loopback_users") {
        Some("none") => broker.loopback_users.clear(),
        Some(u) => broker.loopback_users = vec![u.to_string()],
        None => {}
    }
    let d = warren_server::ServerConfig::default();
    let frame_max = args
        .frame_max
        .or(file.parse_value("frame_max")?)
        .unwrap_or(d.frame_max);
    if !(4096..=1_048_576).contains(&frame_max) {
        return Err(file.error("frame_max", "must be between 4096 and 1048576"));
    }
    let channel_max = args
        .channel_max
        .or(file.parse_value("channel_max")?)
        .unwrap_or(d.channel_max);
    if channel_max == 0 {
        return Err(file.error("channel_max", "must be at least 1"));
    }
    let timeout_ms = args
        .consumer_timeout
        .or(file.parse_value("consumer_timeout")?)
        .unwrap_or(1_800_000);
    let action = match args
        .consumer_timeout_action
        .as_deref()
        .or(file.get("consumer_timeout_action"))
    {
        None | Some("close_channel") => ConsumerTimeoutAction::CloseChannel,
        Some("cancel_consumer") => ConsumerTimeoutAction::Cancel,
        Some(_) => {
            return Err(file.error(
                "consumer_timeout_action",
                "expected close_channel or cancel_consumer",
            ))
        }
    };
    let server = warren_server::ServerConfig {
        heartbeat: args
            .heartbeat
            .or(file.parse_value("heartbeat")?)
            .unwrap_or(d.heartbeat),
        frame_max,
        channel_max,
        max_message_size: file
            .parse_value("max_message_size")?
            .unwrap_or(d.max_message_size),
        handshake_timeout: file
            .parse_value::<u64>("handshake_timeout")?
            .map(Duration::from_millis)
            .unwrap_or(d.handshake_timeout),
        consumer_timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
        consumer_timeout_action: action,
        peers_are_remote: false,
        connection_max: file.parse_value("connection_max")?,
    };
    let log_level = args.log_level.or(file
        .get("log.console.level")
        .map(|l| if l == "warning" { "warn" } else { l }.to_string()));
    // openraft narrates every election at info and logs every unreachable peer as an error
    // (routine while a node is down): silent unless a filter asks for it
    // (`--log-level info,openraft=warn`). Warren logs what matters to operators itself: a node
    // that stops answering, a group that stops.
    let log_level = match log_level {
        Some(l) if l.contains('=') => l,
        Some(l) => format!("{l},openraft=off"),
        None => "info,openraft=off".into(),
    };
    let log_filter = tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|source| {
        ConfigError::LogLevel {
            level: log_level,
            source,
        }
    })?;
    let log_json = args.log_json || file.get("log.console.formatter") == Some("json");
    let stats_ms: u64 = file
        .parse_value("collect_statistics_interval")?
        .unwrap_or(5000);
    if stats_ms < 100 {
        return Err(file.error(
            "collect_statistics_interval",
            "must be at least 100 (milliseconds)",
        ));
    }
    Ok(Settings {
        security,
        listen,
        mgmt_listen,
        prometheus_listen,
        prometheus_is_default,
        prometheus_per_object,
        stream_listen,
        stream_is_default,
        stream,
        stats_interval: Duration::from_millis(stats_ms),
        replicated_quorum: file
            .parse_value("quorum_queues.replicated")?
            .unwrap_or(false),
        cluster: cluster::settings(&file, args.node_name)?,
        listeners_file: args.listeners_file,
        data_dir: args
            .data_dir
            .or(file.get("data_dir").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("warren-data")),
        broker,
        server,
        log_filter,
        log_json,
        workers: args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
    })
}

/// The stream protocol's listeners (`--stream-listen`, `stream.listeners.tcp.*`) and whether
/// they are the default (5552 on loopback).
fn stream_listeners(
    flags: &[String],
    file: &ConfigFile,
) -> Result<(Vec<ListenAddr>, bool), ConfigError> {
    if flags.iter().any(|v| v == "none") {
        return Ok((Vec::new(), false));
    }
    if !flags.is_empty() {
        let addrs = listen::parse_all(flags.iter().map(|v| ("--stream-listen", v.as_str())))?;
        return Ok((addrs, false));
    }
    match file.get("stream.listeners.tcp") {
        Some("none") => return Ok((Vec::new(), false)),
        Some(v) => {
            return Err(file.error(
                "stream.listeners.tcp",
                &format!("expected 'none' (name a listener: stream.listeners.tcp.default = {v})"),
            ))
        }
        None => {}
    }
    match file.values_under("stream.listeners.tcp.") {
        v if v.is_empty() => Ok((listen::loopback(warren_stream::DEFAULT_PORT), true)),
        v => Ok((listen::parse_all(v)?, false)),
    }
}

/// The stream protocol's settings (`stream.*`).
fn stream_settings(file: &ConfigFile) -> Result<warren_stream::StreamConfig, ConfigError> {
    let d = warren_stream::StreamConfig::default();
    let frame_max = file
        .parse_value::<u32>("stream.frame_max")?
        .unwrap_or(d.frame_max);
    if frame_max != 0 && frame_max < 8192 {
        return Err(file.error("stream.frame_max", "must be 0 (no limit) or at least 8192"));
    }
    Ok(warren_stream::StreamConfig {
        frame_max,
        initial_frame_max: file
            .parse_value("stream.initial_frame_max")?
            .unwrap_or(d.initial_frame_max),
        heartbeat: file.parse_value("stream.heartbeat")?.unwrap_or(d.heartbeat),
        advertised_host: file.get("stream.advertised_host").map(str::to_string),
        advertised_port: file.parse_value("stream.advertised_port")?,
        ..d
    })
}

/// A listener set by `<prefix>.port` and `<prefix>.ip` (the management API's and the
/// Prometheus endpoint's): `default_port` on both loopback families unless told otherwise.
fn tcp_listener(
    file: &ConfigFile,
    prefix: &str,
    default_port: u16,
) -> Result<Vec<ListenAddr>, ConfigError> {
    let (port_key, ip_key) = (format!("{prefix}.port"), format!("{prefix}.ip"));
    let port = file.parse_value::<u16>(&port_key)?.unwrap_or(default_port);
    Ok(match file.get(&ip_key) {
        None => listen::loopback(port),
        Some(ip) => vec![ListenAddr {
            addr: SocketAddr::new(
                listen::parse_ip(ip)
                    .ok_or_else(|| file.error(&ip_key, "expected an IPv4 or IPv6 address"))?,
                port,
            ),
            optional: false,
        }],
    })
}

/// glibc malloc's threshold above which an allocation gets its own mapping, fixed. glibc's
/// default moves the threshold up (to 32 MiB) after the first large buffer is freed, and from
/// then on read buffers and outboxes come from the heap, whose freed pages stay resident: an
/// idle connection that had carried a 64 KiB message kept ~140 KB after giving its buffers
/// back. With the threshold fixed, buffers of 64 KiB and more go back to the system when freed.
/// (Set here, before any thread starts, so nobody has to remember an environment variable; one
/// set in `GLIBC_TUNABLES` or `MALLOC_MMAP_THRESHOLD_` wins.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    const MMAP_THRESHOLD: libc::c_int = 64 * 1024;
    let set_by_user = std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold"));
    if !set_by_user {
        // SAFETY: mallopt only changes malloc's parameters; called before other threads exist.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    }
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    match start(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren: {e}");
            if let StartupError::Config(_) = e {
                eprintln!("See `warren --help` for every setting.");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn start(args: Args) -> Result<(), StartupError> {
    let mut s = settings(args)?;
    let filter = std::mem::take(&mut s.log_filter);
    if s.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.workers)
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)?;
    rt.block_on(run(s))
}

async fn run(s: Settings) -> Result<(), StartupError> {
    std::fs::create_dir_all(&s.data_dir).map_err(|source| StartupError::DataDir {
        path: s.data_dir.clone(),
        source,
    })?;
    // One broker per data directory: a second one would write into the same segment files.
    // The lock goes with the process (also on SIGKILL).
    let lock_path = s.data_dir.join("warren.lock");
    let data_dir_lock =
        std::fs::File::create(&lock_path).map_err(|source| StartupError::LockFile {
            path: lock_path.clone(),
            source,
        })?;
    match data_dir_lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StartupError::DataDirInUse {
                path: s.data_dir.clone(),
            })
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(StartupError::LockFile {
                path: lock_path,
                source,
            })
        }
    }
    let persistence =
        warren_broker::persist::Persistence::new(&s.data_dir, warren_store::FileBackend::shared());
    let mut clustered = None;
    if let Some(c) = &s.cluster {
        let spec = cluster::spec(c).map_err(StartupError::Cluster)?;
        let path = s.data_dir.join("raft");
        let node = warren_cluster::LocalNode::open_cluster(
            warren_store::FileBackend::shared(),
            &path,
            spec,
        )
        .map_err(|e| match e {
            warren_cluster::ClusterOpenError::Log(source) => StartupError::RaftLog { path, source },
            listen => StartupError::Cluster(format!(
                "{listen}; stop the process that holds the port, or give this node another \
                 port in its cluster_formation.classic_config.nodes entry"
            )),
        })?;
        persistence.set_replica_host(node.clone());
        clustered = Some(node);
    } else if s.replicated_quorum {
        let path = s.data_dir.join("raft");
        let node = warren_cluster::LocalNode::open(warren_store::FileBackend::shared(), &path)
            .map_err(|source| StartupError::RaftLog { path, source })?;
        persistence.set_replica_host(node);
    }
    let broker =
        warren_broker::Broker::open(s.broker.clone(), persistence.clone()).map_err(|source| {
            StartupError::Load {
                path: s.data_dir.clone(),
                source,
            }
        })?;
    if let Some(node) = clustered {
        // Definition changes from here on go through the cluster's metadata group; what the
        // broker restored from its own definitions file was applied before.
        let weak = Arc::downgrade(&broker);
        node.start_metadata(Arc::new(move |op| match weak.upgrade() {
            Some(b) => warren_broker::metadata::apply(&b, op),
            None => Err(warren_broker::AmqpError::new(
                warren_protocol::constants::INTERNAL_ERROR,
                "the broker is stopping",
            )),
        }))
        .map_err(StartupError::Cluster)?;
        node.serve_homed_queues(&broker);
        persistence.set_metadata_log(node);
    }
    // The management API's certificate and key are checked before the AMQP port is bound.
    let mgmt_https = security::mgmt_https_listener(&s.security, s.server.handshake_timeout).await?;
    let amqp = listen::bind_all(&s.listen, "AMQP (listeners.tcp.*, --listen)").await?;
    let amqp_addrs = amqp
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(StartupError::ListenerAddr)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls_config = Arc::new(s.server.clone());
    let amqps_addrs = security::start(
        &s.security,
        &broker,
        tls_config,
        &s.data_dir,
        stop_rx.clone(),
    )
    .await?;
    let server_config = Arc::new(s.server);
    let mut servers = Vec::new();
    for listener in amqp {
        servers.push(tokio::spawn(warren_server::serve(
            listener,
            broker.clone(),
            server_config.clone(),
            stop_rx.clone(),
        )));
    }
    let mgmt_http = listen::bind_all(
        &s.mgmt_listen,
        "the management API (--mgmt-listen, management.tcp.*)",
    )
    .await?;
    // Those chosen by a setting must bind; a default port is only taken if free (another
    // broker, or another Warren, may hold RabbitMQ's 15692 or 5552).
    let prometheus = listen::bind_unless_taken_default(
        &s.prometheus_listen,
        s.prometheus_is_default,
        "Prometheus metrics (--prometheus-listen, prometheus.tcp.*)",
        "serving no Prometheus metrics there (choose a port with prometheus.tcp.port or --prometheus-listen)",
    )
    .await?;
    let stream_listeners = listen::bind_unless_taken_default(
        &s.stream_listen,
        s.stream_is_default,
        "the stream protocol (--stream-listen, stream.listeners.tcp.*)",
        "not serving the stream protocol there (choose a port with stream.listeners.tcp.default or --stream-listen)",
    )
    .await?;
    let mut bound: Vec<(&str, SocketAddr)> = Vec::new();
    bound.extend(amqp_addrs.iter().map(|a| ("amqp", *a)));
    bound.extend(amqps_addrs.iter().map(|a| ("amqps", *a)));
    for l in &mgmt_http {
        bound.push(("http", l.local_addr().map_err(StartupError::ListenerAddr)?));
    }
    if let Some(h) = &mgmt_https {
        let addr = h.listener.local_addr();
        bound.push(("https", addr.map_err(StartupError::ListenerAddr)?));
    }
    for l in &prometheus {
        let addr = l.local_addr().map_err(StartupError::ListenerAddr)?;
        bound.push(("http/prometheus", addr));
    }
    for l in &stream_listeners {
        let addr = l.local_addr().map_err(StartupError::ListenerAddr)?;
        bound.push(("stream", addr));
    }
    let stream_config = Arc::new(s.stream.clone());
    let stream_tls_addrs =
        security::start_stream_tls(&s.security, &broker, stream_config.clone(), stop_rx.clone())
            .await?;
    bound.extend(stream_tls_addrs.iter().map(|a| ("stream/ssl", *a)));
    for listener in stream_listeners {
        servers.push(tokio::spawn(warren_stream::serve(
            listener,
            broker.clone(),
            stream_config.clone(),
            stop_rx.clone(),
        )));
    }
    let listening: Vec<String> = bound.iter().map(|(p, a)| format!("{p}://{a}")).collect();
    tracing::info!(listeners = %listening.join(" "), data_dir = %s.data_dir.display(), "Warren {} started", env!("CARGO_PKG_VERSION"));
    // Handled from here on: whoever reads the listeners file may signal at once, and must get
    // a clean stop rather than the default action's kill.
    let mut signals = ShutdownSignals::install();
    if let Some(path) = &s.listeners_file {
        listen::write_listeners_file(path, &bound).map_err(|source| {
            StartupError::ListenersFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    // In a cluster, the node's name is its cluster name (warren@host:port).
    let node_name = s.cluster.as_ref().map(|c| c.me.clone()).unwrap_or_default();
    let mgmt_options = warren_mgmt::Options {
        amqp_listeners: amqp_addrs,
        node_name: node_name.clone(),
        stats_interval: s.stats_interval,
    };
    let mgmt = tokio::spawn(warren_mgmt::serve_listeners(
        warren_mgmt::Listeners {
            http: mgmt_http,
            https: mgmt_https,
        },
        broker.clone(),
        mgmt_options,
        stop_rx.clone(),
    ));
    let metrics = tokio::spawn(warren_mgmt::prometheus::serve(
        prometheus,
        broker.clone(),
        warren_mgmt::prometheus::Options {
            node_name,
            per_object_by_default: s.prometheus_per_object,
        },
        stop_rx.clone(),
    ));
    signals.recv().await;
    tracing::info!("stopping: closing connections (a second signal exits at once)");
    // Fails only when every receiver is gone: then nothing is left to stop.
    let _ = stop_tx.send(true);
    tokio::spawn(async move {
        signals.recv().await;
        std::process::exit(1);
    });
    for server in servers {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "a listener's task failed; its connections may not have been closed cleanly");
        }
    }
    match mgmt.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("management API: {e}"),
        Err(e) => tracing::error!(error = %e, "the management API's task failed"),
    }
    match metrics.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("Prometheus metrics: {e}"),
        Err(e) => tracing::error!(error = %e, "the Prometheus endpoint's task failed"),
    }
    // Give writers a moment to flush connection.close to every client.
    for _ in 0..50 {
        if broker.connections.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.flush_all();
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, handled from the moment this is made.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        ShutdownSignals {
            term: signal(SignalKind::terminate()).expect("install SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("install SIGINT handler"),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The management listeners chosen for a config file and extra flags.
    fn mgmt_listeners(conf: &str, flags: &[&str]) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let (http, https) = mgmt_listeners_all(conf, flags);
        (http.first().copied(), https)
    }

    fn mgmt_listeners_all(conf: &str, flags: &[&str]) -> (Vec<SocketAddr>, Option<SocketAddr>) {
        let dir = warren_tests::TempDir::new("conf");
        let path = dir.join("warren.conf");
        std::fs::write(&path, conf).unwrap();
        let mut argv = vec!["warren", "--config", path.to_str().unwrap()];
        argv.extend(flags);
        let s = settings(Args::parse_from(argv)).unwrap();
        (
            s.mgmt_listen.iter().map(|a| a.addr).collect(),
            s.security.mgmt_tls.map(|(a, _)| a),
        )
    }

    #[test]
    fn management_listeners_as_rabbitmq_chooses_them() {
        let tls = "management.ssl.port = 15671\nmanagement.ssl.certfile = /c\nmanagement.ssl.keyfile = /k\n";
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        // Nothing configured: plain HTTP on 15672.
        assert_eq!(mgmt_listeners("", &[]), (addr("127.0.0.1:15672"), None));
        // Only HTTPS configured: only HTTPS.
        assert_eq!(mgmt_listeners(tls, &[]), (None, addr("127.0.0.1:15671")));
        // Both configured: both.
        let both = format!("{tls}management.tcp.port = 15680\n");
        assert_eq!(
            mgmt_listeners(&both, &[]),
            (addr("127.0.0.1:15680"), addr("127.0.0.1:15671"))
        );
        assert_eq!(
            mgmt_listeners(tls, &["--mgmt-listen", "127.0.0.1:1234"]),
            (addr("127.0.0.1:1234"), addr("127.0.0.1:15671"))
        );
    }

    fn amqp_listeners(conf: &str, flags: &[&str]) -> Result<Vec<String>, ConfigError> {
        let dir = warren_tests::TempDir::new("conf-l");
        let path = dir.join("warren.conf");
        std::fs::write(&path, conf).unwrap();
        let mut argv = vec!["warren", "--config", path.to_str().unwrap()];
        argv.extend(flags);
        let s = settings(Args::parse_from(argv));
        Ok(s?.listen.iter().map(|a| a.addr.to_string()).collect())
    }

    /// The settings for a config file and flags.
    fn settings_for(conf: &str, flags: &[&str]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("warren-conf-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.conf", conf.len() * 31 + flags.len()));
        std::fs::write(&path, conf).unwrap();
        let mut argv = vec!["warren", "--config", path.to_str().unwrap()];
        argv.extend(flags);
        let s = settings(Args::parse_from(argv));
        let _ = std::fs::remove_file(&path);
        s
    }

    #[test]
    fn bad_values_are_configuration_errors_naming_the_setting() {
        // From the file: the line, the key and the value.
        let e = settings_for("\nframe_max = 100\n", &[]).err().unwrap();
        assert!(
            matches!(&e, ConfigError::BadValue { line: 2, key, value, .. }
                if key == "frame_max" && value == "100"),
            "{e:?}"
        );
        let e = StartupError::from(e);
        assert_eq!(e.exit_code(), 64);
        assert_eq!(
            e.to_string(),
            "configuration error: line 2: bad value '100' for 'frame_max': must be between 4096 and 1048576"
        );
        // From a flag: the setting.
        let e = settings_for("", &["--channel-max", "0"]).err().unwrap();
        assert!(
            matches!(&e, ConfigError::BadSetting { key, .. } if key == "channel_max"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "'channel_max': must be at least 1");
        let e = settings_for("consumer_timeout_action = drop\n", &[])
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "line 1: bad value 'drop' for 'consumer_timeout_action': expected close_channel or cancel_consumer"
        );
        let e = settings_for("heartbeat = often\n", &[]).err().unwrap();
        assert!(
            matches!(&e, ConfigError::BadValue { key, .. } if key == "heartbeat"),
            "{e:?}"
        );
        // A log filter tracing cannot parse is a configuration error too.
        let e = settings_for("", &["--log-level", "warren=loud"])
            .err()
            .unwrap();
        assert!(
            matches!(&e, ConfigError::LogLevel { level, .. } if level == "warren=loud"),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(
                "bad log level 'warren=loud' (--log-level, WARREN_LOG, log.console.level): "
            ),
            "{e}"
        );
        assert!(settings_for("log.console.level = warning\n", &[]).is_ok());
        // Failures after the settings are not configuration errors.
        let e = StartupError::DataDirInUse {
            path: PathBuf::from("/d"),
        };
        assert_eq!(e.exit_code(), 1);
    }

    /// The settings for a config file and flags, in a directory of their own.
    fn settings_in_dir(conf: &str, flags: &[&str]) -> Result<Settings, ConfigError> {
        let dir = warren_tests::TempDir::new("conf-p");
        let path = dir.join("warren.conf");
        std::fs::write(&path, conf).unwrap();
        let mut argv = vec!["warren", "--config", path.to_str().unwrap()];
        argv.extend(flags);
        settings(Args::parse_from(argv))
    }

    #[test]
    fn prometheus_listener_as_rabbitmq_configures_it() {
        let p = |conf: &str, flags: &[&str]| settings_in_dir(conf, flags).unwrap();
        let addrs = |s: &Settings| -> Vec<String> {
            s.prometheus_listen
                .iter()
                .map(|a| a.addr.to_string())
                .collect()
        };
        // RabbitMQ's port, on both loopback families as every Warren listener.
        let s = p("", &[]);
        assert_eq!(addrs(&s), ["127.0.0.1:15692", "[::1]:15692"]);
        assert!(s.prometheus_is_default && !s.prometheus_per_object);
        let s = p("prometheus.tcp.port = 15700\n", &[]);
        assert_eq!(addrs(&s), ["127.0.0.1:15700", "[::1]:15700"]);
        assert!(!s.prometheus_is_default);
        let s = p(
            "prometheus.tcp.ip = ::1\nprometheus.return_per_object_metrics = true\n",
            &[],
        );
        assert_eq!(addrs(&s), ["[::1]:15692"]);
        assert!(s.prometheus_per_object && !s.prometheus_is_default);
        // The flag wins; port 0 picks a free port; `none` serves no metrics.
        let s = p(
            "prometheus.tcp.port = 15700\n",
            &["--prometheus-listen", "127.0.0.1:0"],
        );
        assert_eq!(addrs(&s), ["127.0.0.1:0"]);
        assert!(p("", &["--prometheus-listen", "none"])
            .prometheus_listen
            .is_empty());
        let e = settings_in_dir("prometheus.tcp.ip = somewhere\n", &[])
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "line 1: bad value 'somewhere' for 'prometheus.tcp.ip': expected an IPv4 or IPv6 address"
        );
        let e = settings_in_dir("prometheus.return_per_object_metrics = yes\n", &[])
            .err()
            .unwrap();
        assert!(
            matches!(&e, ConfigError::BadValue { key, .. } if key == "prometheus.return_per_object_metrics"),
            "{e:?}"
        );
    }

    #[test]
    fn amqp_listeners_serve_both_loopback_families_and_take_ipv6() {
        // The default: loopback on both families, as a bare port.
        assert_eq!(
            amqp_listeners("", &[]).unwrap(),
            vec!["127.0.0.1:5672", "[::1]:5672"]
        );
        assert_eq!(
            amqp_listeners("listeners.tcp.default = 5673\n", &[]).unwrap(),
            vec!["127.0.0.1:5673", "[::1]:5673"]
        );
        // Several named listeners, RabbitMQ's IPv6 forms.
        assert_eq!(
            amqp_listeners(
                "listeners.tcp.local = 127.0.0.1:5672\nlisteners.tcp.local_v6 = ::1:5672\nlisteners.tcp.all6 = [::]:5680\n",
                &[]
            )
            .unwrap(),
            vec!["[::]:5680", "127.0.0.1:5672", "[::1]:5672"]
        );
        assert!(amqp_listeners("listeners.tcp = none\n", &[])
            .unwrap()
            .is_empty());
        let e = amqp_listeners("listeners.tcp = 5672\n", &[]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadValue { line: 1, key, .. } if key == "listeners.tcp"),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("listeners.tcp.default = 5672"),
            "{e}"
        );
        let e = amqp_listeners("listeners.tcp.x = nowhere\n", &[]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadListener { key, .. } if key == "listeners.tcp.x"),
            "{e:?}"
        );
        // Flags win, repeated or comma-separated.
        assert_eq!(
            amqp_listeners(
                "listeners.tcp.default = 5673\n",
                &["--listen", "[::1]:0,127.0.0.1:0"]
            )
            .unwrap(),
            vec!["[::1]:0", "127.0.0.1:0"]
        );
        // The management API: both loopback families by default, an IPv6 address when asked.
        let (http, _) = mgmt_listeners_all("", &[]);
        assert_eq!(
            http,
            vec![
                "127.0.0.1:15672".parse::<SocketAddr>().unwrap(),
                "[::1]:15672".parse().unwrap()
            ]
        );
        let (http, _) = mgmt_listeners_all(
            "management.tcp.ip = ::1\nmanagement.tcp.port = 15680\n",
            &[],
        );
        assert_eq!(http, vec!["[::1]:15680".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn stream_listeners_and_settings() {
        let addrs = |s: &Settings| -> Vec<String> {
            s.stream_listen.iter().map(|a| a.addr.to_string()).collect()
        };
        // Default: 5552 on both loopback families, taken only if free.
        let s = settings_for("", &[]).unwrap();
        assert_eq!(addrs(&s), vec!["127.0.0.1:5552", "[::1]:5552"]);
        assert!(s.stream_is_default);
        // RabbitMQ's keys.
        let s = settings_for(
            "stream.listeners.tcp.1 = 5553\nstream.listeners.tcp.2 = 127.0.0.1:5554\nstream.advertised_host = mq.example\nstream.advertised_port = 6000\nstream.heartbeat = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            addrs(&s),
            vec!["127.0.0.1:5553", "[::1]:5553", "127.0.0.1:5554"]
        );
        assert!(!s.stream_is_default);
        assert_eq!(s.stream.advertised_host.as_deref(), Some("mq.example"));
        assert_eq!(
            (s.stream.advertised_port, s.stream.heartbeat),
            (Some(6000), 0)
        );
        // None, from the file or a flag; a flag wins over the file.
        assert!(settings_for("stream.listeners.tcp = none\n", &[])
            .unwrap()
            .stream_listen
            .is_empty());
        assert!(settings_for("", &["--stream-listen", "none"])
            .unwrap()
            .stream_listen
            .is_empty());
        let s = settings_for(
            "stream.listeners.tcp.default = 5553\n",
            &["--stream-listen", "127.0.0.1:0"],
        )
        .unwrap();
        assert_eq!(addrs(&s), vec!["127.0.0.1:0"]);
        // Bad values name the key.
        let e = settings_for("stream.listeners.tcp = 5552\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("stream.listeners.tcp"), "{e}");
        let e = settings_for("stream.listeners.tcp.default = nowhere\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("stream.listeners.tcp.default"), "{e}");
        let e = settings_for("stream.frame_max = 100\n", &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("stream.frame_max"), "{e}");
    }
}
