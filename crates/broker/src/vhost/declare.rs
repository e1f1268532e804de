//! Declaring, deleting and purging exchanges and queues, with RabbitMQ's equivalence checks
//! and argument validation.

use super::*;
use crate::stats::Churn;

/// Queue arguments RabbitMQ compares on redeclaration (others are kept but not compared), in
/// the order it compares them (the first inequivalent one is reported).
const COMPARED_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
];

/// Arguments whose inequivalence RabbitMQ 4 reports in the short form, `received 'a' but
/// current is 'b'`.
const SHORT_FORM_ARGS: &[&str] = &["x-overflow", "x-queue-type"];

impl VHost {
    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<Arc<Exchange>> {
        // RabbitMQ refuses the default exchange first for a passive declare; a full one has
        // its type checked before.
        if d.passive {
            if d.name.is_empty() {
                return Err(default_exchange_refused());
            }
            return self
                .found_or_synced(|| self.exchange(&d.name))
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
        if d.name.is_empty() {
            return Err(default_exchange_refused());
        }
        if d.durable && !d.auto_delete && !d.name.starts_with("amq.") {
            let op = || crate::metadata::MetaOp::DeclareExchange {
                vhost: self.name.clone(),
                name: d.name.to_string(),
                kind: d.kind.to_string(),
                internal: d.internal,
                arguments: crate::metadata::WireTable(d.arguments.clone()),
            };
            if let Some(r) = self.replicated(op) {
                r?;
                return self
                    .exchange(&d.name)
                    .ok_or_else(|| self.no_exchange(&d.name));
            }
        }
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
            // RabbitMQ compares one exchange argument.
            let (got, cur) = (
                d.arguments.get("alternate-exchange"),
                x.arguments.get("alternate-exchange"),
            );
            if !args_equivalent(got, cur) {
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg 'alternate-exchange' for exchange '{}' in vhost '{}': received {} but current is {}",
                    d.name,
                    self.name,
                    describe_arg(got, &show_arg),
                    describe_arg(cur, &show_arg)
                )));
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
        self.definitions_changed(x.durable, || DefScope::Exchange {
            vhost: self.name.clone(),
            name: x.name.to_string(),
        });
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
        if Self::replicates_exchange(&x) {
            let op = || crate::metadata::MetaOp::DeleteExchange {
                vhost: self.name.clone(),
                name: name.to_string(),
                if_unused,
            };
            if let Some(r) = self.replicated(op) {
                return r;
            }
        }
        if if_unused && x.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&x);
        Ok(())
    }

    pub(super) fn remove_exchange(&self, x: &Arc<Exchange>) {
        self.exchanges.write().remove(x.name.as_str());
        x.mark_deleted();
        // Its bindings go too, from it and to it.
        self.definitions_changed(x.durable, || DefScope::VHost {
            vhost: self.name.clone(),
        });
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

    pub(super) fn maybe_auto_delete_exchange(&self, x: &Arc<Exchange>) {
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
            let q = self.reachable_queue(&d.name, conn)?;
            return Ok((q.clone(), q.message_count(), q.consumer_count()));
        }
        Churn::count(&self.churn.queues_declared);
        let kind = d.arguments.get("x-queue-type").and_then(FieldValue::as_str);
        let (quorum, stream) = (kind == Some("quorum"), kind == Some("stream"));
        let name: ShortStr = if d.name.is_empty() {
            if let Some(t @ ("quorum" | "stream")) = kind {
                return Err(AmqpError::precondition(format!(
                    "Cannot declare a server-named queue for type rabbit_{t}_queue"
                )));
            }
            generate_name().into()
        } else if d.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        } else {
            d.name.clone()
        };
        let replica_host = self.persistence.as_ref().and_then(|p| p.replica_host());
        // With `cluster.classic_queues_everywhere`: this node's name, the home of the durable
        // classic queues declared here.
        let this_node = replica_host
            .and_then(|h| h.classic_home())
            .filter(|_| !quorum && !stream);
        let shared = d.durable && !d.exclusive && !d.auto_delete;
        // A replicated quorum queue, or a classic queue every node knows, is declared through
        // the metadata log (applied on every node). Not shared: a quorum queue is refused the
        // same way on every node, a classic one stays on this node; no need to ask the others.
        if shared && ((quorum && replica_host.is_some()) || this_node.is_some()) {
            let op = || match &this_node {
                Some(me) => crate::metadata::MetaOp::DeclareHomedQueue {
                    vhost: self.name.clone(),
                    name: name.to_string(),
                    arguments: crate::metadata::WireTable(d.arguments.clone()),
                    home: me.clone(),
                },
                None => crate::metadata::MetaOp::DeclareQuorumQueue {
                    vhost: self.name.clone(),
                    name: name.to_string(),
                    arguments: crate::metadata::WireTable(d.arguments.clone()),
                    // A bad size is refused when the declaration is applied (on every node).
                    members: self.choose_members(&d.arguments),
                },
            };
            if let Some(r) = self.replicated(op) {
                r?;
                let q = self.queue_for(&name, conn)?;
                return Ok((q.clone(), q.message_count(), q.consumer_count()));
            }
        }
        // Declared from the metadata log (or this node's saved definitions): the queue's home.
        // Another node's makes this a stand-in.
        let home = this_node
            .as_ref()
            .and(crate::metadata::home())
            .filter(|_| shared);
        let remote_home = home.clone().filter(|h| Some(h) != this_node.as_ref());
        let _lifecycle = self.lifecycle.lock();
        // An existing queue is only compared (RabbitMQ checks a new queue's arguments).
        if let Some(q) = self.queue(&name) {
            return self.redeclare(q, &d, conn);
        }
        self.check_queue_args(&name, &d)?;
        let owner = d.exclusive.then_some(conn);
        // As RabbitMQ, an exclusive queue is not durable, whatever the declaration says.
        let durable = d.durable && !d.exclusive;
        let mut q = Queue::new(
            name.clone(),
            &self.name,
            durable,
            owner,
            d.auto_delete,
            d.arguments.clone(),
        );
        let mut recovery = None;
        if let (Some(home), None) = (home, &remote_home) {
            q.set_home(home);
        }
        let host = replica_host.filter(|_| quorum && durable);
        if stream {
            q = self.open_stream(q)?;
        } else if host.is_some() {
            // A replicated quorum queue keeps its messages in the node's Raft log.
        } else if remote_home.is_some() {
            // A stand-in: the messages are on the home node.
        } else if let (true, Some(p)) = (durable, &self.persistence) {
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
        if let (Some(home), Some(host)) = (&remote_home, replica_host) {
            q.attach_remote(&**host, home, self.followup_sink())
                .map_err(|e| {
                    AmqpError::new(
                        warren_protocol::constants::INTERNAL_ERROR,
                        format!("cannot reach the queue's home node {home}: {e}"),
                    )
                })?;
        }
        if let Some(host) = host {
            q.attach_replica(&**host, self.followup_sink()).map_err(|e| {
                tracing::error!(queue = %name, vhost = %self.name, error = %e, "cannot start the quorum queue's Raft group");
                AmqpError::new(
                    warren_protocol::constants::INTERNAL_ERROR,
                    format!("cannot start the queue's Raft group: {e}"),
                )
            })?;
        }
        // No one else can have inserted it: `lifecycle` is held.
        self.queues.write().insert(name, q.clone());
        Churn::count(&self.churn.queues_created);
        let mut count = 0;
        let mut fu = Followups::new();
        if let Some(rec) = recovery {
            let (restored, errors) = q.recover(rec, &mut fu);
            if restored > 0 || errors > 0 {
                tracing::info!(queue = %q.name, vhost = %self.name, restored, errors, "recovered messages");
            }
            count = q.message_count();
        }
        self.definitions_changed(q.durable, || self.queue_scope(&q.name));
        if !self.policies.read().is_empty() || !self.operator_policies.read().is_empty() {
            self.apply_queue_policy(&q);
        }
        let opts = q.options();
        // (A stand-in's timer would have nothing to do: its home node expires its messages.)
        if (opts.message_ttl.is_some() || opts.expires.is_some()) && !q.is_remote() {
            q.timer_followup(&mut fu);
        }
        self.follow_up(fu);
        Ok((q, count, 0))
    }

    /// Where a replicated queue's (or a stand-in's) follow-ups go: this vhost, while it lives.
    fn followup_sink(self: &Arc<Self>) -> crate::queue::replica::FollowupSink {
        let vhost = Arc::downgrade(self);
        Arc::new(move |fu| {
            if let Some(v) = vhost.upgrade() {
                v.follow_up(fu);
            }
        })
    }

    /// Opens a new stream's log (a stream lives on disk: a broker without a data directory
    /// has none).
    fn open_stream(&self, q: Queue) -> Result<Queue> {
        let Some(p) = &self.persistence else {
            return Err(AmqpError::new(
                warren_protocol::constants::INTERNAL_ERROR,
                "streams need a data directory",
            ));
        };
        let opts = crate::stream::args::StreamOptions::from_arguments(
            &q.arguments,
            self.policy_for(&q.name, true).as_ref(),
        );
        let s = crate::stream::Stream::open(p, &self.name, &q.name, opts).map_err(|e| {
            tracing::error!(queue = %q.name, error = %e, "cannot open the stream's log");
            AmqpError::new(
                warren_protocol::constants::INTERNAL_ERROR,
                format!("cannot open message store: {e}"),
            )
        })?;
        Ok(q.with_stream(p.clone(), s))
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
            &self.name,
            false,
            Some(conn),
            true,
            FieldTable::new(),
        ));
        self.queues.write().insert(name, q.clone());
        Churn::count(&self.churn.queues_created);
        q
    }

    pub(super) fn redeclare(
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
        let stream = q.stream().is_some();
        let stream_args = if stream {
            crate::stream::args::COMPARED_STREAM_ARGS
        } else {
            &[]
        };
        for arg in COMPARED_QUEUE_ARGS.iter().chain(stream_args) {
            let (mut got, mut cur) = (d.arguments.get(arg), q.arguments.get(arg));
            // RabbitMQ 4 records the default queue type of a queue declared without one.
            let classic = FieldValue::from("classic");
            if *arg == "x-queue-type" {
                got = got.or(Some(&classic));
                cur = cur.or(Some(&classic));
            }
            if args_equivalent(got, cur) {
                continue;
            }
            let (received, current) = match (got, cur) {
                // RabbitMQ 4 reports every argument of a stream in the short form.
                (Some(a), Some(b)) if stream || SHORT_FORM_ARGS.contains(arg) => (
                    format!("'{}'", show_arg(Some(a))),
                    format!("'{}'", show_arg(Some(b))),
                ),
                _ => (describe_arg(got, &show_arg), describe_arg(cur, &show_arg)),
            };
            return Err(AmqpError::precondition(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received {received} but current is {current}",
                q.name, self.name
            )));
        }
        q.touch();
        let (m, c) = (q.message_count(), q.consumer_count());
        Ok((q, m, c))
    }

    /// A new queue's arguments, checked in RabbitMQ's order and answered with its texts
    /// (Erlang terms for the values, as RabbitMQ prints them).
    pub(super) fn check_queue_args(&self, name: &str, d: &QueueDeclare) -> Result<()> {
        let invalid = |arg: &str, why: String| {
            AmqpError::precondition(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}': {why}",
                self.name
            ))
        };
        // The queue type first: the rest is checked by what it allows.
        let quorum = match d.arguments.get("x-queue-type").map(|v| v.as_str()) {
            None | Some(Some("classic")) => false,
            Some(Some("quorum")) => true,
            Some(Some("stream")) => {
                return crate::stream::args::check_declare(
                    &self.name,
                    name,
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    &d.arguments,
                )
            }
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("\"unsupported queue type '{}'\"", other.unwrap_or("?")),
                ))
            }
        };
        // Arguments the queue type does not take, before their values are looked at.
        let not_for_type = |arg: &str, kind: &str| {
            AmqpError::precondition(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}' of queue type {kind}",
                self.name
            ))
        };
        if quorum && d.arguments.get("x-max-priority").is_some() {
            return Err(not_for_type("x-max-priority", "rabbit_quorum_queue"));
        }
        if !quorum && d.arguments.get("x-delivery-limit").is_some() {
            return Err(not_for_type("x-delivery-limit", "rabbit_classic_queue"));
        }
        if !quorum && d.arguments.get("x-quorum-initial-group-size").is_some() {
            return Err(not_for_type(
                "x-quorum-initial-group-size",
                "rabbit_classic_queue",
            ));
        }
        let int = |arg: &str| -> Result<Option<i64>> {
            match d.arguments.get(arg) {
                None => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                    invalid(arg, format!("\"expected integer, got {}\"", v.type_name()))
                }),
            }
        };
        let non_negative = |arg: &str| -> Result<Option<i64>> {
            match int(arg)? {
                Some(n) if n < 0 => Err(invalid(arg, format!("{{value_negative,{n}}}"))),
                n => Ok(n),
            }
        };
        if let Some(n) = non_negative("x-expires")? {
            if n == 0 {
                return Err(invalid("x-expires", "{value_zero,0}".into()));
            }
        }
        non_negative("x-message-ttl")?;
        if d.arguments.get("x-dead-letter-routing-key").is_some()
            && d.arguments.get("x-dead-letter-exchange").is_none()
        {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        non_negative("x-max-length")?;
        non_negative("x-max-length-bytes")?;
        if let Some(n) = non_negative("x-max-priority")? {
            if n > 255 {
                return Err(invalid(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{n}}}"),
                ));
            }
        }
        if let Some(v) = d.arguments.get("x-overflow") {
            if !matches!(
                v.as_str(),
                Some("drop-head" | "reject-publish" | "reject-publish-dlx")
            ) {
                return Err(invalid("x-overflow", "invalid_overflow".into()));
            }
        }
        non_negative("x-consumer-timeout")?;
        if let Some(n) = non_negative("x-quorum-initial-group-size")? {
            if n == 0 {
                return Err(invalid(
                    "x-quorum-initial-group-size",
                    "{value_zero,0}".into(),
                ));
            }
        }
        if quorum {
            {
                // RabbitMQ's order: auto-delete, exclusive, durable.
                let prop = if d.auto_delete {
                    Some("auto-delete")
                } else if d.exclusive {
                    Some("exclusive-owner")
                } else if !d.durable {
                    Some("non-durable")
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
        if q.in_metadata() {
            let before = q.message_count();
            let op = || crate::metadata::MetaOp::DeleteQueue {
                vhost: self.name.clone(),
                name: name.to_string(),
                if_unused,
                if_empty,
            };
            if let Some(r) = self.replicated(op) {
                return r.map(|()| before);
            }
        }
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
        let mut deleted = self.deleted_counters.lock();
        let Some(q) = self.queues.write().remove(name) else {
            return 0;
        };
        Churn::count(&self.churn.queues_deleted);
        deleted
            .entry(q.queue_type().to_string())
            .or_default()
            .add(&q.stats());
        drop(deleted);
        self.definitions_changed(q.durable, || self.queue_scope(&q.name));
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
        let q = self.reachable_queue(name, conn)?;
        if q.stream().is_some() {
            return Err(crate::stream::purge_refused(&q));
        }
        Ok(q.purge())
    }
}
