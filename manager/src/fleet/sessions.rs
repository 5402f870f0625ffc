//! Live agent sessions: attach on hello, heartbeats in memory, detach on disconnect.
//!
//! Only transitions reach the store (last seen, boot id and facts at connect and disconnect);
//! heartbeats update memory alone.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use opi_pki::tls::PeerCert;
use opi_proto::v1::manager_message::Body as ManagerBody;
use opi_proto::v1::{HealthSummary, ManagerMessage, Recording};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tonic::Status;
use tracing::{info, warn};

use super::config_axis::{self, ApplyReport};
use super::supervise::{apply_axes, apply_report, Observed};
use super::{Fleet, FleetError, Live, Outgoing};
use crate::records::{ConditionRecord, Facts, GenerationId, NodeRecord};
use crate::store::StoreError;

/// What the agent said in its hello.
#[derive(Clone, Debug)]
pub struct SessionHello {
    pub boot_id: String,
    pub facts: Facts,
    pub summary: Option<HealthSummary>,
    /// The conditions, when the agent sent a report with its hello.
    pub report: Option<Vec<ConditionRecord>>,
    /// The profile generation the node runs, if any.
    pub applied: Option<GenerationId>,
    /// Digest of the trust bundle the agent stored; empty from agents that keep none.
    pub trust_bundle_digest: String,
}

/// A registered session; dropped sessions must be detached.
#[derive(Clone, Debug)]
pub struct Session {
    pub node: String,
    pub id: u64,
    /// Notified when the manager closes the session (revocation, replacement).
    pub closed: Arc<Notify>,
}

impl Fleet {
    /// Registers a node's session, replacing (and closing) any previous one.
    ///
    /// While this replica cannot reach the fleet store, the session is accepted from memory
    /// (the certificate checked against the node as last read) and recorded once the store
    /// is back ([`Fleet::record_unrecorded_sessions`]).
    pub async fn attach(
        &self,
        cert: &PeerCert,
        hello: SessionHello,
        remote: SocketAddr,
        outbound: mpsc::Sender<Outgoing>,
    ) -> Result<Session, FleetError> {
        let name = cert.identity.name.clone();
        let arrival = Arrival {
            serial: cert.serial.clone(),
            hello,
            remote,
            at: OffsetDateTime::now_utc(),
        };
        let unrecorded = match self.record_arrival(&name, &arrival).await {
            Ok(()) => None,
            Err(FleetError::Store(StoreError::Unavailable { .. }))
                if self.store_lost_since().is_some() =>
            {
                let (record, _) = self.node_record(&name)?;
                check_serial(&record, &arrival.serial)?;
                warn!(node = %name, remote = %remote, "fleet store unreachable: session accepted from memory, recorded when the store is back");
                Some(Box::new(arrival.clone()))
            }
            Err(error) => return Err(error),
        };
        let (now, hello) = (arrival.at, arrival.hello);

        let session = Session {
            node: name.clone(),
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            closed: Arc::new(Notify::new()),
        };
        let live = Live {
            session: session.id,
            last_seen: now,
            summary: hello.summary,
            conditions_observed_at: hello.report.is_some().then_some(now),
            remote_addr: remote.to_string(),
            outbound,
            closed: session.closed.clone(),
            unrecorded,
        };
        if let Some(previous) = self.swap_live(&name, Some(live))? {
            // Heard from within two heartbeats: not a half-open connection.
            let alive = now - previous.last_seen <= self.settings.heartbeat * 2;
            let older = previous.remote_addr.clone();
            close(
                previous,
                Status::aborted("replaced by a newer session of the same node"),
            );
            if alive {
                self.live_session_replaced(&name, &older, &remote.to_string())
                    .await;
            }
        }
        if let Some(replica) = self.replica.get() {
            replica.hold(&name).await;
        }
        info!(node = %name, remote = %remote, boot_id = %hello.boot_id, "session open");
        Ok(session)
    }

