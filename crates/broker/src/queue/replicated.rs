//! What [`Queue`]'s commands do when the queue is replicated (see [`super::replica`]): each
//! becomes a [`QueueCommand`] for the queue's Raft group, submitted in order; the engine's
//! deliveries come back as outputs and are handed to the owners' channels here. Only
//! declare, consume, basic.get and purge wait for their answer; publishes are confirmed when
//! their commit completes the [`Commit`] the channel holds; acks and requeues do not wait.

use super::replica::{call, Commit, FollowupSink, OutputSink, Replica, ReplicaHost, ReplicaOutput};
use super::{
    Applied, CheckoutId, CheckoutKey, ConsumeRefused, DeleteReason, Followup, Followups, Got,
    LoggedMessage, Owner, Published, Queue, QueueCommand, QueueConsumer, QueueEngine, QueueOptions,
    QueuedMessage,
};
use crate::clock::now_ms;
use crate::delivery::{Deliver, DeliveryChannel};
use crate::message::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use warren_protocol::ShortStr;

/// A consumer of a replicated queue.
pub(super) struct ReplicaConsumer {
    c: QueueConsumer,
    /// Set once basic.consume-ok is written; deliveries decided before that wait in `early`.
    active: bool,
    early: Vec<(CheckoutId, QueuedMessage)>,
    /// Deliveries the engine decided that the client's prefetch has no room for yet: sent,
    /// in order, as the client acks (see [`ENGINE_CREDIT_FACTOR`]).
    held: VecDeque<(CheckoutId, QueuedMessage)>,
}

/// A consumer with a prefetch is given this many times as much credit in a replicated
/// queue's engine, and its node keeps what the client has no room for yet (`held`).
///
/// The engine gets credit back only when an ack is committed (replicated and on disk on a
/// majority, a few milliseconds). With the engine's credit equal to the prefetch, a consumer
/// with prefetch 100 waited for that commit after every 100 messages: one queue delivered
/// ~23,000 msg/s in `bench/cluster3.sh`, and the publisher, held by flow control, confirmed
/// as many (34,000 with prefetch 300). The client still never has more than its prefetch
/// unacked: its node sends a held delivery as soon as an ack leaves room.
pub(super) const ENGINE_CREDIT_FACTOR: u32 = 3;

/// How many times a consumer removed by the leader tries to subscribe again (each attempt
/// looks for a leader for up to the cluster's write timeout).
const RESUBSCRIBE_ATTEMPTS: u32 = 30;

/// How long before the removal of a consumer this node does not serve (see
/// `Queue::hand_out`) is asked again.
const UNSERVED_RETRY_MS: u64 = 5_000;

/// Reads the replicated engine.
pub(super) fn read<T>(r: &Arc<dyn Replica>, f: impl FnOnce(&QueueEngine<Owner>) -> T) -> T {
    let mut f = Some(f);
    let mut out = None;
    r.read(&mut |e| {
        if let Some(f) = f.take() {
            out = Some(f(e));
        }
    });
    out.expect("Replica::read calls back once")
}

/// Publishers to a replicated queue wait while its group is far behind, or while its
/// consumers are (as for a classic queue; the vhost's poll lets them go once it is not).
pub(super) fn over_flow_limit(r: &Arc<dyn Replica>) -> bool {
    r.queued() > super::replica::QUEUED_HIGH
        || r.remote_stats()
            .map_or_else(|| read(r, QueueEngine::backlogged), |s| s.backlogged)
}

/// Ready messages (as a member last reported them, on a node that is not one).
pub(super) fn message_count(r: &Arc<dyn Replica>) -> u32 {
    r.remote_stats()
        .map_or_else(|| read(r, |e| e.len() as u32), |s| s.len as u32)
}

/// The command that subscribes consumer `c`.
fn add_consumer(owner: Owner, c: &QueueConsumer) -> QueueCommand {
    QueueCommand::AddConsumer {
        owner,
        tag: c.tag.to_string(),
        prefetch: c.prefetch.saturating_mul(ENGINE_CREDIT_FACTOR),
        no_ack: c.no_ack,
        exclusive: c.exclusive,
        priority: c.priority,
        now: now_ms(),
    }
}

