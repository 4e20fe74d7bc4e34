//! A read that raises notices in a loop before its first row: pgsplit holds back what a
//! retryable read says before its first row (so a read that runs again elsewhere is not
//! answered twice), but only up to a cap. Past it the notices flow to the client as they
//! come and the read is no longer retried, so pgsplit's memory stays bounded however many
//! notices the function raises.

use crate::common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pool::{su_app, trust_user};
use common::raw;
use common::TestProxy;
use tokio::io::AsyncWriteExt;

/// How many notices the function raises, in how many batches, with a pause after each.
const NOTICES: usize = 100_000;
const BATCHES: usize = 20;
const PAUSE: Duration = Duration::from_millis(100);
/// Characters of each notice's message; with its other fields (severity, SQLSTATE, the
/// PL/pgSQL context, file and line) a notice is about 350 bytes, some 35 MB in all.
const MESSAGE: usize = 200;

/// The largest resident set this process had so far (`VmHWM`), in bytes: pgsplit runs
/// in this process.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

#[tokio::test]
async fn notices_before_the_first_row_flow_to_the_client_while_the_function_runs() {
    // It measures this process's peak memory: no other test runs beside it.
    let _alone = common::turns::alone().await;
    // STABLE: the classifier sends a call to a standby, as a retryable read.
    su_app(
        "CREATE OR REPLACE FUNCTION bn_noisy(n int, batches int, pause float8, width int) \
         RETURNS text LANGUAGE plpgsql STABLE AS $$ \
         BEGIN \
             FOR i IN 1..n LOOP \
                 RAISE NOTICE '% %', i, repeat('x', width); \
                 IF i % (n / batches) = 0 THEN PERFORM pg_sleep(pause); END IF; \
             END LOOP; \
             RETURN 'done at ' || extract(epoch FROM clock_timestamp()); \
         END $$",
    );
    let proxy = TestProxy::start_with(
        "",
        &format!("[routing]\nread_your_writes = \"off\"\n{}", trust_user()),
    )
    .await;
    let on_standbys = |p: &TestProxy| -> u64 { p.stats().statements_per_node[1..].iter().sum() };
    // Until the monitor has checked the standbys and the function catalog has loaded (at
    // the database's first use), a call goes to the primary.
    let mut client = raw::login(proxy.addr, "trustuser").await;
    let mut ready = false;
    for _ in 0..100 {
        let before = on_standbys(&proxy);
        client
            .write_all(&raw::query("SELECT bn_noisy(1, 1, 0, 1)"))
            .await
            .expect("send");
        raw::until_ready(&mut client).await;
        if on_standbys(&proxy) > before {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "a call of the STABLE function never ran on a standby"
    );

    let standby_before = on_standbys(&proxy);
    let peak_before = peak_rss();
    let sql = format!(
        "SELECT bn_noisy({NOTICES}, {BATCHES}, {}, {MESSAGE})",
        PAUSE.as_secs_f64()
    );
    let sent = Instant::now();
    client.write_all(&raw::query(&sql)).await.expect("send");

    let mut notices = 0;
    let mut notice_bytes = 0;
    let mut first_notice = None;
    let mut returned_at = None;
    loop {
        let (tag, body) = raw::read_message(&mut client)
            .await
            .expect("the connection stays open");
        match tag {
            b'N' => {
                assert!(returned_at.is_none(), "a notice after the row");
                notices += 1;
                notice_bytes += 5 + body.len();
                first_notice.get_or_insert_with(|| (Instant::now(), SystemTime::now()));
                // In order: the message starts with the notice's number.
                let message = body
                    .split(|b| *b == 0)
                    .find_map(|f| f.strip_prefix(b"M"))
                    .expect("a message field");
                assert!(
                    message.starts_with(format!("{notices} ").as_bytes()),
                    "notice {notices} out of order: {}",
                    String::from_utf8_lossy(&message[..message.len().min(20)])
                );
            }
            b'T' => {}
            b'D' => {
                assert_eq!(notices, NOTICES, "every notice arrives before the row");
                // One column: its length, then the text.
                let text = String::from_utf8_lossy(&body[6..]).into_owned();
                let epoch: f64 = text
                    .strip_prefix("done at ")
                    .and_then(|e| e.parse().ok())
                    .unwrap_or_else(|| panic!("the function's row, not {text:?}"));
                returned_at = Some(UNIX_EPOCH + Duration::from_secs_f64(epoch));
            }
            b'C' => {}
            b'Z' => break,
            b'E' => panic!("error {}", raw::error_code(&body)),
            other => panic!("unexpected message {:?}", other as char),
        }
    }
    let done = sent.elapsed();
    let returned_at = returned_at.expect("the function's row");
    let (first_notice, first_notice_at) = first_notice.expect("notices");
    let grown = peak_rss().saturating_sub(peak_before);
    // The standby runs on this machine: its clock is this process's.
    let before_return = returned_at.duration_since(first_notice_at);
    let lead = match &before_return {
        Ok(early) => early.as_secs_f64(),
        Err(late) => -late.duration().as_secs_f64(),
    };
    eprintln!(
        "{notices} notices ({notice_bytes} bytes): the first after {:?}, {lead:.3} s \
         before the function returned; all read after {done:?}; peak RSS grew by {grown} bytes",
        first_notice - sent,
    );

    assert!(
        on_standbys(&proxy) > standby_before,
        "the call ran on a standby, as a retryable read"
    );
    let before_return = before_return.unwrap_or_else(|late| {
        panic!(
            "the first notice came {:?} after the function returned: held back",
            late.duration()
        )
    });
    // The function sleeps after each of its batches, PAUSE × BATCHES (2 s) in all: the
    // first notices, raised before the first pause, reach the client long before it
    // returns (held back until the row, they would all come after).
    let waited = PAUSE * (BATCHES as u32 - 1);
    assert!(
        before_return >= waited / 2,
        "the first notice came only {before_return:?} before the function returned"
    );
    // Held in pgsplit, the notices would take at least their own size (35 MB) at once.
    assert!(
        grown < notice_bytes as u64 / 2,
        "peak RSS grew by {grown} bytes relaying {notice_bytes} bytes of notices"
    );

    // The session goes on.
    client
        .write_all(&raw::query("SELECT 1"))
        .await
        .expect("send");
    raw::until_ready(&mut client).await;
}
