//! One replicated queue on three nodes linked over TCP (loopback): commands committed by a
//! majority, applied on every member; the leader killed, a new one elected within 5 s with the
//! same ready and checked-out messages; a minority never commits; a node without the cluster
//! secret is refused.

mod common;
use common::*;

use openraft::BasicNode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren_broker::queue::{Applied, QueueCommand, QueueOptions};
use warren_cluster::{Listener, Membership, NodeWal, QueueGroup, Registry, TcpPeers};
use warren_store::FileBackend;

const GROUP: u64 = 3;
const SECRET: &[u8] = b"the cluster's shared secret";

struct Node {
    id: u64,
    group: Option<QueueGroup>,
    listener: Listener,
    wal: Arc<NodeWal>,
    registry: Registry,
    members: BTreeMap<u64, BasicNode>,
    dir: Dir,
}

async fn three_nodes(name: &str) -> Vec<Node> {
    let secret: Arc<[u8]> = Arc::from(SECRET);
    let mut prepared = Vec::new();
    for id in 1..=3u64 {
        let dir =
            std::env::temp_dir().join(format!("warren-3n-{}-{name}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (wal, _) = NodeWal::open(FileBackend::shared(), &dir).unwrap();
        let registry = Registry::default();
        let listener = Listener::start(
            "127.0.0.1:0".parse().unwrap(),
            secret.clone(),
            registry.clone(),
            None,
        )
        .await
        .unwrap();
        prepared.push((id, dir, wal, registry, listener));
    }
    let members: BTreeMap<u64, BasicNode> = prepared
        .iter()
        .map(|(id, _, _, _, l)| {
            (
                *id,
                BasicNode {
                    addr: l.addr.to_string(),
                },
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, dir, wal, registry, listener) in prepared {
        let g = member(id, &wal, Default::default(), &members, &registry).await;
        nodes.push(Node {
            id,
            group: Some(g),
            listener,
            wal,
            registry,
            members: members.clone(),
            dir: Dir(dir),
        });
    }
    nodes
}

/// Starts node `id`'s member of the group (node 1 creates the group if it is new).
async fn member(
    id: u64,
    wal: &Arc<NodeWal>,
    recovered: warren_cluster::GroupState,
    members: &BTreeMap<u64, BasicNode>,
    registry: &Registry,
) -> QueueGroup {
    let membership = Membership {
        members: members.clone(),
        initialize: id == 1,
    };
    let peers = TcpPeers {
        me: id,
        group: GROUP,
        secret: Arc::from(SECRET),
        tls: None,
    };
    let (g, _out) = QueueGroup::start_member(
        id,
        GROUP,
        wal.clone(),
        recovered,
        QueueOptions::default(),
        membership,
        peers,
        Some(registry),
    )
    .await
    .unwrap();
    g
}

/// Stops a node's member, links and WAL, as kill -9 would leave them (only what its WAL
/// synced); returns the address it listened on.
async fn stop_node(n: &mut Node) -> std::net::SocketAddr {
    let addr = n.listener.addr;
    n.listener.stop();
    n.group.take().unwrap().shutdown().await.unwrap();
    n.wal.close();
    addr
}

/// Starts a stopped node again on its directory and address; returns how many of the group's
/// entries its WAL held.
async fn restart_node(n: &mut Node, addr: std::net::SocketAddr) -> usize {
    let (wal, mut rec) = NodeWal::open(FileBackend::shared(), &n.dir.0).unwrap();
    let recovered = rec.remove(&GROUP).expect("its log");
    let entries = recovered.entries.len();
    let registry = n.registry.clone();
    let listener = Listener::start(addr, Arc::from(SECRET), registry.clone(), None)
        .await
        .unwrap();
    n.group = Some(member(n.id, &wal, recovered, &n.members, &registry).await);
    (n.listener, n.wal) = (listener, wal);
    entries
}

fn leader(nodes: &[Node]) -> Option<&QueueGroup> {
    nodes
        .iter()
        .filter_map(|n| n.group.as_ref())
        .find(|g| g.is_leader())
}

async fn wait_for_new_leader(nodes: &[Node], not: u64, within: Duration) -> (u64, Duration) {
    let start = Instant::now();
    loop {
        if let Some(n) = nodes
            .iter()
            .find(|n| n.id != not && n.group.as_ref().is_some_and(|g| g.is_leader()))
        {
            return (n.id, start.elapsed());
        }
        assert!(start.elapsed() < within, "no new leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_carries_on_with_the_same_messages_and_checkouts() {
    let mut nodes = three_nodes("failover").await;
    let first = nodes[0].group.as_ref().unwrap();
    first
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let g = leader(&nodes).expect("a leader");
    // Published by channel 77 with sequence numbers 1..=30.
    for id in 0..30 {
        assert_eq!(
            g.propose(published(id, 77, id + 1)).await.unwrap(),
            Applied::Done
        );
    }
    // A consumer (owner 5, prefetch 4) takes four; one is acked.
    let add = QueueCommand::AddConsumer {
        owner: 5,
        tag: "c".into(),
        prefetch: 4,
        no_ack: false,
        exclusive: false,
        priority: 0,
        now: 0,
    };
    g.propose(add).await.unwrap();
    let held = g.state().with_engine(|e| {
        e.checked_out(5)
            .map(|c| (c.id, body_id(&c.qm.msg.body)))
            .collect::<Vec<_>>()
    });
    assert_eq!(held.iter().map(|h| h.1).collect::<Vec<_>>(), [0, 1, 2, 3]);
    g.propose(QueueCommand::Settle {
        checkouts: vec![(5, held[0].0)],
        now: 0,
    })
    .await
    .unwrap();
    let want = g.state().with_engine(|e| {
        (
            e.stats().messages_ready,
            e.checked_out(5)
                .map(|c| body_id(&c.qm.msg.body))
                .collect::<Vec<_>>(),
        )
    });
    assert_eq!(
        want,
        (25, vec![1, 2, 3, 4]),
        "the ack gave credit for message 4"
    );

    // Every member applies the committed log.
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &nodes {
        let g = n.group.as_ref().unwrap();
        loop {
            let got = g.state().with_engine(|e| {
                (
                    e.stats().messages_ready,
                    e.checked_out(5)
                        .map(|c| body_id(&c.qm.msg.body))
                        .collect::<Vec<_>>(),
                )
            });
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not catch up: {got:?}",
                n.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Kill the leader (its group, its listener, its links).
    let old = nodes
        .iter()
        .position(|n| n.group.as_ref().is_some_and(|g| g.is_leader()))
        .unwrap();
    let old_id = nodes[old].id;
    nodes[old].listener.stop();
    nodes[old].group.take().unwrap().shutdown().await.unwrap();
    nodes[old].wal.close();
    let (new_id, took) = wait_for_new_leader(&nodes, old_id, Duration::from_secs(5)).await;
    eprintln!("node {old_id} killed; node {new_id} leads after {took:?}");
    let g = leader(&nodes).unwrap();
    let got = g.state().with_engine(|e| {
        (
            e.stats().messages_ready,
            e.checked_out(5)
                .map(|c| body_id(&c.qm.msg.body))
                .collect::<Vec<_>>(),
        )
    });
    assert_eq!(
        got, want,
        "the new leader has the same ready and checked-out messages"
    );
    // The publisher resends what it had no confirm for: the new leader knows it has them.
    for id in 27..30 {
        assert_eq!(
            g.propose(published(id, 77, id + 1)).await.unwrap(),
            Applied::Duplicate
        );
    }
    // Two of three still commit.
    assert_eq!(g.propose(enqueue(100)).await.unwrap(), Applied::Done);
    assert_eq!(g.state().with_engine(|e| e.stats().messages_ready), 26);

    // Kill one more (once both have applied everything): the last one cannot commit alone.
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter().filter_map(|n| n.group.as_ref()) {
        while n.state().with_engine(|e| e.stats().messages_ready) != 26 {
            assert!(Instant::now() < deadline, "a member did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let second = nodes
        .iter()
        .position(|n| n.group.as_ref().is_some_and(|g| g.is_leader()))
        .unwrap();
    nodes[second].listener.stop();
    nodes[second]
        .group
        .take()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let last = nodes.iter().find_map(|n| n.group.as_ref()).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), last.propose(enqueue(101))).await;
    assert!(!matches!(r, Ok(Ok(_))), "a minority committed: {r:?}");
    assert_eq!(
        last.state().with_engine(|e| e.stats().messages_ready),
        26,
        "nothing applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secret_is_refused() {
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let nodes = three_nodes("secret").await;
    nodes[0]
        .group
        .as_ref()
        .unwrap()
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let target = BasicNode {
        addr: nodes[1].listener.addr.to_string(),
    };
    let mut rogue = TcpPeers {
        me: 9,
        group: GROUP,
        secret: Arc::from(&b"wrong"[..]),
        tls: None,
    };
    let mut link = rogue.new_client(2, &target).await;
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(99, 9), None);
    let r = link
        .vote(vote, RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(
        matches!(r, Err(openraft::error::RPCError::Unreachable(_))),
        "{r:?}"
    );
    // The same request with the secret reaches the group (and is answered, not refused).
    let mut honest = TcpPeers {
        me: 9,
        group: GROUP,
        secret: Arc::from(SECRET),
        tls: None,
    };
    let mut link = honest.new_client(2, &target).await;
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(0, 9), None);
    let r = link
        .vote(vote, RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(r.is_ok(), "{r:?}");
}

/// A follower stopped (its group, its links, its WAL), then restarted on its data directory
/// while the others went on: it catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_catches_up_by_itself() {
    let mut nodes = three_nodes("catchup").await;
    nodes[0]
        .group
        .as_ref()
        .unwrap()
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let leader_id = leader(&nodes).unwrap().raft_id();
    let f = nodes.iter().position(|n| n.id != leader_id).unwrap();
    for id in 0..10 {
        leader(&nodes).unwrap().propose(enqueue(id)).await.unwrap();
    }
    let addr = stop_node(&mut nodes[f]).await;
    for id in 10..40 {
        leader(&nodes).unwrap().propose(enqueue(id)).await.unwrap();
    }
    let entries = restart_node(&mut nodes[f], addr).await;
    assert!(entries >= 10, "it had the first entries");
    let g = nodes[f].group.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = g.state().with_engine(|e| e.stats().messages_ready);
        if ready == 40 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member has {ready} of 40"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let order: Vec<u64> = g
        .state()
        .with_engine(|e| e.ready().map(|m| body_id(&m.msg.body)).collect());
    assert_eq!(order, (0..40).collect::<Vec<_>>());
}

/// A follower down while the queue moves on (a backlog published and consumed in order) is
/// sent the leader's snapshot, which carries no bodies: the messages it holds are settled
/// further on in the log, which comes with it. The follower ends with the leader's messages,
/// bodies and all, and nothing that stands for a body it was not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_snapshot_without_bodies_catches_up() {
    let mut nodes = three_nodes("dry").await;
    nodes[0]
        .group
        .as_ref()
        .unwrap()
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let leader_id = leader(&nodes).unwrap().raft_id();
    let l = nodes.iter().position(|n| n.id == leader_id).unwrap();
    nodes[l]
        .group
        .as_ref()
        .unwrap()
        .state()
        .set_snapshot_thresholds(512, 1000);
    let f = nodes.iter().position(|n| n.id != leader_id).unwrap();
    for id in 0..10 {
        leader(&nodes).unwrap().propose(enqueue(id)).await.unwrap();
    }
    let addr = stop_node(&mut nodes[f]).await;
    // A backlog of 30 that moves: one in, and from 30 on one out, 300 times.
    for id in 10..310 {
        let g = leader(&nodes).unwrap();
        g.propose(enqueue(id)).await.unwrap();
        if id >= 30 {
            let c = take(g, 9).await;
            settle(g, 9, c).await;
        }
    }
    let lg = nodes[l].group.as_ref().unwrap();
    assert!(lg.state().snapshots_built() >= 3, "the leader snapshotted");
    assert_eq!(lg.state().full_snapshots_built(), 0, "without bodies");
    restart_node(&mut nodes[f], addr).await;
    let g = nodes[f].group.as_ref().unwrap();
    let want: Vec<u64> = nodes[l]
        .group
        .as_ref()
        .unwrap()
        .state()
        .with_engine(|e| e.ready().map(|m| body_id(&m.msg.body)).collect());
    assert_eq!(want, (280..310).collect::<Vec<u64>>());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<u64> = g
            .state()
            .with_engine(|e| e.ready().map(|m| body_id(&m.msg.body)).collect());
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower has {got:?}, the leader {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        g.state().snapshots_built() >= 1,
        "the follower was sent a snapshot (not only the log)"
    );
    let dry = g.state().with_engine(|e| {
        e.ready()
            .filter(|m| warren_broker::queue::is_dry(&m.msg.body))
            .count()
    });
    assert_eq!(dry, 0, "every message it holds has its body");
}
