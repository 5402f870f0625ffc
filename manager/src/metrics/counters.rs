//! Counters the fleet bumps as things happen: enrollments by outcome, heartbeats, open agent
//! sessions. Plain atomics, so that counting never slows the operation counted.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use super::histogram::{Histogram, FAST_BUCKETS};
use crate::fleet::FleetError;

/// Why an enrollment was refused, as the `reason` label of `opi_enrollments_total` says. The
/// set is fixed so that the metric's cardinality stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    TokenUnknown,
    TokenSecret,
    TokenRevoked,
    TokenExpired,
    TokenUsedUp,
    BadCsr,
    NameTaken,
    RateLimited,
    AgentVersion,
    Other,
}

/// What the fleet counts, owned by [`crate::fleet::Fleet`].
#[derive(Debug)]
pub struct FleetCounters {
    enrolled: AtomicU64,
    /// Indexed like [`RefusalReason::ALL`].
    refused: [AtomicU64; RefusalReason::ALL.len()],
    heartbeats: AtomicU64,
    /// Time the manager spends handling one heartbeat, from decoded message to updated state.
    heartbeat_processing: Histogram,
    sessions: AtomicI64,
}

/// An open agent session, counted in `opi_agent_sessions` until dropped.
#[derive(Debug)]
pub struct OpenSession {
    counters: Arc<FleetCounters>,
}

impl RefusalReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RefusalReason; 10] = [
        RefusalReason::TokenUnknown,
        RefusalReason::TokenSecret,
        RefusalReason::TokenRevoked,
        RefusalReason::TokenExpired,
        RefusalReason::TokenUsedUp,
        RefusalReason::BadCsr,
        RefusalReason::NameTaken,
        RefusalReason::RateLimited,
        RefusalReason::AgentVersion,
        RefusalReason::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::TokenUnknown => "token_unknown",
            RefusalReason::TokenSecret => "token_secret",
            RefusalReason::TokenRevoked => "token_revoked",
            RefusalReason::TokenExpired => "token_expired",
            RefusalReason::TokenUsedUp => "token_used_up",
            RefusalReason::BadCsr => "bad_csr",
            RefusalReason::NameTaken => "name_taken",
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::AgentVersion => "agent_version",
            RefusalReason::Other => "other",
        }
    }

    /// The reason an enrollment refused with `error` is counted under. A token that does not
    /// parse names no known token, so it counts as `token_unknown`.
    pub fn of(error: &FleetError) -> Self {
        match error {
            FleetError::MalformedToken(_) | FleetError::UnknownToken { .. } => Self::TokenUnknown,
            FleetError::TokenSecretMismatch { .. } => Self::TokenSecret,
            FleetError::TokenRevoked { .. } => Self::TokenRevoked,
            FleetError::TokenExpired { .. } => Self::TokenExpired,
            FleetError::TokenUsedUp { .. } => Self::TokenUsedUp,
            FleetError::BadCsr(_) => Self::BadCsr,
            FleetError::NameTaken { .. } => Self::NameTaken,
            FleetError::TooManyFailures { .. } => Self::RateLimited,
            FleetError::UnsupportedAgent { .. } => Self::AgentVersion,
            FleetError::InvalidName { .. }
            | FleetError::UnknownNode { .. }
            | FleetError::NodeRevoked { .. }
            | FleetError::StaleCertificate { .. }
            | FleetError::ExpiredPastWindow { .. }
            | FleetError::ReenrollNotAllowed { .. }
            | FleetError::RotateSelection(_)
            | FleetError::UnsignedProfile { .. }
            | FleetError::NoClientCertificate
            | FleetError::CertificateRefused(_)
            | FleetError::WrongIdentity { .. }
            | FleetError::Forbidden { .. }
            | FleetError::InvalidArgument(_)
            | FleetError::NoSuchToken { .. }
            | FleetError::InvalidProfile { .. }
            | FleetError::UnknownProfile { .. }
            | FleetError::InvalidStrategy { .. }
            | FleetError::NoRollout { .. }
            | FleetError::NothingToUndo { .. }
            | FleetError::RolloutActionRefused { .. }
            | FleetError::Conflict { .. }
            | FleetError::Store(_)
            | FleetError::Issue(_)
            | FleetError::SignReport(_)
            | FleetError::SignCheckpoint(_)
            | FleetError::LoginCodeRefused { .. }
            | FleetError::TooManyLoginFailures { .. } => Self::Other,
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

impl Default for FleetCounters {
    fn default() -> Self {
        Self {
            enrolled: AtomicU64::default(),
            refused: Default::default(),
            heartbeats: AtomicU64::default(),
            heartbeat_processing: Histogram::new(FAST_BUCKETS),
            sessions: AtomicI64::default(),
        }
    }
}

impl FleetCounters {
    /// Counts one enrollment: granted when `refusal` is `None`.
    pub fn count_enrollment(&self, refusal: Option<&FleetError>) {
        match refusal {
            None => self.enrolled.fetch_add(1, Ordering::Relaxed),
            Some(error) => {
                let reason = RefusalReason::of(error);
                self.refused[reason.index()].fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Counts one heartbeat received.
    pub fn count_heartbeat(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long handling one heartbeat took.
    pub fn observe_heartbeat(&self, took: Duration) {
        self.heartbeat_processing.observe(took);
    }

    /// Durations of heartbeat handling.
    pub fn heartbeat_processing(&self) -> &Histogram {
        &self.heartbeat_processing
    }

    /// Counts an agent session as open until the returned guard is dropped.
    pub fn session_opened(self: &Arc<Self>) -> OpenSession {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        OpenSession {
            counters: self.clone(),
        }
    }

    /// Enrollments granted.
    pub fn enrolled(&self) -> u64 {
        self.enrolled.load(Ordering::Relaxed)
    }

    /// Enrollments refused for `reason`.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Heartbeats received.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Agent sessions open now.
    pub fn sessions(&self) -> i64 {
        self.sessions.load(Ordering::Relaxed)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.counters.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_under_their_reason() {
        let counters = FleetCounters::default();
        counters.count_enrollment(None);
        counters.count_enrollment(Some(&FleetError::TokenUsedUp {
            id: "t".into(),
            uses: 1,
        }));
        counters.count_enrollment(Some(&FleetError::TooManyFailures {
            addr: "127.0.0.1".into(),
        }));

        assert_eq!(counters.enrolled(), 1);
        assert_eq!(counters.refused(RefusalReason::TokenUsedUp), 1);
        assert_eq!(counters.refused(RefusalReason::RateLimited), 1);
        assert_eq!(counters.refused(RefusalReason::Other), 0);
    }

    #[test]
    fn a_session_counts_as_open_until_its_guard_is_dropped() {
        let counters = Arc::new(FleetCounters::default());
        let first = counters.session_opened();
        let second = counters.session_opened();
        drop(first);

        assert_eq!(counters.sessions(), 1);
        drop(second);
        assert_eq!(counters.sessions(), 0);
    }
}
