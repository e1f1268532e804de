//! The queue engine's tests: deterministic, no sockets, no sleeps. A recording sink stands
//! for the consumers' channels (with their prefetch credit) and time is a number.

use super::*;
use crate::queue::options::{Overflow, QueueOptions};
use bytes::Bytes;
use std::collections::HashMap;
use warren_protocol::BasicProperties;

/// Consumers' channels as the engine sees them: credit per consumer (None: unlimited) and
/// every delivery recorded as (consumer, message id, redelivered).
#[derive(Default)]
struct Sink {
    credit: HashMap<u32, Option<u32>>,
    delivered: Vec<(u32, u64, bool)>,
    /// The same deliveries: consumer, checkout id and the message as handed out.
    taken: Vec<(u32, CheckoutId, QueuedMessage)>,
    /// Messages "paged out" to a fake store, by position offset.
    store: Vec<Message>,
    /// Whether checkouts may spill, and the messages spilled (segment 2 of the fake store).
    spilling: bool,
    spilled: Vec<Message>,
}

impl Env<u32> for Sink {
    fn offer(&mut self, c: &Consumer<u32>, qm: &QueuedMessage, checkout: CheckoutId) -> bool {
        let credit = self.credit.entry(c.consumer_id).or_insert(Some(0));
        match credit {
            Some(0) => return false,
            Some(n) => *n -= 1,
            None => {}
        }
        self.delivered
            .push((c.consumer_id, id_of(qm), qm.redelivered));
        self.taken.push((c.consumer_id, checkout, qm.clone()));
        true
    }

    fn read_paged(
        &mut self,
        from: Position,
        max_bytes: usize,
    ) -> warren_store::Result<(Vec<RecoveredMessage>, Position)> {
        let mut out = Vec::new();
        let mut at = from.offset as usize;
        let mut bytes = 0;
        while at < self.store.len() && bytes < max_bytes.max(1) {
            let mut rec = Vec::new();
            self.store[at].encode_record(true, None, &mut rec);
            bytes += rec.len();
            out.push(RecoveredMessage {
                position: pos(at as u64),
                payload: Bytes::from(rec),
                redelivered: false,
            });
            at += 1;
        }
        Ok((out, pos(at as u64)))
    }

    fn can_spill(&self) -> bool {
        self.spilling
    }

    fn spill(&mut self, msg: &Message) -> Option<Position> {
        self.spilled.push(msg.copy());
        Some(Position {
            segment: 2,
            offset: (self.spilled.len() - 1) as u32,
        })
    }

    fn read_spilled(
        &mut self,
        positions: &[Position],
        _max_bytes: usize,
    ) -> Vec<warren_store::Result<Bytes>> {
        positions
            .iter()
            .map(|p| {
                let m = match p.segment {
                    1 => &self.store[p.offset as usize],
                    _ => &self.spilled[p.offset as usize],
                };
                let mut rec = Vec::new();
                m.encode_record(false, None, &mut rec);
                Ok(Bytes::from(rec))
            })
            .collect()
    }
}

impl Sink {
    /// The message id of a spilled checkout.
    fn spilled_id(&self, p: Position) -> u64 {
        let m = match p.segment {
            1 => &self.store[p.offset as usize],
            _ => &self.spilled[p.offset as usize],
        };
        u64::from_be_bytes(m.body[..8].try_into().unwrap())
    }
}

fn pos(offset: u64) -> Position {
    Position {
        segment: 1,
        offset: offset as _,
    }
}

fn message(id: u64, props: BasicProperties) -> Arc<Message> {
    Arc::new(Message::new(
        "".into(),
        "q".into(),
        props.to_bytes(),
        Bytes::copy_from_slice(&id.to_be_bytes()),
    ))
}

fn plain(id: u64) -> Arc<Message> {
    message(id, BasicProperties::default())
}

fn plain_message(id: u64) -> Message {
    Message::new(
        "".into(),
        "q".into(),
        BasicProperties::default().to_bytes(),
        Bytes::copy_from_slice(&id.to_be_bytes()),
    )
}

fn id_of(qm: &QueuedMessage) -> u64 {
    u64::from_be_bytes(qm.msg.body[..8].try_into().unwrap())
}

/// The owner of what basic.get takes in these tests (consumers own as their id).
const GETTER: Owner = 1_000;

