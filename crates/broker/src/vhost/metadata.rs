//! A vhost's metadata, as RabbitMQ keeps it: a description, tags, and the default queue type
//! (`rabbitmqctl add_vhost --default-queue-type`, `update_vhost_metadata`, the management
//! API's `PUT /api/vhosts/{vhost}`, `vhosts[].metadata` in definitions).
//!
//! The default queue type (the vhost's, else the node's `default_queue_type` in warren.conf)
//! is the type a queue gets when a client declares it without `x-queue-type` (over AMQP or
//! the management API): the declaration gets that type as its
//! `x-queue-type` argument if it suits the type (a quorum queue or a stream must be durable,
//! not exclusive and not auto-deleted), and `classic` otherwise, as RabbitMQ 4 does. The type
//! is then recorded in the queue's arguments, so changing the vhost's default later changes
//! no existing queue. In a cluster, a vhost whose default is `quorum` gives clients on every
//! node every queue they declare without a type (quorum queues are reachable from any node).

use serde::{Deserialize, Serialize};
use warren_protocol::{FieldTable, FieldValue};

/// The queue types a vhost's default can name (RabbitMQ's short names).
pub const QUEUE_TYPES: [&str; 3] = ["classic", "quorum", "stream"];

/// A vhost's description, tags and default queue type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VHostMetadata {
    #[serde(default)]
    pub description: String,
    #[serde(default, deserialize_with = "crate::json::deserialize_tags")]
    pub tags: Vec<String>,
    /// `classic`, `quorum` or `stream`; `None` when unset (queues are then classic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
}

impl VHostMetadata {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Gives a declaration without `x-queue-type` the type `default` (the vhost's, else the
/// node's), or `classic` if the declaration does not suit that type. Leaves other
/// declarations, and all of them when there is no default, as they are.
pub fn apply_default_queue_type(
    default: Option<&str>,
    arguments: &mut FieldTable,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) {
    let Some(default) = default else {
        return;
    };
    if arguments.get("x-queue-type").is_some() {
        return;
    }
    let suits = default == "classic" || (durable && !exclusive && !auto_delete);
    let kind = if suits { default } else { "classic" };
    arguments.insert("x-queue-type", FieldValue::from(kind));
}

/// A queue type as a vhost's default: a short name, or RabbitMQ's module name for one
/// (`rabbit_quorum_queue`), in which case its short name is kept. The error is the text a
/// caller shows.
pub fn parse_queue_type(s: &str) -> Result<String, String> {
    let short = s
        .strip_prefix("rabbit_")
        .and_then(|t| t.strip_suffix("_queue"))
        .unwrap_or(s);
    if QUEUE_TYPES.contains(&short) {
        Ok(short.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid default queue type: use classic, quorum or stream"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(default: Option<&str>, args: &mut FieldTable, d: bool, e: bool, a: bool) {
        apply_default_queue_type(default, args, d, e, a)
    }

    fn kind(t: &FieldTable) -> Option<&str> {
        t.get("x-queue-type").and_then(FieldValue::as_str)
    }

    #[test]
    fn a_declaration_without_a_type_gets_the_default_when_it_suits_it() {
        let mut args = FieldTable::new();
        apply(Some("quorum"), &mut args, true, false, false);
        assert_eq!(kind(&args), Some("quorum"));
        for (durable, exclusive, auto_delete) in [
            (false, false, false),
            (true, true, false),
            (true, false, true),
        ] {
            let mut args = FieldTable::new();
            apply(Some("quorum"), &mut args, durable, exclusive, auto_delete);
            assert_eq!(
                kind(&args),
                Some("classic"),
                "{durable} {exclusive} {auto_delete}"
            );
        }
    }

    #[test]
    fn a_declared_type_and_an_unset_default_are_left_alone() {
        let mut args = FieldTable::new();
        args.insert("x-queue-type", FieldValue::from("stream"));
        apply(Some("quorum"), &mut args, true, false, false);
        assert_eq!(kind(&args), Some("stream"));
        let mut args = FieldTable::new();
        apply(None, &mut args, true, false, false);
        assert_eq!(kind(&args), None);
    }

    #[test]
    fn queue_types_parse_by_short_or_module_name() {
        assert_eq!(parse_queue_type("quorum").unwrap(), "quorum");
        assert_eq!(parse_queue_type("rabbit_stream_queue").unwrap(), "stream");
        assert!(parse_queue_type("lazy").unwrap_err().contains("'lazy'"));
        assert!(parse_queue_type("rabbit_lazy_queue").is_err());
    }

    #[test]
    fn tags_come_as_a_list_or_a_comma_separated_string() {
        let m: VHostMetadata = serde_json::from_str(r#"{"tags": "a, b,,c"}"#).unwrap();
        assert_eq!(m.tags, ["a", "b", "c"]);
        let m: VHostMetadata = serde_json::from_str(r#"{"tags": ["x"]}"#).unwrap();
        assert_eq!(m.tags, ["x"]);
        let m: VHostMetadata = serde_json::from_str(r#"{"tags": null}"#).unwrap();
        assert!(m.tags.is_empty());
    }
}
