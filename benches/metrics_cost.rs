//! What Prometheus metrics cost: `pgbench -S -M prepared` through two pgsplit instances of
//! one process, one with `[metrics] listen` set (and scraped every second, far more often
//! than Prometheus would) and one without, alternated round by round in the same run:
//! `cargo bench --bench metrics_cost` (PGSPLIT_BENCH_SECONDS, PGSPLIT_BENCH_CLIENTS,
//! PGSPLIT_BENCH_ROUNDS to tune).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgsplit::cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};
use pgsplit::config::Settings;

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `pgbench -S -M prepared` against a port and returns its tps.
fn pgbench_tps(cluster: &Cluster, port: u16, clients: u32, seconds: u32) -> Result<f64, String> {
    let out = Command::new(cluster.pg_bin().join("pgbench"))
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
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
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

    println!(
        "pgbench -S -M prepared -c {clients} -j 2 -T {seconds}, scale 10, 1 primary + 2 standbys, \
         {rounds} rounds alternating which proxy goes first"
    );
    println!(
        "{:<6} {:>14} {:>14} {:>7}",
        "round", "metrics off", "metrics on", "on/off"
    );
    let (mut sum_off, mut sum_on) = (0.0, 0.0);
    for round in 1..=rounds {
        let tps = |port: u16| pgbench_tps(&cluster, port, clients, seconds);
        let (off_tps, on_tps) = if round % 2 == 1 {
            let off_tps = tps(off.local_addr().port())?;
            (off_tps, tps(on.local_addr().port())?)
        } else {
            let on_tps = tps(on.local_addr().port())?;
            (tps(off.local_addr().port())?, on_tps)
        };
        sum_off += off_tps;
        sum_on += on_tps;
        println!(
            "{round:<6} {off_tps:>14.0} {on_tps:>14.0} {:>7.3}",
            on_tps / off_tps
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = scraper.join();
    println!(
        "mean   {:>14.0} {:>14.0} {:>7.3}   ({} scrapes)",
        sum_off / f64::from(rounds),
        sum_on / f64::from(rounds),
        sum_on / sum_off,
        scraped.load(Ordering::Relaxed)
    );
    runtime.block_on(off.shutdown());
    runtime.block_on(on.shutdown());
    Ok(())
}
