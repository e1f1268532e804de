//! rabbitmqctl's access-control commands: users, vhosts, permissions and limits, through the
//! management API's `/api/users`, `/api/vhosts`, `/api/permissions` and `/api/*-limits`.

use super::{info, io_error, Global};
use crate::client::{seg, Client, CtlError, Method};
use crate::format::{write_json, write_table};
use clap::Subcommand;
use serde_json::{json, Value};
use std::io::Write;

/// A vhost's metadata, as `rabbitmqctl add_vhost` and `update_vhost_metadata` take it.
#[derive(clap::Args, Debug)]
pub struct VhostMetadataArgs {
    /// A description of the virtual host
    #[arg(long)]
    description: Option<String>,
    /// Comma-separated tags
    #[arg(long)]
    tags: Option<String>,
    /// The type of the queues declared without x-queue-type: classic, quorum or stream
    #[arg(long = "default-queue-type", value_name = "TYPE")]
    default_queue_type: Option<String>,
}

impl VhostMetadataArgs {
    /// The PUT body: only what was given (the rest stays as it is).
    fn body(&self) -> Result<Option<Value>, CtlError> {
        let mut body = serde_json::Map::new();
        if let Some(d) = &self.description {
            body.insert("description".into(), d.clone().into());
        }
        if let Some(t) = &self.tags {
            body.insert("tags".into(), t.clone().into());
        }
        if let Some(t) = &self.default_queue_type {
            // rabbitmqctl's check and exit code (64) before anything is sent.
            if !["classic", "quorum", "stream"].contains(&t.as_str()) {
                return Err(CtlError::Usage(format!(
                    "Unsupported default queue type '{t}': use classic, quorum or stream"
                )));
            }
            body.insert("default_queue_type".into(), t.clone().into());
        }
        Ok((!body.is_empty()).then_some(Value::Object(body)))
    }
}

#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Creates a new user in the internal database
    #[command(name = "add_user")]
    AddUser {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Password
        #[arg(value_name = "PASSWORD")]
        secret: String,
    },
    /// Removes a user from the internal database
    #[command(name = "delete_user")]
    DeleteUser {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Changes the user password
    #[command(name = "change_password")]
    ChangePassword {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
        /// New password
        #[arg(value_name = "NEW_PASSWORD")]
        secret: String,
    },
    /// Sets user tags (administrator, monitoring, management, policymaker, or none)
    #[command(name = "set_user_tags")]
    SetUserTags {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Tags; none clears them
        tags: Vec<String>,
    },
    /// Lists users and their tags
    #[command(name = "list_users")]
    ListUsers,
    /// Creates a virtual host
    #[command(name = "add_vhost")]
    AddVhost {
        /// Virtual host name
        #[arg(value_name = "VHOST")]
        name: String,
        #[command(flatten)]
        metadata: VhostMetadataArgs,
    },
    /// Updates a virtual host's description, tags or default queue type
    #[command(name = "update_vhost_metadata")]
    UpdateVhostMetadata {
        /// Virtual host name
        #[arg(value_name = "VHOST")]
        name: String,
        #[command(flatten)]
        metadata: VhostMetadataArgs,
    },
    /// Deletes a virtual host, its queues and exchanges, and closes its connections
    #[command(name = "delete_vhost")]
    DeleteVhost {
        /// Virtual host name
        #[arg(value_name = "VHOST")]
        name: String,
    },
    /// Sets user permissions in a virtual host (-p)
    #[command(name = "set_permissions")]
    SetPermissions {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Regular expression of the resources the user may configure
        conf: String,
        /// Regular expression of the resources the user may write to
        write: String,
        /// Regular expression of the resources the user may read from
        read: String,
    },
    /// Revokes user permissions in a virtual host (-p)
    #[command(name = "clear_permissions")]
    ClearPermissions {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Lists user permissions in a virtual host (-p)
    #[command(name = "list_permissions")]
    ListPermissions,
    /// Lists permissions of a user across virtual hosts
    #[command(name = "list_user_permissions")]
    ListUserPermissions {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
    },
    /// Sets user limits, e.g. '{"max-connections": 10, "max-channels": 20}'
    #[command(name = "set_user_limits")]
    SetUserLimits {
        /// User name
        #[arg(value_name = "USERNAME")]
        user: String,
        /// Limits as a JSON object
        definition: String,
    },
    /// Sets virtual host limits (-p), e.g. '{"max-connections": 100, "max-queues": 50}'
    #[command(name = "set_vhost_limits")]
    SetVhostLimits {
        /// Limits as a JSON object
        definition: String,
    },
}

fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Result<Value, crate::client::ApiFailure>, CtlError> {
    client.request(method, path, body.as_ref(), &[])
}

fn failed(f: crate::client::ApiFailure) -> CtlError {
    CtlError::Failed(f.reason)
}

fn user_exists(client: &Client, user: &str) -> Result<bool, CtlError> {
    match call(client, Method::Get, &format!("/users/{}", seg(user)), None)? {
        Ok(_) => Ok(true),
        Err(f) if f.status == 404 => Ok(false),
        Err(f) => Err(failed(f)),
    }
}

fn no_user(user: &str) -> CtlError {
    CtlError::Failed(format!("User \"{user}\" does not exist"))
}

/// A table (or JSON rows) of the given columns.
fn table(
    g: &Global,
    out: &mut impl Write,
    columns: &[&str],
    rows: Vec<Vec<Value>>,
) -> Result<(), CtlError> {
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    if g.json() {
        write_json(out, &columns, &rows).map_err(io_error)
    } else {
        write_table(out, &columns, &rows, !g.no_table_headers).map_err(io_error)
    }
}

/// Tags as rabbitmqctl prints them: `[a, b]`.
pub(crate) fn tags_cell(tags: &Value) -> Value {
    let t: Vec<&str> = tags
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Value::String(format!("[{}]", t.join(", ")))
}

fn limits_body(definition: &str) -> Result<serde_json::Map<String, Value>, CtlError> {
    match serde_json::from_str::<Value>(definition) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(CtlError::Usage(format!(
            "limits must be a JSON object, e.g. '{{\"max-connections\": 10}}', not {definition}"
        ))),
    }
}

