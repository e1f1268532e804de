//! Policies and operator policies of a vhost, and applying them to its queues and exchanges.

use super::*;

impl VHost {
    /// Adds or replaces a policy (or operator policy) and applies it to existing queues and
    /// exchanges at once.
    pub fn set_policy(&self, p: Policy, operator: bool) {
        let op = || {
            let def = crate::definitions::policy_def(&self.name, &p);
            let mut d = crate::definitions::Definitions::default();
            if operator {
                d.operator_policies.push(def);
            } else {
                d.policies.push(def);
            }
            crate::metadata::MetaOp::import(&d)
        };
        if let Some(r) = self.replicated(op) {
            if let Err(e) = r {
                tracing::warn!(vhost = %self.name, policy = %p.name, error = %e, "the cluster did not take the policy");
            }
            return;
        }
        {
            let mut list = if operator {
                self.operator_policies.write()
            } else {
                self.policies.write()
            };
            list.retain(|x| x.name != p.name);
            list.push(p);
        }
        self.apply_policies();
        self.definitions_changed(true, || DefScope::Policies {
            vhost: self.name.clone(),
        });
    }

    /// Removes a policy; false if there was none by that name.
    pub fn clear_policy(&self, name: &str, operator: bool) -> bool {
        let op = || crate::metadata::MetaOp::ClearPolicy {
            vhost: self.name.clone(),
            name: name.into(),
            operator,
        };
        let exists = self.policies(operator).iter().any(|p| p.name == name);
        if exists {
            if let Some(r) = self.replicated(op) {
                return r.is_ok();
            }
        }
        let removed = {
            let mut list = if operator {
                self.operator_policies.write()
            } else {
                self.policies.write()
            };
            let before = list.len();
            list.retain(|x| x.name != name);
            before != list.len()
        };
        if removed {
            self.apply_policies();
            self.definitions_changed(true, || DefScope::Policies {
                vhost: self.name.clone(),
            });
        }
        removed
    }

    pub fn policies(&self, operator: bool) -> Vec<Policy> {
        if operator {
            self.operator_policies.read().clone()
        } else {
            self.policies.read().clone()
        }
    }

    /// The policy definition that applies to a queue or exchange name (operator caps merged in).
    pub fn policy_for(&self, name: &str, queue: bool) -> Option<FieldTable> {
        let ps = self.policies.read();
        let ops = self.operator_policies.read();
        policy::merge(
            policy::effective(&ps, name, queue),
            policy::effective(&ops, name, queue),
        )
    }

    /// Recomputes every queue's and exchange's effective policy.
    pub(super) fn apply_policies(&self) {
        for q in self.queues() {
            self.apply_queue_policy(&q);
        }
        for x in self.exchanges() {
            *x.policy.write() = self.policy_for(&x.name, false);
        }
    }

    pub(super) fn apply_queue_policy(&self, q: &Arc<Queue>) {
        let def = self.policy_for(&q.name, true);
        if let Some(s) = q.stream() {
            return s.set_options(crate::stream::options_for(q, def.as_ref()));
        }
        let mut fu = Followups::new();
        q.set_options(
            crate::queue::QueueOptions::from_arguments(&q.arguments, def.as_ref()),
            &mut fu,
        );
        self.follow_up(fu);
    }
}
