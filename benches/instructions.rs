//! Instructions pgsplit executes per `pgbench -S` transaction, counted by valgrind's
//! callgrind, next to pgbouncer's (transaction mode, in front of the primary) as the
//! baseline: the stable cost figure of issue 8. Unlike tps, an instruction count does not
//! move with the load other jobs put on the machine, so it can be tracked across changes.
//!
//! `cargo bench --bench instructions`. It starts the local cluster (1 primary, 2 hot
//! standbys, `pgbench -i -s 1`), the release pgsplit (transaction pooling, reads on the
//! standbys only, as in `compare`) and pgbouncer, each under `valgrind --tool=callgrind`.
//! For each proxy and each of `-M simple`, `extended` and `prepared` it warms up, then runs
//! `pgbench -n -S -c 4 -j 1` twice, for N1 and N2 transactions per client, with the
//! counters zeroed before and dumped after each run. What every run pays once (4 SCRAM
//! logins, connection set-up) is the same in both, so
//! `(I(N2) - I(N1)) / (4 × (N2 - N1))` is the cost of one transaction.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PGSPLIT_INSTR_TXNS` | 500 | N1, transactions per client of the short run; N2 = 5 × N1 |
//! | `PGBOUNCER` | `pgbouncer` on `PATH`, else `/usr/sbin/pgbouncer` | the pgbouncer binary |
//!
//! The table goes to `target/instructions/instructions.md` (under `CARGO_TARGET_DIR` when
//! set), the measured dumps to `callgrind.out.<proxy>-<mode>-t<N>` beside it, for
//! `callgrind_annotate`, and the proxies' logs to `logs/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use pgsplit_cluster::{Cluster, APP_DATABASE};

#[path = "instructions/callgrind.rs"]
mod callgrind;
#[path = "support/mod.rs"]
mod support;

use callgrind::Counter;
use support::{
    find_pgbouncer, pgbench_command, pgbouncer_identity, run_bounded, start_pgbouncer,
    start_pgsplit, version_line, Launch, Pgbouncer, Proxy, Sizing, STANDBY_READS,
};

/// `pgbench -c`: enough concurrent clients that the pools are used as in a real load.
const CLIENTS: u32 = 4;
/// N1 when `PGSPLIT_INSTR_TXNS` is unset.
const DEFAULT_TXNS: u32 = 500;
/// N2 = N1 × this.
const LONG_RUN_FACTOR: u32 = 5;
/// Transactions per client of the warm-up, which fills the pools (and, with `-M
/// prepared`, prepares the statement) before anything is counted.
const WARM_UP_TXNS: u32 = 200;
/// `pgbench -c` of the warm-up: more than `CLIENTS`, so that each pool holds more server
/// connections than the measured clients can ever use at once. A connection opened during
/// a measured run costs a SCRAM login to PostgreSQL (~57 million instructions in pgsplit)
/// and moved the per-transaction figure by up to 20 % when the warm-up used 4 clients.
const WARM_UP_CLIENTS: u32 = 4 * CLIENTS;
/// `pgbench -i -s`: `-S` reads one row by primary key, whatever the scale.
const SCALE: u32 = 1;
/// pgsplit `max_pool_size` (per node) and pgbouncer `default_pool_size`, as in `compare`.
const POOL_SIZE: u32 = 20;
/// `max_client_conn` of both, as in `compare`.
const MAX_CLIENT_CONN: u32 = 1000;
/// How long a proxy under valgrind gets to answer a first query (it starts ~50× slower).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pgbench run may take before it is killed: this, plus `PER_TXN_LIMIT` per
/// transaction (a proxy under callgrind serves a few hundred a second).
const PGBENCH_LIMIT: Duration = Duration::from_secs(60);
/// See `PGBENCH_LIMIT`.
const PER_TXN_LIMIT: Duration = Duration::from_millis(20);
/// Left after pgbench exits, before the dump, for the proxy to finish with the closed
/// clients: that work belongs to the run, and the next zeroing would lose it.
const SETTLE: Duration = Duration::from_millis(500);
/// pgbench query modes, in the table's order.
const MODES: [&str; 3] = ["simple", "extended", "prepared"];
/// The cell whose long-run dump is summarised as a profile hint: the mode pgsplit is
/// expected to be fastest in, so what remains there is its own cost.
const PROFILED: (&str, &str) = ("pgsplit", "prepared");
/// Functions the profile hint lists.
const PROFILE_FUNCTIONS: usize = 15;

