//! Signed checkpoints of the audit chain: the head's sequence number and hash, signed by this
//! replica with a fresh document signer certificate from its issuing CA (as compliance reports
//! are). The manager keeps every checkpoint it makes under `audit-checkpoints/SEQ`; operators
//! export them (`opictl audit checkpoint -o FILE`) to hold the chain to them later.

use opi_pki::ca::SIGNER_CERT_TTL;
use opi_pki::chain::{Checkpoint, SignedCheckpoint};
use time::OffsetDateTime;
use tracing::info;

use super::chain::{Head, HEAD_KEY};
use crate::fleet::{Fleet, FleetError};
use crate::records::{audit_checkpoint_key, AUDIT_CHECKPOINTS};
use crate::store::{get_json, list_json, to_json, Txn};

/// Signs the chain head now and keeps the checkpoint; `None` while the chain is empty.
pub async fn create(fleet: &Fleet) -> Result<Option<SignedCheckpoint>, FleetError> {
    let Some(head) = get_json::<Head>(fleet.store(), HEAD_KEY).await? else {
        return Ok(None);
    };
    let head = head.value;
    let authority = fleet.authority();
    let (signer, key) = authority
        .issuer
        .issue_signer(&authority.replica, SIGNER_CERT_TTL)?;
    let checkpoint = Checkpoint::new(
        fleet.fleet_name(),
        head.seq,
        &head.hash,
        OffsetDateTime::now_utc(),
    );
    let signed = checkpoint.sign(&key, &signer.chain_pem)?;
    let txn = Txn::new().put(audit_checkpoint_key(head.seq), to_json(&signed));
    fleet.store().txn(txn).await?;
    info!(seq = head.seq, head = %head.hash, "audit checkpoint signed");
    Ok(Some(signed))
}

/// Signs a checkpoint when the chain moved past the latest one; for the periodic pass.
pub async fn create_if_moved(fleet: &Fleet) -> Result<(), FleetError> {
    let Some(head) = get_json::<Head>(fleet.store(), HEAD_KEY).await? else {
        return Ok(());
    };
    let latest = fleet.store().list_last(AUDIT_CHECKPOINTS, 1).await?;
    if latest.first().map(|kv| kv.key.as_str()) == Some(&audit_checkpoint_key(head.value.seq)) {
        return Ok(());
    }
    create(fleet).await.map(|_| ())
}

/// Every kept checkpoint, oldest first.
pub async fn list(fleet: &Fleet) -> Result<Vec<SignedCheckpoint>, FleetError> {
    let kept = list_json::<SignedCheckpoint>(fleet.store(), AUDIT_CHECKPOINTS).await?;
    Ok(kept.into_iter().map(|v| v.value).collect())
}