pub fn run(
    client: &Client,
    g: &Global,
    cmd: &AccessCommand,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    use AccessCommand::*;
    let vh = &g.vhost;
    match cmd {
        AddUser {
            user: username,
            secret: password,
        } => {
            info(g, out, &[format!("Adding user \"{username}\" ...")])?;
            if user_exists(client, username)? {
                return Err(CtlError::Failed(format!("user_already_exists: {username}")));
            }
            call(
                client,
                Method::Put,
                &format!("/users/{}", seg(username)),
                Some(json!({"password": password, "tags": ""})),
            )?
            .map_err(failed)?;
            info(g, out, &["Done. Don't forget to grant the user permissions to some virtual hosts! See 'warrenctl help set_permissions' to learn more.".into()])
        }
        DeleteUser { user: username } => {
            info(g, out, &[format!("Deleting user \"{username}\" ...")])?;
            match call(
                client,
                Method::Delete,
                &format!("/users/{}", seg(username)),
                None,
            )? {
                Ok(_) => Ok(()),
                Err(f) if f.status == 404 => Err(no_user(username)),
                Err(f) => Err(failed(f)),
            }
        }
        ChangePassword {
            user: username,
            secret: password,
        } => {
            info(
                g,
                out,
                &[format!("Changing password for user \"{username}\" ...")],
            )?;
            update_user(client, username, json!({"password": password}))
        }
        SetUserTags {
            user: username,
            tags,
        } => {
            let tags: Vec<&String> = tags.iter().filter(|t| t.as_str() != "none").collect();
            let shown: Vec<&str> = tags.iter().map(|t| t.as_str()).collect();
            info(
                g,
                out,
                &[format!(
                    "Setting tags for user \"{username}\" to [{}] ...",
                    shown.join(", ")
                )],
            )?;
            update_user(client, username, json!({"tags": tags}))
        }
        ListUsers => {
            let users = call(client, Method::Get, "/users", None)?.map_err(failed)?;
            info(g, out, &["Listing users ...".into()])?;
            let rows = users
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| vec![u["name"].clone(), tags_cell(&u["tags"])])
                .collect();
            table(g, out, &["user", "tags"], rows)
        }
        AddVhost {
            name: vhost,
            metadata,
        } => {
            info(g, out, &[format!("Adding vhost \"{vhost}\" ...")])?;
            call(
                client,
                Method::Put,
                &format!("/vhosts/{}", seg(vhost)),
                metadata.body()?,
            )?
            .map_err(failed)
            .map(|_| ())
        }
        UpdateVhostMetadata {
            name: vhost,
            metadata,
        } => {
            info(
                g,
                out,
                &[format!("Updating metadata of vhost \"{vhost}\" ...")],
            )?;
            // The PUT would create a vhost that is not there: look first.
            call(
                client,
                Method::Get,
                &format!("/vhosts/{}", seg(vhost)),
                None,
            )?
            .map_err(failed)?;
            call(
                client,
                Method::Put,
                &format!("/vhosts/{}", seg(vhost)),
                metadata.body()?,
            )?
            .map_err(failed)
            .map(|_| ())
        }
        DeleteVhost { name: vhost } => {
            info(g, out, &[format!("Deleting vhost \"{vhost}\" ...")])?;
            match call(
                client,
                Method::Delete,
                &format!("/vhosts/{}", seg(vhost)),
                None,
            )? {
                Ok(_) => Ok(()),
                Err(f) if f.status == 404 => Err(CtlError::Failed(format!(
                    "Virtual host '{vhost}' does not exist"
                ))),
                Err(f) => Err(failed(f)),
            }
        }
        SetPermissions {
            user: username,
            conf,
            write,
            read,
        } => {
            info(
                g,
                out,
                &[format!(
                    "Setting permissions for user \"{username}\" in vhost \"{vh}\" ..."
                )],
            )?;
            match call(
                client,
                Method::Put,
                &format!("/permissions/{}/{}", seg(vh), seg(username)),
                Some(json!({"configure": conf, "write": write, "read": read})),
            )? {
                Ok(_) => Ok(()),
                Err(f) if f.reason == "vhost_or_user_not_found" => {
                    if user_exists(client, username)? {
                        Err(CtlError::Failed(format!(
                            "Virtual host '{vh}' does not exist"
                        )))
                    } else {
                        Err(no_user(username))
                    }
                }
                Err(f) => Err(failed(f)),
            }
        }
        ClearPermissions { user: username } => {
            info(
                g,
                out,
                &[format!(
                    "Clearing permissions for user \"{username}\" in vhost \"{vh}\" ..."
                )],
            )?;
            match call(
                client,
                Method::Delete,
                &format!("/permissions/{}/{}", seg(vh), seg(username)),
                None,
            )? {
                Ok(_) => Ok(()),
                // As rabbitmqctl: clearing what is not there succeeds, unless the user is
                // unknown.
                Err(f) if f.status == 404 => {
                    if user_exists(client, username)? {
                        Ok(())
                    } else {
                        Err(no_user(username))
                    }
                }
                Err(f) => Err(failed(f)),
            }
        }
        ListPermissions => {
            let perms = match call(
                client,
                Method::Get,
                &format!("/vhosts/{}/permissions", seg(vh)),
                None,
            )? {
                Ok(v) => v,
                Err(f) if f.status == 404 => {
                    return Err(CtlError::Failed(format!(
                        "Virtual host '{vh}' does not exist"
                    )))
                }
                Err(f) => return Err(failed(f)),
            };
            info(
                g,
                out,
                &[format!("Listing permissions for vhost \"{vh}\" ...")],
            )?;
            let cols = ["user", "configure", "write", "read"];
            table(g, out, &cols, pick_rows(&perms, &cols))
        }
        ListUserPermissions { user: username } => {
            let perms = match call(
                client,
                Method::Get,
                &format!("/users/{}/permissions", seg(username)),
                None,
            )? {
                Ok(v) => v,
                Err(f) if f.status == 404 => return Err(no_user(username)),
                Err(f) => return Err(failed(f)),
            };
            info(
                g,
                out,
                &[format!("Listing permissions for user \"{username}\" ...")],
            )?;
            let cols = ["vhost", "configure", "write", "read"];
            table(g, out, &cols, pick_rows(&perms, &cols))
        }
        SetUserLimits {
            user: username,
            definition,
        } => {
            let limits = limits_body(definition)?;
            info(
                g,
                out,
                &[format!(
                    "Setting user limits to \"{definition}\" for user \"{username}\" ..."
                )],
            )?;
            for (name, value) in limits {
                match call(
                    client,
                    Method::Put,
                    &format!("/user-limits/{}/{}", seg(username), seg(&name)),
                    Some(json!({ "value": value })),
                )? {
                    Ok(_) => {}
                    Err(f) if f.status == 404 => return Err(no_user(username)),
                    Err(f) => return Err(failed(f)),
                }
            }
            Ok(())
        }
        SetVhostLimits { definition } => {
            let limits = limits_body(definition)?;
            info(
                g,
                out,
                &[format!(
                    "Applying limits \"{definition}\" to vhost \"{vh}\" ..."
                )],
            )?;
            for (name, value) in limits {
                call(
                    client,
                    Method::Put,
                    &format!("/vhost-limits/{}/{}", seg(vh), seg(&name)),
                    Some(json!({ "value": value })),
                )?
                .map_err(failed)?;
            }
            Ok(())
        }
    }
}

/// The `keys` of each object in a JSON array, as table rows.
fn pick_rows(list: &Value, keys: &[&str]) -> Vec<Vec<Value>> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|o| keys.iter().map(|k| o[*k].clone()).collect())
        .collect()
}

/// PUT on an existing user (change_password, set_user_tags); a missing user is an error that
/// says so, rather than creating one.
fn update_user(client: &Client, username: &str, body: Value) -> Result<(), CtlError> {
    if !user_exists(client, username)? {
        return Err(no_user(username));
    }
    call(
        client,
        Method::Put,
        &format!("/users/{}", seg(username)),
        Some(body),
    )?
    .map_err(failed)
    .map(|_| ())
}
