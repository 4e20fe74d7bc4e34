//! pgsplit as a sidecar: the binary configured by `PGSPLIT_*` variables alone, no file.

use crate::common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster;
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The pgsplit binary with only the given `PGSPLIT_*` variables: any the tests run under
/// would change its configuration.
fn pgsplit(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsplit"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGSPLIT_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG")
        .args(args)
        .envs(env.iter().cloned());
    cmd
}

/// Runs `cmd` to its end, killing it and failing the test after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("start pgsplit");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    // A thread reads both pipes to the end, so a chatty child never blocks on a full pipe.
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for pgsplit"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("pgsplit did not exit within {limit:?}");
        }
    }
}

/// A pgsplit process serving in the background; killed and reaped when dropped.
struct Sidecar {
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    fn start(env: &[(String, String)]) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("pgsplit.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = pgsplit(&[], env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pgsplit");
        Sidecar {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, with the log, if the process has ended.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgsplit exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The test cluster as a sidecar would be told about it: nothing but variables, in both
/// the full (`PGSPLIT_MONITOR_…`) and the short form (`PGSPLIT_PRIMARY_READS`).
fn cluster_env(port: u16) -> Vec<(String, String)> {
    let nodes: Vec<String> = cluster()
        .nodes()
        .iter()
        .map(|n| format!("{}@{}", n.name, n.address()))
        .collect();
    vars(&[
        ("PGSPLIT_LISTEN", &format!("127.0.0.1:{port}")),
        ("PGSPLIT_NODES", &nodes.join(",")),
        ("PGSPLIT_USERS", &format!("{APP_USER}:{APP_PASSWORD}")),
        ("PGSPLIT_MONITOR_USER", MONITOR_USER),
        ("PGSPLIT_MONITOR_PASSWORD", MONITOR_PASSWORD),
        ("PGSPLIT_MONITOR_LAG_CHECK_INTERVAL", "200ms"),
        // Reads never fall back to the primary, so an answered read came from a standby.
        ("PGSPLIT_PRIMARY_READS", "never"),
        ("PGSPLIT_MAX_POOL_SIZE", "4"),
        ("PGSPLIT_LOG_FORMAT", "json"),
    ])
}

async fn connect(port: u16) -> Result<Client, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname={APP_DATABASE} connect_timeout=2"
    );
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(&conninfo, NoTls),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

/// The first row of a simple query, bounded in time.
async fn row(client: &Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = tokio::time::timeout(Duration::from_secs(5), client.simple_query(sql))
        .await
        .map_err(|_| format!("{sql}: timed out"))?
        .map_err(|e| format!("{sql}: {}", common::sqlstate(&e)))?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

#[tokio::test]
async fn pgsplit_runs_from_environment_alone() {
    let port = free_port();
    let env = cluster_env(port);
    let mut sidecar = Sidecar::start(&env);

    let deadline = Instant::now() + Duration::from_secs(30);
    let writer = loop {
        sidecar.assert_running();
        match connect(port).await {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => {
                panic!("no connection through pgsplit: {e}\n{}", sidecar.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        writer.batch_execute(
            "DROP TABLE IF EXISTS sidecar_t; CREATE TABLE sidecar_t (id int); \
             INSERT INTO sidecar_t VALUES (1), (2)",
        ),
    )
    .await
    .expect("the write timed out")
    .unwrap_or_else(|e| {
        panic!(
            "a write through pgsplit failed (a standby would refuse it): {}",
            common::sqlstate(&e)
        )
    });
    for i in 1..cluster().nodes().len() {
        cluster().wait_for_replay(i).expect("standby replays");
    }

    // A new client: read-your-writes does not hold its reads back. Until the monitor has
    // seen the standbys, reads fail (primary_reads = never), so the first may be retried.
    let reader = connect(port).await.expect("second client");
    let sql = "SELECT pg_is_in_recovery(), (SELECT count(*) FROM sidecar_t)";
    let first = loop {
        sidecar.assert_running();
        match row(&reader, sql).await {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => {
                panic!("no read served: {e}\n{}", sidecar.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(
        first,
        ["t", "2"],
        "read served by a standby that has the rows"
    );
    for _ in 0..4 {
        let r = row(&reader, sql).await.expect("autocommit read");
        assert_eq!(r, ["t", "2"], "every autocommit read runs on a standby");
    }
    let log = sidecar.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("pgsplit listening")),
        "PGSPLIT_LOG_FORMAT=json gives JSON lines:\n{log}"
    );

    let printed = run_bounded(pgsplit(&["config", "print"], &env), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{}", common::text(&printed));
    for node in cluster().nodes() {
        let (name, address) = (
            format!("name = \"{}\"", node.name),
            format!("address = \"{}\"", node.address()),
        );
        assert!(
            text.contains(&name) && text.contains(&address),
            "{name} {address}:\n{text}"
        );
    }
    assert!(text.contains("password = \"********\""), "{text}");
    assert!(text.contains("primary_reads = \"never\""), "{text}");
    for secret in [APP_PASSWORD, MONITOR_PASSWORD] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
}

#[test]
fn bad_environment_stops_pgsplit_naming_the_variable() {
    let base = [
        ("PGSPLIT_NODES", "pg1@127.0.0.1:1"),
        ("PGSPLIT_USERS", "app:secret"),
    ];
    let cases = [
        (
            ("PGSPLIT_MAX_LAG_BYTES", "abc"),
            "PGSPLIT_MAX_LAG_BYTES: \"abc\" is not an integer",
        ),
        (
            ("PGSPLIT_MAX_LAG_BYTE", "1024"),
            "PGSPLIT_MAX_LAG_BYTE: no such setting",
        ),
        (
            ("PGSPLIT_POOL_MAX_POOL_SIZE", "0"),
            "must be at least 1 (set by PGSPLIT_POOL_MAX_POOL_SIZE)",
        ),
    ];
    for (bad, expected) in cases {
        let mut env = vars(&base);
        env.extend(vars(&[bad]));
        let out = run_bounded(pgsplit(&[], &env), Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{bad:?}: expected a failure saying {expected:?}; {}",
            common::text(&out)
        );
        assert!(!stderr.contains("secret"), "a password in: {stderr}");
    }
    let out = run_bounded(pgsplit(&[], &[]), Duration::from_secs(10));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nothing to do"),
        "no file and no variables: {}",
        common::text(&out)
    );
}
