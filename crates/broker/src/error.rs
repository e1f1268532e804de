//! Broker errors as AMQP replies: a reply code and RabbitMQ's text. Whether the error closes
//! the channel or the connection follows from the code; the server adds class and method ids.

use warren_protocol::constants::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    pub code: u16,
    /// The full reply text, prefixed with the code's name as RabbitMQ writes it.
    pub text: String,
}

impl AmqpError {
    pub fn new(code: u16, detail: impl std::fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {}", reply_name(code), detail),
        }
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
    pub fn is_connection_error(&self) -> bool {
        is_connection_error(self.code)
    }
}

pub type Result<T> = std::result::Result<T, AmqpError>;
