//! Definitions: the durable topology (vhosts, exchanges, queues, bindings) and access control
//! (users with their password hashes, permissions, limits) in RabbitMQ's definitions-file
//! format, used for the on-disk catalogue, export and import.

use crate::auth::{HashingAlgorithm, UnsupportedHashingAlgorithm, User, UserLimits, VHostLimits};
use crate::broker::Broker;
use crate::definitions_journal::DefScope;
use crate::exchange::Destination;
use crate::json::{json_to_table, table_to_json};
use crate::vhost::metadata::VHostMetadata;
use crate::vhost::{ExchangeDeclare, QueueDeclare};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Definitions {
    #[serde(default)]
    pub rabbit_version: String,
    #[serde(default)]
    pub product_name: String,
    #[serde(default)]
    pub product_version: String,
    #[serde(default)]
    pub users: Vec<UserDef>,
    #[serde(default)]
    pub vhosts: Vec<VHostDef>,
    #[serde(default)]
    pub permissions: Vec<PermissionDef>,
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    #[serde(default)]
    pub operator_policies: Vec<PolicyDef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyDef {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    #[serde(default)]
    pub priority: i64,
    pub definition: Value,
}

fn all() -> String {
    "all".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VHostDef {
    pub name: String,
    /// `{"max-connections": n, "max-queues": n}`; absent when there are none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub limits: Value,
    /// Description, tags, default queue type; absent when none is set. RabbitMQ's exports
    /// carry them here and at the top level ([`VHostDef::description`] …), and imports read
    /// either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<VHostMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A list, or a comma-separated string.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub tags: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
}

impl VHostDef {
    /// A vhost with its metadata, written both ways RabbitMQ writes it.
    pub fn with_metadata(name: &str, m: VHostMetadata) -> Self {
        VHostDef {
            name: name.to_string(),
            description: Some(m.description.clone()),
            tags: Value::from(m.tags.clone()),
            default_queue_type: m.default_queue_type.clone(),
            metadata: Some(m),
            ..Default::default()
        }
    }

    /// The metadata the definition sets (`metadata`, else the top-level fields), if any,
    /// with its default queue type checked.
    pub fn parsed_metadata(&self) -> Result<Option<VHostMetadata>, String> {
        let mut m = match &self.metadata {
            Some(m) => m.clone(),
            None if self.description.is_none()
                && self.tags.is_null()
                && self.default_queue_type.is_none() =>
            {
                return Ok(None)
            }
            None => VHostMetadata {
                description: self.description.clone().unwrap_or_default(),
                tags: crate::json::tags_from_json(&self.tags),
                default_queue_type: None,
            },
        };
        if let Some(t) = m
            .default_queue_type
            .take()
            .or(self.default_queue_type.clone())
        {
            m.default_queue_type = Some(crate::vhost::metadata::parse_queue_type(&t)?);
        }
        Ok(Some(m))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    #[serde(default)]
    pub password_hash: String,
    /// RabbitMQ's module name; absent in old exports, which used MD5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing_algorithm: Option<String>,
    /// A list, or (in exports before RabbitMQ 3.13) a comma-separated string.
    #[serde(default)]
    pub tags: Value,
    /// `{"max-connections": n, "max-channels": n}`.
    #[serde(default)]
    pub limits: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermissionDef {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueDef {
    pub name: String,
    pub vhost: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Value,
    /// Warren's own: in a cluster with `cluster.classic_queues_everywhere`, the node a
    /// classic queue lives on (absent otherwise; a node without that setting ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub name: String,
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingDef {
    pub source: String,
    pub vhost: String,
    pub destination: String,
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Value,
}

fn yes() -> bool {
    true
}

/// An object of a definitions document, named within its vhost (errors add the vhost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefObject {
    /// A vhost's limits (`vhosts[].limits`).
    VHostLimits,
    /// A vhost's description, tags and default queue type (`vhosts[].metadata`).
    VHostMetadata,
    /// A user's permissions in the vhost.
    Permissions {
        user: String,
    },
    Exchange {
        name: String,
    },
    Queue {
        name: String,
    },
    /// A policy, or with `operator` an operator policy.
    Policy {
        name: String,
        operator: bool,
    },
    /// A binding from exchange `source` to the `destination_type` (`queue` or `exchange`)
    /// named `destination`.
    Binding {
        source: String,
        destination: String,
        destination_type: String,
    },
}

impl std::fmt::Display for DefObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefObject::VHostLimits => write!(f, "limits"),
            DefObject::VHostMetadata => write!(f, "metadata"),
            DefObject::Permissions { user } => write!(f, "permissions of user '{user}'"),
            DefObject::Exchange { name } => write!(f, "exchange '{name}'"),
            DefObject::Queue { name } => write!(f, "queue '{name}'"),
            DefObject::Policy { name, operator } => {
                let kind = if *operator {
                    "operator policy"
                } else {
                    "policy"
                };
                write!(f, "{kind} '{name}'")
            }
            DefObject::Binding {
                source,
                destination,
                destination_type,
            } => write!(
                f,
                "binding '{source}' -> {destination_type} '{destination}'"
            ),
        }
    }
}

/// What a definitions import could not do, naming the object; the import goes on after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionsError {
    /// The object names a vhost that neither exists nor is among the document's vhosts.
    #[error(
        "{object}: no vhost '{vhost}'; list it under \"vhosts\" in the definitions, or create \
         it first"
    )]
    NoVHost { vhost: String, object: DefObject },
    /// Permissions name a user that neither exists nor is among the document's users.
    #[error(
        "permissions of user '{user}' in vhost '{vhost}': no user '{user}'; list it under \
         \"users\" in the definitions, or create it first"
    )]
    NoUser { user: String, vhost: String },
    /// A user whose password hash Warren cannot check.
    #[error("user '{user}': {source}")]
    User {
        user: String,
        #[source]
        source: UnsupportedHashingAlgorithm,
    },
    /// The broker refused the object as it refuses a client's declaration (inequivalent
    /// arguments, an invalid pattern, a message store that would not open, …); `reason` is
    /// the reply a client would get.
    #[error("{object} in vhost '{vhost}': {reason}")]
    Refused {
        vhost: String,
        object: DefObject,
        reason: crate::AmqpError,
    },
}

