//! The operations a sequence is made of, and their serialised (repro file) form.
//!
//! Names are symbolic: `q0`..`q9`, `x0`..`x9` (and routing keys equal to a queue name) get the
//! run's prefix when executed, `@gen` is the last server-generated queue name, anything else
//! (`amq.direct`, `""`, `amq.foo`) is sent verbatim.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One operation aimed at a connection (index) and a channel number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub conn: u8,
    pub ch: u16,
    #[serde(flatten)]
    pub op: Op,
}

/// A field value in arguments and headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Val {
    I16(i16),
    I32(i32),
    I64(i64),
    Str(String),
    Bool(bool),
}

pub type Args = Vec<(String, Val)>;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Props {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_mode: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Args>,
}

// Publish carries its properties inline; sequences are short, so size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    ExchangeDeclare {
        name: String,
        kind: String,
        #[serde(default, skip_serializing_if = "is_false")]
        passive: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        durable: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        auto_delete: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        internal: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    ExchangeDelete {
        name: String,
        #[serde(default, skip_serializing_if = "is_false")]
        if_unused: bool,
    },
    ExchangeBind {
        dest: String,
        src: String,
        key: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    ExchangeUnbind {
        dest: String,
        src: String,
        key: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    QueueDeclare {
        name: String,
        #[serde(default, skip_serializing_if = "is_false")]
        passive: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        durable: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        exclusive: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        auto_delete: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    QueueBind {
        queue: String,
        exchange: String,
        key: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    QueueUnbind {
        queue: String,
        exchange: String,
        key: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    QueuePurge {
        queue: String,
    },
    QueueDelete {
        queue: String,
        #[serde(default, skip_serializing_if = "is_false")]
        if_unused: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        if_empty: bool,
    },
    Qos {
        #[serde(default)]
        prefetch_size: u32,
        prefetch_count: u16,
        #[serde(default, skip_serializing_if = "is_false")]
        global: bool,
    },
    Consume {
        queue: String,
        /// "" lets the server choose.
        tag: String,
        #[serde(default, skip_serializing_if = "is_false")]
        no_ack: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        exclusive: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Args,
    },
    /// `@last` is the channel's last consumer tag.
    Cancel {
        tag: String,
    },
    Publish {
        exchange: String,
        key: String,
        #[serde(default, skip_serializing_if = "is_false")]
        mandatory: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        immediate: bool,
        #[serde(default, skip_serializing_if = "Props::is_empty")]
        props: Props,
        body: String,
    },
    Get {
        queue: String,
        #[serde(default, skip_serializing_if = "is_false")]
        no_ack: bool,
    },
    /// `tag` 0 with `multiple` is "everything"; a tag above the channel's last delivery is
    /// unknown on purpose. `tag: -1` (serialised as `last`) means the channel's last delivery tag.
    Ack {
        tag: Tag,
        #[serde(default, skip_serializing_if = "is_false")]
        multiple: bool,
    },
    Nack {
        tag: Tag,
        #[serde(default, skip_serializing_if = "is_false")]
        multiple: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        requeue: bool,
    },
    Reject {
        tag: Tag,
        #[serde(default, skip_serializing_if = "is_false")]
        requeue: bool,
    },
    Recover {
        requeue: bool,
    },
    TxSelect,
    TxCommit,
    TxRollback,
    ConfirmSelect,
    Flow {
        active: bool,
    },
    /// A client-initiated channel.close (200).
    ChannelClose,
    /// channel.open on a channel that is already open (a connection error).
    ChannelReopen,
    /// A method on a channel that was never opened (a connection error).
    Unopened,
    /// A client-initiated connection.close (200).
    ConnectionClose,
}

/// A delivery tag as an op names it: a number, or the channel's last delivery.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    Last,
    N(u64),
}

impl Props {
    pub fn is_empty(&self) -> bool {
        *self == Props::default()
    }
}

impl Op {
    /// The op's kind, as used in reports and allow-list signatures.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::ExchangeDeclare { .. } => "exchange.declare",
            Op::ExchangeDelete { .. } => "exchange.delete",
            Op::ExchangeBind { .. } => "exchange.bind",
            Op::ExchangeUnbind { .. } => "exchange.unbind",
            Op::QueueDeclare { .. } => "queue.declare",
            Op::QueueBind { .. } => "queue.bind",
            Op::QueueUnbind { .. } => "queue.unbind",
            Op::QueuePurge { .. } => "queue.purge",
            Op::QueueDelete { .. } => "queue.delete",
            Op::Qos { .. } => "basic.qos",
            Op::Consume { .. } => "basic.consume",
            Op::Cancel { .. } => "basic.cancel",
            Op::Publish { .. } => "basic.publish",
            Op::Get { .. } => "basic.get",
            Op::Ack { .. } => "basic.ack",
            Op::Nack { .. } => "basic.nack",
            Op::Reject { .. } => "basic.reject",
            Op::Recover { .. } => "basic.recover",
            Op::TxSelect => "tx.select",
            Op::TxCommit => "tx.commit",
            Op::TxRollback => "tx.rollback",
            Op::ConfirmSelect => "confirm.select",
            Op::Flow { .. } => "channel.flow",
            Op::ChannelClose => "channel.close",
            Op::ChannelReopen => "channel.open(again)",
            Op::Unopened => "unopened-channel",
            Op::ConnectionClose => "connection.close",
        }
    }
}

fn fmt_args(args: &Args) -> String {
    if args.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" {{{}}}", parts.join(", "))
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::I16(v) => write!(f, "{v}s"),
            Val::I32(v) => write!(f, "{v}i"),
            Val::I64(v) => write!(f, "{v}l"),
            Val::Str(s) => write!(f, "{s:?}"),
            Val::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tag::Last => f.write_str("last"),
            Tag::N(n) => write!(f, "{n}"),
        }
    }
}

