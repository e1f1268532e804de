//! One quorum queue on this node, as the broker reaches it ([`GroupReplica`], the broker's
//! [`Replica`]). In a cluster a node is either a member of the queue's group (it runs the
//! group's Raft member and holds a copy of the queue) or not (`x-quorum-initial-group-size`
//! below the number of nodes, or a member removed): then it serves the queue's clients all
//! the same, as a member that does not lead does. Its commands go to the group's leader
//! (found by asking the members: [`GroupReplica::discover`]), its consumers' deliveries come
//! from the members ([`route_outputs`] on each member sends them, [`GroupReplica::take_pushed`]
//! takes each entry's once), and its counts are what a member reported a moment ago. A node
//! becomes a member, or stops being one, while the queue is in use (`add_member`,
//! `delete_member`: see [`crate::members`]).
//!
//! Which node hands out a delivery is decided by the entry that made it: the owner's node if
//! it was a voter of the group as of that entry (its own copy applies the entry), otherwise
//! every member sends it to the owner's node. Every member applies the same entries with the
//! same membership, so each delivery is handed out once whoever leads.
//!
//! Commands reach the log in the order they were submitted: one task per queue
//! ([`propose_in_batches`]) takes what is waiting and proposes it as one entry, or sends it
//! to the leader when this node does not lead.

use crate::group::QueueGroup;
use crate::node::{no_majority, propose_once, Cluster, OWNER_BITS, WRITE_TIMEOUT};
use crate::transport::{GroupStatus, Pushed, PushedDelivery};
use crate::types::{NodeId, Proposal};
use crate::wal::NodeWal;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use warren_broker::queue::replica::{Answer, GroupMembers, OutputSink, RemoteStats, Replica};
use warren_broker::queue::{is_dry, Applied, Owner, QueueCommand, QueueEngine, QueueOptions};

/// How often a node that is not a member asks a member for the queue's counts and owners.
const REMOTE_REFRESH: Duration = Duration::from_secs(2);

/// How long one question to a member may take.
const STATUS_ATTEMPT: Duration = Duration::from_secs(1);

/// How long before a stale owner's removal is proposed again if it is still there.
pub(crate) const STALE_RETRY: Duration = Duration::from_secs(5);

/// What a node that is not a member knows of the group (from the members' answers).
#[derive(Default)]
struct RemoteView {
    status: Option<GroupStatus>,
    at: Option<Instant>,
    /// The leader last heard of.
    leader: Option<NodeId>,
}

/// One quorum queue's group, as the broker uses it (see the module's notes).
pub(crate) struct GroupReplica {
    pub(crate) id: u64,
    /// This node's id in the cluster (1 alone).
    pub(crate) me: NodeId,
    /// This node's number in its cluster (None alone): owners it hands deliveries to.
    number: Option<u64>,
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// This node's member of the group, if it is one.
    local: RwLock<Option<Arc<QueueGroup>>>,
    commands: mpsc::UnboundedSender<(QueueCommand, Option<Answer>)>,
    /// Commands sent and not yet taken by the proposer.
    queued: Arc<AtomicUsize>,
    pub(crate) wal: Arc<NodeWal>,
    pub(crate) handle: tokio::runtime::Handle,
    /// Where deliveries, dead letters and the need for ticks go (the broker's queue).
    outputs: OutputSink,
    /// An empty engine with the queue's options: what `read` shows when this node holds no
    /// copy (the counts come from [`Replica::remote_stats`]).
    placeholder: Mutex<QueueEngine<Owner>>,
    remote: Mutex<RemoteView>,
    refreshing: AtomicBool,
    /// The last log index whose deliveries were taken from the members.
    pushed_through: Mutex<u64>,
    /// This node's owners of an earlier run seen in the queue, when their removal was asked.
    stale_asked: Mutex<HashMap<Owner, Instant>>,
    removed: AtomicBool,
    this: Weak<GroupReplica>,
}

