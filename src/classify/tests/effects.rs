//! Statements with effects on the session or its transaction, cacheability, odd input.

use super::super::Route::{Any as A, Primary as P, Standby as S};
use super::super::{classify, Effect, Pin};
use super::*;
use Effect::{EndTransaction as End, FunctionsChanged as Changed};

/// Statements with session or transaction effects.
#[test]
fn session_effects() {
    let cases =
        vec![
        // Pins and their release.
        ("LISTEN ch", P, vec![PIN_LISTEN]),
        ("UNLISTEN *", P, vec![Effect::Unpin(Pin::Listen)]),
        ("SELECT pg_advisory_lock(1)", P, vec![PIN_LOCK]),
        ("SELECT pg_advisory_lock_shared(1)", P, vec![PIN_LOCK]),
        ("SELECT pg_try_advisory_lock(1, 2)", P, vec![PIN_LOCK]),
        ("SELECT pg_try_advisory_lock_shared(1)", P, vec![PIN_LOCK]),
        (
            "SELECT pg_advisory_unlock_all()",
            P,
            vec![Effect::Unpin(Pin::AdvisoryLock)],
        ),
        ("SELECT coalesce(pg_advisory_lock(1), 'x')", P, vec![PIN_LOCK]),
        ("CALL p(pg_advisory_lock(1))", P, vec![PIN_LOCK]),
        ("EXPLAIN (ANALYZE) SELECT pg_advisory_lock(1)", P, vec![PIN_LOCK]),
        ("CREATE TEMP TABLE t (a int)", P, vec![PIN_TEMP]),
        ("CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP", P, vec![PIN_TEMP]),
        ("CREATE GLOBAL TEMPORARY TABLE t (a int)", P, vec![PIN_TEMP]),
        ("CREATE TEMP TABLE t2 AS SELECT 1", P, vec![PIN_TEMP]),
        ("CREATE TABLE pg_temp.t (a int)", P, vec![PIN_TEMP]),
        ("CREATE TEMP VIEW v AS SELECT 1", P, vec![PIN_TEMP]),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", P, vec![PIN_TEMP]),
        ("CREATE TEMP SEQUENCE s", P, vec![PIN_TEMP]),
        ("SELECT * INTO TEMP t2 FROM t", P, vec![PIN_TEMP]),
        ("SELECT * INTO TEMPORARY TABLE t2 FROM t", P, vec![PIN_TEMP]),
        ("SELECT * INTO pg_temp.t2 FROM t", P, vec![PIN_TEMP]),
        (
            "SELECT * INTO TEMP t2 FROM t FOR NO KEY UPDATE",
            P,
            vec![PIN_TEMP],
        ),
        ("DISCARD TEMP", A, vec![Effect::Unpin(Pin::TempObjects)]),
        ("DISCARD TEMPORARY", A, vec![Effect::Unpin(Pin::TempObjects)]),
        ("DISCARD ALL", A, vec![Effect::DiscardAll]),
        (
            "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t",
            P,
            vec![PIN_HOLD],
        ),
        (
            "DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM t FOR NO KEY UPDATE",
            P,
            vec![PIN_HOLD],
        ),
        ("CLOSE ALL", A, vec![Effect::Unpin(Pin::HoldCursor)]),
        ("LOAD 'auto_explain'", P, vec![PIN_UNKNOWN]),
        // DO blocks: what they may leave behind.
        (
            "DO $$ BEGIN PERFORM pg_advisory_lock(1); END $$",
            P,
            vec![PIN_LOCK],
        ),
        (
            "DO $$ BEGIN CREATE TEMP TABLE x (a int); END $$",
            P,
            vec![PIN_TEMP],
        ),
        (
            "DO $$ BEGIN SET search_path = x; END $$",
            P,
            vec![PIN_UNKNOWN],
        ),
        (
            "DO $$ BEGIN EXECUTE 'LISTEN ch'; END $$",
            P,
            vec![PIN_LISTEN],
        ),
        // The catalog changes.
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            P,
            vec![Changed],
        ),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            P,
            vec![Changed],
        ),
        (
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            P,
            vec![PIN_TEMP, Changed],
        ),
        (
            "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$",
            P,
            vec![Changed],
        ),
        ("ALTER FUNCTION f() STABLE", P, vec![Changed]),
        ("ALTER PROCEDURE p() SECURITY DEFINER", P, vec![Changed]),
        ("DROP FUNCTION f", P, vec![Changed]),
        ("DROP PROCEDURE p", P, vec![Changed]),
        ("DROP ROUTINE f", P, vec![Changed]),
        (
            "CREATE AGGREGATE a (int) (sfunc = f, stype = int)",
            P,
            vec![Changed],
        ),
        ("CREATE EXTENSION pgcrypto", P, vec![Changed]),
        ("DROP EXTENSION pgcrypto", P, vec![Changed]),
        ("DROP SCHEMA s CASCADE", P, vec![Changed]),
        ("DROP OWNED BY a", P, vec![Changed]),
    ];
    check(&cases, &catalog());
}

