//! Read-your-writes: after a client's write commits, its reads never see an older
//! snapshot, even when the standbys apply WAL with a delay (inside the lag bounds), and
//! on standbys that replay normally the reads stay on the standbys.

use crate::common;

use std::time::{Duration, Instant};

use common::TestProxy;
use pgsplit_cluster::{Cluster, APP_PASSWORD, APP_USER};

const MONITOR: &str = "lag_check_interval = \"100ms\"";

/// How the standbys replay while the pairs run.
#[derive(Clone, Copy)]
enum Replay {
    /// As they do by default.
    Normally,
    /// Standby 1's replay is paused (`pg_wal_replay_pause()`).
    OnePaused,
    /// Every standby applies WAL this late (`recovery_min_apply_delay`).
    Delayed(&'static str),
}

/// A cluster with a `counter` table whose standbys replay as `replay` says, and pgsplit
/// in front of it with `routing` in its `[routing]` table.
async fn cluster_replaying(replay: Replay, routing: &str) -> (Cluster, TestProxy) {
    let cluster = common::own_cluster().await;
    cluster
        .sql_as(
            0,
            APP_USER,
            Some(APP_PASSWORD),
            "app",
            "CREATE TABLE counter (id int PRIMARY KEY, v int); INSERT INTO counter VALUES (1, 0)",
        )
        .unwrap();
    for i in 1..cluster.nodes().len() {
        cluster.wait_for_replay(i).unwrap();
        if let Replay::Delayed(delay) = replay {
            let set = format!("ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'");
            cluster.sql(i, "postgres", &set).unwrap();
            cluster
                .sql(i, "postgres", "SELECT pg_reload_conf()")
                .unwrap();
        }
    }
    if let Replay::OnePaused = replay {
        cluster.pause_replay(1).unwrap();
    }
    let tables = format!("[routing]\n{routing}\n");
    let proxy = TestProxy::start_for(&cluster, "", MONITOR, &tables).await;
    // Let the monitor see every standby before the first read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.topology().nodes[1..].iter().all(|n| n.eligible) {
        assert!(Instant::now() < deadline, "standbys never became eligible");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (cluster, proxy)
}

/// A cluster whose standbys apply WAL one second late, and pgsplit in front of it.
async fn delayed_cluster(routing: &str) -> (Cluster, TestProxy) {
    cluster_replaying(Replay::Delayed("1s"), routing).await
}

/// Runs `n` write-then-read pairs on one connection through `proxy`: the stale reads,
/// and how many of the reads each node of `cluster` served (as the read itself says,
/// by the server's port).
async fn pairs(cluster: &Cluster, proxy: &TestProxy, n: i32) -> (usize, Vec<u64>) {
    let client = proxy.connect().await;
    let mut stale = 0;
    let mut reads = vec![0; cluster.nodes().len()];
    for i in 1..=n {
        client
            .execute("UPDATE counter SET v = $1 WHERE id = 1", &[&i])
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT v, inet_server_port() FROM counter WHERE id = 1",
                &[],
            )
            .await
            .unwrap();
        stale += usize::from(row.get::<_, i32>(0) != i);
        let port = row.get::<_, i32>(1);
        let node = cluster
            .nodes()
            .iter()
            .position(|n| i32::from(n.port) == port)
            .expect("a read served by a node of the cluster");
        reads[node] += 1;
    }
    (stale, reads)
}

#[tokio::test]
async fn reads_after_writes_stay_on_standbys_that_replay_normally() {
    let (cluster, proxy) = cluster_replaying(Replay::Normally, "").await;
    let (stale, reads) = pairs(&cluster, &proxy, 10_000).await;
    let standbys: u64 = reads[1..].iter().sum();
    println!("10000 write-then-read pairs, standbys replaying normally: reads per node {reads:?}");
    assert_eq!(
        stale, 0,
        "a client read an older value than it had just written"
    );
    assert_eq!(
        reads.iter().sum::<u64>(),
        10_000,
        "every read was counted once"
    );
    assert!(
        standbys > reads[0],
        "most reads after a write should be served by standbys that replayed it: {reads:?}"
    );
    let freshness = proxy.stats().freshness;
    let checked: u64 = freshness[1..].iter().map(|f| f.checked_reads).sum();
    assert!(
        checked > 0,
        "no read was served after a standby check: {freshness:?}"
    );
}

