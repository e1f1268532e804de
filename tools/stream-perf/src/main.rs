//! `stream-perf`: the streams benchmark of issue 17, against any broker (Warren, RabbitMQ with
//! its `rabbitmq_stream` plugin).
//!
//! - `publish`: N messages of S bytes into a stream, with confirms (a window of messages in
//!   flight), over RabbitMQ's stream protocol (`--protocol stream`, rabbitmq-stream-client)
//!   or AMQP 0-9-1 (`--protocol amqp`, lapin, the stream declared `x-queue-type: stream`).
//! - `replay`: C consumers each read the first N messages of the stream from `first`, at the
//!   same time, and the run reports the messages per second of all of them together.
//!
//! With `--monitor-pid` the broker's RSS is sampled every 100 ms and its CPU time read at the
//! start and the end; the result line (JSON, on stdout) carries the RSS peak and last sample
//! and the broker's CPU per message (what tells brokers apart when the client is the limit). Progress goes to stderr once a second.

mod raw;

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Streams load tool: publish with confirms, replay from first")]
struct Args {
    #[command(subcommand)]
    phase: Phase,
    /// Which protocol the clients speak.
    #[arg(long, value_enum, default_value = "stream")]
    protocol: Protocol,
    /// The stream protocol's client: rabbitmq-stream-client (`library`, which decodes every
    /// message), or the frames written and read here (`raw`, see raw.rs).
    #[arg(long, value_enum, default_value = "library")]
    client: Client,
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Stream protocol port.
    #[arg(long, default_value_t = 5552)]
    stream_port: u16,
    /// AMQP 0-9-1 URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// The stream's name.
    #[arg(long, default_value = "stream-perf")]
    stream: String,
    /// The broker's PID, to sample its RSS.
    #[arg(long)]
    monitor_pid: Option<u32>,
    /// Free-form label copied into the result line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Subcommand)]
enum Phase {
    /// Creates the stream and publishes `count` messages with confirms.
    Publish {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Messages published and not yet confirmed, at most.
        #[arg(long, default_value_t = 10_000)]
        window: usize,
    },
    /// `consumers` consumers each read the stream's first `count` messages.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        consumers: usize,
        /// AMQP 0-9-1 consumers' prefetch (acked with multiple every tenth of it).
        #[arg(long, default_value_t = 1000)]
        prefetch: u16,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Client {
    Library,
    Raw,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Protocol {
    Stream,
    Amqp,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The broker's RSS (KiB) now, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The broker's CPU time so far (user + system), in seconds, from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Samples the broker's RSS and prints progress until stopped.
struct Monitor {
    peak: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    pid: Option<u32>,
    cpu_at_start: Option<f64>,
}

impl Monitor {
    fn start(pid: Option<u32>, done: Arc<AtomicU64>, what: &'static str) -> Monitor {
        let (peak, last) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (p, l) = (peak.clone(), last.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n = 0u64;
            loop {
                tick.tick().await;
                if let Some(kib) = pid.and_then(rss_kib) {
                    p.fetch_max(kib, Ordering::Relaxed);
                    l.store(kib, Ordering::Relaxed);
                }
                n += 1;
                if n.is_multiple_of(10) {
                    eprintln!(
                        "{:>5.1} s: {} messages {what}, broker RSS {} MB",
                        started.elapsed().as_secs_f64(),
                        done.load(Ordering::Relaxed),
                        l.load(Ordering::Relaxed) / 1024
                    );
                }
            }
        });
        Monitor {
            peak,
            last,
            task,
            pid,
            cpu_at_start: pid.and_then(cpu_secs),
        }
    }

    /// (peak, last) RSS in MB, and the broker's CPU seconds since the start.
    fn stop(self) -> (f64, f64, Option<f64>) {
        self.task.abort();
        let cpu = match (self.cpu_at_start, self.pid.and_then(cpu_secs)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        (
            self.peak.load(Ordering::Relaxed) as f64 / 1024.0,
            self.last.load(Ordering::Relaxed) as f64 / 1024.0,
            cpu,
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let done = Arc::new(AtomicU64::new(0));
    let (phase, count) = match args.phase {
        Phase::Publish { count, .. } => ("published", count),
        Phase::Replay {
            count, consumers, ..
        } => ("read", count * consumers as u64),
    };
    let monitor = Monitor::start(args.monitor_pid, done.clone(), phase);
    let started = Instant::now();
    match (&args.phase, args.protocol) {
        (
            Phase::Publish {
                count,
                size,
                window,
            },
            Protocol::Stream,
        ) if args.client == Client::Raw => {
            raw::publish(&args, *count, *size, *window, &done).await?
        }
        (
            Phase::Publish {
                count,
                size,
                window,
            },
            Protocol::Stream,
        ) => publish_stream(&args, *count, *size, *window, &done).await?,
        (
            Phase::Publish {
                count,
                size,
                window,
            },
            Protocol::Amqp,
        ) => publish_amqp(&args, *count, *size, *window, &done).await?,
        (
            Phase::Replay {
                count, consumers, ..
            },
            Protocol::Stream,
        ) if args.client == Client::Raw => raw::replay(&args, *count, *consumers, &done).await?,
        (
            Phase::Replay {
                count, consumers, ..
            },
            Protocol::Stream,
        ) => replay_stream(&args, *count, *consumers, &done).await?,
        (
            Phase::Replay {
                count,
                consumers,
                prefetch,
            },
            Protocol::Amqp,
        ) => replay_amqp(&args, *count, *consumers, *prefetch, &done).await?,
    }
    let secs = started.elapsed().as_secs_f64();
    let (peak, last, cpu) = monitor.stop();
    let got = done.load(Ordering::Relaxed);
    if got < count {
        return Err(format!("only {got} of {count} messages {phase}").into());
    }
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "phase": phase,
            "protocol": match (args.protocol, args.client) {
                (Protocol::Stream, Client::Library) => "stream",
                (Protocol::Stream, Client::Raw) => "stream-raw",
                (Protocol::Amqp, _) => "amqp",
            },
            "messages": got,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "msg_per_s": (got as f64 / secs).round(),
            "rss_peak_mb": (peak * 10.0).round() / 10.0,
            "rss_end_mb": (last * 10.0).round() / 10.0,
            "broker_cpu_s": cpu.map(|c| (c * 100.0).round() / 100.0),
            "broker_cpu_us_per_msg": cpu.map(|c| (c * 1e7 / got.max(1) as f64).round() / 10.0),
        })
    );
    Ok(())
}

async fn environment(args: &Args) -> Result<rabbitmq_stream_client::Environment, Error> {
    Ok(rabbitmq_stream_client::Environment::builder()
        .host(&args.host)
        .port(args.stream_port)
        // Every connection to the given address (RabbitMQ would send publishers and
        // consumers to the host name it advertises).
        .load_balancer_mode(true)
        .build()
        .await?)
}

async fn publish_stream(
    args: &Args,
    count: u64,
    size: usize,
    window: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), Error> {
    use rabbitmq_stream_client::types::Message;
    let env = environment(args).await?;
    match env.stream_creator().create(&args.stream).await {
        Ok(()) => {}
        Err(rabbitmq_stream_client::error::StreamCreateError::Create { status, .. })
            if format!("{status:?}").contains("AlreadyExists") => {}
        Err(e) => return Err(e.into()),
    }
    let producer = env.producer().batch_size(500).build(&args.stream).await?;
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let failed = Arc::new(AtomicU64::new(0));
    let body = vec![b'x'; size];
    const BATCH: u64 = 200;
    let mut sent = 0u64;
    while sent < count {
        let n = BATCH.min(count - sent);
        permits.acquire_many(n as u32).await?.forget();
        let msgs: Vec<Message> = (0..n)
            .map(|_| Message::builder().body(body.clone()).build())
            .collect();
        let (p, d, f) = (permits.clone(), done.clone(), failed.clone());
        producer
            .batch_send(msgs, move |status| {
                let (p, d, f) = (p.clone(), d.clone(), f.clone());
                async move {
                    match status {
                        Ok(s) if s.confirmed() => {
                            d.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    p.add_permits(1);
                }
            })
            .await?;
        sent += n;
    }
    // Every confirm (or failure) back.
    let _ = permits.acquire_many(window as u32).await?;
    let _ = producer.close().await;
    match failed.load(Ordering::Relaxed) {
        0 => Ok(()),
        f => Err(format!("{f} messages were not confirmed").into()),
    }
}

async fn replay_stream(
    args: &Args,
    count: u64,
    consumers: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), Error> {
    use rabbitmq_stream_client::types::OffsetSpecification;
    let env = environment(args).await?;
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let mut c = env
            .consumer()
            .offset(OffsetSpecification::First)
            .build(&args.stream)
            .await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while n < count {
                match tokio::time::timeout(Duration::from_secs(30), c.next()).await {
                    Ok(Some(Ok(_))) => {
                        n += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    other => return Err(format!("consumer stopped after {n}: {other:?}")),
                }
            }
            let _ = c.handle().close().await;
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn amqp_channel(uri: &str) -> Result<(lapin::Connection, lapin::Channel), Error> {
    let conn = lapin::Connection::connect(uri, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

async fn publish_amqp(
    args: &Args,
    count: u64,
    size: usize,
    window: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), Error> {
    use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let (_conn, ch) = amqp_channel(&args.uri).await?;
    let mut qargs = FieldTable::default();
    qargs.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    ch.queue_declare(
        args.stream.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        qargs,
    )
    .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    for _ in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let confirm = ch
            .basic_publish(
                "".into(),
                args.stream.as_str().into(),
                Default::default(),
                &body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        let d = done.clone();
        tokio::spawn(async move {
            if matches!(confirm.await, Ok(ref c) if c.is_ack()) {
                d.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // Every confirm back.
    let _ = permits.acquire_many(window as u32).await?;
    Ok(())
}

async fn replay_amqp(
    args: &Args,
    count: u64,
    consumers: usize,
    prefetch: u16,
    done: &Arc<AtomicU64>,
) -> Result<(), Error> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let ack_every = (prefetch as u64 / 10).max(1);
    let mut tasks = Vec::new();
    for k in 0..consumers {
        let (conn, ch) = amqp_channel(&args.uri).await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut cargs = FieldTable::default();
        cargs.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        let mut c = ch
            .basic_consume(
                args.stream.as_str().into(),
                format!("stream-perf-{k}").as_str().into(),
                BasicConsumeOptions::default(),
                cargs,
            )
            .await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let _conn = conn;
            let mut n = 0u64;
            while n < count {
                match tokio::time::timeout(Duration::from_secs(30), c.next()).await {
                    Ok(Some(Ok(d))) => {
                        n += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(ack_every) || n == count {
                            d.ack(BasicAckOptions { multiple: true })
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    other => return Err(format!("consumer {k} stopped after {n}: {other:?}")),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
