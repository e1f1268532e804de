//! Streams themselves: create (with RabbitMQ's arguments), delete, metadata (this node is
//! every stream's leader, with no replicas), stream statistics, and the command versions
//! this server speaks.

use crate::command::key;
use crate::connection::Conn;
use crate::response::{self, Result, StreamError};
use warren_broker::auth::{Access, Resource};
use warren_broker::stream::args::protocol_arguments;
use warren_broker::vhost::QueueDeclare;
use warren_protocol::FieldTable;

/// The create arguments as queue arguments (see
/// `warren_broker::stream::args::protocol_arguments`): a bad one is a precondition failure.
pub fn queue_arguments(args: &[(String, String)]) -> Result<FieldTable> {
    protocol_arguments(args).map_err(StreamError::Precondition)
}

impl Conn {
    pub(crate) fn create(&mut self, name: &str, args: &[(String, String)]) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(StreamError::Precondition(format!(
                "invalid stream name '{name}'"
            )));
        }
        self.access()
            .check(Access::Configure, Resource::Queue, name)
            .map_err(|e| StreamError::from_amqp(e, name))?;
        let arguments = queue_arguments(args)?;
        if self.vhost().queue(name).is_some() {
            return Err(StreamError::StreamAlreadyExists(name.to_string()));
        }
        let d = QueueDeclare {
            name: name.into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments,
        };
        self.vhost()
            .declare_queue(d, self.id)
            .map_err(|e| StreamError::from_amqp(e, name))?;
        tracing::info!(stream = name, vhost = %self.vhost().name, "stream created over the stream protocol");
        Ok(())
    }

    pub(crate) fn delete(&mut self, name: &str) -> Result<()> {
        self.stream(name)?;
        self.access()
            .check(Access::Configure, Resource::Queue, name)
            .map_err(|e| StreamError::from_amqp(e, name))?;
        self.vhost()
            .delete_queue(name, false, false, self.id)
            .map_err(|e| StreamError::from_amqp(e, name))?;
        Ok(())
    }

    pub(crate) fn metadata(&mut self, correlation_id: u32, streams: &[String]) {
        let found: Vec<(&str, bool)> = streams
            .iter()
            .map(|s| (s.as_str(), self.stream(s).is_ok()))
            .collect();
        let (host, port) = self.advertised();
        let any = found.iter().any(|(_, ok)| *ok);
        // Not a response with a code: brokers, then each stream's metadata.
        self.out.send(|w| {
            w.frame(key::METADATA | key::RESPONSE, 1, |w| {
                w.u32(correlation_id);
                if any {
                    w.u32(1);
                    w.u16(0);
                    w.string(&host);
                    w.u32(port as u32);
                } else {
                    w.u32(0);
                }
                w.u32(found.len() as u32);
                for (name, ok) in &found {
                    w.string(name);
                    if *ok {
                        w.u16(response::OK);
                        w.u16(0);
                    } else {
                        w.u16(response::STREAM_DOES_NOT_EXIST);
                        w.u16(0xffff);
                    }
                    w.u32(0); // no replicas
                }
            })
        });
    }

    pub(crate) fn stream_stats(&mut self, correlation_id: u32, name: &str) {
        let r = self.stream(name);
        let stats = r
            .as_ref()
            .ok()
            .and_then(|q| q.stream())
            .map(|s| s.offsets());
        self.out.respond(
            key::STREAM_STATS,
            correlation_id,
            response::code_of(&r),
            |w| match stats {
                Some((first, last)) => {
                    let last = last.map_or(-1, |l| l as i64);
                    let first = if last < 0 { -1 } else { first as i64 };
                    w.u32(3);
                    w.string("first_chunk_id");
                    w.i64(first);
                    w.string("committed_chunk_id");
                    w.i64(last);
                    w.string("committed_offset");
                    w.i64(last);
                }
                None => w.u32(0),
            },
        );
    }

    /// The versions of each command this server speaks; a client that takes deliver
    /// version 2 gets it.
    pub(crate) fn exchange_command_versions(
        &mut self,
        correlation_id: u32,
        client: &[(u16, u16, u16)],
    ) {
        self.deliver_v2 = client
            .iter()
            .any(|(k, min, max)| *k == key::DELIVER && *min <= 2 && *max >= 2);
        // Every key from 1 on, in order: some clients (rstream) index the list by key - 1.
        let ours: Vec<(u16, u16, u16)> = (key::DECLARE_PUBLISHER..=key::DELETE_SUPER_STREAM)
            .map(|k| match k {
                key::PUBLISH | key::DELIVER => (k, 1, 2),
                k => (k, 1, 1),
            })
            .collect();
        self.out.respond(
            key::EXCHANGE_COMMAND_VERSIONS,
            correlation_id,
            response::OK,
            |w| {
                w.u32(ours.len() as u32);
                for (k, min, max) in &ours {
                    w.u16(*k);
                    w.u16(*min);
                    w.u16(*max);
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_arguments_become_queue_arguments() {
        let t = queue_arguments(&[
            ("max-length-bytes".into(), "1000".into()),
            ("max-age".into(), "7D".into()),
            ("queue-leader-locator".into(), "least-leaders".into()),
        ])
        .unwrap();
        assert_eq!(
            t.get("x-max-length-bytes").and_then(|v| v.as_i64()),
            Some(1000)
        );
        assert_eq!(t.get("x-max-age").and_then(|v| v.as_str()), Some("7D"));
        assert_eq!(
            t.get("x-queue-leader-locator").and_then(|v| v.as_str()),
            Some("balanced")
        );
        assert_eq!(
            t.get("x-queue-type").and_then(|v| v.as_str()),
            Some("stream")
        );
        let e = queue_arguments(&[("max-length-bytes".into(), "lots".into())]).unwrap_err();
        assert_eq!(e.code(), response::PRECONDITION_FAILED_CODE);
        let e = queue_arguments(&[("x-overflow".into(), "drop-head".into())]).unwrap_err();
        assert_eq!(e.code(), response::PRECONDITION_FAILED_CODE);
    }
}
