//! Node lifecycle after enrollment: certificate checks, renewal, revocation, removal.

use opi_pki::csr::check_node_csr;
use opi_pki::tls::PeerCert;
use time::OffsetDateTime;
use tonic::Status;
use tracing::{info, warn};

use super::{Fleet, FleetError, NodeView};
use crate::audit;
use crate::records::{node_key, rfc3339, NodeRecord, NodeState};
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
        let issued = self.authority.issuer.issue_node(
            &name,
            &csr.public_key,
            self.settings.node_cert_ttl,
        )?;
        let actor = cert.identity.uri();
        let detail = format!(
            "serial {} replaces {}, until {}",
            issued.serial,
            cert.serial,
            rfc3339(issued.not_after)
        );
        self.update_node(&name, &actor, "node.renew", from, &detail, |record| {
            if !record.accepts_serial(&cert.serial) {
                return Err(FleetError::StaleCertificate {
                    name: name.clone(),
                    serial: cert.serial.clone(),
                });
            }
            record.serials = vec![issued.serial.clone(), cert.serial.clone()];
            record.serials.truncate(KEPT_SERIALS);
            record.cert_not_after = issued.not_after;
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
        self.update_node(name, actor, "node.revoke", from, &reason, |record| {
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
    pub async fn remove(&self, name: &str, actor: &str, from: &str) -> Result<(), FleetError> {
        let revision = self.node_revision(name)?;
        let key = node_key(name);
        let txn = Txn::new().when_revision(&key, revision).delete(&key);
        let txn = audit::Entry::ok(actor, "node.remove", name, from).into_txn(txn);
        if let TxnOutcome::Conflict { key } = self.store.txn(txn).await? {
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
        warn!(node = %name, actor, "node removed");
        Ok(())
    }

    /// Applies `change` to a node record with compare-and-swap, audited in the same commit.
    pub(super) async fn update_node(
        &self,
        name: &str,
        actor: &str,
        action: &str,
        from: &str,
        detail: &str,
        mut change: impl FnMut(&mut NodeRecord) -> Result<(), FleetError>,
    ) -> Result<NodeRecord, FleetError> {
        for _ in 0..super::CAS_ATTEMPTS {
            let (mut record, revision) = self.node_record(name)?;
            change(&mut record)?;
            let key = node_key(name);
            let txn = Txn::new()
                .when_revision(&key, revision)
                .put(&key, to_json(&record));
            let txn = if action.is_empty() {
                txn
            } else {
                audit::Entry::ok(actor, action, name, from)
                    .detail(detail)
                    .into_txn(txn)
            };
            match self.store.txn(txn).await? {
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

    fn node_record(&self, name: &str) -> Result<(NodeRecord, u64), FleetError> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        let entry = nodes
            .get(name)
            .ok_or_else(|| FleetError::UnknownNode { name: name.into() })?;
        Ok((entry.record.clone(), entry.revision))
    }

    fn node_revision(&self, name: &str) -> Result<u64, FleetError> {
        self.node_record(name).map(|(_, revision)| revision)
    }

    async fn reload_node(&self, name: &str) -> Result<(), FleetError> {
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
