//! What the drivers' own test suites found differing through pgsplit (issue 14), each as
//! the smallest client that shows it: a client must get through pgsplit exactly what it
//! gets from PostgreSQL, or a clear error, never a different value. Most run with
//! `max_pool_size = 1`, so clients share one server connection per node.
use crate::common;

use std::time::Duration;

use common::cluster;
use common::pool::{pooled_proxy, su_app, ON_PRIMARY};
use common::raw::{self, bind, describe, execute, flush, parse, query, read_message, sync, tags};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The ParameterStatus values a fresh login is told, by name.
async fn login_parameters(addr: std::net::SocketAddr) -> (TcpStream, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&raw::startup(&[("user", "trustuser"), ("database", "app")]))
        .await
        .expect("send startup");
    let mut params = Vec::new();
    loop {
        match read_message(&mut stream).await {
            Some((b'S', body)) => {
                let mut parts = body.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p));
                if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                    params.push((k.into_owned(), v.into_owned()));
                }
            }
            Some((b'Z', _)) => return (stream, params),
            Some((b'E', body)) => panic!("login failed: {}", raw::error_code(&body)),
            Some(_) => {}
            None => panic!("closed during login"),
        }
    }
}

fn parameter<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Sends messages and reads every reply up to ReadyForQuery.
async fn exchange(s: &mut TcpStream, messages: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&messages.concat()).await.expect("send");
    raw::read_until_ready(s).await
}

/// Binds and executes the prepared statement `name`, with a Sync.
async fn run_prepared(s: &mut TcpStream, name: &str) -> raw::Reply {
    raw::reply_of(s, &[bind("", name, &[]), execute(""), sync()].concat()).await
}

/// Prepares and describes `sql` as `name` with a Flush and no Sync, as asyncpg does: the
/// answers (no ReadyForQuery comes).
async fn described_with_flush(s: &mut TcpStream, name: &str, sql: &str) -> String {
    s.write_all(&[parse(name, sql), describe(b'S', name), flush()].concat())
        .await
        .expect("send");
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), read_message(s)).await {
            Ok(Some(m)) => got.push(m),
            other => panic!("no answer to the Flush after {}: {other:?}", tags(&got)),
        }
    }
    tags(&got)
}

/// The message field `field` (`b'M'` for the message) of an ErrorResponse body.
fn error_field(body: &[u8], field: u8) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| (f.first() == Some(&field)).then(|| &f[1..]))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn settings_left_in_an_abandoned_transaction_never_reach_the_next_client() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let (_, fresh) = login_parameters(proxy.addr).await;
    let expected_encoding = parameter(&fresh, "client_encoding").map(str::to_owned);
    let expected_datestyle = parameter(&fresh, "DateStyle").map(str::to_owned);
    assert!(expected_encoding.is_some() && expected_datestyle.is_some());

    let mut a = raw::login(proxy.addr, "trustuser").await;
    let got = exchange(
        &mut a,
        &[query(&format!(
            "BEGIN; {ON_PRIMARY} SET client_encoding TO 'EUC_TW'; SET DateStyle TO 'German'"
        ))],
    )
    .await;
    assert_eq!(
        tags(&got).matches('E').count(),
        0,
        "A's SETs: {}",
        tags(&got)
    );
    drop(a);

    let (mut b, told) = login_parameters(proxy.addr).await;
    assert_eq!(
        parameter(&told, "client_encoding").map(str::to_owned),
        expected_encoding,
        "a new client was told another client's abandoned client_encoding"
    );
    assert_eq!(
        parameter(&told, "DateStyle").map(str::to_owned),
        expected_datestyle,
        "a new client was told another client's abandoned DateStyle"
    );
    let shown = raw::reply_of(&mut b, &query("SHOW client_encoding")).await;
    assert_eq!(
        shown.rows,
        vec![vec![expected_encoding.clone()]],
        "the server does not run what the client was told"
    );
}

