//! Checks of the values, with messages that name the key: each on its own (ranges,
//! addresses, names, durations) and against each other (lag bounds, pool sizes, TLS files
//! a mode needs). Nothing here reads a file: whether the files named exist and hold what
//! they should is for `settings`, which builds TLS from them.

use std::net::SocketAddr;
use std::time::Duration;

use super::access::Rule;
use super::modes::{ServerTlsMode, TlsMode};
use super::schema::{Config, MonitorConfig};
use super::{invalid, ConfigError};

/// The longest duration any key takes: a century, far beyond any sensible timeout or
/// interval, so that a value meant as "never" still fits, while a deadline computed
/// from one (`now + auth_timeout`, a ban doubled up to `max_ban`) stays far from where
/// `Instant` and `Duration` arithmetic overflows and panics.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A node with its name resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Read weight.
    pub weight: u32,
}

/// What checking a configuration derives from its values alone.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Listen address.
    pub listen: SocketAddr,
    /// Address of the metrics and probe endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Nodes with names.
    pub nodes: Vec<Node>,
    /// Access rules in order.
    pub hba: Vec<Rule>,
}

impl Config {
    /// Checks every value; the error names the first key found wrong.
    pub fn validate(&self) -> Result<Checked, ConfigError> {
        let raw = self;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!(
                    "\"{}\" is not an IP address with a port, e.g. 127.0.0.1:6432",
                    raw.listen
                ),
            )
        })?;
        if raw.max_client_conn == 0 {
            return Err(invalid("max_client_conn", "must be at least 1"));
        }
        if raw.max_message_size < 1024 {
            return Err(invalid("max_message_size", "must be at least 1024 bytes"));
        }
        // The length field is a signed 32-bit integer: a larger limit could never bind.
        if raw.max_message_size > i32::MAX as usize {
            return Err(invalid(
                "max_message_size",
                format!("must be at most {} bytes", i32::MAX),
            ));
        }
        // A StartupMessage naming a user and a database needs a few dozen bytes.
        if !(64..=i32::MAX as usize).contains(&raw.max_startup_packet_size) {
            return Err(invalid(
                "max_startup_packet_size",
                format!("must be between 64 and {} bytes", i32::MAX),
            ));
        }
        for (key, value) in [
            ("auth_timeout", raw.auth_timeout),
            ("connect_timeout", raw.connect_timeout),
            ("monitor.lag_check_interval", raw.monitor.lag_check_interval),
            ("monitor.query_timeout", raw.monitor.query_timeout),
            (
                "routing.function_refresh_interval",
                raw.routing.function_refresh_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("pool.checkout_timeout", raw.pool.checkout_timeout),
            ("pool.idle_timeout", raw.pool.idle_timeout),
            ("pool.server_lifetime", raw.pool.server_lifetime),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        for (key, value) in raw.durations() {
            if value > MAX_DURATION {
                return Err(invalid(
                    key,
                    format!(
                        "{} is longer than {}, the most any duration may be",
                        humantime::format_duration(value),
                        humantime::format_duration(MAX_DURATION)
                    ),
                ));
            }
        }
        // Every read after a write may wait this long: a wait in seconds is a misconfiguration.
        if raw.routing.read_your_writes_wait > Duration::from_secs(1) {
            return Err(invalid(
                "routing.read_your_writes_wait",
                "must be at most 1s (reads after a write wait this long before using the primary)",
            ));
        }
        if raw.pool.max_pool_size == 0 {
            return Err(invalid("pool.max_pool_size", "must be at least 1"));
        }
        if raw.pool.min_pool_size > raw.pool.max_pool_size {
            return Err(invalid(
                "pool.min_pool_size",
                format!(
                    "{} is more than max_pool_size ({})",
                    raw.pool.min_pool_size, raw.pool.max_pool_size
                ),
            ));
        }
        if raw.pool.prepared_statements_cache_size == 0 {
            return Err(invalid(
                "pool.prepared_statements_cache_size",
                "must be at least 1",
            ));
        }
        if raw.verify_client && raw.tls_mode != TlsMode::Require {
            return Err(invalid(
                "verify_client",
                "needs tls_mode = \"require\": a plaintext client would present no certificate",
            ));
        }
        raw.tls_files_needed()?;
        raw.monitor.validate()?;
        if raw.nodes.is_empty() {
            return Err(invalid("nodes", "at least one node is required"));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(raw.nodes.len());
        for (i, n) in raw.nodes.iter().enumerate() {
            let key = format!("nodes[{i}]");
            check_host_port(&n.address).map_err(|m| invalid(format!("{key}.address"), m))?;
            let name = n.name.clone().unwrap_or_else(|| format!("node{i}"));
            if name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if nodes.iter().any(|m| m.name == name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("\"{name}\" is used twice"),
                ));
            }
            let mode = n.server_tls.unwrap_or(raw.server_tls);
            let verifies = matches!(mode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull);
            if verifies && raw.server_tls_ca_file.is_none() {
                let key = if n.server_tls.is_some() {
                    format!("{key}.server_tls")
                } else {
                    "server_tls_ca_file".to_owned()
                };
                return Err(invalid(key, "a CA file is required to verify servers"));
            }
            nodes.push(Node {
                name,
                address: n.address.clone(),
                weight: n.weight,
            });
        }
        if raw.users.is_empty() {
            return Err(invalid("users", "at least one user is required"));
        }
        for (i, name) in raw.admin_users.iter().enumerate() {
            if !raw.users.iter().any(|u| &u.name == name) {
                return Err(invalid(
                    format!("admin_users[{i}]"),
                    format!("\"{name}\" is not one of the users"),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log_level)
            .map_err(|e| invalid("log_level", format!("\"{}\": {e}", raw.log_level)))?;
        let metrics_listen = match &raw.metrics.listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("\"{text}\" is not an IP address with a port, e.g. 127.0.0.1:9930"),
                )
            })?),
        };
        for (i, u) in raw.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty() {
                return Err(invalid(format!("{key}.name"), "must not be empty"));
            }
            if raw.users[..i].iter().any(|v| v.name == u.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("\"{}\" is listed twice", u.name),
                ));
            }
        }
        let hba = raw
            .hba
            .iter()
            .enumerate()
            .map(|(i, r)| r.rule(i, raw))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Checked {
            listen,
            metrics_listen,
            nodes,
            hba,
        })
    }

    /// Every duration with its key (an unset optional one left out).
    pub fn durations(&self) -> Vec<(&'static str, Duration)> {
        let (monitor, routing, pool) = (&self.monitor, &self.routing, &self.pool);
        let mut all = vec![
            ("auth_timeout", self.auth_timeout),
            ("client_write_timeout", self.client_write_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            (
                "idle_in_transaction_timeout",
                self.idle_in_transaction_timeout,
            ),
            ("connect_timeout", self.connect_timeout),
            ("monitor.lag_check_interval", monitor.lag_check_interval),
            ("monitor.query_timeout", monitor.query_timeout),
            ("monitor.max_lag_time", monitor.max_lag_time),
            ("monitor.max_ban", monitor.max_ban),
            (
                "routing.function_refresh_interval",
                routing.function_refresh_interval,
            ),
            (
                "routing.read_your_writes_wait",
                routing.read_your_writes_wait,
            ),
            ("pool.idle_timeout", pool.idle_timeout),
            ("pool.server_lifetime", pool.server_lifetime),
            ("pool.checkout_timeout", pool.checkout_timeout),
            ("pool.server_check_delay", pool.server_check_delay),
        ];
        if let Some(readmit) = monitor.readmit_lag_time {
            all.push(("monitor.readmit_lag_time", readmit));
        }
        all
    }

    /// The certificate and key files TLS toward clients needs, present (what they hold is
    /// checked where TLS is built from them).
    fn tls_files_needed(&self) -> Result<(), ConfigError> {
        if self.tls_mode == TlsMode::Disable {
            return Ok(());
        }
        let needed = [
            ("tls_cert_file", &self.tls_cert_file, true),
            ("tls_key_file", &self.tls_key_file, true),
            ("tls_ca_file", &self.tls_ca_file, self.verify_client),
        ];
        for (key, file, needed) in needed {
            if needed && file.is_none() {
                return Err(invalid(key, "required when tls_mode is not \"disable\""));
            }
        }
        Ok(())
    }
}

