//! `warrenctl`: rabbitmqctl's commands, flags and output for Warren, as a client of Warren's
//! HTTP management API (as lavinmqctl is for LavinMQ). It never links the broker.
//!
//! Layout:
//! - [`client`]: the HTTP client, and [`CtlError`] with rabbitmqctl's exit codes.
//! - [`listing`]: the `list_*` commands: paths, columns, banners.
//! - [`format`]: the `table` and `json` output formats.
//! - [`cluster`]: the `cluster_status` command.
//! - [`members`]: `rabbitmq-queues`' `add_member`, `delete_member`, `grow` and `shrink`;
//!   `join_cluster`, `forget_cluster_node`.
//! - [`super_streams`]: `rabbitmq-streams`' `add_super_stream`, `delete_super_stream`.
//! - this file: the command line and the other commands.

mod access;
mod client;
mod cluster;
mod format;
mod listing;
mod members;
mod super_streams;

use clap::{Args, Parser, Subcommand};
use client::{seg, Client, CtlError, Method};
use listing::Listing;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Manage a Warren broker with rabbitmqctl's commands, through its management API.
#[derive(Parser, Debug)]
#[command(name = "warrenctl", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes, before or after the command name (as rabbitmqctl).
#[derive(Args, Debug)]
pub(crate) struct Global {
    /// Management API URL (default http://127.0.0.1:15672; https://… for its TLS listener)
    #[arg(long, env = "WARRENCTL_URL", global = true)]
    url: Option<String>,
    /// CA certificates (PEM) to trust for an https:// URL, instead of the public web CAs
    #[arg(long, env = "WARRENCTL_CACERT", global = true, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate chain (PEM), for a broker that asks for one (with --key)
    #[arg(long, env = "WARRENCTL_CERT", global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(long, env = "WARRENCTL_KEY", global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Management API host, when --url is not given
    #[arg(
        long,
        env = "WARRENCTL_HOST",
        global = true,
        default_value = "127.0.0.1"
    )]
    host: String,
    /// Management API port, when --url is not given
    #[arg(long, env = "WARRENCTL_PORT", global = true, default_value_t = 15672)]
    port: u16,
    /// User to authenticate as
    #[arg(
        long,
        env = "WARRENCTL_USERNAME",
        global = true,
        default_value = "guest"
    )]
    username: String,
    /// Password of that user
    #[arg(
        long,
        env = "WARRENCTL_PASSWORD",
        global = true,
        default_value = "guest",
        hide_env_values = true
    )]
    password: String,
    /// Virtual host
    #[arg(short = 'p', long = "vhost", global = true, default_value = "/")]
    vhost: String,
    /// Print only the results, without informational lines
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    /// Leave out the header row of tables
    #[arg(long, global = true)]
    no_table_headers: bool,
    /// Output format
    #[arg(long, global = true, default_value = "table", value_parser = ["table", "json"])]
    formatter: String,
    /// Seconds to wait for the broker
    #[arg(short = 't', long, global = true, default_value_t = 60.0)]
    timeout: f64,
}

