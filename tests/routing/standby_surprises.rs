//! What the classifier cannot see in the text: functions created since the catalog was
//! read, and statements that write through a view. pgsplit learns the first from the
//! catalog, read again at once, and the second from the standby's refusal, and the
//! client never hears about either.

use crate::common;

use std::time::{Duration, Instant};

use common::{cluster, TestProxy};
use pgsplit::route::Decision;
use pgsplit_cluster::APP_DATABASE;
use tokio_postgres::Client;

/// Read-your-writes would keep the creating client's reads on the primary for a while;
/// these tests are about where statements of any client go.
async fn proxy() -> TestProxy {
    TestProxy::start_with("", "[routing]\nread_your_writes = \"off\"\n").await
}

fn primary_port() -> i32 {
    i32::from(cluster().nodes()[0].port)
}

fn wait_for_standbys() {
    for i in 1..cluster().nodes().len() {
        cluster().wait_for_replay(i).unwrap();
    }
}

async fn port_of(client: &Client, sql: &str) -> i32 {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

/// A client has used the app database, and its function catalog has had time to load.
async fn catalog_loaded(proxy: &TestProxy) {
    proxy
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Runs `sql` on fresh clients until a standby answers it; how long that took.
async fn until_a_standby_runs(proxy: &TestProxy, sql: &str, within: Duration) -> Duration {
    let primary = proxy.topology().primary().map(|p| p.node.address.clone());
    let start = Instant::now();
    loop {
        let port = port_of(&proxy.connect().await, sql).await;
        let on_primary = primary
            .as_deref()
            .is_some_and(|a| a.ends_with(&format!(":{port}")));
        if !on_primary {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "`{sql}` still runs on the primary after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_function_created_through_pgsplit_is_routed_by_its_volatility_at_once() {
    let proxy = proxy().await;
    // The catalog is loaded before the functions exist.
    catalog_loaded(&proxy).await;
    proxy
        .connect()
        .await
        .batch_execute(
            "CREATE FUNCTION s15_stable() RETURNS int LANGUAGE sql STABLE \
                 AS 'SELECT inet_server_port()'; \
             CREATE FUNCTION s15_volatile() RETURNS int LANGUAGE sql VOLATILE \
                 AS 'SELECT inet_server_port()'",
        )
        .await
        .unwrap();
    wait_for_standbys();
    // Far under function_refresh_interval (60 s): the CREATE had the catalog read again.
    let took = until_a_standby_runs(&proxy, "SELECT s15_stable()", Duration::from_secs(10)).await;
    eprintln!("the new STABLE function ran on a standby {took:?} after replay");
    for _ in 0..5 {
        let port = port_of(&proxy.connect().await, "SELECT s15_volatile()").await;
        assert_eq!(
            port,
            primary_port(),
            "a VOLATILE function must run on the primary"
        );
    }
}

#[tokio::test]
async fn a_function_created_directly_on_the_primary_is_learned_from_its_first_call() {
    let proxy = proxy().await;
    catalog_loaded(&proxy).await;
    cluster()
        .sql(
            0,
            APP_DATABASE,
            "CREATE FUNCTION s15_direct() RETURNS int LANGUAGE sql IMMUTABLE \
                 AS 'SELECT 15'; \
             CREATE FUNCTION s15_where() RETURNS int LANGUAGE sql STABLE \
                 AS 'SELECT inet_server_port()'",
        )
        .unwrap();
    wait_for_standbys();
    let first = port_of(&proxy.connect().await, "SELECT s15_where()").await;
    assert_eq!(
        first,
        primary_port(),
        "unknown to the catalog: the rule of doubt"
    );
    assert!(proxy.stats().decided(Decision::UnknownFunction) >= 1);
    let took = until_a_standby_runs(&proxy, "SELECT s15_where()", Duration::from_secs(10)).await;
    eprintln!("a function created behind pgsplit's back ran on a standby after {took:?}");
    let client = proxy.connect().await;
    let row = client.query_one("SELECT s15_direct()", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 15);
}

#[tokio::test]
async fn a_view_that_writes_returns_its_rows_and_then_goes_straight_to_the_primary() {
    let proxy = proxy().await;
    proxy
        .connect()
        .await
        .batch_execute(
            "CREATE TABLE s15_log (at_port int); \
             CREATE FUNCTION s15_logging() RETURNS int LANGUAGE sql VOLATILE \
                 AS 'INSERT INTO s15_log VALUES (inet_server_port()) RETURNING at_port'; \
             CREATE VIEW s15_simple AS SELECT s15_logging() AS port; \
             CREATE VIEW s15_extended AS SELECT s15_logging() AS port",
        )
        .await
        .unwrap();
    wait_for_standbys();
    let standby_statements =
        |p: &TestProxy| -> u64 { p.stats().statements_per_node[1..].iter().sum() };

    for (view, extended) in [("s15_simple", false), ("s15_extended", true)] {
        let sql = format!("SELECT port FROM {view}");
        for attempt in ["first", "second"] {
            let client = proxy.connect().await;
            let before = (
                standby_statements(&proxy),
                proxy.stats().decided(Decision::StandbyRefused),
            );
            // The classifier sees a plain SELECT; a standby refuses it (25006).
            let port: i32 = if extended {
                client
                    .query_one(&sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{attempt} {sql}: the client saw an error: {e}"))
                    .get(0)
            } else {
                let messages = client
                    .simple_query(&sql)
                    .await
                    .unwrap_or_else(|e| panic!("{attempt} {sql}: the client saw an error: {e}"));
                let rows: Vec<_> = messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                        _ => None,
                    })
                    .collect();
                assert_eq!(rows.len(), 1, "{attempt} {sql}: one row, exactly");
                rows[0].parse().unwrap()
            };
            assert_eq!(port, primary_port(), "{attempt} {sql}");
            let after = (
                standby_statements(&proxy),
                proxy.stats().decided(Decision::StandbyRefused),
            );
            // The extended protocol's prepare and execute are two requests, both counted.
            assert!(
                after.1 > before.1,
                "{attempt} {sql}: counted as standby_refused"
            );
            if attempt == "second" {
                assert_eq!(
                    after.0, before.0,
                    "{sql}: the second time no standby was tried"
                );
            }
        }
    }
    let logged = cluster()
        .sql(0, APP_DATABASE, "SELECT count(*) FROM s15_log")
        .unwrap();
    assert_eq!(logged, "4", "each SELECT wrote exactly once");
}

/// Inside a transaction the statement is already on its node: the error is the client's,
/// as README says.
#[tokio::test]
async fn inside_a_read_only_transaction_the_refusal_reaches_the_client() {
    let proxy = proxy().await;
    proxy
        .connect()
        .await
        .batch_execute(
            "CREATE SEQUENCE s15_seq; \
             CREATE VIEW s15_next AS SELECT nextval('s15_seq') AS n",
        )
        .await
        .unwrap();
    wait_for_standbys();
    let client = proxy.connect().await;
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let err = client
        .query_one("SELECT n FROM s15_next", &[])
        .await
        .expect_err("a read-only transaction cannot call nextval()");
    assert_eq!(common::sqlstate(&err), "25006");
    client.batch_execute("ROLLBACK").await.unwrap();
    // Outside a transaction the same statement just works.
    let n: i64 = client
        .query_one("SELECT n FROM s15_next", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1);
}

/// The catalog is read from the primary, so a new STABLE function is routed to the
/// standbys before they have replayed it: the standby's "does not exist" is not the
/// client's, the call runs on the primary.
#[tokio::test]
async fn a_function_the_standbys_have_not_replayed_yet_runs_on_the_primary() {
    let cluster = common::own_cluster().await;
    let proxy = TestProxy::start_for(
        &cluster,
        "",
        "lag_check_interval = \"100ms\"",
        "[routing]\nread_your_writes = \"off\"\n",
    )
    .await;
    catalog_loaded(&proxy).await;
    for standby in 1..cluster.nodes().len() {
        cluster.pause_replay(standby).unwrap();
    }
    proxy
        .connect()
        .await
        .batch_execute(
            "CREATE FUNCTION s15_fresh() RETURNS int LANGUAGE sql STABLE \
                 AS 'SELECT inet_server_port()'",
        )
        .await
        .unwrap();
    let primary = i32::from(cluster.nodes()[0].port);
    // Within the lag bounds for seconds yet: the standbys are chosen, and lack it.
    let before = proxy.stats().decided(Decision::StandbyRefused);
    for _ in 0..5 {
        let client = proxy.connect().await;
        let port: i32 = client
            .query_one("SELECT s15_fresh()", &[])
            .await
            .unwrap_or_else(|e| panic!("the client saw the standby's error: {e:?}"))
            .get(0);
        assert_eq!(port, primary);
    }
    let rerun = proxy.stats().decided(Decision::StandbyRefused) - before;
    assert!(
        rerun >= 1,
        "no call was tried on a standby first: the test proved nothing"
    );
    for standby in 1..cluster.nodes().len() {
        cluster.resume_replay(standby).unwrap();
        cluster.wait_for_replay(standby).unwrap();
    }
    until_a_standby_runs(&proxy, "SELECT s15_fresh()", Duration::from_secs(10)).await;
}
