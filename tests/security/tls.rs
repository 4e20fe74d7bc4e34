//! TLS toward clients: psql with `sslmode=verify-full` against a test CA, `require`
//! refusing plaintext clients, pgbench over TLS, and a broken handshake that leaves
//! everyone else served. Certificates are generated per run; no key is committed.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::{cluster, text, TestProxy};
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test CA and a certificate for `localhost` / 127.0.0.1 signed by it, as PEM files.
fn certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let name = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = name("pgsplit test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params.distinguished_name = name("localhost");
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    // A client certificate from the same CA; libpq wants its key private to the user.
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client_params.distinguished_name = name(APP_USER);
    let client_key = KeyPair::generate().expect("client key");
    let client = client_params
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client certificate");
    std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
    let key_file = dir.join("client.key");
    std::fs::write(&key_file, client_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn tls_proxy(dir: &Path, mode: &str) -> TestProxy {
    let top = format!(
        "tls_mode = \"{mode}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        dir.join("server.pem").display(),
        dir.join("server.key").display()
    );
    TestProxy::start_with(&top, "").await
}

/// psql through the proxy at `host` with the given sslmode (and more conninfo `extra`).
fn psql(proxy: &TestProxy, dir: &Path, host: &str, sslmode: &str, sql: &str) -> Output {
    psql_with(proxy, dir, &format!("host={host} sslmode={sslmode}"), sql)
}

fn psql_with(proxy: &TestProxy, dir: &Path, extra: &str, sql: &str) -> Output {
    let conninfo = format!(
        "{extra} port={} user={APP_USER} dbname={APP_DATABASE} sslrootcert={}",
        proxy.addr.port(),
        dir.join("ca.pem").display()
    );
    Command::new(cluster().pg_bin().join("psql"))
        .args(["-X", "-A", "-t", "-d", &conninfo, "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .expect("run psql")
}

#[tokio::test]
async fn psql_verifies_the_proxy_certificate_and_plaintext_is_refused_under_require() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let proxy = tls_proxy(dir.path(), "require").await;

    let out = psql(
        &proxy,
        dir.path(),
        "localhost",
        "verify-full",
        "SELECT 'over tls'",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");

    let out = psql(&proxy, dir.path(), "127.0.0.1", "disable", "SELECT 1");
    assert!(!out.status.success(), "a plaintext client was served");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("accepts only TLS"),
        "{}",
        text(&out)
    );

    // A certificate for another name fails verify-full: the check is real.
    let other = tempfile::tempdir().unwrap();
    certificates(other.path());
    let out = psql(&proxy, other.path(), "localhost", "verify-full", "SELECT 1");
    assert!(
        !out.status.success(),
        "verify-full accepted a certificate from an unknown CA"
    );
}

#[tokio::test]
async fn pgbench_runs_over_tls_and_allow_serves_both_kinds_of_client() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let proxy = tls_proxy(dir.path(), "allow").await;
    for sslmode in ["disable", "require"] {
        let out = psql(&proxy, dir.path(), "127.0.0.1", sslmode, "SELECT 2");
        assert!(out.status.success(), "{sslmode}: {}", text(&out));
    }
    tokio::task::spawn_blocking(|| cluster().pgbench_init(1).unwrap())
        .await
        .unwrap();
    let out = Command::new(cluster().pg_bin().join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.addr.port().to_string(),
            "-U",
            APP_USER,
        ])
        .args(["-n", "-S", "-c", "4", "-j", "2", "-T", "3", APP_DATABASE])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "require")
        .output()
        .expect("run pgbench");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.contains("number of failed transactions: 0 "),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn garbage_after_sslrequest_ends_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let proxy = tls_proxy(dir.path(), "require").await;
    let mut broken = TcpStream::connect(proxy.addr).await.unwrap();
    broken
        .write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    broken.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    broken
        .write_all(b"this is not a TLS ClientHello")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        broken.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the broken handshake was not ended");

    let out = psql(&proxy, dir.path(), "localhost", "verify-full", "SELECT 3");
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn scram_channel_binding_is_offered_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let proxy = tls_proxy(dir.path(), "allow").await;
    let bound = "host=localhost sslmode=verify-full channel_binding=require";
    let out = psql_with(&proxy, dir.path(), bound, "SELECT 'bound'");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bound");
    // Without TLS there is nothing to bind to: libpq refuses, as against PostgreSQL.
    let plain = "host=127.0.0.1 sslmode=disable channel_binding=require";
    let out = psql_with(&proxy, dir.path(), plain, "SELECT 1");
    assert!(
        !out.status.success(),
        "channel binding without TLS: {}",
        text(&out)
    );
}

