//! Shared test support: one real cluster per test binary, pgsplit instances in front of it,
//! and client helpers. Tests fail loudly when PostgreSQL is missing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::OnceLock;

use pgsplit::proxy::ProxyHandle;
use pgsplit::settings::Settings;
use pgsplit_cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::runtime::Runtime;

/// The binary's cluster: a primary and two hot standbys, torn down by the harness's watchdog.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        Cluster::with_standbys(2).unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"))
    })
}

/// Proxies run on their own runtime so they outlive any one `#[tokio::test]`.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// A pgsplit instance in front of the test cluster.
pub struct TestProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    handle: Option<ProxyHandle>,
}

impl TestProxy {
    /// Starts pgsplit with the demo configuration; `top` adds top-level keys, `tables` more tables.
    pub async fn start_with(top: &str, tables: &str) -> TestProxy {
        Self::start_for(cluster(), top, "", tables).await
    }

    /// Starts pgsplit with the demo configuration.
    pub async fn start() -> TestProxy {
        Self::start_with("", "").await
    }

    /// Runs the graceful shutdown on the proxy's runtime; resolves when it is done.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.take().expect("proxy already shut down");
        runtime().spawn(handle.shutdown())
    }

    /// Re-reads this proxy's TLS certificate files.
    pub fn reload_tls(&self) -> Result<(), String> {
        self.handle.as_ref().expect("proxy running").reload_tls()
    }

    /// Counters of this proxy's server connection pools.
    pub fn pools(&self) -> Vec<pgsplit::pool::PoolSnapshot> {
        self.handle.as_ref().expect("proxy running").pools()
    }

    /// Routing counters of this proxy.
    pub fn stats(&self) -> pgsplit::stats::StatsSnapshot {
        self.handle.as_ref().expect("proxy running").stats()
    }

    /// A libpq connection string for `user` / `password`.
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname={db}",
            self.addr.port()
        )
    }

    /// Connects as the application role with tokio-postgres.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as(APP_USER, APP_PASSWORD, APP_DATABASE)
            .await
            .expect("connect through pgsplit")
    }

    /// Connects with tokio-postgres; the connection task is spawned on the caller's runtime.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conninfo(user, password, db), tokio_postgres::NoTls)
                .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Asserts that a new client still gets an answer: whatever a test did to others,
    /// pgsplit goes on serving.
    pub async fn still_serves(&self) {
        let client = self.connect().await;
        let row = client
            .query_one("SELECT 'still here'::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "still here");
    }

    /// Runs a PostgreSQL client program (psql, pgbench) from the cluster's bin dir against the proxy.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.run_with(cluster().pg_bin(), program, args)
    }
}

impl TestProxy {
    /// Starts pgsplit with the demo configuration for `cluster` (a test's own cluster, not
    /// the shared one): `top` adds top-level keys, `monitor` keys of `[monitor]`, `tables`
    /// more tables.
    pub async fn start_for(cluster: &Cluster, top: &str, monitor: &str, tables: &str) -> TestProxy {
        let base = pgsplit::demo::config_text(cluster, "127.0.0.1:0");
        // The demo text already has a [monitor] table and TOML forbids a second one.
        let base = base.replacen("[monitor]\n", &format!("[monitor]\n{monitor}\n"), 1);
        let text = format!("{top}\n{base}\n{tables}");
        Self::start_text(&text).await
    }

    /// Starts pgsplit with exactly this configuration.
    pub async fn start_text(text: &str) -> TestProxy {
        let settings =
            Settings::parse(text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let handle = runtime()
            .spawn(pgsplit::proxy::start(settings))
            .await
            .expect("proxy start task")
            .expect("proxy listens");
        TestProxy {
            addr: handle.local_addr(),
            handle: Some(handle),
        }
    }

    /// Starts pgsplit from a configuration file, which `RELOAD` and [`TestProxy::reload`]
    /// read again.
    pub async fn start_reloadable(path: std::path::PathBuf) -> TestProxy {
        let settings = Settings::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let sources = pgsplit::context::Sources::new(
            std::sync::Arc::new(move || Settings::load(&path).map_err(|e| e.to_string())),
            None,
        );
        let handle = runtime()
            .spawn(pgsplit::proxy::start_with(settings, sources))
            .await
            .expect("proxy start task")
            .expect("proxy listens");
        TestProxy {
            addr: handle.local_addr(),
            handle: Some(handle),
        }
    }

    /// Reads the configuration again, as SIGHUP does.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        self.handle.as_ref().expect("proxy running").reload()
    }

