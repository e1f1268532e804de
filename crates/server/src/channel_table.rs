//! A connection's open channels by number. Any number from 1 to 65535 may be used (as with
//! RabbitMQ, `channel_max` limits how many are open, not which numbers): the low numbers that
//! clients use almost always sit in a small vector indexed by number, the rare high ones in a
//! map, so a client that opens channel 65535 does not cost 64 Ki slots.

use std::collections::HashMap;

/// Channel numbers below this are kept in the indexed vector.
const DIRECT_SLOTS: usize = 256;

pub(crate) struct ChannelTable<Channel> {
    low: Vec<Option<Box<Channel>>>,
    high: HashMap<u16, Box<Channel>>,
    open: usize,
}

impl<Channel> Default for ChannelTable<Channel> {
    fn default() -> Self {
        ChannelTable {
            low: Vec::new(),
            high: HashMap::new(),
            open: 0,
        }
    }
}

impl<Channel> ChannelTable<Channel> {
    /// How many channels are open.
    pub fn len(&self) -> usize {
        self.open
    }

    pub fn get(&self, n: u16) -> Option<&Channel> {
        match self.low.get(n as usize) {
            Some(slot) => slot.as_deref(),
            None if (n as usize) < DIRECT_SLOTS => None,
            None => self.high.get(&n).map(|c| &**c),
        }
    }

    pub fn get_mut(&mut self, n: u16) -> Option<&mut Channel> {
        if (n as usize) < DIRECT_SLOTS {
            return self.low.get_mut(n as usize).and_then(|s| s.as_deref_mut());
        }
        self.high.get_mut(&n).map(|c| &mut **c)
    }

    pub fn contains(&self, n: u16) -> bool {
        self.get(n).is_some()
    }

    /// Adds a channel under a number that is not in use.
    pub fn insert(&mut self, n: u16, ch: Box<Channel>) {
        let idx = n as usize;
        let previous = if idx < DIRECT_SLOTS {
            if self.low.len() <= idx {
                self.low.resize_with(idx + 1, || None);
            }
            self.low[idx].replace(ch)
        } else {
            self.high.insert(n, ch)
        };
        if previous.is_none() {
            self.open += 1;
        }
    }

    pub fn remove(&mut self, n: u16) -> Option<Box<Channel>> {
        let idx = n as usize;
        let ch = if idx < DIRECT_SLOTS {
            self.low.get_mut(idx).and_then(Option::take)
        } else {
            self.high.remove(&n)
        };
        if ch.is_some() {
            self.open -= 1;
        }
        ch
    }

    /// The numbers of the open channels.
    pub fn numbers(&self) -> Vec<u16> {
        let low = self
            .low
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(n, _)| n as u16);
        low.chain(self.high.keys().copied()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.low
            .iter()
            .flatten()
            .map(|c| &**c)
            .chain(self.high.values().map(|c| &**c))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.low
            .iter_mut()
            .flatten()
            .map(|c| &mut **c)
            .chain(self.high.values_mut().map(|c| &mut **c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_number_counts_once_and_is_reusable() {
        let mut t = ChannelTable::<u32>::default();
        for n in [1u16, 255, 256, 65535, 7] {
            t.insert(n, Box::new(n as u32));
        }
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(65535), Some(&65535));
        assert_eq!(t.get(256), Some(&256));
        assert_eq!(t.get(2), None);
        assert_eq!(t.get(1000), None);
        *t.get_mut(255).unwrap() += 1;
        assert_eq!(t.get(255), Some(&256));
        assert_eq!(t.remove(65535).as_deref(), Some(&65535));
        assert_eq!(t.remove(65535), None);
        assert_eq!(t.len(), 4);
        assert!(!t.contains(65535));
        t.insert(65535, Box::new(1));
        assert!(t.contains(65535));
        let mut numbers = t.numbers();
        numbers.sort_unstable();
        assert_eq!(numbers, vec![1, 7, 255, 256, 65535]);
        assert_eq!(t.iter().count(), 5);
        assert_eq!(t.iter_mut().count(), 5);
        // High numbers do not grow the indexed vector.
        assert!(t.low.len() <= DIRECT_SLOTS);
    }
}
