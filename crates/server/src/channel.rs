//! One channel's method handlers: exchange, queue, basic, confirm and tx methods become broker
//! calls, and broker answers become reply frames. Errors come back as [`AmqpError`]s that the
//! connection turns into channel.close or connection.close.

use crate::outbox::Outbox;
use std::sync::Arc;
use warren_broker::persist::SyncState;
use warren_broker::queue::replica::Commit;
use warren_broker::queue::{Followups, PublishError};
use warren_broker::vhost::{ExchangeDeclare, QueueDeclare};
use warren_broker::{AmqpError, DeliveryChannel, Message, Queue, VHost};
use warren_protocol::assembler::{Command, Content};
use warren_protocol::constants::*;
use warren_protocol::frame::{write_content, write_method};
use warren_protocol::methods::*;
use warren_protocol::{Method, ShortStr};

type Result<T> = std::result::Result<T, AmqpError>;

/// A per-message TTL must be a non-negative integer (ms), as RabbitMQ requires; its texts
/// name the reason as an Erlang term.
fn check_expiration(content: &Content) -> Result<()> {
    use warren_protocol::properties::{flag, has};
    if !has(&content.properties, flag::EXPIRATION) {
        return Ok(());
    }
    let props = warren_protocol::BasicProperties::decode(content.properties.clone())
        .map_err(|e| AmqpError::new(SYNTAX_ERROR, format!("malformed content header: {e}")))?;
    let Some(e) = props.expiration else {
        return Ok(());
    };
    if e.parse::<u64>().is_ok() {
        return Ok(());
    }
    let why = match e.parse::<i64>() {
        Ok(n) if n < 0 => format!("{{value_negative,{n}}}"),
        _ => "no_integer".to_string(),
    };
    Err(AmqpError::precondition(format!(
        "invalid expiration '{e}': {why}"
    )))
}

/// The pseudo-queue of RabbitMQ's direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What a channel handler may touch of its connection.
pub(crate) struct Ctx<'a> {
    pub vhost: &'a Arc<VHost>,
    pub outbox: &'a Arc<Outbox>,
    pub conn_id: u64,
    pub frame_max: u32,
    pub exclusive_queues: &'a mut Vec<ShortStr>,
    /// Queues whose consumers are behind: the connection stops reading until they catch up.
    pub backlogged: &'a mut Vec<Arc<Queue>>,
    /// The connection's user and permissions.
    pub guard: &'a mut crate::security::Guard,
    /// What the method's queue commands leave for the vhost (dead letters, auto-delete); the
    /// connection hands them over once the method is handled.
    pub followups: &'a mut Followups,
    /// Woken when a publish to a replicated queue is committed (its confirm is due).
    pub commit_wake: &'a Arc<tokio::sync::Notify>,
}

enum TxOp {
    Publish {
        exchange: ShortStr,
        routing_key: ShortStr,
        mandatory: bool,
        content: Content,
    },
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

/// A transaction's commit in progress: its id (written with each persistent message), the
/// durable queues it wrote to, and the group commit that makes it durable.
struct Committing {
    id: u64,
    queues: Vec<Arc<Queue>>,
    epoch: u64,
    /// Publishes to replicated queues: the commit-ok also waits for these.
    commits: Vec<Arc<Commit>>,
    failed: bool,
}

/// A publish whose confirm is not sent yet.
struct PendingConfirm {
    seq: u64,
    /// The group commit to wait for (0: none).
    epoch: u64,
    /// The replicated queues' commits to wait for.
    commits: Vec<Arc<Commit>>,
    /// Refused or not stored: a nack.
    nack: bool,
}

/// Whether what a confirm or commit-ok waits for is done: None while it is not; then
/// whether it all succeeded.
fn settled(epoch: u64, commits: &[Arc<Commit>], synced: SyncState) -> Option<bool> {
    if epoch > synced.synced_epoch {
        return None;
    }
    let mut ok = epoch == 0 || epoch > synced.failed_epoch;
    for c in commits {
        ok &= c.outcome()?;
    }
    Some(ok)
}

/// A transaction id never used before, in this process or an earlier one on the same data
/// (the clock at start, in nanoseconds, then counting up).
fn next_transaction_id() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        std::sync::atomic::AtomicU64::new(now)
    })
    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub(crate) struct Channel {
    pub number: u16,
    pub delivery: Arc<DeliveryChannel>,
    pub assembler: warren_protocol::assembler::Assembler,
    /// Set after the server sent channel.close: frames are ignored until close-ok.
    pub closing: bool,
    confirm: bool,
    /// Publish sequence number of the last message (confirm mode).
    publish_seq: u64,
    /// Confirms not yet sent, in publish order. Runs of acks go out as one
    /// `basic.ack multiple`.
    confirms: std::collections::VecDeque<PendingConfirm>,
    tx: Option<Vec<TxOp>>,
    /// The transaction being committed (its publishes are being applied).
    committing: Option<Committing>,
    /// tx.commit-ok not yet sent, in order: the group-commit epoch and replicated commits
    /// each waits for.
    pending_commits: std::collections::VecDeque<(u64, Vec<Arc<Commit>>)>,
    /// Answers to definition changes (declare-ok, delete-ok, bind-ok, …) not yet sent, in
    /// order: each waits for the group commit (epoch) that saves its change.
    pending_replies: std::collections::VecDeque<(u64, Method)>,
    /// The hidden queue of this channel's direct reply-to consumer.
    reply_queue: Option<ShortStr>,
    /// The last queue declared on this channel, for methods that name the queue "".
    last_queue: Option<ShortStr>,
    /// Cache of the last exchange published to, saving a map lookup per message, with this
    /// channel's counters of publishes into it.
    last_exchange: Option<(
        Arc<warren_broker::exchange::Exchange>,
        Arc<warren_broker::stats::ExchangeCounters>,
    )>,
    /// Cache of the queue the last default-exchange publish went to.
    last_default_route: Option<Arc<Queue>>,
    route_scratch: Vec<Arc<Queue>>,
    outbox: Arc<Outbox>,
    /// Acks came in: the consumers' freed credit is used at the end of the read.
    resume_pending: bool,
}

