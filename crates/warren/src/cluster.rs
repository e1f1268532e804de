//! Forming a cluster from `warren.conf` (issue 14): the nodes named in rabbitmq.conf's style,
//! this node's name, the shared secret (the Erlang cookie's role).
//!
//! ```text
//! cluster_formation.classic_config.nodes.1 = warren@host1:25672
//! cluster_formation.classic_config.nodes.2 = warren@host2:25672
//! cluster_formation.classic_config.nodes.3 = warren@host3:25672
//! cluster.node_name = warren@host1:25672
//! ```
//!
//! `cluster.node_name` without any `cluster_formation.classic_config.nodes.*` makes a cluster
//! of one, which `warrenctl join_cluster` can make join another.
//!
//! A node name is `warren@host:port`, the port being the node's cluster port (25672 when left
//! out, as RabbitMQ's inter-node port: `warren_cluster::nodes`); a node listens on it and the
//! others reach it there.
//! The secret is read from `cluster.secret_file` (default `~/.warren.cookie`, created with a
//! random secret on first use, readable by its owner only); every node must have the same.

use crate::config::{ConfigError, ConfigFile};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warren_cluster::{node_address as address, node_id, BasicNode};

/// Keys this module reads.
pub const KEYS: &[(&str, &str)] = &[
    (
        "cluster_formation.classic_config.nodes.*",
        "a node of the cluster, warren@host:port (port: its cluster port, default 25672); list every node, this one included",
    ),
    (
        "cluster.node_name",
        "this node's name among cluster_formation.classic_config.nodes.* (or WARREN_NODENAME); alone, without those: a cluster of one, which can join another (warrenctl join_cluster)",
    ),
    (
        "cluster.secret_file",
        "the cluster's shared secret, the same file content on every node [default: ~/.warren.cookie, created if missing]",
    ),
    (
        "cluster.ssl_options.certfile",
        "TLS between nodes: this node's certificate (PEM), for its host name or address, usable as server and client",
    ),
    ("cluster.ssl_options.keyfile", "TLS between nodes: its private key (PEM)"),
    (
        "cluster.ssl_options.cacertfile",
        "TLS between nodes: the CA every node's certificate must chain to (PEM)",
    ),
    (
        "cluster.classic_queues_everywhere",
        "true: durable classic queues are known to every node and reached from any of them on the node that declared them (their home), as in RabbitMQ; false: each node has its own [default: true]",
    ),
    (
        "quorum_cluster_size",
        "members of a new quorum queue's Raft group when x-quorum-initial-group-size is not given (RabbitMQ's rabbit.quorum_cluster_size) [default: 3]",
    ),
];

/// Members of a new quorum queue's group (RabbitMQ's `quorum_cluster_size`).
const DEFAULT_GROUP_SIZE: usize = 3;

/// A cluster as the settings describe it.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub me: String,
    pub nodes: Vec<String>,
    pub secret_file: PathBuf,
    /// `cluster.ssl_options.*`: TLS on the links between nodes (mutual: each node checks the
    /// other's certificate against the CA).
    pub tls: Option<warren_server::tls::TlsOptions>,
    /// `quorum_cluster_size`: a new quorum queue's members when its declaration does not
    /// say (RabbitMQ's default, 3).
    pub default_group_size: usize,
    /// `cluster.classic_queues_everywhere`: every node knows the durable classic queues and
    /// reaches them on their home node.
    pub classic_everywhere: bool,
}

