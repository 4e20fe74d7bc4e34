//! Where a planned request runs, and why: one pure function of the request, a read-only
//! view of the session, the cluster snapshot and the routing settings. When the node it
//! names cannot be reached, the relay asks again with that failure as input (a standby
//! that failed joins the session's avoid list; an unreachable primary or a settings sync
//! that failed on a standby is a [`Failure`]).

use std::fmt;
use std::time::{Duration, Instant};

use super::{Conn, Decision, RoutingState};
use crate::balance::{pick_read, PrimaryReads, ReadTarget, Strategy};
use crate::classify::{Classification, Effect, Route};
use crate::gucs::{read_your_writes_value, READ_YOUR_WRITES};
use crate::topology::{Lsn, Role, Topology};

/// Why a lone `currval()`/`lastval()` is refused under transaction pooling.
const LOSES_SEQUENCE_STATE: &str = "currval() and lastval() read the sequence state of the \
    server connection that ran nextval(), which pgsplit's transaction pooling has since \
    handed back: call them in the same transaction or request as the INSERT, use INSERT ... \
    RETURNING, call nextval() explicitly, or use pool mode \"session\"";

/// Why a `SET pgsplit.read_your_writes` is refused.
const BAD_READ_YOUR_WRITES: &str =
    "invalid value for parameter \"pgsplit.read_your_writes\": use 'session' or 'off'";

/// The request to place: the connection its plan names, and what it is.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The connection the session's plan names.
    pub conn: Conn,
    /// The plan sends a deferred BEGIN first.
    pub begins: bool,
    /// What the request does.
    pub class: &'a Classification,
    /// A batch ending in Flush: the chain's next statements are not seen yet.
    pub unsynced: bool,
    /// A single statement on its own.
    pub lone: bool,
    /// A synced autocommit read that can run again on the primary: it may carry a check
    /// of the standby's replay position instead of waiting for one.
    pub checkable: bool,
}

/// The session's standby connection.
#[derive(Debug, Clone, Copy)]
pub struct OpenStandby<'a> {
    /// Topology index of its node.
    pub node: usize,
    /// The address it is connected to.
    pub address: &'a str,
    /// An answer is owed on it: what was started there finishes there.
    pub busy: bool,
}

/// The client's last committed write, for read-your-writes.
#[derive(Clone, Copy)]
pub struct Written<'a> {
    /// When its commit returned.
    pub at: Instant,
    /// A primary WAL position at or past its commit, once read.
    pub lsn: Option<Lsn>,
    /// Standbys' replay positions read on demand since the snapshot, by node index.
    pub replayed: &'a dyn Fn(usize) -> Option<Lsn>,
    /// How long a read may wait for a standby to be seen past `lsn`; zero: not at all.
    pub wait: Duration,
}

impl Written<'_> {
    /// Whether node `node` is known to have replayed the write: past its WAL position,
    /// or (while that is not known) past the primary position the monitor sampled after
    /// the commit.
    fn replayed_by(&self, topology: &Topology, node: usize) -> bool {
        let Some(lsn) = self.lsn else {
            return topology.replayed_since(node, self.at);
        };
        let seen = topology
            .nodes
            .get(node)
            .filter(|n| n.role == Role::Standby)
            .and_then(|n| n.lsn?.replay);
        seen.is_some_and(|r| r >= lsn) || (self.replayed)(node).is_some_and(|r| r >= lsn)
    }

    /// Whether some node that may serve reads is known to have replayed the write.
    fn replayed_somewhere(&self, topology: &Topology) -> bool {
        (0..topology.nodes.len())
            .any(|i| topology.nodes[i].eligible && self.replayed_by(topology, i))
    }
}

impl fmt::Debug for Written<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Written")
            .field("at", &self.at)
            .field("lsn", &self.lsn)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// What the decision reads of the session.
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    /// Transaction, pins and settings.
    pub state: &'a RoutingState,
    /// The request continues the Flush chain running on this connection.
    pub chain: Option<Conn>,
    /// Connections go back to their pools between transactions.
    pub transaction_pooling: bool,
    /// The standby connection the session holds.
    pub standby: Option<OpenStandby<'a>>,
    /// The client's last write, when its reads must see it.
    pub written: Option<Written<'a>>,
    /// Standbys that failed this client recently.
    pub avoid: &'a [usize],
}

/// How reads are spread over the nodes.
#[derive(Debug, Clone, Copy)]
pub struct Balance<'a> {
    /// The balancing strategy.
    pub strategy: Strategy,
    /// Whether the primary serves reads too.
    pub primary_reads: PrimaryReads,
    /// Clients reading from each node (only gathered for `least_outstanding`).
    pub outstanding: &'a [usize],
    /// A random number for `random`.
    pub dice: u64,
}

/// What went wrong with the last decision for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The primary did not answer a read sent there for read-your-writes: a standby
    /// serves it rather than failing it (this read only).
    PrimaryUnreachable,
    /// The session's settings could not be applied on the standby: an autocommit read
    /// runs on the primary instead of with the wrong settings.
    SettingsOnStandby,
    /// The standby waited for was not seen past the client's write in time: the read goes
    /// to the primary.
    NotReplayed,
}

