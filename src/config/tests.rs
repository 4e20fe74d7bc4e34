//! Checks of the values alone: what `settings` builds from them is tested there.

use std::time::Duration;

use super::access::{Method, Names, Network};
use super::*;

const MINIMAL: &str = r#"
    [[nodes]]
    address = "127.0.0.1:5432"
    [[users]]
    name = "app"
    password = "secret"
"#;

/// Parses and checks `text`, as `settings` does before it builds anything.
fn check(text: &str) -> Result<(Config, Checked), ConfigError> {
    let config = Config::parse(text)?;
    let checked = config.validate()?;
    Ok((config, checked))
}

#[test]
fn lag_and_ban_settings_default_and_derive() {
    let (raw, _) = check(MINIMAL).unwrap();
    let m = &raw.monitor;
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
    let (raw, _) = check(&text).unwrap();
    let m = &raw.monitor;
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
        match check(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
            other => panic!("{text}: expected an error on {key}, got {other:?}"),
        }
    }
    let ok = "[monitor]\nmax_lag_bytes = 1000\nreadmit_lag_bytes = 1000\n";
    assert!(
        check(&format!("{ok}{MINIMAL}")).is_ok(),
        "equal bounds are fine"
    );
}

#[test]
fn unknown_keys_and_methods_are_rejected() {
    let typo = format!("listne = \"x\"\n{MINIMAL}");
    let err = check(&typo).unwrap_err().to_string();
    assert!(err.contains("listne"), "{err}");
    let method = MINIMAL.replace("password = \"secret\"", "auth_method = \"kerberos\"");
    let err = check(&method).unwrap_err().to_string();
    assert!(err.contains("kerberos"), "{err}");
}

#[test]
fn access_rules_are_parsed_in_order_with_defaults() {
    let text = format!(
        "{MINIMAL}\n[[hba]]\nuser = \"mallory\"\nmethod = \"reject\"\n\
         [[hba]]\naddress = \"10.0.0.0/8\"\ndatabase = [\"app\", \"ops\"]\nmethod = \"md5\"\n"
    );
    let (_, s) = check(&text).unwrap_or_else(|e| panic!("{e}"));
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
    assert!(check(MINIMAL).unwrap().1.hba.is_empty());
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
        let e = check(&text).expect_err("malformed").to_string();
        assert!(
            !e.contains("s3cr3t") && !e.contains("738196245"),
            "{text}\nechoed: {e}"
        );
        assert!(e.contains("line "), "says where: {e}");
    }
    // Errors elsewhere still say what is wrong.
    let e = check(&format!("max_client_conn = \"many\"\n{MINIMAL}"))
        .expect_err("malformed")
        .to_string();
    assert!(e.contains("line 1") && e.contains("invalid type"), "{e}");
}

#[test]
fn durations_have_an_upper_bound() {
    // (keys, whether the value is refused)
    let cases: &[(&str, Option<&str>)] = &[
        ("auth_timeout = \"1000000000 years\"", Some("auth_timeout")),
        ("auth_timeout = \"100years\"", None),
        ("auth_timeout = \"101years\"", Some("auth_timeout")),
        (
            "client_write_timeout = \"200years\"",
            Some("client_write_timeout"),
        ),
        (
            "shutdown_timeout = \"1000000000 years\"",
            Some("shutdown_timeout"),
        ),
        (
            "idle_in_transaction_timeout = \"1000000000 years\"",
            Some("idle_in_transaction_timeout"),
        ),
        ("connect_timeout = \"365000days\"", Some("connect_timeout")),
        (
            "[monitor]\nlag_check_interval = \"1000000000 years\"\nmax_ban = \"1000000000 years\"",
            Some("monitor.lag_check_interval"),
        ),
        (
            "[monitor]\nquery_timeout = \"1000000000 years\"",
            Some("monitor.query_timeout"),
        ),
        (
            "[monitor]\nmax_lag_time = \"1000000000 years\"",
            Some("monitor.max_lag_time"),
        ),
        (
            "[monitor]\nreadmit_lag_time = \"1000000000 years\"",
            Some("monitor.readmit_lag_time"),
        ),
        (
            "[monitor]\nmax_ban = \"1000000000 years\"",
            Some("monitor.max_ban"),
        ),
        ("[monitor]\nmax_ban = \"36525days\"", None),
        (
            "[routing]\nfunction_refresh_interval = \"1000000000 years\"",
            Some("routing.function_refresh_interval"),
        ),
        (
            "[pool]\nidle_timeout = \"1000000000 years\"",
            Some("pool.idle_timeout"),
        ),
        ("[pool]\nserver_lifetime = \"36525days\"", None),
        (
            "[pool]\nserver_lifetime = \"36526days\"",
            Some("pool.server_lifetime"),
        ),
        (
            "[pool]\ncheckout_timeout = \"1000000000 years\"",
            Some("pool.checkout_timeout"),
        ),
        (
            "[pool]\nserver_check_delay = \"1000000000 years\"",
            Some("pool.server_check_delay"),
        ),
    ];
    for (setting, refused) in cases {
        // Top-level keys before the tables, sections after them.
        let text = if setting.starts_with('[') {
            format!("{MINIMAL}\n{setting}\n")
        } else {
            format!("{setting}\n{MINIMAL}")
        };
        match (check(&text), refused) {
            (Ok(_), None) => {}
            (Err(ConfigError::Invalid { key, message }), Some(expected)) => {
                assert_eq!(key, *expected, "{setting}: {message}");
                assert!(
                    message.contains("is longer than 100years"),
                    "{setting}: {message}"
                );
            }
            (other, _) => panic!("{setting}: expected {refused:?}, got {other:?}"),
        }
    }
    // Too long even to read: the parser says so, with the line.
    let text = format!("auth_timeout = \"1000000000000 years\"\n{MINIMAL}");
    match check(&text) {
        Err(ConfigError::Parse { message, .. }) => assert!(message.contains("line 1"), "{message}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
    // Every duration of the schema is bounded, and a deadline from the longest, even
    // doubled, is far from where an `Instant` overflows.
    let (raw, _) = check(MINIMAL).unwrap();
    assert_eq!(raw.durations().len(), 15, "readmit_lag_time is unset");
    assert!(std::time::Instant::now()
        .checked_add(MAX_DURATION * 2)
        .is_some());
}