    /// Runs admin console commands as `app` (listed in `admin_users`) over the simple
    /// query protocol; the rows of every result set, as column → value.
    pub async fn console(
        &self,
        sql: &str,
    ) -> Result<Vec<std::collections::HashMap<String, Option<String>>>, tokio_postgres::Error> {
        let client = self
            .connect_as(APP_USER, APP_PASSWORD, pgsplit::admin::DATABASE)
            .await?;
        let rows = client
            .simple_query(sql)
            .await?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    r.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), r.get(i).map(str::to_owned)))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        Ok(rows)
    }

    /// Where this proxy serves /metrics, /healthz and /readyz, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.handle.as_ref().expect("proxy running").metrics_addr()
    }

    /// The proxy's latest cluster snapshot.
    pub fn topology(&self) -> std::sync::Arc<pgsplit::topology::Topology> {
        self.handle.as_ref().expect("proxy running").topology()
    }

    /// Runs a PostgreSQL client program from `pg_bin` against the proxy (for tests with
    /// their own cluster, where [`TestProxy::run`] would start the shared one).
    pub fn run_with(&self, pg_bin: &std::path::Path, program: &str, args: &[&str]) -> Output {
        let port = self.addr.port().to_string();
        Command::new(pg_bin.join(program))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", APP_USER])
            .args(args)
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGPASSFILE", "/nonexistent")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }
}

/// A test's own cluster (a primary and two hot standbys), for tests that stop, pause or
/// promote nodes; torn down when dropped.
pub async fn own_cluster() -> Cluster {
    tokio::task::spawn_blocking(|| Cluster::with_standbys(2))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"))
}

/// A topology snapshot, one line per node, for failure messages.
pub fn describe(t: &pgsplit::topology::Topology) -> String {
    t.nodes
        .iter()
        .map(|n| {
            format!(
                "\n  {}: {:?} eligible={} lag_bytes={:?} lag_time={:?} lag={:?} ban={:?} error={:?}",
                n.node.name,
                n.role,
                n.eligible,
                n.lag_bytes,
                n.lag_time,
                n.lag_status,
                n.ban.as_ref().map(|b| (&b.reason, b.failures)),
                n.error
            )
        })
        .collect()
}

/// The SQLSTATE of a tokio-postgres error, or a description of why there is none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE ({e})"))
}

/// Output as text for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One HTTP/1.1 request over a fresh connection: the status code and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("send {method} {path}: {e}"));
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .unwrap_or_else(|e| panic!("read the answer to {method} {path}: {e}"));
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of headers in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    (status, body.to_string())
}

