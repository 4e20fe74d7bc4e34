//! Connection pooling on the real cluster (issue 5): many clients share a few server
//! connections per node, and none of them can tell. Statement names, settings and cancel
//! keys stay each client's own; an exhausted pool answers 53300 after `checkout_timeout`;
//! pinned clients keep their connection and are counted; routing works in both modes.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::pool::{pooled_proxy, ON_PRIMARY};
use common::raw;
use common::{cluster, sqlstate, text, TestProxy};
use pgsplit_cluster::{APP_DATABASE, SUPERUSER, SUPERUSER_PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The pool maximum of the 400-client test.
const POOL_MAX: i64 = 20;
/// Role the 400-client test logs in as, here only, so `pg_stat_activity` rows with this
/// `usename` are that proxy's pool connections and nothing else: other tests' proxies and
/// their idle pools log in as `app`.
const BENCH_USER: &str = "pool_bench";
const BENCH_PASSWORD: &str = "pool-bench-pw";
fn port_of(node: usize) -> i32 {
    i32::from(cluster().nodes()[node].port)
}

fn standby_ports() -> HashSet<i32> {
    (1..cluster().nodes().len()).map(port_of).collect()
}

fn node_name(port: i32) -> String {
    cluster()
        .nodes()
        .iter()
        .find(|n| i32::from(n.port) == port)
        .map_or_else(|| format!("port {port}"), |n| n.name.clone())
}

/// A superuser connection straight to node `node`, bypassing pgsplit.
async fn direct(node: usize) -> Client {
    let n = &cluster().nodes()[node];
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres",
        n.port
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("direct connection to {}: {e}", n.name));
    tokio::spawn(conn);
    client
}

/// The rows of a simple query, every column as text.
async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The first column of the only row of `sql`.
async fn one(client: &Client, sql: &str) -> String {
    let rows = rows(client, sql).await;
    rows.first()
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Runs DDL through pgsplit and waits until every standby has replayed it.
async fn setup(proxy: &TestProxy, sql: &str) {
    proxy
        .connect()
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("setup failed: {e}\n{sql}"));
    tokio::task::spawn_blocking(|| {
        for i in 1..cluster().nodes().len() {
            cluster().wait_for_replay(i).unwrap();
        }
    })
    .await
    .unwrap();
}

/// Polls `check` every 20 ms for up to `within`; whether it came true.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

// ---------------------------------------------------------------------------------------
// 400 clients, 20 server connections per node
// ---------------------------------------------------------------------------------------

/// Fails loudly (instead of letting pgbench or the proxy fail obscurely) when this process
/// may not open the ~900 descriptors the test needs: 400 client sockets, up to 60 server
/// sockets and the samplers; pgbench, a separate process, holds its own 400.
fn assert_enough_file_descriptors() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(soft) = soft {
        assert!(
            soft >= 1024,
            "ulimit -n is {soft}; 400 clients through pgsplit need at least 1024 (raise it with ulimit -n)"
        );
    }
}

