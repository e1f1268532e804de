//! The `warren` binary: reads settings, sets up logging, starts the AMQP listener and stops
//! cleanly on SIGTERM / SIGINT. No broker logic lives here.

use anyhow::Context;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Warren: a RabbitMQ-compatible AMQP 0-9-1 message broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// AMQP listener address (rabbitmq.conf: listeners.tcp.default).
    #[arg(long, env = "WARREN_LISTEN", default_value = "127.0.0.1:5672")]
    listen: SocketAddr,
    /// Management HTTP API address (rabbitmq.conf: management.tcp.port).
    #[arg(long, env = "WARREN_MGMT_LISTEN", default_value = "127.0.0.1:15672")]
    mgmt_listen: SocketAddr,
    /// Data directory for durable definitions and messages.
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "warren-data")]
    data_dir: PathBuf,
    /// Heartbeat timeout proposed to clients, in seconds (0 disables).
    #[arg(long, env = "WARREN_HEARTBEAT", default_value_t = 60)]
    heartbeat: u16,
    /// Largest frame size, in bytes.
    #[arg(long, env = "WARREN_FRAME_MAX", default_value_t = 131072)]
    frame_max: u32,
    /// Most channels per connection.
    #[arg(long, env = "WARREN_CHANNEL_MAX", default_value_t = 2047)]
    channel_max: u16,
    /// Consumer delivery-acknowledgement timeout in milliseconds (0 disables).
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT", default_value_t = 1_800_000)]
    consumer_timeout: u64,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, env = "WARREN_LOG", default_value = "info")]
    log_level: String,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long, env = "WARREN_WORKERS")]
    workers: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log_level).context("invalid --log-level")?)
        .init();
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}; choose another with --data-dir", args.data_dir.display()))?;
    let persistence = warren_broker::persist::Persistence::new(&args.data_dir, warren_store::FileBackend::shared());
    let broker = warren_broker::Broker::open(Default::default(), persistence).map_err(|e| {
        anyhow::anyhow!("cannot load the data directory {}: {e}", args.data_dir.display())
    })?;
    let config = Arc::new(warren_server::ServerConfig {
        heartbeat: args.heartbeat,
        frame_max: args.frame_max,
        channel_max: args.channel_max,
        consumer_timeout: (args.consumer_timeout > 0).then(|| Duration::from_millis(args.consumer_timeout)),
        ..Default::default()
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; is another broker running there? Use --listen to pick another address", args.listen))?;
    tracing::info!(listen = %args.listen, data_dir = %args.data_dir.display(), "Warren {} started", env!("CARGO_PKG_VERSION"));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(warren_server::serve(listener, broker.clone(), config, stop_rx));
    shutdown_signal().await;
    tracing::info!("stopping: closing connections (a second signal exits at once)");
    let _ = stop_tx.send(true);
    tokio::spawn(async {
        shutdown_signal().await;
        std::process::exit(1);
    });
    let _ = server.await;
    // Give writers a moment to flush connection.close to every client.
    for _ in 0..50 {
        if broker.connections.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(p) = broker.persistence() {
        p.flush_once();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
