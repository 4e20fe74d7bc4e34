//! The console's result sets, built from snapshots (pure functions, no I/O). Column names
//! follow pgbouncer's where the same thing is shown.

use std::time::{Instant, SystemTime};

use crate::classify::{Effect, Explained, Pin, Route};
use crate::clients::{CancelTarget, ClientInfo};
use crate::pool::{IdleServer, PoolSnapshot};
use crate::route::{Conn, Decision, Plan};
use crate::settings::Settings;
use crate::stats::StatsSnapshot;
use crate::topology::{Role, Topology};

use super::command::HELP;

/// A result set of text columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Column names.
    pub columns: Vec<&'static str>,
    /// Rows; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }
}

fn some(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn yes(b: bool) -> Option<String> {
    some(if b { "yes" } else { "no" })
}

/// Splits `host:port`.
fn host_port(address: &str) -> (Option<String>, Option<String>) {
    match address.rsplit_once(':') {
        Some((host, port)) => (some(host), some(port)),
        None => (some(address), None),
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Standby => "standby",
        Role::Unknown => "unknown",
    }
}

/// The name of the node at `address` (configured nodes first).
fn node_name(topology: &Topology, address: &str) -> Option<String> {
    topology
        .nodes
        .iter()
        .filter(|n| n.node.address == address)
        .min_by_key(|n| n.removed)
        .map(|n| n.node.name.clone())
}

/// `SHOW NODES`: one row per configured node.
pub fn nodes(
    topology: &Topology,
    stats: &StatsSnapshot,
    position_queries: &[u64],
    now: (Instant, SystemTime),
) -> Table {
    let mut t = Table::new(&[
        "name",
        "host",
        "port",
        "role",
        "health",
        "lag_bytes",
        "lag_seconds",
        "upstream",
        "stalled",
        "eligible",
        "ban_reason",
        "banned_until",
        "weight",
        "paused",
        "reads",
        "writes",
        "fresh_waits",
        "fresh_waits_missed",
        "fresh_wait_ms",
        "fresh_wait_p99_ms",
        "fresh_checked_reads",
        "own_write_reads",
        "position_queries",
    ]);
    for (i, n) in topology.nodes.iter().enumerate() {
        if n.removed {
            continue;
        }
        let health = match (&n.ban, n.role) {
            (Some(_), _) => "down",
            (None, Role::Unknown) => "unknown",
            (None, _) => "up",
        };
        let (ban_reason, banned_until) = match (&n.ban, n.admin_ban) {
            (_, true) => (some("BAN by an operator"), None),
            (Some(ban), false) => {
                let left = ban.until.saturating_duration_since(now.0);
                (some(&ban.reason), some(time(now.1 + left)))
            }
            (None, false) => (None, None),
        };
        let (host, port) = host_port(&n.node.address);
        let fresh = stats.freshness.get(i).cloned().unwrap_or_default();
        t.push(vec![
            some(&n.node.name),
            host,
            port,
            some(role(n.role)),
            some(health),
            n.lag_bytes.map(|b| b.to_string()),
            n.lag_time.map(|d| format!("{:.3}", d.as_secs_f64())),
            n.upstream.clone(),
            n.stall.map(|s| s.to_string()),
            yes(n.eligible),
            ban_reason,
            banned_until,
            some(n.node.weight),
            yes(n.paused),
            some(stats.reads_served(i)),
            some(stats.writes_served(i)),
            some(fresh.waits),
            some(fresh.waits_missed),
            some(format!("{:.3}", fresh.wait_time.as_secs_f64() * 1000.0)),
            some(format!("{:.3}", fresh.wait_p99.as_secs_f64() * 1000.0)),
            some(fresh.checked_reads),
            some(fresh.own_write_reads),
            some(position_queries.get(i).copied().unwrap_or(0)),
        ]);
    }
    t
}

/// `EXPLAIN ROUTE`: where a statement would go in a new session outside a transaction,
/// and why.
pub fn explain_route(explained: &Explained, plan: &Plan, database: &str, loaded: bool) -> Table {
    let mut t = Table::new(&[
        "node",
        "reason",
        "effects",
        "statements",
        "cached",
        "database",
        "catalog",
    ]);
    let class = &explained.class;
    let node = match plan {
        Plan::Send(Conn::Standby) | Plan::BeginThenSend(Conn::Standby, _) => {
            "standby (the primary when none is eligible or read-your-writes waits)".to_owned()
        }
        Plan::Send(Conn::Primary) | Plan::BeginThenSend(Conn::Primary, _) => "primary".to_owned(),
        Plan::DeferBegin => "none yet: the transaction's first statement picks it".to_owned(),
        Plan::Answer(_) | Plan::EndDeferred(_) => "none: pgsplit answers it".to_owned(),
        Plan::Refuse(code, why) => format!("none: refused ({code}): {why}"),
    };
    let reason = match class.route {
        Route::Primary => Decision::from(class.reason).as_str(),
        Route::Standby => "read",
        Route::Any => "any",
    };
    let effects: Vec<String> = class.effects.iter().map(effect_text).collect();
    t.push(vec![
        some(node),
        some(reason),
        (!effects.is_empty()).then(|| effects.join("; ")),
        some(class.statements),
        yes(explained.cached),
        some(database),
        some(if loaded {
            "loaded"
        } else {
            "not read yet: built-ins and configured overrides only"
        }),
    ]);
    t
}

fn pin_text(pin: &Pin) -> &'static str {
    match pin {
        Pin::TempObjects => "temporary objects",
        Pin::Listen => "LISTEN",
        Pin::AdvisoryLock => "a session advisory lock",
        Pin::HoldCursor => "a cursor WITH HOLD",
        Pin::Sequence => "sequence state (nextval, setval)",
        Pin::Unknown => "session state pgsplit cannot replay",
    }
}