impl Global {
    fn base_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", self.host, self.port))
    }
    pub(crate) fn json(&self) -> bool {
        self.formatter == "json"
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Lists queues and their properties
    #[command(name = "list_queues")]
    ListQueues(Columns),
    /// Lists exchanges
    #[command(name = "list_exchanges")]
    ListExchanges(Columns),
    /// Lists all bindings on a vhost
    #[command(name = "list_bindings")]
    ListBindings(Columns),
    /// Lists AMQP 0-9-1 connections
    #[command(name = "list_connections")]
    ListConnections(Columns),
    /// Lists all channels
    #[command(name = "list_channels")]
    ListChannels(Columns),
    /// Lists all consumers for a vhost
    #[command(name = "list_consumers")]
    ListConsumers(Columns),
    /// Lists virtual hosts
    #[command(name = "list_vhosts")]
    ListVhosts(Columns),
    /// Lists stream protocol connections (rabbitmq-streams)
    #[command(name = "list_stream_connections")]
    ListStreamConnections(Columns),
    /// Lists all stream consumers for a vhost (rabbitmq-streams)
    #[command(name = "list_stream_consumers")]
    ListStreamConsumers(Columns),
    /// Lists all stream publishers for a vhost (rabbitmq-streams)
    #[command(name = "list_stream_publishers")]
    ListStreamPublishers(Columns),
    /// Displays status of the node
    Status,
    /// Displays all the nodes in the cluster, and which of them are running
    #[command(name = "cluster_status")]
    ClusterStatus,
    /// Makes the node asked (a cluster of its own) join the cluster of the given node
    #[command(name = "join_cluster")]
    JoinCluster {
        /// A node of the cluster to join (warren@host:port)
        node: String,
    },
    /// Removes a stopped node from the cluster, and its members from quorum queues
    #[command(name = "forget_cluster_node")]
    ForgetClusterNode {
        /// Node to forget (warren@host:port); it must not be running
        node: String,
    },
    /// Adds a quorum queue member (replica) on the given node (rabbitmq-queues)
    #[command(name = "add_member")]
    AddMember {
        /// Queue name
        queue: String,
        /// Node to add a new member on (warren@host:port)
        node: String,
    },
    /// Removes a quorum queue member (replica) on the given node (rabbitmq-queues)
    #[command(name = "delete_member")]
    DeleteMember {
        /// Queue name
        queue: String,
        /// Node to remove the member from (warren@host:port)
        node: String,
    },
    /// Grows quorum queue groups by adding a member on the given node to every quorum queue
    /// (all), or to those with an even number of members (even) (rabbitmq-queues)
    Grow {
        /// Node to place members on (warren@host:port)
        node: String,
        /// all | even
        strategy: String,
        /// Only list queues which reported an error
        #[arg(long)]
        errors_only: bool,
    },
    /// Shrinks quorum queue groups by removing any member on the given node (rabbitmq-queues)
    Shrink {
        /// Node to remove members from (warren@host:port)
        node: String,
        /// Only list queues which reported an error
        #[arg(long)]
        errors_only: bool,
    },
    /// Adds a super stream: a direct exchange and its partition streams (rabbitmq-streams)
    #[command(name = "add_super_stream")]
    AddSuperStream {
        /// Super stream name
        name: String,
        /// Number of partitions (streams NAME-0, NAME-1, …) [default: 3]
        #[arg(long)]
        partitions: Option<usize>,
        /// Comma-separated binding keys, a partition each (streams NAME-KEY)
        #[arg(long)]
        binding_keys: Option<String>,
        /// Each partition's maximum size (e.g. 20gb)
        #[arg(long)]
        max_length_bytes: Option<String>,
        /// Each partition's maximum age (e.g. 7D)
        #[arg(long)]
        max_age: Option<String>,
        /// Each partition's segment size
        #[arg(long)]
        stream_max_segment_size_bytes: Option<String>,
    },
    /// Deletes a super stream and its partitions (rabbitmq-streams)
    #[command(name = "delete_super_stream")]
    DeleteSuperStream {
        /// Super stream name
        name: String,
    },
    /// Purges a queue (removes all ready messages in it)
    #[command(name = "purge_queue")]
    PurgeQueue {
        /// Queue name
        queue: String,
    },
    /// Deletes a queue
    #[command(name = "delete_queue")]
    DeleteQueue {
        /// Queue name
        queue: String,
        /// Delete only if the queue has no ready messages
        #[arg(short = 'e', long)]
        if_empty: bool,
        /// Delete only if the queue has no consumers
        #[arg(short = 'u', long)]
        if_unused: bool,
    },
    /// Closes a connection (by its name, see list_connections name) with a reason
    #[command(name = "close_connection")]
    CloseConnection {
        /// Connection name, e.g. "127.0.0.1:50000 -> 127.0.0.1:5672"
        connection: String,
        /// Reason given to the client
        explanation: String,
    },
    /// Exports definitions in JSON to a file, or to standard output with "-"
    #[command(name = "export_definitions")]
    ExportDefinitions {
        /// File path, or "-"
        path: String,
    },
    /// Imports definitions in JSON from a file, or from standard input with "-"
    #[command(name = "import_definitions")]
    ImportDefinitions {
        /// File path, or "-"
        path: String,
    },
    /// Sets or updates a policy
    #[command(name = "set_policy")]
    SetPolicy(PolicyArgs),
    /// Clears (removes) a policy
    #[command(name = "clear_policy")]
    ClearPolicy {
        /// Policy name
        name: String,
    },
    /// Lists all policies in a virtual host
    #[command(name = "list_policies")]
    ListPolicies(Columns),
    /// Sets an operator policy that overrides a subset of arguments in user policies
    #[command(name = "set_operator_policy")]
    SetOperatorPolicy(PolicyArgs),
    /// Clears an operator policy
    #[command(name = "clear_operator_policy")]
    ClearOperatorPolicy {
        /// Policy name
        name: String,
    },
    /// Lists operator policy overrides for a virtual host
    #[command(name = "list_operator_policies")]
    ListOperatorPolicies(Columns),
    /// Sets the memory high watermark until the node restarts: a fraction of the RAM available
    /// to it (e.g. 0.4), or "absolute" and a size (e.g. absolute 2GB)
    #[command(name = "set_vm_memory_high_watermark")]
    SetVmMemoryHighWatermark {
        /// <fraction> | absolute <size>
        #[arg(num_args = 1..=2, required = true, value_name = "VALUE")]
        value: Vec<String>,
    },
    /// Sets the disk free space limit until the node restarts: a size (e.g. 50MB), or
    /// "mem_relative" and a fraction of the RAM available to the node (e.g. mem_relative 1.5)
    #[command(name = "set_disk_free_limit")]
    SetDiskFreeLimit {
        /// <size> | mem_relative <fraction>
        #[arg(num_args = 1..=2, required = true, value_name = "VALUE")]
        value: Vec<String>,
    },
    /// Users, vhosts, permissions and limits
    #[command(flatten)]
    Access(access::AccessCommand),
    /// Displays warrenctl's version
    Version,
}

