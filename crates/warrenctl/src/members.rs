//! `rabbitmq-queues`' membership commands for quorum queues: `add_member`, `delete_member`,
//! `grow` and `shrink`, with its arguments, banners and result tables, and `rabbitmqctl
//! join_cluster` and `forget_cluster_node`, through the management API's member paths (Warren's own:
//! docs/management-api.md).

use crate::client::{seg, Client, CtlError, Method};
use crate::format::{write_json, write_table};
use crate::{info, io_error, Global};
use serde_json::{json, Value};
use std::io::Write;

/// A refused change: RabbitMQ's reason, and what to do about it.
fn refused(reason: &str) -> CtlError {
    let hint = match reason {
        "node_not_running" => " (the node is not a node of this cluster, or does not answer: see 'warrenctl cluster_status')",
        "last_node" => " (a quorum queue keeps at least one member: add another first, or delete the queue)",
        "not_clustered" => " (this broker is not in a cluster: give it a cluster.node_name in warren.conf to make it a cluster of its own, which can join another)",
        "timeout" => " (the change may still complete: see the queue's members with 'warrenctl list_queues name members')",
        "not_a_cluster_node" => " (see the cluster's nodes with 'warrenctl cluster_status')",
        _ => "",
    };
    CtlError::Failed(format!("{reason}{hint}"))
}

fn no_queue(g: &Global, queue: &str) -> CtlError {
    CtlError::Failed(format!(
        "queue '{queue}' in vhost '{}' was not found",
        g.vhost
    ))
}

pub fn add_member(
    client: &Client,
    g: &Global,
    queue: &str,
    node: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let banner = format!("Adding a member for queue {queue} on node {node}...");
    let path = format!("/queues/{}/{}/members", seg(&g.vhost), seg(queue));
    let body = json!({ "node": node });
    change(
        client,
        g,
        queue,
        out,
        banner,
        Method::Post,
        &path,
        Some(&body),
    )
}

pub fn delete_member(
    client: &Client,
    g: &Global,
    queue: &str,
    node: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let banner = format!("Removing a replica of queue {queue} on node {node}...");
    let path = format!(
        "/queues/{}/{}/members/{}",
        seg(&g.vhost),
        seg(queue),
        seg(node)
    );
    change(client, g, queue, out, banner, Method::Delete, &path, None)
}

/// One queue's membership change: the banner, the request, and RabbitMQ's answer to a
/// missing queue or a refusal.
#[allow(clippy::too_many_arguments)]
fn change(
    client: &Client,
    g: &Global,
    queue: &str,
    out: &mut impl Write,
    banner: String,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(), CtlError> {
    info(g, out, &[banner])?;
    match client.request(method, path, body, &[])? {
        Ok(_) => Ok(()),
        Err(f) if f.status == 404 => Err(no_queue(g, queue)),
        Err(f) => Err(refused(&f.reason)),
    }
}

pub fn grow(
    client: &Client,
    g: &Global,
    node: &str,
    strategy: &str,
    errors_only: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    if !matches!(strategy, "all" | "even") {
        return Err(CtlError::Usage(format!(
            "strategy '{strategy}' is not recognised."
        )));
    }
    info(
        g,
        out,
        &[format!("Growing {strategy} quorum queues on {node}...")],
    )?;
    let path = format!("/nodes/{}/grow", seg(node));
    let rows = match client.request(
        Method::Post,
        &path,
        Some(&json!({ "strategy": strategy })),
        &[],
    )? {
        Ok(v) => v,
        Err(f) => return Err(refused(&f.reason)),
    };
    results(g, &rows, errors_only, out)
}

pub fn shrink(
    client: &Client,
    g: &Global,
    node: &str,
    errors_only: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    info(g, out, &[format!("Shrinking quorum queues on {node}...")])?;
    let path = format!("/nodes/{}/shrink", seg(node));
    let rows = match client.request(Method::Post, &path, None, &[])? {
        Ok(v) => v,
        Err(f) => return Err(refused(&f.reason)),
    };
    results(g, &rows, errors_only, out)
}

/// `rabbitmqctl forget_cluster_node`: the node (stopped) leaves the cluster, its quorum queue
/// members first. Quorum queues that could not drop its member are listed, and the command
/// fails, with what to run for them.
pub fn forget_cluster_node(
    client: &Client,
    g: &Global,
    node: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    info(g, out, &[format!("Removing node {node} from the cluster")])?;
    let path = format!("/nodes/{}/forget", seg(node));
    let answer = match client.request(Method::Post, &path, None, &[])? {
        Ok(v) => v,
        Err(f) => return Err(refused(&f.reason)),
    };
    let failed = answer["queues"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|r| r["result"] != "ok").count());
    if failed == 0 {
        return Ok(());
    }
    results(g, &answer["queues"], true, out)?;
    Err(CtlError::Failed(format!(
        "{node} was forgotten, but {failed} quorum queue(s) above still have a member on it: remove each with 'warrenctl delete_member QUEUE {node}'"
    )))
}

/// `rabbitmqctl join_cluster`: the node asked (a cluster of its own) joins `node`'s cluster.
pub fn join_cluster(
    client: &Client,
    g: &Global,
    node: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let me = client.get("/overview")?["node"]
        .as_str()
        .unwrap_or("this node")
        .to_string();
    info(g, out, &[format!("Clustering node {me} with {node}")])?;
    match client.request(
        Method::Post,
        "/cluster/join",
        Some(&json!({ "node": node })),
        &[],
    )? {
        Ok(_) => Ok(()),
        Err(f) => Err(refused(&f.reason)),
    }
}

/// grow's and shrink's table: vhost, name, size, result (as rabbitmq-queues).
fn results(
    g: &Global,
    rows: &Value,
    errors_only: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let columns: Vec<String> = ["vhost", "name", "size", "result"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<Value>> = rows
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|r| !errors_only || r["result"] != "ok")
        .map(|r| columns.iter().map(|c| r[c.as_str()].clone()).collect())
        .collect();
    if g.json() {
        write_json(out, &columns, &rows).map_err(io_error)
    } else {
        write_table(out, &columns, &rows, !g.no_table_headers).map_err(io_error)
    }
}
