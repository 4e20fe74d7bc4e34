//! The relay loop: frames from the client are grouped into requests (a Query, or an
//! extended-protocol batch up to Sync or Flush), classified, planned by [`RoutingState`],
//! and sent to the client's primary or standby connection; replies stream back.
//! Messages pgsplit injects itself (setting sync, deferred BEGIN, re-prepares) have their
//! replies swallowed so the client sees exactly what it asked for.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::Startup;
use crate::backend::send_cancel;
use crate::classify::{Classification, Effect};
use crate::clients::CancelLink;
use crate::config::PoolMode;
use crate::context::{Phase, Shared};
use crate::error::ProxyError;
use crate::gucs::Gucs;
use crate::pool::Lease;
use crate::prepared::Statement;
use crate::protocol::{flush_to, read_cstr, Frame, FrameReader};
use crate::route::{Conn, Decision, RoutingState, Target};
use crate::tls::{ClientRead, ClientWrite};
use wire::{is_fatal, next_frame, query_text};

mod dispatch;
mod inject;
mod intake;
mod owed;
mod replies;
mod servers;
mod slot;
mod tally;
mod watchdog;
mod wire;

use dispatch::Outcome;
use inject::Injected;
use intake::Intake;
use owed::{Described, InFlight, ParseOf, Swallow};
use replies::Retries;
use servers::Placement;
use slot::Slot;
use tally::Gauges;
use watchdog::Watch;

/// How long a standby that failed a client is skipped by that client.
const AVOID_FAILED_STANDBY: Duration = Duration::from_secs(10);

/// Bounds on the watchdog's tick, which follows `lag_check_interval` (how soon the
/// monitor can notice a frozen node).
const WATCHDOG_TICK: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// A request waiting for what pgsplit sent ahead of it: the settings sync, or a Describe
/// of statements whose shape the client was told ([`AfterSync::described`]).
struct AfterSync {
    conn: Conn,
    /// Why it goes there, counted when it is sent.
    reason: Decision,
    begin: Option<String>,
    class: Arc<Classification>,
    request: Request,
    /// Its statements' shapes were asked for: the request goes out even if that failed
    /// (the server then reports the error to the client itself).
    described: bool,
}

/// Where a session stands from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Nothing owed either way and no transaction: the session may end, and in
    /// transaction pooling holds no connection it does not need.
    Idle,
    /// Nothing owed either way, inside a transaction (or with a BEGIN held back).
    IdleInTransaction,
    /// A request is being gathered, waits its turn, or is being answered (COPY included).
    Busy,
}

/// Where a planned request ended up.
enum Placed {
    /// On this open connection, for this reason.
    On(Conn, Decision),
    /// Refused here, with this SQLSTATE and message.
    Refused(&'static str, &'static str),
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
    /// pgsplit's replay check ahead of the read failed: the standby had not replayed the
    /// client's write. The read runs on the primary, as a read.
    Behind,
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

/// Run where a statement the client described now has another shape, so that the
/// failed transaction comes from the server as it would directly; its error reaches the
/// client as `SHAPE_CHANGED_ERROR`.
const SHAPE_CHANGED: &str = "DO $pgsplit$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
    MESSAGE = 'cached plan must not change result type'; END$pgsplit$";

/// The fields of PostgreSQL's own error for a changed result shape: drivers key on its
/// routine (asyncpg's InvalidCachedStatementError, pgjdbc's statement cache reset), and
/// the PL/pgSQL context of `SHAPE_CHANGED` is pgsplit's, not the client's. The line
/// number differs between server versions and is left out.
const SHAPE_CHANGED_ERROR: [(u8, &str); 6] = [
    (b'S', "ERROR"),
    (b'V', "ERROR"),
    (b'C', "0A000"),
    (b'M', "cached plan must not change result type"),
    (b'F', "plancache.c"),
    (b'R', "RevalidateCachedQuery"),
];

/// Whether the statements a request binds have, on the connection that runs it, the
/// result shape the client was told.
enum Shapes {
    Same,
    Changed,
    /// Not described there yet.
    Unknown(Vec<Arc<Statement>>),
}

/// How long a leaving client's connections may take to answer pgsplit's own questions
/// before they are closed instead of pooled.
const OWN_ANSWERS_WAIT: Duration = Duration::from_millis(200);

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
    /// The client's connection, and its answers waiting to be written.
    client: ClientConn,
    shared: &'a Shared,
    startup: Startup,
    /// This client's cancel key, pointed at the server serving it.
    cancel: CancelLink,
    state: RoutingState,
    primary: Slot,
    standby: Slot,
    /// After a Flush the rest of the batch must follow to the same connection.
    sticky: Option<Conn>,
    /// Client messages being grouped into requests, and requests waiting their turn.
    intake: Intake,
    /// What the request in flight and the open transaction did, kept until they end.
    outcome: Outcome,
    /// What lets an autocommit read run again elsewhere.
    retries: Retries,
    /// Where reads may go: pools used, standbys avoided, read-your-writes.
    placement: Placement,
    /// What pgsplit sent ahead of a request, and how it went.
    injected: Injected,
    /// The watchdog's timer and marks.
    watch: Watch,
    /// The client's share of the connection gauges.
    gauges: Gauges,
    draining: bool,
}

