//! `idle_in_transaction_timeout`: a client that leaves a transaction open and idle is
//! disconnected with 25P03, its transaction is rolled back, and the server connection it
//! held serves the next client clean; a client working inside its transaction is not.

use crate::common;

use std::time::{Duration, Instant};

use common::pool::{first, trust_user, ON_PRIMARY};
use common::raw::{self, error_code, read_message};
use common::TestProxy;
use tokio::io::AsyncWriteExt;

/// One server connection per pool, so the next client gets the abandoned one.
async fn proxy() -> TestProxy {
    TestProxy::start_with(
        "idle_in_transaction_timeout = \"1s\"",
        &format!(
            "[routing]\nread_your_writes = \"off\"\n\n[pool]\nmax_pool_size = 1\n{}",
            trust_user()
        ),
    )
    .await
}

#[tokio::test]
async fn a_client_idle_in_its_transaction_is_cut_off_and_its_work_rolled_back() {
    let _shared = common::turns::shared().await;
    let proxy = proxy().await;
    let setup = proxy.connect().await;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS idle_txn_t (v text)")
        .await
        .unwrap();
    let mut idle = raw::login(proxy.addr, "trustuser").await;
    let pid_sql = format!("{ON_PRIMARY} SELECT pg_backend_pid()");
    for sql in [
        "BEGIN",
        "INSERT INTO idle_txn_t VALUES ('abandoned')",
        "SET LOCAL work_mem = '7MB'",
        pid_sql.as_str(),
    ] {
        idle.write_all(&raw::query(sql)).await.unwrap();
        raw::until_ready(&mut idle).await;
    }

    let started = Instant::now();
    let fatal = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read_message(&mut idle).await {
                Some((b'E', body)) => return Some(error_code(&body)),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .expect("the idle client hears from pgsplit");
    assert_eq!(fatal.as_deref(), Some("25P03"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut off after {:?}, before the timeout",
        started.elapsed()
    );
    assert!(
        read_message(&mut idle).await.is_none(),
        "closed after the error"
    );

    // The same server connection (the pool has one) serves the next client, clean.
    let next = proxy.connect().await;
    let checks = [
        ("SELECT count(*) FROM idle_txn_t WHERE v = 'abandoned'", "0"),
        ("SHOW work_mem", "4MB"),
        ("SELECT pg_current_xact_id_if_assigned() IS NULL", "t"),
    ];
    for (sql, want) in checks {
        let sql = format!("{ON_PRIMARY} {sql}");
        assert_eq!(
            first(&next, &sql).await.unwrap().as_deref(),
            Some(want),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn a_client_working_inside_its_transaction_is_left_alone() {
    let _shared = common::turns::shared().await;
    let proxy = proxy().await;
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.unwrap();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let row = client.query_one("SELECT $1::int", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    client.batch_execute("COMMIT").await.unwrap();
}
