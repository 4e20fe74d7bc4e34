//! Why a statement needs the primary: the reason counted in `routing_decisions_total`.

use super::super::Reason::{self, *};
use super::super::{classify, Classification, Route};
use super::catalog;

const REASONS: &[(&str, Reason)] = &[
    ("SELECT 1", Read),
    ("SELECT a FROM t WHERE b = $1", Read),
    ("SET search_path TO app", Read),
    ("BEGIN READ ONLY", Read),
    ("SELECT get_user(1)", Read),
    // Writes, DDL, administration.
    ("INSERT INTO t VALUES (1)", Write),
    ("UPDATE t SET a = 1", Write),
    ("DELETE FROM t", Write),
    (
        "WITH x AS (DELETE FROM t RETURNING a) SELECT * FROM x",
        Write,
    ),
    ("CREATE TABLE t2 (a int)", Write),
    ("TRUNCATE t", Write),
    ("VACUUM t", Write),
    ("COPY t FROM STDIN", Write),
    ("SELECT * INTO t3 FROM t", Write),
    // The first reason found is kept.
    ("INSERT INTO t VALUES (nextval('s'))", Write),
    // Row locks, parsed and by keyword.
    ("SELECT * FROM t FOR UPDATE", LockingRead),
    ("SELECT * FROM t FOR SHARE SKIP LOCKED", LockingRead),
    ("SELECT * FROM t FOR NO KEY UPDATE", LockingRead),
    ("SELECT * FROM t FOR KEY SHARE", LockingRead),
    // Functions.
    ("SELECT bump(1)", VolatileFunction),
    ("SELECT txid_current()", VolatileFunction),
    ("SELECT * FROM t WHERE a = mixed(1)", VolatileFunction),
    ("SELECT no_such_function()", UnknownFunction),
    ("SELECT cache_stats()", VolatileFunction),
    // Sequences.
    ("SELECT nextval('s')", Sequence),
    ("SELECT setval('s', 10)", Sequence),
    ("SELECT currval('s')", Sequence),
    ("SELECT lastval()", Sequence),
    // Session state.
    ("LISTEN ch", SessionState),
    ("SELECT pg_advisory_lock(1)", SessionState),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", SessionState),
    ("LOAD 'auto_explain'", SessionState),
    // Transactions a standby refuses.
    ("BEGIN READ WRITE", TransactionMode),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", TransactionMode),
    (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        TransactionMode,
    ),
    (
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        TransactionMode,
    ),
    ("COMMIT PREPARED 'x'", TransactionMode),
    // Hints.
    ("/* pgsplit:primary */ SELECT 1", Hint),
    ("/*NO LOAD BALANCE*/ SELECT 1", Hint),
    ("/* pgsplit:primary */ INSERT INTO t VALUES (1)", Write),
    // The rule of doubt.
    ("DO $$ BEGIN PERFORM 1; END $$", Unclassified),
    ("CALL p()", Unclassified),
    ("THIS IS NOT SQL", Unclassified),
    ("EXPLAIN ANALYZE DELETE FROM t", Write),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", LockingRead),
];

#[test]
fn every_primary_route_says_why() {
    let functions = catalog();
    let failures: Vec<String> = REASONS
        .iter()
        .filter_map(|&(sql, want)| {
            let got = classify(sql, &functions);
            let consistent = (got.route == Route::Primary) == (got.reason != Read);
            (got.reason != want || !consistent).then(|| {
                format!(
                    "statement {sql:?}: expected reason {want:?}, got {:?} (route {:?})",
                    got.reason, got.route
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        REASONS.len(),
        failures.join("\n")
    );
}

#[test]
fn a_batch_keeps_the_reason_of_its_first_primary_statement() {
    let functions = catalog();
    let mut batch = Classification::any();
    for sql in [
        "SELECT 1",
        "SELECT * FROM t FOR UPDATE",
        "INSERT INTO t VALUES (1)",
    ] {
        batch.join(&classify(sql, &functions));
    }
    assert_eq!((batch.route, batch.reason), (Route::Primary, LockingRead));
    assert_eq!(Classification::primary().reason, Unclassified);
}

#[test]
fn a_function_the_catalog_does_not_know_is_flagged_for_a_catalog_read() {
    let functions = catalog();
    let cases = [
        ("SELECT no_such_function()", true),
        ("SELECT 1 FROM t WHERE x = other.no_such_function(1)", true),
        ("SELECT now()", false),
        ("SELECT nextval('s')", false),
        ("SELECT count(*) FROM t", false),
        // Not parsed: words before parentheses are not function names for sure.
        ("THIS IS NOT SQL (1)", false),
    ];
    for (sql, unknown) in cases {
        assert_eq!(classify(sql, &functions).unknown_function, unknown, "{sql}");
    }
}
