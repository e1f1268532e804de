//! Broker errors are [`AmqpError`]s (the protocol crate's one error reply): a reply code with
//! RabbitMQ's text. Whether one closes the channel or the connection follows from the code;
//! the server names the failing method.

pub use warren_protocol::AmqpError;

pub type Result<T> = std::result::Result<T, AmqpError>;
