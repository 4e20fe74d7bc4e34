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
use std::fs::{self, File};
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};
use pgsplit::cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};

/// How long pgsplit or pgbouncer gets to accept a first query after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped pgsplit or pgbouncer gets to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle clients log in this many at a time.
const IDLE_CONNECT_CONCURRENCY: usize = 32;
/// Bound on one idle client's login plus its first query.
const IDLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lets the proxies settle (buffers freed, pool connections returned) before RSS is read.
const SETTLE: Duration = Duration::from_secs(2);
/// pgbouncer keeps protocol-level prepared statements in transaction mode from this version.
const PGBOUNCER_PREPARED_SINCE: (u32, u32) = (1, 21);
/// `max_prepared_statements` given to a pgbouncer that supports it.
const PGBOUNCER_MAX_PREPARED: u32 = 200;

fn env_or(name: &str, default: u32) -> Result<u32, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

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

    /// Clients either proxy must accept: the idle clients plus the probes and pgbench.
    fn max_client_conn(&self) -> u32 {
        (self.idle_clients + 100)
            .max(2000)
            .max(self.select_clients.max(self.tpcb_clients) + 100)
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
    let mut cmd = Command::new(cluster.pg_bin().join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &target.port.to_string()])
        .args(["-U", APP_USER])
        .args(workload.flags())
        .args(["-M", target.query_mode])
        .args(["-c", &clients.to_string(), "-j", &params.jobs.to_string()])
        .args(["-T", &params.seconds.to_string(), APP_DATABASE])
        .stdin(Stdio::null())
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/nonexistent/pgsplit-no-pgpass");
    die_with_bench(&mut cmd);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    let field = |prefix: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|l| l.split_whitespace().next())
    };
    let value = |prefix: &str| field(prefix).and_then(|v| v.parse::<f64>().ok());
    match field("number of failed transactions: ").and_then(|v| v.parse::<u64>().ok()) {
        Some(0) => {}
        Some(n) => return Err(failed(&format!("{n} failed transactions"))),
        None => return Err(failed("no count of failed transactions in its report")),
    }
    let tps = value("tps = ").ok_or_else(|| failed("no tps in its report"))?;
    let latency_ms =
        value("latency average = ").ok_or_else(|| failed("no average latency in its report"))?;
    Ok(Run {
        tps,
        latency_ms,
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

/// pgsplit or pgbouncer, running as a child process; stopped on drop.
struct Proxy {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    /// Starts `cmd` with its output in `log`, and waits until a query through `port` works.
    fn start(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        log: PathBuf,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Self, String> {
        let out = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("duplicating the handle of {}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_bench(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let mut proxy = Proxy {
            name,
            child,
            port,
            log,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            proxy.check_running()?;
            let probe = runtime.block_on(async {
                let (client, connection) =
                    client_config(port).connect(tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.simple_query("SELECT 1").await.map(drop)
            });
            match probe {
                Ok(()) => return Ok(proxy),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{name} did not answer `SELECT 1` on port {port} within {READY_TIMEOUT:?} \
                         (last error: {e})\n{}",
                        proxy.log_tail()
                    ))
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status})\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(format!("cannot check on {}: {e}", self.name)),
        }
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    fn rss_kib(&mut self) -> Result<u64, String> {
        self.check_running()?;
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmRSS in {path}"))
    }

    fn log_tail(&self) -> String {
        match fs::read(&self.log) {
            Ok(bytes) => format!(
                "--- tail of {} ---\n{}",
                self.log.display(),
                tail(&String::from_utf8_lossy(&bytes), 30)
            ),
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Has the child get SIGTERM when this bench's main thread (which spawns every child)
/// ends, so a killed bench leaves no proxy or pgbench behind; the cluster has its own
/// watchdog.
fn die_with_bench(cmd: &mut Command) {
    // SAFETY: between fork and exec the closure only makes the prctl(2) system call, which
    // is async-signal-safe. It runs after any uid switch, which would clear the setting.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from));
    }
}

fn client_config(port: u16) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(APP_USER)
        .password(APP_PASSWORD)
        .dbname(APP_DATABASE)
        .connect_timeout(Duration::from_secs(10));
    config
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("probing 127.0.0.1:0 for a free port: {e}"))
}

/// The pgbouncer binary and its version, or a clear error if it is not installed.
fn find_pgbouncer() -> Result<(PathBuf, String, (u32, u32)), String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("PGBOUNCER") {
        Some(path) => vec![PathBuf::from(path)],
        None => vec!["pgbouncer".into(), "/usr/sbin/pgbouncer".into()],
    };
    for bin in candidates {
        let out = match Command::new(&bin).arg("--version").output() {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot run {}: {e}", bin.display())),
        };
        // "PgBouncer 1.18.0" on the first line.
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("PgBouncer "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("unexpected `{} --version`: {text}", bin.display()))?;
        let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
        let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
            return Err(format!("cannot parse pgbouncer version {version:?}"));
        };
        return Ok((bin, version, (major, minor)));
    }
    Err(
        "pgbouncer is not installed, and this benchmark compares against it: install it \
         (`apt-get install -y pgbouncer` on Debian/Ubuntu) or point PGBOUNCER at its binary"
            .into(),
    )
}

