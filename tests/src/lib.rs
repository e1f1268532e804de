//! Test support for Warren's integration tests: brokers to test against (in-process, or the
//! real `warren` binary), real AMQP clients (lapin) with timeouts, a hand-written AMQP client,
//! and the rest the tests share. The common items are re-exported here, so test files start
//! with `use warren_tests::*;`.
//!
//! Where the tests are:
//! - `tests/tests/*.rs` (this package): against an in-process [`TestBroker`].
//! - `crates/warren/tests/*.rs`: the tests that start the real `warren` binary
//!   ([`BrokerProcess`], or a command of their own), which they find with
//!   `env!("CARGO_BIN_EXE_warren")`: Cargo builds a package's binaries before its integration
//!   tests, and tells only those where they are.
//! - `crates/warrenctl/tests/*.rs`: the tests that run `warrenctl` (`CARGO_BIN_EXE_warrenctl`)
//!   against an in-process broker and its management API.
//!
//! Modules:
//! - [`broker`]: [`TestBroker`], a broker served in-process on a free loopback port.
//! - [`process`]: [`BrokerProcess`], the `warren` binary with its own data directory, for
//!   restart, crash and command-line tests.
//! - [`client`]: lapin helpers (connect, declare, publish, consume, get, drain, qos, field
//!   tables, reply codes, queue counts); every wait bounded by [`TIMEOUT`].
//! - [`headers`]: header values of a delivery, and its `x-death` history decoded.
//! - [`raw`]: a minimal AMQP client over raw frames, for what a well-behaved client cannot send.
//! - [`proxy`]: [`Proxy`], a TCP proxy that can cut a client's socket without a goodbye.
//! - [`pki`]: [`Pki`], a CA and certificates for the TLS tests.
//! - [`mgmt`]: the management API in-process ([`mgmt::MgmtBroker`], HTTPS: [`mgmt::HttpsApi`]),
//!   HTTP clients for it, and [`mgmt::run_warrenctl`].
//! - [`prometheus`]: the Prometheus endpoint in-process ([`prometheus::MetricsBroker`]), its
//!   text parsed, and a real Prometheus server ([`prometheus::PrometheusServer`]) to query.
//! - [`browser`]: [`browser::Console`], headless Chromium on the web console (DevTools
//!   protocol), for the console's browser tests.
//! - [`tmp`]: [`TempDir`], a scratch directory removed even when the test fails.
//! - [`logs`]: the broker's `tracing` output captured in memory, to check what it logged.

pub mod broker;
pub mod browser;
pub mod client;
pub mod headers;
pub mod logs;
pub mod mgmt;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod raw;
pub mod tmp;

pub use broker::{wait_until_released, TestBroker};
pub use client::*;
pub use headers::*;
pub use pki::{install_default_crypto, Identity, Pki};
pub use process::{start_refused, warren_bin, BrokerProcess, ChildGuard};
pub use proxy::Proxy;
pub use tmp::TempDir;
pub use warren_server::ServerConfig;
pub use warren_store::{Backend, Faults, FaultyBackend, FileBackend, SimDisk};