fn pgbench(port: u16, args: &[String]) -> Output {
    Command::new(cluster().pg_bin().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", BENCH_USER])
        .args(args)
        .arg(APP_DATABASE)
        .env("PGPASSWORD", BENCH_PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap_or_else(|e| panic!("cannot run pgbench: {e}"))
}

/// What one pgbench run did and the most server connections of [`BENCH_USER`] seen on
/// each node while it ran.
struct SampledRun {
    out: Output,
    max_per_node: Vec<i64>,
    samples: usize,
}

/// Runs pgbench through `proxy` and samples `pg_stat_activity` on every node directly
/// every ~100 ms until it exits.
async fn pgbench_sampled(proxy: &TestProxy, args: &[&str]) -> SampledRun {
    let nodes = futures_util::future::join_all((0..cluster().nodes().len()).map(direct)).await;
    let (port, args) = (
        proxy.addr.port(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    let bench = tokio::task::spawn_blocking(move || pgbench(port, &args));
    let count = "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND usename = $1";
    let mut max_per_node = vec![0i64; nodes.len()];
    let mut samples = 0;
    while !bench.is_finished() {
        let counts = futures_util::future::join_all(
            nodes.iter().map(|c| c.query_one(count, &[&BENCH_USER])),
        )
        .await;
        for (i, row) in counts.into_iter().enumerate() {
            let row = row.unwrap_or_else(|e| panic!("sampling {}: {e}", node_name(port_of(i))));
            max_per_node[i] = max_per_node[i].max(row.get(0));
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = bench.await.expect("pgbench task");
    SampledRun {
        out,
        max_per_node,
        samples,
    }
}

/// pgbench exited cleanly, processed transactions, and none failed or aborted.
fn assert_pgbench_clean(what: &str, run: &SampledRun) {
    let report = text(&run.out);
    eprintln!("{what}:\n{}", String::from_utf8_lossy(&run.out.stdout));
    assert!(run.out.status.success(), "{what}: pgbench failed\n{report}");
    assert!(
        report.contains("number of failed transactions: 0 ") && !report.contains("aborted"),
        "{what}: failed transactions or aborted clients\n{report}"
    );
    let processed = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(processed > 0, "{what}: no transaction completed\n{report}");
}

fn assert_within_pool_max(what: &str, run: &SampledRun) {
    let names: Vec<String> = (0..run.max_per_node.len())
        .map(|i| node_name(port_of(i)))
        .collect();
    eprintln!(
        "{what}: most server connections seen per node {:?} over {} samples ({names:?})",
        run.max_per_node, run.samples
    );
    assert!(
        run.samples >= 10,
        "{what}: only {} samples of pg_stat_activity were taken",
        run.samples
    );
    for (i, max) in run.max_per_node.iter().enumerate() {
        assert!(
            *max <= POOL_MAX,
            "{what}: {} had {max} server connections of {BENCH_USER} at once; the pool maximum is {POOL_MAX}",
            names[i]
        );
    }
}

#[tokio::test]
async fn pgbench_400_clients_share_20_server_connections_per_node() {
    // It loads both cores: it runs alone, and every other test of this binary takes a
    // shared turn, so cancel and checkout timings are never measured under pgbench's load.
    let _alone = common::turns::alone().await;
    assert_enough_file_descriptors();
    // A role of this test's own (a member of app, so it may use app's pgbench tables).
    tokio::task::spawn_blocking(|| {
        let create = format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{BENCH_USER}') THEN \
             CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{BENCH_PASSWORD}' IN ROLE app; END IF; END $$"
        );
        cluster().sql(0, "postgres", &create).unwrap();
        cluster().pgbench_init(2).unwrap();
    })
    .await
    .expect("pgbench -i task");
    // The test proves the maximum holds with 400 clients queueing for 20 connections, not
    // a latency bound: a generous checkout_timeout keeps a slow CI machine from failing it.
    let proxy = TestProxy::start_with(
        "max_client_conn = 1000",
        &format!(
            "[pool]\nmax_pool_size = {POOL_MAX}\ncheckout_timeout = \"20s\"\n\n\
             [[users]]\nname = \"{BENCH_USER}\"\npassword = \"{BENCH_PASSWORD}\"\n"
        ),
    )
    .await;

    let select_only = pgbench_sampled(
        &proxy,
        &[
            "-n", "-c", "400", "-j", "2", "-M", "prepared", "-S", "-T", "10",
        ],
    )
    .await;
    assert_pgbench_clean("pgbench -S -M prepared -c 400", &select_only);
    assert_within_pool_max("pgbench -S -M prepared -c 400", &select_only);
    assert!(
        select_only.max_per_node[1..].iter().any(|m| *m > 0),
        "no standby ever showed a server connection during pgbench -S, so the sampling proved nothing: {:?}",
        select_only.max_per_node
    );

    let tpcb = pgbench_sampled(
        &proxy,
        &["-n", "-c", "400", "-j", "2", "-M", "prepared", "-T", "10"],
    )
    .await;
    assert_pgbench_clean("pgbench TPC-B -M prepared -c 400", &tpcb);
    assert_within_pool_max("pgbench TPC-B -M prepared -c 400", &tpcb);
    assert!(
        tpcb.max_per_node[0] > 0,
        "the primary never showed a server connection during TPC-B, so the sampling proved nothing"
    );
}

// ---------------------------------------------------------------------------------------
// Prepared statements: two clients' "s1"
// ---------------------------------------------------------------------------------------

/// Prepares `sql` as `s1` over the raw protocol and returns the parameter type OIDs the
/// server describes for it.
async fn prepare_s1(stream: &mut TcpStream, sql: &str) -> Vec<u32> {
    let ask = [
        raw::parse("s1", sql),
        raw::describe(b'S', "s1"),
        raw::sync(),
    ]
    .concat();
    stream.write_all(&ask).await.expect("send Parse");
    let reply = raw::reply(stream).await;
    assert!(
        reply.errors.is_empty(),
        "Parse of {sql}: {:?}",
        reply.errors
    );
    reply
        .param_types
        .unwrap_or_else(|| panic!("Describe of s1 ({sql}) sent no ParameterDescription"))
}

async fn describe_s1(stream: &mut TcpStream) -> Vec<u32> {
    let ask = [raw::describe(b'S', "s1"), raw::sync()].concat();
    stream.write_all(&ask).await.expect("send Describe");
    let reply = raw::reply(stream).await;
    assert!(
        reply.errors.is_empty(),
        "Describe of s1: {:?}",
        reply.errors
    );
    reply.param_types.expect("ParameterDescription")
}

fn execute_s1(param: &str) -> Vec<u8> {
    [raw::bind("", "s1", &[param]), raw::execute(""), raw::sync()].concat()
}

const INT4_OID: u32 = 23;
const TEXT_OID: u32 = 25;

#[tokio::test]
async fn two_clients_with_the_same_statement_name_get_their_own_results() {
    let _shared = common::turns::shared().await;
    // One connection per node: both clients' requests necessarily run on the same ones.
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let mut b = raw::login(proxy.addr, "trustuser").await;
    assert_eq!(prepare_s1(&mut a, "SELECT $1::int + 1").await, [INT4_OID]);
    assert_eq!(
        prepare_s1(&mut b, "SELECT 'b' || $1::text").await,
        [TEXT_OID]
    );
    for round in 0..1000 {
        let param = round.to_string();
        // Both requests are in flight at once, sent in alternating order.
        if round % 2 == 0 {
            a.write_all(&execute_s1(&param)).await.unwrap();
            b.write_all(&execute_s1(&param)).await.unwrap();
        } else {
            b.write_all(&execute_s1(&param)).await.unwrap();
            a.write_all(&execute_s1(&param)).await.unwrap();
        }
        let (got_a, got_b) = tokio::join!(raw::reply(&mut a), raw::reply(&mut b));
        let want_a = vec![vec![Some((round + 1).to_string())]];
        let want_b = vec![vec![Some(format!("b{round}"))]];
        assert!(
            got_a.errors.is_empty() && got_a.rows == want_a,
            "round {round}: client A's s1 (SELECT $1::int + 1) answered {got_a:?}"
        );
        assert!(
            got_b.errors.is_empty() && got_b.rows == want_b,
            "round {round}: client B's s1 (SELECT 'b' || $1::text) answered {got_b:?}"
        );
    }
    assert_eq!(
        describe_s1(&mut a).await,
        [INT4_OID],
        "A's s1 still describes an int parameter"
    );
    assert_eq!(
        describe_s1(&mut b).await,
        [TEXT_OID],
        "B's s1 still describes a text parameter"
    );
}

#[tokio::test]
async fn closing_s1_in_one_client_leaves_the_others_s1_working() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let mut a = raw::login(proxy.addr, "trustuser").await;
    let mut b = raw::login(proxy.addr, "trustuser").await;
    prepare_s1(&mut a, "SELECT $1::int + 1").await;
    prepare_s1(&mut b, "SELECT 'b' || $1::text").await;
    a.write_all(&[raw::close(b'S', "s1"), raw::sync()].concat())
        .await
        .unwrap();
    let closed = raw::reply(&mut a).await;
    assert!(closed.errors.is_empty(), "Close of s1: {:?}", closed.errors);
    for round in 0..4 {
        b.write_all(&execute_s1("x")).await.unwrap();
        let got = raw::reply(&mut b).await;
        assert_eq!(
            (got.errors.as_slice(), got.rows.as_slice()),
            (&[][..], &[vec![Some("bx".to_owned())]][..]),
            "round {round}: B's s1 after A closed its own"
        );
        a.write_all(&execute_s1("1")).await.unwrap();
        let gone = raw::reply(&mut a).await;
        assert_eq!(
            gone.errors,
            ["26000"],
            "round {round}: A's closed s1 must be gone (invalid_sql_statement_name), got {gone:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Settings stay with their client
// ---------------------------------------------------------------------------------------

/// Per node a client reached: (backend pid, search_path, statement_timeout), read with a
/// primary-bound statement and with plain reads until both standbys answered (or 12 tries).
async fn settings_per_node(client: &Client) -> HashMap<i32, (String, String, String)> {
    let probe = "SELECT inet_server_port(), pg_backend_pid(), \
                 current_setting('search_path'), current_setting('statement_timeout')";
    let mut seen = HashMap::new();
    let primary = format!("{ON_PRIMARY} {probe}");
    for sql in std::iter::once(primary.as_str()).chain(std::iter::repeat_n(probe, 12)) {
        let row = rows(client, sql).await.remove(0);
        let port: i32 = row[0].parse().expect("port");
        seen.insert(port, (row[1].clone(), row[2].clone(), row[3].clone()));
        if standby_ports().iter().all(|p| seen.contains_key(p)) {
            break;
        }
    }
    assert!(
        seen.contains_key(&port_of(0)),
        "the primary-bound probe did not run on the primary: {seen:?}"
    );
    assert!(
        seen.keys().any(|p| standby_ports().contains(p)),
        "no plain read reached a standby: {seen:?}"
    );
    seen
}

#[tokio::test]
async fn settings_of_one_client_never_reach_another() {
    let _shared = common::turns::shared().await;
    // One connection per node, so B is served by the connections A used.
    let proxy = pooled_proxy("max_pool_size = 1").await;
    let (default_path, default_timeout) = ("\"$user\", public", "0");
    let (a_path, a_timeout) = ("pool_private, public", "1234ms");

    let a = proxy.connect().await;
    a.batch_execute(&format!("SET search_path TO {a_path}"))
        .await
        .unwrap();
    a.batch_execute(&format!("SET statement_timeout = '{a_timeout}'"))
        .await
        .unwrap();
    let a_seen = settings_per_node(&a).await;
    for (port, (_, path, timeout)) in &a_seen {
        assert_eq!(
            (path.as_str(), timeout.as_str()),
            (a_path, a_timeout),
            "A's own settings on {}",
            node_name(*port)
        );
    }

    let b = proxy.connect().await;
    let b_seen = settings_per_node(&b).await;
    for (port, (pid, path, timeout)) in &b_seen {
        let node = node_name(*port);
        let a_pid = a_seen.get(port).map(|s| s.0.as_str());
        assert_eq!(
            a_pid,
            Some(pid.as_str()),
            "with max_pool_size = 1, B must be served on {node} by the server connection A used"
        );
        assert_eq!(
            (path.as_str(), timeout.as_str()),
            (default_path, default_timeout),
            "A's settings leaked to B on {node}"
        );
    }
    // SHOW is a plain read (a standby).
    assert_eq!(one(&b, "SHOW search_path").await, default_path);
    assert_eq!(one(&b, "SHOW statement_timeout").await, default_timeout);

    // After B ran on them, A still gets its own settings everywhere.
    for (port, (_, path, timeout)) in settings_per_node(&a).await {
        assert_eq!(
            (path.as_str(), timeout.as_str()),
            (a_path, a_timeout),
            "A lost its settings on {} after B used the connection",
            node_name(port)
        );
    }
    assert_eq!(one(&a, "SHOW search_path").await, a_path);
    assert_eq!(one(&a, "SHOW statement_timeout").await, a_timeout);
}

// ---------------------------------------------------------------------------------------
// Cancel requests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cancel_with_the_clients_token_stops_its_query() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("").await;
    // A plain read (a standby) and the same forced to the primary.
    for sql in [
        "SELECT pg_sleep(30)".to_owned(),
        format!("{ON_PRIMARY} SELECT pg_sleep(30)"),
    ] {
        let client = proxy.connect().await;
        let token = client.cancel_token();
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token
                .cancel_query(NoTls)
                .await
                .unwrap_or_else(|e| panic!("sending the cancel request: {e}"));
            Instant::now()
        };
        let run = async { tokio::join!(client.simple_query(&sql), cancel) };
        let (result, cancelled_at) = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap_or_else(|_| panic!("{sql}: still running 10 s after the cancel"));
        let took = cancelled_at.elapsed();
        match result {
            Ok(_) => panic!("{sql}: finished normally despite the cancel"),
            Err(e) => assert_eq!(sqlstate(&e), "57014", "{sql}: cancelled with {e}"),
        }
        assert!(
            took < Duration::from_secs(2),
            "{sql}: ended {took:?} after the cancel, not within 2 s"
        );
        assert_eq!(
            one(&client, "SELECT 'after cancel'::text").await,
            "after cancel",
            "the client works after its query was cancelled"
        );
    }
}

#[tokio::test]
async fn a_cancel_sent_while_the_query_waits_for_a_connection_stops_it_once_it_runs() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 1\ncheckout_timeout = \"20s\"").await;
    let holder = proxy.connect().await;
    let waiter = proxy.connect().await;
    let primary = direct(0).await;
    let hold = format!("{ON_PRIMARY} SELECT pg_sleep(2), 'held'::text AS connection_holder");
    let held = async {
        let running = "SELECT count(*) FROM pg_stat_activity \
                       WHERE state = 'active' AND query LIKE '%connection_holder%' \
                       AND pid <> pg_backend_pid()";
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n: i64 = primary.query_one(running, &[]).await.unwrap().get(0);
            if n >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the holder's query never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let holding = holder.simple_query(&hold);
    // The waiter's query waits for the primary's only connection; its cancel arrives
    // before that, while pgsplit has no server to send it to.
    let waiting = async {
        held.await;
        let token = waiter.cancel_token();
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token
                .cancel_query(NoTls)
                .await
                .unwrap_or_else(|e| panic!("sending the cancel request: {e}"));
        };
        let sql = format!("{ON_PRIMARY} SELECT pg_sleep(30)");
        tokio::join!(waiter.simple_query(&sql), cancel).0
    };
    let (held_result, waited) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(holding, waiting)
    })
    .await
    .unwrap_or_else(|_| panic!("the cancelled query still ran 15 s later: its cancel was lost"));
    let held_rows = held_result.expect("the holder's query is not the one cancelled");
    let held_value = held_rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
        _ => None,
    });
    assert_eq!(held_value.as_deref(), Some("held"));
    match waited {
        Ok(_) => panic!("the waiter's query finished normally despite its cancel"),
        Err(e) => assert_eq!(sqlstate(&e), "57014", "cancelled with {e}"),
    }
    assert_eq!(
        one(&waiter, "SELECT 'after cancel'::text").await,
        "after cancel",
        "the client works after its query was cancelled"
    );
}

