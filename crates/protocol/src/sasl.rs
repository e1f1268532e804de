//! The SASL responses of connection.start-ok, as RabbitMQ accepts them: PLAIN
//! (`authzid \0 user \0 password`) and AMQPLAIN (a field table's entries, without the table's
//! own length prefix, with LOGIN and PASSWORD).

use crate::codec::{Field, Reader};
use crate::table::{FieldTable, FieldValue};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("malformed {0} response")]
    Malformed(&'static str),
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
}

/// Username and password from a start-ok response.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<(String, String), SaslError> {
    match mechanism {
        "PLAIN" => {
            let bad = || SaslError::Malformed("PLAIN");
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next().ok_or_else(bad)?;
            let user = parts.next().ok_or_else(bad)?;
            let pass = parts.next().ok_or_else(bad)?;
            Ok((
                String::from_utf8_lossy(user).into_owned(),
                String::from_utf8_lossy(pass).into_owned(),
            ))
        }
        "AMQPLAIN" => {
            let bad = || SaslError::Malformed("AMQPLAIN");
            let mut framed = Vec::with_capacity(response.len() + 4);
            framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
            framed.extend_from_slice(response);
            let t = FieldTable::read(&mut Reader::new(framed.into())).map_err(|_| bad())?;
            let get = |k: &str| {
                t.get(k)
                    .and_then(FieldValue::as_str)
                    .map(str::to_string)
                    .ok_or_else(bad)
            };
            Ok((get("LOGIN")?, get("PASSWORD")?))
        }
        other => Err(SaslError::UnknownMechanism(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Writer;

    #[test]
    fn plain_and_amqplain() {
        assert_eq!(
            parse_response("PLAIN", b"\0guest\0pw"),
            Ok(("guest".into(), "pw".into()))
        );
        assert!(parse_response("PLAIN", b"guest").is_err());
        let mut t = FieldTable::new();
        t.insert("LOGIN", "u");
        t.insert("PASSWORD", "p");
        let mut b = bytes::BytesMut::new();
        t.write(&mut Writer::new(&mut b));
        assert_eq!(
            parse_response("AMQPLAIN", &b[4..]),
            Ok(("u".into(), "p".into()))
        );
        assert!(matches!(
            parse_response("X", b""),
            Err(SaslError::UnknownMechanism(_))
        ));
    }
}
