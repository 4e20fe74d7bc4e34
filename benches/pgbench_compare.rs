//! Throughput through pgsplit (reads spread over two standbys) as a ratio of a direct
//! connection to the primary, measured in the same run, with the share of statements served
//! by standbys and the classification cache hit rate:
//! `cargo bench --bench pgbench_compare` (PGSPLIT_BENCH_SECONDS, PGSPLIT_BENCH_CLIENTS to tune).

use std::process::Command;

use pgsplit_cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `pgbench -S` against a port and returns its tps.
fn pgbench_tps(
    cluster: &Cluster,
    port: u16,
    mode: &str,
    clients: u32,
    seconds: u32,
) -> Result<f64, String> {
    let out = Command::new(cluster.pg_bin().join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            APP_USER,
            "-S",
            "-M",
            mode,
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            APP_DATABASE,
        ])
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

fn main() -> Result<(), String> {
    // `cargo test --all-targets` runs benches without `--bench`: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let seconds = env_or("PGSPLIT_BENCH_SECONDS", 20);
    let clients = env_or("PGSPLIT_BENCH_CLIENTS", 8);
    let cluster = Cluster::with_standbys(2).map_err(|e| e.to_string())?;
    let primary = cluster.primary().port;
    cluster.pgbench_init(10).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let settings = pgsplit::demo::config_for(&cluster, "127.0.0.1:0").map_err(|e| e.to_string())?;
    let proxy = runtime
        .block_on(pgsplit::proxy::start(settings))
        .map_err(|e| e.to_string())?;
    let via = proxy.local_addr().port();

    println!(
        "pgbench -S -c {clients} -j 2 -T {seconds}, scale 10, 1 primary + 2 standbys, PostgreSQL at {}",
        cluster.pg_bin().display()
    );
    println!(
        "{:<10} {:>12} {:>12} {:>7} {:>14} {:>10}",
        "mode", "direct tps", "pgsplit tps", "ratio", "on standbys", "cache hits"
    );
    for mode in ["simple", "extended", "prepared"] {
        let direct = pgbench_tps(&cluster, primary, mode, clients, seconds)?;
        let (stats, cache) = (proxy.stats(), proxy.cache_stats());
        let proxied = pgbench_tps(&cluster, via, mode, clients, seconds)?;
        let (stats_after, cache_after) = (proxy.stats(), proxy.cache_stats());
        let standby = stats_after.to_standby - stats.to_standby;
        let all = standby + stats_after.to_primary - stats.to_primary;
        let hits = cache_after.hits - cache.hits;
        let lookups = hits + cache_after.misses - cache.misses;
        println!(
            "{mode:<10} {direct:>12.0} {proxied:>12.0} {:>7.2} {:>13.1}% {:>9.1}%",
            proxied / direct,
            100.0 * standby as f64 / all.max(1) as f64,
            100.0 * hits as f64 / lookups.max(1) as f64
        );
    }
    runtime.block_on(proxy.shutdown());
    Ok(())
}
