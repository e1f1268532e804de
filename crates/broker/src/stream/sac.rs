//! Single active consumer groups of a stream: stream-protocol subscriptions made with
//! `single-active-consumer=true` and a `name`, as RabbitMQ's SAC coordinator (4.0) keeps them.
//! Subscriptions of one name on one stream form a group, and one of them at a time is the
//! active one (the only one sent messages).
//!
//! - A group of a plain stream (no partition index): the first in subscription order is the
//!   active one; when it leaves, the next becomes active.
//! - A group of a super stream's partition (the subscription names its `super-stream`): the
//!   active one is the one at `partition index mod members`, so that a super stream's
//!   partitions are spread over its consumers. When a join or a leave changes which one that
//!   is, the active one is told to step down first (a consumer update with `active = false`)
//!   and the group waits for its answer ([`SacGroups::stepped_down`]), or for it to leave,
//!   before the new one is activated: its client may store its offset meanwhile, and the
//!   next one starts from there.
//!
//! Members are told through their `notify` ([`SacEvent`]), always outside the groups' lock.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// What a member is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SacEvent {
    /// It is its group's active one now.
    Activate,
    /// It is no longer the active one: it stops, and answers once it has (see
    /// [`SacGroups::stepped_down`]).
    StepDown,
}

/// One subscription of a group.
pub struct SacMember {
    /// Its connection (a broker-wide connection id) and subscription id there.
    pub conn: u64,
    pub sid: u8,
    /// Tells it it became the active one, or must step down.
    pub notify: Arc<dyn Fn(SacEvent) + Send + Sync>,
}

struct Member {
    m: SacMember,
    active: bool,
}

struct Group {
    /// The stream's index among its super stream's partitions; `None` for a plain stream.
    partition: Option<u64>,
    members: Vec<Member>,
    /// The former active member whose step-down answer is awaited (no member is active
    /// meanwhile).
    stepping_down: Option<(u64, u8)>,
}

/// A member to tell something: its connection and subscription, how, and what.
type Notice = (u64, u8, Arc<dyn Fn(SacEvent) + Send + Sync>, SacEvent);

impl Group {
    fn active(&self) -> Option<usize> {
        self.members.iter().position(|m| m.active)
    }

    /// The member that should be active: the first, or for a partition the one at its index
    /// modulo the group's size.
    fn chosen(&self) -> Option<usize> {
        let n = self.members.len() as u64;
        match (n, self.partition) {
            (0, _) => None,
            (_, None) => Some(0),
            (n, Some(p)) => Some((p % n) as usize),
        }
    }

    fn activate(&mut self, at: usize, notices: &mut Vec<Notice>) {
        let m = &mut self.members[at];
        m.active = true;
        notices.push((m.m.conn, m.m.sid, m.m.notify.clone(), SacEvent::Activate));
    }

    /// After a join or a leave: the member that should be active is made so, the current
    /// one stepping down first when it is another.
    fn rebalance(&mut self, notices: &mut Vec<Notice>) {
        if self.stepping_down.is_some() {
            return; // its answer decides
        }
        let Some(chosen) = self.chosen() else { return };
        match self.active() {
            None => self.activate(chosen, notices),
            Some(current) if current == chosen => {}
            // A plain stream's active one stays until it leaves.
            Some(_) if self.partition.is_none() => {}
            Some(current) => {
                let m = &mut self.members[current];
                m.active = false;
                self.stepping_down = Some((m.m.conn, m.m.sid));
                notices.push((m.m.conn, m.m.sid, m.m.notify.clone(), SacEvent::StepDown));
            }
        }
    }
}

/// A stream's groups, by consumer name.
#[derive(Default)]
pub struct SacGroups {
    groups: Mutex<HashMap<String, Group>>,
}

impl SacGroups {
    /// Adds `m` to group `name` (created with `partition`, the stream's index in the super
    /// stream the subscription names, if any); whether it is the active one at once. (A
    /// member activated at once is not notified: the caller tells it.)
    pub fn join(&self, name: &str, partition: Option<u64>, m: SacMember) -> bool {
        let (conn, sid) = (m.conn, m.sid);
        let mut notices = Vec::new();
        let active = {
            let mut groups = self.groups.lock();
            let g = groups.entry(name.to_string()).or_insert_with(|| Group {
                partition,
                members: Vec::new(),
                stepping_down: None,
            });
            g.members.push(Member { m, active: false });
            g.rebalance(&mut notices);
            g.members.last().is_some_and(|m| m.active)
        };
        // The caller tells the newcomer itself (after its subscription's answer).
        notify(
            notices
                .into_iter()
                .filter(|n| !(n.0 == conn && n.1 == sid && n.3 == SacEvent::Activate)),
        );
        active
    }

