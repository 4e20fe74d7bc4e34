//! The relay loop: frames from the client are grouped into requests (a Query, or an
//! extended-protocol batch up to Sync or Flush), classified, planned by [`RoutingState`],
//! and sent to the client's primary or standby connection; replies stream back.
//! Messages pgsplit injects itself (setting sync, deferred BEGIN, re-prepares) have their
//! replies swallowed so the client sees exactly what it asked for.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::state::{Conn, Gucs, Plan, Prepared, RoutingState};
use super::Startup;
use crate::backend::{send_cancel, ServerConn};
use crate::classify::{Classification, Effect, Route};
use crate::config::ReadYourWrites;
use crate::error::ProxyError;
use crate::protocol::{encode, flush_to, read_cstr, BackendKey, Frame, FrameReader, Severity};
use crate::proxy::{CancelTarget, Phase, Shared};
use wire::{closed_statement, is_fatal, next_frame, query_text, statement_named, write_to};

mod inject;
mod servers;
mod wire;

/// How long a standby that failed a client is skipped by that client.
const AVOID_FAILED_STANDBY: Duration = Duration::from_secs(10);

/// A reply pgsplit expects for messages it injected, and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swallow {
    /// Everything up to and including the next ReadyForQuery.
    UntilReady,
}

/// One of the client's server connections and what pgsplit knows about its state.
struct Slot {
    conn: Option<ServerConn>,
    /// Topology index of the node it is connected to.
    node: usize,
    /// ReadyForQuery messages still expected (the client's and injected ones).
    pending: usize,
    swallow: VecDeque<Swallow>,
    /// Settings applied on it; `None` when unknown (after an error), so a sync starts with RESET ALL.
    gucs: Option<Gucs>,
    /// Statements prepared on it ("" = the unnamed one), by the generation of the
    /// client's Parse they came from.
    prepared: HashMap<String, u64>,
    /// In COPY FROM STDIN: client data goes here, and Sync/Flush are ignored by the server.
    copy_in: bool,
    /// Whether the last request sent here ended with Sync.
    last_synced: bool,
    /// An autocommit read whose answer has not started yet: if the server dies now,
    /// it is sent again elsewhere.
    retry: Option<(Request, Arc<Classification>)>,
    /// Notices and FATAL errors that arrived before a retryable read's answer: a server
    /// shutting down says so before it closes, and then the read is retried instead.
    early: BytesMut,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            conn: None,
            node: 0,
            pending: 0,
            swallow: VecDeque::new(),
            gucs: Some(Gucs::new()),
            prepared: HashMap::new(),
            copy_in: false,
            last_synced: false,
            retry: None,
            early: BytesMut::new(),
        }
    }

    fn open(conn: ServerConn, node: usize) -> Slot {
        Slot {
            conn: Some(conn),
            node,
            ..Slot::empty()
        }
    }
}

/// A request waiting for the settings sync sent ahead of it.
struct AfterSync {
    conn: Conn,
    begin: Option<String>,
    class: Arc<Classification>,
    request: Request,
}

/// A unit of client work that goes to one server connection.
#[derive(Clone)]
enum Request {
    Query(Frame),
    Batch { frames: Vec<Frame>, sync: bool },
    Function(Frame),
}

/// The relay for one authenticated client.
pub struct Relay<'a> {
    client: FrameReader<OwnedReadHalf>,
    client_out: OwnedWriteHalf,
    shared: &'a Shared,
    startup: Startup,
    key: BackendKey,
    state: RoutingState,
    primary: Slot,
    standby: Slot,
    to_client: BytesMut,
    /// Extended-protocol messages waiting for their Sync or Flush.
    batch: Vec<Frame>,
    batch_bytes: usize,
    /// After a Flush the rest of the batch must follow to the same connection.
    sticky: Option<Conn>,
    /// A request waiting for the other connection to finish answering.
    held: Option<Request>,
    /// Connection of the last request (COPY data follows it).
    last: Option<Conn>,
    /// Generation of the client's latest Parse.
    generation: u64,
    /// After a failed request that did not end with Sync, client messages are dropped
    /// until its Sync, which gets the ReadyForQuery (as the server itself would do).
    skip_to_sync: bool,
    /// Settings before the open transaction (or the current autocommit request).
    gucs_before: Gucs,
    /// The answer being relayed included a ROLLBACK.
    rolled_back: bool,
    /// Settings before a request that changed them, restored if that request fails.
    guc_undo: Option<(Conn, Gucs)>,
    /// Standbys that failed this client recently, with when to try them again.
    avoid: Vec<(usize, Instant)>,
    /// The server key the client's cancel key currently maps to.
    cancel_points_at: Option<BackendKey>,
    /// A request sent once its connection's settings are in line.
    after_sync: Option<AfterSync>,
    /// The first error of a statement pgsplit injected, with its connection.
    injected_error: Option<(Conn, String)>,
    /// A request that may write was sent to the primary since the last commit.
    wrote: bool,
    /// Read-your-writes: when this client's last write committed, until a standby is
    /// known to have replayed it.
    written_at: Option<Instant>,
    draining: bool,
}

