//! The `list_*` commands: which API path each reads, the columns (rabbitmqctl's info keys) it
//! knows and shows by default, the banner it prints, and where each column's value comes from
//! in the API's JSON.

use crate::client::{seg, Client, CtlError};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
    VHosts,
    Policies,
    OperatorPolicies,
    /// `rabbitmq-streams list_stream_connections`.
    StreamConnections,
    /// `rabbitmq-streams list_stream_consumers`.
    StreamConsumers,
    /// `rabbitmq-streams list_stream_publishers`.
    StreamPublishers,
}

impl Listing {
    pub fn command(self) -> &'static str {
        match self {
            Listing::Queues => "list_queues",
            Listing::Exchanges => "list_exchanges",
            Listing::Bindings => "list_bindings",
            Listing::Connections => "list_connections",
            Listing::Channels => "list_channels",
            Listing::Consumers => "list_consumers",
            Listing::VHosts => "list_vhosts",
            Listing::Policies => "list_policies",
            Listing::OperatorPolicies => "list_operator_policies",
            Listing::StreamConnections => "list_stream_connections",
            Listing::StreamConsumers => "list_stream_consumers",
            Listing::StreamPublishers => "list_stream_publishers",
        }
    }

    /// Every column the command knows, in rabbitmqctl's order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Listing::Queues => &[
                "name",
                "durable",
                "auto_delete",
                "arguments",
                "policy",
                "owner_pid",
                "exclusive",
                "exclusive_consumer_tag",
                "messages_ready",
                "messages_unacknowledged",
                "messages",
                "message_bytes_ready",
                "consumers",
                "memory",
                "state",
                "type",
                "leader",
                "members",
                "online",
            ],
            Listing::Exchanges => &[
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
                "policy",
            ],
            Listing::Bindings => &[
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ],
            Listing::Connections => &[
                "pid",
                "name",
                "port",
                "host",
                "peer_port",
                "peer_host",
                "ssl",
                "state",
                "channels",
                "protocol",
                "auth_mechanism",
                "user",
                "vhost",
                "timeout",
                "frame_max",
                "channel_max",
                "client_properties",
                "connected_at",
                "type",
            ],
            Listing::Channels => &[
                "pid",
                "name",
                "connection",
                "number",
                "user",
                "vhost",
                "transactional",
                "confirm",
                "consumer_count",
                "messages_unacknowledged",
                "messages_uncommitted",
                "acks_uncommitted",
                "messages_unconfirmed",
                "prefetch_count",
                "global_prefetch_count",
                "state",
            ],
            Listing::Consumers => &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "activity_status",
                "arguments",
                "exclusive",
            ],
            Listing::VHosts => &[
                "name",
                "description",
                "tags",
                "tracing",
                "cluster_state",
                "default_queue_type",
            ],
            Listing::Policies | Listing::OperatorPolicies => &[
                "vhost",
                "name",
                "pattern",
                "apply-to",
                "definition",
                "priority",
            ],
            Listing::StreamConnections => &[
                "conn_name",
                "node",
                "port",
                "peer_port",
                "host",
                "peer_host",
                "user",
                "vhost",
                "subscriptions",
                "ssl",
                "connection_state",
                "auth_mechanism",
                "heartbeat",
                "frame_max",
                "client_properties",
                "connected_at",
            ],
            Listing::StreamConsumers => &[
                "connection_pid",
                "node",
                "subscription_id",
                "stream",
                "messages_consumed",
                "offset",
                "offset_lag",
                "credits",
                "active",
                "activity_status",
                "properties",
            ],
            Listing::StreamPublishers => &[
                "connection_pid",
                "node",
                "publisher_id",
                "stream",
                "reference",
                "messages_published",
                "messages_confirmed",
                "messages_errored",
            ],
        }
    }

    /// The columns shown when none are asked for (rabbitmqctl's defaults).
    pub fn default_columns(self) -> &'static [&'static str] {
        match self {
            Listing::Queues => &["name", "messages"],
            Listing::Exchanges => &["name", "type"],
            Listing::Bindings => self.columns(),
            Listing::Connections => &["user", "peer_host", "peer_port", "state"],
            Listing::Channels => &["pid", "user", "consumer_count", "messages_unacknowledged"],
            Listing::Consumers => &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "arguments",
            ],
            Listing::VHosts => &["name"],
            Listing::Policies | Listing::OperatorPolicies => self.columns(),
            Listing::StreamConnections => &["node", "conn_name"],
            // Every column but the connection's pid and node, as rabbitmq-streams.
            Listing::StreamConsumers | Listing::StreamPublishers => &self.columns()[2..],
        }
    }

    /// Whether the listing is of one vhost (`-p`).
    fn per_vhost(self) -> bool {
        matches!(
            self,
            Listing::Queues
                | Listing::Exchanges
                | Listing::Bindings
                | Listing::Consumers
                | Listing::Policies
                | Listing::OperatorPolicies
                | Listing::StreamConsumers
                | Listing::StreamPublishers
        )
    }

    /// The informational lines printed before the table (unless `-q`), as rabbitmqctl words
    /// them.
    pub fn banner(self, vhost: &str, timeout_secs: f64) -> Vec<String> {
        match self {
            Listing::Queues => {
                vec![
                    format!("Timeout: {timeout_secs:.1} seconds ..."),
                    format!("Listing queues for vhost {vhost} ..."),
                ]
            }
            Listing::Exchanges => vec![format!("Listing exchanges for vhost {vhost} ...")],
            Listing::Bindings => vec![format!("Listing bindings for vhost {vhost}...")],
            Listing::Connections => vec!["Listing connections ...".into()],
            Listing::Channels => vec!["Listing channels ...".into()],
            Listing::Consumers => vec![format!("Listing consumers in vhost {vhost} ...")],
            Listing::VHosts => vec!["Listing vhosts ...".into()],
            Listing::Policies => vec![format!("Listing policies for vhost \"{vhost}\" ...")],
            Listing::OperatorPolicies => {
                vec![format!(
                    "Listing operator policy overrides for vhost \"{vhost}\" ..."
                )]
            }
            Listing::StreamConnections => vec!["Listing stream connections ...".into()],
            Listing::StreamConsumers => vec!["Listing stream consumers ...".into()],
            Listing::StreamPublishers => vec!["Listing stream publishers ...".into()],
        }
    }

    /// Checks the requested columns (the defaults when none), as rabbitmqctl's argument
    /// validation does.
    pub fn resolve_columns(self, requested: &[String]) -> Result<Vec<String>, CtlError> {
        if requested.is_empty() {
            return Ok(self
                .default_columns()
                .iter()
                .map(|c| c.to_string())
                .collect());
        }
        // rabbitmqctl also takes comma-separated keys.
        let cols: Vec<String> = requested
            .iter()
            .flat_map(|c| c.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let unknown: Vec<&str> = cols
            .iter()
            .map(String::as_str)
            .filter(|c| !self.columns().contains(c))
            .collect();
        if !unknown.is_empty() {
            return Err(CtlError::Usage(format!(
                "info key(s) {} are not supported by {}. Supported: {}",
                unknown.join(","),
                self.command(),
                self.columns().join(", ")
            )));
        }
        Ok(cols)
    }

    /// The objects to list. A vhost that does not exist lists nothing, as in rabbitmqctl.
    pub fn fetch(self, client: &Client, vhost: &str) -> Result<Vec<Value>, CtlError> {
        let path = match self {
            Listing::Queues => format!("/queues/{}", seg(vhost)),
            Listing::Exchanges => format!("/exchanges/{}", seg(vhost)),
            Listing::Bindings => format!("/bindings/{}", seg(vhost)),
            Listing::Consumers => format!("/consumers/{}", seg(vhost)),
            Listing::Connections => "/connections".into(),
            Listing::Channels => "/channels".into(),
            Listing::VHosts => "/vhosts".into(),
            Listing::Policies => format!("/policies/{}", seg(vhost)),
            Listing::OperatorPolicies => format!("/operator-policies/{}", seg(vhost)),
            Listing::StreamConnections => "/stream/connections".into(),
            Listing::StreamConsumers => format!("/stream/consumers/{}", seg(vhost)),
            Listing::StreamPublishers => format!("/stream/publishers/{}", seg(vhost)),
        };
        match client.request(crate::client::Method::Get, &path, None, &[])? {
            Ok(Value::Array(items)) => Ok(items),
            Ok(other) => Err(CtlError::Software(format!(
                "unexpected answer from {path}: {other}"
            ))),
            Err(f) if f.status == 404 && self.per_vhost() => Ok(Vec::new()),
            Err(f) => Err(CtlError::Failed(f.reason)),
        }
    }

    /// The value of `column` for one API object.
    pub fn value(self, column: &str, o: &Value) -> Value {
        let field = |f: &str| o.get(f).cloned().unwrap_or(Value::Null);
        match (self, column) {
            (Listing::Queues, "owner_pid") => o
                .pointer("/owner_pid_details/name")
                .cloned()
                .unwrap_or(Value::Null),
            (Listing::Bindings, "source_name") => field("source"),
            (Listing::Bindings, "source_kind") => "exchange".into(),
            (Listing::Bindings, "destination_name") => field("destination"),
            (Listing::Bindings, "destination_kind") => field("destination_type"),
            // Warren has no Erlang pids: connections and channels go by their names.
            (Listing::Connections | Listing::Channels, "pid") => field("name"),
            (Listing::Connections, "protocol") => match o["protocol"].as_str() {
                Some("stream") => "stream".into(),
                _ => "{0,9,1}".into(),
            },
            (Listing::StreamConnections, "conn_name") => field("name"),
            (Listing::StreamConnections, "heartbeat") => field("timeout"),
            (Listing::StreamConnections, "connection_state") => field("state"),
            (Listing::StreamConsumers | Listing::StreamPublishers, "connection_pid") => o
                .pointer("/connection_details/name")
                .cloned()
                .unwrap_or(Value::Null),
            (Listing::StreamConsumers | Listing::StreamPublishers, "node") => o
                .pointer("/connection_details/node")
                .cloned()
                .unwrap_or(Value::Null),
            (Listing::StreamConsumers | Listing::StreamPublishers, "stream") => {
                o.pointer("/queue/name").cloned().unwrap_or(Value::Null)
            }
            (Listing::StreamConsumers, "messages_consumed") => field("consumed"),
            (Listing::StreamPublishers, "messages_published") => field("published"),
            (Listing::StreamPublishers, "messages_confirmed") => field("confirmed"),
            (Listing::StreamPublishers, "messages_errored") => field("errored"),
            (Listing::Channels, "connection") => o
                .pointer("/connection_details/name")
                .cloned()
                .unwrap_or(Value::Null),
            (Listing::Consumers, "queue_name") => {
                o.pointer("/queue/name").cloned().unwrap_or(Value::Null)
            }
            (Listing::Consumers, "channel_pid") => o
                .pointer("/channel_details/name")
                .cloned()
                .unwrap_or(Value::Null),
            (Listing::VHosts, "tags") => crate::access::tags_cell(&o["tags"]),
            _ => field(column),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_columns_are_usage_errors() {
        let e = Listing::Queues
            .resolve_columns(&["name".into(), "bogus".into()])
            .unwrap_err();
        assert_eq!(e.exit_code(), 64);
        assert!(e.to_string().contains("bogus"), "{e}");
        assert_eq!(
            Listing::Queues.resolve_columns(&[]).unwrap(),
            ["name", "messages"]
        );
        assert_eq!(
            Listing::Queues
                .resolve_columns(&["name,messages_ready".into()])
                .unwrap(),
            ["name", "messages_ready"]
        );
    }

    #[test]
    fn every_default_column_is_known() {
        for l in [
            Listing::Queues,
            Listing::Exchanges,
            Listing::Bindings,
            Listing::Connections,
            Listing::Channels,
            Listing::Consumers,
            Listing::VHosts,
            Listing::StreamConnections,
            Listing::StreamConsumers,
            Listing::StreamPublishers,
        ] {
            for c in l.default_columns() {
                assert!(l.columns().contains(c), "{} {c}", l.command());
            }
        }
    }
}
