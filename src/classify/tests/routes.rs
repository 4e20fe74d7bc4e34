//! Route tables: ROUTING.md's plain statements and every place a function call can hide.

use super::super::Route::{Any as A, Primary as P, Standby as S};
use super::super::{Functions, Route};
use super::{catalog, check_routes};

/// ROUTING.md, "Plain statements": statements without session effects.
const PLAIN: &[(&str, Route)] = &[
    // Reads.
    ("SELECT 1", S),
    ("SELECT a, b FROM t WHERE c = 1", S),
    ("select abalance from pgbench_accounts where aid = 42", S),
    ("SELECT * FROM ONLY t", S),
    ("SELECT $1", S),
    ("TABLE t", S),
    ("TABLE public.t ORDER BY a LIMIT 3", S),
    ("VALUES (1)", S),
    ("VALUES (1, 'a'), (2, 'b')", S),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
        S,
    ),
    ("WITH x AS (SELECT 1) SELECT * FROM x", S),
    ("WITH x AS MATERIALIZED (SELECT a FROM t) SELECT * FROM x", S),
    // Row locks: a standby refuses them.
    ("SELECT * FROM t FOR UPDATE", P),
    ("SELECT * FROM t FOR NO KEY UPDATE", P),
    ("SELECT * FROM t FOR SHARE", P),
    ("SELECT * FROM t FOR KEY SHARE", P),
    ("SELECT * FROM t WHERE a = 1 FOR UPDATE OF t NOWAIT", P),
    ("SELECT * FROM t FOR SHARE SKIP LOCKED", P),
    ("SELECT 1 FOR UPDATE", P),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", P),
    // Sequences and transaction ids.
    ("SELECT txid_current()", P),
    ("SELECT txid_current_if_assigned()", P),
    ("SELECT pg_current_xact_id()", P),
    ("SELECT pg_current_xact_id_if_assigned()", P),
    // Notifications.
    ("SELECT pg_notify('ch', 'x')", P),
    ("NOTIFY ch", P),
    ("NOTIFY ch, 'payload'", P),
    ("UNLISTEN ch", P),
    // Transaction-level advisory locks end with the transaction: no pin.
    ("SELECT pg_advisory_xact_lock(1)", P),
    ("SELECT pg_advisory_xact_lock_shared(1)", P),
    ("SELECT pg_try_advisory_xact_lock(1, 2)", P),
    ("SELECT pg_try_advisory_xact_lock_shared(1)", P),
    ("SELECT pg_advisory_unlock(1)", P),
    ("SELECT pg_advisory_unlock_shared(1)", P),
    // Data-modifying CTEs.
    (
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING a) SELECT * FROM x",
        P,
    ),
    (
        "WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x",
        P,
    ),
    ("WITH x AS (DELETE FROM t RETURNING a) SELECT count(*) FROM x", P),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", P),
    (
        "WITH a AS (SELECT 1), b AS (SELECT * FROM a WHERE EXISTS (SELECT 1)) SELECT * FROM b",
        S,
    ),
    // Creating tables from queries.
    ("SELECT * INTO t2 FROM t", P),
    ("SELECT * INTO UNLOGGED t2 FROM t", P),
    ("CREATE TABLE t2 AS SELECT * FROM t", P),
    ("CREATE MATERIALIZED VIEW mv AS SELECT a FROM t", P),
    // Writes.
    ("INSERT INTO t VALUES (1)", P),
    ("INSERT INTO t DEFAULT VALUES", P),
    ("INSERT INTO t VALUES (1) RETURNING a", P),
    ("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", P),
    ("INSERT INTO t SELECT * FROM u", P),
    ("UPDATE t SET a = 1 WHERE b = 2", P),
    ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", P),
    (
        "UPDATE pgbench_accounts SET abalance = abalance + -2712 WHERE aid = 8417;",
        P,
    ),
    ("DELETE FROM t WHERE a = 1", P),
    ("DELETE FROM t USING u WHERE t.id = u.id", P),
    (
        "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN UPDATE SET b = 1",
        P,
    ),
    ("TRUNCATE t", P),
    ("TRUNCATE a, b CASCADE", P),
    ("COPY t FROM STDIN", P),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", P),
    ("COPY t FROM '/tmp/x'", P),
    // COPY out: a read, unless it writes a server file or its query needs the primary.
    ("COPY t TO STDOUT", S),
    ("COPY (SELECT * FROM t) TO STDOUT", S),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv)", S),
    ("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", P),
    ("COPY t TO '/tmp/x'", P),
    ("COPY t TO PROGRAM 'gzip > /tmp/x'", P),
    // DDL.
    ("CREATE TABLE t (a int)", P),
    ("CREATE UNLOGGED TABLE t (a int)", P),
    ("CREATE TABLE t2 (LIKE t)", P),
    ("ALTER TABLE t ADD COLUMN b int", P),
    ("ALTER TABLE t RENAME TO u", P),
    ("DROP TABLE t", P),
    ("CREATE INDEX ON t (a)", P),
    ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)", P),
    ("ALTER INDEX i RENAME TO j", P),
    ("CREATE VIEW v AS SELECT 1", P),
    ("CREATE VIEW v AS SELECT pg_advisory_lock(1)", P),
    ("ALTER VIEW v RENAME TO w", P),
    ("DROP VIEW v", P),
    ("CREATE SCHEMA s", P),
    ("COMMENT ON TABLE t IS 'x'", P),
    ("COMMENT ON FUNCTION f() IS 'x'", P),
    ("GRANT SELECT ON t TO bob", P),
    ("GRANT r TO bob", P),
    ("REVOKE SELECT ON t FROM bob", P),
    ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", P),
    ("CREATE ROLE r", P),
    ("ALTER ROLE r SET search_path = a", P),
    ("CREATE DATABASE d", P),
    ("CREATE SEQUENCE s", P),
    ("ALTER SEQUENCE s RESTART", P),
    ("DROP SEQUENCE s", P),
    ("CREATE TYPE ty AS (a int)", P),
    ("CREATE DOMAIN d AS int", P),
    (
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        P,
    ),
    ("CREATE POLICY p ON t USING (true)", P),
    ("ALTER SYSTEM SET work_mem = '1MB'", P),
    ("SECURITY LABEL ON TABLE t IS 'x'", P),
    ("REASSIGN OWNED BY a TO b", P),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", P),
    // Locks and maintenance.
    ("LOCK TABLE t", P),
    ("LOCK t IN ACCESS SHARE MODE", P),
    ("LOCK TABLE t IN ROW EXCLUSIVE MODE", P),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE NOWAIT", P),
    ("VACUUM", P),
    ("VACUUM FULL t", P),
    ("VACUUM (VERBOSE, ANALYZE) t", P),
    ("ANALYZE", P),
    ("ANALYZE t", P),
    ("CLUSTER t", P),
    ("CLUSTER", P),
    ("REINDEX TABLE t", P),
    ("REINDEX INDEX i", P),
    ("CHECKPOINT", P),
    ("REFRESH MATERIALIZED VIEW v", P),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY v", P),
    // Procedures and anonymous blocks: unknown effects.
    ("CALL p()", P),
    ("CALL s.p(1)", P),
    ("DO $$ BEGIN END $$", P),
    ("DO LANGUAGE plpgsql $$ BEGIN RAISE NOTICE 'x'; END $$", P),
    ("DO $$ BEGIN UPDATE t SET a = 1; END $$", P),
    // EXPLAIN.
    ("EXPLAIN SELECT 1", S),
    ("EXPLAIN VERBOSE SELECT * FROM t", S),
    ("EXPLAIN ANALYZE SELECT * FROM t", S),
    ("EXPLAIN (ANALYZE false) SELECT 1", S),
    ("EXPLAIN (ANALYZE off) DELETE FROM t", P),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", P),
    ("EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", P),
    ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", P),
    // Documented choice: without ANALYZE, the explained statement's route.
    ("EXPLAIN INSERT INTO t VALUES (1)", P),
    ("EXPLAIN SELECT nextval('s')", P),
    ("EXPLAIN SELECT pg_advisory_lock(1)", P),
    // SHOW: session settings are replayed everywhere.
    ("SHOW work_mem", S),
    ("SHOW ALL", S),
    ("SHOW search_path", S),
    ("SHOW TRANSACTION ISOLATION LEVEL", S),
    // Cursors follow their transaction.
    ("DECLARE c CURSOR FOR SELECT * FROM t", S),
    ("DECLARE c SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", S),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", P),
    ("FETCH NEXT FROM c", A),
    ("FETCH ALL IN c", A),
    ("FETCH 10 c", A),
    ("FETCH c", A),
    ("MOVE NEXT FROM c", A),
    ("MOVE c", A),
    ("CLOSE c", A),
    // Transaction control without effects.
    ("SAVEPOINT a", A),
    ("RELEASE SAVEPOINT a", A),
    ("RELEASE a", A),
    ("ROLLBACK TO SAVEPOINT a", A),
    ("ROLLBACK TO a", A),
    ("ROLLBACK WORK TO SAVEPOINT a", A),
    ("COMMIT AND CHAIN", A),
    ("ROLLBACK AND CHAIN", A),
    ("COMMIT PREPARED 'tx1'", P),
    ("ROLLBACK PREPARED 'tx1'", P),
    // Session settings that only last the transaction.
    ("SET LOCAL work_mem = '4MB'", A),
    ("SET LOCAL ROLE admin", A),
    ("SET LOCAL TIME ZONE 'UTC'", A),
    ("SET LOCAL search_path FROM CURRENT", A),
    ("SET CONSTRAINTS ALL DEFERRED", A),
    ("SELECT set_config('work_mem', '4MB', true)", A),
    ("DISCARD PLANS", A),
    // Nothing to run.
    ("", A),
    ("   \n\t", A),
    ("-- a comment only", A),
    ("/* a comment */", A),
    (";", A),
    (" ; ; ", A),
    // The rule of doubt.
    ("SELEC 1", P),
    ("not sql at all", P),
    ("SELECT * FROM t WHERE", P),
    ("SELECT * FROM ROWS FROM (generate_series(1, 3))", P),
];

