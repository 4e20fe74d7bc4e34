//! Connection pooling, measured in one run on one machine: `pgbench` select-only and
//! TPC-B directly against the primary, through pgbouncer (transaction mode, in front of
//! the primary) and through pgsplit (transaction pooling, reads on two standbys), then the
//! resident memory of pgbouncer and pgsplit with many idle clients connected.
//!
//! `cargo bench --bench pool_compare`; tuned by the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PGSPLIT_BENCH_SECONDS` | 30 | `pgbench -T` of every run |
//! | `PGSPLIT_BENCH_CLIENTS` | 64 | `pgbench -c` of the select-only runs (`-S`) |
//! | `PGSPLIT_BENCH_TPCB_CLIENTS` | 32 | `pgbench -c` of the TPC-B runs |
//! | `PGSPLIT_BENCH_JOBS` | 2 | `pgbench -j` |
//! | `PGSPLIT_BENCH_SCALE` | 10 | `pgbench -i -s` |
//! | `PGSPLIT_BENCH_POOL_SIZE` | 20 | pgsplit `max_pool_size` (per node) and pgbouncer `default_pool_size` |
//! | `PGSPLIT_BENCH_IDLE_CLIENTS` | 1000 | idle clients held open for the memory measurement |
//! | `PGBOUNCER` | `pgbouncer` on `PATH`, else `/usr/sbin/pgbouncer` | the pgbouncer binary |
//!
//! pgsplit and pgbouncer run as separate processes so their RSS can be read from
//! `/proc/PID/status`. pgbouncer older than 1.21 cannot keep protocol-level prepared
//! statements in transaction mode, so it is then driven with `-M extended`, and the
//! output says so.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use pgsplit_cluster::{Cluster, APP_DATABASE, APP_USER};

#[path = "support/mod.rs"]
mod support;

use support::{
    client_config, env_or, find_pgbouncer, pgbench_command, raise_fd_limit, start_pgbouncer,
    start_pgsplit, tail, version_line, Launch, PgbenchSummary, Proxy, Sizing,
};

/// Idle clients log in this many at a time.
const IDLE_CONNECT_CONCURRENCY: usize = 32;
/// Bound on one idle client's login plus its first query.
const IDLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lets the proxies settle (buffers freed, pool connections returned) before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);

/// What one run is sized by.
struct Params {
    seconds: u32,
    select_clients: u32,
    tpcb_clients: u32,
    jobs: u32,
    scale: u32,
    pool_size: u32,
    idle_clients: u32,
}

impl Params {
    fn from_env() -> Result<Self, String> {
        let params = Self {
            seconds: env_or("PGSPLIT_BENCH_SECONDS", 30)?,
            select_clients: env_or("PGSPLIT_BENCH_CLIENTS", 64)?,
            tpcb_clients: env_or("PGSPLIT_BENCH_TPCB_CLIENTS", 32)?,
            jobs: env_or("PGSPLIT_BENCH_JOBS", 2)?,
            scale: env_or("PGSPLIT_BENCH_SCALE", 10)?,
            pool_size: env_or("PGSPLIT_BENCH_POOL_SIZE", 20)?,
            idle_clients: env_or("PGSPLIT_BENCH_IDLE_CLIENTS", 1000)?,
        };
        let positive = [
            ("PGSPLIT_BENCH_SECONDS", params.seconds),
            ("PGSPLIT_BENCH_CLIENTS", params.select_clients),
            ("PGSPLIT_BENCH_TPCB_CLIENTS", params.tpcb_clients),
            ("PGSPLIT_BENCH_JOBS", params.jobs),
            ("PGSPLIT_BENCH_SCALE", params.scale),
            ("PGSPLIT_BENCH_POOL_SIZE", params.pool_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        Ok(params)
    }

    /// Pool size of both proxies, and the clients either must accept: the idle clients
    /// plus the probes and pgbench.
    fn sizing(&self) -> Sizing {
        Sizing {
            pool_size: self.pool_size,
            max_client_conn: (self.idle_clients + 100)
                .max(2000)
                .max(self.select_clients.max(self.tpcb_clients) + 100),
        }
    }
}

/// A pgbench workload.
#[derive(Clone, Copy)]
enum Workload {
    /// `pgbench -S`: one primary-key lookup per transaction.
    SelectOnly,
    /// The built-in TPC-B-like script: three updates, a select and an insert.
    TpcB,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::SelectOnly => "select-only",
            Workload::TpcB => "TPC-B",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Workload::SelectOnly => &["-S"],
            Workload::TpcB => &[],
        }
    }

    fn clients(self, params: &Params) -> u32 {
        match self {
            Workload::SelectOnly => params.select_clients,
            Workload::TpcB => params.tpcb_clients,
        }
    }
}

