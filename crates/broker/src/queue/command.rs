//! A queue's commands as values: what a replicated queue's log carries (step 2 of
//! docs/cluster-plan.md). Applying the same commands in the same order to engines that started
//! equal leaves them equal, with the same effects: every command carries the leader's time,
//! and consumers carry their prefetch, so deliveries are decided by the engine alone (the
//! [`Env`] of a replicated engine takes every offer it gets: [`Deliveries`]).
//!
//! Deliveries are effects only the leader acts on: [`Deliveries`] records them as (owner,
//! checkout id) for the node to hand to the owners' channels; followers drop them.
//!
//! An `Enqueue` may name its publisher and sequence number ([`Publisher`]): a resend of one
//! already enqueued (after a leader change) answers `Duplicate` and changes nothing.
//!
//! A policy change is `SetOptions`. Not yet carried: paging (a replicated queue keeps its
//! backlog in memory until step 3b gives it a store to page into).

use super::engine::{CheckoutId, CheckoutKey, Consumer, Env, Got, Owner, QueueEngine};
use super::options::QueueOptions;
use super::QueuedMessage;
use crate::message::Message;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;
use warren_store::{Position, RecoveredMessage};

/// Who published a message: a channel's id and its publish sequence number, so that a
/// message sent again (after a leader change, the channel resends what was not confirmed) is
/// recognised and enqueued once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    pub id: u64,
    pub seq: u64,
}

/// One change to a replicated queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QueueCommand {
    /// A routed message (refused when the queue is full and its overflow mode says so).
    Enqueue {
        msg: LoggedMessage,
        now: u64,
        /// Its publisher and sequence number, if it should be deduplicated.
        from: Option<Publisher>,
    },
    /// The publisher's channel is gone: forget its sequence numbers.
    ForgetPublisher { id: u64 },
    /// A consumer subscribes.
    AddConsumer {
        owner: Owner,
        tag: String,
        prefetch: u32,
        no_ack: bool,
        exclusive: bool,
        priority: i64,
        now: u64,
    },
    /// A consumer goes (basic.cancel): what it holds stays its own.
    RemoveConsumer { owner: Owner, now: u64 },
    /// basic.get; with an owner, the message is checked out to it.
    Get { owner: Option<Owner>, now: u64 },
    /// basic.ack.
    Settle {
        checkouts: Vec<CheckoutKey>,
        now: u64,
    },
    /// basic.nack / basic.reject with requeue.
    Return {
        checkouts: Vec<CheckoutKey>,
        now: u64,
    },
    /// basic.nack / basic.reject without requeue.
    Discard {
        checkouts: Vec<CheckoutKey>,
        now: u64,
    },
    /// The owner's channel is gone: everything it holds comes back.
    ReturnAll { owner: Owner, now: u64 },
    /// Time passed: expire messages at the head.
    Tick { now: u64 },
    /// queue.purge.
    Purge,
    /// A policy changed the queue's options.
    SetOptions { opts: QueueOptions, now: u64 },
    /// Checked-out messages their consumer's node never sent (it held them for when the
    /// client's prefetch had room, and the consumer went first): back where they were, not
    /// counted as delivered. (Last, so that logs written before it still decode.)
    Unsent {
        checkouts: Vec<CheckoutKey>,
        now: u64,
    },
}

/// What applying a command answers (besides the engine's effects and the deliveries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    /// Enqueue: the queue is full and refuses publishes.
    Rejected,
    /// Enqueue: this publisher's message with this sequence number is already in (a resend).
    Duplicate,
    /// AddConsumer refused (an exclusive consumer is there, or this one wants to be alone).
    ConsumeRefused,
    /// RemoveConsumer: whether the queue just lost its last consumer.
    Removed {
        last: bool,
    },
    /// Get: the message's publish seq and checkout, and how many remain ready; the message
    /// itself (with whether it was delivered before) for the node that answers basic.get.
    Got {
        seq: Option<u64>,
        checkout: Option<CheckoutId>,
        remaining: u32,
        msg: Option<LoggedMessage>,
        redelivered: bool,
    },
    /// Settle: how many were settled.
    Settled(u32),
    /// Purge: how many ready messages went.
    Purged(u32),
    /// Tick: whether the queue has been unused longer than `x-expires`.
    Ticked {
        unused_expired: bool,
    },
}

/// The deliveries a replicated engine decided: (owner, checkout id, message), in order. The
/// leader hands them to its channels; a follower clears them.
#[derive(Default, Debug)]
pub struct Deliveries {
    pub list: Vec<(Owner, CheckoutId, QueuedMessage)>,
}

impl Env<Owner> for Deliveries {
    fn offer(&mut self, c: &Consumer<Owner>, qm: &QueuedMessage, checkout: CheckoutId) -> bool {
        self.list.push((c.owner, checkout, qm.clone()));
        true
    }

