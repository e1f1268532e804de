//! Super streams (RabbitMQ 3.13): a durable direct exchange (argument `x-super-stream`) whose
//! partitions are streams bound to it, each with its binding key and its place as the binding
//! argument `x-stream-partition-order`. Create and delete them, `route` a routing key to its
//! partitions, list the `partitions` in order. Every node is every partition's leader.

use crate::command::key;
use crate::connection::Conn;
use crate::response::{self, Result, StreamError};
use crate::streams::queue_arguments;
use warren_broker::auth::{Access, Resource};
use warren_broker::exchange::Destination;
use warren_broker::vhost::{ExchangeDeclare, QueueDeclare};
use warren_protocol::{FieldTable, FieldValue};

/// The binding argument that orders a super stream's partitions.
const PARTITION_ORDER: &str = "x-stream-partition-order";

impl Conn {
    fn super_stream_access(&self, name: &str, access: Access) -> Result<()> {
        self.access()
            .check(access, Resource::Exchange, name)
            .map_err(|e| StreamError::from_amqp(e, name))
    }

    pub(crate) fn create_super_stream(
        &mut self,
        name: &str,
        partitions: &[String],
        binding_keys: &[String],
        args: &[(String, String)],
    ) -> Result<()> {
        let bad = |why: String| Err(StreamError::Precondition(why));
        if name.is_empty() || name.len() > 255 {
            return bad(format!("invalid super stream name '{name}'"));
        }
        if partitions.is_empty() {
            return bad("a super stream needs at least one partition".into());
        }
        if partitions.len() != binding_keys.len() {
            return bad(format!(
                "{} partitions but {} binding keys",
                partitions.len(),
                binding_keys.len()
            ));
        }
        if let Some(p) = partitions.iter().find(|p| p.is_empty() || p.len() > 255) {
            return bad(format!("invalid partition name '{p}'"));
        }
        self.super_stream_access(name, Access::Configure)?;
        self.super_stream_access(name, Access::Read)?;
        for p in partitions {
            for a in [Access::Configure, Access::Write] {
                self.access()
                    .check(a, Resource::Queue, p)
                    .map_err(|e| StreamError::from_amqp(e, p))?;
            }
        }
        let arguments = queue_arguments(args)?;
        let vh = self.vhost().clone();
        if vh.exchange(name).is_some() || partitions.iter().any(|p| vh.queue(p).is_some()) {
            return Err(StreamError::StreamAlreadyExists(name.to_string()));
        }
        let mut xargs = FieldTable::new();
        xargs.insert("x-super-stream", FieldValue::Bool(true));
        vh.declare_exchange(ExchangeDeclare {
            name: name.into(),
            kind: "direct".into(),
            durable: true,
            arguments: xargs,
            ..Default::default()
        })
        .map_err(|e| StreamError::from_amqp(e, name))?;
        let made = partitions
            .iter()
            .zip(binding_keys)
            .enumerate()
            .try_for_each(|(i, (p, k))| {
                vh.declare_queue(
                    QueueDeclare {
                        name: p.as_str().into(),
                        passive: false,
                        durable: true,
                        exclusive: false,
                        auto_delete: false,
                        arguments: arguments.clone(),
                    },
                    self.id,
                )?;
                let mut bargs = FieldTable::new();
                bargs.insert(PARTITION_ORDER, FieldValue::I32(i as i32));
                vh.bind_queue(p, name, k.as_str().into(), bargs, self.id)
            });
        if let Err(e) = made {
            // What was made goes again, as RabbitMQ undoes a creation that failed.
            for p in partitions {
                let _ = vh.delete_queue(p, false, false, self.id);
            }
            let _ = vh.delete_exchange(name, false);
            return Err(StreamError::from_amqp(e, name));
        }
        tracing::info!(super_stream = name, partitions = partitions.len(), vhost = %vh.name, "super stream created over the stream protocol");
        Ok(())
    }

    /// The partitions of super stream `name`, in their order (its exchange's bindings to
    /// streams, by `x-stream-partition-order`).
    fn partition_names(&self, name: &str) -> Result<Vec<String>> {
        let x = self
            .vhost()
            .exchange(name)
            .ok_or_else(|| StreamError::StreamDoesNotExist(name.to_string()))?;
        let mut parts: Vec<(i64, String)> = x
            .bindings()
            .into_iter()
            .filter_map(|b| match &b.destination {
                Destination::Queue(q) if q.stream().is_some() => {
                    let order = b
                        .arguments
                        .get(PARTITION_ORDER)
                        .and_then(|v| v.as_i64())
                        .unwrap_or(i64::MAX);
                    Some((order, q.name.to_string()))
                }
                _ => None,
            })
            .collect();
        parts.sort();
        parts.dedup_by(|a, b| a.1 == b.1);
        Ok(parts.into_iter().map(|(_, n)| n).collect())
    }

    pub(crate) fn delete_super_stream(&mut self, name: &str) -> Result<()> {
        self.super_stream_access(name, Access::Configure)?;
        let partitions = self.partition_names(name)?;
        for p in &partitions {
            self.access()
                .check(Access::Configure, Resource::Queue, p)
                .map_err(|e| StreamError::from_amqp(e, p))?;
        }
        let vh = self.vhost().clone();
        for p in &partitions {
            vh.delete_queue(p, false, false, self.id)
                .map_err(|e| StreamError::from_amqp(e, p))?;
        }
        vh.delete_exchange(name, false)
            .map_err(|e| StreamError::from_amqp(e, name))?;
        tracing::info!(super_stream = name, vhost = %vh.name, "super stream deleted over the stream protocol");
        Ok(())
    }

    /// The partitions `routing_key` goes to.
    fn route_key(&self, routing_key: &str, name: &str) -> Result<Vec<String>> {
        self.super_stream_access(name, Access::Write)?;
        let x = self
            .vhost()
            .exchange(name)
            .ok_or_else(|| StreamError::StreamDoesNotExist(name.to_string()))?;
        let mut dest = Vec::new();
        x.route(routing_key, None, &mut dest);
        let mut streams: Vec<String> = Vec::new();
        for d in dest {
            if let Destination::Queue(q) = d {
                if q.stream().is_some() && !streams.iter().any(|s| *s == *q.name) {
                    streams.push(q.name.to_string());
                }
            }
        }
        for s in &streams {
            self.access()
                .check(Access::Write, Resource::Queue, s)
                .map_err(|e| StreamError::from_amqp(e, s))?;
        }
        Ok(streams)
    }

    pub(crate) fn route(&mut self, correlation_id: u32, routing_key: &str, name: &str) {
        let r = self.route_key(routing_key, name);
        self.respond_streams(key::ROUTE, correlation_id, &r);
    }

    pub(crate) fn partitions(&mut self, correlation_id: u32, name: &str) {
        let r = self
            .super_stream_access(name, Access::Read)
            .or_else(|_| self.super_stream_access(name, Access::Write))
            .and_then(|_| self.partition_names(name));
        self.respond_streams(key::PARTITIONS, correlation_id, &r);
    }

    /// A response with a list of streams (empty with an error's code).
    fn respond_streams(&self, k: u16, correlation_id: u32, r: &Result<Vec<String>>) {
        let empty = Vec::new();
        let streams = r.as_ref().unwrap_or(&empty);
        self.out
            .respond(k, correlation_id, response::code_of(r), |w| {
                w.u32(streams.len() as u32);
                for s in streams {
                    w.string(s);
                }
            });
    }
}
