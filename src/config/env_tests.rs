//! The environment layer and `ConfigSource`: names, conversions, lists, errors, masking.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::env::{Kind, ALLOWED, KEYS, LISTS, NO_SHORT_FORM, SECTIONS};
use super::source::MASK;
use super::*;

fn source(file: Option<PathBuf>, vars: &[(&str, &str)]) -> ConfigSource {
    ConfigSource {
        file,
        env: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    source(None, vars).load()
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
fn environment_alone_configures_everything() {
    let s = load(&[
        (
            "PGSPLIT_NODES",
            "primary@10.0.0.1:5432, replica1@10.0.0.2:5432?weight=2&server_tls=require,10.0.0.3:5432",
        ),
        ("PGSPLIT_USERS", "app:se:cr, report:12345"),
        ("PGSPLIT_LISTEN", "0.0.0.0:6432"),
        ("PGSPLIT_MAX_CLIENT_CONN", "50"),
        ("PGSPLIT_VERIFY_CLIENT", "false"),
        ("PGSPLIT_ADMIN_USERS", "app, report"),
        ("PGSPLIT_LOG_FORMAT", "json"),
        ("PGSPLIT_METRICS_LISTEN", "127.0.0.1:9930"),
        ("PGSPLIT_MONITOR_PASSWORD", "12345"),
        ("PGSPLIT_MAX_LAG_BYTES", "1048576"),
        ("PGSPLIT_MONITOR_MAX_LAG_TIME", "3s"),
        ("PGSPLIT_PRIMARY_READS", "never"),
        ("PGSPLIT_WRITE_FUNCTIONS", "audit.log_it,bump"),
        ("PGSPLIT_POOL_MODE", "session"),
    ])
    .unwrap_or_else(|e| panic!("environment alone: {e}"));
    let nodes: Vec<(&str, &str, u32)> = s
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.address.as_str(), n.weight))
        .collect();
    assert_eq!(
        nodes,
        [
            ("primary", "10.0.0.1:5432", 1),
            ("replica1", "10.0.0.2:5432", 2),
            ("node2", "10.0.0.3:5432", 1)
        ]
    );
    assert_eq!(s.raw.nodes[1].server_tls, Some(ServerTlsMode::Require));
    let app = s.user("app").expect("app");
    assert_eq!(
        app.server_password, "se:cr",
        "everything after the first ':'"
    );
    let users: Vec<&str> = s.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(users, ["app", "report"], "a comma ends a user");
    assert_eq!(s.user("report").expect("report").server_password, "12345");
    assert_eq!(
        s.raw.monitor.password, "12345",
        "a number-like password stays a string"
    );
    assert_eq!(s.listen.to_string(), "0.0.0.0:6432");
    assert_eq!(s.raw.max_client_conn, 50);
    assert_eq!(s.raw.admin_users, ["app", "report"]);
    assert_eq!(s.raw.log_format, LogFormat::Json);
    assert_eq!(s.metrics_listen.map(|a| a.port()), Some(9930));
    assert_eq!(s.raw.monitor.max_lag_bytes, 1 << 20);
    assert_eq!(s.raw.monitor.max_lag_time, Duration::from_secs(3));
    assert_eq!(s.raw.routing.primary_reads, PrimaryReads::Never);
    assert_eq!(s.raw.routing.write_functions, ["audit.log_it", "bump"]);
    assert_eq!(s.raw.pool.mode, PoolMode::Session);
}

fn temp_config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write temp config");
    file
}

const FILE: &str = r#"
    listen = "127.0.0.1:7000"
    [monitor]
    max_lag_bytes = 100
    readmit_after_polls = 3
    [pool]
    max_pool_size = 7
    [[nodes]]
    name = "a"
    address = "10.0.0.1:5432"
    [[nodes]]
    name = "b"
    address = "10.0.0.2:5432"
    [[users]]
    name = "app"
    password = "secret"
"#;

#[test]
fn environment_overrides_the_file() {
    let file = temp_config(FILE);
    let s = source(
        Some(file.path().to_owned()),
        &[
            ("PGSPLIT_MAX_LAG_BYTES", "200"),
            ("PGSPLIT_POOL_MAX_POOL_SIZE", "9"),
            ("PGSPLIT_NODES_1_WEIGHT", "5"),
            ("PGSPLIT_NODES_2_ADDRESS", "10.0.0.3:5432"),
            ("PGSPLIT_NODES_2_NAME", "c"),
            ("PGSPLIT_USERS_0_SERVER_PASSWORD", "other"),
        ],
    )
    .load()
    .unwrap_or_else(|e| panic!("file + environment: {e}"));
    assert_eq!(s.listen.port(), 7000, "kept from the file");
    assert_eq!(s.raw.monitor.readmit_after_polls, 3, "kept from the file");
    assert_eq!(s.raw.monitor.max_lag_bytes, 200);
    assert_eq!(s.raw.pool.max_pool_size, 9);
    let nodes: Vec<(&str, u32)> = s
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.weight))
        .collect();
    assert_eq!(nodes, [("a", 1), ("b", 5), ("c", 1)]);
    let app = s.user("app").expect("app");
    assert_eq!(app.server_password, "other");

    let replaced = source(
        Some(file.path().to_owned()),
        &[("PGSPLIT_NODES", "z@10.0.0.9:5432")],
    )
    .load()
    .unwrap_or_else(|e| panic!("shorthand over the file: {e}"));
    let names: Vec<&str> = replaced.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["z"], "a shorthand replaces the file's list");
}

