//! Access rules in the manner of `pg_hba.conf`: an ordered list of (client address,
//! database, user) patterns, each with a method; the first rule a client matches decides
//! how it must prove who it is, or refuses it. Matching ([`decide`]) is a pure function;
//! [`admit`] turns its answer into the authentication method or the refusal. The rules
//! themselves are values of the configuration (`config::access`).

use std::net::IpAddr;

use crate::auth::{AuthMethod, Secret, User};
pub use crate::config::access::{Method, Names, Network, Rule};
use crate::error::ProxyError;

/// The method of the first rule matching the client, as in `pg_hba.conf`; `None` when no
/// rule matches.
pub fn decide(rules: &[Rule], addr: IpAddr, database: &str, user: &str) -> Option<Method> {
    rules
        .iter()
        .find(|r| {
            r.network.contains(addr) && r.databases.contains(database) && r.users.contains(user)
        })
        .map(|r| r.method)
}

/// How the client named `name` (configured as `user`, if at all) must authenticate,
/// given the rules: with none, the user's own `auth_method`. A client the rules refuse,
/// or whose certificate does not name it, gets an error (SQLSTATE 28000). `addr` is the
/// TCP peer (unknown: no rule matches), `cert_name` the CN of a verified client certificate.
pub fn admit(
    rules: &[Rule],
    addr: Option<IpAddr>,
    database: &str,
    name: &str,
    user: Option<&User>,
    cert_name: Option<&str>,
) -> Result<AuthMethod, ProxyError> {
    if rules.is_empty() {
        return Ok(user.map_or(AuthMethod::ScramSha256, |u| u.method));
    }
    let refuse = || ProxyError::NoAccessRule {
        host: addr
            .map(|a| a.to_canonical().to_string())
            .unwrap_or_default(),
        user: name.to_owned(),
        database: database.to_owned(),
    };
    let method = addr
        .and_then(|a| decide(rules, a, database, name))
        .ok_or_else(refuse)?;
    match method {
        Method::Reject => Err(refuse()),
        Method::Trust => Ok(AuthMethod::Trust),
        Method::Cert if cert_name == Some(name) => Ok(AuthMethod::Trust),
        Method::Cert => Err(ProxyError::CertFailed(name.to_owned())),
        Method::ScramSha256 => password(AuthMethod::ScramSha256, name, user),
        Method::Md5 => password(AuthMethod::Md5, name, user),
    }
}

/// `method`, when the user's configured password can check it.
fn password(method: AuthMethod, name: &str, user: Option<&User>) -> Result<AuthMethod, ProxyError> {
    match user {
        // An unknown user goes through the exchange and fails it like a wrong password,
        // so the refusal does not tell whether the user exists.
        Some(u) if !u.secret.can_check(method) => Err(ProxyError::MethodUnavailable {
            user: name.to_owned(),
            method: method.name(),
        }),
        _ => Ok(method),
    }
}

