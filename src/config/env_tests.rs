//! The environment layer: names, conversions, lists, errors; and that the example file
//! and the README document every key. Loading through `ConfigSource` is tested in
//! `settings`.

use std::collections::BTreeSet;

use super::env::{Kind, ALLOWED, KEYS, LISTS, NO_SHORT_FORM, SECTIONS};
use super::*;

/// The variables alone, laid over an empty table and checked, as `ConfigSource::load`
/// does before it builds anything.
fn load(vars: &[(&str, &str)]) -> Result<Checked, ConfigError> {
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let (raw, origins) = layered(None, &env)?;
    raw.validate().map_err(|e| origins.attribute(e))
}

const BASE: &[(&str, &str)] = &[
    ("PGSPLIT_NODES", "127.0.0.1:5432"),
    ("PGSPLIT_USERS", "app:secret"),
];

fn with_base<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = BASE.to_vec();
    all.extend_from_slice(vars);
    all
}

/// Serde's names after "expected" in an unknown field or variant error for `toml`.
fn expected_names(toml: &str) -> BTreeSet<String> {
    let err = match toml::from_str::<Config>(toml) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{toml}: expected an error"),
    };
    let line = err
        .lines()
        .find(|l| l.contains("unknown field") || l.contains("unknown variant"))
        .unwrap_or_else(|| panic!("{toml}: no unknown field/variant error in: {err}"));
    let (_, list) = line
        .split_once("expected")
        .unwrap_or_else(|| panic!("{toml}: no expected list in: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn names(items: impl IntoIterator<Item = &'static str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

#[test]
fn env_table_covers_every_field_of_the_schema() {
    let top = KEYS
        .iter()
        .filter(|k| k.section.is_none())
        .map(|k| k.name)
        .chain(SECTIONS.iter().copied())
        .chain(LISTS.iter().map(|l| l.name));
    assert_eq!(
        expected_names("zzz_not_a_key = 1"),
        names(top),
        "top-level keys vs. the env table"
    );
    for section in SECTIONS {
        let keys = KEYS
            .iter()
            .filter(|k| k.section == Some(section))
            .map(|k| k.name);
        assert_eq!(
            expected_names(&format!("[{section}]\nzzz_not_a_key = 1")),
            names(keys),
            "keys of [{section}] vs. the env table"
        );
    }
    for list in LISTS {
        assert_eq!(
            expected_names(&format!("[[{}]]\nzzz_not_a_key = 1", list.name)),
            names(list.fields.iter().map(|(f, _)| *f)),
            "fields of [[{}]] vs. the env table",
            list.name
        );
    }
}

#[test]
fn enum_kinds_list_every_variant() {
    let mut checked = 0;
    for key in KEYS {
        if let Kind::Enum(variants) = key.kind {
            let toml = match key.section {
                None => format!("{} = \"zzz\"", key.name),
                Some(section) => format!("[{section}]\n{} = \"zzz\"", key.name),
            };
            assert_eq!(
                expected_names(&toml),
                names(variants.iter().copied()),
                "{toml}"
            );
            checked += 1;
        }
    }
    for list in LISTS {
        for (field, kind) in list.fields {
            if let Kind::Enum(variants) = kind {
                let toml = format!("[[{}]]\n{field} = \"zzz\"", list.name);
                assert_eq!(
                    expected_names(&toml),
                    names(variants.iter().copied()),
                    "{toml}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} enum keys checked");
}

#[test]
fn variable_names_are_unique_and_follow_the_rule() {
    let mut seen = BTreeSet::new();
    let mut add = |name: String| assert!(seen.insert(name.clone()), "{name} names two things");
    for key in KEYS {
        add(key.full_var());
        if let Some(short) = key.short_var() {
            add(short);
        }
    }
    for list in LISTS {
        add(format!("PGSPLIT_{}", list.name.to_uppercase()));
    }
    for allowed in ALLOWED {
        add((*allowed).to_owned());
    }
    for name in &seen {
        for list in LISTS {
            let indexed = format!("PGSPLIT_{}_", list.name.to_uppercase());
            assert!(
                !name.starts_with(&indexed),
                "{name} looks like a list entry"
            );
        }
    }
    let short = |section: &str, name: &str| {
        KEYS.iter()
            .find(|k| k.section == Some(section) && k.name == name)
            .and_then(|k| k.short_var())
    };
    assert_eq!(
        short("monitor", "max_lag_bytes").as_deref(),
        Some("PGSPLIT_MAX_LAG_BYTES")
    );
    assert_eq!(
        short("pool", "max_pool_size").as_deref(),
        Some("PGSPLIT_MAX_POOL_SIZE")
    );
    assert_eq!(short("metrics", "listen"), None, "clashes with listen");
    // Pinned: a key added later with the same name as a short form would silently take
    // that short form away from deployments that use it.
    let shorts: BTreeSet<String> = KEYS.iter().filter_map(|k| k.short_var()).collect();
    let pinned = [
        "LAG_CHECK_INTERVAL",
        "MAX_LAG_BYTES",
        "MAX_LAG_TIME",
        "READMIT_LAG_BYTES",
        "READMIT_LAG_TIME",
        "READMIT_AFTER_POLLS",
        "MAX_BAN",
        "TRANSACTION_ROUTING",
        "BALANCE_STRATEGY",
        "PRIMARY_READS",
        "CLASSIFY_CACHE_SIZE",
        "READ_ONLY_FUNCTIONS",
        "WRITE_FUNCTIONS",
        "FUNCTION_REFRESH_INTERVAL",
        "READ_YOUR_WRITES",
        "READ_YOUR_WRITES_WAIT",
        "MIN_POOL_SIZE",
        "MAX_POOL_SIZE",
        "IDLE_TIMEOUT",
        "SERVER_LIFETIME",
        "CHECKOUT_TIMEOUT",
        "SERVER_CHECK_DELAY",
        "PREPARED_STATEMENTS_CACHE_SIZE",
    ];
    assert_eq!(
        shorts,
        pinned.iter().map(|s| format!("PGSPLIT_{s}")).collect(),
        "short forms changed"
    );
    for (section, name) in NO_SHORT_FORM {
        assert_eq!(short(section, name), None, "{section}.{name}");
    }
}

#[test]
fn bad_variables_are_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("PGSPLIT_MAX_LAG_BYTES", "abc")],
            "PGSPLIT_MAX_LAG_BYTES: \"abc\" is not an integer",
        ),
        (&[("PGSPLIT_MAX_POOL_SIZE", "-1")], "PGSPLIT_MAX_POOL_SIZE: \"-1\" is negative"),
        (
            &[("PGSPLIT_MAX_LAG_BYTES", "1"), ("PGSPLIT_MONITOR_MAX_LAG_BYTES", "2")],
            "PGSPLIT_MAX_LAG_BYTES and PGSPLIT_MONITOR_MAX_LAG_BYTES: both set monitor.max_lag_bytes",
        ),
        (&[("PGSPLIT_MAX_LAG_BYTE", "1")], "PGSPLIT_MAX_LAG_BYTE: no such setting"),
        (&[("PGSPLIT_MONITOR_USER_NAME", "x")], "PGSPLIT_MONITOR_USER_NAME: no such setting"),
        (&[("PGSPLIT_VERIFY_CLIENT", "maybe")], "PGSPLIT_VERIFY_CLIENT: \"maybe\" is not a boolean"),
        (&[("PGSPLIT_MAX_BAN", "30")], "PGSPLIT_MAX_BAN: \"30\" is not a duration"),
        (
            &[("PGSPLIT_TLS_MODE", "on")],
            "PGSPLIT_TLS_MODE: \"on\" is not one of disable, allow, require",
        ),
        (
            &[("PGSPLIT_NODES_0_WEIGHT", "2")],
            "PGSPLIT_NODES and PGSPLIT_NODES_0_WEIGHT: both set nodes",
        ),
        (&[("PGSPLIT_NODES_0_PORT", "1")], "PGSPLIT_NODES_0_PORT: nodes has no such field"),
        (
            &[("PGSPLIT_MAX_POOL_SIZE", "0")],
            "pool.max_pool_size: must be at least 1 (set by PGSPLIT_MAX_POOL_SIZE)",
        ),
        (
            &[("PGSPLIT_ADMIN_USERS", "app,nobody")],
            "admin_users[1]: \"nobody\" is not one of the users (set by PGSPLIT_ADMIN_USERS)",
        ),
    ];
    for (vars, expected) in cases {
        let err = load(&with_base(vars)).expect_err(expected).to_string();
        assert!(
            err.contains(expected),
            "{vars:?}: expected {expected:?}, got {err:?}"
        );
    }
    let alone: &[(&[(&str, &str)], &str)] = &[
        (
            &[("PGSPLIT_NODES", "db:70000"), ("PGSPLIT_USERS", "a:b")],
            "nodes[0].address: \"db:70000\" has no valid port (1-65535) (set by PGSPLIT_NODES)",
        ),
        (
            &[("PGSPLIT_NODES", "a@h:1?weight=x"), ("PGSPLIT_USERS", "a:b")],
            "PGSPLIT_NODES: nodes[0] (\"a@h:1?weight=x\"): weight: \"x\" is not an integer",
        ),
        (
            &[("PGSPLIT_NODES", "h:1?port=2"), ("PGSPLIT_USERS", "a:b")],
            "\"port\" is not a node setting",
        ),
        (
            &[("PGSPLIT_NODES", "h:1"), ("PGSPLIT_USERS", "a:b,hunter2")],
            "PGSPLIT_USERS: users[1] has no ':' between name and password",
        ),
        (
            &[("PGSPLIT_NODES_0_ADDRESS", "h:1"), ("PGSPLIT_NODES_2_ADDRESS", "h:2"), ("PGSPLIT_USERS", "a:b")],
            "PGSPLIT_NODES_2_ADDRESS: nodes would have no entry 1",
        ),
        (
            &[("PGSPLIT_NODES_0_WEIGHT", "2"), ("PGSPLIT_USERS", "a:b")],
            "PGSPLIT_NODES_0_WEIGHT: starts a new entry of nodes, which needs PGSPLIT_NODES_0_ADDRESS",
        ),
        (
            &[("PGSPLIT_NODES_0_ADDRESS", "h:70000"), ("PGSPLIT_USERS", "a:b")],
            "nodes[0].address: \"h:70000\" has no valid port (1-65535) (set by PGSPLIT_NODES_0_ADDRESS)",
        ),
        (&[("PGSPLIT_USERS", "a:b")], "nodes: none configured: set [[nodes]] in the file or PGSPLIT_NODES"),
        (&[], "nodes: none configured"),
    ];
    for (vars, expected) in alone {
        let err = load(vars).expect_err(expected).to_string();
        assert!(
            err.contains(expected),
            "{vars:?}: expected {expected:?}, got {err:?}"
        );
        assert!(
            !err.contains("hunter2"),
            "a password reached an error: {err}"
        );
    }
}

#[test]
fn example_file_and_readme_document_every_key() {
    let example = include_str!("../../config/pgsplit.toml");
    let readme = include_str!("../../README.md");
    for key in KEYS {
        let (name, var) = (key.name, key.full_var());
        assert!(
            example.contains(&format!("{name} =")),
            "config/pgsplit.toml does not document {}",
            key.path()
        );
        assert!(readme.contains(&var), "README.md does not mention {var}");
        if let Some(short) = key.short_var() {
            assert!(
                readme.contains(&short),
                "README.md does not mention {short}"
            );
        }
    }
    for list in LISTS {
        for (field, _) in list.fields {
            assert!(
                example.contains(&format!("{field} =")),
                "config/pgsplit.toml does not document {}[].{field}",
                list.name
            );
            let var = format!(
                "PGSPLIT_{}_<i>_{}",
                list.name.to_uppercase(),
                field.to_uppercase()
            );
            assert!(readme.contains(&var), "README.md does not mention {var}");
        }
    }
}

#[test]
fn every_duration_key_has_an_upper_bound() {
    let mut checked = 0;
    for key in KEYS.iter().filter(|k| k.kind == Kind::Duration) {
        let var = key.full_var();
        let err = load(&with_base(&[(var.as_str(), "1000000000years")]))
            .expect_err(&var)
            .to_string();
        let expected = format!("{}: 1000000000years is longer than 100years", key.path());
        assert!(
            err.starts_with(&expected) && err.ends_with(&format!("(set by {var})")),
            "{var}: {err}"
        );
        checked += 1;
    }
    assert_eq!(checked, 16, "every duration key of the schema");
}
