//! warrenctl's access-control commands and the management API behind them, against a running
//! broker: users, tags, passwords, vhosts, permissions, limits, and alarms in the health
//! check and `warrenctl status`.

use lapin::options::QueueDeclareOptions;
use lapin::{Connection, ConnectionProperties};
use warren_tests::mgmt::MgmtBroker;
use warren_tests::*;

/// The `warrenctl` binary, built by Cargo for this package's tests.
const WARRENCTL: &str = env!("CARGO_BIN_EXE_warrenctl");

/// (exit code, stdout, stderr)
async fn ctl(n: &MgmtBroker, args: &[&str]) -> (i32, String, String) {
    let o = n.warrenctl(WARRENCTL, args).await;
    (o.code, o.stdout, o.stderr)
}

async fn ok(n: &MgmtBroker, args: &[&str]) -> String {
    n.warrenctl(WARRENCTL, args).await.ok()
}

async fn login(n: &MgmtBroker, user: &str, pass: &str, vhost: &str) -> lapin::Result<Connection> {
    let u = format!(
        "amqp://{user}:{pass}@{}/{}",
        n.broker.addr,
        vhost.replace('/', "%2f")
    );
    within(
        "connect",
        Connection::connect(&u, ConnectionProperties::default()),
    )
    .await
}

fn http_status(n: &MgmtBroker, method: &str, path: &str, auth: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{path}", n.url());
    let r = match method {
        "GET" => agent.get(&url).header("authorization", auth).call(),
        _ => agent.delete(&url).header("authorization", auth).call(),
    };
    r.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_and_permissions_with_warrenctl() {
    let n = MgmtBroker::start().await;
    assert_eq!(
        ok(&n, &["add_user", "app", "s3cret"]).await,
        "Adding user \"app\" ...\nDone. Don't forget to grant the user permissions to some virtual hosts! See 'warrenctl help set_permissions' to learn more.\n"
    );
    let (code, _, err) = ctl(&n, &["add_user", "app", "x"]).await;
    assert_eq!(code, 69);
    assert!(err.contains("user_already_exists: app"), "{err}");
    assert_eq!(
        ok(&n, &["list_users", "-q"]).await,
        "user\ttags\napp\t[]\nguest\t[administrator]\n"
    );
    ok(&n, &["set_user_tags", "app", "monitoring", "management"]).await;
    assert_eq!(
        ok(&n, &["list_users", "-q"]).await,
        "user\ttags\napp\t[monitoring, management]\nguest\t[administrator]\n"
    );
    assert_eq!(
        ok(&n, &["add_vhost", "v1"]).await,
        "Adding vhost \"v1\" ...\n"
    );
    // No permissions yet: 530 at connection.open.
    let e = login(&n, "app", "s3cret", "v1").await.err().unwrap();
    assert_eq!(reply_code(&e), Some(530));
    assert_eq!(
        ok(
            &n,
            &["set_permissions", "-p", "v1", "app", "^app\\.", ".*", ".*"]
        )
        .await,
        "Setting permissions for user \"app\" in vhost \"v1\" ...\n"
    );
    // guest made v1 over the HTTP API, which (as RabbitMQ's) gives the creator full
    // permissions in it; rabbitmqctl add_vhost would not.
    assert_eq!(
        ok(&n, &["list_permissions", "-p", "v1", "-q"]).await,
        "user\tconfigure\twrite\tread\napp\t^app\\.\t.*\t.*\nguest\t.*\t.*\t.*\n"
    );
    assert_eq!(
        ok(&n, &["list_user_permissions", "app", "-q"]).await,
        "vhost\tconfigure\twrite\tread\nv1\t^app\\.\t.*\t.*\n"
    );
    let conn = login(&n, "app", "s3cret", "v1").await.expect("app in v1");
    let ch = channel(&conn).await;
    declare(&ch, "app.q").await;
    let r = ch
        .queue_declare("other".into(), QueueDeclareOptions::default(), no_args())
        .await;
    expect_code(r, 403);
    // A monitoring user may not manage users.
    let basic = "Basic YXBwOnMzY3JldA=="; // app:s3cret
    assert_eq!(http_status(&n, "GET", "/api/users", basic), 401);
    assert_eq!(
        http_status(&n, "GET", "/api/users", "Basic Z3Vlc3Q6Z3Vlc3Q="),
        200
    );

    ok(&n, &["change_password", "app", "n3w"]).await;
    assert_eq!(
        reply_code(&login(&n, "app", "s3cret", "v1").await.err().unwrap()),
        Some(403)
    );
    login(&n, "app", "n3w", "v1").await.expect("new password");
    ok(&n, &["clear_permissions", "-p", "v1", "app"]).await;
    assert_eq!(
        ok(&n, &["list_permissions", "-p", "v1", "-q"]).await,
        "user\tconfigure\twrite\tread\nguest\t.*\t.*\t.*\n"
    );
    assert_eq!(
        reply_code(&login(&n, "app", "n3w", "v1").await.err().unwrap()),
        Some(530)
    );
    assert_eq!(
        ok(&n, &["delete_vhost", "v1"]).await,
        "Deleting vhost \"v1\" ...\n"
    );
    assert_eq!(ok(&n, &["list_vhosts", "-q"]).await, "name\n/\n");
    let (code, _, err) = ctl(&n, &["delete_vhost", "v1"]).await;
    assert_eq!(code, 69, "{err}");
    ok(&n, &["delete_user", "app"]).await;
    let (code, _, err) = ctl(&n, &["delete_user", "app"]).await;
    assert_eq!(code, 69);
    assert!(err.contains("User \"app\" does not exist"), "{err}");
    assert_eq!(
        ok(&n, &["list_users", "-q"]).await,
        "user\ttags\nguest\t[administrator]\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_with_warrenctl_and_alarms_in_health_checks_and_status() {
    let n = MgmtBroker::start().await;
    ok(&n, &["add_user", "lim", "p"]).await;
    ok(&n, &["set_permissions", "lim", ".*", ".*", ".*"]).await;
    ok(&n, &["set_user_limits", "lim", "{\"max-connections\": 1}"]).await;
    let _c = login(&n, "lim", "p", "/").await.expect("first");
    assert_eq!(
        reply_code(&login(&n, "lim", "p", "/").await.err().unwrap()),
        Some(530)
    );
    ok(&n, &["set_vhost_limits", "{\"max-queues\": 0}"]).await;
    let (_c2, ch) = open(&n.broker).await;
    let r = ch
        .queue_declare("q".into(), QueueDeclareOptions::default(), no_args())
        .await;
    expect_code(r, 406);

    let guest = "Basic Z3Vlc3Q6Z3Vlc3Q=";
    assert_eq!(
        http_status(&n, "GET", "/api/health/checks/alarms", guest),
        200
    );
    assert!(ok(&n, &["status"]).await.contains("Alarms\n\n(none)"));
    n.broker.broker.alarms.sample(10, None);
    n.broker.broker.alarms.set_memory_limit(1);
    assert_eq!(
        http_status(&n, "GET", "/api/health/checks/alarms", guest),
        503
    );
    let s = ok(&n, &["status"]).await;
    assert!(s.contains("Memory alarm on node"), "{s}");
    n.broker.broker.alarms.set_memory_limit(u64::MAX);
    assert_eq!(
        http_status(&n, "GET", "/api/health/checks/alarms", guest),
        200
    );
}
