//! Message rates for `message_stats`: every `collect_statistics_interval` (5 s by default, as
//! RabbitMQ) a sampler reads the counters the broker keeps (per channel, per queue, per
//! connection, per channel and exchange; see `warren_broker::stats`) and keeps the samples of
//! the last 10 minutes of every object (RabbitMQ's default `basic` retention), for the rates
//! and for the `msg_rates_age` / `msg_rates_incr` query parameters: the overview, vhosts,
//! queues, exchanges, connections and channels.
//!
//! A counter's value in a response is read at request time; its `_details.rate` is the change
//! per second between the last two samples. An object's samples are kept only where they
//! changed (an idle queue costs one sample, not 120): the value at any sampling round is the
//! last change at or before it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use warren_broker::stats::{ExchangeCounts, MessageCounts};
use warren_broker::{Broker, VHost};

/// How long sample histories reach back.
const HISTORY: Duration = Duration::from_secs(10 * 60);

/// Named counter values at one moment.
pub type Fields = Vec<(&'static str, u64)>;

/// The samples of one object: its values at the rounds where they changed.
#[derive(Default)]
struct Series {
    /// The first round that sampled the object, the one before the last, and the last.
    first_at: u64,
    prev_at: u64,
    last_at: u64,
    /// (round, values in the order of the object's fields), oldest first; the first one holds
    /// from its round on, which may be older than the history.
    changes: VecDeque<(u64, Box<[u64]>)>,
}

impl Series {
    /// This round's values; changes older than `horizon` that a newer one supersedes go.
    fn push(&mut self, at: u64, f: &Fields, horizon: u64) {
        let changed = self
            .changes
            .back()
            .is_none_or(|(_, v)| v.len() != f.len() || v.iter().zip(f).any(|(a, (_, b))| a != b));
        if changed {
            self.changes
                .push_back((at, f.iter().map(|(_, v)| *v).collect()));
        }
        if self.first_at == 0 {
            self.first_at = at;
        }
        self.prev_at = self.last_at;
        self.last_at = at;
        while self.changes.len() >= 2 && self.changes[1].0 <= horizon {
            self.changes.pop_front();
        }
    }

    /// Field `i` at round `t` (0 before the first sample).
    fn value_at(&self, t: u64, i: usize) -> u64 {
        self.changes
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .and_then(|(_, v)| v.get(i).copied())
            .unwrap_or(0)
    }

    /// Field `i` per second, between the last two samples.
    fn rate(&self, i: usize) -> f64 {
        if self.prev_at == 0 || self.last_at <= self.prev_at {
            return 0.0;
        }
        let (a, b) = (
            self.value_at(self.prev_at, i),
            self.value_at(self.last_at, i),
        );
        let dt = (self.last_at - self.prev_at) as f64 / 1000.0;
        b.saturating_sub(a) as f64 / dt
    }

    /// A two-sample series whose values are the sums of `all`'s at their last two rounds
    /// (objects sampled in the same rounds).
    fn sum<'a>(all: impl IntoIterator<Item = &'a Series>, width: usize) -> Series {
        let mut out = Series::default();
        let (mut prev, mut last) = (vec![0u64; width], vec![0u64; width]);
        for s in all {
            out.prev_at = out.prev_at.max(s.prev_at);
            out.last_at = out.last_at.max(s.last_at);
            for i in 0..width {
                prev[i] += s.value_at(s.prev_at, i);
                last[i] += s.value_at(s.last_at, i);
            }
        }
        out.first_at = out.prev_at;
        if out.prev_at > 0 {
            out.changes.push_back((out.prev_at, prev.into()));
        }
        out.changes.push_back((out.last_at, last.into()));
        out
    }
}

#[derive(Default)]
struct Samples {
    /// The sampling rounds of the history, oldest first.
    rounds: VecDeque<u64>,
    overview: Series,
    vhosts: HashMap<String, Series>,
    queues: HashMap<(String, String), Series>,
    exchanges: HashMap<(String, String), Series>,
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

/// `msg_rates_age` / `msg_rates_incr` from a request's query string.
impl<S: Send + Sync> FromRequestParts<S> for History {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default();
        Ok(History::from_query(&q))
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
        ("get_empty", s.get_empty),
        ("redeliver", s.redeliver),
        ("ack", s.acked),
        ("disk_reads", s.disk_reads),
        ("disk_writes", s.disk_writes),
    ]
}

pub fn message_fields(c: &MessageCounts) -> Fields {
    c.fields().to_vec()
}

