//! No data lost or crossed (issue 9), end to end through pgsplit in transaction pooling:
//! a client that vanishes mid-transaction leaves its server connection clean for the next
//! client; 400 concurrent clients sharing a few server connections each get only their
//! own answers; a large COPY goes in and comes back out byte for byte.
//!
//! Each test runs alone (`common::turns::alone`): each measures time, and two on 2 cores
//! would measure each other, so the timings they check and print are their own.
//! `PGSPLIT_LONG_TESTS=1` makes the COPY 1 GiB instead of 32 MiB.

use crate::common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::pool::{trust_user, ON_PRIMARY};
use common::{cluster, raw, TestProxy};
use futures_util::{SinkExt, StreamExt};
use pgsplit_cluster::APP_PASSWORD;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// pgsplit in transaction pooling with `pool` as the keys of `[pool]`, read-your-writes
/// off, the `trustuser` trust user, and `users` more.
async fn pooled(top: &str, pool: &str, users: &str) -> TestProxy {
    TestProxy::start_with(
        top,
        &format!(
            "[routing]\nread_your_writes = \"off\"\n\n[pool]\nmode = \"transaction\"\n{pool}\n{}{users}",
            trust_user()
        ),
    )
    .await
}

/// A tokio-postgres client logged in as the trust user (no SCRAM on either side: 400
/// logins must not cost more than the queries they come for).
async fn trust_client(proxy: &TestProxy) -> Result<Client, tokio_postgres::Error> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=trustuser dbname=app",
        proxy.addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Sends one simple query on a raw connection; its rows, failing on any error.
async fn simple(stream: &mut TcpStream, sql: &str) -> Vec<Vec<Option<String>>> {
    stream
        .write_all(&raw::query(sql))
        .await
        .unwrap_or_else(|e| panic!("send {sql}: {e}"));
    let reply = raw::reply(stream).await;
    assert!(
        reply.errors.is_empty(),
        "{sql}: expected success, got SQLSTATEs {:?}",
        reply.errors
    );
    reply.rows
}

/// Column `i` of the first row.
fn cell(rows: &[Vec<Option<String>>], i: usize) -> String {
    rows.first()
        .and_then(|r| r.get(i).cloned())
        .flatten()
        .unwrap_or_else(|| panic!("no value in column {i} of {rows:?}"))
}

/// Runs `sql` as the superuser straight on the primary (not through pgsplit).
fn on_primary(database: &str, sql: &str) -> String {
    cluster()
        .sql(0, database, sql)
        .unwrap_or_else(|e| panic!("on the primary, {sql}: {e}"))
}

