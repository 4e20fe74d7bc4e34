//! pgsplit against its baselines, in one run on one machine: pgbench through a direct
//! connection to the primary, HAProxy (TCP relay, the floor any extra hop costs), pgbouncer
//! (transaction pooling, parses nothing: the bar), pgsplit (transaction pooling, reads on
//! the standbys only) and, when their binaries are given, PgDog and PgCat (read/write
//! splitting over the same cluster).
//!
//! `cargo bench --bench compare [-- --quick] [--out DIR]` (default DIR: `target/compare`,
//! under `CARGO_TARGET_DIR` when that is set); tuned by the environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PGSPLIT_COMPARE_SECONDS` | 4 | `pgbench -T` of every measured run (1 with `--quick`) |
//! | `PGDOG_BIN` | unset | a PgDog binary: PgDog is measured too |
//! | `PGCAT_BIN` | unset | a PgCat binary: PgCat is measured too |
//! | `PGBOUNCER` | `pgbouncer` on `PATH`, else `/usr/sbin/pgbouncer` | the pgbouncer binary |
//! | `HAPROXY` | `haproxy` on `PATH`, else `/usr/sbin/haproxy` | the HAProxy binary |
//!
//! Every workload runs at each client count against every target in turn (the order
//! rotates from round to round), for 3 rounds; the table shows medians. Then the 90/10
//! workload runs through pgsplit again with read-your-writes off and on (per session,
//! `PGOPTIONS`), and a second table shows the reads each node served and the tps of each. The entry point is
//! [`run`], which `tests/stress/compare_quick.rs` calls in quick mode with the debug binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use pgsplit_cluster::Cluster;

#[path = "compare/peers.rs"]
mod peers;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/runs.rs"]
mod runs;
#[path = "compare/shares.rs"]
mod shares;
#[path = "support/mod.rs"]
pub mod support;

pub use runs::{log_latencies, median, percentile};
use runs::{measure, Bench, RunSpec};
use support::{
    find_pgbouncer, raise_fd_limit, start_pgbouncer, start_pgsplit, Launch, Proxy, Sizing,
    STANDBY_READS,
};

/// `pgbench -c` of every workload.
pub const CLIENTS: [u32; 2] = [8, 64];
/// `pgbench -j`.
const JOBS: u32 = 2;
/// pgbouncer `default_pool_size` and pgsplit, PgDog and PgCat pool size (per node).
const POOL_SIZE: u32 = 20;
/// Clients every proxy must accept: the largest pgbench plus the readiness probes.
const MAX_CLIENT_CONN: u32 = 1000;
/// Open files the proxies need: clients plus server connections, with room to spare.
const FD_NEEDED: u64 = 2 * MAX_CLIENT_CONN as u64 + 256;
/// Rounds of a full run; its medians are reported.
const ROUNDS: u32 = 3;
/// `pgbench -i -s` of a full run and of a quick one.
const SCALE: u32 = 10;
const QUICK_SCALE: u32 = 1;
/// `pgbench -T` of a full run's warm-up, once per target before the first round.
const WARM_UP_SECONDS: u32 = 2;
/// The 90/10 workload: nine reads…
const READ_SCRIPT: &str = "\\set aid random(1, 100000 * :scale)\n\
    SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";
/// …for every write.
const WRITE_SCRIPT: &str = "\\set aid random(1, 100000 * :scale)\n\
    \\set delta random(-5000, 5000)\n\
    UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n";

/// How a comparison is sized, what it measures and where it writes.
pub struct Options {
    /// One round of 1-second runs at scale 1, no warm-up: proves the script works.
    pub quick: bool,
    /// `pgbench -T` of every measured run.
    pub seconds: u32,
    /// The pgsplit binary to measure.
    pub pgsplit_bin: PathBuf,
    /// PgDog and PgCat binaries, measured when given.
    pub pgdog_bin: Option<PathBuf>,
    /// See `pgdog_bin`.
    pub pgcat_bin: Option<PathBuf>,
    /// Where `compare.md`, `compare.csv` and the proxies' logs go.
    pub out_dir: PathBuf,
}

