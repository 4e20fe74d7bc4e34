//! Session and transaction settings: `SET`, `RESET`, `SET TRANSACTION`, `set_config()`.
//!
//! A session-level setting is remembered as SQL text that the session replays as
//! `SET <name> TO <value>` on every server connection the client uses, so every name and value
//! here is rendered from parsed tokens, quoted, and checked: client text never reaches the
//! replayed SQL unquoted. Anything that cannot be rendered exactly pins the session to the
//! primary instead ([`Pin::Unknown`]).

use sqlparser::ast::{
    ContextModifier, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, Reset, ResetStatement, Set, SetSessionAuthorizationParamKind,
    TransactionAccessMode, TransactionIsolationLevel, TransactionMode, UnaryOperator, Value,
};

use super::{ident_name, Classification, Effect, Pin, Reason};

/// Settings whose list items PostgreSQL quotes as identifiers (`GUC_LIST_QUOTE`): a
/// `set_config` value for them is split into items and each item quoted, because
/// `SET search_path TO 'a, b'` would name one schema called "a, b".
const LIST_QUOTE: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

/// PostgreSQL's boolean spellings (`parse_bool`): unique prefixes of true/false/yes/no,
/// `on`, `off`, `1`, `0`, any case.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    if "true".starts_with(&t) || "yes".starts_with(&t) || t == "on" || t == "1" {
        Some(true)
    } else if "false".starts_with(&t)
        || "no".starts_with(&t)
        || (t.len() >= 2 && "off".starts_with(&t))
        || t == "0"
    {
        Some(false)
    } else {
        None
    }
}

/// A string as a SQL literal; `E'…'` when it holds a backslash so that the result means
/// the same whatever `standard_conforming_strings` is on the replaying connection.
pub(crate) fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// A string as a double-quoted SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A setting name safe to splice into `SET <name>`: dot-separated simple identifiers,
/// lower-cased (setting names are case-insensitive, quoted or not).
fn setting_name<'a>(parts: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut name = String::new();
    for part in parts {
        let part = part.to_ascii_lowercase();
        let mut bytes = part.bytes();
        let simple = bytes
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
            && bytes
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'$');
        if !simple {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&part);
    }
    (!name.is_empty()).then_some(name)
}

fn object_setting_name(name: &ObjectName) -> Option<String> {
    let parts: Option<Vec<&str>> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(|i| i.value.as_str()))
        .collect();
    setting_name(parts?)
}

/// The text of a string-like or numeric literal, or None for anything else.
fn literal_text(value: &Value) -> Option<&str> {
    match value {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s)
        | Value::Number(s, _) => Some(s),
        Value::DollarQuotedString(d) => Some(&d.value),
        _ => None,
    }
}

/// One `SET` value as replayable SQL text.
fn render_value(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(Ident {
            value,
            quote_style: None,
            ..
        }) => Some(value.clone()),
        Expr::Identifier(Ident {
            value,
            quote_style: Some('"'),
            ..
        }) => Some(quote_ident(value)),
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            other => literal_text(other).map(quote_literal),
        },
        Expr::UnaryOp { op, expr } => match (op, expr.as_ref()) {
            (UnaryOperator::Minus, Expr::Value(v)) => match &v.value {
                Value::Number(n, _) => Some(format!("-{n}")),
                _ => None,
            },
            (UnaryOperator::Plus, Expr::Value(v)) => match &v.value {
                Value::Number(n, _) => Some(n.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// A value as plain text, for reading on/off and isolation levels.
fn plain_value(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => Some(b.to_string()),
            other => literal_text(other).map(str::to_string),
        },
        _ => None,
    }
}

fn is_default(values: &[Expr]) -> bool {
    matches!(values, [Expr::Identifier(Ident { value, quote_style: None, .. })]
        if value.eq_ignore_ascii_case("default"))
}

/// The session cannot replay this: stay on the primary.
fn unknown(out: &mut Classification) {
    out.need_primary(Reason::SessionState);
    out.effects.push(Effect::Pin(Pin::Unknown));
}

/// Emits a transaction-level setting. A standby refuses read-write and serializable
/// transactions, so those run on the primary.
pub(crate) fn set_transaction(
    out: &mut Classification,
    read_only: Option<bool>,
    serializable: bool,
) {
    if read_only == Some(false) || serializable {
        out.need_primary(Reason::TransactionMode);
    }
    out.effects.push(Effect::SetTransaction {
        read_only,
        serializable,
    });
}

/// Reads `READ ONLY|WRITE` and `ISOLATION LEVEL` out of transaction modes.
pub(crate) fn transaction_modes(modes: &[TransactionMode]) -> (Option<bool>, bool) {
    let mut read_only = None;
    let mut serializable = false;
    for mode in modes {
        match mode {
            TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => read_only = Some(true),
            TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => {
                read_only = Some(false)
            }
            TransactionMode::IsolationLevel(level) => {
                serializable = matches!(level, TransactionIsolationLevel::Serializable)
            }
        }
    }
    (read_only, serializable)
}

fn isolation_name(level: &TransactionIsolationLevel) -> Option<&'static str> {
    match level {
        TransactionIsolationLevel::ReadUncommitted => Some("'read uncommitted'"),
        TransactionIsolationLevel::ReadCommitted => Some("'read committed'"),
        TransactionIsolationLevel::RepeatableRead => Some("'repeatable read'"),
        TransactionIsolationLevel::Serializable => Some("'serializable'"),
        TransactionIsolationLevel::Snapshot => None,
    }
}

