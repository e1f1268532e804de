//! Warren's replicated queues (issue 14; docs/cluster-plan.md): quorum queues as openraft
//! groups whose state machine is the queue engine and whose logs share the node's
//! write-ahead log. This is step 3 of the plan: one node, a group per queue, confirms on
//! commit. Not wired into the AMQP server yet.
//!
//! Layout:
//! - [`types`]: openraft's type configuration (`QueueRaft`: entries are `QueueCommand`s).
//! - [`wal`]: the node's write-ahead log, shared by all groups, with group commit.
//! - [`log_store`]: one group's Raft log on the WAL (openraft's `RaftLogStorage`).
//! - [`state_machine`]: the queue engine applying committed commands (`RaftStateMachine`).
//! - [`network`]: links to other members (none yet: a single node).
//! - [`group`]: [`QueueGroup`], start a group and propose commands.

pub mod group;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;
pub mod wal;

pub use group::{GroupError, QueueGroup};
pub use state_machine::Output;
pub use wal::{GroupState, NodeWal, WalError};
