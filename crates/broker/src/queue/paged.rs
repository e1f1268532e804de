//! The positions of messages paged out to the store, in queue order, at about 4 bytes each:
//! offsets in one deque, and the segment they belong to recorded only where it changes
//! (appends fill one segment after another). The rare redelivered flag (from recovery) lives
//! in a set beside them.

use std::collections::{HashSet, VecDeque};
use warren_store::Position;

#[derive(Default)]
pub struct PagedList {
    offsets: VecDeque<u32>,
    /// (index of the first entry in the segment, segment id), in order.
    segments: VecDeque<(u64, u32)>,
    /// Index of `offsets[0]` since the list began.
    head: u64,
    redelivered: HashSet<Position>,
}

impl PagedList {
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn push_back(&mut self, pos: Position, redelivered: bool) {
        if self.segments.back().map(|s| s.1) != Some(pos.segment) {
            self.segments
                .push_back((self.head + self.offsets.len() as u64, pos.segment));
        }
        self.offsets.push_back(pos.offset);
        if redelivered {
            self.redelivered.insert(pos);
        }
    }

    pub fn pop_front(&mut self) -> Option<(Position, bool)> {
        let offset = self.offsets.pop_front()?;
        let index = self.head;
        self.head += 1;
        while self.segments.len() > 1 && self.segments[1].0 <= index {
            self.segments.pop_front();
        }
        let segment = self.segments.front().map(|s| s.1).unwrap_or(0);
        if self.offsets.is_empty() {
            self.segments.clear();
        }
        let pos = Position { segment, offset };
        let redelivered = self.redelivered.remove(&pos);
        Some((pos, redelivered))
    }

    /// Empties the list, returning every position (queue purge).
    pub fn drain(&mut self) -> Vec<Position> {
        let mut out = Vec::with_capacity(self.len());
        while let Some((p, _)) = self.pop_front() {
            out.push(p);
        }
        self.offsets.shrink_to_fit();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_segments() {
        let mut l = PagedList::default();
        let ps: Vec<Position> = (0..10u32)
            .map(|i| Position {
                segment: 1 + i / 4,
                offset: 16 + i * 100,
            })
            .collect();
        for (i, p) in ps.iter().enumerate() {
            l.push_back(*p, i == 5);
        }
        assert_eq!(l.len(), 10);
        for (i, p) in ps.iter().enumerate() {
            assert_eq!(l.pop_front(), Some((*p, i == 5)));
        }
        assert!(l.pop_front().is_none());
        l.push_back(
            Position {
                segment: 9,
                offset: 16,
            },
            false,
        );
        assert_eq!(
            l.pop_front(),
            Some((
                Position {
                    segment: 9,
                    offset: 16
                },
                false
            ))
        );
    }
}
