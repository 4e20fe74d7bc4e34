//! The life of pooled server connections: a connection the server killed while idle is
//! replaced unnoticed, idle ones close down to `min_pool_size`, old ones retire, nothing a
//! departed client left on a connection reaches the next one, and what pgsplit must not
//! share (startup settings, sequence state, prepared statements) stays with its client.

use crate::common;

use std::time::{Duration, Instant};

use common::pool::{trust_user, ON_PRIMARY};
use common::{cluster, raw, sqlstate, TestProxy};
use pgsplit_cluster::{APP_PASSWORD, SUPERUSER, SUPERUSER_PASSWORD};
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A role of one test's own, so `pg_stat_activity` rows with it are that test's pool only.
fn create_role(name: &str) {
    let create = format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN \
         CREATE ROLE {name} LOGIN PASSWORD '{APP_PASSWORD}' IN ROLE app; END IF; END $$"
    );
    cluster().sql(0, "postgres", &create).unwrap();
    for i in 1..cluster().nodes().len() {
        cluster().wait_for_replay(i).unwrap();
    }
}

/// pgsplit with `[pool]` keys `pool`, read-your-writes off, and the users `extra` adds.
async fn pooled(pool: &str, users: &[&str]) -> TestProxy {
    let mut tables = format!("[routing]\nread_your_writes = \"off\"\n\n[pool]\n{pool}\n");
    for user in users {
        tables.push_str(&format!(
            "\n[[users]]\nname = \"{user}\"\npassword = \"{APP_PASSWORD}\"\n"
        ));
    }
    TestProxy::start_with("", &tables).await
}

async fn connect_as(proxy: &TestProxy, user: &str) -> Client {
    proxy
        .connect_as(user, APP_PASSWORD, "app")
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// A superuser connection straight to the primary.
async fn primary_superuser() -> Client {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres",
        cluster().nodes()[0].port
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("direct connection to the primary");
    tokio::spawn(conn);
    client
}

/// The first column of the first row of a simple query.
async fn one(client: &Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Server backends of `role` on the primary.
async fn backends_of(role: &str) -> i64 {
    let direct = primary_superuser().await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}' AND backend_type = 'client backend'"
    );
    one(&direct, &sql).await.parse().expect("a count")
}

#[tokio::test]
async fn a_pooled_connection_the_server_killed_while_idle_is_replaced_unnoticed() {
    let _shared = common::turns::shared().await;
    let proxy = pooled("max_pool_size = 2", &[]).await;
    let client = proxy.connect().await;
    let pid_sql = format!("SELECT pg_backend_pid() {ON_PRIMARY}");
    let before = one(&client, &pid_sql).await;
    let killed = one(
        &primary_superuser().await,
        &format!("SELECT pg_terminate_backend({before})"),
    )
    .await;
    assert_eq!(killed, "t");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let after = one(&client, &pid_sql).await;
        assert_ne!(after, before, "the killed backend cannot answer");
    }
    assert!(
        proxy.pools().iter().all(|p| p.open <= 2),
        "replacing a dead connection must not grow a pool past its maximum: {:?}",
        proxy.pools()
    );
}

