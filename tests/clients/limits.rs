//! Limits (issue 9): startup packet and message size, per-user and per-database client
//! connections. Each limit exceeded gives PostgreSQL's SQLSTATE, other clients keep
//! working, and a slot is usable again once its client has left.

use crate::common;

use std::time::Duration;

use common::pool::trust_user;
use common::raw::{self, next_error, read_message};
use common::{cluster, sqlstate, TestProxy};
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Connects until it succeeds: a departed client's slot comes back once its session
/// has ended, which is a moment after the socket closes.
async fn connects_again(proxy: &TestProxy, user: &str, password: &str) -> tokio_postgres::Client {
    let mut last = None;
    for _ in 0..50 {
        match proxy.connect_as(user, password, APP_DATABASE).await {
            Ok(client) => return client,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a slot freed by a departed client was never reused: {last:?}");
}

/// A StartupMessage of exactly `len` bytes, padded with application_name.
fn startup_of_len(len: usize) -> Vec<u8> {
    let bare = raw::startup(&[
        ("user", "trustuser"),
        ("database", APP_DATABASE),
        ("application_name", ""),
    ]);
    let pad = "x".repeat(len - bare.len());
    let packet = raw::startup(&[
        ("user", "trustuser"),
        ("database", APP_DATABASE),
        ("application_name", &pad),
    ]);
    assert_eq!(packet.len(), len);
    packet
}

#[tokio::test]
async fn a_startup_packet_over_postgresqls_limit_gets_08p01_and_one_at_it_logs_in() {
    let proxy = TestProxy::start_with("", &trust_user()).await;
    let bystander = proxy.connect().await;

    let mut at_limit = TcpStream::connect(proxy.addr).await.unwrap();
    at_limit.write_all(&startup_of_len(10_000)).await.unwrap();
    raw::until_ready(&mut at_limit).await;

    let mut over = TcpStream::connect(proxy.addr).await.unwrap();
    over.write_all(&startup_of_len(10_001)).await.unwrap();
    let (tag, body) = read_message(&mut over).await.expect("an ErrorResponse");
    assert_eq!(tag, b'E');
    assert_eq!(raw::error_code(&body), "08P01");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("invalid length of startup packet") && text.contains("10000"),
        "PostgreSQL's wording and the limit: {text}"
    );
    assert!(read_message(&mut over).await.is_none(), "then a close");

    // Only the length is read: a claim of 1 GB with nothing behind it is refused at once.
    let mut huge = TcpStream::connect(proxy.addr).await.unwrap();
    huge.write_all(&(1i32 << 30).to_be_bytes()).await.unwrap();
    assert_eq!(next_error(&mut huge).await.as_deref(), Some("08P01"));

    let row = bystander.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    proxy.still_serves().await;
}

#[tokio::test]
async fn max_startup_packet_size_is_configurable() {
    let proxy = TestProxy::start_with("max_startup_packet_size = 200", &trust_user()).await;
    let mut over = TcpStream::connect(proxy.addr).await.unwrap();
    over.write_all(&startup_of_len(201)).await.unwrap();
    assert_eq!(next_error(&mut over).await.as_deref(), Some("08P01"));
    let mut at_limit = TcpStream::connect(proxy.addr).await.unwrap();
    at_limit.write_all(&startup_of_len(200)).await.unwrap();
    raw::until_ready(&mut at_limit).await;
}

#[tokio::test]
async fn a_message_over_max_message_size_ends_only_that_session_with_08p01() {
    let proxy = TestProxy::start_with("max_message_size = 4096", &trust_user()).await;
    let bystander = proxy.connect().await;

    let mut fits = raw::login(proxy.addr, "trustuser").await;
    let sql = format!("SELECT '{}'", "x".repeat(4000));
    fits.write_all(&raw::query(&sql)).await.unwrap();
    raw::until_ready(&mut fits).await;

    let mut too_big = raw::login(proxy.addr, "trustuser").await;
    let sql = format!("SELECT '{}'", "x".repeat(5000));
    too_big.write_all(&raw::query(&sql)).await.unwrap();
    let (tag, body) = read_message(&mut too_big).await.expect("an ErrorResponse");
    assert_eq!((tag, raw::error_code(&body).as_str()), (b'E', "08P01"));
    assert!(
        String::from_utf8_lossy(&body).contains("max_message_size is 4096"),
        "the message names the limit: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(read_message(&mut too_big).await.is_none(), "then a close");

    let row = bystander.query_one("SELECT 8", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 8);
    proxy.still_serves().await;
}

#[tokio::test]
async fn clients_beyond_a_users_limit_get_53300_and_its_slot_comes_back() {
    // Two clients per user, except trustuser, whose own max_connections is 1.
    let trust = trust_user().replace(
        "auth_method = \"trust\"\n",
        "auth_method = \"trust\"\nmax_connections = 1\n",
    );
    let proxy = TestProxy::start_with("max_user_connections = 2", &trust).await;
    let first = proxy.connect().await;
    let _second = proxy.connect().await;
    let third = proxy
        .connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .expect_err("a third app client is refused");
    assert_eq!(sqlstate(&third), "53300");
    assert_eq!(message(&third), "too many connections for role \"app\"");

    // Another user has its own count, and its own override.
    let _trusted = raw::login(proxy.addr, "trustuser").await;
    let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
    refused
        .write_all(&raw::startup(&[
            ("user", "trustuser"),
            ("database", APP_DATABASE),
        ]))
        .await
        .unwrap();
    assert_eq!(next_error(&mut refused).await.as_deref(), Some("53300"));

    // The clients in keep working, and a leaving one frees its slot.
    let row = first.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    drop(first);
    let again = connects_again(&proxy, APP_USER, APP_PASSWORD).await;
    assert_eq!(
        again
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test]
async fn clients_beyond_a_databases_limit_get_53300_and_its_slot_comes_back() {
    let proxy = TestProxy::start_with("max_db_connections = 2", &trust_user()).await;
    let first = proxy.connect().await;
    let _trusted = raw::login(proxy.addr, "trustuser").await;
    let third = proxy
        .connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .expect_err("a third client of the database is refused");
    assert_eq!(sqlstate(&third), "53300");
    assert_eq!(
        message(&third),
        format!("too many connections for database \"{APP_DATABASE}\"")
    );
    // A refused login (wrong password) never took a slot.
    let wrong = proxy
        .connect_as(APP_USER, "wrong", APP_DATABASE)
        .await
        .expect_err("wrong password");
    assert_eq!(sqlstate(&wrong), "28P01");

    assert_eq!(
        first
            .query_one("SELECT 3", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
    drop(first);
    connects_again(&proxy, APP_USER, APP_PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_limits_to_new_clients() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsplit.toml");
    let base = pgsplit::demo::config_text(cluster(), "127.0.0.1:0");
    std::fs::write(&path, format!("max_user_connections = 1\n{base}")).unwrap();
    let proxy = TestProxy::start_reloadable(path.clone()).await;

    let _first = proxy.connect().await;
    let refused = proxy
        .connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .expect_err("one client per user");
    assert_eq!(sqlstate(&refused), "53300");

    std::fs::write(&path, format!("max_user_connections = 2\n{base}")).unwrap();
    let changes = proxy.reload().expect("a valid reload");
    assert!(
        changes.iter().any(|c| c.contains("max_user_connections")),
        "{changes:?}"
    );
    let second = proxy
        .connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .expect("admitted under the new limit");
    assert_eq!(
        second
            .query_one("SELECT 4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        4
    );
}
