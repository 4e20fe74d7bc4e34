//! Hostile and broken clients (issue 9): valid message sequences, mutated by a seeded
//! random generator (bit flips, truncation, corrupt lengths, inserted, duplicated, deleted
//! and swapped messages, random tags, huge lengths), sent by many concurrent connections
//! to a running pgsplit. Every connection must end with an ErrorResponse, a normal reply or
//! a close within a bound; nothing may panic; a bystander running queries the whole time
//! must never fail; memory must stay bounded.
//!
//! `cargo test --test stress hostile::` sends 5 000 sequences; `PGSPLIT_LONG_TESTS=1` sends
//! 100 000.
//! `PGSPLIT_HOSTILE_SEED=<n>` replays a run: sequence `i` is generated from seed `n + i`;
//! `PGSPLIT_HOSTILE_COUNT=1` with the seed a failure names replays that one sequence.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pool::trust_user;
use common::raw;
use common::TestProxy;
use pgsplit_cluster::APP_DATABASE;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections mutating at once.
const CONCURRENCY: usize = 16;
/// The longest a connection may take from connect to close. pgsplit's `auth_timeout` is
/// set to 3 s below, so even a client stuck in startup is closed well before this.
const CONNECTION_LIMIT: Duration = Duration::from_secs(20);
/// Growth of the test process's resident memory (pgsplit runs in it) that fails the test.
const RSS_GROWTH_LIMIT_KB: u64 = 200 * 1024;

/// Panics anywhere in the process (pgsplit's session tasks included: tokio catches a
/// task's panic, so only a hook sees it).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// One packet of a sequence, with where its length field sits: startup-phase packets
/// (StartupMessage, SSLRequest, CancelRequest) have no type byte.
#[derive(Clone)]
struct Packet {
    bytes: Vec<u8>,
    startup: bool,
}

fn msg(bytes: Vec<u8>) -> Packet {
    Packet {
        bytes,
        startup: false,
    }
}

fn startup_packet(bytes: Vec<u8>) -> Packet {
    Packet {
        bytes,
        startup: true,
    }
}

/// An 8-byte startup-phase request with one of the special codes.
fn special(code: i32, rest: &[u8]) -> Packet {
    let mut bytes = ((8 + rest.len()) as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&code.to_be_bytes());
    bytes.extend_from_slice(rest);
    startup_packet(bytes)
}

fn login(user: &str) -> Packet {
    startup_packet(raw::startup(&[("user", user), ("database", APP_DATABASE)]))
}

fn copy_data(data: &[u8]) -> Packet {
    msg(raw::message(b'd', data))
}

