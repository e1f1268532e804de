//! The web console in a real browser: headless Chromium (Debian's `chromium`, driven over
//! the DevTools protocol) on the console the `warren` binary serves at `/` of its management
//! listener, with lapin publishing and consuming on the same broker. Checked: logging in, and
//! the error a wrong password shows; a queue lapin published to shows its counts; a consumer
//! that never acks shows its messages under Unacked on the queue page and in its consumer
//! row; getting messages and purging from the console; the layout on a phone-sized screen;
//! a `monitoring` user does not reach the Admin pages, an administrator does.
//!
//! Without Chromium these tests fail, saying how to install it. With
//! `WARREN_CONSOLE_SCREENSHOTS=<dir>` they also leave screenshots of the main pages there
//! (`docs/images/` holds the ones the README shows).

use lapin::options::QueueDeclareOptions;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use warren_tests::browser::Console;
use warren_tests::mgmt::http;
use warren_tests::*;

/// The `warren` binary, built by Cargo for this package's tests.
const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Where screenshots go: `$WARREN_CONSOLE_SCREENSHOTS`, else a scratch directory.
fn screenshots(scratch: &TempDir) -> PathBuf {
    std::env::var_os("WARREN_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| scratch.join("screenshots"))
}

fn mgmt_url(p: &BrokerProcess) -> String {
    format!(
        "http://{}",
        p.listener("http").expect("a management listener")
    )
}

/// A row's cell text: `tr[data-name=KEY] td.CLASS` in the table `table`.
fn cell(c: &Console, table: &str, key: &str, class: &str) -> String {
    c.text(&format!("#{table} tr[data-name=\"{key}\"] td.{class}"))
}

#[test]
fn log_in_see_counts_and_unacked_consumers_get_and_purge() {
    let dir = TempDir::new("console");
    let shots = screenshots(&dir);
    let broker = BrokerProcess::start(WARREN, &dir.join("data"), &[]);
    let rt = tokio::runtime::Runtime::new().expect("a runtime for lapin");

    // lapin: 7 messages waiting in "orders"; "jobs" has a consumer that takes 3 and never
    // acknowledges them.
    let (_conn, _ch, _consumer) = rt.block_on(async {
        let conn = connect_url(&broker.url()).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "orders").await;
        declare(&ch, "jobs").await;
        confirm_select(&ch).await;
        for i in 0..7 {
            publish_confirmed(&ch, "", "orders", format!("order {i}").as_bytes()).await;
        }
        for i in 0..5 {
            publish_confirmed(&ch, "", "jobs", format!("job {i}").as_bytes()).await;
        }
        let slow = channel(&conn).await;
        qos(&slow, 3, false).await;
        let mut consumer = consume(&slow, "jobs", "forgetful").await;
        assert_eq!(next_bodies(&mut consumer, 3).await.len(), 3);
        (conn, slow, consumer)
    });

    let c = Console::open(&mgmt_url(&broker));
    // A wrong password: a readable error, no way in.
    c.log_in("guest", "not-the-password");
    c.wait_for(
        "the log-in error",
        "!document.getElementById('login-error').hidden",
    );
    assert_eq!(c.text("#login-error"), "Login failed");
    assert!(!c.visible("#nav"));
    c.screenshot(&shots, "login-error.png");

    c.log_in("guest", "guest");
    c.wait_for("the overview", "!!document.querySelector('#total-queues')");
    assert!(c.visible("#nav-admin"), "an administrator sees Admin");
    c.wait_for(
        "12 messages in the totals",
        "document.querySelector('#total-messages .n').innerText === '12'",
    );
    assert_eq!(c.text("#total-unacked .n"), "3");
    assert!(c.text("#node-props").contains("File descriptors"));

    // The queue list: the counts lapin made.
    c.go("#/queues");
    c.wait_for(
        "orders in the queue list",
        "!!document.querySelector('#queues-table tr[data-name=\"//orders\"]')",
    );
    assert_eq!(cell(&c, "queues-table", "//orders", "ready"), "7");
    assert_eq!(cell(&c, "queues-table", "//orders", "unacked"), "0");
    assert_eq!(cell(&c, "queues-table", "//orders", "total"), "7");
    c.wait_for(
        "jobs with 3 unacked",
        "document.querySelector('#queues-table tr[data-name=\"//jobs\"] td.unacked').innerText === '3'",
    );
    assert_eq!(cell(&c, "queues-table", "//jobs", "ready"), "2");
    assert_eq!(cell(&c, "queues-table", "//jobs", "consumers"), "1");
    c.screenshot(&shots, "queues.png");

    // The queue page of "jobs": Unacked, and the consumer that holds them.
    c.click("#queues-table tr[data-name=\"//jobs\"] td.name a");
    c.wait_for(
        "the consumer row",
        "!!document.querySelector('#consumers-table tr[data-name=\"forgetful\"]')",
    );
    assert_eq!(c.text("#q-unacked .n"), "3");
    assert_eq!(c.text("#q-ready .n"), "2");
    assert_eq!(cell(&c, "consumers-table", "forgetful", "unacked"), "3");
    let oldest = cell(&c, "consumers-table", "forgetful", "oldest");
    assert!(
        oldest.ends_with(" s") || oldest.contains("min"),
        "oldest unacked age: {oldest:?}"
    );
    // The queue's chart, from the page's own samples (one per 5 s refresh).
    c.wait_for(
        "the queue's chart",
        "!!document.querySelector('#queue-chart svg')",
    );
    c.screenshot(&shots, "queue.png");

    // Get two messages from "orders" without taking them, then purge it.
    c.go("#/queues/%2F/orders");
    c.wait_for("the orders page", "document.querySelector('#q-ready .n') && document.querySelector('#q-ready .n').innerText === '7'");
    c.fill("#get-form input[name=count]", "2");
    c.click("#get-submit");
    c.wait_for(
        "two messages got",
        "document.querySelectorAll('#got .msg').length === 2",
    );
    assert_eq!(c.text("#got .msg[data-index=\"0\"] .payload"), "order 0");
    c.click("#purge");
    c.click("#purge-yes");
    c.wait_for(
        "the purge",
        "document.getElementById('flash').innerText.includes('purged')",
    );
    c.wait_for(
        "an empty queue",
        "document.querySelector('#q-ready .n').innerText === '0'",
    );
    let left = rt.block_on(async {
        let conn = connect_url(&broker.url()).await;
        let ch = channel(&conn).await;
        let q = ch
            .queue_declare(
                "orders".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            )
            .await
            .expect("passive declare");
        q.message_count()
    });
    assert_eq!(left, 0, "the console's purge emptied the queue");

    // The overview with a few samples in its chart.
    c.go("#/");
    c.wait_for("a chart", "!!document.querySelector('#queued-chart svg')");
    assert!(c.visible("#no-rate-data") || c.visible("#rate-chart svg"));
    c.screenshot(&shots, "overview.png");

    // A phone-sized screen: nothing wider than the screen but the tables' own scrolling.
    c.screen(390, 844);
    c.go("#/queues");
    c.wait_for(
        "the queue list",
        "!!document.querySelector('#queues-table')",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.eval("document.documentElement.scrollWidth <= window.innerWidth + 1"),
        json!(true),
        "the page fits a narrow screen"
    );
    // The counts are in view without scrolling sideways.
    assert_eq!(
        c.eval("document.querySelector('#queues-table tr[data-name=\"//jobs\"] td.unacked').getBoundingClientRect().right <= window.innerWidth"),
        json!(true),
        "Unacked is in view on a narrow screen"
    );
    c.screenshot(&shots, "queues-narrow.png");
}

