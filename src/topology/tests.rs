//! Snapshot assembly: roles, lag, bans and events from one poll's answers.

use super::probe::Replica;
use super::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

fn node(name: &str) -> Node {
    Node {
        name: name.into(),
        address: format!("{name}:5432"),
        weight: 1,
    }
}

fn state(name: &str, role: Role) -> NodeState {
    NodeState {
        role,
        error: None,
        eligible: role != Role::Unknown,
        ..NodeState::unknown(node(name))
    }
}

fn rules() -> Rules {
    Rules {
        lag: LagBounds {
            max_bytes: 1000,
            max_time: MS(10_000),
            readmit_bytes: 500,
            readmit_time: MS(5_000),
            readmit_after_polls: 2,
        },
        backoff: Backoff {
            first: MS(100),
            max: MS(1000),
        },
    }
}

fn primary_probe(at: Instant, current: u64, replicas: &[(&str, Option<u64>)]) -> Outcome {
    Outcome::Checked(Ok(Probe {
        at,
        in_recovery: false,
        current: Some(Lsn(current)),
        receive: None,
        replay: None,
        since_last_replay: None,
        replicas: replicas
            .iter()
            .map(|(name, lag_ms)| Replica {
                application_name: (*name).into(),
                state: Some("streaming".into()),
                replay_lsn: None,
                replay_lag: lag_ms.map(MS),
            })
            .collect(),
    }))
}

fn standby_probe(at: Instant, replay: u64, since_last_replay_ms: Option<u64>) -> Outcome {
    Outcome::Checked(Ok(Probe {
        at,
        in_recovery: true,
        current: None,
        receive: Some(Lsn(replay)),
        replay: Some(Lsn(replay)),
        since_last_replay: since_last_replay_ms.map(MS),
        replicas: Vec::new(),
    }))
}

fn failed(reason: &str) -> Outcome {
    Outcome::Checked(Err(reason.into()))
}

fn three_unknown() -> Topology {
    Topology::unknown(&[node("p"), node("s1"), node("s2")])
}

#[test]
fn primary_is_the_single_node_out_of_recovery() {
    let cases = [
        (
            vec![Role::Standby, Role::Primary, Role::Standby],
            Some("n1"),
        ),
        (vec![Role::Standby, Role::Unknown], None),
        (vec![Role::Primary, Role::Primary], None),
    ];
    for (roles, want) in cases {
        let t = Topology {
            nodes: roles
                .iter()
                .enumerate()
                .map(|(i, r)| state(&format!("n{i}"), *r))
                .collect(),
        };
        assert_eq!(t.primary().map(|n| n.node.name.as_str()), want, "{roles:?}");
    }
}

#[test]
fn a_healthy_cluster_measures_lag_against_the_primary() {
    let t0 = Instant::now();
    let (t, events) = advance(
        &three_unknown(),
        vec![
            primary_probe(t0, 5000, &[("s1", Some(20)), ("s2", None)]),
            standby_probe(t0, 4900, Some(3000)),
            standby_probe(t0, 5000, Some(60_000)),
        ],
        t0,
        &rules(),
    );
    assert_eq!(t.primary_index(), Some(0));
    assert_eq!(t.primary_lsn(), Some((Lsn(5000), t0)));
    let p = &t.nodes[0];
    assert!(p.eligible && p.lag_bytes.is_none() && p.lag_time.is_none());
    // replay_lag from pg_stat_replication, matched by application_name.
    assert_eq!(
        (t.nodes[1].lag_bytes, t.nodes[1].lag_time),
        (Some(100), Some(MS(20)))
    );
    // No replay_lag and nothing left to replay: zero, however old the last commit.
    assert_eq!(
        (t.nodes[2].lag_bytes, t.nodes[2].lag_time),
        (Some(0), Some(MS(0)))
    );
    assert!(t.nodes[1].eligible && t.nodes[2].eligible);
    let roles: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::RoleChanged { .. }))
        .collect();
    assert_eq!(roles.len(), 3, "{events:?}");
}

