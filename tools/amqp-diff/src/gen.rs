//! Seeded generation of op sequences over a small namespace, so that ops collide: the same few
//! queues, exchanges, routing keys, consumer tags and delivery tags come up again and again.

use crate::ops::{Args, Op, Props, Step, Tag, Val};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub ops: usize,
    pub conns: u8,
    pub channels: u16,
    /// Op kinds (as [`Op::kind`] names them) never generated, e.g. to keep a known divergence
    /// from hiding others; also `immediate` (immediate publishes), `bad-args` (invalid argument
    /// values, exchange types, expirations, user ids, `x-match`es) and `reserved` (`amq.`
    /// names, deletes of the built-in exchanges), `args` (queue arguments, alternate exchanges).
    pub exclude: Vec<String>,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            ops: 40,
            conns: 3,
            channels: 3,
            exclude: Vec::new(),
        }
    }
}

const QUEUES: &[&str] = &["q0", "q1", "q2", "q3"];
const EXCHANGES: &[&str] = &["x0", "x1", "x2"];
const KEYS: &[&str] = &["k0", "k1", "k0.a", "#", "*.a", ""];

struct G {
    rng: StdRng,
    seq_no: usize,
    /// No invalid argument values, exchange types, expirations, user ids or `x-match`es.
    valid: bool,
    /// No reserved (`amq.q0`, `amq.x0`) names, no deletes of built-in exchanges.
    no_reserved: bool,
    /// No queue arguments and no alternate exchanges.
    no_args: bool,
}

