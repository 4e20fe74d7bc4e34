//! Nothing one client does reaches another through a pooled server connection: roles,
//! settings, SQL and protocol prepared statements, cursors, sequence state, and the
//! bookkeeping of replies pgsplit adds (COPY, failed batches, evictions). Most run with
//! `max_pool_size = 1`, so both clients share one server connection per node.
use crate::common;

use common::pool::{first, pooled_proxy, su, su_app, ON_PRIMARY};
use common::{cluster, raw};
use pgsplit_cluster::APP_PASSWORD;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// PostgreSQL's default `search_path`.
const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";

/// A text column, as the raw client reports one row of it.
fn one_row(v: &str) -> Vec<Vec<Option<String>>> {
    vec![vec![Some(v.to_owned())]]
}

/// Whether `port` is one of the shared cluster's standbys.
fn is_standby_port(port: &str) -> bool {
    cluster().nodes()[1..]
        .iter()
        .any(|n| n.port.to_string() == port)
}

#[tokio::test]
async fn a_role_set_then_reset_all_never_reaches_another_client() {
    let _shared = common::turns::shared().await;
    su("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rv_role') THEN CREATE ROLE rv_role; END IF; END $$; GRANT rv_role TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("SET ROLE rv_role").await.unwrap();
    a.batch_execute("RESET ALL").await.unwrap();
    let a_user = first(&a, &format!("{ON_PRIMARY} SELECT current_user"))
        .await
        .unwrap();
    let b_user = first(&b, &format!("{ON_PRIMARY} SELECT current_user"))
        .await
        .unwrap();
    // As in PostgreSQL, RESET ALL leaves the role alone.
    assert_eq!(
        a_user.as_deref(),
        Some("rv_role"),
        "A's role after RESET ALL"
    );
    assert_eq!(
        b_user.as_deref(),
        Some("app"),
        "B runs as another client's role"
    );
}

#[tokio::test]
async fn a_role_kept_through_a_rolled_back_transaction_never_reaches_another_client() {
    let _shared = common::turns::shared().await;
    su("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rv_role') THEN CREATE ROLE rv_role; END IF; END $$; GRANT rv_role TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("SET ROLE rv_role").await.unwrap();
    a.batch_execute(&format!("BEGIN; {ON_PRIMARY} SELECT 1; ROLLBACK"))
        .await
        .unwrap();
    // simple queries one by one
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query(&format!("{ON_PRIMARY} SELECT 1"))
        .await
        .unwrap();
    a.simple_query("ROLLBACK").await.unwrap();
    let b_user = first(&b, &format!("{ON_PRIMARY} SELECT current_user"))
        .await
        .unwrap();
    assert_eq!(
        b_user.as_deref(),
        Some("app"),
        "B runs as another client's role"
    );
}

#[tokio::test]
async fn an_error_during_extended_copy_in_reaches_the_client() {
    let _shared = common::turns::shared().await;
    su_app(
        "DROP TABLE IF EXISTS rv_copy; CREATE TABLE rv_copy (x int); GRANT ALL ON rv_copy TO app",
    );
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    let ask = [
        raw::parse("", "COPY rv_copy FROM STDIN"),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
    ]
    .concat();
    s.write_all(&ask).await.unwrap();
    // read until CopyInResponse
    let mut got = Vec::new();
    loop {
        let m = raw::read_message(&mut s).await.unwrap();
        let t = m.0;
        got.push(m);
        if t == b'G' || t == b'Z' {
            break;
        }
    }
    assert_eq!(raw::tags(&got), "1 2 G", "the extended COPY's start");
    s.write_all(&raw::message(b'd', b"not-a-number\n"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.write_all(&[raw::message(b'c', b""), raw::sync()].concat())
        .await
        .unwrap();
    let rest = raw::read_until_ready(&mut s).await;
    assert!(
        rest.iter().any(|(t, _)| *t == b'E'),
        "the COPY's error never reached the client: {}",
        raw::tags(&rest)
    );
    assert_eq!(raw::tags(&rest), "E(22P02) Z(I)", "after CopyDone and Sync");
}

#[tokio::test]
async fn binding_an_unnamed_statement_never_parsed_fails_instead_of_running_anothers() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let mut b = raw::login(proxy.addr, "trustuser").await;
    let ask = [
        raw::parse("", &format!("{ON_PRIMARY} SELECT 'secret of A'")),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
    ]
    .concat();
    a.write_all(&ask).await.unwrap();
    let r = raw::reply(&mut a).await;
    assert!(r.errors.is_empty(), "A's unnamed statement: {r:?}");
    assert_eq!(r.rows, one_row("secret of A"), "A's unnamed statement");
    b.write_all(&[raw::bind("", "", &[]), raw::execute(""), raw::sync()].concat())
        .await
        .unwrap();
    let got = raw::reply(&mut b).await;
    assert_eq!(got.errors, ["26000"], "B ran A's unnamed statement");
}

#[tokio::test]
async fn deallocate_runs_where_the_statement_is() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("PREPARE rvfoo AS SELECT 'secret of A'::text WHERE txid_current() > 0")
        .await
        .unwrap();
    let r = first(&a, "SELECT 1").await; // a read: the standby becomes `last`
    assert_eq!(r.ok().flatten().as_deref(), Some("1"), "A's read");
    let d = a.batch_execute("DEALLOCATE rvfoo").await;
    assert!(d.is_ok(), "A's DEALLOCATE: {d:?}");
    let got = first(&b, "EXECUTE rvfoo").await;
    assert!(
        got.is_err(),
        "B executed A's SQL-prepared statement: {got:?}"
    );
    // The DEALLOCATE freed A's connection, which B gets without the statement.
    assert_eq!(
        got.map_err(|e| common::sqlstate(&e)),
        Err("26000".to_owned()),
        "B's EXECUTE of A's deallocated statement"
    );
}

#[tokio::test]
async fn discard_all_run_elsewhere_still_resets_the_connection_holding_state() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("PREPARE rvbar AS SELECT 'secret of A'::text WHERE txid_current() > 0")
        .await
        .unwrap();
    let _ = first(&a, "SELECT 1").await;
    let d = a.batch_execute("DISCARD ALL").await;
    assert!(d.is_ok(), "A's DISCARD ALL: {d:?}");
    let got = first(&b, "EXECUTE rvbar").await;
    assert!(
        got.is_err(),
        "B executed A's SQL-prepared statement: {got:?}"
    );
    // The DISCARD ALL freed A's connection, which B gets without the statement.
    assert_eq!(
        got.map_err(|e| common::sqlstate(&e)),
        Err("26000".to_owned()),
        "B's EXECUTE of A's discarded statement"
    );
}

#[tokio::test]
async fn a_with_hold_cursor_on_a_standby_keeps_its_connection_from_others() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("BEGIN READ ONLY").await.unwrap();
    let port = first(&a, "SELECT inet_server_port()")
        .await
        .unwrap()
        .unwrap();
    assert!(
        is_standby_port(&port),
        "the read-only transaction runs on port {port}, not a standby"
    );
    a.batch_execute("DECLARE rvcur CURSOR WITH HOLD FOR SELECT 'secret of A'::text")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let a_fetch = first(&a, "FETCH ALL FROM rvcur").await;
    assert_eq!(
        a_fetch.ok().flatten().as_deref(),
        Some("secret of A"),
        "A's FETCH from its own cursor"
    );
    let mut leaked = None;
    for _ in 0..10 {
        b.batch_execute("BEGIN READ ONLY").await.unwrap();
        let got = first(&b, "FETCH ALL FROM rvcur").await;
        let _ = b.batch_execute("ROLLBACK").await;
        if let Ok(Some(v)) = got {
            leaked = Some(v);
            break;
        }
    }
    assert!(leaked.is_none(), "B fetched A's cursor: {leaked:?}");
}

