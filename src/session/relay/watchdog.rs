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

/// The watchdog's timer, and what it compares from one tick to the next.
pub(super) struct Watch {
    /// Ticks while a server owes an answer or the client idles in a transaction.
    pub timer: Pin<Box<Sleep>>,
    /// `idle_in_transaction_timeout` as the session started; `None` when off.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Messages received from the client.
    pub client_frames: u64,
    /// `client_frames` when a tick first saw the client idle in its transaction, and when.
    pub idle_mark: Option<(u64, Instant)>,
}

impl Watch {
    pub fn new(idle_in_transaction_timeout: Duration) -> Watch {
        Watch {
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            idle_in_transaction_timeout: Some(idle_in_transaction_timeout).filter(|t| !t.is_zero()),
            client_frames: 0,
            idle_mark: None,
        }
    }
}

impl Relay<'_> {
    /// Whether the watchdog has something to watch: an answer owed by a server, or a
    /// transaction left open under `idle_in_transaction_timeout`.
    pub(super) fn watching(&self) -> bool {
        self.primary.owed.pending > 0
            || self.standby.owed.pending > 0
            || (self.watch.idle_in_transaction_timeout.is_some()
                && self.activity() == Activity::IdleInTransaction)
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
        self.watch
            .timer
            .as_mut()
            .reset(tokio::time::Instant::now() + tick);
        if let Some(limit) = self.watch.idle_in_transaction_timeout {
            if self.activity() == Activity::IdleInTransaction {
                match self.watch.idle_mark {
                    Some((frames, since)) if frames == self.watch.client_frames => {
                        if since.elapsed() >= limit {
                            return Box::pin(self.end_idle_transaction(limit)).await;
                        }
                    }
                    _ => self.watch.idle_mark = Some((self.watch.client_frames, Instant::now())),
                }
            } else {
                self.watch.idle_mark = None;
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
        let mut out = std::mem::take(&mut self.client.out);
        encode::error(
            &mut out,
            Severity::Fatal,
            "25P03",
            "terminating connection due to idle-in-transaction timeout",
        );
        let _ = flush_to(&mut self.client.writer, &mut out).await;
        let _ = self.client.writer.shutdown().await;
        Ok(Step::Done)
    }
}