    /// Removes subscription `sid` of connection `conn` from group `name`; another member
    /// becomes active if it should.
    pub fn leave(&self, name: &str, conn: u64, sid: u8) {
        let mut notices = Vec::new();
        {
            let mut groups = self.groups.lock();
            let Some(g) = groups.get_mut(name) else {
                return;
            };
            let Some(at) = g
                .members
                .iter()
                .position(|m| m.m.conn == conn && m.m.sid == sid)
            else {
                return;
            };
            g.members.remove(at);
            if g.members.is_empty() {
                groups.remove(name);
                return;
            }
            if g.stepping_down == Some((conn, sid)) {
                // Gone instead of answering: as good as an answer.
                g.stepping_down = None;
            }
            g.rebalance(&mut notices);
        }
        notify(notices.into_iter());
    }

    /// The member that was told to step down answered: the member that should be active now
    /// is activated.
    pub fn stepped_down(&self, name: &str, conn: u64, sid: u8) {
        let mut notices = Vec::new();
        {
            let mut groups = self.groups.lock();
            let Some(g) = groups.get_mut(name) else {
                return;
            };
            if g.stepping_down != Some((conn, sid)) {
                return;
            }
            g.stepping_down = None;
            g.rebalance(&mut notices);
        }
        notify(notices.into_iter());
    }

    /// Whether subscription `sid` of connection `conn` is the active one of group `name`.
    #[cfg(test)]
    fn is_active(&self, name: &str, conn: u64, sid: u8) -> bool {
        self.groups.lock().get(name).is_some_and(|g| {
            g.members
                .iter()
                .any(|m| m.active && m.m.conn == conn && m.m.sid == sid)
        })
    }
}

fn notify(notices: impl Iterator<Item = Notice>) {
    for (_, _, f, e) in notices {
        f(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members that record what they are told, as (member, event).
    #[derive(Default, Clone)]
    struct Log(Arc<Mutex<Vec<(u64, SacEvent)>>>);

    impl Log {
        fn member(&self, conn: u64, sid: u8) -> SacMember {
            let log = self.0.clone();
            SacMember {
                conn,
                sid,
                notify: Arc::new(move |e| log.lock().push((conn, e))),
            }
        }
        fn take(&self) -> Vec<(u64, SacEvent)> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    #[test]
    fn the_first_is_active_and_the_next_takes_over_when_it_leaves() {
        let g = SacGroups::default();
        let log = Log::default();
        assert!(g.join("app", None, log.member(1, 0)));
        assert!(!g.join("app", None, log.member(2, 0)));
        assert!(!g.join("app", None, log.member(2, 1)));
        // Another name is a group of its own.
        assert!(g.join("other", None, log.member(3, 0)));
        assert!(
            log.take().is_empty(),
            "joining at once is the caller's to tell"
        );
        // An inactive member leaves: nobody is told.
        g.leave("app", 2, 1);
        assert!(log.take().is_empty());
        // The active one leaves: the next is told, and is the active one.
        g.leave("app", 1, 0);
        assert_eq!(log.take(), vec![(2, SacEvent::Activate)]);
        assert!(g.is_active("app", 2, 0));
        g.leave("app", 2, 0);
        assert!(!g.is_active("app", 2, 0));
        // A member that is not there changes nothing.
        g.leave("app", 9, 9);
        assert!(log.take().is_empty());
    }

    #[test]
    fn a_partitions_active_member_is_its_index_modulo_the_group_size() {
        // Partition 1 of a super stream: with one member it is the active one; a second
        // member (index 1 mod 2) takes over once the first has stepped down.
        let g = SacGroups::default();
        let log = Log::default();
        assert!(g.join("app", Some(1), log.member(1, 0)));
        assert!(!g.join("app", Some(1), log.member(2, 0)));
        assert_eq!(log.take(), vec![(1, SacEvent::StepDown)]);
        // Nobody is active until the answer.
        assert!(!g.is_active("app", 1, 0) && !g.is_active("app", 2, 0));
        // An answer from someone else changes nothing.
        g.stepped_down("app", 2, 0);
        assert!(log.take().is_empty());
        g.stepped_down("app", 1, 0);
        assert_eq!(log.take(), vec![(2, SacEvent::Activate)]);
        assert!(g.is_active("app", 2, 0));
        // A third member: 1 mod 3 is still the second.
        assert!(!g.join("app", Some(1), log.member(3, 0)));
        assert!(log.take().is_empty());
        // The first leaves: 1 mod 2 is now the third; the second steps down.
        g.leave("app", 1, 0);
        assert_eq!(log.take(), vec![(2, SacEvent::StepDown)]);
        // The stepping-down member leaves instead of answering: the third is activated.
        g.leave("app", 2, 0);
        assert_eq!(log.take(), vec![(3, SacEvent::Activate)]);
        assert!(g.is_active("app", 3, 0));
    }

    #[test]
    fn partition_zero_keeps_its_first_member() {
        let g = SacGroups::default();
        let log = Log::default();
        assert!(g.join("app", Some(0), log.member(1, 0)));
        assert!(!g.join("app", Some(0), log.member(2, 0)));
        assert!(!g.join("app", Some(0), log.member(3, 0)));
        assert!(log.take().is_empty());
        // The active one leaves: 0 mod 2 is the (new) first.
        g.leave("app", 1, 0);
        assert_eq!(log.take(), vec![(2, SacEvent::Activate)]);
    }
}
