//! `rabbitmq-streams`' `add_super_stream` and `delete_super_stream`, through the management
//! API's `/api/stream/super-streams/{vhost}/{name}` (PUT as RabbitMQ's; DELETE is Warren's).

use crate::client::{seg, Client, CtlError, Method};
use crate::{info, io_error, Global};
use serde_json::{json, Map, Value};
use std::io::Write;

/// What `add_super_stream` is given beyond the name.
pub struct SuperStreamOptions<'a> {
    pub partitions: Option<usize>,
    pub binding_keys: Option<&'a str>,
    /// The stream arguments (`max-age`, `max-length-bytes`, …) given.
    pub arguments: Vec<(&'static str, String)>,
}

fn path(g: &Global, name: &str) -> String {
    format!("/stream/super-streams/{}/{}", seg(&g.vhost), seg(name))
}

pub fn add_super_stream(
    client: &Client,
    g: &Global,
    name: &str,
    o: SuperStreamOptions<'_>,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    if o.partitions.is_some() && o.binding_keys.is_some() {
        return Err(CtlError::Usage(
            "Specify --partitions or --binding-keys, not both.".into(),
        ));
    }
    info(g, out, &["Adding a super stream...".to_string()])?;
    let mut body = Map::new();
    match (o.partitions, o.binding_keys) {
        (_, Some(keys)) => body.insert("binding-keys".into(), json!(keys)),
        // rabbitmq-streams' default: 3 partitions.
        (p, None) => body.insert("partitions".into(), json!(p.unwrap_or(3))),
    };
    let arguments: Map<String, Value> = o
        .arguments
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    body.insert("arguments".into(), Value::Object(arguments));
    match client.request(Method::Put, &path(g, name), Some(&Value::Object(body)), &[])? {
        Ok(_) => writeln!(out, "Super stream {name} has been created").map_err(io_error),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

pub fn delete_super_stream(
    client: &Client,
    g: &Global,
    name: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    info(g, out, &["Deleting a super stream...".to_string()])?;
    match client.request(Method::Delete, &path(g, name), None, &[])? {
        Ok(_) => writeln!(out, "Super stream {name} has been deleted").map_err(io_error),
        Err(f) if f.status == 404 => Err(CtlError::Failed(format!(
            "super stream '{name}' in vhost '{}' was not found",
            g.vhost
        ))),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}
