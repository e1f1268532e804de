//! A stream's arguments as RabbitMQ 4.0 reads them: what a declaration may carry (and the
//! 406 texts for what it may not), retention and segment size from arguments and policies,
//! and a consumer's `x-stream-offset`, `x-stream-filter` and `x-stream-match-unfiltered`.

use crate::error::{AmqpError, Result};
use warren_protocol::{FieldTable, FieldValue};
use warren_store::Retention;

/// RabbitMQ's default `x-stream-max-segment-size-bytes` (500 MB).
pub const DEFAULT_MAX_SEGMENT_SIZE: u64 = 500_000_000;
/// RabbitMQ's largest segment size (3 GB); it also fits the segment log's u32 offsets.
pub const MAX_SEGMENT_SIZE: u64 = 3_000_000_000;

/// Arguments a stream accepts (RabbitMQ 4.0's `rabbit_stream_queue:capabilities()`); any
/// other `x-` queue argument is refused with 406, as RabbitMQ refuses it.
const STREAM_ARGS: &[&str] = &[
    "x-queue-type",
    "x-max-length-bytes",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
    "x-stream-filter-size-bytes",
];

/// Queue arguments RabbitMQ compares when a stream is declared again, after the common ones.
pub const COMPARED_STREAM_ARGS: &[&str] = &[
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Checks a new stream's declaration, in RabbitMQ 4.0's order and with its texts (checked
/// against 4.0.5): unsupported arguments, then their values, then the queue's properties.
pub fn check_declare(
    vhost: &str,
    name: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: &FieldTable,
) -> Result<()> {
    for (k, _) in args.iter() {
        if k.starts_with("x-") && !STREAM_ARGS.contains(&k.as_ref()) {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{k}' for queue '{name}' in vhost '{vhost}' of queue type rabbit_stream_queue"
            )));
        }
    }
    let invalid = |arg: &str, why: String| {
        AmqpError::precondition(format!(
            "invalid arg '{arg}' for queue '{name}' in vhost '{vhost}': {why}"
        ))
    };
    let int = |arg: &str| -> Result<Option<i64>> {
        match args.get(arg) {
            None => Ok(None),
            Some(v) if v.as_i64().is_none() || matches!(v, FieldValue::Timestamp(_)) => Err(
                invalid(arg, format!("\"expected integer, got {}\"", v.type_name())),
            ),
            Some(v) => Ok(v.as_i64()),
        }
    };
    let non_negative = |arg: &str| -> Result<Option<i64>> {
        match int(arg)? {
            Some(n) if n < 0 => Err(invalid(arg, format!("{{value_negative,{n}}}"))),
            n => Ok(n),
        }
    };
    non_negative("x-max-length-bytes")?;
    if let Some(v) = args.get("x-max-age") {
        match v {
            FieldValue::LongStr(_) => {
                if parse_age(v.as_str().unwrap_or("")).is_none() {
                    return Err(invalid("x-max-age", "invalid_max_age".into()));
                }
            }
            other => {
                return Err(invalid(
                    "x-max-age",
                    format!("{{unacceptable_type,{}}}", other.type_name()),
                ))
            }
        }
    }
    non_negative("x-stream-max-segment-size-bytes")?;
    if let Some(n) = non_negative("x-initial-cluster-size")? {
        if n == 0 {
            return Err(invalid("x-initial-cluster-size", "{value_zero,0}".into()));
        }
    }
    if let Some(v) = args.get("x-queue-leader-locator") {
        if !matches!(v.as_str(), Some("client-local" | "balanced")) {
            return Err(invalid(
                "x-queue-leader-locator",
                "invalid_queue_locator_arg".into(),
            ));
        }
    }
    // RabbitMQ's order: auto-delete, exclusive, durable.
    let prop = if auto_delete {
        Some("auto-delete")
    } else if exclusive {
        Some("exclusive-owner")
    } else if !durable {
        Some("non-durable")
    } else {
        None
    };
    if let Some(p) = prop {
        return Err(AmqpError::precondition(format!(
            "invalid property '{p}' for queue '{name}' in vhost '{vhost}'"
        )));
    }
    if args
        .get("x-stream-max-segment-size-bytes")
        .and_then(FieldValue::as_i64)
        .is_some_and(|n| n as u64 > MAX_SEGMENT_SIZE)
    {
        return Err(AmqpError::precondition(
            "Exceeded max value for x-stream-max-segment-size-bytes",
        ));
    }
    Ok(())
}

/// An age as RabbitMQ writes it (`x-max-age`, a `max-age` policy, an `x-stream-offset`
/// interval): a positive integer and one unit of `Y` (365 days), `M` (30 days), `D`, `h`, `m`,
/// `s`. In ms.
pub fn parse_age(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    if n == 0 {
        return None;
    }
    let secs = match unit {
        'Y' => 365 * 86_400,
        'M' => 30 * 86_400,
        'D' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    n.checked_mul(secs * 1000)
}

/// How a stream keeps its log: retention and segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    pub retention: Retention,
    pub max_segment_size: u32,
}

