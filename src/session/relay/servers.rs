//! Choosing, opening and losing the client's server connections: which standby serves
//! its reads (balance, lag, read-your-writes), following the primary through a promotion,
//! and what a lost connection means for the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::wire::next_frame;
use super::{Placed, Relay, Slot, Step, Swallow, AVOID_FAILED_STANDBY};
use crate::backend::send_cancel;
use crate::balance::Strategy;
use crate::config::ReadYourWrites;
use crate::error::ProxyError;
use crate::pool::Lease;
use crate::prepared::Statement;
use crate::protocol::{encode, flush_to, Severity};
use crate::route::{
    decide, Ask, Balance, Conn, Decision, Destination, Failure, OpenStandby, SessionView, To,
    Written,
};
use crate::topology::{Lsn, Role};

/// Where this session's requests may go beyond the routing state: the pools it used,
/// the standbys that failed it, and read-your-writes.
pub(super) struct Placement {
    /// Pools this session has used, by server address.
    pub pools: Vec<(String, Arc<crate::pool::Pool>)>,
    /// Standbys that failed this client recently, with when to try them again.
    pub avoid: Vec<(usize, Instant)>,
    /// The client's last committed write, for read-your-writes (kept until the next one).
    pub written: Option<Write>,
    /// Whether connections go back to their pools between transactions.
    pub transaction_pooling: bool,
    /// The replay position the request being placed checks on its standby.
    pub check: Option<Lsn>,
    /// The question for the primary's WAL insert position, once asked (held so the
    /// statement keeps its server-side name).
    pub position_statement: Option<Arc<Statement>>,
    /// The check that a standby replayed a WAL position, once asked (held as above).
    pub check_statement: Option<Arc<Statement>>,
}

impl Placement {
    pub fn new(transaction_pooling: bool) -> Placement {
        Placement {
            pools: Vec::new(),
            avoid: Vec::new(),
            written: None,
            transaction_pooling,
            check: None,
            position_statement: None,
            check_statement: None,
        }
    }
}

/// A write of this client that committed on the primary.
pub(super) struct Write {
    /// When its commit returned.
    pub at: Instant,
    /// The primary it committed on.
    pub primary: String,
    /// A WAL position of that primary at or past the commit, once read.
    pub lsn: Option<Lsn>,
}