#[tokio::test]
async fn a_cancel_with_a_wrong_key_changes_nothing() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("").await;
    let (mut stream, (pid, secret)) = raw::login_with_key(proxy.addr, "trustuser").await;
    stream
        .write_all(&raw::query("SELECT pg_sleep(2), 'finished'::text"))
        .await
        .unwrap();
    let sent = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wrong_keys = [
        (pid, secret.wrapping_add(1)),
        (pid.wrapping_add(1), secret),
        (pid ^ 0x5555_5555, secret ^ 0x2aaa_aaaa),
    ];
    for (p, s) in wrong_keys {
        let mut cancel = TcpStream::connect(proxy.addr).await.unwrap();
        cancel.write_all(&raw::cancel_request(p, s)).await.unwrap();
        // pgsplit answers a cancel request by closing the connection; wait for that so the
        // request was handled while the query still ran.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), cancel.read_to_end(&mut rest)).await;
    }
    assert!(
        sent.elapsed() < Duration::from_millis(1500),
        "the wrong-key cancels took {:?}, so they may have arrived after pg_sleep(2) ended",
        sent.elapsed()
    );
    let reply = raw::reply(&mut stream).await;
    assert!(
        reply.errors.is_empty(),
        "a cancel with a wrong key interrupted the query: {:?}",
        reply.errors
    );
    assert_eq!(
        reply.rows.first().and_then(|r| r.get(1)).cloned().flatten(),
        Some("finished".to_owned()),
        "the query's answer: {reply:?}"
    );
    // The same packet with the right key does cancel, so the wrong keys were refused on
    // their merit and not for being malformed.
    stream
        .write_all(&raw::query("SELECT pg_sleep(30)"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cancel = TcpStream::connect(proxy.addr).await.unwrap();
    cancel
        .write_all(&raw::cancel_request(pid, secret))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), raw::reply(&mut stream))
        .await
        .expect("a cancel with the right key did not stop pg_sleep(30) within 5 s");
    assert_eq!(reply.errors, ["57014"], "the right key cancels: {reply:?}");
}