impl G {
    fn p(&mut self, prob: f64) -> bool {
        self.rng.gen_bool(prob)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.gen_range(0..xs.len())]
    }
    fn queue(&mut self) -> String {
        let r = self.rng.gen_range(0..100);
        if self.no_reserved && r > 96 {
            return self.pick(QUEUES).into();
        }
        match r {
            0..=84 => self.pick(QUEUES).into(),
            85..=92 => "@gen".into(),
            93..=96 => "".into(),
            _ => "amq.q0".into(),
        }
    }
    fn exchange(&mut self) -> String {
        let r = self.rng.gen_range(0..100);
        if self.no_reserved && r > 96 {
            return self.pick(EXCHANGES).into();
        }
        match r {
            0..=74 => self.pick(EXCHANGES).into(),
            75..=84 => "amq.direct".into(),
            85..=89 => "amq.fanout".into(),
            90..=93 => "amq.topic".into(),
            94..=96 => "".into(),
            _ => "amq.x0".into(),
        }
    }
    /// A routing key: often a queue name (for the default exchange), else a key or pattern.
    fn key(&mut self) -> String {
        if self.p(0.3) {
            self.pick(QUEUES).into()
        } else {
            self.pick(KEYS).into()
        }
    }
    fn val_int(&mut self, v: i64) -> Val {
        if self.valid {
            return if self.p(0.7) {
                Val::I32(v as i32)
            } else {
                Val::I64(v)
            };
        }
        match self.rng.gen_range(0..10) {
            0..=5 => Val::I32(v as i32),
            6..=7 => Val::I64(v),
            8 => Val::I16(v as i16),
            _ => Val::Str(v.to_string()),
        }
    }
    fn queue_args(&mut self) -> Args {
        let mut a = Args::new();
        if self.p(0.6) || self.no_args {
            return a;
        }
        let n = self.rng.gen_range(1..=2);
        for _ in 0..n {
            match self.rng.gen_range(0..9) {
                0 => {
                    let n = if self.valid { 2 } else { 3 };
                    let v = *[0i64, 60000, -1].get(self.rng.gen_range(0..n)).unwrap();
                    let v = self.val_int(v);
                    a.push(("x-message-ttl".into(), v))
                }
                1 => {
                    let v = self.rng.gen_range(0..3);
                    let v = self.val_int(v);
                    a.push(("x-max-length".into(), v))
                }
                2 => {
                    let n = if self.valid { 2 } else { 3 };
                    let v = *["drop-head", "reject-publish", "bogus"]
                        .get(self.rng.gen_range(0..n))
                        .unwrap();
                    a.push(("x-overflow".into(), Val::Str(v.into())))
                }
                3 => {
                    let x = self.exchange();
                    a.push(("x-dead-letter-exchange".into(), Val::Str(x)))
                }
                4 => {
                    if self.valid && !a.iter().any(|(k, _)| k == "x-dead-letter-exchange") {
                        let x = self.exchange();
                        a.push(("x-dead-letter-exchange".into(), Val::Str(x)))
                    }
                    let k = self.key();
                    a.push(("x-dead-letter-routing-key".into(), Val::Str(k)))
                }
                5 => {
                    // Not 0: RabbitMQ 4.0 orders by priority with x-max-priority 0, 3.10 does not
                    // (a version difference the tests would otherwise keep finding).
                    let n = if self.valid { 2 } else { 3 };
                    let v = *[3i64, 1, 300].get(self.rng.gen_range(0..n)).unwrap();
                    let v = self.val_int(v);
                    a.push(("x-max-priority".into(), v))
                }
                6 => {
                    let n = if self.valid { 1 } else { 2 };
                    let v = *[600000i64, 0].get(self.rng.gen_range(0..n)).unwrap();
                    let v = self.val_int(v);
                    a.push(("x-expires".into(), v))
                }
                7 => {
                    let n = if self.valid { 2 } else { 3 };
                    let v = *["classic", "quorum", "bogus"]
                        .get(self.rng.gen_range(0..n))
                        .unwrap();
                    a.push(("x-queue-type".into(), Val::Str(v.into())))
                }
                _ => a.push(("x-custom".into(), Val::Str("v".into()))),
            }
        }
        a
    }
    fn headers(&mut self) -> Args {
        let mut a = Args::new();
        if self.p(0.5) {
            a.push(("h0".into(), Val::Str(self.pick(&["a", "b"]).into())));
        }
        if self.p(0.5) {
            a.push(("h1".into(), Val::I32(self.rng.gen_range(0..2))));
        }
        a
    }
    fn bind_args(&mut self) -> Args {
        if self.p(0.7) {
            return Args::new();
        }
        let mut a = self.headers();
        if self.p(0.8) {
            let m = if self.valid {
                self.pick(&["any", "all"])
            } else {
                self.pick(&["any", "all", "bad"])
            };
            a.insert(0, ("x-match".into(), Val::Str(m.into())));
        }
        a
    }
    fn props(&mut self) -> Props {
        let mut p = Props::default();
        if self.p(0.5) {
            return p;
        }
        if self.p(0.3) {
            p.content_type = Some("text/plain".into());
        }
        if self.p(0.4) {
            p.delivery_mode = Some(self.rng.gen_range(1..=2));
        }
        if self.p(0.2) {
            p.priority = Some(self.rng.gen_range(0..=5));
        }
        if self.p(0.15) {
            p.expiration = Some(
                if self.valid {
                    self.pick(&["0", "60000"])
                } else {
                    self.pick(&["0", "60000", "bad", "-1"])
                }
                .into(),
            );
        }
        if self.p(0.1) {
            p.user_id = Some(
                if self.valid {
                    "guest"
                } else {
                    self.pick(&["guest", "other"])
                }
                .into(),
            );
        }
        if self.p(0.2) {
            p.message_id = Some(format!("id{}", self.rng.gen_range(0..3)));
        }
        if self.p(0.1) {
            p.correlation_id = Some("corr".into());
        }
        if self.p(0.1) {
            p.reply_to = Some("rt".into());
        }
        if self.p(0.1) {
            p.timestamp = Some(1_700_000_000);
        }
        if self.p(0.1) {
            p.kind = Some("t".into());
        }
        if self.p(0.1) {
            p.app_id = Some("app".into());
        }
        if self.p(0.3) {
            p.headers = Some(self.headers());
        }
        p
    }
    fn tag(&mut self) -> Tag {
        match self.rng.gen_range(0..10) {
            0..=3 => Tag::Last,
            4 => Tag::N(0),
            5..=8 => Tag::N(self.rng.gen_range(1..=4)),
            _ => Tag::N(self.rng.gen_range(5..=40)),
        }
    }
    fn ctag(&mut self) -> String {
        self.pick(&["t0", "t1", "@last"]).into()
    }

    /// An op of the setup that starts most sequences: plain declarations and bindings, so that
    /// later ops find things to collide with.
    fn setup_op(&mut self) -> Op {
        match self.rng.gen_range(0..10) {
            0..=3 => Op::QueueDeclare {
                name: self.pick(QUEUES).into(),
                passive: false,
                durable: self.p(0.2),
                exclusive: self.p(0.1),
                auto_delete: false,
                args: if self.p(0.3) {
                    self.queue_args()
                } else {
                    Args::new()
                },
            },
            4..=5 => Op::ExchangeDeclare {
                name: self.pick(EXCHANGES).into(),
                kind: self.pick(&["direct", "fanout", "topic", "headers"]).into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                args: Args::new(),
            },
            6..=8 => Op::QueueBind {
                queue: self.pick(QUEUES).into(),
                exchange: self
                    .pick(&["x0", "x1", "x2", "amq.direct", "amq.fanout", "amq.topic"])
                    .into(),
                key: self.key(),
                args: self.bind_args(),
            },
            _ => Op::ExchangeBind {
                dest: self.pick(EXCHANGES).into(),
                src: self.pick(EXCHANGES).into(),
                key: self.key(),
                args: Args::new(),
            },
        }
    }

    fn op(&mut self) -> Op {
        // Weights: publishing, consuming and acking dominate, with declarations to keep the
        // namespace populated and a sprinkling of everything else.
        let w: &[(u32, &str)] = &[
            (10, "queue.declare"),
            (5, "exchange.declare"),
            (7, "queue.bind"),
            (2, "queue.unbind"),
            (3, "exchange.bind"),
            (1, "exchange.unbind"),
            (18, "basic.publish"),
            (6, "basic.get"),
            (6, "basic.consume"),
            (2, "basic.cancel"),
            (3, "basic.qos"),
            (6, "basic.ack"),
            (3, "basic.nack"),
            (3, "basic.reject"),
            (2, "basic.recover"),
            (2, "queue.purge"),
            (3, "queue.delete"),
            (2, "exchange.delete"),
            (2, "tx.select"),
            (2, "tx.commit"),
            (1, "tx.rollback"),
            (2, "confirm.select"),
            (1, "channel.flow"),
            (2, "channel.close"),
            (1, "channel.open(again)"),
            (1, "unopened-channel"),
            (1, "connection.close"),
            (1, "exchange.declare"),
        ];
        let total: u32 = w.iter().map(|x| x.0).sum();
        let mut r = self.rng.gen_range(0..total);
        let mut kind = w[0].1;
        for (wt, k) in w {
            if r < *wt {
                kind = k;
                break;
            }
            r -= wt;
        }
        match kind {
            "queue.declare" => {
                let name = match self.rng.gen_range(0..10) {
                    0 => "".into(),
                    1 if !self.no_reserved => "amq.q0".into(),
                    _ => self.pick(QUEUES).into(),
                };
                Op::QueueDeclare {
                    name,
                    passive: self.p(0.1),
                    durable: self.p(0.3),
                    exclusive: self.p(0.3),
                    auto_delete: self.p(0.2),
                    args: self.queue_args(),
                }
            }
            "exchange.declare" => Op::ExchangeDeclare {
                name: self.exchange(),
                kind: {
                    let n = if self.valid { 5 } else { 6 };
                    ["direct", "direct", "fanout", "topic", "headers", "bogus"]
                        [self.rng.gen_range(0..n)]
                    .into()
                },
                passive: self.p(0.1),
                durable: self.p(0.3),
                auto_delete: self.p(0.15),
                internal: self.p(0.1),
                args: if self.p(0.15) && !self.no_args {
                    vec![("alternate-exchange".into(), Val::Str(self.exchange()))]
                } else {
                    Args::new()
                },
            },
            "queue.bind" | "queue.unbind" => {
                let (queue, exchange, key, args) =
                    (self.queue(), self.exchange(), self.key(), self.bind_args());
                if kind == "queue.bind" {
                    Op::QueueBind {
                        queue,
                        exchange,
                        key,
                        args,
                    }
                } else {
                    Op::QueueUnbind {
                        queue,
                        exchange,
                        key,
                        args,
                    }
                }
            }
            "exchange.bind" | "exchange.unbind" => {
                let (dest, src, key, args) = (
                    self.exchange(),
                    self.exchange(),
                    self.key(),
                    self.bind_args(),
                );
                if kind == "exchange.bind" {
                    Op::ExchangeBind {
                        dest,
                        src,
                        key,
                        args,
                    }
                } else {
                    Op::ExchangeUnbind {
                        dest,
                        src,
                        key,
                        args,
                    }
                }
            }
            "basic.publish" => {
                self.seq_no += 1;
                Op::Publish {
                    exchange: if self.p(0.35) {
                        "".into()
                    } else {
                        self.exchange()
                    },
                    key: self.key(),
                    mandatory: self.p(0.3),
                    immediate: self.p(0.03),
                    props: self.props(),
                    body: format!("m{}", self.seq_no),
                }
            }
            "basic.get" => Op::Get {
                queue: self.queue(),
                no_ack: self.p(0.3),
            },
            "basic.consume" => Op::Consume {
                queue: self.queue(),
                tag: self.pick(&["", "", "t0", "t1"]).into(),
                no_ack: self.p(0.25),
                exclusive: self.p(0.15),
                args: if self.p(0.1) {
                    vec![("x-priority".into(), self.val_int(1))]
                } else {
                    Args::new()
                },
            },
            "basic.cancel" => Op::Cancel { tag: self.ctag() },
            "basic.qos" => Op::Qos {
                prefetch_size: if self.p(0.05) { 1000 } else { 0 },
                prefetch_count: self.rng.gen_range(0..=3),
                global: self.p(0.3),
            },
            "basic.ack" => Op::Ack {
                tag: self.tag(),
                multiple: self.p(0.3),
            },
            "basic.nack" => Op::Nack {
                tag: self.tag(),
                multiple: self.p(0.3),
                requeue: self.p(0.6),
            },
            "basic.reject" => Op::Reject {
                tag: self.tag(),
                requeue: self.p(0.6),
            },
            "basic.recover" => Op::Recover {
                requeue: self.p(0.85),
            },
            "queue.purge" => Op::QueuePurge {
                queue: self.queue(),
            },
            "queue.delete" => Op::QueueDelete {
                queue: self.queue(),
                if_unused: self.p(0.2),
                if_empty: self.p(0.2),
            },
            "exchange.delete" => Op::ExchangeDelete {
                name: if self.no_reserved {
                    self.pick(EXCHANGES).into()
                } else {
                    self.exchange()
                },
                if_unused: self.p(0.3),
            },
            "tx.select" => Op::TxSelect,
            "tx.commit" => Op::TxCommit,
            "tx.rollback" => Op::TxRollback,
            "confirm.select" => Op::ConfirmSelect,
            "channel.flow" => Op::Flow {
                active: self.p(0.5),
            },
            "channel.close" => Op::ChannelClose,
            "channel.open(again)" => Op::ChannelReopen,
            "unopened-channel" => Op::Unopened,
            _ => Op::ConnectionClose,
        }
    }
}