/// Turns TLS on in node `i` of `cluster` with a certificate for 127.0.0.1 from the CA
/// in `dir`.
fn enable_server_tls(cluster: &pgsplit_cluster::Cluster, i: usize, dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data = &cluster.nodes()[i].data_dir;
    let owner = std::fs::metadata(data).unwrap();
    for (from, to) in [("server.pem", "server.crt"), ("server.key", "server.key")] {
        let target = data.join(to);
        std::fs::copy(dir.join(from), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    cluster
        .sql(i, "postgres", "ALTER SYSTEM SET ssl = on")
        .unwrap();
    cluster
        .sql(i, "postgres", "SELECT pg_reload_conf()")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
}

async fn try_login(address: &str, tls: &pgsplit::tls::ServerTls) -> Result<(), String> {
    let login = pgsplit::backend::Login {
        address,
        user: APP_USER,
        password: APP_PASSWORD,
        database: APP_DATABASE,
        params: &[],
        tls,
    };
    pgsplit::backend::ServerConn::connect(&login, std::time::Duration::from_secs(5), 1 << 20)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_modes_follow_libpq_and_a_wrong_ca_fails_clearly() {
    use pgsplit::config::ServerTlsMode as Mode;
    use pgsplit::tls::ServerTls;
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let wrong = tempfile::tempdir().unwrap();
    certificates(wrong.path());
    let cluster = common::own_cluster().await;
    let primary = cluster.nodes()[0].address();
    let standby = cluster.nodes()[1].address();
    {
        let cluster = &cluster;
        let dir = dir.path().to_path_buf();
        tokio::task::block_in_place(|| enable_server_tls(cluster, 0, &dir));
    }
    let ca = dir.path().join("ca.pem").display().to_string();
    let wrong_ca = wrong.path().join("ca.pem").display().to_string();
    let tls = |mode, ca: &str| ServerTls::new(mode, Some(ca)).unwrap();

    for mode in [
        Mode::Prefer,
        Mode::Require,
        Mode::VerifyCa,
        Mode::VerifyFull,
    ] {
        try_login(&primary, &tls(mode, &ca))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", mode.name()));
    }
    let refused = try_login(&primary, &tls(Mode::VerifyFull, &wrong_ca)).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("certificate")),
        "verify-full with a wrong CA: {refused:?}"
    );
    // The standby has no TLS: prefer goes on in plain TCP, require refuses.
    try_login(&standby, &tls(Mode::Prefer, &ca)).await.unwrap();
    let refused = try_login(&standby, &tls(Mode::Require, &ca)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("does not accept TLS")),
        "require without TLS on the server: {refused:?}"
    );

    // Through pgsplit, with verify-full toward the primary: its backends see TLS.
    let tables = "[routing]\nread_your_writes = \"off\"\n";
    let top = format!("server_tls = \"prefer\"\nserver_tls_ca_file = \"{ca}\"");
    let base = pgsplit::demo::config_text(&cluster, "127.0.0.1:0");
    let text = format!("{top}\n{base}\n{tables}").replacen(
        &format!("address = \"{primary}\""),
        &format!("address = \"{primary}\"\nserver_tls = \"verify-full\""),
        1,
    );
    assert!(text.contains("server_tls = \"verify-full\""), "{text}");
    let settings = pgsplit::settings::Settings::parse(&text).unwrap();
    let handle = pgsplit::proxy::start(settings).await.unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DATABASE}",
        handle.local_addr().port()
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid() /* pgsplit:primary */",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "true");
    drop(client);
    handle.shutdown().await;
}

#[tokio::test]
async fn new_certificate_files_serve_new_connections_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let proxy = tls_proxy(dir.path(), "require").await;
    let first_ca = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("ca.pem"), first_ca.path().join("ca.pem")).unwrap();

    // New files from another CA replace the old ones on disk.
    let next = tempfile::tempdir().unwrap();
    certificates(next.path());
    for file in ["server.pem", "server.key", "ca.pem"] {
        std::fs::copy(next.path().join(file), dir.path().join(file)).unwrap();
    }
    let out = psql(
        &proxy,
        first_ca.path(),
        "localhost",
        "verify-full",
        "SELECT 1",
    );
    assert!(
        out.status.success(),
        "before the reload the old certificate serves: {}",
        text(&out)
    );

    proxy.reload_tls().expect("reload");
    let out = psql(&proxy, next.path(), "localhost", "verify-full", "SELECT 1");
    assert!(out.status.success(), "after the reload: {}", text(&out));
    let out = psql(
        &proxy,
        first_ca.path(),
        "localhost",
        "verify-full",
        "SELECT 1",
    );
    assert!(
        !out.status.success(),
        "the old certificate still served after the reload"
    );
}

