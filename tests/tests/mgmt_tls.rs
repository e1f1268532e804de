//! The management API over HTTPS (RabbitMQ's `management.ssl.*`): real TLS clients (ureq with
//! rustls) against the API served by `warren_mgmt::serve_listeners`, with certificates made by
//! rcgen. warrenctl over HTTPS is tested in `crates/warrenctl/tests/mgmt_tls.rs`, the `warren`
//! binary with `management.ssl.*` keys in its config file in `crates/warren/tests/mgmt_tls.rs`.

use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use warren_tests::mgmt::{agent, guest_get, listeners, HttpsApi};
use warren_tests::{within, Pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_to_clients_that_trust_the_ca() {
    let pki = Pki::new("mgmt-https");
    let api = HttpsApi::start(&pki.options(false, false), false).await;
    let overview = guest_get(agent(Some(&pki), None), api.https_url("/api/overview"))
        .await
        .expect("HTTPS GET /api/overview")
        .json();
    // guest is loopback-only: accepted, so the peer address reached the auth check.
    assert_eq!(overview["rabbitmq_version"], "3.13.0");
    assert_eq!(
        listeners(&overview),
        vec![format!("https:{}", api.https.port())]
    );
    let whoami = guest_get(agent(Some(&pki), None), api.https_url("/api/whoami"))
        .await
        .unwrap()
        .json();
    assert_eq!(whoami["name"], "guest");
    // The broker behind it is the one the API reports on.
    assert_eq!(
        overview["object_totals"]["queues"],
        api.broker
            .broker
            .vhosts()
            .iter()
            .map(|v| v.queue_count())
            .sum::<usize>()
    );
    // Wrong credentials get the API's 401, over TLS too.
    let a = agent(Some(&pki), None);
    let url = api.https_url("/api/overview");
    let status = tokio::task::spawn_blocking(move || {
        a.get(&url)
            .header("authorization", "Basic Z3Vlc3Q6d3Jvbmc=")
            .call()
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap()
    .expect("answer");
    assert_eq!(status, 401);
    // A client that does not trust the server's CA does not get through the handshake.
    let stranger = Pki::new("mgmt-stranger");
    let e = guest_get(agent(Some(&stranger), None), api.https_url("/api/overview"))
        .await
        .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_https_port_fails() {
    let pki = Pki::new("mgmt-plain");
    let api = HttpsApi::start(&pki.options(false, false), false).await;
    let url = format!("http://127.0.0.1:{}/api/overview", api.https.port());
    let r = guest_get(agent(None, None), url).await;
    assert!(r.is_err(), "plain HTTP answered on the HTTPS port: {r:?}");
    // The listener goes on serving HTTPS.
    guest_get(agent(Some(&pki), None), api.https_url("/api/overview"))
        .await
        .expect("HTTPS after a plain-HTTP attempt")
        .json();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_with_fail_if_no_peer_cert_requires_a_valid_client_certificate() {
    let pki = Pki::new("mgmt-strict");
    let api = HttpsApi::start(&pki.options(true, true), false).await;
    let url = api.https_url("/api/overview");
    let e = guest_get(agent(Some(&pki), None), url.clone())
        .await
        .expect_err("a client without a certificate is refused");
    assert!(!e.is_empty());
    let id = pki.client("ops");
    guest_get(agent(Some(&pki), Some(&id)), url.clone())
        .await
        .expect("a client certificate from the trusted CA is accepted")
        .json();
    let rogue = Pki::new("mgmt-rogue").client("ops");
    guest_get(agent(Some(&pki), Some(&rogue)), url)
        .await
        .expect_err("a certificate from another CA is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_peer_without_fail_if_no_peer_cert_makes_certificates_optional() {
    let pki = Pki::new("mgmt-optional");
    let api = HttpsApi::start(&pki.options(true, false), false).await;
    let url = api.https_url("/api/overview");
    guest_get(agent(Some(&pki), None), url.clone())
        .await
        .expect("no certificate is fine")
        .json();
    guest_get(agent(Some(&pki), Some(&pki.client("ops"))), url.clone())
        .await
        .expect("a valid certificate is fine")
        .json();
    let rogue = Pki::new("mgmt-rogue2").client("ops");
    guest_get(agent(Some(&pki), Some(&rogue)), url)
        .await
        .expect_err("an invalid certificate is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_disconnected_after_the_handshake_timeout() {
    let pki = Pki::new("mgmt-silent");
    let timeout = Duration::from_millis(300);
    let api = HttpsApi::start_with(&pki.options(false, false), false, timeout).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(api.https).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("the server closes a silent connection", s.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "the server sent something to a silent client");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_https_serve_the_same_api_and_stop_together() {
    let pki = Pki::new("mgmt-both");
    let api = HttpsApi::start(&pki.options(false, false), true).await;
    let http = api.http.unwrap();
    let plain = guest_get(agent(None, None), format!("http://{http}/api/overview"))
        .await
        .expect("plain HTTP")
        .json();
    let mut want = vec![
        format!("http:{}", http.port()),
        format!("https:{}", api.https.port()),
    ];
    want.sort();
    let mut got = listeners(&plain);
    got.sort();
    assert_eq!(got, want);
    // A vhost made through one listener is seen through the other.
    let a = agent(None, None);
    let url = format!("http://{http}/api/vhosts/both-listeners");
    let status = tokio::task::spawn_blocking(move || {
        a.put(&url)
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .send(&b"{}"[..])
            .map(|r| r.status().as_u16())
    })
    .await
    .unwrap()
    .expect("PUT vhost");
    assert_eq!(status, 201);
    let vhost = guest_get(
        agent(Some(&pki), None),
        api.https_url("/api/vhosts/both-listeners"),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(vhost["name"], "both-listeners");
    // Stopping ends both listeners, and serve_listeners returns.
    api.stop.send(true).unwrap();
    within("serve_listeners returns", api.served)
        .await
        .expect("serve task")
        .expect("served without error");
    assert!(tokio::net::TcpStream::connect(api.https).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}