/// Acks, rejects and requeues of a replicated queue: one command naming the checkouts, not
/// waited for.
pub(super) fn submit_checkouts(
    r: &Arc<dyn Replica>,
    checkouts: impl IntoIterator<Item = CheckoutKey>,
    command: fn(Vec<CheckoutKey>, u64) -> QueueCommand,
) {
    r.submit(command(checkouts.into_iter().collect(), now_ms()), None);
}

impl Queue {
    /// Makes this quorum queue a replicated one: opens (or, after a restart, reopens) its
    /// group on `host`. Consumers and checkouts from before a restart belong to channels that
    /// are gone: the consumers are removed and what they held comes back, redelivered.
    pub(crate) fn attach_replica(
        self: &Arc<Self>,
        host: &dyn ReplicaHost,
        followups: FollowupSink,
    ) -> Result<(), String> {
        let _ = self.followups_sink.set(followups);
        let opts = QueueOptions::from_arguments(&self.arguments, None);
        let r = host.open(&self.vhost_name, &self.name, opts, self.output_sink())?;
        let now = now_ms();
        let mine: Vec<Owner> = read(&r, QueueEngine::owner_ids)
            .into_iter()
            .filter(|o| r.owns(*o))
            .collect();
        for owner in mine {
            r.remove_owner(owner, now);
        }
        let _ = self.replica.set(r);
        Ok(())
    }

    /// Makes this queue the stand-in of classic queue `name` whose home is node `home`
    /// (see [`super::home`]): its commands go there, its consumers' deliveries come from
    /// there.
    pub(crate) fn attach_remote(
        self: &Arc<Self>,
        host: &dyn ReplicaHost,
        home: &str,
        followups: FollowupSink,
    ) -> Result<(), String> {
        let _ = self.followups_sink.set(followups);
        let opts = QueueOptions::from_arguments(&self.arguments, None);
        let r = host.open_remote(&self.vhost_name, &self.name, home, opts, self.output_sink())?;
        self.set_home(home.to_string());
        let _ = self.replica.set(r);
        Ok(())
    }

    /// Where the queue's replica sends what it applied ([`Queue::on_output`]).
    fn output_sink(self: &Arc<Self>) -> OutputSink {
        let weak = Arc::downgrade(self);
        Arc::new(move |out| {
            if let Some(q) = weak.upgrade() {
                q.on_output(out);
            }
        })
    }

    /// The group applied commands: deliveries go to their consumers' channels, dead letters
    /// and the timer to the vhost.
    fn on_output(self: &Arc<Self>, out: ReplicaOutput) {
        if out.restored {
            self.restart_consumers();
        }
        if out.home_lost {
            self.cancel_consumers_here();
        }
        if !out.deliveries.is_empty() {
            self.hand_out(out.deliveries);
        }
        if !out.removed_consumers.is_empty() {
            self.subscribe_again(&out.removed_consumers);
        }
        // Publishers held by flow control go on once the backlog is below the mark, not at
        // wait_for_flow's 100 ms safety net: those waits were the slowest 5 % of a
        // clustered queue's confirms (140 ms against a median of 16 ms in bench/cluster3.sh).
        if self.flow_waiting.load(std::sync::atomic::Ordering::Acquire) && !self.over_flow_limit() {
            self.wake_flow_waiters();
        }
        let mut fu = Followups::new();
        if out.needs_ticks {
            self.timer_followup(&mut fu);
        }
        // Every member applies the same dead letters; the leader's node publishes them.
        if self.replica.get().is_some_and(|r| r.is_leader()) {
            for d in out.dead_letters {
                fu.push(Followup::DeadLetter(self.clone(), d));
            }
        }
        self.follow_up_later(fu);
    }

