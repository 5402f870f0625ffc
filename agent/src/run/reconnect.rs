//! Delays between session attempts. After failures: exponential backoff with full jitter.
//! After a manager's going-away notice (it shuts down, most often to restart): the delay the
//! manager drew for this node within its spread, then, while the manager is still away, one
//! attempt per spread for a while, so that a fleet comes back within seconds of a restart and
//! spread over them, instead of backing off for up to a minute against a manager that was only
//! restarting, or all coming at once the moment it listens again.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::backoff::Backoff;

/// Ceiling of the first retry after a going-away notice's delay, when the notice gives no
/// spread.
pub const NOTICE_RETRY_BASE: Duration = Duration::from_millis(250);
/// Longest retry delay within [`NOTICE_WINDOW`] of a going-away notice without a spread.
pub const NOTICE_RETRY_CAP: Duration = Duration::from_secs(2);
/// Longest spread a notice may give.
pub const MAX_NOTICE_SPREAD: Duration = Duration::from_secs(60);
/// How long after a going-away notice retries stay short; then the backoff after failures
/// applies, from its start.
pub const NOTICE_WINDOW: Duration = Duration::from_secs(120);
/// Longest delay a notice may ask for, whatever the manager says.
pub const MAX_NOTICE_DELAY: Duration = Duration::from_secs(60);

/// What the next attempt waits.
#[derive(Clone, Debug)]
pub struct Reconnect {
    failures: Backoff,
    notice_retries: Backoff,
    notice: Option<Notice>,
}

/// A going-away notice being followed.
#[derive(Clone, Copy, Debug)]
struct Notice {
    /// The manager's delay, until the first attempt takes it.
    after: Option<Duration>,
    /// The span the manager drew its agents' delays from; zero when it did not say.
    spread: Duration,
    /// End of the retries that follow the notice.
    until: Instant,
}

impl Reconnect {
    /// Backoff after failures from below `base` up to `cap`, no notice.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            failures: Backoff::new(base, cap),
            notice_retries: Backoff::new(NOTICE_RETRY_BASE, NOTICE_RETRY_CAP),
            notice: None,
        }
    }

    /// The manager is going away and asks for a first attempt after `after`, a delay it drew
    /// within `spread` (zero when it did not say).
    pub fn going_away(&mut self, after: Duration, spread: Duration) {
        self.failures.reset();
        self.notice_retries.reset();
        self.notice = Some(Notice {
            after: Some(after.min(MAX_NOTICE_DELAY)),
            spread: spread.min(MAX_NOTICE_SPREAD),
            until: Instant::now() + NOTICE_WINDOW,
        });
    }

    /// Whether a notice arrived whose delay no attempt has waited yet.
    pub fn notice_pending(&self) -> bool {
        self.notice.is_some_and(|n| n.after.is_some())
    }

    /// The delay before the next attempt, after a lost session or a failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        if let Some(notice) = &mut self.notice {
            if let Some(after) = notice.after.take() {
                return after;
            }
            if Instant::now() < notice.until {
                if notice.spread.is_zero() {
                    return self.notice_retries.next_delay();
                }
                // One attempt per spread keeps the fleet's attempts as spread as the manager
                // drew them, so that it takes them back at the pace it asked for however long
                // it stays away; the jitter keeps agents from falling into step.
                return notice.spread.mul_f64(rand::rng().random_range(0.9..=1.1));
            }
            self.notice = None;
        }
        self.failures.next_delay()
    }

    /// A session opened: a notice followed until now is done with.
    pub fn opened(&mut self) {
        self.notice = None;
    }

    /// Starts the backoff after failures again, after a stable session.
    pub fn reset(&mut self) {
        self.failures.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn a_notice_gives_its_delay_then_short_retries() {
        let mut reconnect = Reconnect::new(BASE, CAP);
        for _ in 0..8 {
            reconnect.next_delay();
        }
        reconnect.going_away(Duration::from_millis(1234), Duration::ZERO);
        assert!(reconnect.notice_pending());
        assert_eq!(reconnect.next_delay(), Duration::from_millis(1234));
        assert!(!reconnect.notice_pending());
        for _ in 0..20 {
            assert!(reconnect.next_delay() <= NOTICE_RETRY_CAP);
        }
    }

    #[test]
    fn an_opened_session_ends_the_short_retries() {
        let mut reconnect = Reconnect::new(BASE, CAP);
        reconnect.going_away(Duration::ZERO, Duration::ZERO);
        reconnect.next_delay();
        reconnect.opened();
        for _ in 0..8 {
            reconnect.next_delay();
        }
        assert!(reconnect.failures.ceiling() > NOTICE_RETRY_CAP);
    }

    #[test]
    fn a_notice_cannot_ask_for_a_long_wait() {
        let mut reconnect = Reconnect::new(BASE, CAP);
        reconnect.going_away(Duration::from_secs(3600), Duration::from_secs(3600));
        assert_eq!(reconnect.next_delay(), MAX_NOTICE_DELAY);
        assert!(reconnect.next_delay() <= MAX_NOTICE_SPREAD.mul_f64(1.1));
    }

    #[test]
    fn after_a_notice_with_a_spread_each_retry_waits_about_the_spread() {
        let spread = Duration::from_secs(20);
        let mut reconnect = Reconnect::new(BASE, CAP);
        reconnect.going_away(Duration::from_millis(1234), spread);
        assert_eq!(reconnect.next_delay(), Duration::from_millis(1234));
        let retries: Vec<Duration> = (0..50).map(|_| reconnect.next_delay()).collect();
        assert!(
            retries
                .iter()
                .all(|d| *d >= spread.mul_f64(0.9) && *d <= spread.mul_f64(1.1)),
            "{retries:?}"
        );
        assert!(
            retries.iter().any(|d| *d != retries[0]),
            "jittered, not in step"
        );
        reconnect.opened();
        assert!(reconnect.next_delay() <= BASE, "a session ends the notice");
    }
}
