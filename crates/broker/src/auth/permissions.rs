//! Per-vhost configure / write / read permissions and the checks made with them.

use super::*;

/// The three kinds of access RabbitMQ distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// What a permission is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Queue,
    Exchange,
}

/// One user's permissions in one vhost: three regular expressions.
#[derive(Debug)]
pub struct Permission {
    pub configure: String,
    pub write: String,
    pub read: String,
    compiled: [Option<regex::Regex>; 3],
}

impl Permission {
    /// Compiles the three expressions; a bad one is an error naming it.
    pub fn new(configure: &str, write: &str, read: &str) -> std::result::Result<Self, String> {
        let compile = |what: &str, re: &str| -> std::result::Result<Option<regex::Regex>, String> {
            if re.is_empty() {
                return Ok(None);
            }
            regex::Regex::new(re)
                .map(Some)
                .map_err(|e| format!("invalid {what} regular expression '{re}': {e}"))
        };
        Ok(Permission {
            compiled: [
                compile("configure", configure)?,
                compile("write", write)?,
                compile("read", read)?,
            ],
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
    }

    /// Full access: `.*` for all three.
    pub fn full() -> Self {
        Self::new(".*", ".*", ".*").expect("valid")
    }

    pub fn allows(&self, access: Access, name: &str) -> bool {
        let re = match access {
            Access::Configure => &self.compiled[0],
            Access::Write => &self.compiled[1],
            Access::Read => &self.compiled[2],
        };
        re.as_ref().is_some_and(|re| re.is_match(name))
    }
}

/// What one connection may do: its user, its vhost and its permissions there, taken when the
/// connection opened (as RabbitMQ caches them: a change applies to new connections).
#[derive(Debug, Clone)]
pub struct AccessContext {
    pub user: String,
    pub vhost: String,
    permission: Arc<Permission>,
}

impl AccessContext {
    /// A context with full permissions (for callers that act for the broker itself).
    pub fn unrestricted(user: &str, vhost: &str) -> Self {
        AccessContext {
            user: user.into(),
            vhost: vhost.into(),
            permission: Arc::new(Permission::full()),
        }
    }

    /// 403 ACCESS_REFUSED with RabbitMQ's text unless `access` to the named resource is
    /// granted.
    pub fn check(&self, access: Access, kind: Resource, name: &str) -> Result<()> {
        let name = match (kind, name) {
            (Resource::Exchange, "") => "amq.default",
            _ => name,
        };
        if self.permission.allows(access, name) {
            return Ok(());
        }
        let kind = match kind {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        };
        Err(AmqpError::access_refused(format!(
            "{} access to {kind} '{name}' in vhost '{}' refused for user '{}'",
            access.as_str(),
            self.vhost,
            self.user
        )))
    }

    pub fn permission(&self) -> &Permission {
        &self.permission
    }
}

impl Broker {
    /// The user's access to a vhost for connection.open: 530 NOT_ALLOWED with RabbitMQ's
    /// texts for a missing vhost or one the user has no permissions in.
    pub fn vhost_access(&self, user: &str, vhost: &str) -> Result<AccessContext> {
        if self.vhost(vhost).is_none() {
            return Err(AmqpError::new(
                NOT_ALLOWED,
                format!("vhost {vhost} not found"),
            ));
        }
        let perm = self
            .access()
            .permissions
            .read()
            .get(&(user.to_string(), vhost.to_string()))
            .cloned()
            .ok_or_else(|| {
                AmqpError::new(
                    NOT_ALLOWED,
                    format!("access to vhost '{vhost}' refused for user '{user}'"),
                )
            })?;
        Ok(AccessContext {
            user: user.into(),
            vhost: vhost.into(),
            permission: perm,
        })
    }

    /// Sets a user's permissions in a vhost. Both must exist; the expressions must compile.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<()> {
        if self.user(user).is_none() {
            return Err(AmqpError::not_found(format!("no user '{user}'")));
        }
        if self.vhost(vhost).is_none() {
            return Err(AmqpError::not_found(format!("no vhost '{vhost}'")));
        }
        let p = Permission::new(configure, write, read).map_err(AmqpError::precondition)?;
        let op = || {
            crate::metadata::MetaOp::import(&crate::definitions::Definitions {
                permissions: vec![crate::definitions::PermissionDef {
                    user: user.into(),
                    vhost: vhost.into(),
                    configure: configure.into(),
                    write: write.into(),
                    read: read.into(),
                }],
                ..Default::default()
            })
        };
        if let Some(r) = self.replicated(op) {
            return r;
        }
        self.access()
            .permissions
            .write()
            .insert((user.into(), vhost.into()), Arc::new(p));
        self.access_changed();
        Ok(())
    }

    /// Returns whether there were permissions to clear.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> bool {
        let key = (user.to_string(), vhost.to_string());
        if !self.access().permissions.read().contains_key(&key) {
            return false;
        }
        let op = || crate::metadata::MetaOp::ClearPermissions {
            user: user.into(),
            vhost: vhost.into(),
        };
        if let Some(r) = self.replicated(op) {
            return r.is_ok();
        }
        let had = self
            .access()
            .permissions
            .write()
            .remove(&(user.to_string(), vhost.to_string()))
            .is_some();
        if had {
            self.access_changed();
        }
        had
    }

    /// Every permission as (user, vhost, permission), sorted by vhost then user.
    pub fn permissions(&self) -> Vec<(String, String, Arc<Permission>)> {
        let mut v: Vec<_> = self
            .access()
            .permissions
            .read()
            .iter()
            .map(|((u, vh), p)| (u.clone(), vh.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        v
    }

    // ---- vhosts ----
}
