//! What pgsplit sends on a client's behalf: its statements under their server-side names
//! (prepared first where the connection lacks them), and the session's settings on a
//! connection that lacks them. Replies to what pgsplit adds never reach the client.

use bytes::{BufMut, BytesMut};

use std::sync::Arc;

use super::wire::{encode_statement_message, statement_named, write_to};
use super::{AfterSync, Described, InFlight, Op, ParseOf, Relay, Request, Shapes, Slot, Swallow};
use crate::error::ProxyError;
use crate::gucs::{guc_sync_sql, Gucs};
use crate::pool::Lease;
use crate::prepared::{same_shape, Statement};
use crate::protocol::{encode, read_cstr, Frame};
use crate::route::{Conn, Target};
use crate::topology::Lsn;

/// The primary's WAL insert position, as a Parse body without its name (text, then no
/// parameter types): at or past every commit that returned before it ran.
const POSITION_QUERY: &[u8] = b"SELECT pg_current_wal_insert_lsn()\0\0\0";

/// Whether a standby replayed a WAL position (`$1`), as a Parse body without its name:
/// an error when it did not, ahead of a read in the read's own batch.
const CHECK_QUERY: &[u8] =
    b"SELECT 1 / coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)::int\0\0\0";

/// A name no statement has: a client's Close of its statement becomes a Close of this,
/// which the server answers with CloseComplete without touching statements other
/// clients share.
const NO_STATEMENT: &str = "__pgsplit_closed";

/// One batch as written to a server: messages pgsplit adds go first, then the client's.
struct Outgoing<'a> {
    lease: &'a mut Lease,
    capacity: usize,
    /// Statements this batch uses: never evicted by it.
    used: Vec<u64>,
    front: BytesMut,
    body: BytesMut,
    front_parses: Vec<(ParseOf, bool)>,
    body_parses: Vec<(ParseOf, bool)>,
    front_closes: Vec<bool>,
    body_closes: Vec<bool>,
    /// The first server-side name standing for a client's (see `Slot::renamed`).
    renamed: Option<(String, String)>,
    /// Named statements described, with the client's name for each the client described.
    describes: Vec<Described>,
}

impl<'a> Outgoing<'a> {
    fn new(lease: &'a mut Lease, capacity: usize, used: Vec<u64>, size: usize) -> Self {
        Outgoing {
            lease,
            capacity,
            used,
            front: BytesMut::new(),
            body: BytesMut::with_capacity(size),
            front_parses: Vec::new(),
            body_parses: Vec::new(),
            front_closes: Vec::new(),
            body_closes: Vec::new(),
            renamed: None,
            describes: Vec::new(),
        }
    }

    /// The bytes to write, and the replies they will get, in flight in `batch` (the
    /// connection's next ReadyForQuery).
    fn finish(self, batch: u64) -> Written {
        let Outgoing {
            mut front,
            body,
            front_parses,
            body_parses,
            front_closes,
            body_closes,
            renamed,
            describes,
            ..
        } = self;
        front.extend_from_slice(&body);
        Written {
            bytes: front,
            parses: front_parses
                .into_iter()
                .chain(body_parses)
                .map(|(what, ours)| InFlight::of(batch, ours, what))
                .collect(),
            closes: front_closes
                .into_iter()
                .chain(body_closes)
                .map(|ours| InFlight::of(batch, ours, ()))
                .collect(),
            describes: describes
                .into_iter()
                .map(|what| {
                    let ours = what.as_ref().is_none_or(|(_, client)| client.is_none());
                    InFlight::of(batch, ours, what)
                })
                .collect(),
            renamed,
        }
    }
    /// Records a statement as held, closing those it pushes out of the cache.
    fn hold(&mut self, statement: &Statement) {
        for evicted in self
            .lease
            .statements
            .insert(statement.id, self.capacity, &self.used)
        {
            encode_statement_message(
                &mut self.front,
                b'C',
                &crate::prepared::server_name(evicted),
            );
            self.front_closes.push(true);
        }
    }

