//! What a server connection owes: the ReadyForQuery answers still to come, numbering the
//! batches in flight; the Parse, Close and Describe messages waiting for their answers,
//! with the ones pgsplit added itself (whose answers are dropped); the chain of messages
//! sent without Sync; COPY. Plain data, unit-tested without sockets.

use std::collections::VecDeque;
use std::time::Instant;

use crate::topology::Lsn;

/// A reply pgsplit expects for messages it injected, and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Swallow {
    /// Everything up to and including the batch's ReadyForQuery.
    UntilReady,
    /// The same, and the WAL position its DataRow gives is learned: the primary's insert
    /// position, asked right after a commit of the client's on the same connection.
    Position,
    /// The answers to a check, ahead of the client's read in its own batch, that the
    /// standby replayed `lsn` (sent at `sent`): up to its CommandComplete, or its error
    /// (the server then skips the read).
    Check { lsn: Lsn, sent: Instant },
}

/// What a Parse sent to a server creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ParseOf {
    /// A named statement, by id; with the client's name when the client sent the Parse.
    Named(u64, Option<String>),
    /// The unnamed statement, by the identity of the client's Parse.
    Unnamed(u64),
}

/// A Describe of a statement in flight: the statement, and the client's name for it when
/// the client asked; `None` for a statement pgsplit does not track.
pub(super) type Described = Option<(u64, Option<String>)>;

/// A Parse or Close in flight: answered by ParseComplete / CloseComplete in order, or
/// skipped when an earlier message fails.
#[derive(Debug, Clone)]
pub(super) struct InFlight<T> {
    /// Which of the connection's ReadyForQuery answers ends its batch.
    pub sync: u64,
    /// pgsplit added it itself: its answer is dropped.
    pub ours: bool,
    /// What it is about.
    pub what: T,
}

impl<T> InFlight<T> {
    pub fn of(sync: u64, ours: bool, what: T) -> Self {
        InFlight { sync, ours, what }
    }
}

/// A reply matched against what was sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Tracked {
    /// It answers a message pgsplit added: drop it.
    pub ours: bool,
    /// At ReadyForQuery: Parses that got no ParseComplete (skipped after an error, or
    /// failed), whose statements the connection does not hold.
    pub failed: Vec<ParseOf>,
}

/// What one server connection owes, and the protocol state of what was sent to it.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// ReadyForQuery messages still expected (the client's and injected ones).
    pub pending: usize,
    /// Replies to messages pgsplit injected, dropped as they come: by the batch they
    /// answer (pgsplit's own batch may follow the client's).
    pub swallow: VecDeque<(u64, Swallow)>,
    pub parses: VecDeque<InFlight<ParseOf>>,
    pub closes: VecDeque<InFlight<()>>,
    /// Describes of named statements in flight: the statement, and the client's name
    /// for it when the client asked.
    pub describes: VecDeque<InFlight<Described>>,
    /// The Describe whose ParameterDescription just arrived: its RowDescription or
    /// NoData comes next.
    pub describing: Option<(u64, Option<String>)>,
    /// ReadyForQuery answers asked for and received, numbering the batches in flight.
    pub syncs_sent: u64,
    pub syncs_seen: u64,
    /// In COPY FROM STDIN: client data goes here, and Sync/Flush are ignored by the server.
    pub copy_in: bool,
    /// The client ended its COPY data before the server's CopyInResponse arrived.
    pub copy_ended_early: bool,
    /// An extended-protocol COPY ended: the server waits for the client's Sync, which
    /// belongs to the batch that started the COPY (whose own Sync the server ignored).
    pub awaits_sync: bool,
    /// Whether the last request sent here ended with Sync.
    pub last_synced: bool,
    /// Answers still to come to the chain's messages sent without Sync (one per Parse,
    /// Bind, Describe, Execute, Close).
    pub chain_due: usize,
    /// The server reported an error in a chain (messages without Sync): it ignores what
    /// follows until the next Sync, so what follows has no effect and no answer.
    pub skipping: bool,
}

impl Owed {
    /// Matches ParseComplete, CloseComplete and ReadyForQuery against the messages in
    /// flight. At ReadyForQuery, a Parse of that batch that got no ParseComplete was
    /// skipped or failed: it is returned, as the connection does not hold its statement.
    pub fn track_reply(&mut self, tag: u8) -> Tracked {
        let batch = self.syncs_seen;
        match tag {
            b'1' => Tracked {
                ours: self
                    .parses
                    .pop_front()
                    .is_some_and(|p| p.sync == batch && p.ours),
                failed: Vec::new(),
            },
            b'3' => Tracked {
                ours: self
                    .closes
                    .pop_front()
                    .is_some_and(|c| c.sync == batch && c.ours),
                failed: Vec::new(),
            },
            b'Z' => {
                let mut failed = Vec::new();
                while self.parses.front().is_some_and(|p| p.sync == batch) {
                    failed.extend(self.parses.pop_front().map(|p| p.what));
                }
                while self.closes.front().is_some_and(|c| c.sync == batch) {
                    self.closes.pop_front();
                }
                while self.describes.front().is_some_and(|d| d.sync == batch) {
                    self.describes.pop_front();
                }
                self.describing = None;
                self.syncs_seen += 1;
                Tracked {
                    ours: false,
                    failed,
                }
            }
            _ => Tracked::default(),
        }
    }

