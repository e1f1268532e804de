//! Super streams (RabbitMQ 3.13): a durable direct exchange (argument `x-super-stream`) whose
//! partitions are streams bound to it, each with its binding key and its place as the binding
//! argument `x-stream-partition-order`. Created, deleted, routed and listed here for both the
//! stream protocol (`warren-stream`) and the management API; permissions are the callers'.

use crate::error::AmqpError;
use crate::exchange::Destination;
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use std::sync::Arc;
use warren_protocol::{FieldTable, FieldValue};

/// The binding argument that orders a super stream's partitions.
pub const PARTITION_ORDER: &str = "x-stream-partition-order";

/// Why a super stream could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum SuperStreamError {
    #[error("super stream '{0}' or one of its partitions already exists")]
    Exists(String),
    #[error("super stream '{0}' does not exist")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Broker(#[from] AmqpError),
}

/// `name`'s partitions and their binding keys: `name-0` … with keys `0` … for a count, or
/// `name-KEY` for each binding key (RabbitMQ's naming).
pub fn partitions_for(
    name: &str,
    count: Option<usize>,
    keys: Option<&[String]>,
) -> Vec<(String, String)> {
    match keys {
        Some(keys) => keys
            .iter()
            .map(|k| (format!("{name}-{k}"), k.clone()))
            .collect(),
        None => (0..count.unwrap_or(3))
            .map(|i| (format!("{name}-{i}"), i.to_string()))
            .collect(),
    }
}

impl VHost {
    /// Creates super stream `name` with `partitions` (each with its binding key), each a stream
    /// declared with `stream_args` (queue arguments, `x-queue-type` included). Nothing is left
    /// behind if a step fails.
    pub fn create_super_stream(
        self: &Arc<Self>,
        name: &str,
        partitions: &[(String, String)],
        stream_args: &FieldTable,
        conn: u64,
    ) -> Result<(), SuperStreamError> {
        let invalid = |why: String| Err(SuperStreamError::Invalid(why));
        if name.is_empty() || name.len() > 255 {
            return invalid(format!("invalid super stream name '{name}'"));
        }
        if partitions.is_empty() {
            return invalid("a super stream needs at least one partition".into());
        }
        if let Some((p, _)) = partitions
            .iter()
            .find(|(p, _)| p.is_empty() || p.len() > 255)
        {
            return invalid(format!("invalid partition name '{p}'"));
        }
        if self.exchange(name).is_some() || partitions.iter().any(|(p, _)| self.queue(p).is_some())
        {
            return Err(SuperStreamError::Exists(name.to_string()));
        }
        let mut xargs = FieldTable::new();
        xargs.insert("x-super-stream", FieldValue::Bool(true));
        self.declare_exchange(ExchangeDeclare {
            name: name.into(),
            kind: "direct".into(),
            durable: true,
            arguments: xargs,
            ..Default::default()
        })?;
        let made = partitions.iter().enumerate().try_for_each(|(i, (p, key))| {
            self.declare_queue(
                QueueDeclare {
                    name: p.as_str().into(),
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    arguments: stream_args.clone(),
                },
                conn,
            )?;
            let mut bargs = FieldTable::new();
            bargs.insert(PARTITION_ORDER, FieldValue::I32(i as i32));
            self.bind_queue(p, name, key.as_str().into(), bargs, conn)
        });
        if let Err(e) = made {
            for (p, _) in partitions {
                let _ = self.delete_queue(p, false, false, conn);
            }
            let _ = self.delete_exchange(name, false);
            return Err(e.into());
        }
        tracing::info!(super_stream = name, partitions = partitions.len(), vhost = %self.name, "super stream created");
        Ok(())
    }

    /// The partitions of super stream `name` in their order (its exchange's bindings to
    /// streams, by `x-stream-partition-order`); None if there is no such exchange.
    pub fn super_stream_partitions(&self, name: &str) -> Option<Vec<String>> {
        let x = self.exchange(name)?;
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
        Some(parts.into_iter().map(|(_, n)| n).collect())
    }

    /// Stream `stream`'s index among super stream `super_stream`'s partitions, for spreading
    /// the partitions' single active consumers (as RabbitMQ: the binding's
    /// `x-stream-partition-order`, else a number after the name's last `-`); None if the
    /// stream is not a partition of it, or has no index.
    pub fn super_stream_partition_index(&self, super_stream: &str, stream: &str) -> Option<u64> {
        let x = self.exchange(super_stream)?;
        let binding = x.bindings().into_iter().find(|b| {
            matches!(&b.destination, Destination::Queue(q) if q.stream().is_some() && *q.name == *stream)
        })?;
        match binding.arguments.get(PARTITION_ORDER) {
            Some(order) => order.as_i64().and_then(|i| u64::try_from(i).ok()),
            None => stream.rsplit_once('-')?.1.parse().ok(),
        }
    }

    /// The partitions of super stream `name` that `routing_key` goes to (the exchange's own
    /// routing); None if there is no such exchange.
    pub fn route_super_stream(&self, name: &str, routing_key: &str) -> Option<Vec<String>> {
        let x = self.exchange(name)?;
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
        Some(streams)
    }

    /// Deletes super stream `name`: its partitions, then its exchange.
    pub fn delete_super_stream(&self, name: &str, conn: u64) -> Result<(), SuperStreamError> {
        let partitions = self
            .super_stream_partitions(name)
            .ok_or_else(|| SuperStreamError::NotFound(name.to_string()))?;
        for p in &partitions {
            self.delete_queue(p, false, false, conn)?;
        }
        self.delete_exchange(name, false)?;
        tracing::info!(super_stream = name, vhost = %self.name, "super stream deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_by_index_or_binding_key() {
        assert_eq!(
            partitions_for("s", Some(2), None),
            [
                ("s-0".to_string(), "0".to_string()),
                ("s-1".into(), "1".into())
            ]
        );
        assert_eq!(partitions_for("s", None, None).len(), 3);
        let keys = ["eu".to_string(), "us".to_string()];
        assert_eq!(
            partitions_for("s", None, Some(&keys)),
            [
                ("s-eu".to_string(), "eu".to_string()),
                ("s-us".into(), "us".into())
            ]
        );
    }
}
