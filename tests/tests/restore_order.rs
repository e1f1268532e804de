//! Definitions are restored (at start-up from `definitions.json`, and by an import) so that
//! nothing applying a policy does to a queue's messages is lost: bindings are restored before
//! policies, so the dead letters a policy makes (a `max-length` below what the queue holds)
//! reach the dead-letter exchange's queues. Found by the soak test
//! (`crates/warren/tests/soak.rs`, an hour's run): a queue restarted holding more than its
//! max-length policy allowed (its consumer's unacked messages came back at shutdown) dropped
//! the overflow through a dead-letter exchange that had no bindings yet, so a confirmed message
//! was neither delivered nor dead-lettered.

use lapin::options::QueueDeclareOptions;
use serde_json::json;
use warren_broker::definitions::Definitions;
use warren_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_applied_after_the_bindings_their_dead_letters_need() {
    let b = TestBroker::start();
    let (_conn, ch) = open(&b).await;
    declare_exchange(&ch, "dlx", lapin::ExchangeKind::Fanout).await;
    declare(&ch, "dead").await;
    let args = table(&[("x-dead-letter-exchange", long("dlx"))]);
    within(
        "declare q",
        ch.queue_declare("q".into(), QueueDeclareOptions::default(), args),
    )
    .await
    .expect("declare q");
    for i in 0..5 {
        publish(&ch, "", "q", format!("m{i}").as_bytes()).await;
    }
    wait_counts(&b, "q", 5, 0).await;
    // What a restart restores, in one import: the binding and a policy the queue is over.
    let defs: Definitions = serde_json::from_value(json!({
        "policies": [{"vhost": "/", "name": "cap", "pattern": "^q$", "apply-to": "queues",
                      "priority": 0, "definition": {"max-length": 2}}],
        "bindings": [{"source": "dlx", "vhost": "/", "destination": "dead",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    }))
    .expect("definitions");
    let errors = b.broker.import_definitions(&defs);
    assert!(errors.is_empty(), "{errors:?}");
    wait_counts(&b, "q", 2, 0).await;
    assert_eq!(drain(&ch, "dead").await, ["m0", "m1", "m2"]);
}
