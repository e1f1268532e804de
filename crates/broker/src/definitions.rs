//! Definitions: the durable topology (vhosts, exchanges, queues, bindings) and access control
//! (users with their password hashes, permissions, limits) in RabbitMQ's definitions-file
//! format, used for the on-disk catalogue, export and import.

use crate::auth::{HashingAlgorithm, User, UserLimits, VHostLimits};
use crate::broker::Broker;
use crate::exchange::Destination;
use crate::json::{json_to_table, table_to_json};
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VHostDef {
    pub name: String,
    /// `{"max-connections": n, "max-queues": n}`; absent when there are none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub limits: Value,
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

/// A user as a definitions file gives it: tags as a list or a comma-separated string.
pub fn user_from_def(u: &UserDef) -> Result<User, String> {
    let tags = match &u.tags {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
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

impl Broker {
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
            let l = self.vhost_limits(&vh.name);
            let mut limits = serde_json::Map::new();
            if let Some(n) = l.max_connections {
                limits.insert("max-connections".into(), n.into());
            }
            if let Some(n) = l.max_queues {
                limits.insert("max-queues".into(), n.into());
            }
            d.vhosts.push(VHostDef {
                name: vh.name.clone(),
                limits: if limits.is_empty() {
                    Value::Null
                } else {
                    Value::Object(limits)
                },
            });
            for (operator, list) in [(false, &mut d.policies), (true, &mut d.operator_policies)] {
                for p in vh.policies(operator) {
                    list.push(PolicyDef {
                        vhost: vh.name.clone(),
                        name: p.name.clone(),
                        pattern: p.pattern.clone(),
                        apply_to: p.apply_to.as_str().into(),
                        priority: p.priority,
                        definition: table_to_json(&p.definition),
                    });
                }
            }
            let mut queues = vh.queues();
            queues.sort_by(|a, b| a.name.cmp(&b.name));
            for q in queues {
                if durable_only && (!q.durable || q.exclusive_owner.is_some()) {
                    continue;
                }
                d.queues.push(QueueDef {
                    name: q.name.to_string(),
                    vhost: vh.name.clone(),
                    durable: q.durable,
                    auto_delete: q.auto_delete,
                    arguments: table_to_json(&q.arguments),
                });
            }
            let mut exchanges = vh.exchanges();
            exchanges.sort_by(|a, b| a.name.cmp(&b.name));
            for x in &exchanges {
                let predeclared = x.name.is_empty() || x.name.starts_with("amq.");
                if !predeclared && (!durable_only || x.durable) {
                    d.exchanges.push(ExchangeDef {
                        name: x.name.to_string(),
                        vhost: vh.name.clone(),
                        kind: x.type_name().into(),
                        durable: x.durable,
                        auto_delete: x.auto_delete,
                        internal: x.internal,
                        arguments: table_to_json(&x.arguments),
                    });
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
        for u in self.users() {
            let mut limits = serde_json::Map::new();
            if let Some(n) = u.limits.max_connections {
                limits.insert("max-connections".into(), n.into());
            }
            if let Some(n) = u.limits.max_channels {
                limits.insert("max-channels".into(), n.into());
            }
            d.users.push(UserDef {
                name: u.name,
                password_hash: u.password_hash,
                hashing_algorithm: Some(u.hashing_algorithm.as_str().into()),
                tags: Value::from(u.tags),
                limits: Value::Object(limits),
            });
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
        d
    }

    /// Declares everything in `d` (as a client would; existing equivalent objects are kept).
    /// Returns the errors met, one line each, and goes on after an error.
    pub fn import_definitions(&self, d: &Definitions) -> Vec<String> {
        let mut errors = Vec::new();
        for v in &d.vhosts {
            self.add_vhost(&v.name);
            let limit = |k: &str| v.limits.get(k).and_then(Value::as_u64).map(|n| n as u32);
            let limits = VHostLimits {
                max_connections: limit("max-connections"),
                max_queues: limit("max-queues"),
            };
            if limits != VHostLimits::default() {
                let _ = self.set_vhost_limits(&v.name, limits);
            }
        }
        for u in &d.users {
            match user_from_def(u) {
                Ok(user) => self.put_user(user),
                Err(e) => errors.push(format!("user '{}': {e}", u.name)),
            }
        }
        for p in &d.permissions {
            if let Err(e) = self.set_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read)
            {
                errors.push(format!(
                    "permissions of user '{}' in vhost '{}': {}",
                    p.user, p.vhost, e.text
                ));
            }
        }
        for x in &d.exchanges {
            let Some(vh) = self.vhost(&x.vhost) else {
                errors.push(format!("exchange '{}': no vhost '{}'", x.name, x.vhost));
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
                errors.push(format!("exchange '{}': {}", x.name, e.text));
            }
        }
        for q in &d.queues {
            let Some(vh) = self.vhost(&q.vhost) else {
                errors.push(format!("queue '{}': no vhost '{}'", q.name, q.vhost));
                continue;
            };
            if let Err(e) = vh.declare_queue(
                QueueDeclare {
                    name: q.name.as_str().into(),
                    passive: false,
                    durable: q.durable,
                    exclusive: false,
                    auto_delete: q.auto_delete,
                    arguments: json_to_table(&q.arguments),
                },
                0,
            ) {
                errors.push(format!("queue '{}': {}", q.name, e.text));
            }
        }
        for (operator, list) in [(false, &d.policies), (true, &d.operator_policies)] {
            for p in list {
                let Some(vh) = self.vhost(&p.vhost) else {
                    errors.push(format!("policy '{}': no vhost '{}'", p.name, p.vhost));
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
                    Err(e) => errors.push(format!("policy '{}': {}", p.name, e.text)),
                }
            }
        }
        for b in &d.bindings {
            let Some(vh) = self.vhost(&b.vhost) else {
                errors.push(format!(
                    "binding '{}' -> '{}': no vhost '{}'",
                    b.source, b.destination, b.vhost
                ));
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
                errors.push(format!(
                    "binding '{}' -> '{}': {}",
                    b.source, b.destination, e.text
                ));
            }
        }
        errors
    }
}