/// Polls `sql` on the primary until it returns `want` or `within` passes; the last answer.
async fn primary_until(sql: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = on_primary("postgres", sql);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A role of this test's own, so `pg_stat_activity` rows with it are the test's alone.
const LEAVER_ROLE: &str = "integrity_leaver";
/// The advisory lock client A takes inside its transaction.
const LOCK_KEY: i64 = 909_090;

/// How client A leaves.
#[derive(Debug, Clone, Copy)]
struct Leaving {
    /// What A was doing: idle in its transaction, halfway through sending a message, or
    /// waiting for `SELECT pg_sleep(5)`.
    doing: Doing,
    /// Close with a TCP reset (SO_LINGER 0) instead of a FIN.
    reset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Doing {
    IdleInTransaction,
    HalfwayThroughAMessage,
    WaitingForASleep,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_leaves_a_clean_connection_for_the_next() {
    let _alone = common::turns::alone().await;
    on_primary(
        "postgres",
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{LEAVER_ROLE}') THEN \
             CREATE ROLE {LEAVER_ROLE} LOGIN PASSWORD '{APP_PASSWORD}' IN ROLE app; END IF; END $$"
        ),
    );
    on_primary(
        "app",
        "CREATE TABLE IF NOT EXISTS integrity_left (tag text); GRANT ALL ON integrity_left TO app",
    );
    for standby in 1..cluster().nodes().len() {
        cluster().wait_for_replay(standby).unwrap();
    }
    // What a fresh session of the role starts with, for comparison with what B sees.
    let defaults = cluster()
        .sql_as(
            0,
            LEAVER_ROLE,
            Some(APP_PASSWORD),
            "app",
            "SELECT current_setting('statement_timeout') || ' ' || current_setting('work_mem')",
        )
        .unwrap();
    let leaver = format!(
        "\n[[users]]\nname = \"leaver\"\nauth_method = \"trust\"\n\
         server_user = \"{LEAVER_ROLE}\"\nserver_password = \"{APP_PASSWORD}\"\n"
    );
    // One server connection: B can only be served by the connection A left behind.
    let proxy = pooled("", "max_pool_size = 1", &leaver).await;

    let cases = [
        Leaving {
            doing: Doing::IdleInTransaction,
            reset: false,
        },
        Leaving {
            doing: Doing::IdleInTransaction,
            reset: true,
        },
        Leaving {
            doing: Doing::HalfwayThroughAMessage,
            reset: false,
        },
        Leaving {
            doing: Doing::WaitingForASleep,
            reset: false,
        },
        Leaving {
            doing: Doing::WaitingForASleep,
            reset: true,
        },
    ];
    for (n, leaving) in cases.into_iter().enumerate() {
        let tag = format!("left-{n}-{}", std::process::id());
        let mut a = raw::login(proxy.addr, "leaver").await;
        simple(&mut a, "BEGIN").await;
        let pid_a = cell(&simple(&mut a, "SELECT pg_backend_pid()").await, 0);
        simple(
            &mut a,
            &format!("INSERT INTO integrity_left VALUES ('{tag}')"),
        )
        .await;
        simple(&mut a, "SET LOCAL statement_timeout = '4321s'").await;
        simple(&mut a, "SET work_mem = '7MB'").await;
        simple(
            &mut a,
            "DECLARE leftover CURSOR FOR SELECT generate_series(1, 1000)",
        )
        .await;
        assert_eq!(cell(&simple(&mut a, "FETCH 1 FROM leftover").await, 0), "1");
        simple(&mut a, &format!("SELECT pg_advisory_xact_lock({LOCK_KEY})")).await;
        assert_eq!(
            on_primary(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND objid = {LOCK_KEY} AND pid = {pid_a} AND granted"
                )
            ),
            "1",
            "{leaving:?}: A's backend {pid_a} holds the advisory lock before A leaves"
        );
        match leaving.doing {
            Doing::IdleInTransaction => {}
            Doing::HalfwayThroughAMessage => {
                let query = raw::query("SELECT 'never finished'");
                a.write_all(&query[..query.len() / 2]).await.unwrap();
            }
            Doing::WaitingForASleep => {
                a.write_all(&raw::query("SELECT pg_sleep(5)"))
                    .await
                    .unwrap();
                let running = primary_until(
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid_a} \
                         AND state = 'active' AND query LIKE 'SELECT pg_sleep(5)%'"
                    ),
                    "1",
                    Duration::from_secs(5),
                )
                .await;
                assert_eq!(running, "1", "{leaving:?}: A's pg_sleep never started");
            }
        }
        if leaving.reset {
            a.set_zero_linger().unwrap();
        }
        drop(a);
        let left = Instant::now();

        let mut b = raw::login(proxy.addr, "leaver").await;
        let seen = simple(
            &mut b,
            &format!(
                "SELECT pg_backend_pid(), pg_current_xact_id_if_assigned() IS NULL, \
                 now() = statement_timestamp(), \
                 current_setting('statement_timeout') || ' ' || current_setting('work_mem'), \
                 (SELECT count(*) FROM pg_cursors), pg_try_advisory_xact_lock({LOCK_KEY}), \
                 (SELECT count(*) FROM integrity_left WHERE tag = '{tag}') {ON_PRIMARY}"
            ),
        )
        .await;
        let waited = left.elapsed();
        let pid_b = cell(&seen, 0);
        assert!(
            waited < Duration::from_secs(2),
            "{leaving:?}: B waited {waited:?} for its first answer after A left \
             (A's pg_sleep(5) must be cancelled, not waited for)"
        );
        let state: Vec<String> = (1..7).map(|i| cell(&seen, i)).collect();
        assert_eq!(
            state,
            vec![
                "t".to_owned(),
                "t".to_owned(),
                defaults.clone(),
                "0".to_owned(),
                "t".to_owned(),
                "0".to_owned()
            ],
            "{leaving:?}: B on backend {pid_b} (A had {pid_a}) must see no transaction, \
             no xid, default settings, no cursor, the advisory lock free and A's row not committed"
        );
        if leaving.doing != Doing::WaitingForASleep {
            assert_eq!(
                pid_b, pid_a,
                "{leaving:?}: a pool of one serves B with the connection A left, reset"
            );
        }
        if pid_b != pid_a {
            let gone = primary_until(
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid_a}"),
                "0",
                Duration::from_secs(2),
            )
            .await;
            assert_eq!(
                gone, "0",
                "{leaving:?}: A's backend {pid_a} was not reused, so it must be gone"
            );
        }
        let lingering = on_primary(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = '{LEAVER_ROLE}' AND state <> 'idle'"
            ),
        );
        assert_eq!(
            lingering, "0",
            "{leaving:?}: backends of {LEAVER_ROLE} not idle (e.g. idle in transaction) on the primary"
        );
        assert_eq!(
            on_primary(
                "app",
                &format!("SELECT count(*) FROM integrity_left WHERE tag = '{tag}'")
            ),
            "0",
            "{leaving:?}: A's INSERT was never committed"
        );
        println!(
            "{leaving:?}: A on backend {pid_a}, B on {pid_b}, B answered {waited:?} after A left"
        );
    }
}