    /// Prepares a statement ahead of the client's messages if the connection lacks it.
    /// Every Parse under a server-side name follows a Close of that name: should a failure
    /// earlier in the batch make the server skip both, the record saying the connection
    /// lacks the statement can be wrong only in the harmless direction.
    fn ensure(&mut self, target: &Target) {
        match target {
            Target::Named(statement) => {
                if !self.lease.statements.touch(statement.id) {
                    self.hold(statement);
                    encode_statement_message(&mut self.front, b'C', &statement.name);
                    self.front_closes.push(true);
                    self.front.extend_from_slice(&statement.parse);
                    self.front_parses
                        .push((ParseOf::Named(statement.id, None), true));
                }
            }
            Target::Unnamed { parse, id } => {
                if self.lease.unnamed != Some(*id) {
                    self.front.extend_from_slice(parse);
                    self.front_parses.push((ParseOf::Unnamed(*id), true));
                    self.lease.unnamed = Some(*id);
                }
            }
        }
    }

    fn add(&mut self, op: Op) {
        match op {
            Op::Forward(frame) => {
                // Every Describe of a statement is answered by a ParameterDescription:
                // the ones of statements pgsplit does not track keep the count.
                if statement_named(&frame).is_some() && frame.tag == b'D' {
                    self.describes.push(None);
                }
                self.body.extend_from_slice(&frame.raw)
            }
            Op::ParseUnnamed(frame, id) => {
                self.body.extend_from_slice(&frame.raw);
                self.body_parses.push((ParseOf::Unnamed(id), false));
                self.lease.unnamed = Some(id);
            }
            Op::Parse(name, statement) => {
                // Closed first: whether another client prepared the same text here or
                // not, the client's Parse succeeds and gets its ParseComplete.
                if !self.lease.statements.touch(statement.id) {
                    self.hold(&statement);
                }
                encode_statement_message(&mut self.body, b'C', &statement.name);
                self.body_closes.push(true);
                self.body.extend_from_slice(&statement.parse);
                self.lease.statements.set_shape(statement.id, None);
                self.body_parses
                    .push((ParseOf::Named(statement.id, Some(name)), false));
            }
            Op::Uses(frame, target, _) => {
                self.ensure(&target);
                match &target {
                    Target::Named(statement) => {
                        if frame.tag == b'D' {
                            self.describes
                                .push(Some((statement.id, statement_named(&frame))));
                        }
                        rename_statement(&frame, &statement.name, &mut self.body)
                    }
                    Target::Unnamed { .. } => {
                        if frame.tag == b'D' {
                            self.describes.push(None);
                        }
                        self.body.extend_from_slice(&frame.raw)
                    }
                }
            }
            Op::Unknown(frame) => {
                if frame.tag == b'D' {
                    self.describes.push(None);
                }
                if self.renamed.is_none() {
                    self.renamed =
                        statement_named(&frame).map(|n| (quoted(NO_STATEMENT), quoted(&n)));
                }
                rename_statement(&frame, NO_STATEMENT, &mut self.body)
            }
            Op::Needs(statement) => self.ensure(&Target::Named(statement)),
            Op::Duplicate(frame, statement, name) => {
                // Held first, so the server refuses the name; no ParseComplete will come.
                self.ensure(&Target::Named(Arc::clone(&statement)));
                rename_statement(&frame, &statement.name, &mut self.body);
                self.renamed
                    .get_or_insert((quoted(&statement.name), quoted(&name)));
            }
            Op::Close(Some(_)) => {
                encode_statement_message(&mut self.body, b'C', NO_STATEMENT);
                self.body_closes.push(false);
            }
            Op::Close(None) => {
                encode_statement_message(&mut self.body, b'C', "");
                self.body_closes.push(false);
                self.lease.unnamed = None;
            }
        }
    }
}

/// How many messages in `bytes` a server answers with one final reply each (Parse,
/// Bind, Describe, Execute, Close), when nothing fails.
fn answers_due(mut bytes: &[u8]) -> usize {
    let mut due = 0;
    while let (Some(&tag), Some(len)) = (bytes.first(), bytes.get(1..5)) {
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]).max(4) as usize;
        due += usize::from(matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C'));
        bytes = bytes.get(1 + len..).unwrap_or_default();
    }
    due
}

