//! Clients authenticate to pgsplit itself; pgsplit logs in to servers that demand SCRAM.

use crate::common;

use common::{sqlstate, TestProxy};
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER};

/// Extra users: md5, trust, and a SCRAM verifier instead of a plaintext password,
/// all logging in to the servers as the application role.
fn users() -> String {
    let verifier = postgres_protocol::password::scram_sha_256(b"verifier-pw");
    format!(
        r#"
[[users]]
name = "md5user"
auth_method = "md5"
password = "md5-pw"
server_user = "{APP_USER}"
server_password = "{APP_PASSWORD}"

[[users]]
name = "trustuser"
auth_method = "trust"
server_user = "{APP_USER}"
server_password = "{APP_PASSWORD}"

[[users]]
name = "verifieruser"
password = "{verifier}"
server_user = "{APP_USER}"
server_password = "{APP_PASSWORD}"
"#
    )
}

async fn whoami(proxy: &TestProxy, user: &str, password: &str) -> Result<String, String> {
    let client = proxy
        .connect_as(user, password, APP_DATABASE)
        .await
        .map_err(|e| sqlstate(&e))?;
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| sqlstate(&e))?;
    Ok(row.get(0))
}

#[tokio::test]
async fn scram_md5_trust_and_verifier_users_log_in_and_reach_the_server_as_their_server_user() {
    let proxy = TestProxy::start_with("", &users()).await;
    let cases = [
        (APP_USER, APP_PASSWORD),
        ("md5user", "md5-pw"),
        ("trustuser", "anything"),
        ("verifieruser", "verifier-pw"),
    ];
    for (user, password) in cases {
        assert_eq!(
            whoami(&proxy, user, password).await,
            Ok(APP_USER.to_owned()),
            "user {user}"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_28p01() {
    let proxy = TestProxy::start_with("", &users()).await;
    for user in [APP_USER, "md5user", "verifieruser"] {
        assert_eq!(
            whoami(&proxy, user, "wrong").await,
            Err("28P01".to_owned()),
            "user {user}"
        );
    }
}

#[tokio::test]
async fn an_unknown_user_is_refused_exactly_like_a_wrong_password() {
    let proxy = TestProxy::start().await;
    let unknown = proxy
        .connect_as("nobody", "whatever", APP_DATABASE)
        .await
        .expect_err("unknown user refused");
    let wrong = proxy
        .connect_as(APP_USER, "whatever", APP_DATABASE)
        .await
        .expect_err("wrong password refused");
    assert_eq!(sqlstate(&unknown), "28P01");
    let unknown_message = unknown
        .as_db_error()
        .map(|e| e.message().replace("nobody", "U"));
    let wrong_message = wrong
        .as_db_error()
        .map(|e| e.message().replace(APP_USER, "U"));
    assert_eq!(
        unknown_message, wrong_message,
        "the message must not reveal whether the user exists"
    );
}

#[tokio::test]
async fn an_unknown_database_is_refused_with_3d000() {
    let proxy = TestProxy::start().await;
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "no_such_db")
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&err), "3D000");
}

#[tokio::test]
async fn psql_gets_a_clear_message_for_a_bad_password() {
    let proxy = TestProxy::start().await;
    let port = proxy.addr.port().to_string();
    let out = std::process::Command::new(common::cluster().pg_bin().join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            APP_USER,
            "-c",
            "SELECT 1",
            APP_DATABASE,
        ])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed for user \"app\""),
        "{stderr}"
    );
}
