//! The comparison's output: the machine it ran on, one table (console, Markdown, CSV) and
//! what pgsplit logged that deserves a look.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Cell, Outcome, TargetKind};

/// At most this many distinct pgsplit log messages are reported.
const LOG_MESSAGES: usize = 10;

/// What the figures depend on besides the code.
pub struct Machine {
    lines: Vec<(String, String)>,
}

impl Machine {
    /// CPU, cores, load, date and the versions of everything measured.
    pub fn describe(versions: Vec<(&str, String)>, pgsplit_bin: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        // The load when the run starts says how much others share the machine.
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "unknown".into());
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        // A debug pgsplit is only good for proving the script works.
        let build = if pgsplit_bin.components().any(|c| c.as_os_str() == "debug") {
            "debug build"
        } else {
            "release build"
        };
        let mut lines = vec![
            ("CPU".to_string(), format!("{cpu}, {cores} cores")),
            ("load average at start".to_string(), load),
            ("date".to_string(), date),
            (
                "pgsplit".to_string(),
                format!("{} ({build})", pgsplit_bin.display()),
            ),
        ];
        lines.extend(versions.into_iter().map(|(k, v)| (k.to_string(), v)));
        Self { lines }
    }

    /// One `key: value` line each.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Everything one run reports.
pub struct Table<'a> {
    /// Where it ran.
    pub machine: &'a Machine,
    /// What ran, in one line.
    pub plan: &'a str,
    /// The measured cells.
    pub cells: &'a [Cell],
    /// Lines under the table: what was left out and why.
    pub notes: &'a [String],
    /// Grouped warnings and errors from pgsplit's log.
    pub pgsplit_log: &'a [(usize, String)],
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// One table row as text, ready for any of the three formats.
struct Row {
    workload: &'static str,
    mode: &'static str,
    clients: u32,
    target: &'static str,
    status: &'static str,
    tps: String,
    avg_ms: String,
    p99_ms: String,
    ratios: [String; 3],
    /// Why the cell failed; its footnote number in the text and Markdown tables.
    note: Option<(usize, String)>,
}

/// The baselines every tps is divided by, in column order.
const BASELINES: [TargetKind; 3] = [
    TargetKind::Direct,
    TargetKind::Haproxy,
    TargetKind::Pgbouncer,
];

