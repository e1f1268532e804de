//! Routing a published message through the vhost's exchanges (exchange-to-exchange
//! bindings followed without loops), and dead letters back into it.

use super::*;

impl VHost {
    /// Carries out what queue commands left for the vhost, in order, until nothing is left:
    /// routes dead letters (whose publishes may leave more), starts timers, deletes queues
    /// that asked for it. Called with no queue locked.
    pub fn follow_up(&self, mut fu: Followups) {
        while let Some(f) = fu.pop() {
            match f {
                Followup::DeadLetter(from, d) => self.publish_dead_letter(&from, d, &mut fu),
                Followup::StartTimer(q) => self.register_timed(&q),
                Followup::Delete(q, reason) => {
                    // Only the queue that asked: a queue of the same name declared since stays.
                    if !self.queue(&q.name).is_some_and(|cur| Arc::ptr_eq(&cur, &q)) {
                        continue;
                    }
                    match reason {
                        DeleteReason::Expired => {
                            tracing::info!(queue = %q.name, vhost = %self.name, "deleting queue: unused for longer than x-expires")
                        }
                        DeleteReason::Unused => {
                            tracing::debug!(queue = %q.name, vhost = %self.name, "deleting auto-delete queue: its last consumer is gone")
                        }
                    }
                    if q.in_metadata() && self.replicates_definitions() {
                        // In a cluster the deletion goes through the metadata log, from a
                        // thread that may wait for it (this may be a Raft thread).
                        let op = crate::metadata::MetaOp::DeleteQueue {
                            vhost: self.name.clone(),
                            name: q.name.to_string(),
                            if_unused: false,
                            if_empty: false,
                        };
                        if let Some(log) = self.persistence.as_ref().and_then(|p| p.metadata_log())
                        {
                            let log = log.clone();
                            std::thread::spawn(move || {
                                if let Err(e) = log.run(op) {
                                    tracing::warn!(error = %e, "the cluster did not delete an expired queue; the next tick tries again");
                                }
                            });
                        }
                        continue;
                    }
                    self.delete_queue_unchecked(&q.name);
                }
            }
        }
    }

    /// Publishes a dead-lettered message to its dead-letter exchange (dropped if that
    /// exchange is gone, or if it would loop back without a rejection on the way).
    fn publish_dead_letter(
        &self,
        from: &Arc<Queue>,
        d: crate::deadletter::DeadLetter,
        fu: &mut Followups,
    ) {
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
        let mut out = Vec::new();
        self.route(&x, &msg, &mut out);
        for q in out {
            if crate::deadletter::is_cycle(&msg, &q.name) {
                continue;
            }
            publish_logged(&q, &msg, "dead letter", fu);
        }
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
    pub(super) fn route_from(
        &self,
        exchange: &Arc<Exchange>,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
    ) {
        // Headers are decoded only if a headers exchange is on the way, and then only once.
        let mut dests = Vec::new();
        let mut visited: Vec<*const Exchange> = Vec::new();
        let mut next = Some(exchange.clone());
        while let Some(x) = next.take() {
            visited.push(Arc::as_ptr(&x));
            let headers = if x.kind == ExchangeKind::Headers {
                msg.props().headers.as_ref()
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
}

/// Publishes a message the broker itself republishes (a dead letter, a delayed message): no
/// publisher waits for it, so a queue that refuses it is logged, not answered. Returns None
/// if the queue's store failed to write it, else the group-commit epoch that makes it durable
/// (None inside when it is not kept across a restart, or the queue refused it).
pub(super) fn publish_logged(
    q: &Arc<Queue>,
    msg: &Arc<Message>,
    what: &str,
    fu: &mut Followups,
) -> Option<Option<u64>> {
    match q.publish(msg.clone(), msg.is_persistent(), fu) {
        Ok(p) => Some(p.epoch),
        Err(PublishError::Rejected) => {
            tracing::debug!(queue = %q.name, vhost = %q.vhost_name, "{what} refused: the queue is full (overflow reject-publish)");
            Some(None)
        }
        Err(PublishError::Store(e)) => {
            tracing::warn!(queue = %q.name, vhost = %q.vhost_name, error = %e, "{what} not stored: the queue's store could not write it");
            None
        }
    }
}
