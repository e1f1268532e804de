//! The broker: its virtual hosts, users and broker-wide settings.

use crate::connections::Connections;
use crate::definitions::{Definitions, DefinitionsError};
use crate::definitions_journal::DefScope;
use crate::persist::Persistence;
use crate::vhost::VHost;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub default_vhost: String,
    pub default_user: String,
    pub default_pass: String,
    /// Users that may only connect from loopback (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
    /// The queue type of vhosts that set none (RabbitMQ's `default_queue_type`; `None`:
    /// classic).
    pub default_queue_type: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            default_vhost: "/".into(),
            default_user: "guest".into(),
            default_pass: "guest".into(),
            loopback_users: vec!["guest".into()],
            default_queue_type: None,
        }
    }
}

pub use crate::auth::User;

/// Why [`Broker::open`] could not bring a data directory's broker back.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The saved definitions could not be read (the error names the file).
    #[error(transparent)]
    Catalog(#[from] warren_store::StoreError),
    /// Durable queues whose message stores would not open: starting without them would save
    /// the definitions without them, and the next start would remove their messages.
    #[error(
        "{count} durable queue(s) could not be restored (first: {first}); nothing was changed on disk. \
         If the error is 'Too many open files', raise the open-files limit (ulimit -n; each durable queue holds 2)"
    )]
    QueuesNotRestored {
        count: usize,
        first: Box<DefinitionsError>,
    },
}

pub struct Broker {
    pub config: BrokerConfig,
    persistence: Option<Arc<Persistence>>,
    pub(crate) vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// Users, permissions, limits (see [`crate::auth`]).
    pub(crate) access: crate::auth::AccessControl,
    /// Memory and disk alarms (see [`crate::alarm`]).
    pub alarms: crate::alarm::ResourceAlarms,
    next_id: AtomicU64,
    pub connections: Connections,
}

impl Broker {
    /// A broker that keeps nothing on disk.
    pub fn new(config: BrokerConfig) -> Arc<Self> {
        Self::build(config, None)
    }

    /// A broker whose durable definitions and persistent messages live under the persistence
    /// directory: loads the catalogue, recovers every durable queue's messages, and starts the
    /// group-commit flusher.
    pub fn open(
        config: BrokerConfig,
        persistence: Arc<Persistence>,
    ) -> std::result::Result<Arc<Self>, OpenError> {
        let defs: Option<Definitions> = persistence.load_definitions()?;
        let b = Self::build(config, Some(persistence.clone()));
        if let Some(defs) = defs {
            let keep: Vec<(String, String)> = defs
                .queues
                .iter()
                .map(|q| (q.vhost.clone(), q.name.clone()))
                .collect();
            persistence.remove_orphans(&keep);
            // Saved access control replaces the defaults made for a first start.
            b.restore_defaults_from(&defs);
            let errors = b.import_definitions(&defs);
            // A durable queue that could not be restored (its message store would not open:
            // too many open files, a permission) must stop the start: going on would save the
            // definitions without it, and the next start would remove its messages as an
            // orphan's.
            let lost: Vec<&DefinitionsError> = defs
                .queues
                .iter()
                .filter(|q| {
                    q.durable
                        && b.vhost(&q.vhost)
                            .is_some_and(|v| v.queue(&q.name).is_none())
                })
                .filter_map(|q| errors.iter().find(|e| e.is_about_queue(&q.vhost, &q.name)))
                .collect();
            if let Some(first) = lost.first() {
                return Err(OpenError::QueuesNotRestored {
                    count: lost.len(),
                    first: Box::new((*first).clone()),
                });
            }
            for e in errors {
                tracing::warn!("restoring definitions: {e}");
            }
            tracing::info!(
                vhosts = defs.vhosts.len(),
                exchanges = defs.exchanges.len(),
                queues = defs.queues.len(),
                bindings = defs.bindings.len(),
                "definitions restored"
            );
        } else {
            persistence.remove_orphans(&[]);
        }
        if let Some(host) = persistence.replica_host() {
            // The logs of replicated queues deleted while the node was down (or whose
            // deletion was cut short) go, so a queue declared again by that name starts empty.
            let live: Vec<(String, String)> = b
                .vhosts()
                .iter()
                .flat_map(|v| v.queues())
                .filter(|q| q.is_replicated())
                .map(|q| (q.vhost_name.clone(), q.name.to_string()))
                .collect();
            host.retain(&live);
        }
        b.start_flusher(persistence.clone());
        persistence.definitions_changed(DefScope::All);
        // After the definitions are back, so delayed messages find their exchanges.
        b.start_timer();
        Ok(b)
    }

