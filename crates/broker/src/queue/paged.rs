//! The part of a queue's backlog that lives only in its store: every unacked record from one
//! position of the store onwards. Memory holds that position and a count, nothing per
//! message: messages are appended in queue order while the queue pages, and read back in the
//! same order with `QueueStore::read_next`, which also skips acked records and says which
//! were delivered before a restart.

use warren_store::Position;

#[derive(Default)]
pub struct PagedTail {
    /// Where the next paged-out message is read from (meaningful while `len > 0`).
    head: Position,
    len: u64,
}

impl PagedTail {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tail starting at `head` with `len` messages (recovery).
    pub fn starting_at(head: Position, len: u64) -> Self {
        PagedTail { head, len }
    }

    /// A message was appended to the store at `pos` and stays only there.
    pub fn push_back(&mut self, pos: Position) {
        if self.len == 0 {
            self.head = pos;
        }
        self.len += 1;
    }

    /// Where to read the next message from.
    pub fn head(&self) -> Position {
        self.head
    }

    /// `n` messages up to `next` were read back into memory.
    pub fn advance_by(&mut self, n: u64, next: Position) {
        self.head = next;
        self.len = self.len.saturating_sub(n);
    }

    /// Forgets the tail (purge, delete, or a store that ran out of records); returns its
    /// length.
    pub fn clear(&mut self) -> u64 {
        std::mem::take(&mut self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_push_sets_the_head() {
        let mut t = PagedTail::default();
        assert!(t.is_empty());
        let a = Position {
            segment: 3,
            offset: 100,
        };
        let b = Position {
            segment: 3,
            offset: 200,
        };
        t.push_back(a);
        t.push_back(b);
        assert_eq!((t.head(), t.len()), (a, 2));
        t.advance_by(1, b);
        assert_eq!((t.head(), t.len()), (b, 1));
        assert_eq!(t.clear(), 1);
        t.push_back(a);
        assert_eq!((t.head(), t.len()), (a, 1));
    }
}
