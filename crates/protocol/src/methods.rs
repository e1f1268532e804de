//! Every AMQP 0-9-1 method, generated from the one table at the bottom of this file.
//!
//! Each row names the struct, its class and method ids, its wire name and its fields in wire
//! order; the `methods!` macro derives the struct, the [`Method`] enum, decoding and encoding.
//! `bit` fields are `bool`s; the [`Reader`]/[`Writer`] pack consecutive ones into an octet.

use crate::codec::{DecodeError, Field, LongStr, Reader, Result, ShortStr, Writer};
use crate::table::FieldTable;
use bytes::{Bytes, BytesMut};

macro_rules! methods {
    ($( $name:ident ($class:literal, $method:literal, $wire:literal) { $($field:ident : $ty:ty),* $(,)? } )*) => {
        $(
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $name { $(pub $field: $ty),* }

            impl $name {
                pub const CLASS_ID: u16 = $class;
                pub const METHOD_ID: u16 = $method;
            }

            impl From<$name> for Method {
                fn from(m: $name) -> Method { Method::$name(m) }
            }
        )*

        /// One decoded AMQP method.
        ///
        /// `repr(u64)`: a word-sized tag puts every variant's fields at offset 8, so that a
        /// method is copied in aligned words. With the default one-octet tag a copy read the
        /// fields from offset 1, across the stores that had just written them, and each of the
        /// several moves of a publish stalled on store forwarding (S1 +6 %).
        #[derive(Debug, Clone, PartialEq)]
        #[repr(u64)]
        pub enum Method { $($name($name)),* }

        impl Method {
            /// Decodes a method frame payload (class id, method id, arguments).
            pub fn decode(payload: Bytes) -> Result<Method> {
                let mut r = Reader::new(payload);
                let class = r.u16()?;
                let method = r.u16()?;
                match (class, method) {
                    $( ($class, $method) => {
                        #[allow(unused_variables, unused_mut)]
                        let mut r = r;
                        Ok(Method::$name($name { $($field: <$ty as Field>::read(&mut r)?),* }))
                    } )*
                    (c, m) => Err(DecodeError::UnknownMethod(c, m)),
                }
            }

            /// Encodes class id, method id and arguments (the method frame payload).
            pub fn encode(&self, buf: &mut BytesMut) {
                let mut w = Writer::new(buf);
                match self {
                    $( Method::$name(_m) => {
                        w.u16($class);
                        w.u16($method);
                        $( <$ty as Field>::write(&_m.$field, &mut w); )*
                    } )*
                }
            }

            pub fn class_id(&self) -> u16 {
                match self { $( Method::$name(_) => $class ),* }
            }
            pub fn method_id(&self) -> u16 {
                match self { $( Method::$name(_) => $method ),* }
            }
            /// The method's name as RabbitMQ writes it in error texts, e.g. `queue.declare`.
            pub fn name(&self) -> &'static str {
                match self { $( Method::$name(_) => $wire ),* }
            }
        }

        /// The wire name of a (class, method) pair, for error texts about methods that could not
        /// be decoded.
        pub fn method_name(class: u16, method: u16) -> &'static str {
            match (class, method) { $( ($class, $method) => $wire, )* _ => "unknown" }
        }
    };
}

impl Method {
    /// Whether a content header and body frames follow this method.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_)
                | Method::BasicReturn(_)
                | Method::BasicDeliver(_)
                | Method::BasicGetOk(_)
        )
    }
}

