use std::time::{Duration, Instant};

use super::*;
use crate::classify::{Effect, Reason};
use crate::config::{Node, TransactionRouting};
use crate::gucs::Gucs;
use crate::topology::{Lsn, LsnSample, NodeState};

/// A standby in a test topology: up, eligible, and the WAL position it replayed.
#[derive(Clone, Copy)]
struct Standby {
    up: bool,
    eligible: bool,
    replay: u64,
    /// Replay lag in milliseconds as the monitor measured it.
    lag_ms: u64,
}

const FRESH: Standby = Standby {
    up: true,
    eligible: true,
    replay: 100,
    lag_ms: 0,
};
const BEHIND: Standby = Standby {
    up: true,
    eligible: true,
    replay: 50,
    lag_ms: 0,
};
/// Eligible, but applying WAL half a second late (`recovery_min_apply_delay`).
const DELAYED: Standby = Standby {
    up: true,
    eligible: true,
    replay: 50,
    lag_ms: 500,
};
const LAGGING: Standby = Standby {
    up: true,
    eligible: false,
    replay: 10,
    lag_ms: 0,
};
const DOWN: Standby = Standby {
    up: false,
    eligible: false,
    replay: 0,
    lag_ms: 0,
};

fn node(i: usize) -> Node {
    Node {
        name: format!("n{i}"),
        address: format!("h:{}", i + 1),
        weight: 1,
    }
}

/// Node 0 is the primary at WAL position 100, sampled at `at`.
fn topology(at: Instant, standbys: &[Standby]) -> Topology {
    let mut nodes = vec![NodeState {
        role: Role::Primary,
        error: None,
        eligible: true,
        lsn: Some(LsnSample {
            at,
            current: Some(Lsn(100)),
            receive: None,
            replay: None,
        }),
        ..NodeState::unknown(node(0))
    }];
    for (i, s) in standbys.iter().enumerate() {
        nodes.push(NodeState {
            role: if s.up { Role::Standby } else { Role::Unknown },
            error: (!s.up).then(|| "connection refused".to_string()),
            eligible: s.eligible,
            lsn: Some(LsnSample {
                at,
                current: None,
                receive: Some(Lsn(s.replay)),
                replay: Some(Lsn(s.replay)),
            }),
            lag_time: Some(Duration::from_millis(s.lag_ms)),
            ..NodeState::unknown(node(i + 1))
        });
    }
    Topology::new(nodes)
}

fn read() -> Classification {
    Classification {
        route: Route::Standby,
        statements: 1,
        ..Classification::any()
    }
}

fn write() -> Classification {
    Classification {
        reason: Reason::Write,
        ..Classification::primary()
    }
}

fn round_robin() -> Balance<'static> {
    Balance {
        strategy: Strategy::WeightedRoundRobin,
        primary_reads: PrimaryReads::Fallback,
        outstanding: &[],
        dice: 0,
    }
}

struct Case {
    what: &'static str,
    conn: Conn,
    class: Classification,
    standbys: Vec<Standby>,
    /// The open standby connection's node, and whether an answer is owed there.
    open_standby: Option<(usize, bool)>,
    /// The client's last write committed this long before the primary's sample (a
    /// negative age: after it).
    written: Option<i64>,
    /// The WAL position of that write, once read.
    lsn: Option<u64>,
    /// Replay positions read on demand since the snapshot: (node, position).
    checked: Vec<(usize, u64)>,
    /// How long the read may wait for a standby to replay the write.
    wait_ms: u64,
    avoid: Vec<usize>,
    failure: Option<Failure>,
    /// The read can carry a check of the standby's replay position.
    checkable: bool,
    want: To,
    reason: Decision,
}

fn case(what: &'static str, conn: Conn, class: Classification, standbys: &[Standby]) -> Case {
    Case {
        what,
        conn,
        class,
        standbys: standbys.to_vec(),
        open_standby: None,
        written: None,
        lsn: None,
        checked: Vec::new(),
        wait_ms: 0,
        avoid: Vec::new(),
        failure: None,
        checkable: false,
        want: To::Primary,
        reason: Decision::Read,
    }
}