impl StreamOptions {
    /// From the declared arguments and the policy's definition; as RabbitMQ's
    /// `rabbit_stream_queue`, a policy's value wins over the argument's (`max-length-bytes`,
    /// `max-age`, `stream-max-segment-size-bytes`).
    pub fn from_arguments(args: &FieldTable, policy: Option<&FieldTable>) -> Self {
        let pick = |arg: &str, key: &str| policy.and_then(|p| p.get(key)).or(args.get(arg));
        let int = |arg: &str, key: &str| {
            pick(arg, key)
                .and_then(FieldValue::as_i64)
                .filter(|n| *n >= 0)
                .map(|n| n as u64)
        };
        let max_age_ms = pick("x-max-age", "max-age").and_then(|v| match v {
            FieldValue::LongStr(_) => parse_age(v.as_str()?),
            // A policy may give seconds as a number.
            v => v.as_i64().filter(|n| *n > 0).map(|n| n as u64 * 1000),
        });
        let seg = int(
            "x-stream-max-segment-size-bytes",
            "stream-max-segment-size-bytes",
        )
        .unwrap_or(DEFAULT_MAX_SEGMENT_SIZE)
        .clamp(1024, MAX_SEGMENT_SIZE);
        StreamOptions {
            retention: Retention {
                max_bytes: int("x-max-length-bytes", "max-length-bytes"),
                max_age_ms,
            },
            max_segment_size: seg as u32,
        }
    }
}

/// Where a consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    First,
    /// The last message. (RabbitMQ: the first message of the last chunk; Warren writes no
    /// chunks, so its last "chunk" is the last message.)
    Last,
    /// Only messages appended from now on (the default).
    Next,
    Offset(u64),
    /// The first message appended at or after this time (ms since the Unix epoch).
    Timestamp(u64),
}

/// Which messages a consumer wants by their `x-stream-filter-value` (RabbitMQ 3.13).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub values: Vec<String>,
    /// Also the messages without a filter value.
    pub match_unfiltered: bool,
}

impl Filter {
    pub fn matches(&self, value: Option<&str>) -> bool {
        match value {
            Some(v) => self.values.iter().any(|f| f == v),
            None => self.match_unfiltered,
        }
    }
}

