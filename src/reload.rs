//! Hot reload: `RELOAD` in the admin console and SIGHUP read the configuration again from
//! its source; a valid one is swapped in atomically and every part that holds state
//! follows it (topology, pools, client limit, function overrides, TLS, log filter). An
//! invalid one is rejected with the key it names, and the running one stays. No client
//! is disconnected: sessions finish what they started on the old nodes.

use std::sync::Arc;

use crate::context::Shared;
use crate::settings::Settings;

/// Keys a reload cannot change in a running process.
pub(crate) const RESTART_ONLY: &[&str] = &[
    "listen",
    "metrics.listen",
    "routing.classify_cache_size",
    "log_format",
];

/// Reads the configuration from its source and applies it; the error says why nothing
/// changed. Returns one line per change.
pub fn reload(shared: &Shared) -> Result<Vec<String>, String> {
    let _one_at_a_time = shared.sources.one_at_a_time();
    let loader = shared
        .sources
        .loader
        .as_ref()
        .ok_or("this pgsplit was started without a configuration source to read again")?;
    let new = loader().map_err(|e| {
        tracing::error!(error = %e, "reload rejected: the running configuration stays");
        e
    })?;
    apply(shared, new)
}

/// Swaps in a validated configuration and brings every part in line with it.
pub fn apply(shared: &Shared, new: Settings) -> Result<Vec<String>, String> {
    // The certificates were read when `new` was built: nothing below can fail.
    let tls = new.client_tls.clone();
    let old = shared.settings.load_full();
    let changes = describe(&old, &new);
    let log_level = new.raw.log_level.clone();
    shared.settings.store(Arc::new(new));
    let settings = shared.settings.load_full();
    shared.publisher.reconcile(&settings.nodes);
    shared
        .stats
        .ensure_nodes(shared.topology.load().nodes.len());
    shared.pools.reconcile();
    shared.clients.resize(settings.raw.max_client_conn);
    shared.functions.reconfigure();
    shared.tls.store(tls);
    if log_level != old.raw.log_level {
        match &shared.sources.log_filter {
            Some(set) => {
                if let Err(e) = set(&log_level) {
                    tracing::warn!(error = %e, "log_level not changed");
                }
            }
            None => tracing::warn!("log_level changes take effect at the next start"),
        }
    }
    for change in &changes {
        tracing::info!(change = %change, "configuration reloaded");
    }
    if changes.is_empty() {
        tracing::info!("configuration reloaded: no change");
    }
    Ok(changes)
}

/// What a reload changes, for the log and the console: nodes added, removed and
/// re-weighted, and keys that only take effect at the next start.
fn describe(old: &Settings, new: &Settings) -> Vec<String> {
    let mut changes = Vec::new();
    for n in &new.nodes {
        match old.nodes.iter().find(|o| o.name == n.name) {
            None => changes.push(format!("node {} ({}) added", n.name, n.address)),
            Some(o) if o.address != n.address => changes.push(format!(
                "node {} moved from {} to {}",
                n.name, o.address, n.address
            )),
            Some(o) if o.weight != n.weight => changes.push(format!(
                "node {} weight {} -> {}",
                n.name, o.weight, n.weight
            )),
            Some(_) => {}
        }
    }
    for o in &old.nodes {
        if !new.nodes.iter().any(|n| n.name == o.name) {
            changes.push(format!(
                "node {} ({}) removed: no new work; its connections close as their clients finish",
                o.name, o.address
            ));
        }
    }
    let (before, after) = (flatten(&old.raw), flatten(&new.raw));
    for (key, value) in &after {
        if key.starts_with("nodes") {
            continue;
        }
        let was = before.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if was == Some(value) {
            continue;
        }
        let secret = key.ends_with("password");
        let shown = if secret { "(changed)" } else { value.as_str() };
        if RESTART_ONLY.contains(&key.as_str()) {
            changes.push(format!("{key} = {shown} takes effect at the next start"));
        } else {
            changes.push(format!("{key} = {shown}"));
        }
    }
    changes
}

/// Every key of a configuration with its value as TOML text, `section.key` style
/// (lists of tables as `users[0].name`).
pub(crate) fn flatten(raw: &crate::config::Config) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = toml::Value::try_from(raw) {
        walk("", &value, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [[nodes]]
        name = "p"
        address = "127.0.0.1:5432"
        [[nodes]]
        name = "s1"
        address = "127.0.0.1:5433"
        [[users]]
        name = "app"
        password = "secret"
    "#;

    #[test]
    fn changes_name_nodes_keys_and_what_needs_a_restart_but_never_a_password() {
        let old = Settings::parse(BASE).unwrap();
        let text = BASE
            .replace("name = \"s1\"", "name = \"s2\"")
            .replace("password = \"secret\"", "password = \"hunter2\"");
        let new = Settings::parse(&format!(
            "listen = \"127.0.0.1:7000\"\n[monitor]\nmax_lag_bytes = 1024\n{text}"
        ))
        .unwrap();
        let changes = describe(&old, &new);
        let all = changes.join("\n");
        assert!(all.contains("node s2 (127.0.0.1:5433) added"), "{all}");
        assert!(all.contains("node s1 (127.0.0.1:5433) removed"), "{all}");
        assert!(all.contains("monitor.max_lag_bytes = 1024"), "{all}");
        assert!(
            all.contains("listen = \"127.0.0.1:7000\" takes effect at the next start"),
            "{all}"
        );
        assert!(all.contains("users[0].password = (changed)"), "{all}");
        assert!(!all.contains("hunter2") && !all.contains("secret"), "{all}");
        assert!(describe(&old, &old).is_empty());
    }
}
