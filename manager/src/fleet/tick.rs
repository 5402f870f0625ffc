//! The supervisor's periodic pass: connectivity after the grace period, stale reports, and
//! flapping conditions that calmed down. Cheap when nothing changes: one read of memory.

use std::time::Instant;

use time::OffsetDateTime;
use tracing::warn;

use super::supervise::{apply_axes, desired_health, status_name, Observed};
use super::{shutdowns, Fleet, NodeEntry};
use crate::events::Draft;
use crate::events::FlapDetector;
use crate::records::{Connectivity, NodeState, Severity};

/// Which nodes a supervisor's pass looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The leader's: every node but those whose session another replica holds.
    Leader,
    /// A replica's that does not lead: the nodes whose session it holds.
    Held,
}

impl Fleet {
    /// Brings the supervised axes of the nodes `pass` covers up to date; called about once a
    /// second. A session's replica judges its node, since only it sees the node's reports
    /// arrive: the leader, which sees only the record, took every node held elsewhere for
    /// one whose report went stale.
    pub async fn supervise(&self, pass: Pass) {
        let now = OffsetDateTime::now_utc();
        let calmed = self
            .flaps
            .lock()
            .expect("flap lock poisoned")
            .calm_down(Instant::now());
        if let Some(replica) = self.replica.get().filter(|_| pass == Pass::Leader) {
            // A session another replica holds is contact: the grace period runs from when
            // it was last listed (only the leader judges nodes without a session here).
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            for entry in nodes.values_mut().filter(|e| e.live.is_none()) {
                if replica.held_elsewhere(&entry.record.name) {
                    entry.last_contact = now;
                }
            }
        }
        let due: Vec<(String, Observed)> = {
            let nodes = self.nodes.read().expect("fleet lock poisoned");
            let flaps = self.flaps.lock().expect("flap lock poisoned");
            nodes
                .values()
                .filter(|e| e.record.state == NodeState::Active)
                .filter(|e| match pass {
                    Pass::Held => e.live.is_some(),
                    Pass::Leader => e.live.is_some() || !self.held_elsewhere(e),
                })
                .filter_map(|e| {
                    let observed = self.observe(e, now);
                    let calming = calmed.iter().any(|c| c.node == e.record.name);
                    (calming || needs_update(e, observed, &flaps))
                        .then(|| (e.record.name.clone(), observed))
                })
                .collect()
        };
        // A node turned offline gets the last-seen time its manager saved when it stopped,
        // if that is later than its record's.
        let saved = match due.iter().any(|(_, observed)| !observed.online) {
            true => Some(self.saved_times().await),
            false => None,
        };
        for (name, observed) in due {
            let saved_at = saved.as_ref().and_then(|s| s.get(&name).copied());
            let result = self
                .update_node(&name, None, |record, drafts| {
                    let mut flaps = self.flaps.lock().expect("flap lock poisoned");
                    for calm in calmed.iter().filter(|c| c.node == name) {
                        let current = record
                            .supervision
                            .conditions
                            .iter()
                            .find(|c| c.key() == calm.condition);
                        let status = current.map(|c| status_name(c.status)).unwrap_or("none");
                        drafts.push(
                            Draft::new(
                                &record.name,
                                &record.pool,
                                "flapping",
                                "flapping",
                                "stable",
                            )
                            .subject(calm.condition.clone())
                            .because(
                                "Stable",
                                format!("{} stable as {status} for 5m", calm.condition),
                            )
                            .severity(Severity::Info),
                        );
                        if status != calm.emitted {
                            drafts.push(
                                Draft::new(
                                    &record.name,
                                    &record.pool,
                                    "condition",
                                    &calm.emitted,
                                    status,
                                )
                                .subject(calm.condition.clone())
                                .because("Stable", "final status after flapping"),
                            );
                        }
                        flaps.set_emitted(&name, &calm.condition, status);
                    }
                    apply_axes(record, observed, &flaps, now, drafts);
                    if let Some(at) = saved_at.filter(|_| !observed.online) {
                        shutdowns::raise_last_seen(record, at);
                    }
                    Ok(())
                })
                .await;
            if let Err(error) = result {
                warn!(node = %name, error = %error, "cannot record a supervised transition");
            }
        }
    }

    /// Whether another replica held the node's session when last listed.
    fn held_elsewhere(&self, entry: &NodeEntry) -> bool {
        self.replica
            .get()
            .is_some_and(|r| r.held_elsewhere(&entry.record.name))
    }

    /// What memory says of a node a pass covers now (never one held elsewhere: its replica
    /// judges it).
    fn observe(&self, entry: &NodeEntry, now: OffsetDateTime) -> Observed {
        let grace = self.settings.offline_after;
        let online = match &entry.live {
            Some(live) => now - live.last_seen <= grace,
            None => {
                entry.record.supervision.connectivity == Connectivity::Online
                    && now - entry.last_contact <= grace
            }
        };
        let observed_at = entry
            .live
            .as_ref()
            .and_then(|l| l.conditions_observed_at)
            .or(entry.record.supervision.conditions_observed_at);
        Observed {
            online,
            fresh: self.is_fresh(observed_at, now),
        }
    }
}

fn needs_update(entry: &NodeEntry, observed: Observed, flaps: &FlapDetector) -> bool {
    let sup = &entry.record.supervision;
    let connectivity = if observed.online {
        Connectivity::Online
    } else {
        Connectivity::Offline
    };
    sup.connectivity != connectivity || sup.health != desired_health(&entry.record, observed, flaps)
}
