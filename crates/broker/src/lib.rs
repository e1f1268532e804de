//! Warren's domain: what RabbitMQ calls vhosts, exchanges, bindings, queues, consumers and
//! deliveries, as plain synchronous state machines behind short-held locks.
//!
//! Layout:
//! - [`error`]: [`AmqpError`], a reply code with RabbitMQ's text.
//! - [`message`]: the immutable [`Message`] shared by every queue it is routed to.
//! - [`exchange`]: exchange types and their routing tables (a file per type).
//! - [`queue`]: a queue: its [`queue::engine`] (a deterministic state machine: ready list,
//!   consumers, dispatch, TTL, limits, dead-letter reasons) and, around it, the lock, the
//!   store, the clock and the effects the engine asks for. A queue does not hold its vhost:
//!   what its commands leave for the vhost (dead letters, timers, deletion) goes into the
//!   caller's [`queue::Followups`], carried out by [`VHost::follow_up`].
//! - [`stream`]: streams (`x-queue-type: stream`): an append-only log per stream that
//!   consumers read from an offset of their choice; a stream is a [`Queue`] that hands its
//!   messages and consumers to its [`stream::Stream`].
//! - [`delivery`]: a channel's delivery side: delivery tags (each naming a checkout in its
//!   queue), prefetch, the channel's message counters.
//! - [`vhost`]: declare/delete/bind/publish within one virtual host.
//! - [`persist`]: message stores of durable queues, group commit, saved definitions (the
//!   broker's flusher thread drives it; it does not hold the broker).
//! - [`definitions`]: the topology in RabbitMQ's definitions format.
//! - `definitions_journal`: the definitions saved as a snapshot and a journal of changes.
//! - [`metadata`]: definitions replicated through a cluster's metadata log ([`metadata::MetaOp`]).
//! - [`json`]: field tables as JSON.
//! - [`alarm`]: memory and disk alarms that block publishers.
//! - [`auth`]: users, password hashes, permissions, user and vhost limits.
//! - [`broker`]: the set of vhosts and broker-wide settings.
//! - [`connections`]: the registry of client connections, for operators, and the counts of
//!   their channels (closed ones' kept) and of connections and channels opened and closed.
//! - [`stats`]: the counters behind the management API's `message_stats` and the Prometheus
//!   metrics: per channel (and per channel and exchange), per connection, churn; each with
//!   one writer.
//!
//! Nothing here knows frames or sockets: deliveries leave through the
//! [`delivery::DeliveryWriter`] trait that the server implements.
//!
//! Lock order (never taken the other way round): vhost maps → exchange bindings (released
//! before queues are touched) → queue → its store; queue → delivery channel → writer.

pub mod alarm;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod connections;
pub mod deadletter;
pub mod definitions;
pub mod definitions_journal;
pub mod delayed;
pub mod delivery;
pub mod error;
pub mod exchange;
pub mod json;
pub mod message;
pub mod metadata;
pub mod persist;
pub mod policy;
pub mod queue;
pub mod stats;
pub mod stream;
pub mod vhost;

pub use broker::{Broker, BrokerConfig, OpenError};
pub use definitions::DefinitionsError;
pub use delivery::{DeliveryChannel, DeliveryWriter};
pub use error::AmqpError;
pub use message::Message;
pub use queue::Queue;
pub use vhost::VHost;

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    /// A fresh, empty directory under the system temp dir, removed on drop: also when the
    /// test that made it fails.
    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("warren-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Waits until a dropped broker's flusher thread (which may be saving the definitions)
    /// has let go of `p`, so that it writes nothing into a [`TestDir`] removed next.
    pub fn wait_until_released(p: std::sync::Arc<crate::persist::Persistence>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::sync::Arc::strong_count(&p) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "persistence still held"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
