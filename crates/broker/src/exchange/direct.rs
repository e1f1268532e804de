//! Direct exchange: exact routing-key match through a hash map.

use super::{Binding, Destination};
use std::collections::HashMap;
use warren_protocol::ShortStr;

#[derive(Default)]
pub struct DirectTable {
    by_key: HashMap<ShortStr, Vec<Binding>>,
}

impl DirectTable {
    pub fn bind(&mut self, b: Binding) -> bool {
        let list = self.by_key.entry(b.routing_key.clone()).or_default();
        if list.iter().any(|x| x.same(&b)) {
            return false;
        }
        list.push(b);
        true
    }
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let Some(list) = self.by_key.get_mut(b.routing_key.as_str()) else {
            return false;
        };
        let before = list.len();
        list.retain(|x| !x.same(b));
        let removed = list.len() != before;
        if list.is_empty() {
            self.by_key.remove(b.routing_key.as_str());
        }
        removed
    }
    pub fn route(&self, key: &str, out: &mut Vec<Destination>) {
        if let Some(list) = self.by_key.get(key) {
            out.extend(list.iter().map(|b| b.destination.clone()));
        }
    }
    pub fn bindings(&self) -> Vec<Binding> {
        self.by_key.values().flatten().cloned().collect()
    }
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
