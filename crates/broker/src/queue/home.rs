//! Classic queues whose home is this node, served to the other nodes of a cluster
//! (docs/cluster-plan.md, step 6). Another node reaches such a queue through a stand-in whose
//! [`Replica`](super::replica::Replica) sends the queue's commands here ([`HomeService::apply`])
//! instead of to a Raft group: a publish is enqueued here and answered once it is on disk, a
//! basic.get and the acks of what it took are done here, and a consumer there is a consumer
//! here on a proxy channel of its own (one per owner), whose deliveries go back to its node
//! ([`HomeLink`]) and whose acks, rejects and cancel come back as commands.
//!
//! Checkout ids across the link are the proxy channel's delivery tags.

use super::command::{Applied, LoggedMessage, QueueCommand};
use super::engine::{CheckoutId, Owner};
use super::{Followups, PublishError, Queue};
use crate::delivery::{DeliveryChannel, DeliveryWriter};
use crate::message::Message;
use crate::Broker;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use warren_protocol::{FieldTable, FieldValue, ShortStr};

/// A delivery from a queue homed here to a consumer on another node.
#[derive(Debug, Clone)]
pub struct HomeDelivery {
    pub owner: Owner,
    /// The proxy channel's delivery tag: what the consumer's node names in its acks.
    pub checkout: CheckoutId,
    pub msg: Arc<Message>,
    pub redelivered: bool,
}

/// Where deliveries to other nodes' consumers go (the cluster's links).
pub trait HomeLink: Send + Sync {
    /// Hands `d` (of queue `queue` in `vhost`) to the node of its owner.
    fn deliver(&self, vhost: &str, queue: &str, d: HomeDelivery);
}

/// One owner of another node (a consumer, or a channel's basic.get) as this node serves it.
struct Proxy {
    channel: Arc<DeliveryChannel>,
    queue: Arc<Queue>,
    /// Its consumer's tag, if it consumes.
    tag: Option<ShortStr>,
}

/// Serves the other nodes' commands for the classic queues homed here.
pub struct HomeService {
    /// This run of the service (its start, in microseconds since the epoch): a node whose
    /// consumers were served by an earlier run knows they are gone here.
    pub incarnation: u64,
    broker: Weak<Broker>,
    link: Arc<dyn HomeLink>,
    proxies: Mutex<HashMap<Owner, Proxy>>,
}

struct ProxyWriter {
    vhost: String,
    queue: String,
    owner: Owner,
    link: Arc<dyn HomeLink>,
}

impl DeliveryWriter for ProxyWriter {
    fn deliver(
        &self,
        _channel: u16,
        _tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        msg: &Message,
    ) {
        self.link.deliver(
            &self.vhost,
            &self.queue,
            HomeDelivery {
                owner: self.owner,
                checkout: delivery_tag,
                msg: Arc::new(msg.copy()),
                redelivered,
            },
        );
    }

    fn cancel(&self, _channel: u16, _consumer_tag: &str) {
        // The queue was deleted: its deletion reaches every node through the metadata log,
        // and the stand-ins cancel their consumers there.
    }

    fn is_saturated(&self) -> bool {
        false
    }
}

impl HomeService {
    pub fn new(broker: &Arc<Broker>, link: Arc<dyn HomeLink>) -> Arc<HomeService> {
        Arc::new(HomeService {
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
            broker: Arc::downgrade(broker),
            link,
            proxies: Mutex::default(),
        })
    }

    fn queue(&self, vhost: &str, name: &str) -> Result<Arc<Queue>, String> {
        let broker = self.broker.upgrade().ok_or("the broker is stopping")?;
        let v = broker
            .vhost(vhost)
            .ok_or_else(|| format!("no vhost '{vhost}' on this node"))?;
        v.queue(name)
            .filter(|q| !q.is_deleted() && !q.is_replicated())
            .ok_or_else(|| format!("no queue '{name}' in vhost '{vhost}' on this node"))
    }

    fn follow_up(&self, q: &Queue, fu: Followups) {
        if fu.is_empty() {
            return;
        }
        if let Some(v) = self.broker.upgrade().and_then(|b| b.vhost(&q.vhost_name)) {
            v.follow_up(fu);
        }
    }

