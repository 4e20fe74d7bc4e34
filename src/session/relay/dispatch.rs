//! Dispatch: a request is planned by the routing state, placed by the routing decision,
//! and sent on the connection it names, after that connection's settings are in line
//! and the statements it runs are prepared there.

use std::sync::Arc;

use bytes::BytesMut;

use super::wire::{query_text, write_to};
use super::*;
use crate::classify::{Classification, Effect, Route};
use crate::clients::CancelTarget;
use crate::error::ProxyError;
use crate::gucs::apply_to_server;
use crate::protocol::{encode, flush_to, Frame, Severity};
use crate::route::{Ask, Conn, Decision, Failure, Plan, Target};

/// What the request in flight and the open transaction did: applied when they succeed,
/// undone when they fail.
#[derive(Default)]
pub(super) struct Outcome {
    /// Settings before the open transaction (or the current autocommit request).
    pub gucs_before: Gucs,
    /// The answer being relayed included a COMMIT: a transaction that ends without one
    /// (ROLLBACK, a COMMIT that failed) undid its SETs.
    pub committed: bool,
    /// The answer being relayed included an error.
    pub request_failed: bool,
    /// What the request in flight releases (unpins, DEALLOCATE, DISCARD ALL), applied
    /// once it succeeded.
    pub releasing: Vec<Effect>,
    /// Releases done inside the open transaction: they happen if it commits.
    pub txn_releases: Vec<(Conn, Effect)>,
    /// Settings before a request that changed them, restored if that request fails.
    pub guc_undo: Option<(Conn, Gucs)>,
    /// A request that may write was sent to the primary since the last commit.
    pub wrote: bool,
    /// A function was created, changed or dropped: the catalog is read again once the
    /// change commits.
    pub functions_changed: bool,
}

