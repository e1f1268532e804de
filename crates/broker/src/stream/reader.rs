//! One consumer of a stream: where it reads, what it has read ahead, and its filter. Each
//! reader reads the segments itself, a chunk at a time, so many readers share one log
//! without copying it; what a reader holds is one chunk (at most 64 KiB plus a record).

use super::args::Filter;
use crate::delivery::DeliveryChannel;
use crate::queue::QueuedMessage;
use std::collections::VecDeque;
use std::sync::Arc;
use warren_protocol::ShortStr;
use warren_store::{Position, StreamRecord};

/// Bytes of records a reader reads ahead at a time.
pub(super) const READ_AHEAD: usize = 64 * 1024;

pub(super) struct Reader {
    pub handle: Arc<DeliveryChannel>,
    pub consumer_id: u32,
    pub tag: ShortStr,
    pub exclusive: bool,
    /// Where the next read starts.
    pub pos: Position,
    /// The first offset still to deliver: records below it are skipped (a start in the
    /// middle of a chunk, or at an offset not yet written).
    pub next_offset: u64,
    /// Records read and not yet looked at.
    pub buf: VecDeque<StreamRecord>,
    /// A message made ready for delivery that the consumer had no credit for.
    pub pending: Option<QueuedMessage>,
    pub filter: Option<Filter>,
}

impl Reader {
    pub fn is(&self, channel: &DeliveryChannel, consumer_id: u32) -> bool {
        std::ptr::eq(&*self.handle, channel) && self.consumer_id == consumer_id
    }
}
