//! Redaction: passwords never reach a log line, an error or the admin console. `{:?}` of
//! the structs holding them says only whether one is set, and [`Config::masked_toml`]
//! prints the configuration with each replaced by [`MASK`].

use std::fmt;

use super::schema::{Config, MonitorConfig, UserConfig};

/// What a masked secret prints as.
pub const MASK: &str = "********";

/// How a password shows in `{:?}` output: never its value, so a struct printed into a
/// log line cannot leak it; only whether one is set.
pub fn redacted(password: &str) -> &'static str {
    if password.is_empty() {
        "(empty)"
    } else {
        "(redacted)"
    }
}

// Debug by hand for the structs holding passwords (and, through them, `Config` and
// the settings built from it): a derived one would print them.
impl fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl Config {
    /// The configuration as TOML, every password replaced by [`MASK`] (empty ones stay
    /// empty, which says that none is set).
    pub fn masked_toml(&self) -> Result<String, String> {
        let mask = |secret: &mut String| {
            if !secret.is_empty() {
                *secret = MASK.into();
            }
        };
        let mut config = self.clone();
        mask(&mut config.monitor.password);
        for user in &mut config.users {
            mask(&mut user.password);
            if let Some(p) = user.server_password.as_mut() {
                mask(p);
            }
        }
        toml::to_string(&config).map_err(|e| e.to_string())
    }
}
