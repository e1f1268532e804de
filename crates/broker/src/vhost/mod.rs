//! A virtual host: its exchanges and queues, and the operations clients perform on them,
//! with RabbitMQ's rules and reply texts.
//!
//! Layout: this file holds the vhost, its look-ups and timers; `declare` (exchange and queue
//! declare, delete, purge, argument checks), `bindings` (bind and unbind, auto-delete
//! cascades), `routing` (routing through exchanges, dead letters), `policies`, [`metadata`]
//! (description, tags and the default queue type).

use crate::definitions_journal::DefScope;
use crate::error::{AmqpError, Result};
use crate::exchange::{check_headers_args, Binding, Destination, Exchange, ExchangeKind};
use crate::message::Message;
use crate::persist::Persistence;
use crate::policy::{self, Policy};
use crate::queue::{DeleteReason, Followup, Followups, PublishError, Queue, QueueStats};
use parking_lot::RwLock;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use warren_protocol::{FieldTable, FieldValue, ShortStr};

mod bindings;
mod declare;
pub mod metadata;
mod policies;
mod routing;

/// What a client asks for in queue.declare.
#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    pub name: ShortStr,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// What a client asks for in exchange.declare.
#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    pub name: ShortStr,
    pub kind: ShortStr,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

pub struct VHost {
    pub name: String,
    exchanges: RwLock<HashMap<ShortStr, Arc<Exchange>>>,
    queues: RwLock<HashMap<ShortStr, Arc<Queue>>>,
    persistence: Option<Arc<Persistence>>,
    /// Queues that need the timer (TTL, x-expires).
    timed: parking_lot::Mutex<Vec<std::sync::Weak<Queue>>>,
    policies: RwLock<Vec<Policy>>,
    operator_policies: RwLock<Vec<Policy>>,
    /// Messages held by x-delayed-message exchanges.
    pub delayed: crate::delayed::Delayed,
    /// Held while a queue is created or deleted, so that a queue's store directory belongs
    /// to one queue at a time: two connections declaring the same new durable queue at once
    /// must not both open its store (the loser's would write into the winner's segment), and
    /// a queue declared again while its predecessor is being deleted must not open a
    /// directory that is about to be removed.
    lifecycle: parking_lot::Mutex<()>,
    /// The message counters of the queues deleted from this vhost, by queue type (`classic`,
    /// `quorum`, as `x-queue-type`), so that totals over every queue (the Prometheus counters)
    /// never go down when a queue goes. Held while a queue is removed and while the totals
    /// are read, so a queue is counted once: live or deleted.
    deleted_counters: parking_lot::Mutex<DeletedCounters>,
    /// Queues declared, created and deleted (RabbitMQ's `connection_churn_metrics`).
    pub churn: crate::stats::Churn,
    /// Description, tags, default queue type.
    metadata: RwLock<metadata::VHostMetadata>,
    /// The node's default queue type, for a vhost that sets none (`default_queue_type` in
    /// warren.conf).
    node_default_queue_type: std::sync::OnceLock<String>,
}

/// The counters of a vhost's deleted queues, by queue type (`classic`, `quorum`).
pub type DeletedCounters = std::collections::BTreeMap<String, QueueCounters>;

/// Messages a queue (or several) took in, delivered and had acknowledged, since it was
/// declared (or, for a vhost's totals, since the broker started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub redeliver: u64,
    pub get_empty: u64,
    pub disk_reads: u64,
    pub disk_writes: u64,
}

impl QueueCounters {
    pub fn add(&mut self, s: &QueueStats) {
        self.merge(&QueueCounters {
            published: s.published,
            delivered: s.delivered,
            acked: s.acked,
            deliver: s.deliver,
            deliver_no_ack: s.deliver_no_ack,
            get: s.get,
            get_no_ack: s.get_no_ack,
            redeliver: s.redeliver,
            get_empty: s.get_empty,
            disk_reads: s.disk_reads,
            disk_writes: s.disk_writes,
        });
    }

