//! Runs a sequence against one broker with a small raw AMQP client of its own (blocking
//! sockets, one reader thread per connection feeding one queue), and records what each op got:
//! its synchronous reply (or the channel/connection close it caused) and the asynchronous
//! events (deliveries, returns, confirms, cancels, closes) seen until the broker went quiet.

use crate::norm::{order_events, Event, Norm};
use crate::ops::{Args, Op, Props, Step, Tag, Val};
use bytes::BytesMut;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use warren_protocol::assembler::{Assembler, Command};
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_protocol::frame::{parse_frame, write_content, write_method, Frame};
use warren_protocol::methods::*;
use warren_protocol::table::{FieldTable, FieldValue};
use warren_protocol::{BasicProperties, Method};

/// The queues and exchanges the final probe looks at (and cleanup deletes).
pub const PROBE_QUEUES: &[&str] = &["q0", "q1", "q2", "q3"];
pub const PROBE_EXCHANGES: &[&str] = &["x0", "x1", "x2"];

#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// How long the broker must stay quiet after an op before the next one.
    pub settle: Duration,
    /// How long to wait for a synchronous reply.
    pub reply_timeout: Duration,
    /// Compare channel and connection closes by code and class/method only, not by text (to
    /// explore past known wording and check-order differences).
    pub lenient: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            settle: Duration::from_millis(20),
            reply_timeout: Duration::from_secs(5),
            lenient: false,
        }
    }
}

/// What a run saw: one entry per op, plus a last one for the final probe of queue and exchange
/// state. Each entry is the reply line followed by the ordered event lines.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    pub steps: Vec<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub pass: String,
    pub vhost: String,
}

pub fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or_else(|| format!("{url}: only amqp:// URLs are supported"))?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (user, pass) = match auth {
        Some(a) => {
            let (u, p) = a.split_once(':').unwrap_or((a, ""));
            (u.to_string(), p.to_string())
        }
        None => ("guest".into(), "guest".into()),
    };
    let (hostport, vhost) = match rest.split_once('/') {
        Some((h, v)) if !v.is_empty() => (h, v.replace("%2f", "/").replace("%2F", "/")),
        Some((h, _)) => (h, "/".to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().map_err(|_| format!("{url}: bad port"))?,
        ),
        None => (hostport.to_string(), 5672),
    };
    Ok(Url {
        host,
        port,
        user,
        pass,
        vhost,
    })
}

enum Incoming {
    Frame(Frame),
    Lost(String),
}

struct Msg {
    conn: usize,
    gen: u32,
    inc: Incoming,
}

#[derive(Default)]
struct Chan {
    last_tag: u64,
    last_ctag: String,
    /// Publishes awaiting a confirm, by sequence number; `None` outside confirm mode.
    confirms: Option<(u64, BTreeSet<u64>)>,
}

struct Conn {
    gen: u32,
    sock: TcpStream,
    frame_max: u32,
    channels: HashMap<u16, Chan>,
    asm: HashMap<u16, Assembler>,
}

/// One run against one broker.
struct Exec {
    url: Url,
    cfg: ExecConfig,
    prefix: String,
    norm: Norm,
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    last_gen: String,
    gen_names: Vec<String>,
    events: Vec<Event>,
}

fn read_method(sock: &mut TcpStream, buf: &mut BytesMut) -> Result<Method, String> {
    loop {
        match parse_frame(buf, 0) {
            Ok(Some(f)) if f.kind == 1 => {
                return Method::decode(f.payload).map_err(|e| e.to_string());
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed during handshake".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn send(sock: &mut TcpStream, ch: u16, m: &Method) {
    let mut b = BytesMut::new();
    write_method(&mut b, ch, m);
    let _ = sock.write_all(&b);
}

/// Opens a connection and performs the handshake; returns the socket, frame_max and any bytes
/// already read past connection.open-ok.
fn connect(url: &Url, timeout: Duration) -> Result<(TcpStream, u32, BytesMut), String> {
    let mut sock = TcpStream::connect((url.host.as_str(), url.port))
        .map_err(|e| format!("connect {}:{}: {e}", url.host, url.port))?;
    sock.set_nodelay(true).ok();
    sock.set_read_timeout(Some(timeout)).ok();
    sock.write_all(PROTOCOL_HEADER).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    match read_method(&mut sock, &mut buf)? {
        Method::ConnectionStart(_) => {}
        m => return Err(format!("expected connection.start, got {}", m.name())),
    }
    let mut caps = FieldTable::new();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(c, true);
    }
    let mut props = FieldTable::new();
    props.insert("product", "amqp-diff");
    props.insert("capabilities", caps);
    let response = format!("\0{}\0{}", url.user, url.pass);
    send(
        &mut sock,
        0,
        &ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: response.as_str().into(),
            locale: "en_US".into(),
        }
        .into(),
    );
    let tune = match read_method(&mut sock, &mut buf)? {
        Method::ConnectionTune(t) => t,
        Method::ConnectionClose(c) => {
            return Err(format!("refused: {} {}", c.reply_code, c.reply_text))
        }
        m => return Err(format!("expected connection.tune, got {}", m.name())),
    };
    let frame_max = match tune.frame_max {
        0 => 131072,
        f => f.min(131072),
    };
    send(
        &mut sock,
        0,
        &ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max,
            heartbeat: 0,
        }
        .into(),
    );
    send(
        &mut sock,
        0,
        &ConnectionOpen {
            virtual_host: url.vhost.as_str().into(),
            ..Default::default()
        }
        .into(),
    );
    match read_method(&mut sock, &mut buf)? {
        Method::ConnectionOpenOk(_) => {}
        Method::ConnectionClose(c) => {
            return Err(format!("refused: {} {}", c.reply_code, c.reply_text))
        }
        m => return Err(format!("expected connection.open-ok, got {}", m.name())),
    }
    sock.set_read_timeout(None).ok();
    Ok((sock, frame_max, buf))
}

