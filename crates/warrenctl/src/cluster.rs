//! `warrenctl cluster_status`: rabbitmqctl's layout (basics, disk nodes, running nodes), from
//! the management API's `/api/nodes` (every node of the cluster, with whether it answers).

use crate::client::{Client, CtlError};
use crate::{info, io_error, Global};
use serde_json::{json, Value};
use std::io::Write;

pub fn cluster_status(client: &Client, g: &Global, out: &mut impl Write) -> Result<(), CtlError> {
    let overview = client.get("/overview")?;
    let nodes = client.get("/nodes")?;
    let me = overview["node"].as_str().unwrap_or("?").to_string();
    let names = |running_only: bool| -> Vec<String> {
        nodes
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|n| !running_only || n["running"].as_bool() == Some(true))
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (disc, running) = (names(false), names(true));
    let alarms: Vec<Value> = nodes
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| {
                    n["mem_alarm"].as_bool() == Some(true)
                        || n["disk_free_alarm"].as_bool() == Some(true)
                })
                .map(|n| n["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    if g.json() {
        let s = json!({
            "cluster_name": overview["cluster_name"],
            "disk_nodes": disc,
            "running_nodes": running,
            "alarms": alarms,
            "partitions": {},
        });
        return writeln!(out, "{s}").map_err(io_error);
    }
    info(g, out, &[format!("Cluster status of node {me} ...")])?;
    let mut text = format!(
        "Basics\n\nCluster name: {}\n\nDisk Nodes\n\n",
        overview["cluster_name"].as_str().unwrap_or(&me)
    );
    for n in &disc {
        text.push_str(&format!("{n}\n"));
    }
    text.push_str("\nRunning Nodes\n\n");
    for n in &running {
        text.push_str(&format!("{n}\n"));
    }
    text.push_str("\nAlarms\n\n");
    if alarms.is_empty() {
        text.push_str("(none)\n");
    }
    for a in alarms {
        text.push_str(&format!("{}\n", a.as_str().unwrap_or("?")));
    }
    text.push_str("\nNetwork Partitions\n\n(none)\n");
    write!(out, "{text}").map_err(io_error)
}