fn flags(pairs: &[(&str, bool)]) -> String {
    pairs
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| format!(" {n}"))
        .collect()
}

/// The human-readable listing of one step, e.g. `c0.1 queue.declare "q1" durable {x-message-ttl=0i}`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{} {}", self.conn, self.ch, self.op.kind())?;
        match &self.op {
            Op::ExchangeDeclare {
                name,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                args,
            } => write!(
                f,
                " {name:?} type={kind:?}{}{}",
                flags(&[
                    ("passive", *passive),
                    ("durable", *durable),
                    ("auto_delete", *auto_delete),
                    ("internal", *internal)
                ]),
                fmt_args(args)
            ),
            Op::ExchangeDelete { name, if_unused } => {
                write!(f, " {name:?}{}", flags(&[("if_unused", *if_unused)]))
            }
            Op::ExchangeBind {
                dest,
                src,
                key,
                args,
            }
            | Op::ExchangeUnbind {
                dest,
                src,
                key,
                args,
            } => {
                write!(
                    f,
                    " dest={dest:?} src={src:?} key={key:?}{}",
                    fmt_args(args)
                )
            }
            Op::QueueDeclare {
                name,
                passive,
                durable,
                exclusive,
                auto_delete,
                args,
            } => write!(
                f,
                " {name:?}{}{}",
                flags(&[
                    ("passive", *passive),
                    ("durable", *durable),
                    ("exclusive", *exclusive),
                    ("auto_delete", *auto_delete)
                ]),
                fmt_args(args)
            ),
            Op::QueueBind {
                queue,
                exchange,
                key,
                args,
            }
            | Op::QueueUnbind {
                queue,
                exchange,
                key,
                args,
            } => {
                write!(
                    f,
                    " {queue:?} to {exchange:?} key={key:?}{}",
                    fmt_args(args)
                )
            }
            Op::QueuePurge { queue } => write!(f, " {queue:?}"),
            Op::QueueDelete {
                queue,
                if_unused,
                if_empty,
            } => write!(
                f,
                " {queue:?}{}",
                flags(&[("if_unused", *if_unused), ("if_empty", *if_empty)])
            ),
            Op::Qos {
                prefetch_size,
                prefetch_count,
                global,
            } => write!(
                f,
                " size={prefetch_size} count={prefetch_count}{}",
                flags(&[("global", *global)])
            ),
            Op::Consume {
                queue,
                tag,
                no_ack,
                exclusive,
                args,
            } => write!(
                f,
                " {queue:?} tag={tag:?}{}{}",
                flags(&[("no_ack", *no_ack), ("exclusive", *exclusive)]),
                fmt_args(args)
            ),
            Op::Cancel { tag } => write!(f, " {tag:?}"),
            Op::Publish {
                exchange,
                key,
                mandatory,
                immediate,
                props,
                body,
            } => {
                write!(
                    f,
                    " to {exchange:?} key={key:?}{} body={body:?}",
                    flags(&[("mandatory", *mandatory), ("immediate", *immediate)])
                )?;
                let p = serde_json::to_string(props).unwrap_or_default();
                if p != "{}" {
                    write!(f, " props={p}")?;
                }
                Ok(())
            }
            Op::Get { queue, no_ack } => write!(f, " {queue:?}{}", flags(&[("no_ack", *no_ack)])),
            Op::Ack { tag, multiple } => {
                write!(f, " tag={tag}{}", flags(&[("multiple", *multiple)]))
            }
            Op::Nack {
                tag,
                multiple,
                requeue,
            } => write!(
                f,
                " tag={tag}{}",
                flags(&[("multiple", *multiple), ("requeue", *requeue)])
            ),
            Op::Reject { tag, requeue } => {
                write!(f, " tag={tag}{}", flags(&[("requeue", *requeue)]))
            }
            Op::Recover { requeue } => write!(f, " requeue={requeue}"),
            Op::Flow { active } => write!(f, " active={active}"),
            Op::TxSelect
            | Op::TxCommit
            | Op::TxRollback
            | Op::ConfirmSelect
            | Op::ChannelClose
            | Op::ChannelReopen
            | Op::Unopened
            | Op::ConnectionClose => Ok(()),
        }
    }
}
