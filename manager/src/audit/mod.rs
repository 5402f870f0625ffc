//! The audit log: every mutation and every enrollment attempt, with who, what, when, from
//! where and the outcome. Entries ride in the same transaction as the change they describe;
//! [`chain`] numbers and hashes them on commit, [`checkpoint`] signs the chain head.

pub mod chain;
pub mod checkpoint;

use time::OffsetDateTime;
use tracing::warn;

use crate::records::{audit_key, AuditRecord};
use crate::store::{to_json, Store, Txn};

/// Outcome of an audited action that was carried out.
pub const OK: &str = "ok";
/// Outcome of an audited action that was refused.
pub const REFUSED: &str = "refused";

/// An audit entry being built.
#[derive(Clone, Debug)]
pub struct Entry(pub AuditRecord);

impl Entry {
    /// A successful action by `actor` on `subject`.
    pub fn ok(actor: &str, action: &str, subject: &str, remote_addr: &str) -> Self {
        Self(AuditRecord {
            at: OffsetDateTime::now_utc(),
            actor: actor.into(),
            action: action.into(),
            subject: subject.into(),
            outcome: OK.into(),
            detail: String::new(),
            remote_addr: remote_addr.into(),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
        })
    }

    /// A refused action, with the reason given to the caller.
    pub fn refused(actor: &str, action: &str, subject: &str, remote_addr: &str, why: &str) -> Self {
        let mut entry = Self::ok(actor, action, subject, remote_addr);
        entry.0.outcome = REFUSED.into();
        entry.0.detail = why.into();
        entry
    }

    /// Adds a detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = detail.into();
        self
    }

    /// Adds this entry to a transaction.
    pub fn into_txn(self, txn: Txn) -> Txn {
        txn.put(audit_key(self.0.at), to_json(&self.0))
    }

    /// Writes this entry alone. A failure is logged, not returned: a refused request must
    /// still be answered.
    pub async fn write(self, store: &dyn Store) {
        let action = self.0.action.clone();
        if let Err(error) = store.txn(self.into_txn(Txn::new())).await {
            warn!(%action, error = %error, "cannot write audit entry");
        }
    }
}