/// The OS user pgbouncer runs as: itself, or `postgres` when running as root (pgbouncer
/// refuses root).
fn pgbouncer_identity() -> Result<Option<(u32, u32)>, String> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        Ok(None) => Err(
            "running as root, but there is no OS user `postgres` to run pgbouncer \
                         as (pgbouncer refuses root)"
                .into(),
        ),
        Err(e) => Err(format!("looking up OS user `postgres`: {e}")),
    }
}

/// Writes `text` to `path`, owned by `owner` when given, readable only by its owner.
fn write_private(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let context = |e: io::Error| format!("writing {}: {e}", path.display());
    fs::write(path, text).map_err(context)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(context)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(context)?;
    }
    Ok(())
}

/// Starts pgbouncer in transaction mode in front of the primary.
fn start_pgbouncer(
    cluster: &Cluster,
    params: &Params,
    (bin, version): (&Path, (u32, u32)),
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Proxy, String> {
    let owner = pgbouncer_identity()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let port = free_port()?;
    let userlist = dir.join("userlist.txt");
    // A plaintext secret lets pgbouncer answer the client's SCRAM exchange and run its own
    // with the server.
    write_private(
        &userlist,
        &format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n"),
        owner,
    )?;
    let prepared = if version >= PGBOUNCER_PREPARED_SINCE {
        format!("max_prepared_statements = {PGBOUNCER_MAX_PREPARED}\n")
    } else {
        String::new()
    };
    let ini = format!(
        "[databases]\n\
         {APP_DATABASE} = host=127.0.0.1 port={primary} dbname={APP_DATABASE}\n\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {userlist}\n\
         pool_mode = transaction\n\
         default_pool_size = {pool}\n\
         max_client_conn = {max_client_conn}\n\
         ignore_startup_parameters = extra_float_digits\n\
         log_connections = 0\n\
         log_disconnections = 0\n\
         {prepared}",
        primary = cluster.primary().port,
        userlist = userlist.display(),
        pool = params.pool_size,
        max_client_conn = params.max_client_conn(),
    );
    let ini_path = dir.join("pgbouncer.ini");
    write_private(&ini_path, &ini, owner)?;
    let mut cmd = Command::new(bin);
    cmd.arg(&ini_path).current_dir("/");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    Proxy::start("pgbouncer", cmd, port, dir.join("pgbouncer.log"), runtime)
}

/// Starts the pgsplit binary of this package with the demo configuration plus pooling.
fn start_pgsplit(
    cluster: &Cluster,
    params: &Params,
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Proxy, String> {
    let port = free_port()?;
    // `config_text` starts with a top-level key, so top-level keys go before it and
    // tables after it.
    let config = format!(
        "max_client_conn = {}\n{}\n[pool]\nmode = \"transaction\"\nmax_pool_size = {}\n",
        params.max_client_conn(),
        pgsplit::demo::config_text(cluster, &format!("127.0.0.1:{port}")),
        params.pool_size
    );
    pgsplit::config::Settings::parse(&config)
        .map_err(|e| format!("the generated pgsplit configuration is invalid: {e}\n{config}"))?;
    let path = dir.join("pgsplit.toml");
    write_private(&path, &config, None)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsplit"));
    cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
    // The benchmark's own PGSPLIT_BENCH_* knobs would reach pgsplit as configuration
    // variables and be refused as unknown; the file says everything.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGSPLIT_") {
            cmd.env_remove(name);
        }
    }
    Proxy::start("pgsplit", cmd, port, dir.join("pgsplit.log"), runtime)
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
    let rss_before = proxy.rss_kib()?;
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
    let rss_idle = proxy.rss_kib()?;
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

/// Raises the soft open-file limit to the hard one; the proxies inherit it.
fn raise_fd_limit(needed: u64) -> Result<u64, String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))?;
    }
    if hard < needed {
        println!(
            "warning: the open-file limit is {hard}, under the ~{needed} the idle-client step \
             needs: raise it (ulimit -Hn) or lower PGSPLIT_BENCH_IDLE_CLIENTS"
        );
    }
    Ok(hard)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
    let (bouncer_bin, bouncer_version, bouncer_release) = find_pgbouncer()?;
    let bouncer_prepared = bouncer_release >= PGBOUNCER_PREPARED_SINCE;
    raise_fd_limit(u64::from(params.idle_clients) * 2 + 256)?;
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
        &params,
        (&bouncer_bin, bouncer_release),
        &bouncer_dir,
        &runtime,
    )?;
    let bouncer_fresh = bouncer.rss_kib()?;
    let mut pgsplit = start_pgsplit(&cluster, &params, work.path(), &runtime)?;
    let pgsplit_fresh = pgsplit.rss_kib()?;

    let pg_version = Command::new(cluster.pg_bin().join("postgres"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
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