/// The valid sequences mutations start from: every phase of the protocol a client drives.
fn base_sequence(rng: &mut StdRng) -> Vec<Packet> {
    let trust = || login("trustuser");
    match rng.random_range(0..12) {
        0 => vec![
            trust(),
            msg(raw::query("SELECT 1")),
            msg(raw::message(b'X', &[])),
        ],
        1 => vec![
            trust(),
            msg(raw::parse("", "SELECT $1::int")),
            msg(raw::bind("", "", &["5"])),
            msg(raw::describe(b'P', "")),
            msg(raw::execute("")),
            msg(raw::sync()),
            msg(raw::message(b'X', &[])),
        ],
        2 => vec![
            trust(),
            msg(raw::query("BEGIN")),
            msg(raw::query(
                "CREATE TEMP TABLE hostile_copy (x int) ON COMMIT DROP",
            )),
            msg(raw::query("COPY hostile_copy FROM STDIN")),
            copy_data(b"1\n2\n"),
            copy_data(b"3\n"),
            msg(raw::message(b'c', &[])),
            msg(raw::query("COMMIT")),
        ],
        3 => vec![
            trust(),
            msg(raw::query("COPY (SELECT generate_series(1, 50)) TO STDOUT")),
        ],
        4 => {
            let key: Vec<u8> = (0..8).map(|_| rng.random()).collect();
            vec![special(80_877_102, &key)]
        }
        5 => vec![
            special(80_877_103, &[]),
            trust(),
            msg(raw::query("SELECT 2")),
        ],
        6 => vec![
            trust(),
            msg(raw::parse("s1", "SELECT $1::text")),
            msg(raw::sync()),
            msg(raw::bind("", "s1", &["x"])),
            msg(raw::execute("")),
            msg(raw::sync()),
            msg(raw::close(b'S', "s1")),
            msg(raw::sync()),
        ],
        7 => vec![
            startup_packet(raw::startup(&[
                ("user", "trustuser"),
                ("database", APP_DATABASE),
                ("application_name", "hostile"),
                ("options", "-c work_mem=4MB"),
            ])),
            msg(raw::query("SHOW work_mem")),
        ],
        8 => vec![
            special(80_877_104, &[]),
            trust(),
            msg(raw::query("SELECT 1; SELECT 2")),
        ],
        9 => vec![
            trust(),
            msg(raw::parse("", "SELECT 1")),
            msg(raw::bind("", "", &[])),
            msg(raw::message(b'H', &[])),
            msg(raw::execute("")),
            msg(raw::sync()),
        ],
        // A password user: exercises the SASL messages, which arrive before any session.
        10 => {
            let mut initial = b"SCRAM-SHA-256\0".to_vec();
            let first = b"n,,n=,r=hostilenonce";
            initial.extend_from_slice(&(first.len() as i32).to_be_bytes());
            initial.extend_from_slice(first);
            vec![
                login(pgsplit_cluster::APP_USER),
                msg(raw::message(b'p', &initial)),
                msg(raw::message(b'p', b"c=biws,r=hostilenonce,p=AAAA")),
            ]
        }
        _ => vec![
            trust(),
            msg(raw::query("BEGIN")),
            msg(raw::query("SELECT 3")),
            msg(raw::query("COMMIT")),
        ],
    }
}

/// Applies one to three random mutations; returns the wire bytes and the mutations' names.
fn mutate(rng: &mut StdRng, mut seq: Vec<Packet>) -> (Vec<u8>, Vec<&'static str>) {
    let mut names = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        if seq.is_empty() {
            seq.push(msg(raw::sync()));
        }
        let i = rng.random_range(0..seq.len());
        // An earlier truncation may have left an empty packet: give it a byte to mutate.
        if seq[i].bytes.is_empty() {
            seq[i].bytes.push(rng.random());
        }
        let name = match rng.random_range(0..10) {
            0 => {
                let p = &mut seq[i].bytes;
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(0..p.len());
                    p[at] ^= 1 << rng.random_range(0..8);
                }
                "bit flips"
            }
            1 => {
                let p = &mut seq[i].bytes;
                let keep = rng.random_range(0..p.len());
                p.truncate(keep);
                seq.truncate(i + 1);
                "truncation"
            }
            2 => {
                let at = if seq[i].startup { 0 } else { 1 };
                let p = &mut seq[i].bytes;
                let real = p.len() as i32 - at as i32;
                let len: i32 = match rng.random_range(0..8) {
                    0 => 0,
                    1 => rng.random_range(-4..4),
                    2 => -1,
                    3 => i32::MAX,
                    4 => (1 << 30) - 2,
                    5 => real + rng.random_range(1..64),
                    6 => (real - rng.random_range(1..8)).max(0),
                    _ => rng.random(),
                };
                if p.len() >= at + 4 {
                    p[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                "length corruption"
            }
            3 => {
                let body: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
                seq.insert(i, msg(raw::message(rng.random(), &body)));
                "inserted message"
            }
            4 => {
                let copy = seq[i].clone();
                seq.insert(i, copy);
                "duplicated message"
            }
            5 => {
                seq.remove(i);
                "deleted message"
            }
            6 => {
                if !seq[i].startup {
                    seq[i].bytes[0] = rng.random();
                }
                "random tag"
            }
            7 => {
                // A header announcing PostgreSQL's largest message, then a little of it.
                let mut p = vec![rng.random()];
                p.extend_from_slice(&((1i32 << 30) - 2).to_be_bytes());
                p.extend((0..rng.random_range(0..4096)).map(|_| rng.random::<u8>()));
                seq.insert(i, msg(p));
                "huge length"
            }
            8 => {
                let j = rng.random_range(0..seq.len());
                seq.swap(i, j);
                "swapped messages"
            }
            _ => {
                let junk: Vec<u8> = (0..rng.random_range(1..32)).map(|_| rng.random()).collect();
                let p = &mut seq[i].bytes;
                let at = rng.random_range(0..=p.len());
                p.splice(at..at, junk);
                "random bytes"
            }
        };
        names.push(name);
    }
    (seq.into_iter().flat_map(|p| p.bytes).collect(), names)
}