#[tokio::test]
async fn a_query_after_an_unsynced_batch_runs_after_it_as_pgjdbc_autosave_sends_it() {
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    // pgjdbc autosave=always: BEGIN over the extended protocol without a Sync, then a
    // simple-protocol SAVEPOINT, then the statement and its Sync.
    s.write_all(
        &[
            parse("", "BEGIN"),
            bind("", "", &[]),
            execute(""),
            query("SAVEPOINT PGJDBC_AUTOSAVE"),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let first = raw::read_until_ready(&mut s).await;
    assert_eq!(tags(&first), "1 2 C C Z(T)", "BEGIN then SAVEPOINT");
    let second = exchange(
        &mut s,
        &[
            parse("", "SELECT 1"),
            bind("", "", &[]),
            describe(b'P', ""),
            execute(""),
            sync(),
        ],
    )
    .await;
    assert_eq!(
        tags(&second),
        "1 2 T D C Z(T)",
        "the statement in the transaction"
    );
    let end = exchange(&mut s, &[query("COMMIT")]).await;
    assert_eq!(tags(&end), "C Z(I)");
}

#[tokio::test]
async fn an_error_in_an_unsynced_pipeline_arrives_without_waiting_for_sync() {
    su_app("CREATE TABLE IF NOT EXISTS dt_uniq (id int PRIMARY KEY); GRANT ALL ON dt_uniq TO app; TRUNCATE dt_uniq");
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    // libpq pipeline mode inside BEGIN: inserts hitting a duplicate key, then COMMIT,
    // with neither Sync nor Flush. PostgreSQL sends the error at once.
    s.write_all(
        &[
            parse("", "BEGIN"),
            bind("", "", &[]),
            execute(""),
            parse("ins", "INSERT INTO dt_uniq VALUES ($1)"),
            bind("", "ins", &["1"]),
            execute(""),
            bind("", "ins", &["1"]),
            execute(""),
            parse("", "COMMIT"),
            bind("", "", &[]),
            execute(""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), raw::next_error(&mut s)).await;
    assert_eq!(
        error,
        Ok(Some("23505".to_owned())),
        "the duplicate key error was withheld until a Sync"
    );
    let rest = exchange(&mut s, &[sync()]).await;
    assert_eq!(tags(&rest), "Z(E)", "after the error, the Sync");
    let end = exchange(&mut s, &[query("ROLLBACK")]).await;
    assert_eq!(tags(&end), "C Z(I)");
}

#[tokio::test]
async fn a_setting_made_with_bound_parameters_survives_a_later_rollback() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let client = proxy.connect().await;
    client
        .query(
            "SELECT set_config($1, $2, false)",
            &[&"default_transaction_isolation", &"serializable"],
        )
        .await
        .unwrap();
    client
        .batch_execute("BEGIN ISOLATION LEVEL READ UNCOMMITTED")
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let row = client
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "serializable");
    client.batch_execute("COMMIT").await.unwrap();

    // A rollback to a savepoint leaves settings pgsplit cannot know; the untracked one
    // made before is still not reset.
    client
        .batch_execute("BEGIN; SAVEPOINT a; SET LOCAL work_mem = '8MB'; ROLLBACK TO a; COMMIT")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    let row = client
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "serializable", "after ROLLBACK TO");
    client.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn a_notification_carries_the_pid_pgsplit_gave_the_notifying_client() {
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let (mut s, (pid, _)) = raw::login_with_key(proxy.addr, "trustuser").await;
    s.write_all(&query("LISTEN dt_channel; NOTIFY dt_channel, 'hello'"))
        .await
        .unwrap();
    let got = raw::read_until_ready(&mut s).await;
    let notification = got
        .iter()
        .find(|(t, _)| *t == b'A')
        .unwrap_or_else(|| panic!("no notification in {}", tags(&got)));
    let sender = i32::from_be_bytes(notification.1[..4].try_into().unwrap());
    assert_eq!(
        sender, pid,
        "the notification names the server's pid, not the client's"
    );

    // Another client's notification names that client.
    let (mut other, (other_pid, _)) = raw::login_with_key(proxy.addr, "trustuser").await;
    let sent = exchange(&mut other, &[query("NOTIFY dt_channel, 'from the other'")]).await;
    assert_eq!(tags(&sent), "C Z(I)");
    // It arrives while A waits for the answer to a query, or just after.
    let mut got = exchange(&mut s, &[query("SELECT 1")]).await;
    if !got.iter().any(|(t, _)| *t == b'A') {
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_secs(10), read_message(&mut s)).await
        {
            got.push(m);
        }
    }
    let notification = got
        .iter()
        .find(|(t, _)| *t == b'A')
        .unwrap_or_else(|| panic!("no notification in {}", tags(&got)));
    let sender = i32::from_be_bytes(notification.1[..4].try_into().unwrap());
    assert_eq!(sender, other_pid, "the other client's notification");
}