    /// Writes what a session's opening changes in the node's record: the certificate it
    /// came with, facts, boot id, address, the applied generation and the hello's report.
    /// An opening that changes only what every opening refreshes ([`only_refreshed`]) writes
    /// nothing, so that a fleet reconnecting after a restart does not rewrite every record.
    async fn record_arrival(&self, name: &str, arrival: &Arrival) -> Result<(), FleetError> {
        let hello = &arrival.hello;
        let now = arrival.at;
        let wanted = self
            .node(name)
            .ok()
            .and_then(|view| self.generation_wanted(&view.record.pool, name));
        let change = |record: &mut NodeRecord, drafts: &mut Vec<_>| {
            check_serial(record, &arrival.serial)?;
            // A session with the newest certificate supersedes the previous one, which stays
            // accepted only until then (in case the renewal's answer was lost).
            if record.serials.first() == Some(&arrival.serial) {
                record.serials.truncate(1);
            }
            record.facts = hello.facts.clone();
            record.trust_bundle_digest = hello.trust_bundle_digest.clone();
            record.boot_id = hello.boot_id.clone();
            record.last_seen = Some(now);
            record.remote_addr = arrival.remote.to_string();
            config_axis::on_hello(record, hello.applied, now, drafts);
            raise_desired(record, wanted, now, drafts);
            let mut flaps = self.flaps.lock().expect("flap lock poisoned");
            if let Some(report) = &hello.report {
                apply_report(
                    record,
                    report.clone(),
                    now,
                    &mut flaps,
                    Instant::now(),
                    drafts,
                );
            }
            let fresh = self.is_fresh(record.supervision.conditions_observed_at, now);
            apply_axes(
                record,
                Observed {
                    online: true,
                    fresh,
                },
                &flaps,
                now,
                drafts,
            );
            Ok(())
        };
        self.update_node_unless(name, None, change, Some(only_refreshed))
            .await?;
        Ok(())
    }

    /// Records the sessions accepted from memory while the store was unreachable; returns
    /// how many were recorded. Those that still cannot be stay pending.
    pub async fn record_unrecorded_sessions(&self) -> usize {
        let pending: Vec<(String, u64, Box<Arrival>)> = {
            let nodes = self.nodes.read().expect("fleet lock poisoned");
            nodes
                .values()
                .filter_map(|e| e.live.as_ref().map(|live| (&e.record.name, live)))
                .filter_map(|(name, live)| {
                    let arrival = live.unrecorded.clone()?;
                    Some((name.clone(), live.session, arrival))
                })
                .collect()
        };
        let mut recorded = 0;
        for (name, session, arrival) in pending {
            if let Err(error) = self.record_arrival(&name, &arrival).await {
                warn!(node = %name, error = %error, "cannot record a session accepted while the store was unreachable");
                continue;
            }
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            let live = nodes.get_mut(&name).and_then(|e| e.live.as_mut());
            if let Some(live) = live.filter(|l| l.session == session) {
                live.unrecorded = None;
                recorded += 1;
            }
        }
        recorded
    }

    /// Records a heartbeat; false when the session is no longer the node's current one.
    pub fn heartbeat(
        &self,
        session: &Session,
        summary: Option<HealthSummary>,
        conditions_observed_at: Option<OffsetDateTime>,
    ) -> bool {
        self.counters.count_heartbeat();
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        let Some(entry) = nodes.get_mut(&session.node) else {
            return false;
        };
        let Some(live) = entry.live.as_mut().filter(|l| l.session == session.id) else {
            return false;
        };
        let now = OffsetDateTime::now_utc();
        live.last_seen = now;
        if summary.is_some() {
            live.summary = summary;
        }
        if conditions_observed_at.is_some() {
            live.conditions_observed_at = conditions_observed_at;
        }
        entry.last_contact = now;
        true
    }

    /// Applies a health report: new conditions, and the health they give.
    pub async fn report(
        &self,
        session: &Session,
        report: Vec<ConditionRecord>,
    ) -> Result<(), FleetError> {
        let now = OffsetDateTime::now_utc();
        self.update_node(&session.node, None, |record, drafts| {
            let mut flaps = self.flaps.lock().expect("flap lock poisoned");
            apply_report(
                record,
                report.clone(),
                now,
                &mut flaps,
                Instant::now(),
                drafts,
            );
            apply_axes(
                record,
                Observed {
                    online: true,
                    fresh: true,
                },
                &flaps,
                now,
                drafts,
            );
            Ok(())
        })
        .await?;
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        if let Some(live) = nodes.get_mut(&session.node).and_then(|e| e.live.as_mut()) {
            live.conditions_observed_at = Some(now);
        }
        Ok(())
    }