methods! {
    ConnectionStart (10, 10, "connection.start") { version_major: u8, version_minor: u8, server_properties: FieldTable, mechanisms: LongStr, locales: LongStr }
    ConnectionStartOk (10, 11, "connection.start_ok") { client_properties: FieldTable, mechanism: ShortStr, response: LongStr, locale: ShortStr }
    ConnectionSecure (10, 20, "connection.secure") { challenge: LongStr }
    ConnectionSecureOk (10, 21, "connection.secure_ok") { response: LongStr }
    ConnectionTune (10, 30, "connection.tune") { channel_max: u16, frame_max: u32, heartbeat: u16 }
    ConnectionTuneOk (10, 31, "connection.tune_ok") { channel_max: u16, frame_max: u32, heartbeat: u16 }
    ConnectionOpen (10, 40, "connection.open") { virtual_host: ShortStr, capabilities: ShortStr, insist: bool }
    ConnectionOpenOk (10, 41, "connection.open_ok") { known_hosts: ShortStr }
    ConnectionClose (10, 50, "connection.close") { reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16 }
    ConnectionCloseOk (10, 51, "connection.close_ok") {}
    ConnectionBlocked (10, 60, "connection.blocked") { reason: ShortStr }
    ConnectionUnblocked (10, 61, "connection.unblocked") {}
    ConnectionUpdateSecret (10, 70, "connection.update_secret") { new_secret: LongStr, reason: ShortStr }
    ConnectionUpdateSecretOk (10, 71, "connection.update_secret_ok") {}

    ChannelOpen (20, 10, "channel.open") { out_of_band: ShortStr }
    ChannelOpenOk (20, 11, "channel.open_ok") { channel_id: LongStr }
    ChannelFlow (20, 20, "channel.flow") { active: bool }
    ChannelFlowOk (20, 21, "channel.flow_ok") { active: bool }
    ChannelClose (20, 40, "channel.close") { reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16 }
    ChannelCloseOk (20, 41, "channel.close_ok") {}

    ExchangeDeclare (40, 10, "exchange.declare") { ticket: u16, exchange: ShortStr, kind: ShortStr, passive: bool, durable: bool, auto_delete: bool, internal: bool, nowait: bool, arguments: FieldTable }
    ExchangeDeclareOk (40, 11, "exchange.declare_ok") {}
    ExchangeDelete (40, 20, "exchange.delete") { ticket: u16, exchange: ShortStr, if_unused: bool, nowait: bool }
    ExchangeDeleteOk (40, 21, "exchange.delete_ok") {}
    ExchangeBind (40, 30, "exchange.bind") { ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr, nowait: bool, arguments: FieldTable }
    ExchangeBindOk (40, 31, "exchange.bind_ok") {}
    ExchangeUnbind (40, 40, "exchange.unbind") { ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr, nowait: bool, arguments: FieldTable }
    ExchangeUnbindOk (40, 51, "exchange.unbind_ok") {}

    QueueDeclare (50, 10, "queue.declare") { ticket: u16, queue: ShortStr, passive: bool, durable: bool, exclusive: bool, auto_delete: bool, nowait: bool, arguments: FieldTable }
    QueueDeclareOk (50, 11, "queue.declare_ok") { queue: ShortStr, message_count: u32, consumer_count: u32 }
    QueueBind (50, 20, "queue.bind") { ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr, nowait: bool, arguments: FieldTable }
    QueueBindOk (50, 21, "queue.bind_ok") {}
    QueuePurge (50, 30, "queue.purge") { ticket: u16, queue: ShortStr, nowait: bool }
    QueuePurgeOk (50, 31, "queue.purge_ok") { message_count: u32 }
    QueueDelete (50, 40, "queue.delete") { ticket: u16, queue: ShortStr, if_unused: bool, if_empty: bool, nowait: bool }
    QueueDeleteOk (50, 41, "queue.delete_ok") { message_count: u32 }
    QueueUnbind (50, 50, "queue.unbind") { ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr, arguments: FieldTable }
    QueueUnbindOk (50, 51, "queue.unbind_ok") {}

    BasicQos (60, 10, "basic.qos") { prefetch_size: u32, prefetch_count: u16, global: bool }
    BasicQosOk (60, 11, "basic.qos_ok") {}
    BasicConsume (60, 20, "basic.consume") { ticket: u16, queue: ShortStr, consumer_tag: ShortStr, no_local: bool, no_ack: bool, exclusive: bool, nowait: bool, arguments: FieldTable }
    BasicConsumeOk (60, 21, "basic.consume_ok") { consumer_tag: ShortStr }
    BasicCancel (60, 30, "basic.cancel") { consumer_tag: ShortStr, nowait: bool }
    BasicCancelOk (60, 31, "basic.cancel_ok") { consumer_tag: ShortStr }
    BasicPublish (60, 40, "basic.publish") { ticket: u16, exchange: ShortStr, routing_key: ShortStr, mandatory: bool, immediate: bool }
    BasicReturn (60, 50, "basic.return") { reply_code: u16, reply_text: ShortStr, exchange: ShortStr, routing_key: ShortStr }
    BasicDeliver (60, 60, "basic.deliver") { consumer_tag: ShortStr, delivery_tag: u64, redelivered: bool, exchange: ShortStr, routing_key: ShortStr }
    BasicGet (60, 70, "basic.get") { ticket: u16, queue: ShortStr, no_ack: bool }
    BasicGetOk (60, 71, "basic.get_ok") { delivery_tag: u64, redelivered: bool, exchange: ShortStr, routing_key: ShortStr, message_count: u32 }
    BasicGetEmpty (60, 72, "basic.get_empty") { cluster_id: ShortStr }
    BasicAck (60, 80, "basic.ack") { delivery_tag: u64, multiple: bool }
    BasicReject (60, 90, "basic.reject") { delivery_tag: u64, requeue: bool }
    BasicRecoverAsync (60, 100, "basic.recover_async") { requeue: bool }
    BasicRecover (60, 110, "basic.recover") { requeue: bool }
    BasicRecoverOk (60, 111, "basic.recover_ok") {}
    BasicNack (60, 120, "basic.nack") { delivery_tag: u64, multiple: bool, requeue: bool }

    ConfirmSelect (85, 10, "confirm.select") { nowait: bool }
    ConfirmSelectOk (85, 11, "confirm.select_ok") {}

    TxSelect (90, 10, "tx.select") {}
    TxSelectOk (90, 11, "tx.select_ok") {}
    TxCommit (90, 20, "tx.commit") {}
    TxCommitOk (90, 21, "tx.commit_ok") {}
    TxRollback (90, 30, "tx.rollback") {}
    TxRollbackOk (90, 31, "tx.rollback_ok") {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Method) {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(Method::decode(buf.freeze()).unwrap(), m);
    }

    #[test]
    fn methods_round_trip_with_packed_bits() {
        let mut args = FieldTable::new();
        args.insert("x-message-ttl", crate::table::FieldValue::I32(1000));
        round_trip(
            QueueDeclare {
                queue: "q".into(),
                durable: true,
                auto_delete: true,
                arguments: args,
                ..Default::default()
            }
            .into(),
        );
        round_trip(
            BasicNack {
                delivery_tag: 7,
                multiple: true,
                requeue: false,
            }
            .into(),
        );
        round_trip(
            BasicDeliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 1 << 40,
                redelivered: true,
                exchange: "".into(),
                routing_key: "rk".into(),
            }
            .into(),
        );
        round_trip(ConnectionCloseOk {}.into());
    }

    #[test]
    fn bits_share_one_octet() {
        let mut buf = BytesMut::new();
        Method::from(QueueDeclare {
            queue: "".into(),
            passive: true,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: true,
            ..Default::default()
        })
        .encode(&mut buf);
        // class, method, ticket, empty name, then one octet with bits 0, 2 and 4 set.
        assert_eq!(&buf[..], &[0, 50, 0, 10, 0, 0, 0, 0b10101, 0, 0, 0, 0]);
    }

    #[test]
    fn unknown_method_is_an_error() {
        let err = Method::decode(Bytes::from_static(&[0, 60, 0, 99])).unwrap_err();
        assert_eq!(err, DecodeError::UnknownMethod(60, 99));
    }
}
