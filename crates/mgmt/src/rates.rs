//! Message rates for `message_stats`: every `collect_statistics_interval` (5 s by default, as
//! RabbitMQ) a sampler reads the counters the broker keeps (per channel, per queue, per
//! connection; see `warren_broker::stats`) and keeps what rates need: the last two samples of
//! each queue, channel and connection, and for the overview and each vhost the samples of the
//! last 10 minutes, for the `msg_rates_age` / `msg_rates_incr` query parameters.
//!
//! A counter's value in a response is read at request time; its `_details.rate` is the change
//! per second between the last two samples.

use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use warren_broker::stats::MessageCounts;
use warren_broker::Broker;

/// How long the overview's and vhosts' sample history reaches back.
const HISTORY: Duration = Duration::from_secs(10 * 60);

/// Named counter values at one moment.
pub type Fields = Vec<(&'static str, u64)>;

/// Samples of one object: (ms since the epoch, values), oldest first.
#[derive(Default)]
struct Series(VecDeque<(u64, Fields)>);

impl Series {
    fn push(&mut self, at: u64, f: Fields, keep: usize) {
        self.0.push_back((at, f));
        while self.0.len() > keep {
            self.0.pop_front();
        }
    }

    /// Per second, between the last two samples.
    fn rate(&self, name: &str) -> f64 {
        let n = self.0.len();
        if n < 2 {
            return 0.0;
        }
        let ((t0, a), (t1, b)) = (&self.0[n - 2], &self.0[n - 1]);
        let get = |f: &Fields| f.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
        let dt = (t1.saturating_sub(*t0)) as f64 / 1000.0;
        if dt <= 0.0 {
            return 0.0;
        }
        get(b).saturating_sub(get(a)) as f64 / dt
    }
}

#[derive(Default)]
struct Samples {
    overview: Series,
    vhosts: HashMap<String, Series>,
    queues: HashMap<(String, String), Series>,
    connections: HashMap<u64, Series>,
    channels: HashMap<(u64, u16), Series>,
}

/// The sampler's state, shared with the handlers.
pub struct Rates {
    pub interval: Duration,
    samples: Mutex<Samples>,
}

/// Which samples a request wants in `_details` (RabbitMQ's `msg_rates_age` and
/// `msg_rates_incr`, in seconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    pub age: Option<u64>,
    pub incr: Option<u64>,
}