impl Channel {
    pub fn new(
        number: u16,
        conn_id: u64,
        outbox: Arc<Outbox>,
        consumer_timeout: Option<std::time::Duration>,
    ) -> Self {
        Channel {
            number,
            delivery: DeliveryChannel::new(number, conn_id, outbox.clone(), consumer_timeout),
            assembler: Default::default(),
            closing: false,
            confirm: false,
            publish_seq: 0,
            confirms: Default::default(),
            tx: None,
            committing: None,
            pending_commits: Default::default(),
            pending_replies: Default::default(),
            last_queue: None,
            reply_queue: None,
            last_exchange: None,
            last_default_route: None,
            route_scratch: Vec::new(),
            outbox,
            resume_pending: false,
        }
    }

    /// Called after the frames of one socket read: delivers into the credit acks freed.
    pub fn end_of_read(&mut self, fu: &mut Followups) {
        if std::mem::take(&mut self.resume_pending) {
            self.delivery.resume(fu);
        }
    }

    /// Sends an answer, after those still waiting for their change to be saved.
    fn reply(&mut self, m: impl Into<Method>) {
        if self.pending_replies.is_empty() {
            self.outbox.send(self.number, m);
        } else {
            self.pending_replies.push_back((0, m.into()));
        }
    }

    /// Answers a definition change once it is on disk (at once when nothing is waiting to
    /// be saved), after any answer of this kind sent before it.
    fn reply_when_saved(&mut self, cx: &Ctx<'_>, m: impl Into<Method>) {
        let epoch = cx.vhost.definitions_epoch();
        if epoch == 0 && self.pending_replies.is_empty() {
            self.reply(m);
        } else {
            self.pending_replies.push_back((epoch, m.into()));
        }
    }

    pub fn has_pending_confirms(&self) -> bool {
        !self.confirms.is_empty()
            || !self.pending_commits.is_empty()
            || !self.pending_replies.is_empty()
    }