/// Whether a configured secret can check `method` (a check made at load time too, for
/// users a rule names).
pub fn secret_allows(secret: &Secret, method: Method) -> bool {
    method.password_method().is_none_or(|m| secret.can_check(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(address: &str, databases: &[&str], users: &[&str], method: Method) -> Rule {
        let names = |n: &[&str]| Names::new(n.iter().map(|s| s.to_string()).collect());
        Rule {
            network: Network::parse(address).unwrap(),
            databases: names(databases),
            users: names(users),
            method,
        }
    }

    #[test]
    fn the_first_matching_rule_decides() {
        let rules = [
            rule("all", &["all"], &["mallory"], Method::Reject),
            rule(
                "127.0.0.1/32",
                &["admin_db", "ops"],
                &["all"],
                Method::Trust,
            ),
            rule("10.0.0.0/8", &["all"], &["app", "batch"], Method::Md5),
            rule("::1/128", &["all"], &["all"], Method::Cert),
            rule("192.168.1.77/16", &["all"], &["all"], Method::ScramSha256),
        ];
        let cases = [
            // (address, database, user, expected)
            ("127.0.0.1", "app", "mallory", Some(Method::Reject)),
            ("127.0.0.1", "ops", "app", Some(Method::Trust)),
            ("127.0.0.1", "app", "app", None),
            ("10.200.3.4", "app", "app", Some(Method::Md5)),
            ("10.200.3.4", "app", "batch", Some(Method::Md5)),
            ("10.200.3.4", "app", "other", None),
            ("11.0.0.1", "app", "app", None),
            ("::1", "app", "anyone", Some(Method::Cert)),
            ("::2", "app", "anyone", None),
            // Host bits in the rule are ignored; the /16 covers 192.168.*.*.
            ("192.168.200.1", "app", "x", Some(Method::ScramSha256)),
            ("192.169.0.1", "app", "x", None),
            // An IPv4 client through an IPv6 socket matches the IPv4 rule.
            ("::ffff:10.1.1.1", "app", "app", Some(Method::Md5)),
            ("::ffff:127.0.0.1", "ops", "x", Some(Method::Trust)),
        ];
        for (addr, database, user, expected) in cases {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(
                decide(&rules, ip, database, user),
                expected,
                "{addr} {database} {user}"
            );
        }
    }

    #[test]
    fn no_rules_match_nothing_and_all_matches_everything() {
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(decide(&[], ip, "db", "u"), None);
        let everything = [rule("all", &["all"], &["all"], Method::Trust)];
        assert_eq!(decide(&everything, ip, "db", "u"), Some(Method::Trust));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(decide(&everything, v6, "db", "u"), Some(Method::Trust));
    }

    #[test]
    fn zero_prefixes_cover_their_whole_family_only() {
        let v4_all = Network::parse("0.0.0.0/0").unwrap();
        let v6_all = Network::parse("::/0").unwrap();
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(v4_all.contains(v4) && !v4_all.contains(v6));
        assert!(v6_all.contains(v6) && !v6_all.contains(v4));
    }

    #[test]
    fn addresses_are_parsed_strictly() {
        for good in [
            "all",
            "10.0.0.0/8",
            "127.0.0.1/32",
            "::1/128",
            "::1",
            "10.1.2.3",
        ] {
            assert!(Network::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "10.0.0.0/33",
            "::1/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "localhost",
            "ALL",
            "10.0.0.0/8/8",
        ] {
            assert!(Network::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn methods_are_parsed_by_their_configured_names() {
        assert_eq!(Method::parse("scram-sha-256"), Ok(Method::ScramSha256));
        assert_eq!(Method::parse("reject"), Ok(Method::Reject));
        assert!(Method::parse("password").is_err());
    }

    fn user(name: &str, password: &str, method: AuthMethod) -> User {
        User {
            name: name.into(),
            method,
            secret: Secret::from_config(name, password, method).unwrap(),
            server_user: name.into(),
            server_password: String::new(),
            max_connections: 0,
        }
    }

    #[test]
    fn admit_maps_rules_to_methods_and_refusals() {
        let local: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let plain = user("app", "pw", AuthMethod::ScramSha256);
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let scram_only = user("v", &verifier, AuthMethod::ScramSha256);
        let code = |r: Result<AuthMethod, ProxyError>| r.map_err(|e| e.sqlstate().to_owned());
        let ok = |m| Ok::<AuthMethod, String>(m);

        // No rules: the user's own method.
        assert_eq!(
            code(admit(&[], local, "db", "app", Some(&plain), None)),
            ok(AuthMethod::ScramSha256)
        );

        let md5 = [rule("all", &["all"], &["all"], Method::Md5)];
        assert_eq!(
            code(admit(&md5, local, "db", "app", Some(&plain), None)),
            ok(AuthMethod::Md5)
        );
        // A SCRAM verifier cannot check md5: refused plainly, not with a wrong-password error.
        assert_eq!(
            code(admit(&md5, local, "db", "v", Some(&scram_only), None)),
            Err("28000".into())
        );
        // An unknown user still goes through the exchange.
        assert_eq!(
            code(admit(&md5, local, "db", "nobody", None, None)),
            ok(AuthMethod::Md5)
        );
        // An unknown peer address matches no rule.
        assert_eq!(
            code(admit(&md5, None, "db", "app", Some(&plain), None)),
            Err("28000".into())
        );

        let cert = [rule("all", &["all"], &["all"], Method::Cert)];
        assert_eq!(
            code(admit(&cert, local, "db", "app", Some(&plain), Some("app"))),
            ok(AuthMethod::Trust)
        );
        assert_eq!(
            code(admit(&cert, local, "db", "app", Some(&plain), Some("eve"))),
            Err("28000".into())
        );
        assert_eq!(
            code(admit(&cert, local, "db", "app", Some(&plain), None)),
            Err("28000".into())
        );

        let reject = [rule("all", &["all"], &["app"], Method::Reject)];
        let refused = admit(&reject, local, "db", "app", Some(&plain), None).unwrap_err();
        assert_eq!(refused.sqlstate(), "28000");
        assert_eq!(
            refused.to_string(),
            "no pgsplit access rule allows host \"127.0.0.1\", user \"app\", database \"db\""
        );
        // No rule matches "other": refused the same way.
        assert_eq!(
            code(admit(&reject, local, "db", "other", None, None)),
            Err("28000".into())
        );
    }
}