/// Minimal raw wire-protocol helpers for tests that must send what no client library would.
pub mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A StartupMessage for protocol 3.0.
    pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    /// Reads one message; `None` when the server closed the connection.
    pub async fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let tag = stream.read_u8().await.ok()?;
        let len = stream.read_i32().await.ok()?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        stream.read_exact(&mut body).await.ok()?;
        Some((tag, body))
    }

    /// The SQLSTATE field of an ErrorResponse body.
    pub fn error_code(body: &[u8]) -> String {
        body.split(|b| *b == 0)
            .find_map(|f| f.strip_prefix(b"C"))
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .unwrap_or_default()
    }

    /// Reads until ReadyForQuery; panics on an ErrorResponse.
    pub async fn until_ready(stream: &mut TcpStream) {
        loop {
            match read_message(stream).await {
                Some((b'Z', _)) => return,
                Some((b'E', body)) => panic!("unexpected error {}", error_code(&body)),
                Some(_) => {}
                None => panic!("connection closed before ReadyForQuery"),
            }
        }
    }

    /// Connects and logs in as a trust user, ready for queries.
    pub async fn login(addr: std::net::SocketAddr, user: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&startup(&[("user", user), ("database", "app")]))
            .await
            .expect("send startup");
        until_ready(&mut stream).await;
        stream
    }

    /// Connects and logs in as a trust user; also returns the BackendKeyData (pid, secret)
    /// the proxy handed out.
    pub async fn login_with_key(addr: std::net::SocketAddr, user: &str) -> (TcpStream, (i32, i32)) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&startup(&[("user", user), ("database", "app")]))
            .await
            .expect("send startup");
        let mut key = None;
        loop {
            match read_message(&mut stream).await {
                Some((b'K', body)) if body.len() == 8 => {
                    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    key = Some((pid, secret));
                }
                Some((b'Z', _)) => break,
                Some((b'E', body)) => panic!("login failed with {}", error_code(&body)),
                Some(_) => {}
                None => panic!("connection closed during login"),
            }
        }
        (stream, key.expect("no BackendKeyData before ReadyForQuery"))
    }

    /// A CancelRequest packet (sent on a fresh connection, without a startup packet).
    pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
        let mut packet = 16i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&80_877_102i32.to_be_bytes());
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(&secret.to_be_bytes());
        packet
    }

    /// A message: tag, length, body.
    /// A message with its type byte and length.
    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// A simple-protocol Query.
    pub fn query(sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        message(b'Q', &body)
    }

    /// Parse of `sql` as statement `name` (parameter types left to the server).
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, name);
        cstr(&mut body, sql);
        body.extend_from_slice(&0i16.to_be_bytes());
        message(b'P', &body)
    }

    /// Bind of statement `statement` to portal `portal` with text parameters and text results.
    pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        cstr(&mut body, statement);
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            body.extend_from_slice(&(p.len() as i32).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        message(b'B', &body)
    }

    /// Describe of a statement (`b'S'`) or portal (`b'P'`).
    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut body = vec![kind];
        cstr(&mut body, name);
        message(b'D', &body)
    }

    /// Execute of `portal`, all rows.
    pub fn execute(portal: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        body.extend_from_slice(&0i32.to_be_bytes());
        message(b'E', &body)
    }

    /// Close of a statement (`b'S'`) or portal (`b'P'`).
    pub fn close(kind: u8, name: &str) -> Vec<u8> {
        let mut body = vec![kind];
        cstr(&mut body, name);
        message(b'C', &body)
    }

    /// Sync.
    pub fn sync() -> Vec<u8> {
        message(b'S', &[])
    }

    /// What the server answered up to ReadyForQuery.
    #[derive(Debug, Default)]
    pub struct Reply {
        /// Every DataRow, its columns as text (`None` for NULL).
        pub rows: Vec<Vec<Option<String>>>,
        /// Parameter type OIDs from a ParameterDescription.
        pub param_types: Option<Vec<u32>>,
        /// SQLSTATEs of ErrorResponses.
        pub errors: Vec<String>,
    }

    /// Reads one request's answer up to and including ReadyForQuery.
    pub async fn reply(stream: &mut TcpStream) -> Reply {
        let mut reply = Reply::default();
        loop {
            match read_message(stream).await {
                Some((b'Z', _)) => return reply,
                Some((b'E', body)) => reply.errors.push(error_code(&body)),
                Some((b'D', body)) => reply.rows.push(data_row(&body)),
                Some((b't', body)) => {
                    let n = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
                    let oids = body[2..2 + 4 * n]
                        .chunks(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    reply.param_types = Some(oids);
                }
                Some(_) => {}
                None => panic!("connection closed before ReadyForQuery: {reply:?}"),
            }
        }
    }

    /// Sends `bytes` and reads the answer up to and including ReadyForQuery.
    pub async fn reply_of(stream: &mut TcpStream, bytes: &[u8]) -> Reply {
        stream.write_all(bytes).await.expect("send");
        reply(stream).await
    }

    fn data_row(body: &[u8]) -> Vec<Option<String>> {
        let n = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
        let mut at = 2;
        let mut columns = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            at += 4;
            if len < 0 {
                columns.push(None);
            } else {
                let end = at + len as usize;
                columns.push(Some(String::from_utf8_lossy(&body[at..end]).into_owned()));
                at = end;
            }
        }
        columns
    }

    /// Waits for the next ErrorResponse and returns its SQLSTATE; `None` if the connection closed first.
    pub async fn next_error(stream: &mut TcpStream) -> Option<String> {
        loop {
            match read_message(stream).await {
                Some((b'E', body)) => return Some(error_code(&body)),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// Flush.
    pub fn flush() -> Vec<u8> {
        message(b'H', &[])
    }

    /// Every message up to and including ReadyForQuery (`!` marks a close or a 5 s timeout).
    pub async fn read_until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(5), read_message(s)).await {
                Ok(Some(m)) => {
                    let z = m.0 == b'Z';
                    out.push(m);
                    if z {
                        return out;
                    }
                }
                Ok(None) => {
                    out.push((b'!', b"closed".to_vec()));
                    return out;
                }
                Err(_) => {
                    out.push((b'!', b"timeout".to_vec()));
                    return out;
                }
            }
        }
    }

    /// Message types as text, with SQLSTATEs and ReadyForQuery statuses: `E(22P02) Z(I)`.
    pub fn tags(m: &[(u8, Vec<u8>)]) -> String {
        m.iter()
            .map(|(t, b)| match *t {
                b'E' => format!("E({})", error_code(b)),
                b'Z' => format!("Z({})", b.first().map_or('?', |s| *s as char)),
                _ => (*t as char).to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Turns for the tests of one binary that must not run beside each other. A test that
/// loads the machine (clusters under pgbench, hundreds of clients) or measures the whole
/// process (its memory, its panics, timings on a small machine) runs [`alone`]; in a
/// binary that has such tests, every other test that starts a cluster, a proxy or a
/// client takes a [`shared`] turn, so it never runs beside one alone. Each test takes one
/// turn, first thing, and keeps it to its end: a second turn in the same test could wait
/// behind a queued [`alone`] that waits for the first.
pub mod turns {
    use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    static TURNS: RwLock<()> = RwLock::const_new(());

    /// Waits until no other test holds a turn, and keeps the others waiting.
    pub async fn alone() -> RwLockWriteGuard<'static, ()> {
        TURNS.write().await
    }

    /// [`alone`] for a plain `#[test]`.
    pub fn alone_blocking() -> RwLockWriteGuard<'static, ()> {
        TURNS.blocking_write()
    }

    /// Runs beside other shared turns, never beside a test [`alone`].
    pub async fn shared() -> RwLockReadGuard<'static, ()> {
        TURNS.read().await
    }
}