impl Case {
    fn open(mut self, node: usize, busy: bool) -> Case {
        self.open_standby = Some((node, busy));
        self
    }
    fn written_ms_before_sample(mut self, ms: i64) -> Case {
        self.written = Some(ms);
        self
    }
    /// The client's write is at WAL position `lsn`, and reads may wait `wait_ms` for it.
    fn written_at_lsn(mut self, lsn: u64, wait_ms: u64) -> Case {
        self.written = Some(10);
        self.lsn = Some(lsn);
        self.wait_ms = wait_ms;
        self
    }
    fn checked(mut self, node: usize, replay: u64) -> Case {
        self.checked.push((node, replay));
        self
    }
    fn avoiding(mut self, nodes: &[usize]) -> Case {
        self.avoid = nodes.to_vec();
        self
    }
    fn checkable(mut self) -> Case {
        self.checkable = true;
        self
    }
    fn failed(mut self, failure: Failure) -> Case {
        self.failure = Some(failure);
        self
    }
    fn wants(mut self, to: To, reason: Decision) -> Case {
        self.want = to;
        self.reason = reason;
        self
    }
}

fn run(
    c: &Case,
    state: &RoutingState,
    transaction_pooling: bool,
    chain: Option<Conn>,
) -> Destination {
    let sampled = Instant::now();
    let topology = topology(sampled, &c.standbys);
    let addresses: Vec<String> = (0..=c.standbys.len()).map(|i| node(i).address).collect();
    let replayed = |node: usize| {
        c.checked
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, lsn)| Lsn(*lsn))
    };
    let written = c.written.map(|ms| Written {
        at: if ms >= 0 {
            sampled - Duration::from_millis(ms as u64)
        } else {
            sampled + Duration::from_millis((-ms) as u64)
        },
        lsn: c.lsn.map(Lsn),
        replayed: &replayed,
        wait: Duration::from_millis(c.wait_ms),
    });
    let mut turns = 0;
    decide(
        Ask {
            conn: c.conn,
            begins: false,
            class: &c.class,
            unsynced: false,
            lone: true,
            checkable: c.checkable,
        },
        SessionView {
            state,
            chain,
            transaction_pooling,
            standby: c.open_standby.map(|(node, busy)| OpenStandby {
                node,
                address: &addresses[node],
                busy,
            }),
            written,
            avoid: &c.avoid,
        },
        &topology,
        round_robin(),
        c.failure,
        &mut || {
            turns += 1;
            turns
        },
    )
}

