//! Snapshot assembly: roles, lag, bans and events from one poll's answers.

use super::probe::{Receiver, Replica};
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
        timeline: Some(1),
        receive: None,
        replay: None,
        receiver: None,
        replicas: replicas
            .iter()
            .map(|(name, lag_ms)| Replica {
                application_name: (*name).into(),
                state: Some("streaming".into()),
                replay_lag: lag_ms.map(MS),
                ..Replica::default()
            })
            .collect(),
    }))
}

/// A WAL receiver streaming from node `from` (addresses are `name:5432`) on timeline 1,
/// under the default application name.
fn streaming_from(from: &str) -> Receiver {
    Receiver {
        status: Some("streaming".into()),
        timeline: Some(1),
        sender_host: Some(from.into()),
        sender_port: Some(5432),
        slot_name: None,
        application_name: Some("walreceiver".into()),
    }
}

fn standby_with(at: Instant, replay: u64, receiver: Option<Receiver>) -> Outcome {
    Outcome::Checked(Ok(Probe {
        at,
        in_recovery: true,
        current: None,
        timeline: None,
        receive: Some(Lsn(replay)),
        replay: Some(Lsn(replay)),
        receiver,
        replicas: Vec::new(),
    }))
}

fn standby_probe(at: Instant, replay: u64) -> Outcome {
    standby_with(at, replay, Some(streaming_from("p")))
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
            wal: WalHistory::default(),
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
            standby_probe(t0, 4900),
            standby_probe(t0, 5000),
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
    let poll = |t: &Topology, at: Instant, primary: u64, s1: u64| {
        advance(
            t,
            vec![
                primary_probe(at, primary, &[("s1", None), ("s2", None)]),
                standby_probe(at, s1),
                standby_probe(at, primary),
            ],
            at,
            &rules(),
        )
    };
    let (t, _) = poll(&three_unknown(), t0, 1000, 1000);
    assert!(t.nodes[1].eligible);

    // Two seconds apart: (primary LSN, s1 replay, eligible after, event expected).
    let steps = [
        (3000, 1000, false, Some("lagging")),   // 2000 B behind
        (3000, 2800, false, None),              // 200 B: first good poll
        (3000, 2200, false, None),              // 800 B: between bounds, count resets
        (3000, 3000, false, None),              // first good poll again
        (3000, 3000, true, Some("readmitted")), // second: back
        (3000, 2500, false, Some("lagging")),   // the primary passed 2500 10.5 s ago
    ];
    let mut t = t;
    for (i, (primary, s1, eligible, event)) in steps.into_iter().enumerate() {
        let at = t0 + MS(2000 * (i as u64 + 1));
        let (next, events) = poll(&t, at, primary, s1);
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
    assert_eq!(t.nodes[1].lag_time, Some(MS(10_500)));
}

/// Polls every 500 ms while the primary writes 1000 bytes per poll; `standbys` gives each
/// standby's probe from the poll's instant and the primary's position.
fn under_write_load(
    polls: u64,
    replicas: &[(&str, Option<u64>)],
    standbys: &dyn Fn(Instant, u64) -> Vec<Outcome>,
) -> (Topology, Vec<Event>) {
    let t0 = Instant::now();
    let mut t = three_unknown();
    let mut all = Vec::new();
    for i in 0..polls {
        let at = t0 + MS(500 * i);
        let primary = 10_000 + 1000 * i;
        let mut outcomes = vec![primary_probe(at, primary, replicas)];
        outcomes.extend(standbys(at, primary));
        let (next, events) = advance(&t, outcomes, at, &rules());
        all.extend(events);
        t = next;
    }
    (t, all)
}

#[test]
fn standbys_under_default_names_are_timed_from_the_primarys_history() {
    // Both standbys stream as `walreceiver` from the same host: no row can be told apart,
    // so their lag is timed from when the primary passed their replay positions.
    let (t, events) = under_write_load(
        10,
        &[("walreceiver", Some(5)), ("walreceiver", Some(5))],
        &|at, primary| {
            vec![
                standby_probe(at, primary - 264),
                standby_probe(at, primary - 600),
            ]
        },
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Lagging { .. })),
        "{events:?}"
    );
    assert!(t.nodes[1].eligible && t.nodes[2].eligible, "{t:?}");
    // 264 of the 1000 bytes written in the last 500 ms: 132 ms behind.
    assert_eq!(
        (t.nodes[1].lag_bytes, t.nodes[1].lag_time),
        (Some(264), Some(MS(132)))
    );
    assert_eq!(
        (t.nodes[2].lag_bytes, t.nodes[2].lag_time),
        (Some(600), Some(MS(300)))
    );
    assert_eq!(t.nodes[1].upstream.as_deref(), Some("p"));
}

