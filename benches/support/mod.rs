//! What the benchmarks that drive real processes share: proxies run as child processes
//! that die with the bench, pgbouncer and pgsplit started in front of the local cluster,
//! pgbench command lines and the figures of its report.
// Every bench (and the test that runs `compare` in quick mode) compiles its own copy of
// this module and uses a different part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};
use pgsplit_cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};

/// How long a proxy gets to accept a first query after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped proxy gets to exit before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// pgbouncer keeps protocol-level prepared statements in transaction mode from this version.
pub const PGBOUNCER_PREPARED_SINCE: (u32, u32) = (1, 21);
/// `max_prepared_statements` given to a pgbouncer that supports it.
pub const PGBOUNCER_MAX_PREPARED: u32 = 200;
/// The `extra` of [`start_pgsplit`] that sends reads to the standbys only, so that what
/// pgsplit adds is not hidden by reads it sends to the primary.
pub const STANDBY_READS: &str = "\n[routing]\nprimary_reads = \"never\"\n";

/// A whole number from the environment variable `name`, or `default` when it is unset.
pub fn env_or(name: &str, default: u32) -> Result<u32, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// How many server connections a pooler may open and how many clients it must accept.
#[derive(Clone, Copy)]
pub struct Sizing {
    /// pgsplit `max_pool_size` (per node), pgbouncer `default_pool_size`.
    pub pool_size: u32,
    /// `max_client_conn` of both.
    pub max_client_conn: u32,
}

/// A proxy running as a child process, with its output in a log file; stopped on drop.
pub struct Proxy {
    /// Its name in messages.
    pub name: &'static str,
    child: Child,
    /// Where it accepts clients.
    pub port: u16,
    log: PathBuf,
}

impl Proxy {
    /// Starts `cmd` with its output in `log`, and waits until a query through `port` works.
    pub fn start(
        name: &'static str,
        cmd: Command,
        port: u16,
        log: PathBuf,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Self, String> {
        Self::start_within(name, cmd, port, log, READY_TIMEOUT, runtime)
    }

    /// [`Proxy::start`], giving it `ready_timeout` to answer a first query.
    pub fn start_within(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        log: PathBuf,
        ready_timeout: Duration,
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
        let deadline = Instant::now() + ready_timeout;
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
                        "{name} did not answer `SELECT 1` on port {port} within {ready_timeout:?} \
                         (last error: {e})\n{}",
                        proxy.log_tail()
                    ))
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the tail of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
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

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of its log, headed by the log's path.
    pub fn log_tail(&self) -> String {
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

/// Has the child get SIGTERM when the thread that spawned it (the bench's main thread)
/// ends, so a killed bench leaves no proxy or pgbench behind; the cluster has its own
/// watchdog.
pub fn die_with_bench(cmd: &mut Command) {
    // SAFETY: between fork and exec the closure only makes the prctl(2) system call, which
    // is async-signal-safe. It runs after any uid switch, which would clear the setting.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from));
    }
}

/// Connection settings of the application user through `port`.
pub fn client_config(port: u16) -> tokio_postgres::Config {
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

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("probing 127.0.0.1:0 for a free port: {e}"))
}

/// Where a proxy's output goes and what runs it.
pub struct Launch {
    /// The file its standard output and error go to.
    pub log: PathBuf,
    /// A program and its arguments put before the proxy's own command line (e.g. `valgrind
    /// --tool=callgrind`); empty: the proxy runs by itself.
    pub wrapper: Vec<OsString>,
    /// How long it gets to answer a first query.
    pub ready_timeout: Duration,
}

