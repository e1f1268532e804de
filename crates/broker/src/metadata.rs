//! Definitions replicated across a cluster (issue 14, docs/cluster-plan.md step 4): the
//! changes every node must make alike go through the cluster's metadata log as [`MetaOp`]s,
//! and every node applies them, in log order, with [`apply`] on its own broker.
//!
//! What is replicated: quorum queues (their Raft groups span the nodes), durable exchanges
//! that are not auto-deleted, the bindings between them, vhosts, users, permissions, vhost
//! limits and policies; with `cluster.classic_queues_everywhere`, durable classic queues too
//! (each lives on its home node, the others reach it: [`crate::queue::home`]). Streams,
//! exclusive and auto-delete objects, and otherwise classic queues, stay on the node that
//! declared them (see docs/compatibility.md).
//!
//! The declaring node does not change its own state first: a [`VHost`] method that would
//! change replicated definitions hands the change to [`MetadataLog::run`], which returns once
//! the change is committed and applied on this node, with the answer that applying gave here
//! (every node gets the same answer: they apply the same changes in the same order). While
//! [`apply`] runs, the same methods change the local state directly.

use crate::definitions::Definitions;
use crate::error::AmqpError;
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use crate::Broker;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::Cell;
use warren_protocol::codec::{Field, Reader, Writer};
use warren_protocol::FieldTable;

/// A field table as its AMQP encoding (exact, unlike JSON).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireTable(pub FieldTable);

impl Serialize for WireTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = BytesMut::new();
        self.0.write(&mut Writer::new(&mut buf));
        s.serialize_bytes(&buf)
    }
}

impl<'de> Deserialize<'de> for WireTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buf: crate::queue::command::serde_bytes_compat::ByteBuf = Deserialize::deserialize(d)?;
        FieldTable::read(&mut Reader::new(Bytes::from(buf.0)))
            .map(WireTable)
            .map_err(|e| serde::de::Error::custom(format!("undecodable field table: {e}")))
    }
}

/// A binding from exchange `source` to queue or exchange `destination`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingOp {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub to_exchange: bool,
    pub routing_key: String,
    pub arguments: WireTable,
}

/// One replicated definition change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOp {
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        internal: bool,
        arguments: WireTable,
    },
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
    },
    /// A quorum queue (durable, not exclusive, not auto-deleted).
    DeclareQueue {
        vhost: String,
        name: String,
        arguments: WireTable,
    },
    DeleteQueue {
        vhost: String,
        name: String,
        if_unused: bool,
        if_empty: bool,
    },
    Bind(BindingOp),
    Unbind(BindingOp),
    /// Changes nothing: once this node has applied it, it has applied every change
    /// committed before (a look-up that misses waits for one).
    Barrier,
    /// One vhost, user, permission or policy, in RabbitMQ's definitions format (JSON),
    /// imported as a definitions file is (made with [`MetaOp::import`]).
    Import {
        definitions: String,
    },
    DeleteVhost {
        name: String,
    },
    DeleteUser {
        name: String,
    },
    ClearPermissions {
        user: String,
        vhost: String,
    },
    VhostLimits {
        vhost: String,
        max_connections: Option<u32>,
        max_queues: Option<u32>,
    },
    ClearPolicy {
        vhost: String,
        name: String,
        operator: bool,
    },
    /// A quorum queue whose Raft group has these members (node names, the declaring node
    /// first: `x-quorum-initial-group-size` of them). [`MetaOp::DeclareQueue`] (from before
    /// group sizes) has every node as a member.
    DeclareQuorumQueue {
        vhost: String,
        name: String,
        arguments: WireTable,
        members: Vec<String>,
    },
    /// A durable classic queue whose home is node `home` (where it was declared): there it
    /// is a queue with its store; every other node has a stand-in that reaches it
    /// (docs/cluster-plan.md, step 6; `cluster.classic_queues_everywhere`).
    DeclareHomedQueue {
        vhost: String,
        name: String,
        arguments: WireTable,
        home: String,
    },
}

