//! queue.bind / queue.unbind / exchange.bind / exchange.unbind, with RabbitMQ's rules: the
//! default exchange is refused, unbinding what is gone succeeds.

use super::*;

impl VHost {
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: ShortStr,
        args: FieldTable,
        conn: u64,
    ) -> Result<()> {
        // RabbitMQ's order: the exchange (403 for the default one, 404), then the queue.
        let x = self.bindable_exchange(exchange)?;
        let q = self.queue_for(queue, conn)?;
        if x.kind == ExchangeKind::Headers {
            check_headers_args(&args)?;
        }
        if q.in_metadata() && Self::replicates_exchange(&x) {
            let op = || binding_op(&self.name, exchange, queue, false, &key, &args, true);
            if let Some(r) = self.replicated(op) {
                return r;
            }
        }
        let added = x.bind(Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: key.clone(),
            arguments: args.clone(),
        })?;
        if added {
            q.bindings
                .lock()
                .push((x.name.clone(), key.clone(), args.clone()));
            self.definitions_changed(q.durable && x.durable, || {
                self.binding_scope(&x.name, &Destination::Queue(q.clone()), &key, &args)
            });
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
        if q.in_metadata() && Self::replicates_exchange(&x) {
            let op = || binding_op(&self.name, exchange, queue, false, &key, &args, false);
            if let Some(r) = self.replicated(op) {
                return r;
            }
        }
        let b = Binding {
            destination: Destination::Queue(q.clone()),
            routing_key: key,
            arguments: args,
        };
        if x.unbind(&b) {
            q.forget_binding(&x.name, &b);
            self.definitions_changed(q.durable && x.durable, || {
                self.binding_scope(&x.name, &b.destination, &b.routing_key, &b.arguments)
            });
            self.maybe_auto_delete_exchange(&x);
        }
        Ok(())
    }

    pub(super) fn bindable_exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        self.found_or_synced(|| self.exchange(name))
            .ok_or_else(|| self.no_exchange(name))
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: ShortStr,
        args: FieldTable,
    ) -> Result<()> {
        refuse_default_exchange(source, destination)?;
        let src = self.bindable_exchange(source)?;
        let dst = self.bindable_exchange(destination)?;
        let durable = src.durable && dst.durable;
        if Self::replicates_exchange(&src) && Self::replicates_exchange(&dst) {
            let op = || binding_op(&self.name, source, destination, true, &key, &args, true);
            if let Some(r) = self.replicated(op) {
                return r;
            }
        }
        let b = exchange_binding(dst, key, args);
        let scope = || self.binding_scope(&src.name, &b.destination, &b.routing_key, &b.arguments);
        if src.bind(b.clone())? {
            self.definitions_changed(durable, scope);
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
        refuse_default_exchange(source, destination)?;
        let (Some(src), Some(dst)) = (self.exchange(source), self.exchange(destination)) else {
            return Ok(());
        };
        let durable = src.durable && dst.durable;
        if Self::replicates_exchange(&src) && Self::replicates_exchange(&dst) {
            let op = || binding_op(&self.name, source, destination, true, &key, &args, false);
            if let Some(r) = self.replicated(op) {
                return r;
            }
        }
        let b = exchange_binding(dst, key, args);
        if src.unbind(&b) {
            self.definitions_changed(durable, || {
                self.binding_scope(&src.name, &b.destination, &b.routing_key, &b.arguments)
            });
            self.maybe_auto_delete_exchange(&src);
        }
        Ok(())
    }
}

/// exchange.bind / exchange.unbind name the default exchange: 403, as RabbitMQ.
fn refuse_default_exchange(source: &str, destination: &str) -> Result<()> {
    if source.is_empty() || destination.is_empty() {
        return Err(default_exchange_refused());
    }
    Ok(())
}

fn exchange_binding(destination: Arc<Exchange>, key: ShortStr, args: FieldTable) -> Binding {
    Binding {
        destination: Destination::Exchange(destination),
        routing_key: key,
        arguments: args,
    }
}

/// The metadata-log change of a binding (see [`crate::metadata`]).
fn binding_op(
    vhost: &str,
    source: &str,
    destination: &str,
    to_exchange: bool,
    key: &ShortStr,
    args: &FieldTable,
    bind: bool,
) -> crate::metadata::MetaOp {
    let b = crate::metadata::BindingOp {
        vhost: vhost.into(),
        source: source.into(),
        destination: destination.into(),
        to_exchange,
        routing_key: key.to_string(),
        arguments: crate::metadata::WireTable(args.clone()),
    };
    if bind {
        crate::metadata::MetaOp::Bind(b)
    } else {
        crate::metadata::MetaOp::Unbind(b)
    }
}
