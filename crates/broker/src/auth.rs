//! Access control: users (tags, salted password hashes as RabbitMQ stores them), per-vhost
//! configure / write / read permissions, user and vhost limits, and the counters that enforce
//! connection and channel limits.
//!
//! Password hashes use RabbitMQ's format, `base64(salt ++ H(salt ++ utf8(password)))` with a
//! 4-byte random salt, so a RabbitMQ definitions export loads with its hashes and the same
//! passwords keep working: `rabbit_password_hashing_sha256` (the default), `…_sha512`, and
//! `…_md5` (what RabbitMQ assumes for users without `hashing_algorithm`).
//!
//! Permission checks follow RabbitMQ's internal backend: each of the three regular
//! expressions is matched unanchored against the resource name, the empty expression grants
//! nothing, and the default exchange is checked under the name `amq.default`.

use crate::broker::Broker;
use crate::error::{AmqpError, Result};
use base64::Engine;
use parking_lot::Mutex;
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use warren_protocol::constants::NOT_ALLOWED;

/// How a user's password hash was made (RabbitMQ's `hashing_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashingAlgorithm {
    #[default]
    Sha256,
    Sha512,
    Md5,
}

impl HashingAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashingAlgorithm::Sha256 => "rabbit_password_hashing_sha256",
            HashingAlgorithm::Sha512 => "rabbit_password_hashing_sha512",
            HashingAlgorithm::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// RabbitMQ's module names; a missing algorithm means MD5 (definitions older than 3.6).
    pub fn parse(name: Option<&str>) -> std::result::Result<Self, String> {
        match name {
            None | Some("") | Some("rabbit_password_hashing_md5") => Ok(HashingAlgorithm::Md5),
            Some("rabbit_password_hashing_sha256") => Ok(HashingAlgorithm::Sha256),
            Some("rabbit_password_hashing_sha512") => Ok(HashingAlgorithm::Sha512),
            Some(other) => Err(format!("unsupported hashing algorithm '{other}'")),
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            HashingAlgorithm::Sha256 => {
                let mut h = sha2::Sha256::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
            HashingAlgorithm::Sha512 => {
                let mut h = sha2::Sha512::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
            HashingAlgorithm::Md5 => {
                let mut h = md5::Md5::new();
                h.update(salt);
                h.update(password);
                h.finalize().to_vec()
            }
        }
    }
}

const SALT_LEN: usize = 4;

/// A new salted hash of `password`, base64-encoded as RabbitMQ stores it.
pub fn hash_password(password: &str, alg: HashingAlgorithm) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    let mut out = salt.to_vec();
    out.extend_from_slice(&alg.digest(&salt, password.as_bytes()));
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Whether `password` matches a stored hash. An empty hash matches nothing (RabbitMQ's
/// password-less users can only log in by other means, e.g. x509 certificates).
pub fn check_password(hash: &str, alg: HashingAlgorithm, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash.trim()) else {
        return false;
    };
    if raw.len() <= SALT_LEN {
        return false;
    }
    let (salt, expected) = raw.split_at(SALT_LEN);
    let got = alg.digest(salt, password.as_bytes());
    // Constant time in the length of the digest.
    got.len() == expected.len() && got.iter().zip(expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

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

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// base64(salt ++ hash); empty for a user without a password.
    pub password_hash: String,
    pub hashing_algorithm: HashingAlgorithm,
    /// `administrator`, `monitoring`, `policymaker`, `management`, `impersonator`, or any other.
    pub tags: Vec<String>,
    pub limits: UserLimits,
}

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

/// Users, permissions, limits, and the live connection / channel counts that limits are
/// checked against.
#[derive(Default)]
pub struct AccessControl {
    users: parking_lot::RwLock<HashMap<String, User>>,
    /// (user, vhost) → permission.
    permissions: parking_lot::RwLock<HashMap<(String, String), Arc<Permission>>>,
    vhost_limits: parking_lot::RwLock<HashMap<String, VHostLimits>>,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    total: u32,
    per_vhost: HashMap<String, u32>,
    per_user: HashMap<String, u32>,
    channels_per_user: HashMap<String, u32>,
}

fn dec(map: &mut HashMap<String, u32>, key: &str) {
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
    fn access(&self) -> &AccessControl {
        &self.access
    }

    /// Checks a username and password. `loopback` says whether the peer is on loopback.
    /// Wrong user and wrong password get the same answer (and take about the same time).
    pub fn authenticate(&self, user: &str, password: &str, loopback: bool) -> Result<User> {
        let refused = || {
            AmqpError::access_refused(
                "Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
            )
        };
        let found = self.access().users.read().get(user).cloned();
        let ok = match &found {
            Some(u) => check_password(&u.password_hash, u.hashing_algorithm, password),
            None => {
                // Spend the time a real check takes.
                let _ = HashingAlgorithm::Sha256.digest(b"salt", password.as_bytes());
                false
            }
        };
        let Some(u) = found.filter(|_| ok) else {
            return Err(refused());
        };
        if !loopback && self.config.loopback_users.iter().any(|l| l == user) {
            return Err(AmqpError::access_refused(format!(
                "user '{user}' can only connect via localhost"
            )));
        }
        Ok(u)
    }

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

    /// Called with the saved definitions before they are imported at start: once users were
    /// saved, the default user (and its permissions) exist only if they were saved too, and the
    /// default vhost only if it was saved.
    pub(crate) fn restore_defaults_from(&self, defs: &crate::definitions::Definitions) {
        if !defs.users.is_empty() {
            self.access().users.write().clear();
            self.access().permissions.write().clear();
        }
        let default_vhost = &self.config.default_vhost;
        if !defs.users.is_empty() && !defs.vhosts.iter().any(|v| &v.name == default_vhost) {
            self.vhosts.write().remove(default_vhost);
        }
    }

    fn access_changed(&self) {
        if let Some(p) = self.persistence() {
            p.definitions_changed();
        }
    }

    // ---- users ----

    pub fn user(&self, name: &str) -> Option<User> {
        self.access().users.read().get(name).cloned()
    }

    pub fn users(&self) -> Vec<User> {
        let mut v: Vec<User> = self.access().users.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Adds a user with a password (hashed with SHA-256); an existing user is an error, as
    /// `rabbitmqctl add_user`.
    pub fn add_user(&self, name: &str, password: &str, tags: Vec<String>) -> Result<()> {
        if name.is_empty() {
            return Err(AmqpError::precondition("user name must not be empty"));
        }
        let mut users = self.access().users.write();
        if users.contains_key(name) {
            return Err(AmqpError::precondition(format!(
                "user '{name}' already exists"
            )));
        }
        users.insert(
            name.into(),
            User {
                name: name.into(),
                password_hash: hash_password(password, HashingAlgorithm::Sha256),
                hashing_algorithm: HashingAlgorithm::Sha256,
                tags,
                limits: UserLimits::default(),
            },
        );
        drop(users);
        self.access_changed();
        Ok(())
    }

    /// Adds or replaces a user as given (definitions import, management API `PUT`).
    pub fn put_user(&self, user: User) {
        self.access().users.write().insert(user.name.clone(), user);
        self.access_changed();
    }

    /// Deletes a user and its permissions. Returns whether it existed.
    pub fn delete_user(&self, name: &str) -> bool {
        let existed = self.access().users.write().remove(name).is_some();
        self.access()
            .permissions
            .write()
            .retain(|(u, _), _| u != name);
        if existed {
            self.access_changed();
        }
        existed
    }

    fn update_user(&self, name: &str, f: impl FnOnce(&mut User)) -> Result<()> {
        let mut users = self.access().users.write();
        let u = users
            .get_mut(name)
            .ok_or_else(|| AmqpError::not_found(format!("no user '{name}'")))?;
        f(u);
        drop(users);
        self.access_changed();
        Ok(())
    }

    /// `None` clears the password: the user can no longer log in with one.
    pub fn change_password(&self, name: &str, password: Option<&str>) -> Result<()> {
        let hash = password
            .map(|p| hash_password(p, HashingAlgorithm::Sha256))
            .unwrap_or_default();
        self.update_user(name, |u| {
            u.password_hash = hash;
            u.hashing_algorithm = HashingAlgorithm::Sha256;
        })
    }

    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<()> {
        self.update_user(name, |u| u.tags = tags)
    }

    pub fn set_user_limits(&self, name: &str, limits: UserLimits) -> Result<()> {
        self.update_user(name, |u| u.limits = limits)
    }

    // ---- permissions ----

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
        self.access()
            .permissions
            .write()
            .insert((user.into(), vhost.into()), Arc::new(p));
        self.access_changed();
        Ok(())
    }

    /// Returns whether there were permissions to clear.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> bool {
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

    /// Deletes a vhost: its connections are closed (320 CONNECTION_FORCED), its queues (with
    /// their messages) and exchanges deleted, and the permissions in it dropped. Returns
    /// whether it existed.
    pub fn delete_vhost(&self, name: &str) -> bool {
        let Some(vh) = self.vhosts.write().remove(name) else {
            return false;
        };
        for c in self.connections.list() {
            if c.vhost == name {
                c.closer.force_close(&format!("vhost '{name}' is deleted"));
            }
        }
        vh.clear();
        self.access()
            .permissions
            .write()
            .retain(|(_, v), _| v != name);
        self.access().vhost_limits.write().remove(name);
        self.access_changed();
        tracing::info!(vhost = %name, "vhost deleted");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerConfig;

    #[test]
    fn rabbitmq_sha256_hashes_verify() {
        // `rabbitmqctl hash_password guest` style: base64(salt ++ sha256(salt ++ password)).
        let h = hash_password("s3cret", HashingAlgorithm::Sha256);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&h)
            .unwrap();
        assert_eq!(raw.len(), 4 + 32);
        let mut d = sha2::Sha256::new();
        d.update(&raw[..4]);
        d.update(b"s3cret");
        assert_eq!(&raw[4..], d.finalize().as_slice());
        assert!(check_password(&h, HashingAlgorithm::Sha256, "s3cret"));
        assert!(!check_password(&h, HashingAlgorithm::Sha256, "s3cre"));
        assert!(!check_password("", HashingAlgorithm::Sha256, ""));
        assert!(!check_password("not base64!", HashingAlgorithm::Sha256, ""));
    }

    #[test]
    fn rabbitmq_exported_hashes_verify() {
        // guest/guest as exported by RabbitMQ (sha256) and by RabbitMQ 3.0 (md5).
        let sha = "5rB5BmXGUjdmWMF1qFQukV/AAVulChVYUmv/nKiQtr6wNiLo";
        let md5 = "AsYO2ESs62RcsxNVyxKaR5DGxVI=";
        assert!(check_password(sha, HashingAlgorithm::Sha256, "guest"));
        assert!(check_password(md5, HashingAlgorithm::Md5, "guest"));
        assert!(!check_password(sha, HashingAlgorithm::Sha256, "Guest"));
        let h = hash_password("x", HashingAlgorithm::Sha512);
        assert!(check_password(&h, HashingAlgorithm::Sha512, "x"));
        let h = hash_password("x", HashingAlgorithm::Md5);
        assert!(check_password(&h, HashingAlgorithm::Md5, "x"));
    }

    #[test]
    fn permissions_match_unanchored_and_empty_denies() {
        let p = Permission::new("^app\\.", "", "orders").unwrap();
        assert!(p.allows(Access::Configure, "app.q"));
        assert!(!p.allows(Access::Configure, "xapp.q"));
        assert!(!p.allows(Access::Write, "anything"));
        assert!(!p.allows(Access::Write, ""));
        assert!(p.allows(Access::Read, "my-orders-queue"));
        assert!(Permission::new("(", ".*", ".*").is_err());
    }

    #[test]
    fn refusal_texts_are_rabbitmqs() {
        let b = Broker::new(BrokerConfig::default());
        b.add_user("u", "p", vec![]).unwrap();
        b.set_permissions("u", "/", "^q$", "", ".*").unwrap();
        let cx = b.vhost_access("u", "/").unwrap();
        assert!(cx.check(Access::Configure, Resource::Queue, "q").is_ok());
        let e = cx.check(Access::Write, Resource::Exchange, "").unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.text,
            "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
        b.add_vhost("/x");
        let e = b.vhost_access("u", "/x").unwrap_err();
        assert_eq!(
            e.text,
            "NOT_ALLOWED - access to vhost '/x' refused for user 'u'"
        );
        assert_eq!(
            b.vhost_access("u", "nope").unwrap_err().text,
            "NOT_ALLOWED - vhost nope not found"
        );
    }

    #[test]
    fn authentication_hides_whether_the_user_exists() {
        let b = Broker::new(BrokerConfig::default());
        let a = b.authenticate("nobody", "x", true).unwrap_err();
        let c = b.authenticate("guest", "wrong", true).unwrap_err();
        assert_eq!(a, c);
        assert!(b.authenticate("guest", "guest", true).is_ok());
        assert!(b
            .authenticate("guest", "guest", false)
            .unwrap_err()
            .text
            .contains("can only connect via localhost"));
    }

    #[test]
    fn connection_and_channel_limits_count_and_release() {
        let b = Broker::new(BrokerConfig::default());
        b.add_user("u", "p", vec![]).unwrap();
        b.set_user_limits(
            "u",
            UserLimits {
                max_connections: Some(1),
                max_channels: Some(2),
            },
        )
        .unwrap();
        let mut s = b.acquire_connection("u", "/", None).unwrap();
        let e = b.acquire_connection("u", "/", None).err().unwrap();
        assert!(
            e.text.contains("user connection limit (1) is reached"),
            "{e}"
        );
        s.open_channel().unwrap();
        s.open_channel().unwrap();
        assert!(s.open_channel().is_err());
        s.close_channel();
        s.open_channel().unwrap();
        drop(s);
        let _s = b.acquire_connection("u", "/", None).unwrap();
        assert!(b.acquire_connection("guest", "/", Some(1)).is_err());
    }

    #[test]
    fn users_and_permissions_survive_a_restart() {
        use crate::persist::Persistence;
        let dir = std::env::temp_dir().join(format!("warren-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = || {
            let p = Persistence::new(&dir, warren_store::FileBackend::shared());
            Broker::open(BrokerConfig::default(), p).unwrap()
        };
        {
            let b = open();
            b.add_user("u", "p", vec!["monitoring".into()]).unwrap();
            b.add_vhost("v");
            b.set_permissions("u", "v", "^a", "b", "c").unwrap();
            b.set_vhost_limits(
                "v",
                VHostLimits {
                    max_connections: Some(3),
                    max_queues: None,
                },
            )
            .unwrap();
            assert!(b.delete_user("guest"));
            b.persistence().unwrap().flush_once();
        }
        let b = open();
        assert!(
            b.user("guest").is_none(),
            "a deleted default user stays deleted"
        );
        assert_eq!(b.authenticate("u", "p", true).unwrap().tags, ["monitoring"]);
        let cx = b.vhost_access("u", "v").unwrap();
        assert_eq!(cx.permission().configure, "^a");
        assert_eq!(b.vhost_limits("v").max_connections, Some(3));
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn deleting_a_vhost_drops_its_permissions() {
        let b = Broker::new(BrokerConfig::default());
        b.add_vhost("v");
        b.set_permissions("guest", "v", ".*", ".*", ".*").unwrap();
        assert!(b.delete_vhost("v"));
        assert!(b.vhost("v").is_none());
        assert!(!b.permissions().iter().any(|(_, v, _)| v == "v"));
        assert!(!b.delete_vhost("v"));
    }
}