impl MetaOp {
    /// The object the change is about, as a key under which the latest declaration is kept
    /// (a catalogue of what is declared: a new node's starting point).
    pub fn key(&self) -> String {
        match self {
            MetaOp::Barrier => String::new(),
            MetaOp::Import { definitions } => {
                let d: Definitions = serde_json::from_str(definitions).unwrap_or_default();
                if let Some(v) = d.vhosts.first() {
                    format!("v\0{}", v.name)
                } else if let Some(u) = d.users.first() {
                    format!("u\0{}", u.name)
                } else if let Some(p) = d.permissions.first() {
                    format!("p\0{}\0{}", p.vhost, p.user)
                } else if let Some(p) = d.policies.first() {
                    format!("P\0{}\0{}\0false", p.vhost, p.name)
                } else if let Some(p) = d.operator_policies.first() {
                    format!("P\0{}\0{}\0true", p.vhost, p.name)
                } else {
                    String::new()
                }
            }
            MetaOp::DeleteVhost { name } => format!("v\0{name}"),
            MetaOp::DeleteUser { name } => format!("u\0{name}"),
            MetaOp::ClearPermissions { user, vhost } => format!("p\0{vhost}\0{user}"),
            MetaOp::VhostLimits { vhost, .. } => format!("l\0{vhost}"),
            MetaOp::ClearPolicy {
                vhost,
                name,
                operator,
            } => format!("P\0{vhost}\0{name}\0{operator}"),
            MetaOp::DeclareExchange { vhost, name, .. }
            | MetaOp::DeleteExchange { vhost, name, .. } => format!("x\0{vhost}\0{name}"),
            MetaOp::DeclareQueue { vhost, name, .. }
            | MetaOp::DeclareQuorumQueue { vhost, name, .. }
            | MetaOp::DeclareHomedQueue { vhost, name, .. }
            | MetaOp::DeleteQueue { vhost, name, .. } => {
                format!("q\0{vhost}\0{name}")
            }
            MetaOp::Bind(b) | MetaOp::Unbind(b) => {
                let mut args: Vec<String> = b
                    .arguments
                    .0
                    .iter()
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect();
                args.sort();
                format!(
                    "b\0{}\0{}\0{}\0{}\0{}\0{}",
                    b.vhost,
                    b.source,
                    b.to_exchange,
                    b.destination,
                    b.routing_key,
                    args.join(",")
                )
            }
        }
    }

    /// Whether it declares (rather than removes) its object.
    pub fn declares(&self) -> bool {
        matches!(
            self,
            MetaOp::DeclareExchange { .. }
                | MetaOp::DeclareQueue { .. }
                | MetaOp::DeclareQuorumQueue { .. }
                | MetaOp::DeclareHomedQueue { .. }
                | MetaOp::Bind(_)
                | MetaOp::Import { .. }
                | MetaOp::VhostLimits { .. }
        )
    }

    /// In which order a catalogue is applied to a node that starts from it: vhosts, users,
    /// permissions, limits and policies, then exchanges and queues, then bindings.
    pub fn rank(&self) -> u8 {
        match self {
            MetaOp::Import { .. } => {
                let k = self.key();
                match k.as_bytes().first() {
                    Some(b'v') => 0,
                    Some(b'u') => 1,
                    _ => 2,
                }
            }
            MetaOp::VhostLimits { .. } => 2,
            MetaOp::Bind(_) => 4,
            _ => 3,
        }
    }

    /// One definitions object to import everywhere.
    pub fn import(d: &Definitions) -> MetaOp {
        MetaOp::Import {
            definitions: serde_json::to_string(d).expect("definitions serialize"),
        }
    }
}

/// The cluster's metadata log, as the broker uses it.
pub trait MetadataLog: Send + Sync {
    /// Runs `op` through the log: returns once it is committed and applied on this node, with
    /// the answer applying it gave here.
    fn run(&self, op: MetaOp) -> Result<(), AmqpError>;
}

