//! The environment layer: `PGSPLIT_*` variables laid over the file's TOML table.
//!
//! Every key has a kind, and a variable's text is converted by that kind, never guessed:
//! a password `12345` stays a string. The result is a TOML table like a file's, so the
//! same deserialization and validation apply to both, and errors name the variable.
//!
//! Names: a top-level key `max_client_conn` is `PGSPLIT_MAX_CLIENT_CONN`; a key of a
//! section is `PGSPLIT_<SECTION>_<KEY>` (`PGSPLIT_MONITOR_MAX_LAG_BYTES`), and also
//! `PGSPLIT_<KEY>` when that name belongs to no other key or section and is clear on its
//! own (not for [`NO_SHORT_FORM`]). The lists `nodes` and `users` take a shorthand
//! (`PGSPLIT_NODES`, `PGSPLIT_USERS`) or one variable per field
//! (`PGSPLIT_NODES_0_ADDRESS`); the access rules `hba` only the latter.

use toml::{Table, Value};

use super::ConfigError;

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Taken as it is, spaces included.
    Str,
    /// A whole number, 0 or more.
    Int,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Bool,
    /// A duration with a unit: `500ms`, `10s`, `2m`.
    Duration,
    /// Strings separated by commas; empty items are dropped, so an empty value is `[]`.
    List,
    /// One of these names.
    Enum(&'static [&'static str]),
}

/// One scalar configuration key.
#[derive(Debug)]
pub(crate) struct Key {
    /// Its section (`monitor`), or `None` at the top level.
    pub section: Option<&'static str>,
    /// The key within it.
    pub name: &'static str,
    /// How its variable is read.
    pub kind: Kind,
}

const fn top(name: &'static str, kind: Kind) -> Key {
    Key {
        section: None,
        name,
        kind,
    }
}

const fn in_section(section: &'static str, name: &'static str, kind: Kind) -> Key {
    Key {
        section: Some(section),
        name,
        kind,
    }
}

const TLS_MODES: &[&str] = &["disable", "allow", "require"];
const SERVER_TLS_MODES: &[&str] = &["disable", "prefer", "require", "verify-ca", "verify-full"];
const LOG_FORMATS: &[&str] = &["text", "json"];
const TRANSACTION_ROUTINGS: &[&str] = &["read_only", "first_statement"];
const STRATEGIES: &[&str] = &["weighted_round_robin", "least_outstanding", "random"];
const PRIMARY_READS: &[&str] = &["never", "fallback", "always"];
const READ_YOUR_WRITES: &[&str] = &["session", "off"];
const POOL_MODES: &[&str] = &["transaction", "session"];
const AUTH_METHODS: &[&str] = &["scram-sha-256", "md5", "trust"];

use Kind::{Bool, Duration, Enum, Int, List, Str};

