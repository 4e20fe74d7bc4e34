//! The other proxies of the comparison: HAProxy (a plain TCP relay in front of the
//! primary), and PgDog and PgCat configured for read/write splitting over the cluster.
//!
//! PgDog's files follow its documentation (`pgdog.toml`: `[general]`, `[[databases]]` with
//! `role`; `users.toml`: `[[users]]`), PgCat's its example `pgcat.toml` (`[pools.<db>]`,
//! `users.<n>`, `shards.<n>.servers`). Neither binary is installed where this was written,
//! so both configurations are untested.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgsplit_cluster::{Cluster, APP_DATABASE, APP_PASSWORD, APP_USER};

use super::support::{free_port, write_private, Proxy, Sizing};

/// An installed HAProxy.
pub struct Haproxy {
    /// The binary.
    pub bin: PathBuf,
    /// As it reports it, e.g. "2.6.12-1+deb12u3".
    pub version: String,
}

/// The HAProxy binary (`HAPROXY`, else on `PATH`, else `/usr/sbin`), or an error that says
/// how to install it.
pub fn find_haproxy() -> Result<Haproxy, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("HAPROXY") {
        Some(path) => vec![PathBuf::from(path)],
        None => vec!["haproxy".into(), "/usr/sbin/haproxy".into()],
    };
    for bin in candidates {
        let out = match Command::new(&bin).arg("-v").output() {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot run {}: {e}", bin.display())),
        };
        // "HAProxy version 2.6.12-1+deb12u3 2025/10/03 - https://haproxy.org/"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .next()
            .and_then(|l| l.split_once(" version "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| format!("unexpected `{} -v`: {text}", bin.display()))?;
        return Ok(Haproxy { bin, version });
    }
    Err(
        "haproxy is not installed, and this benchmark compares against it: install it \
         (`apt-get install -y haproxy` on Debian/Ubuntu) or point HAPROXY at its binary"
            .into(),
    )
}

/// Starts HAProxy in TCP mode in front of the primary: the cost of one extra hop and
/// nothing else.
pub fn start_haproxy(
    cluster: &Cluster,
    bin: &Path,
    dir: &Path,
    log: PathBuf,
    runtime: &tokio::runtime::Runtime,
) -> Result<Proxy, String> {
    let port = free_port()?;
    // Timeouts are long so that no idle pgbench connection is cut between phases.
    let config = format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
         frontend pgsplit_compare\n    bind 127.0.0.1:{port}\n    default_backend primary\n\n\
         backend primary\n    server primary 127.0.0.1:{primary}\n",
        primary = cluster.primary().port
    );
    let path = dir.join("haproxy.cfg");
    write_private(&path, &config, None)?;
    let mut cmd = Command::new(bin);
    // -db: stay in the foreground, so the process is the one that is stopped.
    cmd.arg("-db").arg("-f").arg(&path);
    Proxy::start("haproxy", cmd, port, log, runtime)
}

/// Starts PgDog: transaction pooling, reads on the replicas only.
pub fn start_pgdog(
    cluster: &Cluster,
    bin: &Path,
    sizing: Sizing,
    dir: &Path,
    log: PathBuf,
    runtime: &tokio::runtime::Runtime,
) -> Result<Proxy, String> {
    let port = free_port()?;
    let mut config = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = {port}\nworkers = 2\n\
         default_pool_size = {}\npooler_mode = \"transaction\"\n\
         read_write_split = \"exclude_primary\"\nprepared_statements = \"extended\"\n",
        sizing.pool_size
    );
    for node in cluster.nodes() {
        let role = role(cluster, node.port);
        config.push_str(&format!(
            "\n[[databases]]\nname = \"{APP_DATABASE}\"\nhost = \"127.0.0.1\"\nport = {}\n\
             role = \"{role}\"\ndatabase_name = \"{APP_DATABASE}\"\n",
            node.port
        ));
    }
    let users = format!(
        "[[users]]\nname = \"{APP_USER}\"\ndatabase = \"{APP_DATABASE}\"\n\
         password = \"{APP_PASSWORD}\"\n"
    );
    let (config_path, users_path) = (dir.join("pgdog.toml"), dir.join("users.toml"));
    write_private(&config_path, &config, None)?;
    write_private(&users_path, &users, None)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config_path)
        .arg("--users")
        .arg(&users_path)
        .current_dir(dir);
    Proxy::start("pgdog", cmd, port, log, runtime)
}

/// Starts PgCat: transaction pooling, its query parser sending reads to the replicas only.
pub fn start_pgcat(
    cluster: &Cluster,
    bin: &Path,
    sizing: Sizing,
    dir: &Path,
    log: PathBuf,
    runtime: &tokio::runtime::Runtime,
) -> Result<Proxy, String> {
    let port = free_port()?;
    let servers: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| {
            format!(
                "[\"127.0.0.1\", {}, \"{}\"]",
                node.port,
                role(cluster, node.port)
            )
        })
        .collect();
    let config = format!(
        "[general]\nhost = \"127.0.0.1\"\nport = {port}\nworker_threads = 2\n\
         enable_prometheus_exporter = false\nadmin_username = \"pgcat_admin\"\n\
         admin_password = \"pgcat-admin-pw\"\nprepared_statements = true\n\
         prepared_statements_cache_size = 500\n\n\
         [pools.{APP_DATABASE}]\npool_mode = \"transaction\"\ndefault_role = \"any\"\n\
         query_parser_enabled = true\nquery_parser_read_write_splitting = true\n\
         primary_reads_enabled = false\n\n\
         [pools.{APP_DATABASE}.users.0]\nusername = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n\
         pool_size = {pool}\n\n\
         [pools.{APP_DATABASE}.shards.0]\nservers = [{servers}]\ndatabase = \"{APP_DATABASE}\"\n",
        pool = sizing.pool_size,
        servers = servers.join(", ")
    );
    let path = dir.join("pgcat.toml");
    write_private(&path, &config, None)?;
    let mut cmd = Command::new(bin);
    cmd.arg(&path).current_dir(dir);
    Proxy::start("pgcat", cmd, port, log, runtime)
}

/// The role PgDog and PgCat are told a node has.
fn role(cluster: &Cluster, port: u16) -> &'static str {
    if port == cluster.primary().port {
        "primary"
    } else {
        "replica"
    }
}
