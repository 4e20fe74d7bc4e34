//! A client's routing state as plain data: which of its server connections runs the
//! current transaction, pins, tracked session settings and prepared statements, and the
//! plan each request gets from it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::classify::{Classification, Effect, Pin, Route};
use crate::config::TransactionRouting;
use crate::gucs::{Gucs, NOT_RESET_BY_ALL};
use crate::prepared::Statement;

/// One of a client's two server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// Answer here with this command tag (DEALLOCATE of a protocol-level statement,
    /// which exists on the servers only under pgsplit's name).
    Answer(&'static str),
    /// Refuse with this SQLSTATE and message, here.
    Refuse(&'static str, &'static str),
    /// A bare BEGIN: answer it here; the next statement picks the node.
    DeferBegin,
    /// COMMIT/ROLLBACK of a transaction that never reached a server: answer it here.
    EndDeferred(&'static str),
}

/// A prepared statement the client created, kept so it can be prepared on any connection.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// How the statement's text was classified.
    pub class: Arc<Classification>,
    /// What it is on the servers.
    pub target: Target,
    /// The result shape (RowDescription or NoData) the client was told when it described
    /// the statement, if it did.
    pub shape: Option<bytes::Bytes>,
}

impl Target {
    /// The identity of the statement on the servers.
    fn id(&self) -> u64 {
        match self {
            Target::Named(statement) => statement.id,
            Target::Unnamed { id, .. } => *id,
        }
    }

    /// The Parse message that creates it.
    pub fn parse(&self) -> &[u8] {
        match self {
            Target::Named(statement) => &statement.parse,
            Target::Unnamed { parse, .. } => parse,
        }
    }
}

impl Prepared {
    /// A statement just parsed, not described yet.
    pub fn new(class: Arc<Classification>, target: Target) -> Prepared {
        Prepared {
            class,
            target,
            shape: None,
        }
    }
}

/// A client statement as the servers hold it.
#[derive(Debug, Clone)]
pub enum Target {
    /// A named statement, under pgsplit's server-side name.
    Named(Arc<Statement>),
    /// The unnamed statement: the client's Parse, replayed where it is missing.
    Unnamed {
        /// The client's Parse message.
        parse: bytes::Bytes,
        /// Identity of that Parse.
        id: u64,
    },
}

/// The routing state of one client.
#[derive(Debug)]
pub struct RoutingState {
    mode: TransactionRouting,
    /// Connection running the open transaction, if any.
    pub txn: Option<Conn>,
    deferred_begin: Option<String>,
    /// A transaction that only pgsplit had begun failed before reaching a server: like
    /// PostgreSQL, everything but its end is refused until then.
    failed_begin: bool,
    /// Pins with the connection each lives on.
    pins: BTreeSet<(PinKey, Conn)>,
    /// Settings from the client's startup packet: what RESET returns to.
    defaults: Gucs,
    /// The session's settings (startup ones and SETs), replayed on every connection that serves it.
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
    Sequence,
    Unknown,
}

