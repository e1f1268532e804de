//! A virtual host: its exchanges and queues, and the operations clients perform on them
//! (declare, delete, bind, purge, publish), with RabbitMQ's rules and reply texts.

use crate::error::{AmqpError, Result};
use crate::exchange::{check_headers_args, Binding, Destination, Exchange, ExchangeKind};
use crate::message::Message;
use crate::persist::Persistence;
use crate::policy::{self, Policy};
use crate::queue::Queue;
use parking_lot::RwLock;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use warren_protocol::{FieldTable, FieldValue, ShortStr};

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
}

/// Queue arguments RabbitMQ compares on redeclaration (others are kept but not compared).
const COMPARED_QUEUE_ARGS: &[&str] = &[
    "x-queue-type",
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-delivery-limit",
];

const INTEGER_QUEUE_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-delivery-limit",
    "x-consumer-timeout",
];

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

    /// Adds or replaces a policy (or operator policy) and applies it to existing queues and
    /// exchanges at once.
    pub fn set_policy(&self, p: Policy, operator: bool) {
        {
            let mut list = if operator {
                self.operator_policies.write()
            } else {
                self.policies.write()
            };
            list.retain(|x| x.name != p.name);
            list.push(p);
        }
        self.apply_policies();
        self.definitions_changed(true);
    }

    /// Removes a policy; false if there was none by that name.
    pub fn clear_policy(&self, name: &str, operator: bool) -> bool {
        let removed = {
            let mut list = if operator {
                self.operator_policies.write()
            } else {
                self.policies.write()
            };
            let before = list.len();
            list.retain(|x| x.name != name);
            before != list.len()
        };
        if removed {
            self.apply_policies();
            self.definitions_changed(true);
        }
        removed
    }

    pub fn policies(&self, operator: bool) -> Vec<Policy> {
        if operator {
            self.operator_policies.read().clone()
        } else {
            self.policies.read().clone()
        }
    }

    /// The policy definition that applies to a queue or exchange name (operator caps merged in).
    pub fn policy_for(&self, name: &str, queue: bool) -> Option<FieldTable> {
        let ps = self.policies.read();
        let ops = self.operator_policies.read();
        policy::merge(
            policy::effective(&ps, name, queue),
            policy::effective(&ops, name, queue),
        )
    }

    /// Recomputes every queue's and exchange's effective policy.
    fn apply_policies(&self) {
        for q in self.queues() {
            self.apply_queue_policy(&q);
        }
        for x in self.exchanges() {
            *x.policy.write() = self.policy_for(&x.name, false);
        }
    }

    fn apply_queue_policy(&self, q: &Arc<Queue>) {
        let def = self.policy_for(&q.name, true);
        q.set_options(crate::queue::QueueOptions::from_arguments(
            &q.arguments,
            def.as_ref(),
        ));
    }

    pub(crate) fn register_timed(&self, q: &Arc<Queue>) {
        self.timed.lock().push(Arc::downgrade(q));
    }

    /// Timer work for every queue that asked for it; forgets deleted queues. Releases due
    /// delayed messages.
    pub fn tick(&self, now: u64) {
        for (exchange, msg) in self.delayed.take_due() {
            match self.exchange(&exchange) {
                Some(x) => {
                    let mut out = Vec::new();
                    self.route(&x, &msg, &mut out);
                    let persistent = msg.is_persistent();
                    for q in out {
                        let _ = q.publish(msg.clone(), persistent);
                    }
                }
                None => tracing::debug!(%exchange, "delayed message dropped: its exchange is gone"),
            }
        }
        let queues: Vec<Arc<Queue>> = self
            .timed
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let mut done = Vec::new();
        for q in &queues {
            if !q.tick(now) {
                done.push(Arc::as_ptr(q));
            }
        }
        self.timed
            .lock()
            .retain(|w| w.strong_count() > 0 && !done.contains(&w.as_ptr()));
    }

    /// Publishes a dead-lettered message to its dead-letter exchange (dropped if that
    /// exchange is gone, or if it would loop back without a rejection on the way).
    pub(crate) fn publish_dead_letter(&self, from: &Arc<Queue>, d: crate::deadletter::DeadLetter) {
        let Some(x) = self.exchange(&d.exchange) else {
            tracing::debug!(queue = %from.name, exchange = %d.exchange, "dead-letter exchange missing; message dropped");
            return;
        };
        let msg = Arc::new(crate::deadletter::dead_lettered(
            &d.msg,
            &from.name,
            d.reason,
            &d.exchange,
            d.routing_key.as_ref(),
        ));
        let persistent = msg.is_persistent();
        let mut out = Vec::new();
        self.route(&x, &msg, &mut out);
        for q in out {
            if crate::deadletter::is_cycle(&msg, &q.name) {
                continue;
            }
            let _ = q.publish(msg.clone(), persistent);
        }
    }

    /// A durable definition changed: have it saved.
    fn definitions_changed(&self, durable: bool) {
        if durable {
            if let Some(p) = &self.persistence {
                p.definitions_changed();
            }
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
        let q = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(name)),
            _ => Ok(q),
        }
    }

    pub fn exchange_for_publish(&self, name: &str) -> Result<Arc<Exchange>> {
        let x = self.exchange(name).ok_or_else(|| self.no_exchange(name))?;
        if x.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{name}' in vhost '{}'",
                self.name
            )));
        }
        Ok(x)
    }

    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<Arc<Exchange>> {
        // RabbitMQ refuses the default exchange before anything else, passive or not.
        if d.name.is_empty() {
            return Err(default_exchange_refused());
        }
        if d.passive {
            return self
                .exchange(&d.name)
                .ok_or_else(|| self.no_exchange(&d.name));
        }
        let delayed = d.kind.as_str() == "x-delayed-message";
        let kind = if delayed {
            // The rabbitmq-delayed-message-exchange plugin's contract: the routing type is
            // given by the x-delayed-type argument.
            d.arguments
                .get("x-delayed-type")
                .and_then(FieldValue::as_str)
                .and_then(ExchangeKind::parse)
                .ok_or_else(|| {
                    AmqpError::precondition(
                        "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                    )
                })?
        } else {
            ExchangeKind::parse(&d.kind)
                // RabbitMQ 4: a channel error (3.x closed the connection with 503).
                .ok_or_else(|| {
                    AmqpError::precondition(format!("unknown exchange type '{}'", d.kind))
                })?
        };
        if let Some(x) = self.exchange(&d.name) {
            let mismatch = |arg: &str, got: &dyn std::fmt::Display, cur: &dyn std::fmt::Display| {
                AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for exchange '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                    d.name, self.name
                ))
            };
            if x.kind != kind || x.delayed != delayed {
                return Err(mismatch("type", &d.kind, &x.type_name()));
            }
            if x.durable != d.durable {
                return Err(mismatch("durable", &d.durable, &x.durable));
            }
            if x.auto_delete != d.auto_delete {
                return Err(mismatch("auto_delete", &d.auto_delete, &x.auto_delete));
            }
            if x.internal != d.internal {
                return Err(mismatch("internal", &d.internal, &x.internal));
            }
            return Ok(x);
        }
        if d.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        let mut x = Exchange::new(
            d.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments,
        );
        x.delayed = delayed;
        let x = Arc::new(x);
        *x.policy.write() = self.policy_for(&x.name, false);
        let x = self.exchanges.write().entry(d.name).or_insert(x).clone();
        self.definitions_changed(x.durable);
        Ok(x)
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let Some(x) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && x.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&x);
        Ok(())
    }

    fn remove_exchange(&self, x: &Arc<Exchange>) {
        self.exchanges.write().remove(x.name.as_str());
        x.mark_deleted();
        self.definitions_changed(x.durable);
        for b in x.bindings() {
            if let Destination::Queue(q) = &b.destination {
                q.forget_binding(&x.name, &b);
            }
        }
        let dest = Destination::Exchange(x.clone());
        for other in self.exchanges() {
            if other.unbind_destination(&dest) > 0 {
                self.maybe_auto_delete_exchange(&other);
            }
        }
    }

    fn maybe_auto_delete_exchange(&self, x: &Arc<Exchange>) {
        if x.auto_delete && !x.has_bindings() {
            self.remove_exchange(x);
        }
    }

    /// queue.declare. Returns the queue with its ready-message and consumer counts.
    pub fn declare_queue(
        self: &Arc<Self>,
        d: QueueDeclare,
        conn: u64,
    ) -> Result<(Arc<Queue>, u32, u32)> {
        if d.passive {
            let q = self.queue_for(&d.name, conn)?;
            return Ok((q.clone(), q.message_count(), q.consumer_count()));
        }
        let name: ShortStr = if d.name.is_empty() {
            generate_name().into()
        } else if d.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        } else {
            d.name.clone()
        };
        self.check_queue_args(&name, &d)?;
        let _lifecycle = self.lifecycle.lock();
        if let Some(q) = self.queue(&name) {
            return self.redeclare(q, &d, conn);
        }
        let owner = d.exclusive.then_some(conn);
        // As RabbitMQ, an exclusive queue is not durable, whatever the declaration says.
        let durable = d.durable && !d.exclusive;
        let mut q = Queue::new(
            name.clone(),
            self,
            durable,
            owner,
            d.auto_delete,
            d.arguments.clone(),
        );
        let mut recovery = None;
        if let (true, Some(p)) = (durable, &self.persistence) {
            let (store, rec) = p.open_queue_store(&self.name, &name).map_err(|e| {
                tracing::error!(queue = %name, error = %e, "cannot open the queue's message store");
                AmqpError::new(
                    warren_protocol::constants::INTERNAL_ERROR,
                    format!("cannot open message store: {e}"),
                )
            })?;
            q = q.with_store(p.clone(), store);
            recovery = Some(rec);
        } else if let Some(p) = &self.persistence {
            q = q.with_paging(p.clone());
        }
        let q = Arc::new(q);
        // No one else can have inserted it: `lifecycle` is held.
        self.queues.write().insert(name, q.clone());
        let mut count = 0;
        if let Some(rec) = recovery {
            let (restored, errors) = q.recover(rec);
            if restored > 0 || errors > 0 {
                tracing::info!(queue = %q.name, vhost = %self.name, restored, errors, "recovered messages");
            }
            count = q.message_count();
        }
        self.definitions_changed(q.durable);
        if !self.policies.read().is_empty() || !self.operator_policies.read().is_empty() {
            self.apply_queue_policy(&q);
        }
        let opts = q.options();
        if opts.message_ttl.is_some() || opts.expires.is_some() {
            q.register_timer();
        }
        Ok((q, count, 0))
    }

    /// The hidden queue behind direct reply-to (`amq.rabbitmq.reply-to`): named
    /// `amq.rabbitmq.reply-to.<token>`, exclusive to the connection, gone with its consumer.
    pub fn declare_reply_queue(self: &Arc<Self>, conn: u64) -> Arc<Queue> {
        let name: ShortStr = format!(
            "amq.rabbitmq.reply-to.{}",
            &generate_name()["amq.gen-".len()..]
        )
        .into();
        let q = Arc::new(Queue::new(
            name.clone(),
            self,
            false,
            Some(conn),
            true,
            FieldTable::new(),
        ));
        self.queues.write().insert(name, q.clone());
        q
    }

    fn redeclare(
        &self,
        q: Arc<Queue>,
        d: &QueueDeclare,
        conn: u64,
    ) -> Result<(Arc<Queue>, u32, u32)> {
        // RabbitMQ's strict exclusive check comes first: another connection's exclusive queue,
        // or an exclusive flag that differs from the original declaration, is 405.
        let exclusive_ok = match q.exclusive_owner {
            Some(owner) => d.exclusive && owner == conn,
            None => !d.exclusive,
        };
        if !exclusive_ok {
            return Err(self.locked(&q.name));
        }
        let mismatch = |arg: &str, got: &dyn std::fmt::Display, cur: &dyn std::fmt::Display| {
            AmqpError::precondition(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                q.name, self.name
            ))
        };
        // As RabbitMQ, an exclusive queue is never durable, whatever the declaration says.
        let durable = d.durable && !d.exclusive;
        if q.durable != durable {
            return Err(mismatch("durable", &durable, &q.durable));
        }
        if q.auto_delete != d.auto_delete {
            return Err(mismatch("auto_delete", &d.auto_delete, &q.auto_delete));
        }
        for arg in COMPARED_QUEUE_ARGS {
            let got = d.arguments.get(arg);
            let cur = q.arguments.get(arg);
            let equivalent = match (got, cur) {
                (Some(a), Some(b)) => a == b || (a.as_i64().is_some() && a.as_i64() == b.as_i64()),
                (None, None) => true,
                // An explicit x-queue-type of "classic" equals the default.
                (Some(v), None) | (None, Some(v)) => {
                    *arg == "x-queue-type" && v.as_str() == Some("classic")
                }
            };
            if !equivalent {
                let show = |v: Option<&FieldValue>| match v {
                    None => "none".to_string(),
                    Some(v) => v
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| v.as_i64().map(|i| i.to_string()))
                        .unwrap_or_else(|| format!("{v:?}")),
                };
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received {} but current is {}",
                    q.name,
                    self.name,
                    describe_arg(got, &show),
                    describe_arg(cur, &show)
                )));
            }
        }
        q.touch();
        let (m, c) = (q.message_count(), q.consumer_count());
        Ok((q, m, c))
    }

    fn check_queue_args(&self, name: &str, d: &QueueDeclare) -> Result<()> {
        let invalid = |arg: &str, why: &str| {
            AmqpError::precondition(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}': {why}",
                self.name
            ))
        };
        for arg in INTEGER_QUEUE_ARGS {
            if let Some(v) = d.arguments.get(arg) {
                match v.as_i64() {
                    Some(n) if n >= 0 => {}
                    Some(_) => return Err(invalid(arg, "a negative value is not allowed")),
                    None => {
                        return Err(invalid(
                            arg,
                            &format!("{} is not a valid integer type", v.type_name()),
                        ))
                    }
                }
            }
        }
        if let Some(v) = d.arguments.get("x-expires") {
            if v.as_i64() == Some(0) {
                return Err(invalid("x-expires", "the value must be positive"));
            }
        }
        if let Some(v) = d.arguments.get("x-max-priority") {
            if v.as_i64().is_some_and(|p| p > 255) {
                return Err(invalid(
                    "x-max-priority",
                    "the value must be between 0 and 255",
                ));
            }
        }
        if let Some(v) = d.arguments.get("x-overflow") {
            if !matches!(
                v.as_str(),
                Some("drop-head" | "reject-publish" | "reject-publish-dlx")
            ) {
                return Err(invalid(
                    "x-overflow",
                    "expected drop-head, reject-publish or reject-publish-dlx",
                ));
            }
        }
        match d.arguments.get("x-queue-type").map(|v| v.as_str()) {
            None | Some(Some("classic")) => {}
            Some(Some("quorum")) => {
                let prop = if !d.durable {
                    Some("non-durable")
                } else if d.exclusive {
                    Some("exclusive-owner")
                } else if d.auto_delete {
                    Some("auto-delete")
                } else {
                    None
                };
                if let Some(p) = prop {
                    return Err(AmqpError::precondition(format!(
                        "invalid property '{p}' for queue '{name}' in vhost '{}'",
                        self.name
                    )));
                }
            }
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    &format!("unsupported queue type '{}'", other.unwrap_or("?")),
                ))
            }
        }
        Ok(())
    }

    /// queue.delete. Returns the number of ready messages deleted. A missing queue is not an
    /// error (RabbitMQ makes delete idempotent).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> Result<u32> {
        let q = match self.queue_for(name, conn) {
            Ok(q) => q,
            Err(e) if e.code == warren_protocol::constants::NOT_FOUND => return Ok(0),
            Err(e) => return Err(e),
        };
        if if_unused && q.consumer_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(self.delete_queue_unchecked(name))
    }

    /// Deletes a queue with no checks (auto-delete, exclusive owner gone, vhost deletion).
    pub fn delete_queue_unchecked(&self, name: &str) -> u32 {
        let _lifecycle = self.lifecycle.lock();
        let Some(q) = self.queues.write().remove(name) else {
            return 0;
        };
        self.definitions_changed(q.durable);
        let bindings = std::mem::take(&mut *q.bindings.lock());
        let dest = Destination::Queue(q.clone());
        for (ex, key, args) in bindings {
            if let Some(x) = self.exchange(&ex) {
                x.unbind(&Binding {
                    destination: dest.clone(),
                    routing_key: key,
                    arguments: args,
                });
                self.maybe_auto_delete_exchange(&x);
            }
        }
        q.mark_deleted()
    }

    pub fn purge_queue(&self, name: &str, conn: u64) -> Result<u32> {
        Ok(self.queue_for(name, conn)?.purge())
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: ShortStr,
        args: FieldTable,
        conn: u64,
    ) -> Result<()> {
        let q = self.queue_for(queue, conn)?;
        let x = self.bindable_exchange(exchange)?;
        if x.kind == ExchangeKind::Headers {
            check_headers_args(&args)?;
        }
        let added = x.bind(Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: key.clone(),
            arguments: args.clone(),
        })?;
        if added {
            q.bindings.lock().push((x.name.clone(), key, args));
            self.definitions_changed(q.durable && x.durable);
        }
        Ok(())
    }

    /// queue.unbind. As RabbitMQ (since 3.2): unbinding from a queue or exchange that does not
    /// exist, or a binding that does not exist, succeeds; only the default exchange (403) and
    /// another connection's exclusive queue with that binding (405) are refused.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: ShortStr,
        args: FieldTable,
        conn: u64,
    ) -> Result<()> {
        if exchange.is_empty() {
            return Err(default_exchange_refused());
        }
        let (Some(q), Some(x)) = (self.queue(queue), self.exchange(exchange)) else {
            return Ok(());
        };
        let bound = q
            .bindings
            .lock()
            .iter()
            .any(|(e, k, a)| *e == x.name && *k == key && a.same_entries(&args));
        if !bound {
            return Ok(());
        }
        self.queue_for(queue, conn)?;
        let b = Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: key,
            arguments: args,
        };
        if x.unbind(&b) {
            q.forget_binding(&x.name, &b);
            self.definitions_changed(q.durable && x.durable);
            self.maybe_auto_delete_exchange(&x);
        }
        Ok(())
    }

    fn bindable_exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        self.exchange(name).ok_or_else(|| self.no_exchange(name))
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: ShortStr,
        args: FieldTable,
    ) -> Result<()> {
        let src = self.bindable_exchange(source)?;
        let dst = self.bindable_exchange(destination)?;
        let durable = src.durable && dst.durable;
        if src.bind(Binding {
            destination: Destination::Exchange(dst),
            routing_key: key,
            arguments: args,
        })? {
            self.definitions_changed(durable);
        }
        Ok(())
    }

    /// exchange.unbind: as queue.unbind, missing exchanges or a missing binding succeed.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: ShortStr,
        args: FieldTable,
    ) -> Result<()> {
        if source.is_empty() || destination.is_empty() {
            return Err(default_exchange_refused());
        }
        let (Some(src), Some(dst)) = (self.exchange(source), self.exchange(destination)) else {
            return Ok(());
        };
        let durable = src.durable && dst.durable;
        if src.unbind(&Binding {
            destination: Destination::Exchange(dst),
            routing_key: key,
            arguments: args,
        }) {
            self.definitions_changed(durable);
            self.maybe_auto_delete_exchange(&src);
        }
        Ok(())
    }

    /// Routes a message from `exchange` into `out` (each matching queue once, following
    /// exchange-to-exchange bindings without looping).
    pub fn route(&self, exchange: &Arc<Exchange>, msg: &Message, out: &mut Vec<Arc<Queue>>) {
        out.clear();
        if exchange.name.is_empty() {
            if let Some(q) = self.queue(&msg.routing_key) {
                out.push(q);
            }
            return;
        }
        self.route_from(exchange, msg, out);
        if out.is_empty() {
            // Unroutable: the exchange's alternate exchange (an `alternate-exchange` argument)
            // gets the message, following chains without looping.
            let mut seen = vec![Arc::as_ptr(exchange)];
            let mut x = exchange.clone();
            while out.is_empty() {
                let Some(ae) = x.alternate_exchange().and_then(|n| self.exchange(&n)) else {
                    break;
                };
                if seen.contains(&Arc::as_ptr(&ae)) {
                    break;
                }
                seen.push(Arc::as_ptr(&ae));
                self.route_from(&ae, msg, out);
                x = ae;
            }
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(Arc::as_ptr);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
    }

    /// Appends the queues `exchange` routes `msg` to (following exchange-to-exchange bindings).
    fn route_from(&self, exchange: &Arc<Exchange>, msg: &Message, out: &mut Vec<Arc<Queue>>) {
        // Headers are decoded only if a headers exchange is on the way, and then only once.
        let mut props: Option<warren_protocol::BasicProperties> = None;
        let mut dests = Vec::new();
        let mut visited: Vec<*const Exchange> = Vec::new();
        let mut next = Some(exchange.clone());
        while let Some(x) = next.take() {
            visited.push(Arc::as_ptr(&x));
            let headers = if x.kind == ExchangeKind::Headers {
                props
                    .get_or_insert_with(|| msg.decode_properties())
                    .headers
                    .as_ref()
            } else {
                None
            };
            x.route(&msg.routing_key, headers, &mut dests);
            while let Some(d) = dests.pop() {
                match d {
                    Destination::Queue(q) => out.push(q),
                    Destination::Exchange(x) if !visited.contains(&Arc::as_ptr(&x)) => {
                        next = Some(x);
                        break;
                    }
                    Destination::Exchange(_) => {}
                }
            }
        }
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