    /// The proxy channel of `owner` on `q` (made on first use).
    fn proxy(&self, q: &Arc<Queue>, owner: Owner) -> Arc<DeliveryChannel> {
        let mut proxies = self.proxies.lock();
        let p = proxies.entry(owner).or_insert_with(|| Proxy {
            channel: self.proxy_channel(q, owner),
            queue: q.clone(),
            tag: None,
        });
        p.channel.clone()
    }

    /// A channel whose deliveries of `q` go to `owner`'s node.
    fn proxy_channel(&self, q: &Queue, owner: Owner) -> Arc<DeliveryChannel> {
        let writer = ProxyWriter {
            vhost: q.vhost_name.clone(),
            queue: q.name.to_string(),
            owner,
            link: self.link.clone(),
        };
        DeliveryChannel::new(0, u64::MAX, Arc::new(writer), None)
    }

    fn existing(&self, owner: Owner) -> Option<Arc<DeliveryChannel>> {
        self.proxies.lock().get(&owner).map(|p| p.channel.clone())
    }

    /// Applies commands another node sent for queue `name` of `vhost`, in order; each
    /// answer as a replicated queue's engine would give it. A publish is answered once it is
    /// on disk (a persistent message to a durable queue).
    pub async fn apply(
        self: &Arc<Self>,
        vhost: &str,
        name: &str,
        cmds: Vec<QueueCommand>,
    ) -> Result<Vec<Applied>, String> {
        let q = self.queue(vhost, name)?;
        let mut answers = Vec::with_capacity(cmds.len());
        let mut epoch = None;
        let mut fu = Followups::new();
        for cmd in cmds {
            answers.push(self.apply_one(&q, cmd, &mut epoch, &mut fu));
        }
        self.follow_up(&q, fu);
        if let Some(e) = epoch {
            self.synced(e).await?;
        }
        Ok(answers)
    }