fn reader(conn: usize, gen: u32, mut sock: TcpStream, mut buf: BytesMut, tx: Sender<Msg>) {
    let mut tmp = vec![0u8; 65536];
    loop {
        loop {
            match parse_frame(&mut buf, 0) {
                Ok(Some(f)) => {
                    if tx
                        .send(Msg {
                            conn,
                            gen,
                            inc: Incoming::Frame(f),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Msg {
                        conn,
                        gen,
                        inc: Incoming::Lost(format!("bad frame: {e}")),
                    });
                    return;
                }
            }
        }
        match sock.read(&mut tmp) {
            Ok(0) => {
                let _ = tx.send(Msg {
                    conn,
                    gen,
                    inc: Incoming::Lost("connection lost (EOF)".into()),
                });
                return;
            }
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => {
                let _ = tx.send(Msg {
                    conn,
                    gen,
                    inc: Incoming::Lost(format!("connection lost ({e})")),
                });
                return;
            }
        }
    }
}

fn fmt_value(v: &FieldValue) -> String {
    match v {
        FieldValue::Bool(b) => format!("{b}"),
        FieldValue::I8(x) => format!("{x}b"),
        FieldValue::U8(x) => format!("{x}B"),
        FieldValue::I16(x) => format!("{x}s"),
        FieldValue::U16(x) => format!("{x}u"),
        FieldValue::I32(x) => format!("{x}i"),
        FieldValue::U32(x) => format!("{x}U"),
        FieldValue::I64(x) => format!("{x}l"),
        FieldValue::F32(x) => format!("{x}f"),
        FieldValue::F64(x) => format!("{x}d"),
        FieldValue::Decimal(s, x) => format!("{x}e-{s}"),
        FieldValue::LongStr(s) => format!("{:?}", s.to_string_lossy()),
        FieldValue::Bytes(s) => format!("x{:?}", s.to_string_lossy()),
        FieldValue::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(fmt_value).collect::<Vec<_>>().join(", ")
            )
        }
        // Timestamps in headers are the broker's clock (x-death "time"): normalised.
        FieldValue::Timestamp(_) => "<time>".into(),
        FieldValue::Table(t) => fmt_table(t),
        FieldValue::Void => "void".into(),
    }
}

/// A table with its keys sorted: RabbitMQ does not promise the order of headers it adds.
fn fmt_table(t: &FieldTable) -> String {
    let mut parts: Vec<String> = t
        .iter()
        .map(|(k, v)| format!("{k}: {}", fmt_value(v)))
        .collect();
    parts.sort();
    format!("{{{}}}", parts.join(", "))
}

fn fmt_props(raw: &[u8]) -> String {
    let p = match BasicProperties::decode(bytes::Bytes::copy_from_slice(raw)) {
        Ok(p) => p,
        Err(e) => return format!("<undecodable properties: {e}>"),
    };
    let mut out = Vec::new();
    macro_rules! s {
        ($f:ident) => {
            if let Some(v) = &p.$f {
                out.push(format!("{}={:?}", stringify!($f), v.as_str()));
            }
        };
    }
    s!(content_type);
    s!(content_encoding);
    if let Some(h) = &p.headers {
        out.push(format!("headers={}", fmt_table(h)));
    }
    if let Some(v) = p.delivery_mode {
        out.push(format!("delivery_mode={v}"));
    }
    if let Some(v) = p.priority {
        out.push(format!("priority={v}"));
    }
    s!(correlation_id);
    s!(reply_to);
    s!(expiration);
    s!(message_id);
    if let Some(v) = p.timestamp {
        out.push(format!("timestamp={v}"));
    }
    s!(kind);
    s!(user_id);
    s!(app_id);
    s!(cluster_id);
    format!("[{}]", out.join(" "))
}