/// The sequence of a seed: the same seed and config always give the same steps.
pub fn generate(seed: u64, cfg: &GenConfig) -> Vec<Step> {
    let has = |f: &str| cfg.exclude.iter().any(|e| e == f);
    let mut g = G {
        rng: StdRng::seed_from_u64(seed),
        seq_no: 0,
        valid: has("bad-args"),
        no_reserved: has("reserved"),
        no_args: has("args"),
    };
    let mut steps = Vec::with_capacity(cfg.ops);
    let mut tries = 0;
    let setup = if g.p(0.8) {
        g.rng.gen_range(2..=8).min(cfg.ops)
    } else {
        0
    };
    while steps.len() < cfg.ops && tries < cfg.ops * 100 {
        tries += 1;
        // Mostly stay on the previous (connection, channel), so state builds up on a channel.
        let (conn, ch) = match steps.last() {
            Some(Step { conn, ch, .. }) if g.p(0.6) => (*conn, *ch),
            _ => (
                g.rng.gen_range(0..cfg.conns),
                g.rng.gen_range(1..=cfg.channels),
            ),
        };
        let op = if steps.len() < setup {
            g.setup_op()
        } else {
            g.op()
        };
        if cfg.exclude.iter().any(|e| e == op.kind()) {
            continue;
        }
        if cfg.exclude.iter().any(|e| e == "immediate") {
            if let Op::Publish {
                immediate: true, ..
            } = op
            {
                continue;
            }
        }
        steps.push(Step { conn, ch, op });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let cfg = GenConfig::default();
        let a = generate(42, &cfg);
        let b = generate(42, &cfg);
        assert_eq!(a, b);
        assert_eq!(a.len(), cfg.ops);
        assert_ne!(a, generate(43, &cfg));
    }

    #[test]
    fn stays_inside_the_namespace_and_round_trips_as_json() {
        let cfg = GenConfig {
            ops: 500,
            ..Default::default()
        };
        let steps = generate(7, &cfg);
        for s in &steps {
            assert!(s.conn < cfg.conns);
            assert!((1..=cfg.channels).contains(&s.ch));
        }
        let kinds: std::collections::BTreeSet<_> = steps.iter().map(|s| s.op.kind()).collect();
        assert!(kinds.len() > 20, "too few op kinds: {kinds:?}");
        let json = serde_json::to_string(&steps).unwrap();
        let back: Vec<Step> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, steps);
    }

    #[test]
    fn valid_only_generation_has_no_bad_values() {
        let cfg = GenConfig {
            ops: 2000,
            exclude: vec!["bad-args".into(), "reserved".into()],
            ..Default::default()
        };
        let json = serde_json::to_string(&generate(11, &cfg)).unwrap();
        for bad in [
            "bogus",
            "\"bad\"",
            "\"-1\"",
            "\"other\"",
            "amq.q0",
            "amq.x0",
            "{\"str\":\"0\"}",
        ] {
            assert!(!json.contains(bad), "{bad} generated");
        }
        let all = serde_json::to_string(&generate(
            11,
            &GenConfig {
                ops: 2000,
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(all.contains("bogus") && all.contains("amq.q0"));
    }

    #[test]
    fn excluded_kinds_are_never_generated() {
        let cfg = GenConfig {
            ops: 300,
            exclude: vec!["basic.publish".into(), "tx.select".into()],
            ..Default::default()
        };
        let steps = generate(3, &cfg);
        assert_eq!(steps.len(), 300);
        assert!(steps
            .iter()
            .all(|s| !matches!(s.op, Op::Publish { .. } | Op::TxSelect)));
    }
}