    /// Waits until the group commit has made epoch `e` durable.
    async fn synced(&self, e: u64) -> Result<(), String> {
        let broker = self.broker.upgrade().ok_or("the broker is stopping")?;
        let Some(p) = broker.persistence() else {
            return Ok(());
        };
        let mut rx = p.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if s.synced_epoch >= e {
                return if e > s.failed_epoch {
                    Ok(())
                } else {
                    Err("the message store could not write the message".into())
                };
            }
            rx.changed()
                .await
                .map_err(|_| "the broker is stopping".to_string())?;
        }
    }

    fn apply_one(
        &self,
        q: &Arc<Queue>,
        cmd: QueueCommand,
        epoch: &mut Option<u64>,
        fu: &mut Followups,
    ) -> Applied {
        match cmd {
            QueueCommand::Enqueue {
                msg: LoggedMessage(msg),
                ..
            } => {
                let persistent = msg.is_persistent();
                match q.publish(msg, persistent, fu) {
                    Ok(p) => {
                        if let Some(e) = p.epoch {
                            *epoch = Some(epoch.map_or(e, |x: u64| x.max(e)));
                        }
                        Applied::Done
                    }
                    Err(PublishError::Rejected) => Applied::Rejected,
                    Err(PublishError::Store(e)) => {
                        tracing::warn!(queue = %q.name, error = %e, "a publish from another node could not be stored");
                        Applied::Rejected
                    }
                }
            }
            QueueCommand::AddConsumer {
                owner,
                tag,
                prefetch,
                no_ack,
                exclusive,
                priority,
                ..
            } => {
                let ch = self.proxy(q, owner);
                ch.set_prefetch(prefetch.min(u16::MAX as u32) as u16, false, fu);
                let mut args = FieldTable::default();
                if priority != 0 {
                    args.insert("x-priority", FieldValue::I64(priority));
                }
                let tag: ShortStr = tag.as_str().into();
                match ch.consume(q, tag.clone(), no_ack, exclusive, &args, || {}, fu) {
                    Ok(()) => {
                        if let Some(p) = self.proxies.lock().get_mut(&owner) {
                            p.tag = Some(tag);
                        }
                        Applied::Done
                    }
                    Err(_) => Applied::ConsumeRefused,
                }
            }
            QueueCommand::RemoveConsumer { owner, .. } => {
                let tag = self
                    .proxies
                    .lock()
                    .get_mut(&owner)
                    .and_then(|p| p.tag.take());
                if let (Some(ch), Some(tag)) = (self.existing(owner), tag) {
                    ch.cancel(&tag, fu);
                }
                Applied::Removed {
                    last: q.consumer_count() == 0,
                }
            }
            QueueCommand::ReturnAll { owner, .. } => {
                if let Some(p) = self.proxies.lock().remove(&owner) {
                    p.channel.close(fu);
                }
                Applied::Done
            }
            QueueCommand::Settle { checkouts, .. } => {
                let mut n = 0;
                let mut acked: Vec<Arc<DeliveryChannel>> = Vec::new();
                for (owner, tag) in checkouts {
                    if let Some(ch) = self.existing(owner) {
                        n += ch.ack_without_resume(tag, false).is_ok() as u32;
                        if !acked.iter().any(|c| Arc::ptr_eq(c, &ch)) {
                            acked.push(ch);
                        }
                    }
                }
                // Credit back once per channel, not once per ack.
                for ch in acked {
                    ch.resume(fu);
                }
                Applied::Settled(n)
            }
            QueueCommand::Return { checkouts, .. } | QueueCommand::Unsent { checkouts, .. } => {
                self.nack(checkouts, true, fu)
            }
            QueueCommand::Discard { checkouts, .. } => self.nack(checkouts, false, fu),
            QueueCommand::Get { owner, .. } => {
                // No owner: no ack expected; a throwaway channel serves it.
                let ch = match owner {
                    Some(o) => self.proxy(q, o),
                    None => self.proxy_channel(q, 0),
                };
                match ch.get(q, owner.is_some(), fu) {
                    Some((qm, remaining, tag)) => Applied::Got {
                        seq: Some(qm.seq),
                        checkout: owner.map(|_| tag),
                        remaining,
                        msg: Some(LoggedMessage(qm.msg)),
                        redelivered: qm.redelivered,
                    },
                    None => Applied::Got {
                        seq: None,
                        checkout: None,
                        remaining: 0,
                        msg: None,
                        redelivered: false,
                    },
                }
            }
            QueueCommand::Purge => Applied::Purged(q.purge()),
            // Ticks, options and the rest are the home node's own business.
            _ => Applied::Done,
        }
    }

    fn nack(
        &self,
        checkouts: Vec<(Owner, CheckoutId)>,
        requeue: bool,
        fu: &mut Followups,
    ) -> Applied {
        let mut n = 0;
        for (owner, tag) in checkouts {
            if let Some(ch) = self.existing(owner) {
                n += ch.nack(tag, false, requeue, fu).is_ok() as u32;
            }
        }
        Applied::Settled(n)
    }

    /// The owners served here whose node `gone` says is down or forgotten: their channels
    /// close, and what they held goes back to the queues (as a channel that closes).
    pub fn close_owners(&self, gone: impl Fn(Owner) -> bool) {
        let closing: Vec<Proxy> = {
            let mut proxies = self.proxies.lock();
            let owners: Vec<Owner> = proxies.keys().copied().filter(|o| gone(*o)).collect();
            owners
                .into_iter()
                .filter_map(|o| proxies.remove(&o))
                .collect()
        };
        for p in closing {
            tracing::info!(queue = %p.queue.name, vhost = %p.queue.vhost_name, "a consumer's node is down: what it held goes back to the queue");
            let mut fu = Followups::new();
            p.channel.close(&mut fu);
            self.follow_up(&p.queue, fu);
        }
    }

    /// Queue `name`'s counts, for the other nodes' stand-ins.
    pub fn stats(&self, vhost: &str, name: &str) -> Option<super::replica::RemoteStats> {
        let q = self.queue(vhost, name).ok()?;
        Some(super::replica::RemoteStats {
            stats: q.stats(),
            len: q.message_count() as u64,
            backlogged: q.over_flow_limit(),
        })
    }
}
