//! What the cluster tests share: a scratch directory, a persistent message with an id as its
//! body, and reading the id back.

#![allow(dead_code)]

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use warren_broker::message::Message;
use warren_broker::queue::{LoggedMessage, QueueCommand, QueueOptions};
use warren_cluster::{NodeWal, Output, QueueGroup};
use warren_store::Backend;

/// A directory under the system temp dir, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("warren-cluster-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Enqueue` of a persistent message whose body is `id` (8 bytes, big-endian).
pub fn enqueue(id: u64) -> QueueCommand {
    QueueCommand::Enqueue {
        msg: LoggedMessage(Arc::new(Message::new(
            "".into(),
            "q".into(),
            Bytes::from_static(&[0x10, 0x00, 2]), // delivery_mode 2
            Bytes::copy_from_slice(&id.to_be_bytes()),
        ))),
        now: 0,
        from: None,
    }
}

/// [`enqueue`] from publisher `publisher` with sequence number `seq`.
pub fn published(id: u64, publisher: u64, seq: u64) -> QueueCommand {
    let QueueCommand::Enqueue { msg, now, .. } = enqueue(id) else {
        unreachable!("enqueue makes an Enqueue")
    };
    QueueCommand::Enqueue {
        msg,
        now,
        from: Some(warren_broker::queue::Publisher { id: publisher, seq }),
    }
}

pub fn body_id(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Opens a node's WAL in `dir` on `backend` and starts `group` alone on it, with what the WAL
/// holds for it.
pub async fn start_alone(
    backend: Arc<dyn Backend>,
    dir: &Path,
    group: u64,
) -> Result<(Arc<NodeWal>, QueueGroup, UnboundedReceiver<Output>), String> {
    start_alone_with_segments(backend, dir, group, 64 << 20).await
}

/// [`start_alone`] on a WAL of `segment_size`-byte segments.
pub async fn start_alone_with_segments(
    backend: Arc<dyn Backend>,
    dir: &Path,
    group: u64,
    segment_size: u32,
) -> Result<(Arc<NodeWal>, QueueGroup, UnboundedReceiver<Output>), String> {
    let (wal, mut rec) = NodeWal::open_with_segment_size(backend, dir, segment_size)
        .map_err(|e| format!("the WAL does not open: {e}"))?;
    let recovered = rec.remove(&group).unwrap_or_default();
    let (g, out) = QueueGroup::start(1, group, wal.clone(), recovered, QueueOptions::default())
        .await
        .map_err(|e| format!("the group does not start: {e}"))?;
    Ok((wal, g, out))
}

/// The state machine's next output (within 5 s), and the ids of the messages it delivers.
pub async fn next_output(out: &mut UnboundedReceiver<Output>) -> (Output, Vec<u64>) {
    let o = tokio::time::timeout(Duration::from_secs(5), out.recv())
        .await
        .expect("an output within 5 s")
        .expect("the group is running");
    let ids = o
        .deliveries
        .iter()
        .map(|d| body_id(&d.2.msg.body))
        .collect();
    (o, ids)
}

/// basic.get with an ack expected, by `owner`: the checkout id of the message taken.
pub async fn take(g: &QueueGroup, owner: u64) -> u64 {
    let got = g
        .propose(QueueCommand::Get {
            owner: Some(owner),
            now: 0,
        })
        .await
        .expect("get");
    match got {
        warren_broker::queue::Applied::Got {
            checkout: Some(c), ..
        } => c,
        other => panic!("no message to take: {other:?}"),
    }
}

/// Acks checkout `c` of `owner`.
pub async fn settle(g: &QueueGroup, owner: u64, c: u64) {
    g.propose(QueueCommand::Settle {
        checkouts: vec![(owner, c)],
        now: 0,
    })
    .await
    .expect("settle");
}
