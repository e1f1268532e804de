//! openraft's type configuration for a replicated queue: a log entry is a batch of the queue
//! engine's commands, its answer the engine's answers to them, in order.
//!
//! Why batches: openraft 0.9 runs a leader's commands in order and an entry's apply waits for
//! its append to be flushed, so one command per entry would cost one fsync per command (about
//! 1,000 confirmed publishes a second here). The node's proposer puts whatever commands are
//! waiting into one entry.

use serde::{Deserialize, Serialize};
use std::io::Cursor;
use warren_broker::metadata::MetaOp;
use warren_broker::queue::{Applied, QueueCommand};

/// What one log entry carries: commands for one queue, applied in order; or, in the
/// cluster's metadata group, one definition change (see [`warren_broker::metadata`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Proposal {
    Queue(Vec<QueueCommand>),
    Meta {
        /// The node that proposed it, and its number there: that node answers its caller
        /// once it has applied the change itself.
        origin: NodeId,
        request: u64,
        op: MetaOp,
    },
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proposal::Queue(c) => write!(f, "{} queue command(s)", c.len()),
            Proposal::Meta { op, .. } => write!(f, "definition change {op:?}"),
        }
    }
}

openraft::declare_raft_types!(
    /// A queue replicated with Raft.
    pub QueueRaft:
        D = Proposal,
        R = Vec<Applied>,
);

pub type NodeId = u64;
pub type LogIdOf = openraft::LogId<NodeId>;
pub type VoteOf = openraft::Vote<NodeId>;
pub type StorageErrorOf = openraft::StorageError<NodeId>;