    fn read_paged(
        &mut self,
        from: Position,
        _max_bytes: usize,
    ) -> warren_store::Result<(Vec<RecoveredMessage>, Position)> {
        // A replicated queue does not page (yet): it never has a paged tail to read.
        Ok((Vec::new(), from))
    }
}

impl QueueEngine<Owner> {
    /// Applies one command. Deliveries go to `out`; effects (store marks, dead letters, the
    /// timer) are the engine's as for any command.
    pub fn apply(&mut self, cmd: &QueueCommand, out: &mut Deliveries) -> Applied {
        match cmd {
            QueueCommand::Enqueue { msg, now, from } => {
                if let Some(p) = from {
                    if !self.publisher_advanced(p.id, p.seq) {
                        return Applied::Duplicate;
                    }
                }
                if self.admit(&msg.0).is_err() {
                    return Applied::Rejected;
                }
                self.enqueue(msg.0.clone(), None, *now, out);
                Applied::Done
            }
            QueueCommand::AddConsumer {
                owner,
                tag,
                prefetch,
                no_ack,
                exclusive,
                priority,
                now,
            } => {
                let c = Consumer {
                    handle: *owner,
                    consumer_id: 0,
                    owner: *owner,
                    tag: tag.as_str().into(),
                    no_ack: *no_ack,
                    exclusive: *exclusive,
                    priority: *priority,
                    prefetch: *prefetch,
                };
                if self.add_consumer(c, *now).is_err() {
                    return Applied::ConsumeRefused;
                }
                self.dispatch(*now, out);
                Applied::Done
            }
            QueueCommand::RemoveConsumer { owner, now } => {
                let owner = *owner;
                let last = self.remove_consumers(|c| c.owner == owner, *now, out);
                Applied::Removed { last }
            }
            QueueCommand::Get { owner, now } => match self.get(*owner, *now, out) {
                Some(Got {
                    qm,
                    remaining,
                    checkout,
                }) => Applied::Got {
                    seq: Some(qm.seq),
                    checkout,
                    remaining,
                    redelivered: qm.redelivered,
                    msg: Some(LoggedMessage(qm.msg)),
                },
                None => Applied::Got {
                    seq: None,
                    checkout: None,
                    remaining: 0,
                    msg: None,
                    redelivered: false,
                },
            },
            QueueCommand::Settle { checkouts, now } => {
                let n = self.settle(checkouts.iter().copied());
                // Credit came back to the owners.
                self.dispatch(*now, out);
                Applied::Settled(n)
            }
            QueueCommand::Return { checkouts, now } => {
                self.return_checkouts(checkouts.iter().copied(), *now, out);
                Applied::Done
            }
            QueueCommand::Discard { checkouts, now } => {
                self.discard(checkouts.iter().copied(), out);
                self.dispatch(*now, out);
                Applied::Done
            }
            QueueCommand::Unsent { checkouts, now } => {
                self.put_back_unsent(checkouts.iter().copied(), *now, out);
                Applied::Done
            }
            QueueCommand::ReturnAll { owner, now } => {
                self.return_all(*owner, *now, out);
                Applied::Done
            }
            QueueCommand::Tick { now } => {
                let unused_expired = self.tick(*now);
                self.dispatch(*now, out);
                Applied::Ticked { unused_expired }
            }
            QueueCommand::Purge => Applied::Purged(self.purge()),
            QueueCommand::SetOptions { opts, now } => {
                self.set_options(opts.clone(), *now, out);
                Applied::Done
            }
            QueueCommand::ForgetPublisher { id } => {
                self.forget_publisher(*id);
                Applied::Done
            }
        }
    }
}

/// A message inside a log entry, encoded as the message store encodes it.
#[derive(Debug, Clone)]
pub struct LoggedMessage(pub Arc<Message>);

/// Equal when they carry the same message (as two replicas decode it from one entry).
impl PartialEq for LoggedMessage {
    fn eq(&self, o: &Self) -> bool {
        let (a, b) = (&self.0, &o.0);
        Arc::ptr_eq(a, b)
            || (a.exchange == b.exchange
                && a.routing_key == b.routing_key
                && a.properties == b.properties
                && a.body == b.body)
    }
}
impl Eq for LoggedMessage {}

impl Serialize for LoggedMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        self.0.encode_record(self.0.is_persistent(), None, &mut buf);
        s.serialize_bytes(&buf)
    }
}

impl<'de> Deserialize<'de> for LoggedMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buf: serde_bytes_compat::ByteBuf = Deserialize::deserialize(d)?;
        Message::decode_record(Bytes::from(buf.0))
            .map(|(m, _)| LoggedMessage(Arc::new(m)))
            .ok_or_else(|| serde::de::Error::custom("undecodable message record"))
    }
}

/// Reads bytes serialized with `serialize_bytes` from formats that give them as bytes or as
/// a sequence of numbers (JSON).
pub(crate) mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                    while let Some(b) = seq.next_element::<u8>()? {
                        v.push(b);
                    }
                    Ok(ByteBuf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