#[derive(Args, Debug)]
struct PolicyArgs {
    /// Policy name
    name: String,
    /// Regular expression matching queue or exchange names
    pattern: String,
    /// Policy definition, a JSON object, e.g. '{"max-length": 1000}'
    definition: String,
    /// Policy priority (the highest matching one applies)
    #[arg(long, default_value_t = 0)]
    priority: i64,
    /// What the policy applies to: queues, exchanges or all
    #[arg(long, default_value = "all", value_parser = ["queues", "classic_queues", "quorum_queues", "exchanges", "all"])]
    apply_to: String,
}

#[derive(Args, Debug)]
struct Columns {
    /// Columns (info keys) to show
    columns: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let mut out = std::io::stdout().lock();
    // Output still buffered when `run` returns must reach stdout too (a full disk, a closed
    // pipe): otherwise the command would look successful with its output cut short.
    match run(&cli, &mut out).and_then(|()| out.flush().map_err(io_error)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // What was written before the error goes first; if stdout itself is what failed,
            // the error below is the one to report.
            let _ = out.flush();
            eprintln!("Error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A command line clap refused: help and version as asked, anything else as one line and
/// exit code 64, as rabbitmqctl.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        // Printing help (here and below) can only fail on a closed stdout: no one to tell.
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = e.print();
            return ExitCode::from(64);
        }
        _ => {}
    }
    let line = match (e.kind(), e.get(ContextKind::InvalidSubcommand)) {
        (ErrorKind::InvalidSubcommand, Some(ContextValue::String(cmd))) => {
            format!("command '{cmd}' not found. Run 'warrenctl help' for the list of commands.")
        }
        _ => {
            // clap's message is its first paragraph (argument names may follow on lines of
            // their own); the usage and tips after it are left out.
            let text = e.render().to_string();
            let paragraph: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = paragraph.join(" ");
            format!(
                "{}. Run 'warrenctl help <command>' for its usage.",
                message.trim_start_matches("error: ")
            )
        }
    };
    eprintln!("Error: {line}");
    ExitCode::from(64)
}