enum Step {
    Continue,
    Done,
}

impl<'a> Relay<'a> {
    /// A relay whose first server connection (primary, or a standby while there is no
    /// primary) is already open.
    pub fn new(
        client: FrameReader<OwnedReadHalf>,
        client_out: OwnedWriteHalf,
        (first, server, node): (Conn, ServerConn, usize),
        shared: &'a Shared,
        startup: Startup,
        key: BackendKey,
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
            state: RoutingState::new(shared.settings.raw.routing.transaction_routing),
            shared,
            startup,
            key,
            primary,
            standby,
            to_client: BytesMut::with_capacity(8192),
            batch: Vec::new(),
            batch_bytes: 0,
            sticky: None,
            held: None,
            last: None,
            generation: 0,
            skip_to_sync: false,
            gucs_before: Gucs::new(),
            rolled_back: false,
            guc_undo: None,
            avoid: Vec::new(),
            cancel_points_at: None,
            after_sync: None,
            injected_error: None,
            wrote: false,
            written_at: None,
            draining: false,
        }
    }

    fn slot(&mut self, conn: Conn) -> &mut Slot {
        match conn {
            Conn::Primary => &mut self.primary,
            Conn::Standby => &mut self.standby,
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

    fn busy(&self) -> bool {
        self.primary.pending > 0
            || self.standby.pending > 0
            || !self.batch.is_empty()
            || self.held.is_some()
            || self.sticky.is_some()
            || self.copying().is_some()
    }

    fn idle(&self) -> bool {
        !self.busy() && self.state.txn.is_none() && !self.state.begin_deferred()
    }

    /// Runs until the client leaves, an error ends the session, or shutdown.
    pub async fn run(mut self, phase: &mut watch::Receiver<Phase>) -> Result<(), ProxyError> {
        let result = loop {
            let accept_client = self.held.is_none();
            let step = tokio::select! {
                frame = self.client.next(), if accept_client => self.on_client_frame(frame).await,
                frame = next_frame(&mut self.primary.conn) => self.on_server_frame(Conn::Primary, frame).await,
                frame = next_frame(&mut self.standby.conn) => self.on_server_frame(Conn::Standby, frame).await,
                changed = phase.changed() => {
                    let now = if changed.is_ok() { *phase.borrow() } else { Phase::Closing };
                    self.on_phase(now).await
                }
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if self.standby.conn.is_some() {
            self.shared.stats.release(self.standby.node);
        }
        for slot in [&mut self.primary, &mut self.standby] {
            if let Some(conn) = slot.conn.take() {
                conn.terminate().await;
            }
        }
        result
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
            b'Q' => self.dispatch(Request::Query(frame)).await?,
            b'F' => self.dispatch(Request::Function(frame)).await?,
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                self.batch_bytes += frame.raw.len();
                self.batch.push(frame);
                if self.batch_bytes > self.shared.settings.raw.max_message_size {
                    return Err(ProxyError::Protocol(
                        "too many extended-protocol messages without Sync or Flush".into(),
                    ));
                }
            }
            b'H' | b'S' | b'd' | b'c' | b'f' if self.copying().is_some() => {
                let conn = self.copying().unwrap_or(Conn::Primary);
                let slot = self.slot(conn);
                if matches!(frame.tag, b'c' | b'f') {
                    slot.copy_in = false;
                }
                write_to(slot, &frame.raw).await?;
            }
            b'H' | b'S' => {
                let sync = frame.tag == b'S';
                self.batch.push(frame);
                self.batch_bytes = 0;
                let frames = std::mem::take(&mut self.batch);
                self.dispatch(Request::Batch { frames, sync }).await?;
            }
            // COPY data and anything else belongs to the connection of the last request.
            _ => {
                let conn = self.last.unwrap_or(Conn::Primary);
                if let Some(server) = self.slot(conn).conn.as_mut() {
                    server.writer.write_all(&frame.raw).await?;
                }
            }
        }
        Ok(Step::Continue)
    }

    /// Sends a request, or holds it while an earlier one is still being answered: one
    /// request in flight keeps replies in order and lets pgsplit put its own messages
    /// (settings, deferred BEGIN, re-prepares) in front of a request, never inside another
    /// answer. The batches of a Flush chain go out at once, to the chain's connection.
    async fn dispatch(&mut self, request: Request) -> Result<(), ProxyError> {
        let continues_chain = self.sticky.is_some() && matches!(request, Request::Batch { .. });
        if !continues_chain
            && (self.primary.pending > 0 || self.standby.pending > 0 || self.sticky.is_some())
        {
            self.held = Some(request);
            return Ok(());
        }
        let answered = matches!(
            request,
            Request::Query(_) | Request::Function(_) | Request::Batch { sync: true, .. }
        );
        let (plan, class) = self.plan(&request);
        match self.execute(plan, class, request).await {
            Ok(()) => Ok(()),
            // Nothing reached a server: answer like a failed statement and carry on.
            Err(
                e @ (ProxyError::NoPrimary
                | ProxyError::ServerUnavailable { .. }
                | ProxyError::Server { .. }),
            ) => {
                self.sticky = None;
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
            Err(e) => Err(e),
        }
    }

    /// Sends a request that was held, once nothing is in flight any more.
    async fn release_held(&mut self) -> Result<(), ProxyError> {
        if self.primary.pending == 0 && self.standby.pending == 0 {
            if let Some(held) = self.held.take() {
                self.dispatch(held).await?;
            }
        }
        Ok(())
    }

    fn client_status(&self) -> u8 {
        if self.state.txn.is_some() || self.state.begin_deferred() {
            b'T'
        } else {
            b'I'
        }
    }

    /// Classifies a request and asks the routing state where it goes.
    fn plan(&mut self, request: &Request) -> (Plan, Arc<Classification>) {
        let open = self.last;
        match request {
            Request::Query(frame) => {
                let text = query_text(frame.body());
                let class = self.classify(text);
                let plan = self
                    .state
                    .plan_query(&class, text, class.statements == 1, open);
                (plan, class)
            }
            // A FunctionCall names a function by OID only: the primary, or the open transaction.
            Request::Function(_) => {
                let class = Classification::primary();
                (self.state.plan_batch(&class, open, true), Arc::new(class))
            }
            Request::Batch { frames, sync } => {
                let class = self.classify_batch(frames);
                let plan = match self.sticky {
                    Some(conn) => Plan::Send(conn),
                    None => self.state.plan_batch(&class, open, *sync),
                };
                (plan, Arc::new(class))
            }
        }
    }

    fn classify(&self, text: &str) -> Arc<Classification> {
        let functions = self.shared.functions.for_database(&self.startup.database);
        self.shared.classifier.classify(text, &functions)
    }

    /// The route of a batch is the strictest of the statements it parses or executes;
    /// its effects are those of the statements it executes. Parse and Close update the
    /// client's statement registry in message order.
    fn classify_batch(&mut self, frames: &[Frame]) -> Classification {
        let mut combined = Classification::any();
        for frame in frames {
            match frame.tag {
                b'P' => {
                    let mut body = frame.body();
                    let name = read_cstr(&mut body).unwrap_or_default();
                    let text = read_cstr(&mut body).unwrap_or_default();
                    let class = self.classify(&text);
                    combined.route = combined.route.max(class.route);
                    self.generation += 1;
                    let prepared = Prepared {
                        class,
                        parse: frame.raw.clone(),
                        generation: self.generation,
                    };
                    self.state.statements.insert(name, prepared);
                }
                b'B' => {
                    match statement_named(frame).and_then(|name| self.state.statements.get(&name)) {
                        Some(p) => {
                            combined.route = combined.route.max(p.class.route);
                            combined.effects.extend(p.class.effects.iter().cloned());
                        }
                        // Unknown statement: the server will report the error; send it where writes go.
                        None => combined.route = Route::Primary,
                    }
                }
                b'C' => {
                    if let Some(name) = closed_statement(frame) {
                        self.state.statements.remove(&name);
                    }
                }
                _ => {}
            }
        }
        combined
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
                    Request::Query(f)
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
        };
        let mid_chain = self.sticky.is_some();
        let conn =
            if conn == Conn::Standby && self.state.txn.is_none() && !self.standby_has_my_writes() {
                Conn::Primary
            } else {
                conn
            };
        let conn = if mid_chain {
            conn
        } else {
            self.ensure_open(conn, class.route).await?
        };
        if conn == Conn::Primary && class.route == Route::Primary {
            self.wrote = true;
        }
        let retryable = conn == Conn::Standby
            && begin.is_none()
            && self.state.txn.is_none()
            && class.route <= Route::Standby
            && class.effects.is_empty()
            && matches!(
                request,
                Request::Query(_) | Request::Batch { sync: true, .. }
            );
        self.standby.retry = retryable.then(|| (request.clone(), Arc::clone(&class)));
        self.injected_error = None;
        if !mid_chain && self.sync_settings(conn).await? {
            // The request waits for the settings: if they fail there (a role or schema
            // not replayed yet), it must not run with the wrong ones.
            self.after_sync = Some(AfterSync {
                conn,
                begin,
                class,
                request,
            });
            return Ok(());
        }
        self.send_request(conn, begin, class, request).await
    }

    /// The settings sync ahead of a request answered: send the request; when the sync
    /// failed, never run it with the wrong settings: an autocommit read goes to the
    /// primary instead, anything else gets the error.
    async fn after_settings(&mut self, waiting: AfterSync) -> Result<(), ProxyError> {
        match self.injected_error.take() {
            Some(_)
                if waiting.conn == Conn::Standby
                    && self.state.txn.is_none()
                    && waiting.begin.is_none() =>
            {
                self.execute(Plan::Send(Conn::Primary), waiting.class, waiting.request)
                    .await
            }
            Some((_, error)) => {
                let answered = matches!(
                    waiting.request,
                    Request::Query(_) | Request::Function(_) | Request::Batch { sync: true, .. }
                );
                let message = format!(
                    "pgsplit could not apply this session's settings on another server: {error}"
                );
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
                } = waiting;
                self.send_request(conn, begin, class, request).await
            }
        }
    }

    /// Sends a planned request on an open, settings-synced connection.
    async fn send_request(
        &mut self,
        conn: Conn,
        begin: Option<String>,
        class: Arc<Classification>,
        request: Request,
    ) -> Result<(), ProxyError> {
        if let Some(begin) = begin {
            self.inject_query(conn, &begin).await?;
        }
        if self.state.txn.is_none() {
            self.gucs_before.clone_from(&self.state.gucs);
        }
        self.rolled_back = false;
        if class.effects.iter().any(|e| {
            matches!(
                e,
                Effect::Set { .. } | Effect::Reset { .. } | Effect::ResetAll | Effect::DiscardAll
            )
        }) {
            self.guc_undo = Some((conn, self.state.gucs.clone()));
        }
        self.state.apply(&class, conn);
        if !class.effects.is_empty() {
            // This connection runs the SETs itself.
            let wanted = self.state.gucs.clone();
            let slot = self.slot(conn);
            if slot.gucs.is_some() {
                slot.gucs = Some(wanted);
            }
        }
        self.shared.stats.record(conn, self.slot(conn).node);
        self.last = Some(conn);
        let server_key = self.slot(conn).conn.as_ref().map(|c| c.key);
        if server_key.is_some() && server_key != self.cancel_points_at {
            if let Some(c) = self.slot(conn).conn.as_ref() {
                let target = CancelTarget {
                    address: c.address.clone(),
                    key: c.key,
                };
                self.shared.cancels.update(self.key, target);
            }
            self.cancel_points_at = server_key;
        }
        match request {
            Request::Query(frame) | Request::Function(frame) => {
                let slot = self.slot(conn);
                slot.pending += 1;
                slot.last_synced = false;
                // A simple Query destroys the unnamed statement on that server.
                slot.prepared.remove("");
                write_to(slot, &frame.raw).await
            }
            Request::Batch { frames, sync } => {
                self.sticky = if sync { None } else { Some(conn) };
                self.send_batch(conn, frames, sync).await
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
            Ok(None) | Err(_) => return self.server_lost(conn).await,
        };
        let owes_nothing = self.sticky != Some(conn) && self.state.txn != Some(conn);
        let mut injected_done = false;
        let mut injected_error = None;
        let slot = self.slot(conn);
        let swallowed = match (slot.swallow.front().copied(), frame.tag) {
            (Some(Swallow::UntilReady), tag) => {
                if tag == b'E' {
                    let fields = crate::protocol::ErrorFields::parse(frame.body());
                    tracing::warn!(?conn, code = %fields.code, message = %fields.message, "a statement pgsplit sent for the session failed");
                    slot.gucs = None;
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
            (None, b'N' | b'E')
                if slot.retry.is_some() && (frame.tag == b'N' || is_fatal(frame.body())) =>
            {
                slot.early.extend_from_slice(&frame.raw);
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
                b'C' if frame.body().starts_with(b"ROLLBACK") => self.rolled_back = true,
                b'Z' => {
                    slot.pending = slot.pending.saturating_sub(1);
                    let status = frame.body().first().copied().unwrap_or(b'I');
                    let was_in_txn = self.state.txn.is_some();
                    self.state.ready(conn, status);
                    if was_in_txn && status == b'I' && self.rolled_back {
                        // The server undid the transaction's SETs; so does the session.
                        self.state.gucs.clone_from(&self.gucs_before);
                        let before = self.gucs_before.clone();
                        self.slot(conn).gucs = Some(before);
                    }
                    if conn == Conn::Primary && status == b'I' && self.wrote {
                        self.wrote = false;
                        if self.shared.settings.raw.routing.read_your_writes
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
                b'G' => {
                    slot.copy_in = true;
                    // The server ignores a Sync that arrives in COPY mode: the batch's own
                    // Sync gets no ReadyForQuery; the one after CopyDone does.
                    if slot.last_synced {
                        slot.pending = slot.pending.saturating_sub(1);
                        slot.last_synced = false;
                    }
                }
                b'E' => {
                    slot.copy_in = false;
                    if let Some((undo_conn, gucs)) = self.guc_undo.take() {
                        if undo_conn == conn {
                            self.state.gucs = gucs;
                            self.slot(conn).gucs = None;
                        } else {
                            self.guc_undo = Some((undo_conn, gucs));
                        }
                    }
                }
                _ => {}
            }
            let slot = self.slot(conn);
            slot.retry = None;
            if !slot.early.is_empty() {
                let early = slot.early.split();
                self.to_client.extend_from_slice(&early);
            }
            self.to_client.extend_from_slice(&frame.raw);
        }
        if let Some(error) = injected_error {
            self.injected_error.get_or_insert((conn, error));
        }
        if injected_done && self.after_sync.as_ref().is_some_and(|a| a.conn == conn) {
            if let Some(waiting) = self.after_sync.take() {
                self.after_settings(waiting).await?;
            }
        }
        let more = self
            .slot(conn)
            .conn
            .as_ref()
            .is_some_and(|c| c.reader.has_frame());
        if !more {
            flush_to(&mut self.client_out, &mut self.to_client).await?;
            self.release_held().await?;
            if self.draining && self.idle() {
                return self.say_goodbye().await;
            }
        }
        Ok(Step::Continue)
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
        let timeout = self.shared.settings.raw.connect_timeout;
        for slot in [&self.primary, &self.standby] {
            if let (Some(server), true) = (&slot.conn, slot.pending > 0) {
                if let Err(e) = send_cancel(&server.address, server.key, timeout).await {
                    tracing::warn!(error = %e, "could not cancel the query of a departed client");
                }
            }
        }
    }
}