/// ROUTING.md, "Transactions", and PostgreSQL's refusals on a hot standby.
#[test]
fn transactions() {
    let cases = vec![
        ("BEGIN", A, vec![begin(None, false)]),
        ("BEGIN WORK", A, vec![begin(None, false)]),
        ("BEGIN TRANSACTION", A, vec![begin(None, false)]),
        ("START TRANSACTION", A, vec![begin(None, false)]),
        ("begin;", A, vec![begin(None, false)]),
        ("BEGIN READ ONLY", A, vec![begin(Some(true), false)]),
        (
            "START TRANSACTION READ ONLY",
            A,
            vec![begin(Some(true), false)],
        ),
        (
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            A,
            vec![begin(Some(true), false)],
        ),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            A,
            vec![begin(Some(true), false)],
        ),
        ("BEGIN READ WRITE", P, vec![begin(Some(false), false)]),
        (
            "START TRANSACTION READ WRITE",
            P,
            vec![begin(Some(false), false)],
        ),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            P,
            vec![begin(None, true)],
        ),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
            P,
            vec![begin(Some(true), true)],
        ),
        // sqlparser rejects DEFERRABLE: the keywords still tell.
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            P,
            vec![begin(Some(true), true)],
        ),
        (
            "BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            P,
            vec![begin(Some(true), true)],
        ),
        (
            "START TRANSACTION READ ONLY, DEFERRABLE",
            A,
            vec![begin(Some(true), false)],
        ),
        ("BEGIN NOT DEFERRABLE", A, vec![begin(None, false)]),
        ("COMMIT", A, vec![End]),
        ("COMMIT WORK", A, vec![End]),
        ("COMMIT AND NO CHAIN", A, vec![End]),
        ("END", A, vec![End]),
        ("END TRANSACTION", A, vec![End]),
        ("ROLLBACK", A, vec![End]),
        ("ROLLBACK WORK", A, vec![End]),
        ("ABORT", A, vec![End]),
        ("PREPARE TRANSACTION 'tx1'", P, vec![End]),
        // SET TRANSACTION.
        (
            "SET TRANSACTION READ ONLY",
            A,
            vec![set_tx(Some(true), false)],
        ),
        (
            "SET TRANSACTION READ WRITE",
            P,
            vec![set_tx(Some(false), false)],
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            P,
            vec![set_tx(None, true)],
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            A,
            vec![set_tx(None, false)],
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            P,
            vec![set_tx(Some(true), true)],
        ),
        (
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            P,
            vec![set_tx(None, false)],
        ),
        (
            "SET transaction_read_only = off",
            P,
            vec![set_tx(Some(false), false)],
        ),
        (
            "SET transaction_read_only TO on",
            A,
            vec![set_tx(Some(true), false)],
        ),
        (
            "SET LOCAL transaction_read_only = false",
            P,
            vec![set_tx(Some(false), false)],
        ),
        (
            "SET transaction_isolation = 'serializable'",
            P,
            vec![set_tx(None, true)],
        ),
        // A transaction, all in one message.
        (
            "BEGIN; SELECT abalance FROM pgbench_accounts WHERE aid = 1; COMMIT",
            S,
            vec![begin(None, false), End],
        ),
        (
            "BEGIN READ ONLY; SELECT 1; COMMIT;",
            S,
            vec![begin(Some(true), false), End],
        ),
        (
            "BEGIN; SELECT * FROM t FOR NO KEY UPDATE; COMMIT",
            P,
            vec![begin(None, false), End],
        ),
        (
            "COMMIT; BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            P,
            vec![End, begin(Some(true), true)],
        ),
        (
            "BEGIN; UPDATE t SET a = 1; SELECT * FROM t; END;",
            P,
            vec![begin(None, false), End],
        ),
    ];
    check(&cases, &catalog());
}