/// A basic.get with an ack expected: the message and its checkout.
fn get_acked(e: &mut QueueEngine<u32>, s: &mut Sink) -> (QueuedMessage, (Owner, CheckoutId)) {
    let got = e.get(Some(GETTER), 0, s).unwrap();
    (got.qm, (GETTER, got.checkout.unwrap()))
}

/// basic.get without ack until the queue is empty: the messages' ids and redelivered flags.
fn drain(e: &mut QueueEngine<u32>, s: &mut Sink, now: u64) -> Vec<(u64, bool)> {
    std::iter::from_fn(|| e.get(None, now, s))
        .map(|g| (id_of(&g.qm), g.qm.redelivered))
        .collect()
}

fn consumer(id: u32) -> Consumer<u32> {
    Consumer {
        handle: id,
        consumer_id: id,
        owner: id as Owner,
        tag: format!("c{id}").into(),
        no_ack: false,
        exclusive: false,
        priority: 0,
        prefetch: 0,
    }
}

fn engine(opts: QueueOptions) -> QueueEngine<u32> {
    QueueEngine::new(opts, 0)
}

fn with_dlx(mut opts: QueueOptions) -> QueueOptions {
    opts.dead_letter_exchange = Some("dlx".into());
    opts
}

/// The dead letters among the effects: (message id, reason).
fn dead_letters(effects: &[Effect]) -> Vec<(u64, DeathReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeadLetter(d) => Some((
                u64::from_be_bytes(d.msg.body[..8].try_into().unwrap()),
                d.reason,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn dispatch_is_round_robin_among_consumers_with_credit() {
    let mut e = engine(QueueOptions::default());
    let mut s = Sink::default();
    for c in 1..=3 {
        s.credit.insert(c, Some(10));
        e.add_consumer(consumer(c), 0).unwrap();
    }
    for id in 0..6 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    let who: Vec<u32> = s.delivered.iter().map(|d| d.0).collect();
    assert_eq!(who, [1, 2, 3, 1, 2, 3]);
    assert_eq!(e.stats().messages_unacknowledged, 6);
    assert!(e.is_empty());
}

#[test]
fn prefetch_credit_holds_messages_back_until_it_is_given() {
    let mut e = engine(QueueOptions::default());
    let mut s = Sink::default();
    s.credit.insert(1, Some(2));
    e.add_consumer(consumer(1), 0).unwrap();
    for id in 0..5 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    assert_eq!(s.delivered.len(), 2);
    assert_eq!(e.len(), 3);
    // Acks give credit back (the channel's part); the queue then dispatches.
    let acks: Vec<(Owner, CheckoutId)> = s.taken.iter().map(|t| (1, t.1)).collect();
    assert_eq!(e.settle(acks), 2);
    s.credit.insert(1, Some(2));
    e.dispatch(0, &mut s);
    let ids: Vec<u64> = s.delivered.iter().map(|d| d.1).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert_eq!(e.stats().acked, 2);
}

#[test]
fn requeued_messages_go_back_to_their_places_marked_redelivered() {
    let mut e = engine(QueueOptions::default());
    let mut s = Sink::default();
    for id in 0..4 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    let (a, ca) = get_acked(&mut e, &mut s);
    let (b, _) = get_acked(&mut e, &mut s);
    let (c, cc) = get_acked(&mut e, &mut s);
    assert_eq!((id_of(&a), id_of(&b), id_of(&c)), (0, 1, 2));
    // Requeued out of order: back in publish order, ahead of message 3.
    e.return_checkouts([cc, ca], 0, &mut s);
    assert_eq!(drain(&mut e, &mut s, 0), [(0, true), (2, true), (3, false)]);
    let held: Vec<u64> = e.checked_out(GETTER).map(|c| id_of(&c.qm)).collect();
    assert_eq!(held, [1], "the getter still holds message 1");
    assert_eq!(
        e.stats().messages_unacknowledged,
        1,
        "message 1 is still out"
    );
}

#[test]
fn higher_priority_messages_go_first() {
    let opts = QueueOptions {
        max_priority: 5,
        ..Default::default()
    };
    let mut e = engine(opts);
    let mut s = Sink::default();
    let prio = |p| BasicProperties {
        priority: Some(p),
        ..Default::default()
    };
    e.enqueue(message(0, prio(1)), None, 0, &mut s);
    e.enqueue(message(1, prio(9)), None, 0, &mut s); // capped at 5
    e.enqueue(message(2, BasicProperties::default()), None, 0, &mut s);
    e.enqueue(message(3, prio(5)), None, 0, &mut s);
    let order: Vec<u64> = drain(&mut e, &mut s, 0).iter().map(|m| m.0).collect();
    assert_eq!(order, [1, 3, 0, 2]);
}

#[test]
fn consumer_priority_and_single_active_consumer_failover() {
    // Consumer priority: the higher one gets everything while it has credit.
    let mut e = engine(QueueOptions::default());
    let mut s = Sink::default();
    s.credit.insert(1, Some(1));
    s.credit.insert(2, None);
    e.add_consumer(consumer(2), 0).unwrap();
    e.add_consumer(
        Consumer {
            priority: 10,
            ..consumer(1)
        },
        0,
    )
    .unwrap();
    for id in 0..3 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    let who: Vec<u32> = s.delivered.iter().map(|d| d.0).collect();
    assert_eq!(who, [1, 2, 2]);

    // Single active consumer: only the first; when it goes, the next takes over at once.
    let opts = QueueOptions {
        single_active_consumer: true,
        ..Default::default()
    };
    let mut e = engine(opts);
    let mut s = Sink::default();
    s.credit.insert(1, Some(1));
    s.credit.insert(2, None);
    e.add_consumer(consumer(1), 0).unwrap();
    e.add_consumer(consumer(2), 0).unwrap();
    for id in 0..3 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    assert_eq!(s.delivered, [(1, 0, false)], "the second consumer waits");
    let lost_last = e.remove_consumers(|c| c.consumer_id == 1, 0, &mut s);
    assert!(!lost_last);
    let who: Vec<(u32, u64)> = s.delivered.iter().map(|d| (d.0, d.1)).collect();
    assert_eq!(who, [(1, 0), (2, 1), (2, 2)]);
    assert!(
        e.remove_consumers(|_| true, 0, &mut s),
        "the last consumer went"
    );
}

#[test]
fn the_delivery_limit_dead_letters_a_message_requeued_too_often() {
    let opts = with_dlx(QueueOptions {
        delivery_limit: Some(1),
        ..Default::default()
    });
    let mut e = engine(opts);
    let mut s = Sink::default();
    e.enqueue(plain(7), None, 0, &mut s);
    let (_, c) = get_acked(&mut e, &mut s);
    e.return_checkouts([c], 0, &mut s);
    let (m, c) = get_acked(&mut e, &mut s);
    assert_eq!(m.delivery_count, 1);
    assert!(m
        .msg
        .props()
        .headers
        .as_ref()
        .unwrap()
        .get("x-delivery-count")
        .is_some());
    assert!(dead_letters(&e.take_effects()).is_empty());
    e.return_checkouts([c], 0, &mut s);
    assert!(e.is_empty());
    assert_eq!(e.stats().messages_unacknowledged, 0);
    assert_eq!(
        dead_letters(&e.take_effects()),
        [(7, DeathReason::DeliveryLimit)]
    );
}

#[test]
fn ttl_expires_the_head_only_when_its_time_has_come() {
    let opts = with_dlx(QueueOptions {
        message_ttl: Some(100),
        ..Default::default()
    });
    let mut e = engine(opts);
    let mut s = Sink::default();
    e.enqueue(plain(0), None, 1_000, &mut s);
    let short = BasicProperties {
        expiration: Some("10".into()),
        ..Default::default()
    };
    e.enqueue(message(1, short), None, 1_050, &mut s);
    // Message 1 expired at 1,060 but waits behind the head (RabbitMQ looks at the head only).
    assert!(!e.tick(1_099));
    assert_eq!(e.len(), 2);
    // The head's time (1,000 + 100) has come: it goes, and the expired one behind it too.
    assert!(!e.tick(1_100));
    assert!(e.is_empty());
    assert_eq!(
        dead_letters(&e.take_effects()),
        [(0, DeathReason::Expired), (1, DeathReason::Expired)]
    );
    // A get never returns an expired message.
    e.enqueue(plain(2), None, 2_000, &mut s);
    assert!(e.get(None, 2_101, &mut s).is_none());
}

#[test]
fn a_ttl_of_zero_delivers_to_a_waiting_consumer_or_drops() {
    let opts = QueueOptions {
        message_ttl: Some(0),
        ..Default::default()
    };
    let mut e = engine(opts);
    let mut s = Sink::default();
    e.enqueue(plain(0), None, 500, &mut s);
    assert!(e.get(None, 500, &mut s).is_none(), "dropped: nobody waited");
    s.credit.insert(1, Some(1));
    e.add_consumer(consumer(1), 500).unwrap();
    e.enqueue(plain(1), None, 500, &mut s);
    assert_eq!(s.delivered, [(1, 1, false)]);
}

#[test]
fn max_length_in_each_overflow_mode() {
    // drop-head: the oldest goes to the dead-letter exchange.
    let opts = with_dlx(QueueOptions {
        max_length: Some(2),
        ..Default::default()
    });
    let mut e = engine(opts.clone());
    let mut s = Sink::default();
    for id in 0..3 {
        let m = plain(id);
        e.admit(&m).unwrap();
        e.enqueue(m, None, 0, &mut s);
    }
    assert_eq!(e.len(), 2);
    assert_eq!(dead_letters(&e.take_effects()), [(0, DeathReason::Maxlen)]);
    // reject-publish: the new one is refused, nothing dead-lettered.
    let mut e = engine(QueueOptions {
        overflow: Overflow::RejectPublish,
        ..opts.clone()
    });
    for id in 0..2 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    assert_eq!(e.admit(&plain(2)), Err(Rejected));
    assert!(dead_letters(&e.take_effects()).is_empty());
    // reject-publish-dlx: refused and dead-lettered.
    let mut e = engine(QueueOptions {
        overflow: Overflow::RejectPublishDlx,
        ..opts.clone()
    });
    for id in 0..2 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    assert_eq!(e.admit(&plain(2)), Err(Rejected));
    assert_eq!(dead_letters(&e.take_effects()), [(2, DeathReason::Maxlen)]);
    // max-length-bytes counts bodies (8 bytes each here).
    let mut e = engine(with_dlx(QueueOptions {
        max_length_bytes: Some(20),
        ..Default::default()
    }));
    for id in 0..3 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    assert_eq!(e.len(), 2);
}

#[test]
fn over_budget_checkouts_keep_only_their_store_position_and_come_back_in_order() {
    let mut e = engine(QueueOptions::default());
    let mut s = Sink {
        spilling: true,
        ..Default::default()
    };
    // No room in memory: every checkout keeps only its position.
    e.set_spill_budget(0);
    for id in 0..10 {
        e.enqueue(plain(id), None, 0, &mut s);
    }
    s.credit.insert(1, None);
    e.add_consumer(consumer(1), 0).unwrap();
    e.dispatch(0, &mut s);
    let ids: Vec<u64> = s.delivered.iter().map(|d| d.1).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert_eq!(e.checked_out(1).count(), 0);
    let spilled = e.held_spilled(1);
    assert_eq!(spilled.len(), 10);
    assert_eq!(s.spilled.len(), 10, "transient messages were written out");
    assert_eq!(e.stats().messages_unacknowledged, 10);
    e.take_effects();

    // Ack one spilled checkout: its record is acked in the store.
    let (c, p) = spilled[5];
    assert_eq!(e.settle([(1, c)]), 1);
    assert!(matches!(e.take_effects()[..], [Effect::StoreAck(q)] if q == p));

    // The consumer's channel goes: all nine come back, the spilled ones in the store only.
    e.remove_consumers(|c| c.consumer_id == 1, 0, &mut s);
    e.return_all(1, 0, &mut s);
    assert_eq!(e.len(), 9);
    // They wait in the store; one batch of them is read back, ready for the next consumer.
    assert!(s.spilled.len() >= 9);
    // A newer ready message is delivered after them.
    e.enqueue(plain(10), None, 0, &mut s);
    s.delivered.clear();
    s.credit.insert(2, None);
    e.add_consumer(consumer(2), 0).unwrap();
    e.dispatch(0, &mut s);
    let back: Vec<(u64, bool)> = s.delivered.iter().map(|d| (d.1, d.2)).collect();
    let want: Vec<(u64, bool)> = [0, 1, 2, 3, 4, 6, 7, 8, 9]
        .into_iter()
        .map(|id| (id, true))
        .chain([(10, false)])
        .collect();
    assert_eq!(back, want);
    assert_eq!(e.spilled_len(), 0);
    assert_eq!(e.stats().messages_unacknowledged, 10);
}

#[test]
fn a_spilled_checkout_rejected_is_dead_lettered_with_its_body() {
    let mut e = engine(with_dlx(QueueOptions::default()));
    let mut s = Sink {
        spilling: true,
        ..Default::default()
    };
    e.set_spill_budget(0);
    e.enqueue(plain(7), None, 0, &mut s);
    let (_, c) = get_acked(&mut e, &mut s);
    assert_eq!(e.held_spilled(GETTER).len(), 1);
    e.take_effects();
    e.discard([c], &mut s);
    let ids: Vec<u64> = dead_letters(&e.take_effects())
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(ids, [7]);
    assert_eq!(e.stats().messages_unacknowledged, 0);
}

#[test]
fn rejected_messages_are_dead_lettered_with_their_reason_and_the_queues_dlx() {
    let mut opts = with_dlx(QueueOptions::default());
    opts.dead_letter_routing_key = Some("dead".into());
    let mut e = engine(opts);
    let mut s = Sink::default();
    e.enqueue(plain(4), None, 0, &mut s);
    let (_, c) = get_acked(&mut e, &mut s);
    e.take_effects();
    e.discard([c], &mut s);
    let effects = e.take_effects();
    let Some(Effect::DeadLetter(d)) = effects.first() else {
        panic!("no dead letter: {effects:?}")
    };
    assert_eq!(d.reason, DeathReason::Rejected);
    assert_eq!(d.exchange.as_str(), "dlx");
    assert_eq!(d.routing_key.as_deref(), Some("dead"));
    assert_eq!(e.stats().messages_unacknowledged, 0);
}

#[test]
fn store_effects_follow_what_happens_to_stored_messages() {
    let mut e = engine(QueueOptions::default());
    let mut s = Sink::default();
    e.enqueue(plain(0), Some(pos(0)), 0, &mut s);
    e.enqueue(plain(1), Some(pos(1)), 0, &mut s);
    e.enqueue(plain(2), Some(pos(2)), 0, &mut s);
    let (_, c) = get_acked(&mut e, &mut s); // delivered, awaiting an ack: marked delivered
    let _ = e.get(None, 0, &mut s); // no-ack: gone from the store
    let marks: Vec<String> = e.take_effects().iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(marks.len(), 2);
    assert!(marks[0].starts_with("StoreDelivered"), "{marks:?}");
    assert!(marks[1].starts_with("StoreAck"), "{marks:?}");
    // A purge with one message still unacked acks the ready ones only.
    assert_eq!(e.purge(), 1);
    let effects = e.take_effects();
    assert!(matches!(effects[..], [Effect::StoreAck(p)] if p == pos(2)));
    // The ack removes the acked message; with nothing unacked the store then goes whole.
    e.settle([c]);
    assert!(matches!(e.take_effects()[..], [Effect::StoreAck(p)] if p == pos(0)));
    e.enqueue(plain(3), Some(pos(3)), 0, &mut s);
    assert_eq!(e.purge(), 1);
    assert!(matches!(e.take_effects()[..], [Effect::StorePurge]));
}

#[test]
fn paged_messages_come_back_in_order_when_the_queue_drains() {
    let mut e = engine(QueueOptions::default());
    let mut s = Sink::default();
    e.enqueue(plain(0), None, 0, &mut s);
    for id in 1..4 {
        s.store.push(plain_message(id));
        e.push_paged(pos(id - 1), 0, &mut s);
    }
    assert_eq!(e.len(), 4);
    let order: Vec<u64> = drain(&mut e, &mut s, 0).iter().map(|m| m.0).collect();
    assert_eq!(order, [0, 1, 2, 3]);
}

#[test]
fn an_unused_queue_expires_after_x_expires_without_consumers() {
    let mut e = engine(QueueOptions {
        expires: Some(1_000),
        ..Default::default()
    });
    let mut s = Sink::default();
    assert!(!e.tick(1_000));
    e.touch(900);
    assert!(!e.tick(1_800));
    assert!(e.tick(1_901));
    s.credit.insert(1, Some(0));
    e.add_consumer(consumer(1), 2_000).unwrap();
    assert!(!e.tick(10_000), "a queue with a consumer is in use");
}

#[test]
fn an_exclusive_consumer_excludes_others() {
    let mut e = engine(QueueOptions::default());
    e.add_consumer(
        Consumer {
            exclusive: true,
            ..consumer(1)
        },
        0,
    )
    .unwrap();
    assert_eq!(
        e.add_consumer(consumer(2), 0),
        Err(ConsumeRefused::ExclusiveInUse)
    );
}

mod model {
    //! Random command sequences against a reference model of where each message is: ready,
    //! out with a consumer (or a get), or gone (settled, dead-lettered, purged). The engine
    //! must never lose or duplicate a message, and its counts must match the model's.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Cmd {
        Publish,
        AddConsumer {
            credit: Option<u8>,
        },
        /// basic.cancel (its checkouts stay with it) or its channel closing (they come back).
        RemoveConsumer {
            k: usize,
            channel_closes: bool,
        },
        Credit {
            consumer: usize,
            n: u8,
        },
        Ack(usize),
        Requeue(usize),
        Reject(usize),
        Get {
            ack: bool,
        },
        Purge,
        Tick(u16),
    }

    fn cmd() -> impl Strategy<Value = Cmd> {
        prop_oneof![
            6 => Just(Cmd::Publish),
            1 => proptest::option::of(0u8..4).prop_map(|credit| Cmd::AddConsumer { credit }),
            1 => ((0usize..4), any::<bool>()).prop_map(|(k, channel_closes)| Cmd::RemoveConsumer { k, channel_closes }),
            2 => ((0usize..4), (1u8..4)).prop_map(|(consumer, n)| Cmd::Credit { consumer, n }),
            3 => (0usize..8).prop_map(Cmd::Ack),
            2 => (0usize..8).prop_map(Cmd::Requeue),
            1 => (0usize..8).prop_map(Cmd::Reject),
            2 => any::<bool>().prop_map(|ack| Cmd::Get { ack }),
            1 => Just(Cmd::Purge),
            2 => (0u16..300).prop_map(Cmd::Tick),
        ]
    }

    fn opts() -> impl Strategy<Value = QueueOptions> {
        (
            proptest::option::of(50u64..400),
            proptest::option::of(1u64..6),
            proptest::option::of(1u64..3),
            0u8..3,
            any::<bool>(),
        )
            .prop_map(|(ttl, max_length, delivery_limit, max_priority, sac)| {
                with_dlx(QueueOptions {
                    message_ttl: ttl,
                    max_length,
                    delivery_limit,
                    max_priority,
                    single_active_consumer: sac,
                    ..Default::default()
                })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn no_message_is_lost_or_duplicated(opts in opts(), spill in any::<bool>(), cmds in proptest::collection::vec(cmd(), 1..120)) {
            let mut e = engine(opts);
            let mut s = Sink::default();
            if spill {
                // Every checkout and requeue that may leave memory does.
                e.set_spill_budget(0);
                s.spilling = true;
            }
            let mut now = 0u64;
            let mut next_id = 0u64;
            let mut next_consumer = 1u32;
            let mut consumers: Vec<u32> = Vec::new();
            // The model: where every message is.
            let mut ready: BTreeSet<u64> = BTreeSet::new();
            // Checked out: (owner, checkout id, message id).
            let mut out: Vec<(Owner, CheckoutId, u64)> = Vec::new();
            let mut gone: BTreeSet<u64> = BTreeSet::new();
            let mut owners: BTreeSet<Owner> = BTreeSet::from([GETTER]);
            let mut seen = 0usize; // deliveries of s.taken already accounted for
            for c in cmds {
                match c {
                    Cmd::Publish => {
                        let m = plain(next_id);
                        ready.insert(next_id);
                        next_id += 1;
                        if e.admit(&m).is_ok() {
                            e.enqueue(m, None, now, &mut s);
                        } else {
                            ready.remove(&(next_id - 1));
                            gone.insert(next_id - 1);
                        }
                    }
                    Cmd::AddConsumer { credit } => {
                        let id = next_consumer;
                        next_consumer += 1;
                        s.credit.insert(id, credit.map(u32::from));
                        if e.add_consumer(consumer(id), now).is_ok() {
                            consumers.push(id);
                            owners.insert(id as Owner);
                            e.dispatch(now, &mut s);
                        }
                    }
                    Cmd::RemoveConsumer { k, channel_closes } => {
                        if !consumers.is_empty() {
                            let id = consumers.remove(k % consumers.len());
                            e.remove_consumers(|c| c.consumer_id == id, now, &mut s);
                            if channel_closes {
                                // What it held goes back.
                                let (back, keep): (Vec<_>, Vec<_>) = out.drain(..).partition(|o| o.0 == id as Owner);
                                out = keep;
                                for o in &back { ready.insert(o.2); }
                                e.return_all(id as Owner, now, &mut s);
                            }
                        }
                    }
                    Cmd::Credit { consumer, n } => {
                        if !consumers.is_empty() {
                            let id = consumers[consumer % consumers.len()];
                            if let Some(Some(c)) = s.credit.get_mut(&id) { *c += u32::from(n); }
                            e.dispatch(now, &mut s);
                        }
                    }
                    Cmd::Ack(k) | Cmd::Reject(k) if !out.is_empty() => {
                        let (owner, checkout, id) = out.remove(k % out.len());
                        gone.insert(id);
                        if matches!(c, Cmd::Reject(_)) {
                            e.discard([(owner, checkout)], &mut s);
                        } else {
                            prop_assert_eq!(e.settle([(owner, checkout)]), 1);
                        }
                        // Settling twice does nothing.
                        prop_assert_eq!(e.settle([(owner, checkout)]), 0);
                    }
                    Cmd::Requeue(k) if !out.is_empty() => {
                        let (owner, checkout, id) = out.remove(k % out.len());
                        ready.insert(id);
                        e.return_checkouts([(owner, checkout)], now, &mut s);
                    }
                    Cmd::Ack(_) | Cmd::Reject(_) | Cmd::Requeue(_) => {}
                    Cmd::Get { ack } => {
                        if let Some(got) = e.get(ack.then_some(GETTER), now, &mut s) {
                            let id = id_of(&got.qm);
                            prop_assert!(ready.remove(&id), "get returned message {} that was not ready", id);
                            match got.checkout {
                                Some(checkout) => out.push((GETTER, checkout, id)),
                                None => { gone.insert(id); }
                            }
                            prop_assert_eq!(ack, got.checkout.is_some());
                            prop_assert_eq!(got.remaining as usize, e.len());
                        }
                    }
                    Cmd::Purge => {
                        let n = e.purge() as usize;
                        prop_assert_eq!(n, ready.len());
                        gone.extend(std::mem::take(&mut ready));
                    }
                    Cmd::Tick(ms) => {
                        now += u64::from(ms);
                        e.tick(now);
                    }
                }
                // Deliveries to consumers since the last step: each was ready, now out.
                for (cid, checkout, m) in &s.taken[seen..] {
                    let id = id_of(m);
                    prop_assert!(ready.remove(&id), "message {} delivered twice or never ready", id);
                    out.push((*cid as Owner, *checkout, id));
                }
                seen = s.taken.len();
                // Dead letters (expiry, max-length, delivery limit): each was ready.
                for (id, reason) in dead_letters(&e.take_effects()) {
                    if reason == DeathReason::Rejected { continue; }
                    prop_assert!(ready.remove(&id), "message {} dead-lettered ({:?}) but not ready", id, reason);
                    gone.insert(id);
                }
                prop_assert_eq!(e.len(), ready.len(), "ready count");
                prop_assert_eq!(e.stats().messages_unacknowledged as usize, out.len(), "unacked count");
                // Each owner holds exactly what the model says, in checkout order.
                for &owner in &owners {
                    let mut held: Vec<(CheckoutId, u64)> = e.checked_out(owner).map(|c| (c.id, id_of(&c.qm))).collect();
                    held.extend(e.held_spilled(owner).into_iter().map(|(c, p)| (c, s.spilled_id(p))));
                    held.sort_unstable();
                    let mut want: Vec<(CheckoutId, u64)> = out.iter().filter(|o| o.0 == owner).map(|o| (o.1, o.2)).collect();
                    want.sort_unstable();
                    prop_assert_eq!(held, want, "checkouts of owner {}", owner);
                }
                // Owners that hold nothing and no longer consume are forgotten.
                let live = consumers.len() + owners.iter().filter(|&&o| !consumers.contains(&(o as u32)) && out.iter().any(|x| x.0 == o)).count();
                prop_assert_eq!(e.owners(), live, "owner entries");
            }
            // Conservation: every message is in exactly one place.
            let total = ready.len() + out.len() + gone.len();
            prop_assert_eq!(total as u64, next_id);
        }
    }
}
