//! Replication lag: how far a standby is behind, and whether that keeps it from serving
//! reads. Pure functions, so every transition is covered by a table of cases.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::MonitorConfig;

use super::lsn::Lsn;

/// The shortest history of the primary's WAL positions kept (see [`WalHistory`]).
const MIN_HISTORY: Duration = Duration::from_secs(60);

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
    /// How much of the primary's WAL history to keep: past the time bound, so a standby
    /// older than all of it is known to be over the bound, and at least a minute (what
    /// `SHOW NODES` can show exactly).
    pub fn history_window(&self) -> Duration {
        self.max_time.max(MIN_HISTORY)
    }
    /// Whether a measured lag breaks a bound. An unknown measure breaks nothing: with no
    /// primary to compare against, standbys keep serving the reads they can. A lower
    /// bound of the time over the bound breaks it.
    fn exceeded(&self, bytes: Option<u64>, time: Option<Duration>) -> bool {
        let over_bytes = self.max_bytes > 0 && bytes.is_some_and(|b| b > self.max_bytes);
        let over_time = !self.max_time.is_zero() && time.is_some_and(|t| t > self.max_time);
        over_bytes || over_time
    }
    /// Whether a measured lag is back under both re-admit bounds. Unknown does not count,
    /// nor does a lower bound of the time: re-admission needs evidence that the standby
    /// has caught up.
    fn recovered(&self, bytes: Option<u64>, time: Option<Duration>, time_exact: bool) -> bool {
        let bytes_ok = self.max_bytes == 0 || bytes.is_some_and(|b| b <= self.readmit_bytes);
        let time_ok =
            self.max_time.is_zero() || (time_exact && time.is_some_and(|t| t <= self.readmit_time));
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

/// Why a standby cannot catch up whatever its measured lag: it is excluded until this
/// ends and its lag is back under the re-admit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Behind the primary and no WAL arriving: no receiver, or one not streaming.
    NotStreaming,
    /// Receiving another timeline than the primary writes on: it follows another
    /// history (a lost primary, a diverged one) and holds data the primary does not.
    OtherTimeline {
        /// The standby's receive timeline.
        standby: u32,
        /// The primary's.
        primary: u32,
    },
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stall::NotStreaming => f.write_str("behind and not streaming"),
            Stall::OtherTimeline { standby, primary } => {
                write!(f, "on timeline {standby}, the primary on {primary}")
            }
        }
    }
}

/// A standby's lag: what was measured, and whether it can catch up at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// WAL bytes it has yet to replay; None when unknown.
    pub bytes: Option<u64>,
    /// How long ago the primary was where its replay is now; None when unknown.
    pub time: Option<Duration>,
    /// `time` is only a lower bound: the replay position is older than every sample of
    /// the primary's positions kept.
    pub time_at_least: bool,
    /// Set when it cannot catch up.
    pub stall: Option<Stall>,
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.bytes {
            Some(bytes) => write!(f, "{bytes} bytes")?,
            None => f.write_str("unknown bytes")?,
        }
        let at_least = if self.time_at_least { "at least " } else { "" };
        match self.time {
            Some(time) => write!(f, ", {at_least}{:.3}s", time.as_secs_f64())?,
            None => f.write_str(", unknown time")?,
        }
        match self.stall {
            Some(stall) => write!(f, " ({stall})"),
            None => Ok(()),
        }
    }
}