/// The client's side of the session.
struct ClientConn {
    reader: FrameReader<ClientRead>,
    writer: ClientWrite,
    /// Answers for the client, written at the next flush.
    out: BytesMut,
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
        let settings = shared.settings.load();
        Relay {
            client: ClientConn {
                reader: client,
                writer: client_out,
                out: BytesMut::new(),
            },
            state: RoutingState::new(settings.raw.routing.transaction_routing, defaults),
            shared,
            startup,
            cancel,
            primary,
            standby,
            sticky: None,
            intake: Intake::new(),
            outcome: Outcome::default(),
            retries: Retries::default(),
            placement: Placement::new(settings.raw.pool.mode == PoolMode::Transaction),
            injected: Injected::default(),
            watch: Watch::new(settings.raw.idle_in_transaction_timeout),
            gauges: Gauges::default(),
            draining: false,
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
        if self.primary.owed.copy_in {
            Some(Conn::Primary)
        } else if self.standby.owed.copy_in {
            Some(Conn::Standby)
        } else {
            None
        }
    }

    /// The connection whose extended-protocol COPY waits for the client's Sync, if any.
    fn awaiting_sync(&self) -> Option<Conn> {
        if self.primary.owed.awaits_sync {
            Some(Conn::Primary)
        } else if self.standby.owed.awaits_sync {
            Some(Conn::Standby)
        } else {
            None
        }
    }

