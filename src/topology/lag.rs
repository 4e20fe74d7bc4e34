//! Replication lag: how far a standby is behind, and whether that keeps it from serving
//! reads. Pure functions, so every transition is covered by a table of cases.

use std::time::Duration;

use crate::config::MonitorConfig;

use super::lsn::Lsn;

/// Lag bounds with hysteresis, from `[monitor]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagBounds {
    /// Byte lag above which a standby is excluded; 0 = no byte bound.
    pub max_bytes: u64,
    /// Time lag above which a standby is excluded; zero = no time bound.
    pub max_time: Duration,
    /// Byte lag an excluded standby must be back under.
    pub readmit_bytes: u64,
    /// Time lag an excluded standby must be back under.
    pub readmit_time: Duration,
    /// Consecutive checks under both re-admit bounds before it serves reads again.
    pub readmit_after_polls: u32,
}

impl LagBounds {
    /// The bounds a validated `[monitor]` table asks for.
    pub fn from_config(monitor: &MonitorConfig) -> LagBounds {
        LagBounds {
            max_bytes: monitor.max_lag_bytes,
            max_time: monitor.max_lag_time,
            readmit_bytes: monitor.readmit_bytes(),
            readmit_time: monitor.readmit_time(),
            readmit_after_polls: monitor.readmit_after_polls,
        }
    }

    /// Whether a measured lag breaks a bound. An unknown measure breaks nothing: with no
    /// primary to compare against, standbys keep serving the reads they can.
    fn exceeded(&self, bytes: Option<u64>, time: Option<Duration>) -> bool {
        let over_bytes = self.max_bytes > 0 && bytes.is_some_and(|b| b > self.max_bytes);
        let over_time = !self.max_time.is_zero() && time.is_some_and(|t| t > self.max_time);
        over_bytes || over_time
    }

    /// Whether a measured lag is back under both re-admit bounds. Unknown does not count:
    /// re-admission needs evidence that the standby has caught up.
    fn recovered(&self, bytes: Option<u64>, time: Option<Duration>) -> bool {
        let bytes_ok = self.max_bytes == 0 || bytes.is_some_and(|b| b <= self.readmit_bytes);
        let time_ok = self.max_time.is_zero() || time.is_some_and(|t| t <= self.readmit_time);
        bytes_ok && time_ok
    }
}

/// Where a standby stands against the lag bounds; kept from one check to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LagStatus {
    /// Within bounds: may serve reads.
    #[default]
    Within,
    /// Excluded for lag; `good_polls` consecutive checks so far were under the re-admit bounds.
    Lagging {
        /// Consecutive checks under both re-admit bounds.
        good_polls: u32,
    },
}

impl LagStatus {
    /// Whether lag keeps the node from serving reads.
    pub fn excluded(self) -> bool {
        matches!(self, LagStatus::Lagging { .. })
    }
}

/// The status after one more measurement. A standby over either bound is excluded at
/// once; it comes back only after `readmit_after_polls` consecutive measurements under
/// both re-admit bounds, so a standby hovering around the bound does not flap.
pub fn next_status(
    previous: LagStatus,
    bytes: Option<u64>,
    time: Option<Duration>,
    bounds: &LagBounds,
) -> LagStatus {
    match previous {
        LagStatus::Within if bounds.exceeded(bytes, time) => LagStatus::Lagging { good_polls: 0 },
        LagStatus::Within => LagStatus::Within,
        LagStatus::Lagging { good_polls } if bounds.recovered(bytes, time) => {
            let good_polls = good_polls.saturating_add(1);
            if good_polls >= bounds.readmit_after_polls {
                LagStatus::Within
            } else {
                LagStatus::Lagging { good_polls }
            }
        }
        // Any poll that is not clearly caught up restarts the count: "consecutive".
        LagStatus::Lagging { .. } => LagStatus::Lagging { good_polls: 0 },
    }
}

/// What a standby reported about itself, and what the primary reported about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagInputs {
    /// The primary's `pg_current_wal_lsn()`, when exactly one primary answered.
    pub primary_lsn: Option<Lsn>,
    /// The standby's `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// `replay_lag` of the primary's `pg_stat_replication` row for this standby, if
    /// there is such a row and the value is not NULL.
    pub replay_lag: Option<Duration>,
    /// `now() - pg_last_xact_replay_timestamp()` on the standby.
    pub since_last_replay: Option<Duration>,
    /// Whether the primary's `pg_stat_replication` has a row for this standby.
    pub streaming: bool,
}

