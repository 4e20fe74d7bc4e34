//! Running the cells: one pgbench run against one target, rounds of every cell, medians.

use std::fs;
use std::path::Path;
use std::time::Duration;

use pgsplit_cluster::{Cluster, APP_DATABASE};

use super::support::{pgbench_command, run_bounded, Pgbouncer};
use super::{known_limitation, Cell, Figures, Options, Outcome, Target, Workload, CLIENTS, JOBS};

/// How long past its `-T` a pgbench run may take (connecting, draining) before it is
/// killed and its cell fails.
const PGBENCH_GRACE: Duration = Duration::from_secs(60);

/// Runs every round and reduces each cell's runs to medians.
pub fn measure(
    bench: &Bench,
    targets: &mut [Target],
    options: &Options,
    bouncer: &Pgbouncer,
) -> Vec<Cell> {
    let rounds = options.rounds();
    // One result per round for each cell, cells in table order.
    let n_targets = targets.len();
    let cell = move |w: usize, c: usize, t: usize| (w * CLIENTS.len() + c) * n_targets + t;
    let mut runs: Vec<Vec<Result<Figures, String>>> =
        vec![Vec::new(); Workload::ALL.len() * CLIENTS.len() * targets.len()];
    for round in 0..rounds {
        for (w, &workload) in Workload::ALL.iter().enumerate() {
            for (c, &clients) in CLIENTS.iter().enumerate() {
                // Rotating the order spreads any drift within a round over every target.
                let mut order: Vec<usize> = (0..targets.len()).collect();
                order.rotate_left(round as usize % targets.len());
                for t in order {
                    let target = &mut targets[t];
                    let spec = RunSpec {
                        workload,
                        clients,
                        seconds: options.seconds,
                        pgoptions: None,
                    };
                    let result = bench.pgbench(target, spec);
                    let shown = match &result {
                        Ok(f) => format!(
                            "{:>9.0} tps {:>8.3} ms avg {:>8.3} ms p99",
                            f.tps, f.avg_ms, f.p99_ms
                        ),
                        Err(e) => format!("fails: {}", e.lines().next().unwrap_or("")),
                    };
                    println!(
                        "round {}/{rounds}  {:<17} -M {:<8} -c {:<3} {:<10} {shown}",
                        round + 1,
                        workload.name(),
                        workload.mode(),
                        clients,
                        target.kind.name()
                    );
                    runs[cell(w, c, t)].push(result);
                }
            }
        }
    }
    let mut cells = Vec::new();
    for (w, &workload) in Workload::ALL.iter().enumerate() {
        for (c, &clients) in CLIENTS.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let results = &runs[cell(w, c, t)];
                let failed: Vec<&String> =
                    results.iter().filter_map(|r| r.as_ref().err()).collect();
                let outcome = match failed.first() {
                    Some(first) => {
                        let limitation = known_limitation(target.kind, workload, bouncer);
                        let mut reason = (*first).clone();
                        if failed.len() < results.len() {
                            reason = format!(
                                "in {} of {} rounds: {reason}",
                                failed.len(),
                                results.len()
                            );
                        }
                        if let Some(why) = &limitation {
                            reason = format!("{why}: {reason}");
                        }
                        Outcome::Failed {
                            reason,
                            expected: limitation.is_some(),
                        }
                    }
                    None => {
                        let figures: Vec<&Figures> = results.iter().flatten().collect();
                        let median_of =
                            |f: fn(&Figures) -> f64| median(figures.iter().map(|x| f(x)).collect());
                        Outcome::Measured(Figures {
                            tps: median_of(|f| f.tps),
                            avg_ms: median_of(|f| f.avg_ms),
                            p99_ms: median_of(|f| f.p99_ms),
                        })
                    }
                };
                cells.push(Cell {
                    workload,
                    clients,
                    target: target.kind,
                    outcome,
                });
            }
        }
    }
    cells
}

/// The middle value (the mean of the two middle ones for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The nearest-rank `p`th percentile of `values`; `None` when there are none.
pub fn percentile(mut values: Vec<u64>, p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Per-transaction latencies (µs) in pgbench `--log` text: the third field of each line
/// (`client_id transaction_no time script_no time_epoch time_us …`); failed or skipped
/// transactions, whose time is a word, are left out.
pub fn log_latencies(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.lines()
        .filter_map(|line| line.split_whitespace().nth(2)?.parse().ok())
}

/// What every run shares.
pub struct Bench<'a> {
    /// The cluster pgbench connects to.
    pub cluster: &'a Cluster,
    /// Where the 90/10 scripts are.
    pub scripts: &'a Path,
    /// `pgbench -s` of the 90/10 scripts.
    pub scale: u32,
}

/// One pgbench run's workload, client count and duration.
#[derive(Clone, Copy)]
pub struct RunSpec {
    /// What pgbench runs.
    pub workload: Workload,
    /// `pgbench -c`.
    pub clients: u32,
    /// `pgbench -T`.
    pub seconds: u32,
    /// `PGOPTIONS` of pgbench's sessions (startup options such as `-c name=value`).
    pub pgoptions: Option<&'static str>,
}

impl Bench<'_> {
    /// Runs pgbench once against `target`; any failed transaction, pgbench error or exited
    /// proxy is an error that says what happened.
    pub fn pgbench(&self, target: &mut Target, spec: RunSpec) -> Result<Figures, String> {
        let run_dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(self.scripts)
            .map_err(|e| format!("creating a run directory: {e}"))?;
        let mut cmd = pgbench_command(self.cluster, target.port);
        if let Some(pgoptions) = spec.pgoptions {
            cmd.env("PGOPTIONS", pgoptions);
        }
        cmd.args(spec.workload.args(self.scripts, self.scale))
            .args(["-n", "-c", &spec.clients.to_string()])
            .args(["-j", &JOBS.to_string(), "-T", &spec.seconds.to_string()])
            .arg("--log")
            .arg(format!(
                "--log-prefix={}",
                run_dir.path().join("txn").display()
            ))
            .arg(APP_DATABASE);
        let finished = run_bounded(
            cmd,
            Duration::from_secs(u64::from(spec.seconds)) + PGBENCH_GRACE,
            run_dir.path(),
        );
        let proxy_state = match target.proxy.as_mut() {
            Some(proxy) => proxy.check_running().err(),
            None => None,
        };
        if let Some(exited) = proxy_state {
            return Err(exited);
        }
        let finished = finished?;
        let summary = finished.pgbench_summary()?;
        let mut latencies = Vec::new();
        for entry in fs::read_dir(run_dir.path()).map_err(|e| format!("reading logs: {e}"))? {
            let path = entry.map_err(|e| format!("reading logs: {e}"))?.path();
            let is_log = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("txn."));
            if is_log {
                let text = fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                latencies.extend(log_latencies(&text));
            }
        }
        let p99_us =
            percentile(latencies, 99.0).ok_or("pgbench logged no completed transaction (--log)")?;
        Ok(Figures {
            tps: summary.tps,
            avg_ms: summary.latency_ms,
            p99_ms: p99_us as f64 / 1000.0,
        })
    }
}
