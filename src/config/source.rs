//! The configuration from its sources given as text: a file's TOML, and `PGSPLIT_*`
//! variables laid over it (`env.rs`). Reading the file and the process's environment is
//! `settings`'s; this only parses.

use toml::Table;

use super::env::{self, Origins};
use super::schema::Config;
use super::{toml_error, ConfigError};

impl Config {
    /// Parses TOML text (errors give the line and name the source `config`). The values
    /// are not checked yet: [`Config::validate`] does.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "config".into(),
            message: toml_error(&e, Some(text)),
        })
    }
}

/// `env` (`PGSPLIT_*` names and values) laid over `file`, the path and text of a
/// configuration file, if any: same schema as a file alone. Errors on a variable name
/// it; [`Origins::attribute`] names the variable in a validation error on a key it set.
pub fn layered(
    file: Option<(&str, &str)>,
    env: &[(String, String)],
) -> Result<(Config, Origins), ConfigError> {
    let mut table = match file {
        Some((path, text)) => toml::from_str::<Table>(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_error(&e, Some(text)),
        })?,
        None => Table::new(),
    };
    let origins = env::overlay(&mut table, env)?;
    for (list, var) in [("nodes", "PGSPLIT_NODES"), ("users", "PGSPLIT_USERS")] {
        if !table.contains_key(list) {
            return Err(ConfigError::Invalid {
                key: list.into(),
                message: format!("none configured: set [[{list}]] in the file or {var}"),
            });
        }
    }
    let raw: Config = table.try_into().map_err(|e| ConfigError::Parse {
        path: match file {
            Some((path, _)) => format!("{path} with PGSPLIT_* variables"),
            None => "PGSPLIT_* variables".into(),
        },
        message: toml_error(&e, None),
    })?;
    Ok((raw, origins))
}
