//! What systemd hears from `opi-agent run` (a `Type=notify` unit): `READY=1` once the first
//! session is open or, when no manager answers, once the agent has decided to run offline
//! (every endpoint failed once, or [`OFFLINE_READY_AFTER`] passed), with a `STATUS=` line
//! saying so; a status line at every session change; `WATCHDOG=1` from the reconnection and
//! session loops themselves, so that a stuck loop stops the pings and systemd restarts the
//! agent; `STOPPING=1` on SIGTERM. Outside systemd every call does nothing.
//!
//! Known shortcoming: work awaited inside those loops for longer than the watchdog interval
//! must ping [`Readiness::watchdog`] itself, or systemd takes the agent for hung; applies run
//! in the applier's own task, whose hangs the watchdog does not see.

use std::sync::Arc;
use std::time::Duration;

use opi_systemd::Notifier;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Longest the agent waits for a first session before telling systemd it runs offline.
pub const OFFLINE_READY_AFTER: Duration = Duration::from_secs(30);
/// Watchdog ping period when systemd asked for no watchdog (the pings then do nothing).
const IDLE_PING: Duration = Duration::from_secs(60);

/// The agent's side of the notification protocol.
#[derive(Debug)]
pub struct Readiness {
    notifier: Arc<Notifier>,
    endpoints: usize,
    failures: usize,
}

impl Readiness {
    /// Notifications through `notifier` for an agent with `endpoints` managers to try.
    pub fn new(notifier: Arc<Notifier>, endpoints: usize) -> Self {
        Self {
            notifier,
            endpoints: endpoints.max(1),
            failures: 0,
        }
    }

    /// Says `READY=1` (offline) after `after` unless a session or a failed round came first.
    /// One message, once: this task never feeds the watchdog.
    pub fn spawn_offline_deadline(&self, after: Duration) {
        let notifier = self.notifier.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if !notifier.is_ready() {
                let waited = humantime::format_duration(after);
                notifier.ready(&format!(
                    "offline: no session with a manager after {waited}; still trying"
                ));
            }
        });
    }

    /// A session with `endpoint` is open.
    pub fn session_open(&mut self, endpoint: &str) {
        self.failures = 0;
        let status = format!("connected to {endpoint}");
        if self.notifier.is_ready() {
            self.notifier.status(&status);
        } else {
            self.notifier.ready(&status);
        }
    }

    /// A session ended (`why`, one line); the agent retries in `retry_in`.
    pub fn session_lost(&mut self, endpoint: &str, why: &str, retry_in: Duration) {
        self.failures += 1;
        let retry_in = humantime::format_duration(round_to_millis(retry_in));
        let status = format!("offline: {endpoint}: {why}; retrying in {retry_in}");
        if self.notifier.is_ready() || self.failures < self.endpoints {
            self.notifier.status(&status);
        } else {
            self.notifier.ready(&status);
        }
    }

    /// Pings the watchdog (at most every half of its interval).
    pub fn watchdog(&self) {
        self.notifier.watchdog();
    }

    /// A timer for the session loop to ping the watchdog from.
    pub fn watchdog_timer(&self) -> Interval {
        let period = self.ping_period();
        let mut timer = tokio::time::interval_at(Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    }

    /// Waits `delay`, pinging the watchdog meanwhile: the reconnection loop's pause.
    pub async fn sleep(&self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep((until - now).min(self.ping_period())).await;
            self.watchdog();
        }
    }

    fn ping_period(&self) -> Duration {
        self.notifier
            .watchdog_interval()
            // Notifier::watchdog skips pings closer than half the interval: ticking at a
            // quarter keeps every gap under three quarters of it.
            .map_or(IDLE_PING, |interval| interval / 4)
    }
}

fn round_to_millis(delay: Duration) -> Duration {
    Duration::from_millis(delay.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    /// A real notification socket and a readiness for `endpoints` managers notifying it.
    fn listening(endpoints: usize) -> (tempfile::TempDir, UnixDatagram, Readiness) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier = Notifier::new(Some(path.to_str().unwrap()), None);
        (dir, socket, Readiness::new(Arc::new(notifier), endpoints))
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut messages = Vec::new();
        let mut buffer = [0u8; 1024];
        while let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        messages
    }

    #[test]
    fn ready_offline_only_once_every_endpoint_failed() {
        let (_dir, socket, mut readiness) = listening(2);
        let delay = Duration::from_millis(1500);

        readiness.session_lost("https://m1:7443", "connection refused", delay);
        readiness.session_lost("https://m2:7443", "timed out", delay);
        readiness.session_open("https://m1:7443");

        assert_eq!(
            received(&socket),
            [
                "STATUS=offline: https://m1:7443: connection refused; retrying in 1s 500ms\n",
                "READY=1\nSTATUS=offline: https://m2:7443: timed out; retrying in 1s 500ms\n",
                "STATUS=connected to https://m1:7443\n",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ready_offline_after_the_deadline_when_no_attempt_ended() {
        let (_dir, socket, readiness) = listening(3);

        readiness.spawn_offline_deadline(OFFLINE_READY_AFTER);
        tokio::time::sleep(OFFLINE_READY_AFTER - Duration::from_millis(1)).await;
        assert!(received(&socket).is_empty(), "nothing before the deadline");
        tokio::time::sleep(Duration::from_millis(2)).await;
        tokio::task::yield_now().await;

        assert_eq!(
            received(&socket),
            ["READY=1\nSTATUS=offline: no session with a manager after 30s; still trying\n"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_says_nothing_once_a_session_made_the_agent_ready() {
        let (_dir, socket, mut readiness) = listening(1);

        readiness.spawn_offline_deadline(OFFLINE_READY_AFTER);
        readiness.session_open("https://m1:7443");
        tokio::time::sleep(OFFLINE_READY_AFTER * 2).await;
        tokio::task::yield_now().await;

        assert_eq!(
            received(&socket),
            ["READY=1\nSTATUS=connected to https://m1:7443\n"]
        );
    }
}
