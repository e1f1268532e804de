//! A replica fed the leader's log reaches the leader's state: random command logs are applied
//! to one engine (the leader), sent through an encoding (JSON here; any serde format), and
//! applied to a second engine (the follower). After every entry both must agree on the answer,
//! the deliveries, the effects, the counts, the ready order and every owner's checkouts.

use super::*;
use crate::queue::options::QueueOptions;
use crate::queue::Effect;
use crate::queue::{is_dry, EngineSnapshot};
use proptest::prelude::*;
use warren_protocol::BasicProperties;

fn message(id: u64, props: BasicProperties) -> LoggedMessage {
    LoggedMessage(Arc::new(Message::new(
        "".into(),
        "q".into(),
        props.to_bytes(),
        Bytes::copy_from_slice(&id.to_be_bytes()),
    )))
}

fn id_of(qm: &QueuedMessage) -> u64 {
    u64::from_be_bytes(qm.msg.body[..8].try_into().unwrap())
}

fn options() -> QueueOptions {
    QueueOptions {
        dead_letter_exchange: Some("dlx".into()),
        ..Default::default()
    }
}

/// What a replica must agree on after each entry.
#[derive(Debug, PartialEq)]
struct View {
    applied: Applied,
    deliveries: Vec<(Owner, CheckoutId, u64, bool)>,
    effects: Vec<String>,
    ready: Vec<(u64, u64, bool, u32)>,
    held: Vec<(Owner, Vec<(CheckoutId, u64)>)>,
    ready_count: u64,
    unacked: u64,
    consumers: u64,
}

fn effect_summary(e: &Effect) -> String {
    match e {
        Effect::DeadLetter(d) => format!(
            "dead {} {:?}",
            u64::from_be_bytes(d.msg.body[..8].try_into().unwrap()),
            d.reason
        ),
        other => format!("{other:?}"),
    }
}

fn view(
    e: &mut QueueEngine<Owner>,
    applied: Applied,
    out: &mut Deliveries,
    owners: &[Owner],
) -> View {
    let stats = e.stats();
    View {
        applied,
        deliveries: out
            .list
            .drain(..)
            .map(|(o, c, qm)| (o, c, id_of(&qm), qm.redelivered))
            .collect(),
        effects: e.take_effects().iter().map(effect_summary).collect(),
        ready: e
            .ready()
            .map(|m| (m.seq, id_of(m), m.redelivered, m.delivery_count))
            .collect(),
        // Owners holding something (the owners known so far are passed in).
        held: owners
            .iter()
            .filter(|&&o| e.held(o) > 0)
            .map(|&o| (o, e.checked_out(o).map(|c| (c.id, id_of(&c.qm))).collect()))
            .collect(),
        ready_count: stats.messages_ready,
        unacked: stats.messages_unacknowledged,
        consumers: stats.consumers,
    }
}

#[test]
fn prefetch_in_the_engine_limits_what_a_consumer_holds() {
    let mut e = QueueEngine::<Owner>::new(options(), 0);
    let mut out = Deliveries::default();
    for id in 0..5 {
        e.apply(
            &QueueCommand::Enqueue {
                msg: message(id, BasicProperties::default()),
                now: 0,
                from: None,
            },
            &mut out,
        );
    }
    let add = QueueCommand::AddConsumer {
        owner: 7,
        tag: "c".into(),
        prefetch: 2,
        no_ack: false,
        exclusive: false,
        priority: 0,
        now: 0,
    };
    assert_eq!(e.apply(&add, &mut out), Applied::Done);
    let got: Vec<CheckoutId> = out.list.drain(..).map(|d| d.1).collect();
    assert_eq!(got.len(), 2, "prefetch 2");
    // One ack: one more message.
    let settle = QueueCommand::Settle {
        checkouts: vec![(7, got[0])],
        now: 0,
    };
    assert_eq!(e.apply(&settle, &mut out), Applied::Settled(1));
    assert_eq!(out.list.len(), 1);
    assert_eq!(e.held(7), 2);
    // A second settle of the same checkout changes nothing.
    assert_eq!(e.apply(&settle, &mut out), Applied::Settled(0));
    assert_eq!(out.list.len(), 1);
}

