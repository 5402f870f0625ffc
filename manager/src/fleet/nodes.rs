//! Node lifecycle after enrollment: certificate checks, renewal, revocation, removal.

use opi_pki::csr::check_node_csr;
use opi_pki::tls::PeerCert;
use time::OffsetDateTime;
use tonic::Status;
use tracing::{info, warn};

use super::supervise::{apply_axes, Observed};
use super::{Fleet, FleetError, NodeView};
use crate::audit;
use crate::events::Draft;
use crate::records::{node_key, rfc3339, MaintenanceRecord, NodeRecord, NodeState, Severity};
use crate::store::{to_json, Txn, TxnOutcome};

/// Certificates a node may hold at once: the newest and the one it still runs a session with.
const KEPT_SERIALS: usize = 2;

impl Fleet {
    /// Checks that a verified node certificate is one the node may use now.
    pub fn check_node_cert(&self, cert: &PeerCert) -> Result<NodeRecord, FleetError> {
        let name = &cert.identity.name;
        let view = self.node(name)?;
        let record = view.record;
        if record.state == NodeState::Revoked {
            let reason = record.revoked_reason.clone().unwrap_or_default();
            return Err(FleetError::NodeRevoked {
                name: name.clone(),
                reason,
            });
        }
        if !record.accepts_serial(&cert.serial) {
            return Err(FleetError::StaleCertificate {
                name: name.clone(),
                serial: cert.serial.clone(),
            });
        }
        Ok(record)
    }

    /// Issues a fresh certificate to a node that proved possession of its current one.
    pub async fn renew(
        &self,
        cert: &PeerCert,
        csr_der: &[u8],
        from: &str,
    ) -> Result<String, FleetError> {
        let name = cert.identity.name.clone();
        let csr = check_node_csr(csr_der, self.fleet_name(), &name)?;
        let issued =
            self.trust()
                .issuer
                .issue_node(&name, &csr.public_key, self.settings.node_cert_ttl)?;
        let actor = cert.identity.uri();
        let detail = format!(
            "serial {} replaces {}, until {}",
            issued.serial,
            cert.serial,
            rfc3339(issued.not_after)
        );
        let entry = audit::Entry::ok(&actor, "node.renew", &name, from).detail(detail);
        self.update_node(&name, Some(entry), |record, _| {
            if !record.accepts_serial(&cert.serial) {
                return Err(FleetError::StaleCertificate {
                    name: name.clone(),
                    serial: cert.serial.clone(),
                });
            }
            record.serials = vec![issued.serial.clone(), cert.serial.clone()];
            record.serials.truncate(KEPT_SERIALS);
            record.cert_not_after = issued.not_after;
            record.rotation_requested = None;
            Ok(())
        })
        .await?;
        info!(node = %name, serial = %issued.serial, not_after = %issued.not_after, "node certificate renewed");
        Ok(issued.chain_pem)
    }

    /// Revokes a node: its certificates are refused from now on and its session closes.
    pub async fn revoke(
        &self,
        name: &str,
        reason: &str,
        actor: &str,
        from: &str,
    ) -> Result<NodeView, FleetError> {
        let reason = if reason.is_empty() {
            format!("revoked by {actor}")
        } else {
            reason.to_string()
        };
        let entry = audit::Entry::ok(actor, "node.revoke", name, from).detail(reason.clone());
        let now = OffsetDateTime::now_utc();
        self.update_node(name, Some(entry), |record, drafts| {
            let offline = Observed {
                online: false,
                fresh: false,
            };
            let flaps = self.flaps.lock().expect("flap lock poisoned");
            apply_axes(record, offline, &flaps, now, drafts);
            drafts.push(
                Draft::new(&record.name, &record.pool, "lifecycle", "active", "revoked")
                    .because("Revoked", reason.clone())
                    .severity(Severity::Warning),
            );
            record.state = NodeState::Revoked;
            record.revoked_reason = Some(reason.clone());
            record.revoked_at = Some(OffsetDateTime::now_utc());
            Ok(())
        })
        .await?;
        warn!(node = %name, actor, reason = %reason, "node revoked");
        let message = format!("node {name} was revoked ({reason}); this node must be re-enrolled");
        self.close_session(name, Status::permission_denied(message));
        self.node(name)
    }

