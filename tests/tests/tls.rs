//! AMQPS: a TLS listener with certificates made by rcgen, clients with and without a valid
//! client certificate, under `verify_none`, `verify_peer` and `fail_if_no_peer_cert`.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;
use warren_server::tls::{acceptor, serve_tls, TlsOptions};
use warren_tests::raw::{method_frame, PROTOCOL_HEADER};
use warren_tests::within;
use warren_tests::TestBroker;
use warren_tests::{Identity, Pki};

/// Starts an AMQPS listener for the test broker; returns its address.
async fn listen(b: &TestBroker, o: &TlsOptions) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let acc = acceptor(o).expect("acceptor");
    let broker = b.broker.clone();
    tokio::spawn(async move {
        let _keep = _tx;
        serve_tls(l, acc, broker, Arc::new(Default::default()), rx).await
    });
    addr
}

/// Connects with TLS, trusting `pki`'s CA, presenting `id` if given, and runs the AMQP
/// handshake as guest up to connection.open-ok. Errors say where it failed.
async fn amqps(addr: SocketAddr, pki: &Pki, id: Option<&Identity>) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match id {
        Some(id) => cfg
            .with_client_auth_cert(
                vec![id.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(id.key.serialize_der().into()),
            )
            .unwrap(),
        None => cfg.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    s.write_all(PROTOCOL_HEADER)
        .await
        .map_err(|e| e.to_string())?;
    expect_method(&mut s, (10, 10)).await?;
    let mut a = 0u32.to_be_bytes().to_vec();
    a.extend_from_slice(b"\x05PLAIN");
    a.extend_from_slice(&12u32.to_be_bytes());
    a.extend_from_slice(b"\0guest\0guest");
    a.extend_from_slice(b"\x05en_US");
    s.write_all(&method_frame(0, 10, 11, &a))
        .await
        .map_err(|e| e.to_string())?;
    expect_method(&mut s, (10, 30)).await?;
    let mut a = 2047u16.to_be_bytes().to_vec();
    a.extend_from_slice(&131072u32.to_be_bytes());
    a.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&method_frame(0, 10, 31, &a))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(&method_frame(0, 10, 40, b"\x01/\x00\x00"))
        .await
        .map_err(|e| e.to_string())?;
    expect_method(&mut s, (10, 41)).await
}

async fn expect_method(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    want: (u16, u16),
) -> Result<(), String> {
    let mut head = [0u8; 7];
    within("read frame", s.read_exact(&mut head))
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut rest = vec![0u8; size + 1];
    within("read frame", s.read_exact(&mut rest))
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let got = (
        u16::from_be_bytes([rest[0], rest[1]]),
        u16::from_be_bytes([rest[2], rest[3]]),
    );
    if got == want {
        Ok(())
    } else {
        Err(format!("expected method {want:?}, got {got:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_without_client_certificates() {
    let b = TestBroker::start();
    let pki = Pki::new("plain");
    let addr = listen(&b, &pki.options(false, false)).await;
    amqps(addr, &pki, None).await.expect("AMQP over TLS");
    // A client that does not trust the server's CA does not connect.
    let other = Pki::new("stranger");
    assert!(amqps(addr, &other, None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_with_fail_if_no_peer_cert_requires_a_valid_client_certificate() {
    let b = TestBroker::start();
    let pki = Pki::new("strict");
    let addr = listen(&b, &pki.options(true, true)).await;
    let id = pki.client("app");
    amqps(addr, &pki, Some(&id))
        .await
        .expect("a client certificate from the trusted CA is accepted");
    let e = amqps(addr, &pki, None).await.unwrap_err();
    assert!(!e.is_empty());
    // A certificate from another CA is refused.
    let other = Pki::new("rogue");
    let rogue = other.client("app");
    assert!(amqps(addr, &pki, Some(&rogue)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_without_fail_if_no_peer_cert_makes_certificates_optional() {
    let b = TestBroker::start();
    let pki = Pki::new("optional");
    let addr = listen(&b, &pki.options(true, false)).await;
    amqps(addr, &pki, None)
        .await
        .expect("no certificate is fine");
    amqps(addr, &pki, Some(&pki.client("app")))
        .await
        .expect("a valid certificate is fine");
    let other = Pki::new("rogue2");
    assert!(amqps(addr, &pki, Some(&other.client("x"))).await.is_err());
}

#[test]
fn bad_tls_files_are_reported_with_the_setting() {
    let o = TlsOptions {
        certfile: "/nonexistent/cert.pem".into(),
        keyfile: "/nonexistent/key.pem".into(),
        ..Default::default()
    };
    let e = acceptor(&o).err().unwrap();
    assert!(e.contains("ssl_options.certfile"), "{e}");
}