    /// This node's member was restored from the leader's snapshot: the entries it skipped may
    /// have checked messages out to its consumers (never handed out: they would stay
    /// unacknowledged, and undelivered, for as long as the consumer lives) or removed them
    /// (they would wait for ever). Each consumer is removed, what it held comes back
    /// (redelivered: its channel's acks of what it did get then change nothing), and the
    /// removal subscribes it again (`subscribe_again`).
    fn restart_consumers(self: &Arc<Self>) {
        let Some(r) = self.replica.get() else { return };
        self.replica_restores
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // What they hold unsent is returned with the rest.
        let owners: Vec<Owner> = self
            .replica_consumers
            .lock()
            .iter_mut()
            .filter(|(_, rc)| rc.active)
            .map(|(o, rc)| {
                rc.held.clear();
                *o
            })
            .collect();
        if !owners.is_empty() {
            tracing::info!(queue = %self.name, vhost = %self.vhost_name, consumers = owners.len(), "this node's copy of the queue was restored from the leader's snapshot: its consumers subscribe again");
        }
        let now = now_ms();
        for owner in owners {
            r.remove_owner(owner, now);
        }
    }

    /// Consumers removed from the group that this node still serves (a cancel made here
    /// forgets the consumer before it is removed): another node's leader took this node for
    /// down and returned what they held. They subscribe again, as RabbitMQ reinstates a
    /// quorum queue's consumer that was suspected down; one that cannot (an exclusive
    /// consumer took its place) is cancelled.
    fn subscribe_again(self: &Arc<Self>, removed: &[Owner]) {
        {
            // The leader returned what they held, the deliveries held here too.
            let mut consumers = self.replica_consumers.lock();
            for owner in removed {
                if let Some(rc) = consumers.get_mut(owner) {
                    rc.held.clear();
                }
            }
        }
        for &owner in removed {
            self.resubscribe(owner, RESUBSCRIBE_ATTEMPTS);
        }
    }

    /// Subscribes `owner` again if this node still serves it (see `subscribe_again`). A
    /// subscription that gets no answer (no leader for a while) is tried again, up to
    /// `attempts` times in all; a consumer that cannot be subscribed again is cancelled, so
    /// that its client knows.
    fn resubscribe(self: &Arc<Self>, owner: Owner, attempts: u32) {
        let Some(r) = self.replica.get() else { return };
        let cmd = {
            let consumers = self.replica_consumers.lock();
            match consumers.get(&owner).filter(|rc| rc.active) {
                Some(rc) => add_consumer(owner, &rc.c),
                None => return,
            }
        };
        if attempts == RESUBSCRIBE_ATTEMPTS {
            tracing::info!(queue = %self.name, vhost = %self.vhost_name, owner, "a consumer removed by the queue's leader subscribes again");
        }
        let q = Arc::downgrade(self);
        r.submit(
            cmd,
            Some(Box::new(move |a| {
                let Some(q) = q.upgrade() else { return };
                let cancel = match a {
                    Ok(Applied::ConsumeRefused) => true,
                    Err(e) if attempts > 1 && !q.is_deleted() => {
                        tracing::debug!(queue = %q.name, owner, error = %e, "subscribing again got no answer; trying again");
                        q.resubscribe(owner, attempts - 1);
                        false
                    }
                    Err(e) => {
                        tracing::warn!(queue = %q.name, vhost = %q.vhost_name, owner, error = %e, "a consumer could not subscribe again: it is cancelled");
                        // (Its subscription may still be committed.)
                        if let Some(r) = q.replica.get() {
                            r.remove_owner(owner, now_ms());
                        }
                        true
                    }
                    Ok(_) => false,
                };
                if cancel {
                    if let Some(rc) = q.replica_consumers.lock().remove(&owner) {
                        rc.c.handle.consumer_cancelled_by_server(rc.c.consumer_id);
                    }
                }
            })),
        );
    }

    fn follow_up_later(&self, fu: Followups) {
        if fu.is_empty() {
            return;
        }
        if let Some(sink) = self.followups_sink.get() {
            sink(fu);
        }
    }

