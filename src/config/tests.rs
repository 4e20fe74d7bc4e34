use super::*;

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
fn lag_and_ban_settings_default_and_derive() {
    let s = Settings::parse(MINIMAL).unwrap();
    let m = &s.raw.monitor;
    assert_eq!(m.max_lag_bytes, 16 << 20);
    assert_eq!(m.max_lag_time, Duration::from_secs(10));
    assert_eq!(m.readmit_bytes(), 8 << 20);
    assert_eq!(m.readmit_time(), Duration::from_secs(5));
    assert_eq!(m.readmit_after_polls, 2);
    assert_eq!(m.max_ban, Duration::from_secs(30));

    let text = format!(
        "[monitor]\nmax_lag_bytes = 65536\nreadmit_lag_bytes = 1000\n\
         max_lag_time = \"0s\"\nmax_ban = \"2s\"\n{MINIMAL}"
    );
    let s = Settings::parse(&text).unwrap();
    let m = &s.raw.monitor;
    assert_eq!(
        (m.readmit_bytes(), m.readmit_time()),
        (1000, Duration::ZERO)
    );
    assert_eq!(m.max_ban, Duration::from_secs(2));
}

#[test]
fn lag_and_ban_settings_that_make_no_sense_name_their_key() {
    let cases = [
        (
            "max_lag_bytes = 1000\nreadmit_lag_bytes = 1001",
            "monitor.readmit_lag_bytes",
        ),
        (
            "max_lag_bytes = 0\nreadmit_lag_bytes = 10",
            "monitor.readmit_lag_bytes",
        ),
        (
            "max_lag_time = \"1s\"\nreadmit_lag_time = \"2s\"",
            "monitor.readmit_lag_time",
        ),
        (
            "max_lag_time = \"0s\"\nreadmit_lag_time = \"1s\"",
            "monitor.readmit_lag_time",
        ),
        ("readmit_after_polls = 0", "monitor.readmit_after_polls"),
        (
            "lag_check_interval = \"1s\"\nmax_ban = \"500ms\"",
            "monitor.max_ban",
        ),
        ("max_ban = \"0s\"", "monitor.max_ban"),
    ];
    for (monitor, key) in cases {
        let text = format!("[monitor]\n{monitor}\n{MINIMAL}");
        match Settings::parse(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error on {key}, got {other:?}"),
        }
    }
    let ok = "[monitor]\nmax_lag_bytes = 1000\nreadmit_lag_bytes = 1000\n";
    assert!(
        Settings::parse(&format!("{ok}{MINIMAL}")).is_ok(),
        "equal bounds are fine"
    );
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
fn unknown_keys_and_methods_are_rejected() {
    let typo = format!("listne = \"x\"\n{MINIMAL}");
    let err = Settings::parse(&typo).unwrap_err().to_string();
    assert!(err.contains("listne"), "{err}");
    let method = MINIMAL.replace("password = \"secret\"", "auth_method = \"kerberos\"");
    let err = Settings::parse(&method).unwrap_err().to_string();
    assert!(err.contains("kerberos"), "{err}");
}

#[test]
fn access_rules_are_parsed_in_order_with_defaults() {
    let text = format!(
        "{MINIMAL}\n[[hba]]\nuser = \"mallory\"\nmethod = \"reject\"\n\
         [[hba]]\naddress = \"10.0.0.0/8\"\ndatabase = [\"app\", \"ops\"]\nmethod = \"md5\"\n"
    );
    let s = Settings::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hba.len(), 2);
    assert_eq!(s.hba[0].network, Network::All);
    assert_eq!(s.hba[0].databases, Names::All);
    assert_eq!(s.hba[0].users, Names::Only(vec!["mallory".into()]));
    assert_eq!(s.hba[0].method, Method::Reject);
    assert_eq!(
        s.hba[1].databases,
        Names::Only(vec!["app".into(), "ops".into()])
    );
    assert_eq!(s.hba[1].method, Method::Md5);
    assert!(Settings::parse(MINIMAL).unwrap().hba.is_empty());
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
fn a_malformed_password_is_not_echoed_in_the_error() {
    let nodes = "[[nodes]]\naddress = \"127.0.0.1:5432\"\n";
    let cases = [
        "[[users]]\nname = \"app\"\npassword = \"s3cr3t-unterminated\n",
        "[[users]]\nname = \"app\"\npassword = 738196245\n",
        "[[users]]\nname = \"app\"\npassword = \"x\"\nserver_password = 738196245\n",
        "[monitor]\npassword = [\"s3cr3t-in-a-list\"]\n[[users]]\nname = \"app\"\npassword = \"x\"\n",
    ];
    for users in cases {
        let text = format!("{nodes}{users}");
        let e = Settings::parse(&text).expect_err("malformed").to_string();
        assert!(
            !e.contains("s3cr3t") && !e.contains("738196245"),
            "{text}\nechoed: {e}"
        );
        assert!(e.contains("line "), "says where: {e}");
    }
    // Errors elsewhere still say what is wrong.
    let e = Settings::parse(&format!("max_client_conn = \"many\"\n{MINIMAL}"))
        .expect_err("malformed")
        .to_string();
    assert!(e.contains("line 1") && e.contains("invalid type"), "{e}");
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
