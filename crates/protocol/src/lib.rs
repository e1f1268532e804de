//! AMQP 0-9-1 wire format, as RabbitMQ speaks it.
//!
//! Layout:
//! - [`codec`]: the primitive readers and writers (octets, shortstr, longstr, bit packing).
//! - [`table`]: field tables and field values, with every type RabbitMQ sends and accepts.
//! - [`methods`]: one struct per method, generated from a single table in `methods.rs`.
//! - [`properties`]: the 14 basic content-header properties.
//! - [`frame`]: frame parsing from a read buffer and frame encoding into a write buffer.
//! - [`assembler`]: joins method + header + body frames into one [`assembler::Command`].
//! - [`constants`]: reply codes and protocol constants.
//! - [`error`]: [`AmqpError`], one error reply (code, RabbitMQ's text, failing method) for every layer.
//! - [`sasl`]: PLAIN and AMQPLAIN responses of connection.start-ok.
//! - `validate`: stepping over encoded fields without decoding them (property validation).
//!
//! Nothing here knows about sockets, queues or tokio: decode from `Bytes`, encode into `BytesMut`.

pub mod assembler;
pub mod codec;
pub mod constants;
pub mod error;
pub mod frame;
pub mod methods;
pub mod properties;
pub mod sasl;
pub mod table;
mod validate;

pub use codec::{DecodeError, ShortStr};
pub use error::AmqpError;
pub use methods::Method;
pub use properties::BasicProperties;
pub use table::{FieldTable, FieldValue};
