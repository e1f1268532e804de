//! Policies and operator policies: name, regex pattern, what they apply to, priority and a
//! definition (RabbitMQ's keys: `message-ttl`, `dead-letter-exchange`, `max-length`,
//! `consumer-timeout`, `alternate-exchange`, …). For each queue or exchange the matching policy
//! with the highest priority applies; queue arguments take precedence over a policy, and an
//! operator policy caps numeric limits (the lower value wins), as RabbitMQ documents.

use crate::error::{AmqpError, Result};
use regex::Regex;
use warren_protocol::{FieldTable, FieldValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

impl ApplyTo {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queues" | "classic_queues" | "quorum_queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub pattern: String,
    regex: Regex,
    pub apply_to: ApplyTo,
    pub priority: i64,
    pub definition: FieldTable,
}

/// Definition keys Warren acts on (others are kept but have no effect).
pub const KNOWN_KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "consumer-timeout",
    "alternate-exchange",
    // Streams.
    "max-age",
    "stream-max-segment-size-bytes",
];

impl Policy {
    pub fn new(
        name: &str,
        pattern: &str,
        apply_to: &str,
        priority: i64,
        definition: FieldTable,
    ) -> Result<Self> {
        let regex = Regex::new(pattern).map_err(|e| {
            AmqpError::precondition(format!(
                "invalid pattern '{pattern}' for policy '{name}': {e}"
            ))
        })?;
        let apply_to = ApplyTo::parse(apply_to).ok_or_else(|| {
            AmqpError::precondition(format!(
                "invalid apply-to '{apply_to}': expected queues, exchanges or all"
            ))
        })?;
        if definition.is_empty() {
            return Err(AmqpError::precondition(format!(
                "policy '{name}' has an empty definition"
            )));
        }
        Ok(Policy {
            name: name.into(),
            pattern: pattern.into(),
            regex,
            apply_to,
            priority,
            definition,
        })
    }

    fn matches(&self, name: &str, queue: bool) -> bool {
        let kind_ok = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind_ok && self.regex.is_match(name)
    }
}

/// The matching policy with the highest priority (the first declared wins a tie).
pub fn effective<'a>(policies: &'a [Policy], name: &str, queue: bool) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.matches(name, queue))
        .fold(None, |best: Option<&Policy>, p| match best {
            Some(b) if b.priority >= p.priority => Some(b),
            _ => Some(p),
        })
}

/// One definition from a policy and an operator policy: the policy's keys, with numeric limits
/// lowered to the operator policy's where it sets a smaller one.
pub fn merge(policy: Option<&Policy>, operator: Option<&Policy>) -> Option<FieldTable> {
    let mut def = policy.map(|p| p.definition.clone()).unwrap_or_default();
    if let Some(op) = operator {
        for (k, v) in op.definition.iter() {
            match (def.get(k).and_then(FieldValue::as_i64), v.as_i64()) {
                (Some(mine), Some(cap)) if mine <= cap => {}
                _ => def.insert(k.clone(), v.clone()),
            }
        }
    }
    (!def.is_empty()).then_some(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(k: &str, v: i64) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert(k, FieldValue::I64(v));
        t
    }

    #[test]
    fn highest_priority_match_and_operator_caps() {
        let ps = vec![
            Policy::new("low", "^orders", "queues", 1, def("max-length", 100)).unwrap(),
            Policy::new("high", "^orders\\.eu", "queues", 5, def("max-length", 50)).unwrap(),
            Policy::new("ex", ".*", "exchanges", 9, def("max-length", 1)).unwrap(),
        ];
        assert_eq!(effective(&ps, "orders.eu", true).unwrap().name, "high");
        assert_eq!(effective(&ps, "orders.us", true).unwrap().name, "low");
        assert!(effective(&ps, "other", true).is_none());
        let op = Policy::new("cap", ".*", "queues", 0, def("max-length", 10)).unwrap();
        let merged = merge(effective(&ps, "orders.us", true), Some(&op)).unwrap();
        assert_eq!(
            merged.get("max-length").and_then(FieldValue::as_i64),
            Some(10)
        );
        assert!(Policy::new("bad", "(", "queues", 0, def("x", 1)).is_err());
    }
}
