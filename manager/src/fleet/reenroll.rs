//! Re-enrollment: a node whose certificate expired past the renewal window takes back its
//! name with a new bootstrap token, keeping its pool and history, once an operator allowed it.
//!
//! The token's use, the node's new certificate and the consumed permission are committed in
//! one transaction, so a permission allows exactly one re-enrollment.

use opi_pki::csr::CheckedCsr;
use time::OffsetDateTime;
use tonic::Status;
use tracing::info;

use super::enroll::{check_token_usable, token_actor};
use super::{EnrollInput, EnrollOutput, Fleet, FleetError};
use crate::audit;
use crate::events::Draft;
use crate::records::{
    node_key, rfc3339, token_enrollment_key, token_key, NodeRecord, NodeState, Severity,
    TokenEnrollment,
};
use crate::store::{to_json, Txn, TxnOutcome};
use crate::tokens::BootstrapToken;

impl Fleet {
    /// Re-enrolls node `name` with `token`, if an operator allowed it and the permission runs.
    pub(super) async fn reenroll(
        &self,
        token: &BootstrapToken,
        name: &str,
        csr: &CheckedCsr,
        spki_sha256: String,
        input: &EnrollInput,
    ) -> Result<EnrollOutput, FleetError> {
        let (record, _) = self.node_record(name)?;
        check_grant(&record, name)?;
        let issued =
            self.trust()
                .issuer
                .issue_node(name, &csr.public_key, self.settings.node_cert_ttl)?;
        let answer = TokenEnrollment {
            spki_sha256,
            node: name.to_string(),
            cert_chain_pem: issued.chain_pem.clone(),
            at: OffsetDateTime::now_utc(),
        };
        for _ in 0..super::CAS_ATTEMPTS {
            let current = self.load_token(token).await?;
            if let Some(previous) = self
                .previous_answer(&current.value, &answer.spki_sha256)
                .await?
            {
                return self.answer_retry(&current.value, &previous, input).await;
            }
            check_token_usable(&current.value)?;
            let (mut record, revision) = self.node_record(name)?;
            check_grant(&record, name)?;
            let grant = record.reenroll.take().expect("check_grant found a grant");
            record.serials = vec![issued.serial.clone()];
            record.cert_not_after = issued.not_after;
            record.rotation_requested = None;
            record.token_id = current.value.id.clone();
            record.facts = input.facts.clone();
            record.remote_addr = input.remote.to_string();

            let mut used = current.value.clone();
            used.used += 1;
            let token_key = token_key(&used.id);
            let answer_key = token_enrollment_key(&used.id, &answer.spki_sha256);
            let detail = format!(
                "re-enrolled in pool {} as allowed by {}, serial {}, until {}",
                record.pool,
                grant.by,
                issued.serial,
                rfc3339(issued.not_after)
            );
            let txn = Txn::new()
                .when_revision(&token_key, current.mod_revision)
                .when_revision(node_key(name), revision)
                .when_absent(&answer_key)
                .put(&token_key, to_json(&used))
                .put(&answer_key, to_json(&answer))
                .put(node_key(name), to_json(&record));
            let remote = input.remote.to_string();
            let entry =
                audit::Entry::ok(&token_actor(&input.token), "node.reenroll", name, &remote)
                    .detail(detail.clone());
            let draft = Draft::new(name, &record.pool, "lifecycle", "expired", "re-enrolled")
                .because("Reenrolled", detail)
                .severity(Severity::Info);
            match self.events.commit(entry.into_txn(txn), vec![draft]).await? {
                TxnOutcome::Committed(new_revision) => {
                    let pool = record.pool.clone();
                    self.replace_record(record, new_revision);
                    self.close_session(
                        name,
                        Status::permission_denied(format!(
                            "node {name} re-enrolled with a new key"
                        )),
                    );
                    info!(node = %name, pool = %pool, token = %used.id, remote = %input.remote, "node re-enrolled");
                    return Ok(EnrollOutput {
                        node: name.to_string(),
                        pool,
                        cert_chain_pem: answer.cert_chain_pem,
                    });
                }
                TxnOutcome::Conflict { .. } => self.reload_node(name).await?,
            }
        }
        Err(FleetError::Conflict {
            what: format!("node {name}"),
        })
    }
}

/// Refuses a re-enrollment no running permission allows.
fn check_grant(record: &NodeRecord, name: &str) -> Result<(), FleetError> {
    if record.state == NodeState::Revoked {
        return Err(FleetError::NodeRevoked {
            name: name.to_string(),
            reason: record.revoked_reason.clone().unwrap_or_default(),
        });
    }
    match &record.reenroll {
        Some(grant) if grant.until > OffsetDateTime::now_utc() => Ok(()),
        Some(grant) => Err(FleetError::ReenrollNotAllowed {
            name: name.to_string(),
            expired_at: Some(grant.until),
        }),
        None => Err(FleetError::ReenrollNotAllowed {
            name: name.to_string(),
            expired_at: None,
        }),
    }
}