/// Every scalar key of the configuration; a unit test checks this against the schema.
pub(crate) const KEYS: &[Key] = &[
    top("listen", Str),
    top("max_client_conn", Int),
    top("auth_timeout", Duration),
    top("client_write_timeout", Duration),
    top("shutdown_timeout", Duration),
    top("idle_in_transaction_timeout", Duration),
    top("connect_timeout", Duration),
    top("max_message_size", Int),
    top("max_startup_packet_size", Int),
    top("max_user_connections", Int),
    top("max_db_connections", Int),
    top("tls_mode", Enum(TLS_MODES)),
    top("tls_cert_file", Str),
    top("tls_key_file", Str),
    top("tls_ca_file", Str),
    top("verify_client", Bool),
    top("server_tls", Enum(SERVER_TLS_MODES)),
    top("server_tls_ca_file", Str),
    top("admin_users", List),
    top("log_level", Str),
    top("log_format", Enum(LOG_FORMATS)),
    in_section("metrics", "listen", Str),
    in_section("monitor", "user", Str),
    in_section("monitor", "password", Str),
    in_section("monitor", "database", Str),
    in_section("monitor", "lag_check_interval", Duration),
    in_section("monitor", "query_timeout", Duration),
    in_section("monitor", "max_lag_bytes", Int),
    in_section("monitor", "max_lag_time", Duration),
    in_section("monitor", "readmit_lag_bytes", Int),
    in_section("monitor", "readmit_lag_time", Duration),
    in_section("monitor", "readmit_after_polls", Int),
    in_section("monitor", "max_ban", Duration),
    in_section("routing", "transaction_routing", Enum(TRANSACTION_ROUTINGS)),
    in_section("routing", "balance_strategy", Enum(STRATEGIES)),
    in_section("routing", "primary_reads", Enum(PRIMARY_READS)),
    in_section("routing", "classify_cache_size", Int),
    in_section("routing", "read_only_functions", List),
    in_section("routing", "write_functions", List),
    in_section("routing", "function_refresh_interval", Duration),
    in_section("routing", "read_your_writes", Enum(READ_YOUR_WRITES)),
    in_section("routing", "read_your_writes_wait", Duration),
    in_section("pool", "mode", Enum(POOL_MODES)),
    in_section("pool", "min_pool_size", Int),
    in_section("pool", "max_pool_size", Int),
    in_section("pool", "idle_timeout", Duration),
    in_section("pool", "server_lifetime", Duration),
    in_section("pool", "checkout_timeout", Duration),
    in_section("pool", "server_check_delay", Duration),
    in_section("pool", "prepared_statements_cache_size", Int),
];

/// The sections of [`KEYS`], which are tables in the file.
pub(crate) const SECTIONS: &[&str] = &["metrics", "monitor", "routing", "pool"];

/// Section keys with no short form: `PGSPLIT_USER`, `PGSPLIT_PASSWORD` or
/// `PGSPLIT_DATABASE` would read as the application's login, `PGSPLIT_QUERY_TIMEOUT` as a
/// bound on clients' queries, and `PGSPLIT_MODE` says nothing about what it sets.
pub(crate) const NO_SHORT_FORM: &[(&str, &str)] = &[
    ("monitor", "user"),
    ("monitor", "password"),
    ("monitor", "database"),
    ("monitor", "query_timeout"),
    ("pool", "mode"),
];

/// `PGSPLIT_` variables that are not configuration keys, so they are not typos.
pub const ALLOWED: &[&str] = &[
    // clap reads it as `--config`.
    "PGSPLIT_CONFIG",
];

/// Parses a list's shorthand variable (`PGSPLIT_NODES`) into entries.
type Shorthand = fn(&str) -> Result<Vec<Table>, String>;

/// A list of tables (`[[nodes]]`, `[[users]]`, `[[hba]]`) and its fields.
pub(crate) struct TableList {
    /// The key of the list.
    pub name: &'static str,
    /// Every field of one entry.
    pub fields: &'static [(&'static str, Kind)],
    /// The field a new entry cannot do without.
    required: &'static str,
    /// Parses the shorthand variable into entries; `None` for a list set only field by field.
    shorthand: Option<Shorthand>,
}

/// The lists of tables; a unit test checks their fields against the schema.
pub(crate) const LISTS: &[TableList] = &[
    TableList {
        name: "nodes",
        fields: &[
            ("name", Str),
            ("address", Str),
            ("weight", Int),
            ("server_tls", Enum(SERVER_TLS_MODES)),
        ],
        required: "address",
        shorthand: Some(nodes_shorthand),
    },
    TableList {
        name: "users",
        fields: &[
            ("name", Str),
            ("password", Str),
            ("auth_method", Enum(AUTH_METHODS)),
            ("server_user", Str),
            ("server_password", Str),
            ("max_connections", Int),
        ],
        required: "name",
        shorthand: Some(users_shorthand),
    },
    // Access rules have no shorthand: their lists of names would clash with its commas.
    TableList {
        name: "hba",
        fields: &[
            ("address", Str),
            ("database", List),
            ("user", List),
            ("method", Str),
        ],
        required: "method",
        shorthand: None,
    },
];

const PREFIX: &str = "PGSPLIT_";

