//! Replies: what the servers answer, matched against what was sent, passed on to the
//! client without the answers to pgsplit's own messages; a read a standby refused runs
//! again on the primary.

use std::sync::Arc;

use super::wire::{first_value, is_fatal, rename_in_error};
use super::*;
use crate::classify::Classification;
use crate::error::ProxyError;
use crate::protocol::{flush_to, read_cstr, Frame};
use crate::route::{Conn, Failure, Target};

/// What lets an autocommit read run again elsewhere, and a refused one on the primary.
#[derive(Default)]
pub(super) struct Retries {
    /// What arrived before the first row of the retryable read in flight (one request is
    /// in flight at a time outside Flush chains, which are not retried): notices and
    /// FATAL errors (a server shutting down says so before it closes, and then the read
    /// is retried instead), ParseComplete, BindComplete and descriptions. Passed on with
    /// the first row or the end of the answer; dropped when the read runs again
    /// elsewhere. Kept here, not per server connection, so its allocation outlives the
    /// pooled connections a session goes through.
    pub early: BytesMut,
    /// A read a standby refused, to run on the primary now.
    pub refused: Option<(Request, Arc<Classification>, Refusal)>,
    /// The request being dispatched runs again on the primary after a standby refused
    /// it: it goes there whatever its text classifies as now.
    pub rerun_on_primary: bool,
    /// How many times the request being dispatched ran before (on servers lost before
    /// answering); at [`MAX_RUNS`] it is not retried again.
    pub runs_before: u8,
    /// What went wrong with the request being dispatched the last time it was placed.
    pub failure: Option<Failure>,
}

