//! The named choices of the configuration: TLS modes, pooling, routing, balancing, log
//! format and authentication methods. Plain values; what they do is up to the parts that
//! read them (`tls`, `pool`, the session, `balance`, `auth`).

use serde::{Deserialize, Serialize};

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

/// How reads are spread over the eligible nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each node in turn, as often as its weight says.
    #[default]
    WeightedRoundRobin,
    /// The node with the fewest clients reading from it, weight-adjusted.
    LeastOutstanding,
    /// A weighted random node.
    Random,
}

/// Whether the primary serves reads too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimaryReads {
    /// Never: with no standby available a read fails with 08006.
    Never,
    /// Only when no standby is available (the default).
    #[default]
    Fallback,
    /// Always, as one more candidate with its own weight.
    Always,
}

/// How a client proves its identity to pgsplit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the default, as in PostgreSQL).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge-response (legacy clients).
    #[serde(rename = "md5")]
    Md5,
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
}

impl AuthMethod {
    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        }
    }
}
