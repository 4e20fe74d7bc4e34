//! The admin console and hot reload, on the real cluster: every SHOW through psql, BAN and
//! PAUSE seen by the servers themselves, and reloads (RELOAD and SIGHUP) that add and
//! remove nodes while pgbench runs.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cluster, own_cluster, sqlstate, text, TestProxy};
use pgsplit_cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};

/// Makes `app` an admin user; goes before the demo configuration's tables.
const ADMIN: &str = "admin_users = [\"app\"]\n";

type Row = HashMap<String, Option<String>>;

/// The server's message of an error.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

fn column<'a>(row: &'a Row, name: &str) -> &'a str {
    row.get(name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .as_deref()
        .unwrap_or("NULL")
}

fn node_row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter()
        .find(|r| column(r, "name") == name)
        .unwrap_or_else(|| panic!("SHOW NODES has no row for {name}: {rows:?}"))
}

/// A database of the app user's own, replicated to the standbys, so what the servers
/// count for it is this test's traffic alone.
fn create_database(cluster: &Cluster, name: &str) {
    cluster
        .sql(
            0,
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {APP_USER}"),
        )
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    for i in 1..cluster.nodes().len() {
        cluster.wait_for_replay(i).unwrap();
    }
}

/// Transactions committed in `database` on node `node`, as its statistics say.
fn xact_commits(cluster: &Cluster, node: usize, database: &str) -> i64 {
    let out = cluster
        .sql(
            node,
            "postgres",
            &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'"),
        )
        .unwrap();
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("xact_commit of {database} on node {node}: {out:?}"))
}

/// Backends connected to `database` on node `node`.
fn backends(cluster: &Cluster, node: usize, database: &str) -> i64 {
    let out = cluster
        .sql(
            node,
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"),
        )
        .unwrap();
    out.trim().parse().unwrap_or(-1)
}

