//! Where the 90/10 workload's reads went through pgsplit, with read-your-writes off and
//! on: the share of reads each node served (from pgsplit's `SHOW NODES`, before and after
//! each run) and the tps of each setting, measured in turns on the same pgsplit. The
//! setting is chosen per session, as an application would: `PGOPTIONS="-c
//! pgsplit.read_your_writes=off"` (`session` is the configured default).

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use pgsplit_cluster::{APP_PASSWORD, APP_USER};

use super::runs::{median, Bench, RunSpec};
use super::{Options, Target, Workload, CLIENTS};

/// The two settings compared, with the startup options that choose them.
const MODES: [(&str, &str); 2] = [
    ("off", "-c pgsplit.read_your_writes=off"),
    ("session", "-c pgsplit.read_your_writes=session"),
];

/// The reads of one setting at one client count, over every round.
#[derive(Clone, Debug)]
pub struct Share {
    /// `pgbench -c`.
    pub clients: u32,
    /// `read_your_writes` of the sessions.
    pub mode: &'static str,
    /// Reads each node served: (node name, count), in configuration order.
    pub reads: Vec<(String, u64)>,
    /// Median tps over the rounds.
    pub tps: f64,
    /// What read-your-writes cost: reads that waited, their total wait, and the WAL
    /// position queries pgsplit sent (all nodes).
    pub cost: Cost,
}

/// Read-your-writes counters of `SHOW NODES`, summed over the nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// `fresh_waits`.
    pub waits: u64,
    /// `fresh_wait_ms`.
    pub wait_ms: f64,
    /// `position_queries`.
    pub position_queries: u64,
}

impl Cost {
    fn since(self, before: Cost) -> Cost {
        Cost {
            waits: self.waits.saturating_sub(before.waits),
            wait_ms: (self.wait_ms - before.wait_ms).max(0.0),
            position_queries: self
                .position_queries
                .saturating_sub(before.position_queries),
        }
    }

    fn add(&mut self, other: Cost) {
        self.waits += other.waits;
        self.wait_ms += other.wait_ms;
        self.position_queries += other.position_queries;
    }
}

impl Share {
    /// Reads every node but the first (the primary) served, as a fraction of all.
    pub fn standby_fraction(&self) -> f64 {
        let all: u64 = self.reads.iter().map(|(_, n)| n).sum();
        let standbys: u64 = self.reads.iter().skip(1).map(|(_, n)| n).sum();
        standbys as f64 / all.max(1) as f64
    }
}

/// Runs the 90/10 workload through `target` (pgsplit) at every client count, each
/// setting in turn (the order alternating by round).
pub fn measure(
    bench: &Bench,
    target: &mut Target,
    options: &Options,
) -> Result<Vec<Share>, String> {
    let mut shares = Vec::new();
    for &clients in &CLIENTS {
        let mut reads: [Vec<(String, u64)>; 2] = Default::default();
        let mut tps: [Vec<f64>; 2] = Default::default();
        let mut cost: [Cost; 2] = Default::default();
        for round in 0..options.rounds() {
            for turn in 0..MODES.len() {
                let m = (turn + round as usize) % MODES.len();
                let (mode, pgoptions) = MODES[m];
                let (before, cost_before) = node_counters(bench, target.port)?;
                let spec = RunSpec {
                    workload: Workload::ReadWrite,
                    clients,
                    seconds: options.seconds,
                    pgoptions: Some(pgoptions),
                };
                let figures = bench.pgbench(target, spec)?;
                let (after, cost_after) = node_counters(bench, target.port)?;
                println!(
                    "shares: round {}/{}  -c {clients:<3} read_your_writes = {mode:<8} {:>9.0} tps",
                    round + 1,
                    options.rounds(),
                    figures.tps
                );
                tps[m].push(figures.tps);
                add_difference(&mut reads[m], &before, &after);
                cost[m].add(cost_after.since(cost_before));
            }
        }
        for (m, (mode, _)) in MODES.iter().enumerate() {
            shares.push(Share {
                clients,
                mode,
                reads: std::mem::take(&mut reads[m]),
                tps: median(std::mem::take(&mut tps[m])),
                cost: cost[m],
            });
        }
    }
    Ok(shares)
}

