//! Routing on the real cluster: reads on hot standbys, writes and side effects on the
//! primary, transactions on one node, session state following the client.

use crate::common;

use std::collections::HashSet;

use common::{cluster, sqlstate, text, TestProxy};
use pgsplit_cluster::APP_DATABASE;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

type Param<'a> = [&'a (dyn ToSql + Sync); 1];

/// pgsplit for tests of where statements run: read-your-writes (tested on its own in
/// read_your_writes.rs) would send reads that follow a write to the primary.
async fn placement_proxy() -> TestProxy {
    TestProxy::start_with("", "[routing]\nread_your_writes = \"off\"\n").await
}

fn port_of(node: usize) -> i32 {
    i32::from(cluster().nodes()[node].port)
}

fn standby_ports() -> HashSet<i32> {
    (1..cluster().nodes().len()).map(port_of).collect()
}

async fn served_by(client: &Client, sql: &str) -> i32 {
    let rows = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no port in the result"))
}

/// Runs DDL through pgsplit and waits until every standby has replayed it.
async fn setup(proxy: &TestProxy, sql: &str) {
    proxy
        .connect()
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("setup failed: {e}\n{sql}"));
    for i in 1..cluster().nodes().len() {
        cluster().wait_for_replay(i).unwrap();
    }
}

#[tokio::test]
async fn reads_land_on_standbys_and_writes_on_the_primary() {
    let proxy = placement_proxy().await;
    setup(&proxy, "CREATE TABLE IF NOT EXISTS where_t (port int)").await;
    let mut read_ports = HashSet::new();
    for _ in 0..6 {
        let client = proxy.connect().await;
        let port = served_by(&client, "SELECT inet_server_port()").await;
        assert!(
            standby_ports().contains(&port),
            "a plain read was served by port {port}, not a standby"
        );
        read_ports.insert(port);
        let write = served_by(
            &client,
            "INSERT INTO where_t SELECT inet_server_port() RETURNING port",
        )
        .await;
        assert_eq!(write, port_of(0), "an INSERT must run on the primary");
        let side_effect = served_by(
            &client,
            "SELECT inet_server_port() FROM (SELECT txid_current()) t",
        )
        .await;
        assert_eq!(
            side_effect,
            port_of(0),
            "txid_current() must run on the primary"
        );
    }
    assert_eq!(
        read_ports,
        standby_ports(),
        "reads should be spread over both standbys"
    );
}

#[tokio::test]
async fn transactions_run_wholly_on_one_node() {
    let proxy = placement_proxy().await;
    let client = proxy.connect().await;
    let cases = [
        ("BEGIN READ ONLY", true),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
            true,
        ),
        ("BEGIN; SET TRANSACTION READ ONLY", true),
        ("BEGIN", false),
        ("BEGIN READ WRITE", false),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", false),
    ];
    for (begin, on_standby) in cases {
        for stmt in begin.split("; ") {
            client
                .batch_execute(stmt)
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
        let first = served_by(&client, "SELECT inet_server_port()").await;
        let second = served_by(&client, "SELECT inet_server_port()").await;
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(first, second, "{begin}: a transaction moved between nodes");
        assert_eq!(
            standby_ports().contains(&first),
            on_standby,
            "{begin}: served by port {first}"
        );
    }
    let rolled_back = client.batch_execute("BEGIN; ROLLBACK").await;
    assert!(rolled_back.is_ok(), "an empty transaction ends cleanly");
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn set_search_path_applies_on_whichever_node_answers() {
    let proxy = placement_proxy().await;
    setup(
        &proxy,
        "CREATE SCHEMA IF NOT EXISTS path_s; DROP TABLE IF EXISTS path_s.marker; \
         CREATE TABLE path_s.marker AS SELECT 'from path_s'::text AS v",
    )
    .await;
    let client = proxy.connect().await;
    client
        .batch_execute("SET search_path = path_s, public")
        .await
        .unwrap();
    let row = client
        .query_one("SELECT v, inet_server_port() FROM marker", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "from path_s");
    assert!(
        standby_ports().contains(&row.get::<_, i32>(1)),
        "the read should run on a standby"
    );
    let shown = client.query_one("SHOW search_path", &[]).await.unwrap();
    assert_eq!(shown.get::<_, &str>(0), "path_s, public");
    client.batch_execute("RESET search_path").await.unwrap();
    let err = client
        .query_one("SELECT v FROM marker", &[])
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err),
        "42P01",
        "after RESET the schema is no longer searched"
    );
}