impl Options {
    /// Quick mode with `pgsplit_bin`, writing to `out_dir`; nothing from the environment.
    pub fn quick(pgsplit_bin: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            quick: true,
            seconds: 1,
            pgsplit_bin,
            pgdog_bin: None,
            pgcat_bin: None,
            out_dir,
        }
    }

    /// From the bench's arguments (`--quick`, `--out DIR`) and the environment.
    fn from_args(args: &[String], pgsplit_bin: PathBuf) -> Result<Self, String> {
        let mut quick = false;
        // Next to the build, wherever CARGO_TARGET_DIR puts it.
        let mut out_dir = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("compare");
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo passes `--bench` to every bench binary it runs.
                "--bench" => {}
                "--quick" => quick = true,
                "--out" => {
                    out_dir = args
                        .next()
                        .map(PathBuf::from)
                        .ok_or("--out needs a directory")?;
                }
                other => match other.strip_prefix("--out=") {
                    Some(dir) => out_dir = PathBuf::from(dir),
                    None => {
                        return Err(format!(
                            "unknown argument {other:?}: expected --quick or --out DIR"
                        ))
                    }
                },
            }
        }
        let seconds = if quick {
            1
        } else {
            support::env_or("PGSPLIT_COMPARE_SECONDS", 4)?
        };
        if seconds == 0 {
            return Err("PGSPLIT_COMPARE_SECONDS must be at least 1".into());
        }
        let bin = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Ok(Self {
            quick,
            seconds,
            pgsplit_bin,
            pgdog_bin: bin("PGDOG_BIN"),
            pgcat_bin: bin("PGCAT_BIN"),
            out_dir,
        })
    }

    fn rounds(&self) -> u32 {
        if self.quick {
            1
        } else {
            ROUNDS
        }
    }

    fn scale(&self) -> u32 {
        if self.quick {
            QUICK_SCALE
        } else {
            SCALE
        }
    }
}

/// A pgbench workload with the query mode it runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `pgbench -S -M simple`: one primary-key lookup per transaction.
    SelectSimple,
    /// `-S -M extended`: the same, Parse/Bind/Execute every time.
    SelectExtended,
    /// `-S -M prepared`: the same through a named prepared statement.
    SelectPrepared,
    /// The built-in TPC-B-like script; `-M extended` so pgbouncer before 1.21 can run it.
    TpcB,
    /// Nine primary-key reads for one single-row update (`-f read@9 -f write@1`),
    /// `-M extended` as for TPC-B.
    ReadWrite,
}

impl Workload {
    /// Every workload, in the order of the table.
    pub const ALL: [Workload; 5] = [
        Workload::SelectSimple,
        Workload::SelectExtended,
        Workload::SelectPrepared,
        Workload::TpcB,
        Workload::ReadWrite,
    ];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SelectSimple | Workload::SelectExtended | Workload::SelectPrepared => {
                "select-only (-S)"
            }
            Workload::TpcB => "TPC-B",
            Workload::ReadWrite => "90/10 read/write",
        }
    }

    /// Its `pgbench -M`.
    pub fn mode(self) -> &'static str {
        match self {
            Workload::SelectSimple => "simple",
            Workload::SelectPrepared => "prepared",
            Workload::SelectExtended | Workload::TpcB | Workload::ReadWrite => "extended",
        }
    }

    /// pgbench arguments that select it; the 90/10 scripts are in `scripts`.
    fn args(self, scripts: &Path, scale: u32) -> Vec<String> {
        let mut args = vec!["-M".to_string(), self.mode().to_string()];
        match self {
            Workload::SelectSimple | Workload::SelectExtended | Workload::SelectPrepared => {
                args.push("-S".into());
            }
            Workload::TpcB => {}
            Workload::ReadWrite => {
                // Custom scripts do not look up the scale; `:scale` comes from `-s`.
                args.extend(["-s".into(), scale.to_string()]);
                for (file, weight) in [("read.sql", 9), ("write.sql", 1)] {
                    args.push("-f".into());
                    args.push(format!("{}@{weight}", scripts.join(file).display()));
                }
            }
        }
        args
    }
}

