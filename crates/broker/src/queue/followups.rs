//! What a queue command leaves for its vhost to do once the queue's lock is released. A queue
//! does not hold its vhost: its commands push [`Followup`]s into a [`Followups`] the caller
//! passes in, and the caller hands them to [`crate::VHost::follow_up`], which routes the dead
//! letters, starts the timer and deletes queues that asked for it. So no queue locks another
//! queue, and the routing of dead letters is the vhost's business, as the routing of
//! publishes is.

use super::Queue;
use crate::deadletter::DeadLetter;
use std::collections::VecDeque;
use std::sync::Arc;

/// Why a queue asks to be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// An auto-delete queue lost its last consumer.
    Unused,
    /// The queue was unused for longer than its `x-expires`.
    Expired,
}

/// One thing a queue asks of its vhost.
pub enum Followup {
    /// Route this dead letter from the queue to its dead-letter exchange.
    DeadLetter(Arc<Queue>, DeadLetter),
    /// The queue needs timer ticks (TTL, `x-expires`).
    StartTimer(Arc<Queue>),
    /// Delete the queue.
    Delete(Arc<Queue>, DeleteReason),
}

/// The follow-ups of one or more queue commands, in the order they arose.
#[must_use = "hand the follow-ups to VHost::follow_up"]
#[derive(Default)]
pub struct Followups(VecDeque<Followup>);

impl Followups {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, f: Followup) {
        self.0.push_back(f);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The oldest follow-up not yet taken.
    pub fn pop(&mut self) -> Option<Followup> {
        self.0.pop_front()
    }
}

impl std::fmt::Debug for Followup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Followup::DeadLetter(q, d) => write!(f, "DeadLetter({}, {:?})", q.name, d.reason),
            Followup::StartTimer(q) => write!(f, "StartTimer({})", q.name),
            Followup::Delete(q, r) => write!(f, "Delete({}, {r:?})", q.name),
        }
    }
}

impl std::fmt::Debug for Followups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}
