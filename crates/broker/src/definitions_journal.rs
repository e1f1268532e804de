//! Saving the durable definitions as a snapshot plus a journal of changes (the store's
//! [`warren_store::Catalog`]): at each group commit that has definition changes, the
//! definitions are compared item by item (a queue, an exchange, a binding, a user, …) with
//! what was last made durable, and only the items added, changed or removed are appended to
//! the journal. That makes a declaration cheap enough to wait for: `declare-ok` and
//! `delete-ok` go out once the change is on disk, as RabbitMQ answers once its metadata store
//! has committed it, and a power cut never brings back a queue whose deletion was answered.
//! A full save (a new snapshot, an empty journal) comes first in each run and whenever the
//! journal has grown past the snapshot's size.
//!
//! A journal record is a JSON array of `[key, item]` pairs, `item` being `null` for a
//! removal; keys name an item's kind and identity (see [`key_of`]).

use crate::definitions::{
    BindingDef, Definitions, ExchangeDef, PermissionDef, PolicyDef, QueueDef, UserDef, VHostDef,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use warren_store::Catalog;

/// A journal at least this long is folded into a new snapshot once it is also longer than
/// the snapshot.
const JOURNAL_MIN_BEFORE_SNAPSHOT: u64 = 1 << 20;

/// The definitions' items by key.
type Items = BTreeMap<String, Value>;

/// What was last made durable, to journal only what changed.
#[derive(Default)]
pub(crate) struct DefinitionsJournal {
    /// Every item as last saved or journaled; `None` until this run's first full save.
    saved: Option<Items>,
    /// The size of the last snapshot.
    snapshot_len: u64,
}

impl DefinitionsJournal {
    /// Makes `defs` durable: journals what changed since the last save, or saves them whole.
    /// On an error nothing is taken as saved, and the next save is a full one.
    pub(crate) fn save(
        &mut self,
        catalog: &Catalog,
        defs: &Definitions,
    ) -> warren_store::Result<()> {
        let items = items(defs);
        let full_due = catalog.journal_len() >= JOURNAL_MIN_BEFORE_SNAPSHOT.max(self.snapshot_len);
        if let (Some(saved), false) = (self.saved.as_ref(), full_due) {
            let changes = diff(saved, &items);
            if changes.is_empty() {
                return Ok(());
            }
            let record = serde_json::to_vec(&changes).expect("JSON values serialise");
            if let Err(e) = catalog.append(&record) {
                self.saved = None;
                return Err(e);
            }
            self.saved = Some(items);
            return Ok(());
        }
        self.saved = None;
        catalog.save(defs)?;
        self.snapshot_len = items
            .values()
            .map(|v| serde_json::to_vec(v).map_or(0, |b| b.len() as u64))
            .sum();
        self.saved = Some(items);
        Ok(())
    }
}

/// The saved definitions with the journaled changes applied, in order.
pub(crate) fn replay(mut defs: Definitions, changes: Vec<Vec<u8>>) -> Result<Definitions, String> {
    if changes.is_empty() {
        return Ok(defs);
    }
    let mut all = items(&defs);
    for (i, record) in changes.iter().enumerate() {
        let pairs: Vec<(String, Value)> = serde_json::from_slice(record)
            .map_err(|e| format!("definitions journal record {i} does not decode: {e}"))?;
        for (key, item) in pairs {
            if item.is_null() {
                all.remove(&key);
            } else {
                all.insert(key, item);
            }
        }
    }
    defs.users.clear();
    defs.vhosts.clear();
    defs.permissions.clear();
    defs.queues.clear();
    defs.exchanges.clear();
    defs.bindings.clear();
    defs.policies.clear();
    defs.operator_policies.clear();
    for (key, item) in all {
        let kind =
            key_kind(&key).ok_or_else(|| format!("definitions journal: unknown key {key}"))?;
        let bad =
            |e: serde_json::Error| format!("definitions journal: item {key} does not decode: {e}");
        match kind {
            Kind::User => defs.users.push(decode::<UserDef>(item).map_err(bad)?),
            Kind::VHost => defs.vhosts.push(decode::<VHostDef>(item).map_err(bad)?),
            Kind::Permission => defs
                .permissions
                .push(decode::<PermissionDef>(item).map_err(bad)?),
            Kind::Queue => defs.queues.push(decode::<QueueDef>(item).map_err(bad)?),
            Kind::Exchange => defs
                .exchanges
                .push(decode::<ExchangeDef>(item).map_err(bad)?),
            Kind::Binding => defs.bindings.push(decode::<BindingDef>(item).map_err(bad)?),
            Kind::Policy => defs.policies.push(decode::<PolicyDef>(item).map_err(bad)?),
            Kind::OperatorPolicy => defs
                .operator_policies
                .push(decode::<PolicyDef>(item).map_err(bad)?),
        }
    }
    Ok(defs)
}

fn decode<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

#[derive(Clone, Copy)]
enum Kind {
    User,
    VHost,
    Permission,
    Queue,
    Exchange,
    Binding,
    Policy,
    OperatorPolicy,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::VHost => "vhost",
            Kind::Permission => "permission",
            Kind::Queue => "queue",
            Kind::Exchange => "exchange",
            Kind::Binding => "binding",
            Kind::Policy => "policy",
            Kind::OperatorPolicy => "operator_policy",
        }
    }
}