#[tokio::test]
async fn reads_after_writes_skip_a_standby_whose_replay_is_paused() {
    let (cluster, proxy) = cluster_replaying(Replay::OnePaused, "").await;
    let (stale, reads) = pairs(&cluster, &proxy, 10_000).await;
    println!("10000 write-then-read pairs, standby 1 paused: reads per node {reads:?}");
    cluster.resume_replay(1).unwrap();
    assert_eq!(
        stale, 0,
        "a client read an older value than it had just written"
    );
    assert!(
        reads[2] > reads[1],
        "the standby that replays should serve more of the reads than the paused one: {reads:?}"
    );
}

#[tokio::test]
async fn reads_after_writes_to_standbys_applying_half_a_second_late_are_never_stale() {
    let (cluster, proxy) = cluster_replaying(Replay::Delayed("500ms"), "").await;
    let (stale, reads) = pairs(&cluster, &proxy, 10_000).await;
    println!("10000 write-then-read pairs, standbys 500 ms late: reads per node {reads:?}");
    assert_eq!(
        stale, 0,
        "a client read an older value than it had just written"
    );
    assert!(
        reads[0] > 0,
        "some reads should have gone to the primary: {reads:?}"
    );
}

#[tokio::test]
async fn a_session_turns_read_your_writes_off_and_on_with_set() {
    let (_cluster, proxy) = delayed_cluster("").await;
    let client = proxy.connect().await;
    client
        .batch_execute("SET pgsplit.read_your_writes = 'off'")
        .await
        .unwrap();
    let shown: String = client
        .query_one("SHOW pgsplit.read_your_writes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "off");
    let stale = stale_reads_on(&client, 1..=50).await;
    assert!(
        stale > 0,
        "with it off and a 1 s apply delay, some reads should be stale"
    );
    client
        .batch_execute("RESET pgsplit.read_your_writes")
        .await
        .unwrap();
    assert_eq!(
        stale_reads_on(&client, 51..=100).await,
        0,
        "stale read once the session's setting was reset"
    );
    let error = client
        .batch_execute("SET pgsplit.read_your_writes = 'sometimes'")
        .await
        .expect_err("an unknown value is refused");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
        "{error}"
    );
    // The session goes on.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Writes 1..=n and reads each back in a new session; returns how many reads were stale.
async fn stale_reads(proxy: &TestProxy, n: i32) -> usize {
    stale_reads_on(&proxy.connect().await, 1..=n).await
}

/// Writes each of `values` and reads it back on `client`; returns how many reads were
/// stale.
async fn stale_reads_on(
    client: &tokio_postgres::Client,
    values: std::ops::RangeInclusive<i32>,
) -> usize {
    let mut stale = 0;
    for i in values {
        client
            .execute("UPDATE counter SET v = $1 WHERE id = 1", &[&i])
            .await
            .unwrap();
        let seen: i32 = client
            .query_one("SELECT v FROM counter WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        stale += usize::from(seen != i);
    }
    stale
}

#[tokio::test]
async fn a_session_reads_its_own_writes_even_from_delayed_standbys() {
    let (_cluster, proxy) = delayed_cluster("").await;
    let before = proxy.stats();
    assert_eq!(
        stale_reads(&proxy, 10_000).await,
        0,
        "a client read an older value than it had just written"
    );
    let after = proxy.stats();
    assert!(after.to_primary > before.to_primary);

    // Once the standbys have caught up with the last write, reads go back to them.
    let client = proxy.connect().await;
    client
        .execute("UPDATE counter SET v = -1 WHERE id = 1", &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = client
            .query_one(
                "SELECT v, pg_is_in_recovery() FROM counter WHERE id = 1",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), -1, "stale read after the last write");
        if row.get::<_, bool>(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads never returned to a standby after it caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn without_read_your_writes_the_same_workload_sees_stale_reads() {
    let (_cluster, proxy) = delayed_cluster("read_your_writes = \"off\"").await;
    let stale = stale_reads(&proxy, 50).await;
    assert!(
        stale > 0,
        "with a 1 s apply delay and read_your_writes off, some reads should be stale"
    );
}
