//! Fencing of the leader's writes by the revision of its leader key.
//!
//! A leader pass (supervision, rollout steps, pruning, checkpoints) runs inside
//! [`as_leader`], which remembers the create revision of the leader key this replica wrote
//! when it took the lead. Every transaction the pass sends through a [`FencedStore`] then also
//! requires the leader key to still be at that revision. A replica whose pass stalled past its
//! lease, while another replica took the lead, therefore writes nothing: its transaction fails
//! on the leader key, the store answers [`StoreError::Fenced`], and the replica steps down.
//! Writes outside a leader pass (operator calls, sessions, enrollments) are not fenced: any
//! replica may make them.

use std::future::Future;
use std::sync::Arc;

use super::{Replica, LEADER_KEY};
use crate::store::{Compare, KeyValue, Revision, Store, StoreError, Txn, TxnOutcome};

tokio::task_local! {
    /// The leader key's create revision while a fenced leader pass runs on this task.
    static LEADING_AT: Revision;
}

/// What a replica leads with: `fence` is the revision its leader key was created at, `None`
/// for the single manager of a SQLite store, which needs no fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lead {
    pub fence: Option<Revision>,
}

/// Runs `pass` as the leader of `lead`: its transactions through a [`FencedStore`] commit
/// only while the leader key is still at `lead.fence`.
pub async fn as_leader<F: Future>(lead: Lead, pass: F) -> F::Output {
    match lead.fence {
        Some(revision) => LEADING_AT.scope(revision, pass).await,
        None => pass.await,
    }
}

/// The fence of the leader pass running on this task, if any: what [`as_leader`] set, so that
/// work handed to another task can run under the same fence.
pub fn current() -> Lead {
    Lead {
        fence: LEADING_AT.try_with(|revision| *revision).ok(),
    }
}

/// A store whose transactions made inside [`as_leader`] are fenced by the leader key.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    replica: Arc<Replica>,
}

impl FencedStore {
    /// Fences the leader passes of `replica` on `inner`.
    pub fn wrap(inner: Arc<dyn Store>, replica: Arc<Replica>) -> Arc<dyn Store> {
        Arc::new(Self { inner, replica })
    }
}

#[async_trait::async_trait]
impl Store for FencedStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list_page(prefix, start_after, limit).await
    }

    async fn list_last(&self, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list_last(prefix, limit).await
    }

    async fn txn(&self, mut txn: Txn) -> Result<TxnOutcome, StoreError> {
        let Ok(revision) = LEADING_AT.try_with(|revision| *revision) else {
            return self.inner.txn(txn).await;
        };
        txn.compares.push(Compare::ModRevision {
            key: LEADER_KEY.into(),
            revision,
        });
        match self.inner.txn(txn).await? {
            TxnOutcome::Conflict { key } if key == LEADER_KEY => {
                self.replica
                    .step_down("a leader write found the leader key gone or another replica's");
                Err(StoreError::Fenced {
                    store: self.inner.describe(),
                    replica: self.replica.name().into(),
                    revision,
                })
            }
            outcome => Ok(outcome),
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
}
