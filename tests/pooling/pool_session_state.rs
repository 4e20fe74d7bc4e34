//! Session state a client releases (unpins, DEALLOCATE, DISCARD) is released only once
//! the server has done it; identity, COPY, Flush chains and failed transactions keep the
//! reply bookkeeping and the pooled connections exact. Most run with `max_pool_size = 1`,
//! so clients share one server connection per node.
use crate::common;

use common::pool::{first, pooled_proxy, su, su_app, trust_user, ON_PRIMARY};
use common::{cluster, raw, TestProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
    let port = first(&a, "SELECT inet_server_port()").await;
    let d = a.batch_execute("DEALLOCATE rvx1").await;
    eprintln!(
        "X1 A in standby txn (port {port:?}) DEALLOCATE: {:?}",
        d.as_ref().err().and_then(|e| e.code().cloned())
    );
    let _ = a.batch_execute("ROLLBACK").await;
    let got = first(&b, "EXECUTE rvx1").await;
    eprintln!("X1 B EXECUTE rvx1: {got:?}");
    assert!(
        got.is_err(),
        "B executed A's SQL-prepared statement: {got:?}"
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
    eprintln!(
        "X1b A extended DEALLOCATE: {:?}",
        d.as_ref().err().map(|e| e.to_string())
    );
    let got = first(&b, "EXECUTE rvx1b").await;
    eprintln!("X1b B EXECUTE rvx1b: {got:?}");
    assert!(
        got.is_err(),
        "B executed A's SQL-prepared statement: {got:?}"
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
    eprintln!("X2 chain start: {}", raw::tags(&got));
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
    eprintln!("X2 currval batch ending the chain: {}", raw::tags(&r));
    s.write_all(&raw::query("SELECT 42")).await.unwrap();
    let r = raw::read_until_ready(&mut s).await;
    eprintln!("X2 next query: {}", raw::tags(&r));
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
    let e = b.execute("INSERT INTO rv_x3 VALUES (2)", &[]).await;
    eprintln!(
        "X3 B first statement: {:?}",
        e.as_ref().err().map(common::sqlstate)
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let rb = b.execute("ROLLBACK", &[]).await;
    eprintln!(
        "X3 B extended ROLLBACK: {:?}",
        rb.as_ref().err().map(common::sqlstate)
    );
    let rb2 = b.execute("ROLLBACK", &[]).await;
    eprintln!(
        "X3 B extended ROLLBACK again: {:?}",
        rb2.as_ref().err().map(common::sqlstate)
    );
    let after = b.execute("SELECT 1", &[]).await;
    eprintln!(
        "X3 B extended SELECT afterwards: {:?}",
        after.as_ref().err().map(common::sqlstate)
    );
    assert!(rb.is_ok(), "extended ROLLBACK refused: {rb:?}");
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
    eprintln!("X4 first: {:?}", raw::reply(&mut a).await);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    a.write_all(&[raw::bind("", "", &[]), raw::execute(""), raw::sync()].concat())
        .await
        .unwrap();
    let r = raw::reply(&mut a).await;
    eprintln!("X4 re-Bind of the unnamed statement: {r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
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
    eprintln!("X5 A use + DEALLOCATE ALL: {:?}", raw::reply(&mut a).await);
    b.write_all(&[raw::parse("sb", &t), raw::sync()].concat())
        .await
        .unwrap();
    raw::reply(&mut b).await;
    b.write_all(&[raw::bind("", "sb", &[]), raw::execute(""), raw::sync()].concat())
        .await
        .unwrap();
    let r = raw::reply(&mut b).await;
    eprintln!("X5 B uses the same text: {r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
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
    eprintln!("X6 where it ran: {here:?}; reads elsewhere: {seen:?}");
    assert!(
        seen.iter().all(|v| *v == here),
        "identity differs between connections"
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
    eprintln!("X7 A reads on standby {idx} port {port} (again {p2})");
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
    eprintln!("X7 A now reads on port {p3:?}");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.resume_replay(idx).unwrap();
    cluster.wait_for_replay(idx).unwrap();
    wait("standby back", &|t| t.nodes[idx].eligible);
    let mut leaked = None;
    for _ in 0..30 {
        let b = proxy.connect().await;
        let bp = first(&b, "SELECT inet_server_port()")
            .await
            .unwrap()
            .unwrap();
        if bp == port {
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
    eprintln!("X7 a new client on port {port} sees prepared statements: {leaked:?}");
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
    eprintln!(
        "X8 ext fail start: {}",
        raw::tags(&until_copy_or_ready(&mut s).await)
    );
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
    eprintln!(
        "X8 simple start: {}",
        raw::tags(&until_copy_or_ready(&mut s).await)
    );
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
    eprintln!(
        "X8 simple next: {}",
        raw::tags(&raw::read_until_ready(&mut s).await)
    );
    check_other("after simple error").await;
    // 3. extended in a transaction, error mid copy, CopyDone + Sync, ROLLBACK
    s.write_all(&raw::query("BEGIN")).await.unwrap();
    eprintln!(
        "X8 BEGIN: {}",
        raw::tags(&raw::read_until_ready(&mut s).await)
    );
    s.write_all(&ext_copy).await.unwrap();
    eprintln!(
        "X8 txn ext start: {}",
        raw::tags(&until_copy_or_ready(&mut s).await)
    );
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
    eprintln!(
        "X8 ROLLBACK: {}",
        raw::tags(&raw::read_until_ready(&mut s).await)
    );
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
    eprintln!(
        "X8 flush ext start: {}",
        raw::tags(&until_copy_or_ready(&mut s).await)
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
    eprintln!(
        "X8 flush ext done: {}",
        raw::tags(&raw::read_until_ready(&mut s).await)
    );
    check_other("after flush ext").await;
    // 5. extended success, then an immediate second extended COPY
    for i in 0..2 {
        s.write_all(&ext_copy).await.unwrap();
        eprintln!(
            "X8 ext ok {i} start: {}",
            raw::tags(&until_copy_or_ready(&mut s).await)
        );
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
        eprintln!(
            "X8 ext ok {i} done: {}",
            raw::tags(&raw::read_until_ready(&mut s).await)
        );
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
    eprintln!(
        "X9 A 'DISCARD TEMP; SELECT 1/0': {:?}",
        r.as_ref().err().map(common::sqlstate)
    );
    let own = first(&a, &format!("{ON_PRIMARY} SELECT v FROM rv_tmp9")).await;
    eprintln!(
        "X9 A still sees its temp table: {:?}",
        own.as_ref().map_err(common::sqlstate)
    );
    let got = first(&b, &format!("{ON_PRIMARY} SELECT v FROM pg_temp.rv_tmp9")).await;
    eprintln!(
        "X9 B reads A's temp table: {:?}",
        got.as_ref().map_err(common::sqlstate)
    );
    assert!(got.is_err(), "B read A's temp table: {got:?}");
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
    eprintln!(
        "X9b B reads A's temp table: {:?}",
        got.as_ref().map_err(common::sqlstate)
    );
    assert!(got.is_err(), "B read A's temp table: {got:?}");
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
    eprintln!(
        "X9c A 'SELECT 1; DISCARD ALL': {:?}",
        r.as_ref().err().map(common::sqlstate)
    );
    let own = first(&a, &format!("{ON_PRIMARY} SELECT v FROM rv_tmp9c")).await;
    eprintln!(
        "X9c A still sees its temp table: {:?}",
        own.as_ref().map_err(common::sqlstate)
    );
    let got = first(&b, &format!("{ON_PRIMARY} SELECT v FROM pg_temp.rv_tmp9c")).await;
    eprintln!(
        "X9c B reads A's temp table: {:?}",
        got.as_ref().map_err(common::sqlstate)
    );
    assert!(got.is_err(), "B read A's temp table: {got:?}");
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
    eprintln!("X10 bad SET: {:?}", r.as_ref().err().map(common::sqlstate));
    for i in 0..3 {
        let r = a.batch_execute("ROLLBACK").await;
        eprintln!(
            "X10 ROLLBACK {i}: {:?}",
            r.as_ref().err().and_then(|e| e
                .as_db_error()
                .map(|d| (d.code().code().to_owned(), d.message().to_owned())))
        );
    }
    let r = a.simple_query("SELECT 1").await;
    eprintln!(
        "X10 SELECT afterwards: {:?}",
        r.as_ref().err().map(|e| e.to_string())
    );
    assert!(r.is_ok());
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
    eprintln!(
        "X11 B BEGIN: {}",
        raw::tags(&raw::read_until_ready(&mut b).await)
    );
    b.write_all(&raw::query(&format!("{ON_PRIMARY} SELECT 1")))
        .await
        .unwrap();
    eprintln!(
        "X11 B select: {}",
        raw::tags(&raw::read_until_ready(&mut b).await)
    );
    cluster()
        .sql(0, "app", "NOTIFY rv_chan, 'secret of A'")
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    b.write_all(&raw::query("COMMIT")).await.unwrap();
    let r = raw::read_until_ready(&mut b).await;
    eprintln!("X11 B COMMIT: {}", raw::tags(&r));
    assert!(!r.iter().any(|(t, _)| *t == b'A'), "B got A's notification");
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
    eprintln!("X12 DEALLOCATE s1 in a transaction: {}", raw::tags(&r));
    assert!(!r.iter().any(|(t, _)| *t == b'E'));
}