/// How one connection ended.
fn outcome(received: &[u8], end: &str) -> String {
    // An SSLRequest or GSSENCRequest is answered with one bare byte; skip those.
    let mut rest = received;
    let mut first_error = None;
    let mut replies = 0;
    while !rest.is_empty() {
        if matches!(rest[0], b'N' | b'S') && rest.get(1).is_none_or(|b| *b != 0) {
            rest = &rest[1..];
            continue;
        }
        if rest.len() < 5 {
            break;
        }
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]).max(4) as usize;
        let Some(frame) = rest.get(..len + 1) else {
            break;
        };
        if frame[0] == b'E' && first_error.is_none() {
            first_error = Some(raw::error_code(&frame[5..]));
        } else {
            replies += 1;
        }
        rest = &rest[len + 1..];
    }
    match first_error {
        Some(code) => format!("ErrorResponse {code}, then {end}"),
        None if replies > 0 => format!("replies, then {end}"),
        None => end.to_owned(),
    }
}

/// Sends one mutated sequence in a few random pieces, ends its writing, and reads until
/// pgsplit closes. `Err` when pgsplit did not close within the limit.
async fn run_one(addr: std::net::SocketAddr, wire: Vec<u8>, seed: u64) -> Result<String, String> {
    let work = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut rest = &wire[..];
        let mut write_end = "close";
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len());
            if stream.write_all(&rest[..n]).await.is_err() {
                // pgsplit already hung up on what it read so far.
                write_end = "close during send";
                break;
            }
            rest = &rest[n..];
            if rng.random_bool(0.2) {
                tokio::task::yield_now().await;
            }
        }
        let _ = stream.shutdown().await;
        let mut received = Vec::new();
        let end = match stream.read_to_end(&mut received).await {
            Ok(_) => write_end,
            Err(_) => "reset",
        };
        Ok::<_, String>(outcome(&received, end))
    };
    match tokio::time::timeout(CONNECTION_LIMIT, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no close within {CONNECTION_LIMIT:?} (seed {seed})"
        )),
    }
}

