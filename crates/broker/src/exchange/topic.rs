//! Topic exchange: binding keys in a trie of dot-separated words, with `*` (exactly one word)
//! and `#` (zero or more words) as their own edges, so routing walks only the branches a
//! routing key can take instead of testing every binding.

use super::{Binding, Destination};
use std::collections::HashMap;

#[derive(Default)]
struct Node {
    words: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    bindings: Vec<Binding>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
            && self.bindings.is_empty()
    }

    fn child(&mut self, word: &str) -> &mut Node {
        match word {
            "*" => self.star.get_or_insert_with(Default::default),
            "#" => self.hash.get_or_insert_with(Default::default),
            w => self.words.entry(w.into()).or_default(),
        }
    }

    fn walk(&self, words: &[&str], out: &mut Vec<Destination>) {
        if let Some(h) = &self.hash {
            for skip in 0..=words.len() {
                h.walk(&words[skip..], out);
            }
        }
        let Some((first, rest)) = words.split_first() else {
            out.extend(self.bindings.iter().map(|b| b.destination.clone()));
            return;
        };
        if let Some(c) = self.words.get(*first) {
            c.walk(rest, out);
        }
        if let Some(s) = &self.star {
            s.walk(rest, out);
        }
    }

    /// Removes `b` under the path `words`; prunes emptied nodes on the way back.
    fn remove(&mut self, words: &[&str], b: &Binding) -> bool {
        let Some((first, rest)) = words.split_first() else {
            let before = self.bindings.len();
            self.bindings.retain(|x| !x.same(b));
            return self.bindings.len() != before;
        };
        match *first {
            "*" | "#" => {
                let slot = if *first == "*" {
                    &mut self.star
                } else {
                    &mut self.hash
                };
                let Some(c) = slot.as_mut() else { return false };
                let removed = c.remove(rest, b);
                if c.is_empty() {
                    *slot = None;
                }
                removed
            }
            w => {
                let Some(c) = self.words.get_mut(w) else {
                    return false;
                };
                let removed = c.remove(rest, b);
                if c.is_empty() {
                    self.words.remove(w);
                }
                removed
            }
        }
    }

    fn collect(&self, out: &mut Vec<Binding>) {
        out.extend(self.bindings.iter().cloned());
        for c in self.words.values() {
            c.collect(out);
        }
        for c in self.star.iter().chain(self.hash.iter()) {
            c.collect(out);
        }
    }
}

fn split(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

#[derive(Default)]
pub struct TopicTable {
    root: Node,
}

impl TopicTable {
    pub fn bind(&mut self, b: Binding) -> bool {
        let mut node = &mut self.root;
        for w in split(&b.routing_key) {
            node = node.child(w);
        }
        if node.bindings.iter().any(|x| x.same(&b)) {
            return false;
        }
        node.bindings.push(b);
        true
    }
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let key = b.routing_key.clone();
        self.root.remove(&split(&key), b)
    }
    pub fn route(&self, key: &str, out: &mut Vec<Destination>) {
        self.root.walk(&split(key), out);
    }
    pub fn bindings(&self) -> Vec<Binding> {
        let mut v = Vec::new();
        self.root.collect(&mut v);
        v
    }
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Exchange, ExchangeKind};
    use std::sync::Arc;
    use warren_protocol::FieldTable;

    fn matches(pattern: &str, key: &str) -> bool {
        let mut t = TopicTable::default();
        let dest = Arc::new(Exchange::new(
            "d".into(),
            ExchangeKind::Fanout,
            false,
            false,
            false,
            FieldTable::new(),
        ));
        t.bind(Binding {
            destination: Destination::Exchange(dest),
            routing_key: pattern.into(),
            arguments: FieldTable::new(),
        });
        let mut out = Vec::new();
        t.route(key, &mut out);
        !out.is_empty()
    }

    #[test]
    fn topic_patterns_match_as_rabbitmq() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#.c", "a.b.c", true),
            ("#", "", true),
            ("#", "anything.at.all", true),
            ("*", "", false),
            ("*.orange.*", "quick.orange.rabbit", true),
            ("*.*.rabbit", "lazy.orange.elephant", false),
            ("lazy.#", "lazy.orange.male.rabbit", true),
            ("a.#.b", "a.b", true),
            ("a.#.b", "a.x.y.b", true),
            ("a.#.b", "a.x.y.c", false),
            ("#.#", "a", true),
            ("a.b", "a.b.c", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(matches(p, k), want, "pattern {p:?} key {k:?}");
        }
    }

    #[test]
    fn unbind_prunes_the_trie() {
        let mut t = TopicTable::default();
        let dest = Arc::new(Exchange::new(
            "d".into(),
            ExchangeKind::Fanout,
            false,
            false,
            false,
            FieldTable::new(),
        ));
        let b = Binding {
            destination: Destination::Exchange(dest),
            routing_key: "a.*.#".into(),
            arguments: FieldTable::new(),
        };
        assert!(t.bind(b.clone()));
        assert!(!t.bind(b.clone()));
        assert!(t.unbind(&b));
        assert!(t.is_empty());
    }
}