    /// Starts the flusher thread: group commits (see [`Persistence`]) until the broker is
    /// dropped.
    fn start_flusher(self: &Arc<Self>, p: Arc<Persistence>) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("warren-flusher".into())
            .spawn(move || loop {
                p.wait_for_work();
                let Some(b) = weak.upgrade() else {
                    p.release_queues();
                    return;
                };
                p.flush_once(&*b);
            })
            .expect("spawn flusher thread");
    }

    /// A group commit now (tests), definitions included if they changed.
    pub fn flush_once(&self) {
        if let Some(p) = &self.persistence {
            p.flush_once(self);
        }
    }

    /// The last group commit before stopping: nothing left unsynced, definitions saved, and
    /// the records of delayed messages released into queues now synced dropped (else the next
    /// start would release them a second time).
    pub fn flush_all(&self) {
        if let Some(p) = &self.persistence {
            p.flush_all(self);
            for vh in self.vhosts() {
                vh.ack_released_delayed();
            }
        }
    }

    /// Starts the timer thread: message TTLs and queue expiry, every 50 ms. It stops when the
    /// broker is dropped.
    fn start_timer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("warren-timer".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let Some(b) = weak.upgrade() else { return };
                let now = crate::clock::now_ms();
                for vh in b.vhosts() {
                    vh.tick(now);
                }
            })
            .expect("spawn timer thread");
    }

    fn build(config: BrokerConfig, persistence: Option<Arc<Persistence>>) -> Arc<Self> {
        if let Some(h) = persistence.as_ref().and_then(|p| p.replica_host()) {
            crate::delivery::set_owner_base(h.owner_base());
        }
        let b = Broker {
            persistence,
            vhosts: RwLock::new(HashMap::new()),
            access: Default::default(),
            alarms: Default::default(),
            next_id: AtomicU64::new(1),
            connections: Connections::default(),
            config,
        };
        b.add_vhost(&b.config.default_vhost.clone());
        // As RabbitMQ on first start: the default user, an administrator with full
        // permissions in the default vhost.
        let (user, vhost) = (
            b.config.default_user.clone(),
            b.config.default_vhost.clone(),
        );
        let pass = b.config.default_pass.clone();
        // Only a configuration error can make these fail (an empty user name); the broker
        // then starts without the default user, which the log must say.
        if let Err(e) = b.add_user(&user, &pass, vec!["administrator".into()]) {
            tracing::warn!(user = %user, error = %e, "default user not created; set default_user to a non-empty name");
        } else if let Err(e) = b.set_permissions(&user, &vhost, ".*", ".*", ".*") {
            tracing::warn!(user = %user, vhost = %vhost, error = %e, "default user has no permissions in the default vhost");
        }
        let b = Arc::new(b);
        if b.persistence.is_none() {
            b.start_timer();
        }
        b
    }

    /// A process-unique id for connections (exclusive-queue ownership) and similar.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.persistence.as_ref()
    }

    /// Creates a vhost (no-op if it exists).
    /// Runs a change through the cluster's metadata log if this node is in a cluster and the
    /// change is not being applied from it (see [`crate::metadata`]): `Some(answer)` once it
    /// is applied here; `None` when the caller makes the change itself.
    pub(crate) fn replicated(
        &self,
        op: impl FnOnce() -> crate::metadata::MetaOp,
    ) -> Option<crate::error::Result<()>> {
        crate::metadata::replicated(self.persistence.as_ref(), op)
    }

    /// Whether a definition change made now goes through the cluster's metadata log.
    pub(crate) fn replicates_definitions(&self) -> bool {
        crate::metadata::replicates(self.persistence.as_ref())
    }

    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        if self.vhost(name).is_none() {
            let op = || {
                crate::metadata::MetaOp::import(&Definitions {
                    vhosts: vec![crate::definitions::VHostDef {
                        name: name.to_string(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            };
            if let Some(r) = self.replicated(op) {
                match (r, self.vhost(name)) {
                    (Ok(()), Some(v)) => return v,
                    (r, _) => {
                        tracing::warn!(vhost = name, result = ?r, "the cluster did not add the vhost; adding it on this node only")
                    }
                }
            }
        }
        let vh = self
            .vhosts
            .write()
            .entry(name.to_string())
            .or_insert_with(|| {
                let vh = VHost::new(name, self.persistence.clone());
                vh.set_node_default_queue_type(self.config.default_queue_type.clone());
                vh
            })
            .clone();
        if let Some(p) = &self.persistence {
            p.definitions_changed(DefScope::Global);
        }
        vh
    }

    /// A vhost by name. In a cluster, a miss first catches up with every definition change
    /// committed so far (see [`Broker::found_or_synced`]).
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.found_or_synced(|| self.vhosts.read().get(name).cloned())
    }

    /// A look-up that, in a cluster, catches up with the cluster's definitions on a miss
    /// ([`crate::metadata::found_or_synced`]).
    pub(crate) fn found_or_synced<T>(&self, look: impl Fn() -> Option<T>) -> Option<T> {
        crate::metadata::found_or_synced(self.persistence.as_ref(), look)
    }

    /// Sets a vhost's description, tags and default queue type (in a cluster, on every
    /// node: through the metadata log). 404 if there is no such vhost.
    pub fn set_vhost_metadata(
        &self,
        name: &str,
        m: crate::vhost::metadata::VHostMetadata,
    ) -> crate::error::Result<()> {
        let Some(vh) = self.vhost(name) else {
            return Err(crate::error::AmqpError::not_found(format!(
                "no vhost '{name}'"
            )));
        };
        if vh.metadata() == m {
            return Ok(());
        }
        let op = || {
            crate::metadata::MetaOp::import(&Definitions {
                vhosts: vec![crate::definitions::VHostDef::with_metadata(name, m.clone())],
                ..Default::default()
            })
        };
        if let Some(r) = self.replicated(op) {
            return r;
        }
        vh.set_metadata(m);
        self.definitions_changed(DefScope::Global);
        Ok(())
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged catalogue stops the start with the store's error, which names the file.
    #[test]
    fn a_damaged_catalogue_is_an_open_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("warren-open-err-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = Persistence::new(&dir, warren_store::FileBackend::shared());
        let path = p.catalog().path();
        std::fs::write(&path, b"not a catalogue\n").unwrap();
        let e = Broker::open(BrokerConfig::default(), p).err().unwrap();
        assert!(
            matches!(
                &e,
                OpenError::Catalog(warren_store::StoreError::CatalogCorrupt { path: p, .. })
                    if *p == path
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