impl Relay<'_> {
    /// Sends a request, or holds it while an earlier one is still being answered: one
    /// request in flight keeps replies in order and lets pgsplit put its own messages
    /// (settings, deferred BEGIN, re-prepares) in front of a request, never inside another
    /// answer. The batches of a Flush chain go out at once, to the chain's connection.
    pub(super) async fn dispatch(&mut self, request: Request) -> Result<(), ProxyError> {
        // A Query or FunctionCall after a Flush chain goes to the chain's connection and
        // ends the chain there, as PostgreSQL runs it (or skips it after the chain's
        // error). Held instead, it would wait for a Sync that only it could be followed
        // by, and the client would no longer be read: not even its leaving seen.
        let continues_chain = self.sticky.is_some();
        if !continues_chain
            && (self.primary.owed.pending > 0
                || self.standby.owed.pending > 0
                || self.sticky.is_some())
        {
            self.intake.held.push_back(request);
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
                self.intake.held.push_back(request);
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
        let failure = self.retries.failure.take();
        let result = match self.execute(plan, class, request, failure).await {
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
        if self.injected.after_sync.is_none() {
            self.cancel.release();
        }
        result
    }

    /// Answers a request that reached no server like a failed statement; the session
    /// carries on.
    pub(super) async fn answer_unsent(
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
            &mut self.client.out,
            Severity::Error,
            e.sqlstate(),
            &e.to_string(),
        );
        if answered {
            let status = self.client_status();
            encode::ready_for_query(&mut self.client.out, status);
        } else {
            self.intake.skip_to_sync = true;
        }
        flush_to(&mut self.client.writer, &mut self.client.out).await?;
        Ok(())
    }

    /// Answers a batch that only prepares named statements (and perhaps closes some), outside a
    /// transaction, without a server: statements reach a server when first used, so a
    /// client preparing ahead (libpq's PQprepare, pgbench -M prepared) never waits for a
    /// pooled connection, and never deadlocks a pool whose connections are held by
    /// transactions waiting on that same client program. A statement with an error
    /// reports it when first used.
    pub(super) async fn answer_locally(&mut self, request: &Request) -> Result<bool, ProxyError> {
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
            match op {
                Op::Parse(..) => encode::parse_complete(&mut self.client.out),
                Op::Close(_) => encode::close_complete(&mut self.client.out),
                _ => {}
            }
        }
        let status = self.client_status();
        encode::ready_for_query(&mut self.client.out, status);
        flush_to(&mut self.client.writer, &mut self.client.out).await?;
        Ok(true)
    }

    /// Sends a request that was held, once nothing is in flight any more.
    pub(super) async fn release_held(&mut self) -> Result<(), ProxyError> {
        // A Query or FunctionCall sent right behind a COPY FROM STDIN was held before the
        // server said CopyInResponse; held any longer it waits for the COPY's end, which
        // waits for data behind it. It goes to the server now, which ends the COPY with an
        // error as PostgreSQL alone would.
        if let Some(conn) = self.copying() {
            let in_copy = |r: &mut Request| matches!(r, Request::Query(..) | Request::Function(_));
            if let Some(Request::Query(frame, _) | Request::Function(frame)) =
                self.intake.held.pop_front_if(in_copy)
            {
                let slot = self.slot(conn);
                tally::received(slot, frame.raw.len());
                return write_to(slot, &frame.raw).await;
            }
        }
        // In order, each once it can go out (the batches of a chain go out together).
        while !self.intake.held.is_empty()
            && match self.sticky {
                Some(conn) => self.chain_settled(conn),
                None => self.primary.owed.pending == 0 && self.standby.owed.pending == 0,
            }
        {
            if let Some(held) = self.intake.held.pop_front() {
                self.dispatch(held).await?;
            }
        }
        Ok(())
    }

    /// Whether every message of the chain on `conn` has been answered, or the server
    /// skips the rest of it after an error.
    pub(super) fn chain_settled(&self, conn: Conn) -> bool {
        let slot = self.slot_ref(conn);
        slot.owed.chain_due == 0 || slot.owed.skipping
    }

    pub(super) fn client_status(&self) -> u8 {
        if self.state.transaction_failed_here() {
            b'E'
        } else if self.state.txn.is_some() || self.state.begin_deferred() {
            b'T'
        } else {
            b'I'
        }
    }

    /// Classifies a request and asks the routing state where it goes.
    pub(super) fn plan(&mut self, request: &Request) -> (Plan, Arc<Classification>) {
        let open = self.intake.last;
        self.plan_request(request, open)
    }

    pub(super) fn plan_request(
        &mut self,
        request: &Request,
        open: Option<Conn>,
    ) -> (Plan, Arc<Classification>) {
        match request {
            Request::Query(frame, _) => {
                let text = query_text(frame.body());
                let mut class = self.classify(text);
                if self.retries.rerun_on_primary && class.route != Route::Primary {
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

    pub(super) fn classify(&self, text: &str) -> Arc<Classification> {
        let functions = self.shared.functions.for_database(&self.startup.database);
        let class = self.shared.classifier.classify(text, &functions);
        self.note_unknown_functions(&class);
        class
    }

    /// As [`Relay::classify`], for the text of a Parse message (looked up as sent first).
    pub(super) fn classify_parse_text(&self, text: &str) -> Arc<Classification> {
        let functions = self.shared.functions.for_database(&self.startup.database);
        let class = self.shared.classifier.classify_parsed(text, &functions);
        self.note_unknown_functions(&class);
        class
    }

    /// A function the catalog does not know may have been created since it was read.
    pub(super) fn note_unknown_functions(&self, class: &Classification) {
        if class.unknown_function {
            self.shared.functions.unknown_function();
        }
    }

    pub(super) async fn execute(
        &mut self,
        plan: Plan,
        class: Arc<Classification>,
        request: Request,
        failure: Option<Failure>,
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
            Plan::Refuse(code, message) => return self.refuse(&request, code, message).await,
        };
        let mid_chain = self.sticky.is_some();
        // As `retryable` below, on a standby: what a failed replay check can rerun.
        let checkable = !mid_chain
            && self.retries.runs_before + 1 < MAX_RUNS
            && begin.is_none()
            && self.state.txn.is_none()
            && !self.state.holds(Conn::Standby)
            && class.route <= Route::Standby
            && class.effects.is_empty()
            && matches!(request, Request::Batch { sync: true, .. })
            && read_committed(&self.state.gucs);
        let ask = Ask {
            conn,
            begins: begin.is_some(),
            class: &class,
            unsynced: matches!(request, Request::Batch { sync: false, .. }),
            lone: match &request {
                Request::Query(..) => true,
                Request::Batch { ops, .. } => {
                    ops.iter()
                        .filter(|op| matches!(op, Op::Uses(f, ..) if f.tag == b'B'))
                        .count()
                        == 1
                }
                Request::Function(_) => false,
            },
            checkable,
        };
        let (conn, reason) = match self.place(ask, failure).await? {
            Placed::On(conn, reason) => (conn, reason),
            Placed::Refused(code, message) => return self.refuse(&request, code, message).await,
        };
        if conn == Conn::Primary && class.route == Route::Primary {
            self.outcome.wrote = true;
        }
        if class.effects.contains(&Effect::FunctionsChanged) {
            self.outcome.functions_changed = true;
        }
        // An autocommit read can run again elsewhere until its answer starts: nothing
        // of it reached the client, and running it twice changes nothing. Not the end of
        // a Flush chain (its earlier statements would be lost), and a bounded number of
        // times (a pooled connection to a primary that just stopped fails the first
        // retry too; the next one finds it unreachable and reads from a standby).
        let retryable = !mid_chain
            && self.retries.runs_before + 1 < MAX_RUNS
            && begin.is_none()
            && self.state.txn.is_none()
            && !self.state.holds(conn)
            && class.route <= Route::Standby
            && class.effects.is_empty()
            && matches!(
                request,
                Request::Query(..) | Request::Batch { sync: true, .. }
            );
        let runs = self.retries.runs_before + 1;
        let slot = self.slot(conn);
        slot.retry = retryable.then(|| (request.clone(), Arc::clone(&class)));
        slot.runs = runs;
        self.injected.error = None;
        // Inside its transaction the connection has exactly what the client set there;
        // a sync would only fail in an aborted transaction and block its ROLLBACK.
        let in_own_txn = self.state.txn == Some(conn);
        if !mid_chain && !in_own_txn && self.sync_settings(conn).await? {
            // The request waits for the settings: if they fail there (a role or schema
            // not replayed yet), it must not run with the wrong ones.
            self.injected.after_sync = Some(AfterSync {
                conn,
                reason,
                begin,
                class,
                request,
                described: false,
            });
            return Ok(());
        }
        self.send_request(conn, reason, begin, class, request, false)
            .await
    }

    /// Refuses a request here, as PostgreSQL fails a statement: a batch without Sync
    /// has the rest of its messages skipped up to the client's Sync.
    pub(super) async fn refuse(
        &mut self,
        request: &Request,
        code: &'static str,
        message: &'static str,
    ) -> Result<(), ProxyError> {
        encode::error(&mut self.client.out, Severity::Error, code, message);
        if matches!(request, Request::Batch { sync: false, .. }) {
            self.intake.skip_to_sync = true;
        } else {
            let status = self.client_status();
            encode::ready_for_query(&mut self.client.out, status);
        }
        flush_to(&mut self.client.writer, &mut self.client.out).await?;
        Ok(())
    }

    /// The settings sync ahead of a request answered: send the request; when the sync
    /// failed, never run it with the wrong settings: an autocommit read goes to the
    /// primary instead, anything else gets the error.
    pub(super) async fn after_settings(&mut self, waiting: AfterSync) -> Result<(), ProxyError> {
        match self.injected.error.take() {
            Some(_) if waiting.described => {
                let AfterSync {
                    conn,
                    reason,
                    begin,
                    class,
                    request,
                    ..
                } = waiting;
                self.send_request(conn, reason, begin, class, request, true)
                    .await
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
                match self
                    .execute(
                        Plan::Send(Conn::Standby),
                        waiting.class,
                        waiting.request,
                        Some(Failure::SettingsOnStandby),
                    )
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
                encode::error(&mut self.client.out, Severity::Error, "08006", &message);
                if answered {
                    let status = self.client_status();
                    encode::ready_for_query(&mut self.client.out, status);
                } else {
                    self.intake.skip_to_sync = true;
                }
                Ok(())
            }
            None => {
                let AfterSync {
                    conn,
                    reason,
                    begin,
                    class,
                    request,
                    described,
                } = waiting;
                self.send_request(conn, reason, begin, class, request, described)
                    .await
            }
        }
    }

    /// Sends a planned request on an open, settings-synced connection. A statement whose
    /// shape the client was told runs only where it still has that shape: where that is
    /// not known yet it is described first (`described` once it was), and where it
    /// differs the client gets PostgreSQL's 0A000, so its driver prepares it again.
    pub(super) async fn send_request(
        &mut self,
        conn: Conn,
        reason: Decision,
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
        let skipped = self.slot(conn).owed.skipping;
        let shapes = if mid_chain {
            Shapes::Same
        } else {
            self.check_shapes(conn, &request, !described)
        };
        let (class, request) = match shapes {
            Shapes::Unknown(statements) if !described => {
                self.describe_first(conn, statements).await?;
                self.injected.after_sync = Some(AfterSync {
                    conn,
                    reason,
                    begin: None,
                    class,
                    request,
                    described: true,
                });
                return Ok(());
            }
            Shapes::Changed => {
                self.slot(conn).shape_changed = true;
                (
                    Arc::new(Classification::any()),
                    Request::Query(encode::query_frame(SHAPE_CHANGED), None),
                )
            }
            Shapes::Unknown(_) | Shapes::Same => (class, request),
        };
        self.tally_request(conn, reason, &class, &request);
        if self.state.txn.is_none() {
            self.outcome.gucs_before.clone_from(&self.state.gucs);
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
        self.intake.last = Some(conn);
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
        let ask_position =
            !skipped && !mid_chain && self.commits_a_write(conn, opens, &class, &request);
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
                self.send_simple(conn, &frame, ask_position).await
            }
            Request::Function(frame) => {
                self.sticky = None;
                self.send_simple(conn, &frame, ask_position).await
            }
            Request::Batch { ops, sync, .. } => {
                self.sticky = if sync { None } else { Some(conn) };
                self.send_batch(conn, ops, sync, ask_position).await
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

    /// Sends a Query or FunctionCall, answered by its ReadyForQuery; with pgsplit's
    /// question for the WAL position after it when it commits a write.
    pub(super) async fn send_simple(
        &mut self,
        conn: Conn,
        frame: &Frame,
        ask_position: bool,
    ) -> Result<(), ProxyError> {
        let slot = self.slot(conn);
        slot.owed.pending += 1;
        slot.owed.syncs_sent += 1;
        slot.owed.last_synced = false;
        if let Some(lease) = slot.conn.as_mut() {
            // A simple Query destroys the unnamed statement on that server.
            lease.unnamed = None;
        }
        if !ask_position {
            return write_to(slot, &frame.raw).await;
        }
        let mut bytes = BytesMut::from(&frame.raw[..]);
        self.ask_position(conn, &mut bytes)?;
        write_to(self.slot(conn), &bytes).await
    }

    /// Whether a request about to go to the primary ends, at its Sync, a transaction (or
    /// an autocommit statement) that wrote, so that the WAL position read right after it
    /// covers the commit; only when read-your-writes needs that position. Never around
    /// COPY (a server in COPY FROM takes nothing but its data) nor inside a transaction
    /// (a query there could take the snapshot of a REPEATABLE READ transaction).
    fn commits_a_write(
        &self,
        conn: Conn,
        opens: bool,
        class: &Classification,
        request: &Request,
    ) -> bool {
        if conn != Conn::Primary || !self.outcome.wrote {
            return false;
        }
        let synced = match request {
            Request::Batch { sync, .. } => *sync,
            Request::Query(..) | Request::Function(_) => true,
        };
        let last_boundary = class
            .effects
            .iter()
            .rev()
            .find(|e| matches!(e, Effect::Begin { .. } | Effect::EndTransaction));
        let ends = match last_boundary {
            Some(Effect::EndTransaction) => true,
            Some(_) => false,
            None => self.state.txn.is_none() && !opens,
        };
        synced
            && ends
            && !request_texts(request)
                .iter()
                .any(|text| text.to_ascii_lowercase().contains("copy"))
            && self.read_your_writes().is_some()
    }

    /// What a request sent to `conn` does to the session and to that connection's
    /// settings, recorded as it goes out (undone if it fails).
    pub(super) fn apply_effects(&mut self, conn: Conn, class: &Classification) {
        self.outcome.committed = false;
        self.outcome.request_failed = false;
        if class.effects.iter().any(|e| {
            matches!(
                e,
                Effect::Set { .. } | Effect::Reset { .. } | Effect::ResetAll | Effect::DiscardAll
            )
        }) {
            self.outcome.guc_undo = Some((conn, self.state.gucs.clone()));
        }
        let releases = self.state.apply(class, conn);
        self.outcome.releasing.extend(releases);
        self.count_pinned();
        if let Some(lease) = self.slot(conn).conn.as_mut() {
            // This connection runs the SETs itself.
            if let Some(applied) = lease.gucs.as_mut() {
                apply_to_server(applied, class);
            }
        }
    }

    /// Answers a request without a server (deferred BEGIN and its empty end).
    pub(super) async fn reply_here(&mut self, tag: &str, status: u8) -> Result<(), ProxyError> {
        encode::command_complete(&mut self.client.out, tag);
        encode::ready_for_query(&mut self.client.out, status);
        flush_to(&mut self.client.writer, &mut self.client.out).await?;
        Ok(())
    }
}

/// Whether the session's transactions take a snapshot per statement: only then does a
/// read that follows pgsplit's replay check in the same transaction see what the check
/// saw replayed (a REPEATABLE READ snapshot would be the check's own, taken before it).
fn read_committed(gucs: &crate::gucs::Gucs) -> bool {
    gucs.get("default_transaction_isolation")
        .is_none_or(|v| v.to_ascii_lowercase().contains("read committed"))
}
