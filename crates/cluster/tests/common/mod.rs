//! What the cluster tests share: a scratch directory, a persistent message with an id as its
//! body, and reading the id back.

#![allow(dead_code)]

use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use warren_broker::message::Message;
use warren_broker::queue::{LoggedMessage, QueueCommand};

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
