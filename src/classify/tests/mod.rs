//! Table-driven routing tests: every row of ROUTING.md, PostgreSQL's hot-standby refusal
//! list, and the corners (quoting, nesting, multi-statement text, unparseable text, hints).
//! A failure names the statement, the expected and the actual answer; all failures of a
//! table are reported together.

mod effects;
mod reasons;
mod routes;

use super::*;

/// A catalog with user functions of each volatility and a few built-ins, as `pg_proc` would
/// list them, plus overrides.
pub(super) fn catalog() -> Functions {
    let rows = [
        ("public", "get_user", 's'),
        ("public", "slugify", 'i'),
        ("public", "bump", 'v'),
        ("public", "Report", 's'),
        ("public", "cache_stats", 's'),
        ("app", "audit", 'v'),
        ("app", "lookup", 's'),
        ("public", "mixed", 's'),
        ("public", "mixed", 'v'),
        ("pg_catalog", "now", 's'),
        ("pg_catalog", "random", 'v'),
        ("pg_catalog", "nextval", 'v'),
        ("pg_catalog", "lower", 'i'),
        ("pg_catalog", "upper", 'i'),
        ("pg_catalog", "abs", 'i'),
        ("pg_catalog", "count", 'i'),
        ("pg_catalog", "sum", 'i'),
        ("pg_catalog", "array_agg", 'i'),
        ("pg_catalog", "generate_series", 'i'),
        ("pg_catalog", "unnest", 'i'),
        ("pg_catalog", "pg_get_userbyid", 's'),
    ];
    Functions::new(
        rows.iter()
            .map(|&(s, n, v)| (s.to_string(), n.to_string(), v)),
        &["App.Audit".to_string(), "refresh_view".to_string()],
        &["cache_stats".to_string()],
    )
}

/// Checks every case; panics with all mismatches listed.
pub(super) fn check(cases: &[(&str, Route, Vec<Effect>)], functions: &Functions) {
    let mut failures = Vec::new();
    for (sql, route, effects) in cases {
        let got = classify(sql, functions);
        if (got.route == Route::Primary) != (got.reason != Reason::Read) {
            failures.push(format!(
                "statement {sql:?}: route {:?} with reason {:?} (a reason is given exactly \
                 when the route is Primary)",
                got.route, got.reason
            ));
        }
        if got.route != *route || got.effects != *effects {
            failures.push(format!(
                "statement {sql:?}: expected route {route:?} with effects {effects:?}, \
                 got route {:?} with effects {:?}",
                got.route, got.effects
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Cases whose only expectation is the route (and no effects).
pub(super) fn check_routes(cases: &[(&str, Route)], functions: &Functions) {
    let cases: Vec<_> = cases.iter().map(|&(s, r)| (s, r, vec![])).collect();
    check(&cases, functions);
}

pub(super) fn set(name: &str, value: &str) -> Effect {
    Effect::Set {
        name: name.to_string(),
        value: value.to_string(),
    }
}

pub(super) fn reset(name: &str) -> Effect {
    Effect::Reset {
        name: name.to_string(),
    }
}

pub(super) fn begin(read_only: Option<bool>, serializable: bool) -> Effect {
    Effect::Begin {
        read_only,
        serializable,
    }
}

pub(super) fn set_tx(read_only: Option<bool>, serializable: bool) -> Effect {
    Effect::SetTransaction {
        read_only,
        serializable,
    }
}

pub(super) fn prepare(name: &str, route: Route) -> Effect {
    Effect::Prepare {
        name: name.to_string(),
        route,
    }
}

pub(super) fn execute(name: &str) -> Effect {
    Effect::Execute {
        name: name.to_string(),
    }
}

pub(super) const PIN_TEMP: Effect = Effect::Pin(Pin::TempObjects);
pub(super) const PIN_LISTEN: Effect = Effect::Pin(Pin::Listen);
pub(super) const PIN_LOCK: Effect = Effect::Pin(Pin::AdvisoryLock);
pub(super) const PIN_HOLD: Effect = Effect::Pin(Pin::HoldCursor);
pub(super) const PIN_UNKNOWN: Effect = Effect::Pin(Pin::Unknown);
pub(super) const PIN_SEQ: Effect = Effect::Pin(Pin::Sequence);