/// What one client saw: answers checked, answers not its own, errors.
#[derive(Default)]
struct Tally {
    checked: u64,
    mismatches: u64,
    errors: u64,
    /// The first few problems, for the failure message.
    examples: Vec<String>,
}

impl Tally {
    fn check(&mut self, client: usize, what: &str, got: &str, want: &str) {
        self.checked += 1;
        if got != want {
            self.mismatches += 1;
            self.note(format!(
                "client {client}, {what}: expected {want:?}, got {got:?}"
            ));
        }
    }

    fn error(&mut self, client: usize, e: tokio_postgres::Error) {
        self.errors += 1;
        self.note(format!("client {client}: {}: {e}", common::sqlstate(&e)));
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < 5 {
            self.examples.push(example);
        }
    }

    fn add(&mut self, other: Tally) {
        self.checked += other.checked;
        self.mismatches += other.mismatches;
        self.errors += other.errors;
        for e in other.examples {
            self.note(e);
        }
    }
}

/// One client's work: every answer must carry a value only this client asked for.
async fn own_answers(
    proxy_port: u16,
    run: String,
    client: usize,
    token: String,
    rounds: usize,
) -> Tally {
    let mut tally = Tally::default();
    if let Err(e) = own_answers_inner(proxy_port, &run, client, &token, rounds, &mut tally).await {
        tally.error(client, e);
    }
    tally
}