fn val(v: &Val, resolve: &dyn Fn(&str) -> String) -> FieldValue {
    match v {
        Val::I16(x) => FieldValue::I16(*x),
        Val::I32(x) => FieldValue::I32(*x),
        Val::I64(x) => FieldValue::I64(*x),
        Val::Str(s) => FieldValue::LongStr(resolve(s).into()),
        Val::Bool(b) => FieldValue::Bool(*b),
    }
}

fn is_generated(s: &str) -> bool {
    s.starts_with("amq.gen-")
}

/// What an op waits for after sending.
enum Await {
    Nothing,
    Reply(u16),
}

impl Exec {
    fn new(url: Url, cfg: ExecConfig, nconns: usize) -> Self {
        let (tx, rx) = channel();
        let prefix = format!("ad{:06x}-", rand::random::<u32>() & 0xffffff);
        Exec {
            url,
            cfg,
            norm: Norm::new(&prefix),
            prefix,
            conns: (0..nconns).map(|_| None).collect(),
            gens: vec![0; nconns],
            tx,
            rx,
            last_gen: String::new(),
            gen_names: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Prefixes the run's own names (q0, x1, ...); `@gen` is the last server-named queue.
    fn resolve(&self, name: &str) -> String {
        resolve_name(&self.prefix, &self.last_gen, name)
    }

    fn ensure_conn(&mut self, c: usize) -> Result<(), String> {
        if self.conns[c].is_some() {
            return Ok(());
        }
        let (sock, frame_max, buf) = connect(&self.url, self.cfg.reply_timeout)?;
        self.gens[c] += 1;
        let gen = self.gens[c];
        let rsock = sock.try_clone().map_err(|e| e.to_string())?;
        let tx = self.tx.clone();
        std::thread::spawn(move || reader(c, gen, rsock, buf, tx));
        self.conns[c] = Some(Conn {
            gen,
            sock,
            frame_max,
            channels: HashMap::new(),
            asm: HashMap::new(),
        });
        Ok(())
    }

    fn send(&mut self, c: usize, ch: u16, m: Method) {
        if let Some(conn) = self.conns[c].as_mut() {
            send(&mut conn.sock, ch, &m);
        }
    }

    fn push_event(&mut self, c: usize, ch: u16, consumer: String, line: String) {
        let line = self.norm.line(&line);
        let consumer = self.norm.line(&consumer);
        self.events.push(Event {
            conn: c as u8,
            ch,
            consumer,
            line,
        });
    }

    /// Handles one incoming message; returns the reply line if it answers `awaiting`.
    fn handle(&mut self, msg: Msg, awaiting: Option<(usize, u16)>) -> Option<String> {
        let c = msg.conn;
        match &self.conns[c] {
            Some(conn) if conn.gen == msg.gen => {}
            _ => return None, // from a connection already closed or replaced
        }
        let frame = match msg.inc {
            Incoming::Lost(why) => {
                self.conns[c] = None;
                if awaiting.map(|a| a.0) == Some(c) {
                    return Some(why);
                }
                self.push_event(c, 0, String::new(), why);
                return None;
            }
            Incoming::Frame(f) => f,
        };
        if frame.kind == 8 {
            return None;
        }
        let ch = frame.channel;
        let conn = self.conns[c].as_mut().unwrap();
        let cmd = match conn.asm.entry(ch).or_default().push(frame, u64::MAX) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return None,
            Err(e) => {
                let line = format!("undecodable frame from broker: {} {}", e.code, e.text);
                return self.reply_or_event(c, ch, awaiting, line, String::new());
            }
        };
        let Command { method, content } = cmd;
        let body = content
            .as_ref()
            .map(|x| String::from_utf8_lossy(&x.body).into_owned())
            .unwrap_or_default();
        let props = content
            .as_ref()
            .map(|x| fmt_props(&x.properties))
            .unwrap_or_default();
        match method {
            Method::ConnectionClose(m) => {
                send(&mut conn.sock, 0, &ConnectionCloseOk {}.into());
                self.conns[c] = None;
                let text = if self.cfg.lenient {
                    "…"
                } else {
                    m.reply_text.as_str()
                };
                let line = format!(
                    "connection.close {} {:?} {}.{}",
                    m.reply_code, text, m.class_id, m.method_id
                );
                if awaiting.map(|a| a.0) == Some(c) {
                    return Some(line);
                }
                self.push_event(c, 0, String::new(), line);
                None
            }
            Method::ConnectionCloseOk(_) => {
                self.conns[c] = None;
                self.reply_or_event(c, ch, awaiting, "connection.close_ok".into(), String::new())
            }
            Method::ChannelClose(m) => {
                send(&mut conn.sock, ch, &ChannelCloseOk {}.into());
                conn.channels.remove(&ch);
                conn.asm.remove(&ch);
                let text = if self.cfg.lenient {
                    "…"
                } else {
                    m.reply_text.as_str()
                };
                let line = format!(
                    "channel.close {} {:?} {}.{}",
                    m.reply_code, text, m.class_id, m.method_id
                );
                self.reply_or_event(c, ch, awaiting, line, String::new())
            }
            Method::BasicDeliver(d) => {
                if let Some(chan) = conn.channels.get_mut(&ch) {
                    chan.last_tag = chan.last_tag.max(d.delivery_tag);
                }
                let line = format!(
                    "deliver ctag={} tag={} redelivered={} ex={:?} rk={:?} body={} props={}",
                    d.consumer_tag.as_str(),
                    d.delivery_tag,
                    d.redelivered,
                    d.exchange.as_str(),
                    d.routing_key.as_str(),
                    body,
                    props
                );
                self.push_event(c, ch, d.consumer_tag.as_str().to_string(), line);
                None
            }
            Method::BasicReturn(r) => {
                let line = format!(
                    "return {} {:?} ex={:?} rk={:?} body={} props={}",
                    r.reply_code,
                    r.reply_text.as_str(),
                    r.exchange.as_str(),
                    r.routing_key.as_str(),
                    body,
                    props
                );
                self.push_event(c, ch, String::new(), line);
                None
            }
            Method::BasicAck(_) | Method::BasicNack(_) => {
                let (kind, tag, multiple) = match &method {
                    Method::BasicAck(a) => ("ack", a.delivery_tag, a.multiple),
                    Method::BasicNack(n) => ("nack", n.delivery_tag, n.multiple),
                    _ => unreachable!(),
                };
                // Confirms may be coalesced (multiple) at the broker's whim: expand them.
                let mut lines = Vec::new();
                match conn.channels.get_mut(&ch).and_then(|x| x.confirms.as_mut()) {
                    Some((_, pending)) => {
                        let done: Vec<u64> = if multiple {
                            pending.range(..=tag).copied().collect()
                        } else {
                            pending.get(&tag).copied().into_iter().collect()
                        };
                        if done.is_empty() {
                            lines.push(format!(
                                "confirm {kind} of unknown tag {tag} multiple={multiple}"
                            ));
                        }
                        for t in done {
                            pending.remove(&t);
                            lines.push(format!("confirm {kind} {t}"));
                        }
                    }
                    None => {
                        lines.push(format!("{kind} from broker outside confirm mode tag={tag}"))
                    }
                }
                for l in lines {
                    self.push_event(c, ch, String::new(), l);
                }
                None
            }
            Method::BasicCancel(x) => {
                let line = format!("cancelled by broker ctag={}", x.consumer_tag.as_str());
                self.push_event(c, ch, x.consumer_tag.as_str().to_string(), line);
                None
            }
            Method::ConnectionBlocked(_)
            | Method::ConnectionUnblocked(_)
            | Method::ChannelFlow(_) => {
                let line = method.name().to_string();
                self.push_event(c, ch, String::new(), line);
                None
            }
            other => {
                let line = match &other {
                    Method::QueueDeclareOk(m) => {
                        if is_generated(&m.queue) {
                            self.last_gen = m.queue.to_string();
                            if !self.gen_names.contains(&self.last_gen) {
                                self.gen_names.push(self.last_gen.clone());
                            }
                        }
                        format!(
                            "queue.declare_ok {} messages={} consumers={}",
                            m.queue.as_str(),
                            m.message_count,
                            m.consumer_count
                        )
                    }
                    Method::QueuePurgeOk(m) => {
                        format!("queue.purge_ok messages={}", m.message_count)
                    }
                    Method::QueueDeleteOk(m) => {
                        format!("queue.delete_ok messages={}", m.message_count)
                    }
                    Method::BasicConsumeOk(m) => {
                        if let Some(chan) = conn.channels.get_mut(&ch) {
                            chan.last_ctag = m.consumer_tag.to_string();
                        }
                        format!("basic.consume_ok {}", m.consumer_tag.as_str())
                    }
                    Method::BasicCancelOk(m) => {
                        format!("basic.cancel_ok {}", m.consumer_tag.as_str())
                    }
                    Method::BasicGetOk(m) => {
                        if let Some(chan) = conn.channels.get_mut(&ch) {
                            chan.last_tag = chan.last_tag.max(m.delivery_tag);
                        }
                        format!(
                            "basic.get_ok tag={} redelivered={} ex={:?} rk={:?} remaining={} body={} props={}",
                            m.delivery_tag,
                            m.redelivered,
                            m.exchange.as_str(),
                            m.routing_key.as_str(),
                            m.message_count,
                            body,
                            props
                        )
                    }
                    Method::ConfirmSelectOk(_) => {
                        if let Some(chan) = conn.channels.get_mut(&ch) {
                            if chan.confirms.is_none() {
                                chan.confirms = Some((1, BTreeSet::new()));
                            }
                        }
                        other.name().to_string()
                    }
                    Method::ChannelFlowOk(m) => format!("channel.flow_ok active={}", m.active),
                    m => m.name().to_string(),
                };
                self.reply_or_event(c, ch, awaiting, line, String::new())
            }
        }
    }

    fn reply_or_event(
        &mut self,
        c: usize,
        ch: u16,
        awaiting: Option<(usize, u16)>,
        line: String,
        consumer: String,
    ) -> Option<String> {
        if awaiting == Some((c, ch)) {
            Some(line)
        } else {
            let line = if line.starts_with("channel.close ") {
                line
            } else {
                format!("unexpected {line}")
            };
            self.push_event(c, ch, consumer, line);
            None
        }
    }

    /// Waits for the reply on (c, ch); events seen meanwhile are kept.
    fn await_reply(&mut self, c: usize, ch: u16) -> String {
        let deadline = Instant::now() + self.cfg.reply_timeout;
        loop {
            if self.conns[c].is_none() {
                return "connection gone".into();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    if let Some(r) = self.handle(m, Some((c, ch))) {
                        return r;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return "timeout (no reply)".into(),
                Err(RecvTimeoutError::Disconnected) => return "internal: queue closed".into(),
            }
        }
    }

    /// Takes in events until nothing has arrived for `settle` times `factor` (at most 3 s).
    fn settle(&mut self, factor: u32) {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match self.rx.recv_timeout(self.cfg.settle * factor) {
                Ok(m) => {
                    self.handle(m, None);
                }
                Err(_) => break,
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m, None);
        }
    }

    /// Opens (c, ch) if needed: a reply line if opening failed.
    fn ensure_channel(&mut self, c: usize, ch: u16) -> Result<(), String> {
        self.ensure_conn(c)?;
        if self.conns[c].as_ref().unwrap().channels.contains_key(&ch) {
            return Ok(());
        }
        self.send(c, ch, ChannelOpen::default().into());
        let r = self.await_reply(c, ch);
        if r == "channel.open_ok" {
            if let Some(conn) = self.conns[c].as_mut() {
                conn.channels.insert(ch, Chan::default());
            }
            Ok(())
        } else {
            Err(format!("(opening the channel) {r}"))
        }
    }

    fn table(&self, args: &Args) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in args {
            t.0.push((k.as_str().into(), val(v, &|s| self.resolve(s))));
        }
        t
    }