impl DefinitionsError {
    /// The vhost of the object the error names (none for a user).
    pub fn vhost(&self) -> Option<&str> {
        match self {
            DefinitionsError::NoVHost { vhost, .. }
            | DefinitionsError::NoUser { vhost, .. }
            | DefinitionsError::Refused { vhost, .. } => Some(vhost),
            DefinitionsError::User { .. } => None,
        }
    }

    /// Whether the error is about queue `name` in `vhost`.
    pub fn is_about_queue(&self, vhost: &str, name: &str) -> bool {
        match self {
            DefinitionsError::NoVHost { vhost: v, object }
            | DefinitionsError::Refused {
                vhost: v, object, ..
            } => v == vhost && matches!(object, DefObject::Queue { name: n } if n == name),
            _ => false,
        }
    }
}

/// A user as a definitions file gives it: tags as a list or a comma-separated string.
/// A user in the definitions format.
pub fn user_def(u: User) -> UserDef {
    let mut limits = serde_json::Map::new();
    if let Some(n) = u.limits.max_connections {
        limits.insert("max-connections".into(), n.into());
    }
    if let Some(n) = u.limits.max_channels {
        limits.insert("max-channels".into(), n.into());
    }
    UserDef {
        name: u.name,
        password_hash: u.password_hash,
        hashing_algorithm: Some(u.hashing_algorithm.as_str().into()),
        tags: Value::from(u.tags),
        limits: Value::Object(limits),
    }
}

/// A policy of vhost `vhost` in the definitions format.
pub fn policy_def(vhost: &str, p: &crate::policy::Policy) -> PolicyDef {
    PolicyDef {
        vhost: vhost.to_string(),
        name: p.name.clone(),
        pattern: p.pattern.clone(),
        apply_to: p.apply_to.as_str().into(),
        priority: p.priority,
        definition: table_to_json(&p.definition),
    }
}

pub fn user_from_def(u: &UserDef) -> Result<User, UnsupportedHashingAlgorithm> {
    let tags = crate::json::tags_from_json(&u.tags);
    let limit = |k: &str| u.limits.get(k).and_then(Value::as_u64).map(|n| n as u32);
    Ok(User {
        name: u.name.clone(),
        password_hash: u.password_hash.clone(),
        hashing_algorithm: HashingAlgorithm::parse(u.hashing_algorithm.as_deref())?,
        tags,
        limits: UserLimits {
            max_connections: limit("max-connections"),
            max_channels: limit("max-channels"),
        },
    })
}

