//! Single active consumer groups of a stream: stream-protocol subscriptions made with
//! `single-active-consumer=true` and a `name`, as RabbitMQ's SAC coordinator keeps them.
//! Subscriptions of one name on one stream form a group; the first in subscription order is
//! the active one (the only one sent messages). When it leaves, the next becomes active and
//! is told so (its activation is called, outside the group's lock).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// One subscription of a group.
pub struct SacMember {
    /// Its connection (a broker-wide connection id) and subscription id there.
    pub conn: u64,
    pub sid: u8,
    /// Called when it becomes the active one after another left.
    pub activate: Arc<dyn Fn() + Send + Sync>,
}

/// A stream's groups, by consumer name.
#[derive(Default)]
pub struct SacGroups {
    groups: Mutex<HashMap<String, Vec<SacMember>>>,
}

impl SacGroups {
    /// Adds `m` to group `name`; whether it is the active one (the group's first).
    pub fn join(&self, name: &str, m: SacMember) -> bool {
        let mut groups = self.groups.lock();
        let g = groups.entry(name.to_string()).or_default();
        g.push(m);
        g.len() == 1
    }

    /// Removes subscription `sid` of connection `conn` from group `name`. If it was the active
    /// one, the next member becomes active (its activation is called).
    pub fn leave(&self, name: &str, conn: u64, sid: u8) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(name) else {
            return;
        };
        let Some(at) = g.iter().position(|m| m.conn == conn && m.sid == sid) else {
            return;
        };
        g.remove(at);
        if g.is_empty() {
            groups.remove(name);
            return;
        }
        if at == 0 {
            // The new first member is activated once the lock is released.
            let activate = g[0].activate.clone();
            drop(groups);
            activate();
        }
    }

    /// Whether subscription `sid` of connection `conn` is the active one of group `name`.
    #[cfg(test)]
    fn is_active(&self, name: &str, conn: u64, sid: u8) -> bool {
        self.groups
            .lock()
            .get(name)
            .and_then(|g| g.first())
            .is_some_and(|m| m.conn == conn && m.sid == sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn member(conn: u64, sid: u8, woken: &Arc<AtomicUsize>) -> SacMember {
        let w = woken.clone();
        SacMember {
            conn,
            sid,
            activate: Arc::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        }
    }

    #[test]
    fn the_first_is_active_and_the_next_takes_over_when_it_leaves() {
        let g = SacGroups::default();
        let (a, b, c) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        assert!(g.join("app", member(1, 0, &a)));
        assert!(!g.join("app", member(2, 0, &b)));
        assert!(!g.join("app", member(2, 1, &c)));
        // Another name is a group of its own.
        assert!(g.join("other", member(3, 0, &a)));
        // An inactive member leaves: nobody is woken.
        g.leave("app", 2, 1);
        assert_eq!(b.load(Ordering::SeqCst) + c.load(Ordering::SeqCst), 0);
        // The active one leaves: the next is woken, and is the active one.
        g.leave("app", 1, 0);
        assert_eq!(b.load(Ordering::SeqCst), 1);
        assert!(g.is_active("app", 2, 0));
        g.leave("app", 2, 0);
        assert!(!g.is_active("app", 2, 0));
        // A member that is not there changes nothing.
        g.leave("app", 9, 9);
        assert_eq!(a.load(Ordering::SeqCst), 0);
    }
}
