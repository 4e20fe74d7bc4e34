//! The schema: every key of the configuration file, with its default. Every key is
//! documented in `config/pgsplit.toml`; the named choices are in `modes.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::*;
use super::modes::{
    AuthMethod, LogFormat, PoolMode, PrimaryReads, ReadYourWrites, ServerTlsMode, Strategy,
    TlsMode, TransactionRouting,
};

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

/// The HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve on, e.g. `127.0.0.1:9930`. Default: none (no endpoint).
    #[serde(default)]
    pub listen: Option<String>,
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
    /// How long a read after the client's write may wait for a standby to be seen past
    /// that write before it goes to the primary; 0 = never wait. Default 5 ms.
    #[serde(default = "default_read_your_writes_wait", with = "humantime_serde")]
    pub read_your_writes_wait: Duration,
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
            read_your_writes_wait: default_read_your_writes_wait(),
        }
    }
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
