//! The reconciler: computes the alerts that should fire from the fleet's state, every few
//! seconds and soon after each event, and publishes them for the delivery workers. It keeps
//! no history of what it sent: the desired set is a function of the fleet and the time.
//! Each evaluation copies every node's view; its cost in fleets of many thousands of nodes has
//! not been measured yet.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};

use super::manager::{certificates, heartbeat, StoreErrorWatch};
use super::nodes::{self, RuleSettings};
use super::rollouts;
use super::{AlertMetrics, Snapshot};
use crate::fleet::Fleet;
use crate::records::EventRecord;
use crate::store::StoreMetrics;

/// Longest time between two evaluations.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(2);
/// Pause after an event before evaluating, so that a burst of events is evaluated once.
const COALESCE_EVENTS: Duration = Duration::from_millis(100);

/// Computes the desired alerts.
pub(super) struct Reconciler {
    pub fleet: Arc<Fleet>,
    pub rules: RuleSettings,
    pub store: Arc<StoreMetrics>,
    pub metrics: Arc<AlertMetrics>,
    pub started_at: OffsetDateTime,
    pub desired: watch::Sender<Arc<Snapshot>>,
    pub store_errors: StoreErrorWatch,
}

impl Reconciler {
    /// Evaluates until the fleet's event log closes or the task is aborted.
    pub async fn run(mut self) {
        let mut events = self.fleet.events().subscribe();
        loop {
            let wait = self.evaluate();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                received = events.recv() => {
                    if matches!(received, Err(RecvError::Closed)) {
                        return;
                    }
                    tokio::time::sleep(COALESCE_EVENTS).await;
                    drain(&mut events);
                }
            }
        }
    }

    /// Publishes the alerts due now; returns how long until the next evaluation.
    fn evaluate(&mut self) -> Duration {
        if !self.fleet.leads() {
            // Only the leader replica judges alerts; a follower looks again soon.
            return Duration::from_secs(1);
        }
        let now = OffsetDateTime::now_utc();
        let nodes = self.fleet.nodes(None);
        let node_alerts = nodes::evaluate(&nodes, &self.rules, now);
        self.store_errors.observe(self.store.errors(), now);

        let mut firing = node_alerts.firing;
        firing.extend(rollouts::evaluate(
            &self.fleet.rollouts(),
            &self.rules.fleet,
        ));
        firing.extend(self.store_errors.alert(&self.rules.fleet));
        let expiries = self.fleet.manager_certs().expiries(now);
        firing.extend(certificates(&self.rules.fleet, &expiries));
        self.metrics.set_active(firing.len());
        firing.push(heartbeat(&self.rules.fleet, self.started_at));
        for alert in &mut firing {
            alert.link_runbook(&self.rules.runbooks);
        }
        self.desired
            .send_replace(Arc::new(Snapshot { at: now, firing }));

        let until_due = node_alerts.next_due.map_or(EVALUATE_EVERY, |due| {
            (due - now).try_into().unwrap_or_default()
        });
        until_due.min(EVALUATE_EVERY)
    }
}

/// Empties the queue of events already received: one evaluation covers them all.
fn drain(events: &mut broadcast::Receiver<EventRecord>) {
    loop {
        match events.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
            Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return,
        }
    }
}