#[tokio::test]
async fn temp_tables_pin_the_session_to_the_primary() {
    let proxy = placement_proxy().await;
    let client = proxy.connect().await;
    client
        .batch_execute("CREATE TEMP TABLE scratch (a int)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO scratch VALUES (1), (2)")
        .await
        .unwrap();
    let row = client
        .query_one("SELECT count(*), inet_server_port() FROM scratch", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, i32>(1), port_of(0));
    client.batch_execute("DISCARD TEMP").await.unwrap();
    let after = served_by(&client, "SELECT inet_server_port()").await;
    assert!(
        standby_ports().contains(&after),
        "DISCARD TEMP releases the pin"
    );
}

#[tokio::test]
async fn user_functions_route_by_volatility_and_overrides() {
    let proxy = TestProxy::start_with(
        "",
        "[routing]\nread_your_writes = \"off\"\n\
         read_only_functions = [\"public.fn_volatile_read\"]\nwrite_functions = [\"fn_stable_forced\"]\n",
    )
    .await;
    setup(
        &proxy,
        "CREATE TABLE IF NOT EXISTS fn_log (at int); \
         CREATE OR REPLACE FUNCTION fn_writes() RETURNS int LANGUAGE sql VOLATILE AS \
           'INSERT INTO fn_log VALUES (1); SELECT inet_server_port()'; \
         CREATE OR REPLACE FUNCTION fn_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT inet_server_port()'; \
         CREATE OR REPLACE FUNCTION fn_stable_forced() RETURNS int LANGUAGE sql STABLE AS 'SELECT inet_server_port()'; \
         CREATE OR REPLACE FUNCTION fn_volatile_read() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT inet_server_port()'; \
         CREATE OR REPLACE FUNCTION fn_immutable(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';",
    )
    .await;
    let client = proxy.connect().await;
    // The catalog reload follows the CREATE FUNCTION: until it lands, unknown functions go
    // to the primary (rule of doubt), so wait for the stable one to reach a standby.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut stable = served_by(&client, "SELECT fn_stable()").await;
    while !standby_ports().contains(&stable) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stable = served_by(&client, "SELECT fn_stable()").await;
    }
    assert!(
        standby_ports().contains(&stable),
        "a stable user function may run on a standby (ran on {stable})"
    );
    let cases = [
        (
            "SELECT fn_writes()",
            false,
            "a volatile user function runs on the primary",
        ),
        (
            "SELECT fn_stable_forced()",
            false,
            "write_functions sends a stable function to the primary",
        ),
        (
            "SELECT fn_volatile_read()",
            true,
            "read_only_functions lets a volatile function run on a standby",
        ),
        (
            "SELECT inet_server_port() WHERE fn_immutable(2) = 4",
            true,
            "an immutable function may run on a standby",
        ),
    ];
    for (sql, on_standby, why) in cases {
        let port = served_by(&client, sql).await;
        assert_eq!(
            standby_ports().contains(&port),
            on_standby,
            "{why}: {sql} ran on port {port}"
        );
    }
}

#[tokio::test]
async fn prepared_statements_follow_the_client_across_nodes() {
    let proxy = placement_proxy().await;
    let client = proxy.connect().await;
    let stmt = client
        .prepare("SELECT inet_server_port(), $1::int + 1")
        .await
        .unwrap();
    let on_read = client.query_one(&stmt, &[&1]).await.unwrap();
    assert!(standby_ports().contains(&on_read.get::<_, i32>(0)));
    assert_eq!(on_read.get::<_, i32>(1), 2);
    client.batch_execute("BEGIN READ WRITE").await.unwrap();
    let in_txn = client.query_one(&stmt, &[&41]).await.unwrap();
    assert_eq!(
        in_txn.get::<_, i32>(0),
        port_of(0),
        "inside a read-write transaction the statement runs on the primary"
    );
    assert_eq!(in_txn.get::<_, i32>(1), 42);
    client.batch_execute("COMMIT").await.unwrap();

    client
        .batch_execute("PREPARE sqlp AS SELECT inet_server_port()")
        .await
        .unwrap();
    let executed = served_by(&client, "EXECUTE sqlp").await;
    assert!(
        standby_ports().contains(&executed),
        "a read PREPAREd in SQL executes on a standby"
    );
    client.batch_execute("DEALLOCATE sqlp").await.unwrap();
}