const KINDS: [Kind; 8] = [
    Kind::User,
    Kind::VHost,
    Kind::Permission,
    Kind::Queue,
    Kind::Exchange,
    Kind::Binding,
    Kind::Policy,
    Kind::OperatorPolicy,
];

/// An item's key: a JSON array of its kind and the fields that identify it (a binding's
/// arguments among them, as two bindings may differ only there).
fn key_of(kind: Kind, id: &[&str]) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(id.len() + 1);
    parts.push(kind.tag());
    parts.extend_from_slice(id);
    serde_json::to_string(&parts).expect("strings serialise")
}

fn key_kind(key: &str) -> Option<Kind> {
    let parts: Vec<String> = serde_json::from_str(key).ok()?;
    let tag = parts.first()?;
    KINDS.into_iter().find(|k| k.tag() == tag)
}

/// Every item of `defs` by key.
fn items(defs: &Definitions) -> Items {
    let mut all = Items::new();
    let mut put = |key: String, item: &dyn erased::Item| {
        all.insert(key, item.to_value());
    };
    for u in &defs.users {
        put(key_of(Kind::User, &[&u.name]), u);
    }
    for v in &defs.vhosts {
        put(key_of(Kind::VHost, &[&v.name]), v);
    }
    for p in &defs.permissions {
        put(key_of(Kind::Permission, &[&p.user, &p.vhost]), p);
    }
    for q in &defs.queues {
        put(key_of(Kind::Queue, &[&q.vhost, &q.name]), q);
    }
    for x in &defs.exchanges {
        put(key_of(Kind::Exchange, &[&x.vhost, &x.name]), x);
    }
    for b in &defs.bindings {
        let args = b.arguments.to_string();
        put(
            key_of(
                Kind::Binding,
                &[
                    &b.vhost,
                    &b.source,
                    &b.destination_type,
                    &b.destination,
                    &b.routing_key,
                    &args,
                ],
            ),
            b,
        );
    }
    for p in &defs.policies {
        put(key_of(Kind::Policy, &[&p.vhost, &p.name]), p);
    }
    for p in &defs.operator_policies {
        put(key_of(Kind::OperatorPolicy, &[&p.vhost, &p.name]), p);
    }
    all
}

mod erased {
    /// Any definitions item, as a JSON value.
    pub(super) trait Item {
        fn to_value(&self) -> serde_json::Value;
    }

    impl<T: super::Serialize> Item for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("definitions serialise")
        }
    }
}

/// The items added or changed (with their new value) and removed (with `null`).
fn diff(old: &Items, new: &Items) -> Vec<(String, Value)> {
    let mut changes = Vec::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            changes.push((k.clone(), v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            changes.push((k.clone(), Value::Null));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queue(name: &str) -> QueueDef {
        QueueDef {
            name: name.into(),
            vhost: "/".into(),
            durable: true,
            auto_delete: false,
            arguments: json!({}),
        }
    }

    fn binding(dest: &str, rk: &str, args: Value) -> BindingDef {
        BindingDef {
            source: "amq.direct".into(),
            vhost: "/".into(),
            destination: dest.into(),
            destination_type: "queue".into(),
            routing_key: rk.into(),
            arguments: args,
        }
    }

    /// What a journal replayed on its snapshot gives is what was saved last, item for item.
    #[test]
    fn changes_replayed_on_the_snapshot_give_the_latest_definitions() {
        let mut v1 = Definitions::default();
        v1.queues = vec![queue("a"), queue("b")];
        v1.bindings = vec![
            binding("a", "k", json!({})),
            binding("a", "k", json!({"x": 1})),
        ];
        let mut v2 = v1.clone();
        v2.queues.retain(|q| q.name != "a");
        v2.bindings.clear();
        v2.queues.push(queue("c"));
        let mut v3 = v2.clone();
        v3.queues[0].arguments = json!({"x-max-length": 5});
        v3.bindings.push(binding("c", "k", json!({"x": 1})));
        let mut records = Vec::new();
        for (old, new) in [(&v1, &v2), (&v2, &v3)] {
            let changes = diff(&items(old), &items(new));
            records.push(serde_json::to_vec(&changes).unwrap());
        }
        let replayed = replay(v1.clone(), records).unwrap();
        assert_eq!(items(&replayed), items(&v3));
        assert_eq!(replayed.queues.len(), 2);
        assert_eq!(replayed.bindings.len(), 1);
    }

    #[test]
    fn unchanged_definitions_journal_nothing() {
        let mut d = Definitions::default();
        d.queues = vec![queue("a")];
        assert!(diff(&items(&d), &items(&d)).is_empty());
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error() {
        assert!(replay(Definitions::default(), vec![b"not json".to_vec()]).is_err());
    }
}
