//! Headers exchange: bindings match on message headers by `x-match` all / any (ignoring
//! `x-` arguments) or all-with-x / any-with-x (including them), as RabbitMQ does.

use super::{check_headers_args, Binding, Destination};
use crate::error::Result;
use warren_protocol::{FieldTable, FieldValue};

#[derive(Default)]
pub struct HeadersTable {
    list: Vec<Binding>,
}

impl HeadersTable {
    pub fn bind(&mut self, b: Binding) -> Result<bool> {
        check_headers_args(&b.arguments)?;
        if self.list.iter().any(|x| x.same(&b)) {
            return Ok(false);
        }
        self.list.push(b);
        Ok(true)
    }
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.list.len();
        self.list.retain(|x| !x.same(b));
        self.list.len() != before
    }
    pub fn route(&self, headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let empty = FieldTable::new();
        let headers = headers.unwrap_or(&empty);
        out.extend(
            self.list
                .iter()
                .filter(|b| headers_match(&b.arguments, headers))
                .map(|b| b.destination.clone()),
        );
    }
    pub fn bindings(&self) -> Vec<Binding> {
        self.list.clone()
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Whether message `headers` satisfy binding `args`. A binding argument with a void value
/// matches on the header's presence alone.
pub fn headers_match(args: &FieldTable, headers: &FieldTable) -> bool {
    let mode = args
        .get("x-match")
        .and_then(FieldValue::as_str)
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let mut considered = args
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")));
    let entry_matches = |(k, v): (&warren_protocol::ShortStr, &FieldValue)| match headers.get(k) {
        None => false,
        Some(_) if *v == FieldValue::Void => true,
        Some(h) => h == v,
    };
    if any {
        considered.any(entry_matches)
    } else {
        considered.all(entry_matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(*k, *v);
        }
        t
    }

    #[test]
    fn all_and_any() {
        let h = table(&[("format", "pdf"), ("type", "report")]);
        assert!(headers_match(
            &table(&[("x-match", "all"), ("format", "pdf"), ("type", "report")]),
            &h
        ));
        assert!(!headers_match(
            &table(&[("x-match", "all"), ("format", "pdf"), ("type", "log")]),
            &h
        ));
        assert!(headers_match(
            &table(&[("x-match", "any"), ("format", "zip"), ("type", "report")]),
            &h
        ));
        assert!(!headers_match(
            &table(&[("x-match", "any"), ("format", "zip")]),
            &h
        ));
        // x- arguments are ignored unless -with-x.
        let hx = table(&[("x-id", "1")]);
        assert!(headers_match(
            &table(&[("x-match", "all"), ("x-id", "2")]),
            &hx
        ));
        assert!(!headers_match(
            &table(&[("x-match", "all-with-x"), ("x-id", "2")]),
            &hx
        ));
        assert!(headers_match(
            &table(&[("x-match", "any-with-x"), ("x-id", "1")]),
            &hx
        ));
    }
}
