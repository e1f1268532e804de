//! A connection's security state and the checks made on every channel method: who the user
//! is, what it may do in its vhost (RabbitMQ's configure / write / read permissions), the
//! connection's place in the connection and channel limits, and whether a resource alarm
//! has stopped it from publishing.
//!
//! The checks are RabbitMQ's (`rabbit_channel`): queue.declare needs configure on the queue
//! (and, for a new queue with a dead-letter exchange, read on the queue and write on that
//! exchange); queue.delete configure; queue.purge read; queue.bind / unbind write on the
//! queue and read on the exchange; exchange.bind / unbind write on the destination and read
//! on the source; exchange.declare / delete configure (a new exchange with an alternate
//! exchange also needs read on itself and write on the alternate); basic.publish write on the
//! exchange; basic.consume / basic.get read on the queue. Passive declares need nothing.

use crate::outbox::Outbox;
use std::sync::Arc;
use warren_broker::auth::{Access, AccessContext, ConnectionSlot, Resource};
use warren_broker::{AmqpError, Broker, VHost};
use warren_protocol::methods::{ConnectionBlocked, ConnectionUnblocked};
use warren_protocol::{FieldTable, FieldValue, Method, ShortStr};

/// One connection's security state.
pub(crate) struct Guard {
    pub access: AccessContext,
    pub slot: ConnectionSlot,
    pub broker: Arc<Broker>,
    /// The exchange last granted write access, so a stream of publishes to one exchange
    /// costs one permission check.
    last_write_ok: Option<ShortStr>,
    /// Set once the connection published: only publishing connections are blocked by an
    /// alarm (a consumer-only connection keeps draining).
    pub published: bool,
    /// Reading from the socket has stopped because of a resource alarm.
    pub blocked: bool,
    /// The client announced the `connection.blocked` capability.
    blocked_capability: bool,
    alarm_rx: tokio::sync::watch::Receiver<Option<String>>,
    /// The user has the `impersonator` tag: it may publish with any `user_id`.
    impersonator: bool,
}

impl Guard {
    pub fn new(
        access: AccessContext,
        slot: ConnectionSlot,
        broker: Arc<Broker>,
        blocked_capability: bool,
    ) -> Self {
        let alarm_rx = broker.alarms.subscribe();
        let impersonator = broker
            .user(&access.user)
            .is_some_and(|u| u.tags.iter().any(|t| t == "impersonator"));
        Guard {
            access,
            slot,
            broker,
            last_write_ok: None,
            published: false,
            blocked: false,
            blocked_capability,
            alarm_rx,
            impersonator,
        }
    }

    /// After a batch of frames: a publishing connection stops reading while an alarm is on,
    /// telling clients that asked with connection.blocked.
    pub fn update_blocked(&mut self, outbox: &Outbox) {
        let alarm = self.broker.alarms.current();
        match (&alarm, self.blocked) {
            (Some(reason), false) if self.published => {
                self.blocked = true;
                tracing::info!(user = %self.access.user, "blocking a publishing connection: {reason} alarm");
                if self.blocked_capability {
                    outbox.send(
                        0,
                        ConnectionBlocked {
                            reason: format!("low on {reason}").into(),
                        },
                    );
                }
            }
            (None, true) => {
                self.blocked = false;
                tracing::info!(user = %self.access.user, "unblocking a connection: alarm cleared");
                if self.blocked_capability {
                    outbox.send(0, ConnectionUnblocked {});
                }
            }
            _ => {}
        }
    }

    /// Resolves when the alarm state changes.
    pub async fn alarm_changed(&mut self) {
        if self.alarm_rx.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    }