async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` autocommit reads in `database` through the proxy.
async fn reads(proxy: &TestProxy, database: &str, n: usize) {
    let client = proxy
        .connect_as(APP_USER, APP_PASSWORD, database)
        .await
        .expect("connect");
    for _ in 0..n {
        client.simple_query("SELECT 1").await.expect("read");
    }
}

/// Waits until the proxy has closed its connections to `database` (idle_timeout), so
/// the servers' statistics, flushed when a backend exits, are final.
async fn pools_closed(proxy: &TestProxy, database: &str) {
    eventually(
        "the pools to close their idle connections",
        Duration::from_secs(20),
        || {
            proxy
                .pools()
                .iter()
                .filter(|p| p.database == database)
                .all(|p| p.open == 0)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_every_show_command_in_the_console() {
    let proxy = TestProxy::start_with(ADMIN, "").await;
    let names: Vec<String> = cluster().nodes().iter().map(|n| n.name.clone()).collect();
    // Something to list in SHOW POOLS, SHOW SERVERS and SHOW STATS.
    reads(&proxy, APP_DATABASE, 5).await;
    let cases: &[(&str, &[&str])] = &[
        (
            "SHOW NODES",
            &["primary", "standby", "eligible", "lag_bytes"],
        ),
        ("SHOW POOLS", &["sv_idle", "transaction", APP_DATABASE]),
        ("SHOW CLIENTS", &["application_name", "connect_time"]),
        ("SHOW SERVERS", &["idle", "remote_pid"]),
        (
            "SHOW STATS",
            &["total_query_count", "p99_query_time", "read"],
        ),
        ("SHOW CONFIG", &["monitor.max_lag_bytes", "********"]),
        ("SHOW VERSION", &["pgsplit"]),
        ("SHOW HELP", &["BAN node", "RELOAD"]),
    ];
    for (command, expected) in cases {
        let out = proxy.run("psql", &["-X", "-d", "pgsplit", "-c", command]);
        let shown = text(&out);
        assert!(out.status.success(), "{command}: {shown}");
        for needle in *expected {
            assert!(
                shown.contains(needle),
                "{command} lacks {needle:?}: {shown}"
            );
        }
    }
    let nodes = proxy.console("SHOW NODES").await.unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert_eq!(column(node_row(&nodes, &names[0]), "role"), "primary");
    for standby in &names[1..] {
        let row = node_row(&nodes, standby);
        assert_eq!(column(row, "role"), "standby", "{row:?}");
        assert_eq!(column(row, "health"), "up", "{row:?}");
        assert_eq!(column(row, "eligible"), "yes", "{row:?}");
    }
    let config = proxy.console("SHOW CONFIG").await.unwrap();
    assert!(
        !format!("{config:?}").contains(APP_PASSWORD),
        "SHOW CONFIG must mask passwords"
    );
}

/// "Why does this query hit my primary?", answered in the console without reading logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_route_in_psql_says_why_a_statement_goes_to_the_primary() {
    let proxy = TestProxy::start_with(ADMIN, "").await;
    // The database clients use, whose catalog EXPLAIN ROUTE reads by default.
    reads(&proxy, APP_DATABASE, 2).await;
    let explain = |sql: &str| {
        let out = proxy.run(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-F",
                "|",
                "-d",
                "pgsplit",
                "-c",
                &format!("EXPLAIN ROUTE {sql}"),
            ],
        );
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let locking = explain("SELECT * FROM pgbench_accounts WHERE aid = 1 FOR UPDATE");
    assert!(locking.starts_with("primary|locking_read|"), "{locking}");
    let read = explain("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
    assert!(read.starts_with("standby"), "{read}");
    assert!(read.contains("|read|"), "{read}");
    assert!(read.ends_with(&format!("|{APP_DATABASE}|loaded")), "{read}");
    let pinned = explain("SELECT pg_advisory_lock(1); -- ; in a comment");
    assert!(pinned.contains("session advisory lock"), "{pinned}");
    // A statement clients ran is answered from the cache.
    let client = proxy.connect().await;
    client.simple_query("SELECT 41 + 1").await.unwrap();
    let cached = proxy.console("EXPLAIN ROUTE SELECT 41 + 1").await.unwrap();
    assert_eq!(cached[0]["cached"].as_deref(), Some("yes"), "{cached:?}");
    let err = proxy
        .console("EXPLAIN ROUTE DATABASE app")
        .await
        .expect_err("no statement");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("needs a statement"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_users_get_the_console_and_bad_commands_get_clear_errors() {
    let proxy = TestProxy::start_with(ADMIN, "").await;
    let superuser = pgsplit_cluster::SUPERUSER;
    let Err(refused) = proxy
        .connect_as(superuser, cluster().superuser_password(), "pgsplit")
        .await
    else {
        panic!("a user not in admin_users must be refused");
    };
    assert_eq!(sqlstate(&refused), "28000", "{refused}");
    assert!(
        message(&refused).contains("admin_users"),
        "the message should say why: {refused:?}"
    );

    let client = proxy
        .connect_as(APP_USER, APP_PASSWORD, "pgsplit")
        .await
        .expect("admin login");
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    assert!(
        message(&e).contains("SHOW NODES") && message(&e).contains("UNBAN"),
        "the error should list the commands: {e:?}"
    );
    let e = client.simple_query("BAN nosuchnode").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704", "{e}");
    // tokio-postgres' query() uses the extended protocol, which the console refuses.
    let e = client.query("SHOW VERSION", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e}");
    let rows = client
        .simple_query("SHOW VERSION")
        .await
        .expect("still usable");
    assert!(!rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_nodes_reports_the_growing_lag_of_a_paused_standby_and_its_exclusion() {
    const PAUSED: usize = 1;
    let cluster = own_cluster().await;
    let proxy = TestProxy::start_for(
        &cluster,
        ADMIN,
        "max_lag_bytes = 65536\nlag_check_interval = \"200ms\"",
        "",
    )
    .await;
    let name = cluster.nodes()[PAUSED].name.clone();
    cluster
        .sql(0, APP_DATABASE, "CREATE TABLE filler (x text)")
        .unwrap();
    cluster.pause_replay(PAUSED).unwrap();
    let mut lags = Vec::new();
    for _ in 0..3 {
        // About 200 kB of WAL per round.
        cluster
            .sql(
                0,
                APP_DATABASE,
                "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 200)",
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let nodes = proxy.console("SHOW NODES").await.unwrap();
        let row = node_row(&nodes, &name);
        let lag: u64 = column(row, "lag_bytes")
            .parse()
            .unwrap_or_else(|_| panic!("lag_bytes of the paused standby: {row:?}"));
        lags.push((lag, column(row, "eligible").to_owned()));
    }
    eprintln!("lag of the paused standby per round: {lags:?}");
    assert!(
        lags.windows(2).all(|w| w[1].0 > w[0].0),
        "lag should grow while replay is paused: {lags:?}"
    );
    let (last_lag, eligible) = lags.last().cloned().unwrap_or_default();
    assert!(last_lag > 65536, "{lags:?}");
    assert_eq!(eligible, "no", "a standby over the bound serves no reads");

    cluster.resume_replay(PAUSED).unwrap();
    cluster.wait_for_replay(PAUSED).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = proxy.console("SHOW NODES").await.unwrap();
        if column(node_row(&nodes, &name), "eligible") == "yes" {
            break;
        }
        assert!(Instant::now() < deadline, "not re-admitted: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_standby_gets_no_new_reads_until_unbanned() {
    const BANNED: usize = 1;
    const OTHER: usize = 2;
    let cluster = cluster();
    create_database(cluster, "ban_db");
    let proxy = TestProxy::start_with(ADMIN, "[pool]\nidle_timeout = \"1s\"\n").await;
    let name = cluster.nodes()[BANNED].name.clone();
    proxy.console(&format!("BAN {name}")).await.unwrap();
    let nodes = proxy.console("SHOW NODES").await.unwrap();
    let row = node_row(&nodes, &name);
    assert_eq!(column(row, "eligible"), "no", "{row:?}");
    assert_eq!(column(row, "ban_reason"), "BAN by an operator", "{row:?}");

    let before = (
        xact_commits(cluster, BANNED, "ban_db"),
        xact_commits(cluster, OTHER, "ban_db"),
    );
    reads(&proxy, "ban_db", 100).await;
    pools_closed(&proxy, "ban_db").await;
    let banned = (
        xact_commits(cluster, BANNED, "ban_db"),
        xact_commits(cluster, OTHER, "ban_db"),
    );
    assert_eq!(
        banned.0, before.0,
        "the banned standby ran transactions in ban_db: {before:?} -> {banned:?}"
    );
    assert!(
        banned.1 >= before.1 + 100,
        "the other standby should have served the reads: {before:?} -> {banned:?}"
    );

    proxy.console(&format!("UNBAN {name}")).await.unwrap();
    reads(&proxy, "ban_db", 100).await;
    pools_closed(&proxy, "ban_db").await;
    let unbanned = xact_commits(cluster, BANNED, "ban_db");
    assert!(
        unbanned >= banned.0 + 40,
        "reads should come back to the unbanned standby: {} -> {unbanned}",
        banned.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_running_transactions_and_holds_new_work_until_resume() {
    let proxy = TestProxy::start_with(ADMIN, "").await;
    let primary = cluster().nodes()[0].name.clone();
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    a.batch_execute("CREATE TABLE IF NOT EXISTS pause_t (x int)")
        .await
        .unwrap();
    a.batch_execute("BEGIN; INSERT INTO pause_t VALUES (1)")
        .await
        .unwrap();

    let console = proxy
        .connect_as(APP_USER, APP_PASSWORD, "pgsplit")
        .await
        .expect("console");
    let pause_node = format!("PAUSE {primary}");
    let pause = tokio::spawn(async move {
        console
            .simple_query(&pause_node)
            .await
            .map(|_| Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE must wait for the open transaction"
    );
    let committed = Instant::now();
    a.batch_execute("COMMIT").await.unwrap();
    let paused_at = tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE returns once the transaction ended")
        .expect("no panic")
        .expect("PAUSE succeeds");
    assert!(paused_at >= committed);
    let nodes = proxy.console("SHOW NODES").await.unwrap();
    assert_eq!(column(node_row(&nodes, &primary), "paused"), "yes");

    let write = tokio::spawn(async move { b.execute("INSERT INTO pause_t VALUES (2)", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !write.is_finished(),
        "a write must wait while the primary is paused"
    );
    proxy.console(&format!("RESUME {primary}")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the write runs after RESUME")
        .expect("no panic")
        .expect("the write succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_servers_and_pools_list_a_client_in_a_transaction() {
    let proxy = TestProxy::start_with(ADMIN, "").await;
    let primary = cluster().nodes()[0].name.clone();
    let client = proxy.connect().await;
    client
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let clients = proxy.console("SHOW CLIENTS").await.unwrap();
    let active: Vec<&Row> = clients
        .iter()
        .filter(|r| column(r, "state") == "active")
        .collect();
    assert_eq!(active.len(), 1, "{clients:?}");
    assert_eq!(column(active[0], "node"), primary);
    assert_eq!(column(active[0], "database"), APP_DATABASE);
    let pid = column(active[0], "remote_pid").to_owned();

    let servers = proxy.console("SHOW SERVERS").await.unwrap();
    let serving = servers
        .iter()
        .find(|r| column(r, "state") == "active")
        .unwrap_or_else(|| panic!("no active server: {servers:?}"));
    assert_eq!(column(serving, "remote_pid"), pid);
    assert_eq!(column(serving, "node"), primary);
    let backend_pid = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
    assert_eq!(
        backend_pid.as_deref(),
        Some(pid.as_str()),
        "the pid is the backend's"
    );

    let pools = proxy.console("SHOW POOLS").await.unwrap();
    let pool = pools
        .iter()
        .find(|r| column(r, "node") == primary && column(r, "database") == APP_DATABASE)
        .unwrap_or_else(|| panic!("no pool for the primary: {pools:?}"));
    assert_eq!(column(pool, "cl_active"), "1", "{pool:?}");
    assert_eq!(column(pool, "sv_active"), "1", "{pool:?}");
    client.batch_execute("COMMIT").await.unwrap();
}

/// The demo configuration for the shared cluster listening on `listen`, without the
/// standbys named in `without`.
fn config_file(path: &Path, listen: &str, without: &[&str], extra_top: &str) {
    let mut text = pgsplit::demo::config_text(cluster(), listen);
    for name in without {
        let entry = format!(
            "\n[[nodes]]\nname = \"{name}\"\naddress = \"{}\"\n",
            cluster()
                .nodes()
                .iter()
                .find(|n| n.name == *name)
                .map(|n| n.address())
                .unwrap_or_default()
        );
        assert!(text.contains(&entry), "no entry for {name} in {text}");
        text = text.replace(&entry, "");
    }
    std::fs::write(path, format!("{ADMIN}{extra_top}{text}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_on_reload_is_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsplit.toml");
    config_file(&path, "127.0.0.1:0", &[], "");
    let proxy = TestProxy::start_reloadable(path.clone()).await;
    let setting = |rows: &[Row], key: &str| -> String {
        rows.iter()
            .find(|r| column(r, "key") == key)
            .map(|r| column(r, "value").to_owned())
            .unwrap_or_else(|| panic!("SHOW CONFIG has no {key}"))
    };

    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen("[monitor]\n", "[monitor]\nmax_lag_bytes = 123456\n", 1);
    std::fs::write(&path, &changed).unwrap();
    proxy.console("RELOAD").await.expect("a valid reload");
    let config = proxy.console("SHOW CONFIG").await.unwrap();
    assert_eq!(setting(&config, "monitor.max_lag_bytes"), "123456");

    std::fs::write(
        &path,
        changed.replacen("[monitor]\n", "[pool]\nmax_pool_size = 0\n\n[monitor]\n", 1),
    )
    .unwrap();
    let e = proxy.console("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&e), "F0000", "{e}");
    assert!(
        message(&e).contains("pool.max_pool_size"),
        "the error names the key: {e:?}"
    );
    let direct = proxy.reload().unwrap_err();
    assert!(direct.contains("pool.max_pool_size"), "{direct}");
    let config = proxy.console("SHOW CONFIG").await.unwrap();
    assert_eq!(setting(&config, "pool.max_pool_size"), "20");
    assert_eq!(setting(&config, "monitor.max_lag_bytes"), "123456");
    let client = proxy.connect().await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("the old configuration keeps serving");
}

/// The pgsplit binary, killed when the test ends.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn sighup(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_removes_and_adds_a_standby_under_pgbench_without_failures() {
    const REMOVED: usize = 2;
    let cluster = cluster();
    create_database(cluster, "reload_db");
    let primary_port = cluster.nodes()[0].port.to_string();
    let init = Command::new(cluster.pg_bin().join("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port,
        ])
        .args(["-U", APP_USER, "reload_db"])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .unwrap();
    assert!(init.status.success(), "pgbench -i: {}", text(&init));
    for i in 1..cluster.nodes().len() {
        cluster.wait_for_replay(i).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgsplit.toml");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let removed = cluster.nodes()[REMOVED].name.clone();
    config_file(&path, &listen, &[], "");
    let log = std::fs::File::create(dir.path().join("pgsplit.log")).unwrap();
    let child = Spawned(
        Command::new(env!("CARGO_BIN_EXE_pgsplit"))
            .arg("--config")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pgsplit"),
    );
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname=reload_db"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "pgsplit did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let port_arg = port.to_string();
    let pgbench = Command::new(cluster.pg_bin().join("pgbench"))
        .args(["-S", "-c", "8", "-j", "2", "-T", "20", "-n"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port_arg,
            "-U",
            APP_USER,
            "reload_db",
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        backends(cluster, REMOVED, "reload_db") > 0,
        "before the reload both standbys serve reads"
    );

    config_file(&path, &listen, &[&removed], "");
    sighup(&child.0);
    eventually(
        "the removed standby's connections to close",
        Duration::from_secs(10),
        || backends(cluster, REMOVED, "reload_db") == 0,
    )
    .await;
    let out_before = xact_commits(cluster, REMOVED, "reload_db");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let out_after = xact_commits(cluster, REMOVED, "reload_db");
    assert_eq!(
        (out_after, backends(cluster, REMOVED, "reload_db")),
        (out_before, 0),
        "the removed standby got new reads while out of the configuration"
    );

    config_file(&path, &listen, &[], "");
    sighup(&child.0);
    eventually(
        "reads to come back to the re-added standby",
        Duration::from_secs(10),
        || backends(cluster, REMOVED, "reload_db") > 0,
    )
    .await;

    let out = tokio::task::spawn_blocking(move || pgbench.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = text(&out);
    eprintln!("pgbench across two reloads:\n{report}");
    let log = std::fs::read_to_string(dir.path().join("pgsplit.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "pgbench failed: {report}\npgsplit log:\n{log}"
    );
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
    assert!(
        !report.contains("aborted") && !report.to_lowercase().contains("error"),
        "a client was disconnected: {report}"
    );
    assert!(
        log.contains("configuration reloaded"),
        "the reload is logged: {log}"
    );
    drop(child);
}