async fn own_answers_inner(
    port: u16,
    run: &str,
    client: usize,
    token: &str,
    rounds: usize,
    tally: &mut Tally,
) -> Result<(), tokio_postgres::Error> {
    let conninfo = format!("host=127.0.0.1 port={port} user=trustuser dbname=app");
    let (mut db, conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(conn);
    let pair = db.prepare("SELECT $1::text, $2::int").await?;
    let seeded = db
        .prepare("SELECT token FROM integrity_seed WHERE client = $1")
        .await?;
    let id = client as i32;
    for n in 0..rounds {
        let mine = format!("{run}-{client}-{n}");
        let number = id * 1000 + n as i32;

        // Simple protocol, a read: any standby.
        let sql = format!("SELECT '{mine}'");
        let got = db
            .simple_query(&sql)
            .await?
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        tally.check(client, "simple SELECT", &got, &mine);

        // Extended protocol with a named prepared statement, re-prepared as needed on
        // whichever server connection serves it.
        let row = db.query_one(&pair, &[&mine, &number]).await?;
        tally.check(client, "prepared text", row.get(0), &mine);
        tally.check(
            client,
            "prepared int",
            &row.get::<_, i32>(1).to_string(),
            &number.to_string(),
        );

        // Two requests pipelined on one client connection.
        let first = format!("{mine}-a");
        let second = format!("{mine}-b");
        let (a, b) = futures_util::future::join(
            db.query_one(&pair, &[&first, &1i32]),
            db.query_one(&pair, &[&second, &2i32]),
        )
        .await;
        tally.check(client, "pipelined first", a?.get(0), &first);
        tally.check(client, "pipelined second", b?.get(0), &second);

        // A read of replicated data only this client's row holds.
        let row = db.query_one(&seeded, &[&id]).await?;
        tally.check(client, "seeded token", row.get(0), token);

        // A write in a transaction, and the row read back inside it.
        let tx = db.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO integrity_answers (run, client, n, val) VALUES ($1, $2, $3, $4) \
                 RETURNING val, client",
                &[&run, &id, &(n as i32), &mine],
            )
            .await?;
        tally.check(client, "INSERT RETURNING", row.get(0), &mine);
        tally.check(
            client,
            "INSERT RETURNING client",
            &row.get::<_, i32>(1).to_string(),
            &id.to_string(),
        );
        let row = tx
            .query_one(
                "SELECT val FROM integrity_answers WHERE run = $1 AND client = $2 AND n = $3",
                &[&run, &id, &(n as i32)],
            )
            .await?;
        tally.check(client, "read back in the transaction", row.get(0), &mine);
        tx.commit().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_clients_each_get_only_their_own_answers() {
    let _alone = common::turns::alone().await;
    const CLIENTS: usize = 400;
    const POOL: usize = 10;
    let rounds: usize = if std::env::var("PGSPLIT_LONG_TESTS").as_deref() == Ok("1") {
        100
    } else {
        20
    };
    // pgsplit opens at most POOL connections to each node, plus its monitor's.
    for node in 0..cluster().nodes().len() {
        let max: usize = cluster()
            .sql(node, "postgres", "SHOW max_connections")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            max >= POOL + 20,
            "node {node}: max_connections {max} leaves no room for a pool of {POOL}"
        );
    }
    let proxy = pooled(
        &format!("max_client_conn = {}", CLIENTS + 50),
        &format!("max_pool_size = {POOL}\ncheckout_timeout = \"30s\""),
        "",
    )
    .await;

    let run = format!("r{}x{}", std::process::id(), rand::random::<u32>());
    let setup = trust_client(&proxy).await.expect("setup client");
    setup
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS integrity_seed (client int PRIMARY KEY, token text); \
             CREATE TABLE IF NOT EXISTS integrity_answers (run text, client int, n int, val text); \
             TRUNCATE integrity_seed",
        )
        .await
        .expect("create the tables");
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|i| format!("{run}-seed-{i}-{:08x}", rand::random::<u32>()))
        .collect();
    let values: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| format!("({i}, '{t}')"))
        .collect();
    setup
        .batch_execute(&format!(
            "INSERT INTO integrity_seed VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("seed the tokens");
    for standby in 1..cluster().nodes().len() {
        cluster().wait_for_replay(standby).unwrap();
    }
    drop(setup);

    let before = proxy.stats();
    let started = Instant::now();
    let port = proxy.addr.port();
    let tasks: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, token)| tokio::spawn(own_answers(port, run.clone(), i, token, rounds)))
        .collect();
    let mut peak_open = 0;
    let mut total = Tally::default();
    for task in tasks {
        peak_open = peak_open.max(proxy.pools().iter().map(|p| p.open).max().unwrap_or(0));
        total.add(task.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    let after = proxy.stats();
    let to_standby = after.to_standby - before.to_standby;
    let to_primary = after.to_primary - before.to_primary;
    println!(
        "{CLIENTS} clients x {rounds} rounds through pools of {POOL}: {} answers checked, \
         {} mismatches, {} errors in {elapsed:.1?}; requests to primary {to_primary}, \
         to standbys {to_standby}; largest pool seen {peak_open}",
        total.checked, total.mismatches, total.errors
    );
    assert_eq!(
        (total.mismatches, total.errors),
        (0, 0),
        "every answer must be the client's own and none may fail; first problems: {:#?}",
        total.examples
    );
    // Per round: 1 simple + 1 prepared + 2 pipelined + 1 seeded + 3 in the transaction.
    assert_eq!(total.checked, (CLIENTS * rounds * 9) as u64);
    assert!(
        to_standby > 0 && to_primary > 0,
        "reads went to standbys and writes to the primary"
    );
    assert!(
        proxy.pools().iter().all(|p| p.open <= POOL) && peak_open <= POOL,
        "pools stay within {POOL}: {:?}",
        proxy.pools()
    );
    let stored = on_primary(
        "app",
        &format!(
            "SELECT count(*) || ' ' || count(*) FILTER (WHERE val <> run || '-' || client || '-' || n) \
             FROM integrity_answers WHERE run = '{run}'"
        ),
    );
    assert_eq!(
        stored,
        format!("{} 0", CLIENTS * rounds),
        "committed rows on the primary: count, then rows holding another client's value"
    );
    on_primary(
        "app",
        &format!("DELETE FROM integrity_answers WHERE run = '{run}'"),
    );
}

/// SplitMix64: a small seeded generator whose sequence never changes with a crate version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49EB_311E_B013);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// COPY text-format rows `id\tpayload\n`, generated from a seed. Payloads are slices of a
/// pool of two-byte units, each already in the COPY escaping PostgreSQL itself writes
/// (`\t`, `\n`, `\r`, `\\`; UTF-8 as is), so the bytes sent are exactly the bytes
/// `COPY TO` gives back; slicing at unit boundaries never splits an escape.
struct CopyRows {
    rng: SplitMix64,
    /// The units, back to back.
    units: Vec<u8>,
    /// Bytes the server stores for the first `i` units (an escape is one byte).
    stored_before: Vec<u64>,
    rows: u64,
    nulls: u64,
    stored_bytes: u64,
}

impl CopyRows {
    const UNITS: usize = 1 << 19;

    fn new(seed: u64) -> CopyRows {
        let mut rng = SplitMix64(seed);
        let alphabet =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.;'\"-_{}()|";
        let special: [([u8; 2], u64); 6] = [
            (*b"\\t", 1),
            (*b"\\n", 1),
            (*b"\\r", 1),
            (*b"\\\\", 1),
            ("é".as_bytes().try_into().unwrap(), 2),
            ("ж".as_bytes().try_into().unwrap(), 2),
        ];
        let mut units = Vec::with_capacity(2 * Self::UNITS);
        let mut stored_before = Vec::with_capacity(Self::UNITS + 1);
        let mut stored = 0;
        stored_before.push(0);
        for _ in 0..Self::UNITS {
            let r = rng.next();
            let (unit, bytes) = if r.is_multiple_of(16) {
                special[((r >> 8) % special.len() as u64) as usize]
            } else {
                let pick = |shift: u32| alphabet[((r >> shift) % alphabet.len() as u64) as usize];
                ([pick(16), pick(32)], 2)
            };
            units.extend_from_slice(&unit);
            stored += bytes;
            stored_before.push(stored);
        }
        CopyRows {
            rng,
            units,
            stored_before,
            rows: 0,
            nulls: 0,
            stored_bytes: 0,
        }
    }

    /// Appends the next row to `out`.
    fn row(&mut self, out: &mut BytesMut) {
        self.rows += 1;
        out.extend_from_slice(self.rows.to_string().as_bytes());
        out.extend_from_slice(b"\t");
        let r = self.rng.next();
        if r.is_multiple_of(50) {
            self.nulls += 1;
            out.extend_from_slice(b"\\N\n");
            return;
        }
        // Mostly up to ~2 KB, now and then empty, now and then a few hundred KB that
        // spans many CopyData messages.
        let len = match r % 1000 {
            0..=9 => 0,
            10..=11 => 50_000 + self.rng.below(150_000) as usize,
            _ => self.rng.below(1000) as usize,
        };
        let start = self.rng.below((Self::UNITS - len) as u64) as usize;
        out.extend_from_slice(&self.units[2 * start..2 * (start + len)]);
        self.stored_bytes += self.stored_before[start + len] - self.stored_before[start];
        out.extend_from_slice(b"\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_copy_arrives_intact_through_transaction_pooling() {
    let _alone = common::turns::alone().await;
    let long = std::env::var("PGSPLIT_LONG_TESTS").as_deref() == Ok("1");
    let target: u64 = if long { 1 << 30 } else { 32 << 20 };
    // CopyData messages of this size, cutting rows anywhere.
    const CHUNK: usize = 65_000;
    let proxy = pooled("", "max_pool_size = 4", "").await;
    let db = proxy.connect().await;
    db.batch_execute(
        "DROP TABLE IF EXISTS integrity_copy; CREATE TABLE integrity_copy (id bigint, payload text)",
    )
    .await
    .expect("create the table");

    let mut rows = CopyRows::new(0x5EED_0FC0_FFEE);
    let mut sent_hash = Sha256::new();
    let mut sent: u64 = 0;
    let started = Instant::now();
    let sink = db
        .copy_in("COPY integrity_copy (id, payload) FROM STDIN")
        .await
        .expect("COPY FROM STDIN starts");
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::with_capacity(2 * CHUNK);
    loop {
        let done = sent + buf.len() as u64 >= target;
        if !done {
            rows.row(&mut buf);
        }
        while buf.len() >= CHUNK || (done && !buf.is_empty()) {
            let part: Bytes = buf.split_to(CHUNK.min(buf.len())).freeze();
            sent_hash.update(&part);
            sent += part.len() as u64;
            sink.send(part).await.expect("send CopyData");
        }
        if done {
            break;
        }
    }
    let copied = sink.as_mut().finish().await.expect("COPY FROM STDIN ends");
    let copy_in_time = started.elapsed();
    assert_eq!(copied, rows.rows, "rows the server reports copied");

    let server = on_primary(
        "app",
        "SELECT count(*) || ' ' || count(payload) || ' ' || coalesce(sum(octet_length(payload)), 0) \
         FROM integrity_copy",
    );
    assert_eq!(
        server,
        format!(
            "{} {} {}",
            rows.rows,
            rows.rows - rows.nulls,
            rows.stored_bytes
        ),
        "on the primary: rows, non-NULL payloads, payload bytes"
    );

    let started = Instant::now();
    let stream = db
        .copy_out(&format!(
            "COPY (SELECT id, payload FROM integrity_copy ORDER BY id) TO STDOUT {ON_PRIMARY}"
        ))
        .await
        .expect("COPY TO STDOUT starts");
    let mut stream = std::pin::pin!(stream);
    let mut received_hash = Sha256::new();
    let mut received: u64 = 0;
    while let Some(part) = stream.next().await {
        let part = part.expect("CopyData from the server");
        received += part.len() as u64;
        received_hash.update(&part);
    }
    let copy_out_time = started.elapsed();
    db.batch_execute("DROP TABLE integrity_copy")
        .await
        .expect("drop the table");

    let mib = |bytes: u64, time: Duration| bytes as f64 / (1 << 20) as f64 / time.as_secs_f64();
    println!(
        "COPY of {} rows ({} NULL), {sent} bytes ({:.1} MiB): in {copy_in_time:.1?} \
         ({:.1} MiB/s), out {copy_out_time:.1?} ({:.1} MiB/s)",
        rows.rows,
        rows.nulls,
        sent as f64 / (1 << 20) as f64,
        mib(sent, copy_in_time),
        mib(received, copy_out_time),
    );
    assert_eq!(received, sent, "bytes back from COPY TO against bytes sent");
    let (sent_hash, received_hash) = (sent_hash.finalize(), received_hash.finalize());
    assert_eq!(
        received_hash, sent_hash,
        "SHA-256 of what came back against what was sent"
    );
    let hex: String = sent_hash.iter().map(|b| format!("{b:02x}")).collect();
    println!("SHA-256 {hex} both ways");
}