impl Table<'_> {
    fn rows(&self) -> Vec<Row> {
        let mut footnotes = 0;
        self.cells
            .iter()
            .map(|cell| {
                let base_tps = |kind: TargetKind| {
                    self.cells.iter().find_map(|c| match c.outcome {
                        Outcome::Measured(f)
                            if c.target == kind
                                && c.workload == cell.workload
                                && c.clients == cell.clients =>
                        {
                            Some(f.tps)
                        }
                        _ => None,
                    })
                };
                let dash = || "-".to_string();
                let (status, tps, avg_ms, p99_ms, ratios, note) = match &cell.outcome {
                    Outcome::Measured(f) => {
                        let ratio = |kind| match base_tps(kind) {
                            Some(base) if base > 0.0 => format!("{:.2}", f.tps / base),
                            _ => dash(),
                        };
                        (
                            "ok",
                            format!("{:.0}", f.tps),
                            format!("{:.3}", f.avg_ms),
                            format!("{:.3}", f.p99_ms),
                            BASELINES.map(ratio),
                            None,
                        )
                    }
                    Outcome::Failed { reason, expected } => {
                        footnotes += 1;
                        let status = if *expected { "fails" } else { "FAILED" };
                        (
                            status,
                            format!("{status} [{footnotes}]"),
                            dash(),
                            dash(),
                            [dash(), dash(), dash()],
                            Some((footnotes, reason.clone())),
                        )
                    }
                };
                Row {
                    workload: cell.workload.name(),
                    mode: cell.workload.mode(),
                    clients: cell.clients,
                    target: cell.target.name(),
                    status,
                    tps,
                    avg_ms,
                    p99_ms,
                    ratios,
                    note,
                }
            })
            .collect()
    }

    /// Footnotes, notes and the pgsplit log summary, one item per line.
    fn notes(&self, rows: &[Row]) -> Vec<String> {
        let mut lines: Vec<String> = rows
            .iter()
            .filter_map(|r| r.note.as_ref())
            .map(|(n, why)| format!("[{n}] {}", why.replace('\n', " ")))
            .collect();
        lines.extend(self.notes.iter().cloned());
        if self.pgsplit_log.is_empty() {
            lines.push("pgsplit logged no warning or error".into());
        } else {
            lines.push("pgsplit logged (count × message):".into());
            for (count, message) in self.pgsplit_log {
                lines.push(format!("  {count} × {message}"));
            }
        }
        lines
    }

    /// The console table, with the machine above and the notes below.
    pub fn text(&self) -> String {
        let rows = self.rows();
        let mut out = format!("{}\n{}\n\n", self.machine.text(), self.plan);
        let _ = writeln!(
            out,
            "{:<17} {:<9} {:>7}  {:<10} {:>12} {:>9} {:>9} {:>8} {:>9} {:>11}",
            "workload",
            "-M",
            "clients",
            "target",
            "tps",
            "avg ms",
            "p99 ms",
            "×direct",
            "×haproxy",
            "×pgbouncer"
        );
        for r in &rows {
            let _ = writeln!(
                out,
                "{:<17} {:<9} {:>7}  {:<10} {:>12} {:>9} {:>9} {:>8} {:>9} {:>11}",
                r.workload,
                r.mode,
                r.clients,
                r.target,
                r.tps,
                r.avg_ms,
                r.p99_ms,
                r.ratios[0],
                r.ratios[1],
                r.ratios[2]
            );
        }
        out.push('\n');
        for line in self.notes(&rows) {
            let _ = writeln!(out, "{line}");
        }
        let _ = write!(out, "(run took {:.0} s)", self.elapsed.as_secs_f64());
        out
    }

    /// The same as Markdown.
    pub fn markdown(&self) -> String {
        let rows = self.rows();
        let mut out = String::from("# pgsplit comparison\n\n");
        for (k, v) in &self.machine.lines {
            let _ = writeln!(out, "- {k}: {v}");
        }
        let _ = writeln!(
            out,
            "- plan: {}; run took {:.0} s\n",
            self.plan,
            self.elapsed.as_secs_f64()
        );
        out.push_str(
            "| workload | -M | clients | target | tps | avg ms | p99 ms | × direct | × haproxy | × pgbouncer |\n\
             |---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.workload,
                r.mode,
                r.clients,
                r.target,
                r.tps,
                r.avg_ms,
                r.p99_ms,
                r.ratios[0],
                r.ratios[1],
                r.ratios[2]
            );
        }
        out.push('\n');
        for line in self.notes(&rows) {
            // Markdown would join lines of a paragraph: each note is a list item.
            let _ = writeln!(out, "- {}", line.trim_start());
        }
        out
    }

    /// The same as CSV, one row per cell, the failure reason in `note`.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "workload,mode,clients,target,status,tps,avg_ms,p99_ms,vs_direct,vs_haproxy,vs_pgbouncer,note\n",
        );
        for r in self.rows() {
            let tps = if r.status == "ok" { r.tps.as_str() } else { "" };
            let blank = |v: &str| {
                if v == "-" {
                    String::new()
                } else {
                    v.to_string()
                }
            };
            let note = r.note.map(|(_, why)| why).unwrap_or_default();
            let fields = [
                csv_field(r.workload),
                r.mode.to_string(),
                r.clients.to_string(),
                r.target.to_string(),
                r.status.to_string(),
                tps.to_string(),
                blank(&r.avg_ms),
                blank(&r.p99_ms),
                blank(&r.ratios[0]),
                blank(&r.ratios[1]),
                blank(&r.ratios[2]),
                csv_field(&note.replace(['\n', '\r'], " ")),
            ];
            let _ = writeln!(out, "{}", fields.join(","));
        }
        out
    }
}

/// `value` quoted for CSV when it holds a separator, a quote or a line break.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// Warnings and errors in the log at `path` (and INFO lines that report an error), grouped
/// by message with digits (ports, counts, ids) masked: (count, message), most frequent
/// first.
pub fn log_problems(path: &Path) -> Vec<(usize, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![(1, format!("cannot read {}", path.display()))];
    };
    let mut groups: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let line = strip_ansi(line);
        // "2025-01-01T00:00:00.000000Z  WARN pgsplit::x: message field=value"
        let mut words = line.split_whitespace();
        let level = words.nth(1).unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let rest = rest.join(" ");
        let problem = matches!(level, "WARN" | "ERROR")
            || (level == "INFO" && rest.to_lowercase().contains("error"));
        if !problem {
            continue;
        }
        let key = mask_digits(&format!("{level} {rest}"));
        match groups.iter_mut().find(|(_, k)| *k == key) {
            Some((n, _)) => *n += 1,
            None => groups.push((1, key)),
        }
    }
    groups.sort_by_key(|(count, _)| std::cmp::Reverse(*count));
    groups.truncate(LOG_MESSAGES);
    groups
}

/// The message and fields of the last line of the log at `path` that contains `needle`,
/// without its timestamp and level.
pub fn last_line_with(path: &Path, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = strip_ansi(text.lines().rev().find(|l| l.contains(needle))?);
    // "2025-01-01T00:00:00.000000Z  INFO pgsplit::proxy: pgsplit stopped to_primary=…"
    let message = line.split_once(": ").map_or(line.as_str(), |(_, m)| m);
    Some(message.trim().to_string())
}

/// `line` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` with every run of digits replaced by `N`.
fn mask_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}
