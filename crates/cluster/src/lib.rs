//! Warren's replicated queues (issue 14; docs/cluster-plan.md): quorum queues as openraft
//! groups whose state machine is the queue engine and whose logs share the node's
//! write-ahead log. Steps 3 and 4 of the plan, so far: a group per queue on one node or
//! across nodes (TCP links), confirms on commit. Wired into the AMQP server on one node
//! behind `quorum_queues.replicated` (off by default until snapshots keep the log short).
//!
//! Layout:
//! - [`types`]: openraft's type configuration (`QueueRaft`: entries are `QueueCommand`s).
//! - [`wal`]: the node's write-ahead log, shared by all groups, with group commit.
//! - [`log_store`]: one group's Raft log on the WAL (openraft's `RaftLogStorage`).
//! - [`state_machine`]: the queue engine applying committed commands (`RaftStateMachine`).
//! - [`network`]: a node alone (no links).
//! - [`transport`]: links between nodes: Raft RPCs over TCP, a shared-secret handshake.
//! - [`group`]: [`QueueGroup`], start a group and propose commands.
//! - [`meta`]: the cluster's metadata group: definition changes every node applies.
//! - [`node_membership`]: which nodes make the cluster (`join_cluster`,
//!   `forget_cluster_node`): the metadata group's membership.
//! - [`nodes`]: node names, the addresses and ids derived from them, owner-id numbers.
//! - [`node`]: [`LocalNode`], the broker's `ReplicaHost`: the node's WAL, its Raft runtime,
//!   and a group per quorum queue (`quorum_queues.replicated = true`).
//! - [`replica`]: one quorum queue on this node, a member of its group or not (then served
//!   through the members: proposals forwarded, deliveries sent over).
//! - [`remote`]: classic queues every node knows (`cluster.classic_queues_everywhere`): the
//!   stand-in on the other nodes ([`remote::RemoteReplica`]) and the pushes of deliveries.
//! - [`members`]: who is in a queue's group: placing a new queue's members
//!   (`x-quorum-initial-group-size`), adding and removing members (`rabbitmq-queues
//!   add_member`, `delete_member`, `grow`, `shrink`) with openraft's membership changes.

// openraft's StorageError is large; it is what its traits return.
#![allow(clippy::result_large_err)]

pub mod group;
pub mod log_store;
pub mod members;
pub mod meta;
pub mod network;
pub mod node;
pub mod node_membership;
pub mod nodes;
pub mod remote;
pub mod replica;
pub mod state_machine;
pub mod transport;
pub mod types;
pub mod wal;

pub use group::{GroupError, Membership, QueueGroup};
pub use node::{ClusterOpenError, ClusterSpec, LocalNode};
pub use nodes::{node_address, node_id};
pub use openraft::BasicNode;
pub use state_machine::Output;
pub use transport::{LinkTls, Listener, Registry, TcpPeers};
pub use wal::{GroupState, NodeWal, WalError};
