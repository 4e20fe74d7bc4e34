//! Throwaway local PostgreSQL replication clusters for tests, the demo and benchmarks.
//!
//! [`Cluster::start`] builds one primary plus hot standbys from the installed server
//! binaries; [`Cluster::build`] wires the standbys the ways users do ([`Shape`]: named
//! `walreceiver` by `pg_basebackup -R`, by `cluster_name`, or cascading). Everything is blocking (`std::process`) so it can be used from plain
//! `#[test]`s, from `main` before a runtime exists, and from benchmarks alike.
//!
//! Start-up is kept fast by running `initdb` once per machine and PostgreSQL version
//! (the *template*, roles and passwords included) and copying it for every cluster.
//! Teardown is guaranteed twice over: `Drop` stops the nodes and removes the base
//! directory, and a detached watchdog process does the same if the owning process dies
//! without dropping the cluster (killed, aborted, or the cluster lives in a `static`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{Pid, Uid, User};

mod shape;
pub use shape::{Link, Naming, Shape, WALRECEIVER};

/// Superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";
/// Password of [`SUPERUSER`]; fixed because the cluster only listens on 127.0.0.1 and is thrown away.
pub const SUPERUSER_PASSWORD: &str = "pgsplit-superuser-pw";
/// Role the standbys stream WAL as.
pub const REPLICATION_USER: &str = "replicator";
/// Password of [`REPLICATION_USER`].
pub const REPLICATION_PASSWORD: &str = "pgsplit-replicator-pw";
/// Role with `pg_monitor`, for health and lag checks.
pub const MONITOR_USER: &str = "monitor";
/// Password of [`MONITOR_USER`].
pub const MONITOR_PASSWORD: &str = "pgsplit-monitor-pw";
/// Application role (LOGIN, CREATEDB) that owns [`APP_DATABASE`].
pub const APP_USER: &str = "app";
/// Password of [`APP_USER`], stored as a SCRAM-SHA-256 verifier.
pub const APP_PASSWORD: &str = "pgsplit-app-pw";
/// Database owned by [`APP_USER`].
pub const APP_DATABASE: &str = "app";
/// Number of standbys [`Cluster::start`] creates.
pub const DEFAULT_STANDBYS: usize = 2;
/// WAL the primary keeps for standbys without a slot: enough that one cloned while
/// another backup checkpoints, or one that a test pauses, still finds its WAL.
const SLOTLESS_WAL_KEEP: &str = "1GB";

/// Bumped whenever the template's contents change, so stale templates are not reused.
const TEMPLATE_REVISION: u32 = 1;
const FALLBACK_BIN: &str = "/usr/lib/postgresql/15/bin";
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const START_ATTEMPTS: u32 = 5;
/// Points libpq at a file that cannot exist so a developer's `~/.pgpass` never supplies a password.
const NO_PASSFILE: &str = "/nonexistent/pgsplit-no-pgpass";

/// Appended to the template's postgresql.conf; later lines win over initdb's defaults.
const SERVER_SETTINGS: &str = "
# pgsplit throwaway cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
fsync = off
full_page_writes = off
synchronous_commit = on
shared_buffers = 32MB
max_connections = 200
wal_receiver_status_interval = 1s
hot_standby_feedback = on
password_encryption = 'scram-sha-256'
log_min_messages = warning
";

/// TCP only and always with a password, so tests exercise real authentication.
const PG_HBA: &str = "\
# pgsplit throwaway cluster: TCP only, passwords required
host    all             all             127.0.0.1/32    scram-sha-256
host    replication     replicator      127.0.0.1/32    scram-sha-256
";