/// SET, RESET and set_config: what the session replays.
#[test]
fn settings() {
    let cases = vec![
        ("SET work_mem = '64MB'", A, vec![set("work_mem", "'64MB'")]),
        ("SET Work_Mem TO 64", A, vec![set("work_mem", "64")]),
        ("SET search_path = a, \"B\"", A, vec![set("search_path", "a, \"B\"")]),
        ("SET search_path TO \"$user\", public", A, vec![set("search_path", "\"$user\", public")]),
        ("SET SESSION statement_timeout = 5000", A, vec![set("statement_timeout", "5000")]),
        ("SET statement_timeout = -1", A, vec![set("statement_timeout", "-1")]),
        ("SET x.y = 'z'", A, vec![set("x.y", "'z'")]),
        ("SET application_name = E'a\\'b'", A, vec![set("application_name", "'a''b'")]),
        ("SET application_name = 'a\\b'", A, vec![set("application_name", "E'a\\\\b'")]),
        ("SET DateStyle TO 'ISO, MDY'", A, vec![set("datestyle", "'ISO, MDY'")]),
        ("SET enable_seqscan = off", A, vec![set("enable_seqscan", "off")]),
        ("SET jit = false", A, vec![set("jit", "false")]),
        ("SET default_transaction_read_only = on", A, vec![set("default_transaction_read_only", "on")]),
        (
            "SET default_transaction_isolation = 'serializable'",
            A,
            vec![set("default_transaction_isolation", "'serializable'")],
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            A,
            vec![set("default_transaction_read_only", "on")],
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            A,
            vec![set("default_transaction_isolation", "'serializable'")],
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            A,
            vec![
                set("default_transaction_read_only", "on"),
                set("default_transaction_isolation", "'serializable'"),
            ],
        ),
        ("SET TIME ZONE 'UTC'", A, vec![set("timezone", "'UTC'")]),
        ("SET TIME ZONE LOCAL", A, vec![reset("timezone")]),
        ("SET work_mem TO DEFAULT", A, vec![reset("work_mem")]),
        ("SET NAMES 'UTF8'", A, vec![set("client_encoding", "'UTF8'")]),
        ("SET ROLE Admin", A, vec![set("role", "'admin'")]),
        ("SET ROLE NONE", A, vec![set("role", "'none'")]),
        ("SET SESSION AUTHORIZATION bob", A, vec![set("session_authorization", "'bob'")]),
        ("SET SESSION AUTHORIZATION DEFAULT", A, vec![reset("session_authorization")]),
        ("SET SCHEMA 'app'", A, vec![set("search_path", "'app'")]),
        ("SET XML OPTION DOCUMENT", A, vec![set("xmloption", "document")]),
        ("RESET work_mem", A, vec![reset("work_mem")]),
        ("RESET \"Work_Mem\"", A, vec![reset("work_mem")]),
        ("RESET ALL", A, vec![Effect::ResetAll]),
        ("RESET ROLE", A, vec![reset("role")]),
        ("RESET SESSION AUTHORIZATION", A, vec![reset("session_authorization")]),
        ("RESET TIME ZONE", A, vec![reset("timezone")]),
        // What cannot be replayed exactly keeps the session on the primary.
        ("SET search_path FROM CURRENT", P, vec![PIN_UNKNOWN]),
        ("SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", P, vec![PIN_UNKNOWN]),
        ("SET x = f(1)", P, vec![PIN_UNKNOWN]),
        ("SET \"a;b\" = 1", P, vec![PIN_UNKNOWN]),
        // set_config with literal arguments.
        (
            "SELECT set_config('search_path', 'a, \"B\"', false)",
            A,
            vec![set("search_path", "\"a\", \"B\"")],
        ),
        ("SELECT set_config('app.user_id', '42', false)", A, vec![set("app.user_id", "'42'")]),
        (
            "SELECT pg_catalog.set_config('statement_timeout', '5s', false) AS old",
            A,
            vec![set("statement_timeout", "'5s'")],
        ),
        ("SELECT set_config('x.y', 'v', 'off')", A, vec![set("x.y", "'v'")]),
        ("SELECT set_config('x.y', 'v'::text, NULL)", A, vec![set("x.y", "'v'")]),
        ("SELECT set_config('x.y', NULL, false)", A, vec![reset("x.y")]),
        // Not literal, or not sure to run once: the session cannot replay it.
        ("SELECT set_config('x.y', $1, false)", P, vec![PIN_UNKNOWN]),
        ("SELECT set_config('x.y', 'v', false) FROM t", P, vec![PIN_UNKNOWN]),
        ("SELECT set_config('x.y', 'v', false) LIMIT 0", P, vec![PIN_UNKNOWN]),
        (
            "SELECT CASE WHEN a THEN set_config('x.y', 'v', false) END FROM t",
            P,
            vec![PIN_UNKNOWN],
        ),
        ("SELECT set_config('x; DROP TABLE t', 'v', false)", P, vec![PIN_UNKNOWN]),
        ("SELECT set_config('search_path', 'a b', false)", P, vec![PIN_UNKNOWN]),
        (
            "SET work_mem = '1MB'; SELECT 1",
            S,
            vec![set("work_mem", "'1MB'")],
        ),
    ];
    check(&cases, &catalog());
}