/// A session-level setting, or `RESET` when the value is `DEFAULT`.
fn session_setting(out: &mut Classification, name: String, values: &[Expr]) {
    if is_default(values) {
        out.effects.push(Effect::Reset { name });
        return;
    }
    let rendered: Option<Vec<String>> = values.iter().map(render_value).collect();
    match rendered {
        Some(items) if !items.is_empty() => out.effects.push(Effect::Set {
            name,
            value: items.join(", "),
        }),
        _ => unknown(out),
    }
}

/// Classifies a parsed `SET` statement. Routes stay `Any` unless said otherwise: the session
/// applies session settings on every connection it uses.
pub(crate) fn set(statement: &Set, out: &mut Classification) {
    match statement {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let Some(name) = object_setting_name(variable) else {
                return unknown(out);
            };
            // Transaction-level settings, whatever the scope keyword says.
            match name.as_str() {
                "transaction_read_only" => {
                    let read_only = values
                        .first()
                        .and_then(plain_value)
                        .and_then(|v| parse_bool(&v));
                    return set_transaction(out, read_only, false);
                }
                "transaction_isolation" => {
                    let serializable = values
                        .first()
                        .and_then(plain_value)
                        .is_some_and(|v| v.eq_ignore_ascii_case("serializable"));
                    return set_transaction(out, None, serializable);
                }
                "transaction_deferrable" => return,
                _ => {}
            }
            if matches!(scope, Some(ContextModifier::Local)) {
                return;
            }
            session_setting(out, name, values);
        }
        Set::SetTimeZone { local, value } => {
            if *local {
                return;
            }
            let name = "timezone".to_string();
            match value {
                Expr::Identifier(Ident {
                    value: v,
                    quote_style: None,
                    ..
                }) if v.eq_ignore_ascii_case("local") || v.eq_ignore_ascii_case("default") => {
                    out.effects.push(Effect::Reset { name })
                }
                other => session_setting(out, name, std::slice::from_ref(other)),
            }
        }
        Set::SetNames { charset_name, .. } => out.effects.push(Effect::Set {
            name: "client_encoding".to_string(),
            value: quote_literal(&charset_name.value),
        }),
        Set::SetNamesDefault {} => out.effects.push(Effect::Reset {
            name: "client_encoding".to_string(),
        }),
        Set::SetRole {
            context_modifier,
            role_name,
        } => {
            if matches!(context_modifier, Some(ContextModifier::Local)) {
                return;
            }
            let value = match role_name {
                None => "'none'".to_string(),
                Some(ident) => quote_literal(&ident_name(ident)),
            };
            out.effects.push(Effect::Set {
                name: "role".to_string(),
                value,
            });
        }
        Set::SetSessionAuthorization(param) => {
            if matches!(param.scope, ContextModifier::Local) {
                return;
            }
            let name = "session_authorization".to_string();
            match &param.kind {
                SetSessionAuthorizationParamKind::Default => {
                    out.effects.push(Effect::Reset { name })
                }
                SetSessionAuthorizationParamKind::User(ident) => out.effects.push(Effect::Set {
                    name,
                    value: quote_literal(&ident_name(ident)),
                }),
            }
        }
        Set::SetTransaction {
            modes,
            snapshot,
            session,
        } => {
            if *session {
                // SET SESSION CHARACTERISTICS AS TRANSACTION: the session's defaults.
                for mode in modes {
                    let (name, value) = match mode {
                        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => {
                            ("default_transaction_read_only", "on")
                        }
                        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => {
                            ("default_transaction_read_only", "off")
                        }
                        TransactionMode::IsolationLevel(level) => match isolation_name(level) {
                            Some(v) => ("default_transaction_isolation", v),
                            None => return unknown(out),
                        },
                    };
                    out.effects.push(Effect::Set {
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
            } else if snapshot.is_some() {
                // The snapshot was exported by some server; only the primary is sure to match.
                set_transaction(out, None, false);
                out.need_primary(Reason::TransactionMode);
            } else {
                let (read_only, serializable) = transaction_modes(modes);
                set_transaction(out, read_only, serializable);
            }
        }
        _ => unknown(out),
    }
}

/// Classifies a parsed `RESET`.
pub(crate) fn reset(statement: &ResetStatement, out: &mut Classification) {
    match &statement.reset {
        Reset::ALL => out.effects.push(Effect::ResetAll),
        Reset::SessionAuthorization => out.effects.push(Effect::Reset {
            name: "session_authorization".to_string(),
        }),
        Reset::ConfigurationParameter(name) => match object_setting_name(name) {
            Some(name) => out.effects.push(Effect::Reset { name }),
            None => unknown(out),
        },
    }
}

/// What a `set_config(name, value, is_local)` call does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SetConfig {
    /// A session-level `Set` or `Reset` effect.
    Session(Effect),
    /// `is_local` true: lasts until the transaction ends, nothing to replay.
    Local,
    /// Arguments that are not literals, or that cannot be replayed exactly.
    Unknown,
}

/// A literal argument: `Some(None)` for NULL, `Some(Some(text))` for a string or number,
/// looking through casts (`'x'::text`).
fn literal_arg(expr: &Expr) -> Option<Option<&str>> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Null => Some(None),
            Value::Boolean(true) => Some(Some("true")),
            Value::Boolean(false) => Some(Some("false")),
            other => literal_text(other).map(Some),
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => literal_arg(expr),
        _ => None,
    }
}