    /// Unregisters a session that ended. The node stays online for the grace period, during
    /// which it may reconnect without any event.
    pub async fn detach(&self, session: &Session) {
        let last_seen = {
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            let Some(entry) = nodes.get_mut(&session.node) else {
                return;
            };
            match &entry.live {
                Some(live) if live.session == session.id => {
                    let last_seen = live.last_seen;
                    entry.live = None;
                    entry.last_contact = last_seen;
                    last_seen
                }
                _ => return,
            }
        };
        info!(node = %session.node, "session closed");
        if self.is_stopping() {
            // Written with every other session's by `save_last_seen`; the replica's session
            // keys go with its lease.
            let mut ended = self
                .ended_by_shutdown
                .lock()
                .expect("shutdown lock poisoned");
            ended.push(session.node.clone());
            return;
        }
        if let Some(replica) = self.replica.get() {
            replica.release(&session.node).await;
        }
        let result = self
            .update_node(&session.node, None, |record, _| {
                record.last_seen = Some(last_seen);
                Ok(())
            })
            .await;
        if let Err(error) = result {
            if !matches!(error, FleetError::UnknownNode { .. }) {
                warn!(node = %session.node, error = %error, "cannot record last-seen time");
            }
        }
    }

    /// Whether conditions observed at `at` are recent enough to trust.
    pub(super) fn is_fresh(&self, at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
        at.is_some_and(|at| now - at <= self.settings.freshness)
    }

