//! The registry of open client connections, as the management API and warrenctl see them:
//! who is connected, from where, with which channels (AMQP 0-9-1) or publishers and
//! subscriptions (the stream protocol), and a way to close a connection.

use crate::delivery::DeliveryChannel;
use crate::stats::{Churn, ExchangeCounts, IoCounters, MessageCounts};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

/// Asks a connection to close with 320 CONNECTION_FORCED and the given reason.
pub trait CloseHandle: Send + Sync {
    fn force_close(&self, reason: &str);
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Amqp091,
    /// RabbitMQ's stream protocol (`warren-stream`).
    Stream,
}

impl Protocol {
    /// As the management API names it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Amqp091 => "AMQP 0-9-1",
            Protocol::Stream => "stream",
        }
    }
}

/// A stream-protocol publisher, as the management API and `list_stream_publishers` show it.
pub struct StreamPublisherInfo {
    pub stream: String,
    pub reference: String,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub errored: AtomicU64,
}

/// A stream-protocol subscription, as the management API and `list_stream_consumers` show it.
pub struct StreamConsumerInfo {
    pub stream: String,
    /// Messages delivered so far.
    pub consumed: AtomicU64,
    /// The last offset delivered (None before the first chunk).
    pub offset: Mutex<Option<u64>>,
    /// The credit left (chunks it may still be sent).
    pub credits: Arc<tokio::sync::Semaphore>,
    pub properties: Vec<(String, String)>,
    /// A single active consumer (`single-active-consumer=true`).
    pub single_active: bool,
    /// It is sent messages (a single active consumer: it is its group's active one).
    pub active: std::sync::atomic::AtomicBool,
}

/// What a stream-protocol connection has declared and subscribed, by id.
#[derive(Default)]
pub struct StreamClients {
    pub publishers: Mutex<std::collections::BTreeMap<u8, Arc<StreamPublisherInfo>>>,
    pub consumers: Mutex<std::collections::BTreeMap<u8, Arc<StreamConsumerInfo>>>,
}

pub struct ConnectionEntry {
    pub id: u64,
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub client_properties: Vec<(String, String)>,
    pub connected_at: SystemTime,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub channels: Mutex<Vec<Arc<DeliveryChannel>>>,
    pub closer: Arc<dyn CloseHandle>,
    /// Bytes and frames in and out.
    pub io: Arc<IoCounters>,
    /// A stream-protocol connection's publishers and consumers (None: AMQP 0-9-1).
    pub stream: Option<Arc<StreamClients>>,
}

impl ConnectionEntry {
    /// The protocol it speaks: the stream protocol's connections carry their clients.
    pub fn protocol(&self) -> Protocol {
        match self.stream {
            Some(_) => Protocol::Stream,
            None => Protocol::Amqp091,
        }
    }
}

/// The open channels' publishes by exchange, keyed by the exchange's address.
pub type OpenExchangeCounts = rustc_hash::FxHashMap<usize, ExchangeCounts>;

#[derive(Default)]
pub struct Connections {
    map: RwLock<HashMap<u64, Arc<ConnectionEntry>>>,
    /// The counts of closed channels, by vhost, so totals never go back.
    retired: Mutex<HashMap<String, MessageCounts>>,
    /// Connections and channels opened and closed so far; the queues' are their vhost's.
    pub churn: Churn,
}

impl Connections {
    pub fn register(&self, e: Arc<ConnectionEntry>) {
        Churn::count(&self.churn.connections_opened);
        self.map.write().insert(e.id, e);
    }
    /// Forgets a closed connection; its channels' counts join the vhost's retired totals.
    pub fn unregister(&self, id: u64) {
        let gone = self.map.write().remove(&id);
        if let Some(e) = gone {
            Churn::count(&self.churn.connections_closed);
            for ch in e.channels.lock().drain(..) {
                self.retire(&e.vhost, &ch);
            }
        }
    }

    /// A channel closed: its counts join the vhost's retired totals, and its publishes into
    /// each exchange that exchange's.
    pub fn retire(&self, vhost: &str, ch: &DeliveryChannel) {
        Churn::count(&self.churn.channels_closed);
        for (x, c) in ch.exchanges.counts() {
            x.retire_counts(&c);
        }
        let counts = MessageCounts::of(&ch.counters);
        self.retired
            .lock()
            .entry(vhost.to_string())
            .or_default()
            .add(&counts);
    }

    /// Message counts since the start by vhost (open channels and closed ones; a deleted
    /// vhost's stay), in one pass over the connections.
    pub fn message_counts_by_vhost(&self) -> HashMap<String, MessageCounts> {
        let mut by = self.retired_message_counts();
        for e in self.map.read().values() {
            let total = vhost_total(&mut by, &e.vhost);
            for ch in e.channels.lock().iter() {
                total.add(&MessageCounts::of(&ch.counters));
            }
        }
        by
    }

    /// The closed channels' counts by vhost (add the open ones' for the totals, as
    /// [`Connections::message_counts_by_vhost`] does).
    pub fn retired_message_counts(&self) -> HashMap<String, MessageCounts> {
        self.retired.lock().clone()
    }

    /// Message counts of a vhost (None: all of them) since the start.
    pub fn message_counts(&self, vhost: Option<&str>) -> MessageCounts {
        let by = self.message_counts_by_vhost();
        match vhost {
            Some(v) => by.get(v).copied().unwrap_or_default(),
            None => by.values().fold(MessageCounts::default(), |mut t, c| {
                t.add(c);
                t
            }),
        }
    }
    /// What the open channels published into each exchange, by the exchange's address
    /// (unique across vhosts while the exchange lives; add the exchange's
    /// [`crate::exchange::Exchange::retired_counts`] for its totals).
    pub fn exchange_counts(&self) -> OpenExchangeCounts {
        let mut by = OpenExchangeCounts::default();
        for e in self.map.read().values() {
            for ch in e.channels.lock().iter() {
                ch.exchanges.for_each_count(|x, c| {
                    by.entry(Arc::as_ptr(x) as usize).or_default().add(&c);
                });
            }
        }
        by
    }

    /// Calls `f` with every open connection, in no particular order, under the registry's
    /// read lock (connections opening or closing meanwhile wait): for the statistics round,
    /// which must not copy or sort the list of every connection every few seconds.
    pub fn for_each(&self, mut f: impl FnMut(&ConnectionEntry)) {
        for e in self.map.read().values() {
            f(e);
        }
    }

    pub fn list(&self) -> Vec<Arc<ConnectionEntry>> {
        let mut v: Vec<_> = self.map.read().values().cloned().collect();
        v.sort_by_key(|e| e.id);
        v
    }
    pub fn by_name(&self, name: &str) -> Option<Arc<ConnectionEntry>> {
        self.map.read().values().find(|e| e.name == name).cloned()
    }
    pub fn len(&self) -> usize {
        self.map.read().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `vhost`'s entry of `by`, added if missing; the name is copied only then, not once per
/// connection.
pub fn vhost_total<'a>(
    by: &'a mut HashMap<String, MessageCounts>,
    vhost: &str,
) -> &'a mut MessageCounts {
    if !by.contains_key(vhost) {
        by.insert(vhost.to_string(), MessageCounts::default());
    }
    by.get_mut(vhost).expect("inserted above")
}