// ---------------------------------------------------------------------------------------
// Checkout timeout
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn checkout_times_out_with_53300_then_succeeds_once_a_connection_frees() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 2\ncheckout_timeout = \"1s\"").await;
    // Everyone logs in first: only the queries compete for the primary's two connections.
    let sleepers = [proxy.connect().await, proxy.connect().await];
    let late = proxy.connect().await;
    let hog = format!("{ON_PRIMARY} SELECT pg_sleep(4) AS checkout_hog");
    let probe = format!("{ON_PRIMARY} SELECT inet_server_port()");
    let primary = direct(0).await;

    let sleeping = futures_util::future::join_all(sleepers.iter().map(|c| c.simple_query(&hog)));
    let late_query = async {
        let running = "SELECT count(*) FROM pg_stat_activity \
                       WHERE usename = 'app' AND state = 'active' AND query LIKE '%checkout_hog%'";
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n: i64 = primary.query_one(running, &[]).await.unwrap().get(0);
            if n >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the two pg_sleep(4) queries never ran together on the primary ({n} seen)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let asked = Instant::now();
        let result = late.simple_query(&probe).await;
        (result, asked.elapsed())
    };
    let (slept, (result, waited)) = tokio::join!(sleeping, late_query);
    for r in slept {
        r.unwrap_or_else(|e| panic!("{hog}: {e}"));
    }
    match result {
        Ok(_) => panic!(
            "a third primary query ran after {waited:?} while max_pool_size = 2 connections were busy; expected 53300"
        ),
        Err(e) => assert_eq!(
            sqlstate(&e),
            "53300",
            "an exhausted pool should answer 53300 after checkout_timeout: {e}"
        ),
    }
    assert!(
        waited >= Duration::from_millis(900),
        "the checkout failed after {waited:?}, before checkout_timeout (1 s)"
    );
    // The sleeps are over: the same client gets a connection now.
    assert_eq!(
        one(&late, &probe).await,
        port_of(0).to_string(),
        "once a connection is free the client's primary query runs"
    );
}