impl GroupReplica {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        me: NodeId,
        cluster: Option<Arc<Cluster>>,
        wal: Arc<NodeWal>,
        handle: tokio::runtime::Handle,
        opts: QueueOptions,
        outputs: OutputSink,
    ) -> Arc<GroupReplica> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let r = Arc::new_cyclic(|this| GroupReplica {
            id,
            me,
            number: cluster.as_ref().map(|c| c.number),
            cluster,
            local: RwLock::new(None),
            commands: tx,
            queued: queued.clone(),
            wal,
            handle: handle.clone(),
            outputs,
            placeholder: Mutex::new(QueueEngine::new(opts, 0)),
            remote: Mutex::default(),
            refreshing: AtomicBool::new(false),
            pushed_through: Mutex::new(0),
            stale_asked: Mutex::default(),
            removed: AtomicBool::new(false),
            this: this.clone(),
        });
        handle.spawn(propose_in_batches(Arc::downgrade(&r), rx, queued));
        if r.cluster.is_some() {
            handle.spawn(watch(Arc::downgrade(&r)));
        }
        r
    }

    /// This node's member of the group, if it is one.
    pub(crate) fn local(&self) -> Option<Arc<QueueGroup>> {
        self.local.read().clone()
    }

    /// This node's member, if it votes (its copy is the queue's: a learner is catching up).
    fn voting(&self) -> Option<Arc<QueueGroup>> {
        let g = self.local()?;
        if self.cluster.is_none() {
            return Some(g);
        }
        let voter = g
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.me);
        voter.then_some(g)
    }

    /// Makes `group` this node's member; its outputs go to the broker (and to nodes that
    /// are not members).
    pub(crate) fn set_local(
        &self,
        group: Arc<QueueGroup>,
        out: mpsc::UnboundedReceiver<crate::state_machine::Output>,
    ) {
        *self.local.write() = Some(group.clone());
        self.handle
            .spawn(route_outputs(self.this.clone(), group.clone(), out));
        if let Some(c) = &self.cluster {
            self.handle.spawn(crate::node::reap_gone_owners(
                Arc::downgrade(&group),
                c.clone(),
                self.this.clone(),
            ));
        }
    }

    /// This node's member is gone (removed from the group): stop it and forget its log.
    pub(crate) async fn drop_local(&self) {
        let Some(g) = self.local.write().take() else {
            return;
        };
        if let Some(c) = &self.cluster {
            c.registry.remove(self.id);
        }
        if let Err(e) = g.shutdown().await {
            tracing::warn!(group = self.id, error = %e, "stopping a removed member failed");
        }
        if let Err(e) = self.wal.forget(self.id) {
            tracing::warn!(group = self.id, error = %e, "could not forget a removed member's log; the next start does");
        }
    }

    /// The queue's options (to start a member with).
    pub(crate) fn options(&self) -> QueueOptions {
        self.placeholder.lock().options().clone()
    }

    /// What this node knows of the group, for another node's question.
    pub(crate) fn status(&self) -> GroupStatus {
        match self.local() {
            Some(g) => {
                let m = g.raft().metrics().borrow().clone();
                let membership = m.membership_config.membership();
                g.state().with_engine(|e| GroupStatus {
                    member: true,
                    leader: m.current_leader,
                    voters: membership.voter_ids().collect(),
                    learners: membership.learner_ids().collect(),
                    applied: m.last_applied.map_or(0, |l| l.index),
                    stats: e.stats(),
                    len: e.len() as u64,
                    backlogged: e.backlogged(),
                    owners: e.owner_ids(),
                })
            }
            None => GroupStatus {
                member: false,
                leader: self.remote.lock().leader,
                ..Default::default()
            },
        }
    }

    /// The group's voters and leader as far as this node knows.
    pub(crate) fn known_members(&self) -> (Option<NodeId>, Vec<NodeId>, Vec<NodeId>) {
        if let Some(g) = self.local() {
            let m = g.raft().metrics().borrow().clone();
            let membership = m.membership_config.membership();
            return (
                m.current_leader,
                membership.voter_ids().collect(),
                membership.learner_ids().collect(),
            );
        }
        let v = self.remote.lock();
        let s = v.status.clone().unwrap_or_default();
        (v.leader, s.voters, s.learners)
    }

    /// The group's status from a member (the leader if it answers): who leads and who is in
    /// it now. Updates what this node knows.
    pub(crate) async fn fresh_status(&self) -> Option<GroupStatus> {
        let c = self.cluster.as_ref()?;
        let (leader, voters, _) = self.known_members();
        let mut ask: Vec<NodeId> = leader.into_iter().collect();
        ask.extend(voters.iter().copied().filter(|v| Some(*v) != leader));
        let rest: Vec<NodeId> = c
            .nodes()
            .keys()
            .copied()
            .filter(|n| !ask.contains(n))
            .collect();
        ask.extend(rest);
        let mut fallback = None;
        for n in ask {
            let st = if n == self.me {
                self.local().is_some().then(|| self.status())
            } else {
                let Some(addr) = c.addr(n) else { continue };
                match c.control.status(&addr, self.id, STATUS_ATTEMPT).await {
                    Ok(Some(st)) if st.member => Some(st),
                    _ => None,
                }
            };
            let Some(st) = st else { continue };
            if st.leader.is_none() {
                fallback.get_or_insert(st);
                continue;
            }
            self.remember(&st);
            return Some(st);
        }
        if let Some(st) = &fallback {
            self.remember(st);
        }
        fallback
    }

    fn remember(&self, st: &GroupStatus) {
        let mut v = self.remote.lock();
        v.leader = st.leader;
        v.status = Some(st.clone());
        v.at = Some(Instant::now());
    }

    /// Refreshes what a member reports, in the background, if it is older than
    /// [`REMOTE_REFRESH`].
    fn refresh_soon(&self) {
        let fresh = self
            .remote
            .lock()
            .at
            .is_some_and(|at| at.elapsed() < REMOTE_REFRESH);
        if fresh || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.this.upgrade() else {
            return;
        };
        self.handle.spawn(async move {
            me.fresh_status().await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Deliveries (and consumers removed) a member sent for this node's consumers: each
    /// entry's are taken once, in log order.
    pub(crate) fn take_pushed(&self, p: Pushed) {
        if self.removed.load(Ordering::Acquire) {
            return;
        }
        // A delivery to a consumer of this node's earlier run removes it (the broker's
        // hand_out, as for a member's deliveries).
        p.hand_on(&self.pushed_through, &self.outputs);
    }

    /// Proposes `p` through whichever node leads the group (this one, or another), looking
    /// for a leader for up to [`WRITE_TIMEOUT`]. Returns the answers once committed and
    /// applied on the leader.
    pub(crate) async fn write_to_leader(&self, p: Proposal) -> Result<Vec<Applied>, String> {
        let Some(c) = self.cluster.clone() else {
            return Err("not in a cluster".into());
        };
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        loop {
            let local = self.local();
            let leader = match &local {
                Some(g) => g.raft().metrics().borrow().current_leader,
                None => self.remote.lock().leader,
            };
            let raft = local.as_ref().map(|g| g.raft());
            let r = propose_once(&c, raft, leader, self.id, &p, deadline).await;
            let why = match r {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(why);
            }
            if local.is_none() {
                // Ask the members who leads now.
                self.remote.lock().leader = None;
                self.fresh_status().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node's name for `id`.
    fn name(&self, id: NodeId) -> String {
        self.cluster
            .as_ref()
            .and_then(|c| c.name_of(id))
            .unwrap_or_else(|| id.to_string())
    }
}

impl Replica for GroupReplica {
    fn submit(&self, cmd: QueueCommand, answer: Option<Answer>) {
        self.send_command(cmd, answer)
    }

    fn read(&self, f: &mut dyn FnMut(&QueueEngine<Owner>)) {
        match self.voting() {
            Some(g) => g.state().with_engine(|e| f(e)),
            None => f(&self.placeholder.lock()),
        }
    }

    fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        let Some(group) = self.local.write().take() else {
            return;
        };
        if let Some(c) = &self.cluster {
            // Its peers' requests for this group are answered "no such group" from now on.
            c.registry.remove(self.id);
        }
        let (wal, id) = (self.wal.clone(), self.id);
        let stop = async move {
            if let Err(e) = group.shutdown().await {
                tracing::warn!(group = id, error = %e, "stopping a deleted queue's Raft group failed");
            }
            if let Err(e) = wal.forget(id) {
                tracing::warn!(group = id, error = %e, "could not forget a deleted queue's log; the next start does");
            }
        };
        if crate::node::on_raft_thread() {
            // (x-expires deletes from a Raft thread, which must not wait for its own runtime.)
            self.handle.spawn(stop);
            return;
        }
        // Waited for: a queue declared again by this name gets the same group id.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            stop.await;
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(crate::node::OPEN_TIMEOUT);
    }

    fn touch(&self, now: u64) {
        match self.local() {
            Some(g) => g.state().touch(now),
            None => self.placeholder.lock().touch(now),
        }
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn is_leader(&self) -> bool {
        self.local().is_some_and(|g| g.is_leader())
    }

    fn owns(&self, owner: Owner) -> bool {
        self.number.is_none_or(|n| owner >> OWNER_BITS == n)
    }

    fn is_stale(&self, owner: Owner) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.owner_is_stale(owner))
    }

    /// Removes this node's owners of an earlier run among `owners` from the queue (their
    /// channels are gone; what they hold goes back), once in a while each.
    fn remove_stale(&self, owners: &[Owner]) {
        let Some(c) = &self.cluster else { return };
        let mut asked = self.stale_asked.lock();
        asked.retain(|_, at| at.elapsed() < STALE_RETRY);
        for &owner in owners {
            if c.owner_is_stale(owner) && !asked.contains_key(&owner) {
                tracing::info!(
                    group = self.id,
                    owner,
                    "a consumer of this node's earlier run: its unacknowledged messages go back to the queue"
                );
                self.remove_owner(owner, warren_broker::clock::now_ms());
                asked.insert(owner, Instant::now());
            }
        }
    }

    fn members(&self) -> Option<GroupMembers> {
        let c = self.cluster.as_ref()?;
        if self.local().is_none() {
            self.refresh_soon();
        }
        let (leader, voters, _) = self.known_members();
        let online = voters
            .iter()
            .filter(|v| **v == self.me || !c.is_down(**v))
            .map(|v| self.name(*v))
            .collect();
        Some(GroupMembers {
            leader: leader.map(|l| self.name(l)),
            members: voters.iter().map(|v| self.name(*v)).collect(),
            online,
        })
    }

    fn remote_stats(&self) -> Option<RemoteStats> {
        if self.voting().is_some() {
            return None;
        }
        self.refresh_soon();
        let s = self.remote.lock().status.clone().unwrap_or_default();
        Some(RemoteStats {
            stats: s.stats,
            len: s.len,
            backlogged: s.backlogged,
        })
    }
}

impl GroupReplica {
    pub(crate) fn send_command(&self, cmd: QueueCommand, answer: Option<Answer>) {
        if let QueueCommand::SetOptions { opts, .. } = &cmd {
            *self.placeholder.lock() = QueueEngine::new(opts.clone(), 0);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError((_, Some(a)))) = self.commands.send((cmd, answer)) {
            a(Err("the queue's Raft group stopped".into()));
        }
    }
}

/// While this node is not a member: asks a member for the queue's state now and then (its
/// counts for listings, its leader for proposals) and removes this node's consumers of an
/// earlier run from it. Ends with the replica.
async fn watch(r: Weak<GroupReplica>) {
    loop {
        let Some(me) = r.upgrade() else { return };
        if me.removed.load(Ordering::Acquire) {
            return;
        }
        if me.local().is_none() {
            if let Some(st) = me.fresh_status().await {
                me.remove_stale(&st.owners);
            }
        }
        drop(me);
        tokio::time::sleep(REMOTE_REFRESH).await;
    }
}

/// Takes the outputs of this node's member of the group: this node's consumers' deliveries
/// go to the broker if this node was a voter as of their entry, those of nodes that were
/// not voters are sent to those nodes (see the module's notes), the rest is left to the
/// other members. Ends when the member stops.
async fn route_outputs(
    r: Weak<GroupReplica>,
    group: Arc<QueueGroup>,
    mut out: mpsc::UnboundedReceiver<crate::state_machine::Output>,
) {
    while let Some(mut o) = out.recv().await {
        let Some(me) = r.upgrade() else { return };
        // Messages restored without their bodies (a dry snapshot) are settled further on in
        // the log: what replaying it decides about them was done the first time.
        o.deliveries.retain(|(_, _, qm)| !is_dry(&qm.msg.body));
        o.dead_letters.retain(|d| !is_dry(&d.msg.body));
        let Some(c) = me.cluster.clone() else {
            (me.outputs)(o);
            continue;
        };
        let voters = o.voters.clone().unwrap_or_default();
        let me_votes = voters.contains(&me.me);
        let index = o.index;
        let mut pushed: HashMap<NodeId, Pushed> = HashMap::new();
        let mut mine = Vec::new();
        for (owner, checkout, qm) in std::mem::take(&mut o.deliveries) {
            match c.node_of(owner) {
                Some(n) if n == me.me && me_votes => mine.push((owner, checkout, qm)),
                // Not a voter as of the entry: the members send it.
                Some(n) if n == me.me => {}
                Some(n) if !voters.contains(&n) => {
                    slot(&mut pushed, n, index).deliveries.push(PushedDelivery {
                        owner,
                        checkout,
                        seq: qm.seq,
                        msg: warren_broker::queue::LoggedMessage(qm.msg),
                        redelivered: qm.redelivered,
                        delivery_count: qm.delivery_count,
                    })
                }
                _ => {}
            }
        }
        let mut removed_here = Vec::new();
        for owner in std::mem::take(&mut o.removed_consumers) {
            match c.node_of(owner) {
                Some(n) if n == me.me && me_votes => removed_here.push(owner),
                Some(n) if n == me.me => {}
                Some(n) if !voters.contains(&n) => slot(&mut pushed, n, index).removed.push(owner),
                _ => {}
            }
        }
        for (node, p) in pushed {
            c.push(node, group.id, p);
        }
        o.deliveries = mine;
        o.removed_consumers = removed_here;
        (me.outputs)(o);
    }
}

/// What goes to `node` from the entry at `index`.
fn slot(pushed: &mut HashMap<NodeId, Pushed>, node: NodeId, index: u64) -> &mut Pushed {
    pushed.entry(node).or_insert_with(|| Pushed {
        index,
        deliveries: Vec::new(),
        removed: Vec::new(),
    })
}

/// Takes the queue's commands in order and proposes whatever is waiting as one entry (see
/// [`crate::types::Batch`]), with at most [`MAX_IN_FLIGHT`] entries on their way; answers
/// are handed back as entries are applied. When this node does not lead the group (or is
/// not a member), a batch goes to the leader and the next waits for its answer, so they are
/// committed in order.
async fn propose_in_batches(
    r: Weak<GroupReplica>,
    mut rx: mpsc::UnboundedReceiver<(QueueCommand, Option<Answer>)>,
    queued: Arc<AtomicUsize>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    // Every publish this proposer sends is numbered, under an id of its own: a batch sent
    // again (its leader went away before answering, and may have committed it) enqueues
    // nothing twice (the engine answers Duplicate).
    let (me, mut numbered) = (rand::random::<u64>(), 0u64);
    // Resolves once every batch proposed so far has its final outcome (sent again if it had
    // to be). A batch is sent again, or sent elsewhere, only after that: the engine takes a
    // publish whose number is below one it has as a resend, so a later batch committed
    // before an earlier one's resend would make the earlier publishes look like resends.
    let mut earlier_final: Option<tokio::sync::oneshot::Receiver<()>> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let n = rx.recv_many(&mut waiting, MAX_BATCH).await;
        if n == 0 {
            return;
        }
        queued.fetch_sub(n, Ordering::Relaxed);
        let Some(replica) = r.upgrade() else { return };
        let (mut cmds, answers): (Vec<QueueCommand>, Vec<Option<Answer>>) =
            waiting.drain(..).unzip();
        for c in &mut cmds {
            if let QueueCommand::Enqueue {
                from: from @ None, ..
            } = c
            {
                numbered += 1;
                *from = Some(warren_broker::queue::Publisher {
                    id: me,
                    seq: numbered,
                });
            }
        }
        let local = replica.local();
        let clustered = replica.cluster.is_some();
        let leads = local.as_ref().is_some_and(|g| g.is_leader());
        let group = match (&local, clustered && !leads) {
            (Some(g), false) => g.clone(),
            _ => {
                // Another node leads (or none yet, or this node is not a member): the batch
                // goes there, and the next one waits for its answer.
                tracing::debug!(
                    group = replica.id,
                    commands = cmds.len(),
                    "forwarding to the leader"
                );
                if let Some(earlier) = earlier_final.take() {
                    let _ = earlier.await;
                }
                let r = replica.write_to_leader(Proposal::Queue(cmds)).await;
                tracing::debug!(
                    group = replica.id,
                    ok = r.is_ok(),
                    "forwarded proposal answered"
                );
                drop(permit);
                match r {
                    Ok(applied) => answer_all(answers, applied),
                    Err(e) => fail_all(answers, &e),
                }
                continue;
            }
        };
        // In a cluster, a batch this node proposed as leader and lost with its leadership is
        // sent again to the new leader: acks must not be lost, and publishes are numbered.
        let again = clustered.then(|| cmds.clone());
        tracing::debug!(
            group = replica.id,
            commands = cmds.len(),
            "proposing as leader"
        );
        let (this_final, this_final_rx) = tokio::sync::oneshot::channel::<()>();
        let mut earlier = earlier_final.replace(this_final_rx);
        match group.submit(cmds).await {
            Ok(pending) => {
                let replica = replica.clone();
                tokio::spawn(async move {
                    // Bounded: a leader that lost its majority commits nothing (the
                    // publishers are nacked; what was proposed may still be committed once
                    // the majority is back, as with any unconfirmed publish).
                    let mut r = match tokio::time::timeout(WRITE_TIMEOUT, pending).await {
                        Ok(r) => r,
                        Err(_) => Err(no_majority()),
                    };
                    let timed_out = r.as_ref().is_err_and(|e| *e == no_majority());
                    tracing::debug!(group = replica.id, ok = r.is_ok(), "proposal answered");
                    if let (Err(_), Some(cmds), false) = (&r, again, timed_out) {
                        if let Some(e) = earlier.take() {
                            let _ = e.await;
                        }
                        r = replica.write_to_leader(Proposal::Queue(cmds)).await;
                    }
                    drop(permit);
                    match r {
                        Ok(applied) => answer_all(answers, applied),
                        Err(e) => fail_all(answers, &e),
                    }
                    if let Some(e) = earlier {
                        let _ = e.await;
                    }
                    let _ = this_final.send(());
                });
            }
            Err(e) => {
                fail_all(answers, &e.to_string());
                tokio::spawn(async move {
                    if let Some(e) = earlier {
                        let _ = e.await;
                    }
                    let _ = this_final.send(());
                });
            }
        }
    }
}

/// Most commands in one log entry.
const MAX_BATCH: usize = 1024;

/// Entries of one group proposed and not yet applied. openraft 0.9 applies an entry only
/// after its own flush and runs a leader's commands in order, so entries proposed one right
/// after another are flushed one by one; holding the next batch back until one of these is
/// applied lets it gather whatever arrived meanwhile, and one fsync then carries all of it
/// (measured: ~5,000 confirmed publishes a second with no limit, see docs/benchmarks.md).
const MAX_IN_FLIGHT: usize = 2;

fn answer_all(answers: Vec<Option<Answer>>, applied: Vec<Applied>) {
    for (a, r) in answers.into_iter().zip(applied) {
        if let Some(a) = a {
            a(Ok(r));
        }
    }
}

fn fail_all(answers: Vec<Option<Answer>>, why: &str) {
    for a in answers.into_iter().flatten() {
        a(Err(why.to_string()));
    }
}

/// This node's copy ends: what a [`crate::transport::MemberOp::Leave`] does.
pub(crate) async fn leave(r: &GroupReplica) {
    r.drop_local().await;
}

/// Used by [`crate::members`]: whether `r` has a member here, and its Raft handle.
pub(crate) fn raft_of(r: &GroupReplica) -> Option<openraft::Raft<crate::types::QueueRaft>> {
    r.local().map(|g| g.raft().clone())
}