/// How many transactions each run does and where the results go.
struct Options {
    /// N1: transactions per client of the short run.
    short: u32,
    /// N2: transactions per client of the long run.
    long: u32,
    /// The pgsplit binary to measure.
    pgsplit_bin: PathBuf,
    /// Where the table, the kept dumps and the logs go.
    out_dir: PathBuf,
}

impl Options {
    /// From the bench's arguments (only cargo's `--bench`) and the environment.
    fn from_args(args: &[String], pgsplit_bin: PathBuf) -> Result<Self, String> {
        if let Some(other) = args.iter().find(|a| *a != "--bench") {
            return Err(format!(
                "unknown argument {other:?}: this bench takes none (set PGSPLIT_INSTR_TXNS \
                 to change the run lengths)"
            ));
        }
        let short = support::env_or("PGSPLIT_INSTR_TXNS", DEFAULT_TXNS)?;
        let long = short.checked_mul(LONG_RUN_FACTOR).filter(|_| short > 0);
        let Some(long) = long else {
            return Err(format!(
                "PGSPLIT_INSTR_TXNS must be between 1 and {}",
                u32::MAX / LONG_RUN_FACTOR
            ));
        };
        // Next to the build, wherever CARGO_TARGET_DIR puts it.
        let out_dir = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("target"), PathBuf::from)
            .join("instructions");
        Ok(Self {
            short,
            long,
            pgsplit_bin,
            out_dir,
        })
    }
}

/// A proxy running under callgrind.
struct Target {
    /// Its name in the table and in the dumps' names.
    name: &'static str,
    proxy: Proxy,
    counter: Counter,
}

/// What one (proxy, mode) cell came to.
enum Outcome {
    /// Instructions per transaction.
    Measured(f64),
    /// Not measured, and why.
    Skipped(String),
}

/// One row of the table.
struct Cell {
    target: &'static str,
    mode: &'static str,
    outcome: Outcome,
}

/// What every pgbench run shares.
struct Bench<'a> {
    cluster: &'a Cluster,
    /// Where each run's output goes, in a directory of its own.
    work: &'a Path,
    options: &'a Options,
}

impl Bench<'_> {
    /// Runs `pgbench -n -S -M mode -c clients -j 1 -t txns` through `target`; an exited
    /// proxy, a pgbench error, a failed transaction or a missing one is an error that says
    /// which.
    fn pgbench(
        &self,
        target: &mut Target,
        mode: &str,
        clients: u32,
        txns: u32,
    ) -> Result<(), String> {
        let run_dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(self.work)
            .map_err(|e| format!("creating a run directory: {e}"))?;
        let mut cmd = pgbench_command(self.cluster, target.proxy.port);
        cmd.args(["-n", "-S", "-M", mode])
            .args(["-c", &clients.to_string(), "-j", "1"])
            .args(["-t", &txns.to_string()])
            .arg(APP_DATABASE);
        let limit = PGBENCH_LIMIT + PER_TXN_LIMIT * clients * txns;
        let finished = run_bounded(cmd, limit, run_dir.path());
        // A proxy that died explains a failed run better than pgbench does.
        target.proxy.check_running()?;
        let finished = finished?;
        finished.pgbench_summary()?;
        // The per-transaction figure divides by what was asked for, so all of it must
        // have been done.
        let expected = u64::from(clients) * u64::from(txns);
        match processed(&finished.stdout) {
            Some(done) if done == expected => Ok(()),
            done => Err(format!(
                "pgbench processed {} of {expected} transactions\n{}",
                done.map_or_else(|| "an unknown number".to_string(), |n| n.to_string()),
                finished.stdout
            )),
        }
    }

    /// Zeroes `target`'s counters, runs `txns` transactions per client, dumps the counters
    /// and keeps the dump in the output directory; returns the instructions counted.
    fn counted(&self, target: &mut Target, mode: &str, txns: u32) -> Result<u64, String> {
        target.counter.zero()?;
        let started = Instant::now();
        self.pgbench(target, mode, CLIENTS, txns)?;
        sleep(SETTLE);
        let dump = target.counter.dump()?;
        let instructions = callgrind::total(&dump)?;
        let kept = kept_dump(&self.options.out_dir, target.name, mode, txns);
        fs::copy(&dump, &kept)
            .map_err(|e| format!("copying {} to {}: {e}", dump.display(), kept.display()))?;
        println!(
            "instructions: {:<9} -M {mode:<8} -t {txns:<6} {instructions:>15} instructions \
             ({:.1} s)",
            target.name,
            started.elapsed().as_secs_f64()
        );
        Ok(instructions)
    }

    /// Instructions per transaction through `target` in `mode`.
    fn measure(&self, target: &mut Target, mode: &str) -> Result<f64, String> {
        self.pgbench(target, mode, WARM_UP_CLIENTS, WARM_UP_TXNS)
            .map_err(|e| format!("warm-up: {e}"))?;
        let (short, long) = (self.options.short, self.options.long);
        let i1 = self.counted(target, mode, short)?;
        let i2 = self.counted(target, mode, long)?;
        if i2 <= i1 {
            return Err(format!(
                "the run of {long} transactions per client counted {i2} instructions, no more \
                 than the run of {short} ({i1}): the counters did not follow the runs"
            ));
        }
        Ok((i2 - i1) as f64 / f64::from(CLIENTS * (long - short)))
    }
}

