//! Session state a client releases (unpins, DEALLOCATE, DISCARD) is released only once
//! the server has done it; identity, COPY, Flush chains and failed transactions keep the
//! reply bookkeeping and the pooled connections exact. Most run with `max_pool_size = 1`,
//! so clients share one server connection per node.
use crate::common;

use common::pool::{first, pooled_proxy, su, su_app, trust_user, ON_PRIMARY};
use common::{cluster, raw, TestProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The SQLSTATE of a failed statement, or `"ok"`.
fn outcome<T>(r: &Result<T, tokio_postgres::Error>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => common::sqlstate(e),
    }
}

/// Whether `port` is one of the shared cluster's standbys.
fn is_standby_port(port: &str) -> bool {
    cluster().nodes()[1..]
        .iter()
        .any(|n| n.port.to_string() == port)
}

/// What another client gets when it reads or runs what belongs to a client pinned to the
/// pool's only primary connection: either it waits for that connection in vain (53300), or
/// it gets one of its own, where the thing does not exist (`missing`). Never the thing.
fn refused_to_another_client<T: std::fmt::Debug>(
    got: &Result<T, tokio_postgres::Error>,
    missing: &str,
) -> bool {
    matches!(got, Err(e) if [missing, "53300"].contains(&common::sqlstate(e).as_str()))
}

/// DEALLOCATE sent inside a transaction that runs on the other connection: the
/// statement stays on the connection that holds it, which goes back to the pool.
#[tokio::test]
async fn deallocate_run_on_another_connection_keeps_the_statement_held_where_it_is() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("PREPARE rvx1 AS SELECT 'secret of A'::text WHERE txid_current() > 0")
        .await
        .unwrap();
    a.batch_execute("BEGIN READ ONLY").await.unwrap();
    let port = first(&a, "SELECT inet_server_port()")
        .await
        .unwrap()
        .unwrap();
    assert!(
        is_standby_port(&port),
        "the read-only transaction runs on port {port}, not a standby"
    );
    // The standby's connection never had the statement.
    let d = a.batch_execute("DEALLOCATE rvx1").await;
    assert_eq!(outcome(&d), "26000", "DEALLOCATE on the standby: {d:?}");
    let _ = a.batch_execute("ROLLBACK").await;
    let got = first(&b, "EXECUTE rvx1").await;
    assert!(
        got.is_err(),
        "B executed A's SQL-prepared statement: {got:?}"
    );
    assert!(
        refused_to_another_client(&got, "26000"),
        "B's EXECUTE of A's statement: {got:?}"
    );
}

/// DEALLOCATE over the extended protocol (JDBC, tokio-postgres `execute`) is planned
/// as an ordinary statement: it goes to the last connection, not the holder.
#[tokio::test]
async fn extended_protocol_deallocate_elsewhere_keeps_the_statement_held() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("PREPARE rvx1b AS SELECT 'secret of A'::text WHERE txid_current() > 0")
        .await
        .unwrap();
    let _ = first(&a, "SELECT 1").await; // a read: `last` is the standby
    let d = a.execute("DEALLOCATE rvx1b", &[]).await;
    assert_eq!(
        outcome(&d),
        "26000",
        "extended DEALLOCATE on the standby: {d:?}"
    );
    let got = first(&b, "EXECUTE rvx1b").await;
    assert!(
        got.is_err(),
        "B executed A's SQL-prepared statement: {got:?}"
    );
    assert!(
        refused_to_another_client(&got, "26000"),
        "B's EXECUTE of A's statement: {got:?}"
    );
}

