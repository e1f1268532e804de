//! A replicated queue's state as a value ([`EngineSnapshot`]): what a Raft snapshot of the
//! queue carries, so its log can be cut below it. Restoring a snapshot and applying the
//! commands that followed it gives the same engine as applying the whole log (tested in
//! `command_tests.rs` with random logs cut at random points). The queue's options are in it
//! (a policy's `SetOptions` before the snapshot is purged with the log).
//!
//! This first form carries the messages' bodies (a snapshot is as large as the backlog);
//! docs/cluster-plan.md step 3b keeps the bodies in the queue's store and the snapshot only
//! their positions.

use super::{Checkout, Consumer, Holding, Owner, QueueEngine};
use crate::queue::command::LoggedMessage;
use crate::queue::options::QueueOptions;
use crate::queue::ready::ReadyList;
use crate::queue::QueuedMessage;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// A message in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    msg: LoggedMessage,
    redelivered: bool,
    priority: u8,
    expires_at: Option<u64>,
    delivery_count: u32,
}

impl Msg {
    fn of(m: &QueuedMessage) -> Msg {
        Msg {
            seq: m.seq,
            msg: LoggedMessage(m.msg.clone()),
            redelivered: m.redelivered,
            priority: m.priority,
            expires_at: m.expires_at,
            delivery_count: m.delivery_count,
        }
    }

    fn into_queued(self) -> QueuedMessage {
        QueuedMessage {
            seq: self.seq,
            msg: self.msg.0,
            redelivered: self.redelivered,
            pos: None,
            priority: self.priority,
            expires_at: self.expires_at,
            delivery_count: self.delivery_count,
        }
    }
}

/// One owner's checkouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Held {
    owner: Owner,
    consuming: bool,
    msgs: Vec<(u64, Msg)>,
}

/// A consumer (a replicated queue's consumers are named by owner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sub {
    owner: Owner,
    tag: String,
    no_ack: bool,
    exclusive: bool,
    priority: i64,
    prefetch: u32,
}

/// A replicated queue's engine, as a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    opts: QueueOptions,
    /// Ready messages in delivery order.
    ready: Vec<Msg>,
    held: Vec<Held>,
    /// Consumers in the engine's order (priority, then arrival).
    consumers: Vec<Sub>,
    publishers: Vec<(u64, u64)>,
    unacked: u32,
    next_checkout: u64,
    next_consumer: usize,
    next_seq: u64,
    had_consumer: bool,
    published: u64,
    delivered: u64,
    acked: u64,
    delivered_by: [u64; 4],
    redelivered: u64,
    last_used: u64,
    timed: bool,
}

impl QueueEngine<Owner> {
    /// The engine's state (a replicated engine has no paged tail and no pending effects).
    pub fn snapshot(&self) -> EngineSnapshot {
        debug_assert!(self.paged.is_empty(), "a replicated queue does not page");
        debug_assert!(self.spilled.is_empty(), "nor spill");
        let mut held: Vec<Held> = self
            .checked_out
            .iter()
            .map(|(&owner, h)| Held {
                owner,
                consuming: h.consuming,
                msgs: h.msgs.iter().map(|c| (c.id, Msg::of(&c.qm))).collect(),
            })
            .collect();
        // A hash map's order is not the same on every replica.
        held.sort_unstable_by_key(|h| h.owner);
        let mut publishers: Vec<(u64, u64)> =
            self.publishers.iter().map(|(&k, &v)| (k, v)).collect();
        publishers.sort_unstable();
        EngineSnapshot {
            opts: self.opts.clone(),
            ready: self.ready.iter().map(Msg::of).collect(),
            held,
            consumers: self
                .consumers
                .iter()
                .map(|c| Sub {
                    owner: c.owner,
                    tag: c.tag.to_string(),
                    no_ack: c.no_ack,
                    exclusive: c.exclusive,
                    priority: c.priority,
                    prefetch: c.prefetch,
                })
                .collect(),
            publishers,
            unacked: self.unacked,
            next_checkout: self.next_checkout,
            next_consumer: self.next_consumer,
            next_seq: self.next_seq,
            had_consumer: self.had_consumer,
            published: self.published,
            delivered: self.delivered,
            acked: self.acked,
            delivered_by: self.delivered_by,
            redelivered: self.redelivered,
            last_used: self.last_used,
            timed: self.timed,
        }
    }

    /// An engine in the state `snap` describes (options included).
    pub fn restore(snap: EngineSnapshot) -> Self {
        let mut e = QueueEngine::new(snap.opts, snap.last_used);
        let mut ready = ReadyList::new(e.opts.max_priority);
        for m in snap.ready {
            e.ready_bytes += m.msg.0.body.len();
            ready.push_back(m.into_queued());
        }
        e.ready = ready;
        e.checked_out = snap
            .held
            .into_iter()
            .map(|h| {
                let msgs: std::collections::VecDeque<Checkout> = h
                    .msgs
                    .into_iter()
                    .map(|(id, m)| Checkout {
                        id,
                        qm: m.into_queued(),
                    })
                    .collect();
                e.unacked_bytes += msgs.iter().map(|c| c.qm.msg.body.len()).sum::<usize>();
                (
                    h.owner,
                    Holding {
                        consuming: h.consuming,
                        msgs,
                        stored: Default::default(),
                    },
                )
            })
            .collect::<FxHashMap<_, _>>();
        e.consumers = snap
            .consumers
            .into_iter()
            .map(|s| Consumer {
                handle: s.owner,
                consumer_id: 0,
                owner: s.owner,
                tag: s.tag.as_str().into(),
                no_ack: s.no_ack,
                exclusive: s.exclusive,
                priority: s.priority,
                prefetch: s.prefetch,
            })
            .collect();
        e.publishers = snap.publishers.into_iter().collect();
        e.unacked = snap.unacked;
        e.next_checkout = snap.next_checkout;
        e.next_consumer = snap.next_consumer;
        e.next_seq = snap.next_seq;
        e.had_consumer = snap.had_consumer;
        e.published = snap.published;
        e.delivered = snap.delivered;
        e.acked = snap.acked;
        e.delivered_by = snap.delivered_by;
        e.redelivered = snap.redelivered;
        e.timed = snap.timed;
        e
    }
}