// ---------------------------------------------------------------------------------------
// Pins
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pinned_clients_are_counted_and_keep_their_connection() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("max_pool_size = 2").await;
    assert_eq!(proxy.stats().pinned_clients, 0, "no client is pinned yet");
    let pinned = proxy.connect().await;
    let other = proxy.connect().await;
    pinned
        .batch_execute("CREATE TEMP TABLE pin_scratch (a int)")
        .await
        .unwrap();
    assert_eq!(
        proxy.stats().pinned_clients,
        1,
        "a client with a temp table holds a pinned connection"
    );
    // Read where the temp table lives, so this is the pinned connection's backend.
    let pin_pid = one(
        &pinned,
        "SELECT pg_backend_pid() FROM (SELECT count(*) FROM pin_scratch) t",
    )
    .await;
    for i in 1..=5i32 {
        // Another client uses the primary in between: a pinned connection is not lent out.
        let other_pid = one(&other, &format!("{ON_PRIMARY} SELECT pg_backend_pid()")).await;
        assert_ne!(
            other_pid, pin_pid,
            "round {i}: another client was served by the pinned client's connection"
        );
        pinned
            .execute("INSERT INTO pin_scratch VALUES ($1)", &[&i])
            .await
            .unwrap_or_else(|e| panic!("round {i}: insert into the temp table: {e}"));
        let row = pinned
            .query_one(
                "SELECT count(*), pg_backend_pid()::text, inet_server_port() FROM pin_scratch",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("round {i}: read of the temp table: {e}"));
        assert_eq!(
            row.get::<_, i64>(0),
            i64::from(i),
            "round {i}: rows in the temp table"
        );
        assert_eq!(
            row.get::<_, &str>(1),
            pin_pid,
            "round {i}: the pinned client changed server connection"
        );
        assert_eq!(
            row.get::<_, i32>(2),
            port_of(0),
            "round {i}: temp tables live on the primary"
        );
    }
    assert_eq!(
        proxy.stats().pinned_clients,
        1,
        "still pinned after 5 rounds"
    );
    pinned.batch_execute("DISCARD TEMP").await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || proxy.stats().pinned_clients == 0).await,
        "DISCARD TEMP releases the pin, but pinned_clients is {}",
        proxy.stats().pinned_clients
    );

    let leaver = proxy.connect().await;
    leaver
        .batch_execute("CREATE TEMP TABLE pin_leaver (a int)")
        .await
        .unwrap();
    assert_eq!(proxy.stats().pinned_clients, 1, "the leaver is pinned");
    drop(leaver);
    assert!(
        eventually(Duration::from_secs(5), || proxy.stats().pinned_clients == 0).await,
        "a pinned client that disconnects is no longer counted, but pinned_clients is {}",
        proxy.stats().pinned_clients
    );
}

