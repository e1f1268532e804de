//! Definitions: the durable topology (vhosts, exchanges, queues, bindings) in RabbitMQ's
//! definitions-file format, used for the on-disk catalogue, export and import.

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
    pub vhosts: Vec<VHostDef>,
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VHostDef {
    pub name: String,
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
            d.vhosts.push(VHostDef {
                name: vh.name.clone(),
            });
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
                        kind: x.kind.as_str().into(),
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
        d
    }

    /// Declares everything in `d` (as a client would; existing equivalent objects are kept).
    /// Returns the errors met, one line each, and goes on after an error.
    pub fn import_definitions(&self, d: &Definitions) -> Vec<String> {
        let mut errors = Vec::new();
        for v in &d.vhosts {
            self.add_vhost(&v.name);
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
