//! Configuration as data: the TOML schema with its defaults, the checks of its values
//! with messages that name the key, the `PGSPLIT_*` environment laid over a file's
//! table, and redaction of the passwords in it. It uses nothing else of the crate and
//! reads no file: `settings` reads the sources and builds what the proxy runs on (TLS,
//! secrets, access rules) from a checked [`Config`].
//!
//! - `schema.rs`: the keys and their sections; `modes.rs`: the named choices they take;
//!   `defaults.rs`: what a missing key means.
//! - `validate.rs`: checks of the values; `access.rs`: access-rule syntax.
//! - `source.rs`: TOML text and the environment into a [`Config`]; `env.rs`: the
//!   environment's names and conversions.
//! - `redact.rs`: passwords out of `{:?}` and printed configurations.

pub mod access;
mod defaults;
mod env;
mod modes;
mod redact;
mod schema;
mod source;
mod validate;

pub use access::Rule;
pub use defaults::MAX_STARTUP_PACKET;
pub use env::{Origins, ALLOWED};
pub use modes::{
    AuthMethod, LogFormat, PoolMode, PrimaryReads, ReadYourWrites, ServerTlsMode, Strategy,
    TlsMode, TransactionRouting,
};
pub use redact::{redacted, MASK};
pub use schema::{
    Config, HbaConfig, MetricsConfig, MonitorConfig, NameList, NodeConfig, PoolConfig,
    RoutingConfig, UserConfig,
};
pub use source::layered;
pub use validate::{Checked, Node, MAX_DURATION};

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
fn toml_error(e: &toml::de::Error, text: Option<&str>) -> String {
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

impl ConfigError {
    /// A value at `key` that is well-formed but not acceptable.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, message)
}

#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod tests;
