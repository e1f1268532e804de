//! openraft's type configuration for a replicated queue: its log entries are the queue
//! engine's commands, its answers the engine's.

use std::io::Cursor;
use warren_broker::queue::{Applied, QueueCommand};

openraft::declare_raft_types!(
    /// A queue replicated with Raft.
    pub QueueRaft:
        D = QueueCommand,
        R = Applied,
);

pub type NodeId = u64;
pub type LogIdOf = openraft::LogId<NodeId>;
pub type VoteOf = openraft::Vote<NodeId>;
pub type StorageErrorOf = openraft::StorageError<NodeId>;
