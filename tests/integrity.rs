//! No data lost or crossed through transaction pooling: a client that vanishes mid-
//! transaction leaves nothing behind on the server connection the next client gets; 400
//! clients sharing a few server connections each get only their own answers; a large COPY
//! arrives byte for byte. `PGSPLIT_LONG_TESTS=1` runs the COPY at 1 GB (else 32 MB).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pool::{first, pooled_proxy, ON_PRIMARY};
use common::{cluster, raw, TestProxy};
use futures_util::{SinkExt, StreamExt};
use pgsplit::cluster::{APP_PASSWORD, APP_USER};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Logs in a raw client and runs `sqls` on it, each on the primary; the backend pid.
async fn raw_session_on_primary(proxy: &TestProxy, sqls: &[&str]) -> (TcpStream, String) {
    let mut stream = raw::login(proxy.addr, "trustuser").await;
    for sql in sqls {
        stream.write_all(&raw::query(sql)).await.unwrap();
        let reply = raw::reply(&mut stream).await;
        assert!(reply.errors.is_empty(), "{sql}: {:?}", reply.errors);
    }
    let pid_sql = format!("{ON_PRIMARY} SELECT pg_backend_pid()");
    stream.write_all(&raw::query(&pid_sql)).await.unwrap();
    let reply = raw::reply(&mut stream).await;
    let pid = reply.rows[0][0].clone().expect("a pid");
    (stream, pid)
}

/// What the next client of `pid`'s server connection finds there: nothing of the client
/// that left.
async fn assert_clean_connection(proxy: &TestProxy, pid: &str) {
    let next = proxy.connect().await;
    let on_primary = |sql: &str| format!("{ON_PRIMARY} {sql}");
    assert_eq!(
        first(&next, &on_primary("SELECT pg_backend_pid()::text"))
            .await
            .unwrap()
            .as_deref(),
        Some(pid),
        "the next client got the same server connection (pool of one)"
    );
    let checks = [
        (
            "SELECT count(*) FROM integrity_left WHERE v = 'abandoned'",
            "0",
        ),
        ("SHOW work_mem", "4MB"),
        ("SELECT pg_current_xact_id_if_assigned() IS NULL", "t"),
        ("SELECT count(*) FROM pg_cursors", "0"),
        ("SELECT pg_try_advisory_lock(4242)", "t"),
        ("SELECT pg_advisory_unlock(4242)", "t"),
    ];
    for (sql, want) in checks {
        assert_eq!(
            first(&next, &on_primary(sql)).await.unwrap().as_deref(),
            Some(want),
            "{sql}"
        );
    }
    let state = cluster()
        .sql(
            0,
            "postgres",
            &format!("SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .unwrap();
    assert_eq!(
        state, "idle",
        "the left-behind backend is idle, no transaction open"
    );
}

/// The table the departing clients write to, created once for both tests.
fn left_table() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        cluster()
            .sql_as(
                0,
                APP_USER,
                Some(APP_PASSWORD),
                "app",
                "CREATE TABLE integrity_left (v text)",
            )
            .expect("create integrity_left");
    });
}

const MID_TRANSACTION: [&str; 5] = [
    "BEGIN",
    "INSERT INTO integrity_left VALUES ('abandoned')",
    "SET work_mem = '7MB'",
    "DECLARE c CURSOR FOR SELECT 1",
    "SELECT pg_advisory_xact_lock(4242)",
];

#[tokio::test]
async fn a_client_leaving_mid_transaction_leaves_a_clean_connection_for_the_next() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    left_table();
    let (stream, pid) = raw_session_on_primary(&proxy, &MID_TRANSACTION).await;
    // Gone without a Terminate message: the socket just closes.
    drop(stream);
    assert_clean_connection(&proxy, &pid).await;
}