#[test]
fn commands_survive_an_encoding_round_trip() {
    let msg = message(
        42,
        BasicProperties {
            priority: Some(3),
            expiration: Some("500".into()),
            delivery_mode: Some(2),
            ..Default::default()
        },
    );
    let from = Some(Publisher { id: 3, seq: 7 });
    let cmd = QueueCommand::Enqueue { msg, now: 9, from };
    let json = serde_json::to_vec(&cmd).unwrap();
    let back: QueueCommand = serde_json::from_slice(&json).unwrap();
    let QueueCommand::Enqueue { msg, now, from: f } = back else {
        panic!("{back:?}")
    };
    assert_eq!((now, f), (9, from));
    assert_eq!(&msg.0.body[..], &42u64.to_be_bytes());
    let p = msg.0.props();
    assert_eq!(
        (p.priority, p.expiration.as_deref(), p.delivery_mode),
        (Some(3), Some("500"), Some(2))
    );
    assert_eq!(msg.0.routing_key.as_str(), "q");
}

/// An operation of the generated workload; the driver makes it a concrete command from the
/// leader's state (which checkouts exist, which consumers).
#[derive(Debug, Clone)]
enum Op {
    Publish {
        ttl: Option<u16>,
        priority: u8,
    },
    AddConsumer {
        prefetch: u8,
        no_ack: bool,
        priority: i8,
    },
    RemoveConsumer(usize),
    Get {
        ack: bool,
    },
    Settle(usize, bool),
    Return(usize),
    Discard(usize),
    /// A consumer's node puts back checkouts it held and never sent.
    Unsent(usize),
    ReturnAll(usize),
    Tick(u16),
    Purge,
    /// A publisher sends an earlier message again (as after a leader change).
    Resend(usize),
    /// A policy changes the queue's options.
    SetOptions(QueueOptions),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::option::of(0u16..400), 0u8..4).prop_map(|(ttl, priority)| Op::Publish { ttl, priority }),
        1 => ((0u8..4), any::<bool>(), (-1i8..2)).prop_map(|(prefetch, no_ack, priority)| Op::AddConsumer { prefetch, no_ack, priority }),
        1 => (0usize..4).prop_map(Op::RemoveConsumer),
        2 => any::<bool>().prop_map(|ack| Op::Get { ack }),
        4 => ((0usize..8), any::<bool>()).prop_map(|(k, all)| Op::Settle(k, all)),
        2 => (0usize..8).prop_map(Op::Return),
        1 => (0usize..8).prop_map(Op::Discard),
        1 => (0usize..8).prop_map(Op::Unsent),
        1 => (0usize..4).prop_map(Op::ReturnAll),
        2 => (0u16..300).prop_map(Op::Tick),
        1 => Just(Op::Purge),
        1 => (0usize..50).prop_map(Op::Resend),
        1 => queue_options().prop_map(Op::SetOptions),
    ]
}