    pub fn merge(&mut self, o: &QueueCounters) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.acked += o.acked;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.redeliver += o.redeliver;
        self.get_empty += o.get_empty;
        self.disk_reads += o.disk_reads;
        self.disk_writes += o.disk_writes;
    }
}

impl VHost {
    pub fn new(name: &str, persistence: Option<Arc<Persistence>>) -> Arc<Self> {
        let delayed = crate::delayed::Delayed::open(name, persistence.as_deref());
        let vh = Arc::new(VHost {
            name: name.to_string(),
            exchanges: Default::default(),
            queues: Default::default(),
            persistence,
            timed: Default::default(),
            policies: Default::default(),
            operator_policies: Default::default(),
            delayed,
            lifecycle: Default::default(),
            deleted_counters: Default::default(),
            churn: Default::default(),
            metadata: Default::default(),
            node_default_queue_type: Default::default(),
        });
        let predeclared = [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ];
        {
            let mut ex = vh.exchanges.write();
            for (n, k) in predeclared {
                ex.insert(
                    n.into(),
                    Arc::new(Exchange::new(
                        n.into(),
                        k,
                        true,
                        false,
                        false,
                        FieldTable::new(),
                    )),
                );
            }
        }
        vh
    }

    /// The vhost's description, tags and default queue type.
    pub fn metadata(&self) -> metadata::VHostMetadata {
        self.metadata.read().clone()
    }

    /// The queue type of declarations without one here: the vhost's, else the node's.
    pub fn default_queue_type(&self) -> Option<String> {
        let own = self.metadata.read().default_queue_type.clone();
        own.or_else(|| self.node_default_queue_type.get().cloned())
    }

    /// The node's default queue type (set once, when the vhost is made).
    pub(crate) fn set_node_default_queue_type(&self, t: Option<String>) {
        if let Some(t) = t {
            let _ = self.node_default_queue_type.set(t);
        }
    }

    /// Sets the vhost's metadata on this node (see [`crate::Broker::set_vhost_metadata`]).
    pub(crate) fn set_metadata(&self, m: metadata::VHostMetadata) {
        *self.metadata.write() = m;
    }

    /// Gives a queue declaration without `x-queue-type` the vhost's default queue type (see
    /// [`metadata`]). What a client's declaration goes through before
    /// [`VHost::declare_queue`]; a restore from saved definitions does not.
    pub fn apply_default_queue_type(&self, d: &mut QueueDeclare) {
        if !d.passive {
            metadata::apply_default_queue_type(
                self.default_queue_type().as_deref(),
                &mut d.arguments,
                d.durable,
                d.exclusive,
                d.auto_delete,
            );
        }
    }

    /// Runs a change through the cluster's metadata log if this node is in a cluster and the
    /// change is not being applied from it: `Some(answer)` once it is applied here (see
    /// [`crate::metadata`]); `None` when the caller makes the change itself.
    pub(crate) fn replicated(
        &self,
        op: impl FnOnce() -> crate::metadata::MetaOp,
    ) -> Option<Result<()>> {
        crate::metadata::replicated(self.persistence.as_ref(), op)
    }

    /// The members of a new quorum queue's group (node names), by its
    /// `x-quorum-initial-group-size` (a bad value is refused when the declaration is
    /// applied).
    pub(crate) fn choose_members(&self, arguments: &warren_protocol::FieldTable) -> Vec<String> {
        let size = arguments
            .get("x-quorum-initial-group-size")
            .and_then(|v| v.as_i64())
            .filter(|n| *n > 0)
            .map(|n| n as u64);
        self.persistence
            .as_ref()
            .and_then(|p| p.replica_host())
            .map_or_else(Vec::new, |h| h.choose_members(size))
    }

    /// A look-up that, in a cluster, catches up with the cluster's definitions on a miss
    /// ([`crate::metadata::found_or_synced`]).
    pub(crate) fn found_or_synced<T>(&self, look: impl Fn() -> Option<T>) -> Option<T> {
        crate::metadata::found_or_synced(self.persistence.as_ref(), look)
    }

