//! openraft's type configuration for a replicated queue: a log entry is a batch of the queue
//! engine's commands, its answer the engine's answers to them, in order.
//!
//! Why batches: openraft 0.9 runs a leader's commands in order and an entry's apply waits for
//! its append to be flushed, so one command per entry would cost one fsync per command (about
//! 1,000 confirmed publishes a second here). The node's proposer puts whatever commands are
//! waiting into one entry.

use serde::{Deserialize, Serialize};
use std::io::Cursor;
use warren_broker::queue::{Applied, QueueCommand};

/// Commands for one queue, applied in order as one log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch(pub Vec<QueueCommand>);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} queue command(s)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// A queue replicated with Raft.
    pub QueueRaft:
        D = Batch,
        R = Vec<Applied>,
);

pub type NodeId = u64;
pub type LogIdOf = openraft::LogId<NodeId>;
pub type VoteOf = openraft::Vote<NodeId>;
pub type StorageErrorOf = openraft::StorageError<NodeId>;
