//! Shutting down without a reconnection storm: each agent is told that the manager goes away
//! and when to come back, drawn so that the fleet returns spread over a few seconds.

use std::time::Duration;

use opi_proto::v1::manager_message::Body;
use opi_proto::v1::{GoingAway, ManagerMessage};

use super::Fleet;

/// Sessions a manager takes back per second after a restart, about what one replica
/// handshakes on two shared cores (measured by the benchmark's restart row); the spread of
/// the agents' delays grows with the fleet at this rate.
pub const RECONNECTS_PER_SEC: u64 = 2_000;
/// Shortest spread of the agents' reconnection delays.
pub const MIN_SPREAD: Duration = Duration::from_secs(1);
/// Longest spread of the agents' reconnection delays.
pub const MAX_SPREAD: Duration = Duration::from_secs(20);
/// What an agent is told, beside its delay.
pub const REASON: &str = "the manager is shutting down";

/// The spread of reconnection delays for `sessions` agents.
pub fn spread(sessions: u64) -> Duration {
    let secs = sessions as f64 / RECONNECTS_PER_SEC as f64;
    Duration::from_secs_f64(secs).clamp(MIN_SPREAD, MAX_SPREAD)
}

impl Fleet {
    /// Starts shutting down: every session sends its agent a [`GoingAway`] and ends, watches
    /// end, and new sessions are refused; agents reconnect to this manager when it is back,
    /// or to another replica.
    pub fn shut_down(&self) {
        let spread = spread(self.counters.sessions().max(0) as u64);
        self.stopping.send_replace(Some(spread));
    }

    /// Whether the manager is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.borrow().is_some()
    }

    /// Completes when the manager starts shutting down.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(Option::is_some).await;
    }

    /// The going-away notice of one agent, with its own delay within the spread.
    pub fn going_away(&self) -> ManagerMessage {
        let spread = self.stopping.borrow().unwrap_or(MIN_SPREAD);
        let after = spread.mul_f64(rand::random_range(0.0..1.0));
        ManagerMessage {
            body: Some(Body::GoingAway(GoingAway {
                reconnect_after_ms: after.as_millis().try_into().unwrap_or(u32::MAX),
                reason: REASON.into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_grows_with_the_fleet_within_bounds() {
        assert_eq!(spread(0), MIN_SPREAD);
        assert_eq!(spread(10_000), Duration::from_secs(5));
        assert_eq!(spread(1_000_000), MAX_SPREAD);
    }
}
