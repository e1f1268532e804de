//! [`StartupError`]: why `warren` did not start. Each says what is wrong and what to do; the
//! exit code tells a bad setting (64, as `EX_USAGE`) from a failure to start with good ones (1).

use crate::config::ConfigError;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A flag, environment variable or `warren.conf` line Warren cannot use.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "cannot create data directory {}: {source}; choose another with --data-dir",
        path.display()
    )]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The lock file that keeps a second broker out of the data directory.
    #[error(
        "cannot create {}: {source}; choose another data directory with --data-dir",
        path.display()
    )]
    LockFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the data directory {} is in use by another Warren process; stop it, or choose another \
         directory with --data-dir",
        path.display()
    )]
    DataDirInUse { path: PathBuf },
    /// The saved definitions or messages could not be loaded.
    #[error("cannot load the data directory {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: warren_broker::OpenError,
    },
    /// The replicated queues' write-ahead log (`quorum_queues.replicated = true`).
    #[error(
        "cannot open the replicated queues' log in {}: {source}; if it is damaged, set \
         quorum_queues.replicated = false to start without quorum queues' Raft groups",
        path.display()
    )]
    RaftLog {
        path: PathBuf,
        #[source]
        source: warren_cluster::WalError,
    },
    /// Joining the cluster (`cluster_formation.*`, `cluster.*`).
    #[error("cluster: {0}")]
    Cluster(String),
    /// The certificate, key or CA file of the AMQPS or stream TLS listener (`ssl_options.*`;
    /// the text names the key and the file).
    #[error("TLS configuration: {0}")]
    AmqpsTls(String),
    /// The management API's HTTPS certificate, key or CA file (`management.ssl.*`).
    #[error("management API TLS configuration: {0}")]
    ManagementTls(String),
    /// A listener's address could not be bound; `what` names the listener and its settings.
    #[error("cannot listen on {addr} for {what}: {source}{}", bind_hint(source))]
    Bind {
        addr: SocketAddr,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address of a bound listener: {0}")]
    ListenerAddr(#[source] std::io::Error),
    #[error("cannot write the listeners file {}: {source}", path.display())]
    ListenersFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StartupError {
    /// 64 for a bad setting (as before any typed error: scripts test for it), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartupError::Config(_) => 64,
            _ => 1,
        }
    }
}

/// What to do about a bind error that has a usual cause.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "; is another broker running there? Choose another address in the listener settings (see `warren --help`)",
        std::io::ErrorKind::PermissionDenied => "; ports below 1024 need privileges: choose another port",
        _ => "",
    }
}
