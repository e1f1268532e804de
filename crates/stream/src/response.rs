//! Response codes (PROTOCOL.adoc, "Response Codes") and the one place where what goes wrong
//! becomes one: broker errors ([`AmqpError`]'s reply codes) and this crate's own
//! [`StreamError`]s map to the code RabbitMQ answers with.

use warren_broker::AmqpError;
use warren_protocol::constants::{ACCESS_REFUSED, NOT_FOUND, PRECONDITION_FAILED};

pub const OK: u16 = 0x01;
pub const STREAM_DOES_NOT_EXIST: u16 = 0x02;
pub const SUBSCRIPTION_ID_ALREADY_EXISTS: u16 = 0x03;
pub const SUBSCRIPTION_ID_DOES_NOT_EXIST: u16 = 0x04;
pub const STREAM_ALREADY_EXISTS: u16 = 0x05;
pub const STREAM_NOT_AVAILABLE: u16 = 0x06;
pub const SASL_MECHANISM_NOT_SUPPORTED: u16 = 0x07;
pub const AUTHENTICATION_FAILURE: u16 = 0x08;
pub const SASL_ERROR: u16 = 0x09;
pub const SASL_CHALLENGE: u16 = 0x0a;
pub const SASL_AUTHENTICATION_FAILURE_LOOPBACK: u16 = 0x0b;
pub const VIRTUAL_HOST_ACCESS_FAILURE: u16 = 0x0c;
pub const UNKNOWN_FRAME: u16 = 0x0d;
pub const FRAME_TOO_LARGE: u16 = 0x0e;
pub const INTERNAL_ERROR: u16 = 0x0f;
pub const ACCESS_REFUSED_CODE: u16 = 0x10;
pub const PRECONDITION_FAILED_CODE: u16 = 0x11;
pub const PUBLISHER_DOES_NOT_EXIST: u16 = 0x12;
pub const NO_OFFSET: u16 = 0x13;

/// What can go wrong with a command; [`StreamError::code`] is its response code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("stream '{0}' does not exist")]
    StreamDoesNotExist(String),
    #[error("stream '{0}' already exists")]
    StreamAlreadyExists(String),
    #[error("stream '{0}' is not available")]
    StreamNotAvailable(String),
    #[error("subscription {0} already exists")]
    SubscriptionExists(u8),
    #[error("subscription {0} does not exist")]
    NoSubscription(u8),
    #[error("publisher {0} does not exist")]
    NoPublisher(u8),
    #[error("no offset stored for '{0}'")]
    NoOffset(String),
    #[error("precondition failed: {0}")]
    Precondition(String),
    #[error("access refused: {0}")]
    AccessRefused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StreamError {
    pub fn code(&self) -> u16 {
        match self {
            StreamError::StreamDoesNotExist(_) => STREAM_DOES_NOT_EXIST,
            StreamError::StreamAlreadyExists(_) => STREAM_ALREADY_EXISTS,
            StreamError::StreamNotAvailable(_) => STREAM_NOT_AVAILABLE,
            StreamError::SubscriptionExists(_) => SUBSCRIPTION_ID_ALREADY_EXISTS,
            StreamError::NoSubscription(_) => SUBSCRIPTION_ID_DOES_NOT_EXIST,
            StreamError::NoPublisher(_) => PUBLISHER_DOES_NOT_EXIST,
            StreamError::NoOffset(_) => NO_OFFSET,
            StreamError::Precondition(_) => PRECONDITION_FAILED_CODE,
            StreamError::AccessRefused(_) => ACCESS_REFUSED_CODE,
            StreamError::Internal(_) => INTERNAL_ERROR,
        }
    }

    /// A broker error on `stream`: 403 → access refused, 404 → the stream does not exist,
    /// 406 → precondition failed, anything else an internal error.
    pub fn from_amqp(e: AmqpError, stream: &str) -> StreamError {
        match e.code {
            ACCESS_REFUSED => StreamError::AccessRefused(e.text.to_string()),
            NOT_FOUND => StreamError::StreamDoesNotExist(stream.to_string()),
            PRECONDITION_FAILED => StreamError::Precondition(e.text.to_string()),
            _ => StreamError::Internal(e.text.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StreamError>;

/// The response code of a command's outcome.
pub fn code_of<T>(r: &Result<T>) -> u16 {
    match r {
        Ok(_) => OK,
        Err(e) => e.code(),
    }
}
