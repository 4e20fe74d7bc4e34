//! Request intake: client messages grouped into requests (a Query, or an extended-protocol
//! batch up to Sync or Flush), each batch resolved once as it arrives against the
//! statements the client and the servers hold.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::wire::{closed_statement, query_text, statement_named, write_to};
use super::*;
use crate::classify::{executed_name, Classification, Effect, Reason};
use crate::error::ProxyError;
use crate::prepared::Statement;
use crate::protocol::{encode, flush_to, read_cstr, Frame};
use crate::route::{Conn, Prepared, Target};

/// Client messages being grouped into requests, and requests waiting their turn.
pub(super) struct Intake {
    /// Extended-protocol messages waiting for their Sync or Flush.
    pub batch: Vec<Frame>,
    /// Their size in bytes.
    pub bytes: usize,
    /// Requests waiting for the connections to finish answering, in the client's order.
    pub held: VecDeque<Request>,
    /// After a failed request that did not end with Sync, client messages are dropped
    /// until its Sync, which gets the ReadyForQuery (as the server itself would do).
    pub skip_to_sync: bool,
    /// Fires when the client has left extended-protocol messages without Sync or Flush
    /// for [`UNSYNCED_WAIT`]: they go to the server then, as PostgreSQL runs them.
    pub quiet: Pin<Box<Sleep>>,
    /// Whether `quiet` is set.
    pub quiet_armed: bool,
    /// Connection of the last request (COPY data follows it).
    pub last: Option<Conn>,
}

impl Intake {
    pub fn new() -> Intake {
        Intake {
            batch: Vec::new(),
            bytes: 0,
            held: VecDeque::new(),
            skip_to_sync: false,
            quiet: Box::pin(tokio::time::sleep(Duration::ZERO)),
            quiet_armed: false,
            last: None,
        }
    }
}

impl Relay<'_> {
    /// Whether a client message only joins the extended-protocol batch (Parse, Bind,
    /// Describe, Execute, Close before their Sync), which needs no I/O.
    pub(super) fn joins_batch(&self, frame: &Frame) -> bool {
        matches!(frame.tag, b'P' | b'B' | b'D' | b'E' | b'C')
            && self.copying().is_none()
            && !self.intake.skip_to_sync
    }

    /// Adds a message to the batch that its Sync or Flush sends.
    pub(super) fn join_batch(&mut self, frame: Frame) -> Result<Step, ProxyError> {
        self.intake.bytes += frame.raw.len();
        self.intake.batch.push(frame);
        if self.intake.bytes > self.client.reader.max_len() {
            return Err(ProxyError::Protocol(
                "too many extended-protocol messages without Sync or Flush".into(),
            ));
        }
        Ok(Step::Continue)
    }

    pub(super) async fn on_client_frame(
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
                    let _ = flush_to(&mut self.client.writer, &mut out).await;
                }
                return Err(e);
            }
        };
        if self.intake.skip_to_sync && self.copying().is_none() {
            if frame.tag == b'S' {
                self.intake.skip_to_sync = false;
                let status = self.client_status();
                encode::ready_for_query(&mut self.client.out, status);
                flush_to(&mut self.client.writer, &mut self.client.out).await?;
            }
            return Ok(Step::Continue);
        }
        match frame.tag {
            b'X' => return Ok(Step::Done),
            // A Query or FunctionCall inside COPY FROM STDIN goes to the server too: it
            // ends the COPY with an error there, as with PostgreSQL alone. Held back like a
            // pipelined query instead, it would wait for the COPY's ReadyForQuery, which
            // waits for data the client never sends: both ends and the pooled connection
            // stuck for good.
            // So do extended-protocol messages: held back, they would wait for the COPY
            // to end, which waits for the client.
            b'H' | b'S' | b'd' | b'c' | b'f' | b'Q' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C'
                if self.copying().is_some() =>
            {
                let conn = self.copying().unwrap_or(Conn::Primary);
                let slot = self.slot(conn);
                if matches!(frame.tag, b'c' | b'f') {
                    slot.owed.copy_in = false;
                    slot.owed.awaits_sync = slot.owed.last_synced;
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
                slot.owed.awaits_sync = false;
                slot.owed.last_synced = false;
                write_to(slot, &frame.raw).await?;
            }
            b'H' | b'S' => {
                let sync = frame.tag == b'S';
                let bytes = self.intake.bytes + frame.raw.len();
                self.intake.batch.push(frame);
                self.intake.bytes = 0;
                let frames = std::mem::take(&mut self.intake.batch);
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
                let conn = self.intake.last.unwrap_or(Conn::Primary);
                let slot = self.slot(conn);
                if matches!(frame.tag, b'c' | b'f') && slot.owed.pending > 0 {
                    slot.owed.copy_ended_early = true;
                    slot.owed.awaits_sync = slot.owed.last_synced;
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
    pub(super) async fn on_client_pause(&mut self) -> Result<Step, ProxyError> {
        if self.state.txn.is_some()
            || self.sticky.is_some()
            || self.intake.bytes >= UNSYNCED_BATCH_BYTES
        {
            self.send_unsynced().await?;
        } else {
            self.intake
                .quiet
                .as_mut()
                .reset(tokio::time::Instant::now() + UNSYNCED_WAIT);
            self.intake.quiet_armed = true;
        }
        Ok(Step::Continue)
    }

    /// Sends the extended-protocol messages received since the last Sync or Flush, as
    /// the start of a chain (the server answers them at the next Sync, Flush or error).
    pub(super) async fn send_unsynced(&mut self) -> Result<(), ProxyError> {
        self.intake.quiet_armed = false;
        if self.intake.batch.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.intake.bytes);
        let frames = std::mem::take(&mut self.intake.batch);
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
    pub(super) fn query_request(&mut self, frame: Frame) -> Request {
        match self.executed_statement(query_text(frame.body())) {
            Some((statement, name, text)) => {
                Request::Query(encode::query_frame(&text), Some((statement, name)))
            }
            None => Request::Query(frame, None),
        }
    }

    /// A Parse of `EXECUTE name` naming a statement the client prepared at protocol
    /// level: that statement, and the Parse rewritten to name it as the servers do.
    pub(super) fn executing_parse(&self, frame: &Frame) -> Option<(Arc<Statement>, Frame)> {
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
    pub(super) fn executed_statement(
        &self,
        text: &str,
    ) -> Option<(Arc<Statement>, String, String)> {
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

    /// Resolves a batch once, as it arrives: its route is the strictest of the statements
    /// it parses or executes, its effects those of the statements it executes; Parse and
    /// Close update the client's statements in message order, and every message naming a
    /// statement is tied to what the servers hold for it.
    pub(super) fn resolve_batch(&mut self, frames: Vec<Frame>) -> (Vec<Op>, Classification) {
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
}
