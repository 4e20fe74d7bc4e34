//! Configuration: the TOML schema with defaults, validation with messages that name the
//! key, and where it is read from: a file and `PGSPLIT_*` environment variables (`env.rs`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::auth::{AuthMethod, Secret};
use crate::balance::{PrimaryReads, Strategy};
use crate::hba::{self, Method, Names, Network, Rule};
use crate::tls::ServerTls;

mod env;
mod source;

pub use source::ConfigSource;

/// A configuration problem, naming the key and saying what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// The parser's message, with line and key.
        message: String,
    },
    /// An environment variable is unknown, clashes with another or cannot be converted.
    #[error("{var}: {message}")]
    Env {
        /// The variable (or variables), e.g. `PGSPLIT_MAX_LAG_BYTES`.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `nodes[1].address`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A TOML error as one line: where it is and what is wrong, without the source line the
/// parser would quote, and without the value when it is a password's (the parser echoes
/// values it cannot take, and a mistyped password must not reach a log or a terminal).
pub(crate) fn toml_error(e: &toml::de::Error, text: Option<&str>) -> String {
    let message = e.message().trim_end();
    let Some((text, span)) = text.zip(e.span()) else {
        // No source: the error ends with the key (`…\nin `users.password``).
        let full = e.to_string();
        return match full.trim_end().rsplit_once("in `") {
            Some((_, key)) if key.contains("password") => {
                format!("`{key}: malformed (not shown: it is a password)")
            }
            _ => full.trim_end().replace('\n', " "),
        };
    };
    let start = text.floor_char_boundary(span.start.min(text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    if text[line_start..line_end].contains("password") {
        format!("line {line}, column {column}: malformed (not shown: it is a password)")
    } else {
        format!(
            "line {line}, column {column}: {}",
            message.replace('\n', " ")
        )
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration. Every key is documented in `config/pgsplit.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to. Default `127.0.0.1:6432`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Most clients connected at once; more get SQLSTATE 53300. Default 1000.
    #[serde(default = "default_max_client_conn")]
    pub max_client_conn: usize,
    /// Time a client has to send its startup packet and authenticate. Default 10 s.
    #[serde(default = "default_auth_timeout", with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Time a write to a client may make no progress (the client reads nothing) before
    /// its session ends and the server connection answering it is closed. Default 60 s;
    /// `0s` = never.
    #[serde(default = "default_client_write_timeout", with = "humantime_serde")]
    pub client_write_timeout: Duration,
    /// Time running queries get to finish on shutdown before clients are cut off. Default 30 s.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A client idle inside a transaction this long is disconnected with 25P03 and its
    /// transaction rolled back, freeing the server connection; zero (default) turns it off.
    #[serde(default, with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
    /// Time to open a server connection, including its authentication. Default 5 s.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest protocol message accepted from a client or server, in bytes, length field
    /// included. Default 1073741822, PostgreSQL's own limit (PQ_LARGE_MESSAGE_LIMIT):
    /// buffers grow with the bytes that arrive, not with a message's announced length.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Largest startup packet accepted, in bytes; a longer one gets 08P01. Default 10000,
    /// PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
    #[serde(default = "default_max_startup_packet_size")]
    pub max_startup_packet_size: usize,
    /// Most clients logged in at once as one user (0: no limit, the default); more get
    /// 53300 after authenticating, as with PostgreSQL's role connection limit. A user's own
    /// `max_connections` overrides it.
    #[serde(default)]
    pub max_user_connections: usize,
    /// Most clients connected at once to one database (0: no limit, the default); more
    /// get 53300 after authenticating.
    #[serde(default)]
    pub max_db_connections: usize,
    /// TLS toward clients: `disable` (default), `allow` (TLS when the client asks) or
    /// `require` (plaintext clients are refused).
    #[serde(default)]
    pub tls_mode: TlsMode,
    /// PEM certificate chain presented to clients (RSA or ECDSA).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// PEM private key of that certificate.
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// PEM CA certificates that client certificates must chain to (with `verify_client`).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Whether clients must present a certificate signed by `tls_ca_file`. Default false.
    #[serde(default)]
    pub verify_client: bool,
    /// TLS toward the servers, as libpq's `sslmode`: `disable`, `prefer` (default),
    /// `require`, `verify-ca`, `verify-full`; a node may override it.
    #[serde(default)]
    pub server_tls: ServerTlsMode,
    /// PEM CA certificates the servers' certificates must chain to (verify-ca, verify-full).
    #[serde(default)]
    pub server_tls_ca_file: Option<String>,
    /// How pgsplit watches the cluster.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// Where statements go.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Server connection pools.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Users (from `users`) allowed into the admin console, the virtual database
    /// `pgsplit`. Default: none, so the console is closed.
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `info,pgsplit::topology=debug`.
    /// Default `info`; `RUST_LOG`, when set, wins.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Log lines as `text` (default, for people) or `json` (one object per line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// The Prometheus endpoint and container probes.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The PostgreSQL servers: one primary and any number of hot standbys.
    pub nodes: Vec<NodeConfig>,
    /// Users clients may log in as.
    pub users: Vec<UserConfig>,
    /// Access rules, checked in order like `pg_hba.conf`. Default: none, so each user's
    /// own `auth_method` applies to every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hba: Vec<HbaConfig>,
}

/// One access rule (`[[hba]]`); the first rule matching a client's address, database and
/// user decides.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HbaConfig {
    /// Client addresses: `all` (default) or a CIDR block such as `10.0.0.0/8`, `::1/128`.
    #[serde(default = "default_all")]
    pub address: String,
    /// A database name, `all` (default) or a list of names.
    #[serde(default)]
    pub database: NameList,
    /// A user name, `all` (default) or a list of names.
    #[serde(default)]
    pub user: NameList,
    /// `scram-sha-256`, `md5`, `trust`, `cert` or `reject`. Kept as text so that a wrong
    /// name is reported with its key (`hba[2].method`).
    pub method: String,
}

/// One name or a list of names, as `database` and `user` of an access rule take.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NameList {
    /// A single name (or `all`).
    One(String),
    /// Several names.
    Many(Vec<String>),
}

impl Default for NameList {
    fn default() -> Self {
        NameList::One(default_all())
    }
}

impl NameList {
    /// The names, checked to be non-empty; errors name `key`.
    fn names(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let names = match self {
            NameList::One(name) => vec![name.clone()],
            NameList::Many(names) => names.clone(),
        };
        if names.is_empty() {
            return Err(invalid(
                key,
                "the list is empty: name at least one, or \"all\"",
            ));
        }
        if names.iter().any(String::is_empty) {
            return Err(invalid(key, "a name is empty"));
        }
        Ok(names)
    }
}

/// The HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve on, e.g. `127.0.0.1:9930`. Default: none (no endpoint).
    #[serde(default)]
    pub listen: Option<String>,
}

/// How log lines are written (also `--log-format` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of the topology monitor.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Role the monitor logs in as (needs `pg_monitor`). Default `monitor`.
    #[serde(default = "default_monitor_user")]
    pub user: String,
    /// Its password. Default empty (for trust or peer setups).
    #[serde(default)]
    pub password: String,
    /// Database the monitor connects to. Default `postgres`.
    #[serde(default = "default_monitor_database")]
    pub database: String,
    /// How often every node is checked. Default 500 ms.
    #[serde(default = "default_lag_check_interval", with = "humantime_serde")]
    pub lag_check_interval: Duration,
    /// Bound on one check (its queries, and connecting when shorter than
    /// `connect_timeout`). Default 2 s.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
    /// A standby further behind the primary than this many bytes of WAL stops serving
    /// reads; 0 turns the byte bound off. Default 16 MiB.
    #[serde(default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
    /// A standby whose replay is older than this stops serving reads; zero turns the
    /// time bound off. Default 10 s.
    #[serde(default = "default_max_lag_time", with = "humantime_serde")]
    pub max_lag_time: Duration,
    /// Byte lag a lagging standby must be back under to serve reads again.
    /// Default: half of `max_lag_bytes`.
    #[serde(default)]
    pub readmit_lag_bytes: Option<u64>,
    /// Time lag a lagging standby must be back under to serve reads again.
    /// Default: half of `max_lag_time`.
    #[serde(default, with = "humantime_serde")]
    pub readmit_lag_time: Option<Duration>,
    /// Consecutive checks a lagging standby must pass under both re-admit bounds. Default 2.
    #[serde(default = "default_readmit_after_polls")]
    pub readmit_after_polls: u32,
    /// Longest a failing node is left unchecked; bans start at `lag_check_interval` and
    /// double per consecutive failure up to this. Default 30 s.
    #[serde(default = "default_max_ban", with = "humantime_serde")]
    pub max_ban: Duration,
}

impl MonitorConfig {
    /// `readmit_lag_bytes` with its default (half the bound) applied.
    pub fn readmit_bytes(&self) -> u64 {
        self.readmit_lag_bytes.unwrap_or(self.max_lag_bytes / 2)
    }

    /// `readmit_lag_time` with its default (half the bound) applied.
    pub fn readmit_time(&self) -> Duration {
        self.readmit_lag_time.unwrap_or(self.max_lag_time / 2)
    }

    /// Checks the lag and ban settings against each other.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(readmit) = self.readmit_lag_bytes {
            if self.max_lag_bytes == 0 {
                return Err(invalid(
                    "monitor.readmit_lag_bytes",
                    "has no effect while monitor.max_lag_bytes = 0 (byte bound off); remove it",
                ));
            }
            if readmit > self.max_lag_bytes {
                return Err(invalid(
                    "monitor.readmit_lag_bytes",
                    format!(
                        "{readmit} is above monitor.max_lag_bytes ({}): a standby must be re-admitted under the bound that excluded it",
                        self.max_lag_bytes
                    ),
                ));
            }
        }
        if let Some(readmit) = self.readmit_lag_time {
            if self.max_lag_time.is_zero() {
                return Err(invalid(
                    "monitor.readmit_lag_time",
                    "has no effect while monitor.max_lag_time = \"0s\" (time bound off); remove it",
                ));
            }
            if readmit > self.max_lag_time {
                return Err(invalid(
                    "monitor.readmit_lag_time",
                    format!(
                        "{readmit:?} is above monitor.max_lag_time ({:?}): a standby must be re-admitted under the bound that excluded it",
                        self.max_lag_time
                    ),
                ));
            }
        }
        if self.readmit_after_polls == 0 {
            return Err(invalid("monitor.readmit_after_polls", "must be at least 1"));
        }
        if self.max_ban < self.lag_check_interval {
            return Err(invalid(
                "monitor.max_ban",
                format!(
                    "{:?} is shorter than monitor.lag_check_interval ({:?}), where bans start",
                    self.max_ban, self.lag_check_interval
                ),
            ));
        }
        Ok(())
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            user: default_monitor_user(),
            password: String::new(),
            database: default_monitor_database(),
            lag_check_interval: default_lag_check_interval(),
            query_timeout: default_query_timeout(),
            max_lag_bytes: default_max_lag_bytes(),
            max_lag_time: default_max_lag_time(),
            readmit_lag_bytes: None,
            readmit_lag_time: None,
            readmit_after_polls: default_readmit_after_polls(),
            max_ban: default_max_ban(),
        }
    }
}

/// Routing and read balancing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// How an explicit transaction picks its node: `read_only` (default: only read-only
    /// transactions go to a standby) or `first_statement` (a transaction whose first
    /// statement is a read goes to a standby; a later write in it fails there).
    #[serde(default)]
    pub transaction_routing: TransactionRouting,
    /// How reads are spread: `weighted_round_robin` (default), `least_outstanding`, `random`.
    #[serde(default)]
    pub balance_strategy: Strategy,
    /// Whether the primary serves reads: `never`, `fallback` (default), `always`.
    #[serde(default)]
    pub primary_reads: PrimaryReads,
    /// Classified statement shapes kept in memory; 0 disables the cache. Default 10000.
    #[serde(default = "default_classify_cache_size")]
    pub classify_cache_size: usize,
    /// Functions that may run on a standby whatever the catalog says (`name` or `schema.name`).
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Functions that always send their statement to the primary.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// How often function volatility is re-read from `pg_proc`. Default 60 s.
    #[serde(
        default = "default_function_refresh_interval",
        with = "humantime_serde"
    )]
    pub function_refresh_interval: Duration,
    /// `session` (default): after a client's write commits, its reads go only to standbys
    /// that have replayed it; `off`: reads may see a standby's older snapshot.
    #[serde(default)]
    pub read_your_writes: ReadYourWrites,
}

/// Server connection pools: one per (node, server user, database).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `transaction` (default): a server connection serves one transaction or autocommit
    /// statement, then goes back; `session`: a client keeps its connections until it leaves.
    #[serde(default)]
    pub mode: PoolMode,
    /// Connections each pool keeps open even when idle. Default 0.
    #[serde(default)]
    pub min_pool_size: usize,
    /// Most connections a pool opens. Default 20.
    #[serde(default = "default_max_pool_size")]
    pub max_pool_size: usize,
    /// An idle connection above `min_pool_size` is closed after this long. Default 60 s.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection is closed once this old, when next idle. Default 1 h.
    #[serde(default = "default_server_lifetime", with = "humantime_serde")]
    pub server_lifetime: Duration,
    /// Longest a request waits for a free connection; then it fails with 53300. Default 5 s.
    #[serde(default = "default_checkout_timeout", with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// A connection idle longer than this is checked with a round trip before reuse. Default 30 s.
    #[serde(default = "default_server_check_delay", with = "humantime_serde")]
    pub server_check_delay: Duration,
    /// Prepared statements each server connection keeps; the least recently used is
    /// closed beyond this. Default 500.
    #[serde(default = "default_prepared_statements_cache_size")]
    pub prepared_statements_cache_size: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::default(),
            min_pool_size: 0,
            max_pool_size: default_max_pool_size(),
            idle_timeout: default_idle_timeout(),
            server_lifetime: default_server_lifetime(),
            checkout_timeout: default_checkout_timeout(),
            server_check_delay: default_server_check_delay(),
            prepared_statements_cache_size: default_prepared_statements_cache_size(),
        }
    }
}

/// Whether clients speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// SSLRequest is answered `N`.
    #[default]
    Disable,
    /// TLS for clients that ask for it.
    Allow,
    /// Only TLS clients are served.
    Require,
}

/// TLS toward a server, with libpq's `sslmode` meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified; plain otherwise.
    #[default]
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS with a certificate chaining to `server_tls_ca_file`.
    VerifyCa,
    /// As verify-ca, and the certificate names the host.
    VerifyFull,
}

impl ServerTlsMode {
    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// How long a client holds a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// For one transaction or autocommit statement (pins hold it longer).
    #[default]
    Transaction,
    /// For the client's whole session.
    Session,
}

/// Whether a client reads its own writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// Reads after a write wait for a standby that has replayed it (or use the primary).
    #[default]
    Session,
    /// No guarantee beyond the lag bounds.
    Off,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            transaction_routing: TransactionRouting::default(),
            balance_strategy: Strategy::default(),
            primary_reads: PrimaryReads::default(),
            classify_cache_size: default_classify_cache_size(),
            read_only_functions: Vec::new(),
            write_functions: Vec::new(),
            function_refresh_interval: default_function_refresh_interval(),
            read_your_writes: ReadYourWrites::default(),
        }
    }
}

/// How an explicit transaction is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionRouting {
    /// Read-only transactions on a standby, all others on the primary.
    #[default]
    ReadOnly,
    /// By the transaction's first statement.
    FirstStatement,
}

/// One PostgreSQL server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name in logs and the admin console; for standbys, the `application_name`
    /// in their `primary_conninfo`. Default `node<index>`.
    pub name: Option<String>,
    /// `host:port` of the server.
    pub address: String,
    /// Share of reads relative to other standbys. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// TLS toward this node; default: the top-level `server_tls`.
    #[serde(default)]
    pub server_tls: Option<ServerTlsMode>,
}

/// One user clients may authenticate as.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name clients send in their startup packet.
    pub name: String,
    /// Plaintext password, a `SCRAM-SHA-256$…` verifier, or an `md5…` hash.
    #[serde(default)]
    pub password: String,
    /// How clients prove who they are: `scram-sha-256` (default), `md5` or `trust`.
    #[serde(default)]
    pub auth_method: AuthMethod,
    /// Role pgsplit logs in as on the servers. Default: `name`.
    pub server_user: Option<String>,
    /// Password for `server_user`. Default: `password` when it is plaintext.
    pub server_password: Option<String>,
    /// Most clients logged in at once as this user (0: no limit); default: the top-level
    /// `max_user_connections`.
    pub max_connections: Option<usize>,
}

/// How a password shows in `{:?}` output: never its value, so a struct printed into a
/// log line cannot leak it; only whether one is set.
pub(crate) fn redacted(password: &str) -> &'static str {
    if password.is_empty() {
        "(empty)"
    } else {
        "(redacted)"
    }
}

// Debug by hand for the structs holding passwords (and, through them, `Config` and
// `Settings`): a derived one would print them.
impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("database", &self.database)
            .field("lag_check_interval", &self.lag_check_interval)
            .field("query_timeout", &self.query_timeout)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .field("max_lag_time", &self.max_lag_time)
            .field("readmit_lag_bytes", &self.readmit_lag_bytes)
            .field("readmit_lag_time", &self.readmit_lag_time)
            .field("readmit_after_polls", &self.readmit_after_polls)
            .field("max_ban", &self.max_ban)
            .finish()
    }
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &redacted(&self.password))
            .field("auth_method", &self.auth_method)
            .field("server_user", &self.server_user)
            .field(
                "server_password",
                &self.server_password.as_deref().map(redacted),
            )
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("method", &self.method)
            .field("secret", &self.secret)
            .field("server_user", &self.server_user)
            .field("server_password", &redacted(&self.server_password))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

fn default_all() -> String {
    "all".into()
}
fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_max_client_conn() -> usize {
    1000
}
fn default_auth_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_client_write_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_message_size() -> usize {
    // PostgreSQL's PQ_LARGE_MESSAGE_LIMIT: MaxAllocSize (1 GiB - 1) minus 1.
    (1 << 30) - 2
}
fn default_max_startup_packet_size() -> usize {
    crate::protocol::MAX_STARTUP_PACKET
}
fn default_monitor_user() -> String {
    "monitor".into()
}
fn default_monitor_database() -> String {
    "postgres".into()
}
fn default_lag_check_interval() -> Duration {
    Duration::from_millis(500)
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_lag_bytes() -> u64 {
    16 << 20
}
fn default_max_lag_time() -> Duration {
    Duration::from_secs(10)
}
fn default_readmit_after_polls() -> u32 {
    2
}
fn default_max_ban() -> Duration {
    Duration::from_secs(30)
}
fn default_classify_cache_size() -> usize {
    10_000
}
fn default_function_refresh_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_pool_size() -> usize {
    20
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_server_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_server_check_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_prepared_statements_cache_size() -> usize {
    500
}
fn default_weight() -> u32 {
    1
}

/// A user ready for authentication: secrets derived once at load time.
#[derive(Clone)]
pub struct User {
    /// Client-facing name.
    pub name: String,
    /// Client authentication method.
    pub method: AuthMethod,
    /// What the client must prove.
    pub secret: Secret,
    /// Role on the servers.
    pub server_user: String,
    /// Password on the servers.
    pub server_password: String,
    /// Most clients logged in as this user at once; 0: no limit.
    pub max_connections: usize,
}

/// A node with its name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Read weight.
    pub weight: u32,
}

/// The settings every part reads its current copy from; a reload swaps them.
pub type SharedSettings = std::sync::Arc<arc_swap::ArcSwap<Settings>>;

/// A validated configuration: what the proxy runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file as written, for display and for settings that need no derivation.
    pub raw: Config,
    /// Listen address.
    pub listen: SocketAddr,
    /// Address of the metrics and probe endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Nodes with names.
    pub nodes: Vec<Node>,
    /// Users with derived secrets.
    pub users: Vec<User>,
    /// Access rules in order; empty: each user's own `auth_method`.
    pub hba: Vec<Rule>,
    /// TLS toward each node, by address.
    server_tls: HashMap<String, ServerTls>,
}

impl Settings {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Settings::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Settings, ConfigError> {
        let raw: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "config".into(),
            message: toml_error(&e, Some(text)),
        })?;
        Settings::validate(raw)
    }

    /// Checks a parsed configuration and derives what the proxy needs.
    pub fn validate(raw: Config) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!(
                    "\"{}\" is not an IP address with a port, e.g. 127.0.0.1:6432",
                    raw.listen
                ),
            )
        })?;
        if raw.max_client_conn == 0 {
            return Err(invalid("max_client_conn", "must be at least 1"));
        }
        if raw.max_message_size < 1024 {
            return Err(invalid("max_message_size", "must be at least 1024 bytes"));
        }
        // The length field is a signed 32-bit integer: a larger limit could never bind.
        if raw.max_message_size > i32::MAX as usize {
            return Err(invalid(
                "max_message_size",
                format!("must be at most {} bytes", i32::MAX),
            ));
        }
        // A StartupMessage naming a user and a database needs a few dozen bytes.
        if !(64..=i32::MAX as usize).contains(&raw.max_startup_packet_size) {
            return Err(invalid(
                "max_startup_packet_size",
                format!("must be between 64 and {} bytes", i32::MAX),
            ));
        }
        for (key, value) in [
            ("auth_timeout", raw.auth_timeout),
            ("connect_timeout", raw.connect_timeout),
            ("monitor.lag_check_interval", raw.monitor.lag_check_interval),
            ("monitor.query_timeout", raw.monitor.query_timeout),
            (
                "routing.function_refresh_interval",
                raw.routing.function_refresh_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("pool.checkout_timeout", raw.pool.checkout_timeout),
            ("pool.idle_timeout", raw.pool.idle_timeout),
            ("pool.server_lifetime", raw.pool.server_lifetime),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if raw.pool.max_pool_size == 0 {
            return Err(invalid("pool.max_pool_size", "must be at least 1"));
        }
        if raw.pool.min_pool_size > raw.pool.max_pool_size {
            return Err(invalid(
                "pool.min_pool_size",
                format!(
                    "{} is more than max_pool_size ({})",
                    raw.pool.min_pool_size, raw.pool.max_pool_size
                ),
            ));
        }
        if raw.pool.prepared_statements_cache_size == 0 {
            return Err(invalid(
                "pool.prepared_statements_cache_size",
                "must be at least 1",
            ));
        }
        if raw.verify_client && raw.tls_mode != TlsMode::Require {
            return Err(invalid(
                "verify_client",
                "needs tls_mode = \"require\": a plaintext client would present no certificate",
            ));
        }
        crate::tls::acceptor(&raw).map_err(|(key, message)| invalid(key, message))?;
        raw.monitor.validate()?;
        if raw.nodes.is_empty() {
            return Err(invalid("nodes", "at least one node is required"));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(raw.nodes.len());
        let mut server_tls = HashMap::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let key = format!("nodes[{i}]");
            check_host_port(&n.address).map_err(|m| invalid(format!("{key}.address"), m))?;
            let name = n.name.clone().unwrap_or_else(|| format!("node{i}"));
            if name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if nodes.iter().any(|m| m.name == name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("\"{name}\" is used twice"),
                ));
            }
            let mode = n.server_tls.unwrap_or(raw.server_tls);
            let tls = ServerTls::new(mode, raw.server_tls_ca_file.as_deref()).map_err(|m| {
                let key = if n.server_tls.is_some() {
                    format!("{key}.server_tls")
                } else {
                    "server_tls_ca_file".to_owned()
                };
                invalid(key, m)
            })?;
            server_tls.insert(n.address.clone(), tls);
            nodes.push(Node {
                name,
                address: n.address.clone(),
                weight: n.weight,
            });
        }
        if raw.users.is_empty() {
            return Err(invalid("users", "at least one user is required"));
        }
        for (i, name) in raw.admin_users.iter().enumerate() {
            if !raw.users.iter().any(|u| &u.name == name) {
                return Err(invalid(
                    format!("admin_users[{i}]"),
                    format!("\"{name}\" is not one of the users"),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log_level)
            .map_err(|e| invalid("log_level", format!("\"{}\": {e}", raw.log_level)))?;
        let metrics_listen = match &raw.metrics.listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("\"{text}\" is not an IP address with a port, e.g. 127.0.0.1:9930"),
                )
            })?),
        };
        let mut users: Vec<User> = Vec::with_capacity(raw.users.len());
        for (i, u) in raw.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if users.iter().any(|v| v.name == u.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("\"{}\" is listed twice", u.name),
                ));
            }
            let secret = Secret::from_config(&u.name, &u.password, u.auth_method)
                .map_err(|m| invalid(format!("{key}.password"), m))?;
            let server_password = match (&u.server_password, secret.plaintext()) {
                (Some(p), _) => p.clone(),
                (None, Some(p)) => p.to_owned(),
                (None, None) if u.password.is_empty() => String::new(),
                (None, None) => {
                    return Err(invalid(
                        format!("{key}.server_password"),
                        "required when password is a hash or verifier: pgsplit needs a password to log in to the servers",
                    ))
                }
            };
            users.push(User {
                name: u.name.clone(),
                method: u.auth_method,
                secret,
                server_user: u.server_user.clone().unwrap_or_else(|| u.name.clone()),
                server_password,
                max_connections: u.max_connections.unwrap_or(raw.max_user_connections),
            });
        }
        let hba = hba_rules(&raw, &users)?;
        Ok(Settings {
            listen,
            metrics_listen,
            nodes,
            users,
            hba,
            raw,
            server_tls,
        })
    }

    /// TLS toward the server at `address` (none for an address not configured).
    pub fn server_tls(&self, address: &str) -> ServerTls {
        self.server_tls
            .get(address)
            .cloned()
            .unwrap_or_else(ServerTls::disabled)
    }

    /// The user clients name in their startup packet.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// Validates the access rules; errors name the rule's key (`hba[2].address`).
fn hba_rules(raw: &Config, users: &[User]) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw.hba.len());
    for (i, r) in raw.hba.iter().enumerate() {
        let key = format!("hba[{i}]");
        let network =
            Network::parse(&r.address).map_err(|m| invalid(format!("{key}.address"), m))?;
        let method = Method::parse(&r.method).map_err(|m| invalid(format!("{key}.method"), m))?;
        if method == Method::Cert && !raw.verify_client {
            return Err(invalid(
                format!("{key}.method"),
                "\"cert\" needs verify_client = true (and tls_mode = \"require\"): only a verified client certificate can vouch for the user",
            ));
        }
        let databases = r.database.names(&format!("{key}.database"))?;
        let user_names = r.user.names(&format!("{key}.user"))?;
        // A rule naming a user whose password cannot check the rule's method would refuse
        // that user at every login: say so now. (A rule for `all` is checked per login.)
        for name in &user_names {
            if let Some(u) = users.iter().find(|u| &u.name == name) {
                if !hba::secret_allows(&u.secret, method) {
                    return Err(invalid(
                        format!("{key}.user"),
                        format!(
                            "\"{name}\" has a password hash or verifier that cannot check {}",
                            r.method
                        ),
                    ));
                }
            }
        }
        rules.push(Rule {
            network,
            databases: Names::new(databases),
            users: Names::new(user_names),
            method,
        });
    }
    Ok(rules)
}

fn check_host_port(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{address}\" is not host:port"))?;
    if host.is_empty() {
        return Err(format!("\"{address}\" has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("\"{address}\" has no valid port (1-65535)")),
    }
}

#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod tests;
