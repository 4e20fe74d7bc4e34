//! The relay loop: frames from the client are grouped into requests (a Query, or an
//! extended-protocol batch up to Sync or Flush), classified, planned by [`RoutingState`],
//! and sent to the client's primary or standby connection; replies stream back.
//! Messages pgsplit injects itself (setting sync, deferred BEGIN, re-prepares) have their
//! replies swallowed so the client sees exactly what it asked for.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::Startup;
use crate::backend::send_cancel;
use crate::classify::{executed_name, Classification, Effect, Reason, Route};
use crate::clients::{CancelLink, CancelTarget};
use crate::config::{PoolMode, ReadYourWrites};
use crate::context::{Phase, Shared};
use crate::error::ProxyError;
use crate::gucs::{apply_to_server, Gucs};
use crate::pool::Lease;
use crate::prepared::Statement;
use crate::protocol::{encode, flush_to, read_cstr, Frame, FrameReader, Severity};
use crate::route::{Conn, Plan, Prepared, RoutingState, Target};
use crate::stats::Decision;
use crate::tls::{ClientRead, ClientWrite};
use crate::topology::Role;
use tally::Answering;
use wire::{
    closed_statement, is_fatal, next_frame, query_text, rename_in_error, statement_named, write_to,
};

mod inject;
mod servers;
mod tally;
mod wire;

/// How long a standby that failed a client is skipped by that client.
const AVOID_FAILED_STANDBY: Duration = Duration::from_secs(10);

/// Bounds on the watchdog's tick, which follows `lag_check_interval` (how soon the
/// monitor can notice a frozen node).
const WATCHDOG_TICK: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// A reply pgsplit expects for messages it injected, and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swallow {
    /// Everything up to and including the next ReadyForQuery.
    UntilReady,
}

/// What a Parse sent to a server creates.
#[derive(Debug, Clone)]
enum ParseOf {
    /// A named statement, by id; with the client's name when the client sent the Parse.
    Named(u64, Option<String>),
    /// The unnamed statement, by the identity of the client's Parse.
    Unnamed(u64),
}

/// A Describe of a statement in flight: the statement, and the client's name for it when
/// the client asked; `None` for a statement pgsplit does not track.
type Described = Option<(u64, Option<String>)>;

/// A Parse or Close in flight: answered by ParseComplete / CloseComplete in order, or
/// skipped when an earlier message fails.
#[derive(Debug, Clone)]
struct InFlight<T> {
    /// Which of the connection's ReadyForQuery answers ends its batch.
    sync: u64,
    /// pgsplit added it itself: its answer is dropped.
    ours: bool,
    what: T,
}

impl<T> InFlight<T> {
    fn of(sync: u64, ours: bool, what: T) -> Self {
        InFlight { sync, ours, what }
    }
}

/// One of the client's server connections (checked out of its pool) and what pgsplit
/// knows about the requests in flight on it.
struct Slot {
    conn: Option<Lease>,
    /// Topology index of the node it is connected to.
    node: usize,
    /// ReadyForQuery messages still expected (the client's and injected ones).
    pending: usize,
    swallow: VecDeque<Swallow>,
    parses: VecDeque<InFlight<ParseOf>>,
    /// Client statements whose Parse failed: (client name, statement id).
    failed_parses: Vec<(String, u64)>,
    closes: VecDeque<InFlight<()>>,
    /// Describes of named statements in flight: the statement, and the client's name
    /// for it when the client asked.
    describes: VecDeque<InFlight<Described>>,
    /// The Describe whose ParameterDescription just arrived: its RowDescription or
    /// NoData comes next.
    describing: Option<(u64, Option<String>)>,
    /// ReadyForQuery answers asked for and received, numbering the batches in flight.
    syncs_sent: u64,
    syncs_seen: u64,
    /// In COPY FROM STDIN: client data goes here, and Sync/Flush are ignored by the server.
    copy_in: bool,
    /// The client ended its COPY data before the server's CopyInResponse arrived.
    copy_ended_early: bool,
    /// An extended-protocol COPY ended: the server waits for the client's Sync, which
    /// belongs to the batch that started the COPY (whose own Sync the server ignored).
    awaits_sync: bool,
    /// A command the client ran elsewhere (DISCARD ALL, DEALLOCATE ALL) dropped the
    /// session state this connection holds: it is reset before anyone else uses it.
    reset_on_release: bool,
    /// Whether the last request sent here ended with Sync.
    last_synced: bool,
    /// An autocommit read whose answer has not started yet: if the server dies now,
    /// it is sent again elsewhere.
    retry: Option<(Request, Arc<Classification>)>,
    /// How many times the request in flight here has been sent, this time included.
    runs: u8,
    /// The standby refused the retryable read in flight: nothing of its answer reaches
    /// the client, and the read runs on the primary at its ReadyForQuery.
    refused: Option<Refusal>,
    /// The client request being answered here, counted at its ReadyForQuery.
    answering: Option<Answering>,
    /// The settings applied here before the open transaction (`None`: unknown), which
    /// its rollback returns to.
    applied_before: Option<Gucs>,
    /// A server-side statement name standing for one the client named in the batch in
    /// flight (a statement it never prepared, a Parse of a name in use), and the client's
    /// name: the server's error says the client's.
    renamed: Option<(String, String)>,
    /// Answers still to come to the chain's messages sent without Sync (one per Parse,
    /// Bind, Describe, Execute, Close).
    chain_due: usize,
    /// The server reported an error in a chain (messages without Sync): it ignores what
    /// follows until the next Sync, so what follows has no effect and no answer.
    skipping: bool,
    /// The client was sent the server's FATAL error: the server closes next, and the
    /// client already knows why.
    told_fatal: bool,
    /// Messages received from the server, so the watchdog can tell silence from progress.
    heard: u64,
    /// `heard` at the watchdog's last tick, and how many ticks in a row it stayed there
    /// while a request was in flight.
    silence: (u64, u32),
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            conn: None,
            node: 0,
            pending: 0,
            swallow: VecDeque::new(),
            parses: VecDeque::new(),
            failed_parses: Vec::new(),
            closes: VecDeque::new(),
            describes: VecDeque::new(),
            describing: None,
            syncs_sent: 0,
            syncs_seen: 0,
            copy_in: false,
            copy_ended_early: false,
            awaits_sync: false,
            reset_on_release: false,
            last_synced: false,
            retry: None,
            runs: 0,
            refused: None,
            answering: None,
            applied_before: None,
            renamed: None,
            chain_due: 0,
            skipping: false,
            told_fatal: false,
            heard: 0,
            silence: (0, 0),
        }
    }

    /// Called at each watchdog tick: the ticks in a row this connection has owed an
    /// answer and sent nothing.
    fn silent_ticks(&mut self) -> u32 {
        let (at_last_tick, ticks) = self.silence;
        self.silence = if self.conn.is_none() || self.pending == 0 || self.heard != at_last_tick {
            (self.heard, 0)
        } else {
            (self.heard, ticks.saturating_add(1))
        };
        self.silence.1
    }

    /// Matches ParseComplete, CloseComplete and ReadyForQuery against the messages in
    /// flight; true when the reply answers a message pgsplit added (and is dropped).
    /// At ReadyForQuery, a Parse that got no ParseComplete was skipped or failed: the
    /// connection does not hold that statement, and a client's statement by that name
    /// does not exist (left in `failed_parses` for the session to forget).
    fn track_reply(&mut self, tag: u8) -> bool {
        let batch = self.syncs_seen;
        match tag {
            b'1' => self
                .parses
                .pop_front()
                .is_some_and(|p| p.sync == batch && p.ours),
            b'3' => self
                .closes
                .pop_front()
                .is_some_and(|c| c.sync == batch && c.ours),
            b'Z' => {
                while self.parses.front().is_some_and(|p| p.sync == batch) {
                    let Some(failed) = self.parses.pop_front() else {
                        break;
                    };
                    if let Some(lease) = self.conn.as_mut() {
                        match failed.what {
                            ParseOf::Named(id, client) => {
                                lease.statements.remove(id);
                                if let Some(name) = client {
                                    self.failed_parses.push((name, id));
                                }
                            }
                            ParseOf::Unnamed(id) if lease.unnamed == Some(id) => {
                                lease.unnamed = None
                            }
                            ParseOf::Unnamed(_) => {}
                        }
                    }
                }
                while self.closes.front().is_some_and(|c| c.sync == batch) {
                    self.closes.pop_front();
                }
                while self.describes.front().is_some_and(|d| d.sync == batch) {
                    self.describes.pop_front();
                }
                self.describing = None;
                self.syncs_seen += 1;
                false
            }
            _ => false,
        }
    }

    fn open(conn: Lease, node: usize) -> Slot {
        Slot {
            conn: Some(conn),
            node,
            ..Slot::empty()
        }
    }
}

/// A request waiting for what pgsplit sent ahead of it: the settings sync, or a Describe
/// of statements whose shape the client was told ([`AfterSync::described`]).
struct AfterSync {
    conn: Conn,
    begin: Option<String>,
    class: Arc<Classification>,
    request: Request,
    /// Its statements' shapes were asked for: the request goes out even if that failed
    /// (the server then reports the error to the client itself).
    described: bool,
}

/// A unit of client work that goes to one server connection.
#[derive(Clone)]
enum Request {
    /// A simple Query; for `EXECUTE name` of a statement the client prepared at protocol
    /// level, rewritten to name it as the servers do, with that statement (prepared first
    /// where the connection lacks it).
    Query(Frame, Option<(Arc<Statement>, String)>),
    Batch {
        ops: Vec<Op>,
        class: Arc<Classification>,
        sync: bool,
        /// Bytes of the client's messages.
        bytes: usize,
    },
    Function(Frame),
}

