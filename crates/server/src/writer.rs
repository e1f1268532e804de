//! A connection's writer task: drains the outbox into the socket with one write per batch,
//! sends heartbeats while the connection is idle, and gives its buffers back once the
//! connection has been quiet for a moment.

use crate::connection::IDLE_RELEASE;
use crate::heartbeat_grid::round_up;
use crate::outbox::Outbox;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use warren_broker::stats::IoCounters;
use warren_protocol::frame::write_heartbeat;

/// Buffers up to this size are kept while idle (a heartbeat or a small reply fits).
const IDLE_KEEP: usize = 1024;

/// Drains the outbox into the socket; sends heartbeats when idle. Returns the write half so
/// the caller decides when the socket closes.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    outbox: Arc<Outbox>,
    heartbeat: Arc<AtomicU32>,
    io: Arc<IoCounters>,
) -> W {
    // Grows with the first burst (the outbox and this swap buffers).
    let mut spare = BytesMut::new();
    let mut last_write = Instant::now();
    loop {
        outbox.take(&mut spare);
        if spare.is_empty() {
            if outbox.is_closed() {
                break;
            }
            let notified = outbox.wake_writer.notified();
            // Wait for output, or until the buffers are to be given back, or until a
            // heartbeat is due: one timer for whichever comes first.
            let release = spare.capacity() > IDLE_KEEP || outbox.capacity() > IDLE_KEEP;
            let release_at = release.then(|| last_write + IDLE_RELEASE);
            let hb_at = match heartbeat.load(Ordering::Relaxed) {
                0 => None,
                hb => {
                    let half = Duration::from_millis(hb as u64 * 500);
                    let at = round_up((last_write + half).into_std(), half);
                    Some(Instant::from_std(at))
                }
            };
            let Some(at) = [release_at, hb_at].into_iter().flatten().min() else {
                notified.await;
                continue;
            };
            if tokio::time::timeout_at(at, notified).await.is_ok() {
                continue;
            }
            let now = Instant::now();
            if release_at.is_some_and(|t| now >= t) {
                spare = BytesMut::new();
                outbox.release_idle();
            }
            if hb_at.is_some_and(|t| now >= t) {
                write_heartbeat(&mut spare);
            } else {
                continue;
            }
        }
        if wr.write_all(&spare).await.is_err() {
            outbox.close();
            break;
        }
        last_write = Instant::now();
        io.send_oct.add(spare.len() as u64);
        io.send_cnt.add(1);
        spare.clear();
        if spare.capacity() > 8 << 20 {
            spare = BytesMut::new();
        }
        outbox.drained();
    }
    let _ = wr.flush().await;
    wr
}
