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
//! Only what a change can have touched is compared: each change names its [`DefScope`] (a
//! queue with its bindings, one binding, an exchange, a vhost's policies, the users and
//! vhosts), and the commit reads the broker's current items in those scopes
//! ([`DefinitionsSource`]) and the saved ones (a key range: keys are built so that a scope's
//! items share a prefix). A declaration costs the same with ten queues or ten thousand.
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

/// What a definition change can have touched: the items the next save compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefScope {
    /// Anything (a start, a vhost deleted): the next save is a full one.
    All,
    /// Users, permissions and vhosts (with their limits).
    Global,
    /// A vhost's policies and operator policies.
    Policies { vhost: String },
    /// A queue and every binding to it.
    Queue { vhost: String, name: String },
    /// An exchange's own definition (not its bindings).
    Exchange { vhost: String, name: String },
    /// Everything in a vhost: queues, exchanges, bindings, policies (an exchange deleted with
    /// its bindings).
    VHost { vhost: String },
    /// One binding; `arguments` as JSON (`crate::json::table_to_json`).
    Binding {
        vhost: String,
        source: String,
        destination_type: &'static str,
        destination: String,
        routing_key: String,
        arguments: Value,
    },
}

/// Where the saves read the durable definitions from (the broker).
pub trait DefinitionsSource {
    /// Every durable definition.
    fn durable_definitions(&self) -> Definitions;
    /// The durable definitions within `scope` (exactly the items of `durable_definitions`
    /// whose keys are in the scope).
    fn durable_definitions_in(&self, scope: &DefScope) -> Definitions;
}

/// What was last made durable, to journal only what changed.
#[derive(Default)]
pub(crate) struct DefinitionsJournal {
    /// Every item as last saved or journaled; `None` until this run's first full save.
    saved: Option<Items>,
    /// The size of the last snapshot.
    snapshot_len: u64,
}

