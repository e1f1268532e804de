//! Exchanges and their routing tables. Each type keeps its bindings in the structure that makes
//! its routing cheap: a hash map (direct), a list (fanout), a word trie (topic), argument
//! matchers (headers).

mod direct;
mod fanout;
mod headers;
mod topic;

use crate::error::{AmqpError, Result};
use crate::queue::Queue;
use parking_lot::RwLock;
use std::sync::Arc;
use warren_protocol::{FieldTable, ShortStr};

pub use headers::headers_match;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    pub fn name(&self) -> &ShortStr {
        match self {
            Destination::Queue(q) => &q.name,
            Destination::Exchange(e) => &e.name,
        }
    }
    pub fn is_queue(&self) -> bool {
        matches!(self, Destination::Queue(_))
    }
    fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// One binding as listed by `list_bindings` and the management API.
#[derive(Clone)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

impl Binding {
    fn same(&self, other: &Binding) -> bool {
        self.destination.same(&other.destination)
            && self.routing_key == other.routing_key
            && self.arguments.same_entries(&other.arguments)
    }
}

enum Table {
    Direct(direct::DirectTable),
    Fanout(fanout::FanoutTable),
    Topic(topic::TopicTable),
    Headers(headers::HeadersTable),
}

pub struct Exchange {
    pub name: ShortStr,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    table: RwLock<Table>,
    deleted: std::sync::atomic::AtomicBool,
    /// The definition of the policy that applies, if any.
    pub(crate) policy: RwLock<Option<FieldTable>>,
    /// An `x-delayed-message` exchange: routes like `kind`, after each message's `x-delay`.
    pub delayed: bool,
    /// What closed channels published into it (open channels count their own: see
    /// [`crate::stats::ChannelExchanges`]).
    retired: parking_lot::Mutex<crate::stats::ExchangeCounts>,
}

impl Exchange {
    pub fn new(
        name: ShortStr,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let table = match kind {
            ExchangeKind::Direct => Table::Direct(Default::default()),
            ExchangeKind::Fanout => Table::Fanout(Default::default()),
            ExchangeKind::Topic => Table::Topic(Default::default()),
            ExchangeKind::Headers => Table::Headers(Default::default()),
        };
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            table: RwLock::new(table),
            deleted: Default::default(),
            policy: RwLock::new(None),
            delayed: false,
            retired: Default::default(),
        }
    }

    /// A closed channel's publishes into this exchange join its totals.
    pub fn retire_counts(&self, c: &crate::stats::ExchangeCounts) {
        self.retired.lock().add(c);
    }

    /// What closed channels published into this exchange.
    pub fn retired_counts(&self) -> crate::stats::ExchangeCounts {
        *self.retired.lock()
    }

    /// The type as declared (`x-delayed-message` for a delayed exchange).
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            "x-delayed-message"
        } else {
            self.kind.as_str()
        }
    }

    /// The alternate exchange: the `alternate-exchange` argument, else the policy's.
    pub fn alternate_exchange(&self) -> Option<String> {
        let from = |t: &FieldTable| {
            t.get("alternate-exchange")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        from(&self.arguments).or_else(|| self.policy.read().as_ref().and_then(from))
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted
            .store(true, std::sync::atomic::Ordering::Release)
    }

    /// Adds a binding; false when an identical one exists (binding is idempotent).
    pub fn bind(&self, b: Binding) -> Result<bool> {
        let mut t = self.table.write();
        Ok(match &mut *t {
            Table::Direct(d) => d.bind(b),
            Table::Fanout(f) => f.bind(b),
            Table::Topic(tp) => tp.bind(b),
            Table::Headers(h) => h.bind(b)?,
        })
    }

    /// Removes a binding; false when there was none.
    pub fn unbind(&self, b: &Binding) -> bool {
        let mut t = self.table.write();
        match &mut *t {
            Table::Direct(d) => d.unbind(b),
            Table::Fanout(f) => f.unbind(b),
            Table::Topic(tp) => tp.unbind(b),
            Table::Headers(h) => h.unbind(b),
        }
    }

    /// Removes every binding to `dest`; returns how many went.
    pub fn unbind_destination(&self, dest: &Destination) -> usize {
        let all: Vec<Binding> = self
            .bindings()
            .into_iter()
            .filter(|b| b.destination.same(dest))
            .collect();
        all.iter().filter(|b| self.unbind(b)).count()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        let t = self.table.read();
        match &*t {
            Table::Direct(d) => d.bindings(),
            Table::Fanout(f) => f.bindings(),
            Table::Topic(tp) => tp.bindings(),
            Table::Headers(h) => h.bindings(),
        }
    }

    pub fn has_bindings(&self) -> bool {
        let t = self.table.read();
        match &*t {
            Table::Direct(d) => !d.is_empty(),
            Table::Fanout(f) => !f.is_empty(),
            Table::Topic(tp) => !tp.is_empty(),
            Table::Headers(h) => !h.is_empty(),
        }
    }

    /// Appends the destinations matching a message to `out` (duplicates allowed; the vhost
    /// removes them).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let t = self.table.read();
        match &*t {
            Table::Direct(d) => d.route(routing_key, out),
            Table::Fanout(f) => f.route(out),
            Table::Topic(tp) => tp.route(routing_key, out),
            Table::Headers(h) => h.route(headers, out),
        }
    }
}

/// Checks an `x-match` argument of a headers binding.
pub(crate) fn check_headers_args(args: &FieldTable) -> Result<()> {
    match args.get("x-match") {
        None => Ok(()),
        Some(v) => match v.as_str() {
            Some("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
            // RabbitMQ prints the value as an Erlang term: a string as <<"bad">>.
            _ => Err(AmqpError::precondition(format!(
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                match v.as_str() {
                    Some(s) => format!("<<\"{s}\">>"),
                    None => v
                        .as_i64()
                        .map_or_else(|| format!("{v:?}"), |n| n.to_string()),
                }
            ))),
        },
    }
}