impl Relay<'_> {
    pub(super) async fn on_server_frame(
        &mut self,
        conn: Conn,
        frame: Result<Option<Frame>, ProxyError>,
    ) -> Result<Step, ProxyError> {
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return Box::pin(self.server_lost(conn, None)).await,
        };
        let injected_done = self.absorb_server_frame(conn, &frame);
        if let Some((request, class, refusal)) = self.retries.refused.take() {
            Box::pin(self.run_refused_on_primary(request, &class, refusal)).await?;
        }
        // The rare and large steps are boxed: this future stays small, as a message that
        // is only forwarded (most of them) should cost no allocation and no big copy.
        if injected_done
            && self
                .injected
                .after_sync
                .as_ref()
                .is_some_and(|a| a.conn == conn)
        {
            if let Some(waiting) = self.injected.after_sync.take() {
                Box::pin(self.after_settings(waiting)).await?;
                if self.injected.after_sync.is_none() {
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
            flush_to(&mut self.client.writer, &mut self.client.out).await?;
            if frame.tag == b'Z' {
                self.release_idle_connections();
            }
            if !self.intake.held.is_empty() {
                Box::pin(self.release_held()).await?;
            }
            if self.draining && self.activity() == Activity::Idle {
                return Box::pin(self.say_goodbye()).await;
            }
        }
        Ok(Step::Continue)
    }

    /// Runs a read a standby refused on the primary. One refused as a write also has
    /// statements of its shape sent there from now on (logged once per shape).
    pub(super) async fn run_refused_on_primary(
        &mut self,
        request: Request,
        class: &Classification,
        refusal: Refusal,
    ) -> Result<(), ProxyError> {
        if refusal == Refusal::Behind {
            // Still a read: decided again, knowing the standby was short of the write.
            self.retries.runs_before = MAX_RUNS;
            self.retries.failure = Some(Failure::NotReplayed);
            let sent = self.dispatch(request).await;
            self.retries.failure = None;
            self.retries.runs_before = 0;
            return sent;
        }
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
        self.retries.runs_before = MAX_RUNS;
        self.retries.rerun_on_primary = true;
        let sent = self.dispatch(request).await;
        self.retries.rerun_on_primary = false;
        self.retries.runs_before = 0;
        sent
    }

    /// What a server message changes in the session, and the message itself queued for
    /// the client unless it answers something pgsplit sent; true when it ended a
    /// statement pgsplit injected.
    pub(super) fn absorb_server_frame(&mut self, conn: Conn, frame: &Frame) -> bool {
        let in_chain = self.sticky == Some(conn);
        let owes_nothing = !in_chain && self.state.txn != Some(conn);
        let mut ready = None;
        let mut injected_done = false;
        let mut injected_error = None;
        // A replay check answered here: its node, when it was sent, and the position it
        // showed replayed (None: not).
        let mut checked = None;
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
        if slot.owed.chain_due > 0
            && matches!(
                frame.tag,
                b'1' | b'2' | b'3' | b'n' | b'T' | b'C' | b'I' | b's'
            )
        {
            slot.owed.chain_due -= 1;
        }
        match frame.tag {
            b't' => {
                let batch = slot.owed.syncs_seen;
                slot.owed.describing = slot
                    .owed
                    .describes
                    .pop_front()
                    .filter(|d| d.sync == batch)
                    .and_then(|d| d.what);
            }
            b'T' | b'n' => {
                if let Some((id, client)) = slot.owed.describing.take() {
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
        // Notifications answer nothing: they reach the client whoever's batch they
        // arrive in.
        let swallowing = slot.owed.swallowing().filter(|_| frame.tag != b'A');
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
            Conn::Primary => (&mut self.primary, &mut self.retries.early),
            Conn::Standby => (&mut self.standby, &mut self.retries.early),
        };
        let swallowed = match (swallowing, frame.tag) {
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
                    slot.owed.own_answered();
                    injected_done = true;
                }
                true
            }
            // The standby's error to the replay check (not a FATAL one, which ends the
            // connection and is handled as its loss): the server skipped the read, which
            // runs on the primary at this batch's ReadyForQuery.
            (Some(Swallow::Check { sent, .. }), b'E') if !is_fatal(frame.body()) => {
                slot.owed.check_answered();
                slot.refused = Some(Refusal::Behind);
                checked = Some((slot.node, sent, None));
                true
            }
            (Some(Swallow::Check { lsn, sent }), tag) if tag != b'E' => {
                if tag == b'C' {
                    slot.owed.check_answered();
                    checked = Some((slot.node, sent, Some(lsn)));
                }
                true
            }
            (Some(Swallow::Position), tag) => {
                match tag {
                    b'D' => {
                        let address = slot.conn.as_ref().map(|c| &c.server.address);
                        let lsn = first_value(frame.body()).and_then(|v| v.parse().ok());
                        if let (Some(write), Some(lsn)) = (self.placement.written.as_mut(), lsn) {
                            if write.lsn.is_none() && Some(&write.primary) == address {
                                write.lsn = Some(lsn);
                            }
                        }
                    }
                    b'Z' => slot.owed.own_answered(),
                    _ => {}
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
            (None, b'E') if slot.owed.pending == 0 && owes_nothing => {
                let fields = crate::protocol::ErrorFields::parse(frame.body());
                tracing::info!(?conn, code = %fields.code, message = %fields.message, "error from an idle server connection");
                true
            }
            _ => false,
        };
        if !swallowed {
            match frame.tag {
                b'C' if frame.body().starts_with(b"COMMIT") => self.outcome.committed = true,
                b'C' if frame.body().starts_with(b"ROLLBACK") => {
                    // ROLLBACK TO SAVEPOINT undoes the SETs since the savepoint, which
                    // are not tracked: the connection's settings are unknown from here.
                    if let Some(lease) = slot.conn.as_mut() {
                        lease.gucs = None;
                    }
                }
                b'Z' => {
                    slot.owed.pending = slot.owed.pending.saturating_sub(1);
                    // Whatever COPY there was ended with its request, and the server takes
                    // messages again.
                    slot.owed.copy_in = false;
                    slot.owed.copy_ended_early = false;
                    slot.owed.awaits_sync = false;
                    slot.owed.skipping = false;
                    slot.owed.chain_due = 0;
                    let status = frame.body().first().copied().unwrap_or(b'I');
                    ready = Some(status);
                    let was_in_txn = self.state.txn.is_some();
                    self.state.ready(conn, status);
                    self.settle_releases(conn, status, was_in_txn);
                    if was_in_txn && status == b'I' && !self.outcome.committed {
                        // The server undid the transaction's SETs; so does the session.
                        self.state.gucs.clone_from(&self.outcome.gucs_before);
                        // So did the server's own settings: a sync starting over with RESET
                        // ALL would also undo what the session set untracked (set_config
                        // with bound parameters) before the transaction.
                        let slot = self.slot(conn);
                        let before = slot.applied_before.take();
                        if let Some(lease) = slot.conn.as_mut() {
                            lease.gucs = before;
                        }
                    }
                    if status == b'I' && std::mem::take(&mut self.outcome.functions_changed) {
                        self.shared.functions.changed();
                    }
                    if conn == Conn::Primary && status == b'I' && self.outcome.wrote {
                        self.outcome.wrote = false;
                        self.note_write();
                    }
                    if self
                        .outcome
                        .guc_undo
                        .as_ref()
                        .is_some_and(|(c, _)| *c == conn)
                        && self.slot(conn).owed.pending == 0
                    {
                        self.outcome.guc_undo = None;
                    }
                }
                // The server ignores a Sync that arrives in COPY mode: the ReadyForQuery
                // owed to the batch comes after the client's Sync that follows CopyDone,
                // CopyFail or the server's error, which is sent as part of that batch.
                // A client that sent its data and CopyDone before the server said
                // CopyInResponse (asyncpg does) is not in COPY any more.
                b'G' => slot.owed.copy_in = !std::mem::take(&mut slot.owed.copy_ended_early),
                b'E' => {
                    slot.told_fatal = is_fatal(frame.body());
                    slot.owed.skipping |= in_chain;
                    if slot.owed.copy_in && slot.owed.last_synced {
                        slot.owed.awaits_sync = true;
                    }
                    slot.owed.copy_in = false;
                    self.outcome.request_failed = true;
                    if let Some((undo_conn, gucs)) = self.outcome.guc_undo.take() {
                        if undo_conn == conn {
                            self.state.gucs = gucs;
                            if let Some(lease) = self.slot(conn).conn.as_mut() {
                                lease.gucs = None;
                            }
                        } else {
                            self.outcome.guc_undo = Some((undo_conn, gucs));
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
                    self.retries.refused = slot
                        .retry
                        .take()
                        .map(|(request, class)| (request, class, refusal));
                    self.retries.early.clear();
                }
                return injected_done;
            }
            let notifier = (frame.tag == b'A')
                .then(|| self.notifier_pid(conn, frame.body()))
                .flatten();
            let slot = self.slot(conn);
            // Only the read that held answers back passes them on.
            let held_back = slot.retry.take().is_some();
            let (renamed, shape_changed) = match frame.tag {
                b'E' | b'Z' => (slot.renamed.take(), std::mem::take(&mut slot.shape_changed)),
                _ => (None, false),
            };
            let mut sent = frame.raw.len();
            if held_back && !self.retries.early.is_empty() {
                // Copied and cleared, not split off: the buffer keeps its capacity.
                sent += self.retries.early.len();
                self.client.out.extend_from_slice(&self.retries.early);
                self.retries.early.clear();
            }
            let at = self.client.out.len();
            match renamed.filter(|_| frame.tag == b'E') {
                _ if shape_changed && frame.tag == b'E' => {
                    crate::protocol::encode::error_fields(
                        &mut self.client.out,
                        &SHAPE_CHANGED_ERROR,
                    );
                    sent = sent - frame.raw.len() + (self.client.out.len() - at);
                }
                Some((ours, client)) => {
                    let length = rename_in_error(&frame.raw, &ours, &client, &mut self.client.out);
                    sent = sent - frame.raw.len() + length;
                }
                None => self.client.out.extend_from_slice(&frame.raw),
            }
            if let Some(pid) = notifier {
                self.client.out[at + 5..at + 9].copy_from_slice(&pid.to_be_bytes());
            }
            let shared = self.shared;
            tally::sent(self.slot(conn), sent, ready, &shared.stats);
        }
        if let Some(error) = injected_error {
            self.injected.error.get_or_insert((conn, error));
        }
        if let Some((node, sent, replayed)) = checked {
            self.checked_replay(node, sent, replayed);
        }
        injected_done
    }

    /// The pid a NotificationResponse should name: the one pgsplit gave the notifying
    /// client, when a server connection of pgsplit's sent it.
    pub(super) fn notifier_pid(&self, conn: Conn, body: &[u8]) -> Option<i32> {
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
}