/// Runs after the parent dies: it must read postmaster pids at kill time because nodes
/// get restarted, and must treat zombies as dead because PID 1 in some containers
/// never reaps orphans. It only signals processes whose name is `postgres`.
const WATCHDOG_SCRIPT: &str = r#"
parent=$1; base=$2
alive() {
  if [ -r "/proc/$1/stat" ]; then
    case "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" in Z*|X*|'') return 1;; esac
    return 0
  fi
  kill -0 "$1" 2>/dev/null
}
while alive "$parent"; do sleep 1; done
pids=""
for f in "$base"/*/postmaster.pid; do
  [ -f "$f" ] || continue
  pid=$(head -n 1 "$f")
  case "$pid" in ''|*[!0-9]*) continue;; esac
  if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" != postgres ]; then continue; fi
  kill -QUIT "$pid" 2>/dev/null && pids="$pids $pid"
done
i=0
while [ "$i" -lt 100 ]; do
  left=""
  for p in $pids; do alive "$p" && left="$left $p"; done
  [ -z "$left" ] && break
  pids=$left; i=$((i + 1)); sleep 0.1
done
rm -rf "$base"
"#;

/// Serialises template builds inside one process; other processes are handled by `rename`.
static TEMPLATE_LOCK: Mutex<()> = Mutex::new(());

/// Everything that can go wrong while building or driving a cluster.
///
/// `log_tail` fields hold the last lines of the server log of the node at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The server binaries are missing; callers must fail loudly rather than skip.
    #[error(
        "PostgreSQL server binaries not found: {} does not exist \
         (install PostgreSQL, or set PG_BIN to its bin directory)",
        .0.display()
    )]
    BinariesNotFound(PathBuf),
    /// Running as root, but there is no `postgres` OS user to run the server as.
    #[error("running as root but OS user `postgres` does not exist (PostgreSQL refuses root)")]
    NoPostgresUser,
    /// A filesystem or process-spawning operation failed while doing `context`.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// A system call made through `nix` failed while doing `context`.
    #[error("{context}: {source}")]
    Os { context: String, source: nix::Error },
    /// A helper program exited unsuccessfully; `output` is its stderr then stdout.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    /// `pg_ctl start` failed for `node`.
    #[error("could not start {node}: {cause}\n{log_tail}")]
    StartFailed {
        node: String,
        cause: Box<ClusterError>,
        log_tail: String,
    },
    /// `psql` reported an error on `node`.
    #[error("SQL on {node} failed: {stderr}\n  statement: {sql}")]
    Sql {
        node: String,
        sql: String,
        stderr: String,
    },
    /// A bounded wait for `what` expired.
    #[error("timed out after {waited:?} waiting for {what}\n{log_tail}")]
    Timeout {
        what: String,
        waited: Duration,
        log_tail: String,
    },
    /// A node index outside `nodes()`.
    #[error("no node with index {index} (the cluster has {count})")]
    NoSuchNode { index: usize, count: usize },
    /// No running node is out of recovery.
    #[error("no running primary: every running node is in recovery")]
    NoPrimary,
    /// Something the environment handed us made no sense.
    #[error("{0}")]
    Unexpected(String),
}

/// Result type of this module.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    move |source| ClusterError::Io {
        context: context.into(),
        source,
    }
}

/// How to stop a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Clean shutdown (SIGINT): sessions are ended and a shutdown checkpoint is written.
    Fast,
    /// Crash-like stop (SIGQUIT): the node runs crash recovery on its next start.
    Immediate,
    /// A killed postmaster (SIGKILL): no goodbye to anyone; its orphaned backends exit once
    /// they notice, and the stop waits for them so the node can start again.
    Kill,
}

impl StopMode {
    fn signal(self) -> Signal {
        match self {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
            StopMode::Kill => Signal::SIGKILL,
        }
    }
}

/// One PostgreSQL server of the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// `primary`, `standby1`, …, whatever the [`Shape`]: pgsplit's demo configuration
    /// names its nodes after these. Also a standby's `application_name`, but only with
    /// [`Naming::NodeNames`]; see [`Cluster::link`].
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The data directory (PGDATA).
    pub data_dir: PathBuf,
}

impl Node {
    fn new(name: &str, data_dir: PathBuf) -> Self {
        let (name, port) = (name.to_string(), 0);
        Self {
            name,
            port,
            data_dir,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server log written by `pg_ctl start -l`.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join("postgres.log")
    }

    /// `postgres://user:password@127.0.0.1:PORT/dbname`, percent-encoded.
    pub fn uri(&self, user: &str, password: &str, dbname: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(dbname)
        )
    }

    fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The postmaster pid if it is alive and still a postgres process: after a crash the
    /// pid file can be stale and the pid reused, and we signal as root.
    fn running_pid(&self) -> Option<i32> {
        let pid = self.postmaster_pid().filter(|pid| pid_alive(*pid))?;
        match fs::read_to_string(format!("/proc/{pid}/comm")) {
            Ok(comm) if comm.trim() != "postgres" => None,
            _ => Some(pid),
        }
    }
}

/// The OS identity the server programs run as: PostgreSQL refuses to run as root.
#[derive(Debug, Clone, Copy)]
struct Identity {
    uid: u32,
    gid: u32,
    switch: bool,
}

impl Identity {
    fn detect() -> Result<Self> {
        let (uid, gid) = (Uid::effective(), nix::unistd::Gid::effective());
        if !uid.is_root() {
            let (uid, gid) = (uid.as_raw(), gid.as_raw());
            return Ok(Self {
                uid,
                gid,
                switch: false,
            });
        }
        let user = User::from_name("postgres").map_err(|source| ClusterError::Os {
            context: "looking up OS user `postgres`".into(),
            source,
        })?;
        let user = user.ok_or(ClusterError::NoPostgresUser)?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        Ok(Self {
            uid,
            gid,
            switch: true,
        })
    }

    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if self.switch {
            cmd.uid(self.uid).gid(self.gid);
        }
        // The postgres user may not be able to enter the caller's working directory,
        // which makes initdb and pg_ctl fail before doing anything.
        cmd.current_dir("/")
            .stdin(Stdio::null())
            .env("PGPASSFILE", NO_PASSFILE);
        cmd
    }

    fn own(&self, path: &Path) -> Result<()> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

/// The PostgreSQL bin directory: `PG_BIN`, else `pg_config --bindir`, else the Debian default.
pub fn find_pg_bin() -> Result<PathBuf> {
    let from_env = std::env::var_os("PG_BIN").filter(|dir| !dir.is_empty());
    let dir = match from_env {
        Some(dir) => PathBuf::from(dir),
        None => Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| PathBuf::from(FALLBACK_BIN), PathBuf::from),
    };
    let initdb = dir.join("initdb");
    if initdb.is_file() {
        Ok(dir)
    } else {
        Err(ClusterError::BinariesNotFound(initdb))
    }
}

/// A running primary with hot standbys; stopped and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    who: Identity,
    base: PathBuf,
    nodes: Vec<Node>,
    shape: Shape,
    /// How standby `I` streams: `links[I - 1]`.
    links: Vec<Link>,
    // Declared last so it is dropped (killed) only after `Drop::drop` has cleaned up.
    watchdog: Option<Watchdog>,
}

impl Cluster {
    /// Starts a primary and [`DEFAULT_STANDBYS`] streaming standbys and waits until they are in sync.
    pub fn start() -> Result<Self> {
        Self::build(Shape::default())
    }

    /// Starts a primary and `standbys` streaming standbys named after their nodes, and
    /// waits until they are in sync.
    pub fn with_standbys(standbys: usize) -> Result<Self> {
        Self::build(Shape::node_names(standbys))
    }

    /// Starts a primary and standbys wired as `shape` says, and waits until every standby
    /// streams from its upstream and has replayed the primary's WAL.
    pub fn build(shape: Shape) -> Result<Self> {
        let bin = find_pg_bin()?;
        let who = Identity::detect()?;
        let version = server_version(&bin)?;
        let major = version.split('.').next().unwrap_or(&version);
        let links = shape.links(&format!("{major}/main"))?;
        let template = template_data_dir(&bin, &who)?;
        let base = tempfile::Builder::new()
            .prefix("pgsplit-cluster-")
            .tempdir()
            .map_err(io_err("creating the cluster base directory"))?
            .keep();
        // From here on `Drop` owns cleanup, so every early return below tears down.
        let mut cluster = Cluster {
            bin,
            who,
            base,
            nodes: Vec::new(),
            shape,
            links,
            watchdog: None,
        };
        cluster.who.own(&cluster.base)?;
        cluster.watchdog = Some(Watchdog::spawn(&cluster.base)?);

        let primary_dir = cluster.base.join("primary");
        let mut copy = cluster.who.command("cp");
        run(copy.arg("-a").arg(&template).arg(&primary_dir))?;
        cluster.nodes.push(Node::new("primary", primary_dir));
        start_on_fresh_port(&cluster.bin, &cluster.who, &mut cluster.nodes[0])?;
        if cluster.links.iter().any(|link| link.slot.is_none()) {
            // Without a slot, only this keeps the WAL a standby still needs; the backups
            // copy it, so standbys keep WAL for a cascading standby too.
            let keep = format!("ALTER SYSTEM SET wal_keep_size = '{SLOTLESS_WAL_KEEP}'");
            cluster.sql(0, "postgres", &keep)?;
            cluster.sql(0, "postgres", "SELECT pg_reload_conf()")?;
        }
        // Slots are created (reserving WAL now) before any backup starts: each backup
        // start switches WAL segment and checkpoints, which would otherwise remove
        // segments a concurrent backup still has to stream.
        let slots: Vec<String> = cluster
            .links
            .iter()
            .filter(|link| link.upstream == 0)
            .filter_map(|link| link.slot.as_deref())
            .map(|slot| format!("pg_create_physical_replication_slot('{slot}', true)"))
            .collect();
        if !slots.is_empty() {
            cluster.sql(0, "postgres", &format!("SELECT {}", slots.join(", ")))?;
        }
        // Base backups dominate start-up (file creation is slow on some disks) and
        // overlap well, so the primary's standbys are cloned concurrently; a cascading
        // standby waits for its upstream to run.
        let of_primary: Vec<usize> = (1..=shape.standbys)
            .filter(|i| cluster.links[i - 1].upstream == 0)
            .collect();
        let clones: Vec<Result<Node>> = std::thread::scope(|scope| {
            let this = &cluster;
            let jobs: Vec<_> = of_primary
                .iter()
                .map(|i| scope.spawn(move || this.clone_standby(*i)))
                .collect();
            jobs.into_iter()
                .map(|job| {
                    job.join().unwrap_or_else(|_| {
                        Err(ClusterError::Unexpected(
                            "cloning a standby panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut clones: BTreeMap<usize, Result<Node>> =
            of_primary.into_iter().zip(clones).collect();
        for i in 1..=shape.standbys {
            let mut node = match clones.remove(&i) {
                Some(clone) => clone?,
                None => cluster.clone_cascading(i)?,
            };
            start_on_fresh_port(&cluster.bin, &cluster.who, &mut node)?;
            cluster.nodes.push(node);
        }
        cluster.wait_until_ready()?;
        Ok(cluster)
    }

    /// Base-backs-up the primary into `standbyI` and configures it to stream from its
    /// upstream as its [`Link`] says.
    fn clone_standby(&self, i: usize) -> Result<Node> {
        let name = format!("standby{i}");
        let dir = self.base.join(&name);
        let link = &self.links[i - 1];
        let from_primary = link.upstream == 0;
        // `-R` writes standby.signal and primary_conninfo as users get them; the harness's
        // own wiring writes both itself, as it always has.
        let by_backup = self.shape.naming != Naming::NodeNames;
        // -S streams the backup's WAL through the standby's own, already reserved slot;
        // a cascading standby's slot is on its upstream, so its backup uses a temporary one.
        let backup_slot = link.slot.as_deref().filter(|_| from_primary);
        let mut backup = self.who.command(self.bin.join("pg_basebackup"));
        backup
            .arg("-D")
            .arg(&dir)
            .args(["-c", "fast", "-X", "stream"]);
        if let Some(slot) = backup_slot {
            backup.args(["-S", slot]);
        }
        if by_backup {
            backup.arg("-R");
        }
        let conninfo = replication_conninfo(self.nodes[0].port);
        run(backup.args(["--no-sync", "-w", "-d", &conninfo]))?;
        // The copy carries the primary's log; a standby's errors must show its own.
        let _ = fs::remove_file(dir.join("postgres.log"));

        // Later lines win, so these override what -R wrote.
        let mut settings = String::new();
        if !by_backup || link.names_itself || !from_primary {
            let conninfo = replication_conninfo(self.node(link.upstream)?.port);
            let named = if link.names_itself {
                format!(" application_name={}", link.application_name)
            } else {
                String::new()
            };
            settings.push_str(&format!("primary_conninfo = '{conninfo}{named}'\n"));
        }
        if let Some(slot) = &link.slot {
            if !(by_backup && backup_slot.is_some()) {
                settings.push_str(&format!("primary_slot_name = '{slot}'\n"));
            }
        }
        if !by_backup {
            write_owned(&self.who, &dir.join("standby.signal"), "")?;
        }
        if !settings.is_empty() {
            append(&dir.join("postgresql.auto.conf"), &settings)?;
        }
        if self.shape.naming == Naming::ClusterName {
            let setting = format!("cluster_name = '{}'\n", link.application_name);
            append(&dir.join("postgresql.conf"), &setting)?;
        }
        Ok(Node::new(&name, dir))
    }

    /// Clones `standbyI`, which streams from another standby, once that one runs: its
    /// slot is made there, and the upstream must have the WAL the backup ends at before
    /// it can send it on.
    fn clone_cascading(&self, i: usize) -> Result<Node> {
        let link = &self.links[i - 1];
        if let Some(slot) = &link.slot {
            let create = format!("SELECT pg_create_physical_replication_slot('{slot}', true)");
            self.sql(link.upstream, "postgres", &create)?;
        }
        let node = self.clone_standby(i)?;
        let lsn = self.sql(0, "postgres", "SELECT pg_current_wal_lsn()")?;
        self.await_lsn(link.upstream, &lsn, Instant::now() + WAIT_TIMEOUT)?;
        Ok(node)
    }

    fn wait_until_ready(&self) -> Result<()> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        // Each standby says whom it streams from: its name on the upstream need not be
        // unique, and a cascading standby is not on the primary at all.
        for (i, link) in (1..).zip(&self.links) {
            let sql = format!(
                "SELECT count(*) FROM pg_stat_wal_receiver \
                 WHERE status = 'streaming' AND sender_port = {}",
                self.node(link.upstream)?.port
            );
            self.await_sql(i, i, &sql, "1", deadline)?;
        }
        // Each upstream streams to as many standbys under each name as the shape says.
        let mut names: BTreeMap<(usize, &str), (usize, usize)> = BTreeMap::new();
        for (i, link) in (1..).zip(&self.links) {
            let key = (link.upstream, link.application_name.as_str());
            names.entry(key).or_insert((0, i)).0 += 1;
        }
        for ((upstream, name), (count, first)) in names {
            let sql = format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE state = 'streaming' AND application_name = {}",
                sql_literal(name)
            );
            self.await_sql(upstream, first, &sql, &count.to_string(), deadline)?;
        }
        let lsn = self.sql(0, "postgres", "SELECT pg_current_wal_lsn()")?;
        (1..self.nodes.len()).try_for_each(|i| self.await_lsn(i, &lsn, deadline))
    }

    fn await_lsn(&self, i: usize, lsn: &str, deadline: Instant) -> Result<()> {
        let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        self.await_sql(i, i, &sql, "t", deadline)
    }

    /// Polls until `sql` on node `on` returns `want`; a timeout shows node `blame`'s log.
    fn await_sql(
        &self,
        on: usize,
        blame: usize,
        sql: &str,
        want: &str,
        deadline: Instant,
    ) -> Result<()> {
        let what = format!("`{sql}` on {} to return {want}", self.node(on)?.name);
        wait_until(self.node(blame)?, &what, deadline, || {
            Ok(self.sql(on, "postgres", sql)? == want)
        })
    }

    fn node(&self, index: usize) -> Result<&Node> {
        self.nodes.get(index).ok_or(ClusterError::NoSuchNode {
            index,
            count: self.nodes.len(),
        })
    }

    /// All nodes; index 0 is the original primary, then `standby1`, `standby2`, ….
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// How the standbys were built.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// How node `i` streams and what its upstream calls it; `None` for the primary
    /// (index 0) and for an index past the last standby.
    pub fn link(&self, i: usize) -> Option<&Link> {
        self.links.get(i.checked_sub(1)?)
    }

    /// The original primary (index 0); after a failover it may be stopped or a standby.
    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }

    /// The standbys, in creation order (indices 1.. of [`Cluster::nodes`]).
    pub fn standbys(&self) -> &[Node] {
        &self.nodes[1..]
    }

    /// Password of the [`SUPERUSER`] role.
    pub fn superuser_password(&self) -> &str {
        SUPERUSER_PASSWORD
    }

    /// Directory of the server binaries used, so callers can run pgbench/psql from it.
    pub fn pg_bin(&self) -> &Path {
        &self.bin
    }

    /// Directory holding every node's data directory; removed on drop.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// Connection URI for node `i`. Panics if `i` is out of range, like slice indexing.
    pub fn uri(&self, i: usize, user: &str, password: &str, dbname: &str) -> String {
        self.nodes[i].uri(user, password, dbname)
    }

    /// Runs `sql` on node `node` as the superuser and returns psql's trimmed unaligned output.
    pub fn sql(&self, node: usize, dbname: &str, sql: &str) -> Result<String> {
        self.sql_as(node, SUPERUSER, Some(SUPERUSER_PASSWORD), dbname, sql)
    }

    /// Runs `sql` on node `node` as `user`; `None` sends no password at all.
    pub fn sql_as(
        &self,
        node: usize,
        user: &str,
        password: Option<&str>,
        dbname: &str,
        sql: &str,
    ) -> Result<String> {
        psql(&self.bin, self.node(node)?, user, password, dbname, sql)
    }

    /// Pauses WAL replay on standby `i` and waits until the pause has taken effect.
    pub fn pause_replay(&self, i: usize) -> Result<()> {
        self.sql(i, "postgres", "SELECT pg_wal_replay_pause()")?;
        let state = "SELECT pg_get_wal_replay_pause_state()";
        self.await_sql(i, i, state, "paused", Instant::now() + WAIT_TIMEOUT)
    }

    /// Resumes WAL replay on standby `i`.
    pub fn resume_replay(&self, i: usize) -> Result<()> {
        self.sql(i, "postgres", "SELECT pg_wal_replay_resume()")
            .map(drop)
    }

    /// Stops node `i` by signalling its postmaster and waits for it to exit; no-op if stopped.
    pub fn stop(&self, i: usize, mode: StopMode) -> Result<()> {
        stop_node(self.node(i)?, mode)
    }

    /// Freezes node `i`: SIGSTOP to its postmaster and every child. Connections to it
    /// hang rather than fail, as with a stalled host.
    pub fn freeze(&self, i: usize) -> Result<()> {
        signal_all(self.node(i)?, Signal::SIGSTOP)
    }

    /// Lets a frozen node `i` run again (SIGCONT to the postmaster and its children).
    pub fn thaw(&self, i: usize) -> Result<()> {
        signal_all(self.node(i)?, Signal::SIGCONT)
    }

    /// Starts a stopped node on its previous port and waits until it accepts connections.
    pub fn start_node(&self, i: usize) -> Result<()> {
        let node = self.node(i)?;
        if node.running_pid().is_some() {
            return Ok(());
        }
        pg_ctl_start(&self.bin, &self.who, node)
    }

    /// Promotes standby `i` and waits until it has left recovery.
    pub fn promote(&self, i: usize) -> Result<()> {
        self.sql(i, "postgres", "SELECT pg_promote()")?;
        let in_recovery = "SELECT pg_is_in_recovery()";
        self.await_sql(i, i, in_recovery, "f", Instant::now() + WAIT_TIMEOUT)
    }

    /// Loads pgbench tables at `scale` into [`APP_DATABASE`] on the primary (as
    /// [`APP_USER`]) and waits until every standby has replayed them.
    pub fn pgbench_init(&self, scale: u32) -> Result<()> {
        let primary = self.current_primary()?;
        let port = self.nodes[primary].port.to_string();
        run(Command::new(self.bin.join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])
            .args(["-U", APP_USER, APP_DATABASE])
            .stdin(Stdio::null())
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGPASSFILE", NO_PASSFILE))?;
        for i in (0..self.nodes.len()).filter(|i| *i != primary && self.is_running(*i)) {
            self.wait_for_replay(i)?;
        }
        Ok(())
    }

    /// Waits until standby `i` has replayed the current primary's current WAL position.
    pub fn wait_for_replay(&self, i: usize) -> Result<()> {
        self.node(i)?;
        let primary = self.current_primary()?;
        let lsn = self.sql(primary, "postgres", "SELECT pg_current_wal_lsn()")?;
        self.await_lsn(i, &lsn, Instant::now() + WAIT_TIMEOUT)
    }

    /// Index of the first running node that is not in recovery.
    pub fn current_primary(&self) -> Result<usize> {
        (0..self.nodes.len())
            .filter(|i| self.is_running(*i))
            .find(|i| {
                self.sql(*i, "postgres", "SELECT pg_is_in_recovery()")
                    .is_ok_and(|r| r == "f")
            })
            .ok_or(ClusterError::NoPrimary)
    }

    /// Whether node `i`'s postmaster is alive (false for an unknown index).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes
            .get(i)
            .is_some_and(|node| node.running_pid().is_some())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Scan the base directory rather than `nodes`, so a node that failed half-way
        // through start-up is stopped too. Immediate stop: nothing here is worth a checkpoint.
        let dirs = fs::read_dir(&self.base).into_iter().flatten().flatten();
        let pids: Vec<i32> = dirs
            .filter_map(|entry| Node::new("", entry.path()).running_pid())
            .collect();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGQUIT);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids.iter().any(|pid| pid_alive(*pid)) && Instant::now() < deadline {
            sleep(POLL_INTERVAL);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Returns the template's data directory, building the template on first use.
fn template_data_dir(bin: &Path, who: &Identity) -> Result<PathBuf> {
    let version = server_version(bin)?;
    let tmp_root = std::env::temp_dir();
    let name = format!(
        "pgsplit-pgtemplate-{version}-{}-r{TEMPLATE_REVISION}",
        who.uid
    );
    let dir = tmp_root.join(&name);
    let _guard = TEMPLATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join("data").is_dir() {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{name}.tmp-"))
            .tempdir_in(&tmp_root)
            .map_err(io_err("creating a template build directory"))?;
        who.own(tmp.path())?;
        // The template server runs briefly; if we die meanwhile, the watchdog stops it.
        let _watchdog = Watchdog::spawn(tmp.path())?;
        build_template(bin, who, tmp.path())?;
        // rename is atomic: readers see either no template or a complete one. If another
        // process renamed first, ours fails and is deleted when `tmp` drops.
        if let Err(e) = fs::rename(tmp.path(), &dir) {
            if !dir.join("data").is_dir() {
                return Err(io_err(format!("renaming into {}", dir.display()))(e));
            }
        } else {
            drop(tmp.keep());
        }
    }
    // /tmp is shared: refuse a template someone else planted under our name.
    let meta = fs::metadata(&dir).map_err(io_err(format!("inspecting {}", dir.display())))?;
    if meta.uid() != who.uid {
        let msg = format!(
            "{} is owned by uid {}, not {}",
            dir.display(),
            meta.uid(),
            who.uid
        );
        return Err(ClusterError::Unexpected(msg));
    }
    Ok(dir.join("data"))
}

fn build_template(bin: &Path, who: &Identity, dir: &Path) -> Result<()> {
    let pwfile = dir.join("pwfile");
    write_owned(who, &pwfile, SUPERUSER_PASSWORD)?;
    let data = dir.join("data");
    run(who
        .command(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-N", "-U", SUPERUSER, "--auth-local=trust"])
        .args(["--auth-host=scram-sha-256", "--locale=C", "--encoding=UTF8"])
        .arg(format!("--pwfile={}", pwfile.display())))?;
    fs::remove_file(&pwfile).map_err(io_err("removing the password file"))?;
    append(&data.join("postgresql.conf"), SERVER_SETTINGS)?;
    fs::write(data.join("pg_hba.conf"), PG_HBA).map_err(io_err("writing pg_hba.conf"))?;

    // Roles live in the template so each cluster saves a round of SQL at start-up.
    let mut node = Node::new("template", data);
    start_on_fresh_port(bin, who, &mut node)?;
    let roles = format!(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN PASSWORD '{REPLICATION_PASSWORD}'; \
         CREATE ROLE {MONITOR_USER} LOGIN PASSWORD '{MONITOR_PASSWORD}'; \
         GRANT pg_monitor TO {MONITOR_USER}; \
         CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD '{APP_PASSWORD}';"
    );
    // CREATE DATABASE cannot run inside the implicit transaction of a multi-statement -c.
    let database = format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}");
    let created = [roles, database].iter().try_for_each(|sql| {
        psql(
            bin,
            &node,
            SUPERUSER,
            Some(SUPERUSER_PASSWORD),
            "postgres",
            sql,
        )
        .map(drop)
    });
    let stopped = stop_node(&node, StopMode::Fast);
    created?;
    stopped?;
    let _ = fs::remove_file(node.log_file());
    Ok(())
}

/// Signals the postmaster (which works as root, unlike `pg_ctl stop`) and waits for it to exit.
/// Signals a node's postmaster and its children (backends, walreceiver, ...).
fn signal_all(node: &Node, signal: Signal) -> Result<()> {
    let Some(pid) = node.running_pid() else {
        return Err(ClusterError::Io {
            context: format!("signalling {}", node.name),
            source: io::Error::new(io::ErrorKind::NotFound, "the node is not running"),
        });
    };
    for target in std::iter::once(pid).chain(children_of(pid)) {
        match kill(Pid::from_raw(target), signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => {
                let context = format!("sending {signal} to pid {target} of {}", node.name);
                return Err(ClusterError::Os { context, source });
            }
        }
    }
    Ok(())
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: i32) -> Vec<i32> {
    let entries = fs::read_dir("/proc").into_iter().flatten().flatten();
    entries
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // Fields after the command name: state, then the parent pid.
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

fn stop_node(node: &Node, mode: StopMode) -> Result<()> {
    let Some(pid) = node.running_pid() else {
        return Ok(());
    };
    // A killed postmaster leaves its children behind: while one still holds the shared
    // memory, the node cannot start again.
    let children = if mode == StopMode::Kill {
        children_of(pid)
    } else {
        Vec::new()
    };
    match kill(Pid::from_raw(pid), mode.signal()) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(source) => {
            let context = format!("signalling the postmaster of {}", node.name);
            return Err(ClusterError::Os { context, source });
        }
    }
    let what = format!("{} (pid {pid}) to stop", node.name);
    wait_until(node, &what, Instant::now() + STOP_TIMEOUT, || {
        Ok(!pid_alive(pid) && !children.iter().any(|child| pid_alive(*child)))
    })
}

/// Polls `check` until it returns true; on timeout reports `node`'s log tail.
fn wait_until(
    node: &Node,
    what: &str,
    deadline: Instant,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    loop {
        // Errors are retried: a node that is still starting up refuses connections.
        let last_error = match check() {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            let what = match last_error {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_string(),
            };
            let (waited, log_tail) = (started.elapsed(), log_tail(node));
            return Err(ClusterError::Timeout {
                what,
                waited,
                log_tail,
            });
        }
        sleep(POLL_INTERVAL);
    }
}

/// Picks a free port and starts the node, retrying when someone else grabs the port first.
fn start_on_fresh_port(bin: &Path, who: &Identity, node: &mut Node) -> Result<()> {
    let conf = node.data_dir.join("postgresql.conf");
    let mut attempt = 0;
    loop {
        attempt += 1;
        node.port = free_port()?;
        append(&conf, &format!("port = {}\n", node.port))?;
        let log_start = fs::metadata(node.log_file()).map_or(0, |m| m.len());
        match pg_ctl_start(bin, who, node) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < START_ATTEMPTS && port_clash(&node.log_file(), log_start) => {
                tracing::debug!(node = %node.name, port = node.port, "port taken, retrying: {e}");
            }
            Err(e) => return Err(e),
        }
    }
}

fn port_clash(log: &Path, from: u64) -> bool {
    let text = fs::read(log).unwrap_or_default();
    let new = String::from_utf8_lossy(text.get(from as usize..).unwrap_or(&[]));
    new.contains("could not create any TCP/IP sockets") || new.contains("Address already in use")
}

fn pg_ctl_start(bin: &Path, who: &Identity, node: &Node) -> Result<()> {
    let mut pg_ctl = who.command(bin.join("pg_ctl"));
    pg_ctl
        .args(["start", "-w", "-t", "60", "-D"])
        .arg(&node.data_dir);
    run(pg_ctl.arg("-l").arg(node.log_file()))
        .map(drop)
        .map_err(|cause| ClusterError::StartFailed {
            node: node.name.clone(),
            cause: Box::new(cause),
            log_tail: log_tail(node),
        })
}

fn psql(
    bin: &Path,
    node: &Node,
    user: &str,
    password: Option<&str>,
    dbname: &str,
    sql: &str,
) -> Result<String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname={} connect_timeout=10",
        node.port,
        conn_value(user),
        conn_value(dbname)
    );
    let mut cmd = Command::new(bin.join("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1"])
        .arg(conninfo)
        .arg("-c")
        .arg(sql)
        .stdin(Stdio::null())
        .env("PGPASSFILE", NO_PASSFILE)
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    let out = cmd.output().map_err(io_err("running psql"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(ClusterError::Sql {
            node: node.name.clone(),
            sql: sql.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs a helper to completion; its stdout on success, otherwise a `CommandFailed`.
fn run(cmd: &mut Command) -> Result<String> {
    let parts: Vec<_> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .collect();
    let command = parts
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().map_err(io_err(format!("running {command}")))?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if out.status.success() {
        return Ok(text(&out.stdout));
    }
    let output = format!("{}{}", text(&out.stderr), text(&out.stdout))
        .trim()
        .to_string();
    let status = out.status.to_string();
    Err(ClusterError::CommandFailed {
        command,
        status,
        output,
    })
}

/// A detached `sh` that stops the postmasters under `base` and deletes it once this
/// process is gone; dropping the guard dismisses it.
#[derive(Debug)]
struct Watchdog(Child);

impl Watchdog {
    fn spawn(base: &Path) -> Result<Self> {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgsplit-cluster-watchdog")
            .arg(std::process::id().to_string())
            .arg(base)
            .current_dir("/")
            // Inherited pipes would keep `cargo test` waiting for EOF until it exits.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so Ctrl-C aimed at the owner does not kill the cleaner.
            .process_group(0)
            .spawn()
            .map(Watchdog)
            .map_err(io_err("spawning the cluster watchdog"))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // It leads its own process group; killing the group also ends its `sleep`.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn server_version(bin: &Path) -> Result<String> {
    let out = run(Command::new(bin.join("initdb")).arg("--version"))?;
    // "initdb (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18"
    let version = out.split_whitespace().nth(2).unwrap_or_default();
    let version: String = version
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    if version.is_empty() {
        return Err(ClusterError::Unexpected(format!(
            "cannot parse `initdb --version`: {out}"
        )));
    }
    Ok(version)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0));
    let addr = listener.and_then(|l| l.local_addr());
    Ok(addr
        .map_err(io_err("probing 127.0.0.1:0 for a free port"))?
        .port())
}

fn pid_alive(pid: i32) -> bool {
    // Orphaned postmasters are reparented to PID 1, which in some containers never reaps
    // them, so a zombie has to count as dead.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X'])),
        Err(_) => !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)),
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(io_err(format!("appending to {}", path.display())))
}

fn write_owned(who: &Identity, path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))?;
    who.own(path)
}

/// The header and last lines of a node's server log, for error messages.
fn log_tail(node: &Node) -> String {
    let path = node.log_file();
    match fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            format!("--- tail of {} ---\n{tail}", path.display())
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// How a standby logs in to stream from the node on `port`.
fn replication_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={REPLICATION_USER} password={REPLICATION_PASSWORD}")
}

/// A SQL string literal.
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Quotes a libpq keyword/value so spaces, quotes and backslashes survive.
fn conn_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
