//! Comparing two traces: the first divergence, its signature, and the allow-list.

use crate::norm::mask_numbers;
use crate::ops::Step;
use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// Index of the op (== number of ops for the final state probe).
    pub index: usize,
    /// What the op was (`final state` for the probe).
    pub kind: String,
    pub a: Vec<String>,
    pub b: Vec<String>,
}

impl Divergence {
    /// The first differing line of each side.
    pub fn first_lines(&self) -> (String, String) {
        let n = self.a.len().max(self.b.len());
        for i in 0..n {
            let x = self
                .a
                .get(i)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "<nothing>".into());
            let y = self
                .b
                .get(i)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "<nothing>".into());
            if x != y {
                return (x, y);
            }
        }
        ("<same>".into(), "<same>".into())
    }

    /// `kind | A: line | B: line`: what allow-list patterns are matched against.
    pub fn signature(&self) -> String {
        let (a, b) = self.first_lines();
        format!("{} | A: {} | B: {}", self.kind, a, b)
    }

    /// The signature with numbers masked: the same divergence seen with other counts or tags.
    pub fn class(&self) -> String {
        mask_numbers(&self.signature())
    }
}

/// The first op whose outcome differs.
pub fn compare(steps: &[Step], a: &[Vec<String>], b: &[Vec<String>]) -> Option<Divergence> {
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).cloned().unwrap_or_default();
        let y = b.get(i).cloned().unwrap_or_default();
        if x != y {
            let kind = steps
                .get(i)
                .map(|s| s.op.kind().to_string())
                .unwrap_or_else(|| "final state".into());
            return Some(Divergence {
                index: i,
                kind,
                a: x,
                b: y,
            });
        }
    }
    None
}

/// Documented divergences: one per line, `REGEX || reason`, matched against a divergence
/// signature (`kind | A: line | B: line`). `#` starts a comment line.
#[derive(Debug, Default)]
pub struct AllowList {
    pub entries: Vec<(Regex, String)>,
}

impl AllowList {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pat, reason) = line
                .split_once(" || ")
                .ok_or_else(|| format!("allow-list line {}: expected `REGEX || reason`", no + 1))?;
            if reason.trim().is_empty() {
                return Err(format!("allow-list line {}: empty reason", no + 1));
            }
            let re =
                Regex::new(pat.trim()).map_err(|e| format!("allow-list line {}: {e}", no + 1))?;
            entries.push((re, reason.trim().to_string()));
        }
        Ok(AllowList { entries })
    }

    /// The reason a divergence is allowed, if it is.
    pub fn allows(&self, d: &Divergence) -> Option<&str> {
        let sig = d.signature();
        self.entries
            .iter()
            .find(|(re, _)| re.is_match(&sig))
            .map(|(_, r)| r.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Op;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_divergence_and_allow_list() {
        let steps = vec![
            Step {
                conn: 0,
                ch: 1,
                op: Op::TxSelect,
            },
            Step {
                conn: 0,
                ch: 1,
                op: Op::TxCommit,
            },
        ];
        let a = vec![
            lines(&["tx.select_ok"]),
            lines(&["channel.close 406 \"X\" 90.20"]),
            lines(&["final state"]),
        ];
        let mut b = a.clone();
        assert_eq!(compare(&steps, &a, &b), None);
        b[1] = lines(&["tx.commit_ok", "  c0.1 deliver"]);
        let d = compare(&steps, &a, &b).unwrap();
        assert_eq!(d.index, 1);
        assert_eq!(
            d.signature(),
            "tx.commit | A: channel.close 406 \"X\" 90.20 | B: tx.commit_ok"
        );
        let al = AllowList::parse(
            "# comment\n^tx\\.commit \\| A: channel\\.close 406 || see docs/compatibility.md\n",
        )
        .unwrap();
        assert_eq!(al.allows(&d), Some("see docs/compatibility.md"));
        let al = AllowList::parse("^basic || r\n").unwrap();
        assert_eq!(al.allows(&d), None);
        assert!(AllowList::parse("no separator").is_err());
        // A divergence only in the final probe.
        let mut c = a.clone();
        c[2] = lines(&[
            "final state",
            "  queue q1: queue.declare_ok q1 messages=1 consumers=0",
        ]);
        let d = compare(&steps, &a, &c).unwrap();
        assert_eq!((d.index, d.kind.as_str()), (2, "final state"));
        assert_eq!(d.first_lines().0, "<nothing>");
    }

    #[test]
    fn the_shipped_allow_list_parses_and_matches_only_what_it_documents() {
        let al = AllowList::parse(include_str!("../allowlist.txt")).unwrap();
        assert!(!al.entries.is_empty());
        let d = |kind: &str, a: &str, b: &str| Divergence {
            index: 0,
            kind: kind.into(),
            a: vec![a.into()],
            b: vec![b.into()],
        };
        let allowed = d(
            "exchange.declare",
            "connection.close 503 \"COMMAND_INVALID - unknown exchange type 'bogus'\" 40.10",
            "channel.close 406 \"PRECONDITION_FAILED - unknown exchange type 'bogus'\" 40.10",
        );
        assert!(al.allows(&allowed).is_some());
        // Warren's own wording is not covered.
        let bug = d(
            "exchange.declare",
            "connection.close 503 \"COMMAND_INVALID - unknown exchange type 'bogus'\" 40.10",
            "channel.close 406 \"PRECONDITION_FAILED - invalid exchange type 'bogus'\" 40.10",
        );
        assert!(al.allows(&bug).is_none());
        for (_, reason) in &al.entries {
            assert!(reason.contains("docs/compatibility.md"), "{reason}");
        }
    }
}
