//! A client's routing state as plain data: which of its server connections runs the
//! current transaction, pins, tracked session settings and prepared statements.
//! Every decision here is a pure function, unit-tested without sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::classify::{Classification, Effect, Pin, Route};
use crate::config::TransactionRouting;

/// One of a client's two server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conn {
    /// The connection to the primary.
    Primary,
    /// The connection to the client's standby.
    Standby,
}

/// What to do with a client request (a Query, or an extended-protocol batch up to Sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Forward it to this connection.
    Send(Conn),
    /// Send the deferred `BEGIN` first (its reply is swallowed), then the request.
    BeginThenSend(Conn, String),
    /// A bare BEGIN: answer it here; the next statement picks the node.
    DeferBegin,
    /// COMMIT/ROLLBACK of a transaction that never reached a server: answer it here.
    EndDeferred(&'static str),
}

/// Session settings (GUC name → SQL text of its value) as `SET` would replay them.
pub type Gucs = BTreeMap<String, String>;

/// A prepared statement the client created, kept so it can be prepared on another connection.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// How the statement's text was classified.
    pub class: std::sync::Arc<Classification>,
    /// The client's Parse message, replayed as is on another connection.
    pub parse: bytes::Bytes,
    /// Which of the client's Parse messages this is (a reused name gets a new one).
    pub generation: u64,
}

/// The routing state of one client.
#[derive(Debug)]
pub struct RoutingState {
    mode: TransactionRouting,
    /// Connection running the open transaction, if any.
    pub txn: Option<Conn>,
    deferred_begin: Option<String>,
    pins: BTreeSet<PinKey>,
    /// Settings the client made with SET, replayed on every connection that serves it.
    pub gucs: Gucs,
    /// Protocol-level prepared statements by name ("" = the unnamed one).
    pub statements: HashMap<String, Prepared>,
    /// SQL-level PREPAREd statements: name → the connection that holds it and its route.
    pub sql_prepared: HashMap<String, (Conn, Route)>,
}

/// Pin reasons, orderable for a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PinKey {
    TempObjects,
    Listen,
    AdvisoryLock,
    HoldCursor,
    Unknown,
}

impl From<&Pin> for PinKey {
    fn from(p: &Pin) -> Self {
        match p {
            Pin::TempObjects => PinKey::TempObjects,
            Pin::Listen => PinKey::Listen,
            Pin::AdvisoryLock => PinKey::AdvisoryLock,
            Pin::HoldCursor => PinKey::HoldCursor,
            Pin::Unknown => PinKey::Unknown,
        }
    }
}

fn is_on(value: &str) -> bool {
    matches!(
        value.trim_matches('\'').to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y"
    )
}

impl RoutingState {
    /// A fresh session.
    pub fn new(mode: TransactionRouting) -> Self {
        RoutingState {
            mode,
            txn: None,
            deferred_begin: None,
            pins: BTreeSet::new(),
            gucs: Gucs::new(),
            statements: HashMap::new(),
            sql_prepared: HashMap::new(),
        }
    }

    /// Whether the client is pinned to its primary connection.
    pub fn pinned(&self) -> bool {
        !self.pins.is_empty()
    }

    /// Whether a BEGIN is being held back until the next statement.
    pub fn begin_deferred(&self) -> bool {
        self.deferred_begin.is_some()
    }

    fn default_read_only(&self) -> bool {
        self.gucs
            .get("default_transaction_read_only")
            .is_some_and(|v| is_on(v))
    }

    fn default_serializable(&self) -> bool {
        self.gucs
            .get("default_transaction_isolation")
            .is_some_and(|v| v.to_ascii_lowercase().contains("serializable"))
    }

    /// Where an autocommit statement of this route goes.
    fn autocommit(&self, route: Route, open: Option<Conn>) -> Conn {
        match route {
            _ if self.pinned() => Conn::Primary,
            Route::Primary => Conn::Primary,
            // A standby refuses SERIALIZABLE, even for a single read.
            Route::Standby if self.default_serializable() => Conn::Primary,
            Route::Standby => Conn::Standby,
            Route::Any => open.unwrap_or(Conn::Primary),
        }
    }

