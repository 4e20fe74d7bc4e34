//! Access rules as values (`[[hba]]`): client networks, names and methods, parsed and
//! checked with errors that name the rule's key, and whether an address or a name falls
//! under one. Which rule decides a client's login, and what that means for it, is
//! `hba`'s; checking a rule against the users' passwords is `settings`'s, which derives
//! the secrets.

use std::net::IpAddr;

use super::schema::{Config, HbaConfig, NameList};
use super::{invalid, AuthMethod, ConfigError};

/// What a matching rule does with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// SCRAM-SHA-256, whatever the user's own `auth_method`.
    ScramSha256,
    /// MD5 challenge-response, whatever the user's own `auth_method`.
    Md5,
    /// No password asked.
    Trust,
    /// A verified TLS client certificate whose CN is the user name; no password.
    Cert,
    /// Refused.
    Reject,
}

impl Method {
    /// Parses a method as written in the configuration.
    pub fn parse(text: &str) -> Result<Method, String> {
        match text {
            "scram-sha-256" => Ok(Method::ScramSha256),
            "md5" => Ok(Method::Md5),
            "trust" => Ok(Method::Trust),
            "cert" => Ok(Method::Cert),
            "reject" => Ok(Method::Reject),
            other => Err(format!(
                "\"{other}\" is not a method: use \"scram-sha-256\", \"md5\", \"trust\", \"cert\" or \"reject\""
            )),
        }
    }

    /// The password method this rule imposes, for the two that ask for one.
    pub fn password_method(self) -> Option<AuthMethod> {
        match self {
            Method::ScramSha256 => Some(AuthMethod::ScramSha256),
            Method::Md5 => Some(AuthMethod::Md5),
            Method::Trust | Method::Cert | Method::Reject => None,
        }
    }
}

/// The client addresses a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Every address.
    All,
    /// Addresses whose first `prefix` bits equal those of `base` (same family only).
    Cidr {
        /// The network address, host bits cleared.
        base: IpAddr,
        /// Prefix length in bits.
        prefix: u8,
    },
}

impl Network {
    /// Parses `all`, `10.0.0.0/8`, `::1/128`, or a bare address (one host).
    pub fn parse(text: &str) -> Result<Network, String> {
        if text == "all" {
            return Ok(Network::All);
        }
        let bad = || {
            format!(
                "\"{text}\" is not \"all\" or an address with a prefix length, e.g. 10.0.0.0/8 or ::1/128"
            )
        };
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            // Only plain digits: `u8::from_str` would also take "+8".
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        if prefix > max {
            return Err(format!(
                "\"{text}\": the prefix length must be at most {max}"
            ));
        }
        // Host bits are ignored, as PostgreSQL does for pg_hba.conf.
        Ok(Network::Cidr {
            base: mask(ip, prefix),
            prefix,
        })
    }

    /// Whether `addr` lies in this network. An IPv4 client seen through an IPv6 socket
    /// (`::ffff:10.1.2.3`) counts as its IPv4 address.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match *self {
            Network::All => true,
            Network::Cidr { base, prefix } => {
                let addr = addr.to_canonical();
                addr.is_ipv4() == base.is_ipv4() && mask(addr, prefix) == base
            }
        }
    }
}

/// `ip` with all but its first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            // A shift by the full width overflows: a zero prefix keeps no bits.
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & keep).into())
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & keep).into())
        }
    }
}

/// The databases or users a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// Every name.
    All,
    /// Exactly these.
    Only(Vec<String>),
}

impl Names {
    /// From the configured names; `all` among them covers every name.
    pub fn new(names: Vec<String>) -> Names {
        if names.iter().any(|n| n == "all") {
            Names::All
        } else {
            Names::Only(names)
        }
    }

    /// Whether `name` is covered.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// One validated access rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Client addresses.
    pub network: Network,
    /// Databases.
    pub databases: Names,
    /// Users.
    pub users: Names,
    /// What happens to a client it matches.
    pub method: Method,
}

impl NameList {
    /// The names, checked to be non-empty; errors name `key`.
    pub fn names(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let names = match self {
            NameList::One(name) => vec![name.clone()],
            NameList::Many(names) => names.clone(),
        };
        if names.is_empty() {
            return Err(invalid(
                key,
                "the list is empty: name at least one, or \"all\"",
            ));
        }
        if names.iter().any(String::is_empty) {
            return Err(invalid(key, "a name is empty"));
        }
        Ok(names)
    }
}

impl HbaConfig {
    /// The rule at `hba[index]` of `config`; errors name its key (`hba[2].address`).
    pub fn rule(&self, index: usize, config: &Config) -> Result<Rule, ConfigError> {
        let key = format!("hba[{index}]");
        let network =
            Network::parse(&self.address).map_err(|m| invalid(format!("{key}.address"), m))?;
        let method =
            Method::parse(&self.method).map_err(|m| invalid(format!("{key}.method"), m))?;
        if method == Method::Cert && !config.verify_client {
            return Err(invalid(
                format!("{key}.method"),
                "\"cert\" needs verify_client = true (and tls_mode = \"require\"): only a verified client certificate can vouch for the user",
            ));
        }
        Ok(Rule {
            network,
            databases: Names::new(self.database.names(&format!("{key}.database"))?),
            users: Names::new(self.user.names(&format!("{key}.user"))?),
            method,
        })
    }
}
