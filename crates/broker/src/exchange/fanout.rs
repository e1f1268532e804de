//! Fanout exchange: every binding matches.

use super::{Binding, Destination};

#[derive(Default)]
pub struct FanoutTable {
    list: Vec<Binding>,
}

impl FanoutTable {
    pub fn bind(&mut self, b: Binding) -> bool {
        if self.list.iter().any(|x| x.same(&b)) {
            return false;
        }
        self.list.push(b);
        true
    }
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.list.len();
        self.list.retain(|x| !x.same(b));
        self.list.len() != before
    }
    pub fn route(&self, out: &mut Vec<Destination>) {
        out.extend(self.list.iter().map(|b| b.destination.clone()));
    }
    pub fn bindings(&self) -> Vec<Binding> {
        self.list.clone()
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