impl Launch {
    /// The proxy by itself, its output in `log`, given [`READY_TIMEOUT`] to answer.
    pub fn direct(log: PathBuf) -> Self {
        Self {
            log,
            wrapper: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// A command that runs `program` under the wrapper, if any; the caller adds its arguments.
    fn command(&self, program: &Path) -> Command {
        match self.wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut cmd = Command::new(wrapper);
                cmd.args(args).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Starts the proxy `cmd` built, which listens on `port`.
    fn start(
        self,
        name: &'static str,
        cmd: Command,
        port: u16,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Proxy, String> {
        Proxy::start_within(name, cmd, port, self.log, self.ready_timeout, runtime)
    }
}

/// An installed pgbouncer.
pub struct Pgbouncer {
    /// The binary.
    pub bin: PathBuf,
    /// As it reports it, e.g. "1.18.0".
    pub version: String,
    /// (major, minor).
    pub release: (u32, u32),
}

impl Pgbouncer {
    /// Whether protocol-level prepared statements survive its transaction pooling.
    pub fn keeps_prepared(&self) -> bool {
        self.release >= PGBOUNCER_PREPARED_SINCE
    }
}

/// The pgbouncer binary (`PGBOUNCER`, else on `PATH`, else `/usr/sbin`) and its version,
/// or an error that says how to install it.
pub fn find_pgbouncer() -> Result<Pgbouncer, String> {
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
        return Ok(Pgbouncer {
            bin,
            version,
            release: (major, minor),
        });
    }
    Err(
        "pgbouncer is not installed, and this benchmark compares against it: install it \
         (`apt-get install -y pgbouncer` on Debian/Ubuntu) or point PGBOUNCER at its binary"
            .into(),
    )
}

/// The OS user pgbouncer runs as, as (uid, gid): `None` for the bench's own user, or
/// `postgres` when running as root (pgbouncer refuses root).
pub fn pgbouncer_identity() -> Result<Option<(u32, u32)>, String> {
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
pub fn write_private(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let context = |e: io::Error| format!("writing {}: {e}", path.display());
    fs::write(path, text).map_err(context)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(context)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(context)?;
    }
    Ok(())
}

/// Starts pgbouncer in transaction mode in front of the primary, its configuration in `dir`
/// (which must be a directory of its own: it is handed to pgbouncer's OS user, and so is
/// any wrapper in `launch`).
pub fn start_pgbouncer(
    cluster: &Cluster,
    bouncer: &Pgbouncer,
    sizing: Sizing,
    dir: &Path,
    launch: Launch,
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
    let prepared = if bouncer.keeps_prepared() {
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
        pool = sizing.pool_size,
        max_client_conn = sizing.max_client_conn,
    );
    let ini_path = dir.join("pgbouncer.ini");
    write_private(&ini_path, &ini, owner)?;
    let mut cmd = launch.command(&bouncer.bin);
    cmd.arg(&ini_path).current_dir("/");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    launch.start("pgbouncer", cmd, port, runtime)
}

/// Starts the pgsplit binary `bin` with the demo configuration plus transaction pooling
/// and the TOML tables in `extra` (e.g. [`STANDBY_READS`]); its configuration goes in
/// `dir`.
pub fn start_pgsplit(
    cluster: &Cluster,
    bin: &Path,
    sizing: Sizing,
    extra: &str,
    dir: &Path,
    launch: Launch,
    runtime: &tokio::runtime::Runtime,
) -> Result<Proxy, String> {
    if !bin.is_file() {
        return Err(format!(
            "no pgsplit binary at {} (build it with `cargo build --release`)",
            bin.display()
        ));
    }
    let port = free_port()?;
    // `config_text` starts with a top-level key, so top-level keys go before it and
    // tables after it.
    // The app user may read the admin console: benches count reads per node there.
    let config = format!(
        "max_client_conn = {}\nadmin_users = [\"{APP_USER}\"]\n{}\n[pool]\nmode = \"transaction\"\nmax_pool_size = {}\n{extra}",
        sizing.max_client_conn,
        pgsplit::demo::config_text(cluster, &format!("127.0.0.1:{port}")),
        sizing.pool_size
    );
    pgsplit::settings::Settings::parse(&config)
        .map_err(|e| format!("the generated pgsplit configuration is invalid: {e}\n{config}"))?;
    let path = dir.join("pgsplit.toml");
    write_private(&path, &config, None)?;
    let mut cmd = launch.command(bin);
    // NO_COLOR: the log is a file to read, not a terminal.
    cmd.arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    // The benchmarks' own PGSPLIT_BENCH_* / PGSPLIT_COMPARE_* knobs would reach pgsplit as
    // configuration variables and be refused as unknown; the file says everything.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGSPLIT_") {
            cmd.env_remove(name);
        }
    }
    launch.start("pgsplit", cmd, port, runtime)
}

/// `pgbench` against `port` as the application user, tied to the bench's life; the caller
/// adds the workload, client count and duration.
pub fn pgbench_command(cluster: &Cluster, port: u16) -> Command {
    let mut cmd = Command::new(cluster.pg_bin().join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", APP_USER])
        .stdin(Stdio::null())
        .env("PGPASSWORD", APP_PASSWORD)
        // A ~/.pgpass must not change which password is tried.
        .env("PGPASSFILE", "/nonexistent/pgsplit-no-pgpass");
    die_with_bench(&mut cmd);
    cmd
}

/// How a command run by [`run_bounded`] ended, and what it printed.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Finished {
    /// The report of a pgbench run that exited cleanly with no failed transaction; else
    /// why not, with pgbench's first error.
    pub fn pgbench_summary(&self) -> Result<PgbenchSummary, String> {
        let error = || first_error(&self.stderr).unwrap_or("no error message");
        if !self.status.success() {
            return Err(format!("pgbench exited with {}: {}", self.status, error()));
        }
        let summary = PgbenchSummary::parse(&self.stdout).map_err(|e| {
            format!(
                "{e}\n--- pgbench stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout, self.stderr
            )
        })?;
        if summary.failed > 0 {
            return Err(format!(
                "{} failed transactions: {}",
                summary.failed,
                error()
            ));
        }
        Ok(summary)
    }
}

/// Runs `cmd` to its end with its output in `dir`/stdout and `dir`/stderr (files, so that
/// no pipe can fill up and stall it), killing it once `limit` has passed.
pub fn run_bounded(mut cmd: Command, limit: Duration, dir: &Path) -> Result<Finished, String> {
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let open =
        |path: &Path| File::create(path).map_err(|e| format!("creating {}: {e}", path.display()));
    cmd.stdout(open(&out_path)?).stderr(open(&err_path)?);
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not finish within {limit:?}: killed"));
            }
            Ok(None) => sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    // Unreadable output is reported as missing by whoever looks for something in it.
    Ok(Finished {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

/// The first line of pgbench's standard error that reports an error.
pub fn first_error(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find(|l| l.contains("error") || l.contains("ERROR") || l.contains("FATAL"))
        .map(str::trim)
}

/// The figures of a pgbench report (its standard output).
#[derive(Clone, Copy, Debug)]
pub struct PgbenchSummary {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Average transaction latency in milliseconds.
    pub latency_ms: f64,
    /// "number of failed transactions" (PostgreSQL 15 and later; 0 before).
    pub failed: u64,
}

impl PgbenchSummary {
    /// Reads the top-level figures of a report; per-script lines (` - …`) are not read.
    pub fn parse(report: &str) -> Result<Self, String> {
        let field = |prefix: &str| {
            report
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|l| l.split_whitespace().next())
        };
        let value = |prefix: &str| field(prefix).and_then(|v| v.parse::<f64>().ok());
        // pgbench before 15 has no such line: an error there aborts the client, and pgbench
        // exits non-zero, which callers check first.
        let failed = match field("number of failed transactions: ") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("unreadable count of failed transactions {v:?}"))?,
            None => 0,
        };
        let tps = value("tps = ").ok_or("no tps in its report")?;
        let latency_ms = value("latency average = ").ok_or("no average latency in its report")?;
        Ok(Self {
            tps,
            latency_ms,
            failed,
        })
    }
}

/// Raises the soft open-file limit to the hard one, which the proxies inherit; returns it.
pub fn raise_fd_limit() -> Result<u64, String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit(NOFILE, {hard}): {e}"))?;
    }
    Ok(hard)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `<bin> --version`'s first line, or why it could not be read.
pub fn version_line(bin: &Path, flag: &str) -> String {
    match Command::new(bin).arg(flag).output() {
        Ok(out) => {
            // haproxy prints to stdout, some tools to stderr.
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}