#[tokio::test]
async fn a_client_leaving_during_a_long_query_has_it_cancelled_and_leaves_a_clean_connection() {
    let proxy = pooled_proxy("max_pool_size = 1").await;
    left_table();
    let (mut stream, pid) = raw_session_on_primary(&proxy, &MID_TRANSACTION).await;
    stream
        .write_all(&raw::query("SELECT pg_sleep(30)"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = Instant::now();
    drop(stream);
    // A connection still answering is not reused: its query is cancelled and the
    // connection closed, so its backend (with the transaction) goes away.
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    while cluster().sql(0, "postgres", &gone).unwrap() != "0" {
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "the abandoned backend {pid} still runs: its query was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backend = first(
        &proxy.connect().await,
        &format!("{ON_PRIMARY} SELECT pg_backend_pid()::text"),
    )
    .await
    .unwrap()
    .expect("a pid");
    assert_clean_connection(&proxy, &backend).await;
}

/// Clients, each running this many rounds of every kind of query.
const CLIENTS: usize = 400;
const ROUNDS: i32 = 10;

#[tokio::test]
async fn four_hundred_clients_each_get_only_their_own_answers() {
    let proxy = Arc::new(pooled_proxy("max_pool_size = 10\ncheckout_timeout = \"60s\"").await);
    proxy
        .connect()
        .await
        .batch_execute("CREATE TABLE IF NOT EXISTS integrity_own (client int, n int, tag text)")
        .await
        .unwrap();
    let answers = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS as i32)
        .map(|id| {
            let (proxy, answers, mismatches) = (
                Arc::clone(&proxy),
                Arc::clone(&answers),
                Arc::clone(&mismatches),
            );
            tokio::spawn(async move {
                // Trust: 400 SCRAM exchanges at once would measure PBKDF2 in a debug build.
                let client = proxy
                    .connect_as("trustuser", "unused", "app")
                    .await
                    .expect("connect through pgsplit");
                let statement = client
                    .prepare("SELECT $1::text, $2::int")
                    .await
                    .expect("prepare");
                let wrong = |what: String| mismatches.lock().expect("mismatches").push(what);
                for n in 0..ROUNDS {
                    let tag = format!("client-{id}-round-{n}");
                    // Simple protocol, a read on a standby.
                    let simple = first(&client, &format!("SELECT '{tag}'"))
                        .await
                        .expect("simple");
                    if simple.as_deref() != Some(tag.as_str()) {
                        wrong(format!("simple: {simple:?} for {tag}"));
                    }
                    // Extended protocol with a statement prepared once.
                    let row = client
                        .query_one(&statement, &[&tag, &n])
                        .await
                        .expect("extended");
                    if (row.get::<_, &str>(0), row.get::<_, i32>(1)) != (tag.as_str(), n) {
                        wrong(format!("extended: {:?} for {tag}", row.get::<_, &str>(0)));
                    }
                    // A write in a transaction on the primary, read back in it.
                    let txn = format!(
                        "BEGIN; INSERT INTO integrity_own VALUES ({id}, {n}, '{tag}'); \
                         SELECT tag FROM integrity_own WHERE client = {id} AND n = {n}; COMMIT"
                    );
                    let rows: Vec<String> = client
                        .simple_query(&txn)
                        .await
                        .expect("transaction")
                        .into_iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0).map(str::to_owned)
                            }
                            _ => None,
                        })
                        .collect();
                    if rows != [tag.clone()] {
                        wrong(format!("transaction: {rows:?} for {tag}"));
                    }
                    answers.fetch_add(3, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("client finishes")
            .expect("client task");
    }
    let mismatches = mismatches.lock().expect("mismatches").clone();
    println!(
        "{CLIENTS} clients, {} answers checked in {:?} through 10 server connections per node: {} mismatches",
        answers.load(Ordering::Relaxed),
        started.elapsed(),
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "answers crossed: {mismatches:?}");
    assert_eq!(
        answers.load(Ordering::Relaxed),
        (CLIENTS as u64) * ROUNDS as u64 * 3
    );
    let stored = cluster()
        .sql(
            0,
            "app",
            "SELECT count(DISTINCT (client, n)) FROM integrity_own",
        )
        .unwrap();
    assert_eq!(stored, (CLIENTS * ROUNDS as usize).to_string());
}

/// COPY size: 1 GB in the long run, 32 MB otherwise.
fn copy_bytes() -> usize {
    match std::env::var("PGSPLIT_LONG_TESTS").as_deref() {
        Ok("1") => 1 << 30,
        _ => 32 << 20,
    }
}

/// Deterministic COPY text rows (`id \t payload \n`) of about `total` bytes, in chunks;
/// payloads (slices of one seeded random text) hold what COPY must escape: tab, newline
/// and backslash, written as `\t`, `\n`, `\\`.
fn copy_chunks(total: usize) -> impl Iterator<Item = Bytes> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // The text, and where each of its characters (one byte or one escape) starts, so a
    // payload never cuts an escape in two.
    let mut text = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..1 << 16 {
        starts.push(text.len());
        match rng.random_range(0..40u8) {
            0 => text.extend_from_slice(b"\\t"),
            1 => text.extend_from_slice(b"\\n"),
            2 => text.extend_from_slice(b"\\\\"),
            c => text.push(b'a' + c % 26),
        }
    }
    starts.push(text.len());
    let mut id: u64 = 0;
    let mut produced = 0;
    std::iter::from_fn(move || {
        if produced >= total {
            return None;
        }
        let mut chunk = Vec::with_capacity(1 << 16);
        while chunk.len() < 1 << 16 && produced + chunk.len() < total {
            id += 1;
            chunk.extend_from_slice(format!("{id}\t").as_bytes());
            let first = rng.random_range(0..starts.len() - 400);
            let last = first + rng.random_range(0..400);
            chunk.extend_from_slice(&text[starts[first]..starts[last]]);
            chunk.push(b'\n');
        }
        produced += chunk.len();
        Some(Bytes::from(chunk))
    })
}

/// COPYs `total` bytes of [`copy_chunks`] into `table`: rows, SHA-256 of the bytes sent,
/// bytes sent, and how long it took.
async fn copy_in(
    client: &tokio_postgres::Client,
    table: &str,
    total: usize,
) -> (u64, Vec<u8>, usize, Duration) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, payload text)"
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let sink = client
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .expect("COPY FROM");
    futures_util::pin_mut!(sink);
    let mut sent = Sha256::new();
    let mut bytes = 0;
    for chunk in copy_chunks(total) {
        sent.update(&chunk);
        bytes += chunk.len();
        sink.send(chunk).await.expect("send COPY data");
    }
    let rows = sink.finish().await.expect("COPY completes");
    (rows, sent.finalize().to_vec(), bytes, started.elapsed())
}

