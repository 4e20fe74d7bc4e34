//! Health bans: a node whose check fails is left alone for a while, longer after each
//! consecutive failure, so a dead node costs one connection attempt per backoff instead
//! of one per poll. Pure functions over the previous ban and the clock.

use std::time::{Duration, Instant};

/// Why and until when a node is kept out of rotation and unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The failure that caused the ban (connection or query error).
    pub reason: String,
    /// The monitor checks the node again at the first poll at or after this.
    pub until: Instant,
    /// Consecutive failed checks, this one included.
    pub failures: u32,
}

/// How bans grow, from `[monitor]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first ban's length (`lag_check_interval`).
    pub first: Duration,
    /// The longest ban (`max_ban`).
    pub max: Duration,
}

impl Backoff {
    /// Ban length after `failures` consecutive failures: `first`, doubled per further
    /// failure, capped at `max`.
    pub fn length(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// Whether the monitor should check a node at `now`: always, unless it is banned and
/// the ban has not run out.
pub fn due(ban: Option<&Ban>, now: Instant) -> bool {
    ban.is_none_or(|b| now >= b.until)
}

/// The ban after a failed check at `now`: the previous one extended, or a first one.
pub fn after_failure(
    previous: Option<&Ban>,
    reason: String,
    now: Instant,
    backoff: &Backoff,
) -> Ban {
    let failures = previous.map_or(0, |b| b.failures).saturating_add(1);
    Ban {
        reason,
        until: now + backoff.length(failures),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn backoff() -> Backoff {
        Backoff {
            first: MS(500),
            max: MS(30_000),
        }
    }

    #[test]
    fn bans_double_per_failure_up_to_the_cap() {
        let cases = [
            (1, 500),
            (2, 1000),
            (3, 2000),
            (6, 16_000),
            (7, 30_000),
            (8, 30_000),
            (u32::MAX, 30_000),
        ];
        for (failures, ms) in cases {
            assert_eq!(backoff().length(failures), MS(ms), "{failures} failures");
        }
    }

    #[test]
    fn a_failing_node_is_checked_only_when_its_ban_runs_out() {
        let t0 = Instant::now();
        let first = after_failure(None, "refused".into(), t0, &backoff());
        assert_eq!((first.failures, first.until), (1, t0 + MS(500)));
        let cases = [
            (None, t0, true),
            (Some(&first), t0, false),
            (Some(&first), t0 + MS(499), false),
            (Some(&first), t0 + MS(500), true),
            (Some(&first), t0 + MS(900), true),
        ];
        for (ban, now, want) in cases {
            assert_eq!(due(ban, now), want, "{ban:?} at +{:?}", now - t0);
        }
        let t1 = t0 + MS(500);
        let second = after_failure(Some(&first), "timeout".into(), t1, &backoff());
        assert_eq!(second.failures, 2);
        assert_eq!(second.until, t1 + MS(1000));
        assert_eq!(second.reason, "timeout");
    }
}