#[tokio::test]
async fn idle_connections_close_down_to_min_pool_size_and_old_ones_retire() {
    let _shared = common::turns::shared().await;
    create_role("pool_idle");
    let proxy = pooled(
        "min_pool_size = 1\nmax_pool_size = 5\nidle_timeout = \"1s\"",
        &["pool_idle"],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect_as(&proxy, "pool_idle").await);
    }
    let sleeps = clients
        .iter()
        .map(|c| c.simple_query("SELECT pg_sleep(0.5) /* pgsplit:primary */"));
    for result in futures_util::future::join_all(sleeps).await {
        result.expect("pg_sleep");
    }
    assert_eq!(
        backends_of("pool_idle").await,
        5,
        "five clients at once open five connections"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while backends_of("pool_idle").await > 1 {
        assert!(
            Instant::now() < deadline,
            "idle connections were not closed down to min_pool_size after idle_timeout: {:?}",
            proxy.pools()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        backends_of("pool_idle").await,
        1,
        "min_pool_size keeps one open"
    );

    create_role("pool_old");
    let proxy = pooled("server_lifetime = \"1s\"", &["pool_old"]).await;
    let client = connect_as(&proxy, "pool_old").await;
    let pid_sql = format!("SELECT pg_backend_pid() {ON_PRIMARY}");
    let first = one(&client, &pid_sql).await;
    assert_eq!(
        one(&client, &pid_sql).await,
        first,
        "a young connection is reused"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(
        one(&client, &pid_sql).await,
        first,
        "a connection older than server_lifetime is not reused"
    );
}

#[tokio::test]
async fn nothing_a_departed_client_left_on_its_connection_reaches_the_next() {
    let _shared = common::turns::shared().await;
    for mode in ["session", "transaction"] {
        let proxy = pooled(&format!("mode = \"{mode}\"\nmax_pool_size = 1"), &[]).await;
        let a = proxy.connect().await;
        a.batch_execute(
            "CREATE TEMP TABLE leftover (x int); LISTEN leftover_channel; \
             SELECT pg_advisory_lock(4242); PREPARE leftover_stmt AS SELECT 1; \
             SET work_mem = '7MB'",
        )
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
        let pid_a = one(&a, &format!("SELECT pg_backend_pid() {ON_PRIMARY}")).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let b = proxy.connect().await;
        let pid_b = one(&b, &format!("SELECT pg_backend_pid() {ON_PRIMARY}")).await;
        assert_eq!(
            pid_a, pid_b,
            "{mode}: a pool of one serves B with A's connection"
        );
        let state = one(
            &b,
            &format!(
                "SELECT concat_ws(',', to_regclass('pg_temp.leftover') IS NULL, \
                 (SELECT count(*) FROM pg_listening_channels()), \
                 (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
                 (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover_stmt'), \
                 current_setting('work_mem')) {ON_PRIMARY}"
            ),
        )
        .await;
        assert_eq!(state, "t,0,0,0,4MB", "{mode}: what B sees of A's session");
    }
}

#[tokio::test]
async fn startup_options_are_the_sessions_own_and_reset_returns_to_them() {
    let _shared = common::turns::shared().await;
    let proxy = pooled("max_pool_size = 1", &[]).await;
    let conninfo = format!(
        "{} options='-c statement_timeout=4321 -c search_path=pg_catalog,public' application_name=pool_opts",
        proxy.conninfo("app", APP_PASSWORD, "app")
    );
    let (a, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("connect with options");
    tokio::spawn(conn);
    let show = format!(
        "SELECT current_setting('statement_timeout') || ' ' || current_setting('search_path') \
         || ' ' || current_setting('application_name') {ON_PRIMARY}"
    );
    assert_eq!(one(&a, &show).await, "4321ms pg_catalog, public pool_opts");
    a.batch_execute("SET statement_timeout = 5; RESET statement_timeout")
        .await
        .unwrap();
    assert_eq!(one(&a, &show).await, "4321ms pg_catalog, public pool_opts");

    let b = proxy.connect().await;
    assert_eq!(one(&b, &show).await, "0 \"$user\", public ");
    assert_eq!(one(&a, &show).await, "4321ms pg_catalog, public pool_opts");

    let bad = format!(
        "{} options='-c no_such_setting=1'",
        proxy.conninfo("app", APP_PASSWORD, "app")
    );
    let err = tokio_postgres::connect(&bad, NoTls)
        .await
        .err()
        .expect("an unknown setting fails the login");
    assert_eq!(sqlstate(&err), "42704", "{err}");
}

#[tokio::test]
async fn currval_after_nextval_reads_this_clients_own_sequence_value() {
    let _shared = common::turns::shared().await;
    let proxy = pooled("max_pool_size = 2", &[]).await;
    proxy
        .connect()
        .await
        .batch_execute("CREATE SEQUENCE IF NOT EXISTS pool_seq")
        .await
        .unwrap();
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    for _ in 0..20 {
        let mine_a = one(&a, "SELECT nextval('pool_seq')").await;
        let mine_b = one(&b, "SELECT nextval('pool_seq')").await;
        assert_eq!(one(&a, "SELECT currval('pool_seq')").await, mine_a);
        assert_eq!(one(&b, "SELECT lastval()").await, mine_b);
    }
    assert_eq!(
        proxy.stats().pinned_clients,
        2,
        "both hold their sequence state"
    );
    a.batch_execute("DISCARD SEQUENCES").await.unwrap();
    b.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(proxy.stats().pinned_clients, 0);
}

#[tokio::test]
async fn a_prepare_only_request_is_answered_here_and_its_error_comes_at_first_use() {
    let _shared = common::turns::shared().await;
    let proxy = TestProxy::start_with("", &trust_user()).await;
    let mut stream = raw::login(proxy.addr, "trustuser").await;
    let mut request = raw::parse("bad", "SELEC 1");
    request.extend(raw::sync());
    stream.write_all(&request).await.unwrap();
    assert!(raw::reply(&mut stream).await.errors.is_empty());

    let mut request = raw::bind("", "bad", &[]);
    request.extend(raw::execute(""));
    request.extend(raw::sync());
    stream.write_all(&request).await.unwrap();
    assert_eq!(raw::reply(&mut stream).await.errors, vec!["42601"]);

    // DEALLOCATE of a protocol-level statement is honoured for this client only.
    let mut request = raw::parse("good", "SELECT 7");
    request.extend(raw::sync());
    request.extend(raw::query("DEALLOCATE good"));
    stream.write_all(&request).await.unwrap();
    assert!(raw::reply(&mut stream).await.errors.is_empty());
    assert!(raw::reply(&mut stream).await.errors.is_empty());
    let mut request = raw::bind("", "good", &[]);
    request.extend(raw::execute(""));
    request.extend(raw::sync());
    stream.write_all(&request).await.unwrap();
    assert_eq!(raw::reply(&mut stream).await.errors, vec!["26000"]);
}

#[tokio::test]
async fn tpcb_with_prepared_statements_and_more_clients_than_connections_never_deadlocks() {
    let _shared = common::turns::shared().await;
    // pgbench prepares each statement synchronously, blocking all the clients of its
    // thread: were a prepare to wait for a connection held by those clients' open
    // transactions, the run would stall until checkout_timeout and fail.
    tokio::task::spawn_blocking(|| cluster().pgbench_init(2).unwrap())
        .await
        .unwrap();
    let proxy = pooled("max_pool_size = 4\ncheckout_timeout = \"3s\"", &[]).await;
    let out = proxy.run(
        "pgbench",
        &[
            "-n", "-M", "prepared", "-c", "24", "-j", "2", "-T", "5", "app",
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("number of failed transactions: 0 "),
        "{}",
        common::text(&out)
    );
}