/// What pgbench connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// The primary itself.
    Direct,
    /// HAProxy in TCP mode in front of the primary.
    Haproxy,
    /// pgbouncer in transaction mode in front of the primary.
    Pgbouncer,
    /// pgsplit, transaction pooling, reads on the standbys only.
    Pgsplit,
    /// PgDog with read/write splitting, replicas only for reads.
    Pgdog,
    /// PgCat with its query parser splitting reads from writes, replicas only for reads.
    Pgcat,
}

impl TargetKind {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Haproxy => "haproxy",
            TargetKind::Pgbouncer => "pgbouncer",
            TargetKind::Pgsplit => "pgsplit",
            TargetKind::Pgdog => "pgdog",
            TargetKind::Pgcat => "pgcat",
        }
    }
}

/// A target and, for a proxy, its running process.
struct Target {
    kind: TargetKind,
    port: u16,
    proxy: Option<Proxy>,
}

/// Medians of one cell's runs.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    /// Transactions per second, without connection set-up.
    pub tps: f64,
    /// Average latency, ms.
    pub avg_ms: f64,
    /// 99th percentile of per-transaction latency (pgbench's `--log`), ms.
    pub p99_ms: f64,
}

/// How one cell ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Every round ran with no failed transaction.
    Measured(Figures),
    /// A round failed; `expected` when the target is known not to support the workload.
    Failed {
        /// What went wrong, from pgbench or the proxy.
        reason: String,
        /// Known limitation (pgbouncer before 1.21 with `-M prepared`).
        expected: bool,
    },
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The workload.
    pub workload: Workload,
    /// `pgbench -c`.
    pub clients: u32,
    /// The target.
    pub target: TargetKind,
    /// Its figures or why there are none.
    pub outcome: Outcome,
}

/// What a comparison produced.
pub struct Report {
    /// Every cell, in table order.
    pub cells: Vec<Cell>,
    /// The Markdown table.
    pub markdown: PathBuf,
    /// The CSV table.
    pub csv: PathBuf,
    /// Warnings and errors in pgsplit's log, grouped: (count, message).
    pub pgsplit_log: Vec<(usize, String)>,
    /// The 90/10 workload's reads per node through pgsplit, read-your-writes off and on.
    pub shares: Vec<shares::Share>,
}

impl Report {
    /// Cells that failed although their target should run them.
    pub fn unexpected_failures(&self) -> impl Iterator<Item = &Cell> {
        self.cells.iter().filter(|c| {
            matches!(
                c.outcome,
                Outcome::Failed {
                    expected: false,
                    ..
                }
            )
        })
    }
}

/// Why `target` cannot run `workload`, if it is known not to.
fn known_limitation(
    target: TargetKind,
    workload: Workload,
    bouncer: &support::Pgbouncer,
) -> Option<String> {
    (target == TargetKind::Pgbouncer
        && workload == Workload::SelectPrepared
        && !bouncer.keeps_prepared())
    .then(|| {
        format!(
            "pgbouncer {} keeps no prepared statements in transaction mode \
             (max_prepared_statements came in 1.21)",
            bouncer.version
        )
    })
}

