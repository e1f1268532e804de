//! Micro-benchmarks of the wire format: frame parsing, the publish path through the assembler,
//! the hand-written basic.deliver encoder, field tables and basic properties.
//!
//! Run: `cargo bench -p warren-protocol -- --warm-up-time 1 --measurement-time 3`
//! (a filter after `--`, e.g. `deliver`, runs a subset).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use warren_protocol::assembler::Assembler;
use warren_protocol::codec::{Field, Reader, Writer};
use warren_protocol::frame::{parse_frame, write_content, write_deliver, write_method, Frame};
use warren_protocol::methods::BasicPublish;
use warren_protocol::{BasicProperties, FieldTable, FieldValue, Method};

const FRAME_MAX: u32 = 131_072;

/// Properties as a typical client publishes them: content type, persistent, two headers,
/// a message id and a timestamp.
fn typical_properties() -> BasicProperties {
    let mut headers = FieldTable::new();
    headers.insert("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736");
    headers.insert("attempt", FieldValue::I32(1));
    BasicProperties {
        content_type: Some("application/json".into()),
        delivery_mode: Some(2),
        headers: Some(headers),
        message_id: Some("msg-000000123456".into()),
        timestamp: Some(1_764_000_000),
        ..Default::default()
    }
}

/// A client's connection.start-ok properties: the largest table most connections send.
fn client_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        caps.insert(c, FieldValue::Bool(true));
    }
    let mut t = FieldTable::new();
    t.insert("product", "lapin");
    t.insert("version", "4.12.3");
    t.insert("platform", "rust");
    t.insert("information", "https://github.com/amqp-rs/lapin");
    t.insert("connection_name", "orders-service-7f9c");
    t.insert("capabilities", caps);
    t
}

/// Queue arguments as declared for a quorum-style work queue.
fn queue_arguments() -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("x-message-ttl", FieldValue::I32(60_000));
    t.insert("x-max-length", FieldValue::I64(100_000));
    t.insert("x-dead-letter-exchange", "dlx");
    t.insert("x-queue-mode", "lazy");
    t
}

/// Method + header + body frames of one basic.publish.
fn publish_frames(body: usize) -> BytesMut {
    let mut out = BytesMut::new();
    let m: Method = BasicPublish {
        exchange: "amq.topic".into(),
        routing_key: "orders.eu.created".into(),
        ..Default::default()
    }
    .into();
    write_method(&mut out, 1, &m);
    write_content(
        &mut out,
        1,
        &typical_properties().to_bytes(),
        &vec![0x5a; body],
        FRAME_MAX,
    );
    out
}

fn frames(mut buf: BytesMut) -> Vec<Frame> {
    let mut v = Vec::new();
    while let Some(f) = parse_frame(&mut buf, FRAME_MAX).unwrap() {
        v.push(f);
    }
    v
}

fn bench_parse_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_frame");
    // 100 publishes (300 frames) in one read buffer, as a pipelining publisher fills it.
    for body in [16usize, 1024] {
        let one = publish_frames(body);
        let mut input = BytesMut::new();
        for _ in 0..100 {
            input.extend_from_slice(&one);
        }
        let input = input.freeze();
        g.throughput(Throughput::Elements(300));
        g.bench_function(format!("300 frames, {body} B bodies"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| {
                    let mut n = 0;
                    while let Some(f) = parse_frame(buf, FRAME_MAX).unwrap() {
                        black_box(&f);
                        n += 1;
                    }
                    assert_eq!(n, 300);
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("basic.publish");
    g.throughput(Throughput::Elements(1));
    for body in [16usize, 1024] {
        let fs = frames(publish_frames(body));
        assert_eq!(fs.len(), 3);
        // Decode: method + content header + body frames through the assembler to a Command.
        g.bench_function(format!("assemble {body} B"), |b| {
            let mut a = Assembler::new();
            b.iter(|| {
                let mut done = None;
                for f in &fs {
                    done = a.push(f.clone(), 1 << 27).unwrap();
                }
                black_box(done.unwrap())
            })
        });
        // Encode: what a client (or the shovel-like paths) writes for one publish.
        let m: Method = BasicPublish {
            exchange: "amq.topic".into(),
            routing_key: "orders.eu.created".into(),
            ..Default::default()
        }
        .into();
        let props = typical_properties().to_bytes();
        let payload = vec![0x5a; body];
        g.bench_function(format!("encode {body} B"), |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                write_method(&mut out, 1, black_box(&m));
                write_content(&mut out, 1, &props, &payload, FRAME_MAX);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_deliver");
    g.throughput(Throughput::Elements(1));
    let props = typical_properties().to_bytes();
    for body in [16usize, 1024, 64 * 1024] {
        let payload = Bytes::from(vec![0x5a; body]);
        g.bench_function(format!("{body} B"), |b| {
            let mut out = BytesMut::with_capacity(128 * 1024);
            let mut tag = 0u64;
            b.iter(|| {
                out.clear();
                tag += 1;
                write_deliver(
                    &mut out,
                    1,
                    "amq.ctag-Xk3bH8fJq2mYv0aT5rLw9Q",
                    tag,
                    false,
                    "amq.topic",
                    "orders.eu.created",
                    &props,
                    &payload,
                    FRAME_MAX,
                );
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("field_table");
    for (name, table) in [
        ("client properties", client_properties()),
        ("queue arguments", queue_arguments()),
    ] {
        let mut raw = BytesMut::new();
        table.write(&mut Writer::new(&mut raw));
        let raw = raw.freeze();
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(format!("decode {name} ({} B)", raw.len()), |b| {
            b.iter(|| FieldTable::read(&mut Reader::new(black_box(raw.clone()))).unwrap())
        });
        g.bench_function(format!("encode {name} ({} B)", raw.len()), |b| {
            let mut out = BytesMut::with_capacity(1024);
            b.iter(|| {
                out.clear();
                black_box(&table).write(&mut Writer::new(&mut out));
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn bench_properties(c: &mut Criterion) {
    let mut g = c.benchmark_group("basic_properties");
    g.throughput(Throughput::Elements(1));
    let minimal = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    for (name, props) in [("minimal", minimal), ("typical", typical_properties())] {
        let raw = props.to_bytes();
        g.bench_function(format!("decode {name} ({} B)", raw.len()), |b| {
            b.iter(|| BasicProperties::decode(black_box(raw.clone())).unwrap())
        });
        g.bench_function(format!("encode {name} ({} B)", raw.len()), |b| {
            let mut out = BytesMut::with_capacity(256);
            b.iter(|| {
                out.clear();
                black_box(&props).encode(&mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_parse_frame,
    bench_publish,
    bench_deliver,
    bench_table,
    bench_properties
);
criterion_main!(benches);