    /// Whether a definition change made now goes through the cluster's metadata log.
    pub(crate) fn replicates_definitions(&self) -> bool {
        crate::metadata::replicates(self.persistence.as_ref())
    }

    /// Whether an exchange's definition is replicated in a cluster (durable, not
    /// auto-deleted: see [`crate::metadata`]).
    pub(crate) fn replicates_exchange(x: &Exchange) -> bool {
        x.durable && !x.auto_delete && !x.name.is_empty() && !x.name.starts_with("amq.")
    }

    pub(crate) fn register_timed(&self, q: &Arc<Queue>) {
        self.timed.lock().push(Arc::downgrade(q));
    }

    /// Drops the delayed-message records whose released copies the last group commit made
    /// durable (and syncs the delayed store if it did).
    pub(crate) fn ack_released_delayed(&self) {
        if let Some(p) = &self.persistence {
            let s = p.sync_state();
            self.delayed.ack_synced(s.synced_epoch, s.failed_epoch);
        }
    }

    /// Timer work for every queue that asked for it; forgets deleted queues. Releases due
    /// delayed messages.
    pub fn tick(&self, now: u64) {
        for due in self.delayed.take_due() {
            let durable_at = match self.exchange(&due.exchange) {
                Some(x) => {
                    let mut out = Vec::new();
                    self.route(&x, &due.msg, &mut out);
                    let mut fu = Followups::new();
                    let mut durable_at = None;
                    let mut stored = true;
                    for q in out {
                        match routing::publish_logged(&q, &due.msg, "delayed message", &mut fu) {
                            Some(epoch) => durable_at = durable_at.max(epoch),
                            None => stored = false,
                        }
                    }
                    self.follow_up(fu);
                    // A queue could not store it: the record stays for the next start.
                    stored.then_some(durable_at)
                }
                None => {
                    tracing::debug!(exchange = %due.exchange, "delayed message dropped: its exchange is gone");
                    Some(None)
                }
            };
            if let Some(durable_at) = durable_at {
                self.delayed.release(due.record, durable_at);
            }
        }
        self.ack_released_delayed();
        let queues: Vec<Arc<Queue>> = self
            .timed
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let mut done = Vec::new();
        let mut fu = Followups::new();
        for q in &queues {
            if !q.tick(now, &mut fu) {
                done.push(Arc::as_ptr(q));
            }
        }
        self.follow_up(fu);
        self.timed
            .lock()
            .retain(|w| w.strong_count() > 0 && !done.contains(&w.as_ptr()));
    }

    /// The group-commit epoch whose announcement means every definition change made so far
    /// is on disk; 0 when none is waiting to be saved (or nothing is kept on disk).
    pub fn definitions_epoch(&self) -> u64 {
        self.persistence
            .as_ref()
            .map_or(0, |p| p.definitions_epoch())
    }

    /// A durable definition changed within `scope`: have it saved.
    fn definitions_changed(&self, durable: bool, scope: impl FnOnce() -> DefScope) {
        if durable {
            if let Some(p) = &self.persistence {
                p.definitions_changed(scope());
            }
        }
    }

    fn queue_scope(&self, name: &str) -> DefScope {
        DefScope::Queue {
            vhost: self.name.clone(),
            name: name.to_string(),
        }
    }