    fn props(&self, p: &Props) -> BasicProperties {
        BasicProperties {
            content_type: p.content_type.as_deref().map(Into::into),
            delivery_mode: p.delivery_mode,
            priority: p.priority,
            expiration: p.expiration.as_deref().map(Into::into),
            user_id: p.user_id.as_deref().map(Into::into),
            message_id: p.message_id.as_deref().map(Into::into),
            correlation_id: p.correlation_id.as_deref().map(Into::into),
            reply_to: p.reply_to.as_deref().map(Into::into),
            timestamp: p.timestamp,
            kind: p.kind.as_deref().map(Into::into),
            app_id: p.app_id.as_deref().map(Into::into),
            headers: p.headers.as_ref().map(|h| self.table(h)),
            ..Default::default()
        }
    }

    fn tag(&self, c: usize, ch: u16, t: Tag) -> u64 {
        match t {
            Tag::N(n) => n,
            Tag::Last => self.conns[c]
                .as_ref()
                .and_then(|x| x.channels.get(&ch))
                .map(|x| x.last_tag)
                .unwrap_or(0),
        }
    }

    fn chan(&mut self, c: usize, ch: u16) -> Option<&mut Chan> {
        self.conns[c].as_mut().and_then(|x| x.channels.get_mut(&ch))
    }

