//! The topology monitor on a real cluster: standbys that fall behind or stop answering
//! serve no reads until they are back, and clients never notice beyond where they read.
//!
//! Every test pauses or stops nodes, so each gets its own cluster; pgsplit polls every
//! 100 ms so transitions take a fraction of a second.

use crate::common;

use std::time::{Duration, Instant};

use common::{describe, text, TestProxy};
use pgsplit::topology::{LagStatus, Topology};
use pgsplit_cluster::{Cluster, StopMode, APP_DATABASE};

/// Standby 1 in every cluster here.
const PAUSED: usize = 1;
/// Standby 2 in every cluster here.
const STOPPED: usize = 2;
/// Small enough that a megabyte of inserts breaks it.
const MAX_LAG_BYTES: u64 = 64 * 1024;
const MONITOR: &str = "lag_check_interval = \"100ms\"\nmax_lag_bytes = 65536\nmax_ban = \"2s\"";
/// Longest any transition may take: ban backoff (2 s cap) plus slow machines.
const TRANSITION: Duration = Duration::from_secs(20);
const CLIENTS: usize = 20;

/// A fresh primary with two standbys, and pgsplit in front of it.
async fn cluster_and_proxy() -> (Cluster, TestProxy) {
    let cluster = common::own_cluster().await;
    let proxy = TestProxy::start_for(&cluster, "", MONITOR, "").await;
    wait_for(&proxy, "every standby to be eligible", |t| {
        t.nodes[1..].iter().all(|n| n.eligible)
    })
    .await;
    (cluster, proxy)
}

/// Polls the proxy's snapshot until `ready` holds; returns how long that took.
async fn wait_for(proxy: &TestProxy, what: &str, ready: impl Fn(&Topology) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let t = proxy.topology();
        if ready(&t) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < TRANSITION,
            "timed out after {TRANSITION:?} waiting for {what}; topology:{}",
            describe(&t)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The port of the server that served a read for a client that just connected.
async fn fresh_client_read(proxy: &TestProxy) -> Result<u16, String> {
    let client = proxy
        .connect_as(
            pgsplit_cluster::APP_USER,
            pgsplit_cluster::APP_PASSWORD,
            APP_DATABASE,
        )
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .map_err(|e| format!("SELECT inet_server_port(): {} ({e})", common::sqlstate(&e)))?;
    let port: i32 = row.get(0);
    u16::try_from(port).map_err(|_| format!("port {port}"))
}

/// Ports that served `CLIENTS` new clients' first read; panics if any read failed.
async fn ports_serving_new_clients(proxy: &TestProxy) -> Vec<u16> {
    let mut ports = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        match fresh_client_read(proxy).await {
            Ok(port) => ports.push(port),
            Err(e) => panic!(
                "client {i}'s read failed: {e}; topology:{}",
                describe(&proxy.topology())
            ),
        }
    }
    ports
}

#[tokio::test]
async fn reads_skip_a_standby_whose_replay_is_paused() {
    let (cluster, proxy) = cluster_and_proxy().await;
    let paused_port = cluster.nodes()[PAUSED].port;
    cluster
        .sql(0, APP_DATABASE, "CREATE TABLE filler (x text)")
        .unwrap();

    let paused_at = Instant::now();
    cluster.pause_replay(PAUSED).unwrap();
    // About 1 MB of WAL, far over the 64 kB bound; the other standby keeps up.
    cluster
        .sql(
            0,
            APP_DATABASE,
            "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 1000)",
        )
        .unwrap();
    let written_at = Instant::now();
    wait_for(&proxy, "the paused standby to be excluded", |t| {
        !t.nodes[PAUSED].eligible
    })
    .await;
    let excluded_at = Instant::now();
    eprintln!(
        "paused standby excluded {:?} after pause_replay, {:?} after the write",
        excluded_at - paused_at,
        excluded_at - written_at
    );
    let t = proxy.topology();
    let paused = &t.nodes[PAUSED];
    assert!(
        paused.lag_bytes.is_some_and(|b| b > MAX_LAG_BYTES),
        "an excluded standby should show its lag over the bound:{}",
        describe(&t)
    );
    assert!(
        matches!(paused.lag_status, LagStatus::Lagging { .. }) && paused.ban.is_none(),
        "excluded for lag, not banned:{}",
        describe(&t)
    );
    // The other standby may lag briefly under the burst too; it catches up, the paused
    // one cannot.
    wait_for(&proxy, "the other standby to catch up", |t| {
        t.nodes[STOPPED].eligible && !t.nodes[PAUSED].eligible
    })
    .await;

    let ports = ports_serving_new_clients(&proxy).await;
    assert!(
        !ports.contains(&paused_port),
        "a new client read from the paused standby (port {paused_port}): {ports:?}"
    );

    cluster.resume_replay(PAUSED).unwrap();
    let resumed_at = Instant::now();
    cluster.wait_for_replay(PAUSED).unwrap();
    wait_for(&proxy, "the caught-up standby to be re-admitted", |t| {
        t.nodes[PAUSED].eligible
    })
    .await;
    eprintln!(
        "resumed standby re-admitted {:?} after resume_replay",
        resumed_at.elapsed()
    );
    let ports = ports_serving_new_clients(&proxy).await;
    assert!(
        ports.contains(&paused_port),
        "no new client read from the re-admitted standby (port {paused_port}): {ports:?}"
    );
}

