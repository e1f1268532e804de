//! Writes the small seed inputs under `fuzz/seeds/`: a client's frame stream from the protocol
//! header's end to a published message, and a field table and properties with every value type.
//! Run from `fuzz/`: `cargo run --example make_seeds`.

use bytes::BytesMut;
use std::fs;
use warren_protocol::codec::{LongStr, Writer};
use warren_protocol::frame::{write_content, write_deliver, write_heartbeat, write_method};
use warren_protocol::methods::*;
use warren_protocol::{BasicProperties, FieldTable, FieldValue, Method};

fn table() -> FieldTable {
    let mut inner = FieldTable::new();
    inner.insert("n", FieldValue::I32(-5));
    let mut t = FieldTable::new();
    let vals = [
        FieldValue::Bool(true),
        FieldValue::I8(-1),
        FieldValue::U8(200),
        FieldValue::I16(-300),
        FieldValue::U16(60000),
        FieldValue::I32(-70000),
        FieldValue::U32(4_000_000_000),
        FieldValue::I64(-1 << 40),
        FieldValue::F32(1.5),
        FieldValue::F64(-2.25),
        FieldValue::Decimal(2, 12345),
        FieldValue::from("hello"),
        FieldValue::Bytes(LongStr::from("\u{1}\u{2}")),
        FieldValue::Array(vec![FieldValue::I32(1), FieldValue::from("x")]),
        FieldValue::Timestamp(1_700_000_000),
        FieldValue::Table(inner),
        FieldValue::Void,
    ];
    for (i, v) in vals.into_iter().enumerate() {
        t.insert(format!("k{i}"), v);
    }
    t
}

fn properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("text/plain".into()),
        headers: Some(table()),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("c".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("1000".into()),
        timestamp: Some(99),
        ..Default::default()
    }
}

fn main() -> std::io::Result<()> {
    fs::create_dir_all("seeds/frame_decode")?;
    fs::create_dir_all("seeds/field_table")?;

    let mut s = BytesMut::new();
    let mut client_properties = FieldTable::new();
    client_properties.insert("product", "seed");
    let mut caps = FieldTable::new();
    caps.insert("publisher_confirms", true);
    client_properties.insert("capabilities", caps);
    let methods: Vec<(u16, Method)> = vec![
        (
            0,
            ConnectionStartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongStr::from("\0guest\0guest"),
                locale: "en_US".into(),
            }
            .into(),
        ),
        (
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 60,
            }
            .into(),
        ),
        (
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            }
            .into(),
        ),
        (1, ChannelOpen::default().into()),
        (1, ConfirmSelect::default().into()),
        (
            1,
            BasicQos {
                prefetch_count: 10,
                ..Default::default()
            }
            .into(),
        ),
        (
            1,
            QueueDeclare {
                queue: "q".into(),
                durable: true,
                arguments: table(),
                ..Default::default()
            }
            .into(),
        ),
        (
            1,
            QueueBind {
                queue: "q".into(),
                exchange: "amq.topic".into(),
                routing_key: "a.#".into(),
                ..Default::default()
            }
            .into(),
        ),
        (
            1,
            BasicConsume {
                queue: "q".into(),
                consumer_tag: "ct".into(),
                ..Default::default()
            }
            .into(),
        ),
    ];
    for (ch, m) in &methods {
        write_method(&mut s, *ch, m);
    }
    write_method(
        &mut s,
        1,
        &BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        }
        .into(),
    );
    write_content(&mut s, 1, &properties().to_bytes(), b"hello world", 131072);
    write_heartbeat(&mut s);
    write_method(
        &mut s,
        1,
        &BasicAck {
            delivery_tag: 1,
            multiple: true,
        }
        .into(),
    );
    write_method(
        &mut s,
        1,
        &ChannelClose {
            reply_code: 200,
            reply_text: "bye".into(),
            ..Default::default()
        }
        .into(),
    );
    fs::write("seeds/frame_decode/session", &s)?;

    let mut d = BytesMut::new();
    write_deliver(
        &mut d,
        1,
        "ct",
        7,
        true,
        "amq.topic",
        "a.b",
        &[0x10, 0, 2],
        &[7u8; 5000],
        4096,
    );
    fs::write("seeds/frame_decode/deliver_split_body", &d)?;

    let mut t = BytesMut::new();
    table().write(&mut Writer::new(&mut t));
    fs::write("seeds/field_table/every_type", &t)?;
    fs::write("seeds/field_table/properties", properties().to_bytes())?;
    Ok(())
}
