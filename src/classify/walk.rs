//! Walks a parsed statement for everything that can make a read need the primary: function
//! calls wherever they appear, row locks, `SELECT … INTO`, and writes nested in CTEs.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Function, ObjectName, Query, Select, Statement, TableFactor, Visit, Visitor,
};

use super::functions::{Decision, FunctionName, Functions};
use super::settings::{set_config, SetConfig};
use super::{fold, Classification, Effect, Pin, Reason, Route};

/// SQL-syntax forms that sqlparser reports as function calls but that are not in `pg_proc`
/// (or are keywords there): all of them only compute values.
const KEYWORD_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "array",
    "row",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "current_catalog",
    "current_schema",
    "session_user",
    "system_user",
    "user",
    "grouping",
    "xmlelement",
    "xmlforest",
    "xmlconcat",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "json",
    "json_scalar",
    "json_serialize",
    "json_object",
    "json_array",
    "json_objectagg",
    "json_arrayagg",
    "json_query",
    "json_value",
    "json_exists",
    "merge_action",
];

/// The called name of `name`; None for dialect forms PostgreSQL does not have.
fn function_name(name: &ObjectName) -> Option<(FunctionName, bool)> {
    let mut parts = name.0.iter().rev().map(|p| p.as_ident());
    let last = parts.next()??;
    let schema = match parts.next() {
        Some(Some(schema)) => Some(fold(schema).into_owned()),
        Some(None) => return None,
        None => None,
    };
    let keyword = schema.is_none()
        && last.quote_style.is_none()
        && KEYWORD_FUNCTIONS
            .iter()
            .any(|k| last.value.eq_ignore_ascii_case(k));
    Some((
        FunctionName {
            schema,
            name: fold(last).into_owned(),
        },
        keyword,
    ))
}

/// The called function of `name` as the catalog knows it.
pub(crate) fn called_name(name: &ObjectName) -> Option<FunctionName> {
    function_name(name).map(|(call, _)| call)
}

/// The visitor; its findings accumulate into a [`Classification`].
pub(crate) struct Walk<'a> {
    functions: &'a Functions,
    out: &'a mut Classification,
    /// `set_config` calls already turned into session settings, by address.
    handled: &'a [*const Function],
}

impl<'a> Walk<'a> {
    /// Walks `node`, raising `out`'s route and adding effects.
    pub fn run<V: Visit + ?Sized>(
        node: &V,
        functions: &'a Functions,
        out: &'a mut Classification,
        handled: &'a [*const Function],
    ) {
        let mut walk = Walk {
            functions,
            out,
            handled,
        };
        // The visitor never breaks: every call must be seen.
        let _ = node.visit(&mut walk);
    }

    fn call(&mut self, name: &ObjectName, function: Option<&Function>) {
        let Some((call, keyword)) = function_name(name) else {
            return self.out.need_primary(Reason::Unclassified);
        };
        if keyword {
            return self.out.raise(Route::Standby);
        }
        match self.functions.decide(&call) {
            Decision::Route(Route::Primary) => self.out.need_primary(Reason::VolatileFunction),
            Decision::Unknown => {
                self.out.need_primary(Reason::UnknownFunction);
                self.out.unknown_function = true;
            }
            Decision::Route(route) => self.out.raise(route),
            Decision::Pin(pin) => {
                self.out.need_primary(match pin {
                    Pin::Sequence => Reason::Sequence,
                    _ => Reason::SessionState,
                });
                self.out.effects.push(Effect::Pin(pin));
            }
            Decision::Unpin(pin) => {
                self.out.need_primary(Reason::SessionState);
                self.out.effects.push(Effect::Unpin(pin));
            }
            Decision::SequenceState => {
                self.out.need_primary(Reason::Sequence);
                self.out.effects.push(Effect::ReadsSequence);
            }
            Decision::SetConfig => {
                // A literal value may decide the effect: never reuse this decision.
                self.out.cacheable = false;
                let handled =
                    function.is_some_and(|f| self.handled.contains(&(f as *const Function)));
                if handled {
                    return;
                }
                match function.map(set_config) {
                    Some(SetConfig::Local) => {}
                    // A session-level set_config outside a plain top-level SELECT list may
                    // or may not run (CASE, WHERE, empty FROM): the session cannot know
                    // whether to replay it.
                    _ => {
                        self.out.need_primary(Reason::SessionState);
                        self.out.effects.push(Effect::Pin(Pin::Unknown));
                    }
                }
            }
        }
    }
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        // Also reached for writes nested in a query: `WITH x AS (INSERT …) SELECT …`.
        if matches!(
            statement,
            Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
                | Statement::Merge(_)
        ) {
            self.out.need_primary(Reason::Write);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        // FOR UPDATE / FOR SHARE: a standby refuses row locks.
        if !query.locks.is_empty() {
            self.out.need_primary(Reason::LockingRead);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.out.need_primary(Reason::Write);
            let pg_temp = into.targets.iter().any(|target| {
                matches!(target, Expr::CompoundIdentifier(parts)
                    if parts.len() > 1
                        && parts[0].quote_style.is_none()
                        && parts[0].value.eq_ignore_ascii_case("pg_temp"))
            });
            if into.temporary || pg_temp {
                self.out.effects.push(Effect::Pin(Pin::TempObjects));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM nextval('s')`, `FROM generate_series(1, 3)`.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            // `LATERAL unnest(…)`, `ROWS FROM`-style calls.
            | TableFactor::Function { name, .. } => self.call(name, None),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            self.call(&function.name, Some(function));
        }
        ControlFlow::Continue(())
    }
}
