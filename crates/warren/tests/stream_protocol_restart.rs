//! The stream protocol on the `warren` binary: its listener comes up (`--stream-listen`, in
//! the listeners file as `stream`), and what a stream tracks survives the process: after
//! `kill -9` every confirmed message is there and a publisher reference's last publishing id
//! too (it is kept in the log's records, not only in the tracking file); after a SIGTERM
//! restart a named consumer's stored offset is read back. `stream.listeners.ssl.*` in
//! warren.conf serves it over TLS.

use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::{Client, ClientOptions, Environment};
use std::time::Duration;
use warren_tests::{install_default_crypto, within, BrokerProcess, Pki, TempDir};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

async fn env(port: u16) -> Environment {
    within(
        "stream environment",
        Environment::builder().host("127.0.0.1").port(port).build(),
    )
    .await
    .expect("connect over the stream protocol")
}

fn stream_port(b: &BrokerProcess) -> u16 {
    b.listener("stream")
        .expect("a stream line in the listeners file")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_and_stored_offsets_survive_the_process() {
    let dir = TempDir::new("stream-protocol-restart");
    let mut b = BrokerProcess::start(WARREN, dir.path(), &[]);
    let env1 = env(stream_port(&b)).await;
    within("create", env1.stream_creator().create("s"))
        .await
        .unwrap();
    let mut p = within("producer", env1.producer().name("w").build("s"))
        .await
        .unwrap();
    let batch: Vec<Message> = (1..=20u64)
        .map(|i| {
            Message::builder()
                .body(format!("m{i}"))
                .publishing_id(i)
                .build()
        })
        .collect();
    let st = within("confirms", p.batch_send_with_confirm(batch))
        .await
        .unwrap();
    assert!(st.iter().all(|s| s.confirmed()));
    // No chance for a graceful close: the confirms are all the broker promised.
    b.kill9_and_restart(&[]);
    // Its connection is gone with the process; the client's drop would block on a close.
    std::mem::forget(p);

    let port = stream_port(&b);
    let client = within(
        "client",
        Client::connect(
            ClientOptions::builder()
                .host("127.0.0.1")
                .port(port)
                .build(),
        ),
    )
    .await
    .unwrap();
    let seq = within("query", client.query_publisher_sequence("w", "s"))
        .await
        .unwrap();
    assert_eq!(seq, 20, "the last confirmed publishing id survives kill -9");
    let env2 = env(port).await;
    let mut c = within(
        "consumer",
        env2.consumer()
            .name("r")
            .offset(OffsetSpecification::First)
            .build("s"),
    )
    .await
    .unwrap();
    use futures_util::StreamExt;
    for i in 0..20u64 {
        let d = within("delivery", c.next()).await.unwrap().unwrap();
        assert_eq!(d.offset(), i);
        assert_eq!(d.message().data(), Some(format!("m{}", i + 1).as_bytes()));
    }
    within("store", c.store_offset(19)).await.unwrap();
    for _ in 0..100 {
        if c.query_offset().await.ok() == Some(19) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = c.handle().close().await;
    let _ = client.close().await;
    assert_eq!(b.sigterm_and_restart(&[]), Some(0));

    let port = stream_port(&b);
    let env3 = env(port).await;
    let c = within(
        "consumer",
        env3.consumer()
            .name("r")
            .offset(OffsetSpecification::Next)
            .build("s"),
    )
    .await
    .unwrap();
    assert_eq!(within("query offset", c.query_offset()).await.unwrap(), 19);
    let _ = c.handle().close().await;
}

/// `stream.listeners.ssl.default` with the `ssl_options.*` keys in warren.conf: the binary
/// serves the stream protocol over TLS, names it `stream/ssl` in the listeners file, and
/// rabbitmq-stream-client trusting the CA publishes and reads back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_conf_serves_the_stream_protocol_over_tls() {
    use rabbitmq_stream_client::TlsConfiguration;
    install_default_crypto();
    let dir = TempDir::new("stream-protocol-tls");
    let pki = Pki::new("stream-binary");
    let o = pki.options(false, false);
    let conf = dir.join("warren.conf");
    std::fs::write(
        &conf,
        format!(
            "stream.listeners.ssl.default = 127.0.0.1:0\nssl_options.certfile = {}\nssl_options.keyfile = {}\n",
            o.certfile.display(),
            o.keyfile.display()
        ),
    )
    .unwrap();
    let b = BrokerProcess::start(
        WARREN,
        &dir.join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let port = b
        .listener("stream/ssl")
        .expect("a stream/ssl line in the listeners file")
        .port();
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
    within("create", env.stream_creator().create("tls"))
        .await
        .unwrap();
    let p = within("producer", env.producer().build("tls"))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..10)
        .map(|i| Message::builder().body(format!("t{i}")).build())
        .collect();
    let st = within("confirms", p.batch_send_with_confirm(batch))
        .await
        .unwrap();
    assert!(st.iter().all(|s| s.confirmed()));
    within("close producer", p.close()).await.unwrap();
    let mut c = within(
        "consumer",
        env.consumer()
            .offset(OffsetSpecification::First)
            .build("tls"),
    )
    .await
    .unwrap();
    use futures_util::StreamExt;
    for i in 0..10 {
        let d = within("delivery", c.next()).await.unwrap().unwrap();
        assert_eq!(d.offset(), i);
        assert_eq!(d.message().data(), Some(format!("t{i}").as_bytes()));
    }
    within("close consumer", c.handle().close()).await.unwrap();
}