/// An extended-protocol message, with the client statement it names resolved (once, when
/// the batch arrives) to what the servers hold.
#[derive(Clone)]
enum Op {
    /// Sent as the client wrote it.
    Forward(Frame),
    /// Parse of the unnamed statement, with the identity of this Parse.
    ParseUnnamed(Frame, u64),
    /// Parse of a named statement (the client's name, and the statement the servers know).
    Parse(String, Arc<Statement>),
    /// Bind, or Describe of a statement, naming a client statement; for a Bind, the result
    /// shape the client was told of it, if it was.
    Uses(Frame, Target, Option<Bytes>),
    /// Bind or Describe naming a statement the client does not have: it must fail as
    /// PostgreSQL would (26000), never find another client's statement on a pooled
    /// connection.
    Unknown(Frame),
    /// Close of a client statement (`None` for the unnamed one).
    Close(Option<String>),
    /// A statement an `EXECUTE` in the batch runs by its server-side name: prepared ahead
    /// where the connection lacks it.
    Needs(Arc<Statement>),
    /// Parse under a name the client holds (the statement it names, and the name): sent
    /// under that statement's server-side name, where it is held, so the server refuses it
    /// as it would the client's (42P05).
    Duplicate(Frame, Arc<Statement>, String),
}

/// How long messages the client sent without Sync or Flush wait for more before they go
/// to a server anyway, when it is not yet known which one (libpq's pipeline mode sends
/// statements and waits for an error that PostgreSQL sends at once). Messages arriving
/// apart, as some drivers write them, are not split over servers by a shorter pause.
/// Why a standby refused a read that runs again on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `25006` (read_only_sql_transaction): the statement writes in a way its text does
    /// not show; its shape goes to the primary from now on.
    Writes,
    /// `42883` or `42P01`: a function or table the standby has not replayed yet (the
    /// catalog is read from the primary, so a new function is known before the
    /// standbys have it); later statements may well run on a standby.
    NotReplayed,
}

impl Refusal {
    /// The refusal an ErrorResponse (its body) from a standby stands for, if it is one;
    /// never a FATAL error, which ends the connection (and is retried as its loss).
    fn of(error: &[u8]) -> Option<Refusal> {
        if is_fatal(error) {
            return None;
        }
        match crate::protocol::ErrorFields::parse(error).code.as_str() {
            "25006" => Some(Refusal::Writes),
            "42883" | "42P01" => Some(Refusal::NotReplayed),
            _ => None,
        }
    }
}

/// How many times an autocommit read is sent at most when servers are lost before it is
/// answered.
const MAX_RUNS: u8 = 3;

/// The most a retryable read's answers may wait before its first row; past it they go
/// to the client and the read is no longer retried (a batch of many Describes).
const EARLY_LIMIT: usize = 64 * 1024;

/// The SQL texts a request runs.
fn request_texts(request: &Request) -> Vec<String> {
    let parse_text = |parse: &[u8]| {
        let mut body = parse.get(5..)?;
        read_cstr(&mut body)?;
        read_cstr(&mut body)
    };
    match request {
        Request::Query(frame, _) => vec![query_text(frame.body()).to_owned()],
        Request::Batch { ops, .. } => ops
            .iter()
            .filter_map(|op| match op {
                Op::Uses(frame, target, _) if frame.tag == b'B' => parse_text(target.parse()),
                _ => None,
            })
            .collect(),
        Request::Function(_) => Vec::new(),
    }
}

const UNSYNCED_WAIT: Duration = Duration::from_millis(5);

/// Messages without Sync or Flush beyond this many bytes go to a server without waiting:
/// a long pipeline (asyncpg's `executemany`) runs as it arrives, so a server error stops
/// the client early, as it does directly, and pgsplit never buffers a whole pipeline.
const UNSYNCED_BATCH_BYTES: usize = 64 * 1024;

/// What PostgreSQL raises when a prepared statement's result shape changed, run where a
/// statement the client described now has another shape, so that the error, and the
/// failed transaction, come from the server as they would directly.
const SHAPE_CHANGED: &str = "DO $pgsplit$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
    MESSAGE = 'cached plan must not change result type'; END$pgsplit$";

/// Whether the statements a request binds have, on the connection that runs it, the
/// result shape the client was told.
enum Shapes {
    Same,
    Changed,
    /// Not described there yet.
    Unknown(Vec<Arc<Statement>>),
}

/// Bytes read ahead of a held request while watching for the client leaving.
const HELD_READ_AHEAD: usize = 64 * 1024;

/// The next lifecycle phase, and the receiver to wait for the one after; `Closing` when
/// the sender is gone (then never again).
async fn next_phase(rx: Option<watch::Receiver<Phase>>) -> (Phase, Option<watch::Receiver<Phase>>) {
    let Some(mut rx) = rx else {
        return std::future::pending().await;
    };
    match rx.changed().await {
        Ok(()) => {
            let now = *rx.borrow_and_update();
            (now, Some(rx))
        }
        Err(_) => (Phase::Closing, None),
    }
}

/// The relay for one authenticated client.
pub struct Relay<'a> {
    client: FrameReader<ClientRead>,
    client_out: ClientWrite,
    shared: &'a Shared,
    startup: Startup,
    /// This client's cancel key, pointed at the server serving it.
    cancel: CancelLink,
    /// Pools this session has used, by server address.
    pools: Vec<(String, Arc<crate::pool::Pool>)>,
    state: RoutingState,
    primary: Slot,
    standby: Slot,
    to_client: BytesMut,
    /// Extended-protocol messages waiting for their Sync or Flush.
    batch: Vec<Frame>,
    batch_bytes: usize,
    /// After a Flush the rest of the batch must follow to the same connection.
    sticky: Option<Conn>,
    /// Whether connections go back to their pools between transactions.
    transaction_pooling: bool,
    /// Whether this client is counted as holding a connection for a pin.
    counted_pinned: bool,
    /// Requests waiting for the connections to finish answering, in the client's order.
    held: VecDeque<Request>,
    /// Connection of the last request (COPY data follows it).
    last: Option<Conn>,
    /// After a failed request that did not end with Sync, client messages are dropped
    /// until its Sync, which gets the ReadyForQuery (as the server itself would do).
    skip_to_sync: bool,
    /// Settings before the open transaction (or the current autocommit request).
    gucs_before: Gucs,
    /// The answer being relayed included a COMMIT: a transaction that ends without one
    /// (ROLLBACK, a COMMIT that failed) undid its SETs.
    committed: bool,
    /// The answer being relayed included an error.
    request_failed: bool,
    /// What the request in flight releases (unpins, DEALLOCATE, DISCARD ALL), applied
    /// once it succeeded.
    releasing: Vec<Effect>,
    /// Releases done inside the open transaction: they happen if it commits.
    txn_releases: Vec<(Conn, Effect)>,
    /// Settings before a request that changed them, restored if that request fails.
    guc_undo: Option<(Conn, Gucs)>,
    /// Standbys that failed this client recently, with when to try them again.
    avoid: Vec<(usize, Instant)>,
    /// A request sent once its connection's settings are in line.
    after_sync: Option<AfterSync>,
    /// The first error of a statement pgsplit injected, with its connection.
    injected_error: Option<(Conn, String)>,
    /// A request that may write was sent to the primary since the last commit.
    wrote: bool,
    /// A function was created, changed or dropped: the catalog is read again once the
    /// change commits.
    functions_changed: bool,
    /// What arrived before the first row of the retryable read in flight (one request is
    /// in flight at a time outside Flush chains, which are not retried): notices and
    /// FATAL errors (a server shutting down says so before it closes, and then the read
    /// is retried instead), ParseComplete, BindComplete and descriptions. Passed on with
    /// the first row or the end of the answer; dropped when the read runs again
    /// elsewhere. Kept here, not per server connection, so its allocation outlives the
    /// pooled connections a session goes through.
    early: BytesMut,
    /// A read a standby refused, to run on the primary now.
    refused: Option<(Request, Arc<Classification>, Refusal)>,
    /// The request being dispatched runs again on the primary after a standby refused
    /// it: it goes there whatever its text classifies as now.
    rerun_on_primary: bool,
    /// Read-your-writes: when this client's last write committed, until a standby is
    /// known to have replayed it.
    written_at: Option<Instant>,
    draining: bool,
    /// Why the request being planned for a standby goes to the primary instead.
    primary_read: Option<Decision>,
    /// Whether this client is counted as holding a server connection.
    counted_active: bool,
    /// Ticks while a server owes an answer or the client idles in a transaction.
    watchdog: Pin<Box<Sleep>>,
    /// `idle_in_transaction_timeout` as the session started; `None` when off.
    idle_in_transaction_timeout: Option<Duration>,
    /// Messages received from the client.
    client_frames: u64,
    /// `client_frames` when a tick first saw the client idle in its transaction, and when.
    idle_mark: Option<(u64, Instant)>,
    /// How many times the request being dispatched ran before (on servers lost before
    /// answering); at [`MAX_RUNS`] it is not retried again.
    runs_before: u8,
    /// Fires when the client has left extended-protocol messages without Sync or Flush
    /// for [`UNSYNCED_WAIT`]: they go to the server then, as PostgreSQL runs them.
    quiet: Pin<Box<Sleep>>,
    quiet_armed: bool,
}

enum Step {
    Continue,
    Done,
}

/// Whether a failure happened before the request reached any server, so the session can
/// answer it as a failed statement and go on.
fn reached_no_server(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::NoPrimary
            | ProxyError::ServerUnavailable { .. }
            | ProxyError::CheckoutTimeout { .. }
            | ProxyError::Server { .. }
    )
}