#[tokio::test]
async fn terminating_ones_own_backend_gives_postgresqls_error_and_nothing_misleading() {
    let proxy = pooled_proxy("max_pool_size = 2").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    s.write_all(&query("SELECT pg_terminate_backend(pg_backend_pid())"))
        .await
        .unwrap();
    let mut errors = Vec::new();
    while let Ok(Some((tag, body))) =
        tokio::time::timeout(Duration::from_secs(10), read_message(&mut s)).await
    {
        if tag == b'E' {
            errors.push(raw::error_code(&body));
        }
    }
    assert_eq!(errors, vec!["57P01".to_owned()], "errors the client got");
}

#[tokio::test]
async fn deallocate_all_in_a_transaction_keeps_statements_prepared_after_it() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    for sql in ["BEGIN", "SELECT 1", "DEALLOCATE ALL"] {
        let got = exchange(&mut s, &[query(sql)]).await;
        assert!(!tags(&got).contains('E'), "{sql}: {}", tags(&got));
    }
    let prepared = exchange(&mut s, &[parse("after", "SELECT 42"), sync()]).await;
    assert_eq!(tags(&prepared), "1 Z(T)");
    assert_eq!(tags(&exchange(&mut s, &[query("COMMIT")]).await), "C Z(I)");
    let used = run_prepared(&mut s, "after").await;
    assert_eq!(
        used.errors,
        Vec::<String>::new(),
        "the statement prepared after DEALLOCATE ALL"
    );
    assert_eq!(used.rows, vec![vec![Some("42".to_owned())]]);
}

#[tokio::test]
async fn deallocate_all_is_not_undone_by_rollback() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    let prepared = exchange(&mut s, &[parse("before", "SELECT 42"), sync()]).await;
    assert_eq!(tags(&prepared), "1 Z(I)");
    for sql in ["BEGIN", "DEALLOCATE ALL", "ROLLBACK"] {
        let got = exchange(&mut s, &[query(sql)]).await;
        assert!(!tags(&got).contains('E'), "{sql}: {}", tags(&got));
    }
    let used = run_prepared(&mut s, "before").await;
    assert_eq!(
        used.errors,
        vec!["26000".to_owned()],
        "PostgreSQL does not undo DEALLOCATE"
    );
}

#[tokio::test]
async fn an_unknown_statement_is_named_as_the_client_named_it() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    let got = exchange(
        &mut s,
        &[bind("", "never_prepared", &[]), execute(""), sync()],
    )
    .await;
    let (_, error) = got
        .iter()
        .find(|(t, _)| *t == b'E')
        .unwrap_or_else(|| panic!("no error in {}", tags(&got)));
    assert_eq!(raw::error_code(error), "26000");
    assert_eq!(
        error_field(error, b'M'),
        "prepared statement \"never_prepared\" does not exist"
    );
}

/// Runs `sql` on the primary as a superuser, then waits until every standby replayed it.
async fn su_app_replayed(sql: &'static str) {
    tokio::task::spawn_blocking(move || {
        su_app(sql);
        for i in 1..cluster().nodes().len() {
            cluster().wait_for_replay(i).expect("standby replays");
        }
    })
    .await
    .expect("setup task");
}