impl MonitorConfig {
    /// Checks the lag and ban settings against each other.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(readmit) = self.readmit_lag_bytes {
            if self.max_lag_bytes == 0 {
                return Err(invalid(
                    "monitor.readmit_lag_bytes",
                    "has no effect while monitor.max_lag_bytes = 0 (byte bound off); remove it",
                ));
            }
            if readmit > self.max_lag_bytes {
                return Err(invalid(
                    "monitor.readmit_lag_bytes",
                    format!(
                        "{readmit} is above monitor.max_lag_bytes ({}): a standby must be re-admitted under the bound that excluded it",
                        self.max_lag_bytes
                    ),
                ));
            }
        }
        if let Some(readmit) = self.readmit_lag_time {
            if self.max_lag_time.is_zero() {
                return Err(invalid(
                    "monitor.readmit_lag_time",
                    "has no effect while monitor.max_lag_time = \"0s\" (time bound off); remove it",
                ));
            }
            if readmit > self.max_lag_time {
                return Err(invalid(
                    "monitor.readmit_lag_time",
                    format!(
                        "{readmit:?} is above monitor.max_lag_time ({:?}): a standby must be re-admitted under the bound that excluded it",
                        self.max_lag_time
                    ),
                ));
            }
        }
        if self.readmit_after_polls == 0 {
            return Err(invalid("monitor.readmit_after_polls", "must be at least 1"));
        }
        if self.max_ban < self.lag_check_interval {
            return Err(invalid(
                "monitor.max_ban",
                format!(
                    "{:?} is shorter than monitor.lag_check_interval ({:?}), where bans start",
                    self.max_ban, self.lag_check_interval
                ),
            ));
        }
        Ok(())
    }
}

fn check_host_port(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{address}\" is not host:port"))?;
    if host.is_empty() {
        return Err(format!("\"{address}\" has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("\"{address}\" has no valid port (1-65535)")),
    }
}
