//! Where the configuration comes from: an optional file and the `PGSPLIT_*` environment.
//! The file is read again on every load, so a reload sees its changes; the environment is
//! the one captured when the process started.

use std::fmt;
use std::path::PathBuf;

use crate::config::{self, ConfigError, ALLOWED};

use super::Settings;

/// A configuration file (optional) and `PGSPLIT_*` variables that override it.
#[derive(Clone, Default)]
pub struct ConfigSource {
    /// The TOML file, re-read by every [`ConfigSource::load`]; `None` for the environment alone.
    pub file: Option<PathBuf>,
    /// `PGSPLIT_*` variables as (name, value), without those in the allowlist.
    pub env: Vec<(String, String)>,
}

// By hand: the values hold passwords, which must not reach a log through `{:?}`.
impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ConfigSource")
            .field("file", &self.file)
            .field("env", &names)
            .finish()
    }
}

impl ConfigSource {
    /// `file` and this process's `PGSPLIT_*` variables; a variable whose name or value is
    /// not UTF-8 is an error naming it.
    pub fn from_process(file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            let lossy = name.to_string_lossy();
            if !lossy.starts_with("PGSPLIT_") || ALLOWED.contains(&lossy.as_ref()) {
                continue;
            }
            match (name.to_str(), value.into_string()) {
                (Some(name), Ok(value)) => env.push((name.to_owned(), value)),
                _ => {
                    return Err(ConfigError::Env {
                        var: lossy.into_owned(),
                        message: "is not valid UTF-8".into(),
                    })
                }
            }
        }
        env.sort();
        Ok(ConfigSource { file, env })
    }

    /// Whether there is nothing to load: no file and no variable.
    pub fn is_empty(&self) -> bool {
        self.file.is_none() && self.env.is_empty()
    }

    /// Reads the file (if any), lays the variables over it and validates the result, as
    /// for a file alone: same schema, same checks. An error on a key the environment set
    /// names its variable.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let (raw, origins) = match &self.file {
            // A file alone keeps the parser's line numbers in its errors.
            Some(path) if self.env.is_empty() => return Settings::load(path),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let path = path.display().to_string();
                config::layered(Some((&path, &text)), &self.env)?
            }
            None => config::layered(None, &self.env)?,
        };
        Settings::validate(raw).map_err(|e| origins.attribute(e))
    }
}
