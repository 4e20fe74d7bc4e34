//! What pgsplit sends on a client's behalf ahead of its requests: the session's settings
//! on a connection that lacks them, and its prepared statements where they are missing.
//! Their replies are swallowed (see `Swallow`).

use bytes::BytesMut;

use super::wire::{
    closed_statement, encode_close_statement, encode_sync, statement_named, write_to,
};
use super::{Relay, Swallow};
use crate::error::ProxyError;
use crate::protocol::{encode, read_cstr, Frame};
use crate::session::state::{guc_sync_sql, Conn, Gucs};

impl Relay<'_> {
    /// Forwards a batch. Statements it uses that the connection lacks (or holds in an
    /// older version) are prepared first, in a batch of pgsplit's own whose replies are
    /// swallowed, so the client's replies arrive exactly as the server sends them.
    pub(super) async fn send_batch(
        &mut self,
        conn: Conn,
        frames: Vec<Frame>,
        sync: bool,
    ) -> Result<(), ProxyError> {
        let mut pre = BytesMut::new();
        let mut parsed_here: Vec<String> = Vec::new();
        for frame in &frames {
            match frame.tag {
                b'P' => {
                    let mut body = frame.body();
                    let name = read_cstr(&mut body).unwrap_or_default();
                    // A named statement cannot be parsed over an existing one.
                    if !name.is_empty() && self.slot(conn).prepared.contains_key(&name) {
                        encode_close_statement(&mut pre, &name);
                    }
                    let generation = self.state.statements.get(&name).map_or(0, |p| p.generation);
                    self.slot(conn).prepared.insert(name.clone(), generation);
                    parsed_here.push(name);
                }
                b'B' | b'D' => {
                    if let Some(name) = statement_named(frame) {
                        if !parsed_here.contains(&name) {
                            self.ensure_prepared(conn, &name, &mut pre);
                        }
                    }
                }
                b'C' => {
                    if let Some(name) = closed_statement(frame) {
                        self.slot(conn).prepared.remove(&name);
                    }
                }
                _ => {}
            }
        }
        if !pre.is_empty() {
            encode_sync(&mut pre);
            let slot = self.slot(conn);
            slot.swallow.push_back(Swallow::UntilReady);
            slot.pending += 1;
            write_to(slot, &pre).await?;
        }
        let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.raw.len()).sum());
        for frame in &frames {
            out.extend_from_slice(&frame.raw);
        }
        let slot = self.slot(conn);
        slot.last_synced = sync;
        if sync {
            slot.pending += 1;
        }
        write_to(slot, &out).await
    }

    /// Adds a Parse (after a Close of a stale version) for a statement the connection lacks.
    fn ensure_prepared(&mut self, conn: Conn, name: &str, pre: &mut BytesMut) {
        let Some(prepared) = self.state.statements.get(name) else {
            return;
        };
        let (parse, generation) = (prepared.parse.clone(), prepared.generation);
        let slot = self.slot(conn);
        match slot.prepared.get(name) {
            Some(g) if *g == generation => {}
            held => {
                if held.is_some() && !name.is_empty() {
                    encode_close_statement(pre, name);
                }
                pre.extend_from_slice(&parse);
                slot.prepared.insert(name.to_owned(), generation);
            }
        }
    }

    /// Brings a connection's settings in line with the session's before it serves the
    /// client; true when it sent statements for that (their answer is still to come).
    pub(super) async fn sync_settings(&mut self, conn: Conn) -> Result<bool, ProxyError> {
        let in_sync = match conn {
            Conn::Primary => self.primary.gucs.as_ref(),
            Conn::Standby => self.standby.gucs.as_ref(),
        } == Some(&self.state.gucs);
        if in_sync {
            return Ok(false);
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
            Some(sql) => {
                self.inject_query(conn, &sql).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Sends a query of pgsplit's own; its replies never reach the client.
    pub(super) async fn inject_query(&mut self, conn: Conn, sql: &str) -> Result<(), ProxyError> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql);
        let slot = self.slot(conn);
        slot.swallow.push_back(Swallow::UntilReady);
        slot.pending += 1;
        slot.prepared.remove("");
        write_to(slot, &out).await
    }
}