#[test]
fn every_load_reads_the_file_again() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<ConfigSource>();
    let file = temp_config(FILE);
    for env in [vec![], vec![("PGSPLIT_MAX_CLIENT_CONN", "5")]] {
        let src = source(Some(file.path().to_owned()), &env);
        std::fs::write(file.path(), FILE).expect("write");
        assert_eq!(src.load().expect("first load").listen.port(), 7000);
        std::fs::write(file.path(), FILE.replace("7000", "7001")).expect("rewrite");
        assert_eq!(src.load().expect("reload").listen.port(), 7001, "{env:?}");
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
fn masked_toml_hides_every_password() {
    let file = temp_config(
        "[[users]]\nname = \"app\"\npassword = \"app-pass-1\"\nserver_password = \"server-pass-2\"\n\
         [[users]]\nname = \"trusty\"\nauth_method = \"trust\"\n",
    );
    let s = source(
        Some(file.path().to_owned()),
        &[
            ("PGSPLIT_NODES", "pg1@10.0.0.1:5432,pg2@10.0.0.2:5432"),
            ("PGSPLIT_MONITOR_PASSWORD", "monitor-pass-3"),
        ],
    )
    .load()
    .unwrap_or_else(|e| panic!("{e}"));
    let text = s.raw.masked_toml().expect("serializes");
    for secret in ["app-pass-1", "server-pass-2", "monitor-pass-3"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    assert_eq!(text.matches(MASK).count(), 3, "{text}");
    assert!(text.contains("address = \"10.0.0.2:5432\""), "{text}");
    let again = Settings::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again.nodes, s.nodes, "the printed config reads back");
    assert_eq!(again.raw.monitor.max_lag_time, s.raw.monitor.max_lag_time);
    assert_eq!(
        again.user("trusty").expect("trusty").method,
        AuthMethod::Trust
    );
}

#[test]
fn debug_output_shows_no_values() {
    let src = source(None, &[("PGSPLIT_USERS", "app:hunter2")]);
    let debug = format!("{src:?}");
    assert!(
        debug.contains("PGSPLIT_USERS") && !debug.contains("hunter2"),
        "{debug}"
    );
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
fn access_rules_come_from_indexed_variables_only() {
    let s = load(&with_base(&[
        ("PGSPLIT_HBA_0_USER", "app, ops"),
        ("PGSPLIT_HBA_0_METHOD", "trust"),
        ("PGSPLIT_HBA_1_ADDRESS", "10.0.0.0/8"),
        ("PGSPLIT_HBA_1_METHOD", "reject"),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hba.len(), 2);
    assert_eq!(
        s.hba[0].users,
        crate::hba::Names::Only(vec!["app".into(), "ops".into()])
    );
    assert_eq!(s.hba[1].method, crate::hba::Method::Reject);
    let err = load(&with_base(&[("PGSPLIT_HBA", "all all all trust")]))
        .expect_err("no shorthand")
        .to_string();
    assert!(
        err.starts_with("PGSPLIT_HBA:") && err.contains("PGSPLIT_HBA_<i>_<FIELD>"),
        "{err}"
    );
}

#[test]
fn a_malformed_password_in_a_file_under_variables_is_not_echoed() {
    for users in [
        "[[users]]\nname = \"app\"\npassword = 738196245\n",
        "[[users]]\nname = \"app\"\npassword = \"s3cr3t-unterminated\n",
    ] {
        let file = temp_config(&format!("[[nodes]]\naddress = \"127.0.0.1:5432\"\n{users}"));
        let e = source(
            Some(file.path().to_path_buf()),
            &[("PGSPLIT_MAX_CLIENT_CONN", "5")],
        )
        .load()
        .expect_err("malformed")
        .to_string();
        assert!(
            !e.contains("s3cr3t") && !e.contains("738196245"),
            "{users}\nechoed: {e}"
        );
        assert!(e.contains("password"), "names the key: {e}");
    }
}