#[tokio::test]
async fn a_stopped_standby_is_banned_and_readmitted_when_it_returns() {
    let (cluster, proxy) = cluster_and_proxy().await;
    let stopped_port = cluster.nodes()[STOPPED].port;

    let stopped_at = Instant::now();
    cluster.stop(STOPPED, StopMode::Immediate).unwrap();
    wait_for(&proxy, "the stopped standby to be banned", |t| {
        let n = &t.nodes[STOPPED];
        !n.eligible && n.ban.is_some()
    })
    .await;
    eprintln!(
        "stopped standby banned {:?} after the stop",
        stopped_at.elapsed()
    );

    let ports = ports_serving_new_clients(&proxy).await;
    assert!(
        !ports.contains(&stopped_port),
        "a new client read from the stopped standby (port {stopped_port}): {ports:?}"
    );

    let ban = proxy.topology().nodes[STOPPED].ban.clone();
    cluster.start_node(STOPPED).unwrap();
    let started_at = Instant::now();
    wait_for(&proxy, "the restarted standby to be eligible", |t| {
        let n = &t.nodes[STOPPED];
        n.eligible && n.ban.is_none()
    })
    .await;
    eprintln!(
        "restarted standby re-admitted {:?} after start_node (ban before the start: {:?})",
        started_at.elapsed(),
        ban.map(|b| (b.failures, b.until.saturating_duration_since(started_at)))
    );
    let ports = ports_serving_new_clients(&proxy).await;
    assert!(
        ports.contains(&stopped_port),
        "no new client read from the restarted standby (port {stopped_port}): {ports:?}"
    );
}

/// A read whose standby dies before any byte of the answer reached the client is sent
/// again to another node, so pgbench -S sees no failure.
#[tokio::test]
async fn pgbench_survives_a_standby_killed_under_load() {
    let (cluster, proxy) = cluster_and_proxy().await;
    let pg_bin = cluster.pg_bin().to_owned();
    let init = proxy.run_with(&pg_bin, "pgbench", &["-i", "-q", "-s", "1", APP_DATABASE]);
    assert!(init.status.success(), "pgbench -i: {}", text(&init));
    for standby in [PAUSED, STOPPED] {
        cluster.wait_for_replay(standby).unwrap();
    }

    let proxy = std::sync::Arc::new(proxy);
    let bench = {
        let proxy = std::sync::Arc::clone(&proxy);
        tokio::task::spawn_blocking(move || {
            proxy.run_with(
                &pg_bin,
                "pgbench",
                &["-S", "-c", "8", "-j", "2", "-T", "10", APP_DATABASE],
            )
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = proxy.stats().statements_per_node;
    cluster.stop(STOPPED, StopMode::Immediate).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let while_down = proxy.stats().statements_per_node;
    cluster.start_node(STOPPED).unwrap();
    let out = bench.await.expect("pgbench task");
    let report = text(&out);
    let after = proxy.stats().statements_per_node;
    eprintln!(
        "statements per node: before the kill {before_kill:?}, while down {while_down:?}, at the end {after:?}\n{report}"
    );
    assert!(
        before_kill[STOPPED] > 0,
        "the killed standby served no pgbench reads, so the test proved nothing: {before_kill:?}"
    );
    assert!(out.status.success(), "pgbench failed: {report}");
    assert!(
        report.contains("number of failed transactions: 0 ") && !report.contains("aborted"),
        "pgbench had failed transactions or aborted clients: {report}"
    );
}

/// Another session's reads are never staler than the lag bound allows: with replay paused
/// on one standby, a reader in its own session keeps seeing a counter that the writer
/// advances, within the WAL the bound (plus one check interval) stands for.
#[tokio::test]
async fn reads_from_another_session_stay_within_the_lag_bound() {
    let (cluster, proxy) = cluster_and_proxy().await;
    cluster
        .sql_as(
            0,
            pgsplit_cluster::APP_USER,
            Some(pgsplit_cluster::APP_PASSWORD),
            APP_DATABASE,
            "CREATE TABLE counter (id int PRIMARY KEY, v int); INSERT INTO counter VALUES (1, 0)",
        )
        .unwrap();
    for standby in [PAUSED, STOPPED] {
        cluster.wait_for_replay(standby).unwrap();
    }
    cluster.pause_replay(PAUSED).unwrap();
    let writer = proxy.connect().await;
    // Round robin gives two new readers different standbys: one of them starts on the
    // paused one.
    let readers = [proxy.connect().await, proxy.connect().await];
    // Each UPDATE writes well over 100 bytes of WAL, so MAX_LAG_BYTES stands for fewer than
    // MAX_LAG_BYTES / 100 writes; allow as many again for the interval before exclusion.
    let allowed = 2 * (MAX_LAG_BYTES / 100) as i32;
    let mut worst = 0;
    let mut served_by = std::collections::HashSet::new();
    for reader in &readers {
        let port: i32 = reader
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        served_by.insert(port);
    }
    assert_eq!(
        served_by.len(),
        2,
        "the two readers should start on different standbys"
    );
    for i in 1..=2000 {
        writer
            .execute("UPDATE counter SET v = $1 WHERE id = 1", &[&i])
            .await
            .unwrap();
        for reader in &readers {
            let seen: i32 = reader
                .query_one("SELECT v FROM counter WHERE id = 1", &[])
                .await
                .unwrap()
                .get(0);
            worst = worst.max(i - seen);
        }
    }
    cluster.resume_replay(PAUSED).unwrap();
    assert!(
        worst <= allowed,
        "a read was {worst} writes behind; the {MAX_LAG_BYTES}-byte bound allows about {allowed}"
    );
}