impl History {
    pub fn from_query(q: &HashMap<String, String>) -> History {
        let num = |k: &str| {
            q.get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
        };
        History {
            age: num("msg_rates_age"),
            incr: num("msg_rates_incr"),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A queue's counters as RabbitMQ names them.
pub fn queue_fields(s: &warren_broker::queue::QueueStats) -> Fields {
    vec![
        ("publish", s.published),
        ("deliver_get", s.delivered),
        ("deliver", s.deliver),
        ("deliver_no_ack", s.deliver_no_ack),
        ("get", s.get),
        ("get_no_ack", s.get_no_ack),
        ("redeliver", s.redeliver),
        ("ack", s.acked),
    ]
}

pub fn message_fields(c: &MessageCounts) -> Fields {
    c.fields().to_vec()
}

impl Rates {
    pub fn new(interval: Duration) -> Arc<Rates> {
        Arc::new(Rates {
            interval,
            samples: Mutex::new(Samples::default()),
        })
    }

    /// Samples every `interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&broker),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One round: read every counter once.
    pub fn sample(&self, broker: &Broker) {
        let at = now_ms();
        let keep_history = (HISTORY.as_millis() / self.interval.as_millis().max(1)) as usize + 2;
        let by_vhost = broker.connections.message_counts_by_vhost();
        let mut total = MessageCounts::default();
        for c in by_vhost.values() {
            total.add(c);
        }
        let overview = message_fields(&total);
        let mut vhosts = Vec::new();
        let mut queues = Vec::new();
        for vh in broker.vhosts() {
            let counts = by_vhost.get(&vh.name).copied().unwrap_or_default();
            vhosts.push((vh.name.clone(), message_fields(&counts)));
            for q in vh.queues() {
                queues.push((
                    (vh.name.clone(), q.name.to_string()),
                    queue_fields(&q.stats()),
                ));
            }
        }
        let mut connections = Vec::new();
        let mut channels = Vec::new();
        for c in broker.connections.list() {
            connections.push((c.id, connection_fields(&c)));
            for ch in c.channels.lock().iter() {
                channels.push((
                    (c.id, ch.number),
                    message_fields(&MessageCounts::of(&ch.counters)),
                ));
            }
        }
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.overview.push(at, overview, keep_history);
        refresh(&mut s.vhosts, vhosts, at, keep_history);
        refresh(&mut s.queues, queues, at, 2);
        refresh(&mut s.connections, connections, at, 2);
        refresh(&mut s.channels, channels, at, 2);
    }

    /// `message_stats` of the overview (all vhosts) or one vhost, with their history if asked.
    pub fn aggregate_stats(&self, broker: &Broker, vhost: Option<&str>, h: History) -> Value {
        let now = message_fields(&broker.connections.message_counts(vhost));
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let series = match vhost {
            None => Some(&s.overview),
            Some(v) => s.vhosts.get(v),
        };
        render(&now, series, h)
    }

    /// `message_stats` summed over some vhosts (the overview of a user who sees only those).
    pub fn vhosts_stats(&self, broker: &Broker, vhosts: &[String]) -> Value {
        let by_vhost = broker.connections.message_counts_by_vhost();
        let mut now = MessageCounts::default();
        for c in vhosts.iter().filter_map(|v| by_vhost.get(v)) {
            now.add(c);
        }
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // The vhosts are sampled in the same rounds: sum their last two samples.
        let mut sum = Series::default();
        for back in (1..=2).rev() {
            let mut at = 0;
            let mut total: Fields = Vec::new();
            for series in vhosts.iter().filter_map(|v| s.vhosts.get(v)) {
                if let Some((t, f)) = series.0.len().checked_sub(back).map(|i| &series.0[i]) {
                    at = at.max(*t);
                    add_fields(&mut total, f);
                }
            }
            if at > 0 {
                sum.push(at, total, 2);
            }
        }
        render(&message_fields(&now), Some(&sum), History::default())
    }

    pub fn queue_stats(&self, vhost: &str, queue: &str, now: &Fields) -> Value {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        render(
            now,
            s.queues.get(&(vhost.to_string(), queue.to_string())),
            History::default(),
        )
    }

    pub fn channel_stats(&self, conn: u64, number: u16, now: &Fields) -> Value {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        render(now, s.channels.get(&(conn, number)), History::default())
    }

    /// `recv_oct`, `send_oct`, ... with their `_details.rate`, to merge into a connection.
    pub fn connection_stats(&self, c: &warren_broker::connections::ConnectionEntry) -> Value {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        render(
            &connection_fields(c),
            s.connections.get(&c.id),
            History::default(),
        )
    }
}

/// Adds `f` into `total`, field by field (samples of one kind list their fields in the same
/// order).
fn add_fields(total: &mut Fields, f: &Fields) {
    if total.is_empty() {
        total.clone_from(f);
        return;
    }
    for ((_, t), (_, v)) in total.iter_mut().zip(f) {
        *t += v;
    }
}

fn connection_fields(c: &warren_broker::connections::ConnectionEntry) -> Fields {
    vec![
        ("recv_oct", c.io.recv_oct.get()),
        ("recv_cnt", c.io.recv_cnt.get()),
        ("send_oct", c.io.send_oct.get()),
        ("send_cnt", c.io.send_cnt.get()),
    ]
}

/// Adds this round's samples; objects that are gone are forgotten.
fn refresh<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Series>,
    now: Vec<(K, Fields)>,
    at: u64,
    keep: usize,
) {
    let mut seen: HashSet<K> = HashSet::with_capacity(now.len());
    for (k, f) in now {
        map.entry(k.clone()).or_default().push(at, f, keep);
        seen.insert(k);
    }
    map.retain(|k, _| seen.contains(k));
}

/// `{"publish": 10, "publish_details": {"rate": 2.0}, ...}`; with a history request, the
/// details also carry `samples` (newest first, as RabbitMQ), `avg` and `avg_rate`.
fn render(now: &Fields, series: Option<&Series>, h: History) -> Value {
    let mut m = Map::new();
    for (name, value) in now {
        let rate = series.map_or(0.0, |s| s.rate(name));
        let mut details = json!({ "rate": rate });
        if let (Some(age), Some(s)) = (h.age, series) {
            let samples = history(s, name, age, h.incr.unwrap_or(age / 60).max(1));
            if let (Some(first), Some(last)) = (samples.last(), samples.first()) {
                let span = (last.1.saturating_sub(first.1)) as f64 / 1000.0;
                let avg_rate = if span > 0.0 {
                    last.0.saturating_sub(first.0) as f64 / span
                } else {
                    0.0
                };
                let avg = samples.iter().map(|s| s.0 as f64).sum::<f64>() / samples.len() as f64;
                details["avg_rate"] = json!(avg_rate);
                details["avg"] = json!(avg);
            }
            details["samples"] = samples
                .iter()
                .map(|(v, t)| json!({"sample": v, "timestamp": t}))
                .collect();
        }
        m.insert((*name).to_string(), json!(value));
        m.insert(format!("{name}_details"), details);
    }
    Value::Object(m)
}

/// The samples of `name` over the last `age` seconds, one per `incr` seconds, newest first.
fn history(s: &Series, name: &str, age: u64, incr: u64) -> Vec<(u64, u64)> {
    let Some(&(newest, _)) = s.0.back() else {
        return Vec::new();
    };
    let from = newest.saturating_sub(age * 1000);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut next_at = u64::MAX;
    for (t, f) in s.0.iter().rev() {
        if *t < from {
            break;
        }
        if *t > next_at {
            continue;
        }
        let v = f.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v);
        out.push((v, *t));
        next_at = t.saturating_sub(incr * 1000);
    }
    out
}
