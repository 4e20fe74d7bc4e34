//! Loading: checks and what is built from the values (users' secrets, TLS from files,
//! access rules against passwords), through `Settings::parse` and `Settings::load`.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::AuthMethod;

const MINIMAL: &str = r#"
    [[nodes]]
    address = "127.0.0.1:5432"
    [[users]]
    name = "app"
    password = "secret"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let s = Settings::parse(MINIMAL).unwrap();
    assert_eq!(s.listen.to_string(), "127.0.0.1:6432");
    assert_eq!(s.nodes[0].name, "node0");
    assert_eq!(s.nodes[0].weight, 1);
    assert_eq!(s.raw.monitor.lag_check_interval, Duration::from_millis(500));
    let app = s.user("app").unwrap();
    assert_eq!(app.method, AuthMethod::ScramSha256);
    assert_eq!(
        (app.server_user.as_str(), app.server_password.as_str()),
        ("app", "secret")
    );
    // PostgreSQL's own limits; connection limits off.
    assert_eq!(s.raw.max_message_size, 1_073_741_822);
    assert_eq!(s.raw.max_startup_packet_size, 10_000);
    assert_eq!(
        (s.raw.max_user_connections, s.raw.max_db_connections),
        (0, 0)
    );
    assert_eq!(app.max_connections, 0);
}

#[test]
fn a_users_max_connections_overrides_max_user_connections() {
    // Top-level keys go before the first table.
    let users = MINIMAL.replacen(
        "[[users]]",
        "[[users]]\nname = \"ops\"\npassword = \"x\"\nmax_connections = 1\n\n[[users]]",
        1,
    );
    let text = format!("max_user_connections = 5\n{users}");
    let s = Settings::parse(&text).unwrap();
    assert_eq!(s.user("ops").map(|u| u.max_connections), Some(1));
    assert_eq!(s.user("app").map(|u| u.max_connections), Some(5));
}

#[test]
fn example_config_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pgsplit.toml");
    let s = Settings::load(Path::new(path)).unwrap();
    assert!(s.nodes.len() >= 2);
}

#[test]
fn invalid_values_name_their_key() {
    let cases = [
        ("listen = \"nowhere\"\n", "listen"),
        ("max_client_conn = 0\n", "max_client_conn"),
        ("max_message_size = 4294967296\n", "max_message_size"),
        ("max_startup_packet_size = 16\n", "max_startup_packet_size"),
        ("auth_timeout = \"0s\"\n", "auth_timeout"),
        (
            "[monitor]\nlag_check_interval = \"0ms\"\n",
            "monitor.lag_check_interval",
        ),
        ("[pool]\nmax_pool_size = 0\n", "pool.max_pool_size"),
        (
            "[pool]\nmin_pool_size = 5\nmax_pool_size = 2\n",
            "pool.min_pool_size",
        ),
        (
            "[pool]\ncheckout_timeout = \"0s\"\n",
            "pool.checkout_timeout",
        ),
        ("tls_mode = \"require\"\n", "tls_cert_file"),
        ("tls_mode = \"allow\"\nverify_client = true\n", "verify_client"),
        (
            "tls_mode = \"allow\"\ntls_cert_file = \"/nonexistent.pem\"\ntls_key_file = \"/nonexistent.key\"\n",
            "tls_cert_file",
        ),
    ];
    for (prefix, key) in cases {
        let text = format!("{prefix}{MINIMAL}");
        match Settings::parse(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error on {key}, got {other:?}"),
        }
    }
    let bad_nodes = [
        ("[[nodes]]\naddress = \"localhost\"\n", "nodes[0].address"),
        ("[[nodes]]\naddress = \"h:70000\"\n", "nodes[0].address"),
        (
            "[[nodes]]\nname = \"a\"\naddress = \"h:1\"\n[[nodes]]\nname = \"a\"\naddress = \"h:2\"\n",
            "nodes[1].name",
        ),
    ];
    for (nodes, key) in bad_nodes {
        let text = format!("{nodes}[[users]]\nname = \"app\"\npassword = \"x\"\n");
        match Settings::parse(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error on {key}, got {other:?}"),
        }
    }
}