/// A consumer's stream arguments. `now` is the clock (ms) an interval counts back from.
pub fn consumer_args(
    args: &FieldTable,
    queue: &str,
    vhost: &str,
    now: u64,
) -> Result<(OffsetSpec, Option<Filter>)> {
    let bad = |why: &str| {
        AmqpError::precondition(format!(
            "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': {why}"
        ))
    };
    let spec = match args.get("x-stream-offset") {
        None => OffsetSpec::Next,
        Some(FieldValue::Timestamp(s)) => OffsetSpec::Timestamp(s.saturating_mul(1000)),
        Some(v @ (FieldValue::LongStr(_) | FieldValue::Bytes(_))) => match v.as_str() {
            Some("first") => OffsetSpec::First,
            Some("last") => OffsetSpec::Last,
            Some("next") => OffsetSpec::Next,
            Some(s) => match parse_age(s) {
                Some(ms) => OffsetSpec::Timestamp(now.saturating_sub(ms)),
                None => return Err(bad("invalid_max_age")),
            },
            None => return Err(bad("invalid_max_age")),
        },
        // osiris reads an offset below the first retained one as the first.
        Some(v) => match v.as_i64() {
            Some(n) => OffsetSpec::Offset(n.max(0) as u64),
            None => return Err(bad(&format!("unacceptable_type {}", v.type_name()))),
        },
    };
    let values: Option<Vec<String>> = match args.get("x-stream-filter") {
        Some(FieldValue::Array(vs)) => Some(
            vs.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        Some(v) => v.as_str().map(|s| vec![s.to_string()]),
        None => None,
    };
    let filter = values.map(|values| Filter {
        values,
        match_unfiltered: args
            .get("x-stream-match-unfiltered")
            .and_then(FieldValue::as_bool)
            .unwrap_or(false),
    });
    Ok((spec, filter))
}

/// The stream protocol's create arguments, their queue arguments, and whether they are
/// integers (the others are strings), as RabbitMQ's stream plugin converts them.
const ARGUMENTS: &[(&str, &str, bool)] = &[
    ("max-length-bytes", "x-max-length-bytes", true),
    ("max-age", "x-max-age", false),
    (
        "stream-max-segment-size-bytes",
        "x-stream-max-segment-size-bytes",
        true,
    ),
    ("initial-cluster-size", "x-initial-cluster-size", true),
    ("queue-leader-locator", "x-queue-leader-locator", false),
    (
        "stream-filter-size-bytes",
        "x-stream-filter-size-bytes",
        true,
    ),
];

/// The stream protocol's create arguments (and the management API's super-stream ones) as
/// queue arguments: an unknown argument, or a value that is not a number where one is
/// needed, is refused with why.
pub fn protocol_arguments(args: &[(String, String)]) -> std::result::Result<FieldTable, String> {
    let mut t = FieldTable::new();
    t.insert("x-queue-type", FieldValue::LongStr("stream".into()));
    for (k, v) in args {
        let Some((_, arg, int)) = ARGUMENTS.iter().find(|(name, _, _)| name == k) else {
            return Err(format!("unknown stream argument '{k}'"));
        };
        let value = if *int {
            match v.trim().parse::<i64>() {
                Ok(n) => FieldValue::I64(n),
                Err(_) => {
                    return Err(format!(
                        "invalid value '{v}' for stream argument '{k}': expected an integer"
                    ))
                }
            }
        } else if *arg == "x-queue-leader-locator"
            && matches!(v.as_str(), "least-leaders" | "random")
        {
            // The older names clients still send (the Rust client's default): "balanced" now.
            FieldValue::LongStr("balanced".into())
        } else {
            FieldValue::LongStr(v.as_str().into())
        };
        t.insert(*arg, value);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kv: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in kv {
            t.insert(*k, v.clone());
        }
        t
    }

    #[test]
    fn ages_in_rabbitmq_units() {
        assert_eq!(parse_age("30m"), Some(30 * 60_000));
        assert_eq!(parse_age("7D"), Some(7 * 86_400_000));
        assert_eq!(parse_age("1Y"), Some(365 * 86_400_000));
        assert_eq!(parse_age("2M"), Some(60 * 86_400_000));
        assert_eq!(parse_age("10s"), Some(10_000));
        assert_eq!(parse_age("3h"), Some(3 * 3_600_000));
        for bad in ["", "m", "0s", "10x", "bogus", "-1s", "1.5h"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn offset_specs() {
        let spec = |v: FieldValue| {
            consumer_args(&table(&[("x-stream-offset", v)]), "s", "/", 1_000_000).map(|(s, _)| s)
        };
        assert_eq!(
            consumer_args(&FieldTable::new(), "s", "/", 0).unwrap().0,
            OffsetSpec::Next
        );
        assert_eq!(spec("first".into()).unwrap(), OffsetSpec::First);
        assert_eq!(spec("last".into()).unwrap(), OffsetSpec::Last);
        assert_eq!(spec("next".into()).unwrap(), OffsetSpec::Next);
        assert_eq!(spec(FieldValue::I64(42)).unwrap(), OffsetSpec::Offset(42));
        assert_eq!(spec(FieldValue::I32(-3)).unwrap(), OffsetSpec::Offset(0));
        assert_eq!(
            spec(FieldValue::Timestamp(500)).unwrap(),
            OffsetSpec::Timestamp(500_000)
        );
        assert_eq!(spec("10s".into()).unwrap(), OffsetSpec::Timestamp(990_000));
        assert_eq!(spec("bogus".into()).unwrap_err().code, 406);
        assert_eq!(spec(FieldValue::Bool(true)).unwrap_err().code, 406);
    }

    #[test]
    fn filters() {
        let (_, f) = consumer_args(
            &table(&[
                (
                    "x-stream-filter",
                    FieldValue::Array(vec!["a".into(), "b".into()]),
                ),
                ("x-stream-match-unfiltered", FieldValue::Bool(true)),
            ]),
            "s",
            "/",
            0,
        )
        .unwrap();
        let f = f.unwrap();
        assert!(f.matches(Some("a")) && f.matches(Some("b")) && f.matches(None));
        assert!(!f.matches(Some("c")));
        let (_, f) =
            consumer_args(&table(&[("x-stream-filter", "a".into())]), "s", "/", 0).unwrap();
        assert!(!f.unwrap().matches(None));
    }

    #[test]
    fn policy_wins_over_arguments() {
        let args = table(&[
            ("x-max-length-bytes", FieldValue::I64(1000)),
            ("x-max-age", "1h".into()),
        ]);
        let o = StreamOptions::from_arguments(&args, None);
        assert_eq!(o.retention.max_bytes, Some(1000));
        assert_eq!(o.retention.max_age_ms, Some(3_600_000));
        assert_eq!(o.max_segment_size as u64, DEFAULT_MAX_SEGMENT_SIZE);
        let pol = table(&[
            ("max-length-bytes", FieldValue::I64(5000)),
            ("stream-max-segment-size-bytes", FieldValue::I64(2048)),
        ]);
        let o = StreamOptions::from_arguments(&args, Some(&pol));
        assert_eq!(o.retention.max_bytes, Some(5000));
        assert_eq!(o.max_segment_size, 2048);
    }

    #[test]
    fn declarations_refused_as_rabbitmq_does() {
        let ok = |args: FieldTable| check_declare("/", "s", true, false, false, &args);
        assert!(ok(table(&[("x-max-age", "7D".into())])).is_ok());
        let e = ok(table(&[("x-message-ttl", FieldValue::I32(5))])).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 's' in vhost '/' of queue type rabbit_stream_queue"
        );
        let e = check_declare("/", "s", false, true, true, &FieldTable::new()).unwrap_err();
        assert!(
            e.text.contains("invalid property 'auto-delete'"),
            "{}",
            e.text
        );
        let e = ok(table(&[("x-max-age", FieldValue::I32(5))])).unwrap_err();
        assert!(
            e.text.ends_with("{unacceptable_type,signedint}"),
            "{}",
            e.text
        );
    }
}
