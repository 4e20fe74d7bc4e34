//! Access rules (`[[hba]]`) on the real cluster: the first rule matching a client's
//! address, database and user decides whether and how it logs in.

use crate::common;

use common::{sqlstate, text, TestProxy};
use pgsplit_cluster::{APP_DATABASE, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A second user, logging in to the servers as the application role.
fn other_user() -> String {
    format!(
        r#"
[[users]]
name = "blocked"
password = "blocked-pw"
server_user = "{APP_USER}"
server_password = "{APP_PASSWORD}"
"#
    )
}

async fn whoami(proxy: &TestProxy, user: &str, password: &str) -> Result<String, String> {
    let client = proxy
        .connect_as(user, password, APP_DATABASE)
        .await
        .map_err(|e| {
            format!(
                "{} {}",
                sqlstate(&e),
                e.as_db_error().map_or("", |d| d.message())
            )
        })?;
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| sqlstate(&e))?;
    Ok(row.get(0))
}

/// The authentication request pgsplit answers a startup packet with (5 = md5, 10 = SASL).
async fn auth_request(proxy: &TestProxy, user: &str) -> i32 {
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect to pgsplit");
    let params = format!("user\0{user}\0database\0{APP_DATABASE}\0\0");
    let mut packet = Vec::new();
    packet.extend_from_slice(&(8 + params.len() as i32).to_be_bytes());
    packet.extend_from_slice(&196608i32.to_be_bytes());
    packet.extend_from_slice(params.as_bytes());
    tcp.write_all(&packet).await.expect("send startup packet");
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.expect("read the answer");
    assert_eq!(
        head[0], b'R',
        "expected an authentication request, got {head:?}"
    );
    i32::from_be_bytes([head[5], head[6], head[7], head[8]])
}

#[tokio::test]
async fn a_reject_rule_refuses_one_user_with_28000_while_another_gets_in() {
    let rules = r#"
[[hba]]
user = "blocked"
method = "reject"

[[hba]]
address = "127.0.0.1/32"
method = "scram-sha-256"
"#;
    let proxy = TestProxy::start_with("", &format!("{}{rules}", other_user())).await;
    let refused = whoami(&proxy, "blocked", "blocked-pw").await;
    assert_eq!(
        refused,
        Err("28000 no pgsplit access rule allows host \"127.0.0.1\", user \"blocked\", database \"app\"".to_owned()),
        "blocked must be refused by the reject rule, with the right password"
    );
    assert_eq!(
        whoami(&proxy, APP_USER, APP_PASSWORD).await,
        Ok(APP_USER.to_owned()),
        "{APP_USER} matches the scram rule"
    );
    assert_eq!(
        whoami(&proxy, APP_USER, "wrong")
            .await
            .map_err(|e| e[..5].to_owned()),
        Err("28P01".to_owned()),
        "the scram rule still checks the password"
    );
}

#[tokio::test]
async fn an_address_rule_that_does_not_match_localhost_refuses_everyone() {
    let rules = r#"
[[hba]]
address = "10.0.0.0/8"
method = "trust"
"#;
    let proxy = TestProxy::start_with("", rules).await;
    for user in [APP_USER, "nobody"] {
        let refused = whoami(&proxy, user, APP_PASSWORD).await;
        assert_eq!(
            refused.map_err(|e| e[..5].to_owned()),
            Err("28000".to_owned()),
            "user {user} from 127.0.0.1 must match no rule"
        );
    }
    let console = proxy.console("SHOW VERSION").await;
    assert_eq!(
        console.map_err(|e| sqlstate(&e)).err().as_deref(),
        Some("28000"),
        "admin console logins pass the same rules"
    );
}

#[tokio::test]
async fn a_trust_rule_lets_a_user_in_without_a_password() {
    let rules = format!(
        r#"
[[hba]]
address = "127.0.0.1/32"
user = "{APP_USER}"
method = "trust"
"#
    );
    let proxy = TestProxy::start_with("", &rules).await;
    assert_eq!(
        whoami(&proxy, APP_USER, "not-the-password").await,
        Ok(APP_USER.to_owned()),
        "trust asks no password"
    );
    assert_eq!(
        whoami(&proxy, "blocked", "x")
            .await
            .map_err(|e| e[..5].to_owned()),
        Err("28000".to_owned()),
        "a user the trust rule does not name matches nothing"
    );
}

#[tokio::test]
async fn an_md5_rule_makes_libpq_do_md5() {
    let verifier = postgres_protocol::password::scram_sha_256(b"verifier-pw");
    let users = format!(
        r#"
[[users]]
name = "verifieruser"
password = "{verifier}"
server_user = "{APP_USER}"
server_password = "{APP_PASSWORD}"

[[hba]]
address = "127.0.0.1/32"
method = "md5"
"#
    );
    let proxy = TestProxy::start_with("", &users).await;
    assert_eq!(
        auth_request(&proxy, APP_USER).await,
        5,
        "{APP_USER} (auth_method scram-sha-256) must be asked for md5"
    );
    let out = proxy.run(
        "psql",
        &["-X", "-tA", "-c", "SELECT current_user", APP_DATABASE],
    );
    assert!(out.status.success(), "psql over md5: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), APP_USER);
    let wrong = whoami(&proxy, APP_USER, "wrong").await;
    assert_eq!(
        wrong.map_err(|e| e[..5].to_owned()),
        Err("28P01".to_owned()),
        "md5 checks the password"
    );
    // A SCRAM verifier cannot check md5: a plain refusal, not a wrong-password error.
    let refused = whoami(&proxy, "verifieruser", "verifier-pw").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.starts_with("28000") && e.contains("md5")),
        "{refused:?}"
    );
}
