//! No secret ever shows: the pgsplit binary, logging at `trace` (as text, then as JSON),
//! serves a broad workload (every login method, wrong passwords, TLS, a cancel, prepared
//! statements, COPY, the admin console, reloads, a /metrics scrape), and then its logs,
//! its metrics, the console's output and `config print` are searched for every
//! configured password, hash and verifier, and for the clients' cancel keys.

use crate::common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::raw::{self, next_error};
use common::{cluster, http, sqlstate};
use futures_util::{SinkExt, TryStreamExt};
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const SCRAM_PW: &str = "scram-only-client-pw";
const MD5_PW: &str = "md5-only-client-pw";
const MD5_PLAIN_PW: &str = "md5-plain-client-pw";
const ADDED_PW: &str = "added-by-reload-pw";
const WRONG_PW: &str = "wrong-guess-pw";
const BROKEN_PW: &str = "broken-by-a-typo-pw";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// md5 hash as PostgreSQL stores it: `md5` + md5(password + user).
fn md5_hash(password: &str, user: &str) -> String {
    postgres_protocol::password::md5(password.as_bytes(), user)
}

/// What pgsplit knows and must never show, with a name for the failure message.
struct Secrets {
    verifier: String,
    list: Vec<(String, String)>,
}

impl Secrets {
    fn new() -> Secrets {
        let verifier = postgres_protocol::password::scram_sha_256(SCRAM_PW.as_bytes());
        let mut list: Vec<(String, String)> = [
            ("app password", APP_PASSWORD),
            ("monitor password", MONITOR_PASSWORD),
            ("SCRAM user's password", SCRAM_PW),
            ("md5 user's password", MD5_PW),
            ("md5 plaintext user's password", MD5_PLAIN_PW),
            ("password added by reload", ADDED_PW),
            ("wrong password tried", WRONG_PW),
            ("password on a malformed line", BROKEN_PW),
        ]
        .iter()
        .map(|(name, s)| (name.to_string(), s.to_string()))
        .collect();
        list.push(("SCRAM verifier".into(), verifier.clone()));
        // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
        let keys = verifier.rsplit('$').next().expect("verifier keys");
        let (stored, server) = keys.split_once(':').expect("StoredKey:ServerKey");
        list.push(("SCRAM StoredKey".into(), stored.into()));
        list.push(("SCRAM ServerKey".into(), server.into()));
        for (user, pw) in [
            ("md5user", MD5_PW),
            ("md5plain", MD5_PLAIN_PW),
            (APP_USER, APP_PASSWORD),
        ] {
            let hash = md5_hash(pw, user);
            list.push((format!("{user}'s md5 hash, hex"), hash[3..].to_owned()));
            list.push((format!("{user}'s md5 hash"), hash));
        }
        Secrets { verifier, list }
    }

    /// A client's cancel secret, in the forms a log line could print it.
    fn add_cancel_key(&mut self, secret: i32) {
        self.list
            .push(("cancel secret (decimal)".into(), secret.to_string()));
        self.list.push((
            "cancel secret (unsigned decimal)".into(),
            (secret as u32).to_string(),
        ));
        self.list
            .push(("cancel secret (hex)".into(), format!("{:x}", secret as u32)));
        self.list
            .push(("cancel secret (HEX)".into(), format!("{:X}", secret as u32)));
    }

    /// Fails, naming the secret and where it showed, if any appears in `text`.
    fn assert_absent(&self, place: &str, text: &str) {
        for (name, secret) in &self.list {
            if let Some(at) = text.find(secret.as_str()) {
                let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!(
                    "the {name} ({secret}) appears in {place}:\n{}",
                    &text[from..to]
                );
            }
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and its key, as files in `dir`.
fn certificate(dir: &Path) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    (
        cert_file.display().to_string(),
        key_file.display().to_string(),
    )
}

/// The configuration: users for every method, the console, metrics, TLS, trace logging.
fn config(port: u16, metrics_port: u16, dir: &Path, format: &str, secrets: &Secrets) -> String {
    let (cert, key) = certificate(dir);
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\nlog_level = \"trace\"\nlog_format = \"{format}\"\n\
         client_write_timeout = \"1s\"\nadmin_users = [\"{APP_USER}\"]\ntls_mode = \"allow\"\ntls_cert_file = \"{cert}\"\n\
         tls_key_file = \"{key}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
         [monitor]\nuser = \"{MONITOR_USER}\"\npassword = \"{MONITOR_PASSWORD}\"\n\
         lag_check_interval = \"200ms\"\n\n\
         [[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n\
         [[users]]\nname = \"scramuser\"\npassword = \"{}\"\nauth_method = \"scram-sha-256\"\n\
         server_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n\n\
         [[users]]\nname = \"md5user\"\npassword = \"{}\"\nauth_method = \"md5\"\n\
         server_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n\n\
         [[users]]\nname = \"md5plain\"\npassword = \"{MD5_PLAIN_PW}\"\nauth_method = \"md5\"\n\
         server_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n\n\
         [[users]]\nname = \"trustuser\"\nauth_method = \"trust\"\n\
         server_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n",
        secrets.verifier,
        md5_hash(MD5_PW, "md5user"),
    );
    for node in cluster().nodes() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\naddress = \"{}\"\n",
            node.name,
            node.address()
        ));
    }
    text
}