fn effect_text(effect: &Effect) -> String {
    let mode = |read_only: &Option<bool>, serializable: &bool| {
        let access = match read_only {
            Some(true) => " READ ONLY",
            Some(false) => " READ WRITE",
            None => "",
        };
        let isolation = if *serializable { " SERIALIZABLE" } else { "" };
        format!("{access}{isolation}")
    };
    match effect {
        Effect::Begin {
            read_only,
            serializable,
        } => format!("begins a transaction{}", mode(read_only, serializable)),
        Effect::SetTransaction {
            read_only,
            serializable,
        } => format!("sets the transaction{}", mode(read_only, serializable)),
        Effect::EndTransaction => "ends the transaction".to_owned(),
        Effect::Set { name, value } => {
            format!("sets {name} = {value}, replayed on every server connection")
        }
        Effect::Reset { name } => format!("resets {name}"),
        Effect::ResetAll => "resets every setting".to_owned(),
        Effect::Pin(pin) => format!("pins the session to the primary: {}", pin_text(pin)),
        Effect::Unpin(pin) => format!("ends the pin of {}", pin_text(pin)),
        Effect::Prepare { name, .. } => format!("prepares {name}"),
        Effect::Execute { name } => format!("executes {name}"),
        Effect::Deallocate { name } => {
            format!(
                "deallocates {}",
                name.as_deref().unwrap_or("every prepared statement")
            )
        }
        Effect::DiscardAll => "discards the session's state".to_owned(),
        Effect::ReadsSequence => {
            "reads the sequence state nextval() left on its connection".to_owned()
        }
        Effect::FunctionsChanged => "changes functions: the catalog is read again".to_owned(),
    }
}

/// `SHOW POOLS`: one row per pool, with the clients holding its connections.
pub fn pools(
    topology: &Topology,
    pools: &[PoolSnapshot],
    clients: &[(std::sync::Arc<ClientInfo>, Option<CancelTarget>)],
    settings: &Settings,
) -> Table {
    let mut t = Table::new(&[
        "node",
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "pool_size",
        "pool_mode",
    ]);
    let mode = match settings.raw.pool.mode {
        crate::config::PoolMode::Transaction => "transaction",
        crate::config::PoolMode::Session => "session",
    };
    for p in pools {
        let active = clients
            .iter()
            .filter(|(info, target)| {
                info.server_user == p.user
                    && info.database == p.database
                    && target.as_ref().is_some_and(|t| t.address == p.address)
            })
            .count();
        t.push(vec![
            node_name(topology, &p.address).or_else(|| some(&p.address)),
            some(&p.database),
            some(&p.user),
            some(active),
            some(p.waiting),
            some(p.open.saturating_sub(p.idle)),
            some(p.idle),
            some(settings.raw.pool.max_pool_size),
            some(mode),
        ]);
    }
    t
}

