//! Loading from a `ConfigSource`: the environment alone, over a file, read again on
//! every load; and what is built from it (users, access rules) and printed of it.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::config::{AuthMethod, LogFormat, PoolMode, PrimaryReads, ServerTlsMode, MASK};

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
