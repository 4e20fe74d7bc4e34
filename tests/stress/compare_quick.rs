//! The comparison bench in quick mode, end to end, so that it cannot rot: every target
//! that should run a workload runs it without a failed transaction, and the Markdown and
//! CSV tables are written. HAProxy and pgbouncer must be installed (`.ci/run` installs
//! them); without them this test fails and says how to install them.

// The bench's `main` and what only it uses are not called here.
#[allow(dead_code)]
#[path = "../../benches/compare.rs"]
mod compare;

use std::path::PathBuf;
use std::time::Instant;

use compare::{Outcome, TargetKind, Workload};

#[test]
fn quick_comparison_runs_every_target_and_writes_its_tables() {
    // Its pgbench runs load both cores: no other test of this binary runs beside it.
    let _alone = crate::common::turns::alone_blocking();
    let out = tempfile::tempdir().expect("a temporary output directory");
    let options = compare::Options::quick(
        PathBuf::from(env!("CARGO_BIN_EXE_pgsplit")),
        out.path().to_path_buf(),
    );
    let started = Instant::now();
    let report = compare::run(&options).unwrap_or_else(|e| {
        panic!("the quick comparison did not run (HAProxy and pgbouncer are required): {e}")
    });
    println!(
        "quick comparison took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for path in [&report.markdown, &report.csv] {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("expected {} to be written: {e}", path.display()));
        assert!(
            text.contains("pgsplit") && text.contains("pgbouncer") && text.contains("haproxy"),
            "{} lacks rows for every target:\n{text}",
            path.display()
        );
    }
    let csv = std::fs::read_to_string(&report.csv).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + report.cells.len(),
        "compare.csv should have a header and one line per cell:\n{csv}"
    );

    let baselines = [
        TargetKind::Direct,
        TargetKind::Haproxy,
        TargetKind::Pgbouncer,
        TargetKind::Pgsplit,
    ];
    let expected_cells = Workload::ALL.len() * compare::CLIENTS.len() * baselines.len();
    let measured: Vec<_> = report
        .cells
        .iter()
        .filter(|c| baselines.contains(&c.target))
        .collect();
    assert_eq!(
        measured.len(),
        expected_cells,
        "one cell per workload, client count and target"
    );
    for cell in measured {
        let what = format!(
            "{} -M {} -c {} through {}",
            cell.workload.name(),
            cell.workload.mode(),
            cell.clients,
            cell.target.name()
        );
        match &cell.outcome {
            Outcome::Measured(f) => {
                assert!(f.tps > 0.0, "{what}: expected tps > 0, got {f:?}");
                assert!(
                    f.p99_ms >= f.avg_ms * 0.5 && f.p99_ms > 0.0,
                    "{what}: p99 {} ms is implausible next to the average {} ms",
                    f.p99_ms,
                    f.avg_ms
                );
            }
            // pgbouncer before 1.21 cannot run -M prepared in transaction mode; nothing
            // else may fail.
            Outcome::Failed { reason, expected } => assert!(
                *expected
                    && cell.target == TargetKind::Pgbouncer
                    && cell.workload == Workload::SelectPrepared,
                "{what}: expected tps > 0 and no failed transaction, got a failure: {reason}"
            ),
        }
    }

    // The 90/10 workload's reads per node, read-your-writes off and on, at each client
    // count: counted on every node, and with it off every read is a standby's.
    assert_eq!(
        report.shares.len(),
        2 * compare::CLIENTS.len(),
        "{:?}",
        report.shares
    );
    for share in &report.shares {
        let names: Vec<&str> = share.reads.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["primary", "standby1", "standby2"], "{share:?}");
        assert!(share.tps > 0.0, "{share:?}");
        if share.mode == "off" {
            assert_eq!(share.standby_fraction(), 1.0, "{share:?}");
        }
    }
    // With it on, the writes' WAL positions are asked for; with it off, hardly any are
    // (a question of the run before may still be answering at the first snapshot).
    for clients in compare::CLIENTS {
        let of = |mode: &str| {
            report
                .shares
                .iter()
                .find(|s| s.clients == clients && s.mode == mode)
                .map(|s| s.cost.position_queries)
        };
        let (off, on) = (of("off"), of("session"));
        assert!(
            on.is_some_and(|on| on > 0 && off.is_some_and(|off| off < on)),
            "-c {clients}: position queries off {off:?}, session {on:?}"
        );
    }
    let markdown = std::fs::read_to_string(&report.markdown).unwrap();
    assert!(
        markdown.contains("reads per node, read_your_writes off and on"),
        "{markdown}"
    );
}

#[test]
fn p99_is_the_nearest_rank_of_the_logged_latencies() {
    // client_id transaction_no time script_no time_epoch time_us
    let log: String = (1..=200)
        .map(|i| format!("0 {i} {} 0 1700000000 {i}\n", i * 10))
        .chain(["1 1 failed 0 1700000000 5\n".to_string()])
        .collect();
    let latencies: Vec<u64> = compare::log_latencies(&log).collect();
    assert_eq!(latencies.len(), 200, "the failed transaction is left out");
    assert_eq!(compare::percentile(latencies, 99.0), Some(1980));
    assert_eq!(compare::percentile(Vec::new(), 99.0), None);
    assert_eq!(compare::median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(compare::median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
}

#[test]
fn pgbench_report_figures_are_the_top_level_ones() {
    let report = "transaction type: multiple scripts\n\
        number of failed transactions: 3 (0.300%)\n\
        latency average = 0.512 ms\n\
        tps = 15623.4 (without initial connection time)\n\
        SQL script 1: read.sql\n - 900 transactions (90.0% of total, tps = 14000.1)\n\
         - number of failed transactions: 0 (0.000%)\n - latency average = 0.4 ms\n";
    let s = compare::support::PgbenchSummary::parse(report).expect("a complete report");
    assert_eq!((s.tps, s.latency_ms, s.failed), (15623.4, 0.512, 3));
    assert!(compare::support::PgbenchSummary::parse("pgbench: error: refused").is_err());
}