pub(crate) fn io_error(e: std::io::Error) -> CtlError {
    CtlError::Software(format!("cannot write the output: {e}"))
}

fn run(cli: &Cli, out: &mut impl Write) -> Result<(), CtlError> {
    let g = &cli.global;
    if !(g.timeout > 0.0 && g.timeout.is_finite()) {
        return Err(CtlError::Usage(format!(
            "--timeout must be a positive number of seconds, not {}",
            g.timeout
        )));
    }
    let tls = client::tls_config(g.cacert.as_deref(), g.cert.as_deref(), g.key.as_deref())?;
    let client = Client::new(&g.base_url(), &g.username, &g.password, g.timeout, tls);
    match &cli.command {
        Command::ListQueues(c) => list(&client, g, Listing::Queues, &c.columns, out),
        Command::ListExchanges(c) => list(&client, g, Listing::Exchanges, &c.columns, out),
        Command::ListBindings(c) => list(&client, g, Listing::Bindings, &c.columns, out),
        Command::ListConnections(c) => list(&client, g, Listing::Connections, &c.columns, out),
        Command::ListChannels(c) => list(&client, g, Listing::Channels, &c.columns, out),
        Command::ListConsumers(c) => list(&client, g, Listing::Consumers, &c.columns, out),
        Command::ListVhosts(c) => list(&client, g, Listing::VHosts, &c.columns, out),
        Command::ListStreamConnections(c) => {
            list(&client, g, Listing::StreamConnections, &c.columns, out)
        }
        Command::ListStreamConsumers(c) => {
            list(&client, g, Listing::StreamConsumers, &c.columns, out)
        }
        Command::ListStreamPublishers(c) => {
            list(&client, g, Listing::StreamPublishers, &c.columns, out)
        }
        Command::Status => status(&client, g, out),
        Command::ClusterStatus => cluster::cluster_status(&client, g, out),
        Command::AddMember { queue, node } => members::add_member(&client, g, queue, node, out),
        Command::DeleteMember { queue, node } => {
            members::delete_member(&client, g, queue, node, out)
        }
        Command::Grow {
            node,
            strategy,
            errors_only,
        } => members::grow(&client, g, node, strategy, *errors_only, out),
        Command::JoinCluster { node } => members::join_cluster(&client, g, node, out),
        Command::ForgetClusterNode { node } => members::forget_cluster_node(&client, g, node, out),
        Command::Shrink { node, errors_only } => {
            members::shrink(&client, g, node, *errors_only, out)
        }
        Command::AddSuperStream {
            name,
            partitions,
            binding_keys,
            max_length_bytes,
            max_age,
            stream_max_segment_size_bytes,
        } => {
            let arguments = [
                ("max-length-bytes", max_length_bytes),
                ("max-age", max_age),
                (
                    "stream-max-segment-size-bytes",
                    stream_max_segment_size_bytes,
                ),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect();
            let o = super_streams::SuperStreamOptions {
                partitions: *partitions,
                binding_keys: binding_keys.as_deref(),
                arguments,
            };
            super_streams::add_super_stream(&client, g, name, o, out)
        }
        Command::DeleteSuperStream { name } => {
            super_streams::delete_super_stream(&client, g, name, out)
        }
        Command::PurgeQueue { queue } => purge_queue(&client, g, queue, out),
        Command::DeleteQueue {
            queue,
            if_empty,
            if_unused,
        } => delete_queue(&client, g, queue, *if_empty, *if_unused, out),
        Command::CloseConnection {
            connection,
            explanation,
        } => close_connection(&client, g, connection, explanation, out),
        Command::ExportDefinitions { path } => export_definitions(&client, g, path, out),
        Command::ImportDefinitions { path } => import_definitions(&client, g, path, out),
        Command::SetPolicy(p) => set_policy(&client, g, p, false, out),
        Command::SetOperatorPolicy(p) => set_policy(&client, g, p, true, out),
        Command::ClearPolicy { name } => clear_policy(&client, g, name, false, out),
        Command::ClearOperatorPolicy { name } => clear_policy(&client, g, name, true, out),
        Command::ListPolicies(c) => list(&client, g, Listing::Policies, &c.columns, out),
        Command::ListOperatorPolicies(c) => {
            list(&client, g, Listing::OperatorPolicies, &c.columns, out)
        }
        Command::SetVmMemoryHighWatermark { value } => {
            set_limit(&client, g, Limit::MemoryHighWatermark, value, out)
        }
        Command::SetDiskFreeLimit { value } => set_limit(&client, g, Limit::DiskFree, value, out),
        Command::Access(c) => access::run(&client, g, c, out),
        Command::Version => writeln!(out, "{}", env!("CARGO_PKG_VERSION")).map_err(io_error),
    }
}

/// Informational lines: only in the table format and without `-q`.
pub(crate) fn info(g: &Global, out: &mut impl Write, lines: &[String]) -> Result<(), CtlError> {
    if !g.quiet && !g.json() {
        for l in lines {
            writeln!(out, "{l}").map_err(io_error)?;
        }
        out.flush().map_err(io_error)?;
    }
    Ok(())
}

fn list(
    client: &Client,
    g: &Global,
    what: Listing,
    requested: &[String],
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let columns = what.resolve_columns(requested)?;
    let items = what.fetch(client, &g.vhost)?;
    info(g, out, &what.banner(&g.vhost, g.timeout))?;
    let rows: Vec<Vec<Value>> = items
        .iter()
        .map(|o| columns.iter().map(|c| what.value(c, o)).collect())
        .collect();
    if g.json() {
        format::write_json(out, &columns, &rows).map_err(io_error)
    } else {
        format::write_table(out, &columns, &rows, !g.no_table_headers).map_err(io_error)
    }
}

fn status(client: &Client, g: &Global, out: &mut impl Write) -> Result<(), CtlError> {
    let overview = client.get("/overview")?;
    let node = client.get("/nodes")?.get(0).cloned().unwrap_or(Value::Null);
    let name = overview["node"].as_str().unwrap_or("?");
    let totals = &overview["object_totals"];
    let uptime_secs = node["uptime"].as_u64().unwrap_or(0) / 1000;
    let alarms: Vec<String> = [
        ("mem_alarm", "Memory alarm on node"),
        ("disk_free_alarm", "Free disk space alarm on node"),
    ]
    .iter()
    .filter(|(k, _)| node[*k].as_bool() == Some(true))
    .map(|(_, what)| format!("{what} {name}"))
    .collect();
    let listeners: Vec<&Value> = overview["listeners"]
        .as_array()
        .map(|l| l.iter().collect())
        .unwrap_or_default();
    if g.json() {
        let s = json!({
            "node_name": name,
            "os_pid": node["os_pid"],
            "uptime": uptime_secs,
            "product_name": overview["product_name"],
            "product_version": overview["product_version"],
            "rabbitmq_version": overview["rabbitmq_version"],
            "alarms": alarms,
            "memory_used": node["mem_used"],
            "totals": {
                "connection_count": totals["connections"],
                "queue_count": totals["queues"],
                "virtual_host_count": totals["vhosts"],
            },
            "listeners": listeners,
        });
        return writeln!(out, "{s}").map_err(io_error);
    }
    info(g, out, &[format!("Status of node {name} ...")])?;
    let purpose = |p: &str| match p {
        "amqp" => "AMQP 0-9-1",
        "http" => "HTTP API",
        "https" => "HTTP API over TLS (HTTPS)",
        _ => "",
    };
    let mut text = vec![
        "Runtime".to_string(),
        String::new(),
        format!("OS PID: {}", node["os_pid"].as_str().unwrap_or("?")),
        format!("Uptime (seconds): {uptime_secs}"),
        format!(
            "{} version: {}",
            overview["product_name"].as_str().unwrap_or("Warren"),
            overview["product_version"].as_str().unwrap_or("?")
        ),
        format!(
            "RabbitMQ compatibility version: {}",
            overview["rabbitmq_version"].as_str().unwrap_or("?")
        ),
        format!("Node name: {name}"),
        String::new(),
        "Alarms".into(),
        String::new(),
        if alarms.is_empty() {
            "(none)".into()
        } else {
            alarms.join("\n")
        },
        String::new(),
        "Memory".into(),
        String::new(),
        format!(
            "Total memory used: {:.4} gb",
            node["mem_used"].as_f64().unwrap_or(0.0) / 1e9
        ),
        String::new(),
        "Totals".into(),
        String::new(),
        format!("Connection count: {}", totals["connections"]),
        format!("Queue count: {}", totals["queues"]),
        format!("Virtual host count: {}", totals["vhosts"]),
        String::new(),
        "Listeners".into(),
        String::new(),
    ];
    for l in listeners {
        let protocol = l["protocol"].as_str().unwrap_or("?");
        text.push(format!(
            "Interface: {}, port: {}, protocol: {protocol}, purpose: {}",
            l["ip_address"].as_str().unwrap_or("?"),
            l["port"],
            purpose(protocol)
        ));
    }
    for line in text {
        writeln!(out, "{line}").map_err(io_error)?;
    }
    Ok(())
}

fn policy_path(g: &Global, name: &str, operator: bool) -> String {
    let kind = if operator {
        "operator-policies"
    } else {
        "policies"
    };
    format!("/{kind}/{}/{}", seg(&g.vhost), seg(name))
}

fn set_policy(
    client: &Client,
    g: &Global,
    p: &PolicyArgs,
    operator: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let definition: Value = serde_json::from_str(&p.definition).map_err(|e| {
        CtlError::Usage(format!("the policy definition is not valid JSON ({e}); write it like '{{\"max-length\": 1000}}'"))
    })?;
    let what = if operator {
        "operator policy"
    } else {
        "policy"
    };
    info(
        g,
        out,
        &[format!(
            "Setting {what} \"{}\" for pattern \"{}\" to \"{}\" with priority \"{}\" for vhost \"{}\" ...",
            p.name, p.pattern, p.definition, p.priority, g.vhost
        )],
    )?;
    let body = serde_json::json!({
        "pattern": p.pattern, "definition": definition, "priority": p.priority, "apply-to": p.apply_to,
    });
    match client.request(
        Method::Put,
        &policy_path(g, &p.name, operator),
        Some(&body),
        &[],
    )? {
        Ok(_) => Ok(()),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

/// The alarm limits `set_vm_memory_high_watermark` and `set_disk_free_limit` change.
#[derive(Clone, Copy)]
enum Limit {
    MemoryHighWatermark,
    DiskFree,
}

/// PUT `/api/nodes/{node}/memory-high-watermark` or `/disk-free-limit`: `<fraction>` or
/// `absolute <size>` for the watermark, `<size>` or `mem_relative <fraction>` for the disk.
fn set_limit(
    client: &Client,
    g: &Global,
    limit: Limit,
    value: &[String],
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let (path, what, relative) = match limit {
        Limit::MemoryHighWatermark => ("memory-high-watermark", "memory threshold", "relative"),
        Limit::DiskFree => ("disk-free-limit", "disk free limit", "mem_relative"),
    };
    let fraction = |f: &str| -> Result<Value, CtlError> {
        match f.parse::<f64>() {
            Ok(x) if x >= 0.0 && x.is_finite() => Ok(json!({ relative: x })),
            _ => Err(CtlError::Usage(format!(
                "{f:?} is not a fraction (a number such as 0.4)"
            ))),
        }
    };
    let body = match (limit, value) {
        (Limit::MemoryHighWatermark, [f]) => fraction(f)?,
        (Limit::MemoryHighWatermark, [kw, size]) if kw == "absolute" => json!({"absolute": size}),
        (Limit::DiskFree, [size]) => json!({"absolute": size}),
        (Limit::DiskFree, [kw, f]) if kw == "mem_relative" => fraction(f)?,
        _ => {
            return Err(CtlError::Usage(match limit {
                Limit::MemoryHighWatermark => {
                    "expected <fraction> or absolute <size>, e.g. 0.4 or absolute 2GB".into()
                }
                Limit::DiskFree => {
                    "expected <size> or mem_relative <fraction>, e.g. 50MB or mem_relative 1.5"
                        .into()
                }
            }))
        }
    };
    let node = client.get("/overview")?["node"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    info(
        g,
        out,
        &[format!(
            "Setting {what} on {node} to {} ...",
            value.join(" ")
        )],
    )?;
    match client.request(
        Method::Put,
        &format!("/nodes/{}/{path}", seg(&node)),
        Some(&body),
        &[],
    )? {
        Ok(_) => Ok(()),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

fn clear_policy(
    client: &Client,
    g: &Global,
    name: &str,
    operator: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let what = if operator {
        "operator policy"
    } else {
        "policy"
    };
    info(
        g,
        out,
        &[format!(
            "Clearing {what} \"{name}\" on vhost \"{}\" ...",
            g.vhost
        )],
    )?;
    match client.request(Method::Delete, &policy_path(g, name, operator), None, &[])? {
        Ok(_) => Ok(()),
        Err(f) if f.status == 404 => Err(CtlError::Failed(format!(
            "Parameter does not exist: no {what} '{name}' in vhost '{}'. See 'warrenctl list_policies -p {}'.",
            g.vhost, g.vhost
        ))),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

fn queue_path(g: &Global, queue: &str) -> String {
    format!("/queues/{}/{}", seg(&g.vhost), seg(queue))
}

fn no_queue(g: &Global, queue: &str) -> String {
    format!(
        "no queue '{queue}' in vhost '{}'. See the queues with 'warrenctl list_queues -p {}'.",
        g.vhost, g.vhost
    )
}

fn purge_queue(
    client: &Client,
    g: &Global,
    queue: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    info(
        g,
        out,
        &[format!(
            "Purging queue '{queue}' in vhost '{}' ...",
            g.vhost
        )],
    )?;
    match client.request(
        Method::Delete,
        &format!("{}/contents", queue_path(g, queue)),
        None,
        &[],
    )? {
        Ok(_) => Ok(()),
        Err(f) if f.status == 404 => Err(CtlError::Failed(no_queue(g, queue))),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

fn delete_queue(
    client: &Client,
    g: &Global,
    queue: &str,
    if_empty: bool,
    if_unused: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    info(
        g,
        out,
        &[format!(
            "Deleting queue '{queue}' on vhost '{}' ...",
            g.vhost
        )],
    )?;
    // rabbitmqctl exits 64 for a missing queue here.
    let ready = match client.request(Method::Get, &queue_path(g, queue), None, &[])? {
        Ok(q) => q["messages_ready"].as_u64().unwrap_or(0),
        Err(f) if f.status == 404 => return Err(CtlError::Usage(no_queue(g, queue))),
        Err(f) => return Err(CtlError::Failed(f.reason)),
    };
    let path = format!(
        "{}?if-empty={if_empty}&if-unused={if_unused}",
        queue_path(g, queue)
    );
    match client.request(Method::Delete, &path, None, &[])? {
        Ok(_) => writeln!(
            out,
            "Queue was successfully deleted with {ready} ready messages"
        )
        .map_err(io_error),
        Err(f) if f.status == 404 => Err(CtlError::Usage(no_queue(g, queue))),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

fn close_connection(
    client: &Client,
    g: &Global,
    connection: &str,
    explanation: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    info(
        g,
        out,
        &[format!(
            "Closing connection {connection}, reason: {explanation}..."
        )],
    )?;
    // Header values are visible ASCII; anything else would be refused before sending.
    let reason: String = explanation
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let path = format!("/connections/{}", seg(connection));
    match client.request(Method::Delete, &path, None, &[("x-reason", &reason)])? {
        Ok(_) => Ok(()),
        Err(f) if f.status == 404 => Err(CtlError::Failed(format!(
            "no connection named '{connection}'. See the names with 'warrenctl list_connections name'."
        ))),
        Err(f) => Err(CtlError::Failed(f.reason)),
    }
}

fn export_definitions(
    client: &Client,
    g: &Global,
    path: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let defs = client.get("/definitions")?;
    if path == "-" {
        return writeln!(out, "{defs}").map_err(io_error);
    }
    info(
        g,
        out,
        &[format!(
            "Exporting definitions in JSON to a file at \"{path}\" ..."
        )],
    )?;
    let text =
        serde_json::to_string_pretty(&defs).map_err(|e| CtlError::Software(e.to_string()))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| CtlError::Data(format!("cannot write {path}: {e}")))
}

fn import_definitions(
    client: &Client,
    g: &Global,
    path: &str,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CtlError::Data(format!("cannot read standard input: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CtlError::Data(format!("cannot read {path}: {e}")))?
    };
    let defs: Value = serde_json::from_str(&text).map_err(|e| {
        CtlError::Data(format!(
            "{} is not a JSON definitions file: {e}",
            if path == "-" { "the input" } else { path }
        ))
    })?;
    let source = if path == "-" {
        "standard input".to_string()
    } else {
        format!("a file at \"{path}\"")
    };
    info(
        g,
        out,
        &[format!("Importing definitions in JSON from {source} ...")],
    )?;
    match client.request(Method::Post, "/definitions", Some(&defs), &[])? {
        Ok(_) => info(g, out, &["Successfully imported definitions.".into()]),
        Err(f) => Err(CtlError::Failed(format!("the import failed: {}", f.reason))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_go_before_or_after_the_command() {
        let a = Cli::try_parse_from(["warrenctl", "-q", "list_queues", "-p", "v", "name"]).unwrap();
        let b = Cli::try_parse_from(["warrenctl", "list_queues", "name", "-q", "--vhost", "v"])
            .unwrap();
        assert!(a.global.quiet && b.global.quiet);
        assert_eq!(a.global.vhost, "v");
        assert_eq!(b.global.vhost, "v");
    }

    #[test]
    fn rabbitmq_queues_membership_commands_take_its_arguments() {
        let c =
            Cli::try_parse_from(["warrenctl", "add_member", "-p", "v", "q", "warren@h:1"]).unwrap();
        assert!(
            matches!(&c.command, Command::AddMember { queue, node } if queue == "q" && node == "warren@h:1")
        );
        assert_eq!(c.global.vhost, "v");
        let c = Cli::try_parse_from(["warrenctl", "delete_member", "q", "warren@h:1"]).unwrap();
        assert!(matches!(&c.command, Command::DeleteMember { .. }));
        let c = Cli::try_parse_from(["warrenctl", "grow", "warren@h:1", "even", "--errors-only"])
            .unwrap();
        assert!(
            matches!(&c.command, Command::Grow { strategy, errors_only: true, .. } if strategy == "even")
        );
        let c = Cli::try_parse_from(["warrenctl", "shrink", "warren@h:1"]).unwrap();
        assert!(matches!(
            &c.command,
            Command::Shrink {
                errors_only: false,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["warrenctl", "grow", "warren@h:1"]).is_err());
        let c = Cli::try_parse_from(["warrenctl", "join_cluster", "warren@h:1"]).unwrap();
        assert!(matches!(&c.command, Command::JoinCluster { node } if node == "warren@h:1"));
        let c = Cli::try_parse_from(["warrenctl", "forget_cluster_node", "warren@h:2"]).unwrap();
        assert!(matches!(&c.command, Command::ForgetClusterNode { node } if node == "warren@h:2"));
        assert!(Cli::try_parse_from(["warrenctl", "join_cluster"]).is_err());
    }
}