/// Adds `after - before`, node by node, to `total`.
fn add_difference(
    total: &mut Vec<(String, u64)>,
    before: &[(String, u64)],
    after: &[(String, u64)],
) {
    for (name, n) in after {
        let was = before
            .iter()
            .find(|(b, _)| b == name)
            .map_or(0, |(_, b)| *b);
        match total.iter_mut().find(|(t, _)| t == name) {
            Some((_, sum)) => *sum += n.saturating_sub(was),
            None => total.push((name.clone(), n.saturating_sub(was))),
        }
    }
}

/// Reads each node has served and read-your-writes' counters, from pgsplit's admin
/// console (`SHOW NODES`).
fn node_counters(bench: &Bench, port: u16) -> Result<(Vec<(String, u64)>, Cost), String> {
    let output = Command::new(bench.cluster.pg_bin().join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
        .args(["-d", "pgsplit", "-X", "-A", "-F", "\t", "-c", "SHOW NODES"])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/nonexistent/pgsplit-no-pgpass")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql SHOW NODES: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "psql SHOW NODES: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    parse_nodes(&String::from_utf8_lossy(&output.stdout))
}

/// The `name` and `reads` columns of `psql -A -F '\t'` output of `SHOW NODES`, and the
/// read-your-writes columns summed.
fn parse_nodes(text: &str) -> Result<(Vec<(String, u64)>, Cost), String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("SHOW NODES: no output")?
        .split('\t')
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .ok_or(format!("SHOW NODES has no {name} column"))
    };
    let (name, reads) = (column("name")?, column("reads")?);
    let (waits, wait_ms, queries) = (
        column("fresh_waits")?,
        column("fresh_wait_ms")?,
        column("position_queries")?,
    );
    let mut nodes = Vec::new();
    let mut cost = Cost::default();
    // The footer, "(3 rows)", is not a node.
    for line in lines.filter(|l| !l.starts_with('(')) {
        let cells: Vec<&str> = line.split('\t').collect();
        let number = |i: usize| -> Result<f64, String> {
            cells.get(i).and_then(|c| c.parse().ok()).ok_or(format!(
                "SHOW NODES row without column {}: {line}",
                header[i]
            ))
        };
        nodes.push((
            cells.get(name).unwrap_or(&"?").to_string(),
            number(reads)? as u64,
        ));
        cost.add(Cost {
            waits: number(waits)? as u64,
            wait_ms: number(wait_ms)?,
            position_queries: number(queries)? as u64,
        });
    }
    Ok((nodes, cost))
}

/// The shares as a console table (`markdown`: as a Markdown one).
pub fn table(shares: &[Share], markdown: bool) -> String {
    let mut out = String::new();
    let nodes: Vec<&str> = shares
        .first()
        .map(|s| s.reads.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let mut header = vec!["clients".to_string(), "read_your_writes".into()];
    header.extend(nodes.iter().map(|n| format!("reads on {n}")));
    header.extend([
        "on standbys".into(),
        "tps".into(),
        "× off".into(),
        "reads that waited".into(),
        "avg wait ms".into(),
        "position queries".into(),
    ]);
    let off_tps = |clients: u32| {
        shares
            .iter()
            .find(|s| s.clients == clients && s.mode == "off")
            .map_or(0.0, |s| s.tps)
    };
    let mut rows = vec![header];
    for s in shares {
        let mut row = vec![s.clients.to_string(), s.mode.to_string()];
        row.extend(s.reads.iter().map(|(_, n)| n.to_string()));
        row.push(format!("{:.1} %", 100.0 * s.standby_fraction()));
        row.push(format!("{:.0}", s.tps));
        row.push(format!(
            "{:.2}",
            s.tps / off_tps(s.clients).max(f64::MIN_POSITIVE)
        ));
        row.push(s.cost.waits.to_string());
        row.push(format!(
            "{:.2}",
            s.cost.wait_ms / s.cost.waits.max(1) as f64
        ));
        row.push(s.cost.position_queries.to_string());
        rows.push(row);
    }
    for (i, row) in rows.iter().enumerate() {
        if markdown {
            let _ = writeln!(out, "| {} |", row.join(" | "));
            if i == 0 {
                let _ = writeln!(out, "|{}", "---:|".repeat(row.len()));
            }
        } else {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:>16}")).collect();
            let _ = writeln!(out, "{}", cells.join(" "));
        }
    }
    out
}
