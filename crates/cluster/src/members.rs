//! Who is in a quorum queue's group.
//!
//! - A new queue's members ([`choose`]): `x-quorum-initial-group-size` of them (default
//!   [`crate::ClusterSpec::default_group_size`], RabbitMQ's `quorum_cluster_size`, 3), the
//!   declaring node first, then running nodes before nodes that do not answer, the nodes
//!   with the fewest members of groups first (RabbitMQ's `rabbit_queue_location`), ties
//!   broken at random. A size at or above the number of nodes takes them all.
//! - `add_member` ([`add`]): the node starts an empty member ([`MemberOp::Join`]), the leader
//!   adds it as a learner and waits until it has caught up (from the log, or a snapshot of
//!   the queue), then makes it a voter (openraft's `add_learner` and `change_membership`).
//! - `delete_member` ([`delete`]): the leader makes the member a learner, which keeps
//!   receiving the log until it has applied the change (so the deliveries it handed out up
//!   to then and those the others send it after meet), then removes it; the node then stops
//!   its member and forgets its log ([`MemberOp::Leave`]). The leader may remove itself:
//!   openraft has it step down once the change is committed, and the others elect another.
//!   A member on a node that does not answer is removed without waiting for it.
//!
//! Each step that must run on the leader is sent to whichever node leads now, again if
//! leadership moved meanwhile. No consensus code of our own: the membership is openraft's,
//! changed with joint consensus.

use crate::group::{Membership, QueueGroup};
use crate::meta::META_GROUP;
use crate::node::{group_id, Cluster, LocalNode};
use crate::replica::GroupReplica;
use crate::transport::{BoxFuture, Control, GroupStatus, MemberOp, Pushed, TcpPeers};
use crate::types::NodeId;
use crate::wal::GroupState;
use openraft::{BasicNode, ChangeMembers};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use warren_broker::queue::replica::MemberError;

/// How long a membership change may take in all (a learner catching up on a long log
/// included); RabbitMQ's `add_member` waits 5 s by default, but its learners catch up on
/// their own afterwards.
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a removed member is given to apply its removal before it is dropped.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The members of a new queue's group (node names, this node first).
pub(crate) fn choose(node: &LocalNode, size: Option<u64>) -> Vec<String> {
    let Some(c) = &node.cluster else {
        return Vec::new();
    };
    let size = size
        .map_or(c.spec.default_group_size, |s| s as usize)
        .max(1);
    let name = |id: &NodeId| c.name_of(*id).unwrap_or_default();
    let mut others: Vec<NodeId> = c
        .nodes()
        .keys()
        .copied()
        .filter(|id| *id != c.spec.me)
        .collect();
    if size > others.len() {
        return std::iter::once(c.spec.me)
            .chain(others)
            .map(|id| name(&id))
            .collect();
    }
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    for r in node.replicas.lock().values().filter_map(|r| r.upgrade()) {
        for v in r.known_members().1 {
            *load.entry(v).or_default() += 1;
        }
    }
    let mut keyed: Vec<(bool, usize, u64, NodeId)> = others
        .drain(..)
        .map(|id| {
            (
                c.is_down(id),
                load.get(&id).copied().unwrap_or(0),
                rand::random(),
                id,
            )
        })
        .collect();
    keyed.sort();
    std::iter::once(c.spec.me)
        .chain(keyed.into_iter().map(|k| k.3).take(size - 1))
        .map(|id| name(&id))
        .collect()
}

/// The queue's replica on this node.
fn replica(node: &LocalNode, vhost: &str, name: &str) -> Result<Arc<GroupReplica>, MemberError> {
    node.replicas
        .lock()
        .get(&group_id(vhost, name))
        .and_then(|r| r.upgrade())
        .ok_or(MemberError::NotQuorumQueue)
}

pub(crate) fn failed(e: impl std::fmt::Display) -> MemberError {
    MemberError::Failed(e.to_string())
}