#[test]
fn a_lagging_standby_is_excluded_at_once_and_readmitted_after_good_polls() {
    let t0 = Instant::now();
    let poll = |t: &Topology, primary: u64, s1: u64, s1_age: Option<u64>| {
        advance(
            t,
            vec![
                primary_probe(t0, primary, &[("s1", None), ("s2", None)]),
                standby_probe(t0, s1, s1_age),
                standby_probe(t0, primary, None),
            ],
            t0,
            &rules(),
        )
    };
    let (t, _) = poll(&three_unknown(), 1000, 1000, None);
    assert!(t.nodes[1].eligible);

    // (primary LSN, s1 replay, s1 last-commit age, eligible after, event expected)
    let steps = [
        (3000, 1000, Some(100), false, Some("lagging")), // 2000 B behind
        (3000, 2800, Some(100), false, None),            // 200 B: first good poll
        (3000, 2200, Some(100), false, None),            // 800 B: between bounds, count resets
        (3000, 3000, Some(100), false, None),            // first good poll again
        (3000, 3000, Some(100), true, Some("readmitted")), // second: back
        (3000, 2500, Some(11_000), false, Some("lagging")), // over the time bound
    ];
    let mut t = t;
    for (i, (primary, s1, age, eligible, event)) in steps.into_iter().enumerate() {
        let (next, events) = poll(&t, primary, s1, age);
        assert_eq!(next.nodes[1].eligible, eligible, "step {i}: {next:?}");
        let seen = events.iter().find_map(|e| match e {
            Event::Lagging { node, .. } if node == "s1" => Some("lagging"),
            Event::Readmitted { node, .. } if node == "s1" => Some("readmitted"),
            _ => None,
        });
        assert_eq!(seen, event, "step {i}: {events:?}");
        t = next;
    }
    assert_eq!(t.nodes[1].lag_bytes, Some(500));
    assert_eq!(t.nodes[1].lag_time, Some(MS(11_000)));
}

#[test]
fn a_failing_node_is_banned_left_alone_then_lifted() {
    let t0 = Instant::now();
    let (healthy, _) = advance(
        &three_unknown(),
        vec![
            primary_probe(t0, 10, &[]),
            standby_probe(t0, 10, None),
            standby_probe(t0, 10, None),
        ],
        t0,
        &rules(),
    );
    let poll = |t: &Topology, at: Instant, s2: Outcome| {
        advance(
            t,
            vec![primary_probe(at, 10, &[]), standby_probe(at, 10, None), s2],
            at,
            &rules(),
        )
    };
    let (t, events) = poll(&healthy, t0, failed("connection refused"));
    let s2 = &t.nodes[2];
    assert_eq!((s2.role, s2.eligible), (Role::Unknown, false));
    let ban = s2.ban.clone().unwrap();
    assert_eq!((ban.failures, ban.until), (1, t0 + MS(100)));
    assert_eq!(ban.reason, "connection refused");
    assert!(events.contains(&Event::Banned {
        node: "s2".into(),
        reason: "connection refused".into(),
        failures: 1,
        length: MS(100),
    }));
    assert!(!health::due(s2.ban.as_ref(), t0 + MS(50)));

    // While banned the node is skipped: the ban and error stay, no events.
    let (t, events) = poll(&t, t0 + MS(50), Outcome::Skipped);
    assert_eq!(t.nodes[2].ban, Some(ban.clone()));
    assert!(!t.nodes[2].eligible);
    assert!(events.is_empty(), "{events:?}");

    // Checked again when the ban runs out; failing again doubles it.
    let t1 = t0 + MS(100);
    let (t, _) = poll(&t, t1, failed("connection refused"));
    let ban = t.nodes[2].ban.clone().unwrap();
    assert_eq!((ban.failures, ban.until), (2, t1 + MS(200)));

    // One success lifts it and resets the backoff.
    let t2 = t1 + MS(200);
    let (t, events) = poll(&t, t2, standby_probe(t2, 10, None));
    assert!(t.nodes[2].ban.is_none() && t.nodes[2].eligible);
    assert!(events.contains(&Event::Lifted {
        node: "s2".into(),
        failures: 2,
    }));
    let (t, _) = poll(&t, t2, failed("gone again"));
    assert_eq!(t.nodes[2].ban.as_ref().map(|b| b.failures), Some(1));
}

#[test]
fn bans_are_capped() {
    let t0 = Instant::now();
    let mut t = three_unknown();
    for _ in 0..10 {
        t = advance(
            &t,
            vec![primary_probe(t0, 1, &[]), failed("x"), failed("x")],
            t0,
            &rules(),
        )
        .0;
    }
    let ban = t.nodes[1].ban.clone().unwrap();
    assert_eq!((ban.failures, ban.until), (10, t0 + MS(1000)));
}