    /// Forgets a node: its certificates stop working and its name is free again.
    pub async fn remove(
        &self,
        name: &str,
        reason: &str,
        actor: &str,
        from: &str,
    ) -> Result<(), FleetError> {
        let (record, revision) = self.node_record(name)?;
        let key = node_key(name);
        let detail = if reason.is_empty() {
            format!("removed by {actor}")
        } else {
            reason.to_string()
        };
        let txn = Txn::new().when_revision(&key, revision).delete(&key);
        let txn = audit::Entry::ok(actor, "node.remove", name, from)
            .detail(detail.clone())
            .into_txn(txn);
        let draft = Draft::new(name, &record.pool, "lifecycle", "enrolled", "removed")
            .because("Removed", detail)
            .severity(Severity::Warning);
        if let TxnOutcome::Conflict { key } = self.events.commit(txn, vec![draft]).await? {
            return Err(FleetError::Conflict { what: key });
        }
        self.close_session(
            name,
            Status::permission_denied(format!("node {name} was removed from the fleet")),
        );
        self.nodes
            .write()
            .expect("fleet lock poisoned")
            .remove(name);
        self.flaps.lock().expect("flap lock poisoned").forget(name);
        warn!(node = %name, actor, "node removed");
        Ok(())
    }

    /// Puts a node in maintenance (its alerts silenced) or takes it out.
    pub async fn set_maintenance(
        &self,
        name: &str,
        on: bool,
        reason: &str,
        actor: &str,
        from: &str,
    ) -> Result<NodeView, FleetError> {
        if on && reason.trim().is_empty() {
            return Err(FleetError::InvalidArgument(
                "a reason is required to put a node in maintenance".into(),
            ));
        }
        let action = if on {
            "node.maintenance.on"
        } else {
            "node.maintenance.off"
        };
        let entry = audit::Entry::ok(actor, action, name, from).detail(reason);
        let now = OffsetDateTime::now_utc();
        self.update_node(name, Some(entry), |record, drafts| {
            let was = record.supervision.maintenance.is_some();
            if was == on {
                return Ok(());
            }
            record.supervision.maintenance = on.then(|| MaintenanceRecord {
                by: actor.into(),
                reason: reason.into(),
                since: now,
            });
            let (from_state, to_state) = if on { ("off", "on") } else { ("on", "off") };
            drafts.push(
                Draft::new(name, &record.pool, "maintenance", from_state, to_state)
                    .because(
                        if on {
                            "MaintenanceStarted"
                        } else {
                            "MaintenanceEnded"
                        },
                        if reason.is_empty() {
                            actor.to_string()
                        } else {
                            format!("{actor}: {reason}")
                        },
                    )
                    .severity(Severity::Info),
            );
            Ok(())
        })
        .await?;
        self.node(name)
    }

    /// Moves a node to another pool.
    pub async fn move_to(
        &self,
        name: &str,
        pool: &str,
        actor: &str,
        from: &str,
    ) -> Result<NodeView, FleetError> {
        opi_pki::identity::validate_name(pool).map_err(|source| FleetError::InvalidName {
            what: "pool",
            source,
        })?;
        let entry =
            audit::Entry::ok(actor, "node.move", name, from).detail(format!("to pool {pool}"));
        // A node moved to a pool without a profile keeps running what it applied last; in a
        // pool with a rollout it gets what the rollout gives nodes waiting for their wave.
        let wanted = self.generation_wanted(pool, name);
        self.update_node(name, Some(entry), |record, drafts| {
            if record.pool == pool {
                return Ok(());
            }
            drafts.push(
                Draft::new(name, pool, "lifecycle", &record.pool, pool)
                    .because(
                        "Moved",
                        format!("moved by {actor} from pool {} to pool {pool}", record.pool),
                    )
                    .severity(Severity::Info),
            );
            record.pool = pool.into();
            if let Some(id) = wanted {
                super::config_axis::on_target(record, id, OffsetDateTime::now_utc(), drafts);
            }
            Ok(())
        })
        .await?;
        if let Some(id) = wanted {
            self.send_desired(name).await;
            info!(node = %name, pool = %pool, generation = id.generation, "moved node targeted at its new pool's profile");
        }
        self.node(name)
    }