#[tokio::test]
async fn evictions_skipped_by_a_failed_batch_do_not_break_the_connection() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1\nprepared_statements_cache_size = 2").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let p = |sql: &str| format!("{ON_PRIMARY} {sql}");
    // Fill the cache with X, Y (used once each on the primary).
    for (name, sql) in [("x", p("SELECT 'x'")), ("y", p("SELECT 'y'"))] {
        a.write_all(&[raw::parse(name, &sql), raw::sync()].concat())
            .await
            .unwrap();
        let r = raw::reply(&mut a).await;
        assert!(
            r.errors.is_empty() && r.rows.is_empty(),
            "prepare {name}: {r:?}"
        );
        a.write_all(&[raw::bind("", name, &[]), raw::execute(""), raw::sync()].concat())
            .await
            .unwrap();
        let r = raw::reply(&mut a).await;
        assert!(r.errors.is_empty(), "run {name}: {r:?}");
        assert_eq!(r.rows, one_row(name), "run {name}");
    }
    // bad and good prepared locally
    a.write_all(
        &[
            raw::parse("bad", &p("SELECT * FROM rv_no_such_table")),
            raw::parse("good", &p("SELECT 'good'")),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    // Answered by pgsplit without a server: the bad one fails when it is first used.
    let r = raw::reply(&mut a).await;
    assert!(
        r.errors.is_empty() && r.rows.is_empty(),
        "prepare bad and good: {r:?}"
    );
    a.write_all(
        &[
            raw::bind("", "bad", &[]),
            raw::execute(""),
            raw::bind("", "good", &[]),
            raw::execute(""),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::reply(&mut a).await;
    assert!(
        r.errors == ["42P01"] && r.rows.is_empty(),
        "run bad, then good, in one batch: {r:?}"
    );
    for name in ["x", "y", "good", "x", "y"] {
        a.write_all(&[raw::bind("", name, &[]), raw::execute(""), raw::sync()].concat())
            .await
            .unwrap();
        let r = raw::reply(&mut a).await;
        assert!(
            r.errors.is_empty() && r.rows.len() == 1,
            "{name} after the failed batch: {r:?}"
        );
    }
}

#[tokio::test]
async fn a_name_whose_parse_failed_can_be_parsed_again() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    a.write_all(
        &[
            raw::parse("s1", "SELECT * FROM rv_missing_tbl"),
            raw::describe(b'S', "s1"),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::reply(&mut a).await;
    assert_eq!(r.errors, ["42P01"], "the first Parse of s1: {r:?}");
    a.write_all(
        &[
            raw::parse("s1", "SELECT 42"),
            raw::describe(b'S', "s1"),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::reply(&mut a).await;
    assert!(
        r.errors.is_empty(),
        "re-Parse after a failed Parse refused: {r:?}"
    );
    assert_eq!(
        r.param_types,
        Some(vec![]),
        "the Describe of the second s1: {r:?}"
    );
}

#[tokio::test]
async fn a_failed_commit_undoes_its_settings_for_everyone() {
    let _shared = common::turns::shared().await;
    su_app("CREATE SCHEMA IF NOT EXISTS rv_schema; GRANT ALL ON SCHEMA rv_schema TO app; DROP TABLE IF EXISTS rv_def; CREATE TABLE rv_def (x int UNIQUE DEFERRABLE INITIALLY DEFERRED); GRANT ALL ON rv_def TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("SET search_path = rv_schema, public")
        .await
        .unwrap();
    a.simple_query("INSERT INTO public.rv_def VALUES (1), (1)")
        .await
        .unwrap();
    let c = a.simple_query("COMMIT").await;
    let own = first(
        &a,
        &format!("{ON_PRIMARY} SELECT current_setting('search_path')"),
    )
    .await
    .unwrap();
    assert_eq!(
        c.map(|_| ()).map_err(|e| common::sqlstate(&e)),
        Err("23505".to_owned()),
        "A's COMMIT with a deferred unique violation"
    );
    assert_eq!(
        own.as_deref(),
        Some(DEFAULT_SEARCH_PATH),
        "A's search_path after its COMMIT failed (PostgreSQL's default, as directly)"
    );
    let conninfo = format!(
        "{} options='-c search_path=rv_schema,\\\\ public'",
        proxy.conninfo("app", APP_PASSWORD, "app")
    );
    let (cc, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let got = first(
        &cc,
        &format!("{ON_PRIMARY} SELECT current_setting('search_path')"),
    )
    .await
    .unwrap();
    assert_eq!(got.as_deref(), Some("rv_schema, public"));
}

fn execute_max(portal: &str, max: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(portal.as_bytes());
    body.push(0);
    body.extend_from_slice(&max.to_be_bytes());
    raw::message(b'E', &body)
}

#[tokio::test]
async fn parsing_the_same_text_again_leaves_open_portals_alone() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let sql = format!("{ON_PRIMARY} SELECT generate_series(1, 10)");
    a.write_all(&raw::query("BEGIN")).await.unwrap();
    let begin = raw::read_until_ready(&mut a).await;
    assert_eq!(raw::tags(&begin), "C Z(T)", "BEGIN");
    a.write_all(
        &[
            raw::parse("s1", &sql),
            raw::bind("p", "s1", &[]),
            execute_max("p", 2),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let fetch = raw::read_until_ready(&mut a).await;
    assert_eq!(
        raw::tags(&fetch),
        "1 2 D D s Z(T)",
        "the first two rows of portal p"
    );
    a.write_all(
        &[
            raw::parse("s2", &sql),
            raw::describe(b'S', "s2"),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let parse = raw::read_until_ready(&mut a).await;
    assert_eq!(
        raw::tags(&parse),
        "1 t T Z(T)",
        "Parse and Describe of s2, the same text"
    );
    a.write_all(&[execute_max("p", 2), raw::sync()].concat())
        .await
        .unwrap();
    let r = raw::read_until_ready(&mut a).await;
    assert!(
        !r.iter().any(|(t, _)| *t == b'E'),
        "portal p destroyed by another statement's Parse: {}",
        raw::tags(&r)
    );
    assert_eq!(raw::tags(&r), "D D s Z(T)", "the next two rows of portal p");
}

async fn login_params(addr: std::net::SocketAddr, tz: &str) -> (TcpStream, Vec<(String, String)>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw::startup(&[
        ("user", "trustuser"),
        ("database", "app"),
        ("TimeZone", tz),
    ]))
    .await
    .unwrap();
    let mut params = Vec::new();
    loop {
        match raw::read_message(&mut s).await {
            Some((b'S', body)) => {
                let parts: Vec<String> = body
                    .split(|b| *b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                params.push((parts[0].clone(), parts[1].clone()));
            }
            Some((b'Z', _)) => break,
            Some((b'E', b)) => panic!("login error {}", raw::error_code(&b)),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    (s, params)
}

#[tokio::test]
async fn parameter_status_at_login_reports_current_values() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let (mut a, pa) = login_params(proxy.addr, "Asia/Tokyo").await;
    assert_eq!(
        pa.iter()
            .find(|(k, _)| k == "TimeZone")
            .map(|(_, v)| v.as_str()),
        Some("Asia/Tokyo"),
        "the TimeZone reported to A at login"
    );
    a.write_all(&raw::message(b'X', b"")).await.unwrap();
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (mut b, pb) = login_params(proxy.addr, "Asia/Tokyo").await;
    let tz = pb.iter().find(|(k, _)| k == "TimeZone").cloned();
    b.write_all(&raw::query("SHOW TimeZone")).await.unwrap();
    let r = raw::reply(&mut b).await;
    assert_eq!(tz.map(|t| t.1).as_deref(), Some("Asia/Tokyo"));
    assert_eq!(r.rows, one_row("Asia/Tokyo"), "SHOW TimeZone for B");
}

#[tokio::test]
async fn a_failed_batch_never_poisons_a_shared_statement() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let mut b = raw::login(proxy.addr, "trustuser").await;
    let t = format!("{ON_PRIMARY} SELECT 'shared text'");
    // B prepares and runs T: the primary connection now holds it.
    b.write_all(&[raw::parse("sb", &t), raw::sync()].concat())
        .await
        .unwrap();
    raw::reply(&mut b).await;
    b.write_all(&[raw::bind("", "sb", &[]), raw::execute(""), raw::sync()].concat())
        .await
        .unwrap();
    let r = raw::reply(&mut b).await;
    assert!(r.errors.is_empty(), "B's first run: {r:?}");
    assert_eq!(r.rows, one_row("shared text"), "B's first run");
    // A: a failing statement, then a Parse of the same text, in one batch.
    a.write_all(
        &[
            raw::parse("", &format!("{ON_PRIMARY} SELECT 1/0")),
            raw::bind("", "", &[]),
            raw::execute(""),
            raw::parse("sa", &t),
            raw::describe(b'S', "sa"),
            raw::sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = raw::reply(&mut a).await;
    assert!(
        r.errors == ["22012"] && r.rows.is_empty(),
        "A's failing batch: {r:?}"
    );
    for i in 0..3 {
        b.write_all(&[raw::bind("", "sb", &[]), raw::execute(""), raw::sync()].concat())
            .await
            .unwrap();
        let r = raw::reply(&mut b).await;
        assert!(
            r.errors.is_empty() && r.rows == [[Some("shared text".to_string())]],
            "B's run {i} after A's failed batch: {r:?}"
        );
    }
}

#[tokio::test]
async fn lastval_after_a_serial_insert_is_refused_rather_than_reading_anothers() {
    let _shared = common::turns::shared().await;
    su_app("DROP TABLE IF EXISTS rv_orders; CREATE TABLE rv_orders (id serial PRIMARY KEY, who text); GRANT ALL ON rv_orders TO app; GRANT ALL ON SEQUENCE rv_orders_id_seq TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("INSERT INTO rv_orders (who) VALUES ('A')")
        .await
        .unwrap();
    b.batch_execute("INSERT INTO rv_orders (who) VALUES ('B')")
        .await
        .unwrap();
    for sql in ["SELECT lastval()", "SELECT currval('rv_orders_id_seq')"] {
        let refused = first(&a, sql).await.err().map(|e| common::sqlstate(&e));
        assert_eq!(
            refused.as_deref(),
            Some("0A000"),
            "{sql} outside the INSERT's transaction"
        );
    }
    // In the INSERT's own transaction (or request) it is exact.
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("INSERT INTO rv_orders (who) VALUES ('A')")
        .await
        .unwrap();
    let a_last = first(&a, "SELECT lastval()").await.unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let owner = first(
        &a,
        &format!(
            "{ON_PRIMARY} SELECT who FROM rv_orders WHERE id = {}",
            a_last.clone().unwrap()
        ),
    )
    .await
    .unwrap();
    assert_eq!(owner.as_deref(), Some("A"));
    let same_request = a
        .simple_query("INSERT INTO rv_orders (who) VALUES ('A'); SELECT lastval()")
        .await;
    assert!(same_request.is_ok(), "{same_request:?}");
}

#[tokio::test]
async fn a_rollback_to_savepoint_never_leaves_settings_for_others() {
    let _shared = common::turns::shared().await;
    su_app("CREATE SCHEMA IF NOT EXISTS rv_schema; GRANT ALL ON SCHEMA rv_schema TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let a = proxy.connect().await;
    for q in [
        "BEGIN",
        "SET search_path = rv_schema, public",
        "SAVEPOINT s",
        "SET search_path = rv_schema, public",
        "ROLLBACK TO SAVEPOINT s",
        "ROLLBACK",
    ] {
        let _ = a.simple_query(q).await;
    }
    // A now: default. Use SAVEPOINT variant:
    for q in [
        "BEGIN",
        "SAVEPOINT s",
        "SET search_path = rv_schema, public",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    ] {
        a.simple_query(q).await.unwrap();
    }
    let own = first(
        &a,
        &format!("{ON_PRIMARY} SELECT current_setting('search_path')"),
    )
    .await
    .unwrap();
    // PostgreSQL would show its default: pgsplit re-applies the session's settings after
    // ROLLBACK TO SAVEPOINT from its own record (README, limits of transaction mode).
    assert_eq!(
        own.as_deref(),
        Some("rv_schema, public"),
        "A's search_path after the SET was rolled back to the savepoint"
    );
    let conninfo = format!(
        "{} options='-c search_path=rv_schema,\\\\ public'",
        proxy.conninfo("app", APP_PASSWORD, "app")
    );
    let (cc, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let got = first(
        &cc,
        &format!("{ON_PRIMARY} SELECT current_setting('search_path')"),
    )
    .await
    .unwrap();
    assert_eq!(got.as_deref(), Some("rv_schema, public"));
}

#[tokio::test]
async fn session_authorization_is_replayed_before_role() {
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
    s.batch_execute("SET SESSION AUTHORIZATION app")
        .await
        .unwrap();
    s.batch_execute("SET ROLE rv_role").await.unwrap();
    let here = first(&s, &format!("{ON_PRIMARY} SELECT current_user"))
        .await
        .unwrap();
    // a read on a standby connection gets the settings replayed
    assert_eq!(here.as_deref(), Some("rv_role"));
    for _ in 0..4 {
        let seen = first(&s, "SELECT current_user").await.unwrap();
        assert_eq!(
            seen.as_deref(),
            Some("rv_role"),
            "a read replayed the identity in the wrong order"
        );
    }
}