    /// Hands deliveries to the consumers' channels. One whose consumer is gone, or whose
    /// channel closed meanwhile, goes back to the queue.
    fn hand_out(self: &Arc<Self>, deliveries: Vec<(Owner, CheckoutId, QueuedMessage)>) {
        let mut refused = Vec::new();
        let (mut stale, mut unserved): (Vec<Owner>, Vec<Owner>) = (Vec::new(), Vec::new());
        let Some(r) = self.replica.get() else {
            return;
        };
        {
            let mut consumers = self.replica_consumers.lock();
            for (owner, checkout, qm) in deliveries {
                if !r.owns(owner) {
                    // Another node's consumer: that node hands it out.
                    continue;
                }
                match consumers.get_mut(&owner) {
                    Some(rc) if rc.active => {
                        self.deliver_or_hold(owner, rc, checkout, qm, &mut refused)
                    }
                    Some(rc) => rc.early.push((checkout, qm)),
                    // A consumer of this node's earlier run (its entries reached the log
                    // after the restart, or the log is replayed): returning each delivery
                    // would hand it straight back to that consumer, again and again, until
                    // the delivery limit dropped the message. The consumer goes, and what it
                    // holds comes back.
                    None if r.is_stale(owner) => {
                        if !stale.contains(&owner) {
                            stale.push(owner);
                        }
                    }
                    // Not (or no longer) a consumer here: cancelled (its removal follows in
                    // the log), or its subscription's answer was lost. The delivery comes
                    // back (a no-ack delivery's checkout does not exist: returning it changes
                    // nothing), and the consumer is removed, in case no removal follows.
                    None => {
                        refused.push((owner, checkout));
                        if !unserved.contains(&owner) {
                            unserved.push(owner);
                        }
                    }
                }
            }
        }
        self.return_refused(refused);
        r.remove_stale(&stale);
        self.remove_unserved(r, unserved);
    }

    /// Removes consumers the engine handed messages to and this node does not serve, each at
    /// most once in [`UNSERVED_RETRY_MS`]. What such a consumer holds stays its own: a live
    /// channel may still ack it (a channel that closes returns it).
    fn remove_unserved(&self, r: &Arc<dyn Replica>, owners: Vec<Owner>) {
        if owners.is_empty() {
            return;
        }
        let now = now_ms();
        let mut asked = self.unserved_asked.lock();
        asked.retain(|_, at| now.saturating_sub(*at) < UNSERVED_RETRY_MS);
        for owner in owners {
            if asked.insert(owner, now).is_none() {
                tracing::debug!(queue = %self.name, owner, "messages for a consumer this node does not serve: it is removed");
                r.submit(QueueCommand::RemoveConsumer { owner, now }, None);
            }
        }
    }

    fn deliver_decided(
        self: &Arc<Self>,
        c: &QueueConsumer,
        qm: &QueuedMessage,
        id: CheckoutId,
    ) -> bool {
        c.handle.deliver(Deliver {
            queue: self,
            consumer_id: c.consumer_id,
            tag: &c.tag,
            no_ack: c.no_ack,
            qm,
            checkout: id,
            decided: true,
        })
    }

    /// Sends a decided delivery to its consumer if the client's prefetch has room and nothing
    /// is held before it; holds it otherwise.
    fn deliver_or_hold(
        self: &Arc<Self>,
        owner: Owner,
        rc: &mut ReplicaConsumer,
        checkout: CheckoutId,
        qm: QueuedMessage,
        refused: &mut Vec<(Owner, CheckoutId)>,
    ) {
        if !rc.held.is_empty() || !rc.c.handle.has_credit(rc.c.consumer_id) {
            rc.held.push_back((checkout, qm));
        } else if !self.deliver_decided(&rc.c, &qm, checkout) {
            refused.push((owner, checkout));
        }
    }

    /// Sends held deliveries whose clients have room now (after their acks, nacks or
    /// rejects). A consumer whose channel closed keeps them until it is removed.
    pub(super) fn release_held(self: &Arc<Self>) {
        let mut consumers = self.replica_consumers.lock();
        for rc in consumers.values_mut() {
            while !rc.held.is_empty() && rc.c.handle.has_credit(rc.c.consumer_id) {
                let (checkout, qm) = rc.held.pop_front().expect("not empty");
                // Refused only by a channel that closed since: its removal returns it.
                if !self.deliver_decided(&rc.c, &qm, checkout) {
                    rc.held.push_front((checkout, qm));
                    break;
                }
            }
        }
    }