impl Key {
    /// The dotted key, as errors name it: `monitor.max_lag_bytes`.
    pub fn path(&self) -> String {
        match self.section {
            Some(section) => format!("{section}.{}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// `PGSPLIT_<SECTION>_<KEY>`, or `PGSPLIT_<KEY>` at the top level.
    pub fn full_var(&self) -> String {
        var_name(&self.path().replace('.', "_"))
    }

    /// `PGSPLIT_<KEY>` for a section key whose name is unique and clear on its own.
    pub fn short_var(&self) -> Option<String> {
        let section = self.section?;
        if NO_SHORT_FORM.contains(&(section, self.name)) {
            return None;
        }
        let taken_elsewhere = KEYS.iter().filter(|k| k.name == self.name).count() > 1
            || SECTIONS.contains(&self.name)
            || LISTS.iter().any(|l| l.name == self.name);
        (!taken_elsewhere).then(|| var_name(self.name))
    }
}

fn var_name(key: &str) -> String {
    format!("{PREFIX}{}", key.to_ascii_uppercase())
}

/// What the environment set: the dotted key (or list) each variable wrote, so that a
/// validation error on that key can name the variable.
#[derive(Debug, Default)]
pub struct Origins(Vec<(String, String)>);

impl Origins {
    /// `e`, saying which variable set the key it names, if one did.
    pub fn attribute(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { key, message } => match self.var_for(&key) {
                Some(var) => ConfigError::Invalid {
                    message: format!("{message} (set by {var})"),
                    key,
                },
                None => ConfigError::Invalid { key, message },
            },
            other => other,
        }
    }

    /// The variable that set `key` (`nodes[1].address`), or the list or key above it.
    pub fn var_for(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(path, _)| {
                key == path
                    || key
                        .strip_prefix(path.as_str())
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
            .map(|(_, var)| var.as_str())
    }
}

fn env_error(var: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        var: var.into(),
        message: message.into(),
    }
}

/// One `PGSPLIT_<LIST>_<i>_<FIELD>` variable.
struct Indexed<'a> {
    index: usize,
    field: &'static str,
    kind: Kind,
    var: &'a str,
    value: &'a str,
}

/// Lays `env` (`PGSPLIT_*` names and values) over `table`, the file's table or an empty one.
pub(crate) fn overlay(table: &mut Table, env: &[(String, String)]) -> Result<Origins, ConfigError> {
    let mut origins = Origins::default();
    // Which variable set each scalar key, to refuse two names for one key.
    let mut scalars: Vec<(&Key, &str, &str)> = Vec::new();
    let mut shorthands: Vec<(&TableList, &str, &str)> = Vec::new();
    let mut indexed: Vec<(&TableList, Indexed)> = Vec::new();
    for (var, value) in env {
        if ALLOWED.contains(&var.as_str()) {
            continue;
        }
        if let Some(key) = KEYS
            .iter()
            .find(|k| k.full_var() == *var || k.short_var().as_deref() == Some(var))
        {
            if let Some((_, other, _)) = scalars.iter().find(|(k, _, _)| std::ptr::eq(*k, key)) {
                return Err(env_error(
                    format!("{other} and {var}"),
                    format!("both set {}; keep one", key.path()),
                ));
            }
            scalars.push((key, var, value));
        } else if let Some(list) = LISTS.iter().find(|l| var_name(l.name) == *var) {
            shorthands.push((list, var, value));
        } else if let Some((list, entry)) = parse_indexed(var, value)? {
            indexed.push((list, entry));
        } else {
            return Err(env_error(
                var,
                "no such setting (see \"Configuration from the environment\" in the README)",
            ));
        }
    }
    for (key, var, value) in scalars {
        let value = convert(key.kind, value).map_err(|m| env_error(var, m))?;
        let target = match key.section {
            None => &mut *table,
            Some(section) => section_table(table, section)?,
        };
        target.insert(key.name.to_owned(), value);
        origins.0.push((key.path(), var.to_owned()));
    }
    for list in LISTS {
        let entries: Vec<&Indexed> = indexed
            .iter()
            .filter(|(l, _)| std::ptr::eq(*l, list))
            .map(|(_, e)| e)
            .collect();
        let shorthand = shorthands.iter().find(|(l, _, _)| std::ptr::eq(*l, list));
        match (shorthand, entries.first()) {
            (Some((_, var, _)), Some(first)) => {
                return Err(env_error(
                    format!("{var} and {}", first.var),
                    format!(
                        "both set {}: use the shorthand or the indexed variables, not both",
                        list.name
                    ),
                ));
            }
            (Some((_, var, value)), None) => {
                let parse = list.shorthand.ok_or_else(|| {
                    env_error(
                        *var,
                        format!(
                            "{} has no shorthand: set {var}_<i>_<FIELD> for each entry",
                            list.name
                        ),
                    )
                })?;
                let items = parse(value).map_err(|m| env_error(*var, m))?;
                let items = items.into_iter().map(Value::Table).collect();
                table.insert(list.name.to_owned(), Value::Array(items));
                origins.0.push((list.name.to_owned(), (*var).to_owned()));
            }
            (None, Some(_)) => overlay_indexed(table, list, entries, &mut origins)?,
            (None, None) => {}
        }
    }
    Ok(origins)
}

/// The section's table in `table`, created when the file has none.
fn section_table<'t>(table: &'t mut Table, section: &str) -> Result<&'t mut Table, ConfigError> {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    match entry {
        Value::Table(t) => Ok(t),
        _ => Err(ConfigError::Invalid {
            key: section.to_owned(),
            message: "must be a table ([section]) to take values from the environment".into(),
        }),
    }
}