/// A statement name as PostgreSQL's errors quote it: `__pgsplit_1` is then never found
/// inside `"__pgsplit_12"`.
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// A Parse, Bind or Describe naming `name` as its statement instead of the client's name.
fn rename_statement(frame: &Frame, name: &str, out: &mut BytesMut) {
    let body = frame.body();
    // Parse starts with the statement name, Bind with the portal name, Describe with its
    // kind byte.
    let split = match frame.tag {
        b'P' => 0,
        b'B' => body.iter().position(|b| *b == 0).map_or(0, |i| i + 1),
        _ => 1.min(body.len()),
    };
    let (prefix, mut body) = body.split_at(split);
    if read_cstr(&mut body).is_none() {
        out.extend_from_slice(&frame.raw);
        return;
    }
    out.put_u8(frame.tag);
    out.put_i32((4 + prefix.len() + name.len() + 1 + body.len()) as i32);
    out.put_slice(prefix);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(body);
}

/// A batch ready to write, with what its replies answer.
struct Written {
    bytes: BytesMut,
    parses: Vec<InFlight<ParseOf>>,
    closes: Vec<InFlight<()>>,
    describes: Vec<InFlight<Described>>,
    renamed: Option<(String, String)>,
}

impl Written {
    /// Records the replies as expected on `slot`; the bytes to write there.
    fn expect_on(self, slot: &mut Slot) -> BytesMut {
        if self.renamed.is_some() {
            slot.renamed = self.renamed;
        }
        slot.owed.parses.extend(self.parses);
        slot.owed.closes.extend(self.closes);
        slot.owed.describes.extend(self.describes);
        self.bytes
    }
}

/// What pgsplit sent ahead of a client request, and how it went.
#[derive(Default)]
pub(super) struct Injected {
    /// A request sent once its connection's settings are in line.
    pub after_sync: Option<AfterSync>,
    /// The first error of a statement pgsplit injected, with its connection.
    pub error: Option<(Conn, String)>,
}