/// "number of transactions actually processed: 2000/2000" in a pgbench report.
fn processed(report: &str) -> Option<u64> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
}

/// Where the dump of `target`'s run of `txns` per client in `mode` is kept; the
/// `callgrind.out.` prefix is what KCachegrind looks for.
fn kept_dump(out_dir: &Path, target: &str, mode: &str, txns: u32) -> PathBuf {
    out_dir.join(format!("callgrind.out.{target}-{mode}-t{txns}"))
}

/// Why pgbouncer cannot run `mode`, if it is known not to.
fn pgbouncer_limitation(bouncer: &Pgbouncer, mode: &str) -> Option<String> {
    (mode == "prepared" && !bouncer.keeps_prepared()).then(|| {
        format!(
            "pgbouncer {} keeps no prepared statements in transaction mode \
             (max_prepared_statements came in 1.21): -M prepared not measured",
            bouncer.version
        )
    })
}

/// Empties the output directory of what an earlier run left (dumps of other run lengths
/// would be mistaken for this run's) and creates it with its `logs/`.
fn prepare_out_dir(out_dir: &Path) -> Result<PathBuf, String> {
    let logs = out_dir.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let entries =
        fs::read_dir(out_dir).map_err(|e| format!("reading {}: {e}", out_dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", out_dir.display()))?
            .path();
        let stale = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("callgrind.out."));
        if stale {
            fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    Ok(logs)
}

/// Starts pgsplit and pgbouncer under callgrind, their configurations and callgrind's
/// files in `work`, their logs in `logs`.
fn start_targets(
    cluster: &Cluster,
    options: &Options,
    bouncer: &Pgbouncer,
    work: &Path,
    logs: &Path,
    runtime: &tokio::runtime::Runtime,
) -> Result<Vec<Target>, String> {
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
    let launch = |dir: &Path, name: &str| Launch {
        log: logs.join(format!("{name}.log")),
        wrapper: callgrind::wrapper(dir, name),
        ready_timeout: READY_TIMEOUT,
    };

    let pgsplit_dir = dir("pgsplit")?;
    println!("instructions: starting pgsplit under callgrind");
    let pgsplit = start_pgsplit(
        cluster,
        &options.pgsplit_bin,
        sizing,
        STANDBY_READS,
        &pgsplit_dir,
        launch(&pgsplit_dir, "pgsplit"),
        runtime,
    )?;
    let pgsplit_counter = Counter::new(pgsplit.pid(), &pgsplit_dir, "pgsplit", None);

    // start_pgbouncer hands this directory to pgbouncer's OS user, so valgrind, which
    // runs as that user, can write its dumps there.
    let bouncer_dir = dir("pgbouncer")?;
    println!("instructions: starting pgbouncer under callgrind");
    let pgbouncer = start_pgbouncer(
        cluster,
        bouncer,
        sizing,
        &bouncer_dir,
        launch(&bouncer_dir, "pgbouncer"),
        runtime,
    )?;
    let bouncer_counter = Counter::new(
        pgbouncer.pid(),
        &bouncer_dir,
        "pgbouncer",
        pgbouncer_identity()?,
    );
    Ok(vec![
        Target {
            name: "pgsplit",
            proxy: pgsplit,
            counter: pgsplit_counter,
        },
        Target {
            name: "pgbouncer",
            proxy: pgbouncer,
            counter: bouncer_counter,
        },
    ])
}

/// The table of `cells` in Markdown, with how it was measured above it and skipped cells
/// below it.
fn markdown(cells: &[Cell], options: &Options, versions: &str) -> String {
    let per_txn = |target: &str, mode: &str| {
        cells.iter().find_map(|c| match c.outcome {
            Outcome::Measured(v) if c.target == target && c.mode == mode => Some(v),
            _ => None,
        })
    };
    let mut text = format!(
        "Instructions per `pgbench -S` transaction, counted by callgrind (user-space \
         instructions of the proxy process, libraries included), `-c {CLIENTS} -j 1`, \
         (I(N2) − I(N1)) / ({CLIENTS} × (N2 − N1)) with N1 = {} and N2 = {} transactions \
         per client. {versions}.\n\n\
         | target | mode | instructions / transaction | pgsplit / pgbouncer |\n\
         |---|---|---:|---:|\n",
        options.short, options.long
    );
    for cell in cells {
        let (figure, ratio) = match &cell.outcome {
            Outcome::Measured(v) => {
                let ratio = match (
                    per_txn("pgsplit", cell.mode),
                    per_txn("pgbouncer", cell.mode),
                ) {
                    (Some(ours), Some(theirs)) if cell.target == "pgsplit" => {
                        format!("{:.2}", ours / theirs)
                    }
                    _ => String::new(),
                };
                (format!("{v:.0}"), ratio)
            }
            Outcome::Skipped(_) => ("not measured".to_string(), String::new()),
        };
        text.push_str(&format!(
            "| {} | {} | {figure} | {ratio} |\n",
            cell.target, cell.mode
        ));
    }
    for cell in cells {
        if let Outcome::Skipped(why) = &cell.outcome {
            text.push_str(&format!("\n{why}.\n"));
        }
    }
    text
}

/// Starts everything, measures every cell, prints and writes the table and the profile
/// hint.
fn run(options: &Options) -> Result<(), String> {
    // Missing tools are found before the cluster is built: without them there is nothing
    // to count.
    let valgrind = callgrind::find_tools()?;
    let bouncer = find_pgbouncer()?;
    let logs = prepare_out_dir(&options.out_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let work = tempfile::Builder::new()
        .prefix("pgsplit-instructions-")
        .tempdir()
        .map_err(|e| format!("creating a work directory: {e}"))?;

    println!("instructions: starting a primary and 2 hot standbys, pgbench -i -s {SCALE}");
    let cluster =
        Cluster::with_standbys(2).map_err(|e| format!("cannot start the cluster: {e}"))?;
    cluster
        .pgbench_init(SCALE)
        .map_err(|e| format!("pgbench -i -s {SCALE}: {e}"))?;
    let versions = format!(
        "{valgrind}, PgBouncer {}, {}",
        bouncer.version,
        version_line(&cluster.pg_bin().join("postgres"), "--version")
    );
    let mut targets = start_targets(&cluster, options, &bouncer, work.path(), &logs, &runtime)?;

    let bench = Bench {
        cluster: &cluster,
        work: work.path(),
        options,
    };
    let mut cells = Vec::new();
    for target in &mut targets {
        for mode in MODES {
            let limitation = (target.name == "pgbouncer")
                .then(|| pgbouncer_limitation(&bouncer, mode))
                .flatten();
            let outcome = match limitation {
                Some(why) => {
                    println!("instructions: {why}");
                    Outcome::Skipped(why)
                }
                None => Outcome::Measured(
                    bench
                        .measure(target, mode)
                        .map_err(|e| format!("{} -M {mode}: {e}", target.name))?,
                ),
            };
            cells.push(Cell {
                target: target.name,
                mode,
                outcome,
            });
        }
    }
    // Stops the proxies before the table is printed, so nothing runs while it is read.
    drop(targets);

    let table = markdown(&cells, options, &versions);
    println!("\n{table}");
    let table_path = options.out_dir.join("instructions.md");
    fs::write(&table_path, &table).map_err(|e| format!("writing {}: {e}", table_path.display()))?;
    println!("instructions: wrote {}", table_path.display());

    let (target, mode) = PROFILED;
    let profiled = kept_dump(&options.out_dir, target, mode, options.long);
    // A hint only: the table is the result, so a profile that cannot be read is a warning.
    match callgrind::top_functions(&profiled, PROFILE_FUNCTIONS) {
        Ok(top) => println!(
            "\nTop {PROFILE_FUNCTIONS} functions by self cost, {target} -M {mode}, \
             {} transactions per client (callgrind_annotate --inclusive=no {}):\n{top}",
            options.long,
            profiled.display()
        ),
        Err(e) => println!("warning: no profile hint: {e}"),
    }
    println!(
        "instructions: dumps kept in {} for callgrind_annotate",
        options.out_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs benches without `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    // The bench profile builds this package's binary optimised, next to the bench.
    let pgsplit_bin = PathBuf::from(env!("CARGO_BIN_EXE_pgsplit"));
    let result = Options::from_args(&args, pgsplit_bin).and_then(|options| run(&options));
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!("instructions: done in {elapsed:.0} s");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("instructions: {e} (after {elapsed:.0} s)");
            ExitCode::FAILURE
        }
    }
}