fn queue_options() -> impl Strategy<Value = QueueOptions> {
    (
        proptest::option::of(50u64..400),
        proptest::option::of(1u64..6),
        proptest::option::of(1u64..3),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(
            |(ttl, max_length, delivery_limit, max_priority, sac)| QueueOptions {
                message_ttl: ttl,
                max_length,
                delivery_limit,
                max_priority,
                single_active_consumer: sac,
                quorum: true,
                ..options()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn a_follower_fed_the_leaders_log_reaches_the_same_state(opts in queue_options(), ops in proptest::collection::vec(op(), 1..150), cut in 0usize..150) {
        let mut leader = QueueEngine::<Owner>::new(opts.clone(), 0);
        let mut out = Deliveries::default();
        let mut log: Vec<QueueCommand> = Vec::new();
        let mut views: Vec<View> = Vec::new();
        let (mut now, mut next_id, mut next_owner) = (0u64, 0u64, 1u64);
        let mut consumers: Vec<Owner> = Vec::new();
        // Every owner ever seen (consumers, and 100 for basic.get), and the checkouts held.
        let mut owners: Vec<Owner> = vec![100];
        let mut held: Vec<CheckoutKey> = Vec::new();
        let mut no_ack_owners: Vec<Owner> = Vec::new();
        let mut sent: Vec<QueueCommand> = Vec::new();
        for op in ops {
            let cmd = match op {
                Op::Publish { ttl, priority } => {
                    next_id += 1;
                    let props = BasicProperties {
                        expiration: ttl.map(|t| t.to_string().as_str().into()),
                        priority: Some(priority),
                        ..Default::default()
                    };
                    let cmd = QueueCommand::Enqueue { msg: message(next_id, props), now, from: Some(Publisher { id: 1, seq: next_id }) };
                    sent.push(cmd.clone());
                    cmd
                }
                Op::Resend(k) if !sent.is_empty() => {
                    let cmd = sent[k % sent.len()].clone();
                    let before = leader.stats();
                    prop_assert_eq!(leader.apply(&cmd, &mut out), Applied::Duplicate, "a resend is enqueued once");
                    prop_assert_eq!(leader.stats(), before);
                    cmd
                }
                Op::AddConsumer { prefetch, no_ack, priority } => {
                    let owner = next_owner;
                    next_owner += 1;
                    consumers.push(owner);
                    owners.push(owner);
                    if no_ack {
                        no_ack_owners.push(owner);
                    }
                    QueueCommand::AddConsumer { owner, tag: format!("c{owner}"), prefetch: prefetch.into(), no_ack, exclusive: false, priority: priority.into(), now }
                }
                Op::RemoveConsumer(k) if !consumers.is_empty() => {
                    let owner = consumers.remove(k % consumers.len());
                    QueueCommand::RemoveConsumer { owner, now }
                }
                Op::Get { ack } => QueueCommand::Get { owner: ack.then_some(100), now },
                Op::Settle(k, all) if !held.is_empty() => {
                    let checkouts = if all { std::mem::take(&mut held) } else { vec![held.remove(k % held.len())] };
                    QueueCommand::Settle { checkouts, now }
                }
                Op::Return(k) if !held.is_empty() => QueueCommand::Return { checkouts: vec![held.remove(k % held.len())], now },
                Op::Discard(k) if !held.is_empty() => QueueCommand::Discard { checkouts: vec![held.remove(k % held.len())], now },
                Op::Unsent(k) if !held.is_empty() => QueueCommand::Unsent { checkouts: vec![held.remove(k % held.len())], now },
                Op::ReturnAll(k) => {
                    let owner = owners[k % owners.len()];
                    held.retain(|h| h.0 != owner);
                    QueueCommand::ReturnAll { owner, now }
                }
                Op::Tick(ms) => {
                    now += u64::from(ms);
                    QueueCommand::Tick { now }
                }
                Op::Purge => QueueCommand::Purge,
                Op::SetOptions(opts) => QueueCommand::SetOptions { opts, now },
                _ => QueueCommand::Tick { now },
            };
            let applied = leader.apply(&cmd, &mut out);
            if let Applied::Got { checkout: Some(c), .. } = applied {
                held.push((100, c));
            }
            // Deliveries to no-ack consumers are not checkouts.
            held.extend(out.list.iter().filter(|d| !no_ack_owners.contains(&d.0)).map(|d| (d.0, d.1)));
            views.push(view(&mut leader, applied, &mut out, &owners));
            log.push(cmd);
        }

        // The follower gets the log through an encoding, entry by entry.
        let wire = serde_json::to_vec(&log).unwrap();
        let log: Vec<QueueCommand> = serde_json::from_slice(&wire).unwrap();
        let mut follower = QueueEngine::<Owner>::new(opts.clone(), 0);
        let mut out = Deliveries::default();
        let cut = cut.min(log.len());
        let mut snapshot = None;
        // A dry snapshot at `cut`, and the entry after which every message it holds is gone
        // (None: never; `cut - 1`, as `cut`: it holds none).
        let mut dry = None;
        let mut gone: Option<usize> = None;
        for (i, (cmd, want)) in log.iter().zip(&views).enumerate() {
            if i == cut {
                snapshot = Some(follower.snapshot());
                let d = follower.dry_snapshot();
                if d.messages() == 0 {
                    gone = Some(cut);
                }
                dry = Some(d);
            }
            let applied = follower.apply(cmd, &mut out);
            let got = view(&mut follower, applied, &mut out, &owners);
            prop_assert_eq!(&got, want, "entry {}: {:?}", i, cmd);
            if let (Some(d), None) = (&dry, gone) {
                if !follower.holds_seq_below(d.next_seq()) {
                    gone = Some(i + 1);
                }
            }
        }
        let snapshot = snapshot.unwrap_or_else(|| follower.snapshot());
        let dry = dry.unwrap_or_else(|| follower.dry_snapshot());

        // A replica that starts from a snapshot taken after `cut` entries (through an
        // encoding), then applies the rest, agrees with the leader from there on.
        let wire = serde_json::to_vec(&snapshot).unwrap();
        let back: EngineSnapshot = serde_json::from_slice(&wire).unwrap();
        prop_assert_eq!(&back, &snapshot);
        let mut restored = QueueEngine::<Owner>::restore(back);
        for (i, (cmd, want)) in log.iter().zip(&views).enumerate().skip(cut) {
            let applied = restored.apply(cmd, &mut out);
            let got = view(&mut restored, applied, &mut out, &owners);
            prop_assert_eq!(&got, want, "entry {} after a snapshot at {}: {:?}", i, cut, cmd);
        }
        prop_assert_eq!(restored.snapshot(), follower.snapshot());

        // A dry snapshot stands for the state at `cut` once what it holds is gone: restored
        // (through an encoding), then fed the log from `cut`, it agrees with the leader from
        // the entry after which they are gone (what it decides before, about messages whose
        // bodies it lacks, is dropped), and ends in the same state, bodies included.
        let gone = if cut == log.len() && dry.messages() == 0 { Some(cut) } else { gone };
        if let Some(from) = gone {
            let wire = serde_json::to_vec(&dry).unwrap();
            let back: EngineSnapshot = serde_json::from_slice(&wire).unwrap();
            prop_assert_eq!(&back, &dry);
            let mut restored = QueueEngine::<Owner>::restore(back);
            for (i, (cmd, want)) in log.iter().zip(&views).enumerate().skip(cut) {
                let applied = restored.apply(cmd, &mut out);
                if i < from {
                    out.list.clear();
                    restored.take_effects();
                    continue;
                }
                let got = view(&mut restored, applied, &mut out, &owners);
                prop_assert_eq!(&got, want, "entry {} after a dry snapshot at {} (gone from {}): {:?}", i, cut, from, cmd);
            }
            prop_assert_eq!(restored.snapshot(), follower.snapshot());
            prop_assert!(!restored.holds_seq_below(dry.next_seq()));
        }
    }
}

#[test]
fn a_dry_snapshot_leaves_the_bodies_out_and_keeps_their_sizes() {
    let mut e = QueueEngine::<Owner>::new(options(), 0);
    let mut out = Deliveries::default();
    for id in 1..=3 {
        let cmd = QueueCommand::Enqueue {
            msg: message(id, BasicProperties::default()),
            now: 0,
            from: None,
        };
        e.apply(&cmd, &mut out);
    }
    let dry = e.dry_snapshot();
    assert_eq!(dry.messages(), 3);
    assert!(e.holds_seq_below(dry.next_seq()));
    // Encoded, it is smaller than the full one by the bodies (8 bytes each here).
    let full_len = encoded_len(&e.snapshot());
    let dry_len = encoded_len(&dry);
    assert!(dry_len < full_len, "dry {dry_len} full {full_len}");
    let restored = QueueEngine::<Owner>::restore(dry);
    assert_eq!(
        restored.stats().message_bytes_ready,
        e.stats().message_bytes_ready
    );
    for m in restored.ready() {
        assert_eq!(m.msg.body.len(), 8);
        assert!(is_dry(&m.msg.body), "a restored dry body is recognised");
    }
    for m in e.ready() {
        assert!(!is_dry(&m.msg.body));
    }
    // Once the three are gone, the dry snapshot no longer needs them.
    e.apply(&QueueCommand::Purge, &mut out);
    assert!(!e.holds_seq_below(e.dry_snapshot().next_seq()));
    assert!(!e.holds_seq_below(4));
}

fn encoded_len(s: &EngineSnapshot) -> usize {
    serde_json::to_vec(s).unwrap().len()
}
