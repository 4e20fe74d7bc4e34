//! Integration tests of the throwaway replication cluster harness against real PostgreSQL.
//!
//! These fail (never skip) when PostgreSQL is missing: the harness is what every other
//! integration test stands on, so a silent skip would hide a broken environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgsplit_cluster::{
    Cluster, StopMode, APP_DATABASE, APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER,
};

/// Set (to the child's role) when this test binary re-executes itself as a child process.
const CHILD_ENV: &str = "PGSPLIT_CLUSTER_TEST_CHILD";

// A cluster must be usable from a `static` (e.g. one shared by a whole test binary).
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Cluster>();
};

/// Re-runs this test binary as a child executing only the ignored `child_process` test.
fn run_child(role: &str, extra_env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args(["--exact", "child_process", "--ignored", "--nocapture"])
        .env(CHILD_ENV, role)
        .envs(extra_env.iter().copied())
        .output()
        .expect("run the child test process")
}

fn start_cluster() -> Cluster {
    let started = Instant::now();
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("cannot start a test cluster: {e}"));
    eprintln!("3-node cluster ready in {:?}", started.elapsed());
    cluster
}

fn sql(cluster: &Cluster, node: usize, sql: &str) -> String {
    cluster
        .sql(node, APP_DATABASE, sql)
        .unwrap_or_else(|e| panic!("SQL on node {node} failed: {e}"))
}

fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Alive and not a zombie (PID 1 here may never reap orphaned postmasters).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
        .is_some_and(|rest| !rest.starts_with(['Z', 'X']))
}

#[test]
fn a_fresh_cluster_streams_to_every_standby() {
    let cluster = start_cluster();
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.primary().name, "primary");
    let names: Vec<&str> = cluster.standbys().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["standby1", "standby2"]);

    let streaming = sql(
        &cluster,
        0,
        "SELECT application_name FROM pg_stat_replication \
         WHERE state = 'streaming' ORDER BY 1",
    );
    assert_eq!(streaming, "standby1\nstandby2");
    let slots = sql(
        &cluster,
        0,
        "SELECT slot_name FROM pg_replication_slots WHERE active ORDER BY 1",
    );
    assert_eq!(slots, "standby1\nstandby2");
    assert_eq!(sql(&cluster, 0, "SELECT pg_is_in_recovery()"), "f");

    sql(
        &cluster,
        0,
        "CREATE TABLE fresh (id int); INSERT INTO fresh VALUES (1), (2)",
    );
    for standby in [1, 2] {
        assert_eq!(sql(&cluster, standby, "SELECT pg_is_in_recovery()"), "t");
        cluster
            .wait_for_replay(standby)
            .expect("standby catches up");
        assert_eq!(sql(&cluster, standby, "SELECT sum(id) FROM fresh"), "3");
    }
}

#[test]
fn a_paused_standby_falls_behind_and_catches_up_after_resume() {
    let cluster = start_cluster();
    sql(&cluster, 0, "CREATE TABLE t (v text)");
    cluster.wait_for_replay(1).expect("standby1 catches up");
    cluster.wait_for_replay(2).expect("standby2 catches up");

    cluster.pause_replay(1).expect("pause standby1");
    sql(&cluster, 0, "INSERT INTO t VALUES ('after pause')");
    cluster.wait_for_replay(2).expect("standby2 catches up");
    assert_eq!(sql(&cluster, 2, "SELECT count(*) FROM t"), "1");
    assert_eq!(sql(&cluster, 1, "SELECT count(*) FROM t"), "0");

    cluster.resume_replay(1).expect("resume standby1");
    cluster
        .wait_for_replay(1)
        .expect("standby1 catches up after resume");
    assert_eq!(sql(&cluster, 1, "SELECT count(*) FROM t"), "1");
}

#[test]
fn a_promoted_standby_accepts_writes() {
    let cluster = start_cluster();
    sql(
        &cluster,
        0,
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    );
    cluster.wait_for_replay(1).expect("standby1 catches up");

    cluster.stop(0, StopMode::Fast).expect("stop the primary");
    assert!(!cluster.is_running(0));
    let err = cluster
        .sql(1, APP_DATABASE, "INSERT INTO t VALUES (2)")
        .expect_err("a standby must refuse writes");
    assert!(err.to_string().contains("read-only"), "{err}");

    cluster.promote(1).expect("promote standby1");
    assert_eq!(sql(&cluster, 1, "SELECT pg_is_in_recovery()"), "f");
    sql(&cluster, 1, "INSERT INTO t VALUES (2)");
    assert_eq!(sql(&cluster, 1, "SELECT sum(v) FROM t"), "3");
    assert_eq!(cluster.current_primary().expect("a primary"), 1);
}

