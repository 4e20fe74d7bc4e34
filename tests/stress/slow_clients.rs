//! Slow clients: one that never reads its results, ones that trickle their login. Each is
//! cut off by its timeout, frees what it held, and everyone else goes on being served.

use crate::common;

use std::time::{Duration, Instant};

use common::pool::{first, trust_user, ON_PRIMARY};
use common::raw::{self, error_code, read_message};
use common::{cluster, TestProxy};
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The result the stalled client asks for: 2 million rows of 1000 bytes, about 2 GB.
const HUGE: &str = "SELECT repeat('x', 1000) FROM generate_series(1, 2000000)";
const HUGE_BYTES: u64 = 2_000_000 * 1000;

/// This process's resident memory (pgsplit runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// Backends on the primary running `query` (other than the one asking).
fn running_on_primary(query: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE query LIKE '%{}%' AND pid <> pg_backend_pid()",
        query.replace('\'', "''")
    );
    let out = cluster()
        .sql(0, "postgres", &sql)
        .expect("pg_stat_activity");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("count from pg_stat_activity: {out:?}"))
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_its_server_connection_freed() {
    // It measures this process's memory: no other test may run beside it.
    let _alone = common::turns::alone().await;
    let proxy = TestProxy::start_with(
        "client_write_timeout = \"2s\"",
        &format!("[pool]\nmax_pool_size = 1\n{}", trust_user()),
    )
    .await;
    let mut stalled = raw::login(proxy.addr, "trustuser").await;
    let before = rss();
    stalled
        .write_all(&raw::query(&format!("{ON_PRIMARY} {HUGE}")))
        .await
        .expect("send the query");
    let sent = Instant::now();

    // Sample pgsplit's memory while the client reads nothing, until the backend is gone.
    let mut peak = before;
    let mut seen_running = false;
    let gone_after = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss());
        let running = running_on_primary(HUGE);
        seen_running |= running > 0;
        if seen_running && running == 0 {
            break sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "the backend answering a client that reads nothing still runs after {:?} \
             (client_write_timeout is 2s; seen running: {seen_running})",
            sent.elapsed()
        );
    };
    let growth = peak.saturating_sub(before);
    println!(
        "never-reading client: backend gone {gone_after:?} after the query; \
         pgsplit's RSS grew by at most {} KiB for a {} MB result",
        growth / 1024,
        HUGE_BYTES / 1_000_000
    );
    assert!(
        gone_after >= Duration::from_secs(2),
        "cut off after {gone_after:?}, before client_write_timeout (2s)"
    );
    assert!(
        growth < 64 << 20,
        "pgsplit's RSS grew by {} MiB while its client read nothing: it kept reading the \
         server instead of pushing back",
        growth >> 20
    );

    // The client's socket holds what was in flight, then it is closed: no ReadyForQuery.
    let mut drained = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut drained))
        .await
        .expect("the stalled client's connection is closed");
    assert!(
        end.is_ok() || drained.len() as u64 > 0,
        "closed without any of the result: {end:?}"
    );
    assert!(
        (drained.len() as u64) < HUGE_BYTES,
        "the whole result arrived ({} bytes): the client was never cut off",
        drained.len()
    );

    next_client_is_served_on_the_primary(&proxy).await;
}

/// With max_pool_size = 1, a query on the primary runs only if the connection the
/// stalled client held was freed.
async fn next_client_is_served_on_the_primary(proxy: &TestProxy) {
    let next = proxy
        .connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .expect("connect after the cut-off");
    let value = tokio::time::timeout(
        Duration::from_secs(10),
        first(&next, &format!("{ON_PRIMARY} SELECT 'served'::text")),
    )
    .await
    .expect("the next query on the primary is not stuck");
    assert_eq!(
        value
            .expect("the next query on the primary succeeds")
            .as_deref(),
        Some("served")
    );
}

