//! Faults under load on a real cluster. Each scenario runs `pgbench -S` and a probe of
//! reading and writing clients through pgsplit while a node is killed, frozen, left
//! behind, stopped and replaced by a promoted standby, or pgsplit itself restarts. Reads
//! must not fail while some node can serve them; writes fail fast, with 08006, only while
//! no primary exists. Each prints what clients saw and how long routing took to be right
//! again (the figures quoted in docs/operations.md).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sqlstate, TestProxy};
use pgsplit::topology::{Role, Topology};
use pgsplit_cluster::{Cluster, StopMode, APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// Checks often, bans briefly, and counts a standby 2 s behind as lagging, so each
/// scenario's recovery shows within seconds.
const MONITOR: &str = "lag_check_interval = \"200ms\"\nquery_timeout = \"1s\"\n\
    max_ban = \"2s\"\nmax_lag_time = \"2s\"";

/// Longest any single probe operation may take before it counts as hung.
const OP_LIMIT: Duration = Duration::from_secs(30);

/// A cluster with pgbench tables and the probe's table, and pgsplit in front of it.
async fn cluster_under(top: &str) -> (Cluster, TestProxy) {
    let cluster = common::own_cluster().await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.pgbench_init(1).expect("pgbench -i");
        cluster
            .sql_as(
                0,
                APP_USER,
                Some(APP_PASSWORD),
                APP_DATABASE,
                "CREATE TABLE fault_writes (client int, n int)",
            )
            .expect("create fault_writes");
        for i in 1..cluster.nodes().len() {
            cluster.wait_for_replay(i).expect("standby catches up");
        }
        cluster
    })
    .await
    .expect("setup task");
    let proxy = TestProxy::start_for(&cluster, top, MONITOR, "").await;
    settle(&proxy, &cluster).await;
    (cluster, proxy)
}

/// Waits until the monitor sees the whole cluster: one primary, every standby eligible.
async fn settle(proxy: &TestProxy, cluster: &Cluster) {
    let nodes = cluster.nodes().len();
    until(proxy, Duration::from_secs(20), "every node eligible", |t| {
        t.primary_index() == Some(0) && t.nodes.iter().take(nodes).all(|n| n.eligible)
    })
    .await;
}