impl crate::definitions_journal::DefinitionsSource for Broker {
    fn durable_definitions(&self) -> Definitions {
        self.definitions(true)
    }

    fn durable_definitions_in(&self, scope: &DefScope) -> Definitions {
        let mut d = Definitions::default();
        let vhost = |name: &str| self.vhosts.read().get(name).cloned();
        match scope {
            DefScope::All => return self.definitions(true),
            DefScope::VHost { vhost: v } => {
                let mut all = self.definitions(true);
                all.queues.retain(|q| q.vhost == *v);
                all.exchanges.retain(|x| x.vhost == *v);
                all.bindings.retain(|b| b.vhost == *v);
                all.policies.retain(|p| p.vhost == *v);
                all.operator_policies.retain(|p| p.vhost == *v);
                all.vhosts.clear();
                all.users.clear();
                all.permissions.clear();
                return all;
            }
            DefScope::Global => {
                for vh in self.vhosts() {
                    d.vhosts.push(self.vhost_def(&vh.name));
                }
                self.access_defs(&mut d);
            }
            DefScope::Policies { vhost: v } => {
                if let Some(vh) = vhost(v) {
                    for p in vh.policies(false) {
                        d.policies.push(policy_def(v, &p));
                    }
                    for p in vh.policies(true) {
                        d.operator_policies.push(policy_def(v, &p));
                    }
                }
            }
            DefScope::Queue { vhost: v, name } => {
                let Some(vh) = vhost(v) else { return d };
                let Some(q) = vh.queue(name) else { return d };
                if !q.durable || q.exclusive_owner.is_some() {
                    return d;
                }
                d.queues.push(queue_def(v, &q));
                for (x, key, args) in q.bindings.lock().iter() {
                    if vh
                        .exchange(x)
                        .is_some_and(|x| !x.name.is_empty() && x.durable)
                    {
                        d.bindings.push(BindingDef {
                            source: x.to_string(),
                            vhost: v.clone(),
                            destination: name.clone(),
                            destination_type: "queue".into(),
                            routing_key: key.to_string(),
                            arguments: table_to_json(args),
                        });
                    }
                }
            }
            DefScope::Exchange { vhost: v, name } => {
                if let Some(x) = vhost(v).and_then(|vh| vh.exchange(name)) {
                    let predeclared = x.name.is_empty() || x.name.starts_with("amq.");
                    if !predeclared && x.durable {
                        d.exchanges.push(exchange_def(v, &x));
                    }
                }
            }
            DefScope::Binding {
                vhost: v,
                source,
                destination_type,
                destination,
                routing_key,
                arguments,
            } => {
                let Some(vh) = vhost(v) else { return d };
                let Some(x) = vh.exchange(source) else {
                    return d;
                };
                if x.name.is_empty() || !x.durable {
                    return d;
                }
                let exists = if *destination_type == "queue" {
                    vh.queue(destination).is_some_and(|q| {
                        q.durable
                            && q.exclusive_owner.is_none()
                            && q.bindings.lock().iter().any(|(e, k, a)| {
                                **e == **source
                                    && **k == **routing_key
                                    && table_to_json(a) == *arguments
                            })
                    })
                } else {
                    vh.exchange(destination).is_some_and(|e| e.durable)
                        && x.bindings().iter().any(|b| {
                            matches!(&b.destination, Destination::Exchange(e) if *e.name == **destination)
                                && *b.routing_key == **routing_key
                                && table_to_json(&b.arguments) == *arguments
                        })
                };
                if exists {
                    d.bindings.push(BindingDef {
                        source: source.clone(),
                        vhost: v.clone(),
                        destination: destination.clone(),
                        destination_type: destination_type.to_string(),
                        routing_key: routing_key.clone(),
                        arguments: arguments.clone(),
                    });
                }
            }
        }
        d
    }
}

fn queue_def(vhost: &str, q: &crate::queue::Queue) -> QueueDef {
    QueueDef {
        name: q.name.to_string(),
        vhost: vhost.to_string(),
        durable: q.durable,
        auto_delete: q.auto_delete,
        arguments: table_to_json(&q.arguments),
        home: q.home().map(str::to_string),
    }
}