/// Pooled proxies and helpers the pooling tests share.
pub mod pool {
    use super::{cluster, TestProxy};
    use pgsplit_cluster::APP_PASSWORD;
    use tokio_postgres::{Client, SimpleQueryMessage};

    /// Hint comment that sends a statement to the primary whatever it does.
    pub const ON_PRIMARY: &str = "/* pgsplit:primary */";

    /// A client-side trust user that logs in to the servers as `app`, for raw-protocol clients.
    pub fn trust_user() -> String {
        format!(
            "\n[[users]]\nname = \"trustuser\"\nauth_method = \"trust\"\n\
             server_user = \"app\"\nserver_password = \"{APP_PASSWORD}\"\n"
        )
    }

    /// pgsplit with `pool` as the keys of `[pool]` (transaction mode unless they say
    /// otherwise) and the trust user; read-your-writes is off so placement depends on the
    /// statement alone.
    pub async fn pooled_proxy(pool: &str) -> TestProxy {
        TestProxy::start_with(
            "",
            &format!(
                "[routing]\nread_your_writes = \"off\"\n\n[pool]\n{pool}\n{}",
                trust_user()
            ),
        )
        .await
    }

    /// The first column of the first row of a simple query (`"NULL"` for NULL).
    pub async fn first(
        client: &Client,
        sql: &str,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        Ok(client
            .simple_query(sql)
            .await?
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
                _ => None,
            }))
    }

    /// Runs SQL as the superuser in `database` on the primary and waits for the standbys.
    pub fn on_primary_as_superuser(database: &str, sql: &str) {
        cluster().sql(0, database, sql).unwrap();
        for i in 1..cluster().nodes().len() {
            cluster().wait_for_replay(i).unwrap();
        }
    }

    /// [`on_primary_as_superuser`] in database `postgres`.
    pub fn su(sql: &str) {
        on_primary_as_superuser("postgres", sql);
    }

    /// [`on_primary_as_superuser`] in database `app`.
    pub fn su_app(sql: &str) {
        on_primary_as_superuser("app", sql);
    }
}