impl<'a> Relay<'a> {
    /// A relay whose first server connection (primary, or a standby while there is no
    /// primary) is already open.
    pub fn new(
        client: FrameReader<ClientRead>,
        client_out: ClientWrite,
        (first, server, node): (Conn, Lease, usize),
        shared: &'a Shared,
        startup: Startup,
        cancel: CancelLink,
        defaults: Gucs,
    ) -> Self {
        let (primary, standby) = match first {
            Conn::Primary => (Slot::open(server, node), Slot::empty()),
            Conn::Standby => {
                shared.stats.acquire(node);
                (Slot::empty(), Slot::open(server, node))
            }
        };
        Relay {
            client,
            client_out,
            state: RoutingState::new(
                shared.settings.load().raw.routing.transaction_routing,
                defaults,
            ),
            shared,
            startup,
            cancel,
            pools: Vec::new(),
            primary,
            standby,
            to_client: BytesMut::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            sticky: None,
            transaction_pooling: shared.settings.load().raw.pool.mode == PoolMode::Transaction,
            counted_pinned: false,
            held: VecDeque::new(),
            last: None,
            skip_to_sync: false,
            gucs_before: Gucs::new(),
            committed: false,
            request_failed: false,
            releasing: Vec::new(),
            txn_releases: Vec::new(),
            guc_undo: None,
            avoid: Vec::new(),
            after_sync: None,
            injected_error: None,
            wrote: false,
            functions_changed: false,
            early: BytesMut::new(),
            refused: None,
            rerun_on_primary: false,
            written_at: None,
            draining: false,
            primary_read: None,
            counted_active: false,
            watchdog: Box::pin(tokio::time::sleep(Duration::ZERO)),
            idle_in_transaction_timeout: Some(
                shared.settings.load().raw.idle_in_transaction_timeout,
            )
            .filter(|t| !t.is_zero()),
            client_frames: 0,
            idle_mark: None,
            runs_before: 0,
            quiet: Box::pin(tokio::time::sleep(Duration::ZERO)),
            quiet_armed: false,
        }
    }

    fn slot(&mut self, conn: Conn) -> &mut Slot {
        match conn {
            Conn::Primary => &mut self.primary,
            Conn::Standby => &mut self.standby,
        }
    }

    fn slot_ref(&self, conn: Conn) -> &Slot {
        match conn {
            Conn::Primary => &self.primary,
            Conn::Standby => &self.standby,
        }
    }

    /// The connection in COPY FROM STDIN, if any.
    fn copying(&self) -> Option<Conn> {
        if self.primary.copy_in {
            Some(Conn::Primary)
        } else if self.standby.copy_in {
            Some(Conn::Standby)
        } else {
            None
        }
    }

    /// The connection whose extended-protocol COPY waits for the client's Sync, if any.
    fn awaiting_sync(&self) -> Option<Conn> {
        if self.primary.awaits_sync {
            Some(Conn::Primary)
        } else if self.standby.awaits_sync {
            Some(Conn::Standby)
        } else {
            None
        }
    }

    fn busy(&self) -> bool {
        self.primary.pending > 0
            || self.standby.pending > 0
            || !self.batch.is_empty()
            || !self.held.is_empty()
            || self.sticky.is_some()
            || self.copying().is_some()
            || self.awaiting_sync().is_some()
    }

    fn idle(&self) -> bool {
        !self.busy() && self.state.txn.is_none() && !self.state.begin_deferred()
    }

    /// Whether the client has an open transaction and nothing in flight.
    fn idle_in_transaction(&self) -> bool {
        !self.busy() && (self.state.txn.is_some() || self.state.begin_deferred())
    }

    /// Whether the watchdog has something to watch: an answer owed by a server, or a
    /// transaction left open under `idle_in_transaction_timeout`.
    fn watching(&self) -> bool {
        self.primary.pending > 0
            || self.standby.pending > 0
            || (self.idle_in_transaction_timeout.is_some() && self.idle_in_transaction())
    }

    /// A watchdog tick. A server that owes an answer, has sent nothing for a whole tick
    /// and fails the monitor's health checks is given up on: a frozen node would
    /// otherwise hold the client for as long as it stays frozen. A read that has not
    /// started answering goes elsewhere after one failed check; anything else waits for
    /// two in a row, so one slow check on a loaded node does not cost a transaction.
    async fn on_tick(&mut self) -> Result<Step, ProxyError> {
        let tick = {
            let settings = self.shared.settings.load();
            settings
                .raw
                .monitor
                .lag_check_interval
                .clamp(WATCHDOG_TICK.0, WATCHDOG_TICK.1)
        };
        self.watchdog
            .as_mut()
            .reset(tokio::time::Instant::now() + tick);
        if let Some(limit) = self.idle_in_transaction_timeout {
            if self.idle_in_transaction() {
                match self.idle_mark {
                    Some((frames, since)) if frames == self.client_frames => {
                        if since.elapsed() >= limit {
                            return Box::pin(self.end_idle_transaction(limit)).await;
                        }
                    }
                    _ => self.idle_mark = Some((self.client_frames, Instant::now())),
                }
            } else {
                self.idle_mark = None;
            }
        }
        let topology = self.shared.topology.load_full();
        for conn in [Conn::Primary, Conn::Standby] {
            let slot = self.slot(conn);
            if slot.silent_ticks() < 2 {
                continue;
            }
            let Some(node) = topology.nodes.get(slot.node) else {
                continue;
            };
            let Some(ban) = node.ban.as_ref() else {
                continue;
            };
            // A primary that kept its role through one slow check is busy, not gone.
            let needed = if slot.retry.is_some() && node.role != Role::Primary {
                1
            } else {
                2
            };
            if ban.failures >= needed {
                let why = format!(
                    "the server stopped answering and fails its health checks ({})",
                    ban.reason
                );
                tracing::warn!(
                    ?conn,
                    node = slot.node,
                    "{why}: giving up on its connection"
                );
                return Box::pin(self.server_lost(conn, Some(why))).await;
            }
        }
        Ok(Step::Continue)
    }

    /// Ends a session left idle in its transaction too long, as PostgreSQL's
    /// `idle_in_transaction_session_timeout` does; its server connection is rolled back
    /// and reset before anyone else gets it.
    async fn end_idle_transaction(&mut self, limit: Duration) -> Result<Step, ProxyError> {
        tracing::warn!(
            user = %self.startup.user,
            database = %self.startup.database,
            ?limit,
            "client idle in transaction past idle_in_transaction_timeout: ending its session"
        );
        let mut out = std::mem::take(&mut self.to_client);
        encode::error(
            &mut out,
            Severity::Fatal,
            "25P03",
            "terminating connection due to idle-in-transaction timeout",
        );
        let _ = flush_to(&mut self.client_out, &mut out).await;
        let _ = self.client_out.shutdown().await;
        Ok(Step::Done)
    }