#[tokio::test]
async fn a_statement_prepared_after_a_schema_change_runs_on_a_standby_that_held_it_from_before() {
    su_app_replayed(
        "DROP TABLE IF EXISTS dt_stale; CREATE TABLE dt_stale (a int); \
         INSERT INTO dt_stale VALUES (1); GRANT ALL ON dt_stale TO app",
    )
    .await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let sql = "SELECT a, inet_server_port()::text AS port FROM dt_stale";
    // Earlier clients prepare and run the text on every standby: their one pooled
    // connection holds it, described with `a` an int.
    let standbys: std::collections::HashSet<String> = cluster().nodes()[1..]
        .iter()
        .map(|n| n.port.to_string())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        if seen == standbys {
            break;
        }
        let mut earlier = raw::login(proxy.addr, "trustuser").await;
        let ran = raw::reply_of(
            &mut earlier,
            &[
                parse("s", sql),
                describe(b'S', "s"),
                bind("", "s", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        let port = ran.rows.first().and_then(|r| r.get(1).cloned().flatten());
        seen.extend(port);
    }
    assert_eq!(seen, standbys, "the text was not run on every standby");
    su_app_replayed("ALTER TABLE dt_stale ALTER COLUMN a TYPE text USING a::text || 'x'").await;
    // A client prepares the same text after the change on the primary (a SERIALIZABLE
    // transaction runs there) and is told `a` is text, then runs it on a standby.
    // Directly its statement is new and runs; the standby connection's older one must not
    // turn that into a changed-result-type error.
    let mut b = raw::login(proxy.addr, "trustuser").await;
    let begun = exchange(&mut b, &[query("BEGIN ISOLATION LEVEL SERIALIZABLE")]).await;
    assert_eq!(tags(&begun), "C Z(T)");
    let described = exchange(&mut b, &[parse("s", sql), describe(b'S', "s"), sync()]).await;
    assert_eq!(tags(&described), "1 t T Z(T)");
    assert_eq!(tags(&exchange(&mut b, &[query("COMMIT")]).await), "C Z(I)");
    let ran = run_prepared(&mut b, "s").await;
    assert_eq!(
        (ran.errors, ran.rows.len()),
        (vec![], 1),
        "a fresh statement fails as if it were the earlier clients' statement"
    );
    assert_eq!(ran.rows[0][0].as_deref(), Some("1x"));
}

#[tokio::test]
async fn a_statement_whose_result_type_changed_is_refused_never_read_in_the_old_shape() {
    su_app(
        "DROP TABLE IF EXISTS dt_shape; CREATE TABLE dt_shape (a int, b int4); \
         INSERT INTO dt_shape VALUES (1, 2); GRANT ALL ON dt_shape TO app",
    );
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    // asyncpg: prepare and describe once, then Bind/Execute trusting that description.
    let described = exchange(
        &mut a,
        &[
            parse("shape", &format!("{ON_PRIMARY} SELECT * FROM dt_shape")),
            describe(b'S', "shape"),
            sync(),
        ],
    )
    .await;
    assert_eq!(tags(&described), "1 t T Z(I)");
    su_app("ALTER TABLE dt_shape ALTER COLUMN b TYPE float4");
    // Another client's DEALLOCATE ALL drops the statement from the shared connection, so
    // pgsplit prepares it again there, now with a float4 column.
    let mut b = raw::login(proxy.addr, "trustuser").await;
    assert_eq!(
        tags(&exchange(&mut b, &[query("DEALLOCATE ALL")]).await),
        "C Z(I)"
    );
    let again = exchange(&mut a, &[bind("", "shape", &[]), execute(""), sync()]).await;
    assert_eq!(
        tags(&again),
        "E(0A000) Z(I)",
        "rows in a shape the client was not told of"
    );
    // PostgreSQL's own error, down to the routine drivers key on (asyncpg raises
    // InvalidCachedStatementError for it, pgjdbc resets its statement cache), and no
    // context from the PL/pgSQL block pgsplit ran to fail the server-side transaction.
    let error = &again[0].1;
    let field = |f| error_field(error, f);
    assert_eq!(
        [
            field(b'C'),
            field(b'M'),
            field(b'R'),
            field(b'F'),
            field(b'W')
        ],
        [
            "0A000",
            "cached plan must not change result type",
            "RevalidateCachedQuery",
            "plancache.c",
            ""
        ]
    );
    // As directly, the driver prepares it again and gets the new shape.
    let fresh = raw::reply_of(
        &mut a,
        &[
            parse("shape2", &format!("{ON_PRIMARY} SELECT * FROM dt_shape")),
            bind("", "shape2", &[]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        fresh.rows,
        vec![vec![Some("1".to_owned()), Some("2".to_owned())]]
    );
}

#[tokio::test]
async fn a_copy_sent_whole_before_copy_in_response_reports_its_error_and_a_flush_after_it_is_answered(
) {
    su_app("CREATE TABLE IF NOT EXISTS dt_copy2 (id int PRIMARY KEY); GRANT ALL ON dt_copy2 TO app; TRUNCATE dt_copy2; INSERT INTO dt_copy2 VALUES (1)");
    let proxy = common::TestProxy::start_with("", &common::pool::trust_user()).await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    // asyncpg's copy_records_to_table: the table's columns described with a Flush, then
    // the COPY as a simple query.
    assert_eq!(
        described_with_flush(&mut s, "intro", "SELECT * FROM dt_copy2 LIMIT 1").await,
        "1 t T"
    );
    // In binary, as asyncpg sends it.
    let binary = |ids: &[i32]| {
        let mut data = b"PGCOPY\n\xff\r\n\0".to_vec();
        data.extend_from_slice(&[0; 8]);
        for id in ids {
            data.extend_from_slice(&1i16.to_be_bytes());
            data.extend_from_slice(&4i32.to_be_bytes());
            data.extend_from_slice(&id.to_be_bytes());
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        data
    };
    for (rows, answer) in [(vec![2, 3], "G C Z(I)"), (vec![1], "G E(23505) Z(I)")] {
        // asyncpg sends the data without waiting for CopyInResponse.
        s.write_all(
            &[
                query("COPY dt_copy2 FROM STDIN (FORMAT binary)"),
                raw::message(b'd', &binary(&rows)),
                raw::message(b'c', &[]),
            ]
            .concat(),
        )
        .await
        .unwrap();
        assert_eq!(
            tags(&raw::read_until_ready(&mut s).await),
            answer,
            "COPY of {rows:?}"
        );
    }
    // asyncpg's next query: Parse and Describe with a Flush, no Sync.
    assert_eq!(
        described_with_flush(&mut s, "next", "SELECT count(*) FROM dt_copy2").await,
        "1 t T"
    );
    let after = run_prepared(&mut s, "next").await;
    assert_eq!(after.rows, vec![vec![Some("3".to_owned())]]);
}

#[tokio::test]
async fn a_client_that_terminates_before_its_startup_packet_is_closed_without_a_word() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    // node-postgres, closed while still connecting, sends Terminate first.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&raw::message(b'X', &[])).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), read_message(&mut s)).await;
    assert_eq!(
        got.map(|m| m.map(|(t, _)| t as char)),
        Ok(None),
        "PostgreSQL closes without a message"
    );
    proxy.still_serves().await;
}

#[tokio::test]
async fn sql_execute_runs_a_statement_prepared_at_protocol_level() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    let prepared = exchange(
        &mut s,
        &[
            parse("foobar", "SELECT $1::int + 1"),
            parse("Mixed", "SELECT 'mixed'::text"),
            sync(),
        ],
    )
    .await;
    assert_eq!(tags(&prepared), "1 1 Z(I)");
    let run = raw::reply_of(&mut s, &query("EXECUTE foobar(41)")).await;
    assert_eq!(
        (run.errors, run.rows),
        (vec![], vec![vec![Some("42".to_owned())]])
    );
    let quoted = raw::reply_of(&mut s, &query("/* why */ EXECUTE \"Mixed\"")).await;
    assert_eq!(
        (quoted.errors, quoted.rows),
        (vec![], vec![vec![Some("mixed".to_owned())]])
    );
    // Unquoted names fold to lower case, as PostgreSQL looks them up.
    let folded = raw::reply_of(&mut s, &query("EXECUTE Mixed")).await;
    assert_eq!(folded.errors, vec!["26000".to_owned()]);
}

#[tokio::test]
async fn a_name_in_use_is_refused_as_postgresql_refuses_it_and_execute_works_over_the_extended_protocol(
) {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    // asyncpg's test_prepare_explicitly_named: prepare "foobar", run it by SQL EXECUTE
    // over the extended protocol, then prepare the name again.
    let prepared = exchange(
        &mut s,
        &[
            parse("foobar", "SELECT 1"),
            describe(b'S', "foobar"),
            sync(),
        ],
    )
    .await;
    assert_eq!(tags(&prepared), "1 t T Z(I)");
    let run = raw::reply_of(
        &mut s,
        &[
            parse("", "EXECUTE foobar"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        (run.errors, run.rows),
        (vec![], vec![vec![Some("1".to_owned())]])
    );
    let again = exchange(&mut s, &[parse("foobar", "SELECT 2"), sync()]).await;
    let (_, error) = again
        .iter()
        .find(|(t, _)| *t == b'E')
        .unwrap_or_else(|| panic!("no error in {}", tags(&again)));
    assert_eq!(raw::error_code(error), "42P05");
    assert_eq!(
        error_field(error, b'M'),
        "prepared statement \"foobar\" already exists"
    );
    // The statement the name holds is still the first one.
    let kept = run_prepared(&mut s, "foobar").await;
    assert_eq!(kept.rows, vec![vec![Some("1".to_owned())]]);
}

#[tokio::test]
async fn messages_after_an_error_in_a_chain_have_no_effect_as_the_server_skips_them() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    // A pipeline: a failing statement, a pause (its messages go out), then a SET and Sync.
    s.write_all(&[parse("", "SELECT 1/0"), bind("", "", &[]), execute("")].concat())
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), raw::next_error(&mut s)).await;
    assert_eq!(error, Ok(Some("22012".to_owned())));
    let rest = exchange(
        &mut s,
        &[
            parse("", "SET application_name = 'skipped'"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ],
    )
    .await;
    assert_eq!(tags(&rest), "Z(I)", "the server skipped the SET");
    for _ in 0..4 {
        let shown = raw::reply_of(&mut s, &query("SHOW application_name")).await;
        assert_ne!(
            shown.rows,
            vec![vec![Some("skipped".to_owned())]],
            "pgsplit applied a SET the server skipped"
        );
    }
    // A Query after the error is skipped too, and the Sync still answered.
    s.write_all(&[parse("", "SELEC 1"), query("SELECT 1"), sync()].concat())
        .await
        .unwrap();
    let got = raw::read_until_ready(&mut s).await;
    assert_eq!(tags(&got), "E(42601) Z(I)");
    proxy.still_serves().await;
}

#[tokio::test]
async fn sql_execute_in_a_failed_transaction_gets_postgresqls_error_and_no_hang() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    assert_eq!(
        tags(&exchange(&mut s, &[parse("p1", "SELECT 1"), sync()]).await),
        "1 Z(I)"
    );
    for (sql, want) in [
        ("BEGIN", "C Z(T)"),
        ("SELECT 1/0", "E(22012) Z(E)"),
        ("EXECUTE p1", "E(25P02) Z(E)"),
        ("ROLLBACK", "C Z(I)"),
        ("EXECUTE p1", "T D C Z(I)"),
    ] {
        let got = exchange(&mut s, &[query(sql)]).await;
        assert_eq!(tags(&got), want, "{sql}");
    }
}

#[tokio::test]
async fn describing_the_unnamed_statement_does_not_confuse_the_shape_of_a_named_one() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let described = exchange(
        &mut a,
        &[
            parse("", &format!("{ON_PRIMARY} SELECT 1::int")),
            describe(b'S', ""),
            parse("s1", &format!("{ON_PRIMARY} SELECT 'x'::text")),
            describe(b'S', "s1"),
            sync(),
        ],
    )
    .await;
    assert_eq!(tags(&described), "1 t T 1 t T Z(I)");
    // Prepared again on the shared connection, the statement is described there again.
    let mut b = raw::login(proxy.addr, "trustuser").await;
    assert_eq!(
        tags(&exchange(&mut b, &[query("DEALLOCATE ALL")]).await),
        "C Z(I)"
    );
    let used = run_prepared(&mut a, "s1").await;
    assert_eq!(
        (used.errors, used.rows),
        (vec![], vec![vec![Some("x".to_owned())]])
    );
}

#[tokio::test]
async fn extended_protocol_messages_during_copy_fail_the_copy_instead_of_waiting_for_it() {
    su_app("CREATE TABLE IF NOT EXISTS dt_copy3 (id int); GRANT ALL ON dt_copy3 TO app");
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    s.write_all(&query("COPY dt_copy3 FROM STDIN"))
        .await
        .unwrap();
    assert_eq!(read_message(&mut s).await.map(|m| m.0), Some(b'G'));
    s.write_all(
        &[
            parse("", "SELECT 1"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), raw::next_error(&mut s)).await;
    assert_eq!(
        error,
        Ok(Some("08P01".to_owned())),
        "PostgreSQL fails the COPY"
    );
    proxy.still_serves().await;
}
