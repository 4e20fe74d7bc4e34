//! Hostile input, limits and shutdown: each gets a clean PostgreSQL error or close,
//! and pgsplit goes on serving everyone else.

use crate::common;

use std::time::Duration;

use common::raw::{self, next_error, read_message};
use common::{sqlstate, TestProxy};
use pgsplit_cluster::{APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRUST_USER: &str = r#"
[[users]]
name = "trustuser"
auth_method = "trust"
server_user = "app"
server_password = "pgsplit-app-pw"
"#;

#[tokio::test]
async fn malformed_startup_packets_get_a_protocol_error_and_others_are_still_served() {
    let proxy = TestProxy::start().await;
    let too_short: &[u8] = &[0, 0, 0, 3, 9, 9, 9];
    let huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0];
    let unterminated: &[u8] = &[
        0, 0, 0, 16, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'a', b'p', b'p',
    ];
    let old_protocol: &[u8] = &[0, 0, 0, 8, 0, 2, 0, 0];
    let cases = [
        (too_short, "08P01"),
        (huge, "08P01"),
        (unterminated, "08P01"),
        (old_protocol, "0A000"),
    ];
    for (packet, code) in cases {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(packet).await.unwrap();
        assert_eq!(
            next_error(&mut stream).await.as_deref(),
            Some(code),
            "packet {packet:?}"
        );
        assert!(
            read_message(&mut stream).await.is_none(),
            "connection closed after the error"
        );
    }
    proxy.still_serves().await;
}

#[tokio::test]
async fn a_message_with_an_absurd_length_ends_only_that_session() {
    let proxy = TestProxy::start_with("", TRUST_USER).await;
    let bystander = proxy.connect().await;
    let mut stream = raw::login(proxy.addr, "trustuser").await;
    stream
        .write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b'S'])
        .await
        .unwrap();
    assert_eq!(next_error(&mut stream).await.as_deref(), Some("08P01"));
    assert!(read_message(&mut stream).await.is_none());
    let row = bystander.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    proxy.still_serves().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_auth_timeout() {
    let proxy = TestProxy::start_with("auth_timeout = \"1s\"", "").await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a silent connection was kept open past auth_timeout"
    );

    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled
        .write_all(&raw::startup(&[("user", APP_USER)]))
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), next_error(&mut stalled)).await;
    assert_eq!(
        code.ok().flatten().as_deref(),
        Some("08006"),
        "a client that never answers the password request"
    );
    proxy.still_serves().await;
}

#[tokio::test]
async fn clients_beyond_max_client_conn_get_53300() {
    let proxy = TestProxy::start_with("max_client_conn = 2", "").await;
    let first = proxy.connect().await;
    let _second = proxy.connect().await;
    let third = proxy
        .connect_as(APP_USER, APP_PASSWORD, "app")
        .await
        .expect_err("third client refused");
    assert_eq!(sqlstate(&third), "53300");
    drop(first);
    // The freed slot is usable again once the first session has ended.
    let mut admitted = false;
    for _ in 0..50 {
        if proxy
            .connect_as(APP_USER, APP_PASSWORD, "app")
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        admitted,
        "a slot freed by a departed client was never reused"
    );
}

#[tokio::test]
async fn shutdown_lets_running_queries_finish_and_ends_idle_clients_with_57p01() {
    let mut proxy = TestProxy::start().await;
    let conninfo = proxy.conninfo(APP_USER, APP_PASSWORD, "app");
    let (idle, idle_conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let busy = proxy.connect().await;
    let query = tokio::spawn(async move {
        busy.query_one("SELECT pg_sleep(1), 'finished'::text", &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = proxy.shutdown();
    let row = query
        .await
        .unwrap()
        .expect("a query running at shutdown finishes");
    assert_eq!(row.get::<_, &str>(1), "finished");
    let ended = idle_conn
        .await
        .unwrap()
        .expect_err("the idle client is disconnected");
    assert_eq!(sqlstate(&ended), "57P01");
    drop(idle);
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("shutdown completes")
        .unwrap();
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "no new clients after shutdown"
    );
}

#[tokio::test]
async fn a_query_still_running_after_shutdown_timeout_is_cut_off_with_57p01() {
    let mut proxy = TestProxy::start_with("shutdown_timeout = \"1s\"", "").await;
    let client = proxy.connect().await;
    let query = tokio::spawn(async move { client.query_one("SELECT pg_sleep(20)", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = proxy.shutdown();
    let err = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("cut off in time")
        .unwrap()
        .expect_err("cut off");
    assert_eq!(sqlstate(&err), "57P01");
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .expect("shutdown completes")
        .unwrap();
}
