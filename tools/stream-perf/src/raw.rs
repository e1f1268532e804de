//! `--client raw`: the stream protocol spoken directly (PROTOCOL.adoc of RabbitMQ's
//! `rabbitmq_stream` plugin), so the load tool's own cost stays far below the broker's:
//! published messages are one AMQP 1.0 data section encoded once and sent as they are, in
//! frames of `BATCH`; a consumer counts the records of each delivered chunk from its header
//! (nothing is decoded) and gives one credit back per chunk, as the client libraries do.
//! The same frames go to every broker.

use crate::{Args, Error};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const PUBLISH: u16 = 0x02;
const PUBLISH_CONFIRM: u16 = 0x03;
const PUBLISH_ERROR: u16 = 0x04;
const DECLARE_PUBLISHER: u16 = 0x01;
const SUBSCRIBE: u16 = 0x07;
const DELIVER: u16 = 0x08;
const CREDIT: u16 = 0x09;
const CREATE: u16 = 0x0d;
const PEER_PROPERTIES: u16 = 0x11;
const SASL_HANDSHAKE: u16 = 0x12;
const SASL_AUTHENTICATE: u16 = 0x13;
const TUNE: u16 = 0x14;
const OPEN: u16 = 0x15;
const RESPONSE: u16 = 0x8000;
const OK: u16 = 0x01;
const STREAM_ALREADY_EXISTS: u16 = 0x05;

/// Messages per publish frame (rabbitmq-stream-client's batches in `publish_stream`: 200).
const BATCH: usize = 200;
/// Chunks a subscription may have on their way (the client libraries' default: 10).
const INITIAL_CREDIT: u16 = 10;

/// One frame being written: size, key, version, then what the caller adds.
struct Frame(Vec<u8>);

