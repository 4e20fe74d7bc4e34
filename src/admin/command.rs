//! The admin console's commands: parsing only (pure), so the grammar is tested with
//! tables of cases.

/// What `SHOW` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nodes: role, health, lag, eligibility, bans, weight, traffic.
    Nodes,
    /// Server connection pools.
    Pools,
    /// Connected clients.
    Clients,
    /// Server connections.
    Servers,
    /// Traffic per node and route.
    Stats,
    /// The running configuration, secrets masked.
    Config,
    /// pgsplit's version.
    Version,
    /// The commands.
    Help,
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW …`.
    Show(Show),
    /// `RELOAD`: read the configuration again.
    Reload,
    /// `PAUSE [node]`: new work for the node (or every node) waits.
    Pause(Option<String>),
    /// `RESUME [node]`.
    Resume(Option<String>),
    /// `BAN node`: no new reads on the node.
    Ban(String),
    /// `UNBAN node`.
    Unban(String),
    /// `SHUTDOWN`: stop pgsplit gracefully.
    Shutdown,
    /// `SET …` from drivers that set things on connect: accepted and ignored.
    Set,
    /// `EXPLAIN ROUTE [DATABASE name] statement`: where the statement would go and why.
    ExplainRoute {
        /// The database whose function catalog decides; None: the one clients use.
        database: Option<String>,
        /// The statement, as a client would send it.
        statement: String,
    },
}

/// The commands, one line each, for errors and `SHOW HELP`.
pub const HELP: &[(&str, &str)] = &[
    (
        "SHOW NODES",
        "role, health, replication lag, read eligibility, bans, weight and traffic of each node",
    ),
    (
        "SHOW POOLS",
        "server connection pools per node, database and user",
    ),
    (
        "SHOW CLIENTS",
        "connected clients and the server each one holds",
    ),
    (
        "SHOW SERVERS",
        "server connections, idle or serving a client",
    ),
    (
        "SHOW STATS",
        "queries, transactions, bytes, average and p99 query time per node and route",
    ),
    ("SHOW CONFIG", "the running configuration, secrets masked"),
    ("SHOW VERSION", "pgsplit's version"),
    ("SHOW HELP", "this list"),
    (
        "RELOAD",
        "read the configuration again (as SIGHUP); an invalid one is rejected",
    ),
    (
        "PAUSE [node]",
        "new work for the node (or all nodes) waits; returns once running transactions finished",
    ),
    ("RESUME [node]", "end a PAUSE"),
    (
        "BAN node",
        "no new reads on the node (drain a standby for maintenance)",
    ),
    ("UNBAN node", "end a BAN"),
    ("SHUTDOWN", "stop pgsplit gracefully, as SIGTERM"),
    (
        "EXPLAIN ROUTE [DATABASE name] statement",
        "where an autocommit statement would go and why: node kind, reason, session effects, whether the decision was cached",
    ),
];

/// The list of commands, for error messages.
pub fn command_list() -> String {
    HELP.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
}

/// Splits a query string into its commands (`;`-separated, quotes respected) and parses
/// each; empty commands are dropped.
pub fn parse_all(text: &str) -> Vec<Result<Command, String>> {
    // The statement EXPLAIN ROUTE explains is SQL: its semicolons and quotes are its own.
    if let Some(explained) = explain_route(text) {
        return vec![explained];
    }
    let mut commands = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => {
                commands.push(std::mem::take(&mut current));
            }
            _ => current.push(c),
        }
    }
    commands.push(current);
    commands
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| parse(c))
        .collect()
}

/// Parses one command; the error says what was wrong and lists the commands.
pub fn parse(text: &str) -> Result<Command, String> {
    let words = words(text)?;
    let keyword = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    let unknown = || {
        format!(
            "unknown admin console command \"{}\"; commands: {}",
            text.trim(),
            command_list()
        )
    };
    let node = |i: usize| -> Result<String, String> {
        match (words.get(i), words.get(i + 1)) {
            (Some(name), None) => Ok(name.clone()),
            (None, _) => Err(format!(
                "{} needs a node name (see SHOW NODES)",
                keyword(0).unwrap_or_default()
            )),
            (Some(_), Some(extra)) => Err(format!("unexpected \"{extra}\" after the node name")),
        }
    };
    let optional_node = |i: usize| -> Result<Option<String>, String> {
        if words.len() > i {
            node(i).map(Some)
        } else {
            Ok(None)
        }
    };
    let bare = |command: Command| {
        if words.len() == 1 {
            Ok(command)
        } else {
            Err(format!(
                "{} takes no arguments",
                words[0].to_ascii_uppercase()
            ))
        }
    };
    match keyword(0).as_deref() {
        Some("SHOW") => {
            let what = match keyword(1).as_deref() {
                Some("NODES") => Show::Nodes,
                Some("POOLS") => Show::Pools,
                Some("CLIENTS") => Show::Clients,
                Some("SERVERS") => Show::Servers,
                Some("STATS") => Show::Stats,
                Some("CONFIG") => Show::Config,
                Some("VERSION") => Show::Version,
                Some("HELP") => Show::Help,
                _ => return Err(unknown()),
            };
            if words.len() > 2 {
                return Err(format!(
                    "unexpected \"{}\" after SHOW {}",
                    words[2], words[1]
                ));
            }
            Ok(Command::Show(what))
        }
        Some("RELOAD") => bare(Command::Reload),
        Some("SHUTDOWN") => bare(Command::Shutdown),
        Some("PAUSE") => optional_node(1).map(Command::Pause),
        Some("RESUME") => optional_node(1).map(Command::Resume),
        Some("BAN") => node(1).map(Command::Ban),
        Some("UNBAN") => node(1).map(Command::Unban),
        Some("SET") => Ok(Command::Set),
        Some("EXPLAIN") => explain_route(text).unwrap_or_else(|| Err(unknown())),
        _ => Err(unknown()),
    }
}

/// `EXPLAIN ROUTE [DATABASE name] statement`, when `text` starts so.
fn explain_route(text: &str) -> Option<Result<Command, String>> {
    let mut rest = text.trim_start();
    for keyword in ["EXPLAIN", "ROUTE"] {
        let word = rest.get(..keyword.len())?;
        let after = rest[keyword.len()..].chars().next();
        if !word.eq_ignore_ascii_case(keyword) || after.is_some_and(|c| !c.is_whitespace()) {
            return None;
        }
        rest = rest[keyword.len()..].trim_start();
    }
    let mut database = None;
    let is_database = rest
        .get(..8)
        .is_some_and(|w| w.eq_ignore_ascii_case("DATABASE"))
        && rest[8..].starts_with(char::is_whitespace);
    if is_database {
        let after = rest[8..].trim_start();
        let (name, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((name, next)) => (name, next),
                None => return Some(Err("unterminated quoted database name".into())),
            },
            None => after.split_at(after.find(char::is_whitespace).unwrap_or(after.len())),
        };
        database = Some(name.to_owned());
        rest = next.trim_start();
    }
    let statement = rest.trim_end().trim_end_matches(';').trim_end();
    Some(if statement.is_empty() {
        Err("EXPLAIN ROUTE needs a statement, e.g. EXPLAIN ROUTE SELECT * FROM t FOR UPDATE".into())
    } else {
        Ok(Command::ExplainRoute {
            database,
            statement: statement.to_owned(),
        })
    })
}

/// Words separated by whitespace; a double-quoted word keeps its spaces (`""` is a quote).
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        word.push('"');
                    }
                    Some('"') => break,
                    Some(c) => word.push(c),
                    None => return Err("unterminated quoted name".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_with_node_names_kept_as_written() {
        let cases: &[(&str, Command)] = &[
            ("SHOW NODES", Command::Show(Show::Nodes)),
            ("show pools", Command::Show(Show::Pools)),
            ("  Show   Clients  ", Command::Show(Show::Clients)),
            ("SHOW SERVERS", Command::Show(Show::Servers)),
            ("SHOW STATS", Command::Show(Show::Stats)),
            ("SHOW CONFIG", Command::Show(Show::Config)),
            ("SHOW VERSION", Command::Show(Show::Version)),
            ("SHOW HELP", Command::Show(Show::Help)),
            ("RELOAD", Command::Reload),
            ("PAUSE", Command::Pause(None)),
            ("pause Standby1", Command::Pause(Some("Standby1".into()))),
            ("RESUME", Command::Resume(None)),
            ("RESUME s1", Command::Resume(Some("s1".into()))),
            ("BAN s1", Command::Ban("s1".into())),
            ("ban \"my node\"", Command::Ban("my node".into())),
            ("UNBAN s1", Command::Unban("s1".into())),
            ("SHUTDOWN", Command::Shutdown),
            ("SET extra_float_digits = 3", Command::Set),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        let cases = [
            ("SELECT 1", "commands: SHOW NODES"),
            (
                "SHOW TABLES",
                "unknown admin console command \"SHOW TABLES\"",
            ),
            ("SHOW NODES now", "unexpected \"now\""),
            ("BAN", "BAN needs a node name"),
            ("BAN a b", "unexpected \"b\""),
            ("RELOAD now", "RELOAD takes no arguments"),
            ("BAN \"open", "unterminated"),
        ];
        for (text, needle) in cases {
            match parse(text) {
                Err(e) => assert!(e.contains(needle), "{text}: {e}"),
                Ok(c) => panic!("{text}: parsed as {c:?}"),
            }
        }
    }

    #[test]
    fn explain_route_takes_the_rest_as_sql() {
        let explain = |database: Option<&str>, statement: &str| {
            Ok(Command::ExplainRoute {
                database: database.map(Into::into),
                statement: statement.into(),
            })
        };
        let cases = [
            ("EXPLAIN ROUTE SELECT 1", explain(None, "SELECT 1")),
            (
                "explain  route\n SELECT ';' FROM t; ",
                explain(None, "SELECT ';' FROM t"),
            ),
            (
                "EXPLAIN ROUTE DATABASE app SELECT f(1); SELECT 2;",
                explain(Some("app"), "SELECT f(1); SELECT 2"),
            ),
            (
                "EXPLAIN ROUTE database \"my db\" SELECT 1",
                explain(Some("my db"), "SELECT 1"),
            ),
            ("EXPLAIN ROUTE DATABASES", explain(None, "DATABASES")),
        ];
        for (text, want) in cases {
            assert_eq!(parse_all(text), vec![want.clone()], "{text}");
            assert_eq!(parse(text), want, "{text}");
        }
        for text in [
            "EXPLAIN ROUTE",
            "EXPLAIN ROUTE ;",
            "EXPLAIN ROUTE DATABASE app",
        ] {
            let got = parse_all(text);
            assert!(
                matches!(&got[..], [Err(e)] if e.contains("needs a statement")),
                "{text}: {got:?}"
            );
        }
        for text in [
            "EXPLAIN SELECT 1",
            "EXPLAINROUTE SELECT 1",
            "EXPLAIN ROUTES x",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn several_commands_in_one_query_run_in_order() {
        let all = parse_all("SHOW VERSION; BAN \"a;b\";;");
        assert_eq!(
            all,
            vec![
                Ok(Command::Show(Show::Version)),
                Ok(Command::Ban("a;b".into()))
            ]
        );
        assert!(parse_all("  ; ").is_empty());
    }
}