/// A lone currval() refused in the middle of a Flush chain leaves `sticky` set.
#[tokio::test]
async fn a_flush_chain_is_never_refused_midway() {
    let _shared = common::turns::shared().await;
    su_app("CREATE SEQUENCE IF NOT EXISTS rv_seq2; GRANT ALL ON SEQUENCE rv_seq2 TO app");
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    s.write_all(
        &[
            raw::parse("", &format!("{ON_PRIMARY} SELECT 1")),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::flush(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    // read the chain's first answers
    let mut got = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(std::time::Duration::from_secs(2), raw::read_message(&mut s))
            .await
        {
            Ok(Some(m)) => {
                let done = m.0 == b'C';
                got.push(m);
                if done {
                    break;
                }
            }
            _ => break,
        }
    }
    assert_eq!(raw::tags(&got), "1 2 D C", "the chain's first answers");
    s.write_all(
        &[
            raw::parse("", "SELECT currval('rv_seq2')"),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::read_until_ready(&mut s).await;
    // PostgreSQL's own answer on the chain's connection, not pgsplit's refusal (0A000).
    assert_eq!(
        raw::tags(&r),
        "1 2 E(55000) Z(I)",
        "the currval batch ending the chain"
    );
    s.write_all(&raw::query("SELECT 42")).await.unwrap();
    let r = raw::read_until_ready(&mut s).await;
    assert!(
        r.iter().any(|(t, _)| *t == b'D'),
        "the session never answers its next query: {}",
        raw::tags(&r)
    );
}

/// A deferred transaction that failed before reaching a server can only be ended by a
/// simple-protocol ROLLBACK: an extended-protocol one is refused with 25P02.
#[tokio::test]
async fn a_transaction_that_failed_here_ends_with_an_extended_protocol_rollback() {
    let _shared = common::turns::shared().await;
    su_app("DROP TABLE IF EXISTS rv_x3; CREATE TABLE rv_x3 (x int); GRANT ALL ON rv_x3 TO app");
    let proxy = pooled_proxy("max_pool_size = 1\ncheckout_timeout = \"1s\"").await;
    let holder = proxy.connect().await;
    let b = proxy.connect().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .batch_execute("INSERT INTO rv_x3 VALUES (1)")
        .await
        .unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    // The pool's only primary connection is the holder's: B's transaction fails before
    // it reaches a server.
    let e = b.execute("INSERT INTO rv_x3 VALUES (2)", &[]).await;
    assert_eq!(outcome(&e), "53300", "B's first statement: {e:?}");
    holder.batch_execute("COMMIT").await.unwrap();
    let rb = b.execute("ROLLBACK", &[]).await;
    assert!(rb.is_ok(), "extended ROLLBACK refused: {rb:?}");
    let rb2 = b.execute("ROLLBACK", &[]).await;
    assert!(rb2.is_ok(), "a second extended ROLLBACK: {rb2:?}");
    let after = b.execute("SELECT 1", &[]).await;
    assert!(after.is_ok(), "an extended SELECT afterwards: {after:?}");
}

/// The pool's health check runs a simple query, which drops the server's unnamed
/// statement; the lease still says it holds the client's.
#[tokio::test]
async fn the_pool_health_check_forgets_the_unnamed_statement_it_destroys() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1\nserver_check_delay = \"0s\"").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    a.write_all(
        &[
            raw::parse("", &format!("{ON_PRIMARY} SELECT 'unnamed'")),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::reply(&mut a).await;
    assert!(r.errors.is_empty(), "the first run: {r:?}");
    assert_eq!(r.rows, [[Some("unnamed".to_owned())]], "the first run");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    a.write_all(&[raw::bind("", "", &[]), raw::execute(""), raw::sync()].concat())
        .await
        .unwrap();
    let r = raw::reply(&mut a).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        r.rows,
        [[Some("unnamed".to_owned())]],
        "the re-Bind of the unnamed statement"
    );
}

/// DEALLOCATE ALL after a statement use in one batch: the lease keeps the statement
/// the server just dropped.
#[tokio::test]
async fn deallocate_all_after_a_use_in_the_same_batch_leaves_a_true_record() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let mut b = raw::login(proxy.addr, "trustuser").await;
    let t = format!("{ON_PRIMARY} SELECT 'shared'");
    a.write_all(&[raw::parse("s1", &t), raw::sync()].concat())
        .await
        .unwrap();
    raw::reply(&mut a).await;
    a.write_all(
        &[
            raw::bind("", "s1", &[]),
            raw::execute(""),
            raw::parse("", "DEALLOCATE ALL"),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::reply(&mut a).await;
    assert!(r.errors.is_empty(), "A's use and DEALLOCATE ALL: {r:?}");
    assert_eq!(r.rows, [[Some("shared".to_owned())]], "A's use of s1");
    b.write_all(&[raw::parse("sb", &t), raw::sync()].concat())
        .await
        .unwrap();
    raw::reply(&mut b).await;
    b.write_all(&[raw::bind("", "sb", &[]), raw::execute(""), raw::sync()].concat())
        .await
        .unwrap();
    let r = raw::reply(&mut b).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        r.rows,
        [[Some("shared".to_owned())]],
        "B's use of the same text"
    );
}

/// SET SESSION AUTHORIZATION drops the role in PostgreSQL; pgsplit keeps replaying it.
#[tokio::test]
async fn set_session_authorization_drops_the_role_everywhere() {
    let _shared = common::turns::shared().await;
    su("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rv_role') THEN CREATE ROLE rv_role; END IF; END $$; GRANT rv_role TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let (s, conn) = tokio_postgres::connect(
        &proxy.conninfo(
            pgsplit_cluster::SUPERUSER,
            cluster().superuser_password(),
            "app",
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    s.batch_execute("SET ROLE rv_role").await.unwrap();
    s.batch_execute("SET SESSION AUTHORIZATION app")
        .await
        .unwrap();
    let here = first(
        &s,
        &format!("{ON_PRIMARY} SELECT current_user || '/' || current_setting('role')"),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            first(&s, "SELECT current_user || '/' || current_setting('role')")
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        here.as_deref(),
        Some("app/none"),
        "SET SESSION AUTHORIZATION drops the role"
    );
    assert!(
        seen.iter().all(|v| *v == here),
        "identity differs between connections: {here:?} on the primary, {seen:?} elsewhere"
    );
}

/// Session mode: a standby that stops being eligible is handed back with `release()`,
/// without the reset a DISCARD ALL run on the primary asked for.
#[tokio::test]
async fn session_mode_standby_swap_resets_what_discard_all_dropped() {
    let _shared = common::turns::shared().await;
    use std::time::{Duration, Instant};
    let cluster = common::own_cluster().await;
    let monitor = "lag_check_interval = \"100ms\"\nmax_lag_bytes = 65536\nmax_ban = \"2s\"";
    let proxy = TestProxy::start_for(
        &cluster,
        "",
        monitor,
        &format!("[routing]\nread_your_writes = \"off\"\n\n[pool]\nmode = \"session\"\nmax_pool_size = 1\n{}", trust_user()),
    )
    .await;
    let wait = |what: &'static str, f: &dyn Fn(&pgsplit::topology::Topology) -> bool| {
        let start = Instant::now();
        loop {
            if f(&proxy.topology()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("eligible", &|t| t.nodes[1..].iter().all(|n| n.eligible));
    cluster
        .sql(
            0,
            "app",
            "CREATE TABLE filler (x text); GRANT ALL ON filler TO app",
        )
        .unwrap();
    let a = proxy.connect().await;
    let port: String = first(&a, "SELECT inet_server_port()")
        .await
        .unwrap()
        .unwrap();
    let idx = cluster
        .nodes()
        .iter()
        .position(|n| n.port.to_string() == port)
        .unwrap();
    a.batch_execute("PREPARE rvs7 AS SELECT 'secret of A'::text")
        .await
        .unwrap();
    let p2: String = first(&a, "SELECT inet_server_port()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        p2, port,
        "a session-mode client keeps its standby connection"
    );
    a.batch_execute(&format!("{ON_PRIMARY} DISCARD ALL"))
        .await
        .unwrap();
    cluster.pause_replay(idx).unwrap();
    cluster
        .sql(
            0,
            "app",
            "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 1000)",
        )
        .unwrap();
    wait("paused standby excluded", &|t| !t.nodes[idx].eligible);
    let p3 = first(&a, "SELECT inet_server_port()").await.unwrap();
    assert_ne!(
        p3.as_deref(),
        Some(port.as_str()),
        "A still reads on the excluded standby {idx}"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.resume_replay(idx).unwrap();
    cluster.wait_for_replay(idx).unwrap();
    wait("standby back", &|t| t.nodes[idx].eligible);
    let mut leaked = None;
    let mut reached = false;
    for _ in 0..30 {
        let b = proxy.connect().await;
        let bp = first(&b, "SELECT inet_server_port()")
            .await
            .unwrap()
            .unwrap();
        if bp == port {
            reached = true;
            leaked = first(
                &b,
                "SELECT string_agg(name, ',') FROM pg_prepared_statements",
            )
            .await
            .unwrap();
            break;
        }
        drop(b);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        reached,
        "no new client in 30 reached standby {idx} (port {port}) again"
    );
    assert!(
        leaked.as_deref().is_none_or(|names| names == "NULL"),
        "a new client saw another client's prepared statements: {leaked:?}"
    );
}

async fn until_copy_or_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), raw::read_message(s)).await {
            Ok(Some(m)) => {
                let t = m.0;
                got.push(m);
                if t == b'G' || t == b'Z' {
                    return got;
                }
            }
            _ => {
                got.push((b'!', b"timeout".to_vec()));
                return got;
            }
        }
    }
}

/// COPY flows in both protocols; after each the pool's only connection must be free.
#[tokio::test]
async fn copy_in_both_protocols_always_frees_the_connection() {
    let _shared = common::turns::shared().await;
    su_app("DROP TABLE IF EXISTS rv_copy8; CREATE TABLE rv_copy8 (x int); GRANT ALL ON rv_copy8 TO app");
    let proxy = pooled_proxy("max_pool_size = 1\ncheckout_timeout = \"2s\"").await;
    let other = proxy.connect().await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    let ext_copy = [
        raw::parse("", "COPY rv_copy8 FROM STDIN"),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
    ]
    .concat();
    let check_other = |label: &'static str| {
        let other = &other;
        async move {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(4),
                first(
                    other,
                    &format!("{ON_PRIMARY} SELECT count(*) FROM rv_copy8"),
                ),
            )
            .await;
            let count = r.ok().and_then(|r| r.ok()).flatten();
            assert!(
                count.is_some(),
                "{label}: the pool's only connection was not free for another client"
            );
            count.unwrap_or_default()
        }
    };
    // 1. extended, CopyFail + Sync
    s.write_all(&ext_copy).await.unwrap();
    let start = until_copy_or_ready(&mut s).await;
    assert_eq!(raw::tags(&start), "1 2 G", "extended COPY, to fail");
    s.write_all(
        &[
            raw::message(b'd', b"1\n"),
            raw::message(b'f', b"client gave up\0"),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let failed = raw::read_until_ready(&mut s).await;
    assert!(
        raw::tags(&failed).starts_with("E(57014)"),
        "CopyFail: {}",
        raw::tags(&failed)
    );
    check_other("after ext CopyFail").await;
    // 2. simple, server error mid copy, client goes on sending, then CopyDone
    s.write_all(&raw::query("COPY rv_copy8 FROM STDIN"))
        .await
        .unwrap();
    let start = until_copy_or_ready(&mut s).await;
    assert_eq!(raw::tags(&start), "G", "simple COPY");
    s.write_all(&raw::message(b'd', b"bad\n")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.write_all(&[raw::message(b'd', b"2\n"), raw::message(b'c', b"")].concat())
        .await
        .unwrap();
    let failed = raw::read_until_ready(&mut s).await;
    assert!(
        raw::tags(&failed).contains("E(22P02)"),
        "bad row: {}",
        raw::tags(&failed)
    );
    s.write_all(&raw::query("SELECT 1")).await.unwrap();
    let next = raw::read_until_ready(&mut s).await;
    assert_eq!(
        raw::tags(&next),
        "T D C Z(I)",
        "a query after the failed COPY"
    );
    check_other("after simple error").await;
    // 3. extended in a transaction, error mid copy, CopyDone + Sync, ROLLBACK
    s.write_all(&raw::query("BEGIN")).await.unwrap();
    let begin = raw::read_until_ready(&mut s).await;
    assert_eq!(raw::tags(&begin), "C Z(T)", "BEGIN");
    s.write_all(&ext_copy).await.unwrap();
    let start = until_copy_or_ready(&mut s).await;
    assert_eq!(raw::tags(&start), "1 2 G", "extended COPY in a transaction");
    s.write_all(&raw::message(b'd', b"bad\n")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.write_all(&[raw::message(b'c', b""), raw::sync()].concat())
        .await
        .unwrap();
    let failed = raw::read_until_ready(&mut s).await;
    assert_eq!(
        raw::tags(&failed),
        "E(22P02) Z(E)",
        "bad row in a transaction"
    );
    s.write_all(&raw::query("ROLLBACK")).await.unwrap();
    let rollback = raw::read_until_ready(&mut s).await;
    assert_eq!(raw::tags(&rollback), "C Z(I)", "ROLLBACK");
    check_other("after txn ext error").await;
    // 4. extended success, Flush-ended batch
    s.write_all(
        &[
            raw::parse("", "COPY rv_copy8 FROM STDIN"),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::flush(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let start = until_copy_or_ready(&mut s).await;
    assert_eq!(
        raw::tags(&start),
        "1 2 G",
        "extended COPY in a Flush-ended batch"
    );
    s.write_all(
        &[
            raw::message(b'd', b"4\n"),
            raw::message(b'c', b""),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let done = raw::read_until_ready(&mut s).await;
    assert_eq!(
        raw::tags(&done),
        "C Z(I)",
        "the end of the Flush-ended COPY"
    );
    check_other("after flush ext").await;
    // 5. extended success, then an immediate second extended COPY
    for i in 0..2 {
        s.write_all(&ext_copy).await.unwrap();
        let start = until_copy_or_ready(&mut s).await;
        assert_eq!(raw::tags(&start), "1 2 G", "extended COPY {i}");
        s.write_all(
            &[
                raw::message(b'd', b"5\n"),
                raw::message(b'c', b""),
                raw::sync(),
            ]
            .concat(),
        )
        .await
        .unwrap();
        let done = raw::read_until_ready(&mut s).await;
        assert_eq!(raw::tags(&done), "C Z(I)", "the end of extended COPY {i}");
    }
    check_other("after ext ok").await;
    // 6. extended COPY TO STDOUT
    s.write_all(
        &[
            raw::parse("", "COPY rv_copy8 TO STDOUT"),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let out = raw::read_until_ready(&mut s).await;
    assert_eq!(
        raw::tags(&out),
        "1 2 H d d d c C Z(I)",
        "COPY TO STDOUT of the three rows loaded"
    );
    assert_eq!(
        check_other("after copy out").await,
        "3",
        "rows loaded by the successful COPYs"
    );
}

/// DISCARD TEMP is transactional: rolled back, the temp table stays, but the pin is gone.
#[tokio::test]
async fn a_failed_discard_temp_keeps_the_temp_table_pinned() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("CREATE TEMP TABLE rv_tmp9 AS SELECT 'secret of A'::text AS v")
        .await
        .unwrap();
    let r = a.simple_query("DISCARD TEMP; SELECT 1/0").await;
    assert_eq!(outcome(&r), "22012", "'DISCARD TEMP; SELECT 1/0': {r:?}");
    let own = first(&a, &format!("{ON_PRIMARY} SELECT v FROM rv_tmp9")).await;
    assert_eq!(
        own.map_err(|e| common::sqlstate(&e)),
        Ok(Some("secret of A".to_owned())),
        "A's temp table after its DISCARD TEMP failed"
    );
    let got = first(&b, &format!("{ON_PRIMARY} SELECT v FROM pg_temp.rv_tmp9")).await;
    assert!(got.is_err(), "B read A's temp table: {got:?}");
    assert!(
        refused_to_another_client(&got, "42P01"),
        "B's read of A's temp table: {got:?}"
    );
}

#[tokio::test]
async fn a_rolled_back_discard_temp_keeps_the_temp_table_pinned() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("CREATE TEMP TABLE rv_tmp9b AS SELECT 'secret of A'::text AS v")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("DISCARD TEMP").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    let got = first(&b, &format!("{ON_PRIMARY} SELECT v FROM pg_temp.rv_tmp9b")).await;
    assert!(got.is_err(), "B read A's temp table: {got:?}");
    assert!(
        refused_to_another_client(&got, "42P01"),
        "B's read of A's temp table: {got:?}"
    );
}

/// A DISCARD ALL that PostgreSQL refuses (inside a transaction block) still clears pins.
#[tokio::test]
async fn a_refused_discard_all_keeps_the_pins() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("CREATE TEMP TABLE rv_tmp9c AS SELECT 'secret of A'::text AS v")
        .await
        .unwrap();
    let r = a
        .simple_query(&format!("{ON_PRIMARY} SELECT 1; DISCARD ALL"))
        .await;
    // DISCARD ALL cannot run in the implicit transaction of a multi-statement query.
    assert_eq!(outcome(&r), "25001", "'SELECT 1; DISCARD ALL': {r:?}");
    let own = first(&a, &format!("{ON_PRIMARY} SELECT v FROM rv_tmp9c")).await;
    assert_eq!(
        own.map_err(|e| common::sqlstate(&e)),
        Ok(Some("secret of A".to_owned())),
        "A's temp table after its DISCARD ALL was refused"
    );
    let got = first(&b, &format!("{ON_PRIMARY} SELECT v FROM pg_temp.rv_tmp9c")).await;
    assert!(got.is_err(), "B read A's temp table: {got:?}");
    assert!(
        refused_to_another_client(&got, "42P01"),
        "B's read of A's temp table: {got:?}"
    );
}

/// A SET that fails inside a transaction leaves the connection's settings unknown; the
/// settings sync then runs inside the aborted transaction, fails, and eats the ROLLBACK.
#[tokio::test]
async fn a_failed_set_in_a_transaction_can_still_be_rolled_back() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let a = proxy.connect().await;
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute(&format!("{ON_PRIMARY} SELECT 1"))
        .await
        .unwrap();
    let r = a.batch_execute("SET statement_timeout = 'bogus'").await;
    assert_eq!(outcome(&r), "22023", "the bad SET: {r:?}");
    // The first ends the transaction; the others find none, which is only a warning.
    for i in 0..3 {
        let r = a.batch_execute("ROLLBACK").await;
        assert!(r.is_ok(), "ROLLBACK {i} after the failed SET: {r:?}");
    }
    let r = a.simple_query("SELECT 1").await;
    assert!(r.is_ok(), "SELECT after the ROLLBACKs: {r:?}");
}

#[tokio::test]
async fn a_rolled_back_unlisten_keeps_the_listener_pinned() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let a = proxy.connect().await;
    a.batch_execute("LISTEN rv_chan").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute(&format!("{ON_PRIMARY} UNLISTEN *"))
        .await
        .unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    // The UNLISTEN was rolled back: A still listens, so it keeps its connection.
    assert_eq!(proxy.stats().pinned_clients, 1);
    let mut b = raw::login(proxy.addr, "trustuser").await;
    b.write_all(&raw::query("BEGIN")).await.unwrap();
    let begin = raw::read_until_ready(&mut b).await;
    assert_eq!(raw::tags(&begin), "C Z(T)", "B's BEGIN");
    b.write_all(&raw::query(&format!("{ON_PRIMARY} SELECT 1")))
        .await
        .unwrap();
    let select = raw::read_until_ready(&mut b).await;
    assert_eq!(
        raw::tags(&select),
        "T D C Z(T)",
        "B's SELECT on the other primary connection"
    );
    cluster()
        .sql(0, "app", "NOTIFY rv_chan, 'secret of A'")
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    b.write_all(&raw::query("COMMIT")).await.unwrap();
    let r = raw::read_until_ready(&mut b).await;
    assert!(!r.iter().any(|(t, _)| *t == b'A'), "B got A's notification");
    assert_eq!(raw::tags(&r), "C Z(I)", "B's COMMIT");
}

#[tokio::test]
async fn deallocate_of_a_protocol_statement_works_inside_a_transaction() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    a.write_all(&[raw::parse("s1", "SELECT 1"), raw::sync()].concat())
        .await
        .unwrap();
    raw::reply(&mut a).await;
    a.write_all(&raw::query("BEGIN")).await.unwrap();
    raw::reply(&mut a).await;
    a.write_all(&raw::query(&format!("{ON_PRIMARY} SELECT 1")))
        .await
        .unwrap();
    raw::reply(&mut a).await;
    a.write_all(&raw::query("DEALLOCATE s1")).await.unwrap();
    let r = raw::read_until_ready(&mut a).await;
    assert!(
        !r.iter().any(|(t, _)| *t == b'E'),
        "DEALLOCATE s1 in a transaction: {}",
        raw::tags(&r)
    );
    assert_eq!(raw::tags(&r), "C Z(T)", "DEALLOCATE s1 in a transaction");
}