/// `SHOW CLIENTS`: one row per logged-in client (console sessions are not listed).
pub fn clients(
    topology: &Topology,
    clients: &[(std::sync::Arc<ClientInfo>, Option<CancelTarget>)],
) -> Table {
    let mut t = Table::new(&[
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "local_addr",
        "local_port",
        "connect_time",
        "tls",
        "application_name",
        "node",
        "remote_pid",
    ]);
    let mut sorted: Vec<_> = clients.iter().collect();
    sorted.sort_by_key(|(info, _)| info.connected_at);
    for (info, target) in sorted {
        t.push(vec![
            some("C"),
            some(&info.user),
            some(&info.database),
            some(if target.is_some() { "active" } else { "idle" }),
            info.addr.map(|a| a.ip().to_string()),
            info.addr.map(|a| a.port().to_string()),
            info.local_addr.map(|a| a.ip().to_string()),
            info.local_addr.map(|a| a.port().to_string()),
            some(time(info.connected_at)),
            yes(info.tls),
            some(&info.application_name),
            target
                .as_ref()
                .and_then(|t| node_name(topology, &t.address)),
            target.as_ref().map(|t| t.key.pid.to_string()),
        ]);
    }
    t
}

/// `SHOW SERVERS`: connections serving a client, then idle ones.
pub fn servers(
    topology: &Topology,
    idle: &[IdleServer],
    clients: &[(std::sync::Arc<ClientInfo>, Option<CancelTarget>)],
    now: Instant,
) -> Table {
    let mut t = Table::new(&[
        "type",
        "user",
        "database",
        "state",
        "node",
        "addr",
        "port",
        "connect_time",
        "idle_seconds",
        "remote_pid",
        "client",
    ]);
    for (info, target) in clients {
        let Some(target) = target else { continue };
        let (host, port) = host_port(&target.address);
        t.push(vec![
            some("S"),
            some(&info.server_user),
            some(&info.database),
            some("active"),
            node_name(topology, &target.address),
            host,
            port,
            some(time(target.connected_at)),
            None,
            some(target.key.pid),
            info.addr.map(|a| a.to_string()),
        ]);
    }
    for s in idle {
        let (host, port) = host_port(&s.address);
        t.push(vec![
            some("S"),
            some(&s.user),
            some(&s.database),
            some("idle"),
            node_name(topology, &s.address),
            host,
            port,
            some(time(s.connected_at)),
            some(now.saturating_duration_since(s.idle_since).as_secs()),
            some(s.pid),
            None,
        ]);
    }
    t
}

/// `SHOW STATS`: per configured node and route (`read`: nothing in the request needed
/// the primary; `write`: something did), requests, transactions, bytes and query times
/// in microseconds, as pgbouncer's `total_*` and `avg_*` columns.
pub fn stats(topology: &Topology, stats: &StatsSnapshot) -> Table {
    let mut t = Table::new(&[
        "node",
        "route",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_query_time",
        "avg_query_time",
        "p99_query_time",
    ]);
    for s in &stats.per_node {
        let Some(n) = topology.nodes.get(s.node_index).filter(|n| !n.removed) else {
            continue;
        };
        t.push(vec![
            some(&n.node.name),
            some(s.route.as_str()),
            some(s.transactions),
            some(s.queries),
            some(s.bytes_received),
            some(s.bytes_sent),
            some(s.total_query_time.as_micros()),
            some(s.avg_query_time.as_micros()),
            some(s.p99_query_time.as_micros()),
        ]);
    }
    t
}

