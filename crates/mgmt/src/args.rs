//! Field tables (the `arguments` of queues, exchanges and bindings) as JSON, the way RabbitMQ's
//! API writes them: `{"x-message-ttl": 60000, "x-queue-type": "classic"}`. The conversion is
//! the broker's ([`warren_broker::json`]); requests are checked here first, so that a malformed
//! `arguments` is a 400 rather than silently empty.

use crate::ApiError;
use serde_json::Value;
use warren_protocol::FieldTable;

pub use warren_broker::json::table_to_json;

/// The `arguments` of a request body: an object (or null / absent for none).
pub fn json_to_table(v: &Value) -> Result<FieldTable, ApiError> {
    match v {
        Value::Null => Ok(FieldTable::new()),
        Value::Object(m) => match m.keys().find(|k| k.len() > 255) {
            Some(k) => Err(ApiError::BadRequest(format!(
                "argument name too long: '{k}'"
            ))),
            None => Ok(warren_broker::json::json_to_table(v)),
        },
        other => Err(ApiError::BadRequest(format!(
            "arguments must be a JSON object, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_round_trip() {
        let v = json!({"x-message-ttl": 60000, "x-queue-type": "classic", "b": true, "t": {"x": 1}, "a": [1, "s"], "f": 1.5});
        let t = json_to_table(&v).unwrap();
        assert_eq!(t.get("x-message-ttl").and_then(|v| v.as_i64()), Some(60000));
        assert_eq!(table_to_json(&t), v);
    }

    #[test]
    fn arguments_must_be_an_object() {
        assert!(json_to_table(&json!([1])).is_err());
        assert!(json_to_table(&Value::Null).unwrap().is_empty());
    }
}