/// Where pgbench connects, and the `-M` it uses there.
struct Target {
    name: &'static str,
    port: u16,
    query_mode: &'static str,
    /// The process whose connections reach the servers: the proxy, or pgbench itself (`None`).
    holder: Option<u32>,
}

/// Figures of one pgbench run.
struct Run {
    tps: f64,
    latency_ms: f64,
    /// Sessions of the application user that the target's holder had open on each node
    /// halfway through the run.
    server_conns: Option<Vec<usize>>,
}

/// Runs pgbench against `port` while sampling the server connections halfway through.
fn pgbench(
    cluster: &Cluster,
    params: &Params,
    workload: Workload,
    target: &Target,
) -> Result<Run, String> {
    let clients = workload.clients(params);
    let mut cmd = pgbench_command(cluster, target.port);
    cmd.args(workload.flags())
        .args(["-M", target.query_mode])
        .args(["-c", &clients.to_string(), "-j", &params.jobs.to_string()])
        .args(["-T", &params.seconds.to_string(), APP_DATABASE]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let holder = target.holder.unwrap_or(child.id());
    let (out, server_conns) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            sleep(Duration::from_millis(u64::from(params.seconds) * 500));
            server_sessions(cluster, holder)
        });
        let out = child.wait_with_output();
        (out, sampler.join().ok().flatten())
    });
    let out = out.map_err(|e| format!("waiting for pgbench: {e}"))?;
    let report = String::from_utf8_lossy(&out.stdout);
    let failed = |why: &str| {
        format!(
            "{} through {}: {why}\n--- pgbench stdout ---\n{}\n--- pgbench stderr ---\n{}",
            workload.name(),
            target.name,
            report.trim(),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        )
    };
    if !out.status.success() {
        return Err(failed(&format!("pgbench exited with {}", out.status)));
    }
    let summary = PgbenchSummary::parse(&report).map_err(|e| failed(&e))?;
    if summary.failed > 0 {
        return Err(failed(&format!("{} failed transactions", summary.failed)));
    }
    Ok(Run {
        tps: summary.tps,
        latency_ms: summary.latency_ms,
        server_conns,
    })
}

/// Sessions of the application user that process `pid` holds open on each node, found by
/// matching its TCP sockets to `pg_stat_activity.client_port` (so a proxy's monitor and
/// catalog connections do not count); `None` if anything cannot be read.
fn server_sessions(cluster: &Cluster, pid: u32) -> Option<Vec<usize>> {
    let ports = local_ports_by_peer(pid).ok()?;
    (0..cluster.nodes().len())
        .map(|i| {
            let node_port = cluster.nodes()[i].port;
            let mine: Vec<String> = ports
                .iter()
                .filter(|(_, peer)| *peer == node_port)
                .map(|(local, _)| local.to_string())
                .collect();
            if mine.is_empty() {
                return Some(0);
            }
            let sql = format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = '{APP_USER}' AND client_port IN ({})",
                mine.join(",")
            );
            cluster.sql(i, "postgres", &sql).ok()?.parse().ok()
        })
        .collect()
}

/// (local port, remote port) of every established IPv4 TCP connection of process `pid`.
fn local_ports_by_peer(pid: u32) -> io::Result<Vec<(u16, u16)>> {
    let mut inodes = std::collections::HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor may close while we look: skip it.
        let Ok(target) = fd.and_then(|fd| fs::read_link(fd.path())) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let port = |address: &str| {
        let (_, hex) = address.rsplit_once(':')?;
        u16::from_str_radix(hex, 16).ok()
    };
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let established = fields.get(3) == Some(&"01");
            let mine = fields.get(9).is_some_and(|inode| inodes.contains(*inode));
            if !(established && mine) {
                return None;
            }
            Some((port(fields[1])?, port(fields[2])?))
        })
        .collect())
}

/// Memory of one proxy around the idle-client step.
struct IdleResult {
    rss_fresh: u64,
    rss_before: u64,
    rss_idle: u64,
    connected: usize,
    errors: Vec<String>,
}

