//! Publishers: declare (with an optional reference, for deduplication), publish (simple
//! entries and uncompressed sub-entry batches; each publishing id's messages are appended
//! to the stream's log), confirms once the group commit has made them durable (errors if
//! its fsync failed), and the last publishing id of a reference.

use crate::command::{key, sub_entries, PublishedBody, PublishedMessage};
use crate::compression;
use crate::connection::{Conn, Outbox, Publisher};
use crate::response::{self, Result, StreamError};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use warren_broker::auth::{Access, Resource};
use warren_broker::connections::{StreamClients, StreamPublisherInfo};
use warren_broker::stream::StreamPublished;
use warren_broker::Broker;

/// Largest publisher reference (RabbitMQ's limit).
const MAX_REFERENCE: usize = 256;

/// Publishing ids waiting for their epoch's group commit, and the task that confirms them.
pub(crate) struct Confirms {
    pending: Mutex<VecDeque<(u64, u8, u64)>>,
    /// The connection's publishers' counts.
    clients: Arc<StreamClients>,
    wake: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Confirms {
    pub fn start(
        broker: &Arc<Broker>,
        out: Arc<Outbox>,
        clients: Arc<StreamClients>,
    ) -> Arc<Confirms> {
        let c = Arc::new(Confirms {
            pending: Mutex::new(VecDeque::new()),
            clients,
            wake: Notify::new(),
            task: Mutex::new(None),
        });
        if let Some(p) = broker.persistence() {
            let mut synced = p.subscribe();
            let me = c.clone();
            let task = tokio::spawn(async move {
                loop {
                    let s = *synced.borrow_and_update();
                    me.flush(&out, s.synced_epoch, s.failed_epoch);
                    tokio::select! {
                        r = synced.changed() => if r.is_err() { break },
                        _ = me.wake.notified() => {}
                    }
                }
            });
            *c.task.lock() = Some(task);
        }
        c
    }

    fn push(&self, epoch: u64, publisher_id: u8, publishing_id: u64) {
        self.pending
            .lock()
            .push_back((epoch, publisher_id, publishing_id));
        self.wake.notify_one();
    }

    /// Confirms (or, for a failed fsync, errors) what `synced` covers, one frame per run of
    /// one publisher's ids.
    fn flush(&self, out: &Outbox, synced: u64, failed: u64) {
        let mut done: Vec<(u8, u64, bool)> = Vec::new();
        {
            let mut p = self.pending.lock();
            while let Some(&(epoch, pid, id)) = p.front() {
                if epoch > synced {
                    break;
                }
                p.pop_front();
                done.push((pid, id, epoch <= failed && failed != 0));
            }
        }
        if done.is_empty() {
            return;
        }
        {
            let publishers = self.clients.publishers.lock();
            for (pid, _, failed) in &done {
                if let Some(p) = publishers.get(pid) {
                    let counter = if *failed { &p.errored } else { &p.confirmed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        out.send(|w| {
            let mut i = 0;
            while i < done.len() {
                let (pid, _, failed) = done[i];
                let run = done[i..]
                    .iter()
                    .take_while(|(p, _, f)| *p == pid && *f == failed)
                    .count();
                let ids = &done[i..i + run];
                if failed {
                    w.frame(key::PUBLISH_ERROR, 1, |w| {
                        w.u8(pid);
                        w.u32(ids.len() as u32);
                        for (_, id, _) in ids {
                            w.u64(*id);
                            w.u16(response::INTERNAL_ERROR);
                        }
                    });
                } else {
                    w.frame(key::PUBLISH_CONFIRM, 1, |w| {
                        w.u8(pid);
                        w.u32(ids.len() as u32);
                        for (_, id, _) in ids {
                            w.u64(*id);
                        }
                    });
                }
                i += run;
            }
        });
    }

    pub fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

/// Writes a publish error for `ids` of publisher `pid`.
fn publish_error(out: &Outbox, pid: u8, ids: &[u64], code: u16) {
    out.send(|w| {
        w.frame(key::PUBLISH_ERROR, 1, |w| {
            w.u8(pid);
            w.u32(ids.len() as u32);
            for id in ids {
                w.u64(*id);
                w.u16(code);
            }
        })
    });
}

impl Conn {
    pub(crate) fn declare_publisher(
        &mut self,
        id: u8,
        reference: String,
        stream: &str,
    ) -> Result<()> {
        if reference.chars().count() > MAX_REFERENCE {
            return Err(StreamError::Precondition(
                "publisher reference too long".into(),
            ));
        }
        let q = self.stream(stream)?;
        self.access()
            .check(Access::Write, Resource::Queue, stream)
            .map_err(|e| StreamError::from_amqp(e, stream))?;
        if self.publishers.contains_key(&id) {
            return Err(StreamError::Precondition(format!(
                "publisher {id} already exists"
            )));
        }
        if !reference.is_empty()
            && self
                .publishers
                .values()
                .any(|p| p.reference == reference && p.queue.name == q.name)
        {
            return Err(StreamError::Precondition(format!(
                "publisher reference '{reference}' already in use on stream '{stream}'"
            )));
        }
        let info = Arc::new(StreamPublisherInfo {
            stream: q.name.to_string(),
            reference: reference.clone(),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            errored: AtomicU64::new(0),
        });
        self.clients.publishers.lock().insert(id, info.clone());
        self.publishers.insert(
            id,
            Publisher {
                queue: q,
                reference,
                info,
            },
        );
        Ok(())
    }

    pub(crate) fn delete_publisher(&mut self, id: u8) -> Result<()> {
        self.clients.publishers.lock().remove(&id);
        self.publishers
            .remove(&id)
            .map(|_| ())
            .ok_or(StreamError::NoPublisher(id))
    }

    pub(crate) fn query_publisher_sequence(
        &mut self,
        reference: &str,
        stream: &str,
    ) -> Result<u64> {
        let q = self.stream(stream)?;
        Ok(q.stream().map_or(0, |s| s.publisher_sequence(reference)))
    }

    pub(crate) fn publish(&mut self, pid: u8, messages: Vec<PublishedMessage>) {
        let Some(p) = self.publishers.get(&pid) else {
            let ids: Vec<u64> = messages.iter().map(|m| m.publishing_id).collect();
            publish_error(&self.out, pid, &ids, response::PUBLISHER_DOES_NOT_EXIST);
            return;
        };
        let q = p.queue.clone();
        let Some(stream) = q.stream().filter(|_| !q.is_deleted()) else {
            let ids: Vec<u64> = messages.iter().map(|m| m.publishing_id).collect();
            publish_error(&self.out, pid, &ids, response::STREAM_DOES_NOT_EXIST);
            return;
        };
        let mut duplicates = Vec::new();
        let info = p.info.clone();
        info.published
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        let errored = |n: u64| info.errored.fetch_add(n, Ordering::Relaxed);
        for m in messages {
            let id = m.publishing_id;
            let filter = m.filter_value.as_deref();
            let r = match &m.body {
                PublishedBody::Simple(b) => {
                    stream.publish_amqp10(&q, &p.reference, id, filter, [&b[..]])
                }
                PublishedBody::SubEntries {
                    compression,
                    count,
                    uncompressed_len,
                    data,
                } => {
                    let messages = compression::decompress(*compression, data, *uncompressed_len)
                        .map_err(|e| e.to_string())
                        .and_then(|plain| sub_entries(&plain, *count).map_err(|e| e.to_string()));
                    match messages {
                        Ok(msgs) => stream.publish_amqp10(
                            &q,
                            &p.reference,
                            id,
                            filter,
                            msgs.iter().map(|b| &b[..]),
                        ),
                        Err(e) => {
                            tracing::warn!(peer = %self.peer, error = %e, "sub-entry batch refused");
                            publish_error(
                                &self.out,
                                pid,
                                &[id],
                                response::PRECONDITION_FAILED_CODE,
                            );
                            errored(1);
                            continue;
                        }
                    }
                }
            };
            match r {
                Ok(StreamPublished::Appended { epoch }) => self.confirms.push(epoch, pid, id),
                Ok(StreamPublished::Duplicate) => duplicates.push(id),
                Err(e) => {
                    tracing::error!(stream = %q.name, error = %e, "stream append failed");
                    publish_error(&self.out, pid, &[id], response::INTERNAL_ERROR);
                    errored(1);
                }
            }
        }
        if !duplicates.is_empty() {
            info.confirmed
                .fetch_add(duplicates.len() as u64, Ordering::Relaxed);
            // As RabbitMQ: a duplicate is confirmed (it is in the stream already).
            self.out.send(|w| {
                w.frame(key::PUBLISH_CONFIRM, 1, |w| {
                    w.u8(pid);
                    w.u32(duplicates.len() as u32);
                    for id in &duplicates {
                        w.u64(*id);
                    }
                })
            });
        }
    }
}
