//! A replicated queue's state as a value ([`EngineSnapshot`]): what a Raft snapshot of the
//! queue carries, so its log can be cut below it. Restoring a snapshot and applying the
//! commands that followed it gives the same engine as applying the whole log (tested in
//! `command_tests.rs` with random logs cut at random points). The queue's options are in it
//! (a policy's `SetOptions` before the snapshot is purged with the log).
//!
//! A snapshot is full ([`QueueEngine::snapshot`], bodies included: as large as the backlog)
//! or dry ([`QueueEngine::dry_snapshot`], bodies left out, their lengths kept). A dry snapshot
//! taken after some log index may stand for the state at that index once every message it
//! holds is gone ([`QueueEngine::holds_seq_below`] its [`EngineSnapshot::next_seq`]): the log
//! kept after the index removes each of them again, so nothing ever needs their bodies, and
//! the messages enqueued after it come back from the log with theirs. Restored dry messages
//! carry a zero-filled body of the right length ([`is_dry`]), so that the byte counts and
//! every decision taken on them are the same as the first time; they must never reach a
//! client (the cluster drops deliveries and dead letters of them).

use super::{Checkout, Consumer, Holding, Owner, QueueEngine};
use crate::message::Message;
use crate::queue::command::LoggedMessage;
use crate::queue::options::QueueOptions;
use crate::queue::ready::ReadyList;
use crate::queue::QueuedMessage;
use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

/// The zero-filled buffer restored dry bodies are slices of (allocated zeroed and never
/// written: its pages cost no memory until read).
const DRY_BUFFER: usize = 128 << 20;

fn dry_buffer() -> &'static Bytes {
    static ZEROS: OnceLock<Bytes> = OnceLock::new();
    ZEROS.get_or_init(|| Bytes::from(vec![0u8; DRY_BUFFER]))
}

/// A stand-in body of `len` bytes for a message a dry snapshot left out.
fn dry_body(len: usize) -> Bytes {
    if len <= DRY_BUFFER {
        dry_buffer().slice(..len)
    } else {
        // (Beyond any configurable message size; not recognised by `is_dry`.)
        Bytes::from(vec![0u8; len])
    }
}

/// Whether `body` is the stand-in for a body a dry snapshot left out: its message was
/// settled in the log after the snapshot, and what applying that log decides about it (a
/// delivery, a dead letter) must not reach anyone.
pub fn is_dry(body: &Bytes) -> bool {
    let zeros = dry_buffer().as_ptr_range();
    !body.is_empty() && zeros.contains(&body.as_ptr())
}

/// A message in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    msg: LoggedMessage,
    redelivered: bool,
    priority: u8,
    expires_at: Option<u64>,
    delivery_count: u32,
    /// In a dry snapshot, the body's length (`msg` carries an empty body).
    dry: Option<u32>,
}

impl Msg {
    fn of(m: &QueuedMessage, bodies: bool) -> Msg {
        // A message still dry (restored from a dry snapshot, not yet removed again) stays so.
        let (msg, dry) = if (bodies && !is_dry(&m.msg.body)) || m.msg.body.is_empty() {
            (m.msg.clone(), None)
        } else {
            let bodiless = Message::new(
                m.msg.exchange.clone(),
                m.msg.routing_key.clone(),
                m.msg.properties.clone(),
                Bytes::new(),
            );
            (Arc::new(bodiless), Some(m.msg.body.len() as u32))
        };
        Msg {
            seq: m.seq,
            msg: LoggedMessage(msg),
            redelivered: m.redelivered,
            priority: m.priority,
            expires_at: m.expires_at,
            delivery_count: m.delivery_count,
            dry,
        }
    }

    fn into_queued(self) -> QueuedMessage {
        let msg = match self.dry {
            None => self.msg.0,
            Some(len) => {
                let m = &self.msg.0;
                Arc::new(Message::new(
                    m.exchange.clone(),
                    m.routing_key.clone(),
                    m.properties.clone(),
                    dry_body(len as usize),
                ))
            }
        };
        QueuedMessage {
            seq: self.seq,
            msg,
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

impl EngineSnapshot {
    /// The sequence number the next message enqueued after this state gets: a dry snapshot
    /// holds only messages numbered below it.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// How many messages it holds (ready and checked out).
    pub fn messages(&self) -> usize {
        self.ready.len() + self.held.iter().map(|h| h.msgs.len()).sum::<usize>()
    }
}

impl QueueEngine<Owner> {
    /// The engine's state, bodies included (a replicated engine has no paged tail and no
    /// pending effects).
    pub fn snapshot(&self) -> EngineSnapshot {
        self.snapshot_with(true)
    }

    /// The engine's state without the messages' bodies (see the module's notes for when it
    /// may stand for the state).
    pub fn dry_snapshot(&self) -> EngineSnapshot {
        self.snapshot_with(false)
    }

    /// Whether the queue still holds (ready or checked out) a message numbered below `seq`:
    /// while it does, a dry snapshot whose [`EngineSnapshot::next_seq`] is `seq` needs it.
    pub fn holds_seq_below(&self, seq: u64) -> bool {
        // Checkouts first: they are few, and the ready list's oldest is usually at its head.
        self.checked_out
            .values()
            .any(|h| h.msgs.iter().any(|c| c.qm.seq < seq))
            || self.ready.iter().any(|m| m.seq < seq)
    }

    fn snapshot_with(&self, bodies: bool) -> EngineSnapshot {
        debug_assert!(self.paged.is_empty(), "a replicated queue does not page");
        debug_assert!(self.spilled.is_empty(), "nor spill");
        let mut held: Vec<Held> = self
            .checked_out
            .iter()
            .map(|(&owner, h)| Held {
                owner,
                consuming: h.consuming,
                msgs: h
                    .msgs
                    .iter()
                    .map(|c| (c.id, Msg::of(&c.qm, bodies)))
                    .collect(),
            })
            .collect();
        // A hash map's order is not the same on every replica.
        held.sort_unstable_by_key(|h| h.owner);
        let mut publishers: Vec<(u64, u64)> =
            self.publishers.iter().map(|(&k, &v)| (k, v)).collect();
        publishers.sort_unstable();
        EngineSnapshot {
            opts: self.opts.clone(),
            ready: self.ready.iter().map(|m| Msg::of(m, bodies)).collect(),
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
            let qm = m.into_queued();
            e.ready_bytes += qm.msg.body.len();
            ready.push_back(qm);
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
