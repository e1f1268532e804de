//! Test support for Warren's integration tests: brokers to test against (in-process, or the
//! real `warren` binary), real AMQP clients (lapin) with timeouts, a hand-written AMQP client,
//! and the rest the tests share. Everything a test needs is re-exported here, so test files
//! start with `use warren_tests::*;`.
//!
//! Modules:
//! - [`broker`]: [`TestBroker`], a broker served in-process on a free loopback port.
//! - [`process`]: [`BrokerProcess`], the `warren` binary with its own data directory, for
//!   restart, crash and command-line tests.
//! - [`client`]: lapin helpers (connect, declare, publish, consume, get, drain, qos, field
//!   tables, reply codes, queue counts); every wait bounded by [`TIMEOUT`].
//! - [`raw`]: a minimal AMQP client over raw frames, for what a well-behaved client cannot send.
//! - [`proxy`]: [`Proxy`], a TCP proxy that can cut a client's socket without a goodbye.
//! - [`pki`]: [`Pki`], a CA and certificates for the TLS tests.
//! - [`tmp`]: [`TempDir`], a scratch directory removed even when the test fails.

pub mod broker;
pub mod client;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod tmp;

pub use broker::TestBroker;
pub use client::*;
pub use pki::{Identity, Pki};
pub use process::{built_binary, BrokerProcess};
pub use proxy::Proxy;
pub use tmp::TempDir;
pub use warren_server::ServerConfig;
pub use warren_store::{Backend, Faults, FaultyBackend, FileBackend};
