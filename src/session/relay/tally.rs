//! What the statistics learn from a client's requests: where each went and why, how long
//! it took to its ReadyForQuery, and the bytes each way. One clock read when a request is
//! sent and one at its ReadyForQuery, a few atomic adds; nothing is allocated.

use std::time::Instant;

use super::{Relay, Request, Slot};
use crate::classify::{Classification, Route};
use crate::route::{Conn, Decision};
use crate::stats::{Answered, Served, Stats};

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

/// Whether this client is counted in the connection gauges.
#[derive(Default)]
pub(super) struct Gauges {
    /// As holding a connection for a pin.
    pub pinned: bool,
    /// As holding a server connection.
    pub active: bool,
}

impl Relay<'_> {
    /// A request is being sent on `conn`, before its effects are applied: counts where it
    /// went and why, and starts its clock. The batches of a Flush chain are one request.
    pub(super) fn tally_request(
        &mut self,
        conn: Conn,
        reason: Decision,
        class: &Classification,
        request: &Request,
    ) {
        let bytes = match request {
            Request::Query(frame, _) | Request::Function(frame) => frame.raw.len(),
            Request::Batch { bytes, .. } => *bytes,
        };
        let route = if class.route == Route::Primary {
            Served::Write
        } else {
            Served::Read
        };
        let continues_chain = self.sticky == Some(conn);
        if !continues_chain {
            self.shared.stats.decided(reason);
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

    /// Keeps the active-clients gauge in line with whether this client holds a server
    /// connection.
    pub(super) fn count_active(&mut self) {
        let active = self.primary.conn.is_some() || self.standby.conn.is_some();
        if active != self.gauges.active {
            self.shared.stats.set_active(active);
            self.gauges.active = active;
        }
    }
}
