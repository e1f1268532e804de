//! Delayed delivery without a plugin: `x-delayed-message` exchanges (as the
//! rabbitmq-delayed-message-exchange plugin defines them) hold a message with an `x-delay`
//! header (ms) until it is due, then route it by their `x-delayed-type`. Held messages are
//! kept in memory ordered by due time and, with persistence, in a store of their own
//! (`<data>/delayed/<vhost>/`), so they survive a restart; due times are wall-clock.
//!
//! A released message leaves the delayed store only once the queues it was routed to have it
//! on disk: the vhost's timer passes the group-commit epoch its publishes wait for to
//! [`Delayed::release`], and [`Delayed::ack_synced`] drops the record once that epoch is
//! synced. A crash in between releases it again at the next start (at least once, never lost).

use crate::message::Message;
use crate::persist::{encode_name, Persistence};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use warren_protocol::{FieldValue, ShortStr};
use warren_store::{Position, QueueStore};

struct Held {
    exchange: ShortStr,
    msg: Arc<Message>,
    pos: Option<Position>,
}

#[derive(Default)]
struct Inner {
    held: BTreeMap<(u64, u64), Held>,
    seq: u64,
    store: Option<QueueStore>,
    /// Released records waiting for the group commit of their queues' copies: (epoch, record).
    releasing: Vec<(u64, Position)>,
}

/// A message that is due: route it, then [`Delayed::release`] its record.
pub struct Due {
    pub exchange: ShortStr,
    pub msg: Arc<Message>,
    /// Its record in the delayed store (persistent messages on durable exchanges).
    pub record: Option<Position>,
}

#[derive(Default)]
pub struct Delayed {
    inner: Mutex<Inner>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `x-delay` header of a message, if positive.
pub fn delay_of(msg: &Message) -> Option<u64> {
    let d = msg.props().headers.as_ref()?.get("x-delay")?;
    let ms = d.as_i64().or_else(|| match d {
        FieldValue::F64(f) => Some(*f as i64),
        _ => d.as_str().and_then(|s| s.parse().ok()),
    })?;
    (ms > 0).then_some(ms as u64)
}

impl Delayed {
    /// Opens the vhost's delayed-message store and brings back what it held.
    pub fn open(vhost: &str, persistence: Option<&Persistence>) -> Self {
        let mut inner = Inner::default();
        if let Some(p) = persistence {
            match p.open_store(p.dir().join("delayed").join(encode_name(vhost))) {
                Ok((store, recovery)) => {
                    for r in recovery.flatten() {
                        if let Some((due, exchange, msg)) = decode(&r.payload) {
                            inner.seq += 1;
                            let seq = inner.seq;
                            inner.held.insert(
                                (due, seq),
                                Held {
                                    exchange,
                                    msg: Arc::new(msg),
                                    pos: Some(r.position),
                                },
                            );
                        }
                    }
                    if !inner.held.is_empty() {
                        tracing::info!(
                            vhost,
                            held = inner.held.len(),
                            "recovered delayed messages"
                        );
                    }
                    inner.store = Some(store);
                }
                Err(e) => {
                    tracing::error!(vhost, error = %e, "cannot open the delayed-message store; delayed messages will not survive a restart")
                }
            }
        }
        Delayed {
            inner: Mutex::new(inner),
        }
    }

    /// Holds a message for `delay_ms`. A persistent message on a durable exchange is on disk
    /// when this returns.
    pub fn hold(
        &self,
        exchange: &ShortStr,
        durable: bool,
        msg: Arc<Message>,
        delay_ms: u64,
    ) -> warren_store::Result<()> {
        let due = unix_ms() + delay_ms;
        let mut i = self.inner.lock();
        let mut pos = None;
        if durable && msg.is_persistent() {
            if let Some(store) = &mut i.store {
                let mut rec = Vec::new();
                rec.extend_from_slice(&due.to_be_bytes());
                rec.push(exchange.len() as u8);
                rec.extend_from_slice(exchange.as_bytes());
                let mut m = Vec::new();
                msg.encode_record(true, None, &mut m);
                rec.extend_from_slice(&m);
                pos = Some(store.append(&rec)?);
                store.sync()?;
            }
        }
        i.seq += 1;
        let seq = i.seq;
        i.held.insert(
            (due, seq),
            Held {
                exchange: exchange.clone(),
                msg,
                pos,
            },
        );
        Ok(())
    }

    /// Takes the messages that are due, in due order. Their records stay in the store until
    /// [`Delayed::release`] says where they went.
    pub fn take_due(&self) -> Vec<Due> {
        let mut i = self.inner.lock();
        if i.held.is_empty() {
            return Vec::new();
        }
        let now = unix_ms();
        let mut out = Vec::new();
        while let Some(entry) = i.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let h = entry.remove();
            out.push(Due {
                exchange: h.exchange,
                msg: h.msg,
                record: h.pos,
            });
        }
        out
    }