#[test]
fn stopped_node_can_be_started_again() {
    let cluster = start_cluster();
    sql(&cluster, 0, "CREATE TABLE t (v int)");

    cluster.stop(2, StopMode::Immediate).expect("stop standby2");
    assert!(!cluster.is_running(2));
    assert!(cluster.sql(2, APP_DATABASE, "SELECT 1").is_err());
    cluster
        .stop(2, StopMode::Fast)
        .expect("stopping twice is a no-op");
    sql(&cluster, 0, "INSERT INTO t VALUES (42)");

    cluster.start_node(2).expect("restart standby2");
    assert!(cluster.is_running(2));
    cluster.wait_for_replay(2).expect("standby2 catches up");
    assert_eq!(sql(&cluster, 2, "SELECT sum(v) FROM t"), "42");

    // The primary comes back on the same port, so standbys reconnect by themselves.
    let port = cluster.primary().port;
    cluster.stop(0, StopMode::Fast).expect("stop the primary");
    cluster.start_node(0).expect("restart the primary");
    assert_eq!(cluster.primary().port, port);
    sql(&cluster, 0, "INSERT INTO t VALUES (1)");
    cluster
        .wait_for_replay(1)
        .expect("standby1 follows the restarted primary");
    assert_eq!(sql(&cluster, 1, "SELECT sum(v) FROM t"), "43");
}

#[test]
fn app_role_requires_a_password() {
    let cluster = start_cluster();
    let no_password = cluster.sql_as(0, APP_USER, None, APP_DATABASE, "SELECT 1");
    let err = no_password.expect_err("login without a password must fail");
    assert!(err.to_string().contains("password"), "{err}");
    let wrong = cluster.sql_as(0, APP_USER, Some("wrong"), APP_DATABASE, "SELECT 1");
    assert!(wrong.is_err(), "a wrong password must fail");

    let who = cluster
        .sql_as(
            0,
            APP_USER,
            Some(APP_PASSWORD),
            APP_DATABASE,
            "SELECT current_user",
        )
        .expect("login with the password");
    assert_eq!(who, APP_USER);
    let verifier = sql(
        &cluster,
        0,
        "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'",
    );
    assert_eq!(verifier, "t");
    let is_monitor = cluster
        .sql_as(
            1,
            MONITOR_USER,
            Some(MONITOR_PASSWORD),
            "postgres",
            "SELECT pg_has_role('pg_monitor', 'member')",
        )
        .expect("monitor logs in to a standby");
    assert_eq!(is_monitor, "t");

    // The URI form is what the proxy's own client code will be handed.
    let uri = cluster.uri(1, APP_USER, APP_PASSWORD, APP_DATABASE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let in_recovery: bool = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {uri}: {e}"));
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("query over the URI");
        row.get(0)
    });
    assert!(in_recovery);
}

#[test]
fn dropping_a_cluster_stops_nodes_and_removes_the_directory() {
    let cluster = start_cluster();
    let base = cluster.base_dir().to_path_buf();
    let pids: Vec<i32> = cluster
        .nodes()
        .iter()
        .map(|n| postmaster_pid(&n.data_dir).expect("running node has a pid"))
        .collect();
    drop(cluster);
    assert!(!base.exists(), "{} still exists", base.display());
    for pid in pids {
        assert!(!process_alive(pid), "postmaster {pid} survived the drop");
    }
}

/// Runs inside a child test process started by `run_child`.
#[test]
#[ignore = "helper: only does something when re-executed by another test"]
fn child_process() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("watchdog") => {
            let cluster = start_cluster();
            println!("BASE {}", cluster.base_dir().display());
            for node in cluster.nodes() {
                if let Some(pid) = postmaster_pid(&node.data_dir) {
                    println!("PID {pid}");
                }
            }
            // Die without running destructors, as a killed or crashed process would.
            std::process::abort();
        }
        Ok("start") => match Cluster::start() {
            Ok(_) => println!("STARTED"),
            Err(e) => println!("ERROR {e}"),
        },
        _ => {}
    }
}

#[test]
fn missing_postgresql_is_a_loud_error() {
    let out = run_child("start", &[("PG_BIN", "/nonexistent/pgsplit/bin")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ERROR PostgreSQL server binaries not found")
            && stdout.contains("/nonexistent/pgsplit/bin/initdb")
            && stdout.contains("PG_BIN"),
        "child stdout:\n{stdout}"
    );
}

#[test]
fn a_dead_owner_is_cleaned_up_by_the_watchdog() {
    let out = run_child("watchdog", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let base = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BASE "))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "child printed no base dir; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let pids: Vec<i32> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PID ")?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 3, "child stdout:\n{stdout}");
    assert!(!out.status.success(), "the child must have aborted");

    let deadline = Instant::now() + Duration::from_secs(20);
    while (base.exists() || pids.iter().any(|p| process_alive(*p))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!base.exists(), "watchdog left {}", base.display());
    for pid in pids {
        assert!(
            !process_alive(pid),
            "watchdog left postmaster {pid} running"
        );
    }
}
