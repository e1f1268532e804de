//! Heartbeat deadlines on a grid shared by every connection. An idle connection's timers (its
//! next heartbeat to send, its client's heartbeat deadline) are rounded up to the grid, so the
//! timers of thousands of idle connections fall due in the same instants and the runtime
//! wakes once for a batch of them instead of once per connection.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The grid's step: a heartbeat is at most this late, and at most a tenth of its interval.
const STEP: Duration = Duration::from_secs(1);

/// `t` rounded up to the grid, for a timer that recurs every `interval`.
pub(crate) fn round_up(t: Instant, interval: Duration) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let step = STEP.min(interval / 10).as_nanos();
    if step == 0 || t <= origin {
        return t;
    }
    let since = t.duration_since(origin).as_nanos();
    let up = since.div_ceil(step) * step;
    origin + Duration::from_nanos(up as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_a_shared_step_never_earlier_nor_later_than_a_tenth() {
        let base = round_up(Instant::now(), Duration::from_secs(30));
        for ms in [1, 250, 999, 1000, 1001, 7300] {
            let t = base + Duration::from_millis(ms);
            let r = round_up(t, Duration::from_secs(30));
            assert!(r >= t && r - t < STEP, "{ms} ms");
            assert_eq!(round_up(r, Duration::from_secs(30)), r, "on the grid");
        }
        // Deadlines a millisecond apart meet.
        let a = round_up(base + Duration::from_millis(10), Duration::from_secs(30));
        let b = round_up(base + Duration::from_millis(11), Duration::from_secs(30));
        assert_eq!(a, b);
        // A short interval gets a finer step.
        let t = base + Duration::from_millis(3);
        let r = round_up(t, Duration::from_millis(500));
        assert!(r >= t && r - t < Duration::from_millis(50));
    }
}
