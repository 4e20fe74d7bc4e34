//! `pgsplit demo`: a throwaway local primary + hot standbys with pgsplit in front.

use crate::config::ConfigError;
use crate::context::Sources;
use crate::proxy;
use crate::settings::Settings;
use pgsplit_cluster::{
    Cluster, APP_DATABASE, APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER, SUPERUSER,
};
use std::io::Write;
use std::sync::Arc;

/// The embedded default configuration for a local cluster, as a config file would say it.
pub fn config_for(cluster: &Cluster, listen: &str) -> Result<Settings, ConfigError> {
    Settings::parse(&config_text(cluster, listen))
}

/// TOML text of the default configuration; it starts with a top-level key, so more
/// top-level keys may be put before it and more tables after it.
pub fn config_text(cluster: &Cluster, listen: &str) -> String {
    let mut text = format!(
        "listen = \"{listen}\"\n\n[monitor]\nuser = \"{MONITOR_USER}\"\npassword = \"{MONITOR_PASSWORD}\"\n\n\
         [[users]]\nname = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\n\
         [[users]]\nname = \"{SUPERUSER}\"\npassword = \"{}\"\n",
        cluster.superuser_password()
    );
    for node in cluster.nodes() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\naddress = \"{}\"\n",
            node.name,
            node.address()
        ));
    }
    text
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir`; the TOML keys that
/// serve it.
fn self_signed(dir: &std::path::Path) -> Result<String, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let (cert_file, key_file) = (dir.join("demo.pem"), dir.join("demo.key"));
    std::fs::write(&cert_file, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key_file, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok(format!(
        "tls_mode = \"allow\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    ))
}

/// Runs the demo until SIGINT/SIGTERM, then removes the cluster; with `tls`, clients may
/// also connect with TLS (a self-signed certificate made for the run).
pub async fn run(listen: &str, standbys: usize, tls: bool) -> Result<(), String> {
    println!("Starting a local PostgreSQL primary and {standbys} hot standbys…");
    let cluster = tokio::task::spawn_blocking(move || Cluster::with_standbys(standbys))
        .await
        .map_err(|e| format!("cluster setup panicked: {e}"))?
        .map_err(|e| format!("cannot start the local cluster: {e}"))?;
    cluster
        .pgbench_init(1)
        .map_err(|e| format!("cannot load pgbench tables: {e}"))?;
    let demo_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let tls_keys = if tls {
        self_signed(demo_dir.path())?
    } else {
        String::new()
    };
    // The configuration lives in a file, so it can be edited and reloaded (RELOAD in the
    // console, or SIGHUP) while the demo runs.
    let config_file = demo_dir.path().join("pgsplit.toml");
    let text = format!(
        "admin_users = [\"{APP_USER}\"]\n{tls_keys}{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        config_text(&cluster, listen)
    );
    std::fs::write(&config_file, text).map_err(|e| e.to_string())?;
    let settings = Settings::load(&config_file).map_err(|e| e.to_string())?;
    let reload_from = config_file.clone();
    let sources = Sources::new(
        Arc::new(move || Settings::load(&reload_from).map_err(|e| e.to_string())),
        None,
    );
    let proxy = proxy::start_with(settings, sources)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = proxy.local_addr();
    let (host, port) = (addr.ip(), addr.port());
    println!();
    println!("pgsplit is listening on {addr}. Connect with:");
    println!("  PGPASSWORD={APP_PASSWORD} psql -h {host} -p {port} -U {APP_USER} {APP_DATABASE}");
    println!("  PGPASSWORD={APP_PASSWORD} pgbench -h {host} -p {port} -U {APP_USER} -S -c 8 -T 20 {APP_DATABASE}");
    println!("  postgres://{APP_USER}:{APP_PASSWORD}@{host}:{port}/{APP_DATABASE}");
    if tls {
        println!("  postgres://{APP_USER}:{APP_PASSWORD}@{host}:{port}/{APP_DATABASE}?sslmode=require   (TLS, self-signed certificate)");
    }
    println!();
    println!(
        "admin  postgres://{APP_USER}:{APP_PASSWORD}@{host}:{port}/{}",
        crate::admin::DATABASE
    );
    if let Some(metrics) = proxy.metrics_addr() {
        println!("metrics  http://{metrics}/metrics");
    }
    println!(
        "config {}   (edit it, then RELOAD in the console)",
        config_file.display()
    );
    println!();
    println!("Nodes (direct connections, bypassing pgsplit):");
    for (i, node) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        println!(
            "  {role:<8} {}",
            node.uri(SUPERUSER, cluster.superuser_password(), "postgres")
        );
    }
    println!();
    println!("Press Ctrl-C to stop pgsplit and remove the cluster.");
    proxy.until_stopped().await;
    // Whoever watched stdout may be gone by now: a closed pipe must not stop the cleanup.
    let _ = writeln!(std::io::stdout(), "Stopping…");
    proxy.shutdown().await;
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .map_err(|e| format!("cluster teardown panicked: {e}"))?;
    Ok(())
}
