//! Micro-benchmarks of routing: `VHost::route`, what every basic.publish goes through, on an
//! in-memory vhost (no persistence, no sockets), for each exchange type.
//!
//! Run: `cargo bench -p warren-broker -- --warm-up-time 1 --measurement-time 3`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use warren_broker::exchange::Exchange;
use warren_broker::vhost::{ExchangeDeclare, QueueDeclare};
use warren_broker::{Message, Queue, VHost};
use warren_protocol::{BasicProperties, FieldTable, ShortStr};

fn declare_queue(vh: &Arc<VHost>, name: &str) {
    vh.declare_queue(
        QueueDeclare {
            name: name.into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
}

fn declare_exchange(vh: &Arc<VHost>, name: &str, kind: &str) -> Arc<Exchange> {
    vh.declare_exchange(ExchangeDeclare {
        name: name.into(),
        kind: kind.into(),
        ..Default::default()
    })
    .unwrap()
}

fn bind(vh: &Arc<VHost>, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    vh.bind_queue(queue, exchange, ShortStr::from(key), args, 1)
        .unwrap();
}

fn message(exchange: &str, key: &str, props: Bytes) -> Message {
    Message::new(
        exchange.into(),
        key.into(),
        props,
        Bytes::from_static(b"0123456789abcdef"),
    )
}

fn plain_props() -> Bytes {
    BasicProperties {
        delivery_mode: Some(1),
        ..Default::default()
    }
    .to_bytes()
}

/// The topic binding for queue `i`: a mix of exact keys, `*` and `#` patterns over
/// `region.service.level` words, with 100 regions and 100 services so the trie is wide.
fn topic_pattern(i: usize) -> String {
    let (r, s) = (i % 100, (i / 100) % 100);
    match (i / 7) % 4 {
        0 => format!("r{r}.s{s}.*"),
        1 => format!("r{r}.#"),
        2 => format!("*.s{s}.error"),
        _ => format!("r{r}.s{s}.info"),
    }
}

/// Routes `msg` once per iteration and reports how many queues it reached.
fn bench_route(
    c: &mut Criterion,
    group: &str,
    name: &str,
    vh: &Arc<VHost>,
    x: &Arc<Exchange>,
    msg: &Message,
) {
    let mut out: Vec<Arc<Queue>> = Vec::new();
    vh.route(x, msg, &mut out);
    let hits = out.len();
    assert!(hits > 0, "{group}/{name} routes nowhere");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("{name} -> {hits} queues"), |b| {
        b.iter(|| {
            vh.route(black_box(x), black_box(msg), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn topic(c: &mut Criterion) {
    for n in [100usize, 10_000] {
        let vh = VHost::new("/", None);
        let x = declare_exchange(&vh, "events", "topic");
        for i in 0..n {
            let q = format!("q{i}");
            declare_queue(&vh, &q);
            bind(&vh, &q, "events", &topic_pattern(i), FieldTable::new());
        }
        let name = format!("{n} bindings");
        let msg = message("events", "r5.s0.error", plain_props());
        bench_route(c, "route/topic", &name, &vh, &x, &msg);
        let miss = message("events", "r5x.s0x.debug", plain_props());
        let mut out = Vec::new();
        vh.route(&x, &miss, &mut out);
        assert!(out.is_empty());
        let mut g = c.benchmark_group("route/topic");
        g.bench_function(format!("{name} -> unroutable"), |b| {
            b.iter(|| {
                vh.route(black_box(&x), black_box(&miss), &mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

fn direct(c: &mut Criterion) {
    let vh = VHost::new("/", None);
    let x = vh.exchange("amq.direct").unwrap();
    for i in 0..1000 {
        let q = format!("q{i}");
        declare_queue(&vh, &q);
        bind(
            &vh,
            &q,
            "amq.direct",
            &format!("key-{i}"),
            FieldTable::new(),
        );
    }
    let msg = message("amq.direct", "key-500", plain_props());
    bench_route(c, "route/direct", "1000 bindings", &vh, &x, &msg);
    // The default exchange: a queue lookup by name.
    let default = vh.exchange("").unwrap();
    let msg = message("", "q500", plain_props());
    bench_route(c, "route/default", "1000 queues", &vh, &default, &msg);
}

fn fanout(c: &mut Criterion) {
    let vh = VHost::new("/", None);
    let x = vh.exchange("amq.fanout").unwrap();
    for i in 0..10 {
        let q = format!("q{i}");
        declare_queue(&vh, &q);
        bind(&vh, &q, "amq.fanout", "", FieldTable::new());
    }
    let msg = message("amq.fanout", "", plain_props());
    bench_route(c, "route/fanout", "10 bindings", &vh, &x, &msg);
}

fn headers(c: &mut Criterion) {
    let vh = VHost::new("/", None);
    let x = vh.exchange("amq.headers").unwrap();
    let formats = ["pdf", "zip", "csv", "json", "xml"];
    for i in 0..100 {
        let q = format!("q{i}");
        declare_queue(&vh, &q);
        let mut args = FieldTable::new();
        args.insert("x-match", if i % 2 == 0 { "all" } else { "any" });
        args.insert("format", formats[i % formats.len()]);
        args.insert("type", format!("t{}", i % 10).as_str());
        bind(&vh, &q, "amq.headers", "", args);
    }
    let mut h = FieldTable::new();
    h.insert("format", "pdf");
    h.insert("type", "t0");
    h.insert("region", "eu");
    let props = BasicProperties {
        delivery_mode: Some(1),
        headers: Some(h),
        ..Default::default()
    }
    .to_bytes();
    let msg = message("amq.headers", "", props);
    bench_route(c, "route/headers", "100 bindings", &vh, &x, &msg);
}

criterion_group!(benches, topic, direct, fanout, headers);
criterion_main!(benches);