/// TLS required, with client certificates checked against the test CA in `dir`.
fn verify_client_config(dir: &std::path::Path) -> String {
    format!(
        "tls_mode = \"require\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
         verify_client = true\ntls_ca_file = \"{}\"",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("ca.pem").display()
    )
}

#[tokio::test]
async fn verify_client_admits_only_clients_with_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let top = verify_client_config(dir.path());
    let proxy = TestProxy::start_with(&top, "").await;
    let with_cert = format!(
        "host=localhost sslmode=verify-full sslcert={} sslkey={}",
        dir.path().join("client.pem").display(),
        dir.path().join("client.key").display()
    );
    let out = psql_with(&proxy, dir.path(), &with_cert, "SELECT 'certified'");
    assert!(out.status.success(), "{}", text(&out));
    let out = psql_with(
        &proxy,
        dir.path(),
        "host=localhost sslmode=verify-full sslcert=/nonexistent sslkey=/nonexistent",
        "SELECT 1",
    );
    assert!(
        !out.status.success(),
        "a client without a certificate was admitted"
    );
}

#[tokio::test]
async fn a_cert_access_rule_admits_the_user_its_certificate_names_without_a_password() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let top = verify_client_config(dir.path());
    let tables = format!(
        "[[users]]\nname = \"other\"\npassword = \"other-pw\"\nserver_user = \"{APP_USER}\"\n\
         server_password = \"{APP_PASSWORD}\"\n[[hba]]\nmethod = \"cert\"\n"
    );
    let proxy = TestProxy::start_with(&top, &tables).await;
    // The client certificate's CN is APP_USER; the password given is wrong on purpose.
    let login = |user: &str| {
        let conninfo = format!(
            "host=localhost sslmode=verify-full sslrootcert={} sslcert={} sslkey={} port={} user={user} dbname={APP_DATABASE}",
            dir.path().join("ca.pem").display(),
            dir.path().join("client.pem").display(),
            dir.path().join("client.key").display(),
            proxy.addr.port(),
        );
        Command::new(cluster().pg_bin().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-d",
                &conninfo,
                "-c",
                "SELECT current_user",
            ])
            .env("PGPASSWORD", "wrong")
            .env("PGPASSFILE", "/nonexistent")
            .output()
            .expect("run psql")
    };
    let out = login(APP_USER);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), APP_USER);
    let out = login("other");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("certificate authentication failed for user \"other\""),
        "a certificate for {APP_USER} must not admit \"other\": {}",
        text(&out)
    );
}

/// A minimal rustls connector for tokio-postgres (what tokio-postgres-rustls does).
mod rustls_connector {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
    use tokio_postgres::Socket;

    #[derive(Clone)]
    pub struct Connector(pub Arc<rustls::ClientConfig>);

    impl MakeTlsConnect<Socket> for Connector {
        type Stream = Stream;
        type TlsConnect = Connect;
        type Error = io::Error;

        fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
            Ok(Connect(Arc::clone(&self.0), domain.to_owned()))
        }
    }

    pub struct Connect(Arc<rustls::ClientConfig>, String);

    impl TlsConnect<Socket> for Connect {
        type Stream = Stream;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

        fn connect(self, socket: Socket) -> Self::Future {
            Box::pin(async move {
                let name = ServerName::try_from(self.1)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = tokio_rustls::TlsConnector::from(self.0)
                    .connect(name, socket)
                    .await?;
                Ok(Stream(stream))
            })
        }
    }

    pub struct Stream(tokio_rustls::client::TlsStream<Socket>);

    impl TlsStream for Stream {
        fn channel_binding(&self) -> ChannelBinding {
            ChannelBinding::none()
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}

#[tokio::test]
async fn tokio_postgres_with_a_rustls_connector_queries_over_tls() {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let proxy = tls_proxy(dir.path(), "require").await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = rustls_connector::Connector(std::sync::Arc::new(config));
    let conninfo = format!(
        "host=localhost port={} user={APP_USER} password={APP_PASSWORD} dbname={APP_DATABASE} sslmode=require",
        proxy.addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, connector).await.unwrap();
    tokio::spawn(conn);
    let statement = client.prepare("SELECT $1::int * 2").await.unwrap();
    for i in 0..50 {
        let row = client.query_one(&statement, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
}

#[tokio::test]
async fn a_second_sslrequest_is_refused() {
    let proxy = TestProxy::start().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let ssl_request = [0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f];
    stream.write_all(&ssl_request).await.unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N", "TLS is disabled");
    stream.write_all(&ssl_request).await.unwrap();
    assert_eq!(
        common::raw::next_error(&mut stream).await.as_deref(),
        Some("0A000")
    );
}