#[tokio::test]
async fn pgbench_read_only_is_served_by_standbys_and_tpcb_has_no_failures() {
    let proxy = placement_proxy().await;
    let init = proxy.run("pgbench", &["-i", "-q", "-s", "1", APP_DATABASE]);
    assert!(init.status.success(), "{}", text(&init));
    for i in 1..cluster().nodes().len() {
        cluster().wait_for_replay(i).unwrap();
    }
    let before = proxy.stats();
    for mode in ["simple", "extended", "prepared"] {
        let out = proxy.run(
            "pgbench",
            &[
                "-S",
                "-M",
                mode,
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                "3",
                APP_DATABASE,
            ],
        );
        let report = text(&out);
        assert!(
            out.status.success() && report.contains("number of failed transactions: 0 "),
            "pgbench -S -M {mode}: {report}"
        );
    }
    let after = proxy.stats();
    let standby = after.to_standby - before.to_standby;
    let primary = after.to_primary - before.to_primary;
    let share = standby as f64 / (standby + primary) as f64;
    assert!(
        share >= 0.9,
        "only {standby} of {} statements of pgbench -S reached a standby",
        standby + primary
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = proxy.run(
            "pgbench",
            &["-M", mode, "-c", "4", "-j", "2", "-T", "3", APP_DATABASE],
        );
        let report = text(&out);
        assert!(
            out.status.success() && report.contains("number of failed transactions: 0 "),
            "pgbench TPC-B -M {mode}: {report}"
        );
    }
}

#[tokio::test]
async fn a_set_inside_a_rolled_back_transaction_is_not_replayed_elsewhere() {
    let proxy = placement_proxy().await;
    let client = proxy.connect().await;
    let default: String = client.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("SET work_mem = '7MB'").await.unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    for hint in ["", " /* pgsplit:primary */"] {
        let shown: String = client
            .query_one(&format!("SHOW work_mem{hint}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            shown, default,
            "SHOW work_mem{hint} after a rolled-back SET"
        );
    }
    client
        .batch_execute("BEGIN; SET work_mem = '9MB'; COMMIT")
        .await
        .unwrap();
    for hint in ["", " /* pgsplit:primary */"] {
        let shown: String = client
            .query_one(&format!("SHOW work_mem{hint}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(shown, "9MB", "SHOW work_mem{hint} after a committed SET");
    }
}

#[tokio::test]
async fn pipelined_reads_and_writes_keep_their_order_and_nodes() {
    let proxy = placement_proxy().await;
    setup(
        &proxy,
        "DROP TABLE IF EXISTS pipe_t; CREATE TABLE pipe_t (id int)",
    )
    .await;
    let client = proxy.connect().await;
    let read = client
        .prepare("SELECT inet_server_port(), $1::int")
        .await
        .unwrap();
    let write = client
        .prepare("INSERT INTO pipe_t VALUES ($1) RETURNING inet_server_port(), id")
        .await
        .unwrap();
    for round in 0..20 {
        // tokio-postgres pipelines requests issued together on one connection.
        let (a, b, c) = (round * 3, round * 3 + 1, round * 3 + 2);
        let (pa, pb, pc): (Param, Param, Param) = ([&a], [&b], [&c]);
        let (r1, w, r2) = tokio::join!(
            client.query_one(&read, &pa),
            client.query_one(&write, &pb),
            client.query_one(&read, &pc),
        );
        let (r1, w, r2) = (r1.unwrap(), w.unwrap(), r2.unwrap());
        assert_eq!(r1.get::<_, i32>(1), round * 3);
        assert_eq!(w.get::<_, i32>(1), round * 3 + 1);
        assert_eq!(r2.get::<_, i32>(1), round * 3 + 2);
        assert_eq!(
            w.get::<_, i32>(0),
            port_of(0),
            "the pipelined INSERT ran on the primary"
        );
        assert!(
            standby_ports().contains(&r1.get::<_, i32>(0)),
            "the first read ran on a standby"
        );
    }
}
