//! What Prometheus metrics cost: `pgbench -S -M prepared` through two pgsplit instances of
//! one process, one with `[metrics] listen` set (and scraped every second, far more often
//! than Prometheus would) and one without; alternated round by round, then both at once
//! (paired, so both see the same machine load), in the same run:
//! `cargo bench --bench metrics_cost` (PGSPLIT_BENCH_SECONDS, PGSPLIT_BENCH_CLIENTS,
//! PGSPLIT_BENCH_ROUNDS to tune).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgsplit::settings::Settings;
use pgsplit_cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `pgbench -S -M prepared` against a port.
fn pgbench(cluster: &Cluster, port: u16, clients: u32, seconds: u32) -> Result<Child, String> {
    Command::new(cluster.pg_bin().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
        .args([
            "-S",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
        ])
        .args(["-T", &seconds.to_string(), APP_DATABASE])
        .env("PGPASSWORD", APP_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run pgbench: {e}"))
}

/// The tps of a pgbench run, once it ends.
fn tps(run: Child) -> Result<f64, String> {
    let out = run
        .wait_with_output()
        .map_err(|e| format!("waiting for pgbench: {e}"))?;
    let report = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !report.contains("number of failed transactions: 0 ") {
        return Err(format!(
            "pgbench failed:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    report
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench output:\n{report}"))
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One `GET /metrics`; the size of the answer.
fn scrape(addr: SocketAddr) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer.len())
}

fn main() -> Result<(), String> {
    // `cargo test --all-targets` runs benches without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let seconds = env_or("PGSPLIT_BENCH_SECONDS", 15);
    let clients = env_or("PGSPLIT_BENCH_CLIENTS", 8);
    let rounds = env_or("PGSPLIT_BENCH_ROUNDS", 3);
    let cluster = Cluster::with_standbys(2).map_err(|e| e.to_string())?;
    cluster.pgbench_init(10).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let text = pgsplit::demo::config_text(&cluster, "127.0.0.1:0");
    let settings =
        |extra: &str| Settings::parse(&format!("{text}\n{extra}")).map_err(|e| e.to_string());
    let off = runtime
        .block_on(pgsplit::proxy::start(settings("")?))
        .map_err(|e| e.to_string())?;
    let on = runtime
        .block_on(pgsplit::proxy::start(settings(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n",
        )?))
        .map_err(|e| e.to_string())?;
    let metrics = on
        .metrics_addr()
        .ok_or("the metrics endpoint did not start")?;

    // Scrapes once a second for the whole run, as a busy Prometheus would.
    let stop = Arc::new(AtomicBool::new(false));
    let scraped = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scraped) = (Arc::clone(&stop), Arc::clone(&scraped));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if scrape(metrics).is_ok() {
                    scraped.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let (off_port, on_port) = (off.local_addr().port(), on.local_addr().port());
    println!(
        "pgbench -S -M prepared -c {clients} -j 2 -T {seconds}, scale 10, 1 primary + 2 standbys"
    );
    println!(
        "alternated: one proxy at a time, {rounds} rounds, the first of each pair alternating"
    );
    println!(
        "{:<6} {:>14} {:>14} {:>7}",
        "round", "metrics off", "metrics on", "on/off"
    );
    let (mut sum_off, mut sum_on, mut ratios) = (0.0, 0.0, Vec::new());
    for round in 1..=rounds {
        let run = |port: u16| tps(pgbench(&cluster, port, clients, seconds)?);
        let (off_tps, on_tps) = if round % 2 == 1 {
            let off_tps = run(off_port)?;
            (off_tps, run(on_port)?)
        } else {
            let on_tps = run(on_port)?;
            (run(off_port)?, on_tps)
        };
        sum_off += off_tps;
        sum_on += on_tps;
        ratios.push(on_tps / off_tps);
        println!(
            "{round:<6} {off_tps:>14.0} {on_tps:>14.0} {:>7.3}",
            on_tps / off_tps
        );
    }
    println!(
        "mean   {:>14.0} {:>14.0} {:>7.3}   (median of rounds {:.3})",
        sum_off / f64::from(rounds),
        sum_on / f64::from(rounds),
        sum_on / sum_off,
        median(ratios)
    );

    // Both at once, half the clients each: every round sees the same machine load, which
    // on a shared machine moves far more than metrics do.
    let half = (clients / 2).max(1);
    println!("paired: both proxies at once, -c {half} each, {rounds} rounds");
    let (mut sum_off, mut sum_on, mut ratios) = (0.0, 0.0, Vec::new());
    for round in 1..=rounds {
        let off_run = pgbench(&cluster, off_port, half, seconds)?;
        let on_run = pgbench(&cluster, on_port, half, seconds)?;
        let (off_tps, on_tps) = (tps(off_run)?, tps(on_run)?);
        sum_off += off_tps;
        sum_on += on_tps;
        ratios.push(on_tps / off_tps);
        println!(
            "{round:<6} {off_tps:>14.0} {on_tps:>14.0} {:>7.3}",
            on_tps / off_tps
        );
    }
    println!(
        "mean   {:>14.0} {:>14.0} {:>7.3}   (median of rounds {:.3})",
        sum_off / f64::from(rounds),
        sum_on / f64::from(rounds),
        sum_on / sum_off,
        median(ratios)
    );
    stop.store(true, Ordering::Relaxed);
    let _ = scraper.join();
    println!("{} scrapes of /metrics", scraped.load(Ordering::Relaxed));
    runtime.block_on(off.shutdown());
    runtime.block_on(on.shutdown());
    Ok(())
}
