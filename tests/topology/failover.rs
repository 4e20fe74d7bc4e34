//! Promotion and split brain on a real cluster: pgsplit follows a promoted standby
//! without a restart, and refuses writes while two nodes claim to be the primary.

use crate::common;

use std::time::{Duration, Instant};

use common::{sqlstate, text, TestProxy};
use pgsplit_cluster::{Cluster, StopMode, APP_DATABASE};

const MONITOR: &str = "lag_check_interval = \"100ms\"\nmax_ban = \"1s\"";
const DEADLINE: Duration = Duration::from_secs(30);

async fn cluster_and_proxy() -> (Cluster, TestProxy) {
    let cluster = common::own_cluster().await;
    let proxy = TestProxy::start_for(&cluster, "", MONITOR, "").await;
    (cluster, proxy)
}

/// Retries `INSERT … RETURNING inet_server_port()` through pgsplit until it succeeds;
/// returns the port that took it and how long it took.
async fn first_successful_write(proxy: &TestProxy, table: &str) -> (i32, Duration) {
    let start = Instant::now();
    loop {
        let attempt = async {
            let client = proxy.connect().await;
            client
                .query_one(
                    &format!("INSERT INTO {table} VALUES (1) RETURNING inet_server_port()"),
                    &[],
                )
                .await
                .map(|row| row.get::<_, i32>(0))
        };
        if let Ok(Ok(port)) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
            return (port, start.elapsed());
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no write succeeded through pgsplit within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn writes_follow_a_promoted_standby_without_a_restart() {
    let (cluster, proxy) = cluster_and_proxy().await;
    let client = proxy.connect().await;
    client
        .batch_execute("CREATE TABLE promoted_t (a int)")
        .await
        .unwrap();
    for i in 1..cluster.nodes().len() {
        cluster.wait_for_replay(i).unwrap();
    }
    let new_primary = i32::from(cluster.nodes()[1].port);
    cluster.stop(0, StopMode::Fast).unwrap();
    cluster.promote(1).unwrap();
    let promoted_at = Instant::now();
    let (port, _) = first_successful_write(&proxy, "promoted_t").await;
    let elapsed = promoted_at.elapsed();
    assert_eq!(port, new_primary, "writes must go to the promoted standby");
    eprintln!("promotion to first successful write through pgsplit: {elapsed:?}");

    // The client connected before the promotion goes on working: its primary connection
    // is reopened on the new primary at its next write.
    let row = client
        .query_one(
            "INSERT INTO promoted_t VALUES (2) RETURNING inet_server_port()",
            &[],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        // The old connection died under this very statement: one error, then it works.
        Err(_) => client
            .query_one(
                "INSERT INTO promoted_t VALUES (2) RETURNING inet_server_port()",
                &[],
            )
            .await
            .unwrap(),
    };
    assert_eq!(row.get::<_, i32>(0), new_primary);

    let pg_bin = cluster.pg_bin().to_path_buf();
    let init = proxy.run_with(&pg_bin, "pgbench", &["-i", "-q", "-s", "1", APP_DATABASE]);
    assert!(
        init.status.success(),
        "pgbench -i after the promotion: {}",
        text(&init)
    );
    let out = proxy.run_with(
        &pg_bin,
        "pgbench",
        &["-c", "4", "-j", "2", "-T", "3", APP_DATABASE],
    );
    let report = text(&out);
    assert!(
        out.status.success() && report.contains("number of failed transactions: 0 "),
        "TPC-B after the promotion: {report}"
    );
}

#[tokio::test]
async fn two_nodes_claiming_primary_get_no_writes_until_one_is_gone() {
    let (cluster, proxy) = cluster_and_proxy().await;
    proxy
        .connect()
        .await
        .batch_execute("CREATE TABLE split_t (a int)")
        .await
        .unwrap();
    cluster.wait_for_replay(1).unwrap();
    // Promote a standby while the old primary still runs: both accept writes now.
    cluster.promote(1).unwrap();
    let start = Instant::now();
    loop {
        let primaries = proxy
            .topology()
            .nodes
            .iter()
            .filter(|n| n.role == pgsplit::topology::Role::Primary)
            .count();
        if primaries == 2 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pgsplit never saw both primaries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = proxy.connect().await;
    let err = client
        .execute("INSERT INTO split_t VALUES (1)", &[])
        .await
        .expect_err("a write while two nodes claim to be primary must be refused");
    assert_eq!(sqlstate(&err), "08006", "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(
        message.contains("no primary"),
        "the error says why: {message}"
    );
    let row = client
        .query_one("SELECT 1", &[])
        .await
        .expect("the session goes on after the refused write");
    assert_eq!(row.get::<_, i32>(0), 1);

    // Resolve it: the old primary goes away, the promoted one takes the writes.
    cluster.stop(0, StopMode::Immediate).unwrap();
    let (port, _) = first_successful_write(&proxy, "split_t").await;
    assert_eq!(port, i32::from(cluster.nodes()[1].port));
}

#[tokio::test]
async fn a_statement_never_runs_with_settings_a_standby_could_not_apply() {
    let (cluster, proxy) = cluster_and_proxy().await;
    for i in 1..cluster.nodes().len() {
        cluster.pause_replay(i).unwrap();
    }
    // A role the standbys have not replayed yet.
    cluster
        .sql(
            0,
            "postgres",
            "CREATE ROLE fresh_role; GRANT fresh_role TO app",
        )
        .unwrap();
    let client = proxy.connect().await;
    // SET may run anywhere: it runs on the connection already open, the primary's.
    client.batch_execute("SET ROLE fresh_role").await.unwrap();
    // A read would go to a standby, where SET ROLE fails: it must not run there as "app";
    // it runs on the primary, with the session's role.
    for _ in 0..3 {
        let row = client
            .query_one("SELECT current_user::text, pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            "fresh_role",
            "a read ran without the session's role"
        );
        assert!(
            !row.get::<_, bool>(1),
            "the read ran on a standby that lacks the role"
        );
    }
    for i in 1..cluster.nodes().len() {
        cluster.resume_replay(i).unwrap();
    }
}