    fn return_refused(&self, refused: Vec<(Owner, CheckoutId)>) {
        if let (false, Some(r)) = (refused.is_empty(), self.replica.get()) {
            submit_checkouts(r, refused, |checkouts, now| QueueCommand::Return {
                checkouts,
                now,
            });
        }
    }

    pub(super) fn publish_replicated(&self, r: &Arc<dyn Replica>, msg: Arc<Message>) -> Published {
        let commit = Commit::new();
        let done = commit.clone();
        r.submit(
            QueueCommand::Enqueue {
                msg: LoggedMessage(msg),
                now: now_ms(),
                from: None,
            },
            Some(Box::new(move |a| {
                done.complete(matches!(a, Ok(Applied::Done | Applied::Duplicate)))
            })),
        );
        Published {
            epoch: None,
            commit: Some(commit),
            backlogged: over_flow_limit(r),
        }
    }

    pub(super) fn get_replicated(&self, r: &Arc<dyn Replica>, owner: Option<Owner>) -> Option<Got> {
        match call(
            &**r,
            QueueCommand::Get {
                owner,
                now: now_ms(),
            },
        ) {
            Ok(Applied::Got {
                seq,
                checkout,
                remaining,
                msg: Some(msg),
                redelivered,
            }) => Some(Got {
                qm: QueuedMessage {
                    seq: seq.unwrap_or(0),
                    msg: msg.0,
                    redelivered,
                    pos: None,
                    priority: 0,
                    expires_at: None,
                    delivery_count: 0,
                },
                remaining,
                checkout,
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(queue = %self.name, vhost = %self.vhost_name, error = %e, "basic.get on a replicated queue got no answer; answering empty");
                None
            }
        }
    }

    pub(super) fn add_consumer_replicated(
        self: &Arc<Self>,
        r: &Arc<dyn Replica>,
        c: QueueConsumer,
        on_added: impl FnOnce(),
    ) -> Result<(), ConsumeRefused> {
        if self.is_deleted() {
            return Err(ConsumeRefused::Deleted);
        }
        let owner = c.owner;
        let cmd = add_consumer(owner, &c);
        let restores = self
            .replica_restores
            .load(std::sync::atomic::Ordering::Acquire);
        self.replica_consumers.lock().insert(
            owner,
            ReplicaConsumer {
                c,
                active: false,
                early: Vec::new(),
                held: VecDeque::new(),
            },
        );
        let refused = match call(&**r, cmd) {
            Ok(Applied::ConsumeRefused) => Some(ConsumeRefused::ExclusiveInUse),
            Ok(_) => None,
            Err(e) => Some(ConsumeRefused::Unavailable(e)),
        };
        if let Some(why) = refused {
            self.replica_consumers.lock().remove(&owner);
            if matches!(why, ConsumeRefused::Unavailable(_)) {
                // The subscription may still be committed (its answer was lost, or came too
                // late): it must not keep a consumer that nobody serves.
                r.remove_owner(owner, now_ms());
            }
            return Err(why);
        }
        on_added();
        let mut refused = Vec::new();
        {
            let mut consumers = self.replica_consumers.lock();
            if let Some(rc) = consumers.get_mut(&owner) {
                rc.active = true;
                for (checkout, qm) in std::mem::take(&mut rc.early) {
                    self.deliver_or_hold(owner, rc, checkout, qm, &mut refused);
                }
            }
        }
        self.return_refused(refused);
        if self
            .replica_restores
            .load(std::sync::atomic::Ordering::Acquire)
            != restores
        {
            // Restored from a snapshot while subscribing: what the skipped entries gave it
            // was never handed out (see `restart_consumers`).
            r.remove_owner(owner, now_ms());
        }
        Ok(())
    }

    pub(super) fn remove_consumer_replicated(
        &self,
        r: &Arc<dyn Replica>,
        channel: &DeliveryChannel,
        consumer_id: u32,
    ) {
        let owner = {
            let mut consumers = self.replica_consumers.lock();
            let owner = consumers
                .iter()
                .find(|(_, rc)| {
                    std::ptr::eq(&*rc.c.handle, channel) && rc.c.consumer_id == consumer_id
                })
                .map(|(o, _)| *o);
            let held = owner.and_then(|o| consumers.remove(&o)).map(|rc| rc.held);
            owner.zip(held)
        };
        // What the consumer's channel got stays its own until the channel acks or closes.
        if let Some((owner, held)) = owner {
            r.submit(
                QueueCommand::RemoveConsumer {
                    owner,
                    now: now_ms(),
                },
                None,
            );
            // What it never got goes back, after the removal: before it, the engine would
            // hand it straight back to the consumer.
            if !held.is_empty() {
                let checkouts = held.into_iter().map(|(id, _)| (owner, id));
                submit_checkouts(r, checkouts, |checkouts, now| QueueCommand::Unsent {
                    checkouts,
                    now,
                });
            }
        }
    }

    pub(super) fn purge_replicated(&self, r: &Arc<dyn Replica>) -> u32 {
        match call(&**r, QueueCommand::Purge) {
            Ok(Applied::Purged(n)) => n,
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(queue = %self.name, vhost = %self.vhost_name, error = %e, "purge of a replicated queue got no answer");
                0
            }
        }
    }