/// `PGSPLIT_NODES_<i>_<FIELD>`: `None` when `var` is not of that shape for any list.
fn parse_indexed<'a>(
    var: &'a str,
    value: &'a str,
) -> Result<Option<(&'static TableList, Indexed<'a>)>, ConfigError> {
    for list in LISTS {
        let Some(rest) = var.strip_prefix(&format!("{}_", var_name(list.name))) else {
            continue;
        };
        let Some((digits, field)) = rest.split_once('_') else {
            continue;
        };
        // Leading zeros would give one entry two names.
        let plain = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        let Some(index) = plain.then(|| digits.parse::<usize>().ok()).flatten() else {
            continue;
        };
        let Some(&(field, kind)) = list
            .fields
            .iter()
            .find(|(f, _)| f.to_ascii_uppercase() == field)
        else {
            let fields: Vec<String> = list.fields.iter().map(|(f, _)| f.to_uppercase()).collect();
            return Err(env_error(
                var,
                format!(
                    "{} has no such field; one of {}",
                    list.name,
                    fields.join(", ")
                ),
            ));
        };
        return Ok(Some((
            list,
            Indexed {
                index,
                field,
                kind,
                var,
                value,
            },
        )));
    }
    Ok(None)
}

/// Applies `PGSPLIT_<LIST>_<i>_<FIELD>` variables: an index the file has changes that
/// entry's fields, the next one appends an entry; entries stay contiguous.
fn overlay_indexed(
    table: &mut Table,
    list: &TableList,
    mut entries: Vec<&Indexed>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    entries.sort_by(|a, b| (a.index, a.var).cmp(&(b.index, b.var)));
    let slot = table
        .entry(list.name.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = slot else {
        return Err(ConfigError::Invalid {
            key: list.name.to_owned(),
            message: format!(
                "must be a list of tables ([[{}]]) to take values from the environment",
                list.name
            ),
        });
    };
    let from_file = items.len();
    for e in &entries {
        if e.index > items.len() {
            return Err(env_error(
                e.var,
                format!(
                    "{} would have no entry {}: indexes count up from 0 without gaps",
                    list.name,
                    items.len()
                ),
            ));
        }
        if e.index == items.len() {
            let required = var_name(&format!("{}_{}_{}", list.name, e.index, list.required));
            if !entries
                .iter()
                .any(|o| o.index == e.index && o.field == list.required)
            {
                return Err(env_error(
                    e.var,
                    format!(
                        "starts a new entry of {}, which needs {required}",
                        list.name
                    ),
                ));
            }
            items.push(Value::Table(Table::new()));
        }
        let value = convert(e.kind, e.value).map_err(|m| env_error(e.var, m))?;
        match items.get_mut(e.index) {
            Some(Value::Table(entry)) => {
                entry.insert(e.field.to_owned(), value);
            }
            _ => {
                return Err(ConfigError::Invalid {
                    key: format!("{}[{}]", list.name, e.index),
                    message: "must be a table".into(),
                })
            }
        }
        let path = if e.index < from_file {
            format!("{}[{}].{}", list.name, e.index, e.field)
        } else {
            // A whole entry from the environment: its errors are that entry's variables'.
            format!("{}[{}]", list.name, e.index)
        };
        origins.0.push((path, e.var.to_owned()));
    }
    Ok(())
}

/// Converts a variable's text by the kind of its key; the message says what is wrong.
fn convert(kind: Kind, text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    match kind {
        Str => Ok(Value::String(text.to_owned())),
        Int => match trimmed.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Value::Integer(n)),
            Ok(_) => Err(format!("{text:?} is negative")),
            Err(_) => Err(format!("{text:?} is not an integer")),
        },
        Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("{text:?} is not a boolean (true or false)")),
        },
        Duration => match humantime::parse_duration(trimmed) {
            Ok(_) => Ok(Value::String(trimmed.to_owned())),
            Err(e) => Err(format!(
                "{text:?} is not a duration with a unit such as \"500ms\", \"10s\", \"2m\" ({e})"
            )),
        },
        List => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect(),
        )),
        Enum(names) if names.contains(&trimmed) => Ok(Value::String(trimmed.to_owned())),
        Enum(names) => Err(format!("{text:?} is not one of {}", names.join(", "))),
    }
}

