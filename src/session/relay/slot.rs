//! One of the client's server connections, checked out of its pool, with what the
//! session knows about the requests in flight on it.

use std::sync::Arc;

use super::owed::{Owed, ParseOf};
use super::tally::Answering;
use super::{Refusal, Request};
use crate::classify::Classification;
use crate::gucs::Gucs;
use crate::pool::Lease;

/// One of the client's server connections (checked out of its pool) and what pgsplit
/// knows about the requests in flight on it.
pub(super) struct Slot {
    pub(super) conn: Option<Lease>,
    /// Topology index of the node it is connected to.
    pub(super) node: usize,
    /// What the server owes for what was sent to it.
    pub(super) owed: Owed,
    /// Client statements whose Parse failed: (client name, statement id).
    pub(super) failed_parses: Vec<(String, u64)>,
    /// A command the client ran elsewhere (DISCARD ALL, DEALLOCATE ALL) dropped the
    /// session state this connection holds: it is reset before anyone else uses it.
    pub(super) reset_on_release: bool,
    /// An autocommit read whose answer has not started yet: if the server dies now,
    /// it is sent again elsewhere.
    pub(super) retry: Option<(Request, Arc<Classification>)>,
    /// How many times the request in flight here has been sent, this time included.
    pub(super) runs: u8,
    /// The standby refused the retryable read in flight: nothing of its answer reaches
    /// the client, and the read runs on the primary at its ReadyForQuery.
    pub(super) refused: Option<Refusal>,
    /// The client request being answered here, counted at its ReadyForQuery.
    pub(super) answering: Option<Answering>,
    /// The settings applied here before the open transaction (`None`: unknown), which
    /// its rollback returns to.
    pub(super) applied_before: Option<Gucs>,
    /// A server-side statement name standing for one the client named in the batch in
    /// flight (a statement it never prepared, a Parse of a name in use), and the client's
    /// name: the server's error says the client's.
    pub(super) renamed: Option<(String, String)>,
    /// The request in flight is `SHAPE_CHANGED`: its error reaches the client as
    /// PostgreSQL's own.
    pub(super) shape_changed: bool,
    /// The client was sent the server's FATAL error: the server closes next, and the
    /// client already knows why.
    pub(super) told_fatal: bool,
    /// Messages received from the server, so the watchdog can tell silence from progress.
    pub(super) heard: u64,
    /// `heard` at the watchdog's last tick, and how many ticks in a row it stayed there
    /// while a request was in flight.
    pub(super) silence: (u64, u32),
}

impl Slot {
    pub(super) fn empty() -> Slot {
        Slot {
            conn: None,
            node: 0,
            owed: Owed::default(),
            failed_parses: Vec::new(),
            reset_on_release: false,
            retry: None,
            runs: 0,
            refused: None,
            answering: None,
            applied_before: None,
            renamed: None,
            shape_changed: false,
            told_fatal: false,
            heard: 0,
            silence: (0, 0),
        }
    }

    /// Called at each watchdog tick: the ticks in a row this connection has owed an
    /// answer and sent nothing.
    pub(super) fn silent_ticks(&mut self) -> u32 {
        let (at_last_tick, ticks) = self.silence;
        self.silence =
            if self.conn.is_none() || self.owed.pending == 0 || self.heard != at_last_tick {
                (self.heard, 0)
            } else {
                (self.heard, ticks.saturating_add(1))
            };
        self.silence.1
    }

    /// Matches a reply against what was sent; true when it answers a message pgsplit
    /// added (and is dropped). A Parse that failed leaves its statement neither on the
    /// connection nor, for a client's statement, in the session (`failed_parses`, for the
    /// session to forget).
    pub(super) fn track_reply(&mut self, tag: u8) -> bool {
        let tracked = self.owed.track_reply(tag);
        if let Some(lease) = self.conn.as_mut() {
            for failed in tracked.failed {
                match failed {
                    ParseOf::Named(id, client) => {
                        lease.statements.remove(id);
                        if let Some(name) = client {
                            self.failed_parses.push((name, id));
                        }
                    }
                    ParseOf::Unnamed(id) if lease.unnamed == Some(id) => lease.unnamed = None,
                    ParseOf::Unnamed(_) => {}
                }
            }
        }
        tracked.ours
    }

    pub(super) fn open(conn: Lease, node: usize) -> Slot {
        Slot {
            conn: Some(conn),
            node,
            ..Slot::empty()
        }
    }
}