/// Logs `count` clients in through `proxy` (each runs one `SELECT 1`), reads the proxy's
/// RSS while they sit idle, then disconnects them.
fn idle_clients(
    proxy: &mut Proxy,
    rss_fresh: u64,
    count: u32,
    runtime: &tokio::runtime::Runtime,
) -> Result<IdleResult, String> {
    sleep(SETTLE);
    let rss_before = rss_kib(proxy)?;
    let config = client_config(proxy.port);
    let results: Vec<Result<tokio_postgres::Client, String>> = runtime.block_on(async {
        stream::iter(0..count)
            .map(|_| {
                let config = config.clone();
                async move {
                    let login = async {
                        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                        tokio::spawn(connection);
                        client.simple_query("SELECT 1").await?;
                        Ok::<_, tokio_postgres::Error>(client)
                    };
                    match tokio::time::timeout(IDLE_CONNECT_TIMEOUT, login).await {
                        Ok(Ok(client)) => Ok(client),
                        Ok(Err(e)) => Err(match e.as_db_error() {
                            Some(db) => format!("{}: {}", db.code().code(), db.message()),
                            None => e.to_string(),
                        }),
                        Err(_) => Err(format!(
                            "no login + SELECT 1 within {IDLE_CONNECT_TIMEOUT:?}"
                        )),
                    }
                }
            })
            .buffer_unordered(IDLE_CONNECT_CONCURRENCY)
            .collect()
            .await
    });
    let mut clients = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(client) => clients.push(client),
            Err(e) => errors.push(e),
        }
    }
    sleep(SETTLE);
    // Every client must still be connected when the figure is read.
    let rss_idle = rss_kib(proxy)?;
    let dropped = clients.iter().filter(|c| c.is_closed()).count();
    if dropped > 0 {
        errors.push(format!("{dropped} clients were disconnected while idle"));
    }
    let connected = clients.len() - dropped;
    runtime.block_on(async {
        drop(clients);
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    Ok(IdleResult {
        rss_fresh,
        rss_before,
        rss_idle,
        connected,
        errors,
    })
}

/// Resident set size of `proxy` in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(proxy: &mut Proxy) -> Result<u64, String> {
    proxy.check_running()?;
    let path = format!("/proc/{}/status", proxy.pid());
    let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs benches without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pool_compare: some measurements failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pool_compare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` when a measurement failed but the others were reported.
fn bench() -> Result<bool, String> {
    let params = Params::from_env()?;
    // Checked before the cluster is built: without pgbouncer there is nothing to compare.
    let bouncer_found = find_pgbouncer()?;
    let bouncer_version = &bouncer_found.version;
    let bouncer_prepared = bouncer_found.keeps_prepared();
    let needed = u64::from(params.idle_clients) * 2 + 256;
    let fd_limit = raise_fd_limit()?;
    if fd_limit < needed {
        println!(
            "warning: the open-file limit is {fd_limit}, under the ~{needed} the idle-client step \
             needs: raise it (ulimit -Hn) or lower PGSPLIT_BENCH_IDLE_CLIENTS"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;

    let cluster =
        Cluster::with_standbys(2).map_err(|e| format!("cannot start the cluster: {e}"))?;
    cluster
        .pgbench_init(params.scale)
        .map_err(|e| format!("pgbench -i -s {}: {e}", params.scale))?;
    let work = tempfile::Builder::new()
        .prefix("pgsplit-poolbench-")
        .tempdir()
        .map_err(|e| format!("creating a work directory: {e}"))?;
    let bouncer_dir = work.path().join("pgbouncer");
    fs::create_dir(&bouncer_dir).map_err(|e| format!("creating {}: {e}", bouncer_dir.display()))?;
    let mut bouncer = start_pgbouncer(
        &cluster,
        &bouncer_found,
        params.sizing(),
        &bouncer_dir,
        Launch::direct(bouncer_dir.join("pgbouncer.log")),
        &runtime,
    )?;
    let bouncer_fresh = rss_kib(&mut bouncer)?;
    let mut pgsplit = start_pgsplit(
        &cluster,
        std::path::Path::new(env!("CARGO_BIN_EXE_pgsplit")),
        params.sizing(),
        "",
        work.path(),
        Launch::direct(work.path().join("pgsplit.log")),
        &runtime,
    )?;
    let pgsplit_fresh = rss_kib(&mut pgsplit)?;

    let pg_version = version_line(&cluster.pg_bin().join("postgres"), "--version");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pool_compare: {cpus} CPUs, {pg_version}, PgBouncer {bouncer_version}, pgsplit {}",
        env!("CARGO_BIN_EXE_pgsplit")
    );
    println!(
        "cluster: 1 primary + 2 hot standbys, pgbench scale {}; pgbouncer: transaction mode, \
         default_pool_size {} (primary only); pgsplit: transaction mode, max_pool_size {} per node",
        params.scale, params.pool_size, params.pool_size
    );
    if !bouncer_prepared {
        println!(
            "note: PgBouncer {bouncer_version} predates max_prepared_statements (1.21), so \
             protocol-level prepared statements do not survive its transaction pooling: it is \
             driven with -M extended (parse + bind every statement) instead of -M prepared"
        );
    }

    let targets = [
        Target {
            name: "direct",
            port: cluster.primary().port,
            query_mode: "prepared",
            holder: None,
        },
        Target {
            name: "pgbouncer",
            port: bouncer.port,
            query_mode: if bouncer_prepared {
                "prepared"
            } else {
                "extended"
            },
            holder: Some(bouncer.pid()),
        },
        Target {
            name: "pgsplit",
            port: pgsplit.port,
            query_mode: "prepared",
            holder: Some(pgsplit.pid()),
        },
    ];
    let mut failures = Vec::new();
    for workload in [Workload::SelectOnly, Workload::TpcB] {
        println!();
        println!(
            "{}: pgbench {}-M prepared -c {} -j {} -T {}",
            workload.name(),
            workload
                .flags()
                .iter()
                .map(|f| format!("{f} "))
                .collect::<String>(),
            workload.clients(&params),
            params.jobs,
            params.seconds
        );
        println!(
            "{:<10} {:<9} {:>10} {:>12} {:>10} {:>13}  server sessions mid-run (primary/standby1/standby2)",
            "target", "-M", "tps", "latency ms", "vs direct", "vs pgbouncer"
        );
        let runs: Vec<Option<Run>> = targets
            .iter()
            .map(
                |target| match pgbench(&cluster, &params, workload, target) {
                    Ok(run) => Some(run),
                    Err(e) => {
                        failures.push(e);
                        None
                    }
                },
            )
            .collect();
        let tps_of = |i: usize| runs[i].as_ref().map(|r| r.tps);
        for (target, run) in targets.iter().zip(&runs) {
            let mut line = format!("{:<10} {:<9}", target.name, target.query_mode);
            match run {
                None => line.push_str(&format!(" {:>10}", "FAILED")),
                Some(run) => {
                    let ratio = |base: Option<f64>| match base {
                        Some(base) if base > 0.0 => format!("{:.2}", run.tps / base),
                        _ => "-".into(),
                    };
                    let sessions = run.server_conns.as_ref().map_or("?".into(), |c| {
                        c.iter().map(usize::to_string).collect::<Vec<_>>().join("/")
                    });
                    let _ = write!(
                        line,
                        " {:>10.0} {:>12.3} {:>10} {:>13}  {sessions}",
                        run.tps,
                        run.latency_ms,
                        ratio(tps_of(0)),
                        ratio(tps_of(1)),
                    );
                }
            }
            println!("{line}");
        }
    }

    println!();
    println!(
        "idle clients: {} clients log in (SCRAM) and run one SELECT 1 each, then stay connected",
        params.idle_clients
    );
    println!(
        "{:<10} {:>12} {:>14} {:>16} {:>11} {:>13}",
        "proxy", "RSS fresh", "RSS before", "RSS with idle", "connected", "per client"
    );
    let mut idle_notes = Vec::new();
    for (proxy, fresh) in [(&mut bouncer, bouncer_fresh), (&mut pgsplit, pgsplit_fresh)] {
        let name = proxy.name;
        let result = idle_clients(proxy, fresh, params.idle_clients, &runtime);
        match result {
            Err(e) => {
                println!("{name:<10} FAILED");
                failures.push(format!("idle clients through {name}: {e}"));
            }
            Ok(r) => {
                let per_client = if r.connected > 0 {
                    let grown = r.rss_idle as f64 - r.rss_before as f64;
                    format!("{:.1} KiB", grown / r.connected as f64)
                } else {
                    "-".into()
                };
                println!(
                    "{name:<10} {:>12} {:>14} {:>16} {:>11} {:>13}",
                    mib(r.rss_fresh),
                    mib(r.rss_before),
                    mib(r.rss_idle),
                    format!("{}/{}", r.connected, params.idle_clients),
                    per_client
                );
                if !r.errors.is_empty() {
                    let mut kinds: Vec<(String, usize)> = Vec::new();
                    for e in r.errors {
                        match kinds.iter_mut().find(|(k, _)| *k == e) {
                            Some((_, n)) => *n += 1,
                            None => kinds.push((e, 1)),
                        }
                    }
                    for (e, n) in kinds {
                        idle_notes.push(format!("{name}: {n} × {e}"));
                    }
                }
            }
        }
    }
    if !idle_notes.is_empty() {
        println!(
            "not every idle client could connect or stay connected; the figures above cover \
             those that did:"
        );
        for note in idle_notes {
            println!("  {note}");
        }
    }
    println!(
        "(RSS fresh: just started; before: after the pgbench runs, no clients; per client: \
         (with idle - before) / connected)"
    );

    drop(pgsplit);
    drop(bouncer);
    if failures.is_empty() {
        return Ok(true);
    }
    println!();
    for failure in &failures {
        println!("FAILED: {failure}\n");
    }
    Ok(false)
}
