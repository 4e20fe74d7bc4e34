//! pgsplit in front of clusters built the ways users build them (issue 15): standbys
//! cloned with `pg_basebackup -R` (each one `walreceiver` on the primary), named by their
//! `cluster_name`, or given names of their own, and a standby that streams from another
//! standby, so the primary never lists it. pgsplit names its nodes `standby1`, … (the demo
//! configuration), so in none of these does a node's name match what the primary calls it.
//!
//! Under a steady write load on the primary, each test proves in turn on one cluster:
//! reads spread over every standby, not the primary; a standby whose replay stops is
//! excluded soon after its lag passes the bound and re-admitted once it catches up; a
//! session reads its own writes. Every check runs even when an earlier one fails, and the
//! failure lists them all with the numbers that were seen.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{describe, TestProxy};
use pgsplit::topology::{LagStatus, Topology};
use pgsplit_cluster::{Cluster, Naming, Shape, APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::task::block_in_place;

const MAX_LAG_BYTES: u64 = 128 * 1024;
/// Checks every 100 ms, so "two checks" is 200 ms; 128 kB is about a second of the write
/// load below, far more than a healthy standby trails by.
const MONITOR: &str = "lag_check_interval = \"100ms\"\nmax_lag_bytes = 131072\nmax_ban = \"2s\"";
/// Reads from new clients while the load runs, and the time between them.
const READS: usize = 40;
const READ_EVERY: Duration = Duration::from_millis(100);
/// The primary's share of those reads may be at most 1 in this many. A correct pgsplit
/// sends it none (every standby keeps up); the slack is for a busy CI machine, where a
/// healthy standby may trail past the bound for a check.
const PRIMARY_AT_MOST_ONE_IN: usize = 5;
/// From the paused standby's lag passing `max_lag_bytes` to its exclusion: two checks
/// and a wide margin for a loaded machine.
const EXCLUDED_WITHIN: Duration = Duration::from_secs(2);
/// Longest any other transition may take.
const TRANSITION: Duration = Duration::from_secs(20);
/// Each standby must be eligible in at least this share of the snapshots taken while the
/// reads run: a healthy standby trails the primary by far less than the bound.
const ELIGIBLE_AT_LEAST_PERCENT: usize = 90;
/// How long a standby must stay eligible without a break to count as admitted.
const STEADY: Duration = Duration::from_secs(1);
/// Write-then-read rounds of the read-your-writes check.
const OWN_WRITES: i32 = 1000;
/// Clients writing on the primary, and the pause after each one's transactions: some
/// 600 transactions and 110 kB of WAL a second here, so a standby is rarely fully caught
/// up at the moment it is checked, yet trails by far less than a check's worth.
const WRITERS: usize = 2;
const LOAD_PACE: Duration = Duration::from_millis(1);
/// The load stops by itself after this, whatever happens to the test.
const LOAD_LIMIT: Duration = Duration::from_secs(120);
const LOAD_ROWS: i32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_every_standby_named_after_its_node() {
    // The control: the harness's own wiring, which pgsplit has always matched.
    prove_on(Shape::node_names(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_every_standby_built_with_pg_basebackup_defaults() {
    prove_on(Shape {
        standbys: 2,
        naming: Naming::Default,
        cascade: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_every_standby_named_by_its_cluster_name() {
    prove_on(Shape {
        standbys: 2,
        naming: Naming::ClusterName,
        cascade: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_every_standby_whose_application_name_is_not_its_node_name() {
    prove_on(Shape {
        standbys: 2,
        naming: Naming::Other,
        cascade: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_reach_a_cascading_standby_that_the_primary_never_lists() {
    prove_on(Shape {
        standbys: 2,
        naming: Naming::Default,
        cascade: true,
    })
    .await;
}

/// Runs every check on a cluster of `shape`; panics listing each one that failed.
async fn prove_on(shape: Shape) {
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || Cluster::build(shape))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("cannot start a {shape:?} cluster: {e}"));
    let wiring = block_in_place(|| wiring(&cluster));
    eprintln!(
        "{shape:?}: cluster ready in {:?}; {wiring}",
        started.elapsed()
    );
    block_in_place(|| create_tables(&cluster));
    let proxy = TestProxy::start_for(&cluster, "", MONITOR, "").await;
    // Idle, every standby has replayed everything, so even a misjudged one is eligible.
    wait_for(
        &proxy,
        "every standby to be eligible on the idle cluster",
        |t| t.nodes[1..].iter().all(|n| n.eligible),
    )
    .await
    .unwrap_or_else(|e| panic!("{shape:?} ({wiring}): {e}"));

    let load = WriteLoad::start(&cluster).await;
    let mut failures = Vec::new();
    let mut phase = Instant::now();
    let (spread, failure) = reads_spread(&cluster, &proxy).await;
    failures.extend(failure);
    let spread_took = phase.elapsed();

    phase = Instant::now();
    let paused = cluster.nodes().len() - 1;
    let pause = match pause_and_resume(&cluster, &proxy, paused).await {
        Ok(report) => report,
        Err(failure) => {
            failures.push(failure);
            "failed".to_string()
        }
    };
    let pause_took = phase.elapsed();

    phase = Instant::now();
    let (own, failure) = own_writes(&cluster, &proxy).await;
    failures.extend(failure);
    let own_took = phase.elapsed();

    let load = load.stop().await;
    failures.extend(load.error.clone());
    eprintln!(
        "{shape:?} in {:?}: reads {spread} ({spread_took:?}); pause {pause} ({pause_took:?}); \
         read-your-writes {own} ({own_took:?}); load {} transactions, {} B/s of WAL",
        started.elapsed(),
        load.transactions,
        load.wal_rate,
    );
    assert!(
        failures.is_empty(),
        "on a {shape:?} cluster ({wiring}):\n- {}",
        failures.join("\n- ")
    );
}

/// "standby1 streams from primary as 'walreceiver' (no slot), …", from what the
/// standbys themselves report.
fn wiring(cluster: &Cluster) -> String {
    let nodes = cluster.nodes();
    (1..nodes.len())
        .map(|i| {
            let link = cluster.link(i).expect("every standby has a link");
            let port = sql(
                cluster,
                i,
                "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            );
            let upstream = &nodes[link.upstream];
            assert_eq!(
                port,
                upstream.port.to_string(),
                "{} should stream from {}",
                nodes[i].name,
                upstream.name
            );
            format!(
                "{} streams from {} as '{}' ({})",
                nodes[i].name,
                upstream.name,
                link.application_name,
                link.slot
                    .as_ref()
                    .map_or("no slot".to_string(), |s| format!("slot {s}"))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name=count` per node.
fn per_node(nodes: &[pgsplit_cluster::Node], counts: &[usize]) -> String {
    nodes
        .iter()
        .zip(counts)
        .map(|(n, count)| format!("{}={count}", n.name))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sql(cluster: &Cluster, node: usize, sql: &str) -> String {
    cluster
        .sql(node, APP_DATABASE, sql)
        .unwrap_or_else(|e| panic!("SQL on {}: {e}", cluster.nodes()[node].name))
}

/// `load`, which the write load updates, and `counter`, which the session writes and reads.
fn create_tables(cluster: &Cluster) {
    cluster
        .sql_as(
            0,
            APP_USER,
            Some(APP_PASSWORD),
            APP_DATABASE,
            &format!(
                "CREATE TABLE load (id int PRIMARY KEY, v bigint NOT NULL DEFAULT 0); \
                 INSERT INTO load (id) SELECT generate_series(1, {LOAD_ROWS}); \
                 CREATE TABLE counter (id int PRIMARY KEY, v int); \
                 INSERT INTO counter VALUES (1, 0)"
            ),
        )
        .unwrap_or_else(|e| panic!("creating the test tables: {e}"));
    for i in 1..cluster.nodes().len() {
        cluster
            .wait_for_replay(i)
            .unwrap_or_else(|e| panic!("the test tables never reached standby {i}: {e}"));
    }
}

/// Small UPDATE transactions on the primary, directly: [`WRITERS`] clients, each pausing
/// [`LOAD_PACE`] after each transaction.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<Result<u64, String>>>,
    /// Reads the primary's WAL position at the start and the end.
    probe: tokio_postgres::Client,
    from: String,
    began: Instant,
}

struct LoadReport {
    transactions: u64,
    /// WAL the primary wrote meanwhile, in bytes a second.
    wal_rate: u64,
    /// Why a writer stopped early: the checks would then prove nothing about a busy primary.
    error: Option<String>,
}

impl WriteLoad {
    async fn start(cluster: &Cluster) -> WriteLoad {
        let port = cluster.primary().port;
        let probe = connect_to_primary(port).await;
        let from: String = probe
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap_or_else(|e| panic!("reading the primary's WAL position: {e}"))
            .get(0);
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let client = connect_to_primary(port).await;
            let update = client
                .prepare("UPDATE load SET v = v + 1 WHERE id = $1")
                .await
                .unwrap_or_else(|e| panic!("preparing the write load's UPDATE: {e}"));
            let stop = Arc::clone(&stop);
            writers.push(tokio::spawn(async move {
                let mut transactions = 0u64;
                // Each writer its own rows, so they never wait for each other's locks.
                let ids = (1..=LOAD_ROWS).filter(|id| *id as usize % WRITERS == writer);
                for id in ids.cycle() {
                    if stop.load(Ordering::Relaxed) || began.elapsed() > LOAD_LIMIT {
                        break;
                    }
                    client.execute(&update, &[&id]).await.map_err(|e| {
                        format!("writer {writer} failed after {transactions} transactions: {e}")
                    })?;
                    transactions += 1;
                    tokio::time::sleep(LOAD_PACE).await;
                }
                Ok(transactions)
            }));
        }
        WriteLoad {
            stop,
            writers,
            probe,
            from,
            began,
        }
    }

    async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let (mut transactions, mut error) = (0, None);
        for writer in self.writers {
            match writer.await.expect("write load task") {
                Ok(count) => transactions += count,
                Err(e) => error = Some(e),
            }
        }
        let wal = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint";
        let wal: i64 = match self.probe.query_one(wal, &[&self.from]).await {
            Ok(row) => row.get(0),
            Err(e) => panic!("reading the primary's WAL position: {e}"),
        };
        let seconds = self.began.elapsed().as_secs_f64();
        LoadReport {
            transactions,
            wal_rate: (wal.max(0) as f64 / seconds) as u64,
            error,
        }
    }
}

async fn connect_to_primary(port: u16) -> tokio_postgres::Client {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname={APP_DATABASE}"
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the write load cannot connect to the primary: {e}"));
    tokio::spawn(conn);
    client
}

/// [`READS`] reads, each from a new client so the balancer picks again; how many each
/// node served and how often each standby was eligible meanwhile, and a failure unless
/// every standby served some and was nearly always eligible, and the primary served few.
async fn reads_spread(cluster: &Cluster, proxy: &TestProxy) -> (String, Option<String>) {
    let nodes = cluster.nodes();
    let reads = async {
        let mut served = vec![0usize; nodes.len()];
        let mut errors = Vec::new();
        for i in 0..READS {
            match read_from_new_client(proxy).await {
                Ok(port) => match nodes.iter().position(|n| n.port == port) {
                    Some(node) => served[node] += 1,
                    None => errors.push(format!("read {i} answered from unknown port {port}")),
                },
                Err(e) => errors.push(format!("read {i}: {e}")),
            }
            tokio::time::sleep(READ_EVERY).await;
        }
        (served, errors)
    };
    let ((served, mut wrong), eligible) = eligibility_during(proxy, reads).await;
    let counts = per_node(nodes, &served);
    let shares = (1..nodes.len())
        .map(|i| format!("{} {}%", nodes[i].name, eligible[i]))
        .collect::<Vec<_>>()
        .join(", ");
    let report = format!("{counts} (eligible: {shares})");
    let idle: Vec<&str> = (1..nodes.len())
        .filter(|i| served[*i] == 0)
        .map(|i| nodes[i].name.as_str())
        .collect();
    if !idle.is_empty() {
        wrong.push(format!("no read reached {}", idle.join(", ")));
    }
    if served[0] * PRIMARY_AT_MOST_ONE_IN > READS {
        wrong.push(format!(
            "the primary served {} of {READS} reads, more than 1 in {PRIMARY_AT_MOST_ONE_IN}",
            served[0]
        ));
    }
    let flapping: Vec<String> = (1..nodes.len())
        .filter(|i| eligible[*i] < ELIGIBLE_AT_LEAST_PERCENT)
        .map(|i| {
            format!(
                "{} was eligible {}% of the time",
                nodes[i].name, eligible[i]
            )
        })
        .collect();
    if !flapping.is_empty() {
        wrong.push(format!(
            "{}, not at least {ELIGIBLE_AT_LEAST_PERCENT}%",
            flapping.join(", ")
        ));
    }
    let failure = (!wrong.is_empty()).then(|| {
        format!(
            "reads under write load: {report}: {}; topology now:{}",
            wrong.join("; "),
            describe(&proxy.topology())
        )
    });
    (report, failure)
}

/// Runs `work` while sampling the proxy's snapshot every 10 ms; its output, and for each
/// node the percentage of samples in which it was eligible.
async fn eligibility_during<T>(
    proxy: &TestProxy,
    work: impl std::future::Future<Output = T>,
) -> (T, Vec<usize>) {
    let done = AtomicBool::new(false);
    let work = async {
        let out = work.await;
        done.store(true, Ordering::Relaxed);
        out
    };
    let sample = async {
        let (mut samples, mut eligible) = (0usize, Vec::new());
        while !done.load(Ordering::Relaxed) {
            let t = proxy.topology();
            eligible.resize(t.nodes.len(), 0usize);
            for (count, node) in eligible.iter_mut().zip(&t.nodes) {
                *count += usize::from(node.eligible);
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let samples = samples.max(1);
        eligible.iter().map(|e| e * 100 / samples).collect()
    };
    tokio::join!(work, sample)
}

/// Waits until standby `node` has stayed eligible for [`STEADY`] without a break; how long
/// that took from the call, or how often it was eligible if it never did.
async fn wait_steady(proxy: &TestProxy, node: usize, what: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let (mut samples, mut eligible) = (0usize, 0usize);
    let mut since: Option<Instant> = None;
    loop {
        let t = proxy.topology();
        samples += 1;
        if t.nodes[node].eligible {
            eligible += 1;
            let since = *since.get_or_insert_with(Instant::now);
            if since.elapsed() >= STEADY {
                return Ok(since - start);
            }
        } else {
            since = None;
        }
        if start.elapsed() > TRANSITION {
            return Err(format!(
                "{what}: it never stayed eligible for {STEADY:?} in {TRANSITION:?} \
                 (eligible in {}% of the snapshots); topology:{}",
                eligible * 100 / samples,
                describe(&t)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The port of the server that served a new client's first read.
async fn read_from_new_client(proxy: &TestProxy) -> Result<u16, String> {
    let client = proxy
        .connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .map_err(|e| format!("SELECT inet_server_port(): {} ({e})", common::sqlstate(&e)))?;
    let port: i32 = row.get(0);
    u16::try_from(port).map_err(|_| format!("port {port}"))
}

/// Pauses replay on standby `paused` under the load: pgsplit must exclude it within
/// [`EXCLUDED_WITHIN`] of its lag passing the bound, for lag, and take it back once it
/// has caught up after the resume. Replay is resumed whatever happens.
async fn pause_and_resume(
    cluster: &Cluster,
    proxy: &TestProxy,
    paused: usize,
) -> Result<String, String> {
    let name = &cluster.nodes()[paused].name;
    // Excluded now and then already, its exclusion after the pause would prove nothing.
    wait_steady(
        proxy,
        paused,
        &format!("{name} under load before the pause"),
    )
    .await?;
    let excluded = match block_in_place(|| cluster.pause_replay(paused)) {
        Ok(()) => excluded_once_over_the_bound(cluster, proxy, paused).await,
        Err(e) => Err(e.to_string()),
    };
    block_in_place(|| cluster.resume_replay(paused)).map_err(|e| e.to_string())?;
    let excluded = excluded?;
    let resumed = Instant::now();
    block_in_place(|| cluster.wait_for_replay(paused)).map_err(|e| e.to_string())?;
    let caught_up = resumed.elapsed();
    let readmitted =
        caught_up + wait_steady(proxy, paused, &format!("{name} after the resume")).await?;
    // Eligible for one check is not enough: new clients must read from it again.
    let port = cluster.nodes()[paused].port;
    let mut ports = Vec::new();
    for _ in 0..READS / 2 {
        ports.push(read_from_new_client(proxy).await?);
        tokio::time::sleep(READ_EVERY / 3).await;
    }
    if !ports.contains(&port) {
        return Err(format!(
            "{name} was re-admitted but served none of {} new clients' reads: {ports:?}; \
             topology:{}",
            ports.len(),
            describe(&proxy.topology())
        ));
    }
    Ok(format!(
        "{name} excluded {excluded:?} after its lag passed {MAX_LAG_BYTES} B, \
         re-admitted {readmitted:?} after the resume"
    ))
}

/// With replay paused on `paused`: waits for the load to put it `MAX_LAG_BYTES` behind,
/// then for pgsplit to exclude it for lag; how long the exclusion took after that.
async fn excluded_once_over_the_bound(
    cluster: &Cluster,
    proxy: &TestProxy,
    paused: usize,
) -> Result<Duration, String> {
    let name = &cluster.nodes()[paused].name;
    let frozen =
        block_in_place(|| cluster.sql(paused, "postgres", "SELECT pg_last_wal_replay_lsn()"))
            .map_err(|e| e.to_string())?;
    let behind =
        format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{frozen}') > {MAX_LAG_BYTES}");
    let start = Instant::now();
    while block_in_place(|| cluster.sql(0, "postgres", &behind)).map_err(|e| e.to_string())? != "t"
    {
        if start.elapsed() > TRANSITION {
            return Err(format!(
                "the write load never put {name} {MAX_LAG_BYTES} B behind in {TRANSITION:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = wait_for(proxy, &format!("{name} to be excluded"), |t| {
        !t.nodes[paused].eligible
    })
    .await?;
    let t = proxy.topology();
    let state = &t.nodes[paused];
    if took > EXCLUDED_WITHIN {
        return Err(format!(
            "{name} was excluded {took:?} after its lag passed {MAX_LAG_BYTES} B, \
             later than {EXCLUDED_WITHIN:?}; topology:{}",
            describe(&t)
        ));
    }
    if !matches!(state.lag_status, LagStatus::Lagging { .. }) || state.ban.is_some() {
        return Err(format!(
            "{name} should be excluded for lag, not banned; topology:{}",
            describe(&t)
        ));
    }
    Ok(took)
}

/// Writes 1..=[`OWN_WRITES`] and reads each back through one client; a failure if any read
/// was older than the write before it.
async fn own_writes(cluster: &Cluster, proxy: &TestProxy) -> (String, Option<String>) {
    let client = proxy.connect().await;
    let write = client
        .prepare("UPDATE counter SET v = $1 WHERE id = 1")
        .await
        .expect("prepare the write");
    let read = client
        .prepare("SELECT v, inet_server_port() FROM counter WHERE id = 1")
        .await
        .expect("prepare the read");
    let nodes = cluster.nodes();
    let mut served = vec![0usize; nodes.len()];
    let mut stale = Vec::new();
    for i in 1..=OWN_WRITES {
        client
            .execute(&write, &[&i])
            .await
            .unwrap_or_else(|e| panic!("write {i} through pgsplit: {e}"));
        let row = client
            .query_one(&read, &[])
            .await
            .unwrap_or_else(|e| panic!("read {i} through pgsplit: {e}"));
        let (seen, port): (i32, i32) = (row.get(0), row.get(1));
        let node = nodes.iter().position(|n| i32::from(n.port) == port);
        if let Some(node) = node {
            served[node] += 1;
        }
        if seen != i {
            stale.push((i, seen, node.map_or("?", |n| nodes[n].name.as_str())));
        }
    }
    let counts = per_node(nodes, &served);
    let report = format!("{} stale of {OWN_WRITES}, reads {counts}", stale.len());
    let failure = (!stale.is_empty()).then(|| {
        let first: Vec<String> = stale
            .iter()
            .take(5)
            .map(|(wrote, saw, node)| format!("wrote {wrote}, {node} answered {saw}"))
            .collect();
        format!("read-your-writes: {report}; first: {}", first.join(", "))
    });
    (report, failure)
}

/// Polls the proxy's snapshot until `ready` holds; how long that took.
async fn wait_for(
    proxy: &TestProxy,
    what: &str,
    ready: impl Fn(&Topology) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let t = proxy.topology();
        if ready(&t) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > TRANSITION {
            return Err(format!(
                "timed out after {TRANSITION:?} waiting for {what}; topology:{}",
                describe(&t)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