#[test]
fn plain_statements() {
    check_routes(PLAIN, &catalog());
}

/// Where a function call may appear, and what each kind of function means.
const FUNCTIONS: &[(&str, Route)] = &[
    // Volatile but read-only built-ins.
    ("SELECT random()", S),
    ("SELECT clock_timestamp()", S),
    ("SELECT pg_sleep(1)", S),
    ("SELECT gen_random_uuid()", S),
    ("SELECT now(), statement_timestamp(), timeofday()", S),
    ("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()", S),
    ("SELECT pg_last_xact_replay_timestamp(), pg_backend_pid()", S),
    ("SELECT version(), current_setting('work_mem')", S),
    ("SELECT pg_stat_get_numscans(1)", S),
    // SQL-syntax forms that are not catalog functions.
    ("SELECT CURRENT_TIMESTAMP", S),
    ("SELECT current_user, session_user, CURRENT_DATE, LOCALTIME", S),
    ("SELECT COALESCE(a, 1), NULLIF(a, 0), GREATEST(a, 2), LEAST(a, 3) FROM t", S),
    ("SELECT ARRAY(SELECT 1), ROW(1, 2)", S),
    ("SELECT EXTRACT(year FROM now())", S),
    (
        "SELECT SUBSTRING('abc' FROM 2), TRIM(' a '), POSITION('a' IN 'abc'), CAST(1 AS text), 1::text",
        S,
    ),
    // Built-ins with side effects.
    ("SELECT pg_terminate_backend(123)", P),
    ("SELECT pg_cancel_backend(123)", P),
    ("SELECT pg_reload_conf()", P),
    ("SELECT pg_rotate_logfile()", P),
    ("SELECT pg_switch_wal()", P),
    ("SELECT pg_create_restore_point('x')", P),
    ("SELECT pg_create_physical_replication_slot('s')", P),
    ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", P),
    ("SELECT pg_drop_replication_slot('s')", P),
    ("SELECT pg_copy_physical_replication_slot('a', 'b')", P),
    ("SELECT pg_replication_slot_advance('s', '0/0')", P),
    ("SELECT pg_promote()", P),
    ("SELECT pg_wal_replay_pause()", P),
    ("SELECT pg_wal_replay_resume()", P),
    ("SELECT lo_create(0)", P),
    ("SELECT lo_creat(-1)", P),
    ("SELECT lo_import('/x')", P),
    ("SELECT lo_export(1, '/x')", P),
    ("SELECT lo_unlink(1)", P),
    ("SELECT lowrite(0, 'x')", P),
    ("SELECT lo_put(1, 0, 'x')", P),
    ("SELECT lo_from_bytea(0, 'x')", P),
    ("SELECT lo_truncate(0, 1)", P),
    ("SELECT lo_open(1, 131072)", P),
    ("SELECT pg_stat_reset()", P),
    ("SELECT pg_stat_reset_shared('bgwriter')", P),
    ("SELECT pg_logical_emit_message(true, 'p', 'x')", P),
    ("SELECT setseed(0.5)", P),
    // User functions by volatility.
    ("SELECT get_user(1)", S),
    ("SELECT slugify('A b')", S),
    ("SELECT bump()", P),
    ("SELECT mixed(1)", P),
    ("SELECT app.lookup(1)", S),
    ("SELECT app.audit(1)", S),
    ("SELECT cache_stats()", P),
    ("SELECT refresh_view()", S),
    ("SELECT not_in_catalog()", P),
    ("SELECT other.lookup(1)", P),
    // Quoting and case.
    ("SELECT \"public\".\"get_user\"(1)", S),
    ("SELECT \"Report\"()", S),
    ("SELECT Report()", P),
    ("SELECT GET_USER(1)", S),
    ("SELECT \"GET_USER\"(1)", P),
    // Nesting.
    ("SELECT lower(upper(bump()))", P),
    ("SELECT lower(upper(slugify('x')))", S),
    ("SELECT f.x FROM (SELECT get_user(1) AS x) f", S),
    // Every place a call can hide.
    ("SELECT * FROM t WHERE a = bump()", P),
    ("SELECT a FROM t GROUP BY a HAVING count(*) > bump()", P),
    ("SELECT * FROM t ORDER BY bump()", P),
    ("SELECT a FROM t GROUP BY bump()", P),
    ("SELECT * FROM t LIMIT bump()", P),
    ("SELECT * FROM (SELECT bump()) s", P),
    ("WITH x AS (SELECT bump()) SELECT * FROM x", P),
    ("VALUES (bump())", P),
    ("SELECT * FROM bump()", P),
    ("SELECT * FROM generate_series(1, 3) g", S),
    ("SELECT * FROM t, LATERAL unnest(t.a) u", S),
    ("SELECT * FROM t CROSS JOIN LATERAL bump() b", P),
    ("SELECT * FROM t JOIN u ON t.a = bump()", P),
    ("SELECT * FROM t LEFT JOIN u USING (a) WHERE u.b = get_user(1)", S),
    ("SELECT CASE WHEN a > 0 THEN bump() ELSE 0 END FROM t", P),
    ("SELECT sum(a) OVER (ORDER BY bump()) FROM t", P),
    ("SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY bump())", P),
    ("SELECT count(*) FILTER (WHERE bump() > 0) FROM t", P),
    ("SELECT array_agg(a ORDER BY bump()) FROM t", P),
    ("SELECT DISTINCT ON (bump()) a FROM t", P),
    ("SELECT 1 UNION SELECT bump()", P),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = bump())", P),
    ("SELECT (bump()).a", P),
    ("SELECT 'x' || bump()", P),
    ("SELECT * FROM t WHERE a IN (get_user(1), bump())", P),
];

#[test]
fn function_calls() {
    check_routes(FUNCTIONS, &catalog());
}

#[test]
fn empty_catalog_trusts_only_well_known_builtins() {
    check_routes(
        &[
            ("SELECT count(*) FROM t", S),
            ("SELECT lower(name), max(a) FROM t GROUP BY 1", S),
            ("SELECT now(), random()", S),
            ("SELECT get_user(1)", P),
            ("SELECT my_func()", P),
            ("SELECT public.count(*) FROM t", P),
        ],
        &Functions::empty(),
    );
}

/// The total number of table rows, so that a shrinking table is noticed.
#[test]
fn table_size() {
    assert!(
        PLAIN.len() + FUNCTIONS.len() >= 250,
        "{}",
        PLAIN.len() + FUNCTIONS.len()
    );
}