    /// Where the session stands from the client's side.
    fn activity(&self) -> Activity {
        let busy = self.primary.owed.pending > 0
            || self.standby.owed.pending > 0
            || !self.intake.batch.is_empty()
            || !self.intake.held.is_empty()
            || self.sticky.is_some()
            || self.copying().is_some()
            || self.awaiting_sync().is_some();
        if busy {
            Activity::Busy
        } else if self.state.txn.is_some() || self.state.begin_deferred() {
            Activity::IdleInTransaction
        } else {
            Activity::Idle
        }
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
            let accept_client = self.intake.held.is_empty();
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
                // session and its pooled connection for good.
                frame = self.client.reader.next_or_closed(accept_client, HELD_READ_AHEAD) => {
                    self.watch.client_frames += 1;
                    match frame {
                        // Most extended-protocol messages only join their batch: no boxed
                        // handler (an allocation and a copy of its large future) for them.
                        Ok(Some(frame)) if self.joins_batch(&frame) => match self.join_batch(frame) {
                            Ok(Step::Continue)
                                if !self.client.reader.has_buffered()
                                    || self.intake.bytes >= UNSYNCED_BATCH_BYTES =>
                            {
                                Box::pin(self.on_client_pause()).await
                            }
                            step => step,
                        },
                        frame => Box::pin(self.on_client_frame(frame)).await,
                    }
                },
                () = &mut self.intake.quiet, if self.intake.quiet_armed => {
                    self.intake.quiet_armed = false;
                    Box::pin(self.send_unsynced()).await.map(|()| Step::Continue)
                }
                (now, next) = &mut phase_change => {
                    phase_change = Box::pin(next_phase(next));
                    Box::pin(self.on_phase(now)).await
                }
                () = &mut self.watch.timer, if watching => self.on_tick().await,
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if self.gauges.pinned {
            self.shared.stats.set_pinned(false);
        }
        if self.gauges.active {
            self.shared.stats.set_active(false);
        }
        self.shared.stats.set_connected(false);
        if result.is_ok() {
            self.finish_own_answers().await;
        }
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

    /// Reads the answers to pgsplit's own questions still in flight as the client leaves
    /// (the WAL position after its last commit), briefly, so the connection goes back to
    /// its pool instead of being closed unfinished.
    async fn finish_own_answers(&mut self) {
        let deadline = Instant::now() + OWN_ANSWERS_WAIT;
        for conn in [Conn::Primary, Conn::Standby] {
            while self.slot(conn).owed.owes_only_own() {
                let next =
                    tokio::time::timeout_at(deadline.into(), next_frame(&mut self.slot(conn).conn));
                match next.await {
                    Ok(Ok(Some(frame))) => {
                        self.absorb_server_frame(conn, &frame);
                    }
                    _ => break,
                }
            }
        }
    }

    /// Gives a connection back to its pool as the session ends: one still answering is
    /// closed; one in a transaction, or holding pins or SQL PREPAREs, is reset first.
    fn return_connection(&mut self, conn: Conn) {
        let in_txn = self.state.txn == Some(conn);
        let dirty = self.state.holds(conn) || self.slot(conn).reset_on_release;
        let unfinished = !self.slot(conn).owed.settled() || self.sticky == Some(conn);
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
        if !self.placement.transaction_pooling {
            return;
        }
        for conn in [Conn::Primary, Conn::Standby] {
            let slot = match conn {
                Conn::Primary => &self.primary,
                Conn::Standby => &self.standby,
            };
            let idle = slot.conn.is_some()
                && slot.owed.pending == 0
                && slot.owed.swallow.is_empty()
                && !slot.owed.copy_in
                && !slot.owed.awaits_sync
                && self.sticky != Some(conn)
                && self.state.txn != Some(conn)
                && !self.state.holds(conn)
                && self
                    .injected
                    .after_sync
                    .as_ref()
                    .is_none_or(|a| a.conn != conn);
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
        let (deallocations, releases): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.outcome.releasing)
                .into_iter()
                .partition(|e| matches!(e, Effect::Deallocate { .. }));
        let succeeded = !self.outcome.request_failed;
        self.outcome.request_failed = false;
        let mut done = Vec::new();
        if succeeded && status != b'E' {
            done.extend(deallocations.into_iter().map(|e| (conn, e)));
        }
        match status {
            b'I' => {
                let committed = !was_in_txn || self.outcome.committed;
                if was_in_txn {
                    let txn = std::mem::take(&mut self.outcome.txn_releases);
                    if committed {
                        done.extend(txn);
                    }
                }
                if succeeded && committed {
                    done.extend(releases.into_iter().map(|e| (conn, e)));
                }
            }
            b'T' if succeeded => self
                .outcome
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
        let pinned = self.placement.transaction_pooling
            && (self.state.holds(Conn::Primary) || self.state.holds(Conn::Standby));
        if pinned != self.gauges.pinned {
            self.shared.stats.set_pinned(pinned);
            self.gauges.pinned = pinned;
        }
    }

    async fn on_phase(&mut self, phase: Phase) -> Result<Step, ProxyError> {
        match phase {
            Phase::Running => Ok(Step::Continue),
            Phase::Draining if self.activity() != Activity::Idle => {
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
        let mut out = std::mem::take(&mut self.client.out);
        ProxyError::Shutdown.encode_fatal(&mut out);
        flush_to(&mut self.client.writer, &mut out).await?;
        let _ = self.client.writer.shutdown().await;
        Ok(Step::Done)
    }

    /// Queries still running for a client that left would run to their end on the
    /// server: cancel them so the backends are freed now.
    async fn cancel_running(&self) {
        let timeout = self.shared.settings.load().raw.connect_timeout;
        for slot in [&self.primary, &self.standby] {
            if let (Some(lease), true) = (&slot.conn, slot.owed.pending > 0) {
                let server = &lease.server;
                if let Err(e) = send_cancel(&server.address, server.key, timeout).await {
                    tracing::warn!(error = %e, "could not cancel the query of a departed client");
                }
            }
        }
    }
}