impl From<&Pin> for PinKey {
    fn from(p: &Pin) -> Self {
        match p {
            Pin::TempObjects => PinKey::TempObjects,
            Pin::Listen => PinKey::Listen,
            Pin::AdvisoryLock => PinKey::AdvisoryLock,
            Pin::HoldCursor => PinKey::HoldCursor,
            Pin::Sequence => PinKey::Sequence,
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
    /// A standby refused the statement `target` stands for as a write: the client's
    /// statements that run it go to the primary from now on.
    pub fn refused_by_standby(&mut self, target: &Target) {
        let id = target.id();
        for p in self.statements.values_mut() {
            if p.target.id() == id && p.class.route != Route::Primary {
                p.class = Arc::new(p.class.refused_by_standby());
            }
        }
    }

    /// A fresh session with the settings of its startup packet.
    pub fn new(mode: TransactionRouting, defaults: Gucs) -> Self {
        RoutingState {
            mode,
            txn: None,
            deferred_begin: None,
            failed_begin: false,
            pins: BTreeSet::new(),
            gucs: defaults.clone(),
            defaults,
            statements: HashMap::new(),
            sql_prepared: HashMap::new(),
        }
    }

    /// Whether the client is pinned to its primary connection.
    pub fn pinned(&self) -> bool {
        self.pinned_on(Conn::Primary)
    }

    /// Whether session state pins the client to `conn` (a standby gets pins inside a
    /// read-only transaction: a WITH HOLD cursor, an advisory lock).
    pub fn pinned_on(&self, conn: Conn) -> bool {
        self.pins.iter().any(|(_, c)| *c == conn)
    }

    /// Whether the session did something on `conn` pgsplit could not track (a
    /// `set_config` with bound parameters, say): no RESET ALL may run there.
    pub fn holds_untracked(&self, conn: Conn) -> bool {
        self.pins.contains(&(PinKey::Unknown, conn))
    }

    /// Whether the session keeps `conn` between transactions: its pins, and SQL
    /// PREPAREd statements, live there.
    pub fn holds(&self, conn: Conn) -> bool {
        self.pinned_on(conn) || self.sql_prepared.values().any(|(c, _)| *c == conn)
    }

    /// Whether a lone `currval()`/`lastval()` would run where this session's `nextval()`
    /// did not: outside a transaction and with no sequence pin, transaction pooling may
    /// hand it a connection whose sequence state belongs to another client.
    pub fn loses_sequence_state(&self, c: &Classification, lone: bool) -> bool {
        lone && c.effects.contains(&Effect::ReadsSequence)
            && self.txn.is_none()
            && self.deferred_begin.is_none()
            && !self.pins.contains(&(PinKey::Sequence, Conn::Primary))
    }

    /// Whether a BEGIN is being held back until the next statement.
    pub fn begin_deferred(&self) -> bool {
        self.deferred_begin.is_some()
    }

    /// The first statement of a deferred transaction failed before any server saw it.
    pub fn fail_deferred_transaction(&mut self) {
        self.failed_begin = true;
    }

    /// Whether the client is in a transaction pgsplit answered for, now failed.
    pub fn transaction_failed_here(&self) -> bool {
        self.failed_begin
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
            Route::Any if self.pinned_on(Conn::Standby) => Conn::Standby,
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
        if let (Some(Effect::Deallocate { name: Some(name) }), true) = (c.effects.first(), single) {
            // A protocol-level statement exists on the servers only under pgsplit's name.
            let sql_name = name.to_ascii_lowercase();
            if !self.sql_prepared.contains_key(&sql_name) {
                let protocol_name = [name.as_str(), sql_name.as_str()]
                    .into_iter()
                    .find(|n| self.statements.contains_key(*n))
                    .map(str::to_owned);
                if let Some(n) = protocol_name {
                    self.statements.remove(&n);
                    return Plan::Answer("DEALLOCATE");
                }
            }
        }
        if let Some(conn) = self.txn {
            return Plan::Send(conn);
        }
        if self.failed_begin {
            if (single || c.effects.len() == 1)
                && matches!(c.effects.first(), Some(Effect::EndTransaction))
            {
                self.failed_begin = false;
                return Plan::EndDeferred("ROLLBACK");
            }
            return Plan::Refuse(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            );
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
        if let (Some(Effect::Deallocate { name: Some(name) }), true) = (first, single) {
            if let Some((conn, _)) = self.sql_prepared.get(&name.to_ascii_lowercase()) {
                // Where the statement is, or the server would not know it.
                return Plan::Send(*conn);
            }
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

    /// Records what a request sent to `conn` does to the session: settings and what it
    /// creates (pins, SQL PREPAREs) at once; what it releases (unpins, DEALLOCATE, the
    /// session state DISCARD ALL drops) is returned, to be applied with [`Self::release`]
    /// only once the server has done it (the request succeeded, its transaction committed).
    pub fn apply(&mut self, c: &Classification, conn: Conn) -> Vec<Effect> {
        let mut releases = Vec::new();
        for effect in &c.effects {
            match effect {
                Effect::Set { name, value } => {
                    if name == "session_authorization" {
                        // PostgreSQL drops the role with it.
                        self.gucs.remove("role");
                    }
                    self.gucs.insert(name.clone(), value.clone());
                }
                Effect::Reset { name } => {
                    if name == "session_authorization" {
                        self.gucs.remove("role");
                    }
                    match self.defaults.get(name) {
                        Some(value) => {
                            self.gucs.insert(name.clone(), value.clone());
                        }
                        None => {
                            self.gucs.remove(name);
                        }
                    }
                }
                Effect::ResetAll => {
                    let mut gucs = self.defaults.clone();
                    for name in NOT_RESET_BY_ALL {
                        if let Some(value) = self.gucs.get(name) {
                            gucs.insert(name.to_owned(), value.clone());
                        }
                    }
                    self.gucs = gucs;
                }
                Effect::Pin(p) => {
                    self.pins.insert((p.into(), conn));
                }
                Effect::Prepare { name, route } => {
                    self.sql_prepared
                        .insert(name.to_ascii_lowercase(), (conn, *route));
                }
                Effect::DiscardAll => {
                    self.gucs.clone_from(&self.defaults);
                    releases.push(effect.clone());
                }
                Effect::Unpin(_) | Effect::Deallocate { .. } => releases.push(effect.clone()),
                _ => {}
            }
        }
        releases
    }

    /// Applies releases returned by [`Self::apply`] once they took effect on `conn`:
    /// only the state that lives there goes.
    pub fn release(&mut self, effects: &[Effect], conn: Conn) {
        for effect in effects {
            match effect {
                Effect::Unpin(p) => {
                    self.pins.remove(&(p.into(), conn));
                }
                Effect::Deallocate { name: Some(name) } => {
                    let sql_name = name.to_ascii_lowercase();
                    if self
                        .sql_prepared
                        .get(&sql_name)
                        .is_some_and(|(c, _)| *c == conn)
                    {
                        self.sql_prepared.remove(&sql_name);
                    }
                }
                Effect::Deallocate { name: None } => {
                    self.sql_prepared.retain(|_, (c, _)| *c != conn);
                    self.statements.clear();
                }
                Effect::DiscardAll => {
                    self.pins.retain(|(_, c)| *c != conn);
                    self.sql_prepared.retain(|_, (c, _)| *c != conn);
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

#[cfg(test)]
mod tests;
