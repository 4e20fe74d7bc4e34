//! Decides where a client's SQL may run and what it does to the session: a pure function
//! of the text and the function catalog, with no I/O, and a cache in front of it.
//!
//! The rules live in the routing reference (`shared/ROUTING.md`); the tables in `tests/`
//! cover every row. How a decision is made:
//! - the text is cut into statements by a small lexer ([`normalize`] uses the same one),
//!   which also finds hint comments; each statement is parsed with sqlparser;
//! - a parsed statement is routed by kind, and statements that run queries are walked for
//!   function calls, row locks, `SELECT INTO` and nested writes (`walk`);
//! - a statement sqlparser rejects is read by its keywords (`fallback`): primary, but with
//!   transaction boundaries, cursor commands and session pins still recognised;
//! - function calls are decided by [`Functions`]: overrides, fixed lists, `pg_proc`.
//!
//! Decisions that the reference leaves open:
//! - `EXPLAIN` without `ANALYZE` takes the route of the statement it explains (so the plan
//!   of a write is made on the primary): never wrong, and such plans are rare.
//! - `BEGIN`/`SET TRANSACTION` route to `Any` unless a standby would refuse them
//!   (`READ WRITE`, `SERIALIZABLE`), in which case `Primary`; the effect carries the mode.
//! - `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN` have no effect: the chained transaction keeps
//!   the same node and the same characteristics.
//! - `SHOW` goes to a standby: session settings are replayed on every connection.
//! - `set_config(…, false)` becomes a session setting only at the top of a plain `SELECT`
//!   list (no FROM/WHERE), where it surely runs once; elsewhere it pins the session.
//! - `PREPARE` of a statement with session effects pins the session at once (`EXECUTE`
//!   carries no effects); `CLOSE name` does not release a `WITH HOLD` pin, `CLOSE ALL` does.
//! - `DO` blocks are scanned for words that leave session state (advisory locks, temp
//!   objects, LISTEN, SET): a heuristic that errs towards pinning.

mod cache;
mod fallback;
mod functions;
mod lexer;
mod settings;
#[cfg(test)]
mod tests;
mod walk;

use std::borrow::Cow;

use sqlparser::ast::{
    CloseCursor, CopySource, CopyTarget, DiscardObject, Expr, Function, Ident, ObjectName,
    ObjectType, Query, SelectItem, SetExpr, Statement, UtilityOption, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use cache::{CacheStats, Classifier, Explained};
pub use functions::Functions;
pub use lexer::{executed_name, normalize};

use functions::Decision;
use walk::Walk;

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// Runs the same anywhere and needs no particular node; the session decides.
    Any,
    /// A read that a hot standby can serve.
    Standby,
    /// Must run on the primary.
    Primary,
}

/// Why a statement got its route: the first thing found in it that needs the primary, or
/// [`Reason::Read`] when nothing does. Only counted and shown, never used to route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Nothing needs the primary: a read, or a statement that runs the same anywhere.
    Read,
    /// Changes data or schema: INSERT/UPDATE/DELETE/MERGE (also inside a CTE), DDL,
    /// `COPY FROM`, `SELECT INTO`, administration.
    Write,
    /// Takes row locks, which a standby refuses: `FOR UPDATE`, `FOR SHARE`.
    LockingRead,
    /// Calls a function that must run on the primary: volatile, or with side effects
    /// (`txid_current()`, `pg_notify()`).
    VolatileFunction,
    /// Calls a function the catalog does not know (yet): the rule of doubt until the
    /// catalog, read again at once, says otherwise.
    UnknownFunction,
    /// Uses sequence state: `nextval()`, `setval()`, `currval()`, `lastval()`.
    Sequence,
    /// Leaves state on its connection: LISTEN, a `WITH HOLD` cursor, a session advisory
    /// lock, a setting the session cannot replay, `LOAD`.
    SessionState,
    /// A transaction a standby refuses: `READ WRITE`, `SERIALIZABLE`, an imported snapshot,
    /// two-phase commit.
    TransactionMode,
    /// The hint comment `/* pgsplit:primary */` or `/*NO LOAD BALANCE*/`.
    Hint,
    /// Not understood (text sqlparser rejects, a procedure call, a FunctionCall): the rule
    /// of doubt.
    Unclassified,
    /// A standby refused a statement of this shape (`25006`, read-only transaction): it
    /// writes in a way the text does not show (a view over a function that writes, a
    /// function declared STABLE that writes), learned at run time.
    StandbyRefused,
}