impl Relay<'_> {
    /// Asks the routing decision where a planned request runs, and opens that
    /// connection. A standby that cannot be reached is avoided and the decision asked
    /// again; so is a read sent to the primary only for read-your-writes when the primary
    /// cannot be reached (a standby serves it rather than failing it).
    pub(super) async fn place(
        &mut self,
        ask: Ask<'_>,
        mut failure: Option<Failure>,
    ) -> Result<Placed, ProxyError> {
        // Only a session that wrote has anything to wait for.
        let ryw = match self.placement.written {
            Some(_) => self.read_your_writes(),
            None => None,
        };
        if let (Some(wait), true) = (ryw, ask.conn != Conn::Primary) {
            self.learn_write_position(wait).await;
        }
        let mut awaited = None;
        // A read whose replay check just failed asks no standby in the background: its
        // next read checks again.
        let checked = failure == Some(Failure::NotReplayed);
        self.placement.check = None;
        loop {
            let destination = self.decide(ask, failure, ryw);
            if destination.release_standby {
                let reset = self.standby.reset_on_release;
                if let Some(old) = self.take_slot(Conn::Standby) {
                    if reset {
                        old.reset_and_release(false);
                    } else {
                        old.release();
                    }
                }
            }
            let opened = match destination.to {
                To::Open(conn) => Ok(conn),
                To::Refuse(code, message) => return Ok(Placed::Refused(code, message)),
                // One wait per request: should the decision ask for another (a reading
                // that failed meanwhile replaced the one waited for), the read goes to the
                // primary.
                To::Await(node) => {
                    let wait = ryw.unwrap_or_default();
                    let reached = awaited.is_none() && self.await_replay(node, wait).await;
                    awaited = reached.then_some(node);
                    if !reached {
                        failure = Some(Failure::NotReplayed);
                    }
                    continue;
                }
                To::Nowhere(reason) => Err(ProxyError::ServerUnavailable {
                    addr: "standbys".into(),
                    reason: reason.into(),
                }),
                To::Primary => self.ensure_primary().await,
                To::Standby(index) => {
                    let topology = self.shared.topology.load_full();
                    let Some(node) = topology.nodes.get(index) else {
                        continue;
                    };
                    match self.connect(index, &node.node.address).await {
                        Ok(server) => {
                            self.standby = Slot::open(server, index);
                            self.shared.stats.acquire(index);
                            Ok(Conn::Standby)
                        }
                        Err(e) => {
                            tracing::warn!(node = %node.node.name, error = %e, "standby unreachable; trying another node");
                            self.placement
                                .avoid
                                .push((index, Instant::now() + AVOID_FAILED_STANDBY));
                            continue;
                        }
                    }
                }
            };
            match opened {
                Ok(conn) => {
                    self.placement.check = destination.check;
                    self.count_read_your_writes(&destination, awaited, checked);
                    return Ok(Placed::On(conn, destination.reason));
                }
                // The primary went away before the monitor noticed: a read that only went
                // there for read-your-writes is served by a standby rather than failed
                // (this read only: the guarantee holds again for the next one).
                Err(e)
                    if destination.for_my_writes
                        && failure != Some(Failure::PrimaryUnreachable)
                        && (e.is_unreachable() || matches!(e, ProxyError::NoPrimary)) =>
                {
                    tracing::warn!(error = %e, "primary unreachable for a read-your-writes read; reading from a standby");
                    failure = Some(Failure::PrimaryUnreachable);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The routing decision for a planned request, from this session, the cluster
    /// snapshot and the routing settings.
    fn decide(
        &mut self,
        ask: Ask<'_>,
        failure: Option<Failure>,
        ryw: Option<Duration>,
    ) -> Destination {
        let topology = self.shared.topology.load();
        let settings = self.shared.settings.load();
        let routing = &settings.raw.routing;
        if !self.placement.avoid.is_empty() {
            let now = Instant::now();
            self.placement.avoid.retain(|(_, until)| *until > now);
        }
        let avoid: Vec<usize> = self.placement.avoid.iter().map(|(node, _)| *node).collect();
        // Only least_outstanding looks at the load; the others need not gather it.
        let outstanding = if routing.balance_strategy == Strategy::LeastOutstanding {
            self.shared.stats.outstanding()
        } else {
            Vec::new()
        };
        let standby = self.standby.conn.as_ref().map(|lease| OpenStandby {
            node: self.standby.node,
            address: &lease.server.address,
            busy: self.standby.owed.pending > 0,
        });
        let positions = &self.shared.positions;
        // A reading counts until the monitor's next check of the node supersedes it: a
        // standby that restarted may have replayed less than it had before.
        let replayed = |node: usize| {
            let state = topology.nodes.get(node)?;
            let reading = positions.latest(&state.node.address)?;
            let newer = state.lsn.is_none_or(|sample| reading.started > sample.at);
            (reading.standby && newer).then_some(reading.lsn).flatten()
        };
        let written = match (&self.placement.written, ryw) {
            (Some(write), Some(wait)) => Some(Written {
                at: write.at,
                lsn: write.lsn,
                replayed: &replayed,
                wait,
            }),
            _ => None,
        };
        let stats = &self.shared.stats;
        decide(
            ask,
            SessionView {
                state: &self.state,
                chain: self.sticky,
                transaction_pooling: self.placement.transaction_pooling,
                standby,
                written,
                avoid: &avoid,
            },
            &topology,
            Balance {
                strategy: routing.balance_strategy,
                primary_reads: routing.primary_reads,
                outstanding: &outstanding,
                dice: rand::random(),
            },
            failure,
            &mut || stats.next_turn(),
        )
    }

    /// How long a read may wait for a standby to replay the client's writes, when reads
    /// must see them: the session's `pgsplit.read_your_writes`, else the configuration.
    pub(super) fn read_your_writes(&self) -> Option<Duration> {
        let settings = self.shared.settings.load();
        let routing = &settings.raw.routing;
        let mode = crate::gucs::read_your_writes(routing.read_your_writes, &self.state.gucs);
        (mode == ReadYourWrites::Session).then_some(routing.read_your_writes_wait)
    }

    /// A write of this client committed on the primary now: its reads must see it from
    /// here on, and the primary's WAL position past it is asked for at once, so it is
    /// usually known before the client's next read (which has its ReadyForQuery first).
    pub(super) fn note_write(&mut self) {
        let Some(address) = self.primary.conn.as_ref().map(|c| c.server.address.clone()) else {
            return;
        };
        // Taken before the question: a reading started after it covers the commit.
        let at = Instant::now();
        let asked_here = self
            .primary
            .owed
            .swallow
            .iter()
            .any(|(_, s)| *s == Swallow::Position);
        if !asked_here && self.read_your_writes().is_some() {
            self.shared.positions.of(&address).ask();
        }
        self.placement.written = Some(Write {
            at,
            primary: address,
            lsn: None,
        });
    }

    /// Learns the WAL position of the client's last write, waiting for it at most `wait`
    /// (`read_your_writes_wait`); while it is not known, only standbys the monitor has seen
    /// past the primary's position after the commit count as having it.
    async fn learn_write_position(&mut self, wait: Duration) {
        let unknown = |p: &Placement| p.written.as_ref().is_some_and(|w| w.lsn.is_none());
        if !unknown(&self.placement) {
            return;
        }
        let deadline = Instant::now() + wait;
        // Asked right after the commit on the write's own connection: its answer is the
        // next thing that connection sends, usually already on its way.
        let mut read_here = false;
        while unknown(&self.placement) && self.primary.owed.swallowing() == Some(Swallow::Position)
        {
            let next = tokio::time::timeout_at(deadline.into(), next_frame(&mut self.primary.conn));
            match next.await {
                Ok(Ok(Some(frame))) => {
                    self.absorb_server_frame(Conn::Primary, &frame);
                    read_here = true;
                }
                Ok(_) => {
                    // Lost with nothing of the client's owed: closed here, and the next
                    // request to the primary connects again.
                    drop(self.take_slot(Conn::Primary));
                    break;
                }
                Err(_) => break,
            }
        }
        if read_here {
            self.release_idle_connections();
        }
        let Some(write) = self.placement.written.as_ref().filter(|w| w.lsn.is_none()) else {
            return;
        };
        let sampler = self.shared.positions.of(&write.primary);
        let lsn = sampler.primary_since(write.at, deadline).await;
        if let Some(write) = self.placement.written.as_mut() {
            write.lsn = lsn;
        }
    }

    /// Waits, at most `wait` (`read_your_writes_wait`), for standby `node` to be seen past the
    /// client's last write (one check in flight per standby, shared by every session
    /// waiting on it). Whether it was.
    async fn await_replay(&mut self, node: usize, wait: Duration) -> bool {
        let target = self.placement.written.as_ref().and_then(|w| w.lsn);
        let started = Instant::now();
        // The snapshot is not held across the wait: only the node's sampler and the time
        // of the monitor's last check of it (readings it supersedes do not count).
        let (sampler, since) = {
            let topology = self.shared.topology.load();
            let Some(state) = topology.nodes.get(node) else {
                return false;
            };
            let since = state.lsn.map_or(started, |sample| sample.at);
            (self.shared.positions.of(&state.node.address), since)
        };
        let Some(target) = target else {
            return false;
        };
        let reached = sampler.replayed(target, since, started + wait).await;
        self.shared
            .stats
            .read_your_writes_waited(node, started.elapsed(), reached);
        reached
    }

    /// What a replay check ahead of a read on standby `node` found: the standby past the
    /// client's write (`replayed`, then known to every session) or not (the read runs on
    /// the primary). The time to its answer counts as the read's wait, an upper bound: the
    /// read itself was on its way meanwhile.
    pub(super) fn checked_replay(&mut self, node: usize, sent: Instant, replayed: Option<Lsn>) {
        let stats = &self.shared.stats;
        stats.read_your_writes_waited(node, sent.elapsed(), replayed.is_some());
        if let Some(lsn) = replayed {
            stats.read_your_writes_checked(node);
            if let Some(lease) = self.standby.conn.as_ref() {
                self.shared
                    .positions
                    .of(&lease.server.address)
                    .learned(sent, lsn);
            }
        }
    }

    /// Counts what read-your-writes did for a placed request: a standby read served after
    /// a check, or a read sent to the primary.
    fn count_read_your_writes(
        &self,
        destination: &Destination,
        awaited: Option<usize>,
        checked: bool,
    ) {
        match destination.to {
            To::Standby(node) if awaited == Some(node) => {
                self.shared.stats.read_your_writes_checked(node)
            }
            To::Open(Conn::Standby) if awaited == Some(self.standby.node) => self
                .shared
                .stats
                .read_your_writes_checked(self.standby.node),
            To::Primary if destination.reason == Decision::ReadYourWrites => {
                self.shared
                    .stats
                    .read_your_writes_to_primary(self.primary.node);
                if !checked {
                    self.refresh_standby_positions();
                }
            }
            _ => {}
        }
    }

    /// After a read went to the primary for read-your-writes without a standby known past
    /// the client's write, asks the eligible standbys for their replay positions in the
    /// background, so the next read may find one; no more often than every millisecond,
    /// nor than every half of a standby's replay lag (it cannot catch up sooner).
    fn refresh_standby_positions(&self) {
        let topology = self.shared.topology.load();
        for n in &topology.nodes {
            if n.role == Role::Standby && n.eligible {
                let half_lag = n.lag_time.unwrap_or_default() / 2;
                self.shared
                    .positions
                    .of(&n.node.address)
                    .refresh(half_lag.max(Duration::from_millis(1)));
            }
        }
    }

    /// Keeps the primary connection on the node that is primary now: after a promotion
    /// the next request reconnects, unless a transaction or pinned state lives on the
    /// old connection.
    async fn ensure_primary(&mut self) -> Result<Conn, ProxyError> {
        let topology = self.shared.topology.load_full();
        let open_on = self.primary.conn.as_ref().map(|c| c.server.address.clone());
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
                    || self.primary.owed.pending > 0 =>
            {
                return Ok(Conn::Primary)
            }
            // Not known this instant (a check timed out): keep the last known primary.
            (None, Some(_)) if !split_brain => return Ok(Conn::Primary),
            (None, _) => return Err(ProxyError::NoPrimary),
            (Some(i), _) => i,
        };
        if let Some(old) = std::mem::replace(&mut self.primary, Slot::empty()).conn {
            tracing::info!(old = %old.server.address, new = %topology.nodes[node].node.address, "primary changed: reconnecting");
            // Dropped, not pooled: the old primary is gone or no longer takes writes.
            drop(old);
        }
        let server = self
            .connect(node, &topology.nodes[node].node.address)
            .await?;
        self.primary = Slot::open(server, node);
        Ok(Conn::Primary)
    }

    /// A connection to node `node` for this client's server user and database, from its
    /// pool; while an operator has the node paused, after `RESUME`.
    async fn connect(&mut self, node: usize, address: &str) -> Result<Lease, ProxyError> {
        self.shared.publisher.wait_resumed(node).await;
        // The session's pools, found once: a lookup in the shared map costs a lock, three
        // strings and a hash per checkout.
        let pool = match self.placement.pools.iter().find(|(a, _)| a == address) {
            Some((_, pool)) => Arc::clone(pool),
            None => {
                let (user, password) = &self.startup.server_login;
                let pool = self
                    .shared
                    .pools
                    .get(address, user, password, &self.startup.database);
                self.placement
                    .pools
                    .push((address.to_owned(), Arc::clone(&pool)));
                pool
            }
        };
        pool.checkout().await
    }

    /// A server connection closed, or was given up on for `why`. A read whose answer had
    /// not started runs again elsewhere; otherwise losing the primary, or a standby in
    /// the middle of a transaction, ends the session; an idle connection is simply
    /// replaced later.
    pub(super) async fn server_lost(
        &mut self,
        conn: Conn,
        why: Option<String>,
    ) -> Result<Step, ProxyError> {
        if self
            .injected
            .after_sync
            .as_ref()
            .is_some_and(|a| a.conn == conn)
        {
            self.injected.after_sync = None;
        }
        let slot = self.slot(conn);
        let address = slot
            .conn
            .as_ref()
            .map(|c| c.server.address.clone())
            .unwrap_or_default();
        let node = slot.node;
        let was_busy = slot.owed.pending > 0;
        let retry = slot.retry.take();
        let runs = slot.runs;
        let refused = slot.refused;
        let key = slot.conn.as_ref().map(|c| c.server.key);
        let told_fatal = slot.told_fatal;
        *slot = Slot::empty();
        if retry.is_some() {
            // What the lost server said before the read's answer started goes with it.
            self.retries.early.clear();
        }
        // Statements of a Flush chain ran here, answered without a Sync yet: they are
        // lost with the connection, and the client must hear so.
        let chained = self.sticky == Some(conn);
        if chained {
            self.sticky = None;
        }
        if let (Some(key), Some(_), true) = (key, &why, was_busy) {
            // Given up on, not closed by the server: its query may still run there.
            let timeout = self.shared.settings.load().raw.connect_timeout;
            let at = address.clone();
            tokio::spawn(async move {
                if let Err(e) = send_cancel(&at, key, timeout).await {
                    tracing::debug!(address = %at, error = %e, "could not cancel on a server given up on");
                }
            });
        }
        if conn == Conn::Standby {
            self.shared.stats.release(node);
            self.placement
                .avoid
                .push((node, Instant::now() + AVOID_FAILED_STANDBY));
        }
        if let (Some(refusal), Some((request, class))) = (refused, &retry) {
            // It had refused the read before it went: the refusal stands.
            let request = request.clone();
            let class = Arc::clone(class);
            Box::pin(self.run_refused_on_primary(request, &class, refusal)).await?;
            self.release_held().await?;
            return Ok(Step::Continue);
        }
        if let (true, Some((request, _))) = (was_busy, retry) {
            tracing::warn!(%address, ?conn, "server lost before answering a read: retrying it");
            self.retries.runs_before = runs;
            let sent = self.dispatch(request).await;
            self.retries.runs_before = 0;
            sent?;
            // A request held behind the read goes out once nothing is in flight: also
            // when the retry itself could not reach a server and was answered here.
            self.release_held().await?;
            return Ok(Step::Continue);
        }
        let session_lives_there =
            self.state.txn == Some(conn) || (conn == Conn::Primary && self.state.pinned());
        let was_busy = was_busy || chained;
        if !was_busy && !session_lives_there {
            tracing::info!(%address, ?conn, "idle server connection closed; another is opened on demand");
            self.release_held().await?;
            return Ok(Step::Continue);
        }
        if conn == Conn::Standby && !session_lives_there {
            // Part of an autocommit read's answer is out: end that statement with an
            // error, keep the session.
            let mut out = std::mem::take(&mut self.client.out);
            let reason = match &why {
                Some(why) => format!("the standby at {address} failed during the read: {why}"),
                None => format!("the standby at {address} closed the connection during the read"),
            };
            encode::error(&mut out, Severity::Error, "08006", &reason);
            if chained {
                // The client's Sync is still to come; it gets the ReadyForQuery.
                self.intake.skip_to_sync = true;
            } else {
                encode::ready_for_query(&mut out, self.client_status());
            }
            flush_to(&mut self.client.writer, &mut out).await?;
            self.release_held().await?;
            return Ok(Step::Continue);
        }
        if told_fatal {
            // The server said why it ended the session (pg_terminate_backend, a
            // shutdown): the client's session ends as it would directly, without a
            // second, misleading error.
            tracing::info!(%address, ?conn, "server ended the session with a FATAL error");
            let mut out = std::mem::take(&mut self.client.out);
            let _ = flush_to(&mut self.client.writer, &mut out).await;
            let _ = self.client.writer.shutdown().await;
            return Ok(Step::Done);
        }
        let gone = ProxyError::ServerUnavailable {
            addr: address,
            reason: why.unwrap_or_else(|| "server closed the connection unexpectedly".into()),
        };
        let mut out = std::mem::take(&mut self.client.out);
        gone.encode_fatal(&mut out);
        let _ = flush_to(&mut self.client.writer, &mut out).await;
        Err(gone)
    }
}