impl Frame {
    fn new(key: u16) -> Frame {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&key.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        Frame(v)
    }
    fn u8(mut self, x: u8) -> Frame {
        self.0.push(x);
        self
    }
    fn u16(mut self, x: u16) -> Frame {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn u32(mut self, x: u32) -> Frame {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn string(mut self, s: &str) -> Frame {
        self.0.extend_from_slice(&(s.len() as u16).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Frame {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let n = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&n.to_be_bytes());
        self.0
    }
}

/// A received frame: its key and what follows the version.
struct Received {
    key: u16,
    body: Vec<u8>,
}

impl Received {
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes(self.body[at..at + 2].try_into().unwrap())
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    /// A response's code (after its correlation id).
    fn code(&self) -> u16 {
        self.u16_at(4)
    }
}

async fn read_frame(rd: &mut BufReader<OwnedReadHalf>) -> Result<Received, Error> {
    let n = rd.read_u32().await? as usize;
    let mut body = vec![0; n];
    rd.read_exact(&mut body).await?;
    if n < 4 {
        return Err("a frame shorter than its key and version".into());
    }
    let key = u16::from_be_bytes([body[0], body[1]]);
    body.drain(..4);
    Ok(Received { key, body })
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    correlation: u32,
}

impl Conn {
    /// Connects, authenticates as guest and opens vhost `/`.
    async fn open(args: &Args) -> Result<Conn, Error> {
        let sock = TcpStream::connect((args.host.as_str(), args.stream_port)).await?;
        sock.set_nodelay(true)?;
        let (rd, wr) = sock.into_split();
        let mut c = Conn {
            rd: BufReader::with_capacity(256 * 1024, rd),
            wr,
            correlation: 0,
        };
        let f = c.request(PEER_PROPERTIES).u32(1);
        c.call(
            f.string("product").string("stream-perf raw").done(),
            "peer properties",
        )
        .await?;
        let f = c.request(SASL_HANDSHAKE);
        c.call(f.done(), "sasl handshake").await?;
        let f = c
            .request(SASL_AUTHENTICATE)
            .string("PLAIN")
            .bytes(b"\0guest\0guest");
        c.call(f.done(), "sasl authenticate").await?;
        let tune = loop {
            let r = read_frame(&mut c.rd).await?;
            if r.key == TUNE {
                break r;
            }
        };
        // The server's frame size and heartbeat, taken as they are.
        let reply = Frame::new(TUNE)
            .u32(tune.u32_at(0))
            .u32(tune.u32_at(4))
            .done();
        c.wr.write_all(&reply).await?;
        let f = c.request(OPEN).string("/");
        c.call(f.done(), "open").await?;
        Ok(c)
    }

    /// A request frame with the next correlation id.
    fn request(&mut self, key: u16) -> Frame {
        self.correlation += 1;
        Frame::new(key).u32(self.correlation)
    }

    /// Sends a request and waits for its response; its code must be `OK`.
    async fn call(&mut self, frame: Vec<u8>, what: &str) -> Result<u16, Error> {
        let code = self.call_any(frame).await?;
        if code != OK {
            return Err(format!("{what}: response code {code:#x}").into());
        }
        Ok(code)
    }

    async fn call_any(&mut self, frame: Vec<u8>) -> Result<u16, Error> {
        let key = u16::from_be_bytes([frame[4], frame[5]]) | RESPONSE;
        self.wr.write_all(&frame).await?;
        loop {
            let r = read_frame(&mut self.rd).await?;
            if r.key == key {
                return Ok(r.code());
            }
        }
    }
}

/// One AMQP 1.0 message of `size` bytes: a data section only.
fn message(size: usize) -> Vec<u8> {
    let mut m = vec![0x00, 0x53, 0x75, 0xb0];
    m.extend_from_slice(&(size as u32).to_be_bytes());
    m.resize(m.len() + size, b'x');
    m
}

pub async fn publish(
    args: &Args,
    count: u64,
    size: usize,
    window: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), Error> {
    let mut c = Conn::open(args).await?;
    let f = c.request(CREATE).string(&args.stream).u32(0);
    match c.call_any(f.done()).await? {
        OK | STREAM_ALREADY_EXISTS => {}
        code => return Err(format!("create: response code {code:#x}").into()),
    }
    let f = c
        .request(DECLARE_PUBLISHER)
        .u8(1)
        .string("")
        .string(&args.stream);
    c.call(f.done(), "declare publisher").await?;
    let Conn { mut rd, mut wr, .. } = c;
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let failed = Arc::new(AtomicU64::new(0));
    // Confirms (and errors) give their messages' permits back.
    let confirms = {
        let (permits, done, failed) = (permits.clone(), done.clone(), failed.clone());
        tokio::spawn(async move {
            let mut seen = 0u64;
            while seen < count {
                let r = read_frame(&mut rd).await?;
                let n = match r.key {
                    PUBLISH_CONFIRM => {
                        let n = r.u32_at(1) as u64;
                        done.fetch_add(n, Ordering::Relaxed);
                        n
                    }
                    PUBLISH_ERROR => {
                        let n = r.u32_at(1) as u64;
                        failed.fetch_add(n, Ordering::Relaxed);
                        n
                    }
                    _ => 0,
                };
                seen += n;
                permits.add_permits(n as usize);
            }
            Ok::<(), Error>(())
        })
    };
    let msg = message(size);
    let mut next_id = 0u64;
    let mut buf = Vec::with_capacity(BATCH * (msg.len() + 12) + 16);
    while next_id < count {
        let n = (BATCH as u64).min(count - next_id);
        permits.acquire_many(n as u32).await?.forget();
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&PUBLISH.to_be_bytes());
        buf.extend_from_slice(&1u16.to_be_bytes());
        buf.push(1);
        buf.extend_from_slice(&(n as u32).to_be_bytes());
        for _ in 0..n {
            buf.extend_from_slice(&next_id.to_be_bytes());
            buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            buf.extend_from_slice(&msg);
            next_id += 1;
        }
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        wr.write_all(&buf).await?;
    }
    confirms.await??;
    match failed.load(Ordering::Relaxed) {
        0 => Ok(()),
        f => Err(format!("{f} messages were not confirmed").into()),
    }
}

pub async fn replay(
    args: &Args,
    count: u64,
    consumers: usize,
    done: &Arc<AtomicU64>,
) -> Result<(), Error> {
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let mut c = Conn::open(args).await?;
        let f = c
            .request(SUBSCRIBE)
            .u8(1)
            .string(&args.stream)
            .u16(1) // first
            .u16(INITIAL_CREDIT)
            .u32(0);
        c.call(f.done(), "subscribe").await?;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let credit = Frame::new(CREDIT).u8(1).u16(1).done();
            let mut n = 0u64;
            while n < count {
                let r =
                    tokio::time::timeout(std::time::Duration::from_secs(30), read_frame(&mut c.rd))
                        .await
                        .map_err(|_| format!("consumer stopped after {n}"))??;
                if r.key != DELIVER {
                    continue;
                }
                // Subscription id, then the chunk: magic/version, type, entries (u16),
                // records (u32), ...
                let records = r.u32_at(1 + 4) as u64;
                let records = records.min(count - n);
                n += records;
                done.fetch_add(records, Ordering::Relaxed);
                c.wr.write_all(&credit).await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
