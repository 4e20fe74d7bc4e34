use super::*;
use crate::gucs::{apply_to_server, guc_sync_sql, startup_gucs};

/// Applies a request's effects as if it succeeded.
fn done(s: &mut RoutingState, c: &Classification, conn: Conn) {
    let releases = s.apply(c, conn);
    s.release(&releases, conn);
}

fn c(route: Route, effects: Vec<Effect>) -> Classification {
    let reason = match route {
        Route::Primary => crate::classify::Reason::Write,
        _ => crate::classify::Reason::Read,
    };
    Classification {
        route,
        reason,
        effects,
        cacheable: false,
        statements: 1,
        unknown_function: false,
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
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
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
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
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
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
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

    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
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

    let mut s = RoutingState::new(TransactionRouting::FirstStatement, Gucs::new());
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

    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
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
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    let read = c(Route::Standby, vec![]);
    assert_eq!(s.plan_batch(&read, None, true), Plan::Send(Conn::Standby));
    assert_eq!(s.plan_batch(&read, None, false), Plan::Send(Conn::Primary));
    s.ready(Conn::Standby, b'T');
    assert_eq!(s.plan_batch(&read, None, false), Plan::Send(Conn::Standby));
}

#[test]
fn serializable_and_pinned_sessions_stay_on_the_primary() {
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    let ro_serializable = c(Route::Any, vec![begin(Some(true), true)]);
    assert_eq!(
        s.plan_query(&ro_serializable, "BEGIN", true, None),
        Plan::Send(Conn::Primary)
    );

    done(
        &mut s,
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
    done(
        &mut s,
        &c(Route::Any, vec![Effect::ResetAll]),
        Conn::Primary,
    );
    assert_eq!(
        s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
        Plan::Send(Conn::Standby)
    );

    done(
        &mut s,
        &c(Route::Primary, vec![Effect::Pin(Pin::Listen)]),
        Conn::Primary,
    );
    assert_eq!(
        s.plan_query(&c(Route::Standby, vec![]), "SELECT 1", true, None),
        Plan::Send(Conn::Primary)
    );
    done(
        &mut s,
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
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    done(
        &mut s,
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
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    done(
        &mut s,
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
    let dealloc_all = c(Route::Any, vec![Effect::Deallocate { name: None }]);
    done(&mut s, &dealloc_all, Conn::Primary);
    assert_eq!(
        s.plan_query(&exec, "EXECUTE q", true, None),
        Plan::Send(Conn::Standby),
        "DEALLOCATE ALL on another connection leaves it"
    );
    let releases = s.apply(&dealloc_all, Conn::Standby);
    assert!(
        s.holds(Conn::Standby),
        "released only once the server has done it"
    );
    s.release(&releases, Conn::Standby);
    assert_eq!(
        s.plan_query(&exec, "EXECUTE q", true, None),
        Plan::Send(Conn::Primary)
    );
}

#[test]
fn startup_parameters_become_settings_that_reset_returns_to() {
    let params: Vec<(String, String)> = [
        ("application_name", "it's"),
        (
            "options",
            "-c search_path=a,\\ b --work-mem=8MB -cstatement_timeout=5s",
        ),
        ("DateStyle", "ISO, MDY"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let gucs = startup_gucs(&params).unwrap();
    let want: Gucs = [
        ("application_name", "'it''s'"),
        ("search_path", "a, b"),
        ("work_mem", "'8MB'"),
        ("statement_timeout", "'5s'"),
        ("datestyle", "'ISO, MDY'"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(gucs, want);
    for bad in ["-x", "-c", "-c nothing", "-c bad;name=1"] {
        let p = vec![("options".to_string(), bad.to_string())];
        assert!(startup_gucs(&p).is_err(), "{bad}");
    }
    let p = vec![("search_path".to_string(), "a'; DROP".to_string())];
    assert_eq!(startup_gucs(&p).unwrap()["search_path"], "'a''; DROP'");

    let mut s = RoutingState::new(TransactionRouting::ReadOnly, want.clone());
    let set = |name: &str| Effect::Set {
        name: name.into(),
        value: "1".into(),
    };
    done(
        &mut s,
        &c(Route::Any, vec![set("work_mem"), set("x")]),
        Conn::Primary,
    );
    done(
        &mut s,
        &c(
            Route::Any,
            vec![Effect::Reset {
                name: "work_mem".into(),
            }],
        ),
        Conn::Primary,
    );
    assert_eq!(s.gucs["work_mem"], "'8MB'");
    done(
        &mut s,
        &c(Route::Any, vec![Effect::ResetAll]),
        Conn::Primary,
    );
    assert_eq!(s.gucs, want);

    let mut applied = want.clone();
    apply_to_server(&mut applied, &c(Route::Any, vec![set("x")]));
    assert_eq!(applied.get("x").map(String::as_str), Some("1"));
    apply_to_server(&mut applied, &c(Route::Any, vec![Effect::ResetAll]));
    assert!(applied.is_empty());
}

#[test]
fn a_deferred_transaction_that_failed_here_refuses_all_but_its_end() {
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    s.plan_query(
        &c(Route::Any, vec![begin(None, false)]),
        "BEGIN",
        true,
        None,
    );
    s.plan_query(&c(Route::Primary, vec![]), "INSERT", true, None);
    s.fail_deferred_transaction();
    assert!(matches!(
        s.plan_query(&c(Route::Primary, vec![]), "INSERT", true, None),
        Plan::Refuse("25P02", _)
    ));
    assert_eq!(
        s.plan_query(
            &c(Route::Any, vec![Effect::EndTransaction]),
            "COMMIT",
            true,
            None
        ),
        Plan::EndDeferred("ROLLBACK")
    );
    assert!(!s.transaction_failed_here());
}

#[test]
fn a_lone_currval_outside_a_transaction_needs_the_sequence_pin() {
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    let currval = c(Route::Primary, vec![Effect::ReadsSequence]);
    assert!(s.loses_sequence_state(&currval, true));
    assert!(!s.loses_sequence_state(&currval, false));
    s.ready(Conn::Primary, b'T');
    assert!(!s.loses_sequence_state(&currval, true));
    s.ready(Conn::Primary, b'I');
    done(
        &mut s,
        &c(Route::Primary, vec![Effect::Pin(Pin::Sequence)]),
        Conn::Primary,
    );
    assert!(!s.loses_sequence_state(&currval, true));
}

#[test]
fn pins_hold_the_connection_they_were_taken_on() {
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    done(
        &mut s,
        &c(Route::Any, vec![Effect::Pin(Pin::HoldCursor)]),
        Conn::Standby,
    );
    assert!(s.holds(Conn::Standby) && !s.holds(Conn::Primary));
    assert_eq!(
        s.plan_query(
            &c(Route::Any, vec![]),
            "FETCH ALL FROM c",
            true,
            Some(Conn::Primary)
        ),
        Plan::Send(Conn::Standby)
    );
    done(
        &mut s,
        &c(Route::Any, vec![Effect::Unpin(Pin::HoldCursor)]),
        Conn::Primary,
    );
    assert!(
        s.holds(Conn::Standby),
        "an unpin elsewhere leaves the standby's pin"
    );
    done(
        &mut s,
        &c(Route::Any, vec![Effect::Unpin(Pin::HoldCursor)]),
        Conn::Standby,
    );
    assert!(!s.holds(Conn::Standby));
}

#[test]
fn deallocating_a_protocol_statement_is_answered_here() {
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    s.statements.insert(
        "s1".into(),
        Prepared::new(
            Arc::new(c(Route::Standby, vec![])),
            Target::Unnamed {
                parse: bytes::Bytes::new(),
                id: 1,
            },
        ),
    );
    let dealloc = c(
        Route::Any,
        vec![Effect::Deallocate {
            name: Some("s1".into()),
        }],
    );
    assert_eq!(
        s.plan_query(&dealloc, "DEALLOCATE s1", true, None),
        Plan::Answer("DEALLOCATE")
    );
    assert!(s.statements.is_empty());
    assert_eq!(
        s.plan_query(&dealloc, "DEALLOCATE s1", true, None),
        Plan::Send(Conn::Primary)
    );
}

#[test]
fn identity_is_set_first_and_survives_reset_all() {
    let wanted: Gucs = [
        ("a".to_string(), "1".to_string()),
        ("role".to_string(), "r".to_string()),
        ("session_authorization".to_string(), "u".to_string()),
    ]
    .into();
    let applied: Gucs = [("role".to_string(), "r".to_string())].into();
    assert_eq!(
        guc_sync_sql(Some(&applied), &wanted).as_deref(),
        Some("SET session_authorization TO u;SET role TO r;SET a TO 1;")
    );
    let mut s = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    s.gucs = wanted.clone();
    done(
        &mut s,
        &c(Route::Any, vec![Effect::ResetAll]),
        Conn::Primary,
    );
    assert_eq!(s.gucs.len(), 2, "{:?}", s.gucs);
    let mut on_server = wanted.clone();
    apply_to_server(&mut on_server, &c(Route::Any, vec![Effect::ResetAll]));
    assert_eq!(on_server, s.gucs);
    done(
        &mut s,
        &c(Route::Any, vec![Effect::DiscardAll]),
        Conn::Primary,
    );
    assert!(s.gucs.is_empty());
}
