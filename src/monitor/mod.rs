//! The topology monitor: keeps one connection per node, checks every node each
//! `lag_check_interval` ([`check`]), turns the answers into the next snapshot with
//! [`advance`], logs what changed and publishes it ([`Publisher`]).

pub mod check;
pub mod positions;
pub mod publisher;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::backend::ServerConn;
use crate::settings::SharedSettings;
use crate::topology::{advance, health, Event, Outcome, Rules};

pub use positions::Positions;
pub use publisher::Publisher;

/// The target of the monitor's log lines: the one they had before the monitor moved out
/// of `topology`, so filters such as `pgsplit::topology=debug` and log collectors that
/// match on `target` keep seeing them.
const LOG_TARGET: &str = "pgsplit::topology";

/// Writes one log line per event, at a level that fits.
fn log(event: &Event, rules: &Rules) {
    match event {
        Event::RoleChanged { node, from, to } => {
            tracing::info!(target: LOG_TARGET, %node, ?from, ?to, "node role changed")
        }
        Event::Banned {
            node,
            reason,
            failures,
            length,
        } => tracing::warn!(
            target: LOG_TARGET,
            %node, %reason, failures, ban = ?length,
            "node check failed: banned from reads and checks"
        ),
        Event::Lifted { node, failures } => {
            tracing::info!(target: LOG_TARGET, %node, failures, "node answers again: ban lifted")
        }
        Event::Lagging { node, lag } => tracing::warn!(
            target: LOG_TARGET,
            %node, %lag,
            max_lag_bytes = rules.lag.max_bytes, max_lag_time = ?rules.lag.max_time,
            "standby lagging: no more reads until it catches up"
        ),
        Event::Readmitted { node, lag } => tracing::info!(
            target: LOG_TARGET,
            %node, %lag,
            polls = rules.lag.readmit_after_polls,
            "standby caught up: re-admitted to reads"
        ),
        Event::SplitBrain { primaries } => tracing::error!(
            target: LOG_TARGET,
            ?primaries,
            "more than one node is out of recovery; writes are refused until one remains"
        ),
        Event::SplitBrainOver => {
            tracing::info!(target: LOG_TARGET, "at most one node is out of recovery again")
        }
    }
}

/// Keeps one monitoring connection per node and publishes a snapshot after each round.
/// The node list and the rules come from the current configuration at every poll, so a
/// reload takes effect without restarting the monitor.
pub struct Monitor {
    settings: SharedSettings,
    conns: Vec<Option<ServerConn>>,
    publisher: Arc<Publisher>,
}

impl Monitor {
    /// A monitor for the configured nodes, publishing through `publisher`.
    pub fn new(settings: SharedSettings, publisher: Arc<Publisher>) -> Monitor {
        Monitor {
            settings,
            conns: Vec::new(),
            publisher,
        }
    }

    /// Checks every node that is not banned once, and publishes the result.
    pub async fn check(&mut self) {
        self.check_at(Instant::now()).await;
    }

    /// One poll; `now` decides which bans have run out and when new ones end.
    async fn check_at(&mut self, now: Instant) {
        let settings = self.settings.load_full();
        let rules = Rules::from_config(&settings.raw.monitor);
        let previous = self.publisher.current();
        self.conns.resize_with(previous.nodes.len(), || None);
        let settings = &*settings;
        let checks =
            previous
                .nodes
                .iter()
                .zip(self.conns.iter_mut())
                .map(|(before, conn)| async move {
                    if before.removed {
                        // Its monitoring connection closes; the node is never checked again.
                        *conn = None;
                        Outcome::Skipped
                    } else if health::due(before.ban.as_ref(), now) {
                        check::check(&before.node, conn, settings).await
                    } else {
                        Outcome::Skipped
                    }
                });
        let outcomes = futures_util::future::join_all(checks).await;
        let (next, events) = advance(&previous, outcomes, now, &rules);
        for event in &events {
            log(event, &rules);
        }
        self.publisher.publish_poll(next);
    }

    /// Checks every `lag_check_interval` (as configured now) until `stop` changes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut period = self.settings.load().raw.monitor.lag_check_interval;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // The tick's scheduled instant, not the wake-up time: consecutive polls are
                // then at least one interval apart, so a ban of one interval always runs
                // out by the next poll.
                at = tick.tick() => self.check_at(at.into_std()).await,
                _ = stop.changed() => return,
            }
            let configured = self.settings.load().raw.monitor.lag_check_interval;
            if configured != period {
                period = configured;
                tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        }
    }
}
