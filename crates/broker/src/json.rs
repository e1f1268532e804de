//! Field tables as JSON, the way RabbitMQ's management API and definitions files write queue
//! and binding arguments (`{"x-message-ttl": 60000}`).

use serde_json::{Map, Number, Value};
use warren_protocol::codec::LongStr;
use warren_protocol::{FieldTable, FieldValue};

pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

pub fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::F32(f) => Number::from_f64(*f as f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        FieldValue::F64(f) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        FieldValue::Decimal(scale, v) => Number::from_f64(*v as f64 / 10f64.powi(*scale as i32))
            .map(Value::Number)
            .unwrap_or(Value::Null),
        FieldValue::LongStr(s) | FieldValue::Bytes(s) => Value::String(s.to_string_lossy()),
        FieldValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
        other => other
            .as_i64()
            .map(|i| Value::Number(i.into()))
            .unwrap_or(Value::Null),
    }
}

pub fn json_to_table(v: &Value) -> FieldTable {
    let mut t = FieldTable::new();
    if let Value::Object(m) = v {
        for (k, v) in m {
            t.insert(k.as_str(), json_to_value(v));
        }
    }
    t
}

pub fn json_to_value(v: &Value) -> FieldValue {
    match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongStr(LongStr::from(s.as_str())),
        Value::Array(a) => FieldValue::Array(a.iter().map(json_to_value).collect()),
        Value::Object(_) => FieldValue::Table(json_to_table(v)),
    }
}

/// Tags as RabbitMQ's API and definitions give them (users' and vhosts'): a list, or one
/// comma-separated string; anything else is no tags.
pub fn tags_from_json(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// [`tags_from_json`] as a serde `deserialize_with`.
pub fn deserialize_tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(|v| tags_from_json(&v))
}
