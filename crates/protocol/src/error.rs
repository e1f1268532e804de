//! One AMQP error reply, for every layer: the reply code, RabbitMQ's reply text, and the class
//! and method of the method that failed. The server turns it into channel.close or
//! connection.close (which one follows from the code); the broker and the assembler only make
//! them.

use crate::constants::{
    is_connection_error, reply_name, ACCESS_REFUSED, COMMAND_INVALID, NOT_FOUND, NOT_IMPLEMENTED,
    PRECONDITION_FAILED, RESOURCE_LOCKED,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    pub code: u16,
    /// The reply text as RabbitMQ writes it: the code's name, ` - `, then the detail.
    pub text: String,
    /// The failing method (0, 0: none, as for errors not caused by one method).
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    /// `code` with `detail`: the one place where RabbitMQ's `NAME - ` prefix is added.
    pub fn new(code: u16, detail: impl std::fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {}", reply_name(code), detail),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The code's name alone, as RabbitMQ answers some errors (a bare `INTERNAL_ERROR`).
    pub fn bare(code: u16) -> Self {
        AmqpError {
            code,
            text: reply_name(code).to_string(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Names the method that failed (its `CLASS_ID` and `METHOD_ID`).
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// Whether the reply closes the connection rather than the channel.
    pub fn is_connection_error(&self) -> bool {
        is_connection_error(self.code)
    }

    pub fn not_found(detail: impl std::fmt::Display) -> Self {
        Self::new(NOT_FOUND, detail)
    }
    pub fn precondition(detail: impl std::fmt::Display) -> Self {
        Self::new(PRECONDITION_FAILED, detail)
    }
    pub fn access_refused(detail: impl std::fmt::Display) -> Self {
        Self::new(ACCESS_REFUSED, detail)
    }
    pub fn resource_locked(detail: impl std::fmt::Display) -> Self {
        Self::new(RESOURCE_LOCKED, detail)
    }
    pub fn command_invalid(detail: impl std::fmt::Display) -> Self {
        Self::new(COMMAND_INVALID, detail)
    }
    pub fn not_implemented(detail: impl std::fmt::Display) -> Self {
        Self::new(NOT_IMPLEMENTED, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::INTERNAL_ERROR;

    #[test]
    fn the_prefix_is_added_once() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'").on(50, 10);
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!(e.to_string(), e.text);
        assert_eq!((e.code, e.class_id, e.method_id), (404, 50, 10));
        assert!(!e.is_connection_error());
        let e = AmqpError::bare(INTERNAL_ERROR);
        assert_eq!(e.text, "INTERNAL_ERROR");
        assert!(e.is_connection_error());
    }
}