thread_local! {
    static APPLYING: Cell<bool> = const { Cell::new(false) };
    static PROPOSER: Cell<bool> = const { Cell::new(false) };
    static PLACEMENT: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
    static HOME: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (declaring a classic queue) with its home node (see [`home`]).
pub(crate) fn with_home<T>(home: Option<String>, f: impl FnOnce() -> T) -> T {
    HOME.with(|h| *h.borrow_mut() = home);
    let r = f();
    HOME.with(|h| *h.borrow_mut() = None);
    r
}

/// The home node of the classic queue being declared on this thread, when a committed change
/// or a node's saved definitions name one (`None`: declared here, by a client).
pub(crate) fn home() -> Option<String> {
    HOME.with(|h| h.borrow().clone())
}

/// Runs `f` (declaring a quorum queue from a committed change) with the members its group
/// was given (see [`placement`]).
fn with_placement<T>(members: Option<Vec<String>>, f: impl FnOnce() -> T) -> T {
    PLACEMENT.with(|p| *p.borrow_mut() = members);
    let r = f();
    PLACEMENT.with(|p| *p.borrow_mut() = None);
    r
}

/// The members (node names) of the quorum queue being declared from a committed change on
/// this thread: `Some(empty)` for a declaration from before group sizes (every node is a
/// member), `None` when the queue is not being declared from the metadata log (a restart:
/// the node's own log says whether it is a member).
pub fn placement() -> Option<Vec<String>> {
    PLACEMENT.with(|p| p.borrow().clone())
}

/// Runs `f` (applying a committed change) knowing whether this node proposed the change:
/// a quorum queue declared here is led from here at first, as RabbitMQ's `client-local`
/// leader locator does (see [`proposed_here`]).
pub fn as_proposer<T>(own: bool, f: impl FnOnce() -> T) -> T {
    PROPOSER.with(|p| p.set(own));
    let r = f();
    PROPOSER.with(|p| p.set(false));
    r
}

/// Whether the change being applied on this thread was proposed by this node.
pub fn proposed_here() -> bool {
    PROPOSER.with(Cell::get)
}

/// Whether a change made now must go through the metadata log (it must, but while
/// [`apply`] makes it).
pub(crate) fn must_replicate() -> bool {
    !APPLYING.with(Cell::get)
}

/// Runs a change through the cluster's metadata log if this node is in one (`persistence`
/// holds the log) and the change is not being applied from it: `Some(answer)` once it is
/// applied here; `None` when the caller makes the change itself.
pub(crate) fn replicated(
    persistence: Option<&std::sync::Arc<crate::persist::Persistence>>,
    op: impl FnOnce() -> MetaOp,
) -> Option<Result<(), AmqpError>> {
    let log = persistence?.metadata_log()?;
    must_replicate().then(|| log.run(op()))
}

/// Whether a definition change made now goes through the cluster's metadata log.
pub(crate) fn replicates(
    persistence: Option<&std::sync::Arc<crate::persist::Persistence>>,
) -> bool {
    persistence.is_some_and(|p| p.metadata_log().is_some()) && must_replicate()
}

/// Looks something up; in a cluster, a miss first waits until this node has applied every
/// definition change committed so far (a barrier through the metadata log), so what was made
/// on another node and acknowledged there is found here too.
pub(crate) fn found_or_synced<T>(
    persistence: Option<&std::sync::Arc<crate::persist::Persistence>>,
    look: impl Fn() -> Option<T>,
) -> Option<T> {
    if let Some(found) = look() {
        return Some(found);
    }
    if let Err(e) = replicated(persistence, || MetaOp::Barrier)? {
        tracing::warn!(error = %e, "could not catch up with the cluster's definitions");
    }
    look()
}

/// Applies a committed change to this node's broker: what every node does with every entry
/// of the metadata log. Objects are created and removed as their AMQP methods do (the same
/// checks, the same answers).
pub fn apply(broker: &std::sync::Arc<Broker>, op: &MetaOp) -> Result<(), AmqpError> {
    struct Applying;
    impl Drop for Applying {
        fn drop(&mut self) {
            APPLYING.with(|a| a.set(false));
        }
    }
    APPLYING.with(|a| a.set(true));
    let _applying = Applying;
    let vhost = |name: &str| -> Result<std::sync::Arc<VHost>, AmqpError> {
        broker.vhost(name).ok_or_else(|| {
            AmqpError::new(
                warren_protocol::constants::NOT_FOUND,
                format!("no vhost '{name}' on this node"),
            )
        })
    };
    match op {
        MetaOp::Barrier => Ok(()),
        MetaOp::Import { definitions } => {
            let d: Definitions = serde_json::from_str(definitions)
                .map_err(|e| AmqpError::precondition(format!("undecodable definitions: {e}")))?;
            match broker.import_definitions(&d).into_iter().next() {
                Some(e) => Err(AmqpError::precondition(e.to_string())),
                None => Ok(()),
            }
        }
        MetaOp::DeleteVhost { name } => {
            broker.delete_vhost(name);
            Ok(())
        }
        MetaOp::DeleteUser { name } => {
            broker.delete_user(name);
            Ok(())
        }
        MetaOp::ClearPermissions { user, vhost } => {
            broker.clear_permissions(user, vhost);
            Ok(())
        }
        MetaOp::VhostLimits {
            vhost,
            max_connections,
            max_queues,
        } => broker.set_vhost_limits(
            vhost,
            crate::auth::VHostLimits {
                max_connections: *max_connections,
                max_queues: *max_queues,
            },
        ),
        MetaOp::ClearPolicy {
            vhost: v,
            name,
            operator,
        } => {
            vhost(v)?.clear_policy(name, *operator);
            Ok(())
        }
        MetaOp::DeclareExchange {
            vhost: v,
            name,
            kind,
            internal,
            arguments,
        } => vhost(v)?
            .declare_exchange(ExchangeDeclare {
                name: name.as_str().into(),
                kind: kind.as_str().into(),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: *internal,
                arguments: arguments.0.clone(),
            })
            .map(drop),
        MetaOp::DeleteExchange {
            vhost: v,
            name,
            if_unused,
        } => vhost(v)?.delete_exchange(name, *if_unused),
        MetaOp::DeclareQueue {
            vhost: v,
            name,
            arguments,
        } => with_placement(Some(Vec::new()), || {
            declare_durable(&vhost(v)?, name, arguments)
        }),
        MetaOp::DeclareQuorumQueue {
            vhost: v,
            name,
            arguments,
            members,
        } => with_placement(Some(members.clone()), || {
            declare_durable(&vhost(v)?, name, arguments)
        }),
        MetaOp::DeclareHomedQueue {
            vhost: v,
            name,
            arguments,
            home,
        } => with_home(Some(home.clone()), || {
            declare_durable(&vhost(v)?, name, arguments)
        }),
        MetaOp::DeleteQueue {
            vhost: v,
            name,
            if_unused,
            if_empty,
        } => vhost(v)?
            .delete_queue(name, *if_unused, *if_empty, 0)
            .map(drop),
        MetaOp::Bind(b) | MetaOp::Unbind(b) => {
            let v = vhost(&b.vhost)?;
            let (key, args) = (b.routing_key.as_str().into(), b.arguments.0.clone());
            let (dst, src) = (b.destination.as_str(), b.source.as_str());
            match (matches!(op, MetaOp::Bind(_)), b.to_exchange) {
                (true, true) => v.bind_exchange(dst, src, key, args),
                (true, false) => v.bind_queue(dst, src, key, args, 0),
                (false, true) => v.unbind_exchange(dst, src, key, args),
                (false, false) => v.unbind_queue(dst, src, key, args, 0),
            }
        }
    }
}

/// Declares a durable shared queue (quorum, or classic with its home) as a committed change
/// says.
fn declare_durable(
    v: &std::sync::Arc<VHost>,
    name: &str,
    arguments: &WireTable,
) -> Result<(), AmqpError> {
    v.declare_queue(
        QueueDeclare {
            name: name.into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: arguments.0.clone(),
        },
        0,
    )
    .map(drop)
}