    /// Closes a node's session, if any, with `status` as the reason given to the agent.
    /// Records what the node's agent reported of a profile generation.
    pub async fn apply_report(
        &self,
        session: &Session,
        report: ApplyReport,
    ) -> Result<(), FleetError> {
        let now = OffsetDateTime::now_utc();
        self.update_node(&session.node, None, |record, drafts| {
            config_axis::on_report(record, &report, now, drafts);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Queues `message` on the node's session; false when it has none or its queue is full
    /// (the node gets what it needs again at its next hello).
    pub(super) fn send(&self, name: &str, message: ManagerMessage) -> bool {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        let Some(live) = nodes.get(name).and_then(|e| e.live.as_ref()) else {
            return false;
        };
        match live.outbound.try_send(Box::new(Ok(message))) {
            Ok(()) => true,
            Err(error) => {
                warn!(node = %name, error = %error, "cannot queue a message for the node; it gets it again at its next hello");
                false
            }
        }
    }

    /// Tells every connected agent whether this replica records its session now (see
    /// [`crate::replica::Replica::store_lost`]); returns how many were told.
    pub fn announce_recording(&self, recorded: bool, replica: &str) -> usize {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        let mut told = 0;
        for live in nodes.values().filter_map(|entry| entry.live.as_ref()) {
            // A message a full queue refuses is not sent again: that agent learns the state
            // at its next session only.
            let message = recording_message(recorded, replica);
            told += usize::from(live.outbound.try_send(Box::new(Ok(message))).is_ok());
        }
        info!(
            recorded,
            replica,
            sessions = told,
            "agents told whether their sessions are recorded"
        );
        told
    }

    pub(super) fn close_session(&self, name: &str, status: Status) {
        if let Ok(Some(live)) = self.swap_live(name, None) {
            close(live, status);
        }
    }

    fn swap_live(&self, name: &str, live: Option<Live>) -> Result<Option<Live>, FleetError> {
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        let entry = nodes
            .get_mut(name)
            .ok_or_else(|| FleetError::UnknownNode { name: name.into() })?;
        Ok(std::mem::replace(&mut entry.live, live.map(Box::new)).map(|live| *live))
    }
}

/// Targets a node at the generation its pool's rollout reached for it when that is newer than
/// its desired one: a node new to the pool, skipped while offline, or that a stopped manager
/// did not target yet. Never lower: the agent refuses older generations.
fn raise_desired(
    record: &mut NodeRecord,
    wanted: Option<GenerationId>,
    now: OffsetDateTime,
    drafts: &mut Vec<crate::events::Draft>,
) {
    if let Some(wanted) = wanted {
        if record.config.desired.is_none_or(|desired| desired < wanted) {
            config_axis::on_target(record, wanted, now, drafts);
        }
    }
}

/// Ends a session: the agent receives `status`, then the stream closes.
fn close(live: Live, status: Status) {
    let _ = live.outbound.try_send(Box::new(Err(status)));
    live.closed.notify_one();
}

/// The [`Recording`] message of `replica`.
pub fn recording_message(recorded: bool, replica: &str) -> ManagerMessage {
    ManagerMessage {
        body: Some(ManagerBody::Recording(Recording {
            recorded,
            replica: replica.into(),
        })),
    }
}

/// A session's opening, as recorded in the node's record.
#[derive(Clone, Debug)]
pub(super) struct Arrival {
    /// Serial of the certificate the session opened with.
    serial: String,
    hello: SessionHello,
    remote: SocketAddr,
    at: OffsetDateTime,
}

/// Whether a session's opening changed `before` into `after` only in what every opening
/// refreshes: the last-seen time, the source port, and when the conditions were observed.
/// Those stay in the session's live state; the record keeps the last written ones (the
/// last-seen time is written again when the session ends).
fn only_refreshed(before: &NodeRecord, after: &NodeRecord) -> bool {
    let ip = |addr: &str| addr.parse::<SocketAddr>().map(|a| a.ip()).ok();
    if ip(&before.remote_addr) != ip(&after.remote_addr)
        || before.supervision.conditions.len() != after.supervision.conditions.len()
    {
        return false;
    }
    let mut refreshed = after.clone();
    refreshed.last_seen = before.last_seen;
    refreshed.remote_addr.clone_from(&before.remote_addr);
    refreshed.supervision.conditions_observed_at = before.supervision.conditions_observed_at;
    let conditions = refreshed.supervision.conditions.iter_mut();
    for (condition, was) in conditions.zip(&before.supervision.conditions) {
        condition.last_observed = was.last_observed;
    }
    refreshed == *before
}

/// Refuses a certificate the node's record no longer accepts (renewed or rotated since).
fn check_serial(record: &NodeRecord, serial: &str) -> Result<(), FleetError> {
    if record.accepts_serial(serial) {
        return Ok(());
    }
    Err(FleetError::StaleCertificate {
        name: record.name.clone(),
        serial: serial.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::fleet::supervise::tests::{condition, record};
    use crate::records::{ConditionStatus, Severity};

    fn arrived() -> NodeRecord {
        let mut record = record();
        record.remote_addr = "10.0.0.7:41000".into();
        record.last_seen = Some(OffsetDateTime::UNIX_EPOCH);
        let mut ok = condition("DiskPressure", ConditionStatus::Ok, Severity::None);
        ok.last_observed = Some(OffsetDateTime::UNIX_EPOCH);
        record.supervision.conditions = vec![ok];
        record
    }

    #[test]
    fn an_opening_that_only_refreshes_is_not_worth_a_write() {
        let before = arrived();
        let later = OffsetDateTime::UNIX_EPOCH + Duration::hours(1);
        let mut after = before.clone();
        after.last_seen = Some(later);
        after.remote_addr = "10.0.0.7:52000".into();
        after.supervision.conditions_observed_at = Some(later);
        after.supervision.conditions[0].last_observed = Some(later);
        assert!(only_refreshed(&before, &after));
    }

    #[test]
    fn an_opening_that_changes_what_the_record_says_is_written() {
        let before = arrived();
        let changes: [fn(&mut NodeRecord); 5] = [
            |r| r.remote_addr = "10.0.0.8:41000".into(),
            |r| r.boot_id = "rebooted".into(),
            |r| r.facts.kernel = "6.1.0-28".into(),
            |r| r.supervision.conditions[0].status = ConditionStatus::Problem,
            |r| r.supervision.conditions.clear(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut after = before.clone();
            change(&mut after);
            assert!(!only_refreshed(&before, &after), "change {i}");
        }
    }
}