impl Relay<'_> {
    /// What `fill` writes for `conn`'s server, with pgsplit's statements renamed and
    /// prepared where missing (never evicting those in `used`), its replies recorded as
    /// expected there: the bytes to write.
    fn outgoing(
        &mut self,
        conn: Conn,
        used: Vec<u64>,
        size: usize,
        fill: impl FnOnce(&mut Outgoing),
    ) -> Result<BytesMut, ProxyError> {
        let capacity = self
            .shared
            .settings
            .load()
            .raw
            .pool
            .prepared_statements_cache_size;
        let slot = self.slot(conn);
        let batch = slot.owed.syncs_sent;
        let Some(lease) = slot.conn.as_mut() else {
            return Err(ProxyError::NoPrimary);
        };
        let mut out = Outgoing::new(lease, capacity, used, size);
        fill(&mut out);
        Ok(out.finish(batch).expect_on(slot))
    }

    /// Forwards a batch with its statements renamed to their server-side names; a
    /// statement the connection lacks is parsed first, in the same write, and the replies
    /// to what pgsplit added are dropped, so the client sees exactly its own answers.
    pub(super) async fn send_batch(
        &mut self,
        conn: Conn,
        ops: Vec<Op>,
        sync: bool,
        ask_position: bool,
    ) -> Result<(), ProxyError> {
        let used = ops
            .iter()
            .filter_map(|op| match op {
                Op::Parse(_, s) | Op::Needs(s) | Op::Duplicate(_, s, _) => Some(s.id),
                Op::Uses(_, Target::Named(s), _) => Some(s.id),
                _ => None,
            })
            .collect();
        let size = ops.len() * 32;
        // The check goes first in the client's own batch, so that if it fails the server
        // skips the read up to the client's Sync.
        let check = match conn {
            Conn::Standby if sync => self.placement.check.take(),
            _ => None,
        };
        let mut checked = BytesMut::new();
        if let Some(lsn) = check {
            checked = self.check_replayed(conn, lsn)?;
        }
        let mut bytes = self.outgoing(conn, used, size, |out| {
            for op in ops {
                out.add(op);
            }
        })?;
        let slot = self.slot(conn);
        slot.owed.last_synced = sync;
        if sync {
            slot.owed.pending += 1;
            slot.owed.syncs_sent += 1;
        } else {
            slot.owed.chain_due += answers_due(&bytes);
        }
        if ask_position && sync {
            self.ask_position(conn, &mut bytes)?;
        }
        if check.is_some() {
            checked.extend_from_slice(&bytes);
            bytes = checked;
        }
        write_to(self.slot(conn), &bytes).await
    }

    /// Whether the statements a synced batch binds have here the shape the client was
    /// told; unknown for those not described on this connection. With `fresh_on_change`,
    /// one described here with another shape is unknown too, and forgotten: it may be a
    /// statement prepared before a schema change the client has seen (another client
    /// prepared the same text then), so it is prepared and described again before the
    /// client's view is judged stale.
    pub(super) fn check_shapes(
        &mut self,
        conn: Conn,
        request: &Request,
        fresh_on_change: bool,
    ) -> Shapes {
        let Request::Batch {
            ops, sync: true, ..
        } = request
        else {
            return Shapes::Same;
        };
        let Some(lease) = self.slot(conn).conn.as_mut() else {
            return Shapes::Same;
        };
        let mut unknown = Vec::new();
        for op in ops {
            let Op::Uses(frame, Target::Named(statement), Some(told)) = op else {
                continue;
            };
            if frame.tag != b'B' {
                continue;
            }
            match lease.statements.shape(statement.id) {
                Some(shape) if same_shape(shape, told) => {}
                Some(_) if !fresh_on_change => return Shapes::Changed,
                Some(_) => {
                    lease.statements.remove(statement.id);
                    unknown.push(Arc::clone(statement));
                }
                None => unknown.push(Arc::clone(statement)),
            }
        }
        if unknown.is_empty() {
            Shapes::Same
        } else {
            Shapes::Unknown(unknown)
        }
    }

    /// Gives a connection a statement it lacks ahead of a Query that runs it by name
    /// (SQL `EXECUTE`), answered at a Sync of pgsplit's own: were its Parse to fail, a
    /// server would skip the Query too and never answer it. The Query's error about the
    /// statement then names it as the client does.
    pub(super) async fn prepare_first(
        &mut self,
        conn: Conn,
        statement: Arc<Statement>,
        client: &str,
    ) -> Result<(), ProxyError> {
        let renamed = (quoted(&statement.name), quoted(client));
        let bytes = self.outgoing(conn, vec![statement.id], 0, |out| {
            out.ensure(&Target::Named(statement))
        })?;
        self.slot(conn).renamed = Some(renamed);
        if bytes.is_empty() {
            return Ok(());
        }
        self.write_injected(conn, bytes).await
    }

    /// Writes messages of pgsplit's own and a Sync: their answers, up to its
    /// ReadyForQuery, never reach the client.
    async fn write_injected(&mut self, conn: Conn, mut bytes: BytesMut) -> Result<(), ProxyError> {
        encode::sync(&mut bytes);
        let slot = self.slot(conn);
        slot.owed.expect_own(Swallow::UntilReady);
        write_to(slot, &bytes).await
    }

    /// Prepares (where missing) and describes statements on a connection, answered at a
    /// Sync of pgsplit's own: their shapes there are recorded as the replies arrive.
    pub(super) async fn describe_first(
        &mut self,
        conn: Conn,
        statements: Vec<Arc<Statement>>,
    ) -> Result<(), ProxyError> {
        let used = statements.iter().map(|s| s.id).collect();
        let bytes = self.outgoing(conn, used, 0, |out| {
            for statement in statements {
                out.ensure(&Target::Named(Arc::clone(&statement)));
                out.describes.push(Some((statement.id, None)));
                encode_statement_message(&mut out.front, b'D', &statement.name);
            }
        })?;
        self.write_injected(conn, bytes).await
    }

    /// Brings a connection's settings in line with the session's before it serves the
    /// client; true when it sent statements for that (their answer is still to come).
    pub(super) async fn sync_settings(&mut self, conn: Conn) -> Result<bool, ProxyError> {
        let wanted = &self.state.gucs;
        // Settings made there untracked would be lost to a sync that starts over: what
        // the session wants is set again instead, over whatever the server has.
        let start_over = !self.state.holds_untracked(conn);
        let slot = match conn {
            Conn::Primary => &mut self.primary,
            Conn::Standby => &mut self.standby,
        };
        let Some(lease) = slot.conn.as_mut() else {
            return Err(ProxyError::NoPrimary);
        };
        if lease.gucs.as_ref() == Some(wanted) {
            return Ok(false);
        }
        let nothing = Gucs::new();
        let applied = match &lease.gucs {
            None if !start_over => Some(&nothing),
            applied => applied.as_ref(),
        };
        let sql = guc_sync_sql(applied, wanted);
        lease.gucs = Some(wanted.clone());
        match sql {
            Some(sql) => {
                self.inject_query(conn, &sql).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Appends to `bytes` the question for the primary's WAL insert position, as a batch
    /// of pgsplit's own after the client's: it runs right after the client's commit, on
    /// the same connection and in the same write, so its answer follows the client's
    /// ReadyForQuery without another round trip or a second backend woken.
    pub(super) fn ask_position(
        &mut self,
        conn: Conn,
        bytes: &mut BytesMut,
    ) -> Result<(), ProxyError> {
        let statement = Arc::clone(
            self.placement
                .position_statement
                .get_or_insert_with(|| self.shared.statements.intern(POSITION_QUERY)),
        );
        let ours = self.outgoing(conn, vec![statement.id], 0, |out| {
            out.ensure(&Target::Named(Arc::clone(&statement)));
            encode::bind_plain(&mut out.body, &statement.name);
            encode::execute_all(&mut out.body);
            encode::sync(&mut out.body);
        })?;
        let shared = self.shared;
        let slot = self.slot(conn);
        slot.owed.expect_own(Swallow::Position);
        if let Some(lease) = slot.conn.as_ref() {
            shared.positions.of(&lease.server.address).count_query();
        }
        bytes.extend_from_slice(&ours);
        Ok(())
    }

    /// A check that the standby replayed `lsn`, to go ahead of a read in the read's own
    /// batch (no Sync of its own): it fails with division by zero when the standby is
    /// short of it (or not in recovery any more), and the server then skips the read.
    fn check_replayed(&mut self, conn: Conn, lsn: Lsn) -> Result<BytesMut, ProxyError> {
        let statement = Arc::clone(
            self.placement
                .check_statement
                .get_or_insert_with(|| self.shared.statements.intern(CHECK_QUERY)),
        );
        let position = lsn.to_string();
        let bytes = self.outgoing(conn, vec![statement.id], 0, |out| {
            out.ensure(&Target::Named(Arc::clone(&statement)));
            let body = &mut out.body;
            body.put_u8(b'B');
            let len = 4 + 1 + statement.name.len() + 1 + 2 + 2 + 2 + 4 + position.len() + 2;
            body.put_i32(len as i32);
            body.put_u8(0);
            body.put_slice(statement.name.as_bytes());
            body.put_u8(0);
            body.put_i16(1);
            body.put_i16(0);
            body.put_i16(1);
            body.put_i32(position.len() as i32);
            body.put_slice(position.as_bytes());
            body.put_i16(0);
            encode::execute_all(body);
        })?;
        self.slot(conn).owed.expect_check(lsn);
        Ok(bytes)
    }

    /// Sends a query of pgsplit's own; its replies never reach the client.
    pub(super) async fn inject_query(&mut self, conn: Conn, sql: &str) -> Result<(), ProxyError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql);
        let slot = self.slot(conn);
        slot.owed.expect_own(Swallow::UntilReady);
        if let Some(lease) = slot.conn.as_mut() {
            lease.unnamed = None;
        }
        write_to(slot, &out).await
    }
}
