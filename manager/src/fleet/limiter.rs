//! Rate limit on failed enrollment attempts, per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed attempts allowed per address and window.
pub const MAX_FAILURES: u32 = 10;
/// Length of the window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; the oldest windows are dropped beyond it.
const MAX_TRACKED: usize = 10_000;

/// Counts failures per address in fixed windows.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: HashMap<IpAddr, (Instant, u32)>,
}

impl FailureLimiter {
    /// Whether `addr` may try again now.
    pub fn allows(&mut self, addr: IpAddr, now: Instant) -> bool {
        match self.windows.get(&addr) {
            Some((start, count)) if now.duration_since(*start) < WINDOW => *count < MAX_FAILURES,
            _ => true,
        }
    }

    /// Records a refused attempt from a blocked `addr`; true for the first of its window, so
    /// that a flood of them is audited once, not once per attempt.
    pub fn refuse(&mut self, addr: IpAddr) -> bool {
        match self.windows.get_mut(&addr) {
            Some((_, count)) => {
                *count = count.saturating_add(1);
                *count == MAX_FAILURES + 1
            }
            None => true,
        }
    }

    /// Records a failed attempt from `addr`.
    pub fn record_failure(&mut self, addr: IpAddr, now: Instant) {
        if self.windows.len() >= MAX_TRACKED {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let window = self.windows.entry(addr).or_insert((now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_until_window_ends() {
        let mut limiter = FailureLimiter::default();
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(limiter.allows(addr, start));
            limiter.record_failure(addr, start);
        }
        assert!(!limiter.allows(addr, start));
        assert!(limiter.refuse(addr), "the first refusal is reported");
        assert!(!limiter.refuse(addr), "later ones are not");
        assert!(limiter.allows("127.0.0.2".parse().unwrap(), start));
        assert!(limiter.allows(addr, start + WINDOW));
    }
}