/// SQL-level prepared statements carry their statement's route.
#[test]
fn prepared_statements() {
    let cases = vec![
        ("PREPARE p AS SELECT 1", A, vec![prepare("p", S)]),
        ("PREPARE P (int) AS SELECT $1", A, vec![prepare("p", S)]),
        (
            "PREPARE p (int) AS INSERT INTO t VALUES ($1)",
            A,
            vec![prepare("p", P)],
        ),
        (
            "PREPARE \"MyStmt\" AS SELECT nextval('s')",
            A,
            vec![PIN_UNKNOWN, prepare("MyStmt", P)],
        ),
        (
            "PREPARE p AS SELECT * FROM t FOR NO KEY UPDATE",
            A,
            vec![prepare("p", P)],
        ),
        ("PREPARE p AS TABLE t", A, vec![prepare("p", S)]),
        (
            "PREPARE p AS SELECT set_config('a.b', 'c', false)",
            A,
            vec![PIN_UNKNOWN, prepare("p", P)],
        ),
        (
            "PREPARE p AS SELECT pg_advisory_lock($1)",
            A,
            vec![PIN_UNKNOWN, prepare("p", P)],
        ),
        ("EXECUTE p", A, vec![execute("p")]),
        ("EXECUTE P(1, 'a')", A, vec![execute("p")]),
        ("EXECUTE \"MyStmt\"", A, vec![execute("MyStmt")]),
        ("EXECUTE p(nextval('s'))", P, vec![PIN_SEQ, execute("p")]),
        ("EXPLAIN EXECUTE p", S, vec![execute("p")]),
        ("EXPLAIN ANALYZE EXECUTE p(1)", S, vec![execute("p")]),
        (
            "DEALLOCATE p",
            A,
            vec![Effect::Deallocate {
                name: Some("p".to_string()),
            }],
        ),
        (
            "DEALLOCATE PREPARE p",
            A,
            vec![Effect::Deallocate {
                name: Some("p".to_string()),
            }],
        ),
        ("DEALLOCATE ALL", A, vec![Effect::Deallocate { name: None }]),
    ];
    check(&cases, &catalog());
}

/// Operator hints and multi-statement strings.
#[test]
fn hints_and_several_statements() {
    check_routes(
        &[
            ("/* pgsplit:primary */ SELECT 1", P),
            ("SELECT 1 /* PGSPLIT:PRIMARY */", P),
            ("SELECT /* app=web, pgsplit:primary */ * FROM t", P),
            ("-- pgsplit:primary\nSELECT 1", P),
            ("/*NO LOAD BALANCE*/ SELECT 1", P),
            ("/* no load balance */ SELECT 1", S),
            ("SELECT '/* pgsplit:primary */'", S),
            ("SELECT $$ /*NO LOAD BALANCE*/ $$", S),
            ("/* a /* nested */ comment */ SELECT 1", S),
            ("SELECT 1; SELECT 2", S),
            ("SELECT 1;;", S),
            ("SELECT 1; INSERT INTO t VALUES (1)", P),
            ("SELECT 1; /* pgsplit:primary */ SELECT 2", P),
            ("SELECT ';'; SELECT 'a;b'", S),
            ("SELECT 1; SELEC 2", P),
            ("TABLE t; SELECT 1", S),
        ],
        &catalog(),
    );
    check(
        &[(
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 1",
            P,
            vec![Changed],
        )],
        &catalog(),
    );
}

