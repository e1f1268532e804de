//! A queue's ready messages: one FIFO per priority level (one level unless the queue was
//! declared with `x-max-priority`), each ordered by sequence number so a requeued message
//! returns to its original place.

use super::QueuedMessage;
use std::collections::VecDeque;

pub struct ReadyList {
    /// Index = priority; the highest non-empty level is served first.
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
}

impl ReadyList {
    pub fn new(max_priority: u8) -> Self {
        ReadyList {
            levels: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
        }
    }

    fn level(&self, m: &QueuedMessage) -> usize {
        (m.priority as usize).min(self.levels.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        self.levels[l].push_back(m);
        self.len += 1;
    }

    /// Puts a message back where its sequence number says it belongs.
    pub fn insert_ordered(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        let q = &mut self.levels[l];
        let at = q.partition_point(|r| r.seq < m.seq);
        q.insert(at, m);
        self.len += 1;
    }

    pub fn front(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(|q| q.front())
    }

    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        let m = self.levels.iter_mut().rev().find_map(|q| q.pop_front())?;
        self.len -= 1;
        Some(m)
    }

    /// The messages in delivery order (highest priority first).
    pub fn iter(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.levels.iter().rev().flat_map(|q| q.iter())
    }

    pub fn drain(&mut self) -> Vec<QueuedMessage> {
        self.len = 0;
        self.levels
            .iter_mut()
            .rev()
            .flat_map(|q| q.drain(..))
            .collect()
    }
}