/// The status after one more measurement. A standby over either bound, or stalled, is
/// excluded at once; it comes back only after `readmit_after_polls` consecutive
/// measurements under both re-admit bounds, so a standby hovering around the bound does
/// not flap.
pub fn next_status(previous: LagStatus, lag: &Lag, bounds: &LagBounds) -> LagStatus {
    let exceeded = lag.stall.is_some() || bounds.exceeded(lag.bytes, lag.time);
    let recovered =
        lag.stall.is_none() && bounds.recovered(lag.bytes, lag.time, !lag.time_at_least);
    match previous {
        LagStatus::Within if exceeded => LagStatus::Lagging { good_polls: 0 },
        LagStatus::Within => LagStatus::Within,
        LagStatus::Lagging { good_polls } if recovered => {
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

/// The primary's WAL positions over the last checks, oldest first: when the primary was
/// at a position tells how far behind a standby that has replayed up to it is. This is
/// how PostgreSQL's own `replay_lag` is measured, done by pgsplit so that it works for
/// every standby, named or not, cascading or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalHistory {
    /// Whose positions: the primary's node index and timeline; a change starts afresh.
    source: Option<(usize, Option<u32>)>,
    /// (sampled at, position) in increasing order of both.
    samples: VecDeque<(Instant, Lsn)>,
}

/// Samples kept over a window: a sample closer than window / `SAMPLES_PER_WINDOW` to the
/// previous one is not kept, which bounds memory for tiny check intervals and long
/// windows alike while the oldest sample still covers the window.
const SAMPLES_PER_WINDOW: u32 = 4096;

impl WalHistory {
    /// Adds the primary's position `lsn` sampled `at`; keeps what covers the last
    /// `window` (plus one older sample, so a position older than the window is known to
    /// be at least that old).
    pub fn record(
        &mut self,
        node: usize,
        timeline: Option<u32>,
        at: Instant,
        lsn: Lsn,
        window: Duration,
    ) {
        let continues = self.source == Some((node, timeline))
            && self
                .samples
                .back()
                .is_none_or(|&(t, l)| t <= at && l <= lsn);
        if !continues {
            self.samples.clear();
            self.source = Some((node, timeline));
        }
        let gap = window / SAMPLES_PER_WINDOW;
        if self.samples.back().is_some_and(|&(t, _)| at - t < gap) {
            return;
        }
        self.samples.push_back((at, lsn));
        let cutoff = at.checked_sub(window);
        while cutoff.is_some_and(|c| self.samples.get(1).is_some_and(|&(t, _)| t <= c)) {
            self.samples.pop_front();
        }
    }
    /// How far behind, at `at`, a standby is that has replayed up to `replay`: the time
    /// since the primary passed that position, interpolated between the two samples
    /// around it, and whether that is exact. Zero when it has everything of the newest
    /// sample; at least the age of the oldest sample when it is older than all of them
    /// (after a start or a promotion the history is short, but a lower bound over the
    /// time bound still excludes); unknown with no sample yet.
    pub fn lag(&self, replay: Lsn, at: Instant) -> Option<(Duration, bool)> {
        let &(_, newest) = self.samples.back()?;
        if replay >= newest {
            return Some((Duration::ZERO, true));
        }
        let after = self.samples.partition_point(|&(_, lsn)| lsn <= replay);
        let Some(before) = after.checked_sub(1) else {
            let (oldest, _) = self.samples[0];
            return Some((at.saturating_duration_since(oldest), false));
        };
        let (t0, l0) = self.samples[before];
        let (t1, l1) = self.samples[after];
        // l0 <= replay < l1, so the span is never zero.
        let span = u128::from(l1.0 - l0.0);
        let into = u128::from(replay.0 - l0.0);
        let nanos = (t1 - t0).as_nanos() * into / span;
        let passed = t0 + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Some((at.saturating_duration_since(passed), true))
    }
}

/// The primary as a standby is measured against.
#[derive(Debug, Clone, Copy)]
pub struct PrimaryView<'a> {
    /// Its `pg_current_wal_insert_lsn()` at this check.
    pub lsn: Lsn,
    /// The timeline it writes on, when known.
    pub timeline: Option<u32>,
    /// Its positions over the last checks.
    pub history: &'a WalHistory,
}

/// What a standby reported about itself, and what the primary reported about it.
#[derive(Debug, Clone, Copy)]
pub struct LagInputs<'a> {
    /// The primary, when exactly one answered.
    pub primary: Option<PrimaryView<'a>>,
    /// The standby's `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// When the standby was sampled.
    pub at: Instant,
    /// `replay_lag` of the primary's `pg_stat_replication` row for this standby, when a
    /// row could be matched and the value is not NULL.
    pub replay_lag: Option<Duration>,
    /// Whether WAL arrives: its own receiver is streaming (from the primary or,
    /// cascading, from another standby).
    pub streaming: bool,
    /// The timeline its receiver last received, when known.
    pub timeline: Option<u32>,
}