/// Sends `bytes` one every 200 ms from a task of its own, stopping at the first failed
/// write (the proxy closed the connection); returns the reading half.
fn trickle(stream: TcpStream, bytes: Vec<u8>) -> tokio::net::tcp::OwnedReadHalf {
    let (read, mut write) = stream.into_split();
    tokio::spawn(async move {
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    read
}

/// Reads what the proxy sends until it closes the connection: the SQLSTATEs of its
/// ErrorResponses and when it closed (a reset counts as a close).
async fn until_closed(read: &mut tokio::net::tcp::OwnedReadHalf) -> (Vec<String>, Instant) {
    let mut errors = Vec::new();
    loop {
        let tag = match read.read_u8().await {
            Ok(tag) => tag,
            Err(_) => return (errors, Instant::now()),
        };
        let Ok(len) = read.read_i32().await else {
            return (errors, Instant::now());
        };
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        if read.read_exact(&mut body).await.is_err() {
            return (errors, Instant::now());
        }
        if tag == b'E' {
            errors.push(error_code(&body));
        }
    }
}

/// A client served normally, while a slow one is being timed out.
async fn bystander_is_served(proxy: &TestProxy) {
    let client = proxy.connect().await;
    let row = client
        .query_one("SELECT 'bystander'::text", &[])
        .await
        .expect("a bystander's query");
    assert_eq!(row.get::<_, &str>(0), "bystander");
}

#[tokio::test]
async fn a_client_trickling_its_startup_packet_is_closed_at_auth_timeout() {
    let _shared = common::turns::shared().await;
    let proxy = TestProxy::start_with("auth_timeout = \"1s\"", &trust_user()).await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let started = Instant::now();
    // About 45 bytes: 9 s at one byte per 200 ms, far past auth_timeout.
    let packet = raw::startup(&[("user", "trustuser"), ("database", "app")]);
    let mut read = trickle(stream, packet);
    bystander_is_served(&proxy).await;
    let (errors, closed) = tokio::time::timeout(Duration::from_secs(10), until_closed(&mut read))
        .await
        .expect("the trickling client is closed");
    let after = closed - started;
    println!("startup packet trickled: closed after {after:?}, errors {errors:?}");
    // As PostgreSQL does when authentication_timeout expires before the startup packet
    // is complete: the connection is closed without a message.
    assert!(errors.is_empty(), "unexpected errors {errors:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}; auth_timeout is 1s"
    );
    bystander_is_served(&proxy).await;
}

/// A SASLInitialResponse for SCRAM-SHA-256 without channel binding.
fn sasl_initial_response() -> Vec<u8> {
    let client_first = b"n,,n=,r=trickletrickletrickletrickle";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    body.extend_from_slice(client_first);
    raw::message(b'p', &body)
}

#[tokio::test]
async fn a_client_trickling_its_scram_response_is_closed_at_auth_timeout_with_08006() {
    let _shared = common::turns::shared().await;
    let proxy = TestProxy::start_with("auth_timeout = \"1s\"", "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(&raw::startup(&[("user", APP_USER), ("database", "app")]))
        .await
        .expect("send startup");
    match read_message(&mut stream).await {
        // AuthenticationSASL.
        Some((b'R', body)) if body.starts_with(&10i32.to_be_bytes()) => {}
        other => panic!("expected AuthenticationSASL, got {other:?}"),
    }
    let mut read = trickle(stream, sasl_initial_response());
    bystander_is_served(&proxy).await;
    let (errors, closed) = tokio::time::timeout(Duration::from_secs(10), until_closed(&mut read))
        .await
        .expect("the trickling client is closed");
    let after = closed - started;
    println!("SCRAM response trickled: closed after {after:?}, errors {errors:?}");
    assert_eq!(errors, ["08006"], "a FATAL error, then the close");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}; auth_timeout is 1s"
    );
    bystander_is_served(&proxy).await;
}

/// A CA, and a certificate for `localhost` it signed, as PEM files in `dir`; returns the
/// CA certificate (DER) for a client to trust.
fn tls_files(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write certificate");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
    ca.der().clone()
}

#[tokio::test]
async fn a_tls_client_that_never_reads_is_cut_off_and_its_server_connection_freed() {
    let _shared = common::turns::shared().await;
    use tokio::io::AsyncRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = tls_files(dir.path());
    let top = format!(
        "client_write_timeout = \"2s\"\ntls_mode = \"allow\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display()
    );
    let proxy = TestProxy::start_with(
        &top,
        &format!("[pool]\nmax_pool_size = 1\n{}", trust_user()),
    )
    .await;

    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    assert_eq!(tcp.read_u8().await.expect("answer"), b'S');
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("trust the test CA");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(&raw::startup(&[("user", "trustuser"), ("database", "app")]))
        .await
        .expect("send startup");
    async fn next_tag<S: AsyncRead + Unpin>(s: &mut S) -> u8 {
        let tag = s.read_u8().await.expect("message type");
        let len = s.read_i32().await.expect("message length");
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        s.read_exact(&mut body).await.expect("message body");
        tag
    }
    while next_tag(&mut tls).await != b'Z' {}

    // Another query than the plain test's, so each counts only its own backend.
    let query = "SELECT repeat('y', 1000) FROM generate_series(1, 2000000)";
    tls.write_all(&raw::query(&format!("{ON_PRIMARY} {query}")))
        .await
        .expect("send the query");
    tls.flush().await.expect("flush the query");
    let sent = Instant::now();
    let mut seen_running = false;
    let gone_after = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let running = running_on_primary(query);
        seen_running |= running > 0;
        if seen_running && running == 0 {
            break sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "the backend answering a TLS client that reads nothing still runs after {:?} \
             (seen running: {seen_running})",
            sent.elapsed()
        );
    };
    println!("never-reading TLS client: backend gone {gone_after:?} after the query");
    assert!(
        gone_after >= Duration::from_secs(2),
        "cut off after {gone_after:?}"
    );

    next_client_is_served_on_the_primary(&proxy).await;
    drop(tls);
}

#[tokio::test]
async fn a_reloaded_client_write_timeout_applies_to_sessions_that_start_after_it() {
    let _shared = common::turns::shared().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pgsplit.toml");
    let base = format!(
        "{}\n{}",
        pgsplit::demo::config_text(cluster(), "127.0.0.1:0"),
        trust_user()
    );
    std::fs::write(&file, format!("client_write_timeout = \"0s\"\n{base}")).expect("config");
    let proxy = TestProxy::start_reloadable(file.clone()).await;
    std::fs::write(&file, format!("client_write_timeout = \"1s\"\n{base}")).expect("config");
    let changes = proxy.reload().expect("reload");
    assert!(
        changes.iter().any(|c| c.contains("client_write_timeout")),
        "{changes:?}"
    );

    let mut stalled = raw::login(proxy.addr, "trustuser").await;
    let query = "SELECT repeat('z', 1000) FROM generate_series(1, 2000000)";
    stalled
        .write_all(&raw::query(&format!("{ON_PRIMARY} {query}")))
        .await
        .expect("send the query");
    let sent = Instant::now();
    let mut seen_running = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let running = running_on_primary(query);
        seen_running |= running > 0;
        if seen_running && running == 0 {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "client_write_timeout = 1s, reloaded, did not cut off a new session: \
             its backend still runs after {:?}",
            sent.elapsed()
        );
    }
    println!(
        "after a reload to 1s: backend gone {:?} after the query",
        sent.elapsed()
    );
}