/// A memory figure of this process (pgsplit runs in it) from /proc: `VmRSS:` resident
/// now, `VmHWM:` the peak so far.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `VmHWM:` again from the resident memory of now, so the peak read later is this
/// test's own, not that of a test this binary ran earlier in the same process.
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak resident memory ({e}): the peak may predate this test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_message_sequences_get_an_error_or_a_close_and_harm_no_one_else() {
    // It measures this process's memory and counts its panics: no other test may run
    // beside it.
    let _alone = common::turns::alone().await;
    count_panics();
    let long = std::env::var("PGSPLIT_LONG_TESTS").is_ok_and(|v| v == "1");
    let total: usize = std::env::var("PGSPLIT_HOSTILE_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if long { 100_000 } else { 5_000 });
    let seed: u64 = std::env::var("PGSPLIT_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9_2026);
    let proxy = TestProxy::start_with("auth_timeout = \"3s\"", &trust_user()).await;
    let addr = proxy.addr;

    // Warm up (pools, first allocations) before the memory baseline.
    let bystander = proxy.connect().await;
    for i in 0..20 {
        let row = bystander.query_one("SELECT $1::int", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    reset_peak();
    let rss_before = status_kb("VmRSS:");
    let started = Instant::now();

    // The bystander queries throughout; any failure or wrong answer is kept.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let (mut ok, mut slowest) = (0u64, Duration::ZERO);
            let mut i = 0i32;
            while !done.load(Ordering::SeqCst) {
                i = i.wrapping_add(1);
                let asked = Instant::now();
                let answer = bystander.query_one("SELECT $1::int", &[&i]).await;
                slowest = slowest.max(asked.elapsed());
                match answer {
                    Ok(row) if row.get::<_, i32>(0) == i => ok += 1,
                    Ok(row) => return Err(format!("asked {i}, got {}", row.get::<_, i32>(0))),
                    Err(e) => return Err(format!("query {i} failed: {e}")),
                }
            }
            Ok((ok, slowest))
        })
    };

    let next = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mutations = Arc::new(Mutex::new(BTreeMap::<&'static str, usize>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, outcomes, mutations, failures) = (
                Arc::clone(&next),
                Arc::clone(&outcomes),
                Arc::clone(&mutations),
                Arc::clone(&failures),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    let one_seed = seed.wrapping_add(i as u64);
                    let mut rng = StdRng::seed_from_u64(one_seed);
                    let base = base_sequence(&mut rng);
                    let (wire, names) = mutate(&mut rng, base);
                    {
                        let mut m = mutations.lock().unwrap();
                        for name in names.iter().copied() {
                            *m.entry(name).or_default() += 1;
                        }
                    }
                    let shown = format!("{names:?}: {:?}", wire.escape_ascii().to_string());
                    match run_one(addr, wire, one_seed).await {
                        Ok(o) => *outcomes.lock().unwrap().entry(o).or_default() += 1,
                        Err(e) => failures.lock().unwrap().push(format!("{e}, {shown}")),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let bystander_queries = watcher.await.expect("bystander task");
    let (rss_after, peak) = (status_kb("VmRSS:"), status_kb("VmHWM:"));

    // The workers are done: take the results out of their locks.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let sent: usize = outcomes.values().sum::<usize>() + failures.len();
    println!(
        "{sent} mutated sequences in {elapsed:.1?} ({CONCURRENCY} at once, seed {seed}); \
         RSS {rss_before} kB -> {rss_after} kB (peak {peak} kB); bystander (queries, slowest): {bystander_queries:?}"
    );
    println!("mutations: {:?}", mutations.lock().unwrap());
    for (o, n) in outcomes.iter() {
        println!("{n:>7}  {o}");
    }

    assert!(
        failures.is_empty(),
        "{} connections did not end: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(sent, total);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "pgsplit panicked");
    let served = bystander_queries.expect("the bystander client never fails");
    assert!(served.0 > 0, "the bystander ran no query");
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_LIMIT_KB,
        "resident memory grew by {growth} kB ({rss_before} -> {rss_after})"
    );
    assert!(
        peak.saturating_sub(rss_before) < RSS_GROWTH_LIMIT_KB,
        "resident memory peaked at {peak} kB, from {rss_before} kB"
    );
    // And pgsplit still serves new clients.
    proxy.still_serves().await;
}

/// The two deadlocks the mutation driver found, replayed by hand: in each, pgsplit held a
/// request back for an answer that could only come after it, and stopped reading the
/// client, so even its leaving went unseen and the pooled connection stayed stuck.
#[tokio::test]
async fn a_query_inside_copy_from_stdin_ends_the_copy_with_an_error_not_a_hang() {
    let _shared = common::turns::shared().await;
    let proxy = TestProxy::start_with("", &trust_user()).await;
    for pipelined in [false, true] {
        let mut s = raw::login(proxy.addr, "trustuser").await;
        s.write_all(&raw::query("BEGIN")).await.unwrap();
        raw::until_ready(&mut s).await;
        s.write_all(&raw::query("CREATE TEMP TABLE c (x int) ON COMMIT DROP"))
            .await
            .unwrap();
        raw::until_ready(&mut s).await;
        let mut wire = raw::query("COPY c FROM STDIN");
        if pipelined {
            // Sent before pgsplit has seen CopyInResponse.
            wire.extend(raw::query("SELECT 1"));
            s.write_all(&wire).await.unwrap();
        } else {
            s.write_all(&wire).await.unwrap();
            assert_eq!(raw::read_message(&mut s).await.map(|m| m.0), Some(b'G'));
            s.write_all(&raw::query("SELECT 1")).await.unwrap();
        }
        // PostgreSQL fails the COPY, then ends the session: "protocol synchronization was
        // lost". pgsplit passes both on and closes; what matters is that nothing hangs.
        let mut msgs = raw::read_until_ready(&mut s).await;
        // Pipelined, the CopyInResponse comes first.
        msgs.retain(|(t, _)| *t != b'G');
        let got = raw::tags(&msgs);
        let first = msgs
            .first()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned());
        assert!(
            got.starts_with("E(08P01)")
                && first.is_some_and(|m| m.contains("during COPY from stdin"))
                && msgs.last() == Some(&(b'!', b"closed".to_vec())),
            "pipelined {pipelined}: PostgreSQL's errors for a Query during COPY, then a close; got {got}"
        );
    }
    let client = proxy.connect().await;
    assert_eq!(
        client
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test]
async fn a_query_after_a_flush_chain_is_answered() {
    let _shared = common::turns::shared().await;
    let proxy = TestProxy::start_with("", &trust_user()).await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    let mut wire = raw::parse("", "SELECT 1");
    wire.extend(raw::bind("", "", &[]));
    wire.extend(raw::execute(""));
    wire.extend(raw::flush());
    s.write_all(&wire).await.unwrap();
    for want in [b'1', b'2', b'D', b'C'] {
        let got = tokio::time::timeout(Duration::from_secs(5), raw::read_message(&mut s)).await;
        assert_eq!(got.ok().flatten().map(|m| m.0), Some(want));
    }
    s.write_all(&raw::query("SELECT 2")).await.unwrap();
    assert_eq!(
        raw::tags(&raw::read_until_ready(&mut s).await),
        "T D C Z(I)"
    );
    // The chain is over: the session goes on as usual.
    s.write_all(&raw::query("SELECT 3")).await.unwrap();
    assert_eq!(
        raw::tags(&raw::read_until_ready(&mut s).await),
        "T D C Z(I)"
    );
}

#[tokio::test]
async fn a_client_leaving_while_a_request_is_held_frees_its_server_connection() {
    let _shared = common::turns::shared().await;
    let proxy = TestProxy::start_with("", &trust_user()).await;
    let mut s = raw::login(proxy.addr, "trustuser").await;
    // A failing Execute before a Flush: PostgreSQL now skips everything until a Sync, so
    // the Query behind it is never answered and the next Query is held in pgsplit.
    let mut wire = raw::parse("", "SELECT 1/0");
    wire.extend(raw::bind("", "", &[]));
    wire.extend(raw::execute(""));
    wire.extend(raw::flush());
    wire.extend(raw::query("SELECT 1"));
    wire.extend(raw::query("SELECT 2"));
    s.write_all(&wire).await.unwrap();
    assert_eq!(
        raw::next_error(&mut s).await.as_deref(),
        Some("22012"),
        "division by zero"
    );
    drop(s);
    // The session ends and its server connection stops being in use.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: usize = proxy.pools().iter().map(|p| p.open - p.idle).sum();
        if busy == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{busy} server connections still in use 10 s after the client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = proxy.connect().await;
    assert_eq!(
        client
            .query_one("SELECT 6", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        6
    );
}
