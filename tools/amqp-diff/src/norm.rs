//! Normalisation of outcome lines, so that what legitimately differs between two runs does not
//! count as a divergence: the run's name prefix, server-generated queue names and consumer tags
//! (numbered in order of first appearance), and the order of asynchronous events that RabbitMQ
//! itself does not guarantee (across connections, channels and consumers).
//!
//! Reply codes and texts are never touched, apart from the names inside them.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

fn gen_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"amq\.(gen|ctag)-[A-Za-z0-9_\-.]+").unwrap())
}

/// Per-run name normaliser.
#[derive(Debug, Default)]
pub struct Norm {
    prefix: String,
    names: HashMap<String, String>,
    counts: HashMap<&'static str, usize>,
}

impl Norm {
    pub fn new(prefix: &str) -> Self {
        Norm {
            prefix: prefix.to_string(),
            ..Default::default()
        }
    }

    /// The stable name of a server-generated name: `amq.gen-1`, `amq.ctag-2`, ... in the order
    /// they were first seen in this run.
    pub fn generated(&mut self, raw: &str) -> String {
        if let Some(n) = self.names.get(raw) {
            return n.clone();
        }
        let kind = if raw.starts_with("amq.ctag-") {
            "ctag"
        } else {
            "gen"
        };
        let c = self.counts.entry(kind).or_insert(0);
        *c += 1;
        let n = format!("amq.{kind}-{c}");
        self.names.insert(raw.to_string(), n.clone());
        n
    }

    /// Strips the run prefix and renames server-generated names.
    pub fn line(&mut self, line: &str) -> String {
        let s = if self.prefix.is_empty() {
            line.to_string()
        } else {
            line.replace(&self.prefix, "")
        };
        let re = gen_re();
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for m in re.find_iter(&s) {
            out.push_str(&s[last..m.start()]);
            // A trailing '.' belongs to the sentence, not the name (RabbitMQ names have none).
            let raw = m.as_str().trim_end_matches('.');
            out.push_str(&self.generated(raw));
            out.push_str(&m.as_str()[raw.len()..]);
            last = m.end();
        }
        out.push_str(&s[last..]);
        out
    }
}

/// An asynchronous event seen while an op was settling: where it arrived and what it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub conn: u8,
    pub ch: u16,
    /// The consumer it was for (normalised), or "" for returns, confirms, closes.
    pub consumer: String,
    pub line: String,
}

/// Orders one op's events by (connection, channel, consumer), keeping the arrival order within
/// each: RabbitMQ orders what one channel sends, per consumer, but not deliveries of different
/// queues to one channel, nor anything across channels or connections.
pub fn order_events(mut events: Vec<Event>) -> Vec<String> {
    events.sort_by(|a, b| (a.conn, a.ch, &a.consumer).cmp(&(b.conn, b.ch, &b.consumer)));
    events
        .into_iter()
        .map(|e| format!("  c{}.{} {}", e.conn, e.ch, e.line))
        .collect()
}

/// Masks the numbers and the names quoted in texts ('q1', 'amq.direct') in a line, for
/// recognising the same divergence with other counts, tags, messages or names (while shrinking
/// and de-duplicating).
pub fn mask_numbers(s: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    static QUOTED: OnceLock<Regex> = OnceLock::new();
    let s = QUOTED
        .get_or_init(|| Regex::new(r"'[^' ]*'").unwrap())
        .replace_all(s, "'_'");
    RE.get_or_init(|| Regex::new(r"\d+").unwrap())
        .replace_all(&s, "N")
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_generated_names() {
        let mut n = Norm::new("zz12-");
        assert_eq!(
            n.line("channel.close 404 \"NOT_FOUND - no queue 'zz12-q1' in vhost '/'\" 50.10"),
            "channel.close 404 \"NOT_FOUND - no queue 'q1' in vhost '/'\" 50.10"
        );
        assert_eq!(
            n.line("queue.declare_ok amq.gen-AbC_d-9 messages=0"),
            "queue.declare_ok amq.gen-1 messages=0"
        );
        assert_eq!(n.line("consume_ok amq.ctag-XYZ"), "consume_ok amq.ctag-1");
        assert_eq!(
            n.line("again amq.gen-AbC_d-9 and amq.gen-other."),
            "again amq.gen-1 and amq.gen-2."
        );
        assert_eq!(n.line("deliver amq.ctag-XYZ"), "deliver amq.ctag-1");
        // Another run numbers its own names from 1 in order of appearance, whatever they are.
        let mut m = Norm::new("yy99-");
        assert_eq!(
            m.line("queue.declare_ok amq.gen-zzz"),
            "queue.declare_ok amq.gen-1"
        );
        // Codes and texts are left alone.
        assert_eq!(
            m.line("406 PRECONDITION_FAILED - unknown delivery tag 7"),
            "406 PRECONDITION_FAILED - unknown delivery tag 7"
        );
    }

    #[test]
    fn events_are_ordered_per_channel_and_consumer_keeping_arrival_order() {
        let ev = |conn, ch, consumer: &str, line: &str| Event {
            conn,
            ch,
            consumer: consumer.into(),
            line: line.into(),
        };
        let a = order_events(vec![
            ev(1, 1, "t1", "d3"),
            ev(0, 2, "t0", "d1"),
            ev(1, 1, "t0", "d2"),
            ev(1, 1, "t1", "d4"),
            ev(0, 1, "", "confirm 1"),
        ]);
        let b = order_events(vec![
            ev(0, 1, "", "confirm 1"),
            ev(1, 1, "t0", "d2"),
            ev(1, 1, "t1", "d3"),
            ev(0, 2, "t0", "d1"),
            ev(1, 1, "t1", "d4"),
        ]);
        assert_eq!(a, b);
        assert_eq!(a[0], "  c0.1 confirm 1");
        assert_eq!(&a[3..], &["  c1.1 d3".to_string(), "  c1.1 d4".to_string()]);
    }

    #[test]
    fn masking() {
        assert_eq!(
            mask_numbers("unknown delivery tag 17 at 3"),
            "unknown delivery tag N at N"
        );
        assert_eq!(
            mask_numbers("no exchange 'amq.x0' in vhost '/' (m12)"),
            "no exchange '_' in vhost '_' (mN)"
        );
    }
}