    /// Plans a simple Query. `single` says the text is one statement; `open` is the
    /// connection used last (for statements that may run anywhere).
    pub fn plan_query(
        &mut self,
        c: &Classification,
        text: &str,
        single: bool,
        open: Option<Conn>,
    ) -> Plan {
        let plan = self.plan(c, text, single, open);
        if plan == Plan::DeferBegin {
            self.deferred_begin = Some(text.to_owned());
        }
        plan
    }

    /// Plans an extended-protocol batch (never deferred: its BEGIN has no text of its own).
    /// A batch that ends with Flush instead of Sync may go on with statements not seen
    /// yet, so outside a transaction it starts on the primary.
    pub fn plan_batch(&mut self, c: &Classification, open: Option<Conn>, synced: bool) -> Plan {
        let chain = !synced && self.txn.is_none();
        match self.plan(c, "", false, open) {
            Plan::DeferBegin | Plan::EndDeferred(_) => Plan::Send(Conn::Primary),
            Plan::Send(_) if chain => Plan::Send(Conn::Primary),
            Plan::BeginThenSend(_, begin) if chain => Plan::BeginThenSend(Conn::Primary, begin),
            plan => plan,
        }
    }

    fn plan(&mut self, c: &Classification, text: &str, single: bool, open: Option<Conn>) -> Plan {
        if let Some(conn) = self.txn {
            return Plan::Send(conn);
        }
        let first = c.effects.first();
        if let Some(begin) = self.deferred_begin.take() {
            if single
                && matches!(first, Some(Effect::EndTransaction))
                && !text
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("prepare")
            {
                return Plan::EndDeferred(end_tag(text));
            }
            let read_only = match first {
                Some(Effect::SetTransaction {
                    read_only,
                    serializable,
                }) => *read_only == Some(true) && !serializable,
                _ => self.mode == TransactionRouting::FirstStatement && c.route == Route::Standby,
            };
            let conn = if read_only && !self.pinned() && !self.default_serializable() {
                Conn::Standby
            } else {
                Conn::Primary
            };
            return Plan::BeginThenSend(conn, begin);
        }
        if let Some(Effect::Begin {
            read_only,
            serializable,
        }) = first
        {
            let serializable = *serializable || self.default_serializable();
            let read_only = read_only.unwrap_or_else(|| self.default_read_only());
            if self.pinned() || serializable {
                return Plan::Send(Conn::Primary);
            }
            if read_only {
                return Plan::Send(Conn::Standby);
            }
            // Only an unqualified BEGIN can still become read-only by SET TRANSACTION.
            let bare = single
                && c.effects.len() == 1
                && !matches!(
                    first,
                    Some(Effect::Begin {
                        read_only: Some(_),
                        ..
                    })
                );
            if bare {
                return Plan::DeferBegin;
            }
            return match self.mode {
                TransactionRouting::FirstStatement if c.route <= Route::Standby => {
                    Plan::Send(Conn::Standby)
                }
                _ => Plan::Send(Conn::Primary),
            };
        }
        if let Some(Effect::Prepare { route, .. }) = first {
            // Prepare where the statement will run, so EXECUTE finds it there.
            return Plan::Send(self.autocommit(*route, open));
        }
        if let Some(Effect::Execute { name }) = first {
            if let Some((conn, route)) = self.sql_prepared.get(&name.to_ascii_lowercase()) {
                return Plan::Send(if self.pinned() || *route == Route::Primary {
                    Conn::Primary
                } else {
                    *conn
                });
            }
            return Plan::Send(Conn::Primary);
        }
        Plan::Send(self.autocommit(c.route, open))
    }

    /// Records what a request sent to `conn` does to the session (pins, settings, statements).
    pub fn apply(&mut self, c: &Classification, conn: Conn) {
        for effect in &c.effects {
            match effect {
                Effect::Set { name, value } => {
                    self.gucs.insert(name.clone(), value.clone());
                }
                Effect::Reset { name } => {
                    self.gucs.remove(name);
                }
                Effect::ResetAll => self.gucs.clear(),
                Effect::Pin(p) => {
                    self.pins.insert(p.into());
                }
                Effect::Unpin(p) => {
                    self.pins.remove(&p.into());
                }
                Effect::Prepare { name, route } => {
                    self.sql_prepared
                        .insert(name.to_ascii_lowercase(), (conn, *route));
                }
                Effect::Deallocate { name: Some(name) } => {
                    self.sql_prepared.remove(&name.to_ascii_lowercase());
                    self.statements.remove(name);
                }
                Effect::Deallocate { name: None } => {
                    self.sql_prepared.clear();
                    self.statements.clear();
                }
                Effect::DiscardAll => {
                    self.gucs.clear();
                    self.pins.clear();
                    self.sql_prepared.clear();
                    self.statements.clear();
                }
                _ => {}
            }
        }
    }