/// A kind of state that ties a session to its primary connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pin {
    /// Temporary tables, views, sequences or functions.
    TempObjects,
    /// `LISTEN`: notifications arrive on that connection.
    Listen,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// A cursor `WITH HOLD` outlives its transaction.
    HoldCursor,
    /// `nextval()` / `setval()`: `currval()` and `lastval()` read that connection's state.
    Sequence,
    /// Session state the classifier cannot describe (a setting it cannot replay).
    Unknown,
}

/// What a statement does to the session besides running.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect {
    /// `BEGIN` / `START TRANSACTION`; `read_only` is None when unspecified.
    Begin {
        read_only: Option<bool>,
        serializable: bool,
    },
    /// `SET TRANSACTION …` (also `SET transaction_read_only`, `SET transaction_isolation`);
    /// `SET TRANSACTION SNAPSHOT` gives `read_only: None`.
    SetTransaction {
        read_only: Option<bool>,
        serializable: bool,
    },
    /// `COMMIT` / `END` / `ROLLBACK` / `ABORT` (not `ROLLBACK TO`), and `PREPARE TRANSACTION`.
    EndTransaction,
    /// A session-level setting, replayed as `SET <name> TO <value>`; `name` is lower case and
    /// `value` is quoted SQL text.
    Set { name: String, value: String },
    /// `RESET name` (also `SET name TO DEFAULT`).
    Reset { name: String },
    /// `RESET ALL`.
    ResetAll,
    /// The session must stay on its primary connection until released.
    Pin(Pin),
    /// Releases a pin: `UNLISTEN *`, `pg_advisory_unlock_all()`, `DISCARD TEMP`, `CLOSE ALL`.
    Unpin(Pin),
    /// SQL `PREPARE name AS stmt`, with the inner statement's route.
    Prepare { name: String, route: Route },
    /// SQL `EXECUTE name`.
    Execute { name: String },
    /// `DEALLOCATE [PREPARE] name`, or `ALL` (None).
    Deallocate { name: Option<String> },
    /// `DISCARD ALL`.
    DiscardAll,
    /// `currval()` / `lastval()`: reads what `nextval()` left on the connection.
    ReadsSequence,
    /// A function or procedure was created, changed or dropped: reload the catalog.
    FunctionsChanged,
}

/// The classifier's answer for one Query message (or one Parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The strictest route of the statements in the text.
    pub route: Route,
    /// Why: [`Reason::Read`] unless the route is [`Route::Primary`].
    pub reason: Reason,
    /// The statements' effects, in order.
    pub effects: Vec<Effect>,
    /// Whether another text with the same normalized form gets the same answer.
    pub cacheable: bool,
    /// How many statements the text holds (a bare `BEGIN` is 1).
    pub statements: usize,
    /// Whether it calls a function the catalog does not know.
    pub unknown_function: bool,
}

impl Classification {
    fn new() -> Classification {
        Classification {
            route: Route::Any,
            reason: Reason::Read,
            effects: Vec::new(),
            cacheable: true,
            statements: 0,
            unknown_function: false,
        }
    }

    /// For requests whose text pgsplit cannot see (FunctionCall): the primary.
    pub fn primary() -> Classification {
        Classification {
            route: Route::Primary,
            reason: Reason::Unclassified,
            cacheable: false,
            statements: 1,
            ..Classification::new()
        }
    }

    /// The neutral element for combining the statements of an extended-protocol batch.
    pub fn any() -> Classification {
        Classification {
            cacheable: false,
            ..Classification::new()
        }
    }

    /// Raises the route to a read or `Any`; the primary goes through [`Self::need_primary`],
    /// which records why.
    fn raise(&mut self, route: Route) {
        match route {
            Route::Primary => self.need_primary(Reason::Unclassified),
            _ => self.route = self.route.max(route),
        }
    }

    /// The statement needs the primary; the first reason found is kept.
    pub fn need_primary(&mut self, why: Reason) {
        if self.route != Route::Primary {
            self.route = Route::Primary;
            self.reason = why;
        }
    }

    /// This classification, sent to the primary because a standby refused it as a write.
    pub fn refused_by_standby(&self) -> Classification {
        Classification {
            route: Route::Primary,
            reason: Reason::StandbyRefused,
            ..self.clone()
        }
    }