    /// A published message's `user_id` property, when set, must name the connection's user
    /// (406, as RabbitMQ), unless the user is an impersonator. Costs nothing for messages
    /// without it: only the property flags are looked at.
    pub fn check_user_id(&self, properties: &bytes::Bytes) -> Result<(), AmqpError> {
        use warren_protocol::properties::{flag, has};
        if !has(properties, flag::USER_ID) || self.impersonator {
            return Ok(());
        }
        let props = warren_protocol::BasicProperties::decode(properties.clone()).map_err(|e| {
            AmqpError::new(
                warren_protocol::constants::SYNTAX_ERROR,
                format!("malformed content header: {e}"),
            )
        })?;
        match props.user_id {
            Some(claimed) if claimed.as_str() != self.access.user => {
                Err(AmqpError::precondition(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    claimed.as_str(),
                    self.access.user
                )))
            }
            _ => Ok(()),
        }
    }

    fn check(&self, access: Access, kind: Resource, name: &str) -> Result<(), AmqpError> {
        self.access.check(access, kind, name)
    }

    /// The permission checks for one channel method, made before it runs. `last_queue` is
    /// the channel's most recently declared queue (what an empty queue name means).
    pub fn authorize(
        &mut self,
        vhost: &VHost,
        method: &Method,
        last_queue: Option<&ShortStr>,
    ) -> Result<(), AmqpError> {
        use Access::*;
        use Resource::*;
        let queue = |name: &ShortStr| -> ShortStr {
            if name.is_empty() {
                last_queue.cloned().unwrap_or_default()
            } else {
                name.clone()
            }
        };
        match method {
            Method::BasicPublish(p) => {
                self.published = true;
                if self.last_write_ok.as_ref() != Some(&p.exchange) {
                    self.check(Write, Exchange, &p.exchange)?;
                    self.last_write_ok = Some(p.exchange.clone());
                }
            }
            Method::BasicConsume(c) => {
                let q = queue(&c.queue);
                if q.as_str() != "amq.rabbitmq.reply-to" {
                    self.check(Read, Queue, &q)?;
                }
            }
            Method::BasicGet(g) => self.check(Read, Queue, &queue(&g.queue))?,
            Method::QueueDeclare(d) if !d.passive => {
                // A server-named queue: check the kind of name the broker makes.
                let name = match d.queue.as_str() {
                    "" => warren_broker::vhost::generate_name(),
                    n => n.to_string(),
                };
                self.check(Configure, Queue, &name)?;
                if vhost.queue(&name).is_none() {
                    self.broker.check_queue_limit(vhost, &name)?;
                    if let Some(dlx) = str_arg(&d.arguments, "x-dead-letter-exchange") {
                        self.check(Read, Queue, &name)?;
                        self.check(Write, Exchange, dlx)?;
                    }
                }
            }
            Method::QueueDelete(d) => self.check(Configure, Queue, &queue(&d.queue))?,
            Method::QueuePurge(p) => self.check(Read, Queue, &queue(&p.queue))?,
            Method::QueueBind(b) => {
                self.check(Write, Queue, &queue(&b.queue))?;
                self.check(Read, Exchange, &b.exchange)?;
            }
            Method::QueueUnbind(b) => {
                self.check(Write, Queue, &queue(&b.queue))?;
                self.check(Read, Exchange, &b.exchange)?;
            }
            Method::ExchangeBind(b) => {
                self.check(Write, Exchange, &b.destination)?;
                self.check(Read, Exchange, &b.source)?;
            }
            Method::ExchangeUnbind(b) => {
                self.check(Write, Exchange, &b.destination)?;
                self.check(Read, Exchange, &b.source)?;
            }
            Method::ExchangeDeclare(d) if !d.passive => {
                // The vhost refuses the default exchange, after checking the type (RabbitMQ's
                // order).
                if d.exchange.is_empty() {
                    return Ok(());
                }
                self.check(Configure, Exchange, &d.exchange)?;
                if vhost.exchange(&d.exchange).is_none() {
                    if let Some(ae) = str_arg(&d.arguments, "alternate-exchange") {
                        self.check(Read, Exchange, &d.exchange)?;
                        self.check(Write, Exchange, ae)?;
                    }
                }
            }
            // The vhost refuses deleting the default and amq.* exchanges itself.
            Method::ExchangeDelete(d)
                if !d.exchange.is_empty() && !d.exchange.starts_with("amq.") =>
            {
                self.check(Configure, Exchange, &d.exchange)?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn str_arg<'a>(args: &'a FieldTable, key: &str) -> Option<&'a str> {
    args.get(key).and_then(FieldValue::as_str)
}
