//! Settings: what the proxy runs on, built from a checked configuration
//! ([`crate::config`]): TLS toward clients and servers from the certificate files, users
//! with the secrets their clients must prove, and the access rules checked against those
//! secrets. Reading the configuration's sources, a file and the environment, is here too
//! (`source.rs`), so that `config` stays data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::auth::{Secret, User};
use crate::config::{Config, ConfigError, Node, Rule};
use crate::hba;
use crate::tls::{ClientTls, ServerTls};

mod source;

pub use source::ConfigSource;

/// The settings every part reads its current copy from; a reload swaps them.
pub type SharedSettings = Arc<arc_swap::ArcSwap<Settings>>;

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
    /// TLS toward clients, as built when the configuration was loaded; `None` when
    /// `tls_mode` is `disable`.
    pub client_tls: Option<Arc<ClientTls>>,
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
        Settings::validate(Config::parse(text)?)
    }

    /// Checks a parsed configuration and builds what the proxy needs from it: TLS from
    /// the certificate files, users' secrets from their passwords. Errors name the key.
    pub fn validate(raw: Config) -> Result<Settings, ConfigError> {
        let checked = raw.validate()?;
        let client_tls = crate::tls::acceptor(&raw)
            .map_err(|(key, message)| ConfigError::invalid(key, message))?
            .map(Arc::new);
        let mut server_tls = HashMap::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let mode = n.server_tls.unwrap_or(raw.server_tls);
            let tls = ServerTls::new(mode, raw.server_tls_ca_file.as_deref()).map_err(|m| {
                let key = if n.server_tls.is_some() {
                    format!("nodes[{i}].server_tls")
                } else {
                    "server_tls_ca_file".to_owned()
                };
                ConfigError::invalid(key, m)
            })?;
            server_tls.insert(n.address.clone(), tls);
        }
        let users = users(&raw)?;
        check_rules(&raw, &checked.hba, &users)?;
        Ok(Settings {
            listen: checked.listen,
            metrics_listen: checked.metrics_listen,
            nodes: checked.nodes,
            users,
            hba: checked.hba,
            client_tls,
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

/// The users with their secrets derived from the configured passwords; errors name the
/// user's key (`users[1].password`).
fn users(raw: &Config) -> Result<Vec<User>, ConfigError> {
    let mut users: Vec<User> = Vec::with_capacity(raw.users.len());
    for (i, u) in raw.users.iter().enumerate() {
        let key = format!("users[{i}]");
        let secret = Secret::from_config(&u.name, &u.password, u.auth_method)
            .map_err(|m| ConfigError::invalid(format!("{key}.password"), m))?;
        let server_password = match (&u.server_password, secret.plaintext()) {
            (Some(p), _) => p.clone(),
            (None, Some(p)) => p.to_owned(),
            (None, None) if u.password.is_empty() => String::new(),
            (None, None) => {
                return Err(ConfigError::invalid(
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
    Ok(users)
}

/// A rule naming a user whose password cannot check the rule's method would refuse that
/// user at every login: say so now. (A rule for `all` is checked per login.)
fn check_rules(raw: &Config, rules: &[Rule], users: &[User]) -> Result<(), ConfigError> {
    for (i, (r, rule)) in raw.hba.iter().zip(rules).enumerate() {
        let key = format!("hba[{i}].user");
        for name in r.user.names(&key)? {
            if let Some(u) = users.iter().find(|u| u.name == name) {
                if !hba::secret_allows(&u.secret, rule.method) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "\"{name}\" has a password hash or verifier that cannot check {}",
                            r.method
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod tests;
