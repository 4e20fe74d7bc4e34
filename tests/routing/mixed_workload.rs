//! 5 000 statements drawn from every row of ROUTING.md, from several clients at once:
//! not one may fail because pgsplit sent it to a hot standby.

use crate::common;

use common::{cluster, TestProxy};
use tokio_postgres::Client;

const SETUP: &str = "
    DROP SCHEMA IF EXISTS mix CASCADE;
    CREATE SCHEMA mix;
    CREATE TABLE mix.t (id serial PRIMARY KEY, v int NOT NULL DEFAULT 0);
    INSERT INTO mix.t (v) SELECT g FROM generate_series(1, 100) g;
    CREATE SEQUENCE mix.seq;
    CREATE FUNCTION mix.bump() RETURNS int LANGUAGE sql VOLATILE AS
        'UPDATE mix.t SET v = v + 1 WHERE id = 1 RETURNING v';
    CREATE FUNCTION mix.total() RETURNS bigint LANGUAGE sql STABLE AS 'SELECT sum(v) FROM mix.t';
    CREATE FUNCTION mix.twice(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
";

/// One kind of work; most are a single statement, some a short sequence.
fn statements(kind: u64, client: usize, n: u64) -> Vec<String> {
    let key = 1000 + client as u64;
    let id = 1 + n % 100;
    match kind {
        0 => vec!["SELECT count(*) FROM mix.t".into()],
        1 => vec![format!("SELECT v FROM mix.t WHERE id = {id}")],
        2 => vec![format!("INSERT INTO mix.t (v) VALUES ({n})")],
        3 => vec![format!("UPDATE mix.t SET v = v + 1 WHERE id = {id}")],
        4 => vec![
            "SELECT nextval('mix.seq')".into(),
            "SELECT currval('mix.seq')".into(),
        ],
        5 => vec!["SELECT setval('mix.seq', 500)".into()],
        6 => vec![
            "CREATE TEMP TABLE scratch (a int)".into(),
            "INSERT INTO scratch VALUES (1)".into(),
            "SELECT count(*) FROM scratch".into(),
            "DISCARD TEMP".into(),
        ],
        7 => vec![
            "LISTEN mix_channel".into(),
            "NOTIFY mix_channel, 'x'".into(),
            "UNLISTEN *".into(),
        ],
        8 => vec![
            format!("SELECT pg_advisory_lock({key})"),
            "SELECT pg_advisory_unlock_all()".into(),
        ],
        9 => vec![format!("SELECT pg_advisory_xact_lock({key})")],
        10 => vec!["SELECT mix.bump()".into()],
        11 => vec![
            "SELECT mix.total()".into(),
            format!("SELECT mix.twice({id})"),
        ],
        12 => vec![
            "BEGIN READ ONLY".into(),
            "SELECT max(v) FROM mix.t".into(),
            "COMMIT".into(),
        ],
        13 => vec![
            "BEGIN".into(),
            format!("UPDATE mix.t SET v = v - 1 WHERE id = {id}"),
            "SELECT sum(v) FROM mix.t".into(),
            "COMMIT".into(),
        ],
        14 => vec![
            "BEGIN".into(),
            "SET TRANSACTION READ ONLY".into(),
            "SELECT min(v) FROM mix.t".into(),
            "COMMIT".into(),
        ],
        15 => vec![
            format!("PREPARE p{client} AS SELECT v FROM mix.t WHERE id = $1"),
            format!("EXECUTE p{client}({id})"),
            format!("DEALLOCATE p{client}"),
        ],
        16 => vec![
            "SET search_path = mix, public".into(),
            "SELECT count(*) FROM t".into(),
            "RESET search_path".into(),
        ],
        17 => vec!["SELECT txid_current()".into()],
        18 => vec![format!("SELECT * FROM mix.t WHERE id = {id} FOR UPDATE")],
        19 => vec![format!(
            "WITH x AS (INSERT INTO mix.t (v) VALUES ({n}) RETURNING id) SELECT id FROM x"
        )],
        20 => vec![
            "BEGIN".into(),
            "LOCK TABLE mix.t IN SHARE ROW EXCLUSIVE MODE".into(),
            "ROLLBACK".into(),
        ],
        21 => vec!["SELECT random(), clock_timestamp(), gen_random_uuid()".into()],
        22 => vec![format!("SELECT pg_notify('mix_channel', '{n}')")],
        23 => vec!["COPY (SELECT id, v FROM mix.t WHERE id <= 5) TO STDOUT".into()],
        24 => vec![
            "SELECT * INTO TEMP mix_copy FROM mix.t LIMIT 1".into(),
            "SELECT count(*) FROM mix_copy".into(),
            "DISCARD TEMP".into(),
        ],
        25 => vec![
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY".into(),
            "SELECT count(*) FROM mix.t".into(),
            "COMMIT".into(),
        ],
        26 => vec![
            "SET default_transaction_read_only = on".into(),
            "BEGIN".into(),
            "SELECT 1".into(),
            "COMMIT".into(),
            "RESET default_transaction_read_only".into(),
        ],
        _ => vec!["EXPLAIN SELECT * FROM mix.t WHERE id = 3".into()],
    }
}

async fn run_client(client: Client, index: usize, count: usize) -> Vec<String> {
    let mut errors = Vec::new();
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ (index as u64).wrapping_mul(0x9E37_79B9);
    let mut done = 0;
    let mut n = 0u64;
    while done < count {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        n += 1;
        for sql in statements(seed % 28, index, n) {
            let result = if sql.starts_with("SELECT v FROM mix.t WHERE id =") {
                let id = (1 + n % 100) as i32;
                client
                    .query("SELECT v FROM mix.t WHERE id = $1", &[&id])
                    .await
                    .map(|_| ())
            } else if sql.starts_with("COPY") {
                client.copy_out(sql.as_str()).await.map(|_| ())
            } else {
                client.simple_query(&sql).await.map(|_| ())
            };
            if let Err(e) = result {
                errors.push(format!(
                    "client {index}: {sql}: {} {e}",
                    common::sqlstate(&e)
                ));
                let _ = client.batch_execute("ROLLBACK").await;
            }
            done += 1;
        }
    }
    errors
}

#[tokio::test]
async fn a_mixed_workload_of_5000_statements_never_meets_a_read_only_error() {
    let proxy = TestProxy::start().await;
    proxy
        .connect()
        .await
        .batch_execute(SETUP)
        .await
        .expect("setup");
    for i in 1..cluster().nodes().len() {
        cluster().wait_for_replay(i).unwrap();
    }
    let before = proxy.stats();
    let mut tasks = Vec::new();
    for index in 0..4 {
        let client = proxy.connect().await;
        tasks.push(tokio::spawn(run_client(client, index, 1250)));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.expect("client task"));
    }
    let read_only: Vec<&String> = errors
        .iter()
        .filter(|e| {
            e.contains("25006")
                || e.contains("read-only")
                || e.contains("recovery")
                || e.contains("hot standby")
        })
        .collect();
    assert!(
        read_only.is_empty(),
        "{} statements hit a standby's refusal, e.g. {:?}",
        read_only.len(),
        &read_only[..read_only.len().min(5)]
    );
    assert!(
        errors.is_empty(),
        "{} statements failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let after = proxy.stats();
    assert!(
        after.to_standby > before.to_standby,
        "the workload's reads should reach the standbys"
    );
}