#[test]
fn hashed_passwords_need_a_server_password() {
    let text = r#"
        [[nodes]]
        address = "127.0.0.1:5432"
        [[users]]
        name = "app"
        auth_method = "md5"
        password = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "#;
    match Settings::parse(text) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "users[0].server_password"),
        other => panic!("expected server_password error, got {other:?}"),
    }
}

#[test]
fn bad_access_rules_name_their_key() {
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    let cases = [
        (
            "[[hba]]\naddress = \"10.0.0.0/33\"\nmethod = \"trust\"\n",
            "hba[1].address",
        ),
        (
            "[[hba]]\naddress = \"localhost\"\nmethod = \"trust\"\n",
            "hba[1].address",
        ),
        ("[[hba]]\nmethod = \"password\"\n", "hba[1].method"),
        (
            "[[hba]]\ndatabase = []\nmethod = \"trust\"\n",
            "hba[1].database",
        ),
        (
            "[[hba]]\nuser = [\"\"]\nmethod = \"trust\"\n",
            "hba[1].user",
        ),
        // A client certificate is only verified with verify_client.
        ("[[hba]]\nmethod = \"cert\"\n", "hba[1].method"),
        // "v" has a SCRAM verifier, which cannot check md5.
        (
            "[[hba]]\nuser = [\"app\", \"v\"]\nmethod = \"md5\"\n",
            "hba[1].user",
        ),
    ];
    for (rule, key) in cases {
        let text = format!(
            "{MINIMAL}\n[[users]]\nname = \"v\"\npassword = \"{verifier}\"\nserver_password = \"x\"\n\
             [[hba]]\nmethod = \"trust\"\n{rule}"
        );
        match Settings::parse(&text) {
            Err(ConfigError::Invalid { key: k, message }) => {
                assert_eq!(k, key, "{rule}: {message}")
            }
            other => panic!("{rule}: expected an error naming {key}, got {other:?}"),
        }
    }
}

#[test]
fn debug_output_of_the_configuration_shows_no_password() {
    let verifier = postgres_protocol::password::scram_sha_256(b"pw");
    let text = format!(
        "[monitor]\npassword = \"monitor-s3cr3t\"\n\
         [[nodes]]\naddress = \"127.0.0.1:5432\"\n\
         [[users]]\nname = \"app\"\npassword = \"app-s3cr3t\"\n\
         [[users]]\nname = \"v\"\npassword = \"{verifier}\"\nserver_password = \"server-s3cr3t\"\n"
    );
    let settings = Settings::parse(&text).unwrap();
    let debug = format!("{settings:?}");
    let keys = verifier.rsplit('$').next().unwrap();
    assert!(
        !debug.contains("s3cr3t") && !debug.contains(keys),
        "{debug}"
    );
    assert!(debug.contains("(redacted)"), "{debug}");
}

#[test]
fn the_default_startup_packet_limit_is_the_protocols() {
    // `config` keeps its own copy of the constant: it imports nothing of the crate.
    assert_eq!(
        crate::config::MAX_STARTUP_PACKET,
        crate::protocol::MAX_STARTUP_PACKET
    );
}

#[test]
fn a_file_named_by_a_variable_is_read_here_and_the_variable_named() {
    let source = ConfigSource {
        file: None,
        env: [
            ("PGSPLIT_NODES", "127.0.0.1:5432"),
            ("PGSPLIT_USERS", "app:secret"),
            ("PGSPLIT_TLS_MODE", "allow"),
            ("PGSPLIT_TLS_CERT_FILE", "/nonexistent.pem"),
            ("PGSPLIT_TLS_KEY_FILE", "/nonexistent.key"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
    };
    let err = source.load().expect_err("no such file").to_string();
    assert!(
        err.starts_with("tls_cert_file: /nonexistent.pem")
            && err.ends_with("(set by PGSPLIT_TLS_CERT_FILE)"),
        "{err}"
    );
    // The checks of values alone pass: the file is what is wrong.
    let (raw, _) = crate::config::layered(None, &source.env).unwrap();
    assert!(raw.validate().is_ok());
}