/// The connection a request runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// This open connection, as it is (a Flush chain, a transaction, an answer owed).
    Open(Conn),
    /// The primary: the session's connection there, reopened if the primary moved.
    Primary,
    /// A new connection to this standby, the session's old one handed back.
    Standby(usize),
    /// Nowhere: refused here with this SQLSTATE and message.
    Refuse(&'static str, &'static str),
    /// Nowhere: no node can serve it, for this reason.
    Nowhere(&'static str),
    /// Nowhere yet: wait (within `Written::wait`) for this standby to be seen past the
    /// client's write, then ask again ([`Failure::NotReplayed`] if it was not).
    Await(usize),
}

/// The routing decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    /// Where it runs.
    pub to: To,
    /// Why, as the statistics count it.
    pub reason: Decision,
    /// The session's standby connection is no longer one to read from: hand it back.
    pub release_standby: bool,
    /// A read goes to the primary only for read-your-writes: if the primary cannot be
    /// reached, ask again with [`Failure::PrimaryUnreachable`].
    pub for_my_writes: bool,
    /// The standby runs the read only once it has replayed this WAL position (the
    /// client's write), checked in the same request; else the read runs on the primary.
    pub check: Option<Lsn>,
}

/// Where a planned request runs and why. `turn` advances the round-robin counter, and is
/// called only when a standby is picked.
pub fn decide(
    ask: Ask<'_>,
    session: SessionView<'_>,
    topology: &Topology,
    balance: Balance<'_>,
    failure: Option<Failure>,
    turn: &mut dyn FnMut() -> u64,
) -> Destination {
    let destination = |to: To, conn: Conn, read_on_primary: Option<Decision>| Destination {
        to,
        reason: reason(&ask, &session, conn, read_on_primary),
        release_standby: false,
        for_my_writes: false,
        check: None,
    };
    if let Some(conn) = session.chain {
        return destination(To::Open(conn), conn, None);
    }
    if ask.class.effects.iter().any(|e| {
        matches!(e, Effect::Set { name, value }
            if name == READ_YOUR_WRITES && read_your_writes_value(value).is_none())
    }) {
        return destination(To::Refuse("22023", BAD_READ_YOUR_WRITES), ask.conn, None);
    }
    if session.transaction_pooling
        && !ask.begins
        && session
            .state
            .loses_sequence_state(ask.class, ask.lone && ask.class.statements <= 1)
    {
        let to = To::Refuse("0A000", LOSES_SEQUENCE_STATE);
        return destination(to, ask.conn, None);
    }
    if failure == Some(Failure::SettingsOnStandby) {
        return destination(To::Primary, Conn::Primary, Some(Decision::FallbackPrimary));
    }
    if ask.conn == Conn::Primary {
        return destination(To::Primary, Conn::Primary, None);
    }
    // Read-your-writes. A write whose WAL position is not known yet can be shown replayed
    // only against the primary's own samples: while no primary answers, its reads stay
    // available on the standbys instead (docs/operations.md). One whose position is known
    // keeps its reads on standbys past it; only once the primary could not be reached and
    // no standby is past it do they go to any standby.
    let written = session.written.filter(|w| match failure {
        Some(Failure::PrimaryUnreachable) => w.lsn.is_some() && w.replayed_somewhere(topology),
        _ => w.lsn.is_some() || primary_answers(topology),
    });
    let replayed = |node: usize| written.is_none_or(|w| w.replayed_by(topology, node));
    if let (Some(w), None) = (written, session.state.txn) {
        let fresh = match session.standby {
            Some(open) => w.replayed_by(topology, open.node),
            None => w.replayed_somewhere(topology),
        };
        if !fresh {
            let waits = failure != Some(Failure::NotReplayed) && w.lsn.is_some();
            if let Some(node) = waits
                .then(|| to_wait_for(&w, &session, topology, &balance, turn))
                .flatten()
            {
                // A read that can carry the check goes at once: no round trip to learn
                // the standby's position first, and none to wait out its replay.
                if ask.checkable {
                    let to = match session.standby {
                        Some(open) if open.node == node => To::Open(Conn::Standby),
                        _ => To::Standby(node),
                    };
                    return Destination {
                        check: w.lsn,
                        release_standby: session.standby.is_some_and(|o| o.node != node),
                        ..destination(to, Conn::Standby, None)
                    };
                }
                return destination(To::Await(node), Conn::Standby, None);
            }
            let why = why_not_my_writes(topology);
            return Destination {
                for_my_writes: true,
                ..destination(To::Primary, Conn::Primary, Some(why))
            };
        }
    }
    if let Some(open) = session.standby {
        let committed = session.state.txn == Some(Conn::Standby)
            || open.busy
            || session.state.holds(Conn::Standby);
        let still_standby = topology.nodes.get(open.node).is_some_and(|n| {
            n.role == Role::Standby && n.eligible && n.node.address == open.address
        });
        if committed || still_standby {
            return destination(To::Open(Conn::Standby), Conn::Standby, None);
        }
    }
    let mut exclude = session.avoid.to_vec();
    if written.is_some() {
        exclude.extend((0..topology.nodes.len()).filter(|i| !replayed(*i)));
    }
    let release_standby = session.standby.is_some();
    let target = pick_read(
        topology,
        balance.strategy,
        balance.primary_reads,
        &exclude,
        balance.outstanding,
        turn(),
        balance.dice,
    );
    let picked = match target {
        ReadTarget::Standby(i) => destination(To::Standby(i), Conn::Standby, None),
        ReadTarget::Nowhere if ask.class.route != Route::Any => destination(
            To::Nowhere("no standby is available and primary_reads = \"never\""),
            Conn::Standby,
            None,
        ),
        ReadTarget::Primary | ReadTarget::Nowhere => {
            let why = why_primary(topology, session.avoid, &exclude);
            destination(To::Primary, Conn::Primary, Some(why))
        }
    };
    Destination {
        release_standby,
        ..picked
    }
}