/// The pgsplit binary serving with a configuration file, its output in a log file;
/// killed when dropped.
struct Pgsplit {
    child: Child,
    log: std::path::PathBuf,
}

impl Pgsplit {
    fn start(config: &Path, log: std::path::PathBuf) -> Pgsplit {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsplit"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PGSPLIT_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start pgsplit");
        Pgsplit { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal pgsplit");
    }

    /// SIGTERM, then waits for the process to end.
    fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pgsplit did not stop after SIGTERM:\n{}", self.log());
    }
}

impl Drop for Pgsplit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn conninfo(port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname={db} connect_timeout=5"
    )
}

async fn connect(port: u16, user: &str, password: &str, db: &str) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(&conninfo(port, user, password, db), NoTls)
        .await
        .map_err(|e| sqlstate(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Every value of every row the console answers, as text.
async fn console(port: u16, sql: &str) -> String {
    let client = connect(port, APP_USER, APP_PASSWORD, "pgsplit")
        .await
        .expect("admin console login");
    let mut out = String::new();
    for m in client.simple_query(sql).await.expect(sql) {
        if let SimpleQueryMessage::Row(r) = m {
            let cells: Vec<&str> = (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
            out.push_str(&cells.join("|"));
            out.push('\n');
        }
    }
    out
}

/// Logins of every method, wrong passwords, a cancel, prepared statements, COPY, TLS,
/// the console and reloads; returns what the console and /metrics showed, and adds the
/// cancel keys handed out to `secrets`.
async fn workload(
    proxy: &Pgsplit,
    port: u16,
    metrics_port: u16,
    config_file: &Path,
    secrets: &mut Secrets,
) -> String {
    // SCRAM with a plaintext password configured: queries, a prepared statement, COPY.
    let app = connect(port, APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .expect("SCRAM login");
    let statement = app.prepare("SELECT $1::int + 1").await.expect("prepare");
    let row = app.query_one(&statement, &[&41i32]).await.expect("execute");
    assert_eq!(row.get::<_, i32>(0), 42);
    app.simple_query("PREPARE twice AS SELECT 2 * $1::int; EXECUTE twice(21); DEALLOCATE twice")
        .await
        .expect("SQL PREPARE");
    let copied: Vec<_> = app
        .copy_out("COPY (SELECT generate_series(1, 100)) TO STDOUT")
        .await
        .expect("COPY TO")
        .try_collect()
        .await
        .expect("COPY TO data");
    assert!(!copied.is_empty());
    let mut app = app;
    let tx = app.transaction().await.expect("BEGIN");
    tx.batch_execute("CREATE TEMP TABLE copied (x int) ON COMMIT DROP")
        .await
        .expect("temp table");
    let sink = tx
        .copy_in::<_, bytes::Bytes>("COPY copied FROM STDIN")
        .await
        .expect("COPY FROM");
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .expect("COPY data");
    assert_eq!(sink.finish().await.expect("COPY done"), 3);
    tx.commit().await.expect("COMMIT");

    // The other methods, and wrong passwords (28P01) for each.
    for (user, password) in [
        ("scramuser", SCRAM_PW),
        ("md5user", MD5_PW),
        ("md5plain", MD5_PLAIN_PW),
    ] {
        let client = connect(port, user, password, APP_DATABASE)
            .await
            .unwrap_or_else(|e| panic!("{user} login: {e}"));
        client.simple_query("SELECT 1").await.expect("query");
    }
    for user in [APP_USER, "scramuser", "md5user", "md5plain", "nosuchuser"] {
        let refused = connect(port, user, WRONG_PW, APP_DATABASE).await.err();
        assert_eq!(
            refused.as_deref(),
            Some("28P01"),
            "{user} with a wrong password"
        );
    }

    // Trust login, and a cancel request with the key pgsplit handed out.
    let (mut trusted, (pid, secret)) = raw::login_with_key(
        format!("127.0.0.1:{port}").parse().expect("address"),
        "trustuser",
    )
    .await;
    secrets.add_cancel_key(secret);
    trusted
        .write_all(&raw::query("SELECT pg_sleep(30)"))
        .await
        .expect("send the query to cancel");
    // Sent again until it lands: one that arrives before the query starts is ignored.
    let mut code = None;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut cancel = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect for the cancel");
        cancel
            .write_all(&raw::cancel_request(pid, secret))
            .await
            .expect("send CancelRequest");
        if let Ok(answer) =
            tokio::time::timeout(Duration::from_secs(2), next_error(&mut trusted)).await
        {
            code = answer;
            break;
        }
    }
    assert_eq!(code.as_deref(), Some("57014"), "query cancelled");
    // One with a wrong key is ignored.
    let mut wrong = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect for a wrong cancel");
    wrong
        .write_all(&raw::cancel_request(pid, secret.wrapping_add(1)))
        .await
        .expect("send a wrong CancelRequest");

    // A client that stops reading its results is cut off, with a warning naming it.
    let (mut stalled, _) = raw::login_with_key(
        format!("127.0.0.1:{port}").parse().expect("address"),
        "trustuser",
    )
    .await;
    let peer = stalled.local_addr().expect("local address").to_string();
    stalled
        .write_all(&raw::query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 500000)",
        ))
        .await
        .expect("send the query");
    let deadline = Instant::now() + Duration::from_secs(20);
    let warning = loop {
        let log = proxy.log();
        if let Some(line) = log.lines().find(|l| l.contains("client stopped reading")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no warning about the stalled client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        warning.contains("WARN") && warning.contains(&peer) && warning.contains("trustuser"),
        "the warning names the client ({peer}) and its user: {warning}"
    );
    drop(stalled);

    // TLS with channel binding (SCRAM-SHA-256-PLUS), through psql.
    let tls = Command::new(cluster().pg_bin().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &format!(
                "host=127.0.0.1 port={port} user={APP_USER} dbname={APP_DATABASE} \
                 sslmode=require channel_binding=require"
            ),
            "-c",
            "SELECT 'over tls'",
        ])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .expect("run psql");
    assert!(
        String::from_utf8_lossy(&tls.stdout).contains("over tls"),
        "psql over TLS: {}",
        common::text(&tls)
    );

    // Reloads: one rejected (a password line the parser cannot read), then SIGHUP with a
    // new user, and RELOAD in the console.
    let mut text = std::fs::read_to_string(config_file).expect("read config");
    let broken = format!("{text}\n[[users]]\nname = \"typo\"\npassword = \"{BROKEN_PW}\n");
    std::fs::write(config_file, broken).expect("write config");
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("reload rejected") {
        assert!(
            Instant::now() < deadline,
            "the broken reload was never rejected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    text.push_str(&format!(
        "\n[[users]]\nname = \"added\"\npassword = \"{ADDED_PW}\"\n\
         server_user = \"{APP_USER}\"\nserver_password = \"{APP_PASSWORD}\"\n"
    ));
    std::fs::write(config_file, text).expect("write config");
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(port, "added", ADDED_PW, APP_DATABASE)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the reload never admitted the new user"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut shown = String::new();
    for command in [
        "SHOW CONFIG",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW POOLS",
        "SHOW NODES",
        "SHOW STATS",
        "RELOAD",
    ] {
        shown.push_str(&console(port, command).await);
    }
    assert!(
        shown.contains("client_write_timeout"),
        "SHOW CONFIG lists client_write_timeout:\n{shown}"
    );
    let (status, metrics) = http(
        format!("127.0.0.1:{metrics_port}")
            .parse()
            .expect("address"),
        "GET",
        "/metrics",
    )
    .await;
    assert_eq!(status, 200, "/metrics");
    shown.push_str(&metrics);
    drop(trusted);
    shown
}

async fn no_secret_shows_with_log_format(format: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, metrics_port) = (free_port(), free_port());
    let mut secrets = Secrets::new();
    let config_file = dir.path().join("pgsplit.toml");
    std::fs::write(
        &config_file,
        config(port, metrics_port, dir.path(), format, &secrets),
    )
    .expect("write config");
    let mut proxy = Pgsplit::start(&config_file, dir.path().join("pgsplit.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while connect(port, APP_USER, APP_PASSWORD, APP_DATABASE)
        .await
        .is_err()
    {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("pgsplit exited ({status}):\n{}", proxy.log());
        }
        assert!(
            Instant::now() < deadline,
            "pgsplit never served:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = workload(&proxy, port, metrics_port, &config_file, &mut secrets).await;
    proxy.stop();
    let log = proxy.log();
    std::fs::write(format!("/tmp/slow-secrets-{format}.log"), &log).unwrap();
    assert!(
        log.lines().count() > 100,
        "trace logging wrote only {} lines",
        log.lines().count()
    );
    println!(
        "{format} logs: {} lines, {} bytes; console and /metrics: {} bytes; {} secrets checked",
        log.lines().count(),
        log.len(),
        shown.len(),
        secrets.list.len()
    );
    secrets.assert_absent(&format!("the {format} log"), &log);
    secrets.assert_absent("the admin console's output or /metrics", &shown);

    let printed = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .arg("--config")
        .arg(&config_file)
        .args(["config", "print"])
        .output()
        .expect("pgsplit config print");
    assert!(printed.status.success(), "{}", common::text(&printed));
    secrets.assert_absent("`pgsplit config print`", &common::text(&printed));
    let checked = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .arg("check-config")
        .arg(&config_file)
        .output()
        .expect("pgsplit check-config");
    secrets.assert_absent("`pgsplit check-config`", &common::text(&checked));
}

#[tokio::test]
async fn no_password_hash_verifier_or_cancel_key_shows_in_text_logs_metrics_or_the_console() {
    no_secret_shows_with_log_format("text").await;
}

#[tokio::test]
async fn no_password_hash_verifier_or_cancel_key_shows_in_json_logs_metrics_or_the_console() {
    no_secret_shows_with_log_format("json").await;
}
