//! The watchdog: a server that owes an answer and has gone silent while failing the
//! monitor's checks is given up on, and a transaction left idle past
//! `idle_in_transaction_timeout` is ended.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::*;
use crate::error::ProxyError;
use crate::protocol::{encode, flush_to, Severity};
use crate::route::Conn;
use crate::topology::Role;

impl Relay<'_> {
    /// Whether the watchdog has something to watch: an answer owed by a server, or a
    /// transaction left open under `idle_in_transaction_timeout`.
    pub(super) fn watching(&self) -> bool {
        self.primary.owed.pending > 0
            || self.standby.owed.pending > 0
            || (self.idle_in_transaction_timeout.is_some() && self.idle_in_transaction())
    }

    /// A watchdog tick. A server that owes an answer, has sent nothing for a whole tick
    /// and fails the monitor's health checks is given up on: a frozen node would
    /// otherwise hold the client for as long as it stays frozen. A read that has not
    /// started answering goes elsewhere after one failed check; anything else waits for
    /// two in a row, so one slow check on a loaded node does not cost a transaction.
    pub(super) async fn on_tick(&mut self) -> Result<Step, ProxyError> {
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
    pub(super) async fn end_idle_transaction(
        &mut self,
        limit: Duration,
    ) -> Result<Step, ProxyError> {
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
}
