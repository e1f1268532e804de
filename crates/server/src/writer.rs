//! A connection's writer task: drains the outbox into the socket with one write per batch,
//! and sends heartbeats while the connection is idle.

use crate::outbox::Outbox;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use warren_broker::stats::IoCounters;
use warren_protocol::frame::write_heartbeat;

/// Drains the outbox into the socket; sends heartbeats when idle. Returns the write half so
/// the caller decides when the socket closes.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    outbox: Arc<Outbox>,
    heartbeat: Arc<AtomicU32>,
    io: Arc<IoCounters>,
) -> W {
    let mut spare = BytesMut::with_capacity(64 * 1024);
    loop {
        outbox.take(&mut spare);
        if spare.is_empty() {
            if outbox.is_closed() {
                break;
            }
            let notified = outbox.wake_writer.notified();
            match heartbeat.load(Ordering::Relaxed) {
                0 => notified.await,
                hb => {
                    let idle = Duration::from_millis(hb as u64 * 500);
                    if tokio::time::timeout(idle, notified).await.is_err() {
                        write_heartbeat(&mut spare);
                    } else {
                        continue;
                    }
                }
            }
            if spare.is_empty() {
                continue;
            }
        }
        if wr.write_all(&spare).await.is_err() {
            outbox.close();
            break;
        }
        io.send_oct.add(spare.len() as u64);
        io.send_cnt.add(1);
        spare.clear();
        if spare.capacity() > 8 << 20 {
            spare = BytesMut::with_capacity(64 * 1024);
        }
        outbox.drained();
    }
    let _ = wr.flush().await;
    wr
}