#[test]
fn requests_go_where_the_session_and_the_cluster_allow() {
    use Conn::{Primary, Standby};
    let cases = [
        case("a write", Primary, write(), &[FRESH]).wants(To::Primary, Decision::Write),
        case("a read picks a standby", Standby, read(), &[FRESH, FRESH])
            .wants(To::Standby(2), Decision::Read),
        case(
            "a read stays on its open standby",
            Standby,
            read(),
            &[FRESH, FRESH],
        )
        .open(1, false)
        .wants(To::Open(Standby), Decision::Read),
        case(
            "a standby that fell behind is left",
            Standby,
            read(),
            &[LAGGING, FRESH],
        )
        .open(1, false)
        .wants(To::Standby(2), Decision::Read),
        case(
            "unless an answer is owed there",
            Standby,
            read(),
            &[LAGGING, FRESH],
        )
        .open(1, true)
        .wants(To::Open(Standby), Decision::Read),
        case("no standby up", Standby, read(), &[DOWN, DOWN])
            .wants(To::Primary, Decision::FallbackPrimary),
        case(
            "every standby lagging",
            Standby,
            read(),
            &[LAGGING, LAGGING],
        )
        .wants(To::Primary, Decision::LagExcluded),
        case(
            "the only standby failed this client",
            Standby,
            read(),
            &[FRESH],
        )
        .avoiding(&[1])
        .wants(To::Primary, Decision::FallbackPrimary),
        case(
            "a failed standby is skipped",
            Standby,
            read(),
            &[FRESH, FRESH],
        )
        .avoiding(&[2])
        .wants(To::Standby(1), Decision::Read),
        case(
            "read-your-writes: no standby has the write",
            Standby,
            read(),
            &[BEHIND, BEHIND],
        )
        .written_ms_before_sample(10)
        .wants(To::Primary, Decision::ReadYourWrites),
        case(
            "read-your-writes: one standby has it",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .written_ms_before_sample(10)
        .wants(To::Standby(2), Decision::Read),
        case(
            "read-your-writes: written after the last sample",
            Standby,
            read(),
            &[FRESH],
        )
        .written_ms_before_sample(-10)
        .wants(To::Primary, Decision::ReadYourWrites),
        case(
            "read-your-writes: the open standby lacks it",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .open(1, false)
        .written_ms_before_sample(10)
        .wants(To::Primary, Decision::ReadYourWrites),
        case(
            "read-your-writes: primary unreachable",
            Standby,
            read(),
            &[BEHIND],
        )
        .written_ms_before_sample(10)
        .failed(Failure::PrimaryUnreachable)
        .wants(To::Standby(1), Decision::Read),
        case("settings failed on the standby", Standby, read(), &[FRESH])
            .open(1, false)
            .failed(Failure::SettingsOnStandby)
            .wants(To::Primary, Decision::FallbackPrimary),
    ];
    let state = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    for c in &cases {
        let got = run(c, &state, false, None);
        assert_eq!((got.to, got.reason), (c.want, c.reason), "{}", c.what);
    }
}

#[test]
fn reads_after_a_write_at_a_known_position_wait_for_a_standby_or_use_the_primary() {
    use Conn::Standby;
    let cases = [
        case(
            "a standby past the write serves it",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .written_at_lsn(80, 5)
        .wants(To::Standby(2), Decision::Read),
        case(
            "a check saw a standby past it",
            Standby,
            read(),
            &[BEHIND, BEHIND],
        )
        .written_at_lsn(80, 5)
        .checked(1, 90)
        .wants(To::Standby(1), Decision::Read),
        case(
            "a check that saw it short changes nothing",
            Standby,
            read(),
            &[BEHIND, LAGGING],
        )
        .written_at_lsn(80, 5)
        .checked(1, 79)
        .wants(To::Await(1), Decision::Read),
        case(
            "none past it: wait for one",
            Standby,
            read(),
            &[BEHIND, LAGGING],
        )
        .written_at_lsn(80, 5)
        .wants(To::Await(1), Decision::Read),
        case(
            "a lagging standby is never waited for",
            Standby,
            read(),
            &[LAGGING],
        )
        .written_at_lsn(80, 5)
        .wants(To::Primary, Decision::LagExcluded),
        case(
            "one that failed this client is not either",
            Standby,
            read(),
            &[BEHIND],
        )
        .written_at_lsn(80, 5)
        .avoiding(&[1])
        .wants(To::Primary, Decision::ReadYourWrites),
        case(
            "nor one whose replay lag exceeds the wait",
            Standby,
            read(),
            &[DELAYED],
        )
        .written_at_lsn(80, 5)
        .wants(To::Primary, Decision::ReadYourWrites),
        case("...but the other one", Standby, read(), &[DELAYED, BEHIND])
            .written_at_lsn(80, 5)
            .wants(To::Await(2), Decision::Read),
        case("the wait ran out", Standby, read(), &[BEHIND])
            .written_at_lsn(80, 5)
            .failed(Failure::NotReplayed)
            .wants(To::Primary, Decision::ReadYourWrites),
        case("a zero wait never waits", Standby, read(), &[BEHIND])
            .written_at_lsn(80, 0)
            .wants(To::Primary, Decision::ReadYourWrites),
        case(
            "a read that can carry the check goes with it",
            Standby,
            read(),
            &[BEHIND, LAGGING],
        )
        .written_at_lsn(80, 5)
        .checkable()
        .wants(To::Standby(1), Decision::Read),
        case(
            "...to the open standby too",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .open(1, false)
        .written_at_lsn(80, 5)
        .checkable()
        .wants(To::Open(Standby), Decision::Read),
        case(
            "...and to the primary once the check failed",
            Standby,
            read(),
            &[BEHIND],
        )
        .written_at_lsn(80, 5)
        .checkable()
        .failed(Failure::NotReplayed)
        .wants(To::Primary, Decision::ReadYourWrites),
        case("...nor with a zero wait", Standby, read(), &[BEHIND])
            .written_at_lsn(80, 0)
            .checkable()
            .wants(To::Primary, Decision::ReadYourWrites),
        case(
            "the open standby is the one waited for",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .open(1, false)
        .written_at_lsn(80, 5)
        .wants(To::Await(1), Decision::Read),
        case(
            "the open standby past it stays",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .open(2, false)
        .written_at_lsn(80, 5)
        .wants(To::Open(Standby), Decision::Read),
        case(
            "the primary unreachable: a standby past it",
            Standby,
            read(),
            &[BEHIND, FRESH],
        )
        .written_at_lsn(80, 5)
        .failed(Failure::PrimaryUnreachable)
        .wants(To::Standby(2), Decision::Read),
        case(
            "the primary unreachable: no wait",
            Standby,
            read(),
            &[BEHIND],
        )
        .written_at_lsn(80, 5)
        .failed(Failure::PrimaryUnreachable)
        .wants(To::Standby(1), Decision::Read),
        case(
            "a write still goes to the primary",
            Conn::Primary,
            write(),
            &[BEHIND],
        )
        .written_at_lsn(80, 5)
        .wants(To::Primary, Decision::Write),
    ];
    let state = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    for c in &cases {
        let got = run(c, &state, false, None);
        assert_eq!((got.to, got.reason), (c.want, c.reason), "{}", c.what);
        // Only a checkable read sent to a standby not known past the write carries it.
        let checked = c.checkable && c.want != To::Primary;
        assert_eq!(got.check, checked.then_some(Lsn(80)), "{}", c.what);
    }
}

#[test]
fn a_set_of_pgsplit_read_your_writes_to_an_unknown_value_is_refused() {
    let state = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    for (value, refused) in [
        ("'maybe'", true),
        ("on", true),
        ("'off'", false),
        ("SESSION", false),
    ] {
        let mut class = Classification::any();
        class.effects.push(Effect::Set {
            name: "pgsplit.read_your_writes".into(),
            value: value.into(),
        });
        let got = run(
            &case("", Conn::Primary, class, &[FRESH]),
            &state,
            false,
            None,
        );
        assert_eq!(matches!(got.to, To::Refuse("22023", _)), refused, "{value}");
    }
}

#[test]
fn a_chain_continues_where_it_runs() {
    let state = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    let c = case("", Conn::Primary, read(), &[FRESH]);
    let got = run(&c, &state, true, Some(Conn::Standby));
    assert_eq!(got.to, To::Open(Conn::Standby));
}

#[test]
fn a_lone_currval_under_transaction_pooling_is_refused() {
    let state = RoutingState::new(TransactionRouting::ReadOnly, Gucs::new());
    let mut class = read();
    class.effects.push(Effect::ReadsSequence);
    let c = case("", Conn::Standby, class, &[FRESH]);
    assert!(matches!(
        run(&c, &state, true, None).to,
        To::Refuse("0A000", _)
    ));
    assert_eq!(run(&c, &state, false, None).to, To::Standby(1));
}

#[test]
fn a_read_on_the_primary_says_why() {
    let at = Instant::now();
    let cases = [
        // Eligible standbys nobody excluded: the primary was one more read node.
        (vec![FRESH, FRESH], vec![], vec![], Decision::Read),
        // Both eligible, neither has replayed the client's write.
        (
            vec![FRESH, FRESH],
            vec![],
            vec![1, 2],
            Decision::ReadYourWrites,
        ),
        // One too far behind, the other not replayed yet.
        (
            vec![LAGGING, FRESH],
            vec![],
            vec![2],
            Decision::ReadYourWrites,
        ),
        // Both up, both outside the lag bounds.
        (
            vec![LAGGING, LAGGING],
            vec![],
            vec![],
            Decision::LagExcluded,
        ),
        // One lagging, one failed this client: lag is why no standby is left.
        (
            vec![LAGGING, FRESH],
            vec![2],
            vec![2],
            Decision::LagExcluded,
        ),
        // Down, or failed this client.
        (vec![DOWN, DOWN], vec![], vec![], Decision::FallbackPrimary),
        (
            vec![FRESH, DOWN],
            vec![1],
            vec![1],
            Decision::FallbackPrimary,
        ),
        (vec![], vec![], vec![], Decision::FallbackPrimary),
    ];
    for (i, (standbys, avoided, excluded, want)) in cases.iter().enumerate() {
        let topology = topology(at, standbys);
        assert_eq!(
            why_primary(&topology, avoided, excluded),
            *want,
            "case {i}: avoided {avoided:?}, excluded {excluded:?}"
        );
    }
}