#[test]
fn two_primaries_are_reported_once_and_lag_is_unknown_meanwhile() {
    let t0 = Instant::now();
    let (t, _) = advance(
        &three_unknown(),
        vec![
            primary_probe(t0, 100, &[]),
            standby_probe(t0, 100, None),
            standby_probe(t0, 100, None),
        ],
        t0,
        &rules(),
    );
    let split = vec![
        primary_probe(t0, 100, &[]),
        primary_probe(t0, 200, &[]),
        standby_probe(t0, 0, Some(999_000)),
    ];
    let (t, events) = advance(&t, split.clone(), t0, &rules());
    assert!(events.contains(&Event::SplitBrain {
        primaries: vec!["p".into(), "s1".into()],
    }));
    assert_eq!(t.primary_index(), None);
    assert_eq!(t.primary_lsn(), None);
    // With no single primary lag is unknown, and unknown lag excludes nobody.
    assert_eq!((t.nodes[2].lag_bytes, t.nodes[2].lag_time), (None, None));
    assert!(t.nodes[2].eligible);

    let (t, events) = advance(&t, split, t0, &rules());
    assert!(
        !events.iter().any(|e| matches!(e, Event::SplitBrain { .. })),
        "logged once per change: {events:?}"
    );
    let (_, events) = advance(
        &t,
        vec![
            primary_probe(t0, 100, &[]),
            failed("stopped"),
            standby_probe(t0, 100, None),
        ],
        t0,
        &rules(),
    );
    assert!(events.contains(&Event::SplitBrainOver), "{events:?}");
}

#[test]
fn replayed_since_compares_a_fresh_enough_primary_sample() {
    let t0 = Instant::now();
    let t1 = t0 + MS(100);
    let (t, _) = advance(
        &three_unknown(),
        vec![
            primary_probe(t1, 5000, &[]),
            standby_probe(t1, 5000, None),
            standby_probe(t1, 4999, None),
        ],
        t1,
        &rules(),
    );
    let cases = [
        (1, t0, true, "replayed a sample taken after the write"),
        (1, t1, true, "sample taken exactly at `since`"),
        (1, t1 + MS(1), false, "sample older than `since`"),
        (2, t0, false, "one byte short"),
        (0, t0, false, "the primary replays nothing"),
        (7, t0, false, "no such node"),
    ];
    for (node, since, want, why) in cases {
        assert_eq!(t.replayed_since(node, since), want, "{why}");
    }
    assert!(!three_unknown().replayed_since(1, t0), "nothing known yet");
}

#[test]
fn a_primary_keeps_its_role_through_one_slow_check_only() {
    let t0 = Instant::now();
    let healthy = vec![
        primary_probe(t0, 5000, &[("s1", None), ("s2", None)]),
        standby_probe(t0, 5000, None),
        standby_probe(t0, 5000, None),
    ];
    let (up, _) = advance(&three_unknown(), healthy, t0, &rules());
    let slow = || Outcome::TimedOut("check query timed out after 1s".into());
    let standbys = |at| vec![standby_probe(at, 5000, None), standby_probe(at, 5000, None)];
    let poll = |before: &Topology, primary: Outcome, at: Instant| {
        let mut outcomes = vec![primary];
        outcomes.extend(standbys(at));
        advance(before, outcomes, at, &rules()).0
    };
    // Case: (what the primary's checks answer in a row, its role after each).
    let t1 = t0 + MS(100);
    let t2 = t1 + MS(100);
    let once = poll(&up, slow(), t1);
    assert_eq!(
        once.primary_index(),
        Some(0),
        "one slow check: still primary"
    );
    assert!(!once.nodes[0].eligible, "but no reads while in doubt");
    let twice = poll(&once, slow(), t2);
    assert_eq!(twice.primary_index(), None, "two in a row: no primary");
    let refused = poll(&up, failed("connection refused"), t1);
    assert_eq!(
        refused.primary_index(),
        None,
        "a refused connection: no primary"
    );
    let recovered = poll(&once, primary_probe(t2, 5100, &[]), t2);
    assert_eq!(recovered.primary_index(), Some(0));
    assert!(recovered.nodes[0].ban.is_none());
}