fn exchange_def(vhost: &str, x: &crate::exchange::Exchange) -> ExchangeDef {
    ExchangeDef {
        name: x.name.to_string(),
        vhost: vhost.to_string(),
        kind: x.type_name().into(),
        durable: x.durable,
        auto_delete: x.auto_delete,
        internal: x.internal,
        arguments: table_to_json(&x.arguments),
    }
}

impl Broker {
    /// A vhost's definition (its name, limits and metadata).
    fn vhost_def(&self, name: &str) -> VHostDef {
        let l = self.vhost_limits(name);
        let mut limits = serde_json::Map::new();
        if let Some(n) = l.max_connections {
            limits.insert("max-connections".into(), n.into());
        }
        if let Some(n) = l.max_queues {
            limits.insert("max-queues".into(), n.into());
        }
        let metadata = self.vhost(name).map(|v| v.metadata()).unwrap_or_default();
        let mut def = if metadata.is_empty() {
            VHostDef {
                name: name.to_string(),
                ..Default::default()
            }
        } else {
            VHostDef::with_metadata(name, metadata)
        };
        if !limits.is_empty() {
            def.limits = Value::Object(limits);
        }
        def
    }

    /// Users and permissions into `d`.
    fn access_defs(&self, d: &mut Definitions) {
        for u in self.users() {
            d.users.push(user_def(u));
        }
        for (user, vhost, p) in self.permissions() {
            d.permissions.push(PermissionDef {
                user,
                vhost,
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            });
        }
    }