/// `rabbitmq-queues add_member`: returns the group's size after.
pub(crate) fn add(
    node: &LocalNode,
    vhost: &str,
    name: &str,
    target: &str,
) -> Result<usize, MemberError> {
    let c = node.cluster.clone().ok_or(MemberError::NotClustered)?;
    let n = c.node_named(target).ok_or(MemberError::NodeNotRunning)?;
    if c.is_down(n) {
        return Err(MemberError::NodeNotRunning);
    }
    let r = replica(node, vhost, name)?;
    if crate::node::on_raft_thread() {
        return Err(failed("a membership change cannot wait on a Raft thread"));
    }
    let addr = c.addr(n).ok_or(MemberError::NodeNotRunning)?;
    node.wait_for(async move {
        let st = r
            .fresh_status()
            .await
            .ok_or_else(|| failed("no member of the queue's group answers"))?;
        if st.voters.contains(&n) {
            return Ok(st.voters.len());
        }
        tracing::info!(group = r.id, node = n, "adding a member to a quorum queue's group");
        c.control
            .member_op(&addr, r.id, MemberOp::Join, CHANGE_TIMEOUT)
            .await
            .map_err(failed)?;
        let changed = async {
            if !st.learners.contains(&n) {
                on_leader(&r, MemberOp::AddLearner(n)).await?;
            }
            on_leader(&r, MemberOp::Promote(n)).await
        }
        .await;
        match changed {
            Ok(_) => {
                tracing::info!(group = r.id, node = n, "added a member to a quorum queue's group");
                Ok(st.voters.len() + 1)
            }
            Err(e) => {
                tracing::warn!(group = r.id, node = n, error = %e, "could not add a member to a quorum queue's group");
                let _ = on_leader(&r, MemberOp::Remove(n)).await;
                let _ = c
                    .control
                    .member_op(&addr, r.id, MemberOp::Leave, CHANGE_TIMEOUT)
                    .await;
                Err(e)
            }
        }
    })
    .ok_or_else(|| failed("the Raft runtime stopped"))?
}