    /// Applies `change` to a node record with compare-and-swap; the events it drafts and the
    /// audit entry, if any, are committed in the same transaction.
    pub(super) async fn update_node(
        &self,
        name: &str,
        audit: Option<audit::Entry>,
        change: impl FnMut(&mut NodeRecord, &mut Vec<Draft>) -> Result<(), FleetError>,
    ) -> Result<NodeRecord, FleetError> {
        self.update_node_unless(name, audit, change, None).await
    }

    /// [`Fleet::update_node`], except that a change that drafts no event and that `slight`
    /// (given the record before and after it) calls slight is not written: the stored record
    /// is returned as it is.
    pub(super) async fn update_node_unless(
        &self,
        name: &str,
        audit: Option<audit::Entry>,
        mut change: impl FnMut(&mut NodeRecord, &mut Vec<Draft>) -> Result<(), FleetError>,
        slight: Option<fn(&NodeRecord, &NodeRecord) -> bool>,
    ) -> Result<NodeRecord, FleetError> {
        for _ in 0..super::CAS_ATTEMPTS {
            let (mut record, revision) = match self.node_record(name) {
                Ok(found) => found,
                // Another replica may have enrolled it: the store knows.
                Err(FleetError::UnknownNode { .. })
                    if self.replica.get().is_some_and(|r| !r.is_single()) =>
                {
                    self.reload_node(name).await?;
                    self.node_record(name)?
                }
                Err(error) => return Err(error),
            };
            let before = slight.map(|_| record.clone());
            let mut drafts = Vec::new();
            change(&mut record, &mut drafts)?;
            if let (Some(slight), Some(before)) = (slight, before) {
                if drafts.is_empty() && slight(&before, &record) {
                    return Ok(before);
                }
            }
            let key = node_key(name);
            let txn = Txn::new()
                .when_revision(&key, revision)
                .put(&key, to_json(&record));
            let txn = match &audit {
                Some(entry) => entry.clone().into_txn(txn),
                None => txn,
            };
            match self.events.commit(txn, drafts).await? {
                TxnOutcome::Committed(new_revision) => {
                    self.replace_record(record.clone(), new_revision);
                    return Ok(record);
                }
                TxnOutcome::Conflict { .. } => self.reload_node(name).await?,
            }
        }
        Err(FleetError::Conflict {
            what: format!("node {name}"),
        })
    }

    pub(super) fn node_record(&self, name: &str) -> Result<(NodeRecord, u64), FleetError> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        let entry = nodes
            .get(name)
            .ok_or_else(|| FleetError::UnknownNode { name: name.into() })?;
        Ok(((*entry.record).clone(), entry.revision))
    }

    /// Reads a node this replica does not know from the store, where another replica may
    /// have enrolled it; a single manager knows every node already.
    pub async fn learn_node(&self, name: &str) -> Result<(), FleetError> {
        if self.replica.get().is_some_and(|r| !r.is_single()) {
            self.reload_node(name).await?;
        }
        Ok(())
    }

    pub(super) async fn reload_node(&self, name: &str) -> Result<(), FleetError> {
        match crate::store::get_json::<NodeRecord>(self.store(), &node_key(name)).await? {
            Some(current) => self.replace_record(current.value, current.mod_revision),
            None => {
                self.nodes
                    .write()
                    .expect("fleet lock poisoned")
                    .remove(name);
            }
        }
        Ok(())
    }
}