    /// Runs until the client leaves, an error ends the session, or shutdown.
    pub async fn run(mut self, phase: &mut watch::Receiver<Phase>) -> Result<(), ProxyError> {
        self.shared.stats.set_connected(true);
        self.release_idle_connections();
        // One wait for the next phase change across all iterations: registering a fresh
        // one per message costs more than relaying a small message.
        let mut phase_change = Box::pin(next_phase(Some(phase.clone())));
        let result = loop {
            self.count_active();
            let accept_client = self.held.is_empty();
            let watching = self.watching();
            // Handlers are boxed so the session's own future stays small while it waits:
            // an idle client costs its sockets and buffers, not the largest handler's state.
            // Biased (no random branch order to draw per message): replies first, then the
            // client, then shutdown, which waits for a pause in a long result anyway.
            let step = tokio::select! {
                biased;
                frame = next_frame(&mut self.primary.conn) => self.on_server_frame(Conn::Primary, frame).await,
                frame = next_frame(&mut self.standby.conn) => self.on_server_frame(Conn::Standby, frame).await,
                // While a request is held no frames are taken, but the client's leaving
                // is still seen (as `None`): else a server that owes nothing (a COPY
                // waiting for data, a request PostgreSQL skips until Sync) would keep the
                // session and its pooled connection for good (found by tests/hostile.rs).
                frame = self.client.next_or_closed(accept_client, HELD_READ_AHEAD) => {
                    self.client_frames += 1;
                    match frame {
                        // Most extended-protocol messages only join their batch: no boxed
                        // handler (an allocation and a copy of its large future) for them.
                        Ok(Some(frame)) if self.joins_batch(&frame) => match self.join_batch(frame) {
                            Ok(Step::Continue)
                                if !self.client.has_buffered()
                                    || self.batch_bytes >= UNSYNCED_BATCH_BYTES =>
                            {
                                Box::pin(self.on_client_pause()).await
                            }
                            step => step,
                        },
                        frame => Box::pin(self.on_client_frame(frame)).await,
                    }
                },
                () = &mut self.quiet, if self.quiet_armed => {
                    self.quiet_armed = false;
                    Box::pin(self.send_unsynced()).await.map(|()| Step::Continue)
                }
                (now, next) = &mut phase_change => {
                    phase_change = Box::pin(next_phase(next));
                    Box::pin(self.on_phase(now)).await
                }
                () = &mut self.watchdog, if watching => self.on_tick().await,
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if self.counted_pinned {
            self.shared.stats.set_pinned(false);
        }
        if self.counted_active {
            self.shared.stats.set_active(false);
        }
        self.shared.stats.set_connected(false);
        self.cancel.clear();
        if let Err(ProxyError::ClientStalled(_)) = result {
            // Closing the connection stops its server only at its next write; a query
            // still computing is stopped now.
            self.cancel_running().await;
        }
        for conn in [Conn::Primary, Conn::Standby] {
            self.return_connection(conn);
        }
        result
    }

    /// Gives a connection back to its pool as the session ends: one still answering is
    /// closed; one in a transaction, or holding pins or SQL PREPAREs, is reset first.
    fn return_connection(&mut self, conn: Conn) {
        let in_txn = self.state.txn == Some(conn);
        let dirty = self.state.holds(conn) || self.slot(conn).reset_on_release;
        let unfinished = {
            let slot = self.slot(conn);
            slot.pending > 0 || slot.copy_in || slot.awaits_sync
        } || self.sticky == Some(conn);
        let Some(lease) = self.take_slot(conn) else {
            return;
        };
        if unfinished {
            drop(lease);
        } else if in_txn || dirty {
            lease.reset_and_release(in_txn);
        } else {
            lease.release();
        }
    }

    /// Empties a slot, handing back its connection; the client's cancel key stops
    /// pointing at it, so a late cancel cannot reach the connection's next user.
    fn take_slot(&mut self, conn: Conn) -> Option<Lease> {
        let slot = std::mem::replace(self.slot(conn), Slot::empty());
        let lease = slot.conn?;
        if conn == Conn::Standby {
            self.shared.stats.release(slot.node);
        }
        self.cancel.unlink(lease.server.key);
        Some(lease)
    }

    /// In transaction pooling, returns every connection the client does not need until
    /// its next request: nothing in flight, no transaction, no pin or SQL PREPARE on it.
    fn release_idle_connections(&mut self) {
        if !self.transaction_pooling {
            return;
        }
        for conn in [Conn::Primary, Conn::Standby] {
            let slot = match conn {
                Conn::Primary => &self.primary,
                Conn::Standby => &self.standby,
            };
            let idle = slot.conn.is_some()
                && slot.pending == 0
                && slot.swallow.is_empty()
                && !slot.copy_in
                && !slot.awaits_sync
                && self.sticky != Some(conn)
                && self.state.txn != Some(conn)
                && !self.state.holds(conn)
                && self.after_sync.as_ref().is_none_or(|a| a.conn != conn);
            if !idle {
                continue;
            }
            let reset = self.slot(conn).reset_on_release;
            if let Some(lease) = self.take_slot(conn) {
                if reset {
                    lease.reset_and_release(false);
                } else {
                    lease.release();
                }
            }
        }
    }

    /// At a request's ReadyForQuery: what it released happened if it succeeded outside a
    /// transaction, or once its transaction commits; a failure or rollback undid it (the
    /// temp table, the LISTEN is still there). DEALLOCATE is the exception: prepared
    /// statements are not transactional, so it happened once it succeeded, whatever its
    /// transaction does later.
    fn settle_releases(&mut self, conn: Conn, status: u8, was_in_txn: bool) {
        let (deallocations, releases): (Vec<_>, Vec<_>) = std::mem::take(&mut self.releasing)
            .into_iter()
            .partition(|e| matches!(e, Effect::Deallocate { .. }));
        let succeeded = !self.request_failed;
        self.request_failed = false;
        let mut done = Vec::new();
        if succeeded && status != b'E' {
            done.extend(deallocations.into_iter().map(|e| (conn, e)));
        }
        match status {
            b'I' => {
                let committed = !was_in_txn || self.committed;
                if was_in_txn {
                    let txn = std::mem::take(&mut self.txn_releases);
                    if committed {
                        done.extend(txn);
                    }
                }
                if succeeded && committed {
                    done.extend(releases.into_iter().map(|e| (conn, e)));
                }
            }
            b'T' if succeeded => self
                .txn_releases
                .extend(releases.into_iter().map(|e| (conn, e))),
            _ => {}
        }
        for (at, effect) in done {
            self.state.release(std::slice::from_ref(&effect), at);
            if matches!(
                effect,
                Effect::DiscardAll | Effect::Deallocate { name: None }
            ) {
                // The client dropped its session state; what lives on its other
                // connection goes too, and that connection is reset before reuse.
                for other in [Conn::Primary, Conn::Standby] {
                    if other != at && self.state.holds(other) {
                        self.state.release(std::slice::from_ref(&effect), other);
                        self.slot(other).reset_on_release = true;
                    }
                }
            }
        }
        self.count_pinned();
    }

    /// Keeps the pinned-clients gauge in line with whether this client holds a
    /// connection between transactions.
    fn count_pinned(&mut self) {
        let pinned = self.transaction_pooling
            && (self.state.holds(Conn::Primary) || self.state.holds(Conn::Standby));
        if pinned != self.counted_pinned {
            self.shared.stats.set_pinned(pinned);
            self.counted_pinned = pinned;
        }
    }

    /// Whether a client message only joins the extended-protocol batch (Parse, Bind,
    /// Describe, Execute, Close before their Sync), which needs no I/O.
    fn joins_batch(&self, frame: &Frame) -> bool {
        matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C')
            && self.copying().is_none()
            && !self.skip_to_sync
    }

    /// Adds a message to the batch that its Sync or Flush sends.
    fn join_batch(&mut self, frame: Frame) -> Result<Step, ProxyError> {
        self.batch_bytes += frame.raw.len();
        self.batch.push(frame);
        if self.batch_bytes > self.client.max_len() {
            return Err(ProxyError::Protocol(
                "too many extended-protocol messages without Sync or Flush".into(),
            ));
        }
        Ok(Step::Continue)
    }

    async fn on_client_frame(
        &mut self,
        frame: Result<Option<Frame>, ProxyError>,
    ) -> Result<Step, ProxyError> {
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.cancel_running().await;
                return Ok(Step::Done);
            }
            Err(e) => {
                self.cancel_running().await;
                if !e.is_disconnect() {
                    let mut out = BytesMut::new();
                    e.encode_fatal(&mut out);
                    let _ = flush_to(&mut self.client_out, &mut out).await;
                }
                return Err(e);
            }
        };
        if self.skip_to_sync && self.copying().is_none() {
            if frame.tag == b'S' {
                self.skip_to_sync = false;
                let status = self.client_status();
                encode::ready_for_query(&mut self.to_client, status);
                flush_to(&mut self.client_out, &mut self.to_client).await?;
            }
            return Ok(Step::Continue);
        }
        match frame.tag {
            b'X' => return Ok(Step::Done),
            // A Query or FunctionCall inside COPY FROM STDIN goes to the server too: it
            // ends the COPY with an error there, as with PostgreSQL alone. Held back like a
            // pipelined query instead, it would wait for the COPY's ReadyForQuery, which
            // waits for data the client never sends: both ends and the pooled connection
            // stuck for good (found by tests/hostile.rs).
            // So do extended-protocol messages: held back, they would wait for the COPY
            // to end, which waits for the client.
            b'H' | b'S' | b'd' | b'c' | b'f' | b'Q' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C'
                if self.copying().is_some() =>
            {
                let conn = self.copying().unwrap_or(Conn::Primary);
                let slot = self.slot(conn);
                if matches!(frame.tag, b'c' | b'f') {
                    slot.copy_in = false;
                    slot.awaits_sync = slot.last_synced;
                }
                tally::received(slot, frame.raw.len());
                // A server that ends the COPY on a message it cannot take there closes
                // (protocol synchronization lost) after saying why: what it said is still
                // to be read and relayed, and its close is handled when read.
                if let Err(e) = write_to(slot, &frame.raw).await {
                    tracing::debug!(error = %e, "write to a server in COPY failed");
                }
            }
            // Messages before them without a Sync run first, as PostgreSQL runs them in
            // the order sent (pgjdbc's autosave sends BEGIN so, then a SAVEPOINT query).
            b'Q' => {
                self.send_unsynced().await?;
                let request = self.query_request(frame);
                self.dispatch(request).await?
            }
            b'F' => {
                self.send_unsynced().await?;
                self.dispatch(Request::Function(frame)).await?
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => return self.join_batch(frame),
            b'S' if self.awaiting_sync().is_some() => {
                let conn = self.awaiting_sync().unwrap_or(Conn::Primary);
                let slot = self.slot(conn);
                slot.awaits_sync = false;
                slot.last_synced = false;
                write_to(slot, &frame.raw).await?;
            }
            b'H' | b'S' => {
                let sync = frame.tag == b'S';
                let bytes = self.batch_bytes + frame.raw.len();
                self.batch.push(frame);
                self.batch_bytes = 0;
                let frames = std::mem::take(&mut self.batch);
                let (ops, class) = self.resolve_batch(frames);
                self.dispatch(Request::Batch {
                    ops,
                    class: Arc::new(class),
                    sync,
                    bytes,
                })
                .await?;
            }
            // COPY data and anything else belongs to the connection of the last request.
            _ => {
                self.send_unsynced().await?;
                let conn = self.last.unwrap_or(Conn::Primary);
                let slot = self.slot(conn);
                if matches!(frame.tag, b'c' | b'f') && slot.pending > 0 {
                    slot.copy_ended_early = true;
                    slot.awaits_sync = slot.last_synced;
                }
                tally::received(slot, frame.raw.len());
                if let Some(lease) = self.slot(conn).conn.as_mut() {
                    lease.server.writer.write_all(&frame.raw).await?;
                    lease.server.writer.flush().await?;
                }
            }
        }
        Ok(Step::Continue)
    }

    /// The client paused after messages without Sync or Flush (or sent many): PostgreSQL
    /// would run them now, and send an error at once. Where they run is known inside a
    /// transaction or a chain; otherwise they wait [`UNSYNCED_WAIT`] for more first.
    async fn on_client_pause(&mut self) -> Result<Step, ProxyError> {
        if self.state.txn.is_some()
            || self.sticky.is_some()
            || self.batch_bytes >= UNSYNCED_BATCH_BYTES
        {
            self.send_unsynced().await?;
        } else {
            self.quiet
                .as_mut()
                .reset(tokio::time::Instant::now() + UNSYNCED_WAIT);
            self.quiet_armed = true;
        }
        Ok(Step::Continue)
    }

    /// Sends the extended-protocol messages received since the last Sync or Flush, as
    /// the start of a chain (the server answers them at the next Sync, Flush or error).
    async fn send_unsynced(&mut self) -> Result<(), ProxyError> {
        self.quiet_armed = false;
        if self.batch.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.batch_bytes);
        let frames = std::mem::take(&mut self.batch);
        let (ops, class) = self.resolve_batch(frames);
        self.dispatch(Request::Batch {
            ops,
            class: Arc::new(class),
            sync: false,
            bytes,
        })
        .await
    }

    /// A Query as a request: `EXECUTE name` of a statement the client prepared at protocol
    /// level runs it under the name it has on the servers, as PostgreSQL runs a protocol
    /// statement by SQL name in the same session.
    fn query_request(&mut self, frame: Frame) -> Request {
        match self.executed_statement(query_text(frame.body())) {
            Some((statement, name, text)) => {
                Request::Query(encode::query_frame(&text), Some((statement, name)))
            }
            None => Request::Query(frame, None),
        }
    }

