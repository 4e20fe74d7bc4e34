//! What the statistics learn from a client's requests: where each went and why, how long
//! it took to its ReadyForQuery, and the bytes each way. One clock read when a request is
//! sent and one at its ReadyForQuery, a few atomic adds; nothing is allocated.

use std::time::Instant;

use super::{Relay, Request, Slot};
use crate::classify::{Classification, Route};
use crate::route::Conn;
use crate::stats::{Answered, Decision, Served, Stats};
use crate::topology::{Role, Topology};

/// A client request on its way; counted at its ReadyForQuery.
#[derive(Debug, Clone, Copy)]
pub(super) struct Answering {
    sent_at: Instant,
    route: Served,
    bytes_received: u64,
    bytes_sent: u64,
}

/// Bytes the client sent for the request in flight on `slot` after the request itself
/// (COPY data).
pub(super) fn received(slot: &mut Slot, bytes: usize) {
    if let Some(a) = slot.answering.as_mut() {
        a.bytes_received += bytes as u64;
    }
}

/// Bytes of an answer passed on to the client; with `ready` (the ReadyForQuery status)
/// the request is done and counted.
pub(super) fn sent(slot: &mut Slot, bytes: usize, ready: Option<u8>, stats: &Stats) {
    let Some(a) = slot.answering.as_mut() else {
        return;
    };
    a.bytes_sent += bytes as u64;
    let Some(status) = ready else {
        return;
    };
    if let Some(a) = slot.answering.take() {
        stats.answered(
            slot.node,
            a.route,
            Answered {
                elapsed: a.sent_at.elapsed(),
                bytes_received: a.bytes_received,
                bytes_sent: a.bytes_sent,
                ends_transaction: status == b'I',
            },
        );
    }
}

/// Why a read planned for a standby goes to the primary. `avoided` are standbys that
/// failed this client, `excluded` those and the ones read-your-writes rules out.
/// `Read` when a standby was there to take it: the primary was picked as one more read
/// node (`primary_reads = "always"`).
pub(super) fn why_primary(topology: &Topology, avoided: &[usize], excluded: &[usize]) -> Decision {
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

impl Relay<'_> {
    /// A request is being sent on `conn`, before its effects are applied: counts where it
    /// went and why, and starts its clock. The batches of a Flush chain are one request.
    pub(super) fn tally_request(&mut self, conn: Conn, class: &Classification, request: &Request) {
        let (bytes, unsynced) = match request {
            Request::Query(frame, _) | Request::Function(frame) => (frame.raw.len(), false),
            Request::Batch { bytes, sync, .. } => (*bytes, !sync),
        };
        let route = if class.route == Route::Primary {
            Served::Write
        } else {
            Served::Read
        };
        let continues_chain = self.sticky == Some(conn);
        if !continues_chain {
            let decision = self.decision(conn, class, unsynced);
            self.shared.stats.decided(decision);
        }
        let slot = self.slot(conn);
        match slot.answering.as_mut() {
            Some(a) if continues_chain => {
                a.bytes_received += bytes as u64;
                if route == Served::Write {
                    a.route = Served::Write;
                }
            }
            _ => {
                slot.answering = Some(Answering {
                    sent_at: Instant::now(),
                    route,
                    bytes_received: bytes as u64,
                    bytes_sent: 0,
                })
            }
        }
    }

    /// Where a request went and why. The transaction state is still the one the request
    /// was planned in.
    fn decision(&mut self, conn: Conn, class: &Classification, unsynced: bool) -> Decision {
        let read_went_to_primary = self.primary_read.take();
        if self.state.txn == Some(conn) {
            return Decision::InTransaction;
        }
        if class.route == Route::Primary {
            return class.reason.into();
        }
        if conn == Conn::Standby {
            return Decision::Read;
        }
        if let Some(why) = read_went_to_primary {
            return why;
        }
        if self.state.pinned() {
            return Decision::Pinned;
        }
        match class.route {
            Route::Any => Decision::Any,
            // A chain's next statements are not seen yet, so it starts on the primary.
            _ if unsynced => Decision::Unclassified,
            // A read that opens a read-write transaction, or under SERIALIZABLE.
            _ => Decision::TransactionMode,
        }
    }

    /// Why read-your-writes sends a read to the primary: the standbys have not replayed
    /// the client's write yet, or none could serve it anyway.
    pub(super) fn why_not_my_writes(&self) -> Decision {
        let topology = self.shared.topology.load();
        if topology
            .nodes
            .iter()
            .any(|n| n.role == Role::Standby && n.eligible)
        {
            Decision::ReadYourWrites
        } else {
            why_primary(&topology, &[], &[])
        }
    }

    /// Keeps the active-clients gauge in line with whether this client holds a server
    /// connection.
    pub(super) fn count_active(&mut self) {
        let active = self.primary.conn.is_some() || self.standby.conn.is_some();
        if active != self.counted_active {
            self.shared.stats.set_active(active);
            self.counted_active = active;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Node;
    use crate::topology::NodeState;

    /// Node 0 is the primary; each standby is (up, eligible).
    fn topology(standbys: &[(bool, bool)]) -> Topology {
        let node = |i: usize| Node {
            name: format!("n{i}"),
            address: format!("h:{}", i + 1),
            weight: 1,
        };
        let mut nodes = vec![NodeState {
            role: Role::Primary,
            error: None,
            eligible: true,
            ..NodeState::unknown(node(0))
        }];
        for (i, &(up, eligible)) in standbys.iter().enumerate() {
            nodes.push(NodeState {
                role: if up { Role::Standby } else { Role::Unknown },
                error: (!up).then(|| "connection refused".to_string()),
                eligible,
                ..NodeState::unknown(node(i + 1))
            });
        }
        Topology::new(nodes)
    }

    #[test]
    fn a_read_on_the_primary_says_why() {
        let cases = [
            // Eligible standbys nobody excluded: the primary was one more read node.
            (
                topology(&[(true, true), (true, true)]),
                vec![],
                vec![],
                Decision::Read,
            ),
            // Both eligible, neither has replayed the client's write.
            (
                topology(&[(true, true), (true, true)]),
                vec![],
                vec![1, 2],
                Decision::ReadYourWrites,
            ),
            // One too far behind, the other not replayed yet.
            (
                topology(&[(true, false), (true, true)]),
                vec![],
                vec![2],
                Decision::ReadYourWrites,
            ),
            // Both up, both outside the lag bounds.
            (
                topology(&[(true, false), (true, false)]),
                vec![],
                vec![],
                Decision::LagExcluded,
            ),
            // One lagging, one failed this client: lag is why no standby is left.
            (
                topology(&[(true, false), (true, true)]),
                vec![2],
                vec![2],
                Decision::LagExcluded,
            ),
            // Down, or failed this client.
            (
                topology(&[(false, false), (false, false)]),
                vec![],
                vec![],
                Decision::FallbackPrimary,
            ),
            (
                topology(&[(true, true), (false, false)]),
                vec![1],
                vec![1],
                Decision::FallbackPrimary,
            ),
            (topology(&[]), vec![], vec![], Decision::FallbackPrimary),
        ];
        for (i, (topology, avoided, excluded, want)) in cases.iter().enumerate() {
            assert_eq!(
                why_primary(topology, avoided, excluded),
                *want,
                "case {i}: avoided {avoided:?}, excluded {excluded:?}"
            );
        }
    }
}