/// The cluster settings, if `cluster_formation.classic_config.nodes.*` names any node.
pub fn settings(
    file: &ConfigFile,
    node_name: Option<String>,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let mut nodes: Vec<String> = file
        .values_under("cluster_formation.classic_config.nodes.")
        .into_iter()
        .map(|(_, v)| v.to_string())
        .collect();
    if nodes.is_empty() {
        // A node name alone: a cluster of one, which `warrenctl join_cluster` can make join
        // another.
        match file.get("cluster.node_name") {
            Some(me) => nodes.push(node_name.clone().unwrap_or_else(|| me.to_string())),
            None => return Ok(None),
        }
    }
    for n in &nodes {
        address(n).map_err(|e| file.error("cluster_formation.classic_config.nodes.*", &e))?;
    }
    let me = node_name
        .or_else(|| file.get("cluster.node_name").map(str::to_string))
        .ok_or_else(|| ConfigError::Missing {
            set: "cluster_formation.classic_config.nodes.*".into(),
            needed: "cluster.node_name (or WARREN_NODENAME): which of the nodes this one is".into(),
        })?;
    if !nodes.contains(&me) {
        return Err(file.error(
            "cluster.node_name",
            &format!(
                "'{me}' is not one of cluster_formation.classic_config.nodes.* ({})",
                nodes.join(", ")
            ),
        ));
    }
    let secret_file = file
        .get("cluster.secret_file")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
                .join(".warren.cookie")
        });
    let tls_keys =
        ["certfile", "keyfile", "cacertfile"].map(|k| format!("cluster.ssl_options.{k}"));
    let tls = match tls_keys.iter().map(|k| file.get(k)).collect::<Vec<_>>()[..] {
        [None, None, None] => None,
        [Some(cert), Some(key), Some(ca)] => Some(warren_server::tls::TlsOptions {
            certfile: cert.into(),
            keyfile: key.into(),
            cacertfile: Some(ca.into()),
            verify_peer: true,
            fail_if_no_peer_cert: true,
        }),
        ref some => {
            let (set, missing): (Vec<_>, Vec<_>) =
                tls_keys.iter().zip(some).partition(|(_, v)| v.is_some());
            return Err(ConfigError::Missing {
                set: set[0].0.clone(),
                needed: missing[0].0.clone(),
            });
        }
    };
    let default_group_size = match file.parse_value::<usize>("quorum_cluster_size")? {
        Some(0) => {
            return Err(file.error(
                "quorum_cluster_size",
                "a quorum queue needs at least one member",
            ))
        }
        n => n.unwrap_or(DEFAULT_GROUP_SIZE),
    };
    let classic_everywhere = file
        .parse_value::<bool>("cluster.classic_queues_everywhere")?
        .unwrap_or(true);
    Ok(Some(ClusterSettings {
        me,
        nodes,
        secret_file,
        tls,
        default_group_size,
        classic_everywhere,
    }))
}

/// Reads the shared secret, creating the file with a random one if it does not exist (as the
/// Erlang cookie is): atomically, so nodes started at once on one machine agree.
fn secret(path: &Path) -> Result<Arc<[u8]>, String> {
    let read = |p: &Path| -> Result<Arc<[u8]>, String> {
        let s = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let s = s.trim_ascii();
        if s.len() < 16 {
            return Err(format!(
                "{} holds {} bytes: a cluster secret needs at least 16",
                p.display(),
                s.len()
            ));
        }
        Ok(Arc::from(s))
    };
    if path.exists() {
        return read(path);
    }
    let cookie: String = (0..32)
        .map(|_| char::from(b'A' + rand::random::<u8>() % 26))
        .collect();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let made = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        f.write_all(cookie.as_bytes())?;
        f.sync_all()?;
        // Fails if another node made it meanwhile: then theirs is the one.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    made.map_err(|e| format!("cannot create the cluster secret {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "created the cluster secret; copy it to every node");
    read(path)
}

/// What the cluster crate is given: ids, addresses, the secret, where to listen.
pub fn spec(s: &ClusterSettings) -> Result<warren_cluster::ClusterSpec, String> {
    let mut nodes = BTreeMap::new();
    for n in &s.nodes {
        address(n)?;
        // Memberships hold names (warren_cluster::nodes).
        nodes.insert(node_id(n), BasicNode { addr: n.clone() });
    }
    let own = address(&s.me)?;
    let listen: SocketAddr = own
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve this node's address {own}: {e}"))?
        .next()
        .ok_or_else(|| format!("this node's address {own} resolves to nothing"))?;
    let tls = match &s.tls {
        None => None,
        Some(o) => Some(warren_cluster::LinkTls {
            acceptor: warren_server::tls::acceptor_for(o, "cluster.ssl_options")?,
            connector: warren_server::tls::connector_for(o, "cluster.ssl_options")?,
        }),
    };
    Ok(warren_cluster::ClusterSpec {
        me: node_id(&s.me),
        nodes,
        secret: secret(&s.secret_file)?,
        listen,
        tls,
        default_group_size: s.default_group_size,
        classic_everywhere: s.classic_everywhere,
    })
}