#[tokio::test]
async fn a_large_copy_arrives_intact_through_transaction_pooling() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let total = copy_bytes();
    let (rows, sent, sent_bytes, copied_in) = copy_in(&client, "integrity_copy", total).await;

    let started = Instant::now();
    let stream = client
        .copy_out("COPY (SELECT id, payload FROM integrity_copy ORDER BY id) TO STDOUT")
        .await
        .expect("COPY TO through pgsplit");
    futures_util::pin_mut!(stream);
    let mut received = Sha256::new();
    let mut received_bytes = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("COPY data");
        received.update(&chunk);
        received_bytes += chunk.len();
    }
    let copied_out = started.elapsed();
    assert_eq!(received_bytes, sent_bytes);
    assert_eq!(
        received.finalize().to_vec(),
        sent,
        "COPY data changed on the way"
    );
    let on_server = cluster()
        .sql(0, "app", "SELECT count(*), max(id) FROM integrity_copy")
        .unwrap();
    assert_eq!(on_server, format!("{rows}|{rows}"));
    client
        .batch_execute("DROP TABLE integrity_copy")
        .await
        .unwrap();

    // The same COPY straight to the primary, for scale.
    let (direct, conn) = tokio_postgres::connect(
        &cluster().uri(0, APP_USER, APP_PASSWORD, "app"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the primary");
    tokio::spawn(conn);
    let (_, _, _, direct_in) = copy_in(&direct, "integrity_copy_direct", total).await;
    direct
        .batch_execute("DROP TABLE integrity_copy_direct")
        .await
        .unwrap();
    let mib = sent_bytes as f64 / (1 << 20) as f64;
    println!(
        "COPY {mib:.0} MiB ({rows} rows) through pgsplit: in {copied_in:?} ({:.0} MiB/s; direct to the primary {direct_in:?}, {:.0} MiB/s), out {copied_out:?} ({:.0} MiB/s); checksums equal",
        mib / copied_in.as_secs_f64(),
        mib / direct_in.as_secs_f64(),
        mib / copied_out.as_secs_f64()
    );
}