/// `rabbitmq-queues delete_member`: returns the group's size after.
pub(crate) fn delete(
    node: &LocalNode,
    vhost: &str,
    name: &str,
    target: &str,
) -> Result<usize, MemberError> {
    let c = node.cluster.clone().ok_or(MemberError::NotClustered)?;
    let r = replica(node, vhost, name)?;
    if crate::node::on_raft_thread() {
        return Err(failed("a membership change cannot wait on a Raft thread"));
    }
    let target = target.to_string();
    node.wait_for(async move {
        let st = r
            .fresh_status()
            .await
            .ok_or_else(|| failed("no member of the queue's group answers"))?;
        let Some(n) = c.node_named(&target) else {
            // Not a node of the cluster, so not a member: nothing to do (RabbitMQ's
            // delete_member is idempotent).
            return Ok(st.voters.len());
        };
        if !st.voters.contains(&n) && !st.learners.contains(&n) {
            return Ok(st.voters.len());
        }
        if st.voters == [n] {
            return Err(MemberError::LastNode);
        }
        tracing::info!(group = r.id, node = n, "removing a member from a quorum queue's group");
        // A node that does not answer (one being forgotten) is neither waited for nor told.
        let addr = c.addr(n).unwrap_or_default();
        let reachable = !c.is_down(n) && c.probe(&addr, Duration::from_secs(1)).await;
        if st.voters.contains(&n) && reachable {
            let index = on_leader(&r, MemberOp::Demote(n)).await?;
            // The member keeps the log until it has applied its demotion: deliveries to
            // its own consumers up to there are its to hand out, the others send it the rest.
            let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
            loop {
                match c.control.status(&addr, r.id, Duration::from_secs(1)).await {
                    Ok(Some(s)) if s.applied >= index || !s.member => break,
                    _ if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(group = r.id, node = n, "a removed member did not apply its removal in time");
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        if st.voters.contains(&n) && !reachable {
            on_leader(&r, MemberOp::Demote(n)).await?;
        }
        on_leader(&r, MemberOp::Remove(n)).await?;
        if reachable {
            if let Err(e) = c
                .control
                .member_op(&addr, r.id, MemberOp::Leave, CHANGE_TIMEOUT)
                .await
            {
                tracing::warn!(group = r.id, node = n, error = %e, "a removed member was not told to stop; it stops when it learns it is removed");
            }
        }
        tracing::info!(group = r.id, node = n, "removed a member from a quorum queue's group");
        Ok(st.voters.len() - 1)
    })
    .ok_or_else(|| failed("the Raft runtime stopped"))?
}

/// Runs `op` on the group's leader, wherever it is (again if leadership moves meanwhile).
async fn on_leader(r: &GroupReplica, op: MemberOp) -> Result<u64, MemberError> {
    let c = r.cluster.clone().ok_or(MemberError::NotClustered)?;
    run_on_leader(&c, r.id, op, || async {
        r.fresh_status().await.and_then(|s| s.leader)
    })
    .await
}

/// Runs `op` on the leader of `group` that `leader` finds, again while it fails, for up to
/// [`CHANGE_TIMEOUT`].
pub(crate) async fn run_on_leader<F, Fut>(
    c: &Cluster,
    group: u64,
    op: MemberOp,
    mut leader: F,
) -> Result<u64, MemberError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<NodeId>>,
{
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    loop {
        let leader = leader().await;
        let why = match leader.and_then(|l| c.addr(l)) {
            Some(addr) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match c.control.member_op(&addr, group, op.clone(), left).await {
                    Ok(i) => return Ok(i),
                    Err(e) => e,
                }
            }
            None => "the queue's group has no leader".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(if why.contains("within") {
                MemberError::Timeout
            } else {
                failed(why)
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl LocalNode {
    fn replica_of(&self, group: u64) -> Option<Arc<GroupReplica>> {
        self.replicas.lock().get(&group).and_then(|r| r.upgrade())
    }

    /// Starts this node's empty member of `r`'s group, for the leader to fill.
    async fn join(&self, r: Arc<GroupReplica>) -> Result<u64, String> {
        if r.local().is_some() {
            return Ok(0);
        }
        let c = self.cluster.clone().ok_or("not in a cluster")?;
        // Whatever an earlier membership left here is stale.
        self.wal.forget(r.id).map_err(|e| e.to_string())?;
        let peers = TcpPeers {
            me: self.id,
            group: r.id,
            secret: c.spec.secret.clone(),
            tls: c.spec.tls.clone(),
        };
        let membership = Membership {
            members: BTreeMap::new(),
            initialize: false,
        };
        let (group, out) = QueueGroup::start_member(
            self.id,
            r.id,
            self.wal.clone(),
            GroupState::default(),
            r.options(),
            membership,
            peers,
            Some(&c.registry),
        )
        .await
        .map_err(|e| e.to_string())?;
        r.set_local(Arc::new(group), out);
        tracing::info!(
            group = r.id,
            "started a member of a quorum queue's group here"
        );
        Ok(0)
    }

    /// One leader step of a membership change on this node's member of `r`'s group.
    async fn change(&self, r: Arc<GroupReplica>, op: MemberOp) -> Result<u64, String> {
        let raft = crate::replica::raft_of(&r).ok_or("not a member of the queue's group")?;
        let c = self.cluster.clone().ok_or("not in a cluster")?;
        let node = |n: NodeId| {
            c.member(n)
                .ok_or_else(|| format!("node {n} is not in the cluster"))
        };
        let r = match op {
            MemberOp::AddLearner(n) => raft.add_learner(n, node(n)?, true).await,
            MemberOp::Promote(n) => {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([n])), false)
                    .await
            }
            MemberOp::Demote(n) => {
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([n])), true)
                    .await
            }
            MemberOp::Remove(n) => {
                let _: BasicNode = node(n)?;
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([n])), false)
                    .await
            }
            MemberOp::Join | MemberOp::Leave | MemberOp::Forget(_) | MemberOp::AddNode { .. } => {
                return Err(format!("{op:?} is not a step of a queue's leader"))
            }
        };
        r.map(|w| w.log_id.index).map_err(|e| e.to_string())
    }
}

impl Control for LocalNode {
    fn status(&self, group: u64) -> Option<GroupStatus> {
        Some(self.replica_of(group)?.status())
    }

    fn push(&self, pushed: Vec<(u64, Pushed)>) {
        for (group, p) in pushed {
            if let Some(r) = self.replica_of(group) {
                r.take_pushed(p);
            } else if let Some(r) = self.remotes.lock().get(&group).and_then(|r| r.upgrade()) {
                r.take_pushed(p);
            }
        }
    }

    fn home(
        &self,
        vhost: String,
        queue: String,
        cmds: Vec<warren_broker::queue::QueueCommand>,
    ) -> BoxFuture<Result<Vec<warren_broker::queue::Applied>, String>> {
        let service = self.home_service.get().cloned();
        Box::pin(async move {
            match service {
                Some(s) => s.apply(&vhost, &queue, cmds).await,
                None => Err("this node serves no classic queue to the others".to_string()),
            }
        })
    }

    fn home_status(&self, vhost: &str, queue: &str) -> Option<crate::transport::HomeStatus> {
        let service = self.home_service.get()?;
        let s = service.stats(vhost, queue)?;
        Some(crate::transport::HomeStatus {
            stats: s.stats,
            len: s.len,
            backlogged: s.backlogged,
            incarnation: service.incarnation,
        })
    }

    fn member_op(&self, group: u64, op: MemberOp) -> BoxFuture<Result<u64, String>> {
        if group == META_GROUP {
            return crate::node_membership::meta_op(self.cluster.clone(), op);
        }
        let Some(r) = self.replica_of(group) else {
            return Box::pin(async { Err("this node does not know the queue".to_string()) });
        };
        // The node outlives its runtime's tasks: a strong reference is safe here.
        let me = self.self_ref();
        Box::pin(async move {
            let Some(me) = me else {
                return Err("the node is shutting down".to_string());
            };
            match op {
                MemberOp::Join => me.join(r).await,
                MemberOp::Leave => {
                    crate::replica::leave(&r).await;
                    tracing::info!(
                        group = r.id,
                        "stopped this node's member of a quorum queue's group: removed"
                    );
                    Ok(0)
                }
                op => me.change(r, op).await,
            }
        })
    }
}