    /// Expects pgsplit's own batch, sent now, answered up to its ReadyForQuery.
    pub fn expect_own(&mut self, swallow: Swallow) {
        self.swallow.push_back((self.syncs_sent, swallow));
        self.pending += 1;
        self.syncs_sent += 1;
    }

    /// Expects the answers to a replay check sent ahead of the batch about to be sent.
    pub fn expect_check(&mut self, lsn: Lsn) {
        let check = Swallow::Check {
            lsn,
            sent: Instant::now(),
        };
        self.swallow.push_back((self.syncs_sent, check));
    }

    /// The replay check being answered is done; the rest of the batch is the client's.
    pub fn check_answered(&mut self) {
        self.swallow.pop_front();
    }

    /// What to do with the replies now arriving, when they answer pgsplit's own batch.
    pub fn swallowing(&self) -> Option<Swallow> {
        self.swallow
            .front()
            .filter(|(batch, _)| *batch == self.syncs_seen)
            .map(|(_, swallow)| *swallow)
    }

    /// pgsplit's batch being answered got its ReadyForQuery.
    pub fn own_answered(&mut self) {
        self.swallow.pop_front();
        self.pending = self.pending.saturating_sub(1);
    }

    /// Whether every answer still owed is to pgsplit's own batches.
    pub fn owes_only_own(&self) -> bool {
        let own = self
            .swallow
            .iter()
            .filter(|(_, s)| !matches!(s, Swallow::Check { .. }))
            .count();
        self.pending > 0 && self.pending == own && !self.copy_in && !self.awaits_sync
    }

    /// Whether nothing is owed: no answer expected, no COPY, no Sync awaited.
    pub fn settled(&self) -> bool {
        self.pending == 0 && !self.copy_in && !self.awaits_sync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of Parses sent with its Sync: (statement id, added by pgsplit).
    fn send(owed: &mut Owed, parses: &[(u64, bool)]) {
        let sync = owed.syncs_sent;
        for &(id, ours) in parses {
            owed.parses
                .push_back(InFlight::of(sync, ours, ParseOf::Named(id, None)));
        }
        owed.syncs_sent += 1;
        owed.pending += 1;
    }

    #[test]
    fn answers_to_pgsplits_own_parses_are_dropped_in_order() {
        let mut owed = Owed::default();
        send(&mut owed, &[(1, true), (2, false)]);
        assert!(owed.track_reply(b'1').ours, "pgsplit's re-prepare");
        assert!(!owed.track_reply(b'1').ours, "the client's own Parse");
        assert_eq!(owed.track_reply(b'Z'), Tracked::default());
        assert_eq!(owed.syncs_seen, 1);
    }

    #[test]
    fn a_parse_without_parse_complete_at_ready_for_query_failed() {
        let mut owed = Owed::default();
        send(&mut owed, &[(1, false), (2, false), (3, true)]);
        assert!(!owed.track_reply(b'1').ours);
        // The second Parse failed: its error, then ReadyForQuery; the third was skipped.
        let tracked = owed.track_reply(b'Z');
        assert_eq!(
            tracked.failed,
            vec![ParseOf::Named(2, None), ParseOf::Named(3, None)]
        );
        assert!(owed.parses.is_empty());
    }

    #[test]
    fn each_ready_for_query_closes_only_its_own_batch() {
        let mut owed = Owed::default();
        send(&mut owed, &[(1, false)]);
        send(&mut owed, &[(2, true)]);
        owed.closes.push_back(InFlight::of(1, true, ()));
        // The first batch's Parse failed; the second batch is untouched.
        assert_eq!(owed.track_reply(b'Z').failed, vec![ParseOf::Named(1, None)]);
        assert_eq!(owed.parses.len(), 1);
        assert!(owed.track_reply(b'1').ours);
        assert!(
            owed.track_reply(b'3').ours,
            "pgsplit's Close in the second batch"
        );
        assert!(owed.track_reply(b'Z').failed.is_empty());
        assert_eq!((owed.syncs_sent, owed.syncs_seen), (2, 2));
    }

    #[test]
    fn pgsplits_batch_after_the_clients_is_swallowed_only_once_the_clients_is_answered() {
        let mut owed = Owed::default();
        send(&mut owed, &[]);
        owed.expect_own(Swallow::Position);
        assert_eq!(owed.swallowing(), None, "the client's batch answers first");
        assert!(!owed.owes_only_own());
        owed.track_reply(b'Z');
        owed.pending -= 1;
        assert_eq!(owed.swallowing(), Some(Swallow::Position));
        assert!(owed.owes_only_own());
        owed.track_reply(b'Z');
        owed.own_answered();
        assert_eq!((owed.swallowing(), owed.pending), (None, 0));
        assert!(owed.settled());
    }

    #[test]
    fn settled_means_nothing_owed() {
        let mut owed = Owed::default();
        assert!(owed.settled());
        owed.pending = 1;
        assert!(!owed.settled());
        owed.pending = 0;
        owed.awaits_sync = true;
        assert!(!owed.settled());
    }
}