    /// A due message was routed. `durable_at`: the group-commit epoch after which every
    /// queue that took it has it on disk (None if none keeps it across a restart: the record
    /// goes at once). Not called for a message a queue failed to store: its record stays, and
    /// the next start releases it again.
    pub fn release(&self, record: Option<Position>, durable_at: Option<u64>) {
        let Some(pos) = record else { return };
        // Epoch 0 is synced at the next look.
        self.inner
            .lock()
            .releasing
            .push((durable_at.unwrap_or(0), pos));
    }

    /// Drops the records of released messages whose queues' copies are on disk (epochs up to
    /// `synced_epoch`; those of a failed epoch stay, to be released again after a restart).
    pub fn ack_synced(&self, synced_epoch: u64, failed_epoch: u64) {
        let mut i = self.inner.lock();
        if i.releasing.is_empty() {
            return;
        }
        let Inner {
            releasing, store, ..
        } = &mut *i;
        let mut acked = false;
        releasing.retain(|&(epoch, pos)| {
            if epoch > synced_epoch {
                return true;
            }
            if epoch != 0 && epoch <= failed_epoch {
                tracing::warn!(%pos, "a released delayed message may not have reached its queues' disks; it is released again after a restart");
                return false;
            }
            if let Some(store) = store.as_mut() {
                match store.ack(pos) {
                    Ok(()) => acked = true,
                    Err(e) => tracing::warn!(error = %e,
                        "cannot mark a released delayed message in its store; it is released again after a restart"),
                }
            }
            false
        });
        if acked {
            if let Some(store) = store.as_mut() {
                if let Err(e) = store.sync() {
                    tracing::warn!(error = %e,
                        "cannot sync the delayed-message store; messages released now may be released again after a restart");
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn decode(rec: &[u8]) -> Option<(u64, ShortStr, Message)> {
    let due = u64::from_be_bytes(rec.get(..8)?.try_into().ok()?);
    let n = *rec.get(8)? as usize;
    let exchange = ShortStr::from(std::str::from_utf8(rec.get(9..9 + n)?).ok()?);
    let (msg, _) = Message::decode_record(bytes::Bytes::copy_from_slice(rec.get(9 + n..)?))?;
    Some((due, exchange, msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn persistent(body: &'static [u8]) -> Arc<Message> {
        // Property flags: delivery-mode present; delivery mode 2.
        Arc::new(Message::new(
            "dx".into(),
            "rk".into(),
            Bytes::from_static(&[0x10, 0, 2]),
            Bytes::from_static(body),
        ))
    }

    /// Held records left on disk, as the next start would find them.
    fn held_after_restart(p: &Persistence) -> usize {
        Delayed::open("/", Some(p)).len()
    }

    #[test]
    fn a_released_record_stays_until_its_queues_copies_are_synced() {
        let dir = crate::testutil::TestDir::new("delayed-release");
        let p = Persistence::new(dir.path(), warren_store::FileBackend::shared());
        let exchange: ShortStr = "dx".into();
        {
            let d = Delayed::open("/", Some(&p));
            d.hold(&exchange, true, persistent(b"kept"), 1).unwrap();
            d.hold(&exchange, true, persistent(b"synced"), 1).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            let due = d.take_due();
            assert_eq!(due.len(), 2);
            // The first went to a queue whose group commit (epoch 7) has not happened yet;
            // the second to queues that keep nothing across a restart.
            d.release(due[0].record, Some(7));
            d.release(due[1].record, None);
            d.ack_synced(6, 0);
        }
        assert_eq!(
            held_after_restart(&p),
            1,
            "only the unsynced release may come back"
        );
        {
            let d = Delayed::open("/", Some(&p));
            std::thread::sleep(std::time::Duration::from_millis(2));
            let due = d.take_due();
            assert_eq!(&due[0].msg.body[..], b"kept");
            d.release(due[0].record, Some(9));
            d.ack_synced(9, 0);
        }
        assert_eq!(held_after_restart(&p), 0);
    }

    #[test]
    fn a_release_in_a_failed_epoch_or_not_stored_comes_back() {
        let dir = crate::testutil::TestDir::new("delayed-failed");
        let p = Persistence::new(dir.path(), warren_store::FileBackend::shared());
        let exchange: ShortStr = "dx".into();
        {
            let d = Delayed::open("/", Some(&p));
            d.hold(&exchange, true, persistent(b"failed epoch"), 1)
                .unwrap();
            d.hold(&exchange, true, persistent(b"not stored"), 1)
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            let due = d.take_due();
            d.release(due[0].record, Some(4));
            // due[1]: a queue's store refused it, so it is never released.
            d.ack_synced(5, 4);
        }
        assert_eq!(held_after_restart(&p), 2);
    }
}
