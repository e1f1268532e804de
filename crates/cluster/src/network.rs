//! The link to the other members of a group. A node alone has none: every call answers
//! "unreachable", which openraft treats as a peer being down. (Step 4 replaces this with
//! length-prefixed frames over TCP between nodes.)

use crate::types::{NodeId, QueueRaft};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

/// No peers: a single-node cluster.
#[derive(Clone, Default)]
pub struct NoPeers;

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, BasicNode, E> {
    let e = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("node {target}: this node has no cluster links yet"),
    );
    RPCError::Unreachable(Unreachable::new(&e))
}

pub struct NoLink(NodeId);

impl RaftNetworkFactory<QueueRaft> for NoPeers {
    type Network = NoLink;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoLink {
        NoLink(target)
    }
}

impl RaftNetwork<QueueRaft> for NoLink {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<QueueRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.0))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<QueueRaft>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable(self.0))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.0))
    }
}