    /// The current topology. With `durable_only`, what survives a restart: durable exchanges
    /// and queues (not exclusive ones), and bindings between durable ends.
    pub fn definitions(&self, durable_only: bool) -> Definitions {
        let mut d = Definitions {
            rabbit_version: "3.13.0".into(),
            product_name: "Warren".into(),
            product_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let mut vhosts = self.vhosts();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vh in vhosts {
            d.vhosts.push(self.vhost_def(&vh.name));
            for (operator, list) in [(false, &mut d.policies), (true, &mut d.operator_policies)] {
                for p in vh.policies(operator) {
                    list.push(policy_def(&vh.name, &p));
                }
            }
            let mut queues = vh.queues();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            for q in queues {
                if durable_only && (!q.durable || q.exclusive_owner.is_some()) {
                    continue;
                }
                d.queues.push(queue_def(&vh.name, &q));
            }
            let mut exchanges = vh.exchanges();
            exchanges.sort_by(|a, b| a.name.cmp(&b.name));
            for x in &exchanges {
                let predeclared = x.name.is_empty() || x.name.starts_with("amq.");
                if !predeclared && (!durable_only || x.durable) {
                    d.exchanges.push(exchange_def(&vh.name, x));
                }
                if x.name.is_empty() || (durable_only && !x.durable) {
                    continue;
                }
                for b in x.bindings() {
                    let (kind, keep) = match &b.destination {
                        Destination::Queue(q) => {
                            ("queue", q.durable && q.exclusive_owner.is_none())
                        }
                        Destination::Exchange(e) => ("exchange", e.durable),
                    };
                    if durable_only && !keep {
                        continue;
                    }
                    d.bindings.push(BindingDef {
                        source: x.name.to_string(),
                        vhost: vh.name.clone(),
                        destination: b.destination.name().to_string(),
                        destination_type: kind.into(),
                        routing_key: b.routing_key.to_string(),
                        arguments: table_to_json(&b.arguments),
                    });
                }
            }
        }
        self.access_defs(&mut d);
        d
    }

    /// Declares everything in `d` (as a client would; existing equivalent objects are kept).
    /// Returns the errors met, one per object, and goes on after an error. Policies come
    /// last, after the bindings: applying one can dead-letter a queue's messages (a
    /// `max-length` below what a restored queue holds), and its dead-letter exchange must
    /// route them by then (`tests/tests/restore_order.rs`).
    pub fn import_definitions(&self, d: &Definitions) -> Vec<DefinitionsError> {
        let mut errors = Vec::new();
        let refused = |vhost: &str, object: DefObject, reason| DefinitionsError::Refused {
            vhost: vhost.to_string(),
            object,
            reason,
        };
        let no_vhost = |vhost: &str, object: DefObject| DefinitionsError::NoVHost {
            vhost: vhost.to_string(),
            object,
        };
        for v in &d.vhosts {
            self.add_vhost(&v.name);
            match v.parsed_metadata() {
                Ok(Some(m)) => {
                    if let Err(e) = self.set_vhost_metadata(&v.name, m) {
                        errors.push(refused(&v.name, DefObject::VHostMetadata, e));
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(refused(
                    &v.name,
                    DefObject::VHostMetadata,
                    crate::AmqpError::precondition(e),
                )),
            }
            let limit = |k: &str| v.limits.get(k).and_then(Value::as_u64).map(|n| n as u32);
            let limits = VHostLimits {
                max_connections: limit("max-connections"),
                max_queues: limit("max-queues"),
            };
            if limits != VHostLimits::default() {
                if let Err(e) = self.set_vhost_limits(&v.name, limits) {
                    errors.push(refused(&v.name, DefObject::VHostLimits, e));
                }
            }
        }
        for u in &d.users {
            match user_from_def(u) {
                Ok(user) => self.put_user(user),
                Err(source) => errors.push(DefinitionsError::User {
                    user: u.name.clone(),
                    source,
                }),
            }
        }
        for p in &d.permissions {
            let object = || DefObject::Permissions {
                user: p.user.clone(),
            };
            if self.vhost(&p.vhost).is_none() {
                errors.push(no_vhost(&p.vhost, object()));
            } else if self.user(&p.user).is_none() {
                errors.push(DefinitionsError::NoUser {
                    user: p.user.clone(),
                    vhost: p.vhost.clone(),
                });
            } else if let Err(e) =
                self.set_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read)
            {
                errors.push(refused(&p.vhost, object(), e));
            }
        }
        for x in &d.exchanges {
            let object = || DefObject::Exchange {
                name: x.name.clone(),
            };
            let Some(vh) = self.vhost(&x.vhost) else {
                errors.push(no_vhost(&x.vhost, object()));
                continue;
            };
            if let Err(e) = vh.declare_exchange(ExchangeDeclare {
                name: x.name.as_str().into(),
                kind: x.kind.as_str().into(),
                passive: false,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: json_to_table(&x.arguments),
            }) {
                errors.push(refused(&x.vhost, object(), e));
            }
        }
        for q in &d.queues {
            let object = || DefObject::Queue {
                name: q.name.clone(),
            };
            let Some(vh) = self.vhost(&q.vhost) else {
                errors.push(no_vhost(&q.vhost, object()));
                continue;
            };
            let declared = crate::metadata::with_home(q.home.clone(), || {
                vh.declare_queue(
                    QueueDeclare {
                        name: q.name.as_str().into(),
                        passive: false,
                        durable: q.durable,
                        exclusive: false,
                        auto_delete: q.auto_delete,
                        arguments: json_to_table(&q.arguments),
                    },
                    0,
                )
            });
            if let Err(e) = declared {
                errors.push(refused(&q.vhost, object(), e));
            }
        }
        for b in &d.bindings {
            let object = || DefObject::Binding {
                source: b.source.clone(),
                destination: b.destination.clone(),
                destination_type: b.destination_type.clone(),
            };
            let Some(vh) = self.vhost(&b.vhost) else {
                errors.push(no_vhost(&b.vhost, object()));
                continue;
            };
            let args = json_to_table(&b.arguments);
            let r = if b.destination_type == "exchange" {
                vh.bind_exchange(
                    &b.destination,
                    &b.source,
                    b.routing_key.as_str().into(),
                    args,
                )
            } else {
                vh.bind_queue(
                    &b.destination,
                    &b.source,
                    b.routing_key.as_str().into(),
                    args,
                    0,
                )
            };
            if let Err(e) = r {
                errors.push(refused(&b.vhost, object(), e));
            }
        }
        for (operator, list) in [(false, &d.policies), (true, &d.operator_policies)] {
            for p in list {
                let object = || DefObject::Policy {
                    name: p.name.clone(),
                    operator,
                };
                let Some(vh) = self.vhost(&p.vhost) else {
                    errors.push(no_vhost(&p.vhost, object()));
                    continue;
                };
                match crate::policy::Policy::new(
                    &p.name,
                    &p.pattern,
                    &p.apply_to,
                    p.priority,
                    json_to_table(&p.definition),
                ) {
                    Ok(policy) => vh.set_policy(policy, operator),
                    Err(e) => errors.push(refused(&p.vhost, object(), e)),
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerConfig;
    use warren_protocol::constants::PRECONDITION_FAILED;

    fn defs(v: serde_json::Value) -> Definitions {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn objects_naming_a_missing_vhost_are_no_vhost_errors_naming_it() {
        let b = Broker::new(BrokerConfig::default());
        let errors = b.import_definitions(&defs(serde_json::json!({
            "exchanges": [{"name": "x", "vhost": "gone", "type": "direct"}],
            "queues": [{"name": "q", "vhost": "gone"}],
            "policies": [{"name": "p", "vhost": "gone", "pattern": ".*", "definition": {}}],
            "bindings": [{"source": "x", "vhost": "gone", "destination": "q",
                          "destination_type": "queue"}],
            "permissions": [{"user": "guest", "vhost": "gone", "configure": ".*",
                             "write": ".*", "read": ".*"}],
        })));
        let objects: Vec<&DefObject> = errors
            .iter()
            .map(|e| match e {
                DefinitionsError::NoVHost { vhost, object } => {
                    assert_eq!(vhost, "gone");
                    object
                }
                other => panic!("not a NoVHost: {other:?}"),
            })
            .collect();
        assert_eq!(
            objects,
            [
                &DefObject::Permissions {
                    user: "guest".into()
                },
                &DefObject::Exchange { name: "x".into() },
                &DefObject::Queue { name: "q".into() },
                &DefObject::Binding {
                    source: "x".into(),
                    destination: "q".into(),
                    destination_type: "queue".into()
                },
                &DefObject::Policy {
                    name: "p".into(),
                    operator: false
                },
            ]
        );
        assert_eq!(
            errors[1].to_string(),
            "exchange 'x': no vhost 'gone'; list it under \"vhosts\" in the definitions, or \
             create it first"
        );
        assert_eq!(
            errors[3].to_string(),
            "binding 'x' -> queue 'q': no vhost 'gone'; list it under \"vhosts\" in the \
             definitions, or create it first"
        );
        assert!(!errors[1].is_about_queue("gone", "q"));
        assert!(errors[2].is_about_queue("gone", "q"));
        assert!(!errors[2].is_about_queue("/", "q"));
        // Nothing was created in another vhost instead.
        assert!(b.vhost("gone").is_none());
    }

    #[test]
    fn users_permissions_and_refusals_are_typed() {
        let b = Broker::new(BrokerConfig::default());
        b.vhost("/")
            .unwrap()
            .declare_queue(
                QueueDeclare {
                    name: "q".into(),
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    arguments: Default::default(),
                },
                0,
            )
            .unwrap();
        let errors = b.import_definitions(&defs(serde_json::json!({
            "vhosts": [{"name": "v", "limits": {"max-queues": 5}}],
            "users": [{"name": "u", "password_hash": "",
                       "hashing_algorithm": "rabbit_password_hashing_sha1"}],
            "permissions": [{"user": "nobody", "vhost": "v", "configure": ".*",
                             "write": ".*", "read": ".*"}],
            "queues": [{"name": "q", "vhost": "/", "durable": false}],
        })));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            matches!(&errors[0], DefinitionsError::User { user, source }
                if user == "u" && source.0 == "rabbit_password_hashing_sha1"),
            "{errors:?}"
        );
        assert!(errors[0].to_string().starts_with(
            "user 'u': unsupported hashing algorithm 'rabbit_password_hashing_sha1': expected "
        ));
        assert_eq!(
            errors[1],
            DefinitionsError::NoUser {
                user: "nobody".into(),
                vhost: "v".into()
            }
        );
        assert!(errors[1]
            .to_string()
            .starts_with("permissions of user 'nobody' in vhost 'v': no user 'nobody'; "));
        // An inequivalent redeclaration: the broker's reply, with the vhost.
        match &errors[2] {
            DefinitionsError::Refused {
                vhost,
                object: DefObject::Queue { name },
                reason,
            } => {
                assert_eq!((vhost.as_str(), name.as_str()), ("/", "q"));
                assert_eq!(reason.code, PRECONDITION_FAILED);
            }
            other => panic!("not a Refused: {other:?}"),
        }
        assert!(
            errors[2].to_string().starts_with(
                "queue 'q' in vhost '/': PRECONDITION_FAILED - inequivalent arg 'durable'"
            ),
            "{}",
            errors[2]
        );
        assert!(errors[2].is_about_queue("/", "q"));
        // The vhost and its limits went in.
        assert_eq!(b.vhost_limits("v").max_queues, Some(5));
    }
}
