//! Live agent sessions: attach on hello, heartbeats in memory, detach on disconnect.
//!
//! Only transitions reach the store (last seen, boot id and facts at connect and disconnect);
//! heartbeats update memory alone.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use opi_pki::tls::PeerCert;
use opi_proto::v1::{HealthSummary, ManagerMessage};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tonic::Status;
use tracing::{info, warn};

use super::{Fleet, FleetError, Live};
use crate::records::Facts;

/// What the agent said in its hello.
#[derive(Clone, Debug)]
pub struct SessionHello {
    pub boot_id: String,
    pub facts: Facts,
    pub summary: Option<HealthSummary>,
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
    pub async fn attach(
        &self,
        cert: &PeerCert,
        hello: SessionHello,
        remote: SocketAddr,
        outbound: mpsc::Sender<Result<ManagerMessage, Status>>,
    ) -> Result<Session, FleetError> {
        let name = cert.identity.name.clone();
        let now = OffsetDateTime::now_utc();
        self.update_node(&name, "", "", "", "", |record| {
            if !record.accepts_serial(&cert.serial) {
                return Err(FleetError::StaleCertificate {
                    name: name.clone(),
                    serial: cert.serial.clone(),
                });
            }
            record.facts = hello.facts.clone();
            record.boot_id = hello.boot_id.clone();
            record.last_seen = Some(now);
            record.remote_addr = remote.to_string();
            Ok(())
        })
        .await?;

        let session = Session {
            node: name.clone(),
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            closed: Arc::new(Notify::new()),
        };
        let live = Live {
            session: session.id,
            last_seen: now,
            summary: hello.summary,
            remote_addr: remote.to_string(),
            outbound,
            closed: session.closed.clone(),
        };
        let previous = self.swap_live(&name, Some(live))?;
        if let Some(previous) = previous {
            close(
                previous,
                Status::aborted("replaced by a newer session of the same node"),
            );
        }
        info!(node = %name, remote = %remote, boot_id = %hello.boot_id, "node online");
        Ok(session)
    }

    /// Records a heartbeat; false when the session is no longer the node's current one.
    pub fn heartbeat(&self, session: &Session, summary: Option<HealthSummary>) -> bool {
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        let Some(live) = nodes.get_mut(&session.node).and_then(|e| e.live.as_mut()) else {
            return false;
        };
        if live.session != session.id {
            return false;
        }
        live.last_seen = OffsetDateTime::now_utc();
        if summary.is_some() {
            live.summary = summary;
        }
        true
    }

    /// Unregisters a session that ended, and records when the node was last seen.
    pub async fn detach(&self, session: &Session) {
        let last_seen = {
            let mut nodes = self.nodes.write().expect("fleet lock poisoned");
            let Some(entry) = nodes.get_mut(&session.node) else {
                return;
            };
            match &entry.live {
                Some(live) if live.session == session.id => entry.live.take().map(|l| l.last_seen),
                _ => None,
            }
        };
        let Some(last_seen) = last_seen else { return };
        info!(node = %session.node, "node offline");
        let result = self
            .update_node(&session.node, "", "", "", "", |record| {
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

    /// Closes a node's session, if any, with `status` as the reason given to the agent.
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
        Ok(std::mem::replace(&mut entry.live, live))
    }
}

/// Ends a session: the agent receives `status`, then the stream closes.
fn close(live: Live, status: Status) {
    let _ = live.outbound.try_send(Err(status));
    live.closed.notify_one();
}
