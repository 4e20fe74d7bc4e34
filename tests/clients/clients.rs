//! Real PostgreSQL clients (psql, pgbench, tokio-postgres) through pgsplit to a real cluster.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cluster, text, TestProxy};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgsplit_cluster::APP_DATABASE;

#[tokio::test]
async fn psql_runs_a_query_through_pgsplit() {
    let proxy = TestProxy::start().await;
    let out = proxy.run(
        "psql",
        &["-X", "-A", "-t", "-c", "SELECT 40 + 2", APP_DATABASE],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[tokio::test]
async fn pgbench_runs_in_every_query_mode_without_failed_transactions() {
    let proxy = TestProxy::start().await;
    let init = proxy.run("pgbench", &["-i", "-q", "-s", "1", APP_DATABASE]);
    assert!(
        init.status.success(),
        "pgbench -i through pgsplit failed: {}",
        text(&init)
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = proxy.run(
            "pgbench",
            &["-M", mode, "-c", "4", "-j", "2", "-T", "3", APP_DATABASE],
        );
        let report = text(&out);
        assert!(out.status.success(), "pgbench -M {mode}: {report}");
        assert!(
            report.contains("number of failed transactions: 0 "),
            "pgbench -M {mode} had failures: {report}"
        );
        assert!(
            !report.contains("number of transactions actually processed: 0/"),
            "pgbench -M {mode} did nothing: {report}"
        );
    }
}

#[tokio::test]
async fn a_prepared_statement_is_reused_many_times() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let stmt = client.prepare("SELECT $1::int * 2").await.unwrap();
    for i in 0..500 {
        let row = client.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing_behind() {
    let proxy = TestProxy::start().await;
    let mut client = proxy.connect().await;
    client
        .batch_execute("DROP TABLE IF EXISTS rollback_t; CREATE TABLE rollback_t (id int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO rollback_t VALUES (1), (2)", &[])
        .await
        .unwrap();
    let inside: i64 = tx
        .query_one("SELECT count(*) FROM rollback_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, 2);
    tx.rollback().await.unwrap();
    let after: i64 = client
        .query_one("SELECT count(*) FROM rollback_t /* pgsplit:primary */", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 0);
}

#[tokio::test]
async fn an_error_inside_a_transaction_is_recovered_by_rollback() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.unwrap();
    let err = client.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(common::sqlstate(&err), "22012");
    let aborted = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        common::sqlstate(&aborted),
        "25P02",
        "statements in a failed transaction are refused"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    let row = client.query_one("SELECT 'fine'::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "fine");
}

#[tokio::test]
async fn copy_in_and_out_round_trips_100_000_rows() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    client
        .batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (id int, label text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..100_000 {
        data.push_str(&format!("{i}\tlabel-{i}-\\\\-é\n"));
    }
    let sink = client.copy_in("COPY copy_t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 100_000);
    let stream = client
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT /* pgsplit:primary */")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let back: Vec<u8> = chunks.concat();
    assert!(
        back == data.as_bytes(),
        "COPY TO returned {} bytes, sent {}",
        back.len(),
        data.len()
    );
}

#[tokio::test]
async fn a_ten_megabyte_result_set_arrives_whole() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let rows = client
        .query(
            "SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 10000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 10_000);
    let bytes: usize = rows.iter().map(|r| r.get::<_, &str>(1).len()).sum();
    assert_eq!(bytes, 10_240_000);
    let last = rows.last().unwrap();
    assert_eq!(last.get::<_, i32>(0), 10_000);
}

#[tokio::test]
async fn notify_from_one_client_reaches_a_listening_client() {
    let proxy = TestProxy::start().await;
    let (listener, mut conn) = tokio_postgres::connect(
        &proxy.conninfo(
            pgsplit_cluster::APP_USER,
            pgsplit_cluster::APP_PASSWORD,
            APP_DATABASE,
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN pgsplit_news").await.unwrap();
    let notifier = proxy.connect().await;
    notifier
        .batch_execute("NOTIFY pgsplit_news, 'hello'")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(
        got.ok().flatten(),
        Some(("pgsplit_news".to_owned(), "hello".to_owned()))
    );
}

#[tokio::test]
async fn a_client_that_disconnects_during_pg_sleep_leaves_no_backend_running_it() {
    let proxy = TestProxy::start().await;
    let port = proxy.addr.port().to_string();
    let mut psql = std::process::Command::new(cluster().pg_bin().join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "-c",
            "SELECT pg_sleep(30) /* departing */",
            APP_DATABASE,
        ])
        .env("PGPASSWORD", pgsplit_cluster::APP_PASSWORD)
        .env("PGAPPNAME", "departing-client")
        .spawn()
        .unwrap();
    let running = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'departing-client' AND query LIKE '%pg_sleep(30)%'";
    // pg_sleep is a read: it may run on any node.
    let sleeping = || {
        (0..cluster().nodes().len())
            .filter(|i| cluster().sql(*i, "postgres", running).unwrap() == "1")
            .count()
    };
    let seen = wait_for(|| sleeping() == 1).await;
    assert!(seen, "the sleeping query never reached a server");
    psql.kill().unwrap();
    let _ = psql.wait();
    let gone = wait_for(|| sleeping() == 0).await;
    assert!(
        gone,
        "a server still runs pg_sleep(30) for a client that left"
    );
}

/// Polls `check` for up to 15 s.
async fn wait_for(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