    /// Raises the route to `other`'s, with its reason (a batch, an EXPLAIN, a PREPARE).
    pub fn join(&mut self, other: &Classification) {
        self.unknown_function |= other.unknown_function;
        match other.route {
            Route::Primary => self.need_primary(other.reason),
            route => self.raise(route),
        }
    }
}

/// How deep `TABLE t` rewrites and `PREPARE … AS` bodies may nest before the rule of doubt.
const MAX_DEPTH: u8 = 4;

/// Classifies a Query message's text (or a Parse's) against a function catalog snapshot.
pub fn classify(sql: &str, functions: &Functions) -> Classification {
    let scan = lexer::scan(sql);
    let mut out = Classification::new();
    out.statements = scan.statements.len();
    for &(start, end) in &scan.statements {
        classify_one(sql.get(start..end).unwrap_or(""), functions, 0, &mut out);
    }
    if scan.hint {
        out.need_primary(Reason::Hint);
    }
    // Settings and `SET TRANSACTION` modes are decided by values that the cache key drops
    // (`SET transaction_read_only = 'on'` and `'off'` share one). BEGIN's modes and the
    // ends of transactions are keywords, which the key keeps: they are cached, as TPC-B
    // style traffic sends them twice per transaction.
    if out.effects.iter().any(|e| {
        !matches!(
            e,
            Effect::Pin(_)
                | Effect::Unpin(_)
                | Effect::Execute { .. }
                | Effect::FunctionsChanged
                | Effect::Begin { .. }
                | Effect::EndTransaction
        )
    }) {
        out.cacheable = false;
    }
    out
}

/// Classifies one statement's text, with the keyword fallback when sqlparser fails.
fn classify_one(text: &str, functions: &Functions, depth: u8, out: &mut Classification) {
    if depth > MAX_DEPTH {
        return out.need_primary(Reason::Unclassified);
    }
    match Parser::parse_sql(&PostgreSqlDialect {}, text) {
        Ok(statements) => {
            for statement in &statements {
                classify_statement(statement, functions, out);
            }
        }
        Err(error) => {
            tracing::debug!(statement = text, %error, "unparseable statement: keyword fallback");
            fallback::classify(text, functions, depth, out);
        }
    }
}

/// Whether an object name is qualified with `pg_temp`, the session's temporary schema.
fn in_pg_temp(name: &ObjectName) -> bool {
    name.0.len() > 1
        && name.0[0]
            .as_ident()
            .is_some_and(|i| i.quote_style.is_none() && i.value.eq_ignore_ascii_case("pg_temp"))
}

/// An identifier as PostgreSQL resolves it: folded to lower case unless quoted.
fn fold(ident: &Ident) -> Cow<'_, str> {
    if ident.quote_style.is_some() || !ident.value.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Borrowed(&ident.value)
    } else {
        Cow::Owned(ident.value.to_lowercase())
    }
}

/// A statement or cursor name as PostgreSQL resolves it.
fn ident_name(ident: &Ident) -> String {
    fold(ident).into_owned()
}

/// Whether an `EXPLAIN (…)` option turns ANALYZE on: only an explicit false/off/0 turns it
/// off (PostgreSQL's `defGetBoolean`); anything unreadable counts as on.
fn analyze_option(option: &UtilityOption) -> bool {
    if !option.name.value.eq_ignore_ascii_case("analyze") {
        return false;
    }
    let text = match &option.arg {
        None => return true,
        Some(Expr::Identifier(i)) => i.value.clone(),
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => b.to_string(),
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) => s.clone(),
            _ => return true,
        },
        Some(_) => return true,
    };
    settings::parse_bool(&text) != Some(false)
}

/// `set_config` calls at the top of a plain `SELECT` list (no FROM, no WHERE) run exactly
/// once, so their literal arguments become session settings. Returns the calls handled, and
/// whether they are the whole statement (which then runs the same anywhere).
fn top_level_set_config(
    query: &Query,
    functions: &Functions,
    out: &mut Classification,
) -> (Vec<*const Function>, bool) {
    let mut handled = Vec::new();
    let SetExpr::Select(select) = query.body.as_ref() else {
        return (handled, false);
    };
    // Anything that could make the list run zero or many times: LIMIT 0, HAVING false, FROM.
    let once = query.with.is_none()
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && query.locks.is_empty()
        && select.from.is_empty()
        && select.selection.is_none()
        && select.having.is_none();
    if !once {
        return (handled, false);
    }
    for item in &select.projection {
        let (SelectItem::UnnamedExpr(Expr::Function(f))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        }) = item
        else {
            continue;
        };
        let is_set_config = walk::called_name(&f.name)
            .is_some_and(|name| functions.decide(&name) == Decision::SetConfig);
        if !is_set_config {
            continue;
        }
        match settings::set_config(f) {
            settings::SetConfig::Session(effect) => {
                out.effects.push(effect);
                handled.push(f as *const Function);
            }
            settings::SetConfig::Local => handled.push(f as *const Function),
            settings::SetConfig::Unknown => {}
        }
    }
    let only_settings = handled.len() == select.projection.len();
    (handled, only_settings)
}

