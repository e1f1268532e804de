//! RabbitMQ's stream protocol (port 5552) with RabbitMQ's own Rust client,
//! `rabbitmq-stream-client`, over real sockets against an in-process broker: stream
//! creation and deletion with their response codes, publishing with confirms, deduplication
//! by publisher reference, sub-entry batches, subscriptions from first / next / last / an
//! offset / a time, credit, stored offsets (across a restart), filters (publish version 2's
//! values, exact server-side), and one stream shared with AMQP 0-9-1 both ways. Malformed and unknown commands over a raw socket.
//! `crates/warren/tests/stream_protocol_restart.rs` restarts the real binary.

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_stream_client::error::{ProducerCreateError, StreamCreateError, StreamDeleteError};
use rabbitmq_stream_client::types::{
    ByteCapacity, Message, OffsetSpecification, ResponseCode, SimpleValue,
};
use rabbitmq_stream_client::{
    Client, ClientOptions, ConfirmationStatus, Dedup, Environment, Producer,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_tests::*;

fn broker(dir: &TempDir) -> TestBroker {
    TestBroker::with_backend(dir.path(), FileBackend::shared())
}

async fn connect_env(b: &TestBroker) -> Environment {
    within(
        "stream environment",
        Environment::builder()
            .host("127.0.0.1")
            .port(b.stream_addr.port())
            .build(),
    )
    .await
    .expect("connect over the stream protocol")
}

async fn create(env: &Environment, name: &str) {
    within("create stream", env.stream_creator().create(name))
        .await
        .expect("create stream");
}

/// A raw client (the crate's low-level API) connected to `b`'s stream port.
async fn client(b: &TestBroker) -> Client {
    within(
        "client",
        Client::connect(
            ClientOptions::builder()
                .host("127.0.0.1")
                .port(b.stream_addr.port())
                .build(),
        ),
    )
    .await
    .unwrap()
}

/// Publishes messages `{prefix}{id}` with publishing ids `ids` through a named producer;
/// returns their confirmation statuses.
async fn send_numbered(
    p: &mut Producer<Dedup>,
    prefix: &str,
    ids: std::ops::RangeInclusive<u64>,
) -> Vec<ConfirmationStatus> {
    let batch: Vec<Message> = ids
        .map(|i| {
            Message::builder()
                .body(format!("{prefix}{i}"))
                .publishing_id(i)
                .build()
        })
        .collect();
    within("confirms", p.batch_send_with_confirm(batch))
        .await
        .unwrap()
}

/// Subscribes `client` to `stream` from the first message with one credit, as subscription
/// `id`; returns the response code.
async fn subscribe_first(client: &Client, id: u8, stream: &str) -> ResponseCode {
    let r = within(
        "subscribe",
        client.subscribe(
            id,
            stream,
            OffsetSpecification::First,
            1,
            Default::default(),
        ),
    )
    .await
    .unwrap();
    r.code().clone()
}

fn msg(body: impl Into<Vec<u8>>) -> Message {
    Message::builder().body(body).build()
}

/// Publishes `bodies` with confirms; every confirm must be positive.
async fn publish(env: &Environment, stream: &str, bodies: &[String]) {
    let producer = within("producer", env.producer().build(stream))
        .await
        .expect("producer");
    let msgs: Vec<Message> = bodies.iter().map(|b| msg(b.as_bytes().to_vec())).collect();
    let statuses = within("confirms", producer.batch_send_with_confirm(msgs))
        .await
        .expect("publish");
    assert_eq!(statuses.len(), bodies.len());
    assert!(
        statuses.iter().all(|s| s.confirmed()),
        "every message confirmed"
    );
    within("close producer", producer.close())
        .await
        .expect("close");
}

/// Reads `n` deliveries from a consumer starting at `spec`: (offset, body).
async fn read(
    env: &Environment,
    stream: &str,
    spec: OffsetSpecification,
    n: usize,
) -> Vec<(u64, String)> {
    let mut consumer = within("consumer", env.consumer().offset(spec).build(stream))
        .await
        .expect("consumer");
    let mut out = Vec::new();
    while out.len() < n {
        let d = within("delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        let body = String::from_utf8(d.message().data().expect("data").to_vec()).unwrap();
        out.push((d.offset(), body));
    }
    within("close consumer", consumer.handle().close())
        .await
        .expect("close consumer");
    out
}

/// Nothing more is delivered to a consumer at `spec` within a short wait.
async fn nothing_more(env: &Environment, stream: &str, spec: OffsetSpecification) {
    let mut consumer = within("consumer", env.consumer().offset(spec).build(stream))
        .await
        .expect("consumer");
    let got = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
    assert!(
        got.is_err(),
        "unexpected delivery: {:?}",
        got.ok().flatten().map(|d| d.map(|d| d.offset()))
    );
    let _ = consumer.handle().close().await;
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// `bodies(prefix, n)` as read from a stream's start: each at its offset.
fn numbered(prefix: &str, n: usize) -> Vec<(u64, String)> {
    bodies(prefix, n)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i as u64, s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_confirms_and_read_from_first() {
    let dir = TempDir::new("sp-first");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "events").await;
    publish(&env, "events", &bodies("m", 50)).await;
    let got = read(&env, "events", OffsetSpecification::First, 50).await;
    assert_eq!(got, numbered("m", 50));
    // The management view: a durable queue of type stream holding 50 messages.
    let q = b.broker.vhost("/").unwrap().queue("events").unwrap();
    assert_eq!(q.queue_type(), "stream");
    assert_eq!(q.message_count(), 50);
}

/// Consumers replaying together share the chunks the first one built (see the broker's
/// `stream::chunks`): each still gets every message at its offset, in order, and so does one
/// that starts after the others are done (the cache is gone by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_replaying_together_each_get_every_message() {
    let dir = TempDir::new("sp-together");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "shared").await;
    // Bodies of 1 KiB: a few hundred chunks.
    let long: Vec<String> = (0..3000)
        .map(|i| format!("{i:06}-{}", "x".repeat(1017)))
        .collect();
    for part in long.chunks(500) {
        publish(&env, "shared", part).await;
    }
    let expected: Vec<(u64, String)> = long
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, s)| (i as u64, s))
        .collect();
    let readers = (0..4).map(|_| read(&env, "shared", OffsetSpecification::First, 3000));
    for got in futures_util::future::join_all(readers).await {
        assert!(got == expected, "a consumer read something else");
    }
    let q = b.broker.vhost("/").unwrap().queue("shared").unwrap();
    assert!(
        q.stream().unwrap().chunks_shared() > 0,
        "the consumers built every chunk themselves"
    );
    let got = read(&env, "shared", OffsetSpecification::Offset(1234), 1766).await;
    assert!(
        got == expected[1234..],
        "a later consumer read something else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_from_offset_last_next_and_timestamp() {
    let dir = TempDir::new("sp-specs");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "s").await;
    publish(&env, "s", &bodies("a", 10)).await;
    // Offset 7: the rest of the stream from there.
    let got = read(&env, "s", OffsetSpecification::Offset(7), 3).await;
    assert_eq!(
        got,
        vec![(7, "a-7".into()), (8, "a-8".into()), (9, "a-9".into())]
    );
    // Last: the last message.
    let got = read(&env, "s", OffsetSpecification::Last, 1).await;
    assert_eq!(got, vec![(9, "a-9".into())]);
    // Next: nothing of what is there, then what comes.
    nothing_more(&env, "s", OffsetSpecification::Next).await;
    let mut next = within(
        "consumer",
        env.consumer().offset(OffsetSpecification::Next).build("s"),
    )
    .await
    .unwrap();
    // Timestamp: a time between two batches gives the second batch only.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish(&env, "s", &bodies("b", 5)).await;
    let d = within("next delivery", next.next()).await.unwrap().unwrap();
    assert_eq!((d.offset(), d.message().data().unwrap()), (10, &b"b-0"[..]));
    let _ = next.handle().close().await;
    let got = read(&env, "s", OffsetSpecification::Timestamp(between), 5).await;
    assert_eq!(got.first(), Some(&(10, "b-0".to_string())));
    assert_eq!(got.last(), Some(&(14, "b-4".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_by_publisher_reference() {
    let dir = TempDir::new("sp-dedup");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "d").await;
    let mut p = within("producer", env.producer().name("writer-1").build("d"))
        .await
        .unwrap();
    let st = send_numbered(&mut p, "x", 1..=10).await;
    assert!(st.iter().all(|s| s.confirmed()));
    within("close", p.close()).await.unwrap();

    // The broker remembers the reference's last publishing id.
    let client = client(&b).await;
    let seq = within("query", client.query_publisher_sequence("writer-1", "d"))
        .await
        .unwrap();
    assert_eq!(seq, 10);
    assert_eq!(
        within("query", client.query_publisher_sequence("nobody", "d"))
            .await
            .unwrap(),
        0
    );

    // Ids 6..=15 again: 6..=10 are confirmed but not appended, 11..=15 are new.
    let mut p = within("producer", env.producer().name("writer-1").build("d"))
        .await
        .unwrap();
    let st = send_numbered(&mut p, "x", 6..=15).await;
    assert!(
        st.iter().all(|s| s.confirmed()),
        "duplicates are confirmed too"
    );
    within("close", p.close()).await.unwrap();
    let got = read(&env, "d", OffsetSpecification::First, 15).await;
    let want: Vec<String> = (1..=15).map(|i| format!("x{i}")).collect();
    assert_eq!(got.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(), want);
    nothing_more(&env, "d", OffsetSpecification::Offset(15)).await;
    assert_eq!(
        within("query", client.query_publisher_sequence("writer-1", "d"))
            .await
            .unwrap(),
        15
    );
    let _ = client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_offsets_survive_a_restart_and_dedup_too() {
    let dir = TempDir::new("sp-offsets");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "o").await;
    publish(&env, "o", &bodies("m", 20)).await;
    let consumer = within(
        "consumer",
        env.consumer()
            .name("reader-1")
            .offset(OffsetSpecification::First)
            .build("o"),
    )
    .await
    .unwrap();
    // No offset yet: "no offset" (0x13).
    match within("query", consumer.query_offset()).await {
        Err(e) => assert!(format!("{e:?}").contains("OffsetNotFound"), "{e:?}"),
        Ok(o) => panic!("an offset before any was stored: {o}"),
    }
    within("store", consumer.store_offset(12)).await.unwrap();
    let mut stored = None;
    for _ in 0..100 {
        if let Ok(o) = consumer.query_offset().await {
            stored = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, Some(12));
    let _ = consumer.handle().close().await;
    let mut p = within("producer", env.producer().name("w").build("o"))
        .await
        .unwrap();
    let st = within(
        "confirm",
        p.send_with_confirm(Message::builder().body("dedup").publishing_id(77).build()),
    )
    .await
    .unwrap();
    assert!(st.confirmed());
    // Closed, never dropped open: the client's drop blocks on its own close.
    within("close", p.close()).await.unwrap();
    drop(env);
    b.stop();

    let b = broker(&dir);
    let env = connect_env(&b).await;
    let consumer = within(
        "consumer",
        env.consumer()
            .name("reader-1")
            .offset(OffsetSpecification::Next)
            .build("o"),
    )
    .await
    .unwrap();
    assert_eq!(within("query", consumer.query_offset()).await.unwrap(), 12);
    let _ = consumer.handle().close().await;
    let client = client(&b).await;
    assert_eq!(
        within("query", client.query_publisher_sequence("w", "o"))
            .await
            .unwrap(),
        77
    );
    // Reading on from the stored offset.
    let got = read(&env, "o", OffsetSpecification::Offset(13), 8).await;
    assert_eq!(got.first(), Some(&(13, "m-13".to_string())));
    assert_eq!(got.last(), Some(&(20, "dedup".to_string())));
    let _ = client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp091_and_the_stream_protocol_share_one_stream() {
    let dir = TempDir::new("sp-interop");
    let b = broker(&dir);
    let (_conn, ch) = open(&b).await;
    let args = table(&[("x-queue-type", long("stream"))]);
    declare_durable_args(&ch, "shared", args).await;
    // 0-9-1 → stream protocol: body, properties and headers arrive as AMQP 1.0.
    confirm_select(&ch).await;
    let mut headers = FieldTable::default();
    headers.insert("colour".into(), AMQPValue::LongString("blue".into()));
    headers.insert("n".into(), AMQPValue::LongLongInt(42));
    let props = lapin::BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("mid-1".into())
        .with_correlation_id("cid-1".into())
        .with_headers(headers)
        .with_delivery_mode(2);
    let confirm = publish_for_confirm(&ch, "", "shared", b"from 0-9-1", props).await;
    assert!(within("confirm", confirm).await.unwrap().is_ack());

    let env = connect_env(&b).await;
    let mut consumer = within(
        "consumer",
        env.consumer()
            .offset(OffsetSpecification::First)
            .build("shared"),
    )
    .await
    .unwrap();
    let d = within("delivery", consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.offset(), 0);
    let m = d.message();
    assert_eq!(m.data(), Some(&b"from 0-9-1"[..]));
    let p = m.properties().expect("properties");
    assert!(
        format!("{:?}", p.content_type).contains("text/plain"),
        "{:?}",
        p.content_type
    );
    assert!(
        format!("{:?}", p.message_id).contains("mid-1"),
        "{:?}",
        p.message_id
    );
    assert!(
        format!("{:?}", p.correlation_id).contains("cid-1"),
        "{:?}",
        p.correlation_id
    );
    let app = m.application_properties().expect("application properties");
    assert_eq!(app.get("colour"), Some(&SimpleValue::String("blue".into())));
    assert_eq!(app.get("n"), Some(&SimpleValue::Long(42)));

    // Stream protocol → 0-9-1: application properties become headers, the data the body.
    let producer = within("producer", env.producer().build("shared"))
        .await
        .unwrap();
    let m = Message::builder()
        .body(b"from the stream protocol".to_vec())
        .properties()
        .content_type("application/json")
        .message_id("sp-1".to_string())
        .message_builder()
        .application_properties()
        .insert("k", "v")
        .message_builder()
        .build();
    assert!(within("confirm", producer.send_with_confirm(m))
        .await
        .unwrap()
        .confirmed());
    let d = within("delivery", consumer.next()).await.unwrap().unwrap();
    assert_eq!(
        (d.offset(), d.message().data()),
        (1, Some(&b"from the stream protocol"[..]))
    );
    let _ = consumer.handle().close().await;
    within("close", producer.close()).await.unwrap();

    qos(&ch, 10, false).await;
    let mut c = within(
        "basic.consume",
        ch.basic_consume(
            "shared".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", AMQPValue::LongLongInt(1))]),
        ),
    )
    .await
    .unwrap();
    let d = within("0-9-1 delivery", c.next()).await.unwrap().unwrap();
    assert_eq!(&d.data[..], b"from the stream protocol");
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("sp-1")
    );
    let h = d.properties.headers().as_ref().expect("headers");
    assert_eq!(h.inner().get("k"), Some(&AMQPValue::LongString("v".into())));
    assert_eq!(
        h.inner().get("x-stream-offset"),
        Some(&AMQPValue::LongLongInt(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_codes_of_rabbitmq() {
    let dir = TempDir::new("sp-codes");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "exists").await;
    // Creating it again: "stream already exists" (0x05).
    match within("create", env.stream_creator().create("exists")).await {
        Err(StreamCreateError::Create { status, .. }) => {
            assert_eq!(status, ResponseCode::StreamAlreadyExists)
        }
        other => panic!("{other:?}"),
    }
    // A bad argument value: "precondition failed" (0x11), and nothing is created.
    let raw = client(&b).await;
    let bad = [("max-length-bytes".to_string(), "lots".to_string())]
        .into_iter()
        .collect();
    let r = within("create", raw.create_stream("bad-args", bad))
        .await
        .unwrap();
    assert_eq!(r.code(), &ResponseCode::PreconditionFailed);
    let bad = [("x-overflow".to_string(), "reject-publish".to_string())]
        .into_iter()
        .collect();
    let r = within("create", raw.create_stream("bad-args", bad))
        .await
        .unwrap();
    assert_eq!(r.code(), &ResponseCode::PreconditionFailed);
    assert!(b.broker.vhost("/").unwrap().queue("bad-args").is_none());
    // Retention arguments as the client sends them are taken.
    within(
        "create",
        env.stream_creator()
            .max_length(ByteCapacity::MB(5))
            .max_age(Duration::from_secs(3600))
            .max_segment_size(ByteCapacity::MB(1))
            .create("retained"),
    )
    .await
    .unwrap();
    let q = b.broker.vhost("/").unwrap().queue("retained").unwrap();
    assert_eq!(
        q.arguments
            .get("x-max-length-bytes")
            .and_then(|v| v.as_i64()),
        Some(5_000_000)
    );
    assert_eq!(
        q.arguments.get("x-max-age").and_then(|v| v.as_str()),
        Some("3600s")
    );
    let _ = raw.close().await;
    // Deleting or publishing to a stream that does not exist: "stream does not exist" (0x02).
    match within("delete", env.delete_stream("missing")).await {
        Err(StreamDeleteError::Delete { status, .. }) => {
            assert_eq!(status, ResponseCode::StreamDoesNotExist)
        }
        other => panic!("{other:?}"),
    }
    match within("producer", env.producer().build("missing")).await {
        Err(ProducerCreateError::StreamDoesNotExist { stream }) => assert_eq!(stream, "missing"),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a producer on a missing stream"),
    }
    // A classic queue is not a stream.
    let (_conn, ch) = open(&b).await;
    declare_durable(&ch, "classic").await;
    let client = client(&b).await;
    let md = within(
        "metadata",
        client.metadata(vec!["exists".into(), "classic".into()]),
    )
    .await
    .unwrap();
    assert!(
        md.contains_key("exists") && !md.contains_key("classic"),
        "{md:?}"
    );
    assert_eq!(md["exists"].leader.port, b.stream_addr.port() as u32);
    assert_eq!(
        subscribe_first(&client, 1, "classic").await,
        ResponseCode::StreamDoesNotExist
    );
    assert_eq!(
        subscribe_first(&client, 2, "exists").await,
        ResponseCode::Ok
    );
    assert_eq!(
        subscribe_first(&client, 2, "exists").await,
        ResponseCode::SubscriptionIdAlreadyExists
    );
    let r = within("unsubscribe", client.unsubscribe(9)).await.unwrap();
    assert_eq!(r.code(), &ResponseCode::SubscriptionIdDoesNotExist);
    let r = within("delete publisher", client.delete_publisher(7))
        .await
        .unwrap();
    assert_eq!(r.code(), &ResponseCode::PublisherDoesNotExist);
    // Deleting works, and then the stream is gone for both protocols.
    within("delete", env.delete_stream("exists")).await.unwrap();
    assert!(b.broker.vhost("/").unwrap().queue("exists").is_none());
    let _ = client.close().await;

    // Wrong password: "authentication failure" (0x08).
    let r = Environment::builder()
        .host("127.0.0.1")
        .port(b.stream_addr.port())
        .password("wrong")
        .build()
        .await;
    assert!(format!("{:?}", r.err()).contains("AuthenticationFailure"));
    // A vhost that does not exist: "virtual host access failure" (0x0c).
    let r = Environment::builder()
        .host("127.0.0.1")
        .port(b.stream_addr.port())
        .virtual_host("nowhere")
        .build()
        .await;
    assert!(format!("{:?}", r.err()).contains("VirtualHostAccessFailure"));
}

/// A stream-protocol frame: size, then `content`.
fn frame(content: &[u8]) -> Vec<u8> {
    let mut f = (content.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(content);
    f
}

/// Reads one frame's content.
async fn read_frame(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    within("frame size", s.read_exact(&mut len))
        .await
        .expect("a frame");
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    within("frame", s.read_exact(&mut buf))
        .await
        .expect("a frame");
    buf
}

/// Peer properties, SASL PLAIN guest/guest, tune, open "/" over a raw socket.
async fn raw_open(b: &TestBroker) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(b.stream_addr).await.unwrap();
    s.write_all(&frame(&[0, 0x11, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]))
        .await
        .unwrap();
    assert_eq!(
        &read_frame(&mut s).await[..10],
        &[0x80, 0x11, 0, 1, 0, 0, 0, 1, 0, 1]
    );
    s.write_all(&frame(&[0, 0x12, 0, 1, 0, 0, 0, 2]))
        .await
        .unwrap();
    let r = read_frame(&mut s).await;
    assert_eq!(&r[8..10], &[0, 1]);
    let mut auth = vec![0, 0x13, 0, 1, 0, 0, 0, 3, 0, 5];
    auth.extend_from_slice(b"PLAIN");
    let plain = b"\0guest\0guest";
    auth.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    auth.extend_from_slice(plain);
    s.write_all(&frame(&auth)).await.unwrap();
    assert_eq!(&read_frame(&mut s).await[8..10], &[0, 1], "authenticated");
    let tune = read_frame(&mut s).await;
    assert_eq!(&tune[..2], &[0, 0x14]);
    s.write_all(&frame(&[0, 0x14, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]))
        .await
        .unwrap();
    s.write_all(&frame(&[0, 0x15, 0, 1, 0, 0, 0, 4, 0, 1, b'/']))
        .await
        .unwrap();
    assert_eq!(
        &read_frame(&mut s).await[..10],
        &[0x80, 0x15, 0, 1, 0, 0, 0, 4, 0, 1],
        "opened"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_commands_close_with_unknown_frame() {
    let dir = TempDir::new("sp-raw");
    let b = broker(&dir);
    // An unknown command with a correlation id: answered "unknown frame" (0x0d), then the
    // server closes the connection with the same code.
    let mut s = raw_open(&b).await;
    s.write_all(&frame(&[0, 0x7e, 0, 1, 0, 0, 0, 9]))
        .await
        .unwrap();
    let r = read_frame(&mut s).await;
    assert_eq!(&r[..10], &[0x80, 0x7e, 0, 1, 0, 0, 0, 9, 0, 0x0d]);
    let close = read_frame(&mut s).await;
    assert_eq!(&close[..2], &[0, 0x16]);
    assert_eq!(&close[8..10], &[0, 0x0d]);
    // A truncated command: closed with "unknown frame" too.
    let mut s = raw_open(&b).await;
    s.write_all(&frame(&[0, 0x0d, 0, 1, 0, 0])).await.unwrap();
    let close = read_frame(&mut s).await;
    assert_eq!(
        (&close[..2], &close[8..10]),
        (&[0, 0x16][..], &[0, 0x0d][..])
    );
    // A frame above the initial limit before open: "frame too large" (0x0e).
    let mut s = tokio::net::TcpStream::connect(b.stream_addr).await.unwrap();
    s.write_all(&(1_000_000u32).to_be_bytes()).await.unwrap();
    let close = read_frame(&mut s).await;
    assert_eq!(
        (&close[..2], &close[8..10]),
        (&[0, 0x16][..], &[0, 0x0e][..])
    );
    // A command before authentication closes the connection.
    let mut s = tokio::net::TcpStream::connect(b.stream_addr).await.unwrap();
    s.write_all(&frame(&[0, 0x0e, 0, 1, 0, 0, 0, 1, 0, 1, b'x']))
        .await
        .unwrap();
    let close = read_frame(&mut s).await;
    assert_eq!(&close[..2], &[0, 0x16]);
    // The broker still serves well-behaved clients.
    let env = connect_env(&b).await;
    create(&env, "still-fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_entry_batches_are_unpacked_one_offset_per_message() {
    let dir = TempDir::new("sp-subentry");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "batched").await;
    // A publish frame with one sub-entry batch (uncompressed) of three messages, built by
    // hand: the Rust client does not send sub-entries.
    let mut s = raw_open(&b).await;
    let mut declare = vec![0, 0x01, 0, 1, 0, 0, 0, 5, 1, 0, 0];
    declare.extend_from_slice(&[0, 7]);
    declare.extend_from_slice(b"batched");
    s.write_all(&frame(&declare)).await.unwrap();
    assert_eq!(
        &read_frame(&mut s).await[8..10],
        &[0, 1],
        "publisher declared"
    );
    let mut inner = Vec::new();
    for body in [&b"one"[..], b"two", b"three"] {
        let mut m = Vec::new();
        m.extend_from_slice(&[0x00, 0x53, 0x75, 0xa0, body.len() as u8]);
        m.extend_from_slice(body);
        inner.extend_from_slice(&(m.len() as u32).to_be_bytes());
        inner.extend_from_slice(&m);
    }
    let mut publish = vec![0, 0x02, 0, 1, 1, 0, 0, 0, 1];
    publish.extend_from_slice(&5u64.to_be_bytes());
    publish.push(0x80);
    publish.extend_from_slice(&3u16.to_be_bytes());
    publish.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    publish.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    publish.extend_from_slice(&inner);
    s.write_all(&frame(&publish)).await.unwrap();
    let confirm = read_frame(&mut s).await;
    let mut want = vec![0, 0x03, 0, 1, 1, 0, 0, 0, 1];
    want.extend_from_slice(&5u64.to_be_bytes());
    assert_eq!(confirm, want, "publishing id 5 confirmed");
    let got = read(&env, "batched", OffsetSpecification::First, 3).await;
    assert_eq!(
        got,
        vec![(0, "one".into()), (1, "two".into()), (2, "three".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chunks_with_credit_and_a_deleted_stream() {
    let dir = TempDir::new("sp-credit");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "big").await;
    // 2,000 messages of 1 KiB: several chunks, each taking one credit.
    let body = "x".repeat(1024);
    let all: Vec<String> = (0..2000).map(|i| format!("{i:05}{body}")).collect();
    publish(&env, "big", &all).await;
    let got = read(&env, "big", OffsetSpecification::First, 2000).await;
    for (i, (off, b)) in got.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert!(b.starts_with(&format!("{i:05}")));
    }
    // A consumer whose stream is deleted is told so and ends.
    let mut c = within(
        "consumer",
        env.consumer()
            .offset(OffsetSpecification::Next)
            .build("big"),
    )
    .await
    .unwrap();
    within("delete", env.delete_stream("big")).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), c.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_))) | Err(_)),
        "no message from a deleted stream"
    );
    assert!(b.broker.vhost("/").unwrap().queue("big").is_none());
}

/// The stream protocol over TLS (`stream.listeners.ssl.*` with `ssl_options.*`):
/// rabbitmq-stream-client trusting the CA publishes with confirms and reads everything back
/// (metadata sends it to the TLS port it came in on); a client that does not trust the CA,
/// and a plain-text client on the TLS port, get no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_protocol_over_tls() {
    use rabbitmq_stream_client::TlsConfiguration;
    install_default_crypto();
    let dir = TempDir::new("sp-tls");
    let b = broker(&dir);
    let pki = Pki::new("stream");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let acceptor = warren_server::tls::acceptor(&pki.options(false, false)).expect("acceptor");
    let config = std::sync::Arc::new(warren_stream::StreamConfig {
        handshake_timeout: Duration::from_secs(2),
        ..Default::default()
    });
    tokio::spawn(warren_stream::serve_tls(
        listener,
        acceptor,
        b.broker.clone(),
        config,
        stop_rx,
    ));

    let tls = TlsConfiguration::builder()
        .add_root_certificates(pki.ca_file())
        .build()
        .unwrap();
    let env = within(
        "TLS environment",
        Environment::builder()
            .host("localhost")
            .port(port)
            .tls(tls)
            .build(),
    )
    .await
    .expect("connect over TLS");
    create(&env, "secure").await;
    publish(&env, "secure", &bodies("s", 300)).await;
    let got = read(&env, "secure", OffsetSpecification::First, 300).await;
    assert_eq!(got, numbered("s", 300));

    // A CA the server's certificate does not chain to: the handshake fails.
    let other = Pki::new("other");
    let untrusted = TlsConfiguration::builder()
        .add_root_certificates(other.ca_file())
        .build()
        .unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        Environment::builder()
            .host("localhost")
            .port(port)
            .tls(untrusted)
            .build(),
    )
    .await
    .expect("an answer, not a hang");
    assert!(
        refused.is_err(),
        "a client that does not trust the CA connected"
    );

    // Plain text on the TLS port: no stream-protocol answer; the server closes the socket
    // (a TLS alert, or nothing) within the handshake timeout.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&frame(&[0, 0x11, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]))
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a plain-text client open");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "a plain-text client got something other than a TLS alert: {got:?}"
    );
    // The plain listener's streams are the same ones: one store per stream.
    let q = b.broker.vhost("/").unwrap().queue("secure").unwrap();
    assert_eq!(q.message_count(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumers_take_turns() {
    let dir = TempDir::new("stream-sac");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "orders").await;
    publish(&env, "orders", &bodies("a", 5)).await;

    // The first of group "app" is active: told so, it answers where to start (here, the
    // first message), and gets everything from there.
    let mut first = within(
        "first consumer",
        env.consumer()
            .name("app")
            .enable_single_active_consumer(true)
            .consumer_update(|_active, _ctx| async { OffsetSpecification::First })
            .build("orders"),
    )
    .await
    .expect("single active consumer");
    for want in bodies("a", 5) {
        assert_eq!(next_body(&mut first).await, want);
    }
    // The second waits: what is published goes to the first only.
    let mut second = within(
        "second consumer",
        env.consumer()
            .name("app")
            .enable_single_active_consumer(true)
            .build("orders"),
    )
    .await
    .expect("second single active consumer");
    publish(&env, "orders", &bodies("b", 5)).await;
    for want in bodies("b", 5) {
        assert_eq!(next_body(&mut first).await, want);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.next())
            .await
            .is_err(),
        "a waiting consumer got a message"
    );
    // The first leaves: the second is told it is active, answers "next" (the client's
    // default), and gets what is published from then on.
    within("close the first", first.handle().close())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&env, "orders", &bodies("c", 5)).await;
    for want in bodies("c", 5) {
        assert_eq!(next_body(&mut second).await, want);
    }

    // Without a name, a single active consumer is refused (as RabbitMQ refuses it).
    let c = client(&b).await;
    let r = within(
        "nameless single active consumer",
        c.subscribe(
            1,
            "orders",
            OffsetSpecification::First,
            1,
            [("single-active-consumer".to_string(), "true".to_string())].into(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.code(), &ResponseCode::PreconditionFailed);
}

/// What a super stream consumer's consumer-update listener was told: (stream, active).
type Updates = std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>;

/// A super stream consumer of group `name` (single active consumer) that records its
/// consumer updates and answers each activation with "next".
async fn sac_super_consumer(
    env: &Environment,
    super_stream: &str,
    name: &str,
) -> (rabbitmq_stream_client::types::SuperStreamConsumer, Updates) {
    let updates: Updates = Default::default();
    let u = updates.clone();
    let c = within(
        "super stream single active consumer",
        env.super_stream_consumer()
            .name(name)
            .enable_single_active_consumer(true)
            .consumer_update(move |active, ctx| {
                u.lock().unwrap().push((ctx.stream(), active == 1));
                async { OffsetSpecification::Next }
            })
            .build(super_stream),
    )
    .await
    .expect("super stream consumer");
    (c, updates)
}

/// Waits until `updates` holds `want` (in any order), and nothing else.
async fn updates_are(updates: &Updates, want: &[(&str, bool)]) {
    let mut want: Vec<(String, bool)> = want.iter().map(|(s, a)| (s.to_string(), *a)).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut got = updates.lock().unwrap().clone();
        got.sort();
        if got == want || tokio::time::Instant::now() > deadline {
            assert_eq!(got, want, "consumer updates");
            updates.lock().unwrap().clear();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bodies a super stream consumer gets until nothing comes for 300 ms, sorted.
async fn drain_super(c: &mut rabbitmq_stream_client::types::SuperStreamConsumer) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), c.next()).await {
        let d = d.expect("not an error");
        got.push(String::from_utf8(d.message().data().unwrap().to_vec()).unwrap());
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_streams_single_active_consumers_share_its_partitions() {
    // As RabbitMQ: the active consumer of partition i's group is member i mod n; a change
    // makes the active one step down (consumer update, active = false) and activates the
    // next one once it has answered.
    let dir = TempDir::new("stream-super-sac");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    within(
        "create super stream",
        env.stream_creator()
            .create_super_stream("payments", 3, None),
    )
    .await
    .expect("create super stream");
    let publish_round = |round: &'static str| {
        let env = env.clone();
        async move {
            for p in 0..3 {
                publish(&env, &format!("payments-{p}"), &[format!("{round}{p}")]).await;
            }
        }
    };
    // Alone, the first consumer is active on every partition.
    let (mut first, first_updates) = sac_super_consumer(&env, "payments", "app").await;
    updates_are(
        &first_updates,
        &[
            ("payments-0", true),
            ("payments-1", true),
            ("payments-2", true),
        ],
    )
    .await;
    publish_round("a").await;
    assert_eq!(drain_super(&mut first).await, ["a0", "a1", "a2"]);

    // A second one: partition 1 (1 mod 2) moves to it, after the first stepped down.
    let (mut second, second_updates) = sac_super_consumer(&env, "payments", "app").await;
    updates_are(&first_updates, &[("payments-1", false)]).await;
    updates_are(&second_updates, &[("payments-1", true)]).await;
    publish_round("b").await;
    assert_eq!(drain_super(&mut first).await, ["b0", "b2"]);
    assert_eq!(drain_super(&mut second).await, ["b1"]);

    // The second leaves: partition 1 comes back to the first.
    within("close the second", second.handle().close())
        .await
        .unwrap();
    updates_are(&first_updates, &[("payments-1", true)]).await;
    publish_round("c").await;
    assert_eq!(drain_super(&mut first).await, ["c0", "c1", "c2"]);
    let _ = first.handle().close().await;
}

/// The next delivery's body.
async fn next_body(c: &mut rabbitmq_stream_client::Consumer) -> String {
    let d = within("delivery", c.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    String::from_utf8(d.message().data().unwrap().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_route_keys_to_their_partitions() {
    use rabbitmq_stream_client::types::{RoutingKeyRoutingStrategy, RoutingStrategy};

    let dir = TempDir::new("stream-super");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    // Three partitions, "invoices-0" to "invoices-2", bound with the keys "0" to "2".
    within(
        "create super stream",
        env.stream_creator()
            .create_super_stream("invoices", 3, None),
    )
    .await
    .expect("create super stream");
    let again = within(
        "create it again",
        env.stream_creator()
            .create_super_stream("invoices", 3, None),
    )
    .await;
    assert!(
        matches!(
            again,
            Err(StreamCreateError::Create {
                status: ResponseCode::StreamAlreadyExists,
                ..
            })
        ),
        "{again:?}"
    );
    let c = client(&b).await;
    let partitions = within("partitions", c.partitions("invoices".into()))
        .await
        .unwrap();
    assert_eq!(
        partitions.streams,
        ["invoices-0", "invoices-1", "invoices-2"]
    );
    let route = |key: &str| c.route(key.to_string(), "invoices".to_string());
    assert_eq!(
        within("route", route("1")).await.unwrap().streams,
        ["invoices-1"]
    );
    assert!(within("route", route("9"))
        .await
        .unwrap()
        .streams
        .is_empty());
    assert!(within("partitions", c.partitions("nothing".into()))
        .await
        .unwrap()
        .streams
        .is_empty());

    // A super stream producer routes each message by its key (the body's first character).
    let mut producer = within(
        "super stream producer",
        env.super_stream_producer(RoutingStrategy::RoutingKeyStrategy(
            RoutingKeyRoutingStrategy {
                routing_extractor: &|m: &Message| {
                    String::from_utf8_lossy(&m.data().unwrap()[..1]).into_owned()
                },
            },
        ))
        .build("invoices"),
    )
    .await
    .expect("super stream producer");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..9 {
        let tx = tx.clone();
        within(
            "send",
            producer.send(msg(format!("{}-{i}", i % 3)), move |r| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(r.map(|s| s.confirmed()).unwrap_or(false));
                }
            }),
        )
        .await
        .expect("send");
    }
    for _ in 0..9 {
        assert!(within("confirm", rx.recv()).await.unwrap(), "confirmed");
    }
    for p in 0..3 {
        let got = read(
            &env,
            &format!("invoices-{p}"),
            OffsetSpecification::First,
            3,
        )
        .await;
        let want: Vec<(u64, String)> = (0..3)
            .map(|n| (n as u64, format!("{p}-{}", p + 3 * n)))
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
    // A super stream consumer reads every partition.
    let mut consumer = within(
        "super stream consumer",
        env.super_stream_consumer()
            .offset(OffsetSpecification::First)
            .build("invoices"),
    )
    .await
    .expect("super stream consumer");
    let mut all = Vec::new();
    while all.len() < 9 {
        let d = within("delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        all.push(String::from_utf8(d.message().data().unwrap().to_vec()).unwrap());
    }
    all.sort();
    let mut want: Vec<String> = (0..9).map(|i| format!("{}-{i}", i % 3)).collect();
    want.sort();
    assert_eq!(all, want);
    let _ = consumer.handle().close().await;

    // Deleted: its partitions and its exchange go; deleting it again is refused.
    within("delete super stream", env.delete_super_stream("invoices"))
        .await
        .expect("delete super stream");
    assert!(b
        .broker
        .vhost("/")
        .is_some_and(|v| v.exchange("invoices").is_none() && v.queue("invoices-0").is_none()));
    assert!(within("delete again", env.delete_super_stream("invoices"))
        .await
        .is_err());
}

/// A consumer with a filter, without a client-side post-filter: what it reads, (offset,
/// body), until nothing more comes.
async fn read_filtered(
    env: &Environment,
    stream: &str,
    values: &[&str],
    match_unfiltered: bool,
) -> Vec<(u64, String)> {
    use rabbitmq_stream_client::FilterConfiguration;
    let filter = FilterConfiguration::new(
        values.iter().map(|v| v.to_string()).collect(),
        match_unfiltered,
    );
    let mut consumer = within(
        "consumer",
        env.consumer()
            .offset(OffsetSpecification::First)
            .filter_input(Some(filter))
            .build(stream),
    )
    .await
    .expect("consumer");
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        let d = d.expect("not an error");
        let body = String::from_utf8(d.message().data().expect("data").to_vec()).unwrap();
        out.push((d.offset(), body));
    }
    let _ = consumer.handle().close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_take_only_the_messages_asked_for() {
    let dir = TempDir::new("stream-filter");
    let b = broker(&dir);
    let env = connect_env(&b).await;
    create(&env, "states").await;
    // Offsets 0-11: "ca-0", "ny-1", "ca-2", …, each with its prefix as its filter value
    // (publish version 2), then 12-14 without a value.
    let producer = within(
        "producer",
        env.producer()
            .filter_value_extractor(|m| {
                let body = String::from_utf8_lossy(m.data().unwrap_or_default()).into_owned();
                body.split('-').next().unwrap_or_default().to_string()
            })
            .build("states"),
    )
    .await
    .expect("a producer with a filter value extractor (publish version 2)");
    let msgs: Vec<Message> = (0..12)
        .map(|i| msg(format!("{}-{i}", if i % 2 == 0 { "ca" } else { "ny" })))
        .collect();
    let statuses = within("confirms", producer.batch_send_with_confirm(msgs))
        .await
        .unwrap();
    assert!(statuses.iter().all(|s| s.confirmed()));
    producer.close().await.unwrap();
    publish(&env, "states", &bodies("none", 3)).await;

    let ca: Vec<(u64, String)> = (0..12).step_by(2).map(|i| (i, format!("ca-{i}"))).collect();
    assert_eq!(read_filtered(&env, "states", &["ca"], false).await, ca);
    let mut ny_or_none: Vec<(u64, String)> =
        (1..12).step_by(2).map(|i| (i, format!("ny-{i}"))).collect();
    ny_or_none.extend((0..3).map(|i| (12 + i, format!("none-{i}"))));
    assert_eq!(
        read_filtered(&env, "states", &["ny"], true).await,
        ny_or_none
    );
    assert_eq!(read_filtered(&env, "states", &["tx"], false).await, vec![]);
    // Both values: every message with one, in order.
    assert_eq!(
        read_filtered(&env, "states", &["ny", "ca"], false)
            .await
            .len(),
        12
    );

    // Over 0-9-1: the filter values published over the stream protocol count, and a value in
    // a 0-9-1 message's x-stream-filter-value header counts for stream-protocol consumers.
    let (conn, ch) = open(&b).await;
    confirm_select(&ch).await;
    let props = lapin::BasicProperties::default()
        .with_headers(table(&[("x-stream-filter-value", long("ca"))]));
    let c = publish_for_confirm(&ch, "", "states", b"ca-amqp", props).await;
    assert!(within("confirm", c).await.unwrap().is_ack());
    let mut want = ca.clone();
    want.push((15, "ca-amqp".into()));
    assert_eq!(read_filtered(&env, "states", &["ca"], false).await, want);
    let c_ch = channel(&conn).await;
    qos(&c_ch, 100, false).await;
    let mut amqp = consume_args(
        &c_ch,
        "states",
        "ca",
        table(&[
            ("x-stream-offset", long("first")),
            ("x-stream-filter", long("ca")),
        ]),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..7 {
        let d = within("0-9-1 delivery", amqp.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
    }
    let mut want: Vec<String> = ca.into_iter().map(|(_, b)| b).collect();
    want.push("ca-amqp".into());
    assert_eq!(got, want);
    drop(conn);
    b.stop();
}
