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
//!
//! Layout: this file holds users, the access-control registry and authentication;
//! `password` (RabbitMQ's hash formats), `permissions` (configure/write/read checks),
//! `limits` (user and vhost limits, connection and channel counts).

use crate::broker::Broker;
use crate::error::{AmqpError, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use warren_protocol::constants::NOT_ALLOWED;

mod limits;
mod password;
mod permissions;

use limits::Counts;
pub use limits::{ConnectionSlot, UserLimits, VHostLimits};
pub use password::{check_password, hash_password, HashingAlgorithm, UnsupportedHashingAlgorithm};
pub use permissions::{Access, AccessContext, Permission, Resource};

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
        self.definitions_changed(crate::definitions_journal::DefScope::Global);
    }

    pub(crate) fn definitions_changed(&self, scope: crate::definitions_journal::DefScope) {
        if let Some(p) = self.persistence() {
            p.definitions_changed(scope);
        }
    }

    // ---- users ----

    /// A user by name (in a cluster, a miss first catches up with the cluster's definitions).
    pub fn user(&self, name: &str) -> Option<User> {
        self.found_or_synced(|| self.access().users.read().get(name).cloned())
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
        let user = User {
            name: name.into(),
            password_hash: hash_password(password, HashingAlgorithm::Sha256),
            hashing_algorithm: HashingAlgorithm::Sha256,
            tags,
            limits: UserLimits::default(),
        };
        if self.user(name).is_some() {
            return Err(AmqpError::precondition(format!(
                "user '{name}' already exists"
            )));
        }
        if let Some(r) = self.replicated(|| import_user(&user)) {
            return r;
        }
        let mut users = self.access().users.write();
        if users.contains_key(name) {
            return Err(AmqpError::precondition(format!(
                "user '{name}' already exists"
            )));
        }
        users.insert(name.into(), user);
        drop(users);
        self.access_changed();
        Ok(())
    }

    /// Adds or replaces a user as given (definitions import, management API `PUT`).
    pub fn put_user(&self, user: User) {
        if let Some(r) = self.replicated(|| import_user(&user)) {
            if let Err(e) = r {
                tracing::warn!(user = %user.name, error = %e, "the cluster did not take the user");
            }
            return;
        }
        self.access().users.write().insert(user.name.clone(), user);
        self.access_changed();
    }

    /// Deletes a user and its permissions. Returns whether it existed.
    pub fn delete_user(&self, name: &str) -> bool {
        if self.user(name).is_none() {
            return false;
        }
        let op = || crate::metadata::MetaOp::DeleteUser { name: name.into() };
        if let Some(r) = self.replicated(op) {
            return r.is_ok();
        }
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
        if self.replicates_definitions() {
            // In a cluster: the changed user goes through the metadata log as a whole.
            let mut u = self
                .user(name)
                .ok_or_else(|| AmqpError::not_found(format!("no user '{name}'")))?;
            f(&mut u);
            return self.replicated(|| import_user(&u)).unwrap_or(Ok(()));
        }
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

    /// Deletes a vhost: its connections are closed (320 CONNECTION_FORCED), its queues (with
    /// their messages) and exchanges deleted, and the permissions in it dropped. Returns
    /// whether it existed.
    pub fn delete_vhost(&self, name: &str) -> bool {
        if self.vhost(name).is_none() {
            return false;
        }
        let op = || crate::metadata::MetaOp::DeleteVhost { name: name.into() };
        if let Some(r) = self.replicated(op) {
            return r.is_ok();
        }
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
        // Its queues, exchanges, bindings, policies and permissions went with it.
        self.definitions_changed(crate::definitions_journal::DefScope::All);
        tracing::info!(vhost = %name, "vhost deleted");
        true
    }
}

/// A user, as the metadata-log change that makes every node have it.
fn import_user(u: &User) -> crate::metadata::MetaOp {
    crate::metadata::MetaOp::import(&crate::definitions::Definitions {
        users: vec![crate::definitions::user_def(u.clone())],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerConfig;
    use base64::Engine;
    use sha2::Digest;

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
        let dir = crate::testutil::TestDir::new("auth");
        let open = || {
            let p = Persistence::new(dir.path(), warren_store::FileBackend::shared());
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
            b.flush_once();
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
        let p = b.persistence().unwrap().clone();
        drop(b);
        crate::testutil::wait_until_released(p);
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
