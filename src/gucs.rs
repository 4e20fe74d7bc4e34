//! Session settings as plain data: what a client set (startup parameters, SET, RESET),
//! what a server connection has applied, and the SQL that brings one in line with the
//! other.

use std::collections::BTreeMap;

use crate::classify::{Classification, Effect};
use crate::config::ReadYourWrites;

/// Session settings (GUC name → SQL text of its value) as `SET` would replay them.
pub type Gucs = BTreeMap<String, String>;

/// What a request's effects do to the settings of the server connection that runs it
/// (RESET returns to the server's defaults there, not to the client's startup values).
pub fn apply_to_server(applied: &mut Gucs, c: &Classification) {
    for effect in &c.effects {
        match effect {
            Effect::Set { name, value } => {
                if name == "session_authorization" {
                    applied.remove("role");
                }
                applied.insert(name.clone(), value.clone());
            }
            Effect::Reset { name } => {
                if name == "session_authorization" {
                    applied.remove("role");
                }
                applied.remove(name);
            }
            Effect::ResetAll => applied.retain(|n, _| NOT_RESET_BY_ALL.contains(&n.as_str())),
            Effect::DiscardAll => applied.clear(),
            _ => {}
        }
    }
}

/// Parameters whose values are lists of identifiers: a startup value goes into SET
/// unquoted (when it is a plain list), or it would become one quoted name.
const LIST_PARAMETERS: [&str; 2] = ["search_path", "temp_tablespaces"];

/// The session settings a startup packet asks for (its parameters and `-c name=value`
/// in `options`), as SQL values; a malformed one is refused with its name.
pub fn startup_gucs(params: &[(String, String)]) -> Result<Gucs, String> {
    let mut gucs = Gucs::new();
    for (name, value) in params {
        if name == "options" {
            for (n, v) in parse_options(value)? {
                insert_guc(&mut gucs, &n, &v)?;
            }
        } else {
            insert_guc(&mut gucs, name, value)?;
        }
    }
    Ok(gucs)
}

fn insert_guc(gucs: &mut Gucs, name: &str, value: &str) -> Result<(), String> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid_name {
        return Err(format!("invalid configuration parameter name \"{name}\""));
    }
    let name = name.to_ascii_lowercase();
    let plain_list = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | ',' | ' ' | '"'))
        && value.matches('"').count().is_multiple_of(2)
        && !value.trim().is_empty();
    let sql = if LIST_PARAMETERS.contains(&name.as_str()) && plain_list {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    };
    gucs.insert(name, sql);
    Ok(())
}

/// `-c name=value` and `--name=value` switches of the `options` parameter (backslash
/// escapes a space, as libpq does).
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            Some(rest.to_owned())
        } else {
            return Err(format!(
                "unsupported startup option \"{w}\" (only -c name=value)"
            ));
        };
        let setting = setting.ok_or("-c requires a value")?;
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("-c {setting} requires a value"))?;
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

/// The session setting that overrides `routing.read_your_writes` for one client
/// (`SET`, or a startup parameter); servers keep it as a placeholder, so `SHOW` answers.
pub const READ_YOUR_WRITES: &str = "pgsplit.read_your_writes";

/// What a `pgsplit.read_your_writes` value (as SQL text) asks for: `session` or `off`, in
/// any case, quoted or not; `None` for anything else.
pub fn read_your_writes_value(sql: &str) -> Option<ReadYourWrites> {
    let text = sql.trim();
    let text = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .unwrap_or(text);
    if text.eq_ignore_ascii_case("session") {
        Some(ReadYourWrites::Session)
    } else if text.eq_ignore_ascii_case("off") {
        Some(ReadYourWrites::Off)
    } else {
        None
    }
}

/// The read-your-writes mode in effect for a session: its own setting, else the
/// configuration's.
pub fn read_your_writes(configured: ReadYourWrites, gucs: &Gucs) -> ReadYourWrites {
    gucs.get(READ_YOUR_WRITES)
        .and_then(|v| read_your_writes_value(v))
        .unwrap_or(configured)
}

/// Settings `RESET ALL` leaves alone (and a client's `RESET ALL` too).
pub const NOT_RESET_BY_ALL: [&str; 2] = ["session_authorization", "role"];

/// The SQL that makes a connection's settings (`applied`, `None` when unknown) equal to
/// the session's (`wanted`). Unknown settings start from scratch, identity included:
/// `RESET ALL` does not reset the role or session authorization.
pub fn guc_sync_sql(applied: Option<&Gucs>, wanted: &Gucs) -> Option<String> {
    let empty = Gucs::new();
    let mut sql = String::new();
    let applied = match applied {
        Some(applied) => applied,
        None => {
            sql.push_str("SET SESSION AUTHORIZATION DEFAULT;RESET ROLE;RESET ALL;");
            &empty
        }
    };
    for name in applied.keys().filter(|n| !wanted.contains_key(*n)) {
        sql.push_str(&format!("RESET {name};"));
    }
    // SET SESSION AUTHORIZATION drops the role: the role follows it.
    let authorization = "session_authorization";
    let new_authorization = wanted.get(authorization).is_some()
        && applied.get(authorization) != wanted.get(authorization);
    let ordered = NOT_RESET_BY_ALL
        .iter()
        .filter_map(|n| wanted.get_key_value(*n))
        .chain(
            wanted
                .iter()
                .filter(|(n, _)| !NOT_RESET_BY_ALL.contains(&n.as_str())),
        );
    for (name, value) in ordered {
        if applied.get(name) != Some(value) || (new_authorization && name == "role") {
            sql.push_str(&format!("SET {name} TO {value};"));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_your_writes_is_chosen_per_session() {
        let cases = [
            ("'off'", Some(ReadYourWrites::Off)),
            ("OFF", Some(ReadYourWrites::Off)),
            ("'Session'", Some(ReadYourWrites::Session)),
            ("session", Some(ReadYourWrites::Session)),
            ("'on'", None),
            ("''", None),
            ("'off", None),
        ];
        for (sql, want) in cases {
            assert_eq!(read_your_writes_value(sql), want, "{sql}");
        }
        let mut gucs = Gucs::new();
        assert_eq!(
            read_your_writes(ReadYourWrites::Session, &gucs),
            ReadYourWrites::Session
        );
        gucs.insert(READ_YOUR_WRITES.into(), "'off'".into());
        assert_eq!(
            read_your_writes(ReadYourWrites::Session, &gucs),
            ReadYourWrites::Off
        );
        gucs.insert(READ_YOUR_WRITES.into(), "'session'".into());
        assert_eq!(
            read_your_writes(ReadYourWrites::Off, &gucs),
            ReadYourWrites::Session
        );
    }

    #[test]
    fn settings_sync_as_a_diff() {
        let applied: Gucs = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]
        .into();
        let wanted: Gucs = [
            ("b".to_string(), "3".to_string()),
            ("c".to_string(), "'x'".to_string()),
        ]
        .into();
        assert_eq!(
            guc_sync_sql(Some(&applied), &wanted).as_deref(),
            Some("RESET a;SET b TO 3;SET c TO 'x';")
        );
        assert_eq!(guc_sync_sql(Some(&wanted), &wanted), None);
        assert_eq!(
            guc_sync_sql(None, &wanted).as_deref(),
            Some("SET SESSION AUTHORIZATION DEFAULT;RESET ROLE;RESET ALL;SET b TO 3;SET c TO 'x';")
        );
    }
}
