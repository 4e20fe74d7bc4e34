//! Counting a running process's instructions with valgrind's callgrind: the wrapper that
//! starts it, zeroing and dumping its counters through `callgrind_control`, a dump's total
//! and the top of its profile.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::support::{die_with_bench, run_bounded};

/// How long `callgrind_control` gets to zero or dump: it stops the process, which answers
/// within milliseconds when it works at all.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `callgrind_annotate` gets to read a dump.
const ANNOTATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The installed valgrind's version, e.g. "valgrind-3.19.0", once `callgrind_control` and
/// `callgrind_annotate` are known to be there too; otherwise an error that says what to
/// install.
pub fn find_tools() -> Result<String, String> {
    let install = "install valgrind (`apt-get install -y valgrind` on Debian/Ubuntu), which \
                   brings callgrind_control and callgrind_annotate";
    let version = Command::new("valgrind")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run valgrind ({e}): {install}"))?;
    for tool in ["callgrind_control", "callgrind_annotate"] {
        Command::new(tool)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {tool} ({e}): {install}"))?;
    }
    Ok(String::from_utf8_lossy(&version.stdout).trim().to_string())
}

/// The command line put before a program to run it under callgrind, its dumps going to
/// `dir/<name>.<pid>.out.<n>`.
pub fn wrapper(dir: &Path, name: &str) -> Vec<OsString> {
    let mut out_file = OsString::from("--callgrind-out-file=");
    out_file.push(dir.join(format!("{name}.%p.out")));
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        // Compressed, a function's name is written only in the first dump that names it,
        // and later dumps of the same process show up nameless in callgrind_annotate.
        "--compress-strings=no".into(),
        out_file,
    ]
}

/// A process started under [`wrapper`], whose counters are zeroed and dumped on demand.
pub struct Counter {
    pid: u32,
    /// Where its dumps are written.
    dir: PathBuf,
    /// Every dump's file name up to its number: `<name>.<pid>.out.`.
    prefix: String,
    /// The OS user (uid, gid) it runs as, when not the bench's own: valgrind's gdbserver
    /// does not answer a `callgrind_control` run by another user, even root.
    owner: Option<(u32, u32)>,
    /// The number of its newest dump; 0 before the first.
    last_dump: u32,
}

impl Counter {
    /// The process `pid`, started under `wrapper(dir, name)` as `owner` (`None`: as the
    /// bench's user).
    pub fn new(pid: u32, dir: &Path, name: &str, owner: Option<(u32, u32)>) -> Self {
        Self {
            pid,
            dir: dir.to_path_buf(),
            prefix: format!("{name}.{pid}.out."),
            owner,
            last_dump: 0,
        }
    }

    /// Sets its counters to zero.
    pub fn zero(&self) -> Result<(), String> {
        self.control("--zero")
    }

    /// Writes what it counted since it was last zeroed or dumped to a new dump file, and
    /// returns that file.
    pub fn dump(&mut self) -> Result<PathBuf, String> {
        self.control("--dump")?;
        // Valgrind numbers the dumps of one process 1, 2, …: the newest is the highest.
        let entries =
            fs::read_dir(&self.dir).map_err(|e| format!("reading {}: {e}", self.dir.display()))?;
        let newest = entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?
                    .strip_prefix(&self.prefix)?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .filter(|&n| n > self.last_dump)
            .ok_or_else(|| {
                format!(
                    "callgrind_control --dump {} wrote no new {}<n> in {}",
                    self.pid,
                    self.prefix,
                    self.dir.display()
                )
            })?;
        self.last_dump = newest;
        Ok(self.dir.join(format!("{}{newest}", self.prefix)))
    }

    /// Runs `callgrind_control <action> <pid>` and checks that it says OK.
    fn control(&self, action: &str) -> Result<(), String> {
        let scratch = tempfile::tempdir()
            .map_err(|e| format!("creating a directory for callgrind_control's output: {e}"))?;
        let mut cmd = Command::new("callgrind_control");
        cmd.arg(action).arg(self.pid.to_string());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        die_with_bench(&mut cmd);
        let finished = run_bounded(cmd, CONTROL_TIMEOUT, scratch.path())?;
        // It exits 0 even when it finds no such process; "OK" is its word for success.
        if finished.status.success() && finished.stdout.contains("OK") {
            Ok(())
        } else {
            Err(format!(
                "callgrind_control {action} {} failed ({}): {}{}",
                self.pid, finished.status, finished.stdout, finished.stderr
            ))
        }
    }
}

/// The instructions a dump counted: its `totals:` line (`summary:` in older versions).
pub fn total(dump: &Path) -> Result<u64, String> {
    let text = fs::read_to_string(dump).map_err(|e| format!("reading {}: {e}", dump.display()))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("summary:")))
        .ok_or_else(|| format!("{} has no totals: or summary: line", dump.display()))?;
    // The first event is Ir, instructions executed, the only one callgrind collects here.
    line.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("unreadable totals in {}: {line:?}", dump.display()))
}

/// The `count` functions with the highest self cost in `dump`, as `callgrind_annotate`
/// lists them (instructions, share, file:function).
pub fn top_functions(dump: &Path, count: usize) -> Result<String, String> {
    let scratch = tempfile::tempdir()
        .map_err(|e| format!("creating a directory for callgrind_annotate's output: {e}"))?;
    let mut cmd = Command::new("callgrind_annotate");
    // Every function, as the filter below may drop the first lines.
    cmd.args(["--inclusive=no", "--threshold=100", "--auto=no"])
        .arg(dump);
    die_with_bench(&mut cmd);
    let finished = run_bounded(cmd, ANNOTATE_TIMEOUT, scratch.path())?;
    if !finished.status.success() {
        return Err(format!(
            "callgrind_annotate {} failed ({}): {}",
            dump.display(),
            finished.status,
            finished.stderr
        ));
    }
    // The function list follows the `file:function` heading and its rule of dashes. The
    // frames that were open across the whole count (thread start, the runtime's loop) are
    // listed with the whole count as their self cost, as callgrind_annotate reads a dump
    // taken mid-run: they are left out.
    let functions: Vec<&str> = finished
        .stdout
        .lines()
        .skip_while(|l| !l.contains("file:function"))
        .skip(2)
        .filter(|l| !l.trim().is_empty() && !l.contains("(100.0%)"))
        .take(count)
        .collect();
    if functions.is_empty() {
        return Err(format!(
            "no function list in callgrind_annotate's output for {}",
            dump.display()
        ));
    }
    Ok(functions.join("\n"))
}