    fn binding_scope(
        &self,
        source: &str,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> DefScope {
        DefScope::Binding {
            vhost: self.name.clone(),
            source: source.to_string(),
            destination_type: match destination {
                Destination::Queue(_) => "queue",
                Destination::Exchange(_) => "exchange",
            },
            destination: destination.name().to_string(),
            routing_key: routing_key.to_string(),
            arguments: crate::json::table_to_json(arguments),
        }
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    /// Every queue with its stats, and the counters of the queues deleted so far, read
    /// together: a queue being deleted meanwhile is in one or the other, never both nor
    /// neither. For metrics read at scrape time; nothing on the message path.
    pub fn queue_stats_and_deleted(&self) -> (Vec<(Arc<Queue>, QueueStats)>, DeletedCounters) {
        let deleted = self.deleted_counters.lock();
        let stats = self
            .queues()
            .into_iter()
            .map(|q| {
                let s = q.stats();
                (q, s)
            })
            .collect();
        (stats, deleted.clone())
    }

    /// Messages read from and written to the message stores of this vhost's queues, the
    /// deleted ones included (RabbitMQ's `disk_reads` / `disk_writes`). Reads no queue's lock.
    pub fn disk_counts(&self) -> (u64, u64) {
        let deleted = self.deleted_counters.lock();
        let (mut reads, mut writes) = deleted
            .values()
            .fold((0, 0), |(r, w), c| (r + c.disk_reads, w + c.disk_writes));
        for q in self.queues.read().values() {
            let (r, w) = q.disk_counts();
            reads += r;
            writes += w;
        }
        (reads, writes)
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn locked(&self, name: &str) -> AmqpError {
        AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally \
             declared on another connection or the exclusive property value does not match that of the \
             original declaration.",
            self.name
        ))
    }

    /// Looks a queue up for a connection, refusing another connection's exclusive queue.
    pub fn queue_for(&self, name: &str, conn: u64) -> Result<Arc<Queue>> {
        let q = self
            .found_or_synced(|| self.queue(name))
            .ok_or_else(|| self.no_queue(name))?;
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(name)),
            _ => Ok(q),
        }
    }

    /// [`VHost::queue_for`], for what needs the queue itself (consume, get, purge, a
    /// passive declaration's counts): a classic queue whose home node is down answers 404
    /// with RabbitMQ's text.
    pub fn reachable_queue(&self, name: &str, conn: u64) -> Result<Arc<Queue>> {
        let q = self.queue_for(name, conn)?;
        match q.home_down() {
            None => Ok(q),
            Some(home) => Err(AmqpError::not_found(format!(
                "home node '{home}' of durable queue '{name}' in vhost '{}' is down or inaccessible",
                self.name
            ))),
        }
    }

    pub fn exchange_for_publish(&self, name: &str) -> Result<Arc<Exchange>> {
        let x = self
            .found_or_synced(|| self.exchange(name))
            .ok_or_else(|| self.no_exchange(name))?;
        if x.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{name}' in vhost '{}'",
                self.name
            )));
        }
        Ok(x)
    }

    /// Deletes everything: used when the vhost itself is deleted.
    pub fn clear(&self) {
        let names: Vec<ShortStr> = self.queues.read().keys().cloned().collect();
        for n in names {
            self.delete_queue_unchecked(&n);
        }
        self.exchanges.write().clear();
    }
}

/// RabbitMQ's answer to any declare, delete, bind or unbind naming the default exchange.
fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

/// Whether two argument values are equivalent for a redeclaration (integers of any width
/// compare by value).
fn args_equivalent(got: Option<&FieldValue>, cur: Option<&FieldValue>) -> bool {
    match (got, cur) {
        (Some(a), Some(b)) => a == b || (a.as_i64().is_some() && a.as_i64() == b.as_i64()),
        (None, None) => true,
        _ => false,
    }
}

/// An argument's value as RabbitMQ prints it in an inequivalence.
fn show_arg(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => v
            .as_str()
            .map(str::to_string)
            .or_else(|| v.as_i64().map(|i| i.to_string()))
            .unwrap_or_else(|| format!("{v:?}")),
    }
}

fn describe_arg(v: Option<&FieldValue>, show: &dyn Fn(Option<&FieldValue>) -> String) -> String {
    match v {
        None => "none".into(),
        Some(val) => format!("the value '{}' of type '{}'", show(v), val.type_name()),
    }
}

/// A server-generated queue name: `amq.gen-` and 22 URL-safe base64 characters, as RabbitMQ.
pub fn generate_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(30);
    s.push_str("amq.gen-");
    for _ in 0..22 {
        s.push(ALPHABET[rng.gen_range(0..64)] as char);
    }
    s
}
