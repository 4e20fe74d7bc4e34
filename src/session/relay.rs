//! The relay loop: frames from the client are grouped into requests (a Query, or an
//! extended-protocol batch up to Sync or Flush), classified, planned by [`RoutingState`],
//! and sent to the client's primary or standby connection; replies stream back.
//! Messages pgsplit injects itself (setting sync, deferred BEGIN, re-prepares) have their
//! replies swallowed so the client sees exactly what it asked for.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::state::{guc_sync_sql, Conn, Gucs, Plan, Prepared, RoutingState};
use super::Startup;
use crate::backend::{send_cancel, Login, ServerConn};
use crate::balance::{pick_read, ReadTarget};
use crate::classify::{Classification, Effect, Route};
use crate::config::ReadYourWrites;
use crate::error::ProxyError;
use crate::protocol::{encode, flush_to, read_cstr, BackendKey, Frame, FrameReader, Severity};
use crate::proxy::{CancelTarget, Phase, Shared};
use crate::topology::Role;

/// How long a standby that failed a client is skipped by that client.
const AVOID_FAILED_STANDBY: Duration = Duration::from_secs(10);

/// A reply pgsplit expects for a message it injected, and drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swallow {
    /// Everything up to and including the next ReadyForQuery.
    UntilReady,
    /// One ParseComplete.
    ParseComplete,
    /// One CloseComplete.
    CloseComplete,
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
    /// Named statements prepared on it.
    prepared: HashSet<String>,
    /// Which version of the unnamed statement it holds.
    unnamed: Option<u64>,
    /// In COPY FROM STDIN: client data goes here, and Sync/Flush are ignored by the server.
    copy_in: bool,
    /// Whether the last request sent here ended with Sync.
    last_synced: bool,
    /// An autocommit read whose answer has not started yet: if the server dies now,
    /// it is sent again elsewhere.
    retry: Option<(Request, Arc<Classification>)>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            conn: None,
            node: 0,
            pending: 0,
            swallow: VecDeque::new(),
            gucs: Some(Gucs::new()),
            prepared: HashSet::new(),
            unnamed: None,
            copy_in: false,
            last_synced: false,
            retry: None,
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
    /// After a Flush the rest of the batch must follow to the same connection.
    sticky: Option<Conn>,
    /// A request waiting for the other connection to finish answering.
    held: Option<Request>,
    /// Connection of the last request (COPY data follows it).
    last: Option<Conn>,
    unnamed_version: u64,
    /// Settings before a request that changed them, restored if that request fails.
    guc_undo: Option<(Conn, Gucs)>,
    /// Standbys that failed this client recently, with when to try them again.
    avoid: Vec<(usize, Instant)>,
    /// The server key the client's cancel key currently maps to.
    cancel_points_at: Option<BackendKey>,
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
    /// A relay whose primary connection is already open.
    pub fn new(
        client: FrameReader<OwnedReadHalf>,
        client_out: OwnedWriteHalf,
        primary: ServerConn,
        primary_node: usize,
        shared: &'a Shared,
        startup: Startup,
        key: BackendKey,
    ) -> Self {
        Relay {
            client,
            client_out,
            state: RoutingState::new(shared.settings.raw.routing.transaction_routing),
            shared,
            startup,
            key,
            primary: Slot::open(primary, primary_node),
            standby: Slot::empty(),
            to_client: BytesMut::with_capacity(8192),
            batch: Vec::new(),
            sticky: None,
            held: None,
            last: None,
            unnamed_version: 0,
            guc_undo: None,
            avoid: Vec::new(),
            cancel_points_at: None,
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
        match frame.tag {
            b'X' => return Ok(Step::Done),
            b'Q' => self.dispatch(Request::Query(frame)).await?,
            b'F' => self.dispatch(Request::Function(frame)).await?,
            b'P' | b'B' | b'D' | b'E' | b'C' => self.batch.push(frame),
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

    /// Sends a request, or holds it while the other connection still owes replies
    /// (replies must reach the client in request order).
    async fn dispatch(&mut self, request: Request) -> Result<(), ProxyError> {
        match self.plan(&request) {
            Ok((plan, class)) => {
                let target = match &plan {
                    Plan::Send(conn) | Plan::BeginThenSend(conn, _) => Some(*conn),
                    _ => None,
                };
                let other_busy = match target {
                    Some(Conn::Primary) => self.standby.pending > 0,
                    Some(Conn::Standby) => self.primary.pending > 0,
                    None => self.primary.pending > 0 || self.standby.pending > 0,
                };
                if other_busy {
                    self.held = Some(request);
                    return Ok(());
                }
                self.execute(plan, class, request).await
            }
            Err(e) => {
                // Nothing reached a server: answer like a failed statement and carry on.
                let mut out = BytesMut::new();
                encode::error(&mut out, Severity::Error, e.sqlstate(), &e.to_string());
                if matches!(request, Request::Query(_))
                    || matches!(request, Request::Batch { sync: true, .. })
                {
                    encode::ready_for_query(&mut out, self.client_status());
                }
                flush_to(&mut self.client_out, &mut out).await?;
                Ok(())
            }
        }
    }

    fn client_status(&self) -> u8 {
        if self.state.txn.is_some() || self.state.begin_deferred() {
            b'T'
        } else {
            b'I'
        }
    }

    /// Classifies a request and asks the routing state where it goes.
    fn plan(&mut self, request: &Request) -> Result<(Plan, Arc<Classification>), ProxyError> {
        let open = self.last;
        match request {
            Request::Query(frame) => {
                let text = query_text(frame.body());
                let class = self.classify(text);
                let plan = self
                    .state
                    .plan_query(&class, text, class.statements == 1, open);
                Ok((plan, class))
            }
            // A FunctionCall names a function by OID only: the primary, or the open transaction.
            Request::Function(_) => {
                let class = Classification::primary();
                Ok((self.state.plan_batch(&class, open), Arc::new(class)))
            }
            Request::Batch { frames, .. } => {
                if let Some(conn) = self.sticky {
                    return Ok((Plan::Send(conn), Arc::new(Classification::any())));
                }
                let class = self.classify_batch(frames);
                let plan = self.state.plan_batch(&class, open);
                Ok((plan, Arc::new(class)))
            }
        }
    }

    fn classify(&self, text: &str) -> Arc<Classification> {
        let functions = self.shared.functions.for_database(&self.startup.database);
        self.shared.classifier.classify(text, &functions)
    }

    /// The route of a batch is the strictest of the statements it parses or executes;
    /// its effects are those of the statements it executes.
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
                    self.state.statements.insert(
                        name,
                        Prepared {
                            class,
                            parse: frame.raw.clone(),
                        },
                    );
                }
                b'B' => {
                    let mut body = frame.body();
                    let _portal = read_cstr(&mut body);
                    let name = read_cstr(&mut body).unwrap_or_default();
                    match self.state.statements.get(&name) {
                        Some(p) => {
                            combined.route = combined.route.max(p.class.route);
                            combined.effects.extend(p.class.effects.iter().cloned());
                        }
                        // Unknown statement: the server will report the error; send it where writes go.
                        None => combined.route = Route::Primary,
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
            Plan::DeferBegin => return self.reply_here("BEGIN", b'T').await,
            Plan::EndDeferred(tag) => return self.reply_here(tag, b'I').await,
        };
        let conn =
            if conn == Conn::Standby && self.state.txn.is_none() && !self.standby_has_my_writes() {
                Conn::Primary
            } else {
                conn
            };
        let conn = self.ensure_open(conn, class.route).await?;
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
        self.sync_settings(conn).await?;
        if let Some(begin) = begin {
            self.inject_query(conn, &begin).await?;
        }
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
                slot.unnamed = None;
                write_to(slot, &frame.raw).await
            }
            Request::Batch { frames, sync } => {
                self.sticky = if sync { None } else { Some(conn) };
                self.send_batch(conn, frames, sync).await
            }
        }
    }

    /// Forwards a batch, first preparing statements the connection lacks and closing
    /// stale ones whose names the client reuses.
    async fn send_batch(
        &mut self,
        conn: Conn,
        frames: Vec<Frame>,
        sync: bool,
    ) -> Result<(), ProxyError> {
        let mut out = BytesMut::new();
        let mut swallow = Vec::new();
        for frame in &frames {
            match frame.tag {
                b'P' => {
                    let mut body = frame.body();
                    let name = read_cstr(&mut body).unwrap_or_default();
                    let slot = self.slot(conn);
                    if name.is_empty() {
                        self.unnamed_version += 1;
                        let version = self.unnamed_version;
                        self.slot(conn).unnamed = Some(version);
                    } else if !slot.prepared.insert(name.clone()) {
                        encode_close_statement(&mut out, &name);
                        swallow.push(Swallow::CloseComplete);
                    }
                }
                b'B' | b'D' => {
                    let name = statement_named(frame);
                    if let Some(name) = name {
                        self.ensure_prepared(conn, &name, &mut out, &mut swallow);
                    }
                }
                b'C' => {
                    let mut body = frame.body();
                    if body.first() == Some(&b'S') {
                        body = &body[1..];
                        let name = read_cstr(&mut body).unwrap_or_default();
                        self.slot(conn).prepared.remove(&name);
                        self.state.statements.remove(&name);
                    }
                }
                _ => {}
            }
            out.extend_from_slice(&frame.raw);
        }
        let slot = self.slot(conn);
        slot.swallow.extend(swallow);
        slot.last_synced = sync;
        if sync {
            slot.pending += 1;
        }
        write_to(slot, &out).await
    }

    fn ensure_prepared(
        &mut self,
        conn: Conn,
        name: &str,
        out: &mut BytesMut,
        swallow: &mut Vec<Swallow>,
    ) {
        let Some(prepared) = self.state.statements.get(name) else {
            return;
        };
        let parse = prepared.parse.clone();
        let version = self.unnamed_version;
        let slot = self.slot(conn);
        let present = if name.is_empty() {
            slot.unnamed == Some(version)
        } else {
            slot.prepared.contains(name)
        };
        if !present {
            out.extend_from_slice(&parse);
            swallow.push(Swallow::ParseComplete);
            if name.is_empty() {
                slot.unnamed = Some(version);
            } else {
                slot.prepared.insert(name.to_owned());
            }
        }
    }

    /// Opens the connection a plan needs; a standby that cannot be reached is skipped
    /// for another one, then for the primary (reads only).
    async fn ensure_open(&mut self, conn: Conn, route: Route) -> Result<Conn, ProxyError> {
        if conn == Conn::Primary {
            return self.ensure_primary().await;
        }
        let topology = self.shared.topology.load();
        if let Some(server) = &self.standby.conn {
            // A transaction (or a reply in flight) finishes where it started.
            let committed = self.state.txn == Some(Conn::Standby) || self.standby.pending > 0;
            let still_standby = topology.nodes.get(self.standby.node).is_some_and(|n| {
                n.role == Role::Standby && n.eligible && n.node.address == server.address
            });
            if committed || still_standby {
                return Ok(Conn::Standby);
            }
            if let Some(old) = self.standby.conn.take() {
                old.terminate().await;
            }
            self.shared.stats.release(self.standby.node);
        }
        let routing = &self.shared.settings.raw.routing;
        let now = Instant::now();
        self.avoid.retain(|(_, until)| *until > now);
        let mut exclude: Vec<usize> = self.avoid.iter().map(|(node, _)| *node).collect();
        if let Some(since) = self.written_at {
            exclude
                .extend((0..topology.nodes.len()).filter(|i| !topology.replayed_since(*i, since)));
        }
        loop {
            let target = pick_read(
                &topology,
                routing.balance_strategy,
                routing.primary_reads,
                &exclude,
                &self.shared.stats.outstanding(),
                self.shared.stats.next_turn(),
                rand::random(),
            );
            let index = match target {
                ReadTarget::Standby(i) => i,
                ReadTarget::Primary => return self.ensure_primary().await,
                ReadTarget::Nowhere if route == Route::Any => return self.ensure_primary().await,
                ReadTarget::Nowhere => {
                    return Err(ProxyError::ServerUnavailable {
                        addr: "standbys".into(),
                        reason: "no standby is available and primary_reads = \"never\"".into(),
                    })
                }
            };
            match self.connect(&topology.nodes[index].node.address).await {
                Ok(server) => {
                    self.standby = Slot::open(server, index);
                    self.shared.stats.acquire(index);
                    return Ok(Conn::Standby);
                }
                Err(e) => {
                    tracing::warn!(node = %topology.nodes[index].node.name, error = %e, "standby unreachable; trying another node");
                    exclude.push(index);
                    self.avoid.push((index, now + AVOID_FAILED_STANDBY));
                }
            }
        }
    }

    /// Read-your-writes: whether a standby may serve this client's next read. After a
    /// write commits, only a standby that has replayed the primary's WAL position sampled
    /// after that commit may; until one has, reads go to the primary.
    fn standby_has_my_writes(&mut self) -> bool {
        let Some(since) = self.written_at else {
            return true;
        };
        let topology = self.shared.topology.load();
        let fresh = match &self.standby.conn {
            Some(_) => topology.replayed_since(self.standby.node, since),
            None => (0..topology.nodes.len())
                .any(|i| topology.nodes[i].eligible && topology.replayed_since(i, since)),
        };
        if fresh && self.standby.conn.is_some() {
            self.written_at = None;
        }
        fresh
    }

    /// Keeps the primary connection on the node that is primary now: after a promotion
    /// the next request reconnects, unless a transaction or pinned state lives on the
    /// old connection.
    async fn ensure_primary(&mut self) -> Result<Conn, ProxyError> {
        let topology = self.shared.topology.load();
        let open_on = self.primary.conn.as_ref().map(|c| c.address.clone());
        let split_brain = topology
            .nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .count()
            > 1;
        let node = match (topology.primary_index(), open_on) {
            (Some(i), Some(address)) if topology.nodes[i].node.address == address => {
                return Ok(Conn::Primary)
            }
            (_, Some(_))
                if self.state.txn == Some(Conn::Primary)
                    || self.state.pinned()
                    || self.primary.pending > 0 =>
            {
                return Ok(Conn::Primary)
            }
            // Not known this instant (a check timed out): keep the last known primary.
            (None, Some(_)) if !split_brain => return Ok(Conn::Primary),
            (None, _) => return Err(ProxyError::NoPrimary),
            (Some(i), _) => i,
        };
        if let Some(old) = self.primary.conn.take() {
            tracing::info!(old = %old.address, new = %topology.nodes[node].node.address, "primary changed: reconnecting");
            old.terminate().await;
        }
        let server = self.connect(&topology.nodes[node].node.address).await?;
        self.primary = Slot::open(server, node);
        Ok(Conn::Primary)
    }

    /// Logs in to a server as this client's server user.
    async fn connect(&self, address: &str) -> Result<ServerConn, ProxyError> {
        let settings = &self.shared.settings;
        let user = settings
            .user(&self.startup.user)
            .ok_or_else(|| ProxyError::AuthFailed(self.startup.user.clone()))?;
        let login = Login {
            address,
            user: &user.server_user,
            password: &user.server_password,
            database: &self.startup.database,
            params: &self.startup.params,
        };
        ServerConn::connect(
            &login,
            settings.raw.connect_timeout,
            settings.raw.max_message_size,
        )
        .await
    }

    /// Brings a connection's settings in line with the session's before it serves the client.
    async fn sync_settings(&mut self, conn: Conn) -> Result<(), ProxyError> {
        let in_sync = match conn {
            Conn::Primary => self.primary.gucs.as_ref(),
            Conn::Standby => self.standby.gucs.as_ref(),
        } == Some(&self.state.gucs);
        if in_sync {
            return Ok(());
        }
        let wanted = self.state.gucs.clone();
        let slot = self.slot(conn);
        let sql = match &slot.gucs {
            Some(applied) => guc_sync_sql(applied, &wanted),
            None => Some(format!(
                "RESET ALL;{}",
                guc_sync_sql(&Gucs::new(), &wanted).unwrap_or_default()
            )),
        };
        slot.gucs = Some(wanted);
        match sql {
            Some(sql) => self.inject_query(conn, &sql).await,
            None => Ok(()),
        }
    }

    /// Sends a query of pgsplit's own; its replies never reach the client.
    async fn inject_query(&mut self, conn: Conn, sql: &str) -> Result<(), ProxyError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql);
        let slot = self.slot(conn);
        slot.swallow.push_back(Swallow::UntilReady);
        slot.pending += 1;
        slot.unnamed = None;
        write_to(slot, &out).await
    }

    /// Answers a request without a server (deferred BEGIN and its empty end).
    async fn reply_here(&mut self, tag: &str, status: u8) -> Result<(), ProxyError> {
        let mut out = BytesMut::new();
        out.put_u8(b'C');
        out.put_i32((4 + tag.len() + 1) as i32);
        out.put_slice(tag.as_bytes());
        out.put_u8(0);
        encode::ready_for_query(&mut out, status);
        flush_to(&mut self.client_out, &mut out).await?;
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
        let slot = self.slot(conn);
        let swallowed = match (slot.swallow.front().copied(), frame.tag) {
            (Some(Swallow::UntilReady), tag) => {
                if tag == b'E' {
                    tracing::warn!(?conn, "a statement pgsplit sent to sync the session failed");
                    slot.gucs = None;
                }
                if tag == b'Z' {
                    slot.swallow.pop_front();
                    slot.pending = slot.pending.saturating_sub(1);
                }
                true
            }
            (Some(Swallow::ParseComplete), b'1') | (Some(Swallow::CloseComplete), b'3') => {
                slot.swallow.pop_front();
                true
            }
            _ => false,
        };
        if !swallowed {
            match frame.tag {
                b'Z' => {
                    slot.pending = slot.pending.saturating_sub(1);
                    let status = frame.body().first().copied().unwrap_or(b'I');
                    self.state.ready(conn, status);
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
                    // The server skips the rest of the batch, so re-prepares queued for it never answer.
                    slot.swallow.retain(|s| *s == Swallow::UntilReady);
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
            self.slot(conn).retry = None;
            self.to_client.extend_from_slice(&frame.raw);
        }
        let more = self
            .slot(conn)
            .conn
            .as_ref()
            .is_some_and(|c| c.reader.has_frame());
        if !more {
            flush_to(&mut self.client_out, &mut self.to_client).await?;
            if let Some(held) = self.held.take() {
                self.dispatch(held).await?;
            }
            if self.draining && self.idle() {
                return self.say_goodbye().await;
            }
        }
        Ok(Step::Continue)
    }

    /// A server connection closed. Losing the primary, or a standby in the middle of a
    /// transaction, ends the session; an idle standby is simply replaced later.
    async fn server_lost(&mut self, conn: Conn) -> Result<Step, ProxyError> {
        let slot = self.slot(conn);
        let address = slot
            .conn
            .as_ref()
            .map(|c| c.address.clone())
            .unwrap_or_default();
        let node = slot.node;
        let was_busy = slot.pending > 0;
        let retry = slot.retry.take();
        slot.conn = None;
        slot.pending = 0;
        slot.swallow.clear();
        slot.copy_in = false;
        if conn == Conn::Standby {
            self.shared.stats.release(node);
            self.avoid
                .push((node, Instant::now() + AVOID_FAILED_STANDBY));
            if let (true, Some((request, class))) = (was_busy, retry) {
                tracing::warn!(%address, "standby lost before answering a read: retrying it elsewhere");
                self.execute(Plan::Send(Conn::Standby), class, request)
                    .await?;
                return Ok(Step::Continue);
            }
        }
        let session_lives_there =
            self.state.txn == Some(conn) || (conn == Conn::Primary && self.state.pinned());
        if !was_busy && !session_lives_there {
            tracing::info!(%address, ?conn, "idle server connection closed; another is opened on demand");
            return Ok(Step::Continue);
        }
        if conn == Conn::Standby && !session_lives_there {
            // Part of an autocommit read's answer is out: end that statement with an
            // error, keep the session.
            let mut out = std::mem::take(&mut self.to_client);
            let reason = format!("the standby at {address} closed the connection during the read");
            encode::error(&mut out, Severity::Error, "08006", &reason);
            encode::ready_for_query(&mut out, self.client_status());
            flush_to(&mut self.client_out, &mut out).await?;
            return Ok(Step::Continue);
        }
        let gone = ProxyError::ServerUnavailable {
            addr: address,
            reason: "server closed the connection unexpectedly".into(),
        };
        let mut out = std::mem::take(&mut self.to_client);
        gone.encode_fatal(&mut out);
        let _ = flush_to(&mut self.client_out, &mut out).await;
        Err(gone)
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

async fn next_frame(conn: &mut Option<ServerConn>) -> Result<Option<Frame>, ProxyError> {
    match conn {
        Some(c) => c.reader.next().await,
        None => std::future::pending().await,
    }
}

async fn write_to(slot: &mut Slot, bytes: &[u8]) -> Result<(), ProxyError> {
    match slot.conn.as_mut() {
        Some(server) => Ok(server.writer.write_all(bytes).await?),
        None => Err(ProxyError::NoPrimary),
    }
}

fn query_text(body: &[u8]) -> &str {
    let body = body.strip_suffix(&[0]).unwrap_or(body);
    std::str::from_utf8(body).unwrap_or("")
}

/// The prepared statement a Bind or a Describe('S') names.
fn statement_named(frame: &Frame) -> Option<String> {
    let mut body = frame.body();
    match frame.tag {
        b'B' => {
            read_cstr(&mut body)?;
            read_cstr(&mut body)
        }
        b'D' if body.first() == Some(&b'S') => {
            body = &body[1..];
            read_cstr(&mut body)
        }
        _ => None,
    }
}

fn encode_close_statement(out: &mut BytesMut, name: &str) {
    out.put_u8(b'C');
    out.put_i32((4 + 1 + name.len() + 1) as i32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
}