// ---------------------------------------------------------------------------------------
// Routing in both pool modes
// ---------------------------------------------------------------------------------------

/// Writes and side effects on the primary, plain reads and read-only transactions on a
/// standby, a transaction on one node: returns the standby ports the client's plain reads
/// used.
async fn routing_smoke(proxy: &TestProxy, table: &str) -> HashSet<i32> {
    setup(
        proxy,
        &format!("CREATE TABLE IF NOT EXISTS {table} (port int)"),
    )
    .await;
    let client = proxy.connect().await;
    let mut reads = HashSet::new();
    for round in 0..6 {
        let write = one(
            &client,
            &format!("INSERT INTO {table} SELECT inet_server_port() RETURNING port"),
        )
        .await;
        assert_eq!(
            write,
            port_of(0).to_string(),
            "round {round}: an INSERT must run on the primary"
        );
        let read: i32 = one(&client, "SELECT inet_server_port()")
            .await
            .parse()
            .unwrap();
        assert!(
            standby_ports().contains(&read),
            "round {round}: a plain read ran on {}, not a standby",
            node_name(read)
        );
        reads.insert(read);
        let txid = one(
            &client,
            "SELECT inet_server_port() FROM (SELECT txid_current()) t",
        )
        .await;
        assert_eq!(
            txid,
            port_of(0).to_string(),
            "round {round}: txid_current() runs on the primary"
        );
    }
    client.batch_execute("BEGIN").await.unwrap();
    let first = one(&client, "SELECT inet_server_port()").await;
    let second = one(&client, "SELECT inet_server_port()").await;
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        (first.as_str(), second.as_str()),
        (
            port_of(0).to_string().as_str(),
            port_of(0).to_string().as_str()
        ),
        "a read-write transaction runs wholly on the primary"
    );
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let first: i32 = one(&client, "SELECT inet_server_port()")
        .await
        .parse()
        .unwrap();
    let second: i32 = one(&client, "SELECT inet_server_port()")
        .await
        .parse()
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert!(
        first == second && standby_ports().contains(&first),
        "a read-only transaction runs wholly on one standby: {} then {}",
        node_name(first),
        node_name(second)
    );
    reads
}

