//! Output as rabbitmqctl writes it: the `table` formatter (a header row, then tab-separated
//! rows; booleans as true/false; argument tables as Erlang terms, `[{"x-message-ttl",60000}]`)
//! and the `json` formatter (one object per line, arguments as `[name, type, value]`).

use serde_json::Value;
use std::io::Write;

/// A value in a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => term(other),
    }
}

/// A value as rabbitmqctl prints an Erlang term: strings quoted, tables as lists of pairs.
fn term(v: &Value) -> String {
    match v {
        Value::Null => "undefined".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(term).collect::<Vec<_>>().join(",")),
        Value::Object(m) => {
            let pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{{{},{}}}", Value::String(k.clone()), term(v)))
                .collect();
            format!("[{}]", pairs.join(","))
        }
    }
}

/// AMQP field types as rabbitmqctl's JSON formatter names them.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "void",
        Value::Bool(_) => "bool",
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => "signedint",
            Some(_) => "long",
            None => "double",
        },
        Value::String(_) => "longstr",
        Value::Array(_) => "array",
        Value::Object(_) => "table",
    }
}

/// An argument table for the JSON formatter: `[["x-message-ttl","signedint",60000], …]`.
pub fn typed_table(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Array(
            m.iter()
                .map(|(k, v)| {
                    let inner = if v.is_object() {
                        typed_table(v)
                    } else {
                        v.clone()
                    };
                    Value::Array(vec![Value::String(k.clone()), type_name(v).into(), inner])
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Writes rows in the table format: the header row unless `headers` is off, nothing at all
/// for no rows (as rabbitmqctl).
pub fn write_table(
    out: &mut impl Write,
    columns: &[String],
    rows: &[Vec<Value>],
    headers: bool,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if headers {
        writeln!(out, "{}", columns.join("\t"))?;
    }
    for r in rows {
        writeln!(out, "{}", r.iter().map(cell).collect::<Vec<_>>().join("\t"))?;
    }
    Ok(())
}

/// Writes rows in the JSON format: `[`, one object per line (`,` leading all but the first),
/// `]`.
pub fn write_json(
    out: &mut impl Write,
    columns: &[String],
    rows: &[Vec<Value>],
) -> std::io::Result<()> {
    writeln!(out, "[")?;
    for (i, r) in rows.iter().enumerate() {
        // Written by hand to keep the columns in the order asked for.
        let fields: Vec<String> = columns
            .iter()
            .zip(r)
            .map(|(c, v)| {
                let v = if c == "arguments" {
                    typed_table(v)
                } else {
                    v.clone()
                };
                format!("{}:{}", Value::String(c.clone()), v)
            })
            .collect();
        writeln!(
            out,
            "{}{{{}}}",
            if i == 0 { "" } else { "," },
            fields.join(",")
        )?;
    }
    writeln!(out, "]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_as_rabbitmqctl_prints_them() {
        assert_eq!(cell(&json!("q1")), "q1");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!(5)), "5");
        assert_eq!(cell(&json!({})), "[]");
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(
            cell(&json!({"b": true, "t": {"x": 1, "y": "s"}, "a": [1, "s", false], "v": null})),
            r#"[{"a",[1,"s",false]},{"b",true},{"t",[{"x",1},{"y","s"}]},{"v",undefined}]"#
        );
    }

    #[test]
    fn tables_have_headers_only_with_rows() {
        let cols = vec!["name".to_string(), "messages".to_string()];
        let mut out = Vec::new();
        write_table(&mut out, &cols, &[], true).unwrap();
        assert!(out.is_empty());
        write_table(&mut out, &cols, &[vec![json!("q"), json!(3)]], true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "name\tmessages\nq\t3\n");
    }

    #[test]
    fn json_rows_one_per_line() {
        let cols = vec!["name".to_string(), "arguments".to_string()];
        let rows = vec![
            vec![json!("a"), json!({})],
            vec![json!("b"), json!({"x-message-ttl": 60000})],
        ];
        let mut out = Vec::new();
        write_json(&mut out, &cols, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[\n{\"name\":\"a\",\"arguments\":[]}\n,{\"name\":\"b\",\"arguments\":[[\"x-message-ttl\",\"signedint\",60000]]}\n]\n"
        );
    }
}