    /// Updates the transaction state from a ReadyForQuery status of `conn`.
    pub fn ready(&mut self, conn: Conn, status: u8) {
        self.txn = match status {
            b'T' | b'E' => Some(conn),
            _ => None,
        };
    }
}

/// The command tag PostgreSQL answers an empty transaction's end with.
fn end_tag(text: &str) -> &'static str {
    let word: String = text
        .trim_start()
        .chars()
        .take(6)
        .collect::<String>()
        .to_ascii_lowercase();
    if word.starts_with("commit") || word.starts_with("end") {
        "COMMIT"
    } else {
        "ROLLBACK"
    }
}

/// The SQL that makes a connection's settings (`applied`) equal to the session's (`wanted`).
pub fn guc_sync_sql(applied: &Gucs, wanted: &Gucs) -> Option<String> {
    let mut sql = String::new();
    for name in applied.keys().filter(|n| !wanted.contains_key(*n)) {
        sql.push_str(&format!("RESET {name};"));
    }
    for (name, value) in wanted {
        if applied.get(name) != Some(value) {
            sql.push_str(&format!("SET {name} TO {value};"));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(route: Route, effects: Vec<Effect>) -> Classification {
        Classification {
            route,
            effects,
            cacheable: false,
            statements: 1,
        }
    }

    fn begin(read_only: Option<bool>, serializable: bool) -> Effect {
        Effect::Begin {
            read_only,
            serializable,
        }
    }

    #[test]
    fn autocommit_statements_go_where_their_route_says() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        let cases = [
            (Route::Standby, None, Plan::Send(Conn::Standby)),
            (
                Route::Primary,
                Some(Conn::Standby),
                Plan::Send(Conn::Primary),
            ),
            (Route::Any, Some(Conn::Standby), Plan::Send(Conn::Standby)),
            (Route::Any, None, Plan::Send(Conn::Primary)),
        ];
        for (route, open, want) in cases {
            assert_eq!(
                s.plan_query(&c(route, vec![]), "x", true, open),
                want,
                "{route:?}"
            );
        }
    }

    #[test]
    fn transactions_stay_on_the_connection_that_began_them() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        let plan = s.plan_query(
            &c(Route::Any, vec![begin(Some(true), false)]),
            "BEGIN READ ONLY",
            true,
            None,
        );
        assert_eq!(plan, Plan::Send(Conn::Standby));
        s.ready(Conn::Standby, b'T');
        assert_eq!(
            s.plan_query(&c(Route::Primary, vec![]), "INSERT", true, None),
            Plan::Send(Conn::Standby)
        );
        s.ready(Conn::Standby, b'I');
        assert_eq!(
            s.plan_query(&c(Route::Primary, vec![]), "INSERT", true, None),
            Plan::Send(Conn::Primary)
        );
    }

    #[test]
    fn a_bare_begin_waits_for_the_next_statement() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        assert_eq!(
            s.plan_query(
                &c(Route::Any, vec![begin(None, false)]),
                "BEGIN",
                true,
                None
            ),
            Plan::DeferBegin
        );
        let set_ro = c(
            Route::Any,
            vec![Effect::SetTransaction {
                read_only: Some(true),
                serializable: false,
            }],
        );
        assert_eq!(
            s.plan_query(&set_ro, "SET TRANSACTION READ ONLY", true, None),
            Plan::BeginThenSend(Conn::Standby, "BEGIN".into())
        );

        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        s.plan_query(
            &c(Route::Any, vec![begin(None, false)]),
            "begin",
            true,
            None,
        );
        assert_eq!(
            s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
            Plan::BeginThenSend(Conn::Primary, "begin".into())
        );

        let mut s = RoutingState::new(TransactionRouting::FirstStatement);
        s.plan_query(
            &c(Route::Any, vec![begin(None, false)]),
            "BEGIN",
            true,
            None,
        );
        assert_eq!(
            s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
            Plan::BeginThenSend(Conn::Standby, "BEGIN".into())
        );

        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        s.plan_query(
            &c(Route::Any, vec![begin(None, false)]),
            "BEGIN",
            true,
            None,
        );
        assert_eq!(
            s.plan_query(
                &c(Route::Any, vec![Effect::EndTransaction]),
                "COMMIT",
                true,
                None
            ),
            Plan::EndDeferred("COMMIT")
        );
        assert!(!s.begin_deferred());
    }

    #[test]
    fn a_flush_chain_outside_a_transaction_starts_on_the_primary() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        let read = c(Route::Standby, vec![]);
        assert_eq!(s.plan_batch(&read, None, true), Plan::Send(Conn::Standby));
        assert_eq!(s.plan_batch(&read, None, false), Plan::Send(Conn::Primary));
        s.ready(Conn::Standby, b'T');
        assert_eq!(s.plan_batch(&read, None, false), Plan::Send(Conn::Standby));
    }

    #[test]
    fn serializable_and_pinned_sessions_stay_on_the_primary() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        let ro_serializable = c(Route::Any, vec![begin(Some(true), true)]);
        assert_eq!(
            s.plan_query(&ro_serializable, "BEGIN", true, None),
            Plan::Send(Conn::Primary)
        );

        s.apply(
            &c(
                Route::Any,
                vec![Effect::Set {
                    name: "default_transaction_isolation".into(),
                    value: "'serializable'".into(),
                }],
            ),
            Conn::Primary,
        );
        assert_eq!(
            s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
            Plan::Send(Conn::Primary)
        );
        s.apply(&c(Route::Any, vec![Effect::ResetAll]), Conn::Primary);
        assert_eq!(
            s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
            Plan::Send(Conn::Standby)
        );

        s.apply(
            &c(Route::Primary, vec![Effect::Pin(Pin::Listen)]),
            Conn::Primary,
        );
        assert_eq!(
            s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
            Plan::Send(Conn::Primary)
        );
        s.apply(
            &c(Route::Primary, vec![Effect::Unpin(Pin::Listen)]),
            Conn::Primary,
        );
        assert_eq!(
            s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
            Plan::Send(Conn::Standby)
        );
    }

    #[test]
    fn default_transaction_read_only_sends_transactions_to_a_standby() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        s.apply(
            &c(
                Route::Any,
                vec![Effect::Set {
                    name: "default_transaction_read_only".into(),
                    value: "on".into(),
                }],
            ),
            Conn::Primary,
        );
        assert_eq!(
            s.plan_query(
                &c(Route::Any, vec![begin(None, false)]),
                "BEGIN",
                true,
                None
            ),
            Plan::Send(Conn::Standby)
        );
        assert_eq!(
            s.plan_query(
                &c(Route::Any, vec![begin(Some(false), false)]),
                "BEGIN READ WRITE",
                true,
                None
            ),
            Plan::Send(Conn::Primary)
        );
    }

    #[test]
    fn sql_prepared_statements_execute_where_they_were_prepared() {
        let mut s = RoutingState::new(TransactionRouting::ReadOnly);
        s.apply(
            &c(
                Route::Standby,
                vec![Effect::Prepare {
                    name: "q".into(),
                    route: Route::Standby,
                }],
            ),
            Conn::Standby,
        );
        let exec = c(Route::Any, vec![Effect::Execute { name: "Q".into() }]);
        assert_eq!(
            s.plan_query(&exec, "EXECUTE q", true, None),
            Plan::Send(Conn::Standby)
        );
        s.apply(
            &c(Route::Any, vec![Effect::Deallocate { name: None }]),
            Conn::Primary,
        );
        assert_eq!(
            s.plan_query(&exec, "EXECUTE q", true, None),
            Plan::Send(Conn::Primary)
        );
    }

    #[test]
    fn settings_sync_as_a_diff() {
        let applied: Gucs = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]
        .into();
        let wanted: Gucs = [
            ("b".to_string(), "3".to_string()),
            ("c".to_string(), "'x'".to_string()),
        ]
        .into();
        assert_eq!(
            guc_sync_sql(&applied, &wanted).as_deref(),
            Some("RESET a;SET b TO 3;SET c TO 'x';")
        );
        assert_eq!(guc_sync_sql(&wanted, &wanted), None);
    }
}
