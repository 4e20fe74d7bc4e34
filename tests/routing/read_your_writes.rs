//! Read-your-writes: after a client's write commits, its reads never see an older
//! snapshot, even when the standbys apply WAL with a delay (inside the lag bounds).

use crate::common;

use std::time::{Duration, Instant};

use common::TestProxy;
use pgsplit_cluster::{Cluster, APP_PASSWORD, APP_USER};

const MONITOR: &str = "lag_check_interval = \"100ms\"";

/// A cluster whose standbys apply WAL one second late, and pgsplit in front of it.
async fn delayed_cluster(routing: &str) -> (Cluster, TestProxy) {
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
        cluster
            .sql(
                i,
                "postgres",
                "ALTER SYSTEM SET recovery_min_apply_delay = '1s'",
            )
            .unwrap();
        cluster
            .sql(i, "postgres", "SELECT pg_reload_conf()")
            .unwrap();
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

/// Writes 1..=n and reads each back in the same session; returns how many reads were stale.
async fn stale_reads(proxy: &TestProxy, n: i32) -> usize {
    let client = proxy.connect().await;
    let mut stale = 0;
    for i in 1..=n {
        client
            .execute("UPDATE counter SET v = $1 WHERE id = 1", &[&i])
            .await
            .unwrap();
        let seen: i32 = client
            .query_one("SELECT v FROM counter WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        if seen != i {
            stale += 1;
        }
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