/// `PGSPLIT_NODES`: `[name@]host:port[?key=value&…]`, comma-separated.
fn nodes_shorthand(text: &str) -> Result<Vec<Table>, String> {
    let list = &LISTS[0];
    let mut nodes = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let at = format!("nodes[{}] ({item:?})", nodes.len());
        let (node, options) = match item.split_once('?') {
            Some((node, options)) => (node, Some(options)),
            None => (item, None),
        };
        let mut entry = Table::new();
        let address = match node.split_once('@') {
            Some((name, address)) => {
                entry.insert("name".into(), Value::String(name.to_owned()));
                address
            }
            None => node,
        };
        entry.insert("address".into(), Value::String(address.to_owned()));
        for option in options.into_iter().flat_map(|o| o.split('&')) {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| format!("{at}: {option:?} is not key=value"))?;
            let kind = list
                .fields
                .iter()
                .filter(|(f, _)| !matches!(*f, "name" | "address"))
                .find(|(f, _)| *f == key)
                .map(|(_, kind)| *kind)
                .ok_or_else(|| {
                    format!("{at}: {key:?} is not a node setting here (weight, server_tls)")
                })?;
            let value = convert(kind, value).map_err(|m| format!("{at}: {key}: {m}"))?;
            if entry.insert(key.to_owned(), value).is_some() {
                return Err(format!("{at}: {key} is given twice"));
            }
        }
        nodes.push(entry);
    }
    Ok(nodes)
}

/// `PGSPLIT_USERS`: `name:password`, comma-separated; the password is everything after
/// the first `:`. Entries are never echoed in errors: they hold passwords.
fn users_shorthand(text: &str) -> Result<Vec<Table>, String> {
    let mut users = Vec::new();
    for item in text.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let (name, password) = item.split_once(':').ok_or_else(|| {
            format!(
                "users[{}] has no ':' between name and password (name:password)",
                users.len()
            )
        })?;
        let mut entry = Table::new();
        entry.insert("name".into(), Value::String(name.trim().to_owned()));
        entry.insert("password".into(), Value::String(password.to_owned()));
        users.push(entry);
    }
    Ok(users)
}
