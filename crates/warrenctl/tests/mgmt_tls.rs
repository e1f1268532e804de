//! warrenctl against the management API over HTTPS (RabbitMQ's `management.ssl.*`): its
//! `--cacert`, `--cert` and `--key` options, with certificates made by rcgen, against the API
//! served in-process by `warren_mgmt::serve_listeners`.

use warren_tests::mgmt::{run_warrenctl, HttpsApi};
use warren_tests::Pki;

/// The `warrenctl` binary, built by Cargo for this package's tests.
const WARRENCTL: &str = env!("CARGO_BIN_EXE_warrenctl");

/// Runs warrenctl with `args`; exit code, stdout, stderr.
async fn warrenctl(args: Vec<String>) -> (i32, String, String) {
    let out = run_warrenctl(WARRENCTL, args).await;
    (out.code, out.stdout, out.stderr)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warrenctl_over_https_with_cacert_and_a_client_certificate() {
    let pki = Pki::new("mgmt-ctl");
    let api = HttpsApi::start(&pki.options(true, true), false).await;
    let url = api.https_url("");
    let ca = pki.ca_file();
    let (cert, key) = pki.client("ops").write(&pki.dir, "ops");
    let (code, out, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-q",
        "list_vhosts",
    ]))
    .await;
    assert_eq!((code, out.as_str()), (0, "name\n/\n"), "stderr: {err}");
    let (code, out, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "status",
    ]))
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.contains(&format!(
            "port: {}, protocol: https, purpose: HTTP API over TLS (HTTPS)",
            api.https.port()
        )),
        "{out}"
    );
    // Without the client certificate: refused, exit 69 and a hint.
    let (code, _, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "list_vhosts",
    ]))
    .await;
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("--cert"), "{err}");
    // Without --cacert the broker's certificate is not trusted.
    let (code, _, err) = warrenctl(strings(&["--url", &url, "list_vhosts"])).await;
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("--cacert"), "{err}");
    // Bad files are named.
    let (code, _, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cacert",
        "/nonexistent/ca.pem",
        "list_vhosts",
    ]))
    .await;
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--cacert /nonexistent/ca.pem"), "{err}");
    let (code, _, err) = warrenctl(strings(&[
        "--url",
        &url,
        "--cert",
        cert.to_str().unwrap(),
        "list_vhosts",
    ]))
    .await;
    assert_eq!(code, 64, "{err}");
}
