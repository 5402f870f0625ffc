//! Shutting down without a reconnection storm: each agent is told that the manager goes away
//! and when to come back, drawn so that the fleet returns spread over a few seconds.

use std::time::Duration;

use futures_util::StreamExt;
use opi_proto::v1::manager_message::Body;
use opi_proto::v1::{GoingAway, ManagerMessage};
use tracing::{debug, info, warn};

use super::Fleet;
use crate::records::{node_key, NodeRecord};
use crate::store::{to_json, Revision, Txn, TxnOutcome};

/// Sessions a manager takes back per second after a restart, about what one manager took
/// back on two cores shared with the simulator (800-1,000/s); the spread of the agents'
/// delays grows with the fleet at this rate, so that they do not overflow the listen backlog.
/// It is a constant, not measured on the machine: three replicas sharing two cores took about
/// 1,000 sessions a second back in all, so their agents came faster than they were taken.
pub const RECONNECTS_PER_SEC: u64 = 800;
/// Shortest spread of the agents' reconnection delays.
pub const MIN_SPREAD: Duration = Duration::from_secs(1);
/// Longest spread of the agents' reconnection delays.
pub const MAX_SPREAD: Duration = Duration::from_secs(20);
/// Node records written per transaction at shutdown, within etcd's 128 operations.
const SAVE_BATCH: usize = 100;
/// Transactions of last-seen times in flight at shutdown: one at a time, a replica that held
/// 16,667 sessions waited for 167 etcd round trips in a row before it could stop.
const SAVES_IN_FLIGHT: usize = 8;
/// How often a stopping manager looks whether its sessions have all ended.
const ENDED_POLL: Duration = Duration::from_millis(20);
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

    /// Waits until every session has ended after [`Fleet::shut_down`], at most `within`.
    pub async fn sessions_ended(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.counters.sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(ENDED_POLL).await;
        }
    }

    /// Writes the last-seen time of every session the shutdown ended here, [`SAVE_BATCH`]
    /// nodes per transaction: one write per session made a large fleet's shutdown last
    /// seconds. A node changed meanwhile keeps the time its own last write gave it, and the
    /// rest of its batch is written without it.
    pub async fn save_last_seen(&self) {
        let names = std::mem::take(
            &mut *self
                .ended_by_shutdown
                .lock()
                .expect("shutdown lock poisoned"),
        );
        if names.is_empty() {
            return;
        }
        let ended: Vec<(NodeRecord, Revision)> = {
            let nodes = self.nodes.read().expect("fleet lock poisoned");
            names
                .iter()
                .filter_map(|name| nodes.get(name))
                .filter(|e| e.live.is_none() && e.record.last_seen < Some(e.last_contact))
                .map(|e| {
                    let mut record = e.record.clone();
                    record.last_seen = Some(e.last_contact);
                    (record, e.revision)
                })
                .collect()
        };
        let saved: usize = futures_util::stream::iter(ended.chunks(SAVE_BATCH))
            .map(|batch| self.save_batch(batch.to_vec()))
            .buffer_unordered(SAVES_IN_FLIGHT)
            .fold(0, |saved, batch| async move { saved + batch })
            .await;
        info!(
            nodes = saved,
            ended = names.len(),
            "last-seen times saved at shutdown"
        );
    }

    /// Writes one batch of last-seen times, leaving out the nodes changed meanwhile; returns
    /// how many were written.
    async fn save_batch(&self, mut batch: Vec<(NodeRecord, Revision)>) -> usize {
        while !batch.is_empty() {
            let txn = batch.iter().fold(Txn::new(), |txn, (record, revision)| {
                let key = node_key(&record.name);
                txn.when_revision(&key, *revision)
                    .put(&key, to_json(record))
            });
            match self.store().txn(txn).await {
                Ok(TxnOutcome::Committed(_)) => return batch.len(),
                Ok(TxnOutcome::Conflict { key }) => {
                    debug!(key = %key, "a node changed during shutdown; its last-seen time is left as it was written");
                    let before = batch.len();
                    batch.retain(|(record, _)| node_key(&record.name) != key);
                    if batch.len() == before {
                        warn!(key = %key, nodes = batch.len(), "a write at shutdown conflicted on a key outside its batch; the batch's last-seen times are not saved");
                        return 0;
                    }
                }
                Err(error) => {
                    warn!(error = %error, nodes = batch.len(), "cannot save last-seen times at shutdown");
                    return 0;
                }
            }
        }
        0
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
        assert_eq!(spread(0), MIN_SPREAD);
        assert_eq!(spread(8_000), Duration::from_secs(10));
        assert_eq!(spread(1_000_000), MAX_SPREAD);
    }
}