    /// A Parse of `EXECUTE name` naming a statement the client prepared at protocol
    /// level: that statement, and the Parse rewritten to name it as the servers do.
    fn executing_parse(&self, frame: &Frame) -> Option<(Arc<Statement>, Frame)> {
        let body = frame.body();
        let name_end = body.iter().position(|b| *b == 0)?;
        let rest = &body[name_end + 1..];
        let text_end = rest.iter().position(|b| *b == 0)?;
        // Nothing is copied before the text is known to be an EXECUTE: this runs for
        // every Parse.
        let text = std::str::from_utf8(&rest[..text_end]).ok()?;
        let (statement, _, rewritten) = self.executed_statement(text)?;
        let name = std::str::from_utf8(&body[..name_end]).ok()?;
        let after_text = &rest[text_end + 1..];
        let mut text_and_types = rewritten.into_bytes();
        text_and_types.push(0);
        text_and_types.extend_from_slice(after_text);
        let raw = crate::prepared::encode_parse(name, &text_and_types);
        Some((statement, Frame { tag: b'P', raw }))
    }

    /// For `EXECUTE name` alone, of a statement the client prepared at protocol level
    /// (not by SQL PREPARE): that statement, the client's name, and the text naming it as
    /// the servers do.
    fn executed_statement(&self, text: &str) -> Option<(Arc<Statement>, String, String)> {
        let span = executed_name(text)?;
        let class = self.classify(text);
        let Some(Effect::Execute { name }) = class.effects.first() else {
            return None;
        };
        if class.statements != 1 || self.state.sql_prepared.contains_key(name) {
            return None;
        }
        let Target::Named(statement) = &self.state.statements.get(name)?.target else {
            return None;
        };
        let text = format!(
            "{}{}{}",
            text.get(..span.start)?,
            statement.name,
            text.get(span.end..)?
        );
        Some((Arc::clone(statement), name.clone(), text))
    }