#[test]
fn a_monitoring_user_does_not_reach_the_admin_pages() {
    let dir = TempDir::new("console-admin");
    let shots = screenshots(&dir);
    let broker = BrokerProcess::start(WARREN, &dir.join("data"), &[]);
    let base = mgmt_url(&broker);
    let guest = Some("Basic Z3Vlc3Q6Z3Vlc3Q=");
    let (s, _) = http(
        &base,
        "PUT",
        "/api/users/watcher",
        Some(json!({"password": "w4tch", "tags": "monitoring"})),
        guest,
    );
    assert_eq!(s, 201);
    let (s, _) = http(
        &base,
        "PUT",
        "/api/permissions/%2F/watcher",
        Some(json!({"configure": "", "write": "", "read": ".*"})),
        guest,
    );
    assert_eq!(s, 201);

    let c = Console::open(&base);
    c.log_in("watcher", "w4tch");
    c.wait_for("the overview", "!!document.querySelector('#total-queues')");
    assert!(
        !c.visible("#nav-admin"),
        "no Admin link for a monitoring user"
    );
    // A monitor sees the node.
    c.wait_for("the node", "!!document.querySelector('#node-props')");
    c.go("#/admin/users");
    c.wait_for("the refusal", "!!document.querySelector('#admin-refused')");
    assert!(c.text("#admin-refused").starts_with("Not authorised"));
    assert!(!c.visible("#users-table"));
    // Nor does the API answer it (what the page would have asked).
    let (status, body) = http(
        &base,
        "GET",
        "/api/users",
        None,
        Some("Basic d2F0Y2hlcjp3NHRjaA=="),
    );
    assert_eq!(
        (status, &body["reason"]),
        (401, &json!("Not administrator user"))
    );

    // The same pages for an administrator.
    c.click("#logout");
    c.log_in("guest", "guest");
    // Back on the page it was on: the Admin pages, now shown.
    c.wait_for(
        "guest logged in",
        "document.getElementById('who-name').innerText.startsWith('guest')",
    );
    c.go("#/admin/users");
    c.wait_for(
        "watcher in the users",
        "!!document.querySelector('#users-table tr[data-name=\"watcher\"]')",
    );
    assert!(c
        .text("#users-table tr[data-name=\"watcher\"]")
        .contains("monitoring"));
    c.screenshot(&shots, "admin.png");
}