    /// Sends the confirms that are due: those needing no fsync, and those whose group commit
    /// has completed. A run of acks becomes one `basic.ack multiple`.
    /// Also sends the tx.commit-ok of transactions now on disk; returns the error to close
    /// the channel with if a transaction's group commit failed.
    pub fn flush_confirms(&mut self, synced: SyncState) -> Option<(AmqpError, u16, u16)> {
        while let Some((epoch, _)) = self.pending_replies.front() {
            if *epoch > synced.synced_epoch {
                break;
            }
            let failed = *epoch != 0 && *epoch <= synced.definitions_failed_epoch;
            let (_, m) = self.pending_replies.pop_front().expect("looked at above");
            if failed {
                self.pending_replies.clear();
                // The request the answer was for: its method id is the answer's less one,
                // except exchange.unbind's (40, answered by 51).
                let class_id = m.class_id();
                let method_id = match m {
                    Method::ExchangeUnbindOk(_) => 40,
                    _ => m.method_id() - 1,
                };
                return Some((
                    AmqpError::new(
                        INTERNAL_ERROR,
                        "could not save the definitions to disk (the change is in effect until the broker restarts); check the disk and free space",
                    ),
                    class_id,
                    method_id,
                ));
            }
            self.outbox.send(self.number, m);
        }
        while let Some((epoch, commits)) = self.pending_commits.front() {
            let Some(ok) = settled(*epoch, commits, synced) else {
                break;
            };
            self.pending_commits.pop_front();
            if !ok {
                self.pending_commits.clear();
                return Some((
                    AmqpError::new(
                        INTERNAL_ERROR,
                        "tx.commit failed: the message store could not sync the transaction to disk",
                    ),
                    TxCommit::CLASS_ID,
                    TxCommit::METHOD_ID,
                ));
            }
            self.reply(TxCommitOk {});
        }
        let mut ack_upto: Option<(u64, u32)> = None;
        while let Some(c) = self.confirms.front() {
            // A failed epoch is compared with `<=`, not `==`: several epochs can fail between
            // two looks at the sync state, and it names only the last.
            let Some(ok) = settled(c.epoch, &c.commits, synced) else {
                break;
            };
            let (seq, nack) = (c.seq, c.nack || !ok);
            self.confirms.pop_front();
            if nack {
                if let Some((tag, n)) = ack_upto.take() {
                    self.reply(BasicAck {
                        delivery_tag: tag,
                        multiple: n > 1,
                    });
                }
                self.reply(BasicNack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                });
            } else {
                ack_upto = Some((seq, ack_upto.map_or(1, |(_, n)| n + 1)));
                self.delivery.counters.confirm.add(1);
            }
        }
        if let Some((tag, n)) = ack_upto {
            self.reply(BasicAck {
                delivery_tag: tag,
                multiple: n > 1,
            });
        }
        None
    }

    fn queue_name(&self, name: ShortStr) -> Result<ShortStr> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// Handles one command, borrowed from where the assembler left it: a publish takes its
    /// names and content out in place, so that the command is not copied on its way here
    /// (each copy of a method or command was a `memcpy` of up to 200 bytes per publish, 3 %
    /// of S1 each). Other methods are taken out whole.
    pub fn handle(&mut self, cx: &mut Ctx<'_>, cmd: &mut Command) -> Result<()> {
        // RabbitMQ refuses immediate=true before anything else, closing the connection.
        if let Method::BasicPublish(BasicPublish {
            immediate: true, ..
        }) = &cmd.method
        {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        // The content header is checked once, as RabbitMQ decodes it at publish: a malformed
        // one closes the connection with RabbitMQ's bare 541 (the log says what was wrong),
        // rather than losing every property later, when a feature decodes them.
        if let (Method::BasicPublish(_), Some(c)) = (&cmd.method, &cmd.content) {
            if let Err(e) = warren_protocol::BasicProperties::validate(&c.properties) {
                tracing::warn!(channel = self.number, error = %e, "closing connection: basic.publish with a malformed content header");
                return Err(AmqpError::bare(INTERNAL_ERROR));
            }
        }
        cx.guard
            .authorize(cx.vhost, &cmd.method, self.last_queue.as_ref())?;
        if let Method::BasicPublish(p) = &mut cmd.method {
            let content = cmd
                .content
                .take()
                .expect("assembler attaches content to basic.publish");
            let exchange = std::mem::take(&mut p.exchange);
            let routing_key = std::mem::take(&mut p.routing_key);
            if let Some(ops) = &mut self.tx {
                // Checked now (as RabbitMQ does: the exchange, then the properties),
                // applied at commit.
                cx.vhost.exchange_for_publish(&exchange)?;
                check_expiration(&content)?;
                cx.guard.check_user_id(&content.properties)?;
                ops.push(TxOp::Publish {
                    exchange,
                    routing_key,
                    mandatory: p.mandatory,
                    content,
                });
                return Ok(());
            }
            return self.publish(cx, exchange, routing_key, p.mandatory, content);
        }
        // Any method will do in its place: the command is dropped after this.
        let method = std::mem::replace(&mut cmd.method, TxSelectOk {}.into());
        let method_is_sync = matches!(method, Method::BasicRecover(_));
        match method {
            Method::BasicAck(a) => match &mut self.tx {
                Some(ops) => {
                    self.delivery.check_tag(a.delivery_tag, a.multiple)?;
                    ops.push(TxOp::Ack {
                        tag: a.delivery_tag,
                        multiple: a.multiple,
                    });
                    Ok(())
                }
                None => {
                    self.delivery
                        .ack_without_resume(a.delivery_tag, a.multiple)?;
                    self.resume_pending = true;
                    Ok(())
                }
            },
            Method::BasicNack(n) => self.nack(cx, n.delivery_tag, n.multiple, n.requeue),
            Method::BasicReject(r) => self.nack(cx, r.delivery_tag, false, r.requeue),
            Method::BasicQos(q) => {
                if q.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!(
                        "prefetch_size!=0 ({})",
                        q.prefetch_size
                    )));
                }
                self.delivery
                    .set_prefetch(q.prefetch_count, q.global, cx.followups);
                self.reply(BasicQosOk {});
                Ok(())
            }
            Method::BasicConsume(c) => self.consume(cx, c),
            Method::BasicCancel(c) => {
                self.delivery.cancel(&c.consumer_tag, cx.followups);
                if !c.nowait {
                    self.reply(BasicCancelOk {
                        consumer_tag: c.consumer_tag,
                    });
                }
                Ok(())
            }
            Method::BasicGet(g) => self.get(cx, g),
            Method::BasicRecover(BasicRecover { requeue })
            | Method::BasicRecoverAsync(BasicRecoverAsync { requeue }) => {
                // As RabbitMQ: redelivering to the original consumer is not supported.
                if !requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                // recover-ok goes out before the redeliveries, as RabbitMQ sends it (clients drop
                // deliveries buffered before it).
                if method_is_sync {
                    self.reply(BasicRecoverOk {});
                }
                self.delivery.recover(cx.followups);
                Ok(())
            }
            Method::ChannelFlow(f) => {
                // As RabbitMQ: a client may not stop deliveries with channel.flow.
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.delivery.set_flow(f.active, cx.followups);
                self.reply(ChannelFlowOk { active: f.active });
                Ok(())
            }
            Method::ChannelFlowOk(_) => Ok(()),
            Method::ExchangeDeclare(d) => {
                let nowait = d.nowait;
                cx.vhost.declare_exchange(ExchangeDeclare {
                    name: d.exchange,
                    kind: d.kind,
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                })?;
                if !nowait {
                    self.reply_when_saved(cx, ExchangeDeclareOk {});
                }
                Ok(())
            }
            Method::ExchangeDelete(d) => {
                cx.vhost.delete_exchange(&d.exchange, d.if_unused)?;
                self.last_exchange = None;
                if !d.nowait {
                    self.reply_when_saved(cx, ExchangeDeleteOk {});
                }
                Ok(())
            }
            Method::ExchangeBind(b) => {
                cx.vhost
                    .bind_exchange(&b.destination, &b.source, b.routing_key, b.arguments)?;
                if !b.nowait {
                    self.reply_when_saved(cx, ExchangeBindOk {});
                }
                Ok(())
            }
            Method::ExchangeUnbind(b) => {
                cx.vhost
                    .unbind_exchange(&b.destination, &b.source, b.routing_key, b.arguments)?;
                if !b.nowait {
                    self.reply_when_saved(cx, ExchangeUnbindOk {});
                }
                Ok(())
            }
            Method::QueueDeclare(d) => {
                let nowait = d.nowait;
                let exclusive = d.exclusive;
                let mut declare = QueueDeclare {
                    name: d.queue,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                };
                cx.vhost.apply_default_queue_type(&mut declare);
                let (q, messages, consumers) = cx.vhost.declare_queue(declare, cx.conn_id)?;
                if exclusive && !cx.exclusive_queues.contains(&q.name) {
                    cx.exclusive_queues.push(q.name.clone());
                }
                self.last_queue = Some(q.name.clone());
                if !nowait {
                    self.reply_when_saved(
                        cx,
                        QueueDeclareOk {
                            queue: q.name.clone(),
                            message_count: messages,
                            consumer_count: consumers,
                        },
                    );
                }
                Ok(())
            }
            Method::QueueBind(b) => {
                let queue = self.queue_name(b.queue)?;
                cx.vhost
                    .bind_queue(&queue, &b.exchange, b.routing_key, b.arguments, cx.conn_id)?;
                if !b.nowait {
                    self.reply_when_saved(cx, QueueBindOk {});
                }
                Ok(())
            }
            Method::QueueUnbind(b) => {
                let queue = self.queue_name(b.queue)?;
                cx.vhost.unbind_queue(
                    &queue,
                    &b.exchange,
                    b.routing_key,
                    b.arguments,
                    cx.conn_id,
                )?;
                self.reply_when_saved(cx, QueueUnbindOk {});
                Ok(())
            }
            Method::QueuePurge(p) => {
                let queue = self.queue_name(p.queue)?;
                let n = cx.vhost.purge_queue(&queue, cx.conn_id)?;
                if !p.nowait {
                    self.reply(QueuePurgeOk { message_count: n });
                }
                Ok(())
            }
            Method::QueueDelete(d) => {
                let queue = self.queue_name(d.queue)?;
                let n = cx
                    .vhost
                    .delete_queue(&queue, d.if_unused, d.if_empty, cx.conn_id)?;
                cx.exclusive_queues.retain(|q| *q != queue);
                if !d.nowait {
                    self.reply_when_saved(cx, QueueDeleteOk { message_count: n });
                }
                Ok(())
            }
            Method::ConfirmSelect(c) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if !self.confirm {
                    self.delivery.counters.confirm_mode_from_now();
                }
                self.confirm = true;
                if !c.nowait {
                    self.reply(ConfirmSelectOk {});
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                if self.confirm {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Vec::new);
                self.delivery
                    .counters
                    .transactional
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.reply(TxSelectOk {});
                Ok(())
            }
            Method::TxCommit(_) => {
                let ops = self
                    .tx
                    .replace(Vec::new())
                    .ok_or_else(|| AmqpError::precondition("channel is not transactional"))?;
                self.committing = Some(Committing {
                    id: next_transaction_id(),
                    queues: Vec::new(),
                    epoch: 0,
                    commits: Vec::new(),
                    failed: false,
                });
                let applied = self.apply_transaction(cx, ops);
                let c = self.committing.take().expect("set above");
                // Each durable queue written to gets the record that ends the transaction:
                // a restart keeps its messages only if that record made it to disk. Also when
                // the commit stopped half-way with an error: what it applied is in the queues.
                let (mut epoch, mut failed) = (c.epoch, c.failed);
                for q in &c.queues {
                    match q.end_transaction(c.id) {
                        Ok(e) => epoch = epoch.max(e),
                        Err(e) => {
                            failed = true;
                            tracing::error!(queue = %q.name, error = %e, "could not store the end of a transaction");
                        }
                    }
                }
                applied?;
                if failed {
                    return Err(AmqpError::new(
                        INTERNAL_ERROR,
                        "tx.commit failed: could not write to the message store",
                    ));
                }
                // commit-ok once the transaction is on disk (at once if nothing needs an fsync).
                if epoch == 0 && c.commits.is_empty() && self.pending_commits.is_empty() {
                    self.reply(TxCommitOk {});
                } else {
                    for commit in &c.commits {
                        commit.wake(cx.commit_wake);
                    }
                    self.pending_commits.push_back((epoch, c.commits));
                }
                Ok(())
            }
            Method::TxRollback(_) => {
                let ops = self
                    .tx
                    .as_mut()
                    .ok_or_else(|| AmqpError::precondition("channel is not transactional"))?;
                ops.clear();
                self.reply(TxRollbackOk {});
                Ok(())
            }
            other => Err(AmqpError::new(
                COMMAND_INVALID,
                format!(
                    "method {} is not valid from a client on a channel",
                    other.name()
                ),
            )),
        }
    }

    fn nack(&mut self, cx: &mut Ctx<'_>, tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        match &mut self.tx {
            Some(ops) => {
                self.delivery.check_tag(tag, multiple)?;
                ops.push(TxOp::Nack {
                    tag,
                    multiple,
                    requeue,
                });
                Ok(())
            }
            None => self.delivery.nack(tag, multiple, requeue, cx.followups),
        }
    }

    fn apply_transaction(&mut self, cx: &mut Ctx<'_>, ops: Vec<TxOp>) -> Result<()> {
        for op in ops {
            match op {
                TxOp::Publish {
                    exchange,
                    routing_key,
                    mandatory,
                    content,
                } => self.publish(cx, exchange, routing_key, mandatory, content)?,
                TxOp::Ack { tag, multiple } => self.delivery.ack(tag, multiple, cx.followups)?,
                TxOp::Nack {
                    tag,
                    multiple,
                    requeue,
                } => self.delivery.nack(tag, multiple, requeue, cx.followups)?,
            }
        }
        Ok(())
    }

    fn publish(
        &mut self,
        cx: &mut Ctx<'_>,
        exchange: ShortStr,
        routing_key: ShortStr,
        mandatory: bool,
        content: Content,
    ) -> Result<()> {
        let x = match &self.last_exchange {
            Some((x, _)) if x.name == exchange && !x.is_deleted() => x.clone(),
            _ => {
                let x = cx.vhost.exchange_for_publish(&exchange)?;
                let xc = self.delivery.exchanges.counters_for(&x);
                self.last_exchange = Some((x.clone(), xc));
                x
            }
        };
        // RabbitMQ's order: the exchange, then the properties.
        check_expiration(&content)?;
        cx.guard.check_user_id(&content.properties)?;
        let properties = match self.rewrite_reply_to(&content.properties)? {
            Some(rewritten) => rewritten,
            None => content.properties,
        };
        let msg = Arc::new(Message::new(
            exchange,
            routing_key,
            properties,
            content.body,
        ));
        self.delivery.counters.count_publish(msg.body.len());
        if let Some((_, xc)) = &self.last_exchange {
            xc.publish_in.add(1);
        }
        if x.delayed {
            if let Some(delay) = warren_broker::delayed::delay_of(&msg) {
                let r = cx.vhost.delayed.hold(&x.name, x.durable, msg, delay);
                if let Err(e) = &r {
                    tracing::error!(exchange = %x.name, error = %e, "could not store a delayed message; it is nacked");
                }
                if self.confirm {
                    self.publish_seq += 1;
                    self.confirms.push_back(PendingConfirm {
                        seq: self.publish_seq,
                        epoch: 0,
                        commits: Vec::new(),
                        nack: r.is_err(),
                    });
                }
                return Ok(());
            }
        }
        let mut queues = std::mem::take(&mut self.route_scratch);
        match &self.last_default_route {
            // The default exchange routes by queue name: a run of publishes to one queue skips
            // the lookup (a deleted queue, even if declared again since, is looked up afresh).
            Some(q) if x.name.is_empty() && q.name == msg.routing_key && !q.is_deleted() => {
                queues.clear();
                queues.push(q.clone());
            }
            _ => {
                cx.vhost.route(&x, &msg, &mut queues);
                if x.name.is_empty() {
                    self.last_default_route = queues.first().cloned();
                }
            }
        }
        if let Some((_, xc)) = &self.last_exchange {
            xc.publish_out.add(queues.len() as u64);
        }
        if queues.is_empty() {
            let c = &self.delivery.counters;
            if mandatory {
                &c.return_unroutable
            } else {
                &c.drop_unroutable
            }
            .add(1);
        }
        if queues.is_empty() && mandatory {
            let frame_max = cx.frame_max;
            let m: Method = BasicReturn {
                reply_code: NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
            }
            .into();
            let n = self.number;
            cx.outbox.write(|b| {
                write_method(b, n, &m);
                write_content(b, n, &msg.properties, &msg.body, frame_max);
            });
        }
        let persistent = !queues.is_empty() && msg.is_persistent();
        let (mut epoch, mut failed) = (0u64, false);
        let mut commits = Vec::new();
        let tx = self.committing.as_ref().map(|c| c.id);
        for q in queues.drain(..) {
            match q.publish_in(msg.clone(), persistent, tx, cx.followups) {
                Ok(p) => {
                    if let Some(commit) = p.commit {
                        match &mut self.committing {
                            Some(c) => c.commits.push(commit),
                            None if self.confirm => {
                                commit.wake(cx.commit_wake);
                                commits.push(commit);
                            }
                            None => {}
                        }
                    }
                    if let Some(e) = p.epoch {
                        epoch = epoch.max(e);
                        if let Some(c) = &mut self.committing {
                            c.epoch = c.epoch.max(e);
                            if !c.queues.iter().any(|t| Arc::ptr_eq(t, &q)) {
                                c.queues.push(q.clone());
                            }
                        }
                    }
                    if p.backlogged && !cx.backlogged.iter().any(|b| Arc::ptr_eq(b, &q)) {
                        cx.backlogged.push(q.clone());
                    }
                }
                Err(PublishError::Rejected) => failed = true,
                Err(PublishError::Store(e)) => {
                    failed = true;
                    if let Some(c) = &mut self.committing {
                        c.failed = true;
                    }
                    tracing::error!(queue = %q.name, error = %e, "could not store a persistent message; it is nacked");
                }
            }
        }
        self.route_scratch = queues;
        if self.confirm {
            self.publish_seq += 1;
            self.confirms.push_back(PendingConfirm {
                seq: self.publish_seq,
                epoch,
                commits,
                nack: failed,
            });
        }
        Ok(())
    }

    /// A publish with `reply_to = amq.rabbitmq.reply-to` names this channel's reply queue: the
    /// properties rewritten so, or `None` to keep them as they are. (It takes the properties by
    /// reference: moving the whole content through here and back cost S1 a store-forwarding
    /// stall per publish.)
    fn rewrite_reply_to(&self, properties: &bytes::Bytes) -> Result<Option<bytes::Bytes>> {
        use warren_protocol::properties::{flag, has};
        if !has(properties, flag::REPLY_TO) {
            return Ok(None);
        }
        let mut props = warren_protocol::BasicProperties::decode(properties.clone())
            .map_err(|e| AmqpError::new(SYNTAX_ERROR, format!("malformed content header: {e}")))?;
        if props.reply_to.as_deref() != Some(DIRECT_REPLY_TO) {
            return Ok(None);
        }
        let q = self
            .reply_queue
            .clone()
            .ok_or_else(|| AmqpError::precondition("fast reply consumer does not exist"))?;
        props.reply_to = Some(q);
        Ok(Some(props.to_bytes()))
    }

    fn consume(&mut self, cx: &mut Ctx<'_>, c: BasicConsume) -> Result<()> {
        // RabbitMQ refuses a reused consumer tag before it looks the queue up.
        if !c.consumer_tag.is_empty() && self.delivery.has_consumer(&c.consumer_tag) {
            return Err(warren_broker::delivery::not_allowed_tag(&c.consumer_tag));
        }
        let queue_name = self.queue_name(c.queue)?;
        let q = if queue_name == DIRECT_REPLY_TO {
            // Direct reply-to: a hidden queue for this channel's replies.
            if !c.no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            if self.reply_queue.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            let q = cx.vhost.declare_reply_queue(cx.conn_id);
            cx.exclusive_queues.push(q.name.clone());
            self.reply_queue = Some(q.name.clone());
            q
        } else {
            cx.vhost.reachable_queue(&queue_name, cx.conn_id)?
        };
        let tag: ShortStr = if c.consumer_tag.is_empty() {
            format!(
                "amq.ctag-{}",
                &warren_broker::vhost::generate_name()["amq.gen-".len()..]
            )
            .into()
        } else {
            c.consumer_tag
        };
        let (nowait, n, outbox) = (c.nowait, self.number, cx.outbox.clone());
        let reply_tag = tag.clone();
        let on_added = move || {
            if !nowait {
                outbox.send(
                    n,
                    BasicConsumeOk {
                        consumer_tag: reply_tag,
                    },
                );
            }
        };
        self.delivery.consume(
            &q,
            tag,
            c.no_ack,
            c.exclusive,
            &c.arguments,
            on_added,
            cx.followups,
        )
    }

    fn get(&mut self, cx: &mut Ctx<'_>, g: BasicGet) -> Result<()> {
        let queue_name = self.queue_name(g.queue)?;
        let q = cx.vhost.reachable_queue(&queue_name, cx.conn_id)?;
        if q.stream().is_some() {
            return Err(warren_broker::stream::get_refused(&q));
        }
        match self.delivery.get(&q, !g.no_ack, cx.followups) {
            None => self.reply(BasicGetEmpty::default()),
            Some((qm, remaining, tag)) => {
                let (msg, redelivered) = (qm.msg, qm.redelivered);
                let m: Method = BasicGetOk {
                    delivery_tag: tag,
                    redelivered,
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                    message_count: remaining,
                }
                .into();
                let (n, frame_max) = (self.number, cx.frame_max);
                cx.outbox.write(|b| {
                    write_method(b, n, &m);
                    write_content(b, n, &msg.properties, &msg.body, frame_max);
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use warren_protocol::frame::parse_frame;

    /// The methods the channel sent since the last call.
    fn sent(outbox: &Outbox) -> Vec<Method> {
        let mut buf = BytesMut::new();
        outbox.take(&mut buf);
        let mut methods = Vec::new();
        while let Some(f) = parse_frame(&mut buf, 0).unwrap() {
            methods.push(Method::decode(f.payload).unwrap());
        }
        methods
    }

    fn ack(tag: u64, multiple: bool) -> Method {
        BasicAck {
            delivery_tag: tag,
            multiple,
        }
        .into()
    }

    fn nack(tag: u64) -> Method {
        BasicNack {
            delivery_tag: tag,
            multiple: false,
            requeue: false,
        }
        .into()
    }

    #[test]
    fn confirms_wait_for_replicated_commits_in_publish_order() {
        let outbox = Arc::new(Outbox::new(131072));
        let mut ch = Channel::new(1, 1, outbox.clone(), None);
        ch.confirm = true;
        let commits = [Commit::new(), Commit::new(), Commit::new()];
        // 1: a replicated queue only; 2: a classic one (epoch 3) and a replicated one; 3: a
        // replicated queue that will refuse it.
        ch.confirms.extend([
            PendingConfirm {
                seq: 1,
                epoch: 0,
                commits: vec![commits[0].clone()],
                nack: false,
            },
            PendingConfirm {
                seq: 2,
                epoch: 3,
                commits: vec![commits[1].clone()],
                nack: false,
            },
            PendingConfirm {
                seq: 3,
                epoch: 0,
                commits: vec![commits[2].clone()],
                nack: false,
            },
        ]);
        let synced = |e| SyncState {
            synced_epoch: e,
            failed_epoch: 0,
            ..Default::default()
        };
        // Committed out of order: nothing goes before 1 is.
        commits[1].complete(true);
        commits[2].complete(false);
        ch.flush_confirms(synced(3));
        assert_eq!(sent(&outbox), vec![], "publish 1 is not committed yet");
        commits[0].complete(true);
        ch.flush_confirms(synced(2));
        assert_eq!(
            sent(&outbox),
            vec![ack(1, false)],
            "2 waits for its epoch as well"
        );
        ch.flush_confirms(synced(3));
        assert_eq!(sent(&outbox), vec![ack(2, false), nack(3)]);
    }

    /// A declaration's answer waits for the group commit that saves it, and answers after it
    /// wait behind it; a failed save closes the channel naming the request.
    #[test]
    fn definition_answers_wait_for_their_save_in_order() {
        let outbox = Arc::new(Outbox::new(131072));
        let mut ch = Channel::new(1, 1, outbox.clone(), None);
        let declare_ok: Method = QueueDeclareOk {
            queue: "q".into(),
            message_count: 0,
            consumer_count: 0,
        }
        .into();
        ch.pending_replies.push_back((5, declare_ok.clone()));
        ch.reply(BasicQosOk {});
        let synced = |e| SyncState {
            synced_epoch: e,
            ..Default::default()
        };
        assert!(ch.flush_confirms(synced(4)).is_none());
        assert_eq!(sent(&outbox), vec![], "epoch 5 is not on disk yet");
        assert!(
            ch.has_pending_confirms(),
            "the connection watches the group commit"
        );
        assert!(ch.flush_confirms(synced(5)).is_none());
        assert_eq!(sent(&outbox), vec![declare_ok, BasicQosOk {}.into()]);
        ch.reply(BasicQosOk {});
        assert_eq!(
            sent(&outbox),
            vec![BasicQosOk {}.into()],
            "nothing waits: at once"
        );

        ch.pending_replies
            .push_back((7, QueueDeleteOk { message_count: 0 }.into()));
        let (e, class_id, method_id) = ch
            .flush_confirms(SyncState {
                synced_epoch: 8,
                definitions_failed_epoch: 7,
                ..Default::default()
            })
            .expect("a failed save is an error");
        assert_eq!((e.code, class_id, method_id), (INTERNAL_ERROR, 50, 40));
        assert_eq!(sent(&outbox), vec![]);
    }

    #[test]
    fn confirms_wait_for_their_epoch_and_a_failure_seen_late_still_nacks() {
        let outbox = Arc::new(Outbox::new(131072));
        let mut ch = Channel::new(1, 1, outbox.clone(), None);
        ch.confirm = true;
        // Publishes 1-4 wait for epochs 5, 5, 6 and 8; 5 needs no fsync (unroutable).
        ch.confirms.extend(
            [(1, 5), (2, 5), (3, 6), (4, 8), (5, 0)].map(|(seq, epoch)| PendingConfirm {
                seq,
                epoch,
                commits: Vec::new(),
                nack: false,
            }),
        );
        ch.flush_confirms(SyncState {
            synced_epoch: 4,
            failed_epoch: 0,
            ..Default::default()
        });
        assert_eq!(sent(&outbox), vec![], "nothing synced yet");
        // Epoch 5 failed, then 6 failed as well before the connection looked again: the
        // state it sees names only 6.
        ch.flush_confirms(SyncState {
            synced_epoch: 6,
            failed_epoch: 6,
            ..Default::default()
        });
        assert_eq!(sent(&outbox), vec![nack(1), nack(2), nack(3)]);
        ch.flush_confirms(SyncState {
            synced_epoch: 8,
            failed_epoch: 6,
            ..Default::default()
        });
        assert_eq!(
            sent(&outbox),
            vec![BasicAck {
                delivery_tag: 5,
                multiple: true,
            }
            .into()],
            "epoch 8 went through (and 5 is behind it)"
        );
    }
}