#[tokio::test]
async fn transaction_mode_balances_each_read_and_sends_writes_to_the_primary() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("mode = \"transaction\"").await;
    let reads = routing_smoke(&proxy, "pool_mode_transaction").await;
    assert_eq!(
        reads,
        standby_ports(),
        "in transaction mode one client's autocommit reads are balanced over both standbys"
    );
}

#[tokio::test]
async fn session_mode_keeps_routing_and_the_clients_connection() {
    let _shared = common::turns::shared().await;
    let proxy = pooled_proxy("mode = \"session\"").await;
    routing_smoke(&proxy, "pool_mode_session").await;
    let client = proxy.connect().await;
    let pid_sql = format!("{ON_PRIMARY} SELECT pg_backend_pid()");
    let first = one(&client, &pid_sql).await;
    let other = proxy.connect().await;
    one(&other, &pid_sql).await;
    assert_eq!(
        one(&client, &pid_sql).await,
        first,
        "in session mode a client keeps its primary connection for its lifetime"
    );
    client
        .batch_execute("CREATE TEMP TABLE session_scratch AS SELECT 1 AS a")
        .await
        .unwrap();
    assert_eq!(
        one(&client, "SELECT count(*) FROM session_scratch").await,
        "1",
        "a temp table lives on in session mode"
    );
}