impl DefinitionsJournal {
    /// Makes the changes in `scopes` durable: journals what changed in them since the last
    /// save, or saves every definition (the first save of a run, a long journal, a change of
    /// anything). On an error nothing is taken as saved, and the next save is a full one.
    pub(crate) fn save(
        &mut self,
        catalog: &Catalog,
        source: &dyn DefinitionsSource,
        scopes: &[DefScope],
    ) -> warren_store::Result<()> {
        let full_due = catalog.journal_len() >= JOURNAL_MIN_BEFORE_SNAPSHOT.max(self.snapshot_len);
        let saved = match self.saved.as_mut() {
            Some(saved) if !full_due && !scopes.contains(&DefScope::All) => saved,
            _ => return self.save_all(catalog, source),
        };
        let mut changes: BTreeMap<String, Value> = BTreeMap::new();
        for scope in scopes {
            let now = items(&source.durable_definitions_in(scope));
            for key in saved_keys(scope, saved) {
                if !now.contains_key(&key) {
                    changes.insert(key, Value::Null);
                }
            }
            for (key, item) in now {
                if saved.get(&key) != Some(&item) {
                    changes.insert(key, item);
                } else {
                    // An earlier scope may have taken it for removed.
                    changes.remove(&key);
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let record =
            serde_json::to_vec(&changes.iter().collect::<Vec<_>>()).expect("JSON values serialise");
        if let Err(e) = catalog.append(&record) {
            self.saved = None;
            return Err(e);
        }
        for (key, item) in changes {
            if item.is_null() {
                saved.remove(&key);
            } else {
                saved.insert(key, item);
            }
        }
        Ok(())
    }

    fn save_all(
        &mut self,
        catalog: &Catalog,
        source: &dyn DefinitionsSource,
    ) -> warren_store::Result<()> {
        self.saved = None;
        let defs = source.durable_definitions();
        catalog.save(&defs)?;
        let items = items(&defs);
        self.snapshot_len = items
            .iter()
            .map(|(k, v)| k.len() as u64 + serde_json::to_vec(v).map_or(0, |b| b.len() as u64))
            .sum();
        self.saved = Some(items);
        Ok(())
    }
}

/// The saved keys within `scope`.
fn saved_keys(scope: &DefScope, saved: &Items) -> Vec<String> {
    let mut keys = Vec::new();
    let mut exact = |key: String| {
        if saved.contains_key(&key) {
            keys.push(key);
        }
    };
    let mut prefixes: Vec<String> = Vec::new();
    match scope {
        DefScope::All => return saved.keys().cloned().collect(),
        DefScope::Global => {
            for kind in [Kind::User, Kind::Permission, Kind::VHost] {
                prefixes.push(format!("{}{SEP}", kind.tag()));
            }
        }
        DefScope::Policies { vhost } => {
            prefixes.push(prefix_of(Kind::Policy, &[vhost]));
            prefixes.push(prefix_of(Kind::OperatorPolicy, &[vhost]));
        }
        DefScope::Queue { vhost, name } => {
            exact(key_of(Kind::Queue, &[vhost, name]));
            prefixes.push(prefix_of(Kind::Binding, &[vhost, "queue", name]));
        }
        DefScope::Exchange { vhost, name } => exact(key_of(Kind::Exchange, &[vhost, name])),
        DefScope::VHost { vhost } => {
            for kind in [
                Kind::Queue,
                Kind::Exchange,
                Kind::Binding,
                Kind::Policy,
                Kind::OperatorPolicy,
            ] {
                prefixes.push(prefix_of(kind, &[vhost]));
            }
        }
        DefScope::Binding {
            vhost,
            source,
            destination_type,
            destination,
            routing_key,
            arguments,
        } => exact(binding_key(
            vhost,
            destination_type,
            destination,
            source,
            routing_key,
            arguments,
        )),
    }
    for prefix in prefixes {
        keys.extend(
            saved
                .range(prefix.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&prefix))
                .cloned(),
        );
    }
    keys
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

/// Separates a key's parts; never inside one (each is a JSON string, which escapes it).
const SEP: char = '\0';

/// An item's key: its kind's tag, then each field that identifies it as a JSON string, each
/// after a NUL. A scope's items share a prefix (see [`prefix_of`]): a binding's fields
/// start with its vhost and destination, so a queue's bindings are one key range.
fn key_of(kind: Kind, id: &[&str]) -> String {
    let mut key = String::from(kind.tag());
    for part in id {
        key.push(SEP);
        key.push_str(&serde_json::to_string(part).expect("strings serialise"));
    }
    key
}

/// The prefix of every key of `kind` whose first fields are `id`.
fn prefix_of(kind: Kind, id: &[&str]) -> String {
    let mut p = key_of(kind, id);
    p.push(SEP);
    p
}

fn binding_key(
    vhost: &str,
    destination_type: &str,
    destination: &str,
    source: &str,
    routing_key: &str,
    arguments: &Value,
) -> String {
    // serde_json's maps are sorted: equal arguments give equal text.
    let args = arguments.to_string();
    key_of(
        Kind::Binding,
        &[
            vhost,
            destination_type,
            destination,
            source,
            routing_key,
            &args,
        ],
    )
}

fn key_kind(key: &str) -> Option<Kind> {
    let tag = key.split(SEP).next()?;
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
        let key = binding_key(
            &b.vhost,
            &b.destination_type,
            &b.destination,
            &b.source,
            &b.routing_key,
            &b.arguments,
        );
        put(key, b);
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
#[cfg(test)]
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
            home: None,
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
        let v1 = Definitions {
            queues: vec![queue("a"), queue("b")],
            bindings: vec![
                binding("a", "k", json!({})),
                binding("a", "k", json!({"x": 1})),
            ],
            ..Default::default()
        };
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
        let d = Definitions {
            queues: vec![queue("a")],
            ..Default::default()
        };
        assert!(diff(&items(&d), &items(&d)).is_empty());
    }

    /// A random run of declarations, bindings, deletions and access changes, saved by the
    /// broker's own group commits: after each, the file and its journal give back exactly
    /// the durable definitions the broker holds (each change's scope covers what it touched).
    #[test]
    fn scoped_saves_keep_the_file_equal_to_the_broker() {
        use crate::broker::{Broker, BrokerConfig};
        use crate::persist::Persistence;
        use crate::vhost::{ExchangeDeclare, QueueDeclare};
        use warren_protocol::{FieldTable, FieldValue};

        let dir = std::env::temp_dir().join(format!("warren-defs-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = Persistence::new(&dir, warren_store::FileBackend::shared());
        let b = Broker::open(BrokerConfig::default(), p.clone()).unwrap();
        let check = |step: usize, what: &str| {
            b.flush_once();
            let loaded = p.load_definitions().unwrap().expect("saved");
            let (want, got) = (items(&b.definitions(true)), items(&loaded));
            assert_eq!(
                got, want,
                "step {step} ({what}): the saved definitions differ"
            );
        };
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let args = |k: u64| {
            let mut t = FieldTable::default();
            if k > 0 {
                t.insert("x-k", FieldValue::I32(k as i32));
                t.insert("a-second", FieldValue::Bool(true));
            }
            t
        };
        for step in 0..400 {
            let vh = match next(8) {
                0 => b.add_vhost("other"),
                _ => b.vhost("/").unwrap(),
            };
            let q = format!("q{}", next(6));
            let x = format!("x{}", next(3));
            let x2 = format!("x{}", next(3));
            let k = next(3);
            let what = match next(13) {
                0 | 1 => {
                    let _ = vh.declare_queue(
                        QueueDeclare {
                            name: q.as_str().into(),
                            passive: false,
                            durable: next(4) != 0,
                            exclusive: false,
                            auto_delete: false,
                            arguments: args(k),
                        },
                        1,
                    );
                    "declare a queue"
                }
                2 => {
                    let _ = vh.declare_exchange(ExchangeDeclare {
                        name: x.as_str().into(),
                        kind: if k == 0 { "direct" } else { "topic" }.into(),
                        passive: false,
                        durable: next(4) != 0,
                        auto_delete: false,
                        internal: false,
                        arguments: FieldTable::default(),
                    });
                    "declare an exchange"
                }
                3 | 4 => {
                    let source = if k == 2 {
                        "amq.direct".to_string()
                    } else {
                        x.clone()
                    };
                    let _ =
                        vh.bind_queue(&q, &source, format!("rk{k}").as_str().into(), args(k), 1);
                    "bind a queue"
                }
                5 => {
                    let _ = vh.unbind_queue(&q, &x, format!("rk{k}").as_str().into(), args(k), 1);
                    "unbind a queue"
                }
                6 => {
                    let _ = vh.bind_exchange(&x2, &x, format!("rk{k}").as_str().into(), args(k));
                    "bind an exchange"
                }
                7 => {
                    let _ = vh.unbind_exchange(&x2, &x, format!("rk{k}").as_str().into(), args(k));
                    "unbind an exchange"
                }
                8 => {
                    let _ = vh.delete_queue(&q, false, false, 1);
                    "delete a queue"
                }
                9 => {
                    let _ = vh.delete_exchange(&x, false);
                    "delete an exchange"
                }
                10 => {
                    let _ = b.add_user(&format!("u{k}"), "secret", vec!["monitoring".into()]);
                    let _ = b.set_permissions(&format!("u{k}"), &vh.name, ".*", "", ".*");
                    "add a user and permissions"
                }
                11 => {
                    b.delete_vhost("other");
                    "delete a vhost"
                }
                _ => {
                    let _ = b.delete_user(&format!("u{k}"));
                    "delete a user"
                }
            };
            check(step, what);
        }
        drop(b);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_that_does_not_decode_is_an_error() {
        assert!(replay(Definitions::default(), vec![b"not json".to_vec()]).is_err());
    }
}