/// Byte lag and time lag of a standby, and whether it can catch up.
///
/// Bytes: primary's current LSN minus the standby's replay LSN. Time: zero if nothing is
/// left to replay; else the longer of the primary's `replay_lag` for it (when a row
/// matched) and the time since the primary passed its replay position
/// ([`WalHistory::lag`]). Without a primary none of it is known.
pub fn measure(inputs: &LagInputs) -> Lag {
    let Some(primary) = inputs.primary else {
        return Lag::default();
    };
    let bytes = inputs
        .replay_lsn
        .map(|replay| primary.lsn.bytes_after(replay));
    let stall = match (inputs.timeline, primary.timeline) {
        (Some(standby), Some(primary)) if standby != primary => {
            Some(Stall::OtherTimeline { standby, primary })
        }
        _ if !inputs.streaming && bytes.is_some_and(|b| b > 0) => Some(Stall::NotStreaming),
        _ => None,
    };
    let (time, exact) = match (bytes, inputs.replay_lsn) {
        (Some(0), _) => (Some(inputs.replay_lag.unwrap_or(Duration::ZERO)), true),
        (_, Some(replay)) => match primary.history.lag(replay, inputs.at) {
            Some((history, exact)) => (
                Some(inputs.replay_lag.map_or(history, |lag| lag.max(history))),
                exact,
            ),
            None => (inputs.replay_lag, true),
        },
        (_, None) => (None, true),
    };
    Lag {
        bytes,
        time,
        time_at_least: !exact,
        stall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn lag(bytes: Option<u64>, time: Option<Duration>) -> Lag {
        Lag {
            bytes,
            time,
            ..Lag::default()
        }
    }

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
            let lag = lag(bytes, time.map(MS));
            let got = next_status(before, &lag, &bounds());
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
            next_status(
                LagStatus::Within,
                &lag(Some(u64::MAX), Some(MS(0))),
                &bytes_off
            ),
            LagStatus::Within
        );
        assert_eq!(
            next_status(
                LagStatus::Lagging { good_polls: 1 },
                &lag(None, Some(MS(0))),
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
            next_status(
                LagStatus::Within,
                &lag(Some(0), Some(MS(999_999))),
                &time_off
            ),
            LagStatus::Within
        );
        assert_eq!(
            next_status(
                LagStatus::Lagging { good_polls: 1 },
                &lag(Some(0), None),
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
                &lag(Some(0), Some(MS(0))),
                &quick
            ),
            LagStatus::Within
        );
    }

    #[test]
    fn stalls_exclude_whatever_the_numbers_and_block_readmission() {
        let stalled = Lag {
            stall: Some(Stall::NotStreaming),
            ..lag(Some(0), Some(MS(0)))
        };
        assert_eq!(
            next_status(LagStatus::Within, &stalled, &bounds()),
            LagStatus::Lagging { good_polls: 0 }
        );
        assert_eq!(
            next_status(LagStatus::Lagging { good_polls: 1 }, &stalled, &bounds()),
            LagStatus::Lagging { good_polls: 0 }
        );
    }

    #[test]
    fn a_lower_bound_excludes_but_never_readmits() {
        let at_least = |ms| Lag {
            time_at_least: true,
            ..lag(Some(0), Some(MS(ms)))
        };
        let cases = [
            (
                LagStatus::Within,
                at_least(20_000),
                LagStatus::Lagging { good_polls: 0 },
            ),
            (LagStatus::Within, at_least(3000), LagStatus::Within),
            (
                LagStatus::Lagging { good_polls: 1 },
                at_least(3000),
                LagStatus::Lagging { good_polls: 0 },
            ),
        ];
        for (before, lag, want) in cases {
            assert_eq!(
                next_status(before, &lag, &bounds()),
                want,
                "{before:?} {lag}"
            );
        }
    }

    /// A primary that wrote 1000 bytes per second for ten seconds, sampled every second.
    fn steady_history(t0: Instant) -> WalHistory {
        let mut history = WalHistory::default();
        for s in 0..=10u64 {
            history.record(0, Some(1), t0 + MS(s * 1000), Lsn(s * 1000), MS(60_000));
        }
        history
    }

    #[test]
    fn time_lag_is_when_the_primary_passed_the_replay_position() {
        let t0 = Instant::now();
        let history = steady_history(t0);
        let now = t0 + MS(10_000);
        let exact = |ms| Some((MS(ms), true));
        let cases = [
            ("has the newest sample", 10_000, exact(0)),
            ("ahead of the newest sample", 12_000, exact(0)),
            ("exactly at a sample", 7000, exact(3000)),
            ("between samples: interpolated", 7500, exact(2500)),
            ("at the oldest sample", 0, exact(10_000)),
        ];
        for (why, replay, want) in cases {
            assert_eq!(history.lag(Lsn(replay), now), want, "{why}");
        }
        let mut late = WalHistory::default();
        late.record(0, Some(1), t0 + MS(5000), Lsn(5000), MS(60_000));
        assert_eq!(
            late.lag(Lsn(10), now),
            Some((MS(5000), false)),
            "older than every sample: at least the oldest one's age"
        );
        assert_eq!(
            WalHistory::default().lag(Lsn(1), now),
            None,
            "no sample: unknown"
        );
    }

    #[test]
    fn samples_closer_than_the_window_allows_are_not_kept() {
        let t0 = Instant::now();
        let mut history = WalHistory::default();
        // A 1 ms check interval over a 60 s window keeps one sample per 60 s / 4096.
        for ms in 0..1000u64 {
            history.record(0, Some(1), t0 + MS(ms), Lsn(ms), MS(60_000));
        }
        assert_eq!(history.samples.len(), 67, "{:?}", history.samples.back());
    }

    #[test]
    fn the_history_keeps_its_window_and_restarts_with_a_new_primary() {
        let t0 = Instant::now();
        let mut history = steady_history(t0);
        history.record(0, Some(1), t0 + MS(11_000), Lsn(11_000), MS(3000));
        // One sample at or before the cutoff is kept: positions older than the window are
        // known to be at least that old.
        assert_eq!(history.samples.front(), Some(&(t0 + MS(8000), Lsn(8000))));
        assert_eq!(history.samples.len(), 4);
        let mut promoted = history.clone();
        promoted.record(2, Some(2), t0 + MS(12_000), Lsn(11_500), MS(3000));
        assert_eq!(promoted.samples.len(), 1, "another node: a new history");
        let mut rewound = history.clone();
        rewound.record(0, Some(1), t0 + MS(12_000), Lsn(100), MS(3000));
        assert_eq!(
            rewound.samples.len(),
            1,
            "a position going back: a new history"
        );
        let mut next_timeline = history;
        next_timeline.record(0, Some(2), t0 + MS(12_000), Lsn(11_500), MS(3000));
        assert_eq!(
            next_timeline.samples.len(),
            1,
            "a new timeline: a new history"
        );
    }

    #[test]
    fn lag_is_measured_against_the_primary() {
        let t0 = Instant::now();
        let history = steady_history(t0);
        let now = t0 + MS(10_000);
        let primary = Some(PrimaryView {
            lsn: Lsn(10_000),
            timeline: Some(1),
            history: &history,
        });
        let standby =
            |replay: Option<u64>, replay_lag: Option<u64>, streaming, timeline| LagInputs {
                primary,
                replay_lsn: replay.map(Lsn),
                at: now,
                replay_lag: replay_lag.map(MS),
                streaming,
                timeline,
            };
        let lag = |bytes: Option<u64>, time: Option<u64>, stall| Lag {
            bytes,
            time: time.map(MS),
            time_at_least: false,
            stall,
        };
        #[rustfmt::skip]
        let cases = [
            ("a matched row's replay_lag when it is longer", standby(Some(9900), Some(300), true, Some(1)), lag(Some(100), Some(300), None)),
            ("the history when it is longer than replay_lag", standby(Some(6000), Some(300), true, Some(1)), lag(Some(4000), Some(4000), None)),
            ("fully replayed: zero", standby(Some(10_000), None, true, Some(1)), lag(Some(0), Some(0), None)),
            ("behind without a row: from the primary's history", standby(Some(9500), None, true, Some(1)), lag(Some(500), Some(500), None)),
            ("ahead of the sample: not negative", standby(Some(11_000), None, true, None), lag(Some(0), Some(0), None)),
            ("behind and not streaming: stalled", standby(Some(9000), None, false, None), lag(Some(1000), Some(1000), Some(Stall::NotStreaming))),
            ("caught up and not streaming: fine", standby(Some(10_000), None, false, None), lag(Some(0), Some(0), None)),
            ("another timeline: stalled even when ahead", standby(Some(12_000), None, true, Some(2)), lag(Some(0), Some(0), Some(Stall::OtherTimeline { standby: 2, primary: 1 }))),
            ("no replay position yet: unknown", standby(None, None, true, None), lag(None, None, None)),
        ];
        for (why, inputs, want) in cases {
            assert_eq!(measure(&inputs), want, "{why}");
        }
        let no_primary = LagInputs {
            primary: None,
            ..standby(Some(1), Some(1), true, Some(1))
        };
        assert_eq!(measure(&no_primary), Lag::default(), "no primary: unknown");
    }

    #[test]
    fn unknown_lag_prints_as_unknown() {
        let cases = [
            (Lag::default(), "unknown bytes, unknown time"),
            (lag(Some(264), Some(MS(1500))), "264 bytes, 1.500s"),
            (
                Lag {
                    time_at_least: true,
                    ..lag(Some(264), Some(MS(61_000)))
                },
                "264 bytes, at least 61.000s",
            ),
            (
                Lag {
                    stall: Some(Stall::NotStreaming),
                    ..lag(Some(264), None)
                },
                "264 bytes, unknown time (behind and not streaming)",
            ),
        ];
        for (lag, want) in cases {
            assert_eq!(lag.to_string(), want);
        }
    }
}