    /// Sends a request, or holds it while an earlier one is still being answered: one
    /// request in flight keeps replies in order and lets pgsplit put its own messages
    /// (settings, deferred BEGIN, re-prepares) in front of a request, never inside another
    /// answer. The batches of a Flush chain go out at once, to the chain's connection.
    async fn dispatch(&mut self, request: Request) -> Result<(), ProxyError> {
        // A Query or FunctionCall after a Flush chain goes to the chain's connection and
        // ends the chain there, as PostgreSQL runs it (or skips it after the chain's
        // error). Held instead, it would wait for a Sync that only it could be followed
        // by, and the client would no longer be read: not even its leaving seen
        // (found by tests/hostile.rs).
        let continues_chain = self.sticky.is_some();
        if !continues_chain
            && (self.primary.pending > 0 || self.standby.pending > 0 || self.sticky.is_some())
        {
            self.held.push_back(request);
            return Ok(());
        }
        if let (Some(conn), Request::Query(..) | Request::Function(_)) = (self.sticky, &request) {
            if !self.chain_settled(conn) {
                // Whether the server runs it or skips it (after an error in the chain)
                // decides whether it is answered: it waits until the chain's answers are
                // in, which a Flush asks for now.
                let mut flush = BytesMut::new();
                encode::flush(&mut flush);
                write_to(self.slot(conn), &flush).await?;
                self.held.push_back(request);
                return Ok(());
            }
        }
        if self.answer_locally(&request).await? {
            return Ok(());
        }
        self.cancel.hold();
        let answered = matches!(
            request,
            Request::Query(..) | Request::Function(_) | Request::Batch { sync: true, .. }
        );
        self.primary_read = None;
        let (plan, class) = self.plan(&request);
        let begins = matches!(plan, Plan::BeginThenSend(..));
        // The client hears of no ParseComplete when the batch reaches no server.
        let parsed: Vec<(String, u64)> = match &request {
            Request::Batch { ops, .. } => ops
                .iter()
                .filter_map(|op| match op {
                    Op::Parse(name, statement) => Some((name.clone(), statement.id)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let result = match self.execute(plan, class, request).await {
            Err(e) if reached_no_server(&e) => {
                for (name, id) in parsed {
                    let held = self.state.statements.get(&name);
                    if held.is_some_and(|p| matches!(&p.target, Target::Named(s) if s.id == id)) {
                        self.state.statements.remove(&name);
                    }
                }
                self.answer_unsent(e, answered, begins).await
            }
            result => result,
        };
        if self.after_sync.is_none() {
            self.cancel.release();
        }
        result
    }

    /// Answers a request that reached no server like a failed statement; the session
    /// carries on.
    async fn answer_unsent(
        &mut self,
        e: ProxyError,
        answered: bool,
        begins: bool,
    ) -> Result<(), ProxyError> {
        self.sticky = None;
        if begins {
            // The client was told BEGIN succeeded: its transaction has now failed.
            self.state.fail_deferred_transaction();
        }
        encode::error(
            &mut self.to_client,
            Severity::Error,
            e.sqlstate(),
            &e.to_string(),
        );
        if answered {
            let status = self.client_status();
            encode::ready_for_query(&mut self.to_client, status);
        } else {
            self.skip_to_sync = true;
        }
        flush_to(&mut self.client_out, &mut self.to_client).await?;
        Ok(())
    }

    /// Answers a batch that only prepares named statements (and perhaps closes some), outside a
    /// transaction, without a server: statements reach a server when first used, so a
    /// client preparing ahead (libpq's PQprepare, pgbench -M prepared) never waits for a
    /// pooled connection, and never deadlocks a pool whose connections are held by
    /// transactions waiting on that same client program. A statement with an error
    /// reports it when first used.
    async fn answer_locally(&mut self, request: &Request) -> Result<bool, ProxyError> {
        let Request::Batch {
            ops, sync: true, ..
        } = request
        else {
            return Ok(false);
        };
        let local = self.state.txn.is_none()
            && self.sticky.is_none()
            && ops.iter().any(|op| matches!(op, Op::Parse(..)))
            && ops.iter().all(|op| match op {
                Op::Parse(..) | Op::Close(Some(_)) => true,
                Op::Forward(frame) => frame.tag == b'S',
                _ => false,
            });
        if !local {
            return Ok(false);
        }
        for op in ops {
            let tag = match op {
                Op::Parse(..) => b'1',
                Op::Close(_) => b'3',
                _ => continue,
            };
            self.to_client.put_u8(tag);
            self.to_client.put_i32(4);
        }
        let status = self.client_status();
        encode::ready_for_query(&mut self.to_client, status);
        flush_to(&mut self.client_out, &mut self.to_client).await?;
        Ok(true)
    }

    /// Sends a request that was held, once nothing is in flight any more.
    async fn release_held(&mut self) -> Result<(), ProxyError> {
        // A Query or FunctionCall sent right behind a COPY FROM STDIN was held before the
        // server said CopyInResponse; held any longer it waits for the COPY's end, which
        // waits for data behind it. It goes to the server now, which ends the COPY with an
        // error as PostgreSQL alone would.
        if let Some(conn) = self.copying() {
            let in_copy = |r: &mut Request| matches!(r, Request::Query(..) | Request::Function(_));
            if let Some(Request::Query(frame, _) | Request::Function(frame)) =
                self.held.pop_front_if(in_copy)
            {
                let slot = self.slot(conn);
                tally::received(slot, frame.raw.len());
                return write_to(slot, &frame.raw).await;
            }
        }
        // In order, each once it can go out (the batches of a chain go out together).
        while !self.held.is_empty()
            && match self.sticky {
                Some(conn) => self.chain_settled(conn),
                None => self.primary.pending == 0 && self.standby.pending == 0,
            }
        {
            if let Some(held) = self.held.pop_front() {
                self.dispatch(held).await?;
            }
        }
        Ok(())
    }

    /// Whether every message of the chain on `conn` has been answered, or the server
    /// skips the rest of it after an error.
    fn chain_settled(&self, conn: Conn) -> bool {
        let slot = self.slot_ref(conn);
        slot.chain_due == 0 || slot.skipping
    }

    fn client_status(&self) -> u8 {
        if self.state.transaction_failed_here() {
            b'E'
        } else if self.state.txn.is_some() || self.state.begin_deferred() {
            b'T'
        } else {
            b'I'
        }
    }

    /// Classifies a request and asks the routing state where it goes.
    fn plan(&mut self, request: &Request) -> (Plan, Arc<Classification>) {
        let open = self.last;
        let lone = match request {
            Request::Query(..) => true,
            Request::Batch { ops, .. } => {
                ops.iter()
                    .filter(|op| matches!(op, Op::Uses(f, ..) if f.tag == b'B'))
                    .count()
                    == 1
            }
            Request::Function(_) => false,
        };
        let (plan, class) = self.plan_request(request, open);
        if self.transaction_pooling
            && self.sticky.is_none()
            && matches!(plan, Plan::Send(_))
            && self
                .state
                .loses_sequence_state(&class, lone && class.statements <= 1)
        {
            let refusal = "currval() and lastval() read the sequence state of the server \
                connection that ran nextval(), which pgsplit's transaction pooling has since \
                handed back: call them in the same transaction or request as the INSERT, use \
                INSERT ... RETURNING, call nextval() explicitly, or use pool mode \"session\"";
            return (Plan::Refuse("0A000", refusal), class);
        }
        (plan, class)
    }

    fn plan_request(
        &mut self,
        request: &Request,
        open: Option<Conn>,
    ) -> (Plan, Arc<Classification>) {
        match request {
            Request::Query(frame, _) => {
                let text = query_text(frame.body());
                let mut class = self.classify(text);
                if self.rerun_on_primary && class.route != Route::Primary {
                    class = Arc::new(class.refused_by_standby());
                }
                let plan = match self.sticky {
                    Some(conn) => Plan::Send(conn),
                    None => self
                        .state
                        .plan_query(&class, text, class.statements == 1, open),
                };
                (plan, class)
            }
            // A FunctionCall names a function by OID only: the primary, or the open transaction.
            Request::Function(_) => {
                let class = Classification::primary();
                let plan = match self.sticky {
                    Some(conn) => Plan::Send(conn),
                    None => self.state.plan_batch(&class, open, true),
                };
                (plan, Arc::new(class))
            }
            Request::Batch {
                class, sync, ops, ..
            } => {
                let executes = ops.iter().any(|op| match op {
                    Op::Uses(f, ..) | Op::Unknown(f) | Op::Forward(f) => f.tag == b'B',
                    _ => false,
                });
                let plan = match self.sticky {
                    Some(conn) => Plan::Send(conn),
                    // Preparing or describing the ROLLBACK that ends a transaction that
                    // failed here: no transaction exists on any server, so any will do.
                    None if self.state.transaction_failed_here() && !executes => {
                        Plan::Send(Conn::Primary)
                    }
                    None => self.state.plan_batch(class, open, *sync),
                };
                (plan, Arc::clone(class))
            }
        }
    }

    fn classify(&self, text: &str) -> Arc<Classification> {
        let functions = self.shared.functions.for_database(&self.startup.database);
        let class = self.shared.classifier.classify(text, &functions);
        self.note_unknown_functions(&class);
        class
    }

    /// As [`Relay::classify`], for the text of a Parse message (looked up as sent first).
    fn classify_parse_text(&self, text: &str) -> Arc<Classification> {
        let functions = self.shared.functions.for_database(&self.startup.database);
        let class = self.shared.classifier.classify_parsed(text, &functions);
        self.note_unknown_functions(&class);
        class
    }

    /// A function the catalog does not know may have been created since it was read.
    fn note_unknown_functions(&self, class: &Classification) {
        if class.unknown_function {
            self.shared.functions.unknown_function();
        }
    }

    /// Resolves a batch once, as it arrives: its route is the strictest of the statements
    /// it parses or executes, its effects those of the statements it executes; Parse and
    /// Close update the client's statements in message order, and every message naming a
    /// statement is tied to what the servers hold for it.
    fn resolve_batch(&mut self, frames: Vec<Frame>) -> (Vec<Op>, Classification) {
        let mut combined = Classification::any();
        let mut ops = Vec::with_capacity(frames.len());
        for frame in frames {
            let op = match frame.tag {
                b'P' => {
                    let frame = match self.executing_parse(&frame) {
                        Some((statement, parse)) => {
                            ops.push(Op::Needs(statement));
                            parse
                        }
                        None => frame,
                    };
                    let mut body = frame.body();
                    let name = read_cstr(&mut body).unwrap_or_default();
                    let text_and_types = body;
                    let mut text = text_and_types;
                    let text = read_cstr(&mut text).unwrap_or_default();
                    let class = self.classify_parse_text(&text);
                    combined.join(&class);
                    if name.is_empty() {
                        let id = self.shared.statements.unnamed_id();
                        let target = Target::Unnamed {
                            parse: frame.raw.clone(),
                            id,
                        };
                        self.state
                            .statements
                            .insert(name, Prepared::new(class, target));
                        Op::ParseUnnamed(frame, id)
                    } else if let Some(Target::Named(held)) =
                        self.state.statements.get(&name).map(|p| &p.target)
                    {
                        // A name in use: PostgreSQL refuses it with 42P05 and keeps the
                        // statement it names.
                        Op::Duplicate(frame.clone(), Arc::clone(held), name)
                    } else {
                        let statement = self.shared.statements.intern(text_and_types);
                        let target = Target::Named(Arc::clone(&statement));
                        self.state
                            .statements
                            .insert(name.clone(), Prepared::new(class, target));
                        Op::Parse(name, statement)
                    }
                }
                b'B' | b'D' => match statement_named(&frame) {
                    Some(name) => match self.state.statements.get(&name) {
                        Some(p) => {
                            let told = if frame.tag == b'B' {
                                combined.join(&p.class);
                                combined.effects.extend(p.class.effects.iter().cloned());
                                p.shape.clone()
                            } else {
                                None
                            };
                            Op::Uses(frame, p.target.clone(), told)
                        }
                        // SQL PREPAREd: on the connection that holds it.
                        None if self.state.sql_prepared.contains_key(&name) => {
                            combined.need_primary(Reason::SessionState);
                            Op::Forward(frame)
                        }
                        // Unknown statement: the server reports the error; send it where writes go.
                        None => {
                            combined.need_primary(Reason::Unclassified);
                            Op::Unknown(frame)
                        }
                    },
                    None => Op::Forward(frame),
                },
                b'C' => match closed_statement(&frame) {
                    Some(name) => {
                        self.state.statements.remove(&name);
                        Op::Close((!name.is_empty()).then_some(name))
                    }
                    None => Op::Forward(frame),
                },
                _ => Op::Forward(frame),
            };
            ops.push(op);
        }
        (ops, combined)
    }

    async fn execute(
        &mut self,
        plan: Plan,
        class: Arc<Classification>,
        request: Request,
    ) -> Result<(), ProxyError> {
        let (conn, begin) = match plan {
            Plan::Send(conn) => (conn, None),
            Plan::BeginThenSend(conn, begin) => (conn, Some(begin)),
            Plan::DeferBegin => {
                let tag = match &request {
                    Request::Query(f, _)
                        if query_text(f.body())
                            .trim_start()
                            .to_ascii_lowercase()
                            .starts_with("start") =>
                    {
                        "START TRANSACTION"
                    }
                    _ => "BEGIN",
                };
                return self.reply_here(tag, b'T').await;
            }
            Plan::EndDeferred(tag) => return self.reply_here(tag, b'I').await,
            Plan::Answer(tag) => {
                let status = self.client_status();
                return self.reply_here(tag, status).await;
            }
            Plan::Refuse(code, message) => {
                encode::error(&mut self.to_client, Severity::Error, code, message);
                if matches!(request, Request::Batch { sync: false, .. }) {
                    self.skip_to_sync = true;
                } else {
                    let status = self.client_status();
                    encode::ready_for_query(&mut self.to_client, status);
                }
                flush_to(&mut self.client_out, &mut self.to_client).await?;
                return Ok(());
            }
        };
        let mid_chain = self.sticky.is_some();
        let for_my_writes = conn == Conn::Standby
            && !mid_chain
            && self.state.txn.is_none()
            && !self.standby_has_my_writes();
        let conn = if for_my_writes {
            self.primary_read = Some(self.why_not_my_writes());
            Conn::Primary
        } else {
            conn
        };
        let conn = if mid_chain {
            conn
        } else {
            match self.ensure_open(conn, class.route).await {
                // The primary went away before the monitor noticed: a read that only went
                // there for read-your-writes is served by a standby rather than failed
                // (this read only: the guarantee holds again for the next one).
                Err(e)
                    if for_my_writes
                        && (e.is_unreachable() || matches!(e, ProxyError::NoPrimary)) =>
                {
                    tracing::warn!(error = %e, "primary unreachable for a read-your-writes read; reading from a standby");
                    let written_at = self.written_at.take();
                    let opened = self.ensure_open(Conn::Standby, class.route).await;
                    self.written_at = written_at;
                    opened?
                }
                result => result?,
            }
        };
        if conn == Conn::Primary && class.route == Route::Primary {
            self.wrote = true;
        }
        if class.effects.contains(&Effect::FunctionsChanged) {
            self.functions_changed = true;
        }
        // An autocommit read can run again elsewhere until its answer starts: nothing
        // of it reached the client, and running it twice changes nothing. Not the end of
        // a Flush chain (its earlier statements would be lost), and a bounded number of
        // times (a pooled connection to a primary that just stopped fails the first
        // retry too; the next one finds it unreachable and reads from a standby).
        let retryable = !mid_chain
            && self.runs_before + 1 < MAX_RUNS
            && begin.is_none()
            && self.state.txn.is_none()
            && !self.state.holds(conn)
            && class.route <= Route::Standby
            && class.effects.is_empty()
            && matches!(
                request,
                Request::Query(..) | Request::Batch { sync: true, .. }
            );
        let runs = self.runs_before + 1;
        let slot = self.slot(conn);
        slot.retry = retryable.then(|| (request.clone(), Arc::clone(&class)));
        slot.runs = runs;
        self.injected_error = None;
        // Inside its transaction the connection has exactly what the client set there;
        // a sync would only fail in an aborted transaction and block its ROLLBACK.
        let in_own_txn = self.state.txn == Some(conn);
        if !mid_chain && !in_own_txn && self.sync_settings(conn).await? {
            // The request waits for the settings: if they fail there (a role or schema
            // not replayed yet), it must not run with the wrong ones.
            self.after_sync = Some(AfterSync {
                conn,
                begin,
                class,
                request,
                described: false,
            });
            return Ok(());
        }
        self.send_request(conn, begin, class, request, false).await
    }

    /// The settings sync ahead of a request answered: send the request; when the sync
    /// failed, never run it with the wrong settings: an autocommit read goes to the
    /// primary instead, anything else gets the error.
    async fn after_settings(&mut self, waiting: AfterSync) -> Result<(), ProxyError> {
        match self.injected_error.take() {
            Some(_) if waiting.described => {
                let AfterSync {
                    conn,
                    begin,
                    class,
                    request,
                    ..
                } = waiting;
                self.send_request(conn, begin, class, request, true).await
            }
            Some(_)
                if waiting.conn == Conn::Standby
                    && self.state.txn.is_none()
                    && waiting.begin.is_none() =>
            {
                let answered = matches!(
                    waiting.request,
                    Request::Query(..) | Request::Function(_) | Request::Batch { sync: true, .. }
                );
                self.primary_read = Some(Decision::FallbackPrimary);
                match self
                    .execute(Plan::Send(Conn::Primary), waiting.class, waiting.request)
                    .await
                {
                    Err(e) if reached_no_server(&e) => self.answer_unsent(e, answered, false).await,
                    result => result,
                }
            }
            Some((_, error)) => {
                let answered = matches!(
                    waiting.request,
                    Request::Query(..) | Request::Function(_) | Request::Batch { sync: true, .. }
                );
                let message = format!(
                    "pgsplit could not apply this session's settings on another server: {error}"
                );
                if waiting.begin.is_some() {
                    self.state.fail_deferred_transaction();
                }
                encode::error(&mut self.to_client, Severity::Error, "08006", &message);
                if answered {
                    let status = self.client_status();
                    encode::ready_for_query(&mut self.to_client, status);
                } else {
                    self.skip_to_sync = true;
                }
                Ok(())
            }
            None => {
                let AfterSync {
                    conn,
                    begin,
                    class,
                    request,
                    described,
                } = waiting;
                self.send_request(conn, begin, class, request, described)
                    .await
            }
        }
    }

    /// Sends a planned request on an open, settings-synced connection. A statement whose
    /// shape the client was told runs only where it still has that shape: where that is
    /// not known yet it is described first (`described` once it was), and where it
    /// differs the client gets PostgreSQL's 0A000, so its driver prepares it again.
    async fn send_request(
        &mut self,
        conn: Conn,
        begin: Option<String>,
        class: Arc<Classification>,
        request: Request,
        described: bool,
    ) -> Result<(), ProxyError> {
        let opens = begin.is_some()
            || class
                .effects
                .iter()
                .any(|e| matches!(e, Effect::Begin { .. }));
        if let Some(begin) = begin {
            self.inject_query(conn, &begin).await?;
        }
        // In a chain the statements' shapes cannot be asked for: a Sync of pgsplit's own
        // would end the chain's implicit transaction.
        let mid_chain = self.sticky == Some(conn);
        // After an error in a chain the server ignores the request: it has no effect.
        let skipped = self.slot(conn).skipping;
        let shapes = if mid_chain {
            Shapes::Same
        } else {
            self.check_shapes(conn, &request)
        };
        let (class, request) = match shapes {
            Shapes::Unknown(statements) if !described => {
                self.describe_first(conn, statements).await?;
                self.after_sync = Some(AfterSync {
                    conn,
                    begin: None,
                    class,
                    request,
                    described: true,
                });
                return Ok(());
            }
            Shapes::Changed => (
                Arc::new(Classification::any()),
                Request::Query(encode::query_frame(SHAPE_CHANGED), None),
            ),
            Shapes::Unknown(_) | Shapes::Same => (class, request),
        };
        self.tally_request(conn, &class, &request);
        if self.state.txn.is_none() {
            self.gucs_before.clone_from(&self.state.gucs);
            // Only a request that opens a transaction needs the record (a clone per
            // autocommit statement would not be free); one not seen opening it rolls
            // back to unknown settings.
            let slot = self.slot(conn);
            slot.applied_before = if opens {
                slot.conn.as_ref().and_then(|c| c.gucs.clone())
            } else {
                None
            };
        }
        if !skipped {
            self.apply_effects(conn, &class);
        }
        let drops_statements = class
            .effects
            .iter()
            .any(|e| matches!(e, Effect::DiscardAll | Effect::Deallocate { name: None }));
        self.shared.stats.record(conn, self.slot(conn).node);
        self.last = Some(conn);
        let pid = self.cancel.pid();
        // Fields borrowed apart: the slot's lease builds the target the link keeps.
        let slot = match conn {
            Conn::Primary => &self.primary,
            Conn::Standby => &self.standby,
        };
        if let Some(lease) = slot.conn.as_ref() {
            self.cancel.point_at(lease.server.key, || {
                lease
                    .serving
                    .store(pid, std::sync::atomic::Ordering::Relaxed);
                CancelTarget {
                    address: lease.server.address.clone(),
                    key: lease.server.key,
                    in_flight: Arc::clone(&lease.server.cancels_in_flight),
                    connected_at: lease.server.connected_at,
                }
            });
        }
        let sent = match request {
            // Ignored by a server skipping to the chain's Sync: no answer comes, and the
            // chain goes on (the client's Sync ends it).
            Request::Query(frame, _) | Request::Function(frame) if skipped => {
                write_to(self.slot(conn), &frame.raw).await
            }
            Request::Query(frame, executes) => {
                // Its ReadyForQuery ends a Flush chain as a Sync would.
                self.sticky = None;
                if let Some((statement, name)) = executes {
                    self.prepare_first(conn, statement, &name).await?;
                }
                self.send_simple(conn, &frame).await
            }
            Request::Function(frame) => {
                self.sticky = None;
                self.send_simple(conn, &frame).await
            }
            Request::Batch { ops, sync, .. } => {
                self.sticky = if sync { None } else { Some(conn) };
                self.send_batch(conn, ops, sync).await
            }
        };
        if sent.is_ok() {
            if let Some(owed) = self.cancel.request_sent() {
                tracing::debug!(server = %owed.address, "sending a cancel request held for this request");
                tokio::spawn(owed.send(self.shared.settings.load().raw.connect_timeout));
            }
        }
        if drops_statements {
            // After the batch is written: statements it used were recorded as held.
            if let Some(lease) = self.slot(conn).conn.as_mut() {
                lease.forget_statements();
            }
        }
        sent
    }

    /// Sends a Query or FunctionCall, answered by its ReadyForQuery.
    async fn send_simple(&mut self, conn: Conn, frame: &Frame) -> Result<(), ProxyError> {
        let slot = self.slot(conn);
        slot.pending += 1;
        slot.syncs_sent += 1;
        slot.last_synced = false;
        if let Some(lease) = slot.conn.as_mut() {
            // A simple Query destroys the unnamed statement on that server.
            lease.unnamed = None;
        }
        write_to(slot, &frame.raw).await
    }

    /// What a request sent to `conn` does to the session and to that connection's
    /// settings, recorded as it goes out (undone if it fails).
    fn apply_effects(&mut self, conn: Conn, class: &Classification) {
        self.committed = false;
        self.request_failed = false;
        if class.effects.iter().any(|e| {
            matches!(
                e,
                Effect::Set { .. } | Effect::Reset { .. } | Effect::ResetAll | Effect::DiscardAll
            )
        }) {
            self.guc_undo = Some((conn, self.state.gucs.clone()));
        }
        let releases = self.state.apply(class, conn);
        self.releasing.extend(releases);
        self.count_pinned();
        if let Some(lease) = self.slot(conn).conn.as_mut() {
            // This connection runs the SETs itself.
            if let Some(applied) = lease.gucs.as_mut() {
                apply_to_server(applied, class);
            }
        }
    }

    /// Answers a request without a server (deferred BEGIN and its empty end).
    async fn reply_here(&mut self, tag: &str, status: u8) -> Result<(), ProxyError> {
        let out = &mut self.to_client;
        out.put_u8(b'C');
        out.put_i32((4 + tag.len() + 1) as i32);
        out.put_slice(tag.as_bytes());
        out.put_u8(0);
        encode::ready_for_query(out, status);
        flush_to(&mut self.client_out, &mut self.to_client).await?;
        Ok(())
    }

    async fn on_server_frame(
        &mut self,
        conn: Conn,
        frame: Result<Option<Frame>, ProxyError>,
    ) -> Result<Step, ProxyError> {
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return Box::pin(self.server_lost(conn, None)).await,
        };
        let injected_done = self.absorb_server_frame(conn, &frame);
        if let Some((request, class, refusal)) = self.refused.take() {
            Box::pin(self.run_refused_on_primary(request, &class, refusal)).await?;
        }
        // The rare and large steps are boxed: this future stays small, as a message that
        // is only forwarded (most of them) should cost no allocation and no big copy.
        if injected_done && self.after_sync.as_ref().is_some_and(|a| a.conn == conn) {
            if let Some(waiting) = self.after_sync.take() {
                Box::pin(self.after_settings(waiting)).await?;
                if self.after_sync.is_none() {
                    self.cancel.release();
                }
            }
        }
        let more = self
            .slot(conn)
            .conn
            .as_ref()
            .is_some_and(|c| c.server.reader.has_frame());
        if !more {
            flush_to(&mut self.client_out, &mut self.to_client).await?;
            if frame.tag == b'Z' {
                self.release_idle_connections();
            }
            if !self.held.is_empty() {
                Box::pin(self.release_held()).await?;
            }
            if self.draining && self.idle() {
                return Box::pin(self.say_goodbye()).await;
            }
        }
        Ok(Step::Continue)
    }

    /// Runs a read a standby refused on the primary. One refused as a write also has
    /// statements of its shape sent there from now on (logged once per shape).
    async fn run_refused_on_primary(
        &mut self,
        request: Request,
        class: &Classification,
        refusal: Refusal,
    ) -> Result<(), ProxyError> {
        if refusal == Refusal::Writes {
            let functions = self.shared.functions.for_database(&self.startup.database);
            for text in request_texts(&request) {
                if self.shared.classifier.refused_by_standby(&text, &functions) {
                    tracing::warn!(
                        statement = %crate::classify::normalize(&text),
                        "a standby refused a read as a write (25006): it runs on the primary, \
                         and statements of this shape go there from now on"
                    );
                }
            }
        }
        let request = match request {
            Request::Batch {
                ops, sync, bytes, ..
            } => {
                if refusal == Refusal::Writes {
                    for op in &ops {
                        if let Op::Uses(frame, target, _) = op {
                            if frame.tag == b'B' {
                                self.state.refused_by_standby(target);
                            }
                        }
                    }
                }
                Request::Batch {
                    ops,
                    class: Arc::new(class.refused_by_standby()),
                    sync,
                    bytes,
                }
            }
            other => other,
        };
        self.runs_before = MAX_RUNS;
        self.rerun_on_primary = true;
        let sent = self.dispatch(request).await;
        self.rerun_on_primary = false;
        self.runs_before = 0;
        sent
    }

    /// What a server message changes in the session, and the message itself queued for
    /// the client unless it answers something pgsplit sent; true when it ended a
    /// statement pgsplit injected.
    fn absorb_server_frame(&mut self, conn: Conn, frame: &Frame) -> bool {
        let in_chain = self.sticky == Some(conn);
        let owes_nothing = !in_chain && self.state.txn != Some(conn);
        let mut ready = None;
        let mut injected_done = false;
        let mut injected_error = None;
        let slot = self.slot(conn);
        if frame.tag == b'S' {
            let mut body = frame.body();
            if let (Some(lease), Some(name), Some(value)) = (
                slot.conn.as_mut(),
                read_cstr(&mut body),
                read_cstr(&mut body),
            ) {
                lease.server.note_parameter(&name, &value);
            }
        }
        slot.heard += 1;
        if slot.chain_due > 0
            && matches!(
                frame.tag,
                b'1' | b'2' | b'3' | b'n' | b'T' | b'C' | b'I' | b's'
            )
        {
            slot.chain_due -= 1;
        }
        match frame.tag {
            b't' => {
                let batch = slot.syncs_seen;
                slot.describing = slot
                    .describes
                    .pop_front()
                    .filter(|d| d.sync == batch)
                    .and_then(|d| d.what);
            }
            b'T' | b'n' => {
                if let Some((id, client)) = slot.describing.take() {
                    if let Some(lease) = slot.conn.as_mut() {
                        lease.statements.set_shape(id, Some(frame.raw.clone()));
                    }
                    if let Some(p) = client.and_then(|name| self.state.statements.get_mut(&name)) {
                        if matches!(&p.target, Target::Named(s) if s.id == id) {
                            p.shape = Some(frame.raw.clone());
                        }
                    }
                }
            }
            _ => {}
        }
        let slot = self.slot(conn);
        let ours = slot.track_reply(frame.tag);
        if !slot.failed_parses.is_empty() {
            let failed_parses = std::mem::take(&mut slot.failed_parses);
            // PostgreSQL creates no statement when its Parse fails; a refused read's
            // Parses run again on the primary, though.
            let rerun = slot.refused.is_some();
            for (name, id) in failed_parses.into_iter().filter(|_| !rerun) {
                let failed = self
                    .state
                    .statements
                    .get(&name)
                    .is_some_and(|p| matches!(&p.target, Target::Named(s) if s.id == id));
                if failed {
                    self.state.statements.remove(&name);
                }
            }
        }
        let (slot, early) = match conn {
            Conn::Primary => (&mut self.primary, &mut self.early),
            Conn::Standby => (&mut self.standby, &mut self.early),
        };
        let swallowed = match (slot.swallow.front().copied(), frame.tag) {
            (None, _) if ours => true,
            // A statement the classifier could not see writing (a view over a function
            // that writes): the client never hears the standby's refusal.
            (None, b'E')
                if conn == Conn::Standby
                    && slot.retry.is_some()
                    && slot.refused.is_none()
                    && Refusal::of(frame.body()).is_some() =>
            {
                slot.refused = Refusal::of(frame.body());
                true
            }
            (Some(Swallow::UntilReady), tag) => {
                if tag == b'E' {
                    let fields = crate::protocol::ErrorFields::parse(frame.body());
                    tracing::warn!(?conn, code = %fields.code, message = %fields.message, "a statement pgsplit sent for the session failed");
                    if let Some(lease) = slot.conn.as_mut() {
                        lease.gucs = None;
                    }
                    injected_error = Some(format!("{} ({})", fields.message, fields.code));
                }
                if tag == b'Z' {
                    slot.swallow.pop_front();
                    slot.pending = slot.pending.saturating_sub(1);
                    injected_done = true;
                }
                true
            }
            // An error from a connection that owes the client nothing (an idle
            // session timeout, a recovery conflict) is not the client's: the loss of
            // the connection that usually follows is handled on its own.
            // So are the answers before the first row (ParseComplete, BindComplete, the
            // statement's description): a read that runs again elsewhere is answered
            // there in full, and the client must not see them twice.
            (None, b'N' | b'E' | b'1' | b'2' | b't' | b'T' | b'n')
                if slot.retry.is_some()
                    && early.len() + frame.raw.len() <= EARLY_LIMIT
                    && (frame.tag != b'E' || is_fatal(frame.body())) =>
            {
                early.extend_from_slice(&frame.raw);
                true
            }
            (None, b'E') if slot.pending == 0 && owes_nothing => {
                let fields = crate::protocol::ErrorFields::parse(frame.body());
                tracing::info!(?conn, code = %fields.code, message = %fields.message, "error from an idle server connection");
                true
            }
            _ => false,
        };
        if !swallowed {
            match frame.tag {
                b'C' if frame.body().starts_with(b"COMMIT") => self.committed = true,
                b'C' if frame.body().starts_with(b"ROLLBACK") => {
                    // ROLLBACK TO SAVEPOINT undoes the SETs since the savepoint, which
                    // are not tracked: the connection's settings are unknown from here.
                    if let Some(lease) = slot.conn.as_mut() {
                        lease.gucs = None;
                    }
                }
                b'Z' => {
                    slot.pending = slot.pending.saturating_sub(1);
                    // Whatever COPY there was ended with its request, and the server takes
                    // messages again.
                    slot.copy_in = false;
                    slot.copy_ended_early = false;
                    slot.awaits_sync = false;
                    slot.skipping = false;
                    slot.chain_due = 0;
                    let status = frame.body().first().copied().unwrap_or(b'I');
                    ready = Some(status);
                    let was_in_txn = self.state.txn.is_some();
                    self.state.ready(conn, status);
                    self.settle_releases(conn, status, was_in_txn);
                    if was_in_txn && status == b'I' && !self.committed {
                        // The server undid the transaction's SETs; so does the session.
                        self.state.gucs.clone_from(&self.gucs_before);
                        // So did the server's own settings: a sync starting over with RESET
                        // ALL would also undo what the session set untracked (set_config
                        // with bound parameters) before the transaction.
                        let slot = self.slot(conn);
                        let before = slot.applied_before.take();
                        if let Some(lease) = slot.conn.as_mut() {
                            lease.gucs = before;
                        }
                    }
                    if status == b'I' && std::mem::take(&mut self.functions_changed) {
                        self.shared.functions.changed();
                    }
                    if conn == Conn::Primary && status == b'I' && self.wrote {
                        self.wrote = false;
                        if self.shared.settings.load().raw.routing.read_your_writes
                            == ReadYourWrites::Session
                        {
                            self.written_at = Some(Instant::now());
                        }
                    }
                    if self.guc_undo.as_ref().is_some_and(|(c, _)| *c == conn)
                        && self.slot(conn).pending == 0
                    {
                        self.guc_undo = None;
                    }
                }
                // The server ignores a Sync that arrives in COPY mode: the ReadyForQuery
                // owed to the batch comes after the client's Sync that follows CopyDone,
                // CopyFail or the server's error, which is sent as part of that batch.
                // A client that sent its data and CopyDone before the server said
                // CopyInResponse (asyncpg does) is not in COPY any more.
                b'G' => slot.copy_in = !std::mem::take(&mut slot.copy_ended_early),
                b'E' => {
                    slot.told_fatal = is_fatal(frame.body());
                    slot.skipping |= in_chain;
                    if slot.copy_in && slot.last_synced {
                        slot.awaits_sync = true;
                    }
                    slot.copy_in = false;
                    self.request_failed = true;
                    if let Some((undo_conn, gucs)) = self.guc_undo.take() {
                        if undo_conn == conn {
                            self.state.gucs = gucs;
                            if let Some(lease) = self.slot(conn).conn.as_mut() {
                                lease.gucs = None;
                            }
                        } else {
                            self.guc_undo = Some((undo_conn, gucs));
                        }
                    }
                }
                _ => {}
            }
            let slot = self.slot(conn);
            if let Some(refusal) = slot.refused {
                if frame.tag == b'Z' {
                    slot.refused = None;
                    slot.answering = None;
                    self.refused = slot
                        .retry
                        .take()
                        .map(|(request, class)| (request, class, refusal));
                    self.early.clear();
                }
                return injected_done;
            }
            let notifier = (frame.tag == b'A')
                .then(|| self.notifier_pid(conn, frame.body()))
                .flatten();
            let slot = self.slot(conn);
            // Only the read that held answers back passes them on.
            let held_back = slot.retry.take().is_some();
            let renamed = match frame.tag {
                b'E' | b'Z' => slot.renamed.take(),
                _ => None,
            };
            let mut sent = frame.raw.len();
            if held_back && !self.early.is_empty() {
                // Copied and cleared, not split off: the buffer keeps its capacity.
                sent += self.early.len();
                self.to_client.extend_from_slice(&self.early);
                self.early.clear();
            }
            let at = self.to_client.len();
            match renamed.filter(|_| frame.tag == b'E') {
                Some((ours, client)) => {
                    let length = rename_in_error(&frame.raw, &ours, &client, &mut self.to_client);
                    sent = sent - frame.raw.len() + length;
                }
                None => self.to_client.extend_from_slice(&frame.raw),
            }
            if let Some(pid) = notifier {
                self.to_client[at + 5..at + 9].copy_from_slice(&pid.to_be_bytes());
            }
            let shared = self.shared;
            tally::sent(self.slot(conn), sent, ready, &shared.stats);
        }
        if let Some(error) = injected_error {
            self.injected_error.get_or_insert((conn, error));
        }
        injected_done
    }

    /// The pid a NotificationResponse should name: the one pgsplit gave the notifying
    /// client, when a server connection of pgsplit's sent it.
    fn notifier_pid(&self, conn: Conn, body: &[u8]) -> Option<i32> {
        let pid = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        let lease = self.slot_ref(conn).conn.as_ref()?;
        if lease.server.key.pid == pid {
            return Some(self.cancel.pid());
        }
        self.shared
            .pools
            .backends()
            .client_pid(&lease.server.address, pid)
    }

    async fn on_phase(&mut self, phase: Phase) -> Result<Step, ProxyError> {
        match phase {
            Phase::Running => Ok(Step::Continue),
            Phase::Draining if !self.idle() => {
                self.draining = true;
                Ok(Step::Continue)
            }
            Phase::Draining | Phase::Closing => {
                self.cancel_running().await;
                self.say_goodbye().await
            }
        }
    }

    async fn say_goodbye(&mut self) -> Result<Step, ProxyError> {
        let mut out = std::mem::take(&mut self.to_client);
        ProxyError::Shutdown.encode_fatal(&mut out);
        flush_to(&mut self.client_out, &mut out).await?;
        let _ = self.client_out.shutdown().await;
        Ok(Step::Done)
    }

    /// Queries still running for a client that left would run to their end on the
    /// server: cancel them so the backends are freed now.
    async fn cancel_running(&self) {
        let timeout = self.shared.settings.load().raw.connect_timeout;
        for slot in [&self.primary, &self.standby] {
            if let (Some(lease), true) = (&slot.conn, slot.pending > 0) {
                let server = &lease.server;
                if let Err(e) = send_cancel(&server.address, server.key, timeout).await {
                    tracing::warn!(error = %e, "could not cancel the query of a departed client");
                }
            }
        }
    }
}