/// The overview's and a vhost's: the channels' counts and the queues' disk reads and writes.
fn aggregate_fields(c: &MessageCounts, (reads, writes): (u64, u64)) -> Fields {
    let mut f = message_fields(c);
    f.push(("disk_reads", reads));
    f.push(("disk_writes", writes));
    f
}

/// An exchange's `publish_in` and `publish_out`.
pub fn exchange_fields(c: &ExchangeCounts) -> Fields {
    vec![("publish_in", c.publish_in), ("publish_out", c.publish_out)]
}

/// What every exchange of `vh` took in and routed out: the open channels' counts and the
/// closed ones' (kept by each exchange), by exchange name.
pub fn exchange_counts(broker: &Broker, vh: &VHost) -> HashMap<String, ExchangeCounts> {
    vhost_exchange_counts(&broker.connections.exchange_counts(), vh)
}

/// [`exchange_counts`] from the open channels' counts read once for every vhost.
pub fn vhost_exchange_counts(
    open: &warren_broker::connections::OpenExchangeCounts,
    vh: &VHost,
) -> HashMap<String, ExchangeCounts> {
    vh.exchanges()
        .into_iter()
        .map(|x| {
            let mut c = x.retired_counts();
            if let Some(o) = open.get(&(Arc::as_ptr(&x) as usize)) {
                c.add(o);
            }
            (x.name.to_string(), c)
        })
        .collect()
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One round: read every counter once.
    pub fn sample(&self, broker: &Broker) {
        let at = now_ms();
        let horizon = at.saturating_sub(HISTORY.as_millis() as u64);
        let by_vhost = broker.connections.message_counts_by_vhost();
        let open_exchanges = broker.connections.exchange_counts();
        let mut total = MessageCounts::default();
        for c in by_vhost.values() {
            total.add(c);
        }
        let mut disk_total = (0, 0);
        let mut vhosts = Vec::new();
        let mut queues = Vec::new();
        let mut exchanges = Vec::new();
        for vh in broker.vhosts() {
            let counts = by_vhost.get(&vh.name).copied().unwrap_or_default();
            let disk = vh.disk_counts();
            disk_total = (disk_total.0 + disk.0, disk_total.1 + disk.1);
            vhosts.push((vh.name.clone(), aggregate_fields(&counts, disk)));
            for q in vh.queues() {
                queues.push((
                    (vh.name.clone(), q.name.to_string()),
                    queue_fields(&q.stats()),
                ));
            }
            for (name, c) in vhost_exchange_counts(&open_exchanges, &vh) {
                exchanges.push(((vh.name.clone(), name), exchange_fields(&c)));
            }
        }
        let overview = aggregate_fields(&total, disk_total);
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
        let mut s = self.lock();
        s.rounds.push_back(at);
        while s.rounds.front().is_some_and(|t| *t < horizon) {
            s.rounds.pop_front();
        }
        s.overview.push(at, &overview, horizon);
        refresh(&mut s.vhosts, vhosts, at, horizon);
        refresh(&mut s.queues, queues, at, horizon);
        refresh(&mut s.exchanges, exchanges, at, horizon);
        refresh(&mut s.connections, connections, at, horizon);
        refresh(&mut s.channels, channels, at, horizon);
    }

    /// `message_stats` of the overview (all vhosts) or one vhost, with their history if asked.
    pub fn aggregate_stats(&self, broker: &Broker, vhost: Option<&str>, h: History) -> Value {
        let disk = match vhost {
            Some(v) => broker
                .vhost(v)
                .map(|vh| vh.disk_counts())
                .unwrap_or_default(),
            None => broker.vhosts().iter().fold((0, 0), |(r, w), vh| {
                let (dr, dw) = vh.disk_counts();
                (r + dr, w + dw)
            }),
        };
        let now = aggregate_fields(&broker.connections.message_counts(vhost), disk);
        let s = self.lock();
        let series = match vhost {
            None => Some(&s.overview),
            Some(v) => s.vhosts.get(v),
        };
        render(&now, series, &s.rounds, h)
    }

    /// `message_stats` summed over some vhosts (the overview of a user who sees only those).
    pub fn vhosts_stats(&self, broker: &Broker, vhosts: &[String]) -> Value {
        let by_vhost = broker.connections.message_counts_by_vhost();
        let mut now = MessageCounts::default();
        let mut disk = (0, 0);
        for v in vhosts {
            if let Some(c) = by_vhost.get(v) {
                now.add(c);
            }
            if let Some(vh) = broker.vhost(v) {
                let (r, w) = vh.disk_counts();
                disk = (disk.0 + r, disk.1 + w);
            }
        }
        let now = aggregate_fields(&now, disk);
        let s = self.lock();
        // The vhosts are sampled in the same rounds: their rates add up.
        let sum = Series::sum(vhosts.iter().filter_map(|v| s.vhosts.get(v)), now.len());
        render(&now, Some(&sum), &s.rounds, History::default())
    }

    pub fn queue_stats(&self, vhost: &str, queue: &str, now: &Fields, h: History) -> Value {
        let s = self.lock();
        let key = (vhost.to_string(), queue.to_string());
        render(now, s.queues.get(&key), &s.rounds, h)
    }

    pub fn exchange_stats(&self, vhost: &str, name: &str, now: &Fields, h: History) -> Value {
        let s = self.lock();
        let key = (vhost.to_string(), name.to_string());
        render(now, s.exchanges.get(&key), &s.rounds, h)
    }

    pub fn channel_stats(&self, conn: u64, number: u16, now: &Fields, h: History) -> Value {
        let s = self.lock();
        render(now, s.channels.get(&(conn, number)), &s.rounds, h)
    }

    /// `recv_oct`, `send_oct`, ... with their `_details.rate`, to merge into a connection.
    pub fn connection_stats(
        &self,
        c: &warren_broker::connections::ConnectionEntry,
        h: History,
    ) -> Value {
        let s = self.lock();
        render(
            &connection_fields(c),
            s.connections.get(&c.id),
            &s.rounds,
            h,
        )
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
    horizon: u64,
) {
    let mut seen: HashSet<K> = HashSet::with_capacity(now.len());
    for (k, f) in now {
        map.entry(k.clone()).or_default().push(at, &f, horizon);
        seen.insert(k);
    }
    map.retain(|k, _| seen.contains(k));
}

/// `{"publish": 10, "publish_details": {"rate": 2.0}, ...}`; with a history request, the
/// details also carry `samples` (newest first, as RabbitMQ), `avg` and `avg_rate`.
fn render(now: &Fields, series: Option<&Series>, rounds: &VecDeque<u64>, h: History) -> Value {
    let mut m = Map::new();
    for (i, (name, value)) in now.iter().enumerate() {
        let rate = series.map_or(0.0, |s| s.rate(i));
        let mut details = json!({ "rate": rate });
        if let (Some(age), Some(s)) = (h.age, series) {
            let samples = history(s, rounds, i, age, h.incr.unwrap_or(age / 60).max(1));
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

/// Field `i`'s samples over the last `age` seconds, one per `incr` seconds, newest first:
/// (value, ms since the epoch) at the rounds that sampled the object.
fn history(s: &Series, rounds: &VecDeque<u64>, i: usize, age: u64, incr: u64) -> Vec<(u64, u64)> {
    let from = s.last_at.saturating_sub(age * 1000).max(s.first_at);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut next_at = u64::MAX;
    for t in rounds.iter().rev().copied() {
        if t > s.last_at || t > next_at {
            continue;
        }
        if t < from {
            break;
        }
        out.push((s.value_at(t, i), t));
        next_at = t.saturating_sub(incr * 1000);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: u64) -> Fields {
        vec![("publish", v)]
    }

    #[test]
    fn an_unchanged_object_keeps_one_sample_and_rates_come_from_the_last_two_rounds() {
        let mut s = Series::default();
        for (at, v) in [(1000, 5), (2000, 5), (3000, 5), (4000, 9)] {
            s.push(at, &f(v), 0);
        }
        assert_eq!(s.changes.len(), 2, "5 from 1000 on, 9 from 4000 on");
        assert_eq!(s.value_at(3000, 0), 5);
        assert_eq!(s.rate(0), 4.0);
        s.push(5000, &f(9), 0);
        assert_eq!(s.rate(0), 0.0);
        let rounds: VecDeque<u64> = [1000, 2000, 3000, 4000, 5000].into();
        assert_eq!(
            history(&s, &rounds, 0, 60, 2),
            vec![(9, 5000), (5, 3000), (5, 1000)]
        );
    }

    #[test]
    fn changes_older_than_the_history_go_but_the_value_they_left_stays() {
        let mut s = Series::default();
        s.push(1000, &f(1), 0);
        s.push(2000, &f(2), 0);
        s.push(3000, &f(3), 2500);
        assert_eq!(s.changes.len(), 2);
        assert_eq!(s.value_at(2600, 0), 2);
    }

    #[test]
    fn summed_series_rate_as_the_sum_of_rates() {
        let (mut a, mut b) = (Series::default(), Series::default());
        for (at, x, y) in [(1000, 0, 10), (2000, 3, 14)] {
            a.push(at, &f(x), 0);
            b.push(at, &f(y), 0);
        }
        assert_eq!(Series::sum([&a, &b], 1).rate(0), 7.0);
    }
}
