//! `ClockUnsynchronised`: the kernel says its clock is not synchronised, or estimates its
//! error above the configured limit.
//!
//! This is the agent's only module with `unsafe` code: one `adjtimex(2)` call in read-only
//! mode (`modes = 0`), which neither nix nor std offers. It needs no privilege and changes
//! nothing.
//!
//! Shortcoming: a unit with systemd's `ProtectClock=yes` filters the `adjtimex` system call
//! altogether, which would leave this check `UNKNOWN`; the agent's unit does not set it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use opi_proto::v1::Severity;

use super::config::HealthConfig;
use super::{CollectFuture, Collector, Observation};

/// The condition type.
pub const CLOCK_UNSYNCHRONISED: &str = "ClockUnsynchronised";

/// The kernel's view of its clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockStatus {
    /// `STA_UNSYNC`: no time service keeps the clock synchronised.
    pub unsynchronised: bool,
    /// The kernel's bound on the clock error (`maxerror`).
    pub max_error: Duration,
}

/// Reads the kernel's clock status.
#[derive(Debug)]
pub struct ClockCollector {
    max_error: Duration,
}

impl ClockCollector {
    /// A check with the limit of `config`.
    pub fn new(config: &HealthConfig) -> Self {
        Self {
            max_error: Duration::from_millis(config.clock.max_error_ms),
        }
    }

    /// Reads the status and judges it.
    pub fn observe(&self) -> io::Result<Observation> {
        Ok(judge(kernel_clock()?, self.max_error))
    }
}

impl Collector for ClockCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![CLOCK_UNSYNCHRONISED]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async move { Ok(vec![self.observe()?]) })
    }
}

/// The running kernel's clock status.
#[allow(unsafe_code)]
pub fn kernel_clock() -> io::Result<ClockStatus> {
    // SAFETY: `timex` is a plain C struct for which all-zero bytes are a valid value, and
    // `modes = 0` (the zeroed value) makes adjtimex read the status without changing it. The
    // pointer is to a live, exclusively borrowed local for the duration of the call.
    let (state, timex) = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut timex);
        (state, timex)
    };
    if state == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(ClockStatus {
        unsynchronised: timex.status & libc::STA_UNSYNC != 0,
        max_error: Duration::from_micros(u64::try_from(timex.maxerror).unwrap_or(0)),
    })
}

/// The condition a clock status means.
pub fn judge(clock: ClockStatus, limit: Duration) -> Observation {
    let error_ms = clock.max_error.as_millis();
    let limit_ms = limit.as_millis();
    if clock.unsynchronised {
        let message = format!(
            "the kernel marks its clock unsynchronised (no NTP or PTP service keeps it in step); estimated error up to {error_ms} ms"
        );
        let severity = Severity::Warning;
        return Observation::problem(
            CLOCK_UNSYNCHRONISED,
            "",
            severity,
            "ClockNotSynchronised",
            message,
        );
    }
    if clock.max_error > limit {
        let message = format!(
            "the clock is synchronised but its estimated error is {error_ms} ms, above {limit_ms} ms"
        );
        let severity = Severity::Warning;
        return Observation::problem(
            CLOCK_UNSYNCHRONISED,
            "",
            severity,
            "ClockErrorTooLarge",
            message,
        );
    }
    let message =
        format!("the clock is synchronised, estimated error {error_ms} ms (limit {limit_ms} ms)");
    Observation::ok(CLOCK_UNSYNCHRONISED, "", "ClockSynchronised", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;

    const LIMIT: Duration = Duration::from_millis(500);

    #[test]
    fn the_kernel_answers_without_changing_anything() {
        let before = kernel_clock().unwrap();
        // The kernel caps its error estimate at 16 s (NTP_PHASE_LIMIT).
        assert!(before.max_error <= Duration::from_secs(16), "{before:?}");
        let after = kernel_clock().unwrap();
        assert_eq!(after.unsynchronised, before.unsynchronised);
    }

    #[test]
    fn an_unsynchronised_clock_is_a_warning() {
        let clock = ClockStatus {
            unsynchronised: true,
            max_error: Duration::from_secs(16),
        };
        let seen = judge(clock, LIMIT);
        assert_eq!(seen.severity, Severity::Warning);
        assert_eq!(seen.reason, "ClockNotSynchronised");
        assert!(seen.message.contains("16000 ms"), "{}", seen.message);
    }

    #[test]
    fn a_synchronised_clock_is_judged_by_its_error() {
        let close = ClockStatus {
            unsynchronised: false,
            max_error: Duration::from_millis(20),
        };
        assert_eq!(judge(close, LIMIT).status, ConditionStatus::Ok);
        let far = ClockStatus {
            max_error: Duration::from_millis(501),
            ..close
        };
        assert_eq!(judge(far, LIMIT).reason, "ClockErrorTooLarge");
    }
}
