//! The `warren` binary's listeners: a bare port serves loopback on both families (a client
//! that resolves `localhost` to `::1`, as Node.js does, gets in), IPv6 addresses are taken
//! wherever an address is, and port 0 binds a free port that the listeners file names.

use lapin::options::*;
use lapin::types::FieldTable;
use warren_tests::*;

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// The AMQP handshake, channel.open and queue.declare over raw frames at `addr` (lapin's URL
/// parser does not take `[::1]`).
async fn raw_round_trip(addr: std::net::SocketAddr, queue: &str) {
    use warren_tests::raw::{method_frame, RawClient};
    let mut raw = RawClient::connect(addr).await;
    raw.handshake().await;
    raw.send(&method_frame(1, 20, 10, &[0])).await;
    assert_eq!(raw.read_method().await.unwrap().method_id(), (20, 11));
    let mut args = vec![0, 0, queue.len() as u8];
    args.extend_from_slice(queue.as_bytes());
    args.extend_from_slice(&[0, 0, 0, 0, 0]); // flags, empty arguments table
    raw.send(&method_frame(1, 50, 10, &args)).await;
    let ok = raw.read_method().await.expect("queue.declare-ok");
    assert_eq!(ok.method_id(), (50, 11));
    assert_eq!(&ok.payload[5..5 + queue.len()], queue.as_bytes());
}

async fn round_trip(url: &str, queue: &str) {
    let conn = connect_url(url).await;
    let ch = channel(&conn).await;
    within(
        "queue_declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare over this listener");
    publish(&ch, "", queue, b"hello").await;
    let got = within(
        "basic_get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the message back");
    assert_eq!(got.delivery.data, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_port_serves_ipv4_and_ipv6_loopback() {
    let tmp = TempDir::new("listen-both");
    let dir = tmp.join("data");
    // `0` is a bare port: 127.0.0.1 and ::1, each on a port of its own choosing.
    let broker = BrokerProcess::start_listening(WARREN, &dir, "0", &[]);
    let amqp: Vec<_> = broker
        .listeners
        .iter()
        .filter(|(p, _)| p == "amqp")
        .map(|(_, a)| *a)
        .collect();
    assert!(
        amqp.iter()
            .any(|a| a.ip().is_ipv4() && a.ip().is_loopback()),
        "{amqp:?}"
    );
    let v6 = amqp
        .iter()
        .find(|a| a.is_ipv6())
        .unwrap_or_else(|| panic!("no ::1 listener: {amqp:?}"));
    assert!(v6.ip().is_loopback());
    assert_ne!(v6.port(), 0, "the file names the bound port, not 0");
    // guest is loopback-only, and ::1 is loopback.
    raw_round_trip(*v6, "over-v6").await;
    round_trip(&broker.url(), "over-v4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_addresses_are_taken_in_every_listener_setting() {
    let tmp = TempDir::new("listen-v6");
    let dir = tmp.join("data");
    let broker =
        BrokerProcess::start_listening(WARREN, &dir, "[::1]:0", &["--mgmt-listen", "[::1]:0"]);
    let amqp = broker.listener("amqp").unwrap();
    assert!(amqp.is_ipv6() && amqp.ip().is_loopback(), "{amqp}");
    raw_round_trip(amqp, "v6-only").await;
    // The management API over IPv6 (beside the harness's 127.0.0.1 one: the flag repeats).
    let http = broker
        .listeners
        .iter()
        .filter(|(p, _)| p == "http")
        .map(|(_, a)| *a)
        .find(|a| a.is_ipv6())
        .expect("an IPv6 management listener");
    let mut s = std::net::TcpStream::connect(http).expect("connect to the management API over ::1");
    use std::io::{Read, Write};
    s.write_all(b"GET /api/overview HTTP/1.0\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    assert!(reply.contains("\"listeners\""), "{reply}");
}

#[test]
fn a_listener_setting_that_is_not_an_address_stops_startup_naming_the_key() {
    let dir = TempDir::new("listen-bad");
    let (code, err) = start_refused(WARREN, &dir, "listeners.tcp.local = localhost:5672\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("listeners.tcp.local"), "{err}");
}