/// Polls pgsplit's topology until `ready` holds; how long that took.
async fn until(
    proxy: &TestProxy,
    limit: Duration,
    what: &str,
    ready: impl Fn(&Topology) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if ready(&proxy.topology()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; topology: {:#?}",
            proxy.topology().nodes
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// `pgbench -S` through pgsplit, in the background.
struct Bench {
    child: tokio::process::Child,
}

/// What pgbench reported.
#[derive(Debug)]
struct BenchResult {
    success: bool,
    processed: u64,
    failed: u64,
    aborted: usize,
    /// The lowest and the median of its per-second throughput reports.
    tps: (f64, f64),
    output: String,
}

impl Bench {
    fn start(pg_bin: &Path, port: u16, seconds: u64) -> Bench {
        let child = tokio::process::Command::new(pg_bin.join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
            .args(["-S", "-n", "-c", "4", "-j", "2", "-P", "1"])
            .args(["-T", &seconds.to_string(), APP_DATABASE])
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGPASSFILE", "/nonexistent")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start pgbench");
        Bench { child }
    }

    async fn finish(self) -> BenchResult {
        let out = timeout(Duration::from_secs(120), self.child.wait_with_output())
            .await
            .expect("pgbench ends")
            .expect("pgbench output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let number = |prefix: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let mut tps: Vec<f64> = stderr
            .lines()
            .filter(|l| l.starts_with("progress:"))
            .filter_map(|l| l.split(", ").nth(1)?.strip_suffix(" tps")?.parse().ok())
            .collect();
        tps.sort_by(f64::total_cmp);
        BenchResult {
            success: out.status.success(),
            processed: number("number of transactions actually processed: "),
            failed: number("number of failed transactions: "),
            aborted: stderr.matches("aborted").count(),
            tps: (
                tps.first().copied().unwrap_or(0.0),
                tps.get(tps.len() / 2).copied().unwrap_or(0.0),
            ),
            output: format!("{stdout}\n{stderr}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Connect,
    Read,
    Write,
}

/// One probe operation: when it started (since the scenario began), how long it took,
/// and the SQLSTATE it failed with.
#[derive(Debug)]
struct Event {
    at: Duration,
    op: Op,
    took: Duration,
    error: Option<String>,
}

/// Clients reading and writing through pgsplit, reconnecting after errors, recording
/// every operation.
struct Probe {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Probe {
    fn start(port: u16, clients: i32, t0: Instant) -> Probe {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conninfo = format!(
            "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} \
             dbname={APP_DATABASE} connect_timeout=10"
        );
        let tasks = (0..clients)
            .map(|client| {
                let (events, stop, conninfo) =
                    (Arc::clone(&events), Arc::clone(&stop), conninfo.clone());
                tokio::spawn(probe_client(client, conninfo, t0, events, stop))
            })
            .collect();
        Probe {
            events,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            timeout(OP_LIMIT + Duration::from_secs(5), task)
                .await
                .expect("probe client ends")
                .expect("probe client task");
        }
        let events = std::mem::take(&mut *self.events.lock().expect("events"));
        Seen { events }
    }
}

async fn probe_client(
    client_id: i32,
    conninfo: String,
    t0: Instant,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
) {
    let record = |op, start: Instant, error: Option<String>| {
        let event = Event {
            at: start - t0,
            op,
            took: start.elapsed(),
            error,
        };
        events.lock().expect("events").push(event);
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let connected = timeout(
            OP_LIMIT,
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
        )
        .await;
        let client = match connected {
            Ok(Ok((client, conn))) => {
                tokio::spawn(conn);
                record(Op::Connect, start, None);
                client
            }
            Ok(Err(e)) => {
                record(Op::Connect, start, Some(sqlstate(&e)));
                sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                record(Op::Connect, start, Some("hung".into()));
                continue;
            }
        };
        while !stop.load(Ordering::SeqCst) && !client.is_closed() {
            n += 1;
            let write = n % 4 == 0;
            let start = Instant::now();
            let outcome = if write {
                let sql = "INSERT INTO fault_writes VALUES ($1, $2) RETURNING n";
                timeout(OP_LIMIT, client.query_one(sql, &[&client_id, &n])).await
            } else {
                timeout(OP_LIMIT, client.query_one("SELECT $1::int", &[&n])).await
            };
            let error = match outcome {
                Ok(Ok(row)) if row.get::<_, i32>(0) == n => None,
                Ok(Ok(row)) => Some(format!("wrong answer {} for {n}", row.get::<_, i32>(0))),
                Ok(Err(e)) => Some(sqlstate(&e)),
                Err(_) => Some("hung".into()),
            };
            record(if write { Op::Write } else { Op::Read }, start, error);
            sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The probe's record of a scenario.
struct Seen {
    events: Vec<Event>,
}

impl Seen {
    fn of(&self, op: Op) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.op == op)
    }

    fn count(&self, op: Op) -> usize {
        self.of(op).count()
    }

    /// Failures of `op` by SQLSTATE.
    fn errors(&self, op: Op) -> BTreeMap<String, usize> {
        let mut errors = BTreeMap::new();
        for e in self.of(op) {
            if let Some(code) = &e.error {
                *errors.entry(code.clone()).or_insert(0) += 1;
            }
        }
        errors
    }

    fn slowest(&self, op: Op) -> Duration {
        self.of(op).map(|e| e.took).max().unwrap_or_default()
    }

    /// From the first failed `op` to the end of the last one, if any failed.
    fn outage(&self, op: Op) -> Option<(Duration, Duration)> {
        let failed: Vec<&Event> = self.of(op).filter(|e| e.error.is_some()).collect();
        let first = failed.iter().map(|e| e.at).min()?;
        let last = failed.iter().map(|e| e.at + e.took).max()?;
        Some((first, last))
    }

    /// A successful `op` that started at or after `since`.
    fn succeeded_after(&self, op: Op, since: Duration) -> Option<Duration> {
        self.of(op)
            .filter(|e| e.error.is_none() && e.at >= since)
            .map(|e| e.at + e.took)
            .min()
    }
}

/// Prints one scenario's figures in a form the closing note and docs quote.
fn report(name: &str, bench: &BenchResult, seen: &Seen, routing: &[(&str, Duration)]) {
    let ms = |d: Duration| format!("{} ms", d.as_millis());
    let mut line = format!(
        "FAULT {name}: pgbench -S {} txns, {} failed, {} aborted clients, tps min/median {:.0}/{:.0}; \
         probe reads {} (failed {:?}, slowest {}), writes {} (failed {:?}, slowest {}), \
         connects failed {:?}",
        bench.processed,
        bench.failed,
        bench.aborted,
        bench.tps.0,
        bench.tps.1,
        seen.count(Op::Read),
        seen.errors(Op::Read),
        ms(seen.slowest(Op::Read)),
        seen.count(Op::Write),
        seen.errors(Op::Write),
        ms(seen.slowest(Op::Write)),
        seen.errors(Op::Connect),
    );
    if let Some((from, to)) = seen.outage(Op::Write) {
        line.push_str(&format!("; writes failing {} .. {}", ms(from), ms(to)));
    }
    for (what, took) in routing {
        line.push_str(&format!("; {what} {}", ms(*took)));
    }
    println!("{line}");
    for e in seen
        .events
        .iter()
        .filter(|e| e.error.is_some() && e.op == Op::Read)
    {
        println!("  failed read: {e:?}");
    }
}

fn assert_reads_never_failed(bench: &BenchResult, seen: &Seen) {
    assert!(
        bench.success && bench.failed == 0 && bench.aborted == 0 && bench.processed > 0,
        "pgbench -S saw failures:\n{}",
        bench.output
    );
    assert!(
        seen.errors(Op::Read).is_empty(),
        "probe reads failed: {:?}",
        seen.errors(Op::Read)
    );
}

/// A fault scenario under way: its own cluster and pgsplit, `pgbench -S` and the probe
/// running since `t0`, and the other scenarios kept waiting.
struct Scenario {
    _alone: tokio::sync::RwLockWriteGuard<'static, ()>,
    cluster: Arc<Cluster>,
    proxy: TestProxy,
    t0: Instant,
    bench: Bench,
    probe: Probe,
}

impl Scenario {
    /// Starts `seconds` of pgbench and the probe, and lets them run 3 s before the fault.
    async fn start(seconds: u64) -> Scenario {
        // One scenario at a time, beside no other test of this binary: several clusters
        // under load at once on a small machine would measure the machine, not pgsplit.
        let alone = common::turns::alone().await;
        let (cluster, proxy) = cluster_under("").await;
        let t0 = Instant::now();
        let bench = Bench::start(cluster.pg_bin(), proxy.addr.port(), seconds);
        let probe = Probe::start(proxy.addr.port(), 4, t0);
        sleep(Duration::from_secs(3)).await;
        Scenario {
            _alone: alone,
            cluster: Arc::new(cluster),
            proxy,
            t0,
            bench,
            probe,
        }
    }

    /// Time since the load started.
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Runs blocking cluster control (signals, pg_ctl) off the async workers.
    async fn control(
        &self,
        what: &str,
        f: impl FnOnce(&Cluster) -> Result<(), pgsplit_cluster::ClusterError> + Send + 'static,
    ) {
        let cluster = Arc::clone(&self.cluster);
        tokio::task::spawn_blocking(move || f(&cluster))
            .await
            .expect("cluster control task")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    /// How long until pgsplit's topology shows `ready` (at most `limit`).
    async fn until(&self, limit: u64, what: &str, ready: impl Fn(&Topology) -> bool) -> Duration {
        until(&self.proxy, Duration::from_secs(limit), what, ready).await
    }

    /// Waits for pgbench and stops the probe: what both saw.
    async fn finish(self) -> (BenchResult, Seen) {
        let bench = self.bench.finish().await;
        (bench, self.probe.finish().await)
    }
}

/// Asserts that the probe's writes failed only with `codes`.
fn assert_writes_failed_only_with(seen: &Seen, codes: &[&str]) {
    let failed: Vec<String> = seen.errors(Op::Write).into_keys().collect();
    assert!(
        failed
            .iter()
            .all(|c| codes.iter().any(|want| c.starts_with(want))),
        "writes failed with {failed:?}, not only {codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_standby_killed_and_restarted() {
    let s = Scenario::start(16).await;
    s.control("SIGKILL standby1", |c| c.stop(1, StopMode::Kill))
        .await;
    let out = s
        .until(10, "standby1 out of rotation", |t| !t.nodes[1].eligible)
        .await;
    sleep(Duration::from_secs(4)).await;
    s.control("restart standby1", |c| c.start_node(1)).await;
    let back = s
        .until(30, "standby1 re-admitted", |t| t.nodes[1].eligible)
        .await;

    let (bench, seen) = s.finish().await;
    report(
        "standby SIGKILL + restart",
        &bench,
        &seen,
        &[
            ("out of rotation after", out),
            ("re-admitted after restart in", back),
        ],
    );
    assert_reads_never_failed(&bench, &seen);
    assert_writes_failed_only_with(&seen, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_not_held_by_a_standby_frozen_for_fifteen_seconds() {
    let s = Scenario::start(25).await;
    s.control("SIGSTOP standby1", |c| c.freeze(1)).await;
    let frozen_at = Instant::now();
    let banned = s
        .until(10, "frozen standby1 banned", |t| !t.nodes[1].eligible)
        .await;
    sleep(Duration::from_secs(15).saturating_sub(frozen_at.elapsed())).await;
    s.control("SIGCONT standby1", |c| c.thaw(1)).await;
    let back = s
        .until(30, "thawed standby1 re-admitted", |t| t.nodes[1].eligible)
        .await;

    let (bench, seen) = s.finish().await;
    report(
        "standby SIGSTOP 15 s",
        &bench,
        &seen,
        &[
            ("banned after", banned),
            ("re-admitted after SIGCONT in", back),
        ],
    );
    assert_reads_never_failed(&bench, &seen);
    assert_writes_failed_only_with(&seen, &[]);
    // A read caught on the frozen node waits for the ban, not for the thaw.
    assert!(
        seen.slowest(Op::Read) < Duration::from_secs(10),
        "a read waited {:?} on the frozen standby",
        seen.slowest(Op::Read)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_leave_a_standby_whose_replay_is_paused_and_come_back_after() {
    let s = Scenario::start(16).await;
    s.control("pause replay", |c| c.pause_replay(1)).await;
    let excluded = s
        .until(15, "paused standby1 excluded for lag", |t| {
            !t.nodes[1].eligible && t.nodes[1].role == Role::Standby
        })
        .await;
    sleep(Duration::from_secs(3)).await;
    s.control("resume replay", |c| c.resume_replay(1)).await;
    let back = s
        .until(15, "standby1 re-admitted", |t| t.nodes[1].eligible)
        .await;

    let (bench, seen) = s.finish().await;
    report(
        "replay paused 3 s past exclusion",
        &bench,
        &seen,
        &[
            ("excluded for lag after", excluded),
            ("re-admitted after resume in", back),
        ],
    );
    assert_reads_never_failed(&bench, &seen);
    assert_writes_failed_only_with(&seen, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_fast_only_until_a_promoted_standby_takes_over() {
    let s = Scenario::start(16).await;
    // A failover manager's delay: the primary is gone for two seconds before promotion.
    s.control("stop the primary", |c| c.stop(0, StopMode::Immediate))
        .await;
    let stopped = s.now();
    sleep(Duration::from_secs(2)).await;
    s.control("promote standby1", |c| c.promote(1)).await;
    let promoted = s.now();
    let followed = s
        .until(15, "standby1 seen as primary", |t| {
            t.primary_index() == Some(1)
        })
        .await;
    sleep(Duration::from_secs(4)).await;

    let (bench, seen) = s.finish().await;
    let first_write = seen
        .succeeded_after(Op::Write, promoted)
        .expect("a write succeeded after the promotion");
    report(
        "primary stopped, standby promoted 2 s later",
        &bench,
        &seen,
        &[
            ("promotion followed in", followed),
            ("first write after promotion in", first_write - promoted),
            ("write outage from primary stop", first_write - stopped),
        ],
    );
    assert_reads_never_failed(&bench, &seen);
    // No primary (08006), or the stopping server's own refusal (57P0x).
    assert_writes_failed_only_with(&seen, &["08006", "57P0"]);
    if let Some((from, to)) = seen.outage(Op::Write) {
        assert!(
            from + Duration::from_millis(500) >= stopped
                && to <= promoted + followed + Duration::from_secs(2),
            "writes failed outside the window without a primary ({from:?}..{to:?}; \
             stopped {stopped:?}, promoted {promoted:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_fails_writes_fast_and_reads_go_on() {
    let s = Scenario::start(20).await;
    s.control("SIGSTOP the primary", |c| c.freeze(0)).await;
    let frozen = Instant::now();
    let noticed = s
        .until(10, "frozen primary banned", |t| t.primary_index().is_none())
        .await;
    sleep(Duration::from_secs(10).saturating_sub(frozen.elapsed())).await;
    s.control("SIGCONT the primary", |c| c.thaw(0)).await;
    let thawed = s.now();
    let back = s
        .until(15, "primary back", |t| t.primary_index() == Some(0))
        .await;
    sleep(Duration::from_secs(3)).await;

    let (bench, seen) = s.finish().await;
    let first_write = seen
        .succeeded_after(Op::Write, thawed)
        .expect("a write succeeded after the thaw");
    report(
        "primary SIGSTOP 10 s",
        &bench,
        &seen,
        &[
            ("no primary after", noticed),
            ("primary back after SIGCONT in", back),
            ("first write after SIGCONT in", first_write - thawed),
        ],
    );
    assert_reads_never_failed(&bench, &seen);
    assert_writes_failed_only_with(&seen, &["08006"]);
    // A write caught on the frozen primary is failed once the node fails its checks (or
    // a new connection's connect_timeout runs out), not held until it thaws.
    assert!(
        seen.slowest(Op::Write) < Duration::from_secs(8),
        "a write waited {:?} on the frozen primary",
        seen.slowest(Op::Write)
    );
}

/// The pgsplit binary serving `config`; killed when dropped.
struct Process(std::process::Child);

impl Process {
    fn start(config: &Path) -> Process {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgsplit");
        Process(child)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal pgsplit");
    }

    /// Waits for the process to exit (bounded).
    async fn exited(mut self) {
        let start = Instant::now();
        while self.0.try_wait().expect("wait for pgsplit").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "pgsplit did not exit"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `port`.
async fn listening(port: u16) -> Duration {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pgsplit not listening"
        );
        sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_through_a_restarted_pgsplit() {
    let _alone = common::turns::alone().await;
    let (cluster, _unused) = cluster_under("").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("pgsplit.toml");
    let text = pgsplit::demo::config_text(&cluster, &format!("127.0.0.1:{port}")).replacen(
        "[monitor]\n",
        &format!("[monitor]\n{MONITOR}\n"),
        1,
    );
    std::fs::write(&config, format!("shutdown_timeout = \"2s\"\n{text}")).expect("config");

    let first = Process::start(&config);
    listening(port).await;
    let t0 = Instant::now();
    let probe = Probe::start(port, 8, t0);
    sleep(Duration::from_secs(3)).await;

    // A graceful restart (SIGTERM, as systemd and Kubernetes do), then a crash (SIGKILL).
    first.signal(nix::sys::signal::Signal::SIGTERM);
    let term_at = t0.elapsed();
    first.exited().await;
    let second = Process::start(&config);
    listening(port).await;
    sleep(Duration::from_secs(3)).await;
    second.signal(nix::sys::signal::Signal::SIGKILL);
    let kill_at = t0.elapsed();
    second.exited().await;
    let _third = Process::start(&config);
    listening(port).await;
    sleep(Duration::from_secs(3)).await;

    let seen = probe.finish().await;
    let after_term = seen
        .succeeded_after(Op::Read, term_at)
        .expect("reads after SIGTERM");
    let after_kill = seen
        .succeeded_after(Op::Read, kill_at)
        .expect("reads after SIGKILL");
    let no_bench = BenchResult {
        success: true,
        processed: 0,
        failed: 0,
        aborted: 0,
        tps: (0.0, 0.0),
        output: String::new(),
    };
    report(
        "pgsplit restarted (SIGTERM, then SIGKILL)",
        &no_bench,
        &seen,
        &[
            ("reads again after SIGTERM in", after_term - term_at),
            ("reads again after SIGKILL in", after_kill - kill_at),
        ],
    );
    // What clients see of a restart is their connection ending: 57P01 from a graceful
    // stop, a closed socket from a crash, refused connections until pgsplit listens.
    for (op, errors) in [
        (Op::Read, seen.errors(Op::Read)),
        (Op::Write, seen.errors(Op::Write)),
    ] {
        for code in errors.keys() {
            assert!(
                code == "57P01" || code.starts_with("no SQLSTATE"),
                "{op:?} failed with {code} across a restart"
            );
        }
    }
    let last_restart = kill_at + (after_kill - kill_at);
    let late: Vec<&Event> = seen
        .events
        .iter()
        .filter(|e| e.error.is_some() && e.at > last_restart + Duration::from_millis(500))
        .collect();
    assert!(late.is_empty(), "failures after pgsplit was back: {late:?}");
}