/// Byte lag and time lag of a standby.
///
/// Bytes: primary's current LSN minus the standby's replay LSN. Time: the primary's
/// `replay_lag` for it; when that is missing, zero if nothing is left to replay, else the
/// age of the last replayed commit. Without a primary neither is known: the age of the
/// last commit would only grow, and would wrongly exclude every standby during an outage.
pub fn measure(inputs: &LagInputs) -> (Option<u64>, Option<Duration>) {
    let Some(primary) = inputs.primary_lsn else {
        return (None, None);
    };
    let bytes = inputs.replay_lsn.map(|replay| primary.bytes_after(replay));
    if !inputs.streaming && bytes.is_some_and(|b| b > 0) {
        // Behind and not streaming from this primary (it follows a lost primary, or
        // none): it will never catch up, so its lag has no bound.
        return (bytes, Some(Duration::MAX));
    }
    let time = match (inputs.replay_lag, bytes) {
        (Some(lag), _) => Some(lag),
        (None, Some(0)) => Some(Duration::ZERO),
        (None, Some(_)) => inputs.since_last_replay,
        (None, None) => None,
    };
    (bytes, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn bounds() -> LagBounds {
        LagBounds {
            max_bytes: 1000,
            max_time: MS(10_000),
            readmit_bytes: 500,
            readmit_time: MS(5_000),
            readmit_after_polls: 2,
        }
    }

    #[test]
    fn lag_status_transitions() {
        use LagStatus::{Lagging, Within};
        let lagging = |good_polls| Lagging { good_polls };
        // Kept one case per line so the table reads as a table.
        #[rustfmt::skip]
        let cases = [
            // (why, before, bytes, time in ms, after)
            ("under both bounds", Within, Some(10), Some(10), Within),
            ("exactly at the byte bound", Within, Some(1000), Some(0), Within),
            ("over the byte bound", Within, Some(1001), Some(0), lagging(0)),
            ("over the time bound", Within, Some(0), Some(10_001), lagging(0)),
            ("over both", Within, Some(5000), Some(20_000), lagging(0)),
            ("unknown lag keeps a good standby", Within, None, None, Within),
            ("known bytes over, time unknown", Within, Some(2000), None, lagging(0)),
            ("between the bounds stays out", lagging(0), Some(700), Some(0), lagging(0)),
            ("between bounds resets the count", lagging(1), Some(700), Some(0), lagging(0)),
            ("time between the bounds", lagging(1), Some(0), Some(7000), lagging(0)),
            ("first good poll", lagging(0), Some(500), Some(5000), lagging(1)),
            ("second good poll re-admits", lagging(1), Some(0), Some(0), Within),
            ("unknown does not count as caught up", lagging(1), None, Some(0), lagging(0)),
            ("unknown time does not count", lagging(1), Some(0), None, lagging(0)),
            ("over the bound again", lagging(1), Some(5000), Some(0), lagging(0)),
        ];
        for (why, before, bytes, time, want) in cases {
            let got = next_status(before, bytes, time.map(MS), &bounds());
            assert_eq!(got, want, "{why}: {before:?} with {bytes:?} B, {time:?} ms");
        }
    }

    #[test]
    fn a_bound_that_is_off_never_excludes_nor_blocks_readmission() {
        let bytes_off = LagBounds {
            max_bytes: 0,
            readmit_bytes: 0,
            ..bounds()
        };
        assert_eq!(
            next_status(LagStatus::Within, Some(u64::MAX), Some(MS(0)), &bytes_off),
            LagStatus::Within
        );
        assert_eq!(
            next_status(
                LagStatus::Lagging { good_polls: 1 },
                None,
                Some(MS(0)),
                &bytes_off
            ),
            LagStatus::Within
        );
        let time_off = LagBounds {
            max_time: Duration::ZERO,
            readmit_time: Duration::ZERO,
            ..bounds()
        };
        assert_eq!(
            next_status(LagStatus::Within, Some(0), Some(MS(999_999)), &time_off),
            LagStatus::Within
        );
        assert_eq!(
            next_status(
                LagStatus::Lagging { good_polls: 1 },
                Some(0),
                None,
                &time_off
            ),
            LagStatus::Within
        );
    }

    #[test]
    fn one_poll_readmits_when_configured() {
        let quick = LagBounds {
            readmit_after_polls: 1,
            ..bounds()
        };
        assert_eq!(
            next_status(
                LagStatus::Lagging { good_polls: 0 },
                Some(0),
                Some(MS(0)),
                &quick
            ),
            LagStatus::Within
        );
    }

    #[test]
    fn lag_is_measured_against_the_primary() {
        let lsn = |n| Some(Lsn(n));
        let cases = [
            (
                "replay_lag from pg_stat_replication wins",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: lsn(1000),
                    replay_lag: Some(MS(300)),
                    since_last_replay: Some(MS(9000)),
                    streaming: true,
                },
                (Some(4000), Some(MS(300))),
            ),
            (
                "no replay_lag and fully replayed: zero",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: lsn(5000),
                    replay_lag: None,
                    since_last_replay: Some(MS(60_000)),
                    streaming: true,
                },
                (Some(0), Some(Duration::ZERO)),
            ),
            (
                "no replay_lag and behind: age of the last replayed commit",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: lsn(4000),
                    replay_lag: None,
                    since_last_replay: Some(MS(60_000)),
                    streaming: true,
                },
                (Some(1000), Some(MS(60_000))),
            ),
            (
                "a standby ahead of the sample is not negative",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: lsn(6000),
                    replay_lag: None,
                    since_last_replay: None,
                    streaming: true,
                },
                (Some(0), Some(Duration::ZERO)),
            ),
            (
                "behind and not streaming from this primary: no bound",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: lsn(4000),
                    replay_lag: None,
                    since_last_replay: Some(MS(1)),
                    streaming: false,
                },
                (Some(1000), Some(Duration::MAX)),
            ),
            (
                "caught up without a pg_stat_replication row: zero",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: lsn(5000),
                    replay_lag: None,
                    since_last_replay: None,
                    streaming: false,
                },
                (Some(0), Some(Duration::ZERO)),
            ),
            (
                "no primary: unknown",
                LagInputs {
                    primary_lsn: None,
                    replay_lsn: lsn(6000),
                    replay_lag: Some(MS(1)),
                    since_last_replay: Some(MS(1)),
                    streaming: true,
                },
                (None, None),
            ),
            (
                "no replay position yet: unknown",
                LagInputs {
                    primary_lsn: lsn(5000),
                    replay_lsn: None,
                    replay_lag: None,
                    since_last_replay: None,
                    streaming: true,
                },
                (None, None),
            ),
        ];
        for (why, inputs, want) in cases {
            assert_eq!(measure(&inputs), want, "{why}");
        }
    }
}