/// Starts the cluster and every target, runs every cell, prints the table and writes it.
pub fn run(options: &Options) -> Result<Report, String> {
    let started = Instant::now();
    // Missing tools are found before the cluster is built: without them there is nothing
    // to compare.
    let bouncer = find_pgbouncer()?;
    let haproxy = peers::find_haproxy()?;
    let fd_limit = raise_fd_limit()?;
    if fd_limit < FD_NEEDED {
        println!(
            "warning: the open-file limit is {fd_limit}, under the ~{FD_NEEDED} the proxies may \
             need with {} clients: raise it (ulimit -Hn) if runs fail with `too many open files`",
            CLIENTS[CLIENTS.len() - 1]
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let logs = options.out_dir.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let work = tempfile::Builder::new()
        .prefix("pgsplit-compare-")
        .tempdir()
        .map_err(|e| format!("creating a work directory: {e}"))?;
    for (file, text) in [("read.sql", READ_SCRIPT), ("write.sql", WRITE_SCRIPT)] {
        let path = work.path().join(file);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }

    let scale = options.scale();
    println!("compare: starting a primary and 2 hot standbys, pgbench -i -s {scale}");
    let cluster =
        Cluster::with_standbys(2).map_err(|e| format!("cannot start the cluster: {e}"))?;
    cluster
        .pgbench_init(scale)
        .map_err(|e| format!("pgbench -i -s {scale}: {e}"))?;

    let Started {
        mut targets,
        versions,
        mut notes,
    } = start_targets(
        &cluster,
        options,
        (&bouncer, &haproxy),
        work.path(),
        &logs,
        &runtime,
    )?;

    let machine = report::Machine::describe(versions, &options.pgsplit_bin);
    let plan = format!(
        "{} workloads × {} client counts × {} targets × {} round(s) of {} s",
        Workload::ALL.len(),
        CLIENTS.len(),
        targets.len(),
        options.rounds(),
        options.seconds
    );
    println!("{}", machine.text());
    println!("compare: {plan}");

    let bench = Bench {
        cluster: &cluster,
        scripts: work.path(),
        scale,
    };
    if !options.quick {
        // Fills the pools and PostgreSQL's buffers before anything is measured.
        for target in &mut targets {
            let spec = RunSpec {
                workload: Workload::SelectSimple,
                clients: CLIENTS[CLIENTS.len() - 1],
                seconds: WARM_UP_SECONDS,
                pgoptions: None,
            };
            if let Err(e) = bench.pgbench(target, spec) {
                println!(
                    "warning: warm-up through {} failed: {e}",
                    target.kind.name()
                );
            }
        }
    }

    let cells = measure(&bench, &mut targets, options, &bouncer);
    let shares = match targets.iter_mut().find(|t| t.kind == TargetKind::Pgsplit) {
        Some(pgsplit) => shares::measure(&bench, pgsplit, options).unwrap_or_else(|e| {
            notes.push(format!(
                "reads per node with read_your_writes off and on: failed: {e}"
            ));
            Vec::new()
        }),
        None => Vec::new(),
    };
    let pgsplit_log = report::log_problems(&logs.join("pgsplit.log"));
    for target in &mut targets {
        if let Some(proxy) = target.proxy.as_mut() {
            if let Err(e) = proxy.check_running() {
                notes.push(format!("{} is no longer running: {e}", target.kind.name()));
            }
        }
    }
    // pgsplit logs what it routed where when it stops: proof that reads went to standbys.
    drop(targets);
    if let Some(line) = report::last_line_with(&logs.join("pgsplit.log"), "pgsplit stopped") {
        notes.push(format!("pgsplit, on stopping: {line}"));
    }
    notes.push(
        "TPC-B and the 90/10 script run with -M extended, which pgbouncer before 1.21 can run"
            .into(),
    );
    let table = report::Table {
        machine: &machine,
        plan: &plan,
        cells: &cells,
        notes: &notes,
        pgsplit_log: &pgsplit_log,
        elapsed: started.elapsed(),
    };
    println!("\n{}", table.text());
    let shares_text = shares::table(&shares, false);
    println!("\n90/10 -M extended through pgsplit, reads served per node:\n{shares_text}");
    fs::create_dir_all(&options.out_dir)
        .map_err(|e| format!("creating {}: {e}", options.out_dir.display()))?;
    let markdown = options.out_dir.join("compare.md");
    let csv = options.out_dir.join("compare.csv");
    let shares_markdown = format!(
        "\n## 90/10 through pgsplit: reads per node, read_your_writes off and on\n\n{}",
        shares::table(&shares, true)
    );
    fs::write(&markdown, table.markdown() + &shares_markdown)
        .map_err(|e| format!("writing {}: {e}", markdown.display()))?;
    fs::write(&csv, table.csv()).map_err(|e| format!("writing {}: {e}", csv.display()))?;
    println!(
        "compare: wrote {} and {}",
        markdown.display(),
        csv.display()
    );
    Ok(Report {
        cells,
        markdown,
        csv,
        pgsplit_log,
        shares,
    })
}

/// The targets, running, with the versions of what runs them and notes on what was left out.
struct Started {
    targets: Vec<Target>,
    versions: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

/// Starts HAProxy, pgbouncer, pgsplit and whichever of PgDog and PgCat were given, their
/// configurations under `work` and their logs in `logs`. Only PgDog and PgCat may be left
/// out (with a note): they are optional, the baselines are not.
fn start_targets(
    cluster: &Cluster,
    options: &Options,
    (bouncer, haproxy): (&support::Pgbouncer, &peers::Haproxy),
    work: &Path,
    logs: &Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Started, String> {
    let sizing = Sizing {
        pool_size: POOL_SIZE,
        max_client_conn: MAX_CLIENT_CONN,
    };
    let dir = |name: &str| {
        let dir = work.join(name);
        fs::create_dir(&dir)
            .map(|()| dir.clone())
            .map_err(|e| format!("creating {}: {e}", dir.display()))
    };
    let mut targets = vec![Target {
        kind: TargetKind::Direct,
        port: cluster.primary().port,
        proxy: None,
    }];
    let haproxy_proxy = peers::start_haproxy(
        cluster,
        &haproxy.bin,
        &dir("haproxy")?,
        logs.join("haproxy.log"),
        runtime,
    )?;
    let bouncer_proxy = start_pgbouncer(
        cluster,
        bouncer,
        sizing,
        &dir("pgbouncer")?,
        Launch::direct(logs.join("pgbouncer.log")),
        runtime,
    )?;
    let pgsplit_proxy = start_pgsplit(
        cluster,
        &options.pgsplit_bin,
        sizing,
        STANDBY_READS,
        &dir("pgsplit")?,
        Launch::direct(logs.join("pgsplit.log")),
        runtime,
    )?;
    for (kind, proxy) in [
        (TargetKind::Haproxy, haproxy_proxy),
        (TargetKind::Pgbouncer, bouncer_proxy),
        (TargetKind::Pgsplit, pgsplit_proxy),
    ] {
        targets.push(Target {
            kind,
            port: proxy.port,
            proxy: Some(proxy),
        });
    }
    let mut versions = vec![
        (
            "PostgreSQL",
            support::version_line(&cluster.pg_bin().join("postgres"), "--version"),
        ),
        ("pgbouncer", bouncer.version.clone()),
        ("HAProxy", haproxy.version.clone()),
    ];
    let mut notes = Vec::new();
    let peers_wanted = [
        (TargetKind::Pgdog, options.pgdog_bin.as_deref()),
        (TargetKind::Pgcat, options.pgcat_bin.as_deref()),
    ];
    for (kind, bin) in peers_wanted {
        let Some(bin) = bin else {
            notes.push(format!(
                "{} not measured: set {}_BIN to its binary to include it",
                kind.name(),
                kind.name().to_uppercase()
            ));
            continue;
        };
        // Only the peers may be left out: they are optional, the baselines are not.
        let started = dir(kind.name()).and_then(|d| {
            let log = logs.join(format!("{}.log", kind.name()));
            match kind {
                TargetKind::Pgdog => peers::start_pgdog(cluster, bin, sizing, &d, log, runtime),
                _ => peers::start_pgcat(cluster, bin, sizing, &d, log, runtime),
            }
        });
        match started {
            Ok(proxy) => {
                versions.push((kind.name(), support::version_line(bin, "--version")));
                targets.push(Target {
                    kind,
                    port: proxy.port,
                    proxy: Some(proxy),
                });
            }
            Err(e) => {
                println!("warning: {} left out: {e}", kind.name());
                notes.push(format!("{} left out: it did not start", kind.name()));
            }
        }
    }
    Ok(Started {
        targets,
        versions,
        notes,
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs benches without `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    // The bench profile builds this package's binary optimised, next to the bench.
    let pgsplit_bin = PathBuf::from(env!("CARGO_BIN_EXE_pgsplit"));
    let result = Options::from_args(&args, pgsplit_bin).and_then(|options| run(&options));
    match result {
        Ok(report) => {
            let failed = report.unexpected_failures().count();
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!("compare: {failed} cells failed (see the notes under the table)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}