/// The standby a read waits for when none is known to have replayed the client's write:
/// the session's own, or one picked as reads are; never one whose replay lag is longer
/// than the wait (it would not catch up in time).
fn to_wait_for(
    written: &Written<'_>,
    session: &SessionView<'_>,
    topology: &Topology,
    balance: &Balance<'_>,
    turn: &mut dyn FnMut() -> u64,
) -> Option<usize> {
    if written.wait.is_zero() {
        return None;
    }
    let too_far = |i: usize| {
        topology.nodes.get(i).is_none_or(|n| {
            n.role != Role::Standby || !n.eligible || n.lag_time.is_some_and(|t| t > written.wait)
        })
    };
    if let Some(open) = session.standby {
        return (!too_far(open.node) && !session.avoid.contains(&open.node)).then_some(open.node);
    }
    let mut exclude = session.avoid.to_vec();
    exclude.extend((0..topology.nodes.len()).filter(|i| too_far(*i)));
    match pick_read(
        topology,
        balance.strategy,
        PrimaryReads::Never,
        &exclude,
        balance.outstanding,
        turn(),
        balance.dice,
    ) {
        ReadTarget::Standby(i) => Some(i),
        ReadTarget::Primary | ReadTarget::Nowhere => None,
    }
}

/// Why a request went where it went, with the transaction state it was planned in.
fn reason(
    ask: &Ask<'_>,
    session: &SessionView<'_>,
    conn: Conn,
    read_on_primary: Option<Decision>,
) -> Decision {
    if session.state.txn == Some(conn) {
        return Decision::InTransaction;
    }
    if ask.class.route == Route::Primary {
        return ask.class.reason.into();
    }
    if conn == Conn::Standby {
        return Decision::Read;
    }
    if let Some(why) = read_on_primary {
        return why;
    }
    if session.state.pinned() {
        return Decision::Pinned;
    }
    match ask.class.route {
        Route::Any => Decision::Any,
        // A chain's next statements are not seen yet, so it starts on the primary.
        _ if ask.unsynced => Decision::Unclassified,
        // A read that opens a read-write transaction, or under SERIALIZABLE.
        _ => Decision::TransactionMode,
    }
}

/// Whether a primary answers its checks now; while none does, no standby can be shown to
/// have replayed a write whose WAL position is not known, and reads stay available instead.
fn primary_answers(topology: &Topology) -> bool {
    topology.primary().is_some_and(|p| p.ban.is_none())
}

/// Why read-your-writes sends a read to the primary: the standbys have not replayed the
/// client's write yet, or none could serve it anyway.
fn why_not_my_writes(topology: &Topology) -> Decision {
    if topology
        .nodes
        .iter()
        .any(|n| n.role == Role::Standby && n.eligible)
    {
        Decision::ReadYourWrites
    } else {
        why_primary(topology, &[], &[])
    }
}

/// Why a read planned for a standby goes to the primary. `avoided` are standbys that
/// failed this client, `excluded` those and the ones read-your-writes rules out.
/// `Read` when a standby was there to take it: the primary was picked as one more read
/// node (`primary_reads = "always"`).
fn why_primary(topology: &Topology, avoided: &[usize], excluded: &[usize]) -> Decision {
    let standbys = || {
        topology
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Standby && n.node.weight > 0)
    };
    if standbys().any(|(i, n)| n.eligible && !excluded.contains(&i)) {
        Decision::Read
    } else if standbys().any(|(i, n)| n.eligible && !avoided.contains(&i)) {
        Decision::ReadYourWrites
    } else if standbys().any(|(_, n)| !n.eligible && n.error.is_none()) {
        // Up and answering, but outside the lag bounds (or streaming from no primary).
        Decision::LagExcluded
    } else {
        Decision::FallbackPrimary
    }
}

#[cfg(test)]
mod tests;
