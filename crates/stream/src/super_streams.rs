//! Super streams over the stream protocol (RabbitMQ 3.13): create and delete super stream,
//! `route` a routing key to its partitions, list the `partitions` in order, with RabbitMQ's
//! permission checks and response codes. What a super stream is, and the work, is
//! `warren_broker::stream::super_stream`'s.

use crate::command::key;
use crate::connection::Conn;
use crate::response::{self, Result, StreamError};
use crate::streams::queue_arguments;
use warren_broker::auth::{Access, Resource};
use warren_broker::stream::super_stream::SuperStreamError;

impl Conn {
    fn check(&self, access: Access, resource: Resource, name: &str) -> Result<()> {
        self.access()
            .check(access, resource, name)
            .map_err(|e| StreamError::from_amqp(e, name))
    }

    /// Configure and read on the exchange, configure and write (to bind) on each partition.
    fn check_management(&self, name: &str, partitions: &[String]) -> Result<()> {
        self.check(Access::Configure, Resource::Exchange, name)?;
        self.check(Access::Read, Resource::Exchange, name)?;
        for p in partitions {
            self.check(Access::Configure, Resource::Queue, p)?;
            self.check(Access::Write, Resource::Queue, p)?;
        }
        Ok(())
    }

    pub(crate) fn create_super_stream(
        &mut self,
        name: &str,
        partitions: &[String],
        binding_keys: &[String],
        args: &[(String, String)],
    ) -> Result<()> {
        if partitions.len() != binding_keys.len() {
            return Err(StreamError::Precondition(format!(
                "{} partitions but {} binding keys",
                partitions.len(),
                binding_keys.len()
            )));
        }
        self.check_management(name, partitions)?;
        let arguments = queue_arguments(args)?;
        let parts: Vec<(String, String)> = partitions
            .iter()
            .cloned()
            .zip(binding_keys.iter().cloned())
            .collect();
        self.vhost()
            .create_super_stream(name, &parts, &arguments, self.id)
            .map_err(|e| stream_error(e, name))
    }

    pub(crate) fn delete_super_stream(&mut self, name: &str) -> Result<()> {
        self.check(Access::Configure, Resource::Exchange, name)?;
        let partitions = self
            .vhost()
            .super_stream_partitions(name)
            .ok_or_else(|| StreamError::StreamDoesNotExist(name.to_string()))?;
        self.check_management(name, &partitions)?;
        self.vhost()
            .delete_super_stream(name, self.id)
            .map_err(|e| stream_error(e, name))
    }

    /// The partitions `routing_key` goes to: write on the exchange and on each of them.
    fn route_key(&self, routing_key: &str, name: &str) -> Result<Vec<String>> {
        self.check(Access::Write, Resource::Exchange, name)?;
        let streams = self
            .vhost()
            .route_super_stream(name, routing_key)
            .ok_or_else(|| StreamError::StreamDoesNotExist(name.to_string()))?;
        for s in &streams {
            self.check(Access::Write, Resource::Queue, s)?;
        }
        Ok(streams)
    }

    pub(crate) fn route(&mut self, correlation_id: u32, routing_key: &str, name: &str) {
        let r = self.route_key(routing_key, name);
        self.respond_streams(key::ROUTE, correlation_id, &r);
    }

    /// Read or write on the exchange and on each partition.
    fn partition_list(&self, name: &str) -> Result<Vec<String>> {
        let readable = |resource, n: &str| {
            self.check(Access::Read, resource, n)
                .or_else(|_| self.check(Access::Write, resource, n))
        };
        readable(Resource::Exchange, name)?;
        let partitions = self
            .vhost()
            .super_stream_partitions(name)
            .ok_or_else(|| StreamError::StreamDoesNotExist(name.to_string()))?;
        for p in &partitions {
            readable(Resource::Queue, p)?;
        }
        Ok(partitions)
    }

    pub(crate) fn partitions(&mut self, correlation_id: u32, name: &str) {
        let r = self.partition_list(name);
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

/// RabbitMQ's response codes: exists 0x05, unknown 0x02, invalid 0x11.
fn stream_error(e: SuperStreamError, name: &str) -> StreamError {
    match e {
        SuperStreamError::Exists(n) => StreamError::StreamAlreadyExists(n),
        SuperStreamError::NotFound(n) => StreamError::StreamDoesNotExist(n),
        SuperStreamError::Invalid(why) => StreamError::Precondition(why),
        SuperStreamError::Broker(e) => StreamError::from_amqp(e, name),
    }
}