#[test]
fn cacheability() {
    let functions = catalog();
    let cases = [
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", true),
        ("INSERT INTO t VALUES (1) RETURNING a", true),
        ("LISTEN ch", true),
        ("SELECT pg_advisory_lock(1)", true),
        ("EXECUTE p(1)", true),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            true,
        ),
        ("SELECT * FROM t FOR NO KEY UPDATE", true),
        ("not sql", true),
        ("EXPLAIN ANALYZE SELECT 1", true),
        ("SET work_mem = '1MB'", false),
        ("BEGIN", true),
        (
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            true,
        ),
        ("COMMIT", true),
        ("SET TRANSACTION READ ONLY", false),
        ("SET transaction_read_only = 'on'", false),
        ("SELECT set_config('a.b', 'c', false)", false),
        ("SELECT set_config('a.b', 'c', true)", false),
        ("EXPLAIN (ANALYZE 0) INSERT INTO t VALUES (1)", false),
        ("PREPARE p AS SELECT 1", false),
        ("DEALLOCATE p", false),
        ("DISCARD ALL", false),
        ("DO $$ BEGIN END $$", false),
    ];
    let mut failures = Vec::new();
    for (sql, cacheable) in cases {
        let got = classify(sql, &functions).cacheable;
        if got != cacheable {
            failures.push(format!(
                "statement {sql:?}: expected cacheable {cacheable}, got {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Hostile or odd input never panics and always answers.
#[test]
fn odd_input_never_panics() {
    let functions = catalog();
    let deep = format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500));
    let inputs = [
        "'",
        "\"",
        "$$",
        "$a$",
        "/*",
        "E'\\",
        "U&",
        "SELECT 'é', \"ü\" FROM ß",
        "\u{0}",
        "PREPARE",
        "PREPARE p AS",
        "PREPARE \"abé",
        "EXECUTE \"é",
        "DEALLOCATE \"",
        "EXECUTE",
        "DEALLOCATE",
        "TABLE",
        "TABLE TABLE TABLE",
        "SET",
        "RESET",
        "BEGIN ISOLATION",
        ")))(((",
        deep.as_str(),
    ];
    for sql in inputs {
        let got = classify(sql, &functions);
        assert!(got.route >= A, "{sql:?}");
    }
    assert_eq!(classify(&deep, &functions).route, P);
}

/// Random splices of SQL fragments, quotes and multi-byte characters: never a panic, in
/// the classifier or the cache key.
#[test]
fn random_fragments_never_panic() {
    const PIECES: &[&str] = &[
        "SELECT ",
        "BEGIN ",
        "PREPARE ",
        "EXECUTE ",
        "TABLE ",
        "SET ",
        "DO ",
        "CREATE ",
        "FUNCTION ",
        "AS ",
        "ATOMIC ",
        "END",
        ";",
        "(",
        ")",
        "'",
        "\"",
        "$",
        "$$",
        "$a$",
        "E'",
        "U&",
        "\\",
        "--",
        "/*",
        "*/",
        "é",
        "ß",
        "漢",
        "1",
        ".",
        "..",
        "e",
        "x",
        " ",
        "\n",
        "nextval(",
        "set_config(",
        "pg_advisory_lock(",
        "FOR ",
        "UPDATE ",
        "NO KEY ",
        "/* pgsplit:primary */",
    ];
    let functions = catalog();
    // xorshift: deterministic, no dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let len = next() % 12;
        let sql: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let _ = classify(&sql, &functions);
        let _ = normalize(&sql);
    }
}

/// `nextval()` and `setval()` leave state on their connection that `currval()` and
/// `lastval()` read later: they pin it, until `DISCARD SEQUENCES`; the readers say so.
#[test]
fn sequence_calls_pin_their_connection() {
    let cases = vec![
        ("SELECT \"nextval\"('s')", P, vec![PIN_SEQ]),
        ("SELECT PG_CATALOG.NEXTVAL('s')", P, vec![PIN_SEQ]),
        ("SELECT pg_catalog.nextval('s')", P, vec![PIN_SEQ]),
        ("SELECT NextVal('s')", P, vec![PIN_SEQ]),
        ("SELECT abs(nextval('s'))", P, vec![PIN_SEQ]),
        (
            "SELECT * FROM t WHERE id IN (SELECT setval('s', 1))",
            P,
            vec![PIN_SEQ],
        ),
        ("SELECT * FROM nextval('s')", P, vec![PIN_SEQ]),
        ("SELECT * FROM pg_catalog.nextval('s')", P, vec![PIN_SEQ]),
        ("SELECT ARRAY(SELECT nextval('s'))", P, vec![PIN_SEQ]),
        ("SELECT nextval('s')", P, vec![PIN_SEQ]),
        ("SELECT setval('s', 10)", P, vec![PIN_SEQ]),
        ("COPY (SELECT nextval('s')) TO STDOUT", P, vec![PIN_SEQ]),
        ("DECLARE c CURSOR FOR SELECT nextval('s')", P, vec![PIN_SEQ]),
        ("DISCARD SEQUENCES", A, vec![Effect::Unpin(Pin::Sequence)]),
        ("EXPLAIN SELECT nextval('s')", P, vec![]),
        ("SELECT currval('s')", P, vec![Effect::ReadsSequence]),
        ("SELECT lastval()", P, vec![Effect::ReadsSequence]),
    ];
    check(&cases, &catalog());
}
