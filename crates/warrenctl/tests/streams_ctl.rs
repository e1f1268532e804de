//! A stream as operators see it: `warrenctl list_queues` shows its type and the messages it
//! retains, and so does the management API (`type: stream`), consumed or not.

use lapin::options::BasicConsumeOptions;
use warren_tests::mgmt::{run_warrenctl, MgmtBroker};
use warren_tests::*;

const WARRENCTL: &str = env!("CARGO_BIN_EXE_warrenctl");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_and_the_api_show_a_stream() {
    let dir = TempDir::new("stream-ctl");
    let m = MgmtBroker::on(TestBroker::with_backend(dir.path(), FileBackend::shared())).await;
    let (_conn, ch) = open(&m.broker).await;
    declare_durable_args(&ch, "events", table(&[("x-queue-type", long("stream"))])).await;
    declare_durable(&ch, "plain").await;
    confirm_select(&ch).await;
    for i in 0..5 {
        publish_confirmed(&ch, "", "events", format!("e{i}").as_bytes()).await;
    }
    // A consumer reads them all and acks: a stream keeps them.
    qos(&ch, 10, false).await;
    let mut c = within(
        "consume",
        ch.basic_consume(
            "events".into(),
            "reader".into(),
            BasicConsumeOptions::default(),
            table(&[("x-stream-offset", long("first"))]),
        ),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        ack(&next(&mut c).await).await;
    }
    let out = run_warrenctl(
        WARRENCTL,
        vec![
            "--url".into(),
            m.url(),
            "-q".into(),
            "list_queues".into(),
            "name".into(),
            "type".into(),
            "messages".into(),
            "consumers".into(),
        ],
    )
    .await
    .ok();
    assert_eq!(
        out,
        "name\ttype\tmessages\tconsumers\nevents\tstream\t5\t1\nplain\tclassic\t0\t0\n"
    );
    let (status, q) = m.http("GET", "/api/queues/%2F/events", None);
    assert_eq!(status, 200);
    assert_eq!(q["type"], "stream");
    assert_eq!(q["messages"], 5);
    assert_eq!(q["messages_ready"], 5);
    assert_eq!(q["durable"], true);
}