    /// Runs one step: its outcome lines.
    fn step(&mut self, s: &Step) -> Vec<String> {
        self.drain();
        let c = s.conn as usize;
        let ch = s.ch;
        let (method, wait): (Method, Await) = match &s.op {
            Op::Unopened => {
                if let Err(e) = self.ensure_conn(c) {
                    return vec![e];
                }
                (
                    BasicQos {
                        prefetch_count: 1,
                        ..Default::default()
                    }
                    .into(),
                    Await::Reply(ch + 100),
                )
            }
            _ => {
                if let Err(e) = self.ensure_channel(c, ch) {
                    return self.finish(e);
                }
                match &s.op {
                    Op::ExchangeDeclare {
                        name,
                        kind,
                        passive,
                        durable,
                        auto_delete,
                        internal,
                        args,
                    } => (
                        ExchangeDeclare {
                            exchange: self.resolve(name).into(),
                            kind: kind.as_str().into(),
                            passive: *passive,
                            durable: *durable,
                            auto_delete: *auto_delete,
                            internal: *internal,
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::ExchangeDelete { name, if_unused } => (
                        ExchangeDelete {
                            exchange: self.resolve(name).into(),
                            if_unused: *if_unused,
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::ExchangeBind {
                        dest,
                        src,
                        key,
                        args,
                    } => (
                        ExchangeBind {
                            destination: self.resolve(dest).into(),
                            source: self.resolve(src).into(),
                            routing_key: self.resolve(key).into(),
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::ExchangeUnbind {
                        dest,
                        src,
                        key,
                        args,
                    } => (
                        ExchangeUnbind {
                            destination: self.resolve(dest).into(),
                            source: self.resolve(src).into(),
                            routing_key: self.resolve(key).into(),
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::QueueDeclare {
                        name,
                        passive,
                        durable,
                        exclusive,
                        auto_delete,
                        args,
                    } => (
                        QueueDeclare {
                            queue: self.resolve(name).into(),
                            passive: *passive,
                            durable: *durable,
                            exclusive: *exclusive,
                            auto_delete: *auto_delete,
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::QueueBind {
                        queue,
                        exchange,
                        key,
                        args,
                    } => (
                        QueueBind {
                            queue: self.resolve(queue).into(),
                            exchange: self.resolve(exchange).into(),
                            routing_key: self.resolve(key).into(),
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::QueueUnbind {
                        queue,
                        exchange,
                        key,
                        args,
                    } => (
                        QueueUnbind {
                            queue: self.resolve(queue).into(),
                            exchange: self.resolve(exchange).into(),
                            routing_key: self.resolve(key).into(),
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::QueuePurge { queue } => (
                        QueuePurge {
                            queue: self.resolve(queue).into(),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::QueueDelete {
                        queue,
                        if_unused,
                        if_empty,
                    } => (
                        QueueDelete {
                            queue: self.resolve(queue).into(),
                            if_unused: *if_unused,
                            if_empty: *if_empty,
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::Qos {
                        prefetch_size,
                        prefetch_count,
                        global,
                    } => (
                        BasicQos {
                            prefetch_size: *prefetch_size,
                            prefetch_count: *prefetch_count,
                            global: *global,
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::Consume {
                        queue,
                        tag,
                        no_ack,
                        exclusive,
                        args,
                    } => (
                        BasicConsume {
                            queue: self.resolve(queue).into(),
                            consumer_tag: tag.as_str().into(),
                            no_ack: *no_ack,
                            exclusive: *exclusive,
                            arguments: self.table(args),
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::Cancel { tag } => {
                        let t = if tag == "@last" {
                            self.chan(c, ch)
                                .map(|x| x.last_ctag.clone())
                                .unwrap_or_default()
                        } else {
                            tag.clone()
                        };
                        (
                            BasicCancel {
                                consumer_tag: t.into(),
                                nowait: false,
                            }
                            .into(),
                            Await::Reply(ch),
                        )
                    }
                    Op::Publish {
                        exchange,
                        key,
                        mandatory,
                        immediate,
                        props,
                        body,
                    } => {
                        let m: Method = BasicPublish {
                            exchange: self.resolve(exchange).into(),
                            routing_key: self.resolve(key).into(),
                            mandatory: *mandatory,
                            immediate: *immediate,
                            ..Default::default()
                        }
                        .into();
                        let props = self.props(props).to_bytes();
                        if let Some((next, pending)) =
                            self.chan(c, ch).and_then(|x| x.confirms.as_mut())
                        {
                            pending.insert(*next);
                            *next += 1;
                        }
                        let conn = self.conns[c].as_mut().unwrap();
                        let mut b = BytesMut::new();
                        write_method(&mut b, ch, &m);
                        write_content(&mut b, ch, &props, body.as_bytes(), conn.frame_max);
                        let _ = conn.sock.write_all(&b);
                        self.barrier(c, ch);
                        return self.finish("-".into());
                    }
                    Op::Get { queue, no_ack } => (
                        BasicGet {
                            queue: self.resolve(queue).into(),
                            no_ack: *no_ack,
                            ..Default::default()
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::Ack { tag, multiple } => (
                        BasicAck {
                            delivery_tag: self.tag(c, ch, *tag),
                            multiple: *multiple,
                        }
                        .into(),
                        Await::Nothing,
                    ),
                    Op::Nack {
                        tag,
                        multiple,
                        requeue,
                    } => (
                        BasicNack {
                            delivery_tag: self.tag(c, ch, *tag),
                            multiple: *multiple,
                            requeue: *requeue,
                        }
                        .into(),
                        Await::Nothing,
                    ),
                    Op::Reject { tag, requeue } => (
                        BasicReject {
                            delivery_tag: self.tag(c, ch, *tag),
                            requeue: *requeue,
                        }
                        .into(),
                        Await::Nothing,
                    ),
                    Op::Recover { requeue } => {
                        (BasicRecover { requeue: *requeue }.into(), Await::Reply(ch))
                    }
                    Op::TxSelect => (TxSelect {}.into(), Await::Reply(ch)),
                    Op::TxCommit => (TxCommit {}.into(), Await::Reply(ch)),
                    Op::TxRollback => (TxRollback {}.into(), Await::Reply(ch)),
                    Op::ConfirmSelect => (ConfirmSelect { nowait: false }.into(), Await::Reply(ch)),
                    Op::Flow { active } => {
                        (ChannelFlow { active: *active }.into(), Await::Reply(ch))
                    }
                    Op::ChannelClose => (
                        ChannelClose {
                            reply_code: 200,
                            reply_text: "bye".into(),
                            class_id: 0,
                            method_id: 0,
                        }
                        .into(),
                        Await::Reply(ch),
                    ),
                    Op::ChannelReopen => (ChannelOpen::default().into(), Await::Reply(ch)),
                    Op::ConnectionClose => (
                        ConnectionClose {
                            reply_code: 200,
                            reply_text: "bye".into(),
                            class_id: 0,
                            method_id: 0,
                        }
                        .into(),
                        Await::Reply(0),
                    ),
                    Op::Unopened => unreachable!(),
                }
            }
        };
        match wait {
            Await::Nothing => {
                self.send(c, ch, method);
                self.barrier(c, ch);
                self.finish("-".into())
            }
            Await::Reply(on) => {
                let send_on = if matches!(s.op, Op::ConnectionClose) {
                    0
                } else {
                    on
                };
                self.send(c, send_on, method);
                let reply = self.await_reply(c, on);
                if matches!(s.op, Op::ChannelClose) && reply == "channel.close_ok" {
                    if let Some(conn) = self.conns[c].as_mut() {
                        conn.channels.remove(&ch);
                        conn.asm.remove(&ch);
                    }
                }
                // What these set off happens in other queues and consumers, later (a quorum
                // queue's consumers hear of its deletion well after delete-ok): wait longer.
                if matches!(
                    s.op,
                    Op::QueueDelete { .. }
                        | Op::ChannelClose
                        | Op::ConnectionClose
                        | Op::Cancel { .. }
                        | Op::Recover { .. }
                ) {
                    self.settle(3);
                }
                self.finish(reply)
            }
        }
    }

    /// After an op without a reply: a passive declare of `amq.direct` on the same channel, whose
    /// reply comes after whatever the channel sent for the op (a return, a channel.close for an
    /// unknown delivery tag), so that those do not depend on timing. Its own reply is not
    /// recorded; a close that answers it instead is, as an event.
    fn barrier(&mut self, c: usize, ch: u16) {
        let open = self.conns[c]
            .as_ref()
            .is_some_and(|x| x.channels.contains_key(&ch));
        if !open {
            return;
        }
        self.send(
            c,
            ch,
            ExchangeDeclare {
                exchange: "amq.direct".into(),
                kind: "direct".into(),
                passive: true,
                ..Default::default()
            }
            .into(),
        );
        let r = self.await_reply(c, ch);
        if r != "exchange.declare_ok" {
            let on = if r.starts_with("channel.close ") {
                ch
            } else {
                0
            };
            self.push_event(c, on, String::new(), r);
        }
    }

    fn finish(&mut self, reply: String) -> Vec<String> {
        self.settle(1);
        let reply = self.norm.line(&reply);
        let mut out = vec![reply];
        out.extend(order_events(std::mem::take(&mut self.events)));
        out
    }

    /// A fresh connection looks at every queue and exchange of the namespace (passive
    /// declares, one channel each since a 404 closes it).
    fn probe(&mut self) -> Vec<String> {
        self.settle(3);
        let mut out = vec!["final state".to_string()];
        out.extend(order_events(std::mem::take(&mut self.events)));
        let pc = self.conns.len() - 1;
        if let Err(e) = self.ensure_conn(pc) {
            out.push(format!("probe connection failed: {e}"));
            return out;
        }
        let mut ch = 0u16;
        let mut queues: Vec<String> = PROBE_QUEUES.iter().map(|q| self.resolve(q)).collect();
        queues.extend(self.gen_names.clone());
        for q in queues {
            ch += 1;
            if self.ensure_channel(pc, ch).is_err() {
                continue;
            }
            self.send(
                pc,
                ch,
                QueueDeclare {
                    queue: q.as_str().into(),
                    passive: true,
                    ..Default::default()
                }
                .into(),
            );
            let r = self.await_reply(pc, ch);
            let r = self.norm.line(&r);
            out.push(format!("  queue {}: {r}", self.norm.line(&q)));
        }
        for x in PROBE_EXCHANGES {
            ch += 1;
            if self.ensure_channel(pc, ch).is_err() {
                continue;
            }
            let x = self.resolve(x);
            self.send(
                pc,
                ch,
                ExchangeDeclare {
                    exchange: x.as_str().into(),
                    passive: true,
                    ..Default::default()
                }
                .into(),
            );
            let r = self.await_reply(pc, ch);
            let r = self.norm.line(&r);
            out.push(format!("  exchange {}: {r}", self.norm.line(&x)));
        }
        self.events.clear();
        out
    }

    /// Deletes what the run declared and closes every connection.
    fn cleanup(&mut self) {
        self.events.clear();
        let pc = self.conns.len() - 1;
        // Close the op connections first, so their exclusive queues go and nothing is locked.
        for c in 0..pc {
            if self.conns[c].is_some() {
                self.send(
                    c,
                    0,
                    ConnectionClose {
                        reply_code: 200,
                        reply_text: "bye".into(),
                        class_id: 0,
                        method_id: 0,
                    }
                    .into(),
                );
                let _ = self.await_reply(c, 0);
                self.conns[c] = None;
            }
        }
        if self.ensure_conn(pc).is_err() {
            return;
        }
        let mut queues: Vec<String> = PROBE_QUEUES.iter().map(|q| self.resolve(q)).collect();
        queues.extend(self.gen_names.clone());
        let mut ch = 1000;
        for q in queues {
            ch += 1;
            if self.ensure_channel(pc, ch).is_ok() {
                self.send(
                    pc,
                    ch,
                    QueueDelete {
                        queue: q.as_str().into(),
                        ..Default::default()
                    }
                    .into(),
                );
                let _ = self.await_reply(pc, ch);
            }
        }
        for x in PROBE_EXCHANGES {
            ch += 1;
            let x = self.resolve(x);
            if self.ensure_channel(pc, ch).is_ok() {
                self.send(
                    pc,
                    ch,
                    ExchangeDelete {
                        exchange: x.as_str().into(),
                        ..Default::default()
                    }
                    .into(),
                );
                let _ = self.await_reply(pc, ch);
            }
        }
        if self.conns[pc].is_some() {
            self.send(
                pc,
                0,
                ConnectionClose {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                }
                .into(),
            );
            let _ = self.await_reply(pc, 0);
            self.conns[pc] = None;
        }
    }
}

/// The name an op's symbolic name stands for in a run with `prefix`.
pub fn resolve_name(prefix: &str, last_gen: &str, name: &str) -> String {
    if name == "@gen" {
        return last_gen.to_string();
    }
    let b = name.as_bytes();
    if b.len() >= 2 && (b[0] == b'q' || b[0] == b'x') && b[1..].iter().all(u8::is_ascii_digit) {
        return format!("{prefix}{name}");
    }
    name.to_string()
}

/// Runs `steps` against the broker at `url`. `upto` stops after that many steps (and skips
/// the final probe), for runs that only need a prefix of the trace.
pub fn execute(url: &Url, steps: &[Step], cfg: &ExecConfig) -> Trace {
    let nconns = steps.iter().map(|s| s.conn as usize + 1).max().unwrap_or(0) + 1;
    let mut ex = Exec::new(url.clone(), cfg.clone(), nconns);
    let mut trace = Trace::default();
    for s in steps {
        trace.steps.push(ex.step(s));
    }
    trace.steps.push(ex.probe());
    ex.cleanup();
    trace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("amqp://guest:pw@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.user.as_str(),
                u.pass.as_str(),
                u.vhost.as_str()
            ),
            ("127.0.0.1", 5673, "guest", "pw", "/")
        );
        let u = parse_url("amqp://localhost").unwrap();
        assert_eq!(
            (u.port, u.vhost.as_str(), u.user.as_str()),
            (5672, "/", "guest")
        );
        assert!(parse_url("http://x").is_err());
    }

    #[test]
    fn names_resolve() {
        assert_eq!(resolve_name("p-", "amq.gen-1", "q1"), "p-q1");
        assert_eq!(resolve_name("p-", "amq.gen-1", "x12"), "p-x12");
        assert_eq!(resolve_name("p-", "amq.gen-1", "@gen"), "amq.gen-1");
        assert_eq!(resolve_name("p-", "", "amq.direct"), "amq.direct");
        assert_eq!(resolve_name("p-", "", "k0"), "k0");
        assert_eq!(resolve_name("p-", "", ""), "");
    }
}