    /// The queue is deleted: its group stops and its log is forgotten; its consumers are
    /// cancelled. Returns the ready count.
    pub(super) fn delete_replicated(&self, r: &Arc<dyn Replica>) -> u32 {
        let n = message_count(r);
        r.remove();
        self.cancel_consumers_here();
        n
    }

    /// This node's consumers of the queue are cancelled (`basic.cancel` to clients that
    /// take it).
    fn cancel_consumers_here(&self) {
        let consumers: Vec<ReplicaConsumer> = self
            .replica_consumers
            .lock()
            .drain()
            .map(|(_, rc)| rc)
            .collect();
        if !consumers.is_empty() {
            tracing::info!(queue = %self.name, vhost = %self.vhost_name, consumers = consumers.len(), "the queue's consumers on this node are cancelled");
        }
        for rc in consumers {
            rc.c.handle.consumer_cancelled_by_server(rc.c.consumer_id);
        }
    }

    pub(super) fn set_options_replicated(
        self: &Arc<Self>,
        r: &Arc<dyn Replica>,
        opts: QueueOptions,
        fu: &mut Followups,
    ) {
        let needs_timer = opts.message_ttl.is_some() || opts.expires.is_some();
        r.submit(
            QueueCommand::SetOptions {
                opts,
                now: now_ms(),
            },
            None,
        );
        if needs_timer {
            self.timer_followup(fu);
        }
    }

    /// Timer work: a `Tick` goes through the log only when it would change something (so an
    /// idle queue with a TTL does not grow its log). Returns whether ticks are still needed.
    pub(super) fn tick_replicated(self: &Arc<Self>, r: &Arc<dyn Replica>, now: u64) -> bool {
        // Only the leader's node ticks (leadership may move: the timer stays on).
        if r.is_leader() && read(r, |e| e.tick_due(now)) {
            let q = self.clone();
            r.submit(
                QueueCommand::Tick { now },
                Some(Box::new(move |a| {
                    if let Ok(Applied::Ticked {
                        unused_expired: true,
                    }) = a
                    {
                        let mut fu = Followups::new();
                        fu.push(Followup::Delete(q.clone(), DeleteReason::Expired));
                        q.follow_up_later(fu);
                    }
                })),
            );
        }
        true
    }

    pub(super) fn replica_consumers_listed(
        &self,
    ) -> Vec<(ShortStr, Arc<DeliveryChannel>, bool, bool)> {
        self.replica_consumers
            .lock()
            .values()
            .map(|rc| {
                (
                    rc.c.tag.clone(),
                    rc.c.handle.clone(),
                    rc.c.no_ack,
                    rc.c.exclusive,
                )
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "replicated_tests.rs"]
mod tests;
