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
//!
//! A round visits every object, since reading its counters is how we know whether it did
//! anything; one that did nothing costs that read and a comparison with its last change kept
//! inline: no allocation, no copy, no string key (tens of thousands of idle connections with
//! a channel and a queue each are sampled in a few milliseconds).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rustc_hash::FxHashMap;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use warren_broker::connections::{vhost_total, ConnectionEntry, OpenExchangeCounts};
use warren_broker::stats::{ExchangeCounts, MessageCounts};
use warren_broker::{Broker, VHost};
use warren_protocol::ShortStr;

/// How long sample histories reach back.
const HISTORY: Duration = Duration::from_secs(10 * 60);

/// Named counter values at one moment.
pub type Fields = Vec<(&'static str, u64)>;

/// The samples of one object with `N` counters: its values at the rounds where they changed.
/// The last change is kept inline, so an object whose counters do not move costs a
/// comparison per round and no heap memory once its older changes have left the history.
struct Series<const N: usize> {
    /// The first round that sampled the object, the one before the last, and the last.
    first_at: u64,
    prev_at: u64,
    last_at: u64,
    /// The round of the last change (0: none yet) and the values since then.
    since: u64,
    values: [u64; N],
    /// The changes before it still needed, oldest first: (round, values). The first change
    /// holds from its round on, which may be older than the history.
    older: VecDeque<(u64, [u64; N])>,
}

impl<const N: usize> Default for Series<N> {
    fn default() -> Self {
        Series {
            first_at: 0,
            prev_at: 0,
            last_at: 0,
            since: 0,
            values: [0; N],
            older: VecDeque::new(),
        }
    }
}

impl<const N: usize> Series<N> {
    /// This round's values; changes older than `horizon` that a newer one supersedes go.
    fn push(&mut self, at: u64, v: &[u64; N], horizon: u64) {
        if self.since == 0 || self.values != *v {
            if self.since != 0 {
                self.older.push_back((self.since, self.values));
            }
            self.since = at;
            self.values = *v;
        }
        if self.first_at == 0 {
            self.first_at = at;
        }
        self.prev_at = self.last_at;
        self.last_at = at;
        while !self.older.is_empty() {
            let next_at = self.older.get(1).map_or(self.since, |c| c.0);
            if next_at > horizon {
                break;
            }
            self.older.pop_front();
            if self.older.is_empty() {
                // Idle from now on, likely: give the buffer back.
                self.older = VecDeque::new();
            }
        }
    }

    /// Field `i` at round `t` (0 before the first sample).
    fn value_at(&self, t: u64, i: usize) -> u64 {
        if self.since != 0 && self.since <= t {
            return self.values.get(i).copied().unwrap_or(0);
        }
        self.older
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .and_then(|(_, v)| v.get(i).copied())
            .unwrap_or(0)
    }

    /// How many changes are kept.
    #[cfg(test)]
    fn changes(&self) -> usize {
        self.older.len() + usize::from(self.since != 0)
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
    fn sum<'a>(all: impl IntoIterator<Item = &'a Series<N>>) -> Series<N> {
        let mut out = Series::default();
        let (mut prev, mut last) = ([0u64; N], [0u64; N]);
        for s in all {
            out.prev_at = out.prev_at.max(s.prev_at);
            out.last_at = out.last_at.max(s.last_at);
            for i in 0..N {
                prev[i] += s.value_at(s.prev_at, i);
                last[i] += s.value_at(s.last_at, i);
            }
        }
        out.first_at = out.prev_at;
        if out.prev_at > 0 {
            out.older.push_back((out.prev_at, prev));
        }
        (out.since, out.values) = (out.last_at, last);
        out
    }
}

/// How many counters each kind of object has.
const AGGREGATE: usize = MESSAGE + 2;
const MESSAGE: usize = 11;
const QUEUE: usize = QUEUE_FIELDS.len();
const EXCHANGE: usize = 2;
const CONNECTION: usize = 4;

/// Series by name, in maps by vhost (looked up by `&str`: no key is built for an object
/// already known).
type ByVhost<const N: usize> = HashMap<String, FxHashMap<ShortStr, Series<N>>>;

#[derive(Default)]
struct Samples {
    /// The sampling rounds of the history, oldest first.
    rounds: VecDeque<u64>,
    overview: Series<AGGREGATE>,
    vhosts: HashMap<String, Series<AGGREGATE>>,
    queues: ByVhost<QUEUE>,
    exchanges: ByVhost<EXCHANGE>,
    connections: FxHashMap<u64, Series<CONNECTION>>,
    channels: FxHashMap<(u64, u16), Series<MESSAGE>>,
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
const QUEUE_FIELDS: [&str; 11] = [
    "publish",
    "deliver_get",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "get_empty",
    "redeliver",
    "ack",
    "disk_reads",
    "disk_writes",
];

fn queue_values(s: &warren_broker::queue::QueueStats) -> [u64; QUEUE] {
    [
        s.published,
        s.delivered,
        s.deliver,
        s.deliver_no_ack,
        s.get,
        s.get_no_ack,
        s.get_empty,
        s.redeliver,
        s.acked,
        s.disk_reads,
        s.disk_writes,
    ]
}

pub fn queue_fields(s: &warren_broker::queue::QueueStats) -> Fields {
    QUEUE_FIELDS.into_iter().zip(queue_values(s)).collect()
}

pub fn message_fields(c: &MessageCounts) -> Fields {
    c.fields().to_vec()
}

fn message_values(c: &MessageCounts) -> [u64; MESSAGE] {
    c.fields().map(|(_, v)| v)
}

/// The overview's and a vhost's: the channels' counts and the queues' disk reads and writes.
fn aggregate_fields(c: &MessageCounts, (reads, writes): (u64, u64)) -> Fields {
    let mut f = message_fields(c);
    f.push(("disk_reads", reads));
    f.push(("disk_writes", writes));
    f
}

fn aggregate_values(c: &MessageCounts, (reads, writes): (u64, u64)) -> [u64; AGGREGATE] {
    let m = message_values(c);
    std::array::from_fn(|i| match i {
        _ if i < MESSAGE => m[i],
        MESSAGE => reads,
        _ => writes,
    })
}

/// An exchange's `publish_in` and `publish_out`.
pub fn exchange_fields(c: &ExchangeCounts) -> Fields {
    vec![("publish_in", c.publish_in), ("publish_out", c.publish_out)]
}

fn exchange_values(c: &ExchangeCounts) -> [u64; EXCHANGE] {
    [c.publish_in, c.publish_out]
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

    /// One round: read every counter once. Every object is visited (its counters are how we
    /// know whether it did anything), but one whose counters did not move costs a comparison
    /// with its last change: nothing is allocated, copied or keyed by a string for it.
    pub fn sample(&self, broker: &Broker) {
        let at = now_ms();
        let horizon = at.saturating_sub(HISTORY.as_millis() as u64);
        let mut guard = self.lock();
        let s = &mut *guard;
        s.rounds.push_back(at);
        while s.rounds.front().is_some_and(|t| *t < horizon) {
            s.rounds.pop_front();
        }
        // Connections and channels, in one pass that also sums what the open channels
        // counted by vhost and by exchange.
        let mut by_vhost = broker.connections.retired_message_counts();
        let mut open_exchanges = OpenExchangeCounts::default();
        broker.connections.for_each(|c| {
            let io = connection_values(c);
            s.connections
                .entry(c.id)
                .or_default()
                .push(at, &io, horizon);
            let total = vhost_total(&mut by_vhost, &c.vhost);
            for ch in c.channels.lock().iter() {
                let counts = MessageCounts::of(&ch.counters);
                total.add(&counts);
                let series = s.channels.entry((c.id, ch.number)).or_default();
                series.push(at, &message_values(&counts), horizon);
                ch.exchanges.for_each_count(|x, c| {
                    let key = Arc::as_ptr(x) as usize;
                    open_exchanges.entry(key).or_default().add(&c);
                });
            }
        });
        // Objects not sampled this round are gone: forget them.
        s.connections.retain(|_, v| v.last_at == at);
        s.channels.retain(|_, v| v.last_at == at);
        let mut total = MessageCounts::default();
        for c in by_vhost.values() {
            total.add(c);
        }
        let mut disk_total = (0, 0);
        for vh in broker.vhosts() {
            let counts = by_vhost.get(&vh.name).copied().unwrap_or_default();
            let disk = vh.disk_counts();
            disk_total = (disk_total.0 + disk.0, disk_total.1 + disk.1);
            let values = aggregate_values(&counts, disk);
            by_key(&mut s.vhosts, &vh.name).push(at, &values, horizon);
            let queues = by_key(&mut s.queues, &vh.name);
            for q in vh.queues() {
                named(queues, &q.name).push(at, &queue_values(&q.stats()), horizon);
            }
            let exchanges = by_key(&mut s.exchanges, &vh.name);
            for x in vh.exchanges() {
                let mut c = x.retired_counts();
                if let Some(o) = open_exchanges.get(&(Arc::as_ptr(&x) as usize)) {
                    c.add(o);
                }
                named(exchanges, &x.name).push(at, &exchange_values(&c), horizon);
            }
        }
        s.overview
            .push(at, &aggregate_values(&total, disk_total), horizon);
        s.vhosts.retain(|_, v| v.last_at == at);
        forget_gone(&mut s.queues, at);
        forget_gone(&mut s.exchanges, at);
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
        let sum = Series::sum(vhosts.iter().filter_map(|v| s.vhosts.get(v)));
        render(&now, Some(&sum), &s.rounds, History::default())
    }

    pub fn queue_stats(&self, vhost: &str, queue: &str, now: &Fields, h: History) -> Value {
        let s = self.lock();
        let series = s.queues.get(vhost).and_then(|m| m.get(queue));
        render(now, series, &s.rounds, h)
    }

    pub fn exchange_stats(&self, vhost: &str, name: &str, now: &Fields, h: History) -> Value {
        let s = self.lock();
        let series = s.exchanges.get(vhost).and_then(|m| m.get(name));
        render(now, series, &s.rounds, h)
    }

    pub fn channel_stats(&self, conn: u64, number: u16, now: &Fields, h: History) -> Value {
        let s = self.lock();
        render(now, s.channels.get(&(conn, number)), &s.rounds, h)
    }

    /// `recv_oct`, `send_oct`, ... with their `_details.rate`, to merge into a connection.
    pub fn connection_stats(&self, c: &ConnectionEntry, h: History) -> Value {
        let s = self.lock();
        render(
            &connection_fields(c),
            s.connections.get(&c.id),
            &s.rounds,
            h,
        )
    }
}

const CONNECTION_FIELDS: [&str; CONNECTION] = ["recv_oct", "recv_cnt", "send_oct", "send_cnt"];

fn connection_values(c: &ConnectionEntry) -> [u64; CONNECTION] {
    [
        c.io.recv_oct.get(),
        c.io.recv_cnt.get(),
        c.io.send_oct.get(),
        c.io.send_cnt.get(),
    ]
}

fn connection_fields(c: &ConnectionEntry) -> Fields {
    CONNECTION_FIELDS
        .into_iter()
        .zip(connection_values(c))
        .collect()
}

/// `key`'s entry of `map`, added if missing (the key is copied only then).
fn by_key<'a, T: Default>(map: &'a mut HashMap<String, T>, key: &str) -> &'a mut T {
    if !map.contains_key(key) {
        map.insert(key.to_string(), T::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// The series of the object called `name`, added if missing.
fn named<'a, const N: usize>(
    map: &'a mut FxHashMap<ShortStr, Series<N>>,
    name: &ShortStr,
) -> &'a mut Series<N> {
    if !map.contains_key(name.as_str()) {
        map.insert(name.clone(), Series::default());
    }
    map.get_mut(name.as_str()).expect("inserted above")
}

/// Forgets the objects (and vhosts) that this round (`at`) did not sample: they are gone.
fn forget_gone<const N: usize>(map: &mut ByVhost<N>, at: u64) {
    map.retain(|_, m| {
        m.retain(|_, s| s.last_at == at);
        !m.is_empty()
    });
}

/// `{"publish": 10, "publish_details": {"rate": 2.0}, ...}`; with a history request, the
/// details also carry `samples` (newest first, as RabbitMQ), `avg` and `avg_rate`.
fn render<const N: usize>(
    now: &Fields,
    series: Option<&Series<N>>,
    rounds: &VecDeque<u64>,
    h: History,
) -> Value {
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
fn history<const N: usize>(
    s: &Series<N>,
    rounds: &VecDeque<u64>,
    i: usize,
    age: u64,
    incr: u64,
) -> Vec<(u64, u64)> {
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

    fn f(v: u64) -> [u64; 1] {
        [v]
    }

    #[test]
    fn an_unchanged_object_keeps_one_sample_and_rates_come_from_the_last_two_rounds() {
        let mut s = Series::<1>::default();
        for (at, v) in [(1000, 5), (2000, 5), (3000, 5), (4000, 9)] {
            s.push(at, &f(v), 0);
        }
        assert_eq!(s.changes(), 2, "5 from 1000 on, 9 from 4000 on");
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
        let mut s = Series::<1>::default();
        s.push(1000, &f(1), 0);
        s.push(2000, &f(2), 0);
        s.push(3000, &f(3), 2500);
        assert_eq!(s.changes(), 2);
        assert_eq!(s.value_at(2600, 0), 2);
    }

    #[test]
    fn summed_series_rate_as_the_sum_of_rates() {
        let (mut a, mut b) = (Series::<1>::default(), Series::<1>::default());
        for (at, x, y) in [(1000, 0, 10), (2000, 3, 14)] {
            a.push(at, &f(x), 0);
            b.push(at, &f(y), 0);
        }
        assert_eq!(Series::sum([&a, &b]).rate(0), 7.0);
    }

    #[test]
    fn an_object_idle_for_rounds_then_active_again_rates_and_histories_as_every_round_kept() {
        let mut s = Series::<2>::default();
        let rounds: Vec<u64> = (1..=12).map(|i| i * 1000).collect();
        // Busy, idle for six rounds, busy again, idle again.
        let values = [1, 3, 6, 6, 6, 6, 6, 6, 6, 10, 10, 10];
        for (i, (at, v)) in rounds.iter().zip(values).enumerate() {
            s.push(*at, &[v, 7], 0);
            let prev = if i == 0 { None } else { Some(values[i - 1]) };
            let want = prev.map_or(0.0, |p| (v - p) as f64);
            assert_eq!(s.rate(0), want, "round {at}");
            assert_eq!(s.rate(1), 0.0, "round {at}");
        }
        assert_eq!(s.changes(), 4, "1, 3, 6 and 10: the idle rounds add none");
        let rounds: VecDeque<u64> = rounds.into();
        assert_eq!(
            history(&s, &rounds, 0, 60, 3),
            vec![(10, 12000), (6, 9000), (6, 6000), (6, 3000)]
        );
        for (t, v) in [
            (500, 0),
            (1000, 1),
            (2500, 3),
            (9999, 6),
            (10000, 10),
            (99000, 10),
        ] {
            assert_eq!(s.value_at(t, 0), v, "at {t}");
        }
    }

    #[test]
    fn an_idle_object_keeps_its_last_values_and_no_older_change_once_the_history_moved_on() {
        let mut s = Series::<1>::default();
        s.push(1000, &f(1), 0);
        s.push(2000, &f(2), 0);
        s.push(3000, &f(2), 0);
        assert_eq!(s.older.len(), 1);
        s.push(4000, &f(2), 2500);
        assert_eq!(s.older.capacity(), 0, "no heap memory left");
        assert_eq!((s.value_at(2000, 0), s.value_at(3000, 0)), (2, 2));
        assert_eq!(s.rate(0), 0.0);
    }
}
