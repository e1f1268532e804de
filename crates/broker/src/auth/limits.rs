//! User and vhost limits, and the live connection and channel counts they are checked
//! against.

use super::*;

/// Limits on one user across all its connections (RabbitMQ's `set_user_limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    pub max_connections: Option<u32>,
    pub max_channels: Option<u32>,
}

/// Limits on one vhost (RabbitMQ's `set_vhost_limits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VHostLimits {
    pub max_connections: Option<u32>,
    pub max_queues: Option<u32>,
}

#[derive(Default)]
pub(super) struct Counts {
    total: u32,
    per_vhost: HashMap<String, u32>,
    per_user: HashMap<String, u32>,
    channels_per_user: HashMap<String, u32>,
}

pub(super) fn dec(map: &mut HashMap<String, u32>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A connection's place in the connection counts; released on drop. Also counts the
/// connection's channels against its user's channel limit.
pub struct ConnectionSlot {
    counts: Arc<Mutex<Counts>>,
    user: String,
    vhost: String,
    max_channels: Option<u32>,
    channels: u32,
}

impl ConnectionSlot {
    /// Counts a new channel; 530 NOT_ALLOWED (a connection error) when the user's channel
    /// limit is reached.
    pub fn open_channel(&mut self) -> Result<()> {
        let mut c = self.counts.lock();
        let n = c.channels_per_user.entry(self.user.clone()).or_insert(0);
        if let Some(max) = self.max_channels {
            if *n >= max {
                return Err(AmqpError::new(
                    NOT_ALLOWED,
                    format!(
                        "number of channels opened for user '{}' has reached the maximum allowed user limit of ({max})",
                        self.user
                    ),
                ));
            }
        }
        *n += 1;
        self.channels += 1;
        Ok(())
    }

    pub fn close_channel(&mut self) {
        if self.channels > 0 {
            self.channels -= 1;
            dec(&mut self.counts.lock().channels_per_user, &self.user);
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total = c.total.saturating_sub(1);
        dec(&mut c.per_vhost, &self.vhost);
        dec(&mut c.per_user, &self.user);
        for _ in 0..self.channels {
            dec(&mut c.channels_per_user, &self.user);
        }
    }
}

impl Broker {
    /// Takes a connection slot, checking the node (`connection_max`), vhost and user
    /// connection limits with RabbitMQ's texts (530 NOT_ALLOWED).
    pub fn acquire_connection(
        &self,
        user: &str,
        vhost: &str,
        node_max: Option<u32>,
    ) -> Result<ConnectionSlot> {
        let vlimits = self.vhost_limits(vhost);
        let ulimits = self.user(user).map(|u| u.limits).unwrap_or_default();
        let a = self.access();
        let mut c = a.counts.lock();
        if let Some(max) = node_max {
            if c.total >= max {
                return Err(AmqpError::new(
                    NOT_ALLOWED,
                    format!("connection refused: node connection limit ({max}) is reached"),
                ));
            }
        }
        if let Some(max) = vlimits.max_connections {
            if c.per_vhost.get(vhost).copied().unwrap_or(0) >= max {
                return Err(AmqpError::new(
                    NOT_ALLOWED,
                    format!(
                        "access to vhost '{vhost}' refused for user '{user}': connection limit ({max}) is reached"
                    ),
                ));
            }
        }
        if let Some(max) = ulimits.max_connections {
            if c.per_user.get(user).copied().unwrap_or(0) >= max {
                return Err(AmqpError::new(
                    NOT_ALLOWED,
                    format!(
                        "Connection refused for user '{user}': user connection limit ({max}) is reached"
                    ),
                ));
            }
        }
        c.total += 1;
        *c.per_vhost.entry(vhost.into()).or_insert(0) += 1;
        *c.per_user.entry(user.into()).or_insert(0) += 1;
        Ok(ConnectionSlot {
            counts: a.counts.clone(),
            user: user.into(),
            vhost: vhost.into(),
            max_channels: ulimits.max_channels,
            channels: 0,
        })
    }

    /// 406 PRECONDITION_FAILED when declaring a new queue `name` would pass the vhost's queue
    /// limit.
    pub fn check_queue_limit(&self, vhost: &crate::VHost, name: &str) -> Result<()> {
        let Some(max) = self.vhost_limits(&vhost.name).max_queues else {
            return Ok(());
        };
        if vhost.queue(name).is_none() && vhost.queue_count() >= max as usize {
            return Err(AmqpError::precondition(format!(
                "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                vhost.name
            )));
        }
        Ok(())
    }

    pub fn set_user_limits(&self, name: &str, limits: UserLimits) -> Result<()> {
        self.update_user(name, |u| u.limits = limits)
    }

    // ---- permissions ----

    pub fn vhost_limits(&self, vhost: &str) -> VHostLimits {
        self.access()
            .vhost_limits
            .read()
            .get(vhost)
            .copied()
            .unwrap_or_default()
    }

    pub fn set_vhost_limits(&self, vhost: &str, limits: VHostLimits) -> Result<()> {
        if self.vhost(vhost).is_none() {
            return Err(AmqpError::not_found(format!("no vhost '{vhost}'")));
        }
        let op = || crate::metadata::MetaOp::VhostLimits {
            vhost: vhost.into(),
            max_connections: limits.max_connections,
            max_queues: limits.max_queues,
        };
        if let Some(r) = self.replicated(op) {
            return r;
        }
        let mut l = self.access().vhost_limits.write();
        if limits == VHostLimits::default() {
            l.remove(vhost);
        } else {
            l.insert(vhost.into(), limits);
        }
        drop(l);
        self.access_changed();
        Ok(())
    }
}