/// Walks a query that runs now, as a read unless something in it needs the primary.
fn read(query: &Query, functions: &Functions, out: &mut Classification) {
    out.raise(Route::Standby);
    Walk::run(query, functions, out, &[]);
}

/// Classifies one parsed statement into `out`. Any statement not named here is treated as
/// DDL or administration: primary.
fn classify_statement(statement: &Statement, functions: &Functions, out: &mut Classification) {
    use Statement as S;
    match statement {
        S::Query(query) => {
            let (handled, only_settings) = top_level_set_config(query, functions, out);
            if !only_settings {
                out.raise(Route::Standby);
            }
            Walk::run(statement, functions, out, &handled);
        }
        S::Insert(_) | S::Update(_) | S::Delete(_) | S::Merge(_) => {
            out.need_primary(Reason::Write);
            Walk::run(statement, functions, out, &[]);
        }
        S::Copy {
            source, to, target, ..
        } => {
            // Only COPY … TO STDOUT is a plain read; COPY TO a file or program writes on
            // the server that runs it.
            if !(*to && matches!(target, CopyTarget::Stdout)) {
                out.need_primary(Reason::Write);
            }
            match source {
                CopySource::Query(query) => read(query, functions, out),
                CopySource::Table { .. } => out.raise(Route::Standby),
            }
        }
        S::Explain {
            analyze,
            statement: inner,
            options,
            ..
        } => {
            // An option's value is a constant the cache key drops: `(ANALYZE 0)` vs `(ANALYZE 1)`.
            if options.is_some() {
                out.cacheable = false;
            }
            let analyze = *analyze || options.iter().flatten().any(analyze_option);
            let mut explained = Classification::new();
            classify_statement(inner, functions, &mut explained);
            out.raise(Route::Standby);
            out.join(&explained);
            out.cacheable &= explained.cacheable;
            if analyze {
                // ANALYZE executes the statement, effects and all.
                out.effects.extend(explained.effects);
            } else {
                // `EXPLAIN EXECUTE p` still needs p prepared on the connection.
                out.effects.extend(
                    explained
                        .effects
                        .into_iter()
                        .filter(|e| matches!(e, Effect::Execute { .. })),
                );
            }
        }
        S::ShowVariable { .. } => out.raise(Route::Standby),
        S::StartTransaction { modes, .. } => {
            let (read_only, serializable) = settings::transaction_modes(modes);
            begin(out, read_only, serializable);
        }
        S::Commit { chain, .. } => {
            if !chain {
                out.effects.push(Effect::EndTransaction);
            }
        }
        S::Rollback { chain, savepoint } => {
            if !chain && savepoint.is_none() {
                out.effects.push(Effect::EndTransaction);
            }
        }
        S::Savepoint { .. } | S::ReleaseSavepoint { .. } | S::Fetch { .. } => {}
        S::Close { cursor } => {
            if matches!(cursor, CloseCursor::All) {
                out.effects.push(Effect::Unpin(Pin::HoldCursor));
            }
        }
        S::Set(set) => settings::set(set, out),
        S::Reset(reset) => settings::reset(reset, out),
        S::Prepare {
            name,
            statement: inner,
            ..
        } => {
            let mut prepared = Classification::new();
            classify_statement(inner, functions, &mut prepared);
            prepare(out, ident_name(name), prepared);
        }
        S::Execute {
            name: Some(name),
            parameters,
            immediate: false,
            ..
        } if name.0.len() == 1 => {
            // Parameters are evaluated now: `EXECUTE p(nextval('s'))`.
            for parameter in parameters {
                Walk::run(parameter, functions, out, &[]);
            }
            if let Some(ident) = name.0[0].as_ident() {
                out.effects.push(Effect::Execute {
                    name: ident_name(ident),
                });
            }
        }
        S::Deallocate { name, .. } => {
            let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
            out.effects.push(Effect::Deallocate {
                name: (!all).then(|| ident_name(name)),
            });
        }
        S::Discard { object_type } => match object_type {
            DiscardObject::ALL => out.effects.push(Effect::DiscardAll),
            DiscardObject::TEMP => out.effects.push(Effect::Unpin(Pin::TempObjects)),
            DiscardObject::SEQUENCES => out.effects.push(Effect::Unpin(Pin::Sequence)),
            DiscardObject::PLANS => {}
        },
        S::Declare { stmts, .. } => {
            for declare in stmts {
                match &declare.for_query {
                    Some(query) => read(query, functions, out),
                    None => out.need_primary(Reason::Unclassified),
                }
                if declare.hold == Some(true) {
                    out.need_primary(Reason::SessionState);
                    out.effects.push(Effect::Pin(Pin::HoldCursor));
                }
            }
        }
        S::LISTEN { .. } => {
            out.need_primary(Reason::SessionState);
            out.effects.push(Effect::Pin(Pin::Listen));
        }
        S::UNLISTEN { channel } => {
            out.need_primary(Reason::SessionState);
            if channel.value == "*" && channel.quote_style.is_none() {
                out.effects.push(Effect::Unpin(Pin::Listen));
            }
        }
        S::Call(_) => {
            // A procedure's effects are unknown; its arguments may still take locks.
            out.need_primary(Reason::Unclassified);
            Walk::run(statement, functions, out, &[]);
        }
        S::CreateTable(create) => {
            out.need_primary(Reason::Write);
            if create.temporary || in_pg_temp(&create.name) {
                out.effects.push(Effect::Pin(Pin::TempObjects));
            }
            // CREATE TABLE … AS runs its query now.
            if let Some(query) = &create.query {
                read(query, functions, out);
            }
        }
        S::CreateView(create) => {
            out.need_primary(Reason::Write);
            if create.temporary || in_pg_temp(&create.name) {
                out.effects.push(Effect::Pin(Pin::TempObjects));
            }
            if create.materialized {
                read(&create.query, functions, out);
            }
        }
        S::CreateSequence {
            temporary, name, ..
        } => {
            out.need_primary(Reason::Write);
            if *temporary || in_pg_temp(name) {
                out.effects.push(Effect::Pin(Pin::TempObjects));
            }
        }
        S::CreateFunction(create) => {
            out.need_primary(Reason::Write);
            if create.temporary || in_pg_temp(&create.name) {
                out.effects.push(Effect::Pin(Pin::TempObjects));
            }
            out.effects.push(Effect::FunctionsChanged);
        }
        S::CreateProcedure { .. }
        | S::AlterFunction(_)
        | S::DropFunction(_)
        | S::DropProcedure { .. }
        | S::CreateAggregate(_)
        | S::CreateExtension(_)
        | S::DropExtension(_)
        | S::AlterSchema(_)
        | S::Drop {
            object_type: ObjectType::Schema,
            ..
        } => {
            // Functions appeared, changed volatility, or moved: the catalog is stale.
            out.need_primary(Reason::Write);
            out.effects.push(Effect::FunctionsChanged);
        }
        S::Load { .. } => {
            // A library loaded into one backend: session state the session cannot replay.
            out.need_primary(Reason::SessionState);
            out.effects.push(Effect::Pin(Pin::Unknown));
        }
        _ => out.need_primary(Reason::Write),
    }
}

/// Emits a `PREPARE`. The statement's effects happen at each `EXECUTE`, which carries no
/// effects of its own: a prepared statement with session effects (a `set_config`, an
/// advisory lock) pins the session now and runs on the primary.
fn prepare(out: &mut Classification, name: String, mut prepared: Classification) {
    out.cacheable &= prepared.cacheable;
    if !prepared.effects.is_empty() {
        prepared.need_primary(Reason::SessionState);
        out.effects.push(Effect::Pin(Pin::Unknown));
    }
    out.effects.push(Effect::Prepare {
        name,
        route: prepared.route,
    });
}

/// Emits a transaction start. A standby refuses read-write and serializable transactions.
fn begin(out: &mut Classification, read_only: Option<bool>, serializable: bool) {
    if read_only == Some(false) || serializable {
        out.need_primary(Reason::TransactionMode);
    }
    out.effects.push(Effect::Begin {
        read_only,
        serializable,
    });
}
