//! Shutting down without a reconnection storm: each agent is told that the manager goes away
//! and when to come back, drawn so that the fleet returns spread over a few seconds.

use std::time::Duration;

use opi_proto::v1::manager_message::Body;
use opi_proto::v1::{GoingAway, ManagerMessage};

use super::Fleet;

/// Default of `serve --reconnect-rate`: sessions a manager takes back per second after a
/// restart, about what one manager took back on two cores shared with the simulator
/// (800-1,000/s). The spread of the agents' delays grows with the fleet at this rate, so that
/// they come no faster than they are taken.
pub const RECONNECTS_PER_SEC: u32 = 800;
/// Shortest spread of the agents' reconnection delays.
pub const MIN_SPREAD: Duration = Duration::from_secs(1);
/// Longest spread of the agents' reconnection delays, the longest an agent accepts.
pub const MAX_SPREAD: Duration = Duration::from_secs(60);
/// How often a stopping manager looks whether its sessions have all ended.
const ENDED_POLL: Duration = Duration::from_millis(20);
/// What an agent is told, beside its delay.
pub const REASON: &str = "the manager is shutting down";

/// The spread of reconnection delays for `sessions` agents taken back at `rate` a second.
pub fn spread(sessions: u64, rate: u32) -> Duration {
    let secs = sessions as f64 / f64::from(rate.max(1));
    Duration::from_secs_f64(secs).clamp(MIN_SPREAD, MAX_SPREAD)
}

impl Fleet {
    /// Starts shutting down: every session sends its agent a [`GoingAway`] and ends, watches
    /// end, and new sessions are refused; agents reconnect to this manager when it is back,
    /// or to another replica.
    pub fn shut_down(&self) {
        let held = self.counters.sessions().max(0) as u64;
        let spread = spread(held, self.settings.reconnect_rate);
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

    /// Waits until every session has ended after [`Fleet::shut_down`], at most `within`.
    pub async fn sessions_ended(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.counters.sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(ENDED_POLL).await;
        }
    }

    /// The going-away notice of one agent, with its own delay within the spread.
    pub fn going_away(&self) -> ManagerMessage {
        let spread = self.stopping.borrow().unwrap_or(MIN_SPREAD);
        let after = spread.mul_f64(rand::random_range(0.0..1.0));
        ManagerMessage {
            body: Some(Body::GoingAway(GoingAway {
                reconnect_after_ms: millis(after),
                reason: REASON.into(),
                spread_ms: millis(spread),
            })),
        }
    }
}

fn millis(duration: Duration) -> u32 {
    duration.as_millis().try_into().unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_grows_with_the_fleet_within_bounds() {
        assert_eq!(spread(0, 800), MIN_SPREAD);
        assert_eq!(spread(8_000, 800), Duration::from_secs(10));
        assert_eq!(spread(8_000, 400), Duration::from_secs(20));
        assert_eq!(spread(1_000_000, 800), MAX_SPREAD);
        assert_eq!(
            spread(8_000, 0),
            MAX_SPREAD,
            "a rate of zero is taken as one"
        );
    }
}
