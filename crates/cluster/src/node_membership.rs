//! Which nodes make the cluster: `rabbitmqctl join_cluster` and `forget_cluster_node`.
//!
//! The cluster's nodes are the metadata group's membership ([`crate::node::Cluster::nodes`]),
//! whose entries carry each node's name ([`crate::nodes`]). Changing them is an openraft
//! membership change of that group, on its leader (no consensus code of our own):
//!
//! - [`join`], on the node that joins (a node of a cluster of one: its config names only
//!   itself): its metadata member starts again empty (what it had applied stays in its
//!   broker), then it asks a node of the cluster to add it ([`MemberOp::AddNode`], carried
//!   to the group's leader), which makes it a learner, waits until it has caught up (the
//!   group's log, or its snapshot: the catalogue of definitions), then a voter. Refused
//!   while the node has quorum queues, or is in a cluster of several nodes already.
//! - [`forget`]: a stopped node leaves the membership ([`MemberOp::Forget`] on the leader).
//!   Its quorum queue members are removed before, by the caller (as `shrink` does).

use crate::members::{failed, run_on_leader, CHANGE_TIMEOUT};
use crate::meta::META_GROUP;
use crate::node::{open_metadata, Cluster, LocalNode};
use crate::nodes::{node_address, number_of};
use crate::transport::{BoxFuture, MemberOp};
use crate::wal::GroupState;
use openraft::{BasicNode, ChangeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use warren_broker::queue::replica::MemberError;

/// `rabbitmqctl join_cluster`: this node (alone) joins the cluster of the node named `seed`.
pub(crate) fn join(node: &LocalNode, seed: &str) -> Result<(), MemberError> {
    let c = node.cluster.clone().ok_or(MemberError::NotClustered)?;
    if crate::node::on_raft_thread() {
        return Err(failed("a membership change cannot wait on a Raft thread"));
    }
    let me = c.spec.me;
    let my_name = c.name_of(me).unwrap_or_default();
    if seed == my_name {
        return Err(failed(
            "a node cannot join itself: name a node of the cluster to join",
        ));
    }
    let seed_addr = node_address(seed).map_err(failed)?;
    let nodes = c.nodes();
    if nodes.values().any(|n| n.addr == seed) {
        // Already a member of that cluster (RabbitMQ answers the same way).
        return Ok(());
    }
    if nodes.len() > 1 {
        let names: Vec<String> = nodes.into_values().map(|n| n.addr).collect();
        return Err(failed(format!(
            "already_member: this node is in a cluster of {} nodes ({}); to join another, forget it there with forget_cluster_node and start it again with an empty data directory",
            names.len(),
            names.join(", ")
        )));
    }
    if node.replicas.lock().values().any(|r| r.strong_count() > 0) {
        return Err(failed(
            "this node has quorum queues: a node joins a cluster without any (delete them, or move their messages elsewhere first)",
        ));
    }
    let applier = c
        .applier
        .get()
        .cloned()
        .ok_or_else(|| failed("the metadata group has not started on this node yet"))?;
    let wal = node.wal.clone();
    let seed = seed.to_string();
    node.wait_for(async move {
        if !c.probe(&seed_addr, Duration::from_secs(2)).await {
            return Err(MemberError::NodeNotRunning);
        }
        // Leave the cluster of one: a new, empty member of the metadata group, for the
        // cluster's leader to fill.
        let old = c.meta.write().take();
        if let Some(old) = old {
            let _ = old.shutdown().await;
        }
        c.registry.remove(META_GROUP);
        wal.forget(META_GROUP).map_err(failed)?;
        let raft = open_metadata(&c, me, wal, GroupState::default(), applier, None)
            .await
            .map_err(failed)?;
        *c.meta.write() = Some(raft.clone());
        tracing::info!(cluster = %seed, "joining a cluster");
        let asked = MemberOp::AddNode {
            id: me,
            name: my_name.clone(),
        };
        if let Err(e) = c
            .control
            .member_op(&seed_addr, META_GROUP, asked, CHANGE_TIMEOUT)
            .await
        {
            tracing::warn!(cluster = %seed, error = %e, "could not join the cluster; this node stays a cluster of its own");
            // Refused if the cluster's entries reached it meanwhile: it is a learner then.
            let alone = BTreeMap::from([(me, BasicNode { addr: my_name })]);
            let _ = raft.initialize(alone).await;
            return Err(failed(e));
        }
        tracing::info!(cluster = %seed, "joined the cluster");
        Ok(())
    })
    .ok_or_else(|| failed("the Raft runtime stopped"))?
}

/// `rabbitmqctl forget_cluster_node`: removes `target`, a node that does not run, from the
/// metadata group's membership (on its leader); from then on no node lists it, probes it or
/// places members on it ([`crate::node::Cluster::nodes`]). Its quorum queue members are
/// removed before, by the caller.
pub(crate) fn forget(node: &LocalNode, target: &str) -> Result<(), MemberError> {
    let c = node.cluster.clone().ok_or(MemberError::NotClustered)?;
    let n = c
        .node_named(target)
        .filter(|n| c.in_cluster(*n))
        .ok_or(MemberError::NotClusterNode)?;
    if n == c.spec.me {
        return Err(failed(
            "a node cannot forget itself: run forget_cluster_node on another node of the cluster",
        ));
    }
    if crate::node::on_raft_thread() {
        return Err(failed("a membership change cannot wait on a Raft thread"));
    }
    let (addr, target) = (c.addr(n).unwrap_or_default(), target.to_string());
    node.wait_for(async move {
        if c.probe(&addr, Duration::from_secs(1)).await {
            return Err(MemberError::NodeRunning);
        }
        let meta = c
            .meta()
            .ok_or_else(|| failed("the cluster's metadata group has not started here yet"))?;
        run_on_leader(&c, META_GROUP, MemberOp::Forget(n), || {
            let leader = meta.metrics().borrow().current_leader;
            async move { leader }
        })
        .await?;
        tracing::info!(node = %target, "forgot a cluster node");
        Ok(())
    })
    .ok_or_else(|| failed("the Raft runtime stopped"))?
}

/// A membership change of the metadata group, asked of this node by another.
pub(crate) fn meta_op(c: Option<Arc<Cluster>>, op: MemberOp) -> BoxFuture<Result<u64, String>> {
    Box::pin(async move {
        let c = c.ok_or("this node is not in a cluster")?;
        let meta = c
            .meta()
            .ok_or("the metadata group has not started on this node")?;
        let membership = meta.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        match op {
            MemberOp::Forget(n) => {
                if !m.voter_ids().any(|v| v == n) {
                    return Ok(0);
                }
                meta.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([n])), false)
                    .await
                    .map(|w| w.log_id.index)
                    .map_err(|e| e.to_string())
            }
            MemberOp::AddNode { id, name } => {
                let leader = meta.metrics().borrow().current_leader;
                if leader != Some(c.spec.me) {
                    // To the leader, which makes the change.
                    let addr = leader
                        .and_then(|l| c.addr(l))
                        .ok_or("the cluster's metadata group has no leader now")?;
                    let op = MemberOp::AddNode { id, name };
                    return c
                        .control
                        .member_op(&addr, META_GROUP, op, CHANGE_TIMEOUT)
                        .await;
                }
                if m.voter_ids().any(|v| v == id) {
                    return Ok(0);
                }
                if let Some((_, other)) = m
                    .nodes()
                    .find(|(o, _)| **o != id && number_of(**o) == number_of(id))
                {
                    return Err(format!(
                        "node_number_clash: {name} and {} would share owner ids (their names hash alike); give the joining node another name",
                        other.addr
                    ));
                }
                tracing::info!(node = %name, "adding a node to the cluster");
                meta.add_learner(id, BasicNode { addr: name.clone() }, true)
                    .await
                    .map_err(|e| e.to_string())?;
                let changed = meta
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map(|w| w.log_id.index)
                    .map_err(|e| e.to_string())?;
                tracing::info!(node = %name, "added a node to the cluster");
                Ok(changed)
            }
            op => Err(format!("{op:?} is not a change of the metadata group")),
        }
    })
}