/// `SHOW CONFIG`: every key with its running value (secrets masked) and whether a
/// reload changes it.
pub fn config(settings: &Settings) -> Table {
    let mut t = Table::new(&["key", "value", "changeable"]);
    for (key, value) in crate::reload::flatten(&settings.raw) {
        let shown = if key.ends_with("password") && value != "\"\"" {
            "\"********\"".to_owned()
        } else {
            value
        };
        let changeable = !crate::reload::RESTART_ONLY.contains(&key.as_str());
        t.push(vec![some(key), some(shown), yes(changeable)]);
    }
    t
}

/// `SHOW VERSION`.
pub fn version() -> Table {
    let mut t = Table::new(&["version"]);
    t.push(vec![some(format!("pgsplit {}", env!("CARGO_PKG_VERSION")))]);
    t
}

/// `SHOW HELP`.
pub fn help() -> Table {
    let mut t = Table::new(&["command", "description"]);
    for (command, description) in HELP {
        t.push(vec![some(command), some(description)]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `EXPLAIN ROUTE` row for `sql` in a new session, against a catalog where
    /// `stable_f` is STABLE and `bump` VOLATILE.
    fn explain(sql: &str) -> Vec<Option<String>> {
        use crate::classify::{Classifier, Functions};
        use crate::config::TransactionRouting;
        use crate::gucs::Gucs;
        use crate::route::RoutingState;
        let functions = Functions::new(
            [
                ("public".to_owned(), "stable_f".to_owned(), 's'),
                ("public".to_owned(), "bump".to_owned(), 'v'),
            ],
            &[],
            &[],
        );
        let explained = Classifier::new(10).explain(sql, &functions);
        let mut fresh = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
        let single = explained.class.statements == 1;
        let plan = fresh.plan_query(&explained.class, sql, single, None);
        explain_route(&explained, &plan, "app", true).rows.remove(0)
    }

    #[test]
    fn explain_route_says_where_and_why_for_every_reason() {
        #[rustfmt::skip]
        let cases = [
            // (statement, node starts with, reason, effects contain)
            ("SELECT * FROM t", "standby", "read", None),
            ("SELECT stable_f()", "standby", "read", None),
            ("INSERT INTO t VALUES (1)", "primary", "write", None),
            ("SELECT * FROM t FOR UPDATE", "primary", "locking_read", None),
            ("SELECT bump()", "primary", "volatile_function", None),
            ("SELECT not_in_the_catalog()", "primary", "unknown_function", None),
            ("SELECT nextval('s')", "primary", "sequence", Some("sequence state")),
            ("LISTEN ch", "primary", "session_state", Some("pins the session to the primary: LISTEN")),
            ("CREATE TEMP TABLE x (a int)", "primary", "write", Some("temporary objects")),
            ("BEGIN READ WRITE", "primary", "transaction_mode", Some("begins a transaction READ WRITE")),
            ("BEGIN", "none yet", "any", Some("begins a transaction")),
            ("/* pgsplit:primary */ SELECT 1", "primary", "hint", None),
            ("THIS IS NOT SQL", "primary", "unclassified", None),
            ("SET search_path = app", "primary", "any", Some("sets search_path = app")),
            ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "primary", "write", Some("the catalog is read again")),
        ];
        for (sql, node, reason, effect) in cases {
            let row = explain(sql);
            let cell = |i: usize| row[i].clone().unwrap_or_default();
            assert!(cell(0).starts_with(node), "{sql}: node {:?}", cell(0));
            assert_eq!(cell(1), reason, "{sql}");
            match effect {
                Some(text) => assert!(cell(2).contains(text), "{sql}: effects {:?}", cell(2)),
                None => assert_eq!(row[2], None, "{sql}: effects"),
            }
            assert_eq!(
                cell(4),
                "no",
                "{sql}: a fresh classifier has nothing cached"
            );
        }
    }
    use crate::config::Node;
    use crate::stats::{NodeStats, Served};
    use crate::topology::{Ban, NodeState, WalHistory};
    use std::time::Duration;

    fn state(name: &str, role: Role) -> NodeState {
        NodeState {
            role,
            error: None,
            eligible: role != Role::Unknown,
            ..NodeState::unknown(Node {
                name: name.into(),
                address: format!("10.0.0.{}:5432", name.len()),
                weight: 2,
            })
        }
    }

    fn column<'a>(t: &'a Table, row: usize, name: &str) -> Option<&'a str> {
        let i = t.columns.iter().position(|c| *c == name).expect(name);
        t.rows[row][i].as_deref()
    }

    #[test]
    fn nodes_show_role_health_lag_bans_and_skip_removed_ones() {
        let now = (Instant::now(), SystemTime::UNIX_EPOCH);
        let mut lagging = state("s1", Role::Standby);
        lagging.lag_bytes = Some(4096);
        lagging.lag_time = Some(Duration::from_millis(1500));
        lagging.eligible = false;
        let mut down = state("s22", Role::Unknown);
        down.ban = Some(Ban {
            reason: "connection refused".into(),
            until: now.0 + Duration::from_secs(2),
            failures: 1,
        });
        let mut banned = state("s333", Role::Standby);
        banned.admin_ban = true;
        banned.eligible = false;
        let mut removed = state("gone", Role::Unknown);
        removed.removed = true;
        let topology = Topology {
            wal: WalHistory::default(),
            nodes: vec![state("p", Role::Primary), lagging, down, banned, removed],
        };
        let served = |node_index, route, queries| NodeStats {
            node_index,
            route,
            queries,
            transactions: queries,
            bytes_received: 0,
            bytes_sent: 0,
            total_query_time: Duration::ZERO,
            avg_query_time: Duration::ZERO,
            p99_query_time: Duration::ZERO,
        };
        let stats = StatsSnapshot {
            statements_per_node: vec![7, 30],
            to_primary: 7,
            to_standby: 30,
            pinned_clients: 0,
            per_node: vec![served(0, Served::Write, 7), served(1, Served::Read, 30)],
            decisions: Vec::new(),
            clients: 0,
            active_clients: 0,
            freshness: Vec::new(),
        };
        let t = nodes(&topology, &stats, &[], now);
        assert_eq!(t.rows.len(), 4, "the removed node is not listed");
        assert_eq!(column(&t, 0, "role"), Some("primary"));
        assert_eq!(column(&t, 0, "writes"), Some("7"));
        assert_eq!(column(&t, 0, "reads"), Some("0"));
        assert_eq!(column(&t, 1, "lag_bytes"), Some("4096"));
        assert_eq!(column(&t, 1, "lag_seconds"), Some("1.500"));
        assert_eq!(column(&t, 1, "eligible"), Some("no"));
        assert_eq!(column(&t, 1, "reads"), Some("30"));
        assert_eq!(column(&t, 2, "health"), Some("down"));
        assert_eq!(column(&t, 2, "ban_reason"), Some("connection refused"));
        assert_eq!(column(&t, 2, "banned_until"), Some("1970-01-01T00:00:02Z"));
        assert_eq!(column(&t, 3, "ban_reason"), Some("BAN by an operator"));
        assert_eq!(column(&t, 3, "banned_until"), None);
        assert_eq!(column(&t, 3, "host"), Some("10.0.0.4"));
        assert_eq!(column(&t, 3, "weight"), Some("2"));
    }

    #[test]
    fn config_masks_secrets_and_says_what_needs_a_restart() {
        let settings = Settings::parse(
            r#"
            [monitor]
            password = "monitor-secret"
            [[nodes]]
            address = "127.0.0.1:5432"
            [[users]]
            name = "app"
            password = "app-secret"
            "#,
        )
        .unwrap();
        let t = config(&settings);
        let all = format!("{:?}", t.rows);
        assert!(!all.contains("secret"), "{all}");
        let listen = t
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some("listen"))
            .expect("listen row");
        assert_eq!(listen[2].as_deref(), Some("no"));
        let bound = t
            .rows
            .iter()
            .find(|r| r[0].as_deref() == Some("monitor.max_lag_bytes"))
            .expect("monitor.max_lag_bytes row");
        assert_eq!(bound[1].as_deref(), Some("16777216"));
        assert_eq!(bound[2].as_deref(), Some("yes"));
    }
}