/// Splits a list setting the way PostgreSQL's `SplitIdentifierString` does (unquoted items
/// fold to lower case, `"…"` items are exact) and renders each item as a quoted identifier.
fn quote_list(value: &str) -> Option<String> {
    let mut items = Vec::new();
    let mut rest = value.trim_start();
    loop {
        let item;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if quoted[i + 1..].starts_with('"') {
                        text.push('"');
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    text.push(c);
                }
            }
            rest = &quoted[end?..];
            item = text;
        } else {
            let len = rest
                .find(|c: char| c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            if len == 0 {
                return None;
            }
            item = rest[..len].to_lowercase();
            rest = &rest[len..];
        }
        items.push(quote_ident(&item));
        rest = rest.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() => break,
            None => return None,
        }
    }
    Some(items.join(", "))
}

/// Reads a `set_config` call whose arguments are literals.
pub(crate) fn set_config(call: &Function) -> SetConfig {
    let FunctionArguments::List(list) = &call.args else {
        return SetConfig::Unknown;
    };
    let args: Option<Vec<&Expr>> = list
        .args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    let Some([name, value, is_local]) = args.as_deref() else {
        return SetConfig::Unknown;
    };
    let (Some(Some(name)), Some(value), Some(is_local)) =
        (literal_arg(name), literal_arg(value), literal_arg(is_local))
    else {
        return SetConfig::Unknown;
    };
    // A NULL is_local means false, as in PostgreSQL.
    match is_local.map(parse_bool) {
        Some(Some(true)) => return SetConfig::Local,
        None | Some(Some(false)) => {}
        Some(None) => return SetConfig::Unknown,
    }
    let Some(name) = setting_name(name.split('.')) else {
        return SetConfig::Unknown;
    };
    let Some(value) = value else {
        // A NULL value resets the setting.
        return SetConfig::Session(Effect::Reset { name });
    };
    let rendered = if LIST_QUOTE.contains(&name.as_str()) {
        match quote_list(value) {
            Some(list) => list,
            None => return SetConfig::Unknown,
        }
    } else {
        quote_literal(value)
    };
    SetConfig::Session(Effect::Set {
        name,
        value: rendered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_as_postgres_reads_them() {
        for t in ["on", "ON", "true", "t", "tr", "yes", "y", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["off", "of", "false", "f", "no", "n", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for x in ["", "o", "maybe", "2"] {
            assert_eq!(parse_bool(x), None, "{x}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(quote_ident("My \"T\""), "\"My \"\"T\"\"\"");
    }

    #[test]
    fn list_values_become_identifiers() {
        assert_eq!(
            quote_list(" A, \"B c\" ,\"$user\",public").as_deref(),
            Some("\"a\", \"B c\", \"$user\", \"public\"")
        );
        assert_eq!(quote_list("a,,b"), None);
        assert_eq!(quote_list("\"open"), None);
        assert_eq!(quote_list("a b"), None);
        assert_eq!(quote_list(""), None);
    }

    #[test]
    fn setting_names_are_checked() {
        assert_eq!(setting_name(["Work_Mem"]).as_deref(), Some("work_mem"));
        assert_eq!(
            setting_name(["app", "user_id"]).as_deref(),
            Some("app.user_id")
        );
        assert_eq!(setting_name(["x; DROP TABLE t"]), None);
        assert_eq!(setting_name(["1x"]), None);
        assert_eq!(setting_name(std::iter::empty()), None);
    }
}