#[test]
fn a_cascading_standby_is_measured_and_shows_its_upstream() {
    let (t, events) = under_write_load(10, &[("s1", Some(2))], &|at, primary| {
        vec![
            standby_probe(at, primary),
            standby_with(at, primary - 500, Some(streaming_from("s1"))),
        ]
    });
    assert!(
        events.iter().all(|e| !matches!(e, Event::Lagging { .. })),
        "{events:?}"
    );
    assert_eq!(t.nodes[2].upstream.as_deref(), Some("s1"));
    assert_eq!(
        (t.nodes[2].lag_bytes, t.nodes[2].lag_time),
        (Some(500), Some(MS(250)))
    );
    assert!(t.nodes[2].eligible);
}

#[test]
fn a_standby_that_cannot_catch_up_is_excluded_and_says_why() {
    let not_streaming = Receiver {
        status: Some("waiting".into()),
        ..streaming_from("p")
    };
    let other_timeline = Receiver {
        timeline: Some(2),
        ..streaming_from("p")
    };
    let (t, events) = under_write_load(3, &[], &|at, primary| {
        vec![
            standby_with(at, primary - 10, Some(not_streaming.clone())),
            standby_with(at, primary, Some(other_timeline.clone())),
        ]
    });
    assert_eq!(t.nodes[1].stall, Some(Stall::NotStreaming));
    assert_eq!(
        t.nodes[1].upstream.as_deref(),
        Some("not streaming (waiting)")
    );
    assert_eq!(
        t.nodes[2].stall,
        Some(Stall::OtherTimeline {
            standby: 2,
            primary: 1
        })
    );
    assert!(!t.nodes[1].eligible && !t.nodes[2].eligible);
    let why: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Lagging { node, lag } => Some(format!("{node}: {lag}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        why,
        [
            // First poll: older than the only sample of the primary, taken just now.
            "s1: 10 bytes, at least 0.000s (behind and not streaming)",
            "s2: 0 bytes, 0.000s (on timeline 2, the primary on 1)"
        ]
    );
    // No receiver at all and behind: not streaming either; caught up, it may serve.
    let (t, _) = under_write_load(3, &[], &|at, primary| {
        vec![
            standby_with(at, primary - 1, None),
            standby_with(at, primary, None),
        ]
    });
    assert_eq!(t.nodes[1].stall, Some(Stall::NotStreaming));
    assert!(t.nodes[2].eligible && t.nodes[2].stall.is_none());
}

#[test]
fn a_failing_node_is_banned_left_alone_then_lifted() {
    let t0 = Instant::now();
    let (healthy, _) = advance(
        &three_unknown(),
        vec![
            primary_probe(t0, 10, &[]),
            standby_probe(t0, 10),
            standby_probe(t0, 10),
        ],
        t0,
        &rules(),
    );
    let poll = |t: &Topology, at: Instant, s2: Outcome| {
        advance(
            t,
            vec![primary_probe(at, 10, &[]), standby_probe(at, 10), s2],
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
    let (t, events) = poll(&t, t2, standby_probe(t2, 10));
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
            standby_probe(t0, 100),
            standby_probe(t0, 100),
        ],
        t0,
        &rules(),
    );
    let split = vec![
        primary_probe(t0, 100, &[]),
        primary_probe(t0, 200, &[]),
        standby_probe(t0, 0),
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
            standby_probe(t0, 100),
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
            standby_probe(t1, 5000),
            standby_probe(t1, 4999),
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
        standby_probe(t0, 5000),
        standby_probe(t0, 5000),
    ];
    let (up, _) = advance(&three_unknown(), healthy, t0, &rules());
    let slow = || Outcome::TimedOut("check query timed out after 1s".into());
    let standbys = |at| vec![standby_probe(at, 5000), standby_probe(at, 5000)];
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
